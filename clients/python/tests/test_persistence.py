"""Checkpoint/restore and filesystem snapshots across two live server instances.

Needs ``SANDBOX_TEST_PERSISTENT_URL`` and ``SANDBOX_TEST_PERSISTENT_URL_2``: two servers
sharing ``CHECKPOINT_AND_RESTORE_PATH`` and ``FILESYSTEM_SNAPSHOT_PATH`` (``scripts/test.sh``
starts them). A sandbox is checkpointed on the first (``A``) and restored on the second
(``B``); snapshots are taken on ``A`` and used on ``B``. Every sandbox is terminated and
every snapshot deleted when its test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from codesandbox import (
    Sandbox,
    SandboxCheckpointError,
    SandboxCreationError,
    SandboxInUseError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxSnapshotError,
    SandboxStateError,
)

from .live import Sandboxes, delete_snapshot, list_snapshots, next_chunk

A = os.environ.get("SANDBOX_TEST_PERSISTENT_URL", "")
B = os.environ.get("SANDBOX_TEST_PERSISTENT_URL_2", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (A and B),
        reason="SANDBOX_TEST_PERSISTENT_URL and SANDBOX_TEST_PERSISTENT_URL_2 are not set: "
        "these tests need two servers sharing CHECKPOINT_AND_RESTORE_PATH and "
        "FILESYSTEM_SNAPSHOT_PATH (scripts/test.sh starts them)",
    ),
]

# A background process that writes an increasing number to /root/count every 0.1 s, then
# waits until it has counted a little.
COUNTER = """\
nohup python3 -c "
import itertools, os, time
for i in itertools.count():
    with open('/root/count.tmp', 'w') as f:
        f.write(str(i))
    os.replace('/root/count.tmp', '/root/count')
    time.sleep(0.1)
" >/dev/null 2>&1 &
for _ in $(seq 100); do
    [ "$(cat /root/count 2>/dev/null || echo 0)" -ge 3 ] && break
    sleep 0.1
done
cat /root/count
"""

# A process that keeps a TCP connection to itself open (127.0.0.1), in the background.
OPEN_TCP = """\
nohup python3 -c "
import os, socket, time
server = socket.socket()
server.bind(('127.0.0.1', 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
accepted, _ = server.accept()
with open('/tmp/tcp.pid.tmp', 'w') as f:
    f.write(str(os.getpid()))
os.replace('/tmp/tcp.pid.tmp', '/tmp/tcp.pid')
time.sleep(3600)
" >/dev/null 2>&1 &
for _ in $(seq 100); do [ -s /tmp/tcp.pid ] && break; sleep 0.1; done
cat /tmp/tcp.pid
"""


def _count_processes(marker: str) -> str:
    """Python code printing how many other processes have ``marker`` in their command line."""
    return (
        "import os\n"
        "n = 0\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if int(pid) == os.getpid():\n"
        "        continue\n"
        "    try:\n"
        f"        n += {marker!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "print(n)"
    )


@pytest.fixture
async def sandboxes() -> AsyncIterator[Sandboxes]:
    box = Sandboxes(A)
    try:
        yield box
    finally:
        await box.cleanup()


@pytest.fixture
async def snapshot_names() -> AsyncIterator[list[str]]:
    """Snapshot names for a test; each is deleted afterwards (``DELETE /snapshots/{name}``)."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            status = await delete_snapshot(A, name)
            assert status in (200, 404), f"could not delete snapshot {name}: HTTP {status}"


def _new_snapshot_name(names: list[str]) -> str:
    name = "pytest-" + uuid.uuid4().hex[:12]
    names.append(name)
    return name


async def _checkpointed(sandboxes: Sandboxes, *, setup: str | None = None) -> Sandbox:
    """A sandbox created on A with a file (and ``setup`` run), then checkpointed."""
    sandbox = await sandboxes.create(A, enable_checkpoint=True)
    await sandbox.run("echo saved > /root/file.txt", "bash")
    if setup is not None:
        await sandbox.run(setup, "bash")
    await sandbox.checkpoint()
    return sandbox


# ------------------------------------------------------------------ checkpoint


async def test_checkpoint_then_attach_on_the_other_instance(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A, enable_checkpoint=True)
    sandbox_id, token = sandbox.sandbox_id, sandbox.sandbox_token
    assert sandbox_id is not None
    assert token is not None
    await sandbox.run("echo saved > /root/file.txt", "bash")
    before = int((await sandbox.run(COUNTER, "bash")).stdout)
    assert before >= 3

    await sandbox.checkpoint()
    assert sandbox.checkpointed
    assert sandbox.closed
    assert sandbox.state == "checkpointed"
    with pytest.raises(SandboxStateError, match="checkpointed"):
        await sandbox.exec("echo", "bash")

    restored = await sandboxes.attach(sandbox_id, url=B)  # token remembered in-process
    assert restored.sandbox_id == sandbox_id
    assert restored.sandbox_token == token
    assert restored.state == "running"
    assert (await restored.run("cat /root/file.txt", "bash")).stdout == "saved\n"
    # The counter was restored with its state, and keeps counting.
    first = int((await restored.run("cat /root/count", "bash")).stdout)
    assert first >= before
    await asyncio.sleep(1)
    second = int((await restored.run("cat /root/count", "bash")).stdout)
    assert second > first
    # exec and stdin work on the restored sandbox.
    process = await restored.exec("name = input()\nprint(f'Hello, {name}')", "python")
    await process.write_to_stdin("restored\n")
    assert await process.stdout.read_all() == "Hello, restored\n"
    assert await process.wait() == 0


async def test_attach_with_the_wrong_token_restores_nothing(sandboxes: Sandboxes) -> None:
    sandbox = await _checkpointed(sandboxes)
    sandbox_id, token = sandbox.sandbox_id, sandbox.sandbox_token
    assert sandbox_id is not None
    assert token is not None
    for wrong in ("wrong-" + token, ""):
        with pytest.raises(SandboxPermissionError) as info:
            await sandboxes.attach(sandbox_id, wrong, url=B)
        assert info.value.status == "SANDBOX_PERMISSION_DENIAL_ERROR"
        assert info.value.message
    # Nothing was restored on B (it would hold the sandbox's lease and A would answer
    # "in use"): the right token restores it on A.
    restored = await sandboxes.attach(sandbox_id, token, url=A)
    assert (await restored.run("cat /root/file.txt", "bash")).stdout == "saved\n"


async def test_concurrent_attaches_on_two_instances(sandboxes: Sandboxes) -> None:
    sandbox = await _checkpointed(sandboxes)
    sandbox_id = sandbox.sandbox_id
    assert sandbox_id is not None
    results = await asyncio.gather(
        sandboxes.attach(sandbox_id, url=A),
        sandboxes.attach(sandbox_id, url=B),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Sandbox)]
    losers = [r for r in results if not isinstance(r, Sandbox)]
    assert len(winners) == 1, results
    assert len(losers) == 1, results
    assert isinstance(losers[0], SandboxInUseError), results
    assert losers[0].status == "SANDBOX_IN_USE"
    assert (await winners[0].run("cat /root/file.txt", "bash")).stdout == "saved\n"


async def test_checkpoint_while_a_process_runs(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A, enable_checkpoint=True)
    process = await sandbox.exec("echo started; sleep 1; echo done", "bash")
    assert await next_chunk(process.stdout) == "started\n"
    with pytest.raises(SandboxStateError) as info:
        await sandbox.checkpoint()
    assert info.value.status == "SANDBOX_EXECUTION_IN_PROGRESS_ERROR"
    assert info.value.message
    assert not sandbox.closed
    # The session continues: the process finishes, the sandbox runs more code.
    assert await process.stdout.read_all() == "done\n"
    assert await process.wait() == 0
    assert (await sandbox.run("echo after", "bash")).stdout == "after\n"
    assert sandbox.state == "running"


async def test_checkpoint_refused_with_an_open_tcp_connection(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A, enable_checkpoint=True)
    pid = (await sandbox.run(OPEN_TCP, "bash")).stdout.strip()
    assert pid.isdigit(), pid
    with pytest.raises(SandboxCheckpointError) as info:
        await sandbox.checkpoint()
    assert info.value.status == "SANDBOX_CHECKPOINT_ERROR"
    assert "TCP" in info.value.message
    # Refused up front: the server keeps the session, nothing was touched.
    assert not sandbox.closed
    assert not sandbox.checkpointed
    assert sandbox.state == "running"
    result = await sandbox.run(f"kill -0 {pid} && echo alive", "bash")
    assert result.stdout == "alive\n"
    # Once the connection is gone, the checkpoint goes through.
    await sandbox.run(f"kill {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done", "bash")
    await sandbox.checkpoint()
    assert sandbox.checkpointed


async def test_checkpoint_of_a_sandbox_created_without_it(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A)
    with pytest.raises(SandboxCheckpointError) as info:
        await sandbox.checkpoint()
    assert "enable_checkpoint" in info.value.message
    assert sandbox.closed  # the server closed with 4000
    assert not sandbox.checkpointed
    assert sandbox.state == "closed"


async def test_terminate_after_restore_removes_the_saved_state(sandboxes: Sandboxes) -> None:
    sandbox = await _checkpointed(sandboxes)
    sandbox_id, token = sandbox.sandbox_id, sandbox.sandbox_token
    assert sandbox_id is not None
    assert token is not None
    restored = await sandboxes.attach(sandbox_id, url=B)
    await restored.terminate()
    assert restored.terminated
    for url in (A, B):
        with pytest.raises(SandboxNotFoundError) as info:
            await sandboxes.attach(sandbox_id, token, url=url)
        assert info.value.status == "SANDBOX_NOT_FOUND"


async def test_idle_timeout_auto_checkpoint_then_attach_elsewhere(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A, enable_idle_timeout_auto_checkpoint=True, idle_timeout=1)
    assert sandbox.sandbox_id is not None
    await sandbox.run("echo idle > /root/idle.txt", "bash")
    sandbox_id = sandbox.sandbox_id
    # A connected client keeps its sandbox (docs/protocol.md, idle timeout); once it has
    # left, the idle timeout checkpoints the sandbox instead of deleting it. Until the
    # checkpoint is published, the other instance finds it in use on this one.
    await sandbox.disconnect()
    restored = None
    for _ in range(100):
        try:
            restored = await sandboxes.attach(sandbox_id, url=B)
            break
        except (SandboxInUseError, SandboxNotFoundError):
            await asyncio.sleep(0.2)
    assert restored is not None, "the idle sandbox was not checkpointed within 20 s"
    assert (await restored.run("cat /root/idle.txt", "bash")).stdout == "idle\n"


# ------------------------------------------------------------------- snapshots


async def test_snapshot_then_create_from_it_on_the_other_instance(
    sandboxes: Sandboxes, snapshot_names: list[str]
) -> None:
    name = _new_snapshot_name(snapshot_names)
    marker = "snapshot-marker-" + uuid.uuid4().hex[:8]
    source = await sandboxes.create(A)
    await source.run(
        f"mkdir -p /root/project && echo from-snapshot > /root/project/data.txt\n"
        f"nohup bash -c 'exec -a {marker} sleep 3600' >/dev/null 2>&1 &\n"
        f"sleep 0.3",
        "bash",
    )
    assert (await source.run(_count_processes(marker), "python")).stdout == "1\n"

    await source.snapshot_filesystem(name)
    # The session goes on, with its processes.
    assert not source.closed
    assert (await source.run("cat /root/project/data.txt", "bash")).stdout == "from-snapshot\n"
    assert (await source.run(_count_processes(marker), "python")).stdout == "1\n"
    assert name in await list_snapshots(B)

    copy = await sandboxes.create(B, filesystem_snapshot_name=name)
    assert copy.sandbox_id is not None
    assert copy.sandbox_id != source.sandbox_id
    assert copy.sandbox_token != source.sandbox_token
    assert (await copy.run("cat /root/project/data.txt", "bash")).stdout == "from-snapshot\n"
    # The files, none of the processes.
    assert (await copy.run(_count_processes(marker), "python")).stdout == "0\n"
    # The copy is an independent sandbox.
    await copy.run("echo changed > /root/project/data.txt", "bash")
    assert (await source.run("cat /root/project/data.txt", "bash")).stdout == "from-snapshot\n"

    # Deleted, it cannot be used any more.
    assert await delete_snapshot(B, name) == 200
    assert name not in await list_snapshots(A)
    with pytest.raises(SandboxCreationError) as info:
        await sandboxes.create(A, filesystem_snapshot_name=name)
    assert name in info.value.message


@pytest.mark.parametrize("name", ["bad name", "../escape", ".hidden", "x" * 65, ""])
async def test_invalid_snapshot_name(sandboxes: Sandboxes, name: str) -> None:
    sandbox = await sandboxes.create(A)
    with pytest.raises(SandboxSnapshotError) as info:
        await sandbox.snapshot_filesystem(name)
    assert info.value.status == "SANDBOX_FILESYSTEM_SNAPSHOT_ERROR"
    assert "A-Z a-z 0-9 . _ -" in info.value.message
    # The session goes on.
    assert not sandbox.closed
    assert (await sandbox.run("echo goes on", "bash")).stdout == "goes on\n"


async def test_invalid_snapshot_name_at_creation(sandboxes: Sandboxes) -> None:
    with pytest.raises(SandboxCreationError) as info:
        await sandboxes.create(B, filesystem_snapshot_name="bad/name")
    assert "A-Z a-z 0-9 . _ -" in info.value.message


async def test_create_from_an_unknown_snapshot(sandboxes: Sandboxes) -> None:
    name = "missing-" + uuid.uuid4().hex[:12]
    with pytest.raises(SandboxCreationError) as info:
        await sandboxes.create(B, filesystem_snapshot_name=name)
    assert info.value.status == "SANDBOX_CREATION_ERROR"
    assert name in info.value.message


async def test_snapshot_while_a_process_runs(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A)
    process = await sandbox.exec("sleep 0.5; echo done", "bash")
    with pytest.raises(SandboxSnapshotError) as info:
        await sandbox.snapshot_filesystem("pytest-unused-" + uuid.uuid4().hex[:8])
    assert info.value.message
    assert await process.stdout.read_all() == "done\n"
    assert (await sandbox.run("echo after", "bash")).stdout == "after\n"


async def test_checkpointed_sandbox_snapshot_and_restore_together(
    sandboxes: Sandboxes, snapshot_names: list[str]
) -> None:
    """A checkpointable sandbox can also be snapshotted, then checkpointed and restored."""
    name = _new_snapshot_name(snapshot_names)
    sandbox = await sandboxes.create(A, enable_checkpoint=True)
    await sandbox.run("echo both > /root/both.txt", "bash")
    await sandbox.snapshot_filesystem(name)
    await sandbox.checkpoint()
    assert sandbox.sandbox_id is not None
    restored = await sandboxes.attach(sandbox.sandbox_id, url=B)
    copy = await sandboxes.create(B, filesystem_snapshot_name=name)
    for box in (restored, copy):
        assert (await box.run("cat /root/both.txt", "bash")).stdout == "both\n"


# ------------------------------------------------------------------ handoff and listing


async def test_handoff_moves_a_sandbox_to_the_instance_attached_to(sandboxes: Sandboxes) -> None:
    statuses_a: list[str] = []
    statuses_b: list[str] = []
    sandbox = await sandboxes.create(
        A,
        enable_sandbox_handoff=True,
        labels={"test": "handoff"},
        on_status=lambda status, _message: statuses_a.append(status),
    )
    await sandbox.run("echo from A > /root/file.txt", "bash")
    assert sandbox.sandbox_id is not None
    # The first client stays connected to A; attaching on B moves the sandbox there.
    moved = await sandboxes.attach(
        sandbox.sandbox_id,
        url=B,
        on_status=lambda status, _message: statuses_b.append(status),
    )
    assert statuses_b == [
        "SANDBOX_LOCK_ACQUIRING",
        "SANDBOX_LOCK_ACQUIRED",
        "SANDBOX_RESTORING",
        "SANDBOX_RUNNING",
    ]
    assert (await moved.run("cat /root/file.txt", "bash")).stdout == "from A\n"
    # A's client was told: the sandbox was checkpointed and moved; it does not reconnect.
    for _ in range(100):
        if sandbox.closed:
            break
        await asyncio.sleep(0.1)
    assert sandbox.closed
    assert sandbox.state == "checkpointed"
    assert "SANDBOX_LOCK_RELEASED" in statuses_a
    listed = await Sandbox.list(B)
    info = next(info for info in listed.sandboxes if info.sandbox_id == sandbox.sandbox_id)
    assert info.labels == {"test": "handoff"}
    assert info.handoff
    assert info.checkpointed


async def test_checkpoints_are_listed_in_the_store(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(A, enable_checkpoint=True, labels={"test": "store"})
    await sandbox.checkpoint()
    found = None
    after = None
    for _ in range(100):
        page = await Sandbox.list(B, checkpointed=True, limit=50, after=after)
        found = found or next(
            (info for info in page.sandboxes if info.sandbox_id == sandbox.sandbox_id), None
        )
        if found is not None or page.next_after is None:
            break
        after = page.next_after
    assert found is not None
    assert found.state == "checkpointed"
    assert found.labels == {"test": "store"}
    assert (found.size_bytes or 0) > 0
