"""Cloud Run Sandbox: the code interpreter, a notebook-style analysis in three cells.

    pip install clients/python/
    python example/code_interpreter.py [url] [output_dir]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The cells share one Python
context (variables persist between them): the first makes a pandas DataFrame, the second
summarises it as a table (HTML), the third plots it with matplotlib (PNG). The table and the
plot are saved in output_dir (default: the current directory).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from codesandbox import Sandbox

# For a server started with SANDBOX_API_KEYS (None: no key is sent).
API_KEY = os.environ.get("SANDBOX_API_KEY")

LOAD = """
import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
days = pd.date_range("2026-01-01", periods=90, freq="D")
sales = pd.DataFrame({
    "day": days,
    "region": rng.choice(["north", "south", "east"], size=len(days)),
    "units": rng.integers(20, 120, size=len(days)),
})
print(f"{len(sales)} rows loaded")
"""

SUMMARY = """
summary = sales.groupby("region")["units"].agg(["count", "sum", "mean"]).round(1)
summary
"""

PLOT = """
import matplotlib.pyplot as plt

weekly = sales.set_index("day").groupby("region")["units"].resample("W").sum().unstack(0)
ax = weekly.plot(figsize=(7, 4), title="Units sold per week")
ax.set_ylabel("units")
plt.show()
"""


async def main(url: str, out: Path) -> None:
    async with await Sandbox.create(url, api_key=API_KEY) as sandbox:
        loaded = await sandbox.run_code(
            LOAD, on_stdout=lambda text: print(f"[sandbox] {text}", end="")
        )
        if loaded.error is not None:
            raise SystemExit(f"{loaded.error.name}: {loaded.error.value}")

        summary = await sandbox.run_code(SUMMARY)
        print(summary.text)
        table = summary.results[0].html
        assert table is not None, "a DataFrame has an HTML form"
        (out / "summary.html").write_text(table, encoding="utf-8")

        plot = await sandbox.run_code(PLOT)
        png = next(result.png for result in plot.results if result.png is not None)
        (out / "weekly.png").write_bytes(png)
        print(f"saved {out / 'summary.html'} and {out / 'weekly.png'} ({len(png)} bytes)")


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path.cwd()
    asyncio.run(main(url, out))
