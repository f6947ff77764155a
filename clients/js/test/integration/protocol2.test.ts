/**
 * Protocol 2 end to end: concurrent processes, stdin with flow control, process handles, the idle
 * timeout while connected, replay after a reconnect. The twin of the Python suite's
 * test_protocol2.py. Each test runs twice:
 *
 * - `fake`: against clients/python/tests/protocol2_fake.py, a stand-in server speaking protocol 2
 *   with local subprocesses (it proves the client's side over real sockets). Skipped, with the
 *   reason, when no Python with `websockets` is found ($PYTHON, else clients/python/.venv).
 * - `live`: against the real server at $SANDBOX_TEST_URL. Skipped, with the reason, when the
 *   variable is unset or the server does not announce `"protocol": 2` in SANDBOX_RUNNING.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';

import { Sandbox, SandboxNotFoundError, SandboxRequestError } from '../../src/index.js';

const python = join(import.meta.dirname, '..', '..', '..', 'python');
const pythonBin = process.env['PYTHON'] ?? join(python, '.venv', 'bin', 'python');
const LIVE = process.env['SANDBOX_TEST_URL'] ?? '';

/** Sandboxes a test made, terminated whatever happens. */
class Made {
  readonly sandboxes: Sandbox[] = [];

  async create(url: string, options: Parameters<typeof Sandbox.create>[1] = {}): Promise<Sandbox> {
    const sandbox = await Sandbox.create(url, options);
    this.sandboxes.push(sandbox);
    return sandbox;
  }

  async attach(url: string, id: string): Promise<Sandbox> {
    const sandbox = await Sandbox.attach(url, id);
    this.sandboxes.push(sandbox);
    return sandbox;
  }

  async cleanup(): Promise<void> {
    for (const sandbox of this.sandboxes.reverse()) {
      await sandbox.terminate().catch((error: unknown) => {
        if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
      });
    }
  }
}

function suite(variant: 'fake' | 'live'): void {
  describe(`protocol 2 (${variant})`, () => {
    let url = '';
    let skip: string | false = false;
    let fake: ChildProcess | undefined;

    before(async () => {
      if (variant === 'fake') {
        const usable = existsSync(pythonBin) && spawnSync(pythonBin, ['-c', 'import websockets']).status === 0;
        if (!usable) {
          skip = `no Python with websockets at ${pythonBin} (set $PYTHON, or run clients/python/run-tests.sh first)`;
          return;
        }
        fake = spawn(pythonBin, [join(python, 'tests', 'protocol2_fake.py')], { stdio: ['ignore', 'pipe', 'inherit'] });
        const stdout = fake.stdout;
        assert.ok(stdout !== null);
        const lines = createInterface({ input: stdout });
        url = await new Promise<string>((resolve) => lines.once('line', resolve));
        return;
      }
      if (LIVE === '') {
        skip = 'SANDBOX_TEST_URL is not set: the live run needs a server (e.g. SANDBOX_TEST_URL=ws://127.0.0.1:8080)';
        return;
      }
      url = LIVE;
      const probe = await Sandbox.create(url);
      const announced = probe.protocol;
      await probe.terminate();
      if (announced < 2) {
        skip =
          `the server at ${url} does not announce protocol 2 (its SANDBOX_RUNNING has no "protocol": 2): ` +
          'concurrent processes, stdin flow control and process handles need it';
      }
    });

    after(() => {
      fake?.kill('SIGTERM');
    });

    /** A test that gets a `Made` cleaned up in a `finally`, skipped with the reason when it must. */
    function test(name: string, fn: (made: Made) => Promise<void>): void {
      it(name, { timeout: 180_000 }, async (t) => {
        if (skip !== false) {
          t.skip(skip);
          return;
        }
        const made = new Made();
        try {
          await fn(made);
        } finally {
          await made.cleanup();
        }
      });
    }

    test('ten concurrent runs each get their own output', async (made) => {
      const sandbox = await made.create(url);
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          sandbox.run(
            `for j in range(3):\n    print('run ${i} line', j, flush=True)\n    __import__('time').sleep(0.05)\nraise SystemExit(${i})`,
            'python',
          ),
        ),
      );
      results.forEach((result, i) => {
        assert.equal(result.stdout, [0, 1, 2].map((j) => `run ${i} line ${j}\n`).join(''));
        assert.equal(result.exitCode, i);
      });
    });

    test('16 MiB through stdin arrive byte for byte', async (made) => {
      const sandbox = await made.create(url);
      const data = randomBytes(16 * 1024 * 1024);
      const proc = await sandbox.exec(
        'import hashlib, sys\ndata = sys.stdin.buffer.read()\nprint(len(data), hashlib.sha256(data).hexdigest())',
        'python',
      );
      await proc.write(data);
      await proc.closeStdin();
      assert.equal(await proc.stdout.readAll(), `${data.length} ${createHash('sha256').update(data).digest('hex')}\n`);
      assert.equal(await proc.wait(), 0);
    });

    test('listProcesses and kill by handle', async (made) => {
      const sandbox = await made.create(url);
      const sleeper = await sandbox.exec('sleep 60', 'bash');
      const quick = await sandbox.exec('echo quick', 'bash');
      assert.equal(await quick.stdout.readAll(), 'quick\n');
      const listed = new Map((await sandbox.listProcesses()).map((info) => [info.processId, info]));
      const info = listed.get(sleeper.processId ?? -1);
      assert.ok(info !== undefined);
      assert.deepEqual([info.running, info.kind, info.language], [true, 'exec', 'bash']);
      await sleeper.kill();
      assert.equal(await sleeper.wait(), 137);
      assert.equal(sleeper.reason, 'killed');
    });

    test('a process is followed again after another client left', async (made) => {
      const first = await made.create(url);
      const proc = await first.exec('for i in 1 2 3 4; do echo $i; sleep 0.4; done; exit 5', 'bash');
      for await (const line of proc.stdout.lines()) {
        assert.equal(line, '1');
        break;
      }
      await first.disconnect();
      const second = await made.attach(url, first.sandboxId);
      const infos = await second.listProcesses();
      assert.deepEqual(
        infos.map((i) => i.processId),
        [proc.processId],
      );
      assert.ok(proc.processId !== null);
      const followed = await second.attachProcess(proc.processId);
      const lines: string[] = [];
      for await (const line of followed.stdout.lines()) lines.push(line);
      assert.equal(lines.at(-1), '4');
      assert.ok(!lines.includes('1'), 'already delivered to the first client');
      assert.equal(await followed.wait(), 5);
    });

    test('setIdleTimeout', async (made) => {
      const sandbox = await made.create(url, { idleTimeout: 60 });
      assert.equal(await sandbox.setIdleTimeout(600), 600);
      await assert.rejects(sandbox.setIdleTimeout(-1), (e: unknown) => e instanceof SandboxRequestError && e.message.includes('idle_timeout'));
      assert.equal((await sandbox.run('echo alive', 'bash')).stdout, 'alive\n');
    });

    test('reconnect replays every process', async (made) => {
      const { WebSocket } = await import('ws');
      const sockets: InstanceType<typeof WebSocket>[] = [];
      class Recording extends WebSocket {
        constructor(address: string, protocols?: string | string[]) {
          super(address, protocols);
          sockets.push(this);
        }
      }
      const sandbox = await made.create(url, {
        webSocket: Recording as unknown as NonNullable<Parameters<typeof Sandbox.create>[1]>['webSocket'],
        autoReconnect: { maxAttempts: 20, initialDelay: 0.05, maxDelay: 1 },
      });
      // Output starts after the drop: frames in flight when a connection drops are lost with it.
      const a = await sandbox.exec('sleep 0.5; for i in 1 2 3; do echo a$i; sleep 0.3; done', 'bash');
      const b = await sandbox.exec('sleep 0.5; for i in 1 2 3; do echo b$i; sleep 0.3; done', 'bash');
      sockets[0]?.terminate();
      const [outA, outB] = await Promise.all([a.stdout.readAll(), b.stdout.readAll()]);
      assert.equal(outA, 'a1\na2\na3\n');
      assert.equal(outB, 'b1\nb2\nb3\n');
    });
  });
}

suite('fake');
suite('live');
