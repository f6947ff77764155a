"""Cloud Run Sandbox: files API example (Python). Upload a CSV, analyse it in the sandbox,
download the chart.

    pip install clients/python/
    python example/files.py [url]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The chart lands in ./chart.png.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from codesandbox import Sandbox, SandboxFileError

API_KEY = os.environ.get("SANDBOX_API_KEY")

ANALYSIS = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

sales = pd.read_csv("/root/data/sales.csv")
totals = sales.groupby("month")["amount"].sum()
print(totals.to_string())
totals.plot(kind="bar", title="Sales by month")
plt.tight_layout()
plt.savefig("/root/out/chart.png")
"""


async def main(url: str) -> None:
    async with await Sandbox.create(url, api_key=API_KEY) as sandbox:
        # A CSV made here, uploaded (streamed) into the sandbox.
        with tempfile.TemporaryDirectory() as local:
            csv = Path(local) / "sales.csv"
            sales = [("jan", 10), ("jan", 32), ("feb", 20), ("feb", 5), ("mar", 7), ("mar", 40)]
            rows = [f"{month},{amount}" for month, amount in sales]
            csv.write_text("month,amount\n" + "\n".join(rows) + "\n")
            await sandbox.files.make_dir("data")
            size = await sandbox.files.upload(csv, "data/sales.csv")
            print(f"uploaded {size} bytes")

        # Analyse it with an execution; the chart is a file in the sandbox.
        await sandbox.files.make_dir("out")
        result = await sandbox.run(ANALYSIS, "python")
        print(result.stdout, end="")
        if result.exit_code != 0:
            raise SystemExit(f"the analysis failed: {result.stderr}")
        for entry in await sandbox.files.list("out"):
            print(f"{entry.path}: {entry.size} bytes, mode {entry.mode:o}")

        # Download it.
        size = await sandbox.files.download("out/chart.png", "chart.png")
        print(f"downloaded chart.png ({size} bytes)")

        # Errors say what went wrong, with a code.
        try:
            await sandbox.files.read("out/missing.png")
        except SandboxFileError as error:
            print(f"expected: {error.code}: {error.message}")


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1]
            if len(sys.argv) > 1
            else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
        )
    )
