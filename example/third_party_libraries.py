"""Third-party libraries in the sandbox: pandas, numpy and matplotlib ship with the sandbox
image (docs/libraries.md). Draws a plot in the sandbox, reads the PNG back as base64 and
writes it here; then, if the server has a wheelhouse (SANDBOX_WHEELHOUSE), pip-installs one
of its packages with a plain `pip install NAME`.

    pip install clients/python/
    python example/third_party_libraries.py [url] [output.png]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080; the plot is written to
output.png (default: plot.png in the current directory).
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import sys

from codesandbox import Sandbox, SandboxError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Runs in the sandbox. No display there: matplotlib's backend is Agg (non-interactive).
PLOT = """
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
days = pd.date_range("2024-01-01", periods=120, freq="D")
frame = pd.DataFrame({"value": rng.normal(0, 1, len(days)).cumsum()}, index=days)
frame["7-day mean"] = frame["value"].rolling(7).mean()
print(frame.describe().round(2).to_string())

ax = frame.plot(figsize=(8, 4), title="A random walk, drawn in the sandbox")
ax.figure.tight_layout()
ax.figure.savefig("/tmp/plot.png", dpi=100)
print(f"numpy {np.__version__}, pandas {pd.__version__}, "
      f"matplotlib {matplotlib.__version__} (backend {matplotlib.get_backend()})")
"""

READ_BACK = (
    'python3 -c "import base64;'
    "print(base64.b64encode(open('/tmp/plot.png','rb').read()).decode())\""
)

# The first wheel of the server's wheelhouse (mounted at /opt/wheelhouse), as a package name.
FIRST_WHEEL = "ls /opt/wheelhouse/*.whl 2>/dev/null | head -n 1 | xargs -r basename | cut -d- -f1"


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


def save(path: str, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)


async def main(url: str, output: str) -> int:
    async with await Sandbox.create(url, api_key=API_KEY, ssl=ssl_context_for(url)) as sandbox:
        print(f"sandbox {sandbox.sandbox_id}")

        plot = await sandbox.run(PLOT, "python", timeout=120)
        if plot.exit_code != 0:
            print(f"plotting failed ({plot.reason}):\n{plot.stderr}", file=sys.stderr)
            return 1
        print(plot.stdout, end="")

        encoded = await sandbox.run(READ_BACK, "bash")
        png = base64.b64decode(encoded.stdout)
        if encoded.exit_code != 0 or not png.startswith(PNG_MAGIC):
            print(f"reading the plot back failed:\n{encoded.stderr}", file=sys.stderr)
            return 1
        save(output, png)
        print(f"wrote {output} ({len(png)} bytes, drawn in the sandbox)")

        # Optional: offline installs from the operator's wheelhouse, no extra pip flags.
        name = (await sandbox.run(FIRST_WHEEL, "bash")).stdout.strip()
        if not name:
            print("no wheelhouse on this server (SANDBOX_WHEELHOUSE unset or empty): skipping pip")
            return 0
        install = await sandbox.run(f"pip install {name}", "bash", timeout=120)
        status = "installed" if install.exit_code == 0 else f"failed (exit {install.exit_code})"
        print(f"pip install {name} from the wheelhouse: {status}")
        print((install.stdout + install.stderr).strip())
        return 0


if __name__ == "__main__":
    target = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    )
    destination = sys.argv[2] if len(sys.argv) > 2 else "plot.png"
    try:
        sys.exit(asyncio.run(main(target, destination)))
    except SandboxError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
