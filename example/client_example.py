"""Cloud Run Sandbox: Python client example.

    pip install clients/python/
    python example/client_example.py [url]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080 (use wss://<service> for Cloud
Run). For wss:// the TLS context trusts certifi's CA bundle when certifi is installed, else
the system store.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

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


async def main(url: str) -> None:
    tls = ssl_context_for(url)

    # The README's quick start, exactly as written there (plus the TLS context and the API key).
    sandbox = await Sandbox.create(url, api_key=API_KEY, ssl=tls)
    process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash")
    stdout = await process.stdout.read_all()
    print(f"bash says: {stdout.strip()}")
    await sandbox.terminate()

    # A longer session; `async with` terminates the sandbox at the end.
    async with await Sandbox.create(url, api_key=API_KEY, ssl=tls, idle_timeout=120) as box:
        print(f"sandbox {box.sandbox_id}")
        await box.run("echo 'saved in the sandbox' > /tmp/note.txt", "bash")
        py = await box.run("print(open('/tmp/note.txt').read().strip().upper())", "python")
        print(f"python read back: {py.stdout.strip()}")

        # Streaming output as it comes.
        counter = await box.exec('for i in 1 2 3; do echo "tick $i"; sleep 0.2; done', "bash")
        async for chunk in counter.stdout:
            print(f"  stream: {chunk}", end="")
        print(f"counter exited with {await counter.wait()}")

        # A failing command is a result, not an exception.
        failed = await box.run("echo oops >&2; exit 3", "bash")
        print(f"exit code {failed.exit_code} ({failed.reason}), stderr: {failed.stderr.strip()}")

        # stdin, env and cwd.
        greeter = await box.exec(
            "import os\n"
            "name = input()\n"
            "print(f'Hello, {name} from {os.getcwd()} ({os.environ[\"WHO\"]})')",
            "python",
            cwd="/tmp",
            env={"WHO": "env var"},
        )
        await greeter.write("World\n")
        await greeter.close_stdin()
        print((await greeter.stdout.read_all()).strip())
        print(f"greeter exited with {await greeter.wait()}")


if __name__ == "__main__":
    target = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    )
    try:
        asyncio.run(main(target))
    except SandboxError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
