"""``SyncSandbox``: the same API without ``await``, from a plain function and from code
that runs inside an event loop (as in a notebook), against the protocol-2 stand-in server
(``protocol2_fake.py``, on its own thread) and, when ``SANDBOX_TEST_URL`` is set, the live
server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from codesandbox import SandboxStateError, SyncSandbox

from .protocol2_fake import InThread

LIVE = os.environ.get("SANDBOX_TEST_URL", "")


@pytest.fixture(params=["fake", pytest.param("live", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "live":
        if not LIVE:
            pytest.skip("SANDBOX_TEST_URL is not set (e.g. ws://127.0.0.1:8080)")
        yield LIVE
        return
    fake = InThread()
    try:
        yield fake.url
    finally:
        fake.stop()


def test_a_plain_script(url: str) -> None:
    with SyncSandbox.create(url) as sandbox:
        assert sandbox.state == "running"
        result = sandbox.run("import sys; print(sys.stdin.read().upper())", "python", stdin="hi")
        assert (result.stdout, result.exit_code) == ("HI\n", 0)

        seen: list[str] = []
        process = sandbox.exec(
            "for i in 1 2 3; do echo line $i; done; exit 4", "bash", on_stdout=seen.append
        )
        assert list(process.stdout.lines()) == ["line 1", "line 2", "line 3"]
        assert process.wait(timeout=30) == 4
        assert "".join(seen) == "line 1\nline 2\nline 3\n"

        cat = sandbox.exec("cat", "bash")
        cat.write("echo\n")
        cat.close_stdin()
        assert cat.stdout.read_all() == "echo\n"
        assert cat.result().reason == "exited"
    assert sandbox.terminated
    with pytest.raises(SandboxStateError):
        sandbox.run("true", "bash")


async def test_inside_a_running_event_loop(url: str) -> None:
    # A notebook cell runs in a thread whose event loop is running: the sync API must
    # neither need that loop nor start another one on this thread.
    asyncio.get_running_loop()
    sandbox = SyncSandbox.create(url)
    try:
        assert sandbox.run("echo from a notebook", "bash").stdout == "from a notebook\n"
    finally:
        sandbox.terminate()


def test_wait_with_a_timeout_leaves_the_process_running(url: str) -> None:
    with SyncSandbox.create(url) as sandbox:
        process = sandbox.exec("sleep 30", "bash")
        with pytest.raises(TimeoutError):
            process.wait(timeout=0.2)
        assert not process.done
        process.kill()
        assert process.wait(timeout=30) == 137


def test_callbacks_cannot_call_back_into_the_sync_api(url: str) -> None:
    errors: list[BaseException] = []
    with SyncSandbox.create(url) as sandbox:

        def reenter(text: str) -> None:
            try:
                sandbox.run("true", "bash")
            except RuntimeError as error:
                errors.append(error)

        sandbox.run("echo x", "bash", on_stdout=reenter)
    assert errors
    assert "callbacks" in str(errors[0])
