"""``GET /sandboxes``: the sandboxes of a server instance, or the checkpoints in its store.

The request is plain HTTP (the service's base URL with ``http(s)://``), made with the
standard library on a worker thread; the parser is separate and does no I/O, so it is
tested against recorded answers.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from ._errors import (
    SandboxAuthenticationError,
    SandboxConnectionError,
    SandboxError,
    SandboxTimeoutError,
)
from ._results import SandboxInfo, SandboxList
from ._transport import default_ssl_context, refusal_message
from ._urls import base_url

# A page of 1000 sandboxes is well under a megabyte; anything larger is not our server.
_MAX_BODY_BYTES = 16 * 1024 * 1024


def list_url(url: str, *, checkpointed: bool, limit: int | None, after: str | None) -> str:
    """The ``GET /sandboxes`` URL (``http(s)://``) for the service's base URL."""
    parts = urlsplit(base_url(url))
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    query: dict[str, str] = {}
    if checkpointed:
        query["checkpointed"] = "1"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit must be an int from 1 to 1000, got {limit!r}")
        query["limit"] = str(limit)
    if after is not None:
        query["after"] = after
    return urlunsplit((scheme, parts.netloc, parts.path + "/sandboxes", urlencode(query), ""))


def parse_list(body: bytes | str) -> SandboxList:
    """The answer of ``GET /sandboxes``; entries without an id are skipped."""
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise SandboxError(f"the server's sandbox list is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("sandboxes"), list):
        raise SandboxError("the server's sandbox list has no 'sandboxes'")
    infos = [info for item in value["sandboxes"] if (info := _info(item)) is not None]
    next_after = value.get("next_after")
    return SandboxList(infos, next_after if isinstance(next_after, str) else None)


def _info(item: Any) -> SandboxInfo | None:
    if not isinstance(item, dict) or not isinstance(item.get("sandbox_id"), str):
        return None
    labels = item.get("labels")
    state = item.get("state")
    return SandboxInfo(
        sandbox_id=item["sandbox_id"],
        state=state if isinstance(state, str) else "unknown",
        labels={
            key: text
            for key, text in (labels.items() if isinstance(labels, dict) else [])
            if isinstance(text, str)
        },
        checkpointed=item.get("checkpointed") is True,
        handoff=item.get("handoff") is True,
        age_secs=_number(item.get("age_secs")),
        idle_secs=_number(item.get("idle_secs")),
        attached=_flag(item.get("attached")),
        checkpointable=_flag(item.get("checkpointable")),
        checkpoint_unix_ms=_integer(item.get("checkpoint_unix_ms")),
        size_bytes=_integer(item.get("size_bytes")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


async def fetch_list(
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float | None,
    ssl: ssl_module.SSLContext | None,
) -> SandboxList:
    """``GET url`` on a worker thread (the event loop never blocks on it)."""
    return await asyncio.to_thread(_get, url, dict(headers), timeout, ssl)


def _get(
    url: str,
    headers: dict[str, str],
    timeout: float | None,
    ssl: ssl_module.SSLContext | None,
) -> SandboxList:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    context = None
    if url.startswith("https://"):
        context = ssl if ssl is not None else default_ssl_context()
    elif ssl is not None:
        raise ValueError("an ssl context was given, but the URL is not https:// (wss://)")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = response.read(_MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(64 * 1024)
        if exc.code in (401, 403):
            raise SandboxAuthenticationError(
                refusal_message(url, exc.code, detail), http_status=exc.code
            ) from exc
        raise SandboxError(_http_error(url, exc.code, detail)) from exc
    except TimeoutError as exc:
        raise SandboxTimeoutError(f"timed out after {timeout:g}s waiting for {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise SandboxConnectionError(f"cannot get {url}: {exc}") from exc
    if len(body) > _MAX_BODY_BYTES:
        raise SandboxError(f"the answer of {url} is larger than {_MAX_BODY_BYTES} bytes")
    return parse_list(body)


def _http_error(url: str, status: int, body: bytes) -> str:
    """An error answer, with the server's own words (``{"error": ...}``) when it sent them."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    detail = f": {error}" if isinstance(error, str) else ""
    return f"GET {url} failed with HTTP {status}{detail}"
