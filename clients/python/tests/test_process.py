"""OutputStream and SandboxProcess on their own (no server, no sandbox)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codesandbox import ExecutionResult, SandboxConnectionError, SandboxStateError
from codesandbox._process import ProcessControl, new_process

DONE = ExecutionResult(exit_code=0, signal=None, reason="exited", duration_ms=10)


class FakeHost:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def write_stdin(self, key: str, data: str | bytes) -> None:
        self.sent.append((key, data))

    async def close_stdin(self, key: str) -> None:
        self.sent.append((key, "EOF"))

    async def kill_process(self, key: str) -> None:
        self.sent.append((key, "kill"))


def make(**callbacks: Any) -> tuple[ProcessControl, FakeHost]:
    host = FakeHost()
    return new_process(host, "7", 3, **callbacks), host


async def test_read_all_waits_for_the_end() -> None:
    control, _ = make()
    stream = control.process.stdout
    task = asyncio.ensure_future(stream.read_all())
    control.output("stdout", "a")
    await asyncio.sleep(0)
    assert not task.done()
    control.output("stdout", "b")
    control.finish(DONE)
    assert await task == "ab"
    assert stream.finished
    assert await stream.read_all() == ""


async def test_chunks_are_handed_out_once() -> None:
    control, _ = make()
    for chunk in ("1", "2", "3"):
        control.output("stdout", chunk)
    control.finish(DONE)
    iterator = control.process.stdout.__aiter__()
    assert await iterator.__anext__() == "1"
    assert await control.process.stdout.read_all() == "23"


async def test_lines_join_chunks_and_keep_a_last_partial_line() -> None:
    control, _ = make()
    for chunk in ("one\ntw", "o\n", "\nthr", "ee"):
        control.output("stdout", chunk)
    control.finish(DONE)
    assert [line async for line in control.process.stdout.lines()] == ["one", "two", "", "three"]


async def test_lines_as_they_complete() -> None:
    control, _ = make()
    lines = control.process.stderr.lines()
    control.output("stderr", "a\nb")
    assert await lines.__anext__() == "a"
    next_line = asyncio.ensure_future(lines.__anext__())
    await asyncio.sleep(0)
    assert not next_line.done(), "b is not a line until its newline or the end"
    control.output("stderr", "\n")
    assert await next_line == "b"


async def test_callbacks_get_text_as_it_arrives_and_the_stream_keeps_it() -> None:
    got: list[tuple[str, str]] = []
    control, _ = make(
        on_stdout=lambda text: got.append(("out", text)),
        on_stderr=lambda text: got.append(("err", text)),
    )
    control.output("stdout", "a")
    control.output("stderr", b"\xc3")  # half of é: nothing to say yet
    control.output("stderr", b"\xa9!")
    control.output("stdout", b"\xff")
    control.finish(DONE)
    assert got == [("out", "a"), ("err", "é!"), ("out", "\ufffd")]
    assert await control.process.stdout.read_all() == "a\ufffd"


async def test_a_raising_callback_does_not_break_the_stream() -> None:
    def boom(text: str) -> None:
        raise RuntimeError("user bug")

    control, _ = make(on_stdout=boom)
    control.output("stdout", "kept")
    control.finish(DONE)
    assert await control.process.stdout.read_all() == "kept"


async def test_bytes_chunks_decode_as_text_across_splits() -> None:
    control, _ = make()
    data = "é✓".encode()
    for i in range(len(data)):
        control.output("stdout", data[i : i + 1])
    control.output("stdout", b"\xff")
    control.finish(DONE)
    assert await control.process.stdout.read_all() == "é✓\ufffd"


async def test_bytes_views() -> None:
    control, _ = make()
    control.output("stdout", b"\x00\xff")
    control.output("stdout", b"\x01")
    control.output("stderr", "é")
    control.finish(DONE)
    assert [c async for c in control.process.stdout.bytes()] == [b"\x00\xff", b"\x01"]
    assert await control.process.stderr.read_all_bytes() == "é".encode()


async def test_failure_after_buffered_chunks() -> None:
    control, _ = make()
    control.output("stdout", "kept")
    control.fail(SandboxConnectionError("lost"))
    iterator = control.process.stdout.__aiter__()
    assert await iterator.__anext__() == "kept"
    with pytest.raises(SandboxConnectionError):
        await iterator.__anext__()
    with pytest.raises(SandboxConnectionError):
        await control.process.stdout.read_all()


async def test_wait_returns_the_exit_code_and_fields() -> None:
    control, _ = make()
    process = control.process
    waiter = asyncio.ensure_future(process.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert process.exit_code is None
    control.finish(ExecutionResult(exit_code=3, signal=None, reason="exited", duration_ms=10))
    assert await waiter == 3
    assert (process.exit_code, process.reason, process.signal, process.duration_ms) == (
        3,
        "exited",
        None,
        10,
    )
    assert await process.result() == ExecutionResult(3, None, "exited", 10)
    assert process.done
    assert process.process_id == 3


async def test_wait_raises_when_the_session_is_lost() -> None:
    control, _ = make()
    control.fail(SandboxConnectionError("gone"))
    with pytest.raises(SandboxConnectionError, match="gone"):
        await control.process.wait()


async def test_stdin_rules() -> None:
    control, host = make()
    process = control.process
    await process.write("a")
    await process.write(b"\x00")
    await process.write_to_stdin(bytearray(b"\x01"))
    await process.close_stdin()
    await process.close_stdin()  # closing twice does nothing
    assert host.sent == [("7", "a"), ("7", b"\x00"), ("7", b"\x01"), ("7", "EOF")]
    with pytest.raises(SandboxStateError, match="stdin is closed"):
        await process.write("late")
    with pytest.raises(TypeError):
        await process.write(5)  # type: ignore[arg-type]


async def test_finished_process_refuses_stdin_and_ignores_kill() -> None:
    control, host = make()
    control.finish(DONE)
    with pytest.raises(SandboxStateError, match="ended"):
        await control.process.write("x")
    await control.process.kill()
    # A process that read what it needed and exited did not need the end-of-file.
    await control.process.close_stdin()
    assert host.sent == []
