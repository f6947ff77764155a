/**
 * The code interpreter: a notebook-style analysis in three cells (the same as
 * example/code_interpreter.py).
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/code_interpreter.ts [url] [outputDir]
 *
 * `url` defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The cells share one Python context
 * (variables persist between them): the first makes a pandas DataFrame, the second summarises it
 * as a table (HTML), the third plots it with matplotlib (PNG). Both are saved in `outputDir`
 * (default: the current directory).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Sandbox } from '@cloud-run-sandbox/client';

const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';
const out = process.argv[3] ?? process.cwd();
// For a server started with SANDBOX_API_KEYS (undefined: no key is sent).
const apiKey = process.env['SANDBOX_API_KEY'];

const LOAD = `
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
`;

const SUMMARY = `
summary = sales.groupby("region")["units"].agg(["count", "sum", "mean"]).round(1)
summary
`;

const PLOT = `
import matplotlib.pyplot as plt

weekly = sales.set_index("day").groupby("region")["units"].resample("W").sum().unstack(0)
ax = weekly.plot(figsize=(7, 4), title="Units sold per week")
ax.set_ylabel("units")
plt.show()
`;

async function main(): Promise<void> {
  const sandbox = await Sandbox.create(url, { apiKey });
  try {
    const loaded = await sandbox.runCode(LOAD, { onStdout: (text) => process.stdout.write(`[sandbox] ${text}`) });
    if (loaded.error !== undefined) throw new Error(`${loaded.error.name}: ${loaded.error.value}`);

    const summary = await sandbox.runCode(SUMMARY);
    console.log(summary.text);
    const table = summary.results[0]?.html;
    if (table === undefined) throw new Error('a DataFrame has an HTML form');
    writeFileSync(join(out, 'summary.html'), table);

    const plot = await sandbox.runCode(PLOT);
    const png = plot.results.find((result) => result.png !== undefined)?.png;
    if (png === undefined) throw new Error('the plot has a PNG');
    writeFileSync(join(out, 'weekly.png'), png);
    console.log(`saved ${join(out, 'summary.html')} and ${join(out, 'weekly.png')} (${png.length} bytes)`);
  } finally {
    await sandbox.terminate();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
