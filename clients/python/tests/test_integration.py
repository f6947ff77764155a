"""Every public method against a live server without persistence at ``SANDBOX_TEST_URL``.

Skipped when the variable is unset. Checkpoints and snapshots must give the server's
"not enabled" errors here; ``test_persistence.py`` covers them against two persistent
instances. Every sandbox a test creates or attaches is terminated when the test ends,
pass or fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from codesandbox import (
    ReconnectOptions,
    Sandbox,
    SandboxCheckpointError,
    SandboxCreationError,
    SandboxInUseError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxSnapshotError,
    SandboxStateError,
    SandboxUnsupportedLanguageError,
)

from .live import Sandboxes
from .live import next_chunk as _next_chunk

URL = os.environ.get("SANDBOX_TEST_URL", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not URL,
        reason="SANDBOX_TEST_URL is not set: integration tests need a live server "
        "(e.g. SANDBOX_TEST_URL=ws://127.0.0.1:8080)",
    ),
]

FAST_RECONNECT = ReconnectOptions(max_attempts=20, initial_delay=0.05, max_delay=1.0, jitter=0)


@pytest.fixture
async def sandboxes() -> AsyncIterator[Sandboxes]:
    box = Sandboxes(URL)
    try:
        yield box
    finally:
        await box.cleanup()


@pytest.fixture
async def sandbox(sandboxes: Sandboxes) -> Sandbox:
    return await sandboxes.create()


# ------------------------------------------------------------------ executions


async def test_readme_example(sandboxes: Sandboxes) -> None:
    sandbox = await Sandbox.create(URL)
    sandboxes.opened.append(sandbox)
    process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash")
    stdout = await process.stdout.read_all()
    await sandbox.terminate()
    assert stdout == "Hello from the sandbox!\n"
    assert process.exit_code == 0
    assert sandbox.terminated


async def test_exec_python(sandbox: Sandbox) -> None:
    process = await sandbox.exec("import sys; print('py', sys.version_info[0])", "python")
    assert await process.stdout.read_all() == "py 3\n"
    assert await process.wait() == 0
    assert process.reason == "exited"


async def test_stdout_and_stderr_are_separate(sandbox: Sandbox) -> None:
    process = await sandbox.exec("echo out; echo err >&2; echo out2", "bash")
    stdout, stderr = await asyncio.gather(process.stdout.read_all(), process.stderr.read_all())
    assert stdout == "out\nout2\n"
    assert stderr == "err\n"


async def test_exit_codes_are_data(sandbox: Sandbox) -> None:
    assert (await sandbox.run("exit 42", "bash")).exit_code == 42
    assert (await sandbox.run("import sys; sys.exit(7)", "python")).exit_code == 7
    failed = await sandbox.run("raise ValueError('boom')", "python")
    assert failed.exit_code == 1
    assert "ValueError: boom" in failed.stderr
    signaled = await sandbox.run(
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "python"
    )
    assert signaled.exit_code == 128 + 9
    assert signaled.reason == "signaled"
    assert signaled.signal == 9


async def test_read_all_while_running_and_iteration(sandbox: Sandbox) -> None:
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)"
    process = await sandbox.exec(code, "python")
    assert not process.done
    chunks = [chunk async for chunk in process.stdout]
    assert "".join(chunks) == "0\n1\n2\n"
    assert await process.wait() == 0
    process = await sandbox.exec(code, "python")
    assert await process.stdout.read_all() == "0\n1\n2\n"


async def test_state_persists_between_executions(sandbox: Sandbox) -> None:
    await sandbox.run("echo kept > state.txt", "bash")
    assert (await sandbox.run("print(open('state.txt').read())", "python")).stdout == "kept\n\n"


async def test_env_cwd_and_default_home(sandbox: Sandbox) -> None:
    result = await sandbox.run('echo "$FOO"; pwd', "bash", env={"FOO": "bar baz"}, cwd="/tmp")
    assert result.stdout == "bar baz\n/tmp\n"
    result = await sandbox.run('pwd; echo "$HOME"', "bash")
    assert result.stdout == "/root\n/root\n"


async def test_execution_timeout(sandbox: Sandbox) -> None:
    result = await sandbox.run("sleep 30", "bash", timeout=1)
    assert result.reason == "timeout"
    assert result.exit_code != 0
    assert (await sandbox.run("echo after", "bash")).stdout == "after\n"


async def test_utf8_and_large_output(sandbox: Sandbox) -> None:
    text = "héllo wörld ✓ 日本語 🎉"
    assert (await sandbox.run(f"print({text!r})", "python")).stdout == text + "\n"
    big = await sandbox.run("print('x' * 300000)", "python")
    assert big.stdout == "x" * 300000 + "\n"


async def test_base64_output_is_byte_exact(sandbox: Sandbox) -> None:
    process = await sandbox.exec(r"printf '\xff\x00\x01abc'", "bash", output_encoding="base64")
    assert await process.stdout.read_all_bytes() == b"\xff\x00\x01abc"
    process = await sandbox.exec(
        "import sys; sys.stdout.buffer.write(bytes(range(256)))", "python", output_encoding="base64"
    )
    chunks = [chunk async for chunk in process.stdout.bytes()]
    assert b"".join(chunks) == bytes(range(256))
    # Text reads of a base64 stream decode UTF-8, keeping split characters whole.
    process = await sandbox.exec("print('ünïcode ✓')", "python", output_encoding="base64")
    assert await process.stdout.read_all() == "ünïcode ✓\n"


async def test_callbacks_and_lines(sandbox: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    process = await sandbox.exec(
        "for i in 1 2 3; do echo out $i; echo err $i >&2; done; printf tail",
        "bash",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert [line async for line in process.stdout.lines()] == ["out 1", "out 2", "out 3", "tail"]
    assert await process.wait() == 0
    assert "".join(out) == "out 1\nout 2\nout 3\ntail"
    assert "".join(err) == "err 1\nerr 2\nerr 3\n"
    result = await sandbox.run("print('via run')", "python", on_stdout=out.append)
    assert result.stdout == "via run\n"
    # Chunk boundaries are the pipe's: print may arrive as "via run" and "\n".
    assert "".join(out).endswith("tailvia run\n")


async def test_run_returns_a_result(sandbox: Sandbox) -> None:
    result = await sandbox.run("import sys; print('o'); print('e', file=sys.stderr)", "python")
    assert (result.stdout, result.stderr, result.exit_code, result.reason) == (
        "o\n",
        "e\n",
        0,
        "exited",
    )
    assert result.duration_ms is not None


# ------------------------------------------------------------------------ stdin


async def test_stdin_input(sandbox: Sandbox) -> None:
    process = await sandbox.exec("name = input()\nprint(f'Hello, {name}')", "python")
    await process.write_to_stdin("World\n")
    assert await process.stdout.read_all() == "Hello, World\n"
    assert await process.wait() == 0


async def test_stdin_read_until_eof(sandbox: Sandbox) -> None:
    process = await sandbox.exec(
        "import sys; data = sys.stdin.read(); print(len(data), data.upper(), end='')", "python"
    )
    await process.write_to_stdin("abc\n")
    await process.write_to_stdin("def\n")
    await process.close_stdin()
    assert await process.stdout.read_all() == "8 ABC\nDEF\n"
    assert await process.wait() == 0


async def test_stdin_bytes(sandbox: Sandbox) -> None:
    process = await sandbox.exec("import sys; print(sys.stdin.buffer.read().hex())", "python")
    await process.write_to_stdin(b"\x00\xff\x10")
    await process.close_stdin()
    assert await process.stdout.read_all() == "00ff10\n"


async def test_run_with_stdin_and_eof(sandbox: Sandbox) -> None:
    result = await sandbox.run("import sys; print(sys.stdin.read()[::-1])", "python", stdin="abc")
    assert result.stdout == "cba\n"
    # Without stdin, run() still closes it: input() sees EOF instead of hanging.
    result = await sandbox.run("input()", "python")
    assert result.exit_code == 1
    assert "EOFError" in result.stderr


# ------------------------------------------------------------------------- kill


async def test_kill_process(sandbox: Sandbox) -> None:
    process = await sandbox.exec("echo started; sleep 60", "bash")
    async for chunk in process.stdout:
        assert chunk == "started\n"
        break
    await process.kill()
    assert await process.wait() == 128 + 9
    assert process.reason == "killed"
    await process.kill()  # already ended: no-op
    assert (await sandbox.run("echo still usable", "bash")).stdout == "still usable\n"


async def test_kill_process_kills_the_whole_group(sandbox: Sandbox) -> None:
    process = await sandbox.exec("sleep 60 & sleep 60 & wait", "bash")
    await asyncio.sleep(0.3)
    await process.kill()
    await process.wait()
    count_sleeps = (
        "import os\n"
        "n = 0\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        n += open(f'/proc/{pid}/comm').read().strip() == 'sleep'\n"
        "    except OSError:\n"
        "        pass\n"
        "print(n)"
    )
    assert (await sandbox.run(count_sleeps, "python")).stdout == "0\n"


async def test_terminate_kill_alias_and_use_after(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create()
    await sandbox.kill()
    assert sandbox.terminated
    await sandbox.terminate()  # idempotent
    with pytest.raises(SandboxStateError):
        await sandbox.exec("echo", "bash")


async def test_context_manager_terminates(sandboxes: Sandboxes) -> None:
    async with await Sandbox.create(URL) as sandbox:
        sandbox_id, token = sandbox.sandbox_id, sandbox.sandbox_token
        assert sandbox_id is not None
        assert (await sandbox.run("echo in", "bash")).stdout == "in\n"
    assert sandbox.terminated
    with pytest.raises(SandboxNotFoundError):
        await sandboxes.attach(sandbox_id, token)


# ----------------------------------------------------------------------- errors


async def test_unsupported_language(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxUnsupportedLanguageError) as info:
        await sandbox.exec("puts 1", "ruby")
    assert info.value.status == "SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR"
    assert "python" in info.value.message
    assert (await sandbox.run("echo ok", "bash")).stdout == "ok\n"


async def test_second_exec_while_one_runs(sandbox: Sandbox) -> None:
    first = await sandbox.exec("sleep 0.5; echo first", "bash")
    if sandbox.protocol >= 2:
        # Several processes at once (test_protocol2.py): the second runs beside the first.
        second = await sandbox.exec("echo second", "bash")
        assert await second.stdout.read_all() == "second\n"
        assert await second.wait() == 0
    else:
        # A protocol-1 server runs one at a time: refused here, before asking it.
        with pytest.raises(SandboxStateError, match="already running"):
            await sandbox.exec("echo second", "bash")
    assert await first.stdout.read_all() == "first\n"
    assert await first.wait() == 0


async def test_attach_with_wrong_or_empty_token(sandbox: Sandbox, sandboxes: Sandboxes) -> None:
    assert sandbox.sandbox_id is not None
    await sandbox.disconnect()
    for token in ("wrong-token", ""):
        with pytest.raises(SandboxPermissionError) as info:
            await sandboxes.attach(sandbox.sandbox_id, token)
        assert info.value.status == "SANDBOX_PERMISSION_DENIAL_ERROR"
        assert info.value.message


async def test_attach_unknown_id() -> None:
    with pytest.raises(SandboxNotFoundError) as info:
        await Sandbox.attach(URL, "does-not-exist-" + uuid.uuid4().hex[:8], "token")
    assert info.value.status == "SANDBOX_NOT_FOUND"


async def test_attach_while_attached_is_in_use(sandbox: Sandbox, sandboxes: Sandboxes) -> None:
    assert sandbox.sandbox_id is not None
    with pytest.raises(SandboxInUseError):
        await sandboxes.attach(sandbox.sandbox_id)


async def test_two_clients_racing_for_one_sandbox(sandbox: Sandbox, sandboxes: Sandboxes) -> None:
    sandbox_id = sandbox.sandbox_id
    assert sandbox_id is not None
    await sandbox.run("echo racing > who.txt", "bash")
    await sandbox.disconnect()
    results = await asyncio.gather(
        sandboxes.attach(sandbox_id), sandboxes.attach(sandbox_id), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, Sandbox)]
    losers = [r for r in results if not isinstance(r, Sandbox)]
    assert len(winners) == 1, results
    assert len(losers) == 1
    assert isinstance(losers[0], SandboxInUseError), results
    assert (await winners[0].run("cat who.txt", "bash")).stdout == "racing\n"


async def test_attach_by_id_remembers_the_token(sandbox: Sandbox, sandboxes: Sandboxes) -> None:
    assert sandbox.sandbox_id is not None
    await sandbox.run("echo before > f.txt", "bash")
    await sandbox.disconnect()
    again = await sandboxes.attach(sandbox.sandbox_id)  # no token: remembered from create
    assert (await again.run("cat f.txt", "bash")).stdout == "before\n"


async def test_many_sandboxes_in_parallel(sandboxes: Sandboxes) -> None:
    boxes = await asyncio.gather(*(sandboxes.create() for _ in range(3)))
    results = await asyncio.gather(
        *(box.run(f"print({i} * 2)", "python") for i, box in enumerate(boxes))
    )
    assert [r.stdout for r in results] == ["0\n", "2\n", "4\n"]
    assert len({box.sandbox_id for box in boxes}) == 3


# -------------------------------------------------------------------- reconnect


def _drop(sandbox: Sandbox) -> None:
    """Simulate a network failure: close the socket abruptly, no close frame."""
    connection = sandbox._connection
    assert connection is not None
    connection.abort()


async def test_reconnect_after_a_dropped_connection(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(auto_reconnect=FAST_RECONNECT)
    code = "import time\nfor i in range(5): print(i); time.sleep(0.3)"
    process = await sandbox.exec(code, "python")
    received = [await _next_chunk(process.stdout)]
    _drop(sandbox)
    received += [chunk async for chunk in process.stdout]
    assert "".join(received) == "0\n1\n2\n3\n4\n"  # all of it, exactly once
    assert await process.wait() == 0
    assert (await sandbox.run("echo after", "bash")).stdout == "after\n"


async def test_reconnect_survives_repeated_drops(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(auto_reconnect=FAST_RECONNECT)
    code = "import time\nfor i in range(12): print(i, flush=True); time.sleep(0.15)"
    process = await sandbox.exec(code, "python")
    _drop(sandbox)  # before any output
    received: list[str] = []
    drops = 1
    async for chunk in process.stdout:
        received.append(chunk)
        if drops < 4:
            _drop(sandbox)
            drops += 1
    assert "".join(received) == "".join(f"{i}\n" for i in range(12))
    assert await process.wait() == 0


async def test_reconnect_queues_stdin(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(auto_reconnect=FAST_RECONNECT)
    process = await sandbox.exec(
        "import sys\nfor line in sys.stdin:\n    print(line.upper(), end='', flush=True)", "python"
    )
    await process.write_to_stdin("a\n")
    assert await _next_chunk(process.stdout) == "A\n"
    _drop(sandbox)
    await process.write_to_stdin("b\n")  # queued while reconnecting
    await process.close_stdin()
    assert await process.stdout.read_all() == "B\n"
    assert await process.wait() == 0


async def test_reconnect_when_the_execution_ended_while_away(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(auto_reconnect=FAST_RECONNECT)
    process = await sandbox.exec("echo start; sleep 0.5; echo end; exit 3", "bash")
    assert await _next_chunk(process.stdout) == "start\n"
    _drop(sandbox)
    assert await process.stdout.read_all() == "end\n"
    assert await process.wait() == 3


async def test_without_auto_reconnect_a_drop_fails_waits(sandbox: Sandbox) -> None:
    process = await sandbox.exec("sleep 5", "bash")
    _drop(sandbox)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(process.wait(), 10)
    # The sandbox survives the drop; cleanup terminates it by re-attaching.


# ------------------------------------------- checkpoint, snapshot: not enabled here


async def test_create_with_checkpoint_not_enabled(sandboxes: Sandboxes) -> None:
    with pytest.raises(SandboxCreationError) as info:
        await sandboxes.create(enable_checkpoint=True)
    assert "CHECKPOINT_AND_RESTORE_PATH" in info.value.message


async def test_checkpoint_not_enabled(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxCheckpointError) as info:
        await sandbox.checkpoint()
    assert info.value.status == "SANDBOX_CHECKPOINT_ERROR"
    assert "CHECKPOINT_AND_RESTORE_PATH" in info.value.message
    assert sandbox.closed  # the server closes with 4000; the sandbox survives
    assert not sandbox.checkpointed
    assert sandbox.state == "closed"
    await sandbox.terminate()  # re-attaches and kills it
    assert sandbox.terminated


async def test_snapshot_not_enabled(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxSnapshotError) as info:
        await sandbox.snapshot_filesystem("snap-" + uuid.uuid4().hex[:8])
    assert info.value.status == "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR"
    assert "FILESYSTEM_SNAPSHOT_PATH" in info.value.message
    assert (await sandbox.run("echo goes on", "bash")).stdout == "goes on\n"


async def test_create_from_snapshot_not_enabled(sandboxes: Sandboxes) -> None:
    name = "snap-" + uuid.uuid4().hex[:8]
    with pytest.raises(SandboxCreationError) as info:
        await sandboxes.create(filesystem_snapshot_name=name)
    assert name in info.value.message
    assert "FILESYSTEM_SNAPSHOT_PATH" in info.value.message


async def test_list_shows_labels_and_never_tokens(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(labels={"test": "list", "run": uuid.uuid4().hex[:8]})
    listed = await Sandbox.list(URL)
    info = next(info for info in listed.sandboxes if info.sandbox_id == sandbox.sandbox_id)
    assert info.state == "running"
    assert info.labels["test"] == "list"
    assert info.attached is True
    assert info.checkpointed is False
    assert (info.age_secs or 0) >= 0
    assert listed.next_after is None
    assert sandbox.sandbox_token is not None
    assert all(sandbox.sandbox_token not in repr(other) for other in listed.sandboxes)
    with pytest.raises(SandboxCreationError, match="labels"):
        await sandboxes.create(labels={"bad key": "x"})
