"""The only module that touches the network: one WebSocket connection.

It knows URLs, TLS and the ``websockets`` library; it knows nothing about the
protocol's meaning (that is ``_protocol``).
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ._errors import SandboxAuthenticationError, SandboxConnectionError, SandboxTimeoutError

# Output chunks are small, but a base64 chunk of a big write can be a few MiB; the
# server itself refuses client messages over 4 MiB.
MAX_INCOMING_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CloseInfo:
    code: int | None  # None: no close frame came (the connection dropped)
    reason: str
    received: bool


class TransportClosed(Exception):
    def __init__(self, info: CloseInfo) -> None:
        super().__init__(f"connection closed: {info}")
        self.info = info


def base_url(url: str) -> str:
    """Normalise the service URL: http(s) becomes ws(s), no trailing slash."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(
            f"the sandbox URL must start with ws://, wss://, http:// or https://: {url!r}"
        )
    if not parts.netloc:
        raise ValueError(f"the sandbox URL has no host: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def create_url(url: str) -> str:
    return base_url(url) + "/create"


def attach_url(url: str, sandbox_id: str, sandbox_token: str | None) -> str:
    out = base_url(url) + "/attach/" + quote(sandbox_id, safe="")
    if sandbox_token is not None:
        out += "?sandbox_token=" + quote(sandbox_token, safe="")
    return out


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


def default_ssl_context() -> ssl_module.SSLContext:
    """The system trust store, or certifi's bundle when certifi is installed."""
    try:
        import certifi
    except ImportError:
        return ssl_module.create_default_context()
    return ssl_module.create_default_context(cafile=certifi.where())


def _redact(url: str) -> str:
    return url.split("?", 1)[0]


def _refusal_message(url: str, status: int, body: bytes | bytearray | None) -> str:
    """What a 401 / 403 means, with the server's own words when it sent a JSON error."""
    detail = ""
    try:
        error = json.loads(body or b"").get("error")
        if isinstance(error, str):
            detail = f": {error}"
    except (ValueError, AttributeError):
        pass
    if status == 401:
        hint = "pass api_key=... (or an Authorization header) that the server accepts"
    else:
        hint = "the credentials are valid but may not use this service (IAM: roles/run.invoker)"
    return f"the server refused the connection to {url} with HTTP {status}{detail} ({hint})"


class Transport:
    """A connected WebSocket. Create it with ``Transport.connect``."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._aborted = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        open_timeout: float | None = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Transport:
        secure = url.startswith("wss://")
        if ssl is not None and not secure:
            raise ValueError("an ssl context was given, but the URL is not wss://")
        kwargs: dict[str, object] = {}
        if secure:
            kwargs["ssl"] = ssl if ssl is not None else default_ssl_context()
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
                f"timed out after {open_timeout}s connecting to {_redact(url)}"
            ) from exc
        except InvalidURI as exc:
            raise ValueError(f"invalid sandbox URL {_redact(url)!r}: {exc}") from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise SandboxAuthenticationError(
                    _refusal_message(_redact(url), status, exc.response.body),
                    http_status=status,
                ) from exc
            raise SandboxConnectionError(f"cannot connect to {_redact(url)}: {exc}") from exc
        except (OSError, InvalidHandshake) as exc:
            raise SandboxConnectionError(f"cannot connect to {_redact(url)}: {exc}") from exc
        return cls(connection)

    async def send(self, text: str) -> None:
        if self._aborted:
            # websockets learns about the abort one loop iteration later; do not let a
            # frame vanish into the dead socket meanwhile.
            raise TransportClosed(CloseInfo(None, "aborted", False))
        try:
            await self._connection.send(text)
        except ConnectionClosed as exc:
            raise TransportClosed(_close_info(exc)) from exc

    async def recv(self) -> str | bytes:
        """The next frame; raises ``TransportClosed`` when the connection is over."""
        try:
            return await self._connection.recv()
        except ConnectionClosed as exc:
            raise TransportClosed(_close_info(exc)) from exc

    async def ping(self) -> bool:
        """Send a WebSocket ping and wait for its pong: True if it came, False if the
        connection closed first. The server answers in order, so a close it had already
        queued arrives before any pong."""
        if self._aborted:
            return False
        try:
            waiter = await self._connection.ping()
            await waiter
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        """A clean close handshake (bounded by websockets' close timeout)."""
        await self._connection.close()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close frame (used in tests)."""
        self._aborted = True
        transport = self._connection.transport
        if transport is not None:
            transport.abort()


def _close_info(exc: ConnectionClosed) -> CloseInfo:
    if exc.rcvd is not None:
        return CloseInfo(exc.rcvd.code, exc.rcvd.reason, True)
    return CloseInfo(None, "", False)
