/**
 * Terminals (`sandbox.pty`) against a live server at $SANDBOX_TEST_URL (skipped, with the reason,
 * when it is not set). Every test deletes the sandboxes it made, also when it fails.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { Sandbox, SandboxNotFoundError } from '../../src/index.js';

const URL_ = process.env['SANDBOX_TEST_URL'];
const skip = URL_ === undefined || URL_ === '' ? 'SANDBOX_TEST_URL is not set (e.g. ws://127.0.0.1:8080)' : false;
const url = URL_ ?? '';
function live(name: string, fn: () => Promise<void>): void {
  it(name, { skip, timeout: 180_000 }, fn);
}

const made: Sandbox[] = [];
afterEach(async () => {
  for (const sandbox of made.splice(0)) {
    await sandbox.terminate().catch((error: unknown) => {
      if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
    });
  }
});

/** Resolves once the text received so far contains `needle` (rejects after 60 s). */
function waitFor(seen: () => string, needle: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 60_000;
    const check = (): void => {
      if (seen().includes(needle)) resolve();
      else if (Date.now() > deadline) reject(new Error(`no ${JSON.stringify(needle)} in ${JSON.stringify(seen())}`));
      else setTimeout(check, 20);
    };
    check();
  });
}

describe('terminals', () => {
  live('a terminal is a tty of its size, resizes, takes ctrl-C and exits with its code', async () => {
    const sandbox = await Sandbox.create(url);
    made.push(sandbox);
    let text = '';
    const decoder = new TextDecoder();
    const term = await sandbox.pty.create({
      cols: 100,
      rows: 30,
      onData: (data) => {
        text += decoder.decode(data, { stream: true });
      },
    });
    assert.equal(typeof term.processId, 'number');
    await term.write('tty; stty size; echo tt-$((2+2))\r');
    await waitFor(() => text, 'tt-4');
    assert.match(text, /\/dev\/pts\//);
    assert.match(text, /30 100/);
    await term.resize(120, 40);
    await term.write('stty size\r');
    await waitFor(() => text, '40 120');
    await term.write("bash -c 'echo zz-$((3*3)); exec sleep 100'; echo not-reached-$((1))\r");
    await waitFor(() => text, 'zz-9');
    await term.write('\x03');
    await term.write('echo back-$((5+5))\r');
    await waitFor(() => text, 'back-10');
    assert.ok(!text.includes('not-reached-1'), text);
    const kinds = (await sandbox.listProcesses()).filter((p) => p.processId === term.processId).map((p) => p.kind);
    assert.deepEqual(kinds, ['terminal']);
    await assert.rejects(term.resize(0, 10), /cols must be from 1 to 1000, got 0/);
    await term.write('exit 3\r');
    assert.equal(await term.wait(), 3);
  });

  live('kill ends a terminal like any process', async () => {
    const sandbox = await Sandbox.create(url);
    made.push(sandbox);
    const term = await sandbox.pty.create({ command: 'cat' });
    await term.kill();
    assert.equal(await term.wait(), 137);
    assert.equal(term.process.reason, 'killed');
  });
});
