"""Protocol 2 end to end: concurrent processes, stdin with flow control, process handles,
the idle timeout while connected, replay after a reconnect.

Each test runs twice:

* ``fake``: against ``protocol2_fake.py``, a stand-in server speaking protocol 2 with
  local subprocesses (always runs; it proves the client's side over real sockets);
* ``live``: against the real server at ``SANDBOX_TEST_URL``. Skipped, with the reason,
  when the variable is unset or the server does not announce ``"protocol": 2`` in
  ``SANDBOX_RUNNING`` (the compatible behaviour is covered by ``test_integration.py``).

Every sandbox is terminated when its test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from codesandbox import ReconnectOptions, Sandbox, SandboxRequestError

from . import protocol2_fake
from .live import Sandboxes

URL = os.environ.get("SANDBOX_TEST_URL", "")

_announced: dict[str, int] = {}


async def _protocol_of(url: str) -> int:
    if url not in _announced:
        sandbox = await Sandbox.create(url)
        _announced[url] = sandbox.protocol
        await sandbox.terminate()
    return _announced[url]


@pytest.fixture(params=["fake", pytest.param("live", marks=pytest.mark.integration)])
async def sandboxes(request: pytest.FixtureRequest) -> AsyncIterator[Sandboxes]:
    server = None
    if request.param == "fake":
        server, url = await protocol2_fake.start()
    else:
        if not URL:
            pytest.skip(
                "SANDBOX_TEST_URL is not set: the live run needs a server "
                "(e.g. SANDBOX_TEST_URL=ws://127.0.0.1:8080)"
            )
        url = URL
        if await _protocol_of(url) < 2:
            pytest.skip(
                f"the server at {url} does not announce protocol 2 (its SANDBOX_RUNNING has "
                'no "protocol": 2): concurrent processes, stdin flow control and process '
                "handles need it"
            )
    box = Sandboxes(url)
    try:
        yield box
    finally:
        await box.cleanup()
        if server is not None:
            server.close()
            await server.wait_closed()


async def test_ten_concurrent_runs_each_get_their_own_output(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create()
    runs = [
        sandbox.run(
            f"for j in range(3):\n    print('run {i} line', j, flush=True)\n"
            f"    __import__('time').sleep(0.05)\nraise SystemExit({i})",
            "python",
        )
        for i in range(10)
    ]
    results = await asyncio.gather(*runs)
    for i, result in enumerate(results):
        assert result.stdout == "".join(f"run {i} line {j}\n" for j in range(3)), result
        assert result.exit_code == i


async def test_sixteen_mib_through_stdin_arrive_byte_for_byte(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create()
    data = os.urandom(16 * 1024 * 1024)
    process = await sandbox.exec(
        "import hashlib, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "print(len(data), hashlib.sha256(data).hexdigest())",
        "python",
    )
    await process.write(data)
    await process.close_stdin()
    assert await process.stdout.read_all() == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
    assert await process.wait() == 0


async def test_list_processes_and_kill_by_handle(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create()
    sleeper = await sandbox.exec("sleep 60", "bash")
    quick = await sandbox.exec("echo quick", "bash")
    assert await quick.stdout.read_all() == "quick\n"
    listed = {info.process_id: info for info in await sandbox.list_processes()}
    assert sleeper.process_id in listed
    assert listed[sleeper.process_id].running
    assert listed[sleeper.process_id].kind == "exec"
    assert listed[sleeper.process_id].language == "bash"
    await sleeper.kill()
    assert await sleeper.wait() == 137
    assert sleeper.reason == "killed"


async def test_a_process_is_followed_again_after_another_client_left(
    sandboxes: Sandboxes,
) -> None:
    first = await sandboxes.create()
    process = await first.exec("for i in 1 2 3 4; do echo $i; sleep 0.4; done; exit 5", "bash")
    async for line in process.stdout.lines():
        assert line == "1"
        break
    assert first.sandbox_id is not None
    await first.disconnect()

    second = await sandboxes.attach(first.sandbox_id)
    infos = await second.list_processes()
    assert [info.process_id for info in infos] == [process.process_id]
    assert process.process_id is not None
    followed = await second.attach_process(process.process_id)
    lines = [line async for line in followed.stdout.lines()]
    assert lines[-1] == "4"
    assert "1" not in lines  # already delivered to the first client
    assert await followed.wait() == 5


async def test_set_idle_timeout(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(idle_timeout=60)
    assert await sandbox.set_idle_timeout(600) == 600
    with pytest.raises(SandboxRequestError) as info:
        await sandbox.set_idle_timeout(-1)
    assert "idle_timeout" in info.value.message
    assert (await sandbox.run("echo alive", "bash")).stdout == "alive\n"


async def test_reconnect_replays_every_process(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(
        auto_reconnect=ReconnectOptions(max_attempts=20, initial_delay=0.05, max_delay=1.0)
    )
    # Output starts after the drop: frames in flight when a connection drops are lost with
    # it (the server replays what it held once it noticed the client was gone).
    a = await sandbox.exec("sleep 0.5; for i in 1 2 3; do echo a$i; sleep 0.3; done", "bash")
    b = await sandbox.exec("sleep 0.5; for i in 1 2 3; do echo b$i; sleep 0.3; done", "bash")
    connection = sandbox._connection
    assert connection is not None
    connection.abort()
    out_a, out_b = await asyncio.gather(a.stdout.read_all(), b.stdout.read_all())
    assert out_a == "a1\na2\na3\n"
    assert out_b == "b1\nb2\nb3\n"
