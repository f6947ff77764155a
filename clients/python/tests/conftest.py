from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

Handler = Callable[[ServerConnection], Awaitable[None]]
StartServer = Callable[..., Awaitable[str]]


@pytest.fixture
async def fake_server() -> AsyncIterator[StartServer]:
    """Start a scripted WebSocket server on 127.0.0.1; returns its ws:// URL."""
    servers: list[Any] = []

    async def start(
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        process_request: Any = None,
    ) -> str:
        server = await serve(
            handler,
            "127.0.0.1",
            0,
            ssl=ssl_context,
            compression=None,
            process_request=process_request,
        )
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
