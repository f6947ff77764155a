"""``SyncSandbox``: the same API without ``await``, for plain scripts and notebooks.

Every ``SyncSandbox`` of a process runs its asyncio client on one private event loop in
a background (daemon) thread; each call submits the coroutine there and blocks until it
is done. No ``asyncio.run`` per call (that would tear the connection's loop down between
calls), and no use of the caller's loop: it works the same from a script, from a thread,
and from a notebook whose own loop is already running.

``on_stdout`` / ``on_stderr`` / ``on_status`` / ``on_error`` callbacks run on that
background thread; they must not call the ``SyncSandbox`` (that would wait for the loop
they are blocking), and doing so raises ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ._code import CodeContext, Execution
from ._errors import SandboxError
from ._process import OutputStream, SandboxProcess
from ._results import ExecutionResult, ProcessInfo, RunResult, SandboxList
from ._sandbox import Sandbox, SandboxState

T = TypeVar("T")


class _LoopThread:
    """One event loop running forever in a daemon thread."""

    _lock = threading.Lock()
    _shared: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="codesandbox-sync-loop", daemon=True)
        self.thread.start()

    @classmethod
    def shared(cls) -> _LoopThread:
        with cls._lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (``TimeoutError`` after
        ``timeout`` seconds, the coroutine then being cancelled)."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError(
                "a SyncSandbox cannot be used from its own callbacks (on_stdout, on_status, "
                "...): they run on its event loop thread"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"not done within {timeout}s") from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise


async def _anext(iterator: AsyncIterator[T]) -> T | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


class SyncOutputStream:
    """``OutputStream`` without ``await``: ``read_all()``, ``for chunk in stream``,
    ``lines()``, ``bytes()``."""

    def __init__(self, stream: OutputStream, runner: _LoopThread) -> None:
        self._stream = stream
        self._runner = runner

    @property
    def finished(self) -> bool:
        return self._stream.finished

    def read_all(self) -> str:
        return self._runner.call(self._stream.read_all())

    def read_all_bytes(self) -> bytes:
        return self._runner.call(self._stream.read_all_bytes())

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        while True:
            item = self._runner.call(_anext(iterator))
            if item is None:
                return
            yield item

    def __iter__(self) -> Iterator[str]:
        return self._iterate(self._stream.__aiter__())

    def lines(self) -> Iterator[str]:
        return self._iterate(self._stream.lines())

    def bytes(self) -> Iterator[bytes]:
        return self._iterate(self._stream.bytes())


class SyncProcess:
    """``SandboxProcess`` without ``await``."""

    def __init__(self, process: SandboxProcess, runner: _LoopThread) -> None:
        self._process = process
        self._runner = runner
        self.stdout = SyncOutputStream(process.stdout, runner)
        self.stderr = SyncOutputStream(process.stderr, runner)

    @property
    def process_id(self) -> int | None:
        return self._process.process_id

    @property
    def done(self) -> bool:
        return self._process.done

    @property
    def exit_code(self) -> int | None:
        return self._process.exit_code

    @property
    def reason(self) -> str | None:
        return self._process.reason

    @property
    def signal(self) -> int | None:
        return self._process.signal

    @property
    def duration_ms(self) -> int | None:
        return self._process.duration_ms

    def result(self, timeout: float | None = None) -> ExecutionResult:
        """How it ended; ``timeout`` (seconds) raises ``TimeoutError`` (the process runs on)."""
        return self._runner.call(self._process.result(), timeout)

    def wait(self, timeout: float | None = None) -> int:
        """The exit code once it ended (see ``result()``)."""
        return self._runner.call(self._process.wait(), timeout)

    def write(self, data: str | bytes) -> None:
        self._runner.call(self._process.write(data))

    def write_to_stdin(self, data: str | bytes) -> None:
        self._runner.call(self._process.write(data))

    def close_stdin(self) -> None:
        self._runner.call(self._process.close_stdin())

    def kill(self) -> None:
        self._runner.call(self._process.kill())

    def __repr__(self) -> str:
        return repr(self._process).replace("SandboxProcess", "SyncProcess")


class SyncSandbox:
    """``Sandbox`` without ``await``: ``SyncSandbox.create(url)`` /
    ``SyncSandbox.attach(url, sandbox_id)`` take the same arguments, and every method
    the same arguments as its asyncio twin.

    ``with SyncSandbox.create(url) as sandbox:`` terminates the sandbox when the block
    ends (unless it was checkpointed).
    """

    def __init__(self, sandbox: Sandbox, runner: _LoopThread) -> None:
        self._sandbox = sandbox
        self._runner = runner

    @classmethod
    def create(cls, url: str, **options: Any) -> SyncSandbox:
        """See ``Sandbox.create``."""
        runner = _LoopThread.shared()
        return cls(runner.call(Sandbox.create(url, **options)), runner)

    @staticmethod
    def list(url: str, **options: Any) -> SandboxList:
        """See ``Sandbox.list``."""
        return _LoopThread.shared().call(Sandbox.list(url, **options))

    @classmethod
    def attach(
        cls, url: str, sandbox_id: str, sandbox_token: str | None = None, **options: Any
    ) -> SyncSandbox:
        """See ``Sandbox.attach``."""
        runner = _LoopThread.shared()
        return cls(runner.call(Sandbox.attach(url, sandbox_id, sandbox_token, **options)), runner)

    @property
    def sandbox(self) -> Sandbox:
        """The asyncio ``Sandbox`` underneath (it lives on the background loop)."""
        return self._sandbox

    @property
    def sandbox_id(self) -> str | None:
        return self._sandbox.sandbox_id

    @property
    def sandbox_token(self) -> str | None:
        return self._sandbox.sandbox_token

    @property
    def url(self) -> str:
        return self._sandbox.url

    @property
    def state(self) -> SandboxState:
        return self._sandbox.state

    @property
    def protocol(self) -> int:
        return self._sandbox.protocol

    @property
    def closed(self) -> bool:
        return self._sandbox.closed

    @property
    def terminated(self) -> bool:
        return self._sandbox.terminated

    @property
    def checkpointed(self) -> bool:
        return self._sandbox.checkpointed

    def exec(self, code: str, language: str, **options: Any) -> SyncProcess:
        """See ``Sandbox.exec``."""
        process = self._runner.call(self._sandbox.exec(code, language, **options))
        return SyncProcess(process, self._runner)

    def run(self, code: str, language: str, **options: Any) -> RunResult:
        """See ``Sandbox.run``."""
        return self._runner.call(self._sandbox.run(code, language, **options))

    def list_processes(self) -> builtins.list[ProcessInfo]:
        return self._runner.call(self._sandbox.list_processes())

    def attach_process(self, process_id: int, **options: Any) -> SyncProcess:
        process = self._runner.call(self._sandbox.attach_process(process_id, **options))
        return SyncProcess(process, self._runner)

    def set_idle_timeout(self, idle_timeout: float) -> float | None:
        return self._runner.call(self._sandbox.set_idle_timeout(idle_timeout))

    def run_code(
        self, code: str, context: CodeContext | str | None = None, **options: Any
    ) -> Execution:
        """See ``Sandbox.run_code`` (callbacks run on the client's event-loop thread)."""
        return self._runner.call(self._sandbox.run_code(code, context, **options))

    def create_code_context(self, cwd: str | None = None) -> CodeContext:
        return self._runner.call(self._sandbox.create_code_context(cwd))

    def list_code_contexts(self) -> builtins.list[CodeContext]:
        return self._runner.call(self._sandbox.list_code_contexts())

    def restart_code_context(self, context: CodeContext | str) -> CodeContext:
        return self._runner.call(self._sandbox.restart_code_context(context))

    def delete_code_context(self, context: CodeContext | str) -> None:
        self._runner.call(self._sandbox.delete_code_context(context))

    def snapshot_filesystem(self, name: str) -> None:
        self._runner.call(self._sandbox.snapshot_filesystem(name))

    def checkpoint(self) -> None:
        self._runner.call(self._sandbox.checkpoint())

    def terminate(self) -> None:
        self._runner.call(self._sandbox.terminate())

    def kill(self) -> None:
        self._runner.call(self._sandbox.terminate())

    def disconnect(self) -> None:
        self._runner.call(self._sandbox.disconnect())

    def __enter__(self) -> SyncSandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._runner.call(self._sandbox.__aexit__(exc_type, exc, tb))
        except SandboxError:
            if exc is None:
                raise

    def __repr__(self) -> str:
        return repr(self._sandbox).replace("<Sandbox", "<SyncSandbox")
