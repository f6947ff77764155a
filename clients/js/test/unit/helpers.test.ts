/** URLs, the reconnect policy, frames, base64, deferreds, the registry: the twin of test_helpers.py. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { base64ToBytes, bytesToBase64 } from '../../src/internal/base64.js';
import { Deferred } from '../../src/internal/deferred.js';
import { execMessage, initMessage, parseFrame, stdinMessage } from '../../src/internal/frames.js';
import { DEFAULT_RECONNECT, reconnectDelay, reconnectPolicy } from '../../src/internal/reconnect.js';
import { forgetToken, recallToken, rememberToken } from '../../src/internal/registry.js';
import { attachUrl, createUrl } from '../../src/internal/urls.js';

describe('urls', () => {
  it('builds /create from ws, wss, http and https bases', () => {
    assert.equal(createUrl('ws://127.0.0.1:8080'), 'ws://127.0.0.1:8080/create');
    assert.equal(createUrl('ws://127.0.0.1:8080/'), 'ws://127.0.0.1:8080/create');
    assert.equal(createUrl('https://svc.example.run.app'), 'wss://svc.example.run.app/create');
    assert.equal(createUrl('http://h:1/prefix/'), 'ws://h:1/prefix/create');
  });

  it('builds /attach with the token percent-encoded as Python quote(safe="") does', () => {
    assert.equal(attachUrl('ws://h:1', 'abc', 't/k+n='), 'ws://h:1/attach/abc?sandbox_token=t%2Fk%2Bn%3D');
    assert.equal(attachUrl('ws://h:1', 'a/b', 'secret token'), 'ws://h:1/attach/a%2Fb?sandbox_token=secret%20token');
  });

  it('rejects other schemes and garbage', () => {
    assert.throws(() => createUrl('ftp://h'), /unsupported url scheme/);
    assert.throws(() => createUrl('not a url'), /invalid sandbox server url/);
  });
});

describe('reconnect policy', () => {
  it('is exponential and capped', () => {
    const policy = reconnectPolicy({ maxAttempts: 6, initialDelay: 0.5, maxDelay: 3, jitter: 0 });
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((n) => reconnectDelay(policy, n)),
      [0.5, 1, 2, 3, 3, 3],
    );
  });

  it('jitters within +/- jitter', () => {
    const policy = reconnectPolicy({ initialDelay: 1, maxDelay: 1, jitter: 0.2 });
    assert.equal(reconnectDelay(policy, 3, 0), 0.8);
    assert.equal(reconnectDelay(policy, 3, 0.5), 1);
    for (let i = 0; i < 100; i++) {
      const delay = reconnectDelay(policy, 3);
      assert.ok(delay >= 0.8 && delay <= 1.2, String(delay));
    }
  });

  it('has the Python client defaults and refuses nonsense', () => {
    assert.deepEqual(reconnectPolicy(), { ...DEFAULT_RECONNECT });
    assert.deepEqual(DEFAULT_RECONNECT, { maxAttempts: 10, initialDelay: 0.25, maxDelay: 10, multiplier: 2, jitter: 0.1 });
    for (const bad of [{ maxAttempts: 0 }, { initialDelay: -1 }, { multiplier: 0.5 }, { jitter: 1 }]) {
      assert.throws(() => reconnectPolicy(bad), RangeError);
    }
  });
});

describe('frames', () => {
  it('sends the original five init keys, and enable_network only when wanted', () => {
    const init = {
      idle_timeout: null,
      enable_checkpoint: false,
      enable_idle_timeout_auto_checkpoint: false,
      enable_sandbox_handoff: false,
      filesystem_snapshot_name: null,
    };
    assert.deepEqual(JSON.parse(initMessage({ ...init, enable_network: false })), init);
    assert.deepEqual(JSON.parse(initMessage({ ...init, enable_network: true })), { ...init, enable_network: true });
  });

  it('sends exec additions only when given, always with the id', () => {
    assert.deepEqual(JSON.parse(execMessage('1', { language: 'bash', code: 'ls' })), { id: '1', language: 'bash', code: 'ls' });
    assert.deepEqual(
      JSON.parse(execMessage('2', { language: 'python', code: 'x', env: { A: '1' }, cwd: '/tmp', timeout: 2.5, outputEncoding: 'base64' })),
      { id: '2', language: 'python', code: 'x', env: { A: '1' }, cwd: '/tmp', timeout: 2.5, output_encoding: 'base64' },
    );
  });

  it('sends stdin as text, as base64, with eof, with the process id when known', () => {
    const text = new TextEncoder().encode('hi\n');
    assert.deepEqual(JSON.parse(stdinMessage('3', undefined, text, true)), { event: 'stdin', data: 'hi\n', id: '3' });
    assert.deepEqual(JSON.parse(stdinMessage('4', 7, new Uint8Array([0, 255]), false)), {
      event: 'stdin',
      process_id: 7,
      data: 'AP8=',
      encoding: 'base64',
      id: '4',
    });
    assert.deepEqual(JSON.parse(stdinMessage('5', undefined, undefined, true, true)), { event: 'stdin', eof: true, id: '5' });
  });

  it('sends as base64 a text chunk whose JSON escaping would be too large', () => {
    const controls = new Uint8Array(1024 * 1024); // NUL bytes: 6 bytes each escaped in JSON
    const frame = JSON.parse(stdinMessage('6', 1, controls, true)) as Record<string, unknown>;
    assert.equal(frame['encoding'], 'base64');
  });

  it('parses only JSON objects', () => {
    assert.deepEqual(parseFrame('{"event":"stdout","data":"x"}'), { event: 'stdout', data: 'x' });
    for (const bad of ['nope', '[1]', 'null', '"str"']) assert.equal(parseFrame(bad), undefined);
  });

  it('round-trips base64 of every byte value and of large buffers', () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    assert.deepEqual(base64ToBytes(bytesToBase64(all)), all);
    const big = new Uint8Array(200_000).map((_, i) => (i * 7) % 256);
    assert.deepEqual(base64ToBytes(bytesToBase64(big)), big);
  });
});

describe('deferred', () => {
  it('settles once and never reports an unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      const d = new Deferred<number>();
      d.reject(new Error('nobody listens'));
      d.resolve(1);
      assert.equal(d.settled, true);
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(unhandled, []);
      await assert.rejects(d.promise, /nobody listens/);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('registry', () => {
  it('remembers tokens by sandbox id for the life of the process', () => {
    assert.equal(recallToken('unit-x'), undefined);
    rememberToken('unit-x', 'secret');
    assert.equal(recallToken('unit-x'), 'secret');
    forgetToken('unit-x');
    assert.equal(recallToken('unit-x'), undefined);
  });
});
