"""A scripted in-memory ``Transport``: the test plays the server's side frame by frame.

Every connection the client opens is queued in ``connections``; every frame it sends is
queued in ``sent`` (with its connection). The test pushes server frames and closes into
a connection with ``push`` / ``close`` / ``drop``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from codesandbox import ConnectionClosed


class ScriptedConnection:
    def __init__(self, url: str, transport: ScriptedTransport) -> None:
        self.url = url
        self.headers: dict[str, str] = {}
        self._transport = transport
        self._incoming: asyncio.Queue[str | ConnectionClosed] = asyncio.Queue()
        self.closed_by: str | None = None  # "server", "client", "drop"

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    # ---- the client's side (the Connection protocol)

    async def send(self, text: str) -> None:
        if self.closed_by is not None:
            raise ConnectionClosed(None, "closed", received=False)
        self._transport.sent.put_nowait((self, text))

    async def recv(self) -> str:
        item = await self._incoming.get()
        if isinstance(item, ConnectionClosed):
            self._incoming.put_nowait(item)  # every later recv sees the end too
            raise item
        return item

    async def close(self) -> None:
        if self.closed_by is None:
            self.closed_by = "client"
            self._incoming.put_nowait(ConnectionClosed(1000, "client close", received=True))

    def abort(self) -> None:
        if self.closed_by is None:
            self.closed_by = "client"
            self._incoming.put_nowait(ConnectionClosed(None, "aborted", received=False))

    # ---- the server's side

    def push(self, text: str) -> None:
        if self.closed_by is None:
            self._incoming.put_nowait(text)

    def close_by_server(self, code: int, reason: str = "") -> None:
        if self.closed_by is None:
            self.closed_by = "server"
            self._incoming.put_nowait(ConnectionClosed(code, reason, received=True))

    def drop(self) -> None:
        if self.closed_by is None:
            self.closed_by = "drop"
            self._incoming.put_nowait(ConnectionClosed(None, "", received=False))


class ScriptedTransport:
    def __init__(self) -> None:
        self.connections: asyncio.Queue[ScriptedConnection] = asyncio.Queue()
        self.sent: asyncio.Queue[tuple[ScriptedConnection, str]] = asyncio.Queue()
        self.opened: list[ScriptedConnection] = []

    async def connect(
        self, url: str, *, headers: Mapping[str, str], open_timeout: float | None
    ) -> ScriptedConnection:
        connection = ScriptedConnection(url, self)
        connection.headers = dict(headers)
        self.opened.append(connection)
        self.connections.put_nowait(connection)
        return connection
