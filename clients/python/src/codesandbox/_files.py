"""``sandbox.files``: read, write, list and manage the sandbox's files without an
execution (docs/protocol.md "Files"). Paths are absolute, or relative to ``/root``.

Transfers are chunked (1 MiB) and flow-controlled: a write sends a chunk only while the
server's window has room (``file_ack``), a read takes the data as it comes. A failed
operation raises ``SandboxFileError``, whose ``code`` says why (``not_found``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Union

from ._errors import SandboxTimeoutError
from ._results import FileEntry

if TYPE_CHECKING:
    from ._sandbox import Sandbox

CHUNK_BYTES = 1024 * 1024
"""The largest chunk of a write (raw bytes), as the server accepts it."""

WriteData = Union[
    bytes, bytearray, memoryview, str, IO[bytes], IO[str], AsyncIterable[bytes], Iterable[bytes]
]
"""What ``write`` takes: bytes, text (UTF-8), a file object, or (async) iterables of bytes."""


class Transfer:
    """What the reader tells a transfer under way: data, acknowledgements, progress."""

    def __init__(self, sink: Callable[[bytes], None] | None = None) -> None:
        self.sink = sink
        self.written = 0
        self.window: int | None = None
        self.changed = asyncio.Event()

    def on_data(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
        self.changed.set()

    def on_ack(self, written: int, window: int | None) -> None:
        self.written = max(self.written, written)
        if window is not None:
            self.window = window
        self.changed.set()


def _entry(value: Any) -> FileEntry:
    value = value if isinstance(value, dict) else {}

    def number(key: str) -> int:
        item = value.get(key)
        return item if isinstance(item, int) and not isinstance(item, bool) else 0

    return FileEntry(
        name=str(value.get("name", "")),
        path=str(value.get("path", "")),
        type=str(value.get("type", "other")),
        size=number("size"),
        mode=number("mode"),
        mtime_unix_ms=number("mtime_unix_ms"),
    )


async def _chunks(data: WriteData) -> AsyncIterator[bytes]:
    """``data`` as pieces of at most ``CHUNK_BYTES``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start : start + CHUNK_BYTES])
        return
    read = getattr(data, "read", None)
    if callable(read):
        while True:
            piece: Any = read(CHUNK_BYTES)
            if not piece:
                return
            yield piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
    if isinstance(data, AsyncIterable):
        async for piece in data:
            for start in range(0, len(piece), CHUNK_BYTES):
                yield bytes(piece[start : start + CHUNK_BYTES])
        return
    if isinstance(data, Iterable):
        for piece in data:
            for start in range(0, len(piece), CHUNK_BYTES):
                yield bytes(piece[start : start + CHUNK_BYTES])
        return
    raise TypeError(f"cannot write a {type(data).__name__}: pass bytes, str or a file object")


class Files:
    """The files of one sandbox (``sandbox.files``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def read(self, path: str) -> bytes:
        """The file's bytes."""
        pieces: builtins.list[bytes] = []
        await self._read(path, pieces.append)
        return b"".join(pieces)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The file decoded as text."""
        return (await self.read(path)).decode(encoding)

    async def write(
        self, path: str, data: WriteData, *, mode: int = 0o644, append: bool = False
    ) -> int:
        """Create or replace the file (``append=True``: add to it) with ``data``; its size
        afterwards. The file appears under its name only once complete."""
        sandbox = self._sandbox
        pieces = _chunks(data)
        first = await _anext(pieces)
        following = await _anext(pieces) if first is not None else None
        request_id, frame = sandbox._protocol.send_file(
            "write_file",
            path=path,
            mode=mode,
            append=append,
            data=_b64(first or b""),
            more=following is not None,
        )
        transfer = Transfer()
        future = self._begin(request_id, transfer)
        try:
            await sandbox._send(frame, queue_while_reconnecting=False)
            sent = len(first or b"")
            chunk = following
            while chunk is not None:
                after = await _anext(pieces)

                def room(size: int = len(chunk), total: int = sent) -> bool:
                    window = transfer.window
                    return window is not None and total + size - transfer.written <= window

                await self._until(future, transfer, room, f"room to write {path}")
                if future.done():
                    break
                frame = sandbox._protocol.send_file_chunk(request_id, chunk, more=after is not None)
                await sandbox._send(frame, queue_while_reconnecting=False)
                sent += len(chunk)
                chunk = after
            reply = await self._finish(future, transfer, f"the write of {path}")
        finally:
            self._end(request_id)
        return int(reply.get("size", 0))

    async def list(self, path: str = "/root", *, depth: int = 1) -> builtins.list[FileEntry]:
        """The entries under the directory (``depth`` levels, 1 to 10)."""
        reply = await self._simple("list_files", f"the listing of {path}", path=path, depth=depth)
        entries = reply.get("entries")
        return [_entry(entry) for entry in entries] if isinstance(entries, builtins.list) else []

    async def stat(self, path: str) -> FileEntry:
        """What the path is (a symbolic link is described, not followed)."""
        reply = await self._simple("stat_file", f"the stat of {path}", path=path)
        return _entry(reply.get("entry"))

    async def exists(self, path: str) -> bool:
        reply = await self._simple("exists", f"whether {path} exists", path=path)
        return reply.get("exists") is True

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory (``recursive=True`` for one that is not empty)."""
        await self._simple("remove_file", f"the removal of {path}", path=path, recursive=recursive)

    async def make_dir(self, path: str, *, parents: bool = True) -> None:
        """Make the directory (and its parents, unless ``parents=False``)."""
        await self._simple("make_dir", f"the directory {path}", path=path, parents=parents)

    async def rename(self, source: str, destination: str) -> None:
        await self._simple(
            "rename_file", f"the rename of {source}", **{"from": source, "to": destination}
        )

    async def upload(self, local: str | os.PathLike[str], remote: str, *, mode: int = 0o644) -> int:
        """Copy a local file into the sandbox (streamed); its size."""
        source = await asyncio.to_thread(open, local, "rb")
        try:
            return await self.write(remote, source, mode=mode)
        finally:
            source.close()

    async def download(self, remote: str, local: str | os.PathLike[str]) -> int:
        """Copy a file of the sandbox to a local file (streamed); its size."""
        size = 0
        target = await asyncio.to_thread(open, local, "wb")

        def sink(data: bytes) -> None:
            nonlocal size
            target.write(data)
            size += len(data)

        try:
            await self._read(remote, sink)
        finally:
            target.close()
        return size

    # ------------------------------------------------------------------ internals

    async def _read(self, path: str, sink: Callable[[bytes], None]) -> None:
        request_id, frame = self._sandbox._protocol.send_file("read_file", path=path)
        transfer = Transfer(sink)
        future = self._begin(request_id, transfer)
        try:
            await self._sandbox._send(frame, queue_while_reconnecting=False)
            await self._finish(future, transfer, f"the read of {path}")
        finally:
            self._end(request_id)

    async def _simple(self, action: str, what: str, **fields: Any) -> dict[str, Any]:
        request_id, frame = self._sandbox._protocol.send_file(action, **fields)
        transfer = Transfer()
        future = self._begin(request_id, transfer)
        try:
            await self._sandbox._send(frame, queue_while_reconnecting=True)
            return await self._finish(future, transfer, what)
        finally:
            self._end(request_id)

    def _begin(self, request_id: str, transfer: Transfer) -> asyncio.Future[Any]:
        sandbox = self._sandbox
        sandbox._check_usable()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sandbox._pending[request_id] = future
        sandbox._transfers[request_id] = transfer
        return future

    def _end(self, request_id: str) -> None:
        sandbox = self._sandbox
        sandbox._transfers.pop(request_id, None)
        future = sandbox._pending.pop(request_id, None)
        if future is not None and not future.done():
            sandbox._protocol.abandon(request_id)
            future.cancel()

    async def _until(
        self,
        future: asyncio.Future[Any],
        transfer: Transfer,
        condition: Callable[[], bool],
        what: str,
    ) -> None:
        """Wait until ``condition()`` or the answer came; the timeout counts from the last
        sign of progress."""
        timeout = self._sandbox._request_timeout
        while not future.done() and not condition():
            transfer.changed.clear()
            waiter = asyncio.ensure_future(transfer.changed.wait())
            try:
                done, _ = await asyncio.wait(
                    [future, waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
            if not done:
                raise SandboxTimeoutError(
                    f"no progress from the server within {timeout:g}s waiting for {what}"
                )

    async def _finish(
        self, future: asyncio.Future[Any], transfer: Transfer, what: str
    ) -> dict[str, Any]:
        await self._until(future, transfer, lambda: False, what)
        value = future.result()  # raises the SandboxFileError (or other SandboxError)
        return value if isinstance(value, dict) else {}


async def _anext(iterator: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
