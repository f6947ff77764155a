"""``codesandbox mcp --url URL [--api-key K]``: relay MCP over stdio to a server's ``/mcp``
endpoint, for desktop MCP hosts that start their servers as commands (see docs/mcp.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .._mcp_bridge import Bridge


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mcp",
        help="relay MCP over stdio to a server's /mcp endpoint (for desktop MCP hosts)",
    )
    parser.add_argument("--url", required=True, help="the endpoint, e.g. https://HOST/mcp")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    parser.set_defaults(main=main)


async def main(args: argparse.Namespace) -> int:
    url: str = args.url
    if not url.startswith(("http://", "https://")):
        print(
            f"codesandbox mcp: --url must be an http:// or https:// URL, got {url!r}",
            file=sys.stderr,
        )
        return 2
    if not url.rstrip("/").endswith("/mcp"):
        url = url.rstrip("/") + "/mcp"
    # The bridge relays with blocking reads of stdin: a thread of its own.
    await asyncio.to_thread(Bridge(url, args.api_key, sys.stdout).relay, sys.stdin)
    return 0
