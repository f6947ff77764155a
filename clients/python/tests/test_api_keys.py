"""API keys against a live server started with ``SANDBOX_API_KEYS``.

The server's URL is ``SANDBOX_TEST_AUTH_URL`` and one of its keys ``SANDBOX_TEST_API_KEY``
(``scripts/test.sh`` starts it); skipped when either is unset. Every sandbox a test
creates is terminated when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from codesandbox import (
    ReconnectOptions,
    Sandbox,
    SandboxAuthenticationError,
    SandboxConnectionError,
)

from .live import Sandboxes, next_chunk

URL = os.environ.get("SANDBOX_TEST_AUTH_URL", "")
KEY = os.environ.get("SANDBOX_TEST_API_KEY", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (URL and KEY),
        reason="SANDBOX_TEST_AUTH_URL and SANDBOX_TEST_API_KEY are not set: these tests need "
        "a live server started with SANDBOX_API_KEYS",
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


async def test_without_a_key_the_server_refuses_with_401() -> None:
    with pytest.raises(SandboxAuthenticationError) as caught:
        await Sandbox.create(URL)
    assert caught.value.http_status == 401
    assert "missing api key" in caught.value.message
    assert not isinstance(caught.value, SandboxConnectionError)


async def test_a_wrong_key_is_refused_and_never_echoed() -> None:
    for wrong in ("not-the-key", KEY + "x", KEY[:-1]):
        with pytest.raises(SandboxAuthenticationError, match="not valid") as caught:
            await Sandbox.create(URL, api_key=wrong)
        assert caught.value.http_status == 401
        assert wrong not in caught.value.message


async def test_api_key_and_authorization_header_both_work(sandboxes: Sandboxes) -> None:
    by_key = await sandboxes.create(api_key=KEY)
    assert (await by_key.run("echo by-key", "bash")).stdout == "by-key\n"
    by_header = await sandboxes.create(headers={"Authorization": f"Bearer {KEY}"})
    assert (await by_header.run("print('by-header')", "python")).stdout == "by-header\n"


async def test_attach_needs_the_key_too(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(api_key=KEY)
    await sandbox.run("echo 5 > /tmp/mark", "bash")
    assert sandbox.sandbox_id is not None
    assert sandbox.sandbox_token is not None
    await sandbox.disconnect()
    # The sandbox token alone does not get past the server's key check.
    with pytest.raises(SandboxAuthenticationError):
        await Sandbox.attach(URL, sandbox.sandbox_id, sandbox.sandbox_token)
    again = await sandboxes.attach(sandbox.sandbox_id, sandbox.sandbox_token, api_key=KEY)
    assert (await again.run("cat /tmp/mark", "bash")).stdout == "5\n"


async def test_reconnect_and_terminate_reuse_the_key(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(api_key=KEY, auto_reconnect=FAST_RECONNECT)
    code = "import time\nfor i in range(4): print(i, flush=True); time.sleep(0.3)"
    process = await sandbox.exec(code, "python")
    received = [await next_chunk(process.stdout)]
    connection = sandbox._connection
    assert connection is not None
    connection.abort()  # a network failure: the re-attach must carry the key again
    received += [chunk async for chunk in process.stdout]
    assert "".join(received) == "0\n1\n2\n3\n"
    assert await process.wait() == 0
    # terminate() on a closed handle attaches first: with the key as well.
    await sandbox.disconnect()
    await asyncio.wait_for(sandbox.terminate(), 60)
    assert sandbox.terminated
