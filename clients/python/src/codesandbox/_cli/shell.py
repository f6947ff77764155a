"""``codesandbox shell URL``: an interactive shell in a sandbox, in your terminal.

Your terminal is put in raw mode (every key, ctrl-C included, goes to the sandbox's
terminal, whose line discipline interprets it), its window size is followed (SIGWINCH),
and it is restored when the shell ends, also after an error. The exit code is the shell's.
A new sandbox is deleted when its shell exits; one joined with ``--attach`` is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from .._sandbox import Sandbox
from .._terminal import Terminal

DEFAULT_SIZE = (80, 24)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "shell",
        help="an interactive shell in a new (or an existing) sandbox",
        description="Open a terminal in a new sandbox (deleted when the shell exits), or in "
        "an existing one with --attach ID --token T.",
    )
    parser.add_argument("url", help="the server (ws://, wss://, http:// or https://)")
    parser.add_argument("--attach", metavar="ID", help="the sandbox to join")
    parser.add_argument("--token", metavar="T", help="its sandbox token (with --attach)")
    parser.add_argument("--api-key", help="for a server started with SANDBOX_API_KEYS")
    parser.add_argument("--command", help="run this instead of the login shell")
    parser.set_defaults(main=main)


def window_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on ``fd``, within the server's bounds."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return DEFAULT_SIZE
    if size.columns <= 0 or size.lines <= 0:
        return DEFAULT_SIZE
    return min(size.columns, 1000), min(size.lines, 1000)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the block, restored whatever happens (nothing to do
    when it is not a terminal: input then comes from a pipe or a file)."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW: keys typed before this moment are kept, not flushed.
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


async def relay(terminal: Terminal, stdin_fd: int, stdout_fd: int) -> int:
    """Keys from ``stdin_fd`` to the terminal, its output to ``stdout_fd``, the window
    size followed; the shell's exit code."""
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def key_pressed() -> None:
        try:
            data = os.read(stdin_fd, 4096)
        except OSError:
            data = b""
        if not data:
            # End of our input (a pipe): nothing more to type.
            loop.remove_reader(stdin_fd)
            return
        keys.put_nowait(data)

    async def type_keys() -> None:
        while True:
            data = await keys.get()
            await terminal.write(data)

    async def show_output() -> None:
        async for chunk in terminal.output:
            os.write(stdout_fd, chunk)

    def window_changed() -> None:
        cols, rows = window_size(stdout_fd)
        task = loop.create_task(terminal.resize(cols, rows))
        task.add_done_callback(lambda done: done.exception())

    loop.add_reader(stdin_fd, key_pressed)
    loop.add_signal_handler(signal.SIGWINCH, window_changed)
    typing = loop.create_task(type_keys())
    showing = loop.create_task(show_output())
    try:
        exit_code = await terminal.wait()
        await showing
        return exit_code
    finally:
        loop.remove_reader(stdin_fd)
        loop.remove_signal_handler(signal.SIGWINCH)
        typing.cancel()
        showing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(typing, showing)


async def main(args: argparse.Namespace) -> int:
    if (args.attach is None) != (args.token is None):
        print("codesandbox: --attach and --token go together", file=sys.stderr)
        return 2
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    if args.attach is not None:
        sandbox = await Sandbox.attach(args.url, args.attach, args.token, api_key=args.api_key)
    else:
        sandbox = await Sandbox.create(args.url, api_key=args.api_key)
        print(
            f"codesandbox: sandbox {sandbox.sandbox_id} (deleted when this shell exits)\r",
            file=sys.stderr,
        )
    try:
        cols, rows = window_size(stdout_fd)
        terminal = await sandbox.pty.create(cols=cols, rows=rows, command=args.command)
        with raw_mode(stdin_fd):
            return await relay(terminal, stdin_fd, stdout_fd)
    finally:
        if args.attach is None:
            await sandbox.terminate()
        else:
            await sandbox.disconnect()
