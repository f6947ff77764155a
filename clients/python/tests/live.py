"""Helpers for the tests against live servers (``test_integration``, ``test_persistence``).

The servers come from the environment (``scripts/test.sh`` starts all three):

* ``SANDBOX_TEST_URL``: a server without persistence (checkpoints and snapshots must give
  the "not enabled" errors).
* ``SANDBOX_TEST_PERSISTENT_URL`` and ``SANDBOX_TEST_PERSISTENT_URL_2``: two instances
  sharing ``CHECKPOINT_AND_RESTORE_PATH`` and ``FILESYSTEM_SNAPSHOT_PATH``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable
from typing import Any

from codesandbox import OutputStream, Sandbox, SandboxError


class Sandboxes:
    """Creates and attaches sandboxes for one test and terminates them all at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[Sandbox] = []

    async def create(self, url: str | None = None, **kwargs: Any) -> Sandbox:
        sandbox = await Sandbox.create(url or self.url, **kwargs)
        self.opened.append(sandbox)
        return sandbox

    async def attach(
        self, sandbox_id: str, token: str | None = None, *, url: str | None = None, **kwargs: Any
    ) -> Sandbox:
        sandbox = await Sandbox.attach(url or self.url, sandbox_id, token, **kwargs)
        self.opened.append(sandbox)
        return sandbox

    def track(self, sandbox: Sandbox) -> Sandbox:
        self.opened.append(sandbox)
        return sandbox

    async def cleanup(self) -> None:
        # Newest first: an attached (or restored) copy must let go before the original
        # re-attaches to terminate.
        for sandbox in reversed(self.opened):
            if not sandbox.terminated:
                await _quietly(sandbox.terminate())


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(aw, 60)
    except (SandboxError, asyncio.TimeoutError) as exc:
        print(f"cleanup: could not terminate a sandbox: {exc!r}")


async def next_chunk(stream: OutputStream) -> str:
    """One chunk of output (waits for it)."""
    async for chunk in stream:
        return chunk
    raise AssertionError("the stream ended")


def http_url(ws_url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def _http(method: str, url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


async def list_snapshots(ws_url: str) -> list[str]:
    """``GET /snapshots``: the names."""
    status, body = await asyncio.to_thread(_http, "GET", http_url(ws_url, "/snapshots"))
    assert status == 200, body
    return [entry["name"] for entry in body["snapshots"]]


async def delete_snapshot(ws_url: str, name: str) -> int:
    """``DELETE /snapshots/{name}``: the HTTP status (200 deleted, 404 unknown)."""
    path = "/snapshots/" + urllib.parse.quote(name, safe="")
    status, _ = await asyncio.to_thread(_http, "DELETE", http_url(ws_url, path))
    return status
