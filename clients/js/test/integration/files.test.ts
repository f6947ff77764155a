/**
 * `sandbox.files` against a live server at $SANDBOX_TEST_URL (skipped when unset): round trips of
 * binary data, listings, errors with their codes, upload and download, streamed sources. The
 * same cases as clients/python/tests/test_files.py.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, it } from 'node:test';

import { Sandbox, SandboxFileError, SandboxNotFoundError } from '../../src/index.js';

const url = process.env['SANDBOX_TEST_URL'] ?? '';
const skip = url === '' ? 'SANDBOX_TEST_URL is not set (a live server)' : false;
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
  for (const sandbox of made.splice(0).reverse()) {
    await sandbox.terminate().catch((error: unknown) => {
      if (!(error instanceof SandboxNotFoundError)) console.error(`cleanup of ${sandbox.sandboxId}:`, error);
    });
  }
});

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

async function fileError(promise: Promise<unknown>): Promise<SandboxFileError> {
  const error = await promise.then(
    () => assert.fail('expected SandboxFileError'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof SandboxFileError, `expected SandboxFileError, got ${String(error)}`);
  return error;
}

describe('sandbox.files', () => {
  live('binary data round trips', async () => {
    const sandbox = await create();
    for (const size of [0, 1, 64 * 1024 + 1, 5 * 1024 * 1024 + 3]) {
      const data = new Uint8Array(randomBytes(size));
      assert.equal(await sandbox.files.write(`data-${size}.bin`, data), size);
      const back = await sandbox.files.read(`/root/data-${size}.bin`);
      assert.equal(sha256(back), sha256(data));
      const result = await sandbox.run(`sha256sum /root/data-${size}.bin`, 'bash');
      assert.equal(result.stdout.split(' ')[0], sha256(data));
    }
  });

  live('text, streams and append', async () => {
    const sandbox = await create();
    await sandbox.files.write('notes.txt', 'héllo\n');
    await sandbox.files.write('notes.txt', 'more\n', { append: true });
    assert.equal(await sandbox.files.readText('notes.txt'), 'héllo\nmore\n');
    async function* pieces(): AsyncGenerator<Uint8Array> {
      for (let index = 0; index < 3; index++) yield new Uint8Array(700 * 1024).fill(index);
    }
    assert.equal(await sandbox.files.write('async.bin', pieces()), 3 * 700 * 1024);
    assert.equal(await sandbox.files.write('blob.bin', new Blob(['x'.repeat(3000)]), { mode: 0o600 }), 3000);
    const entry = await sandbox.files.stat('blob.bin');
    assert.deepEqual([entry.type, entry.size, entry.mode, entry.path], ['file', 3000, 0o600, '/root/blob.bin']);
  });

  live('directories, listing, rename, remove', async () => {
    const sandbox = await create();
    await sandbox.files.makeDir('tree/a/b');
    await sandbox.files.write('tree/top.txt', 'top');
    await sandbox.files.write('tree/a/b/deep.txt', 'deep');
    assert.deepEqual(
      (await sandbox.files.list('tree')).map((entry) => entry.name),
      ['a', 'top.txt'],
    );
    const paths = (await sandbox.files.list('/root/tree', { depth: 3 })).map((entry) => entry.path).sort();
    assert.deepEqual(paths, ['/root/tree/a', '/root/tree/a/b', '/root/tree/a/b/deep.txt', '/root/tree/top.txt']);
    await sandbox.files.rename('tree/top.txt', 'tree/moved.txt');
    assert.equal(await sandbox.files.exists('tree/moved.txt'), true);
    assert.equal(await sandbox.files.exists('tree/top.txt'), false);
    await sandbox.files.remove('tree', { recursive: true });
    assert.equal(await sandbox.files.exists('tree'), false);
  });

  live('errors carry their code', async () => {
    const sandbox = await create();
    const cases: [() => Promise<unknown>, string][] = [
      [() => sandbox.files.read('/root/missing'), 'not_found'],
      [() => sandbox.files.read('/root'), 'is_a_directory'],
      [() => sandbox.files.read('/proc/1/fd/1'), 'invalid_path'],
      [() => sandbox.files.makeDir('/root', { parents: false }), 'already_exists'],
      [() => sandbox.files.write('/.sandbox/x', 'x'), 'permission_denied'],
      [() => sandbox.files.list('/etc/hostname'), 'not_a_directory'],
    ];
    for (const [call, code] of cases) {
      const error = await fileError(call());
      assert.equal(error.code, code, error.message);
      assert.equal(error.status, 'SANDBOX_FILE_ERROR');
    }
    assert.equal((await sandbox.run('echo fine', 'bash')).stdout, 'fine\n');
  });

  live('upload and download', async () => {
    const sandbox = await create();
    const dir = await mkdtemp(join(tmpdir(), 'files-test-'));
    try {
      const local = join(dir, 'data.csv');
      await writeFile(local, 'a,b\n' + '1,2\n'.repeat(100_000));
      const size = (await stat(local)).size;
      assert.equal(await sandbox.files.upload(local, 'data.csv'), size);
      const back = join(dir, 'back.csv');
      assert.equal(await sandbox.files.download('data.csv', back), size);
      assert.deepEqual(await readFile(back), await readFile(local));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
