"""Exposed ports (issue 20) against the live server at ``SANDBOX_TEST_URL``: a web server
inside a sandbox without network, opened through the URL ``expose()`` returns, with
``urllib`` as any HTTP client would; ``unexpose()`` revokes it. Skipped when the variable is
unset. Every sandbox is terminated when its test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from .live import Sandboxes

URL = os.environ.get("SANDBOX_TEST_URL", "")

pytestmark = pytest.mark.integration

# Waits for the server by reading the TCP table (a probe connection would linger in TIME_WAIT).
START_SERVER = """
mkdir -p /root/site && cd /root/site && echo 'hello from the sandbox' > index.html
nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
for i in $(seq 200); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
"""


@pytest.fixture
async def sandboxes() -> AsyncIterator[Sandboxes]:
    if not URL:
        pytest.skip("SANDBOX_TEST_URL is not set: these tests need a live server")
    box = Sandboxes(URL)
    try:
        yield box
    finally:
        await box.cleanup()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_expose_open_list_and_unexpose(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create()
    if sandbox.protocol < 2:
        pytest.skip("the server does not announce protocol 2")
    result = await sandbox.run(START_SERVER, "bash")
    assert result.exit_code == 0, result.stderr
    url = await sandbox.expose(8000)
    assert "/ports/" in url or url.split("/")[2].startswith("8000-")
    assert sandbox.ports == {8000: url}
    assert await sandbox.expose(8000) == url, "exposing again keeps the link"
    status, body = await asyncio.to_thread(fetch, url + "index.html")
    assert (status, body) == (200, b"hello from the sandbox\n")
    assert await sandbox.list_ports() == {8000: url}
    assert await sandbox.unexpose(8000) is True
    assert sandbox.ports == {}
    status, _ = await asyncio.to_thread(fetch, url + "index.html")
    assert status == 404
    assert await sandbox.unexpose(8000) is False


async def test_expose_ports_at_create(sandboxes: Sandboxes) -> None:
    sandbox = await sandboxes.create(expose_ports=[8000])
    if sandbox.protocol < 2:
        pytest.skip("the server does not announce protocol 2")
    assert list(sandbox.ports) == [8000]
    result = await sandbox.run(START_SERVER, "bash")
    assert result.exit_code == 0, result.stderr
    status, body = await asyncio.to_thread(fetch, sandbox.ports[8000] + "index.html")
    assert (status, body) == (200, b"hello from the sandbox\n")
