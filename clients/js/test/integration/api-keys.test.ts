/**
 * API keys against a live server started with SANDBOX_API_KEYS: $SANDBOX_TEST_AUTH_URL, and one
 * of its keys in $SANDBOX_TEST_API_KEY (scripts/test.sh starts it). Skipped, with the reason, when
 * either is unset. Every test deletes the sandboxes it made, also when it fails.
 */
import assert from 'node:assert/strict';
import { type Socket, connect, createServer } from 'node:net';
import { afterEach, describe, it } from 'node:test';

import {
  Sandbox,
  SandboxAuthenticationError,
  SandboxConnectionError,
  SandboxNotFoundError,
} from '../../src/index.js';

const url = process.env['SANDBOX_TEST_AUTH_URL'] ?? '';
const key = process.env['SANDBOX_TEST_API_KEY'] ?? '';
const skip =
  url === '' || key === ''
    ? 'SANDBOX_TEST_AUTH_URL and SANDBOX_TEST_API_KEY are not set (a server started with SANDBOX_API_KEYS)'
    : false;
function live(name: string, fn: () => Promise<void>): void {
  it(name, { skip, timeout: 180_000 }, fn);
}

const made: Sandbox[] = [];
function track(sandbox: Sandbox): Sandbox {
  made.push(sandbox);
  return sandbox;
}
afterEach(async () => {
  // Newest first: an attached copy lets go before the original re-attaches to terminate.
  for (const sandbox of made.splice(0).reverse()) {
    await sandbox.terminate().catch((error: unknown) => {
      if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
    });
  }
});

async function expectAuthError(promise: Promise<unknown>): Promise<SandboxAuthenticationError> {
  const error = await promise.then(
    () => assert.fail('expected SandboxAuthenticationError'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof SandboxAuthenticationError, `expected SandboxAuthenticationError, got ${String(error)}`);
  assert.ok(!(error instanceof SandboxConnectionError));
  return error;
}

/** A TCP proxy to the server whose connections a test can cut at once (a network failure). */
async function cuttingProxy(target: string): Promise<{ url: string; cut: () => void; close: () => void }> {
  const { hostname, port } = new URL(target);
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => undefined);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const cut = (): void => {
    for (const socket of open) socket.destroy();
  };
  return {
    url: `ws://127.0.0.1:${address.port}`,
    cut,
    close: () => {
      cut();
      server.close();
    },
  };
}

describe('API keys (live server with SANDBOX_API_KEYS)', () => {
  live('without a key the server refuses with 401', async () => {
    const error = await expectAuthError(Sandbox.create(url));
    assert.equal(error.httpStatus, 401);
    assert.match(error.message, /missing api key/);
  });

  live('a wrong key is refused and never echoed', async () => {
    for (const wrong of ['not-the-key', `${key}x`, key.slice(0, -1)]) {
      const error = await expectAuthError(Sandbox.create(url, { apiKey: wrong }));
      assert.equal(error.httpStatus, 401);
      assert.match(error.message, /not valid/);
      assert.ok(!error.message.includes(wrong));
    }
  });

  live('apiKey and an Authorization header both work', async () => {
    const byKey = track(await Sandbox.create(url, { apiKey: key }));
    assert.equal((await byKey.run('echo by-key', 'bash')).stdout, 'by-key\n');
    const byHeader = track(await Sandbox.create(url, { headers: { Authorization: `Bearer ${key}` } }));
    assert.equal((await byHeader.run("print('by-header')", 'python')).stdout, 'by-header\n');
  });

  live('attach needs the key too', async () => {
    const sandbox = track(await Sandbox.create(url, { apiKey: key }));
    await sandbox.run('echo 5 > /tmp/mark', 'bash');
    await sandbox.disconnect();
    // The sandbox token alone does not get past the server's key check.
    await expectAuthError(Sandbox.attach(url, sandbox.sandboxId, sandbox.sandboxToken));
    const again = track(await Sandbox.attach(url, sandbox.sandboxId, sandbox.sandboxToken, { apiKey: key }));
    assert.equal((await again.run('cat /tmp/mark', 'bash')).stdout, '5\n');
  });

  live('re-attach after a network failure and terminate() reuse the key', async () => {
    const proxy = await cuttingProxy(url);
    try {
      const sandbox = track(
        await Sandbox.create(proxy.url, {
          apiKey: key,
          autoReconnect: { initialDelay: 0.1, maxDelay: 1, maxAttempts: 10 },
        }),
      );
      const proc = await sandbox.exec('for i in 0 1 2 3; do echo $i; sleep 0.3; done', 'bash');
      const iterator = proc.stdout[Symbol.asyncIterator]();
      let text = String((await iterator.next()).value);
      proxy.cut(); // the re-attach must carry the key again
      for (let r = await iterator.next(); r.done !== true; r = await iterator.next()) text += r.value;
      assert.equal(text, '0\n1\n2\n3\n');
      assert.equal(await proc.wait(), 0);
      // terminate() on a disconnected handle attaches first: with the key as well.
      await sandbox.disconnect();
      await sandbox.terminate();
      assert.equal(sandbox.state, 'killed');
      await assert.rejects(
        Sandbox.attach(url, sandbox.sandboxId, sandbox.sandboxToken, { apiKey: key }),
        SandboxNotFoundError,
      );
    } finally {
      proxy.close();
    }
  });
});
