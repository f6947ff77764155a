/**
 * Cloud Run Sandbox: serve a small web app from a sandbox and open it through its link (the twin
 * of example/web_app.py).
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/web_app.ts [url]
 *
 * The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The sandbox has no network: the
 * server relays the link to 127.0.0.1:8000 inside it (docs/protocol.md, "Ports").
 */
import { Sandbox } from '@cloud-run-sandbox/client';

const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';

// A page and a JSON endpoint, with Python's standard library. Started in the background; the
// loop waits until it listens (read from the TCP table, without a probe connection).
const START = `
mkdir -p /root/site && cd /root/site
echo '<!doctype html><title>From a sandbox</title><h1>Hello from a sandbox</h1>' > index.html
echo '{"message": "served from 127.0.0.1:8000 inside the sandbox"}' > hello.json
nohup python3 -m http.server 8000 --bind 127.0.0.1 >/tmp/app.log 2>&1 &
for i in $(seq 200); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
`;

async function main(): Promise<void> {
  const sandbox = await Sandbox.create(url);
  try {
    const started = await sandbox.run(START, 'bash');
    if (started.exitCode !== 0) throw new Error(`the app did not start: ${started.stderr}`);
    const link = await sandbox.expose(8000);
    console.log(`the app is at ${link}`);
    const hello = (await (await fetch(`${link}hello.json`)).json()) as { message: string };
    console.log(`hello.json says: ${hello.message}`);
    const page = await (await fetch(link)).text();
    console.log(`the page is ${String(page.length)} characters; ports: ${JSON.stringify(sandbox.ports)}`);
    await sandbox.unexpose(8000);
  } finally {
    await sandbox.terminate();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
