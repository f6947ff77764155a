"""The server's MCP endpoint ``/mcp`` through the official Python SDK (``mcp`` on PyPI).

Against the live server at ``SANDBOX_TEST_URL`` (its ``/mcp``), in both revisions the SDK
speaks: ``mode="legacy"`` (the initialize handshake, a session that owns a sandbox) and
``mode="2026-07-28"`` (single exchange: every call passes its ``sandbox_id`` on), plus the
stdio bridge ``codesandbox mcp`` driven by the SDK's stdio client. Skipped when the URL is
unset or the SDK is not installed (it needs Python 3.10+).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

mcp = pytest.importorskip("mcp")
anyio = pytest.importorskip("anyio")

from mcp import Client, StdioServerParameters  # noqa: E402

WS_URL = os.environ.get("SANDBOX_TEST_URL", "")
MCP_URL = (
    WS_URL.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/") + "/mcp"
)
MODES = ["legacy", "2026-07-28"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not WS_URL, reason="SANDBOX_TEST_URL is not set: needs a live server"),
]


async def call(client: Any, name: str, arguments: dict[str, Any], **kwargs: Any) -> Any:
    result = await client.call_tool(name, arguments, **kwargs)
    return result


async def run(client: Any, command: str, sandbox_id: str | None = None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"command": command}
    if sandbox_id:
        arguments["sandbox_id"] = sandbox_id
    result = await call(client, "run_command", arguments)
    assert not result.is_error, result
    structured: dict[str, Any] = result.structured_content
    return structured


@pytest.mark.parametrize("mode", MODES)
async def test_tools_state_and_exit_codes(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        tools = await client.list_tools()
        assert [tool.name for tool in tools.tools] == ["run_command", "close_sandbox"]
        run_command = tools.tools[0]
        assert run_command.output_schema is not None
        assert "command" in run_command.input_schema["required"]

        first = await run(client, "echo 1 > /root/counter; echo out; echo err >&2; exit 3")
        assert (first["exit_code"], first["stdout"], first["stderr"]) == (3, "out\n", "err\n")
        sandbox_id = first["sandbox_id"]
        second = await run(client, "cat /root/counter", sandbox_id)
        assert second["stdout"] == "1\n"
        assert second["sandbox_id"] == sandbox_id
        closed = await call(client, "close_sandbox", {"sandbox_id": sandbox_id})
        assert closed.structured_content == {"sandbox_id": sandbox_id, "closed": True}


async def test_a_session_keeps_its_sandbox_and_two_sessions_are_apart() -> None:
    async with Client(MCP_URL, mode="legacy") as one, Client(MCP_URL, mode="legacy") as two:
        mine = await run(one, "echo secret > /root/mine")
        again = await run(one, "cat /root/mine")  # no sandbox_id: the session's sandbox
        assert again["stdout"] == "secret\n"
        assert again["sandbox_id"] == mine["sandbox_id"]
        theirs = await run(two, "cat /root/mine")
        assert theirs["exit_code"] != 0
        assert theirs["sandbox_id"] != mine["sandbox_id"]
        sandbox_id = mine["sandbox_id"]
    # Leaving the context sent DELETE: the session's sandbox is gone.
    async with Client(MCP_URL, mode="2026-07-28") as client:
        gone = await call(client, "run_command", {"command": "true", "sandbox_id": sandbox_id})
        assert gone.is_error
        assert gone.content[0].text.startswith(f"no sandbox {sandbox_id}")


@pytest.mark.parametrize("mode", MODES)
async def test_progress_streams_and_cancellation_kills_the_command(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        base = await run(client, "echo kept > /root/state")
        sandbox_id = base["sandbox_id"]
        started = anyio.Event()
        messages: list[str] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            messages.append(message or "")
            if "started" in "".join(messages):
                started.set()

        async def long_call() -> None:
            await call(
                client,
                "run_command",
                {
                    "command": "echo started; sleep 100; echo late > /root/state",
                    "sandbox_id": sandbox_id,
                },
                progress_callback=progress,
            )

        async with anyio.create_task_group() as group:
            group.start_soon(long_call)
            with anyio.fail_after(60):
                await started.wait()
            group.cancel_scope.cancel()
        assert "started\n" in messages

        for _ in range(100):
            check = await run(client, "pgrep -x sleep || echo none", sandbox_id)
            if check["stdout"] == "none\n":
                break
            await anyio.sleep(0.2)
        else:
            pytest.fail("the cancelled command still runs")
        kept = await run(client, "cat /root/state", sandbox_id)
        assert kept["stdout"] == "kept\n"
        await call(client, "close_sandbox", {"sandbox_id": sandbox_id})


@pytest.mark.parametrize("mode", MODES)
async def test_bad_calls_are_answered_and_the_server_keeps_serving(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        bad_argument = await call(client, "run_command", {"command": "true", "timeout_s": -1})
        assert bad_argument.is_error
        assert "timeout_s" in bad_argument.content[0].text
        with pytest.raises(mcp.shared.exceptions.MCPError) as raised:
            await call(client, "no_such_tool", {})
        assert raised.value.error.code == -32602
        works = await run(client, "echo fine")
        assert works["stdout"] == "fine\n"
        await call(client, "close_sandbox", {"sandbox_id": works["sandbox_id"]})


async def test_the_stdio_bridge_relays_to_the_endpoint() -> None:
    bridge = StdioServerParameters(
        command=sys.executable, args=["-m", "codesandbox", "mcp", "--url", MCP_URL]
    )
    async with Client(bridge) as client:
        tools = await client.list_tools()
        assert "run_command" in [tool.name for tool in tools.tools]
        first = await run(client, "echo via-bridge > /root/b")
        second = await run(client, "cat /root/b", first["sandbox_id"])
        assert second["stdout"] == "via-bridge\n"
        assert second["sandbox_id"] == first["sandbox_id"]


async def test_the_example_runs() -> None:
    example = os.path.join(os.path.dirname(__file__), "..", "..", "..", "example", "mcp_client.py")
    process = await anyio.run_process(
        [sys.executable, example, MCP_URL], check=False, env={**os.environ, "SANDBOX_API_KEY": ""}
    )
    output = process.stdout.decode()
    assert process.returncode == 0, output + process.stderr.decode()
    assert "the file is still there: Hello from the sandbox! exit code: 3" in output
