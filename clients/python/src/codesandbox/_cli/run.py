"""``codesandbox run URL FILE``: run a script in a new sandbox, streaming its output."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from .._sandbox import Sandbox


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a script in a new sandbox and stream its output",
        description="Run FILE in a new sandbox (deleted afterwards); its stdout and stderr "
        "stream to yours, and its exit code is this command's.",
    )
    parser.add_argument("url", help="the server (ws://, wss://, http:// or https://)")
    parser.add_argument("file", help="the script to run")
    parser.add_argument(
        "--language",
        choices=("python", "bash"),
        help="default: python for *.py, else bash",
    )
    parser.add_argument("--api-key", help="for a server started with SANDBOX_API_KEYS")
    parser.add_argument("--timeout", type=float, help="seconds before the server kills it")
    parser.set_defaults(main=main)


def language_of(path: str, asked: str | None) -> str:
    if asked is not None:
        return asked
    return "python" if path.endswith(".py") else "bash"


async def main(args: argparse.Namespace) -> int:
    code = await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8")

    def to(stream: Any) -> Any:
        def write(text: str) -> None:
            stream.write(text)
            stream.flush()

        return write

    sandbox = await Sandbox.create(args.url, api_key=args.api_key)
    try:
        process = await sandbox.exec(
            code,
            language_of(args.file, args.language),
            timeout=args.timeout,
            on_stdout=to(sys.stdout),
            on_stderr=to(sys.stderr),
            cwd="/root",
        )
        await process.close_stdin()
        exit_code = await process.wait()
        if process.reason not in (None, "exited"):
            print(f"codesandbox: the script ended: {process.reason}", file=sys.stderr)
        return exit_code
    finally:
        await sandbox.terminate()


if __name__ == "__main__":  # pragma: no cover
    print("use: codesandbox run URL FILE", file=sys.stderr)
    sys.exit(os.EX_USAGE)
