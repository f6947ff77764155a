"""Terminals: a program on a pseudo-terminal inside the sandbox (``sandbox.pty``).

A terminal is a process like the others (it has a ``process_id``, is listed with kind
``"terminal"``, can be killed and re-attached), with three differences: its output is one
stream of raw bytes (escape sequences and invalid UTF-8 pass untouched), its input is
keystrokes (``"\\x03"`` is ctrl-C for the program in the foreground), and it has a window
size (``resize``; the program gets SIGWINCH).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from ._process import SandboxProcess

if TYPE_CHECKING:
    from ._sandbox import Sandbox

MAX_TERMINAL_SIZE = 1000
"""The largest number of columns or rows (the smallest is 1)."""


def check_size(cols: int, rows: int) -> None:
    """Both dimensions are integers from 1 to ``MAX_TERMINAL_SIZE`` (as the server checks)."""
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if not 1 <= value <= MAX_TERMINAL_SIZE:
            raise ValueError(f"{name} must be from 1 to {MAX_TERMINAL_SIZE}, got {value}")


class TerminalHost(Protocol):
    """What a terminal needs from its sandbox (``Sandbox`` implements it)."""

    async def _resize_terminal(self, key: str, cols: int, rows: int) -> None: ...


class Terminal:
    """A program on a pseudo-terminal in the sandbox, from ``sandbox.pty.create()``."""

    def __init__(self, host: TerminalHost, process: SandboxProcess) -> None:
        self._host = host
        self.process = process
        """The underlying process (its ``process_id``, ``exit_code``, ``reason``...)."""

    @property
    def process_id(self) -> int | None:
        return self.process.process_id

    @property
    def exit_code(self) -> int | None:
        return self.process.exit_code

    @property
    def output(self) -> AsyncIterator[bytes]:
        """The terminal's output as raw byte chunks, from its start until it ends (read
        once, like a pipe)."""
        return self.process.stdout.bytes()

    async def write(self, data: str | bytes) -> None:
        """Type ``data`` (keystrokes: ``"ls\\r"``, ``"\\x03"`` for ctrl-C). Waits for room
        in the stdin window."""
        await self.process.write(data)

    async def resize(self, cols: int, rows: int) -> None:
        """Set the window size (the program gets SIGWINCH)."""
        check_size(cols, rows)
        await self._host._resize_terminal(self.process._key, cols, rows)

    async def wait(self) -> int:
        """Wait for the program to end; its exit code (128 + N when killed by signal N)."""
        return await self.process.wait()

    async def kill(self) -> None:
        """Kill the program (its ``reason`` becomes ``"killed"``)."""
        await self.process.kill()

    def __repr__(self) -> str:
        return f"Terminal(process_id={self.process_id}, exit_code={self.exit_code})"


class Terminals:
    """``sandbox.pty``: opens terminals in the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def create(
        self,
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> Terminal:
        """Open a terminal of ``cols`` x ``rows`` running ``command`` (a bash command line;
        ``None``: the user's login shell) with ``TERM=xterm-256color``, once the server
        confirmed it started. Without ``timeout`` it runs as long as the server allows
        (``SANDBOX_MAX_EXEC_TIMEOUT_SECS``). Needs a server that speaks protocol 2."""
        check_size(cols, rows)
        if command is not None and not isinstance(command, str):
            raise TypeError("command must be a str or None")
        process = await self._sandbox._start_terminal(
            command or "", cols, rows, env=env, cwd=cwd, timeout=timeout
        )
        return Terminal(self._sandbox, process)
