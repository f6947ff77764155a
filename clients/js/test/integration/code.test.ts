/**
 * The code interpreter (`runCode` and code contexts) against a live server at $SANDBOX_TEST_URL;
 * the same tests as clients/python/tests/test_code.py. Skipped, with the reason, when it is not
 * set. Every test deletes the sandboxes it made, also when it fails.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { type Result, Sandbox, SandboxError, SandboxNotFoundError } from '../../src/index.js';

const URL_ = process.env['SANDBOX_TEST_URL'];
const skip = URL_ === undefined || URL_ === '' ? 'SANDBOX_TEST_URL is not set (e.g. ws://127.0.0.1:8080)' : false;
const url = URL_ ?? '';
function live(name: string, fn: () => Promise<void>): void {
  it(name, { skip, timeout: 180_000 }, fn);
}

const made: Sandbox[] = [];
async function create(): Promise<Sandbox> {
  const sandbox = await Sandbox.create(url);
  made.push(sandbox);
  return sandbox;
}
afterEach(async () => {
  for (const sandbox of made.splice(0)) {
    await sandbox.terminate().catch((error: unknown) => {
      if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
    });
  }
});

describe('code interpreter', () => {
  live('state persists and the last expression is the result', async () => {
    const sandbox = await create();
    const first = await sandbox.runCode("x = 40\nprint('set')");
    // Output comes in chunks as the cell writes them (print writes the text, then the newline).
    assert.equal(first.logs.stdout.join(''), 'set\n');
    assert.deepEqual(first.results, []);
    assert.equal(first.error, undefined);
    const second = await sandbox.runCode('x + 2');
    assert.equal(second.text, '42');
    assert.equal(second.results[0]?.isMainResult, true);
    assert.deepEqual(second.results[0]?.formats(), ['text/plain']);
    assert.equal(second.exitCode, 0);
    assert.equal(second.reason, 'exited');
  });

  live('rich results: a table and a PNG', async () => {
    const sandbox = await create();
    const seen: Result[] = [];
    const table = await sandbox.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2]})", {
      onResult: (result) => seen.push(result),
    });
    assert.match(table.results[0]?.html ?? '', /<table/);
    assert.deepEqual(seen, table.results);
    const plot = await sandbox.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()');
    const png = plot.results[0]?.png;
    assert.ok(png !== undefined);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(plot.results[0]?.isMainResult, false);
    assert.equal(plot.text, undefined);
  });

  live('errors are data with a traceback', async () => {
    const sandbox = await create();
    const errors: unknown[] = [];
    const execution = await sandbox.runCode('a = 1\nb = a / 0', { onError: (error) => errors.push(error) });
    assert.equal(execution.error?.name, 'ZeroDivisionError');
    assert.equal(execution.error.value, 'division by zero');
    assert.ok(execution.error.traceback.some((line) => line.includes('line 2')));
    assert.deepEqual(errors, [execution.error]);
    assert.equal(execution.exitCode, 1);
  });

  live('streaming callbacks, and a timeout interrupts the cell', async () => {
    const sandbox = await create();
    const chunks: string[] = [];
    const execution = await sandbox.runCode("import time\nkept = 'yes'\nprint('tick', flush=True)\ntime.sleep(30)", {
      onStdout: (text) => chunks.push(text),
      timeout: 1,
    });
    assert.deepEqual(chunks, ['tick\n']);
    assert.equal(execution.reason, 'timeout');
    assert.equal(execution.error?.name, 'KeyboardInterrupt');
    assert.equal((await sandbox.runCode('kept')).text, "'yes'");
  });

  live('contexts are isolated, restartable and deletable', async () => {
    const sandbox = await create();
    const context = await sandbox.createCodeContext({ cwd: '/tmp' });
    assert.equal(context.cwd, '/tmp');
    await sandbox.runCode('secret = 1');
    assert.equal((await sandbox.runCode('import os\nos.getcwd()', { context })).text, "'/tmp'");
    const missing = await sandbox.runCode('secret', { context });
    assert.equal(missing.error?.name, 'NameError');
    const died = await sandbox.runCode('os._exit(1)', { context });
    assert.equal(died.reason, 'context_died');
    const listed = await sandbox.listCodeContexts();
    assert.equal(listed.find((c) => c.contextId === context.contextId)?.state, 'dead');
    await assert.rejects(sandbox.runCode('1', { context }), (error: unknown) => {
      return error instanceof SandboxError && error.message.includes('died');
    });
    await sandbox.restartCodeContext(context);
    assert.equal((await sandbox.runCode('2 * 21', { context })).text, '42');
    await sandbox.deleteCodeContext(context.contextId);
    await assert.rejects(sandbox.runCode('1', { context }), /no code context/);
  });

  live('cells of one context run in order', async () => {
    const sandbox = await create();
    const slow = sandbox.runCode('import time\ntime.sleep(0.5)\norder = [1]');
    const fast = sandbox.runCode('order.append(2)\norder');
    await slow;
    assert.equal((await fast).text, '[1, 2]');
  });
});
