"""A running execution (``SandboxProcess``), its output streams (``OutputStream``), and
what ``Sandbox.run()`` returns (``RunResult``)."""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from ._errors import SandboxError, SandboxStateError

if TYPE_CHECKING:
    from ._sandbox import Sandbox

Chunk = Union[str, bytes]


class OutputStream:
    """One output stream (stdout or stderr) of a process, read once like a pipe.

    Each chunk is handed out once, to whichever of ``read_all()``, ``read_all_bytes()``,
    ``async for`` or ``bytes()`` reads it first. Chunks are kept from the moment the
    process starts, so nothing is lost by reading late; everything works while the
    process is still running (reads wait for more output, and end when it ends).

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

    # Called by the sandbox's reader.
    def _feed(self, data: Chunk) -> None:
        if not self._eof and data:
            self._chunks.append(data)
            self._changed.set()

    def _end(self, error: SandboxError | None = None) -> None:
        if not self._eof:
            self._eof = True
            self._error = error
            self._changed.set()

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

    def _text(self, chunk: Chunk) -> str:
        if isinstance(chunk, str):
            return chunk
        text: str = self._decoder.decode(chunk)
        return text

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
            text = self._text(chunk)
            if text:
                yield text

    async def bytes(self) -> AsyncIterator[bytes]:
        """Byte chunks as they arrive (text chunks are UTF-8 encoded)."""
        while True:
            chunk = await self._next()
            if chunk is None:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk


@dataclass(frozen=True)
class RunResult:
    """What ``Sandbox.run()`` returns. A non-zero ``exit_code`` is a result, not an error."""

    stdout: str
    stderr: str
    exit_code: int
    reason: str | None
    """``"exited"``, ``"signaled"``, ``"killed"``, ``"timeout"``, ``"output_limit"`` or
    ``"sandbox_lost"``."""
    signal: int | None = None
    duration_ms: int | None = None


class SandboxProcess:
    """One execution started with ``Sandbox.exec()``.

    ``exit_code`` / ``reason`` / ``signal`` / ``duration_ms`` are ``None`` until the
    process ends. A non-zero exit code is not an error: ``wait()`` returns it.
    """

    def __init__(self, sandbox: Sandbox, execution_id: int) -> None:
        self._sandbox = sandbox
        self._id = execution_id
        self.stdout = OutputStream()
        """The process's standard output."""
        self.stderr = OutputStream()
        """The process's standard error."""
        self.exit_code: int | None = None
        """The exit status once ended; ``128 + N`` when ended by signal N."""
        self.reason: str | None = None
        """Why it ended: ``"exited"``, ``"signaled"``, ``"killed"``, ``"timeout"``,
        ``"output_limit"`` or ``"sandbox_lost"``."""
        self.signal: int | None = None
        self.duration_ms: int | None = None
        self._done = asyncio.Event()
        self._error: SandboxError | None = None
        self._stdin_closed = False

    @property
    def done(self) -> bool:
        """True once the server reported the end of the process (or the session ended)."""
        return self._done.is_set()

    async def wait(self) -> int:
        """Wait for the process to end and return its exit code.

        Raises ``SandboxConnectionError`` only if the session ended before the process
        did. Not bounded: wrap it in ``asyncio.wait_for`` to bound it (cancelling the
        wait does not kill the process).
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        if self.exit_code is None:
            raise SandboxStateError(
                "the server did not report an exit code (it does not speak the protocol additions)"
            )
        return self.exit_code

    async def write_to_stdin(self, data: str | bytes) -> None:
        """Write to the process's stdin; ``bytes`` are sent exactly (base64 on the wire).

        While the sandbox reconnects, the data is queued and sent after.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"stdin data must be str or bytes, not {type(data).__name__}")
        self._check_stdin("write to stdin")
        await self._sandbox._send_stdin(self, bytes(data) if not isinstance(data, str) else data)

    async def close_stdin(self) -> None:
        """Close the process's stdin: its next read sees end-of-file."""
        self._check_stdin("close stdin")
        self._stdin_closed = True
        await self._sandbox._send_stdin(self, None, eof=True)

    async def kill(self) -> None:
        """Kill the process (its whole process group); does nothing if it already ended.

        Returns once the server confirmed; ``wait()`` then returns with
        ``reason == "killed"``.
        """
        if self.done:
            return
        await self._sandbox._kill_process(self)

    def _check_stdin(self, what: str) -> None:
        if self.done:
            raise SandboxStateError(f"cannot {what}: the process has ended")
        if self._stdin_closed:
            raise SandboxStateError(f"cannot {what}: stdin is closed")

    async def _collect(self) -> RunResult:
        stdout, stderr, exit_code = await asyncio.gather(
            self.stdout.read_all(), self.stderr.read_all(), self.wait()
        )
        return RunResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=exit_code,
            reason=self.reason,
            signal=self.signal,
            duration_ms=self.duration_ms,
        )

    # Called by the sandbox's reader.
    def _finish(
        self,
        exit_code: int | None,
        signal: int | None,
        reason: str | None,
        duration_ms: int | None,
    ) -> None:
        if self.done:
            return
        self.exit_code = exit_code
        self.signal = signal
        self.reason = reason
        self.duration_ms = duration_ms
        self.stdout._end()
        self.stderr._end()
        self._done.set()

    def _fail(self, error: SandboxError) -> None:
        if self.done:
            return
        self._error = error
        self.stdout._end(error)
        self.stderr._end(error)
        self._done.set()

    def __repr__(self) -> str:
        if not self.done:
            return "<SandboxProcess running>"
        return f"<SandboxProcess exit_code={self.exit_code} reason={self.reason}>"
