/** The sans-IO core on its own: what the flows (tests/flows, through the API) cannot show. The twin of test_protocol.py. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SandboxStateError } from '../../src/errors.js';
import { ClientProtocol, MAX_STDIN_CHUNK } from '../../src/internal/protocol.js';

function running(protocol = 2): ClientProtocol {
  const core = new ClientProtocol(false);
  core.receiveFrame(JSON.stringify({ event: 'status_update', status: 'SANDBOX_RUNNING', ...(protocol === 2 ? { protocol: 2 } : {}) }));
  return core;
}

function started(core: ClientProtocol, window: number): string {
  const { id } = core.sendExec({ code: 'cat', language: 'bash' });
  core.receiveFrame(
    JSON.stringify({ event: 'status_update', status: 'SANDBOX_EXECUTION_RUNNING', id, process_id: 1, stdin_window: window }),
  );
  return id;
}

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

describe('ClientProtocol', () => {
  it('refuses requests before the sandbox runs', () => {
    const core = new ClientProtocol(false);
    assert.throws(() => core.sendExec({ code: 'echo', language: 'bash' }), (e: unknown) => e instanceof SandboxStateError && e.message.includes('not ready yet'));
    assert.throws(() => core.sendCheckpoint(), /not ready yet/);
  });

  it('makes ids a counter of strings', () => {
    const core = running();
    const ids = [1, 2, 3].map(() => core.sendExec({ code: 'true', language: 'bash' }).id);
    assert.deepEqual(ids, ['1', '2', '3']);
    assert.equal((JSON.parse(core.sendListProcesses().frame) as { id: string }).id, '4');
  });

  it('cuts stdin by the window and the chunk bound', () => {
    const core = running();
    const key = started(core, 10);
    const data = bytes('x'.repeat(25));
    assert.equal(core.nextStdinPiece(key, data, 0, false), 10);
    core.sendStdin(key, data.subarray(0, 10), false);
    assert.equal(core.stdinRoom(key), 0);
    assert.equal(core.nextStdinPiece(key, data, 10, false), 0);
    const effects = core.receiveFrame(JSON.stringify({ event: 'stdin_ack', id: key, process_id: 1, written: 4 }));
    assert.deepEqual(effects, [{ type: 'StdinAcknowledged', key }]);
    assert.equal(core.stdinRoom(key), 4);
    assert.equal(core.stdinUnacknowledged(key), 6);
    assert.equal(core.nextStdinPiece(key, data, 10, false), 0); // 10 > 4: wait for more
    const big = started(core, 8 * MAX_STDIN_CHUNK);
    assert.equal(core.nextStdinPiece(big, new Uint8Array(3 * MAX_STDIN_CHUNK), 0, false), MAX_STDIN_CHUNK);
  });

  it('does not split a character of text', () => {
    const core = running();
    const key = started(core, 4);
    const data = bytes('aé€'); // 1 + 2 + 3 bytes
    assert.equal(core.nextStdinPiece(key, data, 0, true), 3); // "aé", not half of €
    assert.equal(core.nextStdinPiece(key, data, 0, false), 4);
  });

  it('has no flow control on protocol 1', () => {
    const core = running(1);
    const { id: key } = core.sendExec({ code: 'cat', language: 'bash' });
    core.receiveFrame('{"event": "status_update", "status": "SANDBOX_EXECUTION_RUNNING"}');
    assert.equal(core.stdinRoom(key), undefined);
    const frame = JSON.parse(core.sendStdin(key, new Uint8Array([0xff]), true)) as unknown; // not UTF-8: base64
    assert.deepEqual(frame, { event: 'stdin', data: '/w==', encoding: 'base64', id: '2' });
  });

  it('takes the written offset the server gives to attach_process', () => {
    const core = running();
    const { id, frame } = core.sendAttachProcess(5);
    assert.deepEqual(JSON.parse(frame), { action: 'attach_process', process_id: 5, id });
    const effects = core.receiveFrame(JSON.stringify({ event: 'reply', id, process_id: 5, stdin_window: 100, stdin_written: 40 }));
    assert.deepEqual(effects, [
      { type: 'ProcessStarted', key: id, processId: 5 },
      { type: 'RequestDone', requestId: id, value: id },
    ]);
    assert.equal(core.stdinRoom(id), 100);
  });
});
