"""Sandbox tokens remembered in this process.

``Sandbox.create`` records the token the server issued, so that
``Sandbox.attach(url, sandbox_id)`` works without it in the same process (as the
original clients allow). Across processes the caller passes the token.
"""

from __future__ import annotations

_tokens: dict[str, str] = {}


def remember(sandbox_id: str, token: str) -> None:
    _tokens[sandbox_id] = token


def lookup(sandbox_id: str) -> str | None:
    return _tokens.get(sandbox_id)


def forget(sandbox_id: str) -> None:
    _tokens.pop(sandbox_id, None)
