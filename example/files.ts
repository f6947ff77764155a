/**
 * Cloud Run Sandbox: files API example (TypeScript). Upload a CSV, analyse it in the sandbox,
 * download the chart.
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/files.ts [url]
 *
 * The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The chart lands in ./chart.png.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Sandbox, SandboxFileError } from '@cloud-run-sandbox/client';

const apiKey = process.env['SANDBOX_API_KEY'];
const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';

const analysis = `
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
`;

async function main(): Promise<void> {
  const sandbox = await Sandbox.create(url, { apiKey });
  try {
    // A CSV made here, uploaded (streamed) into the sandbox.
    const local = await mkdtemp(join(tmpdir(), 'files-example-'));
    try {
      const sales: [string, number][] = [
        ['jan', 10],
        ['jan', 32],
        ['feb', 20],
        ['feb', 5],
        ['mar', 7],
        ['mar', 40],
      ];
      const rows = sales.map(([month, amount]) => `${month},${amount}`);
      await writeFile(join(local, 'sales.csv'), `month,amount\n${rows.join('\n')}\n`);
      await sandbox.files.makeDir('data');
      console.log(`uploaded ${await sandbox.files.upload(join(local, 'sales.csv'), 'data/sales.csv')} bytes`);
    } finally {
      await rm(local, { recursive: true, force: true });
    }

    // Analyse it with an execution; the chart is a file in the sandbox.
    await sandbox.files.makeDir('out');
    const result = await sandbox.run(analysis, 'python');
    process.stdout.write(result.stdout);
    if (result.exitCode !== 0) throw new Error(`the analysis failed: ${result.stderr}`);
    for (const entry of await sandbox.files.list('out')) {
      console.log(`${entry.path}: ${entry.size} bytes, mode ${entry.mode.toString(8)}`);
    }

    // Download it.
    console.log(`downloaded chart.png (${await sandbox.files.download('out/chart.png', 'chart.png')} bytes)`);

    // Errors say what went wrong, with a code.
    try {
      await sandbox.files.read('out/missing.png');
    } catch (error) {
      if (!(error instanceof SandboxFileError)) throw error;
      console.log(`expected: ${error.code}: ${error.message}`);
    }
  } finally {
    await sandbox.terminate();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
