/**
 * Integration tests against a live server at $SANDBOX_TEST_URL (e.g. ws://127.0.0.1:8080), a
 * server WITHOUT checkpointing and snapshots (their tests expect the "not enabled" answers; see
 * persistence.test.ts for the real thing). Skipped, with the reason, when it is not set. Every test deletes the sandboxes it made, also
 * when it fails (the `track` helper + afterEach).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { WebSocket as WsWebSocket } from 'ws';

import {
  type CreateOptions,
  Sandbox,
  SandboxCheckpointError,
  SandboxConnectionError,
  SandboxCreationError,
  SandboxError,
  SandboxExecutionError,
  SandboxInUseError,
  SandboxNotFoundError,
  SandboxPermissionError,
  SandboxSnapshotError,
  SandboxStateError,
  type WebSocketConstructor,
} from '../../src/index.js';

const URL_ = process.env['SANDBOX_TEST_URL'];
const skip = URL_ === undefined || URL_ === '' ? 'SANDBOX_TEST_URL is not set (e.g. ws://127.0.0.1:8080)' : false;
const url = URL_ ?? '';
/** A live-server test: skipped, with the reason, when SANDBOX_TEST_URL is not set. */
function live(name: string, fn: () => Promise<void>): void {
  it(name, { skip, timeout: 180_000 }, fn);
}
const here = dirname(fileURLToPath(import.meta.url));

const made: Sandbox[] = [];
/** Remembers a sandbox so that afterEach deletes it whatever happens in the test. */
function track(sandbox: Sandbox): Sandbox {
  made.push(sandbox);
  return sandbox;
}
async function create(options: CreateOptions = {}): Promise<Sandbox> {
  return track(await Sandbox.create(url, options));
}
afterEach(async () => {
  for (const sandbox of made.splice(0)) {
    await sandbox.terminate().catch((error: unknown) => {
      // Already gone is fine; anything else is worth seeing but must not hide the test's result.
      if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
    });
  }
});

/** A `ws` WebSocket that records its instances, so a test can cut one abruptly. */
function recordingWebSocket(): { WebSocket: WebSocketConstructor; sockets: WsWebSocket[] } {
  const sockets: WsWebSocket[] = [];
  class Recording extends WsWebSocket {
    constructor(address: string, protocols?: string | string[]) {
      super(address, protocols);
      sockets.push(this);
    }
  }
  return { WebSocket: Recording as unknown as WebSocketConstructor, sockets };
}

async function expectError<T extends SandboxError>(
  promise: Promise<unknown>,
  cls: abstract new (...args: never[]) => T,
): Promise<T> {
  const error = await promise.then(
    () => assert.fail(`expected ${cls.name}`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof cls, `expected ${cls.name}, got ${String(error)}`);
  assert.ok(error.message.length > 0, 'the error carries a message');
  return error;
}

describe('integration: live server', () => {
  live('lists sandboxes with their labels and never a token', async () => {
    const sandbox = await create({ labels: { test: 'list' } });
    const listed = await Sandbox.list(url);
    const info = listed.sandboxes.find((entry) => entry.sandboxId === sandbox.sandboxId);
    assert.equal(info?.state, 'running');
    assert.deepEqual(info.labels, { test: 'list' });
    assert.equal(info.attached, true);
    assert.equal(info.checkpointed, false);
    assert.equal(listed.nextAfter, null);
    assert.equal(JSON.stringify(listed).includes(sandbox.sandboxToken ?? 'no token'), false);
    await assert.rejects(create({ labels: { 'bad key': 'x' } }), (error: unknown) => error instanceof SandboxCreationError && error.message.includes('labels'));
  });

  live('runs the README quick start exactly as written (terminate without await)', async () => {
    const sandbox = await Sandbox.create(url);
    const process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash");
    const stdout = await process.stdout.readAll();
    // eslint-disable-next-line @typescript-eslint/no-floating-promises -- the README's line, as written
    sandbox.terminate();
    assert.equal(stdout, 'Hello from the sandbox!\n');
    const id = sandbox.sandboxId;
    const token = sandbox.sandboxToken;
    assert.ok(id.length > 0);
    assert.ok(token !== undefined && token.length > 0);
    await sandbox.terminate(); // the same promise; it resolves once the server closed
    assert.equal(sandbox.state, 'killed');
    await expectError(Sandbox.attach(url, id, token), SandboxNotFoundError);
  });

  live('reports the documented status order for create, exec, kill_process and kill_sandbox', async () => {
    const statuses: string[] = [];
    const sandbox = await create({ onStatus: (s) => statuses.push(s) });
    assert.deepEqual(statuses.splice(0), ['SANDBOX_CREATING', 'SANDBOX_RUNNING']);
    await (await sandbox.exec('true', 'bash')).wait();
    assert.deepEqual(statuses.splice(0), ['SANDBOX_EXECUTION_RUNNING', 'SANDBOX_EXECUTION_DONE']);
    const proc = await sandbox.exec('sleep 30', 'bash');
    await proc.kill();
    await proc.wait();
    assert.deepEqual(statuses.splice(0), [
      'SANDBOX_EXECUTION_RUNNING',
      'SANDBOX_EXECUTION_FORCE_KILLED',
      'SANDBOX_EXECUTION_DONE',
    ]);
    await sandbox.terminate();
    assert.deepEqual(statuses.splice(0), ['SANDBOX_KILLING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_KILLED']);
  });

  live('execs bash and python with separate stdout and stderr, in one persistent sandbox', async () => {
    const sandbox = await create();
    const bash = await sandbox.exec('echo out; echo err >&2; echo more', 'bash');
    const [out, err, code] = await Promise.all([bash.stdout.readAll(), bash.stderr.readAll(), bash.wait()]);
    assert.equal(out, 'out\nmore\n');
    assert.equal(err, 'err\n');
    assert.equal(code, 0);
    assert.equal(bash.exitCode, 0);
    assert.equal(bash.reason, 'exited');

    await sandbox.run("echo 'kept' > /tmp/state.txt", 'bash');
    const py = await sandbox.run(
      "import sys\nprint(open('/tmp/state.txt').read().strip())\nprint('to stderr', file=sys.stderr)",
      'python',
    );
    assert.equal(py.stdout, 'kept\n');
    assert.equal(py.stderr, 'to stderr\n');
    assert.equal(py.exitCode, 0);
  });

  live('streams output chunks in order with for await', async () => {
    const sandbox = await create();
    const proc = await sandbox.exec('for i in 1 2 3; do echo "line $i"; sleep 0.1; done', 'bash');
    let text = '';
    let chunks = 0;
    for await (const chunk of proc.stdout) {
      text += chunk;
      chunks++;
    }
    assert.equal(text, 'line 1\nline 2\nline 3\n');
    assert.ok(chunks >= 2, `output arrived as it was produced (${chunks} chunks)`);
    assert.equal(await proc.wait(), 0);
  });

  live('returns non-zero exit codes as data, not errors', async () => {
    const sandbox = await create();
    assert.equal((await sandbox.run('exit 3', 'bash')).exitCode, 3);
    const py = await sandbox.run('import sys; sys.exit(5)', 'python');
    assert.deepEqual([py.exitCode, py.reason], [5, 'exited']);
    const raised = await sandbox.run("raise ValueError('boom')", 'python');
    assert.equal(raised.exitCode, 1);
    assert.match(raised.stderr, /ValueError: boom/);
    const selfKilled = await sandbox.run('kill -TERM $$', 'bash');
    assert.deepEqual([selfKilled.exitCode, selfKilled.signal, selfKilled.reason], [143, 15, 'signaled']);
  });

  live('writes stdin and closes it', async () => {
    const sandbox = await create();
    const proc = await sandbox.exec(
      "name = input()\nprint(f'Hello, {name}', flush=True)\nimport sys\nrest = sys.stdin.read()\nprint(len(rest))",
      'python',
    );
    await proc.writeToStdin('World\n');
    await proc.writeToStdin(new Uint8Array([0x61, 0x62, 0x0a]));
    await proc.closeStdin();
    assert.equal(await proc.stdout.readAll(), 'Hello, World\n3\n');
    assert.equal(await proc.wait(), 0);
    await expectError(proc.writeToStdin('late'), SandboxStateError);
  });

  live('kills a running process', async () => {
    const sandbox = await create();
    const proc = await sandbox.exec('echo started; sleep 60', 'bash');
    const first = await proc.stdout[Symbol.asyncIterator]().next();
    assert.equal(first.value, 'started\n');
    const t0 = Date.now();
    await proc.kill();
    const code = await proc.wait();
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(proc.reason, 'killed');
    assert.equal(code, 137);
    assert.equal(proc.signal, 9);
    assert.equal((await sandbox.run('echo alive', 'bash')).stdout, 'alive\n');
  });

  live('passes env, cwd and timeout, and reports a timeout', async () => {
    const sandbox = await create();
    const r = await sandbox.run('echo "$GREETING"; pwd', 'bash', { env: { GREETING: 'hi there' }, cwd: '/tmp' });
    assert.equal(r.stdout, 'hi there\n/tmp\n');
    const home = await sandbox.run('import os; print(os.getcwd(), os.environ["HOME"])', 'python');
    assert.equal(home.stdout, '/root /root\n');
    const t0 = Date.now();
    const slow = await sandbox.run('sleep 30', 'bash', { timeout: 1 });
    assert.equal(slow.reason, 'timeout');
    assert.ok(Date.now() - t0 < 15_000);
  });

  live('returns exact bytes with binary output', async () => {
    const sandbox = await create();
    const proc = await sandbox.exec("printf '\\377\\000\\342\\202\\254'", 'bash', { outputEncoding: 'base64' });
    assert.deepEqual(await proc.stdout.readAllBytes(), new Uint8Array([0xff, 0x00, 0xe2, 0x82, 0xac]));
    const text = await sandbox.exec("printf '\\342\\202\\254'", 'bash', { outputEncoding: 'base64' });
    assert.equal(await text.stdout.readAll(), '€');
  });

  live('rejects an unsupported language with the server message; the session stays usable', async () => {
    const sandbox = await create();
    const error = await expectError(sandbox.exec('puts 1', 'ruby'), SandboxExecutionError);
    assert.equal(error.status, 'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR');
    assert.match(error.message, /python/);
    assert.match(error.message, /bash/);
    assert.equal((await sandbox.run('echo ok', 'bash')).stdout, 'ok\n');
  });

  live('refuses a second exec while one runs on a protocol-1 server, before asking it; the first continues', async () => {
    const sandbox = await create();
    if (sandbox.protocol >= 2) return; // several processes at once: protocol2.test.ts
    const first = await sandbox.exec('sleep 1; echo first', 'bash');
    const error = await expectError(sandbox.exec('echo second', 'bash'), SandboxStateError);
    assert.match(error.message, /already running/);
    assert.equal(await first.stdout.readAll(), 'first\n');
    assert.equal(await first.wait(), 0);
  });

  live('calls onStdout / onStderr as output arrives, and iterates lines', async () => {
    const sandbox = await create();
    const out: string[] = [];
    const err: string[] = [];
    const proc = await sandbox.exec('for i in 1 2 3; do echo out $i; echo err $i >&2; done; printf tail', 'bash', {
      onStdout: (text) => out.push(text),
      onStderr: (text) => err.push(text),
    });
    const lines: string[] = [];
    for await (const line of proc.stdout.lines()) lines.push(line);
    assert.deepEqual(lines, ['out 1', 'out 2', 'out 3', 'tail']);
    assert.equal(await proc.wait(), 0);
    assert.equal(out.join(''), 'out 1\nout 2\nout 3\ntail');
    assert.equal(err.join(''), 'err 1\nerr 2\nerr 3\n');
  });

  live('run() takes stdin and closes it: print(input()) does not hang', async () => {
    const sandbox = await create();
    const echoed = await sandbox.run('print(input())', 'python', { stdin: 'hello\n' });
    assert.deepEqual([echoed.stdout, echoed.exitCode], ['hello\n', 0]);
    const eof = await sandbox.run('print(input())', 'python');
    assert.equal(eof.exitCode, 1);
    assert.match(eof.stderr, /EOFError/);
  });

  live('refuses a wrong token, an unknown id, and a second client', async () => {
    const sandbox = await create();
    const denied = await expectError(Sandbox.attach(url, sandbox.sandboxId, 'not-the-token'), SandboxPermissionError);
    assert.equal(denied.status, 'SANDBOX_PERMISSION_DENIAL_ERROR');
    await expectError(Sandbox.attach(url, sandbox.sandboxId, ''), SandboxPermissionError);
    const missing = await expectError(Sandbox.attach(url, 'no-such-sandbox-0000', 'x'), SandboxNotFoundError);
    assert.equal(missing.status, 'SANDBOX_NOT_FOUND');
    const busy = await expectError(Sandbox.attach(url, sandbox.sandboxId), SandboxInUseError);
    assert.equal(busy.status, 'SANDBOX_IN_USE');
    // The first client is not disturbed.
    assert.equal((await sandbox.run('echo still mine', 'bash')).stdout, 'still mine\n');
  });

  live('attaches again with the remembered token after disconnect, and terminate() deletes it', async () => {
    const s1 = await create();
    await s1.run('echo persisted > /root/keep.txt', 'bash');
    await s1.disconnect();
    assert.equal(s1.state, 'closed');
    await expectError(s1.exec('true', 'bash'), SandboxStateError);
    const s2 = track(await Sandbox.attach(url, s1.sandboxId));
    assert.equal((await s2.run('cat /root/keep.txt', 'bash')).stdout, 'persisted\n');
    await s2.disconnect();
    await s1.terminate(); // attaches and deletes
    await expectError(Sandbox.attach(url, s1.sandboxId, s1.sandboxToken), SandboxNotFoundError);
  });

  live('rejects pending waits with a connection error when the socket is cut (no auto-reconnect)', async () => {
    const recording = recordingWebSocket();
    const sandbox = await create({ webSocket: recording.WebSocket });
    const proc = await sandbox.exec('sleep 30', 'bash');
    recording.sockets[0]?.terminate();
    await expectError(proc.wait(), SandboxConnectionError);
    assert.equal(sandbox.state, 'closed');
  });

  live('reconnects after a dropped connection and delivers all output exactly once', async () => {
    const recording = recordingWebSocket();
    const statuses: string[] = [];
    const sandbox = await create({
      webSocket: recording.WebSocket,
      autoReconnect: { initialDelay: 0.1, maxDelay: 1, maxAttempts: 10 },
      onStatus: (s) => statuses.push(s),
    });
    const proc = await sandbox.exec('for i in 1 2 3 4 5; do echo "line $i"; sleep 0.3; done', 'bash');
    const iterator = proc.stdout[Symbol.asyncIterator]();
    let text = '';
    const first = await iterator.next();
    text += String(first.value);
    assert.equal(text, 'line 1\n');
    recording.sockets[0]?.terminate(); // abrupt: no closing handshake
    for (let r = await iterator.next(); r.done !== true; r = await iterator.next()) text += r.value;
    assert.equal(text, 'line 1\nline 2\nline 3\nline 4\nline 5\n');
    assert.equal(await proc.wait(), 0);
    assert.ok(recording.sockets.length >= 2, 're-attached on a new socket');
    assert.match(recording.sockets.at(-1)?.url ?? '', /\/attach\/[^?]+\?sandbox_token=/);
    assert.equal(sandbox.state, 'running');
    assert.equal((await sandbox.run('echo after', 'bash')).stdout, 'after\n');
  });

  live('queues stdin written while reconnecting and sends it after', async () => {
    const recording = recordingWebSocket();
    const sandbox = await create({
      webSocket: recording.WebSocket,
      autoReconnect: { initialDelay: 0.1, maxDelay: 1, maxAttempts: 10 },
    });
    const proc = await sandbox.exec(
      "import sys\nprint('ready', flush=True)\nprint('got', sys.stdin.readline().strip(), flush=True)",
      'python',
    );
    const iterator = proc.stdout[Symbol.asyncIterator]();
    // Python's unbuffered print writes the text and its newline apart: one chunk or two.
    let ready = '';
    for (let r = await iterator.next(); r.done !== true; r = await iterator.next()) {
      ready += r.value;
      if (ready.endsWith('\n')) break;
    }
    assert.equal(ready, 'ready\n');
    recording.sockets[0]?.terminate();
    // Written while the client learns of the drop / re-attaches: queued, sent after `reconnect`.
    await proc.writeToStdin('hello\n');
    let rest = '';
    for (let r = await iterator.next(); r.done !== true; r = await iterator.next()) rest += r.value;
    assert.equal(rest, 'got hello\n');
    assert.equal(await proc.wait(), 0);
  });

  live('checkpointing not enabled: creation error; checkpoint() on a plain sandbox ends only the session', async () => {
    const creation = await expectError(create({ enableCheckpoint: true }), SandboxCreationError);
    assert.equal(creation.status, 'SANDBOX_CREATION_ERROR');
    assert.match(creation.message, /checkpointing is not enabled/);
    await expectError(create({ enableIdleTimeoutAutoCheckpoint: true }), SandboxCreationError);
    // The action on a sandbox created without it fails too, and ends this session only.
    const plain = await create();
    await plain.run('echo survived > /root/s.txt', 'bash');
    const refused = await expectError(plain.checkpoint(), SandboxCheckpointError);
    assert.equal(refused.status, 'SANDBOX_CHECKPOINT_ERROR');
    assert.match(refused.message, /not enabled/);
    assert.equal(plain.state, 'closed');
    const again = track(await Sandbox.attach(url, plain.sandboxId));
    assert.equal((await again.run('cat /root/s.txt', 'bash')).stdout, 'survived\n');
  });

  live('snapshots not enabled: SnapshotError (the session continues) and a creation error', async () => {
    const name = `js-test-${Date.now()}`;
    const s1 = await create();
    const error = await expectError(s1.snapshotFilesystem(name), SandboxSnapshotError);
    assert.equal(error.status, 'SANDBOX_FILESYSTEM_SNAPSHOT_ERROR');
    assert.match(error.message, /filesystem snapshots are not enabled/);
    assert.equal(s1.state, 'running');
    assert.equal((await s1.run('echo session continues', 'bash')).stdout, 'session continues\n');
    const creation = await expectError(create({ filesystemSnapshotName: name }), SandboxCreationError);
    assert.match(creation.message, /not enabled/);
    assert.ok(creation.message.includes(name), creation.message);
  });

  live('runs the TypeScript examples (terminal included; checkpoint/snapshot end with the "not enabled" message, never hang)', async () => {
    const tsx = join(here, '..', '..', 'node_modules', '.bin', 'tsx');
    const run = (file: string): Promise<{ code: number; out: string }> =>
      new Promise((resolve) => {
        execFile(
          tsx,
          ['--tsconfig', join(here, '..', '..', 'tsconfig.examples.json'), join(here, '..', '..', '..', '..', 'example', file), url],
          { timeout: 120_000 },
          (error, stdout, stderr) => {
            const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
            resolve({ code, out: stdout + stderr });
          },
        );
      });
    const main = await run('client_example.ts');
    assert.equal(main.code, 0, main.out);
    assert.match(main.out, /Hello from the sandbox!/);
    const terminal = await run('terminal.ts');
    assert.equal(terminal.code, 0, terminal.out);
    assert.match(terminal.out, /on \/dev\/pts\/\d+; size and isatty: 24 80 True/);
    assert.match(terminal.out, /after resize: 40 120/);
    assert.match(terminal.out, /the shell exited with code 3/);
    for (const file of ['checkpoint.ts', 'filesystem_snapshot.ts']) {
      const result = await run(file);
      assert.equal(result.code, 1, result.out);
      assert.match(result.out, /not enabled/, `${file}: ${result.out}`);
    }
  });
});
