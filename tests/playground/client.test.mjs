// The playground's protocol client (src/server/playground/client.js) without a browser: a
// scripted WebSocket feeds it server frames of docs/protocol.md (protocol 1, and protocol 2 as
// tests/flows/p2_*.json has them) and records what it sends.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, base64url, subprotocols, websocketBase } from '../../src/server/playground/client.js';

class ScriptedSocket {
  static last = null;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.listeners = {};
    ScriptedSocket.last = this;
  }

  addEventListener(name, listener) {
    (this.listeners[name] ??= []).push(listener);
  }

  emit(name, event) {
    for (const listener of this.listeners[name] ?? []) listener(event);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.emit('close', { code, reason });
  }

  /** The server's frames, in order. */
  serve(...frames) {
    for (const frame of frames) this.emit('message', { data: JSON.stringify(frame) });
  }
}

globalThis.WebSocket = ScriptedSocket;

const status = (name, extra = {}) => ({ event: 'status_update', status: name, ...extra });

/** A session on /create that reached SANDBOX_RUNNING (with `protocol` 2 or without: 1). */
function running(protocol) {
  const seen = { runs: [], output: [], errors: [], closed: null };
  const events = {
    status() {},
    sandbox() {},
    running() {},
    run(run) {
      if (!seen.runs.includes(run)) seen.runs.push(run);
    },
    output(run, stream, text) {
      seen.output.push([run.number, stream, text]);
    },
    error(message) {
      seen.errors.push(message);
    },
    closed(code) {
      seen.closed = code;
    },
  };
  const session = Session.create('ws://host', 'k', { idle_timeout: null }, events);
  const socket = ScriptedSocket.last;
  socket.emit('open', {});
  socket.serve(
    status('SANDBOX_CREATING'),
    { event: 'sandbox_id', sandbox_id: 'abc', sandbox_token: 'tok' },
    status('SANDBOX_RUNNING', protocol === 2 ? { protocol: 2 } : {}),
  );
  return { session, socket, seen };
}

test('the URL and subprotocols come from the page and the key', () => {
  assert.equal(websocketBase({ protocol: 'https:', host: 'sandbox.run.app' }), 'wss://sandbox.run.app');
  assert.equal(websocketBase({ protocol: 'http:', host: '127.0.0.1:8080' }), 'ws://127.0.0.1:8080');
  // The same encoding the server's unit test decodes (src/http/api_keys.rs).
  assert.equal(base64url('s3cret/key+1'), 'czNjcmV0L2tleSsx');
  assert.equal(base64url('ab?'), 'YWI_');
  assert.equal(base64url('é'), 'w6k');
  assert.deepEqual(subprotocols(''), ['cloud-run-sandbox']);
  assert.deepEqual(subprotocols('s3cret/key+1'), ['cloud-run-sandbox', 'api-key.czNjcmV0L2tleSsx']);
});

test('create sends the init first, then requests with ids', () => {
  const { session, socket } = running(1);
  assert.equal(socket.url, 'ws://host/create');
  assert.deepEqual(socket.protocols, ['cloud-run-sandbox', 'api-key.aw']);
  assert.deepEqual(socket.sent, [{ idle_timeout: null }]);
  assert.equal(session.sandboxId, 'abc');
  assert.equal(session.sandboxToken, 'tok');
  assert.equal(session.protocol, 1);
});

test('protocol 1: one execution at a time, stdin and kill without process ids', () => {
  const { session, socket, seen } = running(1);
  const run = session.exec('name = input()', 'python');
  assert.deepEqual(socket.sent.at(-1), { language: 'python', code: 'name = input()', id: '1' });
  assert.throws(() => session.exec('print(2)', 'python'), /one execution at a time/);
  socket.serve(status('SANDBOX_EXECUTION_RUNNING'));
  assert.equal(run.state, 'running');
  session.write(run, 'World\n');
  assert.deepEqual(socket.sent.at(-1), { event: 'stdin', data: 'World\n', id: '2' });
  socket.serve({ event: 'stdout', data: 'Hello, World\n' }, { event: 'stderr', data: 'warn\n' });
  assert.deepEqual(seen.output, [
    [1, 'stdout', 'Hello, World\n'],
    [1, 'stderr', 'warn\n'],
  ]);
  session.kill(run);
  assert.deepEqual(socket.sent.at(-1), { action: 'kill_process', id: '3' });
  socket.serve(
    status('SANDBOX_EXECUTION_FORCE_KILLED'),
    status('SANDBOX_EXECUTION_DONE', { exit_code: 137, signal: 9, reason: 'killed', duration_ms: 40 }),
  );
  assert.deepEqual([run.state, run.done], ['done', { exitCode: 137, reason: 'killed', durationMs: 40 }]);
  // The next one may start now.
  const next = session.exec('echo', 'bash');
  assert.equal(next.number, 2);
});

test('protocol 1: a refusal without id fails the run that was starting', () => {
  const { session, socket, seen } = running(1);
  const run = session.exec('x', 'ruby');
  const message = 'Unsupported language: ruby. Supported languages: python, bash';
  socket.serve(status('SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR', { message }), { event: 'error', message });
  assert.deepEqual([run.state, run.error], ['failed', message]);
  assert.deepEqual(seen.errors, [message]);
});

test('protocol 2: processes side by side, answers paired by id (p2_concurrent_execs)', () => {
  const { session, socket, seen } = running(2);
  const first = session.exec('sleep 0.2; echo first', 'bash');
  const second = session.exec('echo second', 'bash');
  assert.deepEqual(
    socket.sent.slice(1).map((frame) => frame.id),
    ['1', '2'],
  );
  socket.serve(
    status('SANDBOX_EXECUTION_RUNNING', { id: '2', process_id: 2, stdin_window: 4194304 }),
    status('SANDBOX_EXECUTION_RUNNING', { id: '1', process_id: 1, stdin_window: 4194304 }),
    { event: 'stdout', id: '2', process_id: 2, data: 'second\n' },
    status('SANDBOX_EXECUTION_DONE', { id: '2', process_id: 2, exit_code: 0, reason: 'exited', duration_ms: 12 }),
    { event: 'stdout', id: '1', process_id: 1, data: 'first\n' },
  );
  assert.deepEqual([first.processId, second.processId], [1, 2]);
  assert.deepEqual([first.state, second.state], ['running', 'done']);
  assert.deepEqual(seen.output, [
    [2, 'stdout', 'second\n'],
    [1, 'stdout', 'first\n'],
  ]);

  // stdin and kill name the process; the window of the RUNNING frame bounds what is unacknowledged.
  session.write(first, 'abc');
  assert.deepEqual(socket.sent.at(-1), { event: 'stdin', process_id: 1, data: 'abc', id: '3' });
  first.stdinWindow = 4;
  assert.throws(() => session.write(first, 'de'), /window full/);
  socket.serve({ event: 'stdin_ack', id: '1', process_id: 1, written: 3 });
  session.write(first, 'de', true);
  assert.deepEqual(socket.sent.at(-1), { event: 'stdin', process_id: 1, data: 'de', eof: true, id: '4' });
  session.kill(first);
  assert.deepEqual(socket.sent.at(-1), { action: 'kill_process', process_id: 1, id: '5' });
  socket.serve(
    status('SANDBOX_EXECUTION_FORCE_KILLED', { id: '5', process_id: 1 }),
    status('SANDBOX_EXECUTION_DONE', { id: '1', process_id: 1, exit_code: 137, reason: 'killed' }),
  );
  assert.deepEqual([first.state, first.done.reason], ['done', 'killed']);
});

test('protocol 2: a refused exec fails by its id, others go on (p2_process_limit)', () => {
  const { session, socket } = running(2);
  const running1 = session.exec('sleep 1', 'bash');
  socket.serve(status('SANDBOX_EXECUTION_RUNNING', { id: '1', process_id: 1 }));
  const refused = session.exec('echo', 'bash');
  socket.serve(status('SANDBOX_EXECUTION_ERROR', { id: '2', message: 'too many processes (16 running)' }));
  assert.deepEqual([running1.state, refused.state, refused.error], ['running', 'failed', 'too many processes (16 running)']);
});

test('attach: reconnect, then (protocol 2) follow the processes still running', async () => {
  const seen = [];
  const events = {
    status() {},
    sandbox() {},
    running() {},
    run(run) {
      seen.push([run.number, run.state, run.processId]);
    },
    output() {},
    error(message) {
      throw new Error(message);
    },
    closed() {},
  };
  const session = Session.attach('wss://host', '', 'abc', 't/k', events);
  const socket = ScriptedSocket.last;
  assert.equal(socket.url, 'wss://host/attach/abc?sandbox_token=t%2Fk');
  assert.deepEqual(socket.protocols, ['cloud-run-sandbox']);
  socket.emit('open', {});
  assert.deepEqual(socket.sent, [], 'an attach sends no init');
  socket.serve(status('SANDBOX_RUNNING', { protocol: 2 }));
  assert.deepEqual(socket.sent, [
    { action: 'reconnect', id: '1' },
    { action: 'list_processes', id: '2' },
  ]);
  socket.serve({
    event: 'reply',
    id: '2',
    processes: [
      { process_id: 3, id: '7', kind: 'exec', language: 'bash', running: true },
      { process_id: 4, id: null, kind: 'exec', language: 'python', running: false },
    ],
  });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(socket.sent.at(-1), { action: 'attach_process', process_id: 3, id: '3' });
  socket.serve({ event: 'reply', id: '3', process_id: 3 });
  await new Promise((resolve) => setImmediate(resolve));
  const [adopted] = session.runs;
  assert.deepEqual([adopted.processId, adopted.requestId, adopted.state, adopted.code], [3, '3', 'running', null]);
  socket.serve(status('SANDBOX_EXECUTION_DONE', { id: '3', process_id: 3, exit_code: 0, reason: 'exited' }));
  assert.equal(adopted.state, 'done');
  assert.equal(session.runs.length, 1, 'the ended process is not followed');
});

test('protocol 2: an earlier connection\'s process with the same request id stays apart', () => {
  const { session, socket, seen } = running(2);
  // Replayed after an attach: process 9, started by another connection with request id "1".
  socket.serve({ event: 'stdout', id: '1', process_id: 9, data: 'old\n' });
  const mine = session.exec('echo new', 'bash');
  assert.equal(mine.requestId, '1');
  socket.serve(
    status('SANDBOX_EXECUTION_RUNNING', { id: '1', process_id: 10 }),
    { event: 'stdout', id: '1', process_id: 9, data: 'old again\n' },
    { event: 'stdout', id: '1', process_id: 10, data: 'new\n' },
  );
  assert.deepEqual(seen.output, [
    [1, 'stdout', 'old\n'],
    [1, 'stdout', 'old again\n'],
    [2, 'stdout', 'new\n'],
  ]);
  assert.equal(mine.processId, 10);
});

test('attach on protocol 1: the replayed foreground execution is shown', () => {
  const output = [];
  const events = {
    status() {},
    sandbox() {},
    running() {},
    run() {},
    output(run, stream, text) {
      output.push([run.number, run.code, text]);
    },
    error() {},
    closed() {},
  };
  const session = Session.attach('ws://host', '', 'abc', 'tok', events);
  const socket = ScriptedSocket.last;
  socket.serve(
    status('SANDBOX_RESTORING'),
    status('SANDBOX_RUNNING'),
    status('SANDBOX_EXECUTION_RUNNING'),
    { event: 'stdout', data: 'aGVsbG8K', encoding: 'base64' },
    status('SANDBOX_EXECUTION_DONE', { exit_code: 0, reason: 'exited' }),
  );
  assert.deepEqual(socket.sent, [{ action: 'reconnect', id: '1' }]);
  assert.deepEqual(output, [[1, null, 'hello\n']]);
  assert.equal(session.runs[0].state, 'done');
});

test('a closed connection ends what was running and what waited', async () => {
  const { session, socket, seen } = running(2);
  const run = session.exec('sleep 100', 'bash');
  socket.serve(status('SANDBOX_EXECUTION_RUNNING', { id: '1', process_id: 1 }));
  const listed = session.request({ action: 'list_processes' });
  socket.close(1006, '');
  await assert.rejects(listed, /connection closed/);
  assert.deepEqual([run.state, seen.closed, session.ready], ['detached', 1006, false]);
  assert.throws(() => session.exec('echo', 'bash'), /not running/);
});
