/** `Sandbox.list()`: the URL it asks, the answers it parses, the HTTP exchange against a local stand-in; the twin of test_listing.py. */
import assert from 'node:assert/strict';
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { Sandbox, SandboxAuthenticationError, SandboxConnectionError, SandboxError } from '../../src/index.js';
import { initMessage } from '../../src/internal/frames.js';
import { listUrl, parseList } from '../../src/internal/listing.js';

// What the server answered (src/server/api.rs `sandboxes_response`, store_work `list_checkpoints`).
const LIVE = {
  sandboxes: [
    {
      sandbox_id: '0123456789abcdef0123456789abcdef',
      state: 'running',
      age_secs: 12.5,
      idle_secs: 3.1,
      labels: { team: 'search' },
      attached: true,
      checkpointable: true,
      checkpointed: false,
      handoff: true,
    },
  ],
};
const STORE = {
  sandboxes: [
    {
      sandbox_id: '00000000000000000000000000000001',
      state: 'checkpointed',
      checkpointed: true,
      checkpoint_unix_ms: 1700000000000,
      size_bytes: 315392,
      labels: {},
      handoff: false,
    },
    { state: 'running' },
  ],
  next_after: '00000000000000000000000000000001',
};

describe('listing', () => {
  it('builds the GET /sandboxes url', () => {
    assert.equal(listUrl('wss://h/p/', {}), 'https://h/p/sandboxes');
    assert.equal(
      listUrl('ws://127.0.0.1:8080', { checkpointed: true, limit: 5, after: 'ab' }),
      'http://127.0.0.1:8080/sandboxes?checkpointed=1&limit=5&after=ab',
    );
    assert.ok(listUrl('https://h', {}).startsWith('https:'));
    for (const bad of [0, 1001, 2.5]) {
      assert.throws(() => listUrl('ws://h', { checkpointed: true, limit: bad }), /limit must be an integer from 1 to 1000/);
    }
  });

  it('parses recorded answers', () => {
    assert.deepEqual(parseList(JSON.stringify(LIVE)), {
      sandboxes: [
        {
          sandboxId: '0123456789abcdef0123456789abcdef',
          state: 'running',
          labels: { team: 'search' },
          checkpointed: false,
          handoff: true,
          ageSecs: 12.5,
          idleSecs: 3.1,
          attached: true,
          checkpointable: true,
          checkpointUnixMs: null,
          sizeBytes: null,
        },
      ],
      nextAfter: null,
    });
    const store = parseList(JSON.stringify(STORE));
    assert.deepEqual(
      store.sandboxes.map((info) => info.sandboxId),
      ['00000000000000000000000000000001'],
    );
    assert.equal(store.sandboxes[0]?.sizeBytes, 315392);
    assert.equal(store.sandboxes[0]?.ageSecs, null);
    assert.equal(store.nextAfter, '00000000000000000000000000000001');
    for (const body of ['not json', '[]', '{"sandboxes": 3}']) assert.throws(() => parseList(body), SandboxError);
  });

  it('sends labels in the init only when given', () => {
    const base = {
      idle_timeout: null,
      enable_checkpoint: false,
      enable_idle_timeout_auto_checkpoint: false,
      enable_sandbox_handoff: true,
      filesystem_snapshot_name: null,
    };
    const plain = JSON.parse(initMessage(base)) as Record<string, unknown>;
    assert.equal('labels' in plain, false);
    assert.equal(plain['enable_sandbox_handoff'], true);
    const labelled = JSON.parse(initMessage({ ...base, labels: { team: 'search' } })) as Record<string, unknown>;
    assert.deepEqual(labelled['labels'], { team: 'search' });
    assert.throws(() => initMessage({ ...base, labels: { n: 1 } as unknown as Record<string, string> }), /labels must map str to str/);
  });

  describe('against a stand-in server', () => {
    const seen: { paths: string[]; authorization: (string | undefined)[] } = { paths: [], authorization: [] };
    let status = 200;
    let body: unknown = LIVE;
    const server = createServer((request: IncomingMessage, response: ServerResponse) => {
      seen.paths.push(request.url ?? '');
      seen.authorization.push(request.headers.authorization);
      const text = JSON.stringify(body);
      response.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
      response.end(text);
    });
    let url = '';
    before(async () => {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      url = `ws://127.0.0.1:${String((server.address() as AddressInfo).port)}`;
    });
    after(() => server.close());

    it('asks with the api key and pages through the store', async () => {
      const listed = await Sandbox.list(url, { apiKey: 'key-1' });
      assert.deepEqual(listed.sandboxes[0]?.labels, { team: 'search' });
      body = STORE;
      const page = await Sandbox.list(url, { checkpointed: true, limit: 2, after: '0'.repeat(32) });
      assert.equal(page.nextAfter, '00000000000000000000000000000001');
      assert.deepEqual(seen.paths, ['/sandboxes', `/sandboxes?checkpointed=1&limit=2&after=${'0'.repeat(32)}`]);
      assert.deepEqual(seen.authorization, ['Bearer key-1', undefined]);
    });

    it('raises refusals and errors', async () => {
      status = 401;
      body = { error: 'missing api key' };
      await assert.rejects(Sandbox.list(url), (error: unknown) => {
        assert.ok(error instanceof SandboxAuthenticationError);
        assert.equal(error.httpStatus, 401);
        assert.match(error.message, /missing api key/);
        return true;
      });
      status = 501;
      body = { error: 'checkpointing is not enabled' };
      await assert.rejects(Sandbox.list(url, { checkpointed: true }), /HTTP 501: checkpointing is not enabled/);
      await assert.rejects(Sandbox.list('ws://127.0.0.1:9', { timeout: 5 }), SandboxConnectionError);
    });
  });
});
