"""Terminals (``sandbox.pty``) and the ``codesandbox`` command line against a live server at
``SANDBOX_TEST_URL`` (skipped when it is unset). The CLI runs as a real subprocess on a real
local pseudo-terminal (Python's ``pty`` module), as a person would use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codesandbox import Sandbox, SyncSandbox, Terminal

from .live import Sandboxes

URL = os.environ.get("SANDBOX_TEST_URL", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not URL,
        reason="SANDBOX_TEST_URL is not set: integration tests need a live server "
        "(e.g. SANDBOX_TEST_URL=ws://127.0.0.1:8080)",
    ),
]

DEADLINE = 60.0


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandboxes(URL)
    try:
        yield await box.create()
    finally:
        await box.cleanup()


async def read_until(output: AsyncIterator[bytes], seen: bytearray, needle: bytes) -> bytes:
    """Read the terminal's output into ``seen`` until it holds ``needle``."""

    async def read() -> None:
        while needle not in seen:
            seen.extend(await output.__anext__())

    try:
        await asyncio.wait_for(read(), DEADLINE)
    except asyncio.TimeoutError as timeout:
        said = bytes(seen)
        message = f"no {needle!r} within {DEADLINE:g} s; the terminal said {said!r}"
        raise AssertionError(message) from timeout
    return bytes(seen)


async def test_a_terminal_is_a_tty_that_resizes_interrupts_and_exits_with_its_code(
    sandbox: Sandbox,
) -> None:
    term = await sandbox.pty.create(cols=100, rows=30)
    assert isinstance(term, Terminal)
    assert term.process_id is not None
    output = term.output
    seen = bytearray()
    await term.write("tty; stty size; echo tt-$((2+2))\r")
    text = await read_until(output, seen, b"tt-4")
    assert b"/dev/pts/" in text
    assert b"30 100" in text
    await term.resize(120, 40)
    seen.clear()
    await term.write("stty size\r")
    await read_until(output, seen, b"40 120")
    seen.clear()
    # ctrl-C stops the foreground job; the shell goes on.
    await term.write("bash -c 'echo zz-$((3*3)); exec sleep 100'; echo not-reached-$((1))\r")
    await read_until(output, seen, b"zz-9")
    await term.write(b"\x03")
    await term.write("echo back-$((5+5))\r")
    text = await read_until(output, seen, b"back-10")
    assert b"not-reached-1" not in text
    processes = await sandbox.list_processes()
    assert [p.kind for p in processes if p.process_id == term.process_id] == ["terminal"]
    await term.write("exit 3\r")
    assert await asyncio.wait_for(term.wait(), DEADLINE) == 3
    assert term.exit_code == 3


async def test_bad_sizes_are_refused_before_anything_is_sent(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="cols must be from 1 to 1000, got 0"):
        await sandbox.pty.create(cols=0, rows=24)
    term = await sandbox.pty.create(command="cat")
    with pytest.raises(ValueError, match="rows must be from 1 to 1000, got 1001"):
        await term.resize(80, 1001)
    await term.kill()
    assert await asyncio.wait_for(term.wait(), DEADLINE) == 137
    assert term.process.reason == "killed"


def test_the_sync_api_mirrors_it() -> None:
    with SyncSandbox.create(URL) as sandbox:
        try:
            term = sandbox.pty.create(cols=90, rows=20, command="stty size; read line; exit 5")
            seen = b""
            chunks = term.output
            while b"20 90" not in seen:
                seen += next(chunks)
            term.resize(91, 21)
            term.write("\r")
            assert term.wait(timeout=DEADLINE) == 5
        finally:
            sandbox.terminate()


# ------------------------------------------------------------------- the command line


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "codesandbox._cli", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_pty_until(fd: int, seen: bytearray, needle: bytes) -> None:
    deadline = time.monotonic() + DEADLINE
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child side is gone
                chunk = b""
            assert chunk, f"the terminal closed before {needle!r}: {bytes(seen)!r}"
            seen.extend(chunk)


def test_codesandbox_shell_on_a_real_terminal(tmp_path: Path) -> None:
    """The CLI in raw mode on a local pseudo-terminal: keys (ctrl-C included) reach the
    sandbox's shell, the window size is followed, the exit code is the shell's, and the
    local terminal's mode is restored afterwards."""
    before, after = tmp_path / "before", tmp_path / "after"
    script = (
        f"stty -g > {before}; stty cols 77 rows 22; "
        f"{' '.join(cli('shell', URL))}; echo cli-exit=$?; stty -g > {after}"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell on the new terminal
        os.execvpe("/bin/sh", ["/bin/sh", "-c", script], cli_env())
    seen = bytearray()
    try:
        read_pty_until(fd, seen, b"deleted when this shell exits")
        os.write(fd, b"stty size; echo hi-$((1+1))\r")
        read_pty_until(fd, seen, b"hi-2")
        assert b"22 77" in seen, bytes(seen)
        # The job prints, then becomes `sleep`: once its line shows, ctrl-C reaches it (one
        # typed before would go to the shell).
        os.write(fd, b"bash -c 'echo zz-$((1+1)); exec sleep 100'; echo no-$((1+1))-output\r")
        read_pty_until(fd, seen, b"zz-2")
        os.write(fd, b"\x03")
        os.write(fd, b"echo on-$((4+4))\r")
        read_pty_until(fd, seen, b"on-8")
        os.write(fd, b"exit 7\r")
        read_pty_until(fd, seen, b"cli-exit=7")
    finally:
        deadline = time.monotonic() + DEADLINE
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # keep the child from blocking on its output
                if select.select([fd], [], [], 0.2)[0]:
                    seen.extend(os.read(fd, 65536))
        if ended[0] == 0:
            os.kill(pid, signal.SIGKILL)
            ended = os.waitpid(pid, 0)
        status = ended[1]
        os.close(fd)
    assert os.WEXITSTATUS(status) == 0, bytes(seen)
    assert before.read_text() == after.read_text(), "the local terminal's mode was restored"


def test_codesandbox_run_streams_a_script(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(4)\n"
    )
    result = subprocess.run(
        cli("run", URL, str(script)),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=cli_env(),
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (4, "to stdout\n", "to stderr\n")
