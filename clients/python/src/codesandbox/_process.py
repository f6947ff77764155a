"""A process in the sandbox (``SandboxProcess``) and its output streams (``OutputStream``).

The sandbox drives a process through the ``ProcessControl`` that ``new_process`` returns
with it (output arrived, it ended, stdin was acknowledged or refused); the process asks
its sandbox for stdin and kill through the ``ProcessHost`` protocol. So this module does
not know ``Sandbox`` (no import cycle), and the sandbox does not poke at private fields.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Callable, Protocol, Union

from ._errors import SandboxError, SandboxStateError
from ._results import ExecutionResult

logger = logging.getLogger("codesandbox")

Chunk = Union[str, bytes]
OutputCallback = Callable[[str], object]


class OutputStream:
    """One output stream (stdout or stderr) of a process, read once like a pipe.

    Each chunk is handed out once, to whichever of ``read_all()``, ``read_all_bytes()``,
    ``async for``, ``lines()`` or ``bytes()`` reads it first. Chunks are kept from the
    moment the process starts, so nothing is lost by reading late; everything works while
    the process is still running (reads wait for more output, and end when it ends).

    Text is the default. A process started with ``output_encoding="base64"`` receives
    its output as exact bytes: ``read_all_bytes()`` / ``bytes()`` give them unchanged,
    and text reads decode them as UTF-8 (a character split across chunks is kept whole;
    invalid bytes become U+FFFD).
    """

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self._eof = False
        self._error: SandboxError | None = None
        self._changed = asyncio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def finished(self) -> bool:
        """True once the process ended and every chunk was read."""
        return self._eof and not self._chunks

    async def _next(self) -> Chunk | None:
        """The next unread chunk, ``None`` at the end; raises the stream's failure."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._chunks.popleft()

    async def read_all(self) -> str:
        """Everything not read yet, as text, once the process has ended.

        Raises ``SandboxConnectionError`` if the session ended before the process did.
        """
        return "".join([chunk async for chunk in self])

    async def read_all_bytes(self) -> bytes:
        """Like ``read_all()``, as bytes (exact with ``output_encoding="base64"``)."""
        return b"".join([chunk async for chunk in self.bytes()])

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iter_text()

    async def _iter_text(self) -> AsyncIterator[str]:
        while True:
            chunk = await self._next()
            if chunk is None:
                tail: str = self._decoder.decode(b"", final=True)
                if tail:
                    yield tail
                return
            text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
            if text:
                yield text

    async def lines(self) -> AsyncIterator[str]:
        """Lines as they complete, without their ``"\\n"``; a last line without one
        comes at the end."""
        pending = ""
        async for chunk in self:
            pending += chunk
            start = 0
            while (end := pending.find("\n", start)) >= 0:
                yield pending[start:end]
                start = end + 1
            pending = pending[start:]
        if pending:
            yield pending

    async def bytes(self) -> AsyncIterator[bytes]:
        """Byte chunks as they arrive (text chunks are UTF-8 encoded)."""
        while True:
            chunk = await self._next()
            if chunk is None:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk


class ProcessHost(Protocol):
    """What a process needs from its sandbox (``Sandbox`` implements it)."""

    async def write_stdin(self, key: str, data: str | bytes) -> None: ...

    async def close_stdin(self, key: str) -> None: ...

    async def kill_process(self, key: str) -> None: ...


class SandboxProcess:
    """A process started with ``Sandbox.exec()`` (or followed with
    ``Sandbox.attach_process()``).

    ``exit_code`` / ``reason`` / ``signal`` / ``duration_ms`` are ``None`` until the
    process ends. A non-zero exit code is not an error: ``wait()`` returns it.
    """

    def __init__(self, host: ProcessHost, key: str, process_id: int | None) -> None:
        # Made by ``new_process``; the library keeps the control side.
        self._host = host
        self._key = key
        self.process_id = process_id
        """The server's handle (``None`` from a server without protocol 2)."""
        self.stdout = OutputStream()
        """The process's standard output."""
        self.stderr = OutputStream()
        """The process's standard error."""
        self._result: ExecutionResult | None = None
        self._done = asyncio.Event()
        self._error: SandboxError | None = None
        self._stdin_error: SandboxError | None = None
        self._stdin_closed = False

    @property
    def done(self) -> bool:
        """True once the server reported the end of the process (or the session ended)."""
        return self._done.is_set()

    @property
    def stdin_error(self) -> SandboxError | None:
        """The server's refusal of this process's stdin, if it refused any (every later
        ``write`` raises it too)."""
        return self._stdin_error

    @property
    def exit_code(self) -> int | None:
        """The exit status once ended; ``128 + N`` when ended by signal N."""
        return None if self._result is None else self._result.exit_code

    @property
    def reason(self) -> str | None:
        """Why it ended: ``"exited"``, ``"signaled"``, ``"killed"``, ``"timeout"``,
        ``"output_limit"`` or ``"sandbox_lost"``."""
        return None if self._result is None else self._result.reason

    @property
    def signal(self) -> int | None:
        return None if self._result is None else self._result.signal

    @property
    def duration_ms(self) -> int | None:
        return None if self._result is None else self._result.duration_ms

    async def result(self) -> ExecutionResult:
        """Wait for the end; everything the server said about it.

        Raises ``SandboxConnectionError`` only if the session ended before the process
        did. Not bounded: wrap it in ``asyncio.wait_for`` to bound it (cancelling the
        wait does not kill the process).
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None  # set before _done
        return self._result

    async def wait(self) -> int:
        """Wait for the process to end and return its exit code (see ``result()``)."""
        return (await self.result()).exit_code

    async def write(self, data: str | bytes) -> None:
        """Write to the process's stdin; ``bytes`` are sent exactly (base64 on the wire).

        With a server that speaks protocol 2, this waits while the server's stdin window
        is full, and raises the server's refusal (``SandboxExecutionError``). While the
        sandbox reconnects, the data is queued and sent after.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"stdin data must be str or bytes, not {type(data).__name__}")
        self._check_stdin("write to stdin")
        await self._host.write_stdin(self._key, data if isinstance(data, str) else bytes(data))

    async def write_to_stdin(self, data: str | bytes) -> None:
        """The same as ``write()`` (the original client's name)."""
        await self.write(data)

    async def close_stdin(self) -> None:
        """Close the process's stdin: its next read sees end-of-file. With protocol 2 this
        first waits until the server acknowledged everything written (so a refusal of it
        is raised here). Does nothing if stdin is closed already or the process ended
        (before or during the call: a process that read what it needed and exited did not
        need the end-of-file)."""
        if self.done or self._stdin_closed:
            return
        self._stdin_closed = True
        await self._host.close_stdin(self._key)

    async def kill(self) -> None:
        """Kill the process (its whole process group); does nothing if it already ended.

        Returns once the server confirmed; ``wait()`` then returns with
        ``reason == "killed"``.
        """
        if self.done:
            return
        await self._host.kill_process(self._key)

    def _check_stdin(self, what: str) -> None:
        if self.done:
            raise SandboxStateError(f"cannot {what}: the process has ended")
        if self._stdin_closed:
            raise SandboxStateError(f"cannot {what}: stdin is closed")

    def __repr__(self) -> str:
        if not self.done:
            return f"<SandboxProcess {self.process_id} running>"
        return f"<SandboxProcess {self.process_id} exit_code={self.exit_code} reason={self.reason}>"


class ProcessControl:
    """The library's side of a process: what happens to it comes in here."""

    def __init__(
        self,
        process: SandboxProcess,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> None:
        self.process = process
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }
        self.stdin_changed = asyncio.Event()
        """Set when stdin writers may proceed (room, refusal, or the end)."""

    def output(self, stream: str, data: Chunk) -> None:
        target = self.process.stdout if stream == "stdout" else self.process.stderr
        if target._eof or not data:
            return
        target._chunks.append(data)
        target._changed.set()
        callback = self._callbacks.get(stream)
        if callback is not None:
            text = data if isinstance(data, str) else self._decoders[stream].decode(data)
            if text:
                self._call(callback, text)

    def _call(self, callback: OutputCallback, text: str) -> None:
        try:
            callback(text)
        except Exception:  # a user's callback must not break the session
            logger.exception("on_stdout / on_stderr callback raised")

    def finish(self, result: ExecutionResult) -> None:
        process = self.process
        if process.done:
            return
        for stream, decoder in self._decoders.items():
            tail: str = decoder.decode(b"", final=True)
            callback = self._callbacks.get(stream)
            if tail and callback is not None:
                self._call(callback, tail)
        process._result = result
        self._end(None)

    def fail(self, error: SandboxError) -> None:
        if self.process.done:
            return
        self.process._error = error
        self._end(error)

    def _end(self, error: SandboxError | None) -> None:
        process = self.process
        for stream in (process.stdout, process.stderr):
            if not stream._eof:
                stream._eof = True
                stream._error = error
                stream._changed.set()
        process._done.set()
        self.stdin_changed.set()

    @property
    def stdin_error(self) -> SandboxError | None:
        """The server's refusal of this process's stdin; every later write raises it."""
        return self.process._stdin_error

    def refuse_stdin(self, error: SandboxError) -> None:
        if self.process._stdin_error is None:
            self.process._stdin_error = error
        self.stdin_changed.set()


def new_process(
    host: ProcessHost,
    key: str,
    process_id: int | None,
    *,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
) -> ProcessControl:
    """A new process handle (``control.process``) and the control the library keeps."""
    return ProcessControl(SandboxProcess(host, key, process_id), on_stdout, on_stderr)
