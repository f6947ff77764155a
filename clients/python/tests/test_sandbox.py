"""``Sandbox`` end to end against scripted in-process servers (no real sandbox server).

These cover what the sans-IO tests cannot: the reader task, futures, timeouts,
cancellation, the reconnect loop, TLS, and that nothing hangs when the server goes away.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from codesandbox import (
    OutputStream,
    ReconnectOptions,
    Sandbox,
    SandboxAuthenticationError,
    SandboxCheckpointError,
    SandboxConnectionError,
    SandboxCreationError,
    SandboxError,
    SandboxInUseError,
    SandboxPermissionError,
    SandboxSnapshotError,
    SandboxStateError,
    SandboxTimeoutError,
)

from .conftest import StartServer
from .fakeserver import created, done, killed, output, recv_json, status

FAST = ReconnectOptions(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=0)


async def _next_chunk(stream: OutputStream) -> str:
    """One chunk of output (waits for it)."""
    async for chunk in stream:
        return chunk
    raise AssertionError("the stream ended")


async def test_readme_flow_reads_while_running(fake_server: StartServer) -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        seen["path"] = ws.request.path if ws.request else None
        seen["init"] = await created(ws)
        seen["exec"] = await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await asyncio.sleep(0.1)  # read_all() is already waiting
        await ws.send(output("stdout", "Hello from "))
        await ws.send(output("stdout", "the sandbox!\n"))
        await ws.send(done(0))
        assert await recv_json(ws) == {"action": "kill_sandbox"}
        await killed(ws)

    url = await fake_server(handler)
    sandbox = await Sandbox.create(url)
    process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash")
    stdout = await process.stdout.read_all()
    await sandbox.terminate()

    assert stdout == "Hello from the sandbox!\n"
    assert process.exit_code == 0
    assert process.reason == "exited"
    assert seen["path"] == "/create"
    assert seen["init"] == {
        "idle_timeout": None,
        "enable_checkpoint": False,
        "enable_idle_timeout_auto_checkpoint": False,
        "enable_sandbox_handoff": False,
        "filesystem_snapshot_name": None,
    }
    assert seen["exec"] == {"language": "bash", "code": "echo 'Hello from the sandbox!'"}
    assert sandbox.sandbox_id == "sb-1"
    assert sandbox.sandbox_token == "tok-1"
    assert sandbox.terminated
    assert sandbox.closed
    assert sandbox.state == "killed"


async def test_streams_iterate_in_order_and_separately(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        for i in range(5):
            await ws.send(output("stdout", f"{i}\n"))
            await ws.send(output("stderr", f"e{i}\n"))
        await ws.send(done(3))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    process = await sandbox.exec("x", "python")
    chunks = [chunk async for chunk in process.stdout]
    assert chunks == [f"{i}\n" for i in range(5)]
    assert await process.stderr.read_all() == "".join(f"e{i}\n" for i in range(5))
    assert await process.wait() == 3  # a non-zero exit is data
    assert await process.stdout.read_all() == ""  # already consumed
    await sandbox.disconnect()


async def test_base64_mode_gives_bytes_and_bytes_stdin_is_base64(fake_server: StartServer) -> None:
    frames: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        frames.append(await recv_json(ws))
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        frames.append(await recv_json(ws))
        frames.append(await recv_json(ws))
        await ws.send(json.dumps({"event": "stdout", "data": "/wCA", "encoding": "base64"}))
        await ws.send(done(0))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    process = await sandbox.exec("cat", "bash", output_encoding="base64")
    await process.write_to_stdin(b"\x00\xff")
    await process.close_stdin()
    assert await process.stdout.read_all_bytes() == b"\xff\x00\x80"
    assert frames == [
        {"language": "bash", "code": "cat", "output_encoding": "base64"},
        {"event": "stdin", "data": "AP8=", "encoding": "base64"},
        {"event": "stdin", "eof": True},
    ]
    await sandbox.disconnect()


async def test_run_writes_stdin_closes_it_and_collects(fake_server: StartServer) -> None:
    frames: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        frames.append(await recv_json(ws))
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        frames.append(await recv_json(ws))
        frames.append(await recv_json(ws))
        await ws.send(output("stdout", "Hello, World\n"))
        await ws.send(output("stderr", "warn\n"))
        await ws.send(done(1))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    result = await sandbox.run("print(input())", "python", stdin="World\n", env={"A": "b"})
    assert (result.stdout, result.stderr, result.exit_code, result.reason) == (
        "Hello, World\n",
        "warn\n",
        1,
        "exited",
    )
    assert frames[0]["env"] == {"A": "b"}
    assert frames[1:] == [{"event": "stdin", "data": "World\n"}, {"event": "stdin", "eof": True}]
    await sandbox.disconnect()


async def test_server_drop_ends_every_wait_with_a_connection_error(
    fake_server: StartServer,
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await ws.send(output("stdout", "partial"))
        await asyncio.sleep(0.1)
        assert ws.transport is not None
        ws.transport.abort()

    sandbox = await Sandbox.create(await fake_server(handler))
    process = await sandbox.exec("sleep 100", "bash")
    with pytest.raises(SandboxConnectionError):
        await asyncio.wait_for(process.wait(), 5)
    with pytest.raises(SandboxConnectionError):
        await asyncio.wait_for(process.stdout.read_all(), 5)
    with pytest.raises(ConnectionError):  # the builtin catches it too
        await asyncio.wait_for(process.stderr.read_all(), 5)
    assert sandbox.closed
    with pytest.raises(SandboxStateError):
        await sandbox.exec("echo", "bash")


async def test_server_close_4000_fails_a_pending_request(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.close(4000, "fatal")

    sandbox = await Sandbox.create(await fake_server(handler))
    with pytest.raises(SandboxConnectionError) as info:
        await asyncio.wait_for(sandbox.snapshot_filesystem("s"), 5)
    assert info.value.close_code == 4000


async def test_creation_error_carries_the_server_message(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        message = "checkpointing is not enabled on this server"
        await ws.send(status("SANDBOX_CREATING"))
        await ws.send(status("SANDBOX_CREATION_ERROR", message=message))
        await ws.send(json.dumps({"event": "error", "message": message}))
        await ws.close(4000)

    with pytest.raises(SandboxCreationError) as info:
        await Sandbox.create(await fake_server(handler), enable_checkpoint=True)
    assert info.value.message == "checkpointing is not enabled on this server"
    assert info.value.status == "SANDBOX_CREATION_ERROR"


async def test_silent_server_times_out(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    with pytest.raises(SandboxTimeoutError):
        await Sandbox.create(await fake_server(handler), request_timeout=0.3)


async def test_unanswered_exec_times_out_and_frees_the_slot(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)  # ignored exec
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await ws.send(done(0))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler), request_timeout=0.3)
    with pytest.raises(SandboxTimeoutError):
        await sandbox.exec("echo", "bash")
    process = await sandbox.exec("echo", "bash")
    assert await process.wait() == 0
    await sandbox.disconnect()


async def test_connection_refused_is_a_connection_error() -> None:
    with pytest.raises(SandboxConnectionError):
        await Sandbox.create("ws://127.0.0.1:9", connect_timeout=5)


async def test_cancelled_wait_leaves_the_process_running(fake_server: StartServer) -> None:
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await release.wait()
        await ws.send(output("stdout", "late\n"))
        await ws.send(done(0))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    process = await sandbox.exec("x", "bash")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(process.wait(), 0.1)
    release.set()
    assert await asyncio.wait_for(process.wait(), 5) == 0
    assert await process.stdout.read_all() == "late\n"
    await sandbox.disconnect()


async def test_kill_process_and_second_exec_state_error(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        assert await recv_json(ws) == {"action": "kill_process"}
        await ws.send(status("SANDBOX_EXECUTION_FORCE_KILLED"))
        await ws.send(done(137, "killed", 9))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    process = await sandbox.exec("sleep 60", "bash")
    with pytest.raises(SandboxStateError, match="already running"):
        await sandbox.exec("echo", "bash")
    await process.kill()
    assert await process.wait() == 137
    assert (process.reason, process.signal) == ("killed", 9)
    await process.kill()  # no-op once ended
    with pytest.raises(SandboxStateError):
        await process.write_to_stdin("x")
    await sandbox.disconnect()


async def test_reconnect_continues_the_stream_and_flushes_queued_stdin(
    fake_server: StartServer,
) -> None:
    log: list[Any] = []
    reattaching = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        log.append(path)
        if path != "/create":
            reattaching.set()
        if path == "/create":
            await created(ws)
            await recv_json(ws)
            await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
            await ws.send(output("stdout", "0\n"))
            await asyncio.sleep(0.2)
            assert ws.transport is not None
            ws.transport.abort()
            return
        assert path == "/attach/sb-1?sandbox_token=tok-1"
        await asyncio.sleep(0.3)  # the client writes stdin while re-attaching
        await ws.send(status("SANDBOX_RUNNING"))
        log.append(await recv_json(ws))
        log.append(await recv_json(ws))
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await ws.send(output("stdout", "1\n"))
        await ws.send(output("stdout", "2\n"))
        await ws.send(done(0))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler), auto_reconnect=FAST)
    process = await sandbox.exec("loop", "python")
    first = await _next_chunk(process.stdout)
    assert first == "0\n"
    await asyncio.wait_for(reattaching.wait(), 5)  # the drop is being handled
    assert sandbox.state == "reconnecting"
    await process.write_to_stdin("queued\n")
    assert await asyncio.wait_for(process.stdout.read_all(), 5) == "1\n2\n"
    assert await process.wait() == 0
    assert log[1:] == [
        "/attach/sb-1?sandbox_token=tok-1",
        {"action": "reconnect"},
        {"event": "stdin", "data": "queued\n"},
    ]
    assert not sandbox.closed
    assert sandbox.state == "running"
    await sandbox.disconnect()
    assert sandbox.state == "closed"


async def test_reconnect_retries_in_use_then_succeeds(fake_server: StartServer) -> None:
    attaches = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal attaches
        assert ws.request is not None
        if ws.request.path == "/create":
            await created(ws)
            await recv_json(ws)
            await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
            assert ws.transport is not None
            ws.transport.abort()
            return
        attaches += 1
        if attaches == 1:
            await ws.send(status("SANDBOX_IN_USE"))
            await ws.close(1011)
            return
        await ws.send(status("SANDBOX_RUNNING"))
        assert await recv_json(ws) == {"action": "reconnect"}
        await ws.send(done(5))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler), auto_reconnect=FAST)
    process = await sandbox.exec("x", "bash")
    assert await asyncio.wait_for(process.wait(), 5) == 5
    assert attaches == 2
    await sandbox.disconnect()


async def test_reconnect_gives_up_with_the_reason(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path == "/create":
            await created(ws)
            await recv_json(ws)
            await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
            assert ws.transport is not None
            ws.transport.abort()
            return
        await ws.send(status("SANDBOX_NOT_FOUND", message="sandbox sb-1 not found"))
        await ws.close(1011)

    sandbox = await Sandbox.create(await fake_server(handler), auto_reconnect=FAST)
    process = await sandbox.exec("x", "bash")
    with pytest.raises(SandboxConnectionError, match="sandbox sb-1 not found"):
        await asyncio.wait_for(process.wait(), 5)
    assert sandbox.closed


# ------------------------------------------------------------- headers and API keys


def _refuse(status: int, error: str) -> Response:
    body = json.dumps({"error": error}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(status, "Unauthorized" if status == 401 else "Forbidden", headers, body)


async def test_headers_and_api_key_go_with_every_upgrade(fake_server: StartServer) -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = ws.request.headers
        seen.append((ws.request.path, headers.get("Authorization"), headers.get("X-Extra")))
        if ws.request.path == "/create":
            await created(ws)
            await recv_json(ws)
            await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
            assert ws.transport is not None
            ws.transport.abort()
            return
        await ws.send(status("SANDBOX_RUNNING"))
        assert await recv_json(ws) == {"action": "reconnect"}
        await ws.send(done(0))
        assert await recv_json(ws) == {"action": "kill_sandbox"}
        await killed(ws)

    sandbox = await Sandbox.create(
        await fake_server(handler),
        api_key="k-123",
        headers={"X-Extra": "yes"},
        auto_reconnect=FAST,
    )
    process = await sandbox.exec("x", "bash")
    assert await asyncio.wait_for(process.wait(), 5) == 0
    await sandbox.terminate()
    assert seen == [
        ("/create", "Bearer k-123", "yes"),
        ("/attach/sb-1?sandbox_token=tok-1", "Bearer k-123", "yes"),
    ]


@pytest.mark.parametrize("http_status", [401, 403])
async def test_a_refused_upgrade_is_an_authentication_error(
    fake_server: StartServer, http_status: int
) -> None:
    def refuse(_connection: ServerConnection, _request: Request) -> Response:
        return _refuse(http_status, "the api key in the authorization header is not valid")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("the upgrade must not happen")

    url = await fake_server(handler, process_request=refuse)
    with pytest.raises(SandboxAuthenticationError) as caught:
        await Sandbox.create(url, api_key="wrong")
    error = caught.value
    assert error.http_status == http_status
    assert f"HTTP {http_status}" in error.message
    assert "the api key in the authorization header is not valid" in error.message
    assert not isinstance(error, SandboxConnectionError)
    with pytest.raises(SandboxAuthenticationError):
        await Sandbox.attach(url, "sb-1", "tok-1", headers={"Authorization": "Bearer x"})


async def test_reconnect_stops_at_an_authentication_error(fake_server: StartServer) -> None:
    attaches = 0

    def refuse_attach(_connection: ServerConnection, request: Request) -> Response | None:
        nonlocal attaches
        if request.path == "/create":
            return None
        attaches += 1
        return _refuse(401, "the api key in the authorization header is not valid")

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        assert ws.transport is not None
        ws.transport.abort()

    url = await fake_server(handler, process_request=refuse_attach)
    sandbox = await Sandbox.create(url, api_key="revoked-meanwhile", auto_reconnect=FAST)
    process = await sandbox.exec("x", "bash")
    with pytest.raises(SandboxAuthenticationError, match="could not re-attach"):
        await asyncio.wait_for(process.wait(), 5)
    assert attaches == 1  # the same key is not tried again
    assert sandbox.closed


async def test_api_key_and_headers_are_checked_before_connecting() -> None:
    url = "ws://127.0.0.1:9"  # never reached
    with pytest.raises(ValueError, match="either api_key or an Authorization header"):
        await Sandbox.create(url, api_key="k", headers={"authorization": "Bearer k"})
    with pytest.raises(ValueError, match="api_key must be a non-empty str"):
        await Sandbox.create(url, api_key="")
    with pytest.raises(TypeError, match="headers must map str to str"):
        await Sandbox.attach(url, "sb", "tok", headers={"X-Number": 1})  # type: ignore[dict-item]


async def test_attach_remembers_the_token_from_create(fake_server: StartServer) -> None:
    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        paths.append(ws.request.path)
        if ws.request.path == "/create":
            await created(ws, sandbox_id="sb-remember", token="secret token/+")
            await ws.wait_closed()
            return
        await ws.send(status("SANDBOX_RUNNING"))
        await ws.wait_closed()

    url = await fake_server(handler)
    first = await Sandbox.create(url)
    await first.disconnect()
    second = await Sandbox.attach(url, "sb-remember")
    assert second.sandbox_token == "secret token/+"
    assert paths[1] == "/attach/sb-remember?sandbox_token=secret%20token%2F%2B"
    await second.disconnect()


async def test_attach_without_any_token_fails_client_side() -> None:
    with pytest.raises(SandboxPermissionError, match="no sandbox_token"):
        await Sandbox.attach("ws://127.0.0.1:9", "never-created-here")


async def test_in_use_on_attach(fake_server: StartServer) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(status("SANDBOX_IN_USE"))
        await ws.close(1011)

    with pytest.raises(SandboxInUseError):
        await Sandbox.attach(await fake_server(handler), "sb-x", "t")


async def test_context_manager_terminates(fake_server: StartServer) -> None:
    actions: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        actions.append(await recv_json(ws))
        await killed(ws)

    async with await Sandbox.create(await fake_server(handler)) as sandbox:
        assert not sandbox.closed
    assert actions == [{"action": "kill_sandbox"}]
    assert sandbox.terminated


async def test_failed_checkpoint_then_terminate_reattaches(fake_server: StartServer) -> None:
    log: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        log.append(ws.request.path)
        if ws.request.path == "/create":
            await created(ws)
            log.append(await recv_json(ws))
            message = "checkpointing is not enabled for this sandbox"
            await ws.send(status("SANDBOX_CHECKPOINT_ERROR", message=message))
            await ws.send(json.dumps({"event": "error", "message": message}))
            await ws.close(4000)
            return
        await ws.send(status("SANDBOX_RUNNING"))
        log.append(await recv_json(ws))
        await killed(ws)

    sandbox = await Sandbox.create(await fake_server(handler))
    with pytest.raises(SandboxError, match="not enabled") as info:
        await sandbox.checkpoint()
    assert info.value.status == "SANDBOX_CHECKPOINT_ERROR"
    assert sandbox.closed
    await sandbox.terminate()
    assert log == [
        "/create",
        {"action": "checkpoint"},
        "/attach/sb-1?sandbox_token=tok-1",
        {"action": "kill_sandbox"},
    ]
    assert sandbox.terminated


async def test_checkpoint_resolves_after_checkpointed_and_the_close(
    fake_server: StartServer,
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        assert await recv_json(ws) == {"action": "checkpoint"}
        for name in (
            "SANDBOX_CHECKPOINTING",
            "SANDBOX_DELETING",
            "SANDBOX_DELETED",
            "SANDBOX_CHECKPOINTED",
        ):
            await ws.send(status(name))
        await asyncio.sleep(0.2)  # checkpoint() is still waiting for the close
        await ws.close(1000)

    sandbox = await Sandbox.create(await fake_server(handler), enable_checkpoint=True)
    await asyncio.wait_for(sandbox.checkpoint(), 5)
    assert sandbox.closed
    assert sandbox.checkpointed
    assert not sandbox.terminated
    assert sandbox.state == "checkpointed"
    with pytest.raises(SandboxStateError, match="checkpointed"):
        await sandbox.exec("echo", "bash")


async def test_checkpoint_refused_up_front_keeps_the_session(fake_server: StartServer) -> None:
    log: list[Any] = []
    message = "cannot checkpoint: the sandbox has 2 open TCP connection(s)"

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        log.append(ws.request.path)
        await created(ws)
        log.append(await recv_json(ws))
        await ws.send(status("SANDBOX_CHECKPOINTING"))
        await ws.send(status("SANDBOX_CHECKPOINT_ERROR", message=message))
        await ws.send(json.dumps({"event": "error", "message": message}))
        log.append(await recv_json(ws))  # the session goes on: an exec
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await ws.send(output("stdout", "still here\n"))
        await ws.send(done(0))
        log.append(await recv_json(ws))
        await killed(ws)

    sandbox = await Sandbox.create(await fake_server(handler), enable_checkpoint=True)
    with pytest.raises(SandboxCheckpointError) as info:
        await asyncio.wait_for(sandbox.checkpoint(), 5)
    assert info.value.message == message
    assert info.value.status == "SANDBOX_CHECKPOINT_ERROR"
    assert not sandbox.closed
    assert not sandbox.checkpointed
    assert sandbox.state == "running"
    process = await sandbox.exec("echo still here", "bash")
    assert await process.stdout.read_all() == "still here\n"
    await sandbox.terminate()  # on the same connection, no re-attach
    assert sandbox.terminated
    assert log == [
        "/create",
        {"action": "checkpoint"},
        {"language": "bash", "code": "echo still here"},
        {"action": "kill_sandbox"},
    ]


async def test_checkpoint_error_then_close_4000_from_a_core_server(
    fake_server: StartServer,
) -> None:
    """No ``message`` in the status (core protocol): the text comes from the error event."""

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await recv_json(ws)
        await ws.send(status("SANDBOX_CHECKPOINT_ERROR"))
        await ws.send(json.dumps({"event": "error", "message": "checkpoint failed"}))
        await ws.close(4000)

    sandbox = await Sandbox.create(await fake_server(handler))
    with pytest.raises(SandboxCheckpointError, match="checkpoint failed"):
        await asyncio.wait_for(sandbox.checkpoint(), 5)
    assert sandbox.closed  # settled before checkpoint() raised
    assert sandbox.state == "closed"
    with pytest.raises(SandboxStateError, match="checkpoint failed"):
        await sandbox.exec("echo", "bash")


async def test_snapshot_created_and_failed_keep_the_session(fake_server: StartServer) -> None:
    requests: list[dict[str, Any]] = []
    message = 'invalid snapshot name "a b": use 1 to 64 characters from A-Z a-z 0-9 . _ -'

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        requests.append(await recv_json(ws))
        await ws.send(status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING"))
        await asyncio.sleep(0.1)
        await ws.send(status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED"))
        requests.append(await recv_json(ws))
        await ws.send(status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING"))
        await ws.send(status("SANDBOX_FILESYSTEM_SNAPSHOT_ERROR", message=message))
        await ws.send(json.dumps({"event": "error", "message": message}))
        requests.append(await recv_json(ws))
        await ws.send(status("SANDBOX_EXECUTION_RUNNING"))
        await ws.send(done(0))
        await ws.wait_closed()

    sandbox = await Sandbox.create(await fake_server(handler))
    await asyncio.wait_for(sandbox.snapshot_filesystem("snap-1"), 5)
    with pytest.raises(SandboxSnapshotError) as info:
        await asyncio.wait_for(sandbox.snapshot_filesystem("a b"), 5)
    assert info.value.message == message
    assert (await sandbox.run("true", "bash")).exit_code == 0
    assert not sandbox.closed
    assert requests == [
        {"action": "snapshot_filesystem", "name": "snap-1"},
        {"action": "snapshot_filesystem", "name": "a b"},
        {"language": "bash", "code": "true"},
    ]
    await sandbox.disconnect()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_wss_with_a_custom_ssl_context(fake_server: StartServer, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handler(ws: ServerConnection) -> None:
        await created(ws)
        await ws.wait_closed()

    url = await fake_server(handler, ssl_context=server_ctx)
    assert url.startswith("wss://")
    # The default context (system store / certifi) does not trust a self-signed cert.
    with pytest.raises(SandboxConnectionError):
        await Sandbox.create(url)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sandbox = await Sandbox.create(url, ssl=client_ctx)
    assert sandbox.sandbox_id == "sb-1"
    await sandbox.disconnect()


async def test_ssl_context_with_plain_ws_is_refused() -> None:
    with pytest.raises(ValueError, match="not wss"):
        await Sandbox.create("ws://127.0.0.1:9", ssl=ssl.create_default_context())
