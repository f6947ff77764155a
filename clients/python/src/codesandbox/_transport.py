"""The only module that touches the network, behind a small public interface.

A ``Transport`` opens ``Connection``s; a connection moves text frames and reports its
end by raising ``ConnectionClosed``. ``WebSocketTransport`` (the default) does it with
the ``websockets`` library. Pass another transport to ``Sandbox.create(url,
transport=...)`` (as httpx takes one): tests use a scripted in-memory one, and a
transport is where a proxy or a different WebSocket library would plug in.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
from collections.abc import Mapping
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from ._errors import SandboxAuthenticationError, SandboxConnectionError, SandboxTimeoutError
from ._urls import redact

# Output chunks are small, but a base64 chunk of a big write can be a few MiB; the
# server itself refuses client messages over 4 MiB.
MAX_INCOMING_MESSAGE_BYTES = 64 * 1024 * 1024


class ConnectionClosed(Exception):
    """Raised by ``Connection.send`` / ``recv`` once the connection is over.

    ``code`` is the close code the server sent, ``None`` when no close frame came (the
    connection dropped); ``received`` says whether a close frame came.
    """

    def __init__(self, code: int | None, reason: str = "", *, received: bool) -> None:
        super().__init__(f"connection closed (code {code}, {reason!r})")
        self.code = code
        self.reason = reason
        self.received = received


class Connection(Protocol):
    """One open connection to the server: text frames both ways."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises ``ConnectionClosed`` if the connection is over."""
        ...

    async def recv(self) -> str | bytes:
        """The next frame; raises ``ConnectionClosed`` when the connection is over."""
        ...

    async def close(self) -> None:
        """A clean close handshake, bounded in time."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, without a close frame."""
        ...


class Transport(Protocol):
    """Opens connections to the server's WebSocket endpoints."""

    async def connect(
        self, url: str, *, headers: Mapping[str, str], open_timeout: float | None
    ) -> Connection:
        """Open ``url`` (``ws://`` or ``wss://``, with the path and query of the endpoint),
        sending ``headers`` with the upgrade request.

        Raise ``SandboxConnectionError`` (or ``SandboxTimeoutError``) when it cannot, and
        ``SandboxAuthenticationError`` when the server refuses it with HTTP 401 / 403.
        """
        ...


def connection_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """The extra headers of every upgrade request: ``headers`` plus, with ``api_key``,
    ``Authorization: Bearer <api_key>``."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("headers must map str to str")
        out[name] = value
    if api_key is not None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty str")
        if any(name.lower() == "authorization" for name in out):
            raise ValueError("give either api_key or an Authorization header, not both")
        out["Authorization"] = f"Bearer {api_key}"
    return out


def refusal_message(url: str, status: int, body: bytes | bytearray | str | None) -> str:
    """What a 401 / 403 means, with the server's own words when it sent a JSON error."""
    detail = ""
    try:
        error = json.loads(body or b"").get("error")
        if isinstance(error, str):
            detail = f": {error}"
    except (ValueError, AttributeError):
        pass  # not JSON (Cloud Run's IAM answers with HTML): the status says enough
    if status == 401:
        hint = "pass api_key=... (or an Authorization header) that the server accepts"
    else:
        hint = "the credentials are valid but may not use this service (IAM: roles/run.invoker)"
    return f"the server refused the connection to {url} with HTTP {status}{detail} ({hint})"


def default_ssl_context() -> ssl_module.SSLContext:
    """The system trust store, or certifi's bundle when certifi is installed."""
    try:
        import certifi
    except ImportError:
        return ssl_module.create_default_context()
    return ssl_module.create_default_context(cafile=certifi.where())


class WebSocketTransport:
    """The default transport: WebSocket over TCP (and TLS for ``wss://``) with
    ``websockets``. ``ssl`` overrides the TLS context of ``wss://`` URLs (default:
    certifi's bundle when installed, else the system store)."""

    def __init__(self, *, ssl: ssl_module.SSLContext | None = None) -> None:
        self._ssl = ssl

    async def connect(
        self, url: str, *, headers: Mapping[str, str], open_timeout: float | None
    ) -> Connection:
        secure = url.startswith("wss://")
        if self._ssl is not None and not secure:
            raise ValueError("an ssl context was given, but the URL is not wss://")
        kwargs: dict[str, object] = {}
        if secure:
            kwargs["ssl"] = self._ssl if self._ssl is not None else default_ssl_context()
        if headers:
            kwargs["additional_headers"] = dict(headers)
        try:
            connection = await connect(
                url,
                open_timeout=open_timeout,
                max_size=MAX_INCOMING_MESSAGE_BYTES,
                # Frames are small JSON objects; compression costs more latency than
                # it saves.
                compression=None,
                **kwargs,  # type: ignore[arg-type]
            )
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise SandboxTimeoutError(
                f"timed out after {open_timeout:g}s connecting to {redact(url)}"
            ) from exc
        except InvalidURI as exc:
            raise ValueError(f"invalid sandbox URL {redact(url)!r}: {exc}") from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise SandboxAuthenticationError(
                    refusal_message(redact(url), status, exc.response.body),
                    http_status=status,
                ) from exc
            raise SandboxConnectionError(f"cannot connect to {redact(url)}: {exc}") from exc
        except (OSError, InvalidHandshake) as exc:
            raise SandboxConnectionError(f"cannot connect to {redact(url)}: {exc}") from exc
        return _WebSocketConnection(connection)


class _WebSocketConnection:
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._aborted = False

    async def send(self, text: str) -> None:
        if self._aborted:
            # websockets learns about the abort one loop iteration later; do not let a
            # frame vanish into the dead socket meanwhile.
            raise ConnectionClosed(None, "aborted", received=False)
        try:
            await self._connection.send(text)
        except WebSocketClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> str | bytes:
        try:
            return await self._connection.recv()
        except WebSocketClosed as exc:
            raise _closed(exc) from exc

    async def close(self) -> None:
        await self._connection.close()

    def abort(self) -> None:
        self._aborted = True
        transport = self._connection.transport
        if transport is not None:
            transport.abort()


def _closed(exc: WebSocketClosed) -> ConnectionClosed:
    if exc.rcvd is not None:
        return ConnectionClosed(exc.rcvd.code, exc.rcvd.reason, received=True)
    return ConnectionClosed(None, "", received=False)
