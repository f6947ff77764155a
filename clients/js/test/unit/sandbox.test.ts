/**
 * `Sandbox` end to end against an in-process scripted server (no network): promise settling,
 * terminate without await, token memory, timeouts, and automatic re-attach.
 */
import assert from 'node:assert/strict';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { type WebSocket as ServerSocket, WebSocketServer } from 'ws';

import {
  Sandbox,
  SandboxAuthenticationError,
  SandboxCheckpointError,
  SandboxConnectionError,
  SandboxCreationError,
  SandboxExecutionError,
  SandboxInUseError,
  SandboxNotFoundError,
  SandboxPermissionError,
  SandboxStateError,
  SandboxTimeoutError,
} from '../../src/index.js';
import { FakeServer, type FakeSocket, tick } from './fake-server.js';

const URL_ = 'ws://fake.invalid:8080';
/** The init object Sandbox.create sends with no options: the original's five keys. */
const INIT = { idle_timeout: null, enable_checkpoint: false, enable_idle_timeout_auto_checkpoint: false, enable_sandbox_handoff: false, filesystem_snapshot_name: null };

let unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
beforeEach(() => {
  unhandled = [];
  process.on('unhandledRejection', onUnhandled);
});
afterEach(async () => {
  await tick(5);
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled, [], 'no unhandled rejections');
});

/** Runs executions like a tiny server: `echo:<text>` prints text; `sleep` waits to be told. */
function execScript(socket: FakeSocket, message: Record<string, unknown>): void {
  if (typeof message['language'] !== 'string') return;
  if (message['language'] !== 'bash' && message['language'] !== 'python') {
    socket.error('SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR', 'unsupported language: python, bash');
    return;
  }
  const code = String(message['code']);
  if (code === 'hang') return;
  socket.status('SANDBOX_EXECUTION_RUNNING');
  if (code.startsWith('echo:')) {
    socket.push({ event: 'stdout', data: code.slice(5) });
    socket.push({ event: 'stderr', data: 'e' });
    socket.status('SANDBOX_EXECUTION_DONE', { exit_code: 7, signal: null, reason: 'exited', duration_ms: 3 });
  }
}

describe('Sandbox (scripted server)', () => {
  it('asks for network egress only when enableNetwork is set', async () => {
    const server = new FakeServer({ message: execScript });
    const plain = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    assert.equal('enable_network' in (server.last.sent[0] as object), false);
    void plain.terminate();
    const networked = await Sandbox.create(URL_, { webSocket: server.WebSocket, enableNetwork: true });
    assert.deepEqual(server.last.sent[0], { ...INIT, enable_network: true });
    void networked.terminate();
  });

  it('creates with snake_case init keys, execs, and runs', async () => {
    const server = new FakeServer({ message: execScript });
    const statuses: string[] = [];
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      enableCheckpoint: false,
      idleTimeout: 60,
      filesystemSnapshotName: null,
      onStatus: (s) => statuses.push(s),
    });
    assert.equal(server.last.url, 'ws://fake.invalid:8080/create');
    assert.deepEqual(server.last.sent[0], { ...INIT, idle_timeout: 60 });
    assert.equal(sandbox.sandboxId, 'fake-sandbox-1');
    assert.equal(sandbox.sandboxToken, 'fake-token-1');
    assert.equal(sandbox.state, 'running');
    assert.deepEqual(statuses, ['SANDBOX_CREATING', 'SANDBOX_RUNNING']);

    const proc = await sandbox.exec('echo:hello\n', 'bash', { env: { A: 'b' }, cwd: '/tmp', timeout: 5 });
    assert.deepEqual(server.last.sent[1], {
      language: 'bash',
      code: 'echo:hello\n',
      env: { A: 'b' },
      cwd: '/tmp',
      timeout: 5,
    });
    assert.equal(await proc.stdout.readAll(), 'hello\n');
    assert.equal(await proc.wait(), 7);
    assert.equal(proc.reason, 'exited');

    const result = await sandbox.run('echo:x', 'python');
    assert.deepEqual(result, { stdout: 'x', stderr: 'e', exitCode: 7, reason: 'exited', signal: null, durationMs: 3 });
    await sandbox.terminate();
    assert.equal(sandbox.state, 'killed');
  });

  it('rejects an exec the server refuses with its message and status', async () => {
    const server = new FakeServer({ message: execScript });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    const error = await sandbox.exec('puts 1', 'ruby').then(
      () => assert.fail('exec should fail'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof SandboxExecutionError);
    assert.equal(error.status, 'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR');
    assert.equal(error.message, 'unsupported language: python, bash');
    assert.equal((await sandbox.run('echo:ok', 'bash')).stdout, 'ok');
    await sandbox.terminate();
  });

  it('terminate() without await sends kill_sandbox and settles without unhandled rejections', async () => {
    const server = new FakeServer({ message: execScript });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    void sandbox.terminate();
    assert.equal(sandbox.terminate(), sandbox.terminate(), 'same promise');
    await tick(10);
    assert.deepEqual(server.last.sent.at(-1), { action: 'kill_sandbox' });
    assert.equal(server.last.readyState, 3);
    assert.equal(sandbox.state, 'killed');
    await assert.rejects(sandbox.exec('echo:x', 'bash'), SandboxStateError);
  });

  it('terminate() gives up after requestTimeout when the server never answers', async () => {
    const server = new FakeServer({ message: () => undefined });
    server.message = (socket, message) => {
      if (new URL(socket.url).pathname === '/create') {
        socket.push({ event: 'sandbox_id', sandbox_id: 'x', sandbox_token: 't' });
        socket.status('SANDBOX_RUNNING');
      }
      void message;
    };
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket, requestTimeout: 0.1 });
    const started = Date.now();
    // Unawaited on purpose: the rejection must not be unhandled.
    void sandbox.terminate();
    await assert.rejects(sandbox.terminate(), SandboxTimeoutError);
    assert.ok(Date.now() - started < 2000);
  });

  it('rejects every pending promise when the connection is lost (no auto-reconnect)', async () => {
    const server = new FakeServer({ message: execScript });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    const running = await sandbox.exec('sleep', 'bash');
    const output = running.stdout.readAll();
    // One execution at a time on a protocol-1 server: a second is refused before the server sees it.
    await assert.rejects(sandbox.exec('echo:x', 'bash'), SandboxStateError);
    const snapshot = sandbox.snapshotFilesystem('s'); // no answer before the drop
    await tick(5);
    server.last.drop();
    await assert.rejects(running.wait(), SandboxConnectionError);
    await assert.rejects(output, SandboxConnectionError);
    await assert.rejects(snapshot, SandboxConnectionError);
    assert.equal(sandbox.state, 'closed');
    await assert.rejects(sandbox.exec('echo:x', 'bash'), /the connection to the sandbox is closed/);
  });

  it('maps setup failures to error classes with the server message', async () => {
    const cases: [string, number, new (...args: never[]) => Error][] = [
      ['SANDBOX_NOT_FOUND', 1011, SandboxNotFoundError],
      ['SANDBOX_IN_USE', 1011, SandboxInUseError],
      ['SANDBOX_PERMISSION_DENIAL_ERROR', 4000, SandboxPermissionError],
    ];
    for (const [status, code, cls] of cases) {
      const server = new FakeServer({
        connect: (socket) => {
          socket.open();
          socket.error(status, `${status} happened`);
          socket.serverClose(code);
        },
      });
      await assert.rejects(Sandbox.attach(URL_, 'abc', 'tok', { webSocket: server.WebSocket }), (e: unknown) => {
        assert.ok(e instanceof cls, `${status} -> ${cls.name}`);
        assert.equal(e.message, `${status} happened`);
        return true;
      });
    }
    const server = new FakeServer();
    server.message = (socket) => {
      socket.error('SANDBOX_CREATION_ERROR', 'checkpointing is not enabled on this server');
      // This server forgets to close: the client must not hang on it.
    };
    await assert.rejects(
      Sandbox.create(URL_, { webSocket: server.WebSocket, enableCheckpoint: true }),
      (e: unknown) => e instanceof SandboxCreationError && e.message.includes('not enabled'),
    );
    await tick(5);
    assert.equal(server.last.readyState, 3, 'client closed the socket');
  });

  it('rejects with a connection error when the server is unreachable or silent', async () => {
    const refusing = new FakeServer({ connect: (socket) => socket.refuse() });
    await assert.rejects(Sandbox.create(URL_, { webSocket: refusing.WebSocket }), SandboxConnectionError);
    const silent = new FakeServer({ connect: (socket) => socket.open() });
    silent.message = () => undefined;
    const started = Date.now();
    await assert.rejects(
      Sandbox.create(URL_, { webSocket: silent.WebSocket, requestTimeout: 0.1 }),
      (e: unknown) =>
        e instanceof SandboxTimeoutError && e.message === 'no answer from the server within 0.1s waiting for the sandbox to be ready',
    );
    assert.ok(Date.now() - started < 2000);
  });

  it('remembers the token from create for attach(url, id)', async () => {
    const server = new FakeServer({ message: execScript });
    server.sandboxId = 'remember-me';
    server.token = 's3cret/+';
    const s1 = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    await s1.disconnect();
    assert.equal(s1.state, 'closed');
    const s2 = await Sandbox.attach(URL_, 'remember-me', undefined, { webSocket: server.WebSocket });
    assert.equal(server.last.url, 'ws://fake.invalid:8080/attach/remember-me?sandbox_token=s3cret%2F%2B');
    assert.equal(s2.sandboxId, 'remember-me');
    assert.equal(s2.sandboxToken, 's3cret/+');
    await s2.terminate();
  });

  it('checkpoint() resolves after the server closes; terminate() then attaches and deletes', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'checkpoint') {
          for (const s of ['SANDBOX_CHECKPOINTING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_CHECKPOINTED']) {
            socket.status(s);
          }
          socket.serverClose(1000);
        }
      },
    });
    const s1 = await Sandbox.create(URL_, { webSocket: server.WebSocket, enableCheckpoint: true });
    await s1.checkpoint();
    assert.equal(s1.state, 'checkpointed');
    await assert.rejects(s1.snapshotFilesystem('x'), /was checkpointed/);
    await s1.terminate();
    assert.equal(server.sockets.length, 2);
    assert.match(server.last.url, /\/attach\/fake-sandbox-1\?sandbox_token=fake-token-1$/);
    assert.deepEqual(server.last.sent, [{ action: 'kill_sandbox' }]);
  });

  it('reports checkpoint errors and ends the session after the server closes with 4000', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'checkpoint') {
          socket.error('SANDBOX_CHECKPOINT_ERROR', 'checkpointing is not enabled');
          socket.serverClose(4000);
        }
      },
    });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket, autoReconnect: true });
    await assert.rejects(sandbox.checkpoint(), (e: unknown) => e instanceof SandboxCheckpointError && e.message === 'checkpointing is not enabled');
    await tick(5);
    assert.equal(sandbox.state, 'closed', 'a deliberate close is not a drop');
    assert.equal(server.sockets.length, 1);
  });

  it('rejects a checkpoint refused after CHECKPOINTING at once; the session continues', async () => {
    const refusal = 'cannot checkpoint: the sandbox has 2 open TCP connection(s), which runsc cannot save; close them and retry';
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'checkpoint') {
          socket.status('SANDBOX_CHECKPOINTING');
          socket.error('SANDBOX_CHECKPOINT_ERROR', refusal);
        } else {
          execScript(socket, message);
        }
      },
    });
    // A close timeout far beyond the test's patience: waiting for a close would hang here.
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket, enableCheckpoint: true, closeTimeout: 3600 });
    const t0 = Date.now();
    const error = await sandbox.checkpoint().then(
      () => assert.fail('expected a checkpoint error'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof SandboxCheckpointError);
    assert.equal(error.message, refusal);
    assert.equal(error.status, 'SANDBOX_CHECKPOINT_ERROR');
    assert.ok(Date.now() - t0 < 1000, 'not waiting for a close that does not come');
    assert.equal(sandbox.state, 'running');
    const proc = await sandbox.exec('echo:still here\n', 'bash');
    assert.equal(await proc.stdout.readAll(), 'still here\n');
    await sandbox.terminate();
    assert.equal(server.sockets.length, 1);
  });

  it('a checkpoint that fails after CHECKPOINTING with a close 4000 rejects, then ends the session', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'checkpoint') {
          socket.status('SANDBOX_CHECKPOINTING');
          socket.error('SANDBOX_CHECKPOINT_ERROR', 'runsc checkpoint failed');
          socket.serverClose(4000);
        }
      },
    });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket, autoReconnect: true });
    await assert.rejects(sandbox.checkpoint(), (e: unknown) => e instanceof SandboxCheckpointError && e.message === 'runsc checkpoint failed');
    await tick(5);
    assert.equal(sandbox.state, 'closed', 'a deliberate close is not a drop');
    assert.equal(server.sockets.length, 1);
  });

  it('a re-attach that restores the sandbox (server shut down) follows the execution there', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['code'] === 'ticks') {
          socket.status('SANDBOX_EXECUTION_RUNNING');
          socket.push({ event: 'stdout', data: 'tick 1\n' });
        } else if (message['action'] === 'reconnect') {
          // The restored session still runs the execution saved at the shutdown: it replays it.
          socket.status('SANDBOX_EXECUTION_RUNNING');
          socket.push({ event: 'stdout', data: 'tick 2\n' });
          socket.status('SANDBOX_EXECUTION_DONE', { exit_code: 0, signal: null, reason: 'exited', duration_ms: 5 });
        } else {
          execScript(socket, message);
        }
      },
    });
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      enableCheckpoint: true,
      autoReconnect: { initialDelay: 0.01, maxAttempts: 5 },
    });
    const proc = await sandbox.exec('ticks', 'bash');
    const output = proc.stdout.readAll();
    server.script.connect = (socket) => {
      // Another instance restores the checkpoint the shut-down one saved.
      socket.open();
      socket.status('SANDBOX_RESTORING');
      socket.status('SANDBOX_RUNNING');
    };
    server.sockets[0]?.status('SANDBOX_CHECKPOINTING');
    server.sockets[0]?.serverClose(1001, 'the server is shutting down');
    assert.equal(await proc.wait(), 0);
    assert.equal(await output, 'tick 1\ntick 2\n');
    assert.equal(sandbox.state, 'running');
    assert.equal(server.sockets.length, 2);
    assert.deepEqual(server.last.sent, [{ action: 'reconnect' }]);
    const after = await sandbox.exec('echo:after\n', 'bash');
    assert.equal(await after.stdout.readAll(), 'after\n');
    await sandbox.terminate();
  });

  it('re-attaches after a drop, replays output once, and flushes stdin written meanwhile', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['language'] !== undefined) {
          socket.status('SANDBOX_EXECUTION_RUNNING');
          socket.push({ event: 'stdout', data: '1\n' });
        } else if (message['action'] === 'reconnect') {
          socket.status('SANDBOX_EXECUTION_RUNNING');
          socket.push({ event: 'stdout', data: '2\n' });
        } else if (message['event'] === 'stdin') {
          socket.push({ event: 'stdout', data: `got ${String(message['data'])}` });
          socket.status('SANDBOX_EXECUTION_DONE', { exit_code: 0, signal: null, reason: 'exited', duration_ms: 1 });
        }
      },
    });
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      autoReconnect: { initialDelay: 0.05, maxDelay: 0.1, maxAttempts: 3 },
    });
    const proc = await sandbox.exec('count', 'bash');
    const output = proc.stdout.readAll();
    await tick(5);
    server.last.drop();
    await tick(0);
    assert.equal(sandbox.state, 'reconnecting');
    const written = proc.writeToStdin('x\n');
    assert.equal(await proc.wait(), 0);
    await written;
    assert.equal(await output, '1\n2\ngot x\n');
    assert.equal(server.sockets.length, 2);
    assert.equal(server.last.url, 'ws://fake.invalid:8080/attach/fake-sandbox-1?sandbox_token=fake-token-1');
    assert.deepEqual(server.last.sent, [{ action: 'reconnect' }, { event: 'stdin', data: 'x\n' }]);
    assert.equal(sandbox.state, 'running');
    await sandbox.terminate();
  });

  it('retries a re-attach refused with IN_USE, with growing delays, then gives up', async () => {
    const server = new FakeServer({ message: execScript });
    const attachTimes: number[] = [];
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      autoReconnect: { initialDelay: 0.05, maxDelay: 0.2, maxAttempts: 4 },
    });
    const proc = await sandbox.exec('sleep', 'bash');
    server.script = {
      connect: (socket) => {
        attachTimes.push(Date.now());
        socket.open();
        socket.error('SANDBOX_IN_USE', 'sandbox is in use');
        socket.serverClose(1011);
      },
    };
    const started = Date.now();
    server.sockets[0]?.drop();
    await assert.rejects(proc.wait(), (e: unknown) => {
      assert.ok(e instanceof SandboxConnectionError);
      assert.match(e.message, /could not re-attach: sandbox is in use/);
      assert.ok(e.cause instanceof SandboxInUseError);
      return true;
    });
    assert.equal(attachTimes.length, 4, 'maxAttempts attempts');
    const gaps = [started, ...attachTimes].slice(1).map((t, i) => t - ([started, ...attachTimes][i] ?? 0));
    // Jittered delays are at least half of 0.05, 0.1, 0.2, 0.2 s: never a tight loop.
    gaps.forEach((gap, i) => assert.ok(gap >= [20, 45, 95, 95][i]!, `gap ${i} = ${gap} ms`));
    assert.equal(sandbox.state, 'closed');
  });

  it('stops re-attaching at once when the sandbox is gone', async () => {
    const server = new FakeServer({ message: execScript });
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      autoReconnect: { initialDelay: 0.05, maxAttempts: 5 },
    });
    let attaches = 0;
    const proc = await sandbox.exec('sleep', 'bash');
    server.script = {
      connect: (socket) => {
        attaches++;
        socket.open();
        socket.error('SANDBOX_NOT_FOUND', 'sandbox fake-sandbox-1 not found');
        socket.serverClose(1011);
      },
    };
    server.sockets[0]?.drop();
    await assert.rejects(proc.wait(), /not found/);
    assert.equal(attaches, 1);
  });

  it('kills a process: FORCE_KILLED, then wait() gives the killed result', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'kill_process') {
          socket.status('SANDBOX_EXECUTION_FORCE_KILLED');
          socket.status('SANDBOX_EXECUTION_DONE', { exit_code: 137, signal: 9, reason: 'killed', duration_ms: 9 });
        } else execScript(socket, message);
      },
    });
    const sandbox = await Sandbox.create(URL_, { webSocket: server.WebSocket });
    const proc = await sandbox.exec('sleep', 'bash');
    await proc.kill();
    assert.equal(await proc.wait(), 137);
    assert.equal(proc.reason, 'killed');
    await proc.kill(); // already ended: nothing sent
    assert.equal(server.last.sent.filter((m) => m['action'] === 'kill_process').length, 1);
    await sandbox.terminate();
  });

  it('runs the README checkpoint and snapshot snippet exactly as written', async () => {
    const server = new FakeServer({
      message: (socket, message) => {
        if (message['action'] === 'checkpoint') {
          for (const st of ['SANDBOX_CHECKPOINTING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_CHECKPOINTED']) {
            socket.status(st);
          }
          socket.serverClose(1000);
        } else if (message['action'] === 'snapshot_filesystem') {
          socket.status('SANDBOX_FILESYSTEM_SNAPSHOT_CREATING');
          socket.status('SANDBOX_FILESYSTEM_SNAPSHOT_CREATED');
        }
      },
    });
    const url = URL_;
    const opts = { webSocket: server.WebSocket };

    const s1 = await Sandbox.create(url, { ...opts, enableCheckpoint: true });
    const id = s1.sandboxId;
    await s1.checkpoint();
    const s2 = await Sandbox.attach(url, id, undefined, opts);
    await s1.snapshotFilesystem('my-snapshot'); // s1's session ended: goes through s2's
    const s3 = await Sandbox.create(url, { ...opts, filesystemSnapshotName: 'my-snapshot' });

    assert.deepEqual(server.sockets[1]?.sent, [{ action: 'snapshot_filesystem', name: 'my-snapshot' }]);
    assert.deepEqual(server.sockets[2]?.sent[0], { ...INIT, filesystem_snapshot_name: 'my-snapshot' });
    await s1.terminate(); // also through s2's session
    assert.equal(s2.state, 'killed');
    assert.equal(s1.state, 'killed');
    await s3.terminate();
  });

  it('resumes the execution after a re-attach that first met IN_USE', async () => {
    const server = new FakeServer({ message: execScript });
    const sandbox = await Sandbox.create(URL_, {
      webSocket: server.WebSocket,
      autoReconnect: { initialDelay: 0.05, maxAttempts: 5 },
    });
    const proc = await sandbox.exec('sleep', 'bash');
    let attempts = 0;
    server.script = {
      connect: (socket) => {
        socket.open();
        if (++attempts === 1) {
          socket.error('SANDBOX_IN_USE', 'still held');
          socket.serverClose(1011);
        } else {
          socket.status('SANDBOX_RUNNING');
        }
      },
      message: (socket, message) => {
        if (message['action'] === 'reconnect') {
          socket.status('SANDBOX_EXECUTION_RUNNING');
          socket.push({ event: 'stdout', data: 'resumed\n' });
          socket.status('SANDBOX_EXECUTION_DONE', { exit_code: 0, signal: null, reason: 'exited', duration_ms: 1 });
        }
      },
    };
    server.sockets[0]?.drop();
    assert.equal(await proc.stdout.readAll(), 'resumed\n');
    assert.equal(await proc.wait(), 0);
    assert.equal(attempts, 2);
    assert.equal(sandbox.state, 'running');
    await sandbox.terminate();
  });
});

/**
 * A real local `ws` server (the fake WHATWG socket above cannot carry headers): `upgrade` decides
 * per request, by returning an HTTP status to refuse with, or undefined to accept and hand the
 * socket to `session`.
 */
async function localServer(
  upgrade: (request: IncomingMessage) => number | undefined,
  session: (socket: ServerSocket, request: IncomingMessage) => void,
): Promise<{ url: string; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ noServer: true });
  const server: Server = createServer();
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const refusal = upgrade(request);
    if (refusal !== undefined) {
      const body = JSON.stringify({ error: 'the api key in the authorization header is not valid' });
      socket.end(
        `HTTP/1.1 ${refusal} Refused\r\nContent-Type: application/json\r\nWWW-Authenticate: Bearer\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
    }
    wss.handleUpgrade(request, socket, head, (ws) => session(ws, request));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const statusFrame = (status: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ event: 'status_update', status, ...extra });

/** The server's side of /create (drops the socket after the first exec starts) and /attach. */
function scriptedSession(socket: ServerSocket, request: IncomingMessage): void {
  if (request.url === '/create') {
    socket.once('message', () => {
      socket.send(statusFrame('SANDBOX_CREATING'));
      socket.send(JSON.stringify({ event: 'sandbox_id', sandbox_id: 'sb-1', sandbox_token: 'tok-1' }));
      socket.send(statusFrame('SANDBOX_RUNNING'));
      socket.once('message', () => {
        socket.send(statusFrame('SANDBOX_EXECUTION_RUNNING'));
        setTimeout(() => socket.terminate(), 20); // the network fails
      });
    });
    return;
  }
  socket.send(statusFrame('SANDBOX_RUNNING'));
  socket.on('message', (data: Buffer) => {
    const message = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
    if (message['action'] === 'reconnect') {
      socket.send(statusFrame('SANDBOX_EXECUTION_DONE', { exit_code: 0, signal: null, reason: 'exited', duration_ms: 1 }));
    } else if (message['action'] === 'kill_sandbox') {
      for (const status of ['SANDBOX_KILLING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_KILLED']) {
        socket.send(statusFrame(status));
      }
      socket.close(1000);
    }
  });
}

describe('Sandbox (headers and API keys, local ws server)', () => {
  it('sends headers and the apiKey with every upgrade, re-attaches included', async () => {
    const seen: [string, string | undefined, string | undefined][] = [];
    const server = await localServer((request) => {
      const extra = request.headers['x-extra'];
      seen.push([request.url ?? '', request.headers.authorization, Array.isArray(extra) ? extra[0] : extra]);
      return undefined;
    }, scriptedSession);
    try {
      const sandbox = await Sandbox.create(server.url, {
        apiKey: 'k-123',
        headers: { 'X-Extra': 'yes' },
        autoReconnect: { initialDelay: 0.01, maxDelay: 0.05, maxAttempts: 3 },
      });
      const proc = await sandbox.exec('x', 'bash');
      assert.equal(await proc.wait(), 0);
      await sandbox.terminate();
      assert.deepEqual(seen, [
        ['/create', 'Bearer k-123', 'yes'],
        ['/attach/sb-1?sandbox_token=tok-1', 'Bearer k-123', 'yes'],
      ]);
    } finally {
      await server.close();
    }
  });

  for (const httpStatus of [401, 403]) {
    it(`maps a ${httpStatus} refusal to SandboxAuthenticationError with the server's message`, async () => {
      const server = await localServer(() => httpStatus, () => assert.fail('no upgrade'));
      try {
        for (const attempt of [
          Sandbox.create(server.url, { apiKey: 'wrong' }),
          Sandbox.attach(server.url, 'sb-1', 'tok-1', { headers: { Authorization: 'Bearer x' } }),
        ]) {
          await assert.rejects(attempt, (e: unknown) => {
            assert.ok(e instanceof SandboxAuthenticationError, String(e));
            assert.ok(!(e instanceof SandboxConnectionError));
            assert.equal(e.httpStatus, httpStatus);
            assert.match(e.message, new RegExp(`HTTP ${httpStatus}: the api key in the authorization header is not valid`));
            assert.doesNotMatch(e.message, /tok-1/, 'the sandbox token stays out of messages');
            return true;
          });
        }
      } finally {
        await server.close();
      }
    });
  }

  it('stops re-attaching at an authentication error', async () => {
    let attaches = 0;
    const server = await localServer((request) => {
      if (request.url === '/create') return undefined;
      attaches++;
      return 401;
    }, scriptedSession);
    try {
      const sandbox = await Sandbox.create(server.url, {
        apiKey: 'revoked-meanwhile',
        autoReconnect: { initialDelay: 0.01, maxDelay: 0.05, maxAttempts: 5 },
      });
      const proc = await sandbox.exec('x', 'bash');
      await assert.rejects(proc.wait(), (e: unknown) => {
        assert.ok(e instanceof SandboxAuthenticationError, String(e));
        assert.match(e.message, /could not re-attach/);
        return true;
      });
      assert.equal(attaches, 1, 'the same key is not tried again');
      assert.equal(sandbox.state, 'closed');
    } finally {
      await server.close();
    }
  });

  it('checks apiKey and headers before connecting', async () => {
    const url = 'ws://127.0.0.1:9';
    await assert.rejects(
      Sandbox.create(url, { apiKey: 'k', headers: { authorization: 'Bearer k' } }),
      /either apiKey or an Authorization header/,
    );
    await assert.rejects(Sandbox.create(url, { apiKey: '' }), /apiKey must be a non-empty string/);
    const server = new FakeServer({ message: execScript });
    await assert.rejects(
      Sandbox.create(URL_, { webSocket: server.WebSocket, apiKey: 'k' }),
      /need the "ws" package: a WHATWG WebSocket cannot send headers/,
    );
  });
});
