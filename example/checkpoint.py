"""Checkpoint and restore: save a sandbox (files and running processes), then attach again.

    pip install clients/python/
    python example/checkpoint.py [url]

The server needs CHECKPOINT_AND_RESTORE_PATH; without it this fails with the server's
message (a SandboxCreationError saying checkpointing is not enabled).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

from codesandbox import Sandbox, SandboxError

COUNTER = (
    'nohup python3 -c "import time,itertools\n'
    "for i in itertools.count():\n"
    "    open('/root/count','w').write(str(i)); time.sleep(0.5)\" >/dev/null 2>&1 &"
)


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
    s1 = await Sandbox.create(url, ssl=tls, enable_checkpoint=True)
    sandbox_id = s1.sandbox_id
    assert sandbox_id is not None
    restored: Sandbox | None = None
    try:
        await s1.run("echo 'state before the checkpoint' > /root/state.txt", "bash")
        # A background process keeps counting across the checkpoint.
        await s1.run(COUNTER, "bash")
        await s1.checkpoint()  # save filesystem + running processes, disconnect
        print(f"checkpointed sandbox {sandbox_id}")

        # Later, possibly on another server instance. In this process the token is
        # remembered; from another process pass it: Sandbox.attach(url, id, token).
        restored = await Sandbox.attach(url, sandbox_id, ssl=tls)
        state = await restored.run(
            'cat /root/state.txt; sleep 1; echo "counter at $(cat /root/count)"', "bash"
        )
        print(f"restored: {state.stdout.strip()}")
    finally:
        await (restored or s1).terminate()


if __name__ == "__main__":
    target = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    )
    try:
        asyncio.run(main(target))
    except SandboxError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
