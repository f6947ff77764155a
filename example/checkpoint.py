"""Checkpoint and restore: save a sandbox (files and running processes) on one server
instance, then attach to it again on another one sharing its CHECKPOINT_AND_RESTORE_PATH.

    pip install clients/python/
    python example/checkpoint.py [url] [url2]

``url`` (where the sandbox is created) defaults to $SANDBOX_URL, then ws://127.0.0.1:8080;
``url2`` (where it is restored) defaults to ``url``. Without CHECKPOINT_AND_RESTORE_PATH the
server refuses with a clear message (a SandboxCreationError).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

from codesandbox import Sandbox, SandboxError

# A background process that writes an increasing number to /root/count every 0.2 s; the
# bash code waits until it has counted a little, then prints the count.
COUNTER = """\
nohup python3 -c "
import itertools, os, time
for i in itertools.count():
    with open('/root/count.tmp', 'w') as f:
        f.write(str(i))
    os.replace('/root/count.tmp', '/root/count')
    time.sleep(0.2)
" >/dev/null 2>&1 &
until [ "$(cat /root/count 2>/dev/null || echo 0)" -ge 3 ]; do sleep 0.1; done
cat /root/count
"""


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


async def main(url: str, url2: str) -> None:
    s1 = await Sandbox.create(
        url, api_key=API_KEY, ssl=ssl_context_for(url), enable_checkpoint=True
    )
    sandbox_id = s1.sandbox_id
    assert sandbox_id is not None
    restored: Sandbox | None = None
    try:
        await s1.run("echo 'state before the checkpoint' > /root/state.txt", "bash")
        before = await s1.run(COUNTER, "bash")
        print(f"sandbox {sandbox_id} on {url}: counter at {before.stdout.strip()}")
        await s1.checkpoint()  # save filesystem + running processes, end this session
        print(f"checkpointed (state: {s1.state})")

        # Later, possibly on another server instance. In this process the token is
        # remembered; from another process pass it: Sandbox.attach(url2, id, token).
        restored = await Sandbox.attach(
            url2, sandbox_id, api_key=API_KEY, ssl=ssl_context_for(url2)
        )
        state = await restored.run(
            'cat /root/state.txt; echo "counter at $(cat /root/count)"; '
            'sleep 1; echo "counter at $(cat /root/count)"',
            "bash",
        )
        print(f"restored on {url2}: {', '.join(state.stdout.strip().splitlines())}")

        # The restored sandbox is a normal session: stdin works as before.
        greet = await restored.exec("print(f'Hello, {input()}!')", "python")
        await greet.write("restored sandbox\n")
        print(f"python says: {(await greet.stdout.read_all()).strip()}")
    finally:
        # Deletes the sandbox and its saved state (s1.terminate() would re-attach first).
        await (restored or s1).terminate()


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
