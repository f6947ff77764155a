/**
 * Exposed ports (issue 20) against the live server at $SANDBOX_TEST_URL: a web server inside a
 * sandbox without network, opened through the URL `expose()` gives, with `fetch` as any HTTP
 * client would; `unexpose()` revokes it. The twin of the Python suite's test_ports.py. Skipped,
 * with the reason, when the variable is unset. Every sandbox is terminated, pass or fail.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Sandbox } from '../../src/index.js';

const LIVE = process.env['SANDBOX_TEST_URL'] ?? '';
const skip = LIVE === '' ? 'SANDBOX_TEST_URL is not set: these tests need a live server' : false;

// Waits for the server by reading the TCP table (a probe connection would linger in TIME_WAIT).
const START_SERVER = `
mkdir -p /root/site && cd /root/site && echo 'hello from the sandbox' > index.html
nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
for i in $(seq 200); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
exit 1
`;

async function fetchText(url: string): Promise<[number, string]> {
  const response = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  return [response.status, await response.text()];
}

describe('ports (live)', { skip }, () => {
  it('exposes, opens, lists and unexposes a port', async () => {
    const sandbox = await Sandbox.create(LIVE);
    try {
      if (sandbox.protocol < 2) return;
      const started = await sandbox.run(START_SERVER, 'bash');
      assert.equal(started.exitCode, 0, started.stderr);
      const url = await sandbox.expose(8000);
      assert.deepEqual(sandbox.ports, { 8000: url });
      assert.equal(await sandbox.expose(8000), url, 'exposing again keeps the link');
      assert.deepEqual(await fetchText(`${url}index.html`), [200, 'hello from the sandbox\n']);
      assert.deepEqual(await sandbox.listPorts(), { 8000: url });
      assert.equal(await sandbox.unexpose(8000), true);
      assert.deepEqual(sandbox.ports, {});
      const [status] = await fetchText(`${url}index.html`);
      assert.equal(status, 404);
      assert.equal(await sandbox.unexpose(8000), false);
    } finally {
      await sandbox.terminate().catch(() => undefined);
    }
  });

  it('exposes ports at create', async () => {
    const sandbox = await Sandbox.create(LIVE, { exposePorts: [8000] });
    try {
      if (sandbox.protocol < 2) return;
      assert.deepEqual(Object.keys(sandbox.ports), ['8000']);
      const started = await sandbox.run(START_SERVER, 'bash');
      assert.equal(started.exitCode, 0, started.stderr);
      assert.deepEqual(await fetchText(`${sandbox.ports[8000]}index.html`), [200, 'hello from the sandbox\n']);
      await assert.rejects(sandbox.expose(70000), RangeError);
    } finally {
      await sandbox.terminate().catch(() => undefined);
    }
  });
});
