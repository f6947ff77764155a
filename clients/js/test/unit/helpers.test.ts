import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DEFAULT_BACKOFF, backoffDelay, normalizeBackoff } from '../../src/internal/backoff.js';
import { base64ToBytes, bytesToBase64 } from '../../src/internal/base64.js';
import { Deferred } from '../../src/internal/deferred.js';
import { encodeExec, encodeInit, encodeStdin, parseServerFrame } from '../../src/internal/frames.js';
import { forgetToken, recallToken, rememberToken } from '../../src/internal/tokens.js';
import { attachUrl, createUrl } from '../../src/internal/urls.js';

describe('backoff', () => {
  it('doubles from the initial delay up to the cap', () => {
    const policy = { maxAttempts: 6, initialDelay: 0.25, maxDelay: 2 };
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((n) => backoffDelay(policy, n)),
      [0.25, 0.5, 1, 2, 2, 2],
    );
  });

  it('jitters within [half, full] of the delay', () => {
    const policy = { maxAttempts: 3, initialDelay: 1, maxDelay: 10 };
    assert.equal(backoffDelay(policy, 1, 0), 0.5);
    assert.equal(backoffDelay(policy, 1, 0.75), 0.75);
    assert.equal(backoffDelay(policy, 1, 5), 1);
  });

  it('never allows a tight or endless loop', () => {
    const p = normalizeBackoff({ maxAttempts: 0, initialDelay: 0, maxDelay: 0 });
    assert.equal(p.maxAttempts, 1);
    assert.ok(p.initialDelay >= 0.05);
    assert.ok(p.maxDelay >= p.initialDelay);
    assert.deepEqual(normalizeBackoff(undefined), { ...DEFAULT_BACKOFF });
    assert.deepEqual(normalizeBackoff({ maxAttempts: 3 }), { ...DEFAULT_BACKOFF, maxAttempts: 3 });
  });
});

describe('urls', () => {
  it('builds /create from ws, wss, http and https bases', () => {
    assert.equal(createUrl('ws://127.0.0.1:8080'), 'ws://127.0.0.1:8080/create');
    assert.equal(createUrl('ws://127.0.0.1:8080/'), 'ws://127.0.0.1:8080/create');
    assert.equal(createUrl('https://svc.example.run.app'), 'wss://svc.example.run.app/create');
    assert.equal(createUrl('http://h:1/prefix/'), 'ws://h:1/prefix/create');
  });

  it('builds /attach with the token as a query parameter', () => {
    assert.equal(attachUrl('wss://h', 'ab12', 't/k+n'), 'wss://h/attach/ab12?sandbox_token=t%2Fk%2Bn');
    assert.equal(attachUrl('ws://h:8080', 'ab12', undefined), 'ws://h:8080/attach/ab12?sandbox_token=');
  });

  it('rejects other schemes and garbage', () => {
    assert.throws(() => createUrl('ftp://h'), /unsupported url scheme/);
    assert.throws(() => createUrl('not a url'), /invalid sandbox server url/);
  });
});

describe('frames', () => {
  it('sends only the init keys that were set', () => {
    assert.equal(encodeInit({}), '{}');
    assert.deepEqual(JSON.parse(encodeInit({ idle_timeout: null, enable_checkpoint: true })), {
      idle_timeout: null,
      enable_checkpoint: true,
    });
  });

  it('encodes exec additions only when given', () => {
    assert.deepEqual(JSON.parse(encodeExec({ language: 'bash', code: 'ls' })), { language: 'bash', code: 'ls' });
    assert.deepEqual(
      JSON.parse(encodeExec({ language: 'python', code: 'x', env: { A: '1' }, cwd: '/tmp', timeout: 2.5, binary: true })),
      { language: 'python', code: 'x', env: { A: '1' }, cwd: '/tmp', timeout: 2.5, output_encoding: 'base64' },
    );
  });

  it('encodes stdin text, bytes and eof', () => {
    assert.deepEqual(JSON.parse(encodeStdin('hi\n', false)), { event: 'stdin', data: 'hi\n' });
    assert.deepEqual(JSON.parse(encodeStdin(new Uint8Array([0, 255]), false)), {
      event: 'stdin',
      data: 'AP8=',
      encoding: 'base64',
    });
    assert.deepEqual(JSON.parse(encodeStdin(undefined, true)), { event: 'stdin', eof: true });
    assert.deepEqual(JSON.parse(encodeStdin('last', true)), { event: 'stdin', data: 'last', eof: true });
  });

  it('parses only JSON objects', () => {
    assert.deepEqual(parseServerFrame('{"event":"stdout","data":"x"}'), { event: 'stdout', data: 'x' });
    assert.equal(parseServerFrame('nope'), undefined);
    assert.equal(parseServerFrame('[1]'), undefined);
    assert.equal(parseServerFrame('null'), undefined);
    assert.equal(parseServerFrame('"str"'), undefined);
  });

  it('round-trips base64 of every byte value and of large buffers', () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    assert.deepEqual(base64ToBytes(bytesToBase64(all)), all);
    const big = new Uint8Array(200_000).map((_, i) => (i * 7) % 256);
    assert.deepEqual(base64ToBytes(bytesToBase64(big)), big);
    assert.equal(bytesToBase64(new TextEncoder().encode('héllo')), Buffer.from('héllo').toString('base64'));
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

describe('tokens', () => {
  it('remembers tokens by sandbox id for the life of the process', () => {
    assert.equal(recallToken('unit-x'), undefined);
    rememberToken('unit-x', 'secret');
    assert.equal(recallToken('unit-x'), 'secret');
    forgetToken('unit-x');
    assert.equal(recallToken('unit-x'), undefined);
  });
});
