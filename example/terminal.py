"""Cloud Run Sandbox: terminal example (Python). A shell on a pseudo-terminal in the sandbox:
type into it, resize it, interrupt a job with ctrl-C, end it with its exit code.

    pip install clients/python/
    python example/terminal.py [url]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. For an interactive shell in your
own terminal, use the CLI instead: `codesandbox shell URL`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator

from codesandbox import Sandbox

API_KEY = os.environ.get("SANDBOX_API_KEY")

# Escape sequences (colours, bracketed paste): left out when showing lines here.
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


async def read_until(output: AsyncIterator[bytes], seen: bytearray, marker: bytes) -> str:
    """Read the terminal's output until ``marker`` shows; what came, as text without escape
    sequences and carriage returns (the output is raw bytes, as a terminal emulator gets
    them: lines end in \\r\\n)."""

    async def read() -> None:
        while marker not in seen:
            seen.extend(await output.__anext__())

    await asyncio.wait_for(read(), 60)
    text = ESCAPES.sub(b"", bytes(seen)).replace(b"\r", b"").decode(errors="replace")
    seen.clear()
    return text


async def main(url: str) -> None:
    async with await Sandbox.create(url, api_key=API_KEY) as sandbox:
        # The login shell on an 80x24 terminal (command="python3" etc. runs something else).
        term = await sandbox.pty.create(cols=80, rows=24)
        output = term.output
        seen = bytearray()

        # Keystrokes: "\r" is Enter. The marker's arithmetic shows only in the output, not
        # in the echo of the typed line.
        await term.write("tty; stty size; python3 -c 'import sys; print(sys.stdout.isatty())'\r")
        await term.write("echo done-$((1+1))\r")
        text = await read_until(output, seen, b"done-2")
        tty = re.search(r"/dev/pts/\d+", text)
        print(
            f"on {tty.group() if tty else '?'}; size and isatty:",
            *re.findall(r"^(24 80|True)$", text, re.M),
        )

        # The window follows a resize (the program gets SIGWINCH).
        await term.resize(120, 40)
        await term.write("stty size; echo done-$((2+2))\r")
        text = await read_until(output, seen, b"done-4")
        print("after resize:", *re.findall(r"^\d+ \d+$", text, re.M))

        # Ctrl-C interrupts the job in the foreground; the shell goes on. The job prints its
        # marker itself and then becomes `sleep`: once the marker shows, the job ctrl-C must
        # reach is in the foreground (a ctrl-C typed before would go to the shell instead).
        await term.write("bash -c 'echo sleeping-$((3*3)); exec sleep 100'\r")
        await read_until(output, seen, b"sleeping-9")
        await term.write("\x03")
        await term.write("echo back-$((4*4))\r")
        await read_until(output, seen, b"back-16")
        print("ctrl-C stopped `sleep 100`; the shell goes on")

        # The shell's exit code comes back as any process's.
        await term.write("exit 3\r")
        code = await term.wait()
        print(f"the shell exited with code {code}")
        if code != 3:
            raise SystemExit(f"expected exit code 3, got {code}")


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1]
            if len(sys.argv) > 1
            else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
        )
    )
