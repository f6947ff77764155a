"""What this process knows about sandboxes across ``Sandbox`` objects.

* Tokens: ``Sandbox.create`` records the token the server issued, so that
  ``Sandbox.attach(url, sandbox_id)`` works without it in the same process (as the
  original clients allow). Across processes the caller passes the token. Never persisted.
* Live sessions: the one connected ``Sandbox`` of each sandbox id, so that a handle whose
  own session ended (checkpointed, disconnected) forwards calls to it: after
  ``s2 = await Sandbox.attach(url, s1.sandbox_id)``, ``s1.snapshot_filesystem()`` and
  ``s1.terminate()`` go through ``s2``.
"""

from __future__ import annotations

from typing import Any

_tokens: dict[str, str] = {}
_live: dict[str, Any] = {}


def remember_token(sandbox_id: str, token: str) -> None:
    _tokens[sandbox_id] = token


def recall_token(sandbox_id: str) -> str | None:
    return _tokens.get(sandbox_id)


def forget_token(sandbox_id: str) -> None:
    _tokens.pop(sandbox_id, None)


def set_live(sandbox_id: str, session: Any) -> None:
    _live[sandbox_id] = session


def live(sandbox_id: str | None) -> Any:
    return None if sandbox_id is None else _live.get(sandbox_id)


def forget_live(sandbox_id: str | None, session: Any) -> None:
    if sandbox_id is not None and _live.get(sandbox_id) is session:
        del _live[sandbox_id]
