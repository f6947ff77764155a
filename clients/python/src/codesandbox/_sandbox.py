"""``Sandbox``: the asyncio face of one sandbox session.

It owns one ``Connection`` (from its ``Transport``) and one ``ClientProtocol``. A
background reader task feeds every incoming frame to the protocol and applies the
resulting effects to futures, processes and streams; requests go the other way. When the
connection drops and ``auto_reconnect`` is on, the same task re-attaches with backoff,
sends ``{"action": "reconnect"}`` and flushes what was queued meanwhile.

Invariant: no wait handed to the caller stays pending once the connection is gone for
good; every path that ends a session goes through the ``Closed`` effect, which fails what
still waits (or, for ``terminate()`` / ``checkpoint()`` that succeeded, completes it).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, Literal, Optional, TypeVar

from . import _registry
from ._code import (
    CellCollector,
    CodeContext,
    Execution,
    ExecutionError,
    Result,
    context_id_of,
)
from ._effects import (
    CellEventReceived,
    Closed,
    Effect,
    Notice,
    OutputReceived,
    ProcessEnded,
    ProcessStarted,
    Ready,
    Reattached,
    ReattachFailed,
    Reconnect,
    RequestDone,
    RequestFailed,
    SendFrame,
    SetupFailed,
    StatusSeen,
    StdinAcknowledged,
    StdinFailed,
)
from ._errors import (
    SandboxAuthenticationError,
    SandboxConnectionError,
    SandboxError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxStateError,
    SandboxTimeoutError,
)
from ._frames import OutputEncoding, init_message
from ._listing import fetch_list, list_url
from ._process import OutputCallback, ProcessControl, SandboxProcess, new_process
from ._protocol import ClientProtocol, Phase
from ._reconnect import ReconnectOptions
from ._results import ProcessInfo, RunResult, SandboxList
from ._transport import (
    Connection,
    ConnectionClosed,
    Transport,
    WebSocketTransport,
    connection_headers,
)
from ._urls import attach_url, base_url, create_url

logger = logging.getLogger("codesandbox")

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_CLOSE_TIMEOUT = 10.0
# A re-attached connection that lived this long (seconds) earns a fresh set of attempts.
_STABLE_AFTER = 10.0

R = TypeVar("R")

SandboxState = Literal["running", "reconnecting", "closed", "checkpointed", "killed"]
StatusCallback = Callable[[str, Optional[str]], object]
ErrorCallback = Callable[[SandboxError], object]


class Sandbox:
    """A connected sandbox. Get one with ``await Sandbox.create(url)`` or
    ``await Sandbox.attach(url, sandbox_id)``; do not call the constructor.

    ``async with await Sandbox.create(url) as sandbox:`` terminates the sandbox when
    the block ends (unless it was checkpointed).
    """

    def __init__(
        self,
        url: str,
        *,
        attach: bool,
        transport: Transport | None,
        ssl: ssl_module.SSLContext | None,
        headers: Mapping[str, str] | None,
        auto_reconnect: bool | ReconnectOptions,
        connect_timeout: float | None,
        request_timeout: float | None,
        close_timeout: float | None,
        on_status: StatusCallback | None,
        on_error: ErrorCallback | None,
    ) -> None:
        self._url = base_url(url)
        if transport is not None and ssl is not None:
            raise ValueError("pass ssl= to the transport, not next to transport=")
        self._transport: Transport = transport or WebSocketTransport(ssl=ssl)
        self._headers = dict(headers or {})
        self._policy: ReconnectOptions | None
        if isinstance(auto_reconnect, ReconnectOptions):
            self._policy = auto_reconnect
        else:
            self._policy = ReconnectOptions() if auto_reconnect else None
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._close_timeout = close_timeout
        self._on_status = on_status
        self._on_error = on_error
        self._protocol = ClientProtocol(attach=attach, auto_reconnect=self._policy is not None)
        self._connection: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._callbacks: dict[str, tuple[OutputCallback | None, OutputCallback | None]] = {}
        self._controls: dict[str, ProcessControl] = {}
        # Code cells being run, by their process key.
        self._cells: dict[str, CellCollector] = {}
        # Failures the server closes the session after: reported once the close came.
        self._after_close: list[tuple[asyncio.Future[Any], SandboxError]] = []
        self._outbox: list[str] = []
        self._reattached = asyncio.Event()
        self._reattached.set()
        self._closed = asyncio.Event()
        self._close_error: SandboxError | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._reconnect_streak = 0
        self._last_reattach = float("-inf")
        self._host = _Host(self)
        # Frames the protocol sends by itself; referenced until sent.
        self._background: set[asyncio.Task[None]] = set()
        self.sandbox_id: str | None = None
        """The sandbox's id (set once the sandbox runs)."""
        self.sandbox_token: str | None = None
        """The secret that ``attach`` needs; keep it to attach from another process."""

    # ------------------------------------------------------------------ factories

    @classmethod
    async def create(
        cls,
        url: str,
        *,
        idle_timeout: float | None = None,
        enable_checkpoint: bool = False,
        enable_idle_timeout_auto_checkpoint: bool = False,
        enable_sandbox_handoff: bool = False,
        filesystem_snapshot_name: str | None = None,
        enable_network: bool = False,
        labels: Mapping[str, str] | None = None,
        auto_reconnect: bool | ReconnectOptions = False,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        on_status: StatusCallback | None = None,
        on_error: ErrorCallback | None = None,
        transport: Transport | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> Sandbox:
        """Create a new sandbox and wait until it runs.

        ``url`` is the service's base URL (``wss://host``, ``ws://127.0.0.1:8080``;
        ``https://`` / ``http://`` work too). ``idle_timeout`` is in seconds
        (``None``: the server's default; ``0``: the server's cap). ``enable_network=True``
        asks for network egress under the server's policy (by default the Python package
        index only, e.g. for ``pip install``). ``enable_sandbox_handoff=True`` lets the
        sandbox move to another server instance when a client attaches there (it implies
        checkpointing). ``labels`` (at most 16 short strings) are listed by
        ``Sandbox.list()``. See ``docs/clients.md`` for the connection options
        (``auto_reconnect``, timeouts, ``headers``, ``api_key``, callbacks, ``transport``,
        ``ssl``).

        ``headers`` are added to the WebSocket upgrade request (for example
        ``{"Authorization": "Bearer <identity token>"}`` for a Cloud Run service deployed
        with ``--no-allow-unauthenticated``); ``api_key`` is the shorthand for
        ``Authorization: Bearer <api_key>`` (a server started with ``SANDBOX_API_KEYS``).
        Both are sent again on every re-attach. A refusal (HTTP 401 or 403) raises
        ``SandboxAuthenticationError``.
        """
        sandbox = cls(
            url,
            attach=False,
            transport=transport,
            ssl=ssl,
            headers=connection_headers(headers, api_key),
            auto_reconnect=auto_reconnect,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            close_timeout=close_timeout,
            on_status=on_status,
            on_error=on_error,
        )
        first = init_message(
            idle_timeout=idle_timeout,
            enable_checkpoint=enable_checkpoint,
            enable_idle_timeout_auto_checkpoint=enable_idle_timeout_auto_checkpoint,
            enable_sandbox_handoff=enable_sandbox_handoff,
            filesystem_snapshot_name=filesystem_snapshot_name,
            enable_network=enable_network,
            labels=labels,
        )
        await sandbox._open(create_url(sandbox._url), first)
        return sandbox

    @staticmethod
    async def list(
        url: str,
        *,
        checkpointed: bool = False,
        limit: int | None = None,
        after: str | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        ssl: ssl_module.SSLContext | None = None,
    ) -> SandboxList:
        """The sandboxes of the server instance that answers (``GET /sandboxes``), or with
        ``checkpointed=True`` the checkpoints in its store, one page of at most ``limit``
        (1 to 1000, default 100) from ``after`` on (``result.next_after`` for the next page).

        Behind a load balancer (Cloud Run) the answer comes from whichever instance got the
        request. Tokens are never listed. ``headers``, ``api_key`` and ``ssl`` work as in
        ``create``; a refusal (HTTP 401 or 403) raises ``SandboxAuthenticationError``.
        """
        target = list_url(url, checkpointed=checkpointed, limit=limit, after=after)
        return await fetch_list(
            target, headers=connection_headers(headers, api_key), timeout=timeout, ssl=ssl
        )

    @classmethod
    async def attach(
        cls,
        url: str,
        sandbox_id: str,
        sandbox_token: str | None = None,
        *,
        auto_reconnect: bool | ReconnectOptions = False,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        on_status: StatusCallback | None = None,
        on_error: ErrorCallback | None = None,
        transport: Transport | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> Sandbox:
        """Attach to a live sandbox, or restore a checkpointed one.

        ``sandbox_token`` may be omitted for a sandbox created (or attached with a
        token) in this process: the library remembers it. ``headers`` and ``api_key``
        work as in ``create`` (the sandbox token is not an API key: a server with API
        keys needs both).
        """
        token = sandbox_token if sandbox_token is not None else _registry.recall_token(sandbox_id)
        if token is None:
            raise SandboxPermissionError(
                f'no sandbox_token given for sandbox "{sandbox_id}" and none remembered in '
                "this process; pass the token that create() returned"
            )
        sandbox = cls(
            url,
            attach=True,
            transport=transport,
            ssl=ssl,
            headers=connection_headers(headers, api_key),
            auto_reconnect=auto_reconnect,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            close_timeout=close_timeout,
            on_status=on_status,
            on_error=on_error,
        )
        sandbox.sandbox_id = sandbox_id
        sandbox.sandbox_token = token
        sandbox._protocol.sandbox_id = sandbox_id
        sandbox._protocol.sandbox_token = token
        await sandbox._open(attach_url(sandbox._url, sandbox_id, token), None)
        return sandbox

    def _connection_options(self) -> dict[str, Any]:
        """What a second connection to the same server is opened with."""
        return {
            "transport": self._transport,
            "headers": self._headers,
            "connect_timeout": self._connect_timeout,
            "request_timeout": self._request_timeout,
            "close_timeout": self._close_timeout,
        }

    async def _open(self, url: str, first_message: str | None) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._connection = await self._transport.connect(
            url, headers=self._headers, open_timeout=self._connect_timeout
        )
        self._reader = asyncio.create_task(self._read_loop())
        try:
            if first_message is not None:
                # On a closed socket the reader sees the close and fails ``_ready``.
                with contextlib.suppress(ConnectionClosed):
                    await self._connection.send(first_message)
            await self._wait(self._ready, "the sandbox to be ready")
        except BaseException:
            await self._shutdown()
            raise
        if self.sandbox_token is not None and self.sandbox_id is not None:
            _registry.remember_token(self.sandbox_id, self.sandbox_token)
        if self.sandbox_id is not None:
            _registry.set_live(self.sandbox_id, self)

    # ------------------------------------------------------------------- context

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._protocol.checkpointed:
            await self.disconnect()
            return
        try:
            await self.terminate()
        except SandboxError:
            if exc is None:
                raise
            logger.warning("could not terminate sandbox %s", self.sandbox_id, exc_info=True)

    # ------------------------------------------------------------------ queries

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self._url

    @property
    def closed(self) -> bool:
        """True once this connection is over (terminated, checkpointed, or lost)."""
        return self._closed.is_set()

    @property
    def state(self) -> SandboxState:
        """``"running"``: connected; ``"reconnecting"``: the connection dropped and is being
        re-established (requests are queued); ``"closed"``: disconnected, the sandbox may
        still exist (attach again to use it); ``"checkpointed"``: saved by ``checkpoint()``
        (``Sandbox.attach`` restores it); ``"killed"``: deleted by ``terminate()`` or by
        the server (idle timeout)."""
        if self._protocol.terminated:
            return "killed"
        if self._protocol.checkpointed:
            return "checkpointed"
        if self._closed.is_set() or self._protocol.phase is Phase.CLOSED:
            return "closed"
        if self._protocol.phase is Phase.REATTACHING:
            return "reconnecting"
        return "running"

    @property
    def protocol(self) -> int:
        """2 when the server announced protocol 2 (request ids, several processes at once,
        stdin flow control, process handles); else 1."""
        return self._protocol.protocol

    @property
    def terminated(self) -> bool:
        return self._protocol.terminated

    @property
    def checkpointed(self) -> bool:
        return self._protocol.checkpointed

    # --------------------------------------------------------------- executions

    async def exec(
        self,
        code: str,
        language: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        output_encoding: OutputEncoding = "text",
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> SandboxProcess:
        """Start ``code`` in ``language`` (``"python"`` or ``"bash"``) and return the process
        once the server confirmed it started.

        ``env`` adds environment variables, ``cwd`` sets the working directory
        (default ``/root``), ``timeout`` limits the wall-clock seconds (the server
        kills it; ``reason == "timeout"``). ``output_encoding="base64"`` has the server
        send the output as exact bytes (for binary output): read them with
        ``read_all_bytes()`` / ``bytes()``; text reads decode them as UTF-8.
        ``on_stdout`` / ``on_stderr`` are called with each chunk of text as it arrives
        (the streams keep it too).

        With a server that speaks protocol 2, processes run side by side; with another,
        one at a time: ``exec`` while one runs raises ``SandboxStateError`` without asking
        the server.
        """
        if not isinstance(code, str) or not isinstance(language, str):
            raise TypeError("exec(code, language): both must be str")
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise TypeError("env must map str to str")
        live = self._live_elsewhere()
        if live is not None:
            return await live.exec(
                code,
                language,
                env=env,
                cwd=cwd,
                timeout=timeout,
                output_encoding=output_encoding,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        self._check_usable()
        request_id, frame = self._protocol.send_exec(
            code, language, env=env, cwd=cwd, timeout=timeout, output_encoding=output_encoding
        )
        self._callbacks[request_id] = (on_stdout, on_stderr)
        process: SandboxProcess = await self._request(request_id, frame, "the execution to start")
        return process

    async def run(
        self,
        code: str,
        language: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> RunResult:
        """Run ``code`` to completion; return its output (text) and how it ended.

        ``stdin`` is written to the process, then its stdin is closed (always: a
        program that reads stdin sees end-of-file instead of waiting forever). If the
        call is cancelled, or the server refuses the stdin, the process is killed; a
        refusal is raised (also one that came after the last write, from a server
        without protocol 2).
        """
        process = await self.exec(
            code,
            language,
            env=env,
            cwd=cwd,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        try:
            await self._feed_and_close(process, stdin)
            stdout, stderr, result = await asyncio.gather(
                process.stdout.read_all(), process.stderr.read_all(), process.result()
            )
            if process.stdin_error is not None:
                raise process.stdin_error
        except BaseException:
            # Do not leave the process running behind a failed or cancelled run().
            if not process.done and not self.closed:
                await asyncio.shield(self._kill_quietly(process))
            raise
        return RunResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=result.exit_code,
            reason=result.reason,
            signal=result.signal,
            duration_ms=result.duration_ms,
        )

    async def _feed_and_close(self, process: SandboxProcess, stdin: str | bytes | None) -> None:
        """``run()``'s stdin: written, then closed. A process that ended meanwhile did not
        need it; a refusal is raised."""
        try:
            if stdin:
                await process.write(stdin)
            await process.close_stdin()
        except SandboxStateError:
            if not process.done:
                raise

    async def _kill_quietly(self, process: SandboxProcess) -> None:
        with contextlib.suppress(SandboxError):
            await process.kill()

    async def list_processes(self) -> builtins.list[ProcessInfo]:
        """The sandbox's processes, running or ended and not yet reported (protocol 2)."""
        live = self._live_elsewhere()
        if live is not None:
            return await live.list_processes()
        self._check_usable()
        request_id, frame = self._protocol.send_list_processes()
        result: list[ProcessInfo] = await self._request(request_id, frame, "the process list")
        return result

    async def attach_process(
        self,
        process_id: int,
        *,
        output_encoding: OutputEncoding = "text",
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> SandboxProcess:
        """Follow a process of the sandbox started elsewhere (another connection, another
        client process) by its ``process_id`` (see ``list_processes()``): its output
        held while nobody followed it comes first, then what it writes from now on, then
        its end (protocol 2)."""
        live = self._live_elsewhere()
        if live is not None:
            return await live.attach_process(
                process_id,
                output_encoding=output_encoding,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        self._check_usable()
        request_id, frame = self._protocol.send_attach_process(
            process_id, output_encoding=output_encoding
        )
        self._callbacks[request_id] = (on_stdout, on_stderr)
        process: SandboxProcess = await self._request(request_id, frame, f"process {process_id}")
        return process

    async def set_idle_timeout(self, idle_timeout: float) -> float | None:
        """Change how long the sandbox lives without a client (seconds; ``0``: the server's
        cap), counted from the disconnection. Returns what the server put in effect
        (protocol 2)."""
        live = self._live_elsewhere()
        if live is not None:
            return await live.set_idle_timeout(idle_timeout)
        self._check_usable()
        request_id, frame = self._protocol.send_set_idle_timeout(idle_timeout)
        result: float | None = await self._request(request_id, frame, "the idle timeout")
        return result

    # -------------------------------------------------------- code interpreter

    async def run_code(
        self,
        code: str,
        context: CodeContext | str | None = None,
        *,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_result: Callable[[Result], object] | None = None,
        on_error: Callable[[ExecutionError], object] | None = None,
        timeout: float | None = None,
    ) -> Execution:
        """Run a cell of Python in a code context (the ``"default"`` one, created on
        first use, unless ``context`` names another) and return its ``Execution``:
        variables, imports and definitions persist from cell to cell. The trailing
        expression's value is the main result; ``display()`` and matplotlib figures add
        results; an exception in the cell is ``Execution.error`` (not raised).

        Cells of one context run one at a time: this waits for the ones before it.
        ``timeout`` (seconds) interrupts the cell (KeyboardInterrupt; the context keeps
        its state). A dead, deleted or unknown context raises ``SandboxError``
        (protocol 2)."""
        if not isinstance(code, str):
            raise TypeError("run_code(code): code must be str")
        live = self._live_elsewhere()
        if live is not None:
            return await live.run_code(
                code,
                context,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
                on_error=on_error,
                timeout=timeout,
            )
        self._check_usable()
        request_id, frame = self._protocol.send_run_code(
            code, context_id=context_id_of(context), timeout=timeout
        )
        collector = CellCollector(on_stdout, on_stderr, on_result, on_error)
        self._cells[request_id] = collector
        self._callbacks[request_id] = (collector.stdout, collector.stderr)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(frame, queue_while_reconnecting=True)
            # Not bounded by the request timeout: the cell may wait behind others of its
            # context; the server answers (or the session ends) in every case.
            process: SandboxProcess = await asyncio.shield(future)
            result = await process.result()
            return collector.finish(process.process_id, result)
        except BaseException:
            self._protocol.abandon(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
            self._callbacks.pop(request_id, None)
            self._cells.pop(request_id, None)
            _mark_retrieved(future)

    async def create_code_context(self, cwd: str | None = None) -> CodeContext:
        """A new code context (its own globals; ``cwd`` defaults to ``/root``)."""
        reply = await self._code_context_action("create_code_context", cwd=cwd)
        return CodeContext.from_wire(reply.get("context"))

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts, with their ``state`` (idle, busy, dead)."""
        reply = await self._code_context_action("list_code_contexts")
        contexts = reply.get("contexts")
        return [CodeContext.from_wire(c) for c in contexts] if isinstance(contexts, list) else []

    async def restart_code_context(self, context: CodeContext | str) -> CodeContext:
        """A fresh process for the context (its state is lost; a dead one lives again)."""
        reply = await self._code_context_action(
            "restart_code_context", context_id=context_id_of(context)
        )
        return CodeContext.from_wire(reply.get("context"))

    async def delete_code_context(self, context: CodeContext | str) -> None:
        """End the context; cells waiting for it are refused."""
        await self._code_context_action("delete_code_context", context_id=context_id_of(context))

    async def _code_context_action(self, action: str, **fields: Any) -> dict[str, Any]:
        live = self._live_elsewhere()
        if live is not None:
            return await live._code_context_action(action, **fields)
        self._check_usable()
        request_id, frame = self._protocol.send_code_context_action(action, **fields)
        reply: dict[str, Any] = await self._request(request_id, frame, action)
        return reply

    # ------------------------------------------------------ the ProcessHost side

    async def _write_stdin(self, key: str, data: str | bytes) -> None:
        as_text = isinstance(data, str)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        offset = 0
        while offset < len(payload):
            control = self._stdin_control(key, "write to stdin")
            control.stdin_changed.clear()
            flow_control = self._protocol.stdin_room(key) is not None
            if not self._reattached.is_set() and flow_control:
                # Stdin with flow control waits for the new connection (not queued), so
                # that the window is counted on the connection it is sent on.
                await self._reattached.wait()  # also set when the session ends
                continue
            size = self._protocol.next_stdin_piece(key, payload, offset, as_text)
            if size == 0:
                await control.stdin_changed.wait()
                continue
            frame = self._protocol.send_stdin(key, payload[offset : offset + size], as_text=as_text)
            await self._send(frame, queue_while_reconnecting=True, queue_on_drop=True)
            offset += size

    async def _close_stdin(self, key: str) -> None:
        # Everything written must be acknowledged first (protocol 2): a refusal of it
        # reaches this call, and EOF comes after the last byte.
        while True:
            control = self._controls.get(key)
            if control is not None and control.stdin_error is not None:
                raise control.stdin_error
            if control is None or control.process.done:
                if self._closed.is_set() and self._close_error is not None:
                    raise self._close_error
                return  # it ended meanwhile: nothing reads its stdin any more
            control.stdin_changed.clear()
            if self._protocol.stdin_unacknowledged(key) == 0:
                break
            await control.stdin_changed.wait()
        frame = self._protocol.send_close_stdin(key)
        await self._send(frame, queue_while_reconnecting=True, queue_on_drop=True)

    def _stdin_control(self, key: str, what: str) -> ProcessControl:
        """The process's control while its stdin can still be used; else the reason."""
        control = self._controls.get(key)
        if control is not None and control.stdin_error is not None:
            raise control.stdin_error
        if control is None or control.process.done:
            if self._closed.is_set() and self._close_error is not None:
                raise self._close_error
            raise SandboxStateError(f"cannot {what}: the process has ended")
        return control

    async def _kill_process(self, key: str) -> None:
        control = self._controls.get(key)
        if control is None or control.process.done:
            return
        request_id, frame = self._protocol.send_kill(key)
        try:
            await self._request(request_id, frame, "the process to be killed")
        except SandboxError:
            # The process may have ended on its own while the kill was on its way
            # (the server then answers with an error): that is success.
            if control.process.done:
                return
            raise

    # ----------------------------------------------------------- sandbox actions

    async def snapshot_filesystem(self, name: str) -> None:
        """Save the sandbox's files as snapshot ``name``; returns once the server
        reported ``SANDBOX_FILESYSTEM_SNAPSHOT_CREATED``. The session goes on, with its
        processes.

        Create new sandboxes from it, on any server instance sharing the snapshot
        directory, with ``Sandbox.create(url, filesystem_snapshot_name=name)``. Raises
        ``SandboxSnapshotError`` with the server's message (an invalid name, a server
        without ``FILESYSTEM_SNAPSHOT_PATH``, an execution running); the session stays
        usable. Names are checked by the server (1 to 64 of ``A-Z a-z 0-9 . _ -``, not
        starting with a dot); an existing snapshot of that name is replaced.
        """
        if not isinstance(name, str):
            raise TypeError("the snapshot name must be a str")
        live = self._live_elsewhere()
        if live is not None:
            return await live.snapshot_filesystem(name)
        self._check_usable()
        request_id, frame = self._protocol.send_snapshot(name)
        await self._request(request_id, frame, "the filesystem snapshot")

    async def checkpoint(self) -> None:
        """Save the sandbox (filesystem and running processes) and disconnect.

        Returns once the server reported ``SANDBOX_CHECKPOINTED`` and closed the
        connection. Continue later with ``Sandbox.attach(url, sandbox_id)``, on this or
        any server instance sharing ``CHECKPOINT_AND_RESTORE_PATH``.

        Raises:

        * ``SandboxStateError`` while an execution runs; the session goes on.
        * ``SandboxCheckpointError`` when the server refuses up front (e.g. the sandbox
          has open TCP connections): nothing was touched and the session goes on.
        * ``SandboxCheckpointError`` when checkpointing is impossible (sandbox created
          without ``enable_checkpoint=True``, server without
          ``CHECKPOINT_AND_RESTORE_PATH``): the server closes the connection; this raises
          once it did (``sandbox.closed`` is True).
        """
        live = self._live_elsewhere()
        if live is not None:
            return await live.checkpoint()
        self._check_usable()
        request_id, frame = self._protocol.send_checkpoint()
        await self._request(request_id, frame, "the checkpoint")
        await self._wait_server_close()

    async def terminate(self) -> None:
        """Destroy the sandbox and its saved state (``kill_sandbox``).

        Idempotent. If this connection is already closed (it dropped, or a checkpoint
        failed or succeeded), it re-attaches first so that the sandbox really goes.
        """
        if self._protocol.terminated or self.sandbox_id is None:
            return
        if not self.closed and self._protocol.phase is not Phase.CLOSED:
            request_id, frame = self._protocol.send_terminate()
            try:
                await self._request(request_id, frame, "the sandbox to be terminated")
            except SandboxTimeoutError:
                raise  # a silent server is an answer to give the caller
            except SandboxConnectionError:
                if self._protocol.terminated:
                    return
                # The connection closed under us (e.g. right after a failed
                # checkpoint): fall through and re-attach to finish the job.
                await self._wait_server_close()
            else:
                _registry.forget_token(self.sandbox_id)
                await self._wait_server_close()
                return
        live = self._live_elsewhere()
        if live is not None:
            await live.terminate()
        else:
            await self._terminate_by_reattach()
        self._protocol.terminated = True
        _registry.forget_token(self.sandbox_id)

    async def _terminate_by_reattach(self) -> None:
        assert self.sandbox_id is not None
        try:
            other = await Sandbox.attach(
                self._url, self.sandbox_id, self.sandbox_token, **self._connection_options()
            )
        except SandboxNotFoundError:
            return  # already gone: that is what terminate() wants
        await other.terminate()

    async def kill(self) -> None:
        """Alias of ``terminate()``."""
        await self.terminate()

    async def disconnect(self) -> None:
        """Close this connection without destroying the sandbox.

        The sandbox lives on until its idle timeout; attach to it again with its id and
        token. Pending waits fail with ``SandboxConnectionError``.
        """
        await self._shutdown(SandboxConnectionError("disconnected by the client"))

    # ------------------------------------------------------------------ plumbing

    def _live_elsewhere(self) -> Sandbox | None:
        """Another handle's live session for this sandbox, when this one's has ended."""
        if not self._closed.is_set() or self._protocol.terminated:
            return None
        live = _registry.live(self.sandbox_id)
        if live is None or live is self or not isinstance(live, Sandbox):
            return None
        return None if live.closed else live

    def _check_usable(self) -> None:
        if self._closed.is_set() and self._close_error is not None:
            if self._protocol.terminated:
                raise SandboxStateError("the sandbox was terminated")
            if self._protocol.checkpointed:
                raise SandboxStateError("the sandbox was checkpointed; attach to it to continue")
            raise SandboxStateError(
                f"the connection to the sandbox is closed: {self._close_error.message}"
            )

    async def _wait(self, future: asyncio.Future[R], what: str) -> R:
        """Wait for a future the reader resolves, bounded by ``request_timeout``."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._request_timeout)
        except asyncio.TimeoutError:
            raise SandboxTimeoutError(
                f"no answer from the server within {self._request_timeout:g}s waiting for {what}"
            ) from None

    async def _request(self, request_id: str, frame: str, what: str) -> Any:
        """Send a request and wait for its answer (the value of ``RequestDone``)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(frame, queue_while_reconnecting=True)
            return await self._wait(future, what)
        except BaseException:
            self._protocol.abandon(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
            self._callbacks.pop(request_id, None)
            _mark_retrieved(future)

    async def _send(
        self, frame: str, *, queue_while_reconnecting: bool, queue_on_drop: bool = False
    ) -> None:
        # Queued from the drop until the re-attach sent ``reconnect`` and the queue, in order.
        if queue_while_reconnecting and (not self._reattached.is_set() or self._outbox):
            self._outbox.append(frame)
            return
        connection = self._connection
        if connection is None or self._closed.is_set():
            raise SandboxConnectionError("the connection to the sandbox is closed")
        try:
            await connection.send(frame)
        except ConnectionClosed as exc:
            if queue_on_drop and self._policy is not None:
                # The reader is about to see the close and re-attach; if it does not,
                # the process fails anyway.
                self._outbox.append(frame)
                return
            raise SandboxConnectionError(
                "the connection to the sandbox closed while sending", close_code=exc.code
            ) from exc

    async def _send_quietly(self, frame: str) -> None:
        with contextlib.suppress(SandboxError):
            await self._send(frame, queue_while_reconnecting=True)

    async def _wait_server_close(self) -> None:
        """After kill_sandbox / checkpoint: the server closes; do not leave it half-open."""
        try:
            await asyncio.wait_for(self._closed.wait(), self._close_timeout)
        except asyncio.TimeoutError:
            logger.debug("server did not close the connection; closing it")
            await self._shutdown(SandboxConnectionError("closed by the client"))

    def _arm_close_timer(self) -> None:
        """The server is expected to close: if it does not within ``close_timeout``, the
        client closes, so that nothing waits on a half-open session."""
        if self._close_timer is not None or self._close_timeout is None:
            return
        loop = asyncio.get_running_loop()

        def expire() -> None:
            if not self._closed.is_set():
                error = SandboxConnectionError(
                    f"the server did not close the connection within "
                    f"{self._close_timeout:g}s; closed by the client"
                )
                task = asyncio.ensure_future(self._shutdown(error))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._close_timer = loop.call_later(self._close_timeout, expire)

    async def _read_loop(self) -> None:
        try:
            while True:
                connection = self._connection
                assert connection is not None  # set before the reader starts
                try:
                    frame = await connection.recv()
                except ConnectionClosed as exc:
                    effects = self._protocol.connection_closed(
                        exc.code, exc.reason, close_frame_received=exc.received
                    )
                    if any(isinstance(e, Reconnect) for e in effects):
                        self._reattached.clear()
                        self._apply(effects)
                        if await self._reconnect():
                            continue
                        return
                    self._apply(effects)
                    self._mark_closed(None)
                    return
                self._apply(self._protocol.receive_frame(frame))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave waits hanging
            logger.exception("codesandbox reader failed")
            self._apply(self._protocol.give_up(SandboxError(f"internal client error: {exc!r}")))
            self._mark_closed(None)

    async def _reconnect(self) -> bool:
        """Re-attach with backoff. True when the session continues on a new connection."""
        policy = self._policy
        assert policy is not None  # only called when auto_reconnect is on
        assert self.sandbox_id is not None  # set once the sandbox ran
        old = self._connection
        if old is not None:
            old.abort()
        last_error: SandboxError = SandboxConnectionError("the connection dropped")
        loop = asyncio.get_running_loop()
        # A connection that drops again right after a successful re-attach does not get
        # a fresh set of attempts, so a server that accepts and drops cannot loop us.
        if loop.time() - self._last_reattach > _STABLE_AFTER:
            self._reconnect_streak = 0
        while self._reconnect_streak < policy.max_attempts:
            self._reconnect_streak += 1
            attempt = self._reconnect_streak
            await asyncio.sleep(policy.delay(attempt))
            logger.info(
                "re-attaching to sandbox %s (attempt %d of %d)",
                self.sandbox_id,
                attempt,
                policy.max_attempts,
            )
            try:
                connection = await self._transport.connect(
                    attach_url(self._url, self.sandbox_id, self.sandbox_token),
                    headers=self._headers,
                    open_timeout=self._connect_timeout,
                )
            except SandboxConnectionError as exc:
                last_error = exc
                continue
            except SandboxAuthenticationError as exc:
                # The same credentials will be refused again (e.g. a revoked key).
                last_error = exc
                break
            self._protocol.begin_reattach()
            try:
                outcome = await asyncio.wait_for(
                    self._await_reattach(connection), self._request_timeout
                )
            except asyncio.TimeoutError:
                connection.abort()
                last_error = SandboxTimeoutError("no answer to the re-attach")
                continue
            except BaseException:  # cancelled (disconnect()): do not leak the socket
                connection.abort()
                raise
            if isinstance(outcome, Reattached):
                self._connection = connection
                try:
                    await connection.send(self._protocol.send_reconnect())
                    # ``_send`` keeps appending while the outbox is not empty, so frames
                    # written meanwhile stay in order behind the queued ones.
                    while self._outbox:
                        await connection.send(self._outbox[0])
                        self._outbox.pop(0)
                except ConnectionClosed:
                    pass  # the reader sees it next and starts over
                logger.info("re-attached to sandbox %s", self.sandbox_id)
                self._last_reattach = loop.time()
                self._reattached.set()
                return True
            connection.abort()
            last_error = outcome.error
            if not outcome.retryable:
                break
        self._outbox.clear()
        message = (
            f"lost the connection to sandbox {self.sandbox_id} and could not re-attach: "
            f"{last_error.message}"
        )
        final: SandboxError
        if isinstance(last_error, SandboxAuthenticationError):
            final = SandboxAuthenticationError(message, http_status=last_error.http_status)
        else:
            final = SandboxConnectionError(message, status=last_error.status)
        self._apply(self._protocol.give_up(final))
        self._mark_closed(None)
        return False

    async def _await_reattach(self, connection: Connection) -> Reattached | ReattachFailed:
        while True:
            try:
                frame = await connection.recv()
                effects = self._protocol.receive_frame(frame)
            except ConnectionClosed as exc:
                effects = self._protocol.connection_closed(
                    exc.code, exc.reason, close_frame_received=exc.received
                )
            for effect in effects:
                if isinstance(effect, (Reattached, ReattachFailed)):
                    self._apply([e for e in effects if e is not effect])
                    return effect
            self._apply(effects)

    def _apply(self, effects: builtins.list[Effect]) -> None:
        for effect in effects:
            self._apply_one(effect)

    def _apply_one(self, effect: Effect) -> None:
        if isinstance(effect, Ready):
            self.sandbox_id = effect.sandbox_id
            self.sandbox_token = effect.sandbox_token
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif isinstance(effect, SetupFailed):
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(effect.error)
            self._mark_closed(effect.error)
        elif isinstance(effect, StatusSeen):
            if self._on_status is not None:
                self._call_back(self._on_status, effect.status, effect.message)
            if effect.status in ("SANDBOX_CHECKPOINTED", "SANDBOX_KILLED"):
                self._arm_close_timer()
        elif isinstance(effect, ProcessStarted):
            on_stdout, on_stderr = self._callbacks.pop(effect.key, (None, None))
            self._controls[effect.key] = new_process(
                self._host, effect.key, effect.process_id, on_stdout=on_stdout, on_stderr=on_stderr
            )
        elif isinstance(effect, RequestDone):
            future = self._pending.pop(effect.request_id, None)
            value = effect.value
            if isinstance(value, str) and value in self._controls:
                # An exec or attach_process: the caller gets the process (it may end
                # within this same batch of effects, before the caller resumes).
                value = self._controls[value].process
            if future is not None and not future.done():
                future.set_result(value)
        elif isinstance(effect, RequestFailed):
            future = self._pending.pop(effect.request_id, None)
            if future is None or future.done():
                return
            if effect.session_ends:
                # Reported once the server's close came, so that the caller sees a
                # settled session (``closed`` is True, attach works at once).
                self._after_close.append((future, effect.error))
                self._arm_close_timer()
            else:
                future.set_exception(effect.error)
        elif isinstance(effect, OutputReceived):
            control = self._controls.get(effect.key)
            if control is not None:
                control.output(effect.stream, effect.data)
        elif isinstance(effect, ProcessEnded):
            control = self._controls.pop(effect.key, None)
            if control is not None:
                control.finish(effect.result)
        elif isinstance(effect, CellEventReceived):
            cell = self._cells.get(effect.key)
            if cell is not None:
                try:
                    cell.event(effect.frame)
                except Exception:  # a user's callback must not break the session
                    logger.exception("on_result / on_error callback raised")
        elif isinstance(effect, StdinAcknowledged):
            control = self._controls.get(effect.key)
            if control is not None:
                control.stdin_changed.set()
        elif isinstance(effect, StdinFailed):
            control = self._controls.get(effect.key)
            if control is not None:
                control.refuse_stdin(effect.error)
        elif isinstance(effect, SendFrame):
            task = asyncio.ensure_future(self._send_quietly(effect.frame))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif isinstance(effect, Notice):
            if self._on_error is not None:
                self._call_back(self._on_error, effect.error)
            else:
                logger.warning("sandbox %s: %s", self.sandbox_id, effect.error)
        elif isinstance(effect, Reconnect):
            logger.info("sandbox %s: connection lost (%s)", self.sandbox_id, effect.reason)
        elif isinstance(effect, Closed):
            self._outbox.clear()
            self._fail_all(effect.error)
            if effect.terminated and self.sandbox_id is not None:
                _registry.forget_token(self.sandbox_id)
            self._mark_closed(effect.error)

    def _call_back(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # a user's callback must not break the session
            logger.exception("on_status / on_error callback raised")

    def _fail_all(self, error: SandboxError) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for future, own in self._after_close:
            if not future.done():
                future.set_exception(own)
        self._after_close.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        controls, self._controls = self._controls, {}
        for control in controls.values():
            control.fail(error)

    def _mark_closed(self, error: SandboxError | None) -> None:
        if self._close_error is None:
            self._close_error = error or SandboxConnectionError("the connection is closed")
        self._closed.set()
        self._reattached.set()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        _registry.forget_live(self.sandbox_id, self)

    async def _shutdown(self, error: SandboxError | None = None) -> None:
        """Stop the reader, close the socket, fail whatever still waits."""
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        connection = self._connection
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), self._close_timeout)
            except (asyncio.TimeoutError, OSError):
                connection.abort()
        error = error or SandboxConnectionError("the connection is closed")
        self._apply(self._protocol.give_up(error))
        self._mark_closed(error)
        if self._ready is not None:
            _mark_retrieved(self._ready)

    def __repr__(self) -> str:
        return f"<Sandbox {self.sandbox_id} {self.state}>"


class _Host:
    """The ``ProcessHost`` a sandbox gives its processes (kept off ``Sandbox``'s API)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def write_stdin(self, key: str, data: str | bytes) -> None:
        await self._sandbox._write_stdin(key, data)

    async def close_stdin(self, key: str) -> None:
        await self._sandbox._close_stdin(key)

    async def kill_process(self, key: str) -> None:
        await self._sandbox._kill_process(key)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """A future nobody awaits any more must not log "exception was never retrieved"."""
    if future.done() and not future.cancelled():
        future.exception()
