/**
 * Checkpoint/restore and filesystem snapshots across two live server instances.
 *
 * Needs SANDBOX_TEST_PERSISTENT_URL and SANDBOX_TEST_PERSISTENT_URL_2: two servers sharing
 * CHECKPOINT_AND_RESTORE_PATH and FILESYSTEM_SNAPSHOT_PATH (scripts/test.sh starts them).
 * Skipped, with that reason, when they are not set. Sandboxes are checkpointed on the first (`A`)
 * and restored on the second (`B`); snapshots are taken on `A` and used on `B`. Every test
 * terminates its sandboxes and deletes its snapshots (`DELETE /snapshots/{name}`) in a `finally`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  Sandbox,
  SandboxCheckpointError,
  SandboxCreationError,
  SandboxError,
  SandboxInUseError,
  SandboxNotFoundError,
  SandboxPermissionError,
  SandboxSnapshotError,
  SandboxStateError,
} from '../../src/index.js';

const A = process.env['SANDBOX_TEST_PERSISTENT_URL'] ?? '';
const B = process.env['SANDBOX_TEST_PERSISTENT_URL_2'] ?? '';
const skip =
  A === '' || B === ''
    ? 'SANDBOX_TEST_PERSISTENT_URL and SANDBOX_TEST_PERSISTENT_URL_2 are not set: these tests need two servers ' +
      'sharing CHECKPOINT_AND_RESTORE_PATH and FILESYSTEM_SNAPSHOT_PATH (scripts/test.sh starts them)'
    : false;
const here = dirname(fileURLToPath(import.meta.url));

/** What a test made, removed by `cleanup` whatever happened. */
class Made {
  readonly sandboxes: Sandbox[] = [];
  readonly snapshots: string[] = [];

  add(sandbox: Sandbox): Sandbox {
    this.sandboxes.push(sandbox);
    return sandbox;
  }

  /** A fresh snapshot name (removed at the end). */
  snapshot(): string {
    const name = `js-test-${Date.now()}-${randomBytes(3).toString('hex')}`;
    this.snapshots.push(name);
    return name;
  }

  async cleanup(): Promise<void> {
    // A handle whose session ended forwards to a live one, or attaches to delete (restoring a
    // checkpointed sandbox first), so terminating every handle removes every saved state.
    for (const sandbox of this.sandboxes.reverse()) {
      await sandbox.terminate().catch((error: unknown) => {
        if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
      });
    }
    for (const name of this.snapshots) {
      const response = await deleteSnapshot(A, name);
      if (response.status !== 200 && response.status !== 404) {
        console.error(`cleanup of snapshot ${name}: ${response.status} ${await response.text()}`);
      }
    }
  }
}

/** A live-persistence test: `fn` gets a `Made` that is cleaned up in a `finally`. */
function live(name: string, fn: (made: Made) => Promise<void>): void {
  it(name, { skip, timeout: 240_000 }, async () => {
    const made = new Made();
    try {
      await fn(made);
    } finally {
      await made.cleanup();
    }
  });
}

function httpUrl(base: string): string {
  return base.replace(/^ws(s?):\/\//, 'http$1://').replace(/\/+$/, '');
}

function deleteSnapshot(url: string, name: string): Promise<Response> {
  return fetch(`${httpUrl(url)}/snapshots/${encodeURIComponent(name)}`, { method: 'DELETE' });
}

async function listSnapshots(url: string): Promise<string[]> {
  const response = await fetch(`${httpUrl(url)}/snapshots`);
  assert.equal(response.status, 200);
  const body = (await response.json()) as { snapshots: { name: string }[] };
  return body.snapshots.map((s) => s.name);
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

/**
 * A background process writing an increasing number to /root/count every 0.1 s; the line waits
 * until it has counted a little and prints the count.
 */
const COUNTER = `nohup python3 -c "
import itertools, os, time
for i in itertools.count():
    open('/root/count.tmp', 'w').write(str(i))
    os.replace('/root/count.tmp', '/root/count')
    time.sleep(0.1)
" >/dev/null 2>&1 &
until [ "$(cat /root/count 2>/dev/null || echo 0)" -ge 3 ]; do sleep 0.1; done
cat /root/count`;

/** A background process holding a TCP connection to itself on 127.0.0.1; prints its pid. */
const OPEN_TCP = `nohup python3 -c "
import os, socket, time
server = socket.socket()
server.bind(('127.0.0.1', 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
accepted, _ = server.accept()
open('/tmp/tcp.pid.tmp', 'w').write(str(os.getpid()))
os.replace('/tmp/tcp.pid.tmp', '/tmp/tcp.pid')
time.sleep(3600)
" >/dev/null 2>&1 &
until [ -s /tmp/tcp.pid ]; do sleep 0.1; done
cat /tmp/tcp.pid`;

async function count(sandbox: Sandbox): Promise<number> {
  const result = await sandbox.run('cat /root/count', 'bash');
  assert.equal(result.exitCode, 0, result.stderr);
  return Number(result.stdout.trim());
}

describe('integration: checkpoint/restore and snapshots across two instances', () => {
  live('checkpoint() on A, Sandbox.attach(B, id): processes keep running, files are there, exec and stdin work', async (made) => {
    const statuses: string[] = [];
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true, onStatus: (s) => statuses.push(s) }));
    const id = s1.sandboxId;
    await s1.run("echo 'written before' > /root/before.txt", 'bash');
    const before = Number((await s1.run(COUNTER, 'bash')).stdout.trim());
    assert.ok(before >= 3, `counting before the checkpoint (${before})`);
    statuses.length = 0;
    await s1.checkpoint();
    assert.deepEqual(statuses, ['SANDBOX_CHECKPOINTING', 'SANDBOX_DELETING', 'SANDBOX_DELETED', 'SANDBOX_CHECKPOINTED']);
    assert.equal(s1.state, 'checkpointed');
    await expectError(s1.exec('true', 'bash'), SandboxStateError);

    const restoring: string[] = [];
    const s2 = made.add(await Sandbox.attach(B, id, undefined, { onStatus: (s) => restoring.push(s) }));
    assert.deepEqual(restoring, ['SANDBOX_RESTORING', 'SANDBOX_RUNNING']);
    assert.equal(s2.sandboxId, id);
    assert.equal(s2.sandboxToken, s1.sandboxToken, 'the token remembered in this process');
    assert.equal((await s2.run('cat /root/before.txt', 'bash')).stdout, 'written before\n');
    const first = await count(s2);
    assert.ok(first >= before, `the counter went on from where it was (${before} -> ${first})`);
    await s2.run('sleep 1', 'bash');
    const later = await count(s2);
    assert.ok(later > first, `the restored process keeps counting (${first} -> ${later})`);

    const proc = await s2.exec("import sys\nname = input()\nprint(f'Hello, {name}', flush=True)\nprint(len(sys.stdin.read()))", 'python');
    await proc.writeToStdin('World\n');
    await proc.writeToStdin('abc');
    await proc.closeStdin();
    assert.equal(await proc.stdout.readAll(), 'Hello, World\n3\n');
    assert.equal(await proc.wait(), 0);
  });

  live('a wrong token is refused and restores nothing; the right token still works afterwards', async (made) => {
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true }));
    await s1.run('echo kept > /root/kept.txt', 'bash');
    await s1.checkpoint();
    const statuses: string[] = [];
    const denied = await expectError(
      Sandbox.attach(B, s1.sandboxId, 'not-the-token', { onStatus: (s) => statuses.push(s) }),
      SandboxPermissionError,
    );
    assert.equal(denied.status, 'SANDBOX_PERMISSION_DENIAL_ERROR');
    assert.ok(!statuses.includes('SANDBOX_RESTORING'), `nothing restored: ${statuses.join(', ')}`);
    await expectError(Sandbox.attach(B, s1.sandboxId, ''), SandboxPermissionError);
    // The refused attach took no lease on B: the right token restores at once, even on A.
    const s2 = made.add(await Sandbox.attach(A, s1.sandboxId));
    assert.equal((await s2.run('cat /root/kept.txt', 'bash')).stdout, 'kept\n');
  });

  live('two concurrent attaches of one checkpointed sandbox (one per instance): one wins, the other is in use', async (made) => {
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true }));
    await s1.run('echo once > /root/once.txt', 'bash');
    await s1.checkpoint();
    const results = await Promise.allSettled([Sandbox.attach(A, s1.sandboxId), Sandbox.attach(B, s1.sandboxId)]);
    for (const result of results) if (result.status === 'fulfilled') made.add(result.value);
    const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const lost = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    assert.equal(won.length, 1, `exactly one attach succeeds: ${lost.map(String).join('; ')}`);
    assert.equal(lost.length, 1);
    assert.ok(lost[0] instanceof SandboxInUseError, `the other is in use: ${String(lost[0])}`);
    assert.equal(lost[0].status, 'SANDBOX_IN_USE');
    assert.equal((await won[0]?.run('cat /root/once.txt', 'bash'))?.stdout, 'once\n');
  });

  live('checkpoint while a process runs: in-progress error, the session and the process continue', async (made) => {
    const statuses: string[] = [];
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true, onStatus: (s) => statuses.push(s) }));
    const proc = await s1.exec("print('got', input(), flush=True)", 'python');
    statuses.length = 0;
    const busy = await expectError(s1.checkpoint(), SandboxStateError);
    assert.equal(busy.status, 'SANDBOX_EXECUTION_IN_PROGRESS_ERROR');
    assert.deepEqual(statuses, ['SANDBOX_CHECKPOINTING', 'SANDBOX_EXECUTION_IN_PROGRESS_ERROR']);
    assert.equal(s1.state, 'running');
    await proc.writeToStdin('input\n');
    assert.equal(await proc.stdout.readAll(), 'got input\n');
    assert.equal(await proc.wait(), 0);
    assert.equal((await s1.run('echo continues', 'bash')).stdout, 'continues\n');
  });

  live('checkpoint refused up front (open TCP connections): CheckpointError with the message, the session continues', async (made) => {
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true }));
    const pid = (await s1.run(OPEN_TCP, 'bash')).stdout.trim();
    assert.match(pid, /^\d+$/);
    const t0 = Date.now();
    const refused = await expectError(s1.checkpoint(), SandboxCheckpointError);
    assert.ok(Date.now() - t0 < 10_000, 'answered at once, not after a close timeout');
    assert.equal(refused.status, 'SANDBOX_CHECKPOINT_ERROR');
    assert.match(refused.message, /open TCP connection/);
    assert.equal(s1.state, 'running');
    assert.equal((await s1.run(`kill -0 ${pid} && echo still running`, 'bash')).stdout, 'still running\n');
    assert.equal((await s1.run('echo continues', 'bash')).stdout, 'continues\n');
  });

  live('snapshotFilesystem(name) on A, Sandbox.create(B, { filesystemSnapshotName }): files, new id and token, no processes', async (made) => {
    const name = made.snapshot();
    const s1 = made.add(await Sandbox.create(A));
    await s1.run('mkdir -p /root/project && echo from-snapshot > /root/project/data.txt', 'bash');
    await s1.run('nohup sleep 4242 >/dev/null 2>&1 &', 'bash');
    await s1.snapshotFilesystem(name);
    assert.equal(s1.state, 'running', 'the session continues');
    // The original keeps its files and its processes.
    assert.equal((await s1.run('cat /root/project/data.txt; pgrep -x sleep >/dev/null && echo sleeping', 'bash')).stdout, 'from-snapshot\nsleeping\n');
    assert.ok((await listSnapshots(B)).includes(name), 'GET /snapshots on the other instance lists it');

    const s3 = made.add(await Sandbox.create(B, { filesystemSnapshotName: name }));
    assert.notEqual(s3.sandboxId, s1.sandboxId, 'a new sandbox id');
    assert.ok(s3.sandboxToken !== undefined && s3.sandboxToken !== s1.sandboxToken, 'a new token');
    const inside = await s3.run('cat /root/project/data.txt; pgrep -x sleep || echo no sleep', 'bash');
    assert.equal(inside.stdout, 'from-snapshot\nno sleep\n');
    // Two sandboxes from one snapshot are independent.
    await s3.run('echo changed > /root/project/data.txt', 'bash');
    assert.equal((await s1.run('cat /root/project/data.txt', 'bash')).stdout, 'from-snapshot\n');
  });

  live('snapshot errors: invalid name (the allowed characters), unknown snapshot (named); the session continues', async (made) => {
    const s1 = made.add(await Sandbox.create(A));
    for (const bad of ['bad name', '../escape', '.hidden']) {
      const invalid = await expectError(s1.snapshotFilesystem(bad), SandboxSnapshotError);
      assert.equal(invalid.status, 'SANDBOX_FILESYSTEM_SNAPSHOT_ERROR');
      assert.match(invalid.message, /A-Z a-z 0-9 \. _ -/, invalid.message);
    }
    assert.equal((await s1.run('echo continues', 'bash')).stdout, 'continues\n');
    const missing = `js-test-missing-${randomBytes(3).toString('hex')}`;
    const unknown = await expectError(Sandbox.create(B, { filesystemSnapshotName: missing }), SandboxCreationError);
    assert.equal(unknown.status, 'SANDBOX_CREATION_ERROR');
    assert.ok(unknown.message.includes(missing), unknown.message);
    const invalidCreate = await expectError(Sandbox.create(B, { filesystemSnapshotName: 'no/slashes' }), SandboxCreationError);
    assert.match(invalidCreate.message, /A-Z a-z 0-9/);
  });

  live('terminate() after checkpoint + attach removes the saved state: attaching again finds nothing', async (made) => {
    const s1 = made.add(await Sandbox.create(A, { enableCheckpoint: true }));
    const id = s1.sandboxId;
    const token = s1.sandboxToken;
    await s1.checkpoint();
    const s2 = made.add(await Sandbox.attach(B, id));
    await s2.terminate();
    assert.equal(s2.state, 'killed');
    await expectError(Sandbox.attach(B, id, token), SandboxNotFoundError);
    await expectError(Sandbox.attach(A, id, token), SandboxNotFoundError);
  });

  live('runs the README checkpoint and snapshot snippet exactly as written', async (made) => {
    const url = A;
    made.snapshots.push('my-snapshot');
    // The README's lines verbatim, each handle registered for cleanup right after its line.
    const s1 = await Sandbox.create(url, { enableCheckpoint: true });
    made.add(s1);
    const id = s1.sandboxId;
    const token = s1.sandboxToken;
    await s1.checkpoint();                       // save filesystem + running processes, disconnect
    const s2 = await Sandbox.attach(url, id);    // later, possibly on another server instance
    made.add(s2);

    await s1.snapshotFilesystem('my-snapshot');
    const s3 = await Sandbox.create(url, { filesystemSnapshotName: 'my-snapshot' });
    made.add(s3);

    assert.equal(s1.state, 'checkpointed');
    assert.equal(s2.state, 'running');
    assert.notEqual(s3.sandboxId, id);
    assert.equal((await s3.run('echo from s3', 'bash')).stdout, 'from s3\n');
    await s1.terminate(); // through s2's session, as the README says
    assert.equal(s2.state, 'killed');
    assert.equal(s1.state, 'killed');
    // terminate() forgot the token (the process's memory stays bounded): pass it.
    await expectError(Sandbox.attach(url, id, token), SandboxNotFoundError);
  });

  live('handoff moves a sandbox to the instance a client attaches to', async (made) => {
    const statusesA: string[] = [];
    const statusesB: string[] = [];
    const s1 = made.add(
      await Sandbox.create(A, {
        enableSandboxHandoff: true,
        labels: { test: 'handoff' },
        onStatus: (status) => statusesA.push(status),
      }),
    );
    await s1.run('echo from A > /root/file.txt', 'bash');
    const id = s1.sandboxId ?? '';
    // The first client stays connected to A; attaching on B moves the sandbox there.
    const s2 = made.add(await Sandbox.attach(B, id, undefined, { onStatus: (status) => statusesB.push(status) }));
    assert.deepEqual(statusesB, ['SANDBOX_LOCK_ACQUIRING', 'SANDBOX_LOCK_ACQUIRED', 'SANDBOX_RESTORING', 'SANDBOX_RUNNING']);
    assert.equal((await s2.run('cat /root/file.txt', 'bash')).stdout, 'from A\n');
    for (let i = 0; i < 100 && !s1.closed; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(s1.closed, true);
    assert.equal(s1.state, 'checkpointed');
    assert.ok(statusesA.includes('SANDBOX_LOCK_RELEASED'), String(statusesA));
    const listed = await Sandbox.list(B);
    const info = listed.sandboxes.find((entry) => entry.sandboxId === id);
    assert.deepEqual(info?.labels, { test: 'handoff' });
    assert.equal(info?.handoff, true);
    assert.equal(info?.checkpointed, true);
  });

  live('lists the checkpoints in the store', async (made) => {
    const sandbox = made.add(await Sandbox.create(A, { enableCheckpoint: true, labels: { test: 'store' } }));
    await sandbox.checkpoint();
    let found;
    let after: string | undefined;
    for (let page = 0; page < 100 && found === undefined; page++) {
      const listed = await Sandbox.list(B, { checkpointed: true, limit: 50, after });
      found = listed.sandboxes.find((entry) => entry.sandboxId === sandbox.sandboxId);
      if (listed.nextAfter === null) break;
      after = listed.nextAfter;
    }
    assert.equal(found?.state, 'checkpointed');
    assert.deepEqual(found.labels, { test: 'store' });
    assert.ok((found.sizeBytes ?? 0) > 0);
  });

  live('runs example/checkpoint.ts and example/filesystem_snapshot.ts with url and url2', async () => {
    const tsx = join(here, '..', '..', 'node_modules', '.bin', 'tsx');
    const run = (file: string): Promise<{ code: number; out: string }> =>
      new Promise((resolve) => {
        execFile(tsx, ['--tsconfig', join(here, '..', '..', 'tsconfig.examples.json'), join(here, '..', '..', '..', '..', 'example', file), A, B], { timeout: 120_000 }, (error, stdout, stderr) => {
          const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
          resolve({ code, out: stdout + stderr });
        });
      });
    const checkpoint = await run('checkpoint.ts');
    assert.equal(checkpoint.code, 0, checkpoint.out);
    assert.match(checkpoint.out, /restored on .*: state before the checkpoint, counter at \d+, counter at \d+/);
    assert.match(checkpoint.out, /python says: Hello, restored sandbox!/);
    const snapshot = await run('filesystem_snapshot.ts');
    assert.equal(snapshot.code, 0, snapshot.out);
    assert.match(snapshot.out, /runs: from the snapshot/);
    assert.match(snapshot.out, /DELETE \/snapshots\/example-snapshot-\d+: 200/);
  });
});
