"""``Sandbox``: the asyncio face of one sandbox session.

It owns one ``Transport`` and one ``ClientProtocol``. A background reader task feeds
every incoming frame to the protocol and applies the resulting effects to futures,
processes and streams; requests go the other way. When the connection drops and
``auto_reconnect`` is on, the same task re-attaches with backoff, sends
``{"action": "reconnect"}`` and flushes what was queued meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

from . import _tokens
from ._errors import (
    SandboxAuthenticationError,
    SandboxCheckpointError,
    SandboxConnectionError,
    SandboxError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxStateError,
    SandboxTimeoutError,
)
from ._process import RunResult, SandboxProcess
from ._protocol import (
    ClientProtocol,
    Closed,
    Effect,
    ExecDone,
    ExecFailed,
    ExecStarted,
    Notice,
    Op,
    OpDone,
    OpFailed,
    OutputEncoding,
    OutputReceived,
    Phase,
    Ready,
    Reattached,
    ReattachFailed,
    Reconnect,
    SetupFailed,
    init_message,
)
from ._reconnect import ReconnectOptions
from ._transport import (
    Transport,
    TransportClosed,
    attach_url,
    base_url,
    connection_headers,
    create_url,
)

logger = logging.getLogger("codesandbox")

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 120.0
# How long to wait for the server's close after kill_sandbox / checkpoint succeeded.
_CLOSE_WAIT = 10.0
# A re-attached connection that lived this long (seconds) earns a fresh set of attempts.
_STABLE_AFTER = 10.0

R = TypeVar("R")

SandboxState = Literal["running", "reconnecting", "closed", "checkpointed", "killed"]


class _PendingExec:
    def __init__(self, execution_id: int, future: asyncio.Future[SandboxProcess]):
        self.execution_id = execution_id
        self.future = future


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
        ssl: ssl_module.SSLContext | None,
        auto_reconnect: bool | ReconnectOptions,
        connect_timeout: float | None,
        request_timeout: float | None,
        headers: dict[str, str],
    ) -> None:
        self._url = base_url(url)
        self._ssl = ssl
        # Sent with every upgrade: the first connection, re-attaches, terminate's attach.
        self._headers = headers
        self._policy: ReconnectOptions | None
        if isinstance(auto_reconnect, ReconnectOptions):
            self._policy = auto_reconnect
        else:
            self._policy = ReconnectOptions() if auto_reconnect else None
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._protocol = ClientProtocol(attach=attach, auto_reconnect=self._policy is not None)
        self._transport: Transport | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending_exec: _PendingExec | None = None
        self._process: SandboxProcess | None = None
        self._op_futures: dict[Op, asyncio.Future[None]] = {}
        self._outbox: list[str] = []
        self._closed = asyncio.Event()
        self._close_error: SandboxError | None = None
        self._user_closed = False
        self._reconnect_streak = 0
        self._last_reattach = float("-inf")
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
        idle_timeout: int | None = None,
        enable_checkpoint: bool = False,
        enable_idle_timeout_auto_checkpoint: bool = False,
        enable_sandbox_handoff: bool = False,
        filesystem_snapshot_name: str | None = None,
        enable_network: bool = False,
        ssl: ssl_module.SSLContext | None = None,
        auto_reconnect: bool | ReconnectOptions = False,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> Sandbox:
        """Create a new sandbox and wait until it runs.

        ``url`` is the service's base URL (``wss://host``, ``ws://127.0.0.1:8080``;
        ``https://`` / ``http://`` work too). ``idle_timeout`` is in seconds
        (``None`` or ``0``: the server's default cap). ``enable_network=True`` asks for
        network egress under the server's policy (by default the Python package index
        only, e.g. for ``pip install``). ``ssl`` overrides the TLS
        context for ``wss://`` (default: certifi's bundle if installed, else the
        system store). ``auto_reconnect=True`` (or a ``ReconnectOptions``) re-attaches
        after a dropped connection. ``connect_timeout`` bounds the WebSocket
        handshake, ``request_timeout`` every wait for a server answer (sandbox ready,
        execution started, checkpoint, ...); ``None`` disables a bound.

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
            ssl=ssl,
            auto_reconnect=auto_reconnect,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            headers=connection_headers(headers, api_key),
        )
        first = init_message(
            idle_timeout=idle_timeout,
            enable_checkpoint=enable_checkpoint,
            enable_idle_timeout_auto_checkpoint=enable_idle_timeout_auto_checkpoint,
            enable_sandbox_handoff=enable_sandbox_handoff,
            filesystem_snapshot_name=filesystem_snapshot_name,
            enable_network=enable_network,
        )
        await sandbox._open(create_url(sandbox._url), first)
        return sandbox

    @classmethod
    async def attach(
        cls,
        url: str,
        sandbox_id: str,
        sandbox_token: str | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        auto_reconnect: bool | ReconnectOptions = False,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> Sandbox:
        """Attach to a live sandbox, or restore a checkpointed one.

        ``sandbox_token`` may be omitted for a sandbox created (or attached with a
        token) in this process: the library remembers it. ``headers`` and ``api_key``
        work as in ``create`` (the sandbox token is not an API key: a server with API
        keys needs both).
        """
        extra_headers = connection_headers(headers, api_key)
        token = sandbox_token if sandbox_token is not None else _tokens.lookup(sandbox_id)
        if token is None:
            raise SandboxPermissionError(
                f"no sandbox_token given for sandbox {sandbox_id!r} and none remembered in "
                "this process; pass the token that create() returned"
            )
        sandbox = cls(
            url,
            attach=True,
            ssl=ssl,
            auto_reconnect=auto_reconnect,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            headers=extra_headers,
        )
        sandbox.sandbox_id = sandbox_id
        sandbox.sandbox_token = token
        sandbox._protocol.sandbox_id = sandbox_id
        sandbox._protocol.sandbox_token = token
        await sandbox._open(attach_url(sandbox._url, sandbox_id, token), None)
        return sandbox

    async def _open(self, url: str, first_message: str | None) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._transport = await Transport.connect(
            url, ssl=self._ssl, open_timeout=self._connect_timeout, headers=self._headers
        )
        self._reader = asyncio.create_task(self._read_loop())
        try:
            if first_message is not None:
                # On a closed socket the reader sees the close and fails ``_ready``.
                with contextlib.suppress(TransportClosed):
                    await self._transport.send(first_message)
            await self._wait(self._ready, "the sandbox to be ready")
        except BaseException:
            await self._shutdown()
            raise
        if self.sandbox_token is not None and self.sandbox_id is not None:
            _tokens.remember(self.sandbox_id, self.sandbox_token)

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
    ) -> SandboxProcess:
        """Start ``code`` in ``language`` (``"python"`` or ``"bash"``) and return the process
        once the server confirmed it started.

        ``env`` adds environment variables, ``cwd`` sets the working directory
        (default ``/root``), ``timeout`` limits the wall-clock seconds (the server
        kills it; ``reason == "timeout"``). ``output_encoding="base64"`` has the server
        send the output as exact bytes (for binary output): read them with
        ``read_all_bytes()`` / ``bytes()``; text reads decode them as UTF-8.

        One execution at a time: calling ``exec`` while one runs raises
        ``SandboxStateError`` without asking the server.
        """
        if not isinstance(code, str) or not isinstance(language, str):
            raise TypeError("exec(code, language): both must be str")
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise TypeError("env must map str to str")
        self._check_usable()
        execution_id, frame = self._protocol.send_exec(
            code, language, env=env, cwd=cwd, timeout=timeout, output_encoding=output_encoding
        )
        future: asyncio.Future[SandboxProcess] = asyncio.get_running_loop().create_future()
        self._pending_exec = _PendingExec(execution_id, future)
        try:
            await self._send(frame, queue_while_reconnecting=True)
            return await self._wait(future, "the execution to start")
        except BaseException:
            self._protocol.abandon_exec(execution_id)
            if self._pending_exec is not None and self._pending_exec.future is future:
                self._pending_exec = None
            _mark_retrieved(future)
            raise

    async def run(
        self,
        code: str,
        language: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> RunResult:
        """Run ``code`` to completion; return its output (text) and how it ended.

        ``stdin`` is written to the process, then its stdin is closed (always: a
        program that reads stdin sees end-of-file instead of waiting forever). If the
        call is cancelled, the process is killed.
        """
        process = await self.exec(code, language, env=env, cwd=cwd, timeout=timeout)
        try:
            if not process.done:
                await self._send_stdin(process, stdin, eof=True, quiet=True)
            return await process._collect()
        except asyncio.CancelledError:
            # Do not leave the foreground slot busy behind a cancelled run().
            if not process.done and not self.closed:
                await asyncio.shield(self._kill_quietly(process))
            raise

    async def _kill_quietly(self, process: SandboxProcess) -> None:
        with contextlib.suppress(SandboxError):
            await process.kill()

    async def _send_stdin(
        self,
        process: SandboxProcess,
        data: str | bytes | None,
        *,
        eof: bool = False,
        quiet: bool = False,
    ) -> None:
        if process.done or process is not self._process:
            if quiet:
                return
            raise SandboxStateError("cannot write to stdin: the process has finished")
        frame = self._protocol.send_stdin(process._id, data, eof=eof)
        await self._send(frame, queue_while_reconnecting=True, queue_on_drop=True)

    async def _kill_process(self, process: SandboxProcess) -> None:
        if process.done or process is not self._process:
            return
        frame = self._protocol.send_kill_process(process._id)
        try:
            await self._request(Op.KILL_PROCESS, frame, "the process to be killed")
        except SandboxError:
            # The process may have ended on its own while the kill was on its way
            # (the server then answers FORCE_KILL_ERROR): that is success.
            if process.done:
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
        self._check_usable()
        frame = self._protocol.send_snapshot(name)
        await self._request(Op.SNAPSHOT, frame, "the filesystem snapshot")

    async def checkpoint(self) -> None:
        """Save the sandbox (filesystem and running processes) and disconnect.

        Returns once the server reported ``SANDBOX_CHECKPOINTED`` and closed the
        connection. Continue later with ``Sandbox.attach(url, sandbox_id)``, on this or
        any server instance sharing ``CHECKPOINT_AND_RESTORE_PATH``.

        Raises:

        * ``SandboxStateError`` while an execution runs; the session goes on.
        * ``SandboxCheckpointError`` when the server refuses up front (e.g. the sandbox
          has open TCP connections): nothing was touched and the session goes on
          (``sandbox.closed`` stays False).
        * ``SandboxCheckpointError`` when checkpointing is impossible (sandbox created
          without ``enable_checkpoint=True``, server without
          ``CHECKPOINT_AND_RESTORE_PATH``) or the save failed: the server closes the
          connection; this returns once it did (``sandbox.closed`` is True).
        """
        self._check_usable()
        frame = self._protocol.send_checkpoint()
        try:
            await self._request(Op.CHECKPOINT, frame, "the checkpoint")
        except SandboxCheckpointError:
            await self._settle_checkpoint_error()
            raise
        await self._wait_server_close()

    async def _settle_checkpoint_error(self) -> None:
        """After SANDBOX_CHECKPOINT_ERROR: learn whether the server closes or goes on,
        so that what follows (exec, terminate, attach) sees a settled state. A ping
        tells: the server sends its close (if any) right after the error, before it
        could answer the ping."""
        transport = self._transport
        if transport is None or self._closed.is_set():
            return
        if not self._protocol.checkpoint_error_unsettled:
            return  # a later frame already showed the session goes on
        ping = asyncio.ensure_future(transport.ping())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait(
                {ping, closed}, timeout=_CLOSE_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (ping, closed):
                task.cancel()
            await asyncio.gather(ping, closed, return_exceptions=True)
        finished = ping.done() and not ping.cancelled() and ping.exception() is None
        if finished and ping.result() and not self._closed.is_set():
            self._protocol.connection_confirmed()  # the session goes on
        elif finished:
            # The connection closed before the pong: the reader is about to see it.
            await self._wait_server_close()
        elif not self._closed.is_set():
            logger.debug("no pong after a checkpoint error; assuming the session goes on")

    async def terminate(self) -> None:
        """Destroy the sandbox and its saved state (``kill_sandbox``).

        Idempotent. If this connection is already closed (it dropped, or a checkpoint
        failed or succeeded), it re-attaches first so that the sandbox really goes.
        """
        if self._protocol.terminated or self.sandbox_id is None:
            return
        if not self.closed and self._protocol.phase is not Phase.CLOSED:
            frame = self._protocol.send_terminate()
            try:
                await self._request(Op.TERMINATE, frame, "the sandbox to be terminated")
            except SandboxConnectionError:
                if self._protocol.terminated:
                    return
                # The connection closed under us (e.g. right after a failed
                # checkpoint): fall through and re-attach to finish the job.
                await self._wait_server_close()
            else:
                _tokens.forget(self.sandbox_id)
                await self._wait_server_close()
                return
        await self._terminate_by_reattach()

    async def _terminate_by_reattach(self) -> None:
        assert self.sandbox_id is not None
        try:
            other = await Sandbox.attach(
                self._url,
                self.sandbox_id,
                self.sandbox_token,
                ssl=self._ssl,
                connect_timeout=self._connect_timeout,
                request_timeout=self._request_timeout,
                headers=self._headers,
            )
        except SandboxNotFoundError:
            pass  # already gone: that is what terminate() wants
        else:
            await other.terminate()
        self._protocol.terminated = True
        _tokens.forget(self.sandbox_id)

    async def kill(self) -> None:
        """Alias of ``terminate()``."""
        await self.terminate()

    async def disconnect(self) -> None:
        """Close this connection without destroying the sandbox.

        The sandbox lives on until its idle timeout; attach to it again with its id and
        token. Pending waits fail with ``SandboxConnectionError``.
        """
        self._user_closed = True
        await self._shutdown(SandboxConnectionError("disconnected by the client"))

    # ------------------------------------------------------------------ plumbing

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
                f"no answer from the server within {self._request_timeout}s waiting for {what}"
            ) from None

    async def _request(self, op: Op, frame: str, what: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._op_futures[op] = future
        try:
            await self._send(frame, queue_while_reconnecting=True)
            await self._wait(future, what)
        except BaseException:
            self._protocol.abandon_op(op)
            raise
        finally:
            if self._op_futures.get(op) is future:
                del self._op_futures[op]
            _mark_retrieved(future)

    async def _send(
        self, frame: str, *, queue_while_reconnecting: bool, queue_on_drop: bool = False
    ) -> None:
        if queue_while_reconnecting and (self._protocol.phase is Phase.REATTACHING or self._outbox):
            self._outbox.append(frame)
            return
        transport = self._transport
        if transport is None or self._closed.is_set():
            raise SandboxConnectionError("the connection to the sandbox is closed")
        try:
            await transport.send(frame)
        except TransportClosed as exc:
            if queue_on_drop and self._policy is not None:
                # The reader is about to see the close and re-attach; if it does not,
                # the process fails anyway.
                self._outbox.append(frame)
                return
            raise SandboxConnectionError(
                "the connection to the sandbox closed while sending",
                close_code=exc.info.code,
            ) from exc

    async def _wait_server_close(self) -> None:
        """After kill_sandbox / checkpoint: the server closes; do not leave it half-open."""
        try:
            await asyncio.wait_for(self._closed.wait(), _CLOSE_WAIT)
        except asyncio.TimeoutError:
            logger.debug("server did not close the connection; closing it")
            await self._shutdown(SandboxConnectionError("closed by the client"))

    async def _read_loop(self) -> None:
        try:
            while True:
                transport = self._transport
                assert transport is not None  # set before the reader starts
                try:
                    frame = await transport.recv()
                except TransportClosed as exc:
                    info = exc.info
                    effects = self._protocol.connection_closed(
                        info.code, info.reason, close_frame_received=info.received
                    )
                    if any(isinstance(e, Reconnect) for e in effects):
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

    async def _reconnect(self) -> bool:
        """Re-attach with backoff. True when the session continues on a new connection."""
        policy = self._policy
        assert policy is not None  # only called when auto_reconnect is on
        assert self.sandbox_id is not None  # set once the sandbox ran
        old = self._transport
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
                transport = await Transport.connect(
                    attach_url(self._url, self.sandbox_id, self.sandbox_token),
                    ssl=self._ssl,
                    open_timeout=self._connect_timeout,
                    headers=self._headers,
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
                    self._await_reattach(transport), self._request_timeout
                )
            except asyncio.TimeoutError:
                transport.abort()
                last_error = SandboxTimeoutError("no answer to the re-attach")
                continue
            except BaseException:  # cancelled (disconnect()): do not leak the socket
                transport.abort()
                raise
            if isinstance(outcome, Reattached):
                self._transport = transport
                try:
                    await transport.send(self._protocol.send_reconnect())
                    # ``_send`` keeps appending while the outbox is not empty, so frames
                    # written meanwhile stay in order behind the queued ones.
                    while self._outbox:
                        await transport.send(self._outbox[0])
                        self._outbox.pop(0)
                except TransportClosed:
                    pass  # the reader sees it next and starts over
                logger.info("re-attached to sandbox %s", self.sandbox_id)
                self._last_reattach = loop.time()
                return True
            transport.abort()
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

    async def _await_reattach(self, transport: Transport) -> Reattached | ReattachFailed:
        while True:
            try:
                frame = await transport.recv()
                effects = self._protocol.receive_frame(frame)
            except TransportClosed as exc:
                info = exc.info
                effects = self._protocol.connection_closed(
                    info.code, info.reason, close_frame_received=info.received
                )
            for effect in effects:
                if isinstance(effect, (Reattached, ReattachFailed)):
                    return effect
            self._apply(effects)

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Ready):
                self.sandbox_id = effect.sandbox_id
                self.sandbox_token = effect.sandbox_token
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif isinstance(effect, SetupFailed):
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(effect.error)
                self._mark_closed(effect.error)
            elif isinstance(effect, ExecStarted):
                self._on_exec_started(effect.execution_id)
            elif isinstance(effect, ExecFailed):
                pending, self._pending_exec = self._pending_exec, None
                if pending is not None and not pending.future.done():
                    pending.future.set_exception(effect.error)
            elif isinstance(effect, OutputReceived):
                process = self._process
                if process is not None and process._id == effect.execution_id:
                    stream = process.stdout if effect.stream == "stdout" else process.stderr
                    stream._feed(effect.data)
            elif isinstance(effect, ExecDone):
                process = self._process
                if process is not None and process._id == effect.execution_id:
                    self._process = None
                    process._finish(
                        effect.exit_code, effect.signal, effect.reason, effect.duration_ms
                    )
            elif isinstance(effect, OpDone):
                future = self._op_futures.get(effect.op)
                if future is not None and not future.done():
                    future.set_result(None)
            elif isinstance(effect, OpFailed):
                future = self._op_futures.get(effect.op)
                if future is not None and not future.done():
                    future.set_exception(effect.error)
            elif isinstance(effect, Notice):
                logger.warning("sandbox %s: %s", self.sandbox_id, effect.error)
            elif isinstance(effect, Reconnect):
                logger.info("sandbox %s: connection lost (%s)", self.sandbox_id, effect.reason)
            elif isinstance(effect, Closed):
                self._outbox.clear()
                self._fail_all(effect.error)
                if effect.terminated and self.sandbox_id is not None:
                    _tokens.forget(self.sandbox_id)
                self._mark_closed(effect.error)

    def _on_exec_started(self, execution_id: int) -> None:
        pending = self._pending_exec
        if pending is None or pending.execution_id != execution_id:
            return
        self._pending_exec = None
        process = SandboxProcess(self, execution_id)
        self._process = process
        if not pending.future.done():
            pending.future.set_result(process)

    def _fail_all(self, error: SandboxError) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        pending, self._pending_exec = self._pending_exec, None
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)
        for future in self._op_futures.values():
            if not future.done():
                future.set_exception(error)
        process, self._process = self._process, None
        if process is not None:
            process._fail(error)

    def _mark_closed(self, error: SandboxError | None) -> None:
        if self._close_error is None:
            self._close_error = error or SandboxConnectionError("the connection is closed")
        self._closed.set()

    async def _shutdown(self, error: SandboxError | None = None) -> None:
        """Stop the reader, close the socket, fail whatever still waits."""
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        transport = self._transport
        if transport is not None:
            try:
                await asyncio.wait_for(transport.close(), _CLOSE_WAIT)
            except (asyncio.TimeoutError, OSError):
                transport.abort()
        error = error or SandboxConnectionError("the connection is closed")
        self._apply(self._protocol.give_up(error))
        self._mark_closed(error)
        if self._ready is not None:
            _mark_retrieved(self._ready)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Sandbox {self.sandbox_id} {state}>"


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """A future nobody awaits any more must not log "exception was never retrieved"."""
    if future.done() and not future.cancelled():
        future.exception()
