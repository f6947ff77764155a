"""``codesandbox``: the command line (installed with the package as a console script).

One module per subcommand, each with ``add_parser(subparsers)`` and an async ``main(args)``
returning the exit code; this file only dispatches::

    codesandbox shell URL [--attach ID --token T] [--api-key K]
    codesandbox run URL FILE [--language python|bash] [--api-key K]
    codesandbox mcp --url URL [--api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .._errors import SandboxError
from . import mcp, run, shell

SUBCOMMANDS = (shell, run, mcp)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="codesandbox", description="Cloud Run Sandbox from the command line."
    )
    subparsers = top.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(subparsers)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.main(args))
    except SandboxError as error:
        print(f"codesandbox: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
