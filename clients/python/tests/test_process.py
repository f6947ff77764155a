"""OutputStream and SandboxProcess on their own (no server, no sandbox)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from codesandbox import OutputStream, SandboxConnectionError, SandboxProcess, SandboxStateError


async def test_read_all_waits_for_the_end() -> None:
    stream = OutputStream()
    task = asyncio.ensure_future(stream.read_all())
    stream._feed("a")
    await asyncio.sleep(0)
    assert not task.done()
    stream._feed("b")
    stream._end()
    assert await task == "ab"
    assert stream.finished
    assert await stream.read_all() == ""


async def test_chunks_are_handed_out_once() -> None:
    stream = OutputStream()
    for chunk in ("1", "2", "3"):
        stream._feed(chunk)
    stream._end()
    iterator = stream.__aiter__()
    assert await iterator.__anext__() == "1"
    assert await stream.read_all() == "23"


async def test_bytes_chunks_decode_as_text_across_splits() -> None:
    stream = OutputStream()
    data = "é✓".encode()
    for i in range(len(data)):
        stream._feed(data[i : i + 1])
    stream._feed(b"\xff")
    stream._end()
    assert await stream.read_all() == "é✓\ufffd"


async def test_bytes_views() -> None:
    stream = OutputStream()
    stream._feed(b"\x00\xff")
    stream._feed(b"\x01")
    stream._end()
    assert [c async for c in stream.bytes()] == [b"\x00\xff", b"\x01"]

    text = OutputStream()
    text._feed("é")
    text._end()
    assert await text.read_all_bytes() == "é".encode()


async def test_failure_after_buffered_chunks() -> None:
    stream = OutputStream()
    stream._feed("kept")
    stream._end(SandboxConnectionError("lost"))
    iterator = stream.__aiter__()
    assert await iterator.__anext__() == "kept"
    with pytest.raises(SandboxConnectionError):
        await iterator.__anext__()
    with pytest.raises(SandboxConnectionError):
        await stream.read_all()


class _FakeSandbox:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def _send_stdin(self, process: Any, data: Any, *, eof: bool = False) -> None:
        self.sent.append((data, eof))

    async def _kill_process(self, process: Any) -> None:
        self.sent.append("kill")


def _process() -> tuple[SandboxProcess, _FakeSandbox]:
    fake = _FakeSandbox()
    return SandboxProcess(cast(Any, fake), 1), fake


async def test_wait_returns_the_exit_code_and_fields() -> None:
    process, _ = _process()
    waiter = asyncio.ensure_future(process.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert process.exit_code is None
    process._finish(3, None, "exited", 10)
    assert await waiter == 3
    assert (process.exit_code, process.reason, process.signal, process.duration_ms) == (
        3,
        "exited",
        None,
        10,
    )
    assert process.done
    assert await process.stdout.read_all() == ""


async def test_wait_raises_when_the_session_is_lost() -> None:
    process, _ = _process()
    process._fail(SandboxConnectionError("gone"))
    with pytest.raises(SandboxConnectionError, match="gone"):
        await process.wait()


async def test_stdin_rules() -> None:
    process, fake = _process()
    await process.write_to_stdin("a")
    await process.write_to_stdin(b"\x00")
    await process.write_to_stdin(bytearray(b"\x01"))
    await process.close_stdin()
    assert fake.sent == [("a", False), (b"\x00", False), (b"\x01", False), (None, True)]
    with pytest.raises(SandboxStateError, match="stdin is closed"):
        await process.write_to_stdin("late")
    with pytest.raises(TypeError):
        await process.write_to_stdin(5)  # type: ignore[arg-type]


async def test_finished_process_refuses_stdin_and_ignores_kill() -> None:
    process, fake = _process()
    process._finish(0, None, "exited", 1)
    with pytest.raises(SandboxStateError, match="ended"):
        await process.write_to_stdin("x")
    await process.kill()
    assert fake.sent == []
