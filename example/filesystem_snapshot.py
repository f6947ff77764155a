"""Filesystem snapshots: save a sandbox's files under a name, start new sandboxes from it.

    pip install clients/python/
    python example/filesystem_snapshot.py [url]

The server needs FILESYSTEM_SNAPSHOT_PATH; without it this fails with the server's message
(a SandboxSnapshotError saying snapshots are not enabled).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time

from codesandbox import Sandbox, SandboxError


def ssl_context_for(url: str) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


async def main(url: str) -> None:
    tls = ssl_context_for(url)
    name = f"example-snapshot-{int(time.time() * 1000)}"

    async with await Sandbox.create(url, ssl=tls) as s1:
        await s1.run(
            "mkdir -p /root/project && echo 'print(\"from the snapshot\")' > /root/project/main.py",
            "bash",
        )
        await s1.snapshot_filesystem(name)
        print(f"saved snapshot {name} of sandbox {s1.sandbox_id}")

    async with await Sandbox.create(url, ssl=tls, filesystem_snapshot_name=name) as s3:
        result = await s3.run("python3 /root/project/main.py", "bash")
        print(f"new sandbox {s3.sandbox_id} runs: {result.stdout.strip()}")


if __name__ == "__main__":
    target = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    )
    try:
        asyncio.run(main(target))
    except SandboxError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
