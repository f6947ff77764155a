"""The server's MCP endpoint ``/mcp`` through the official Python SDK (``mcp`` on PyPI).

Against the live server at ``SANDBOX_TEST_URL`` (its ``/mcp``), in both revisions the SDK
speaks: ``mode="legacy"`` (the initialize handshake, a session that owns a sandbox) and
``mode="2026-07-28"`` (single exchange: every call passes its ``sandbox_id`` on), plus the
stdio bridge ``codesandbox mcp`` driven by the SDK's stdio client. Skipped when the URL is
unset or the SDK is not installed (it needs Python 3.10+).
"""

from __future__ import annotations

import base64
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
# The tools the server offers: run_code comes with the code interpreter (issue 13), the file
# tools with the files API (issue 14), as `mcp::tools::Features::AVAILABLE` says.
EXPECTED_TOOLS = [
    "run_command",
    "run_code",
    "write_file",
    "read_file",
    "list_files",
    "close_sandbox",
]
needs_run_code = pytest.mark.skipif(
    "run_code" not in EXPECTED_TOOLS, reason="this build offers no run_code (issue 13)"
)
needs_files = pytest.mark.skipif(
    "read_file" not in EXPECTED_TOOLS, reason="this build offers no file tools (issue 14)"
)

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
        assert [tool.name for tool in tools.tools] == EXPECTED_TOOLS
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


@needs_run_code
@pytest.mark.parametrize("mode", MODES)
async def test_run_code_keeps_state_returns_figures_and_errors(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        first = await call(client, "run_code", {"code": "x = 41\nprint('hi')\nx + 1"})
        assert not first.is_error, first
        assert first.structured_content["result"] == "42"
        assert first.content[0].text == "hi\nOut: 42"
        sandbox_id = first.structured_content["sandbox_id"]

        figure = await call(
            client,
            "run_code",
            {
                "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nx",
                "sandbox_id": sandbox_id,
            },
        )
        assert not figure.is_error, figure
        images = [block for block in figure.content if block.type == "image"]
        assert len(images) == 1
        assert images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")
        assert figure.structured_content["result"] == "41"

        error = await call(client, "run_code", {"code": "1/0", "sandbox_id": sandbox_id})
        assert error.is_error
        assert "ZeroDivisionError" in error.content[0].text
        assert "Traceback" in error.content[0].text
        assert error.structured_content["error"]["name"] == "ZeroDivisionError"
        await call(client, "close_sandbox", {"sandbox_id": sandbox_id})


@needs_run_code
@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_cell_interrupts_it_and_keeps_its_state(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        base = await call(client, "run_code", {"code": "kept = 7"})
        sandbox_id = base.structured_content["sandbox_id"]
        started = anyio.Event()

        async def progress(value: float, total: float | None, message: str | None) -> None:
            if "sleeping" in (message or ""):
                started.set()

        async def long_cell() -> None:
            await call(
                client,
                "run_code",
                {
                    "code": "import time\nprint('sleeping', flush=True)\ntime.sleep(100)",
                    "sandbox_id": sandbox_id,
                },
                progress_callback=progress,
            )

        async with anyio.create_task_group() as group:
            group.start_soon(long_cell)
            with anyio.fail_after(60):
                await started.wait()
            group.cancel_scope.cancel()

        with anyio.fail_after(60):
            after = await call(client, "run_code", {"code": "kept", "sandbox_id": sandbox_id})
        assert not after.is_error, after
        assert after.structured_content["result"] == "7"
        await call(client, "close_sandbox", {"sandbox_id": sandbox_id})


@needs_files
@pytest.mark.parametrize("mode", MODES)
async def test_files_round_trip(mode: str) -> None:
    async with Client(MCP_URL, mode=mode) as client:
        written = await call(client, "write_file", {"path": "/root/notes.txt", "content": "a\nb\n"})
        assert not written.is_error, written
        assert written.structured_content["size"] == 4
        sandbox_id = written.structured_content["sandbox_id"]
        read = await call(client, "read_file", {"path": "notes.txt", "sandbox_id": sandbox_id})
        assert read.structured_content["content"] == "a\nb\n"
        data = bytes(range(256))
        binary = {
            "path": "/root/data.bin",
            "content": base64.b64encode(data).decode(),
            "encoding": "base64",
            "sandbox_id": sandbox_id,
        }
        assert not (await call(client, "write_file", binary)).is_error
        back = await call(
            client,
            "read_file",
            {"path": "/root/data.bin", "encoding": "base64", "sandbox_id": sandbox_id},
        )
        assert base64.b64decode(back.structured_content["content"]) == data
        listed = await call(client, "list_files", {"path": "/root", "sandbox_id": sandbox_id})
        paths = [entry["path"] for entry in listed.structured_content["entries"]]
        assert "/root/notes.txt" in paths
        assert "/root/data.bin" in paths
        seen = await run(client, "wc -c < /root/data.bin", sandbox_id)
        assert seen["stdout"].strip() == "256"
        missing = await call(client, "read_file", {"path": "/nope", "sandbox_id": sandbox_id})
        assert missing.is_error
        assert missing.content[0].text.startswith("not_found:")
        await call(client, "close_sandbox", {"sandbox_id": sandbox_id})
