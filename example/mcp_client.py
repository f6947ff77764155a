"""Cloud Run Sandbox as an MCP server: the official Python SDK calls its tools.

    pip install mcp
    python example/mcp_client.py [url]

The url defaults to $SANDBOX_MCP_URL, then http://127.0.0.1:8080/mcp (https://<service>/mcp
on Cloud Run). With $SANDBOX_API_KEY set, the key goes as `Authorization: Bearer`. The
default mode probes `server/discover` and speaks the 2026-07-28 single exchange: every call
passes the `sandbox_id` of the first on, so all of them use one sandbox.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

API_KEY = os.environ.get("SANDBOX_API_KEY")


async def main(url: str) -> int:
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers))
    async with Client(transport) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            print("  progress:", (message or "").rstrip())

        first = await client.call_tool(
            "run_command",
            {"command": "echo 'Hello from the sandbox!' | tee /root/greeting"},
            progress_callback=progress,
        )
        result: dict[str, Any] = first.structured_content or {}
        sandbox_id = result["sandbox_id"]
        print("sandbox:", sandbox_id, "exit code:", result["exit_code"])

        second = await client.call_tool(
            "run_command", {"command": "cat /root/greeting; exit 3", "sandbox_id": sandbox_id}
        )
        again: dict[str, Any] = second.structured_content or {}
        print("the file is still there:", again["stdout"].strip(), "exit code:", again["exit_code"])
        if again["stdout"] != "Hello from the sandbox!\n" or again["exit_code"] != 3:
            return 1

        await client.call_tool("close_sandbox", {"sandbox_id": sandbox_id})
        print("closed")
    return 0


if __name__ == "__main__":
    default = os.environ.get("SANDBOX_MCP_URL", "http://127.0.0.1:8080/mcp")
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else default)))
