"""Filesystem snapshots: save a sandbox's files under a name on one server instance, then
start new sandboxes from it on another one sharing its FILESYSTEM_SNAPSHOT_PATH.

    pip install clients/python/
    python example/filesystem_snapshot.py [url] [url2]

``url`` (where the snapshot is taken) defaults to $SANDBOX_URL, then ws://127.0.0.1:8080;
``url2`` (where a sandbox is created from it) defaults to ``url``. Without
FILESYSTEM_SNAPSHOT_PATH the server refuses with a clear message (a SandboxSnapshotError).
The snapshot is deleted at the end with ``DELETE /snapshots/{name}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

from codesandbox import Sandbox, SandboxError

# For a server started with SANDBOX_API_KEYS (None: no key is sent).
API_KEY = os.environ.get("SANDBOX_API_KEY")


def ssl_context_for(url: str) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def snapshots_http(url: str, method: str, name: str = "") -> object:
    """``GET /snapshots`` or ``DELETE /snapshots/{name}`` on the server at ``url``."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/snapshots" + (f"/{quote(name, safe='')}" if name else "")
    request = urllib.request.Request(urlunsplit((scheme, parts.netloc, path, "", "")))
    request.method = method
    context = ssl_context_for(url) if scheme == "https" else None
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return json.loads(response.read())


async def main(url: str, url2: str) -> None:
    name = f"example-snapshot-{int(time.time() * 1000)}"
    created = False
    try:
        async with await Sandbox.create(url, api_key=API_KEY, ssl=ssl_context_for(url)) as s1:
            await s1.run(
                "mkdir -p /root/project && "
                "echo 'print(\"from the snapshot\")' > /root/project/main.py && "
                "(nohup sleep 3600 >/dev/null 2>&1 &)",
                "bash",
            )
            await s1.snapshot_filesystem(name)  # the session goes on
            created = True
            running = await s1.run("pgrep -c sleep", "bash")
            print(
                f"saved snapshot {name} of sandbox {s1.sandbox_id} on {url} "
                f"(its sleep processes: {running.stdout.strip()})"
            )

        listed = await asyncio.to_thread(snapshots_http, url2, "GET")
        print(f"snapshots on {url2}: {listed}")

        # A new sandbox (new id and token) with the snapshot's files, none of its processes.
        async with await Sandbox.create(
            url2, api_key=API_KEY, ssl=ssl_context_for(url2), filesystem_snapshot_name=name
        ) as s2:
            result = await s2.run("python3 /root/project/main.py; pgrep -c sleep", "bash")
            lines = result.stdout.strip().splitlines()
            print(f"new sandbox {s2.sandbox_id} on {url2} runs: {lines[0]} (sleep: {lines[1]})")
    finally:
        if created:
            await delete_quietly(url, name)


async def delete_quietly(url: str, name: str) -> None:
    try:
        deleted = await asyncio.to_thread(snapshots_http, url, "DELETE", name)
        print(f"deleted: {deleted}")
    except (urllib.error.URLError, OSError) as error:
        print(f"could not delete snapshot {name}: {error}", file=sys.stderr)


if __name__ == "__main__":
    first = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    )
    second = sys.argv[2] if len(sys.argv) > 2 else first
    try:
        asyncio.run(main(first, second))
    except SandboxError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
