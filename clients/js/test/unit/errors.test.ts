/** The error tree and the status table: the same as the Python client's (clients/errors.json). */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import * as api from '../../src/index.js';
import { STATUS_ERRORS, SandboxConnectionError, SandboxError, SandboxTimeoutError } from '../../src/index.js';
import { errorFromStatus, isErrorStatus } from '../../src/errors.js';

const root = join(import.meta.dirname, '..', '..', '..', '..');
const table = JSON.parse(readFileSync(join(root, 'clients', 'errors.json'), 'utf8')) as {
  classes: Record<string, string | null>;
  statuses: Record<string, string>;
};

/** Every error class the package exports, by name. */
const exported = new Map(
  Object.entries(api).filter(
    (entry): entry is [string, typeof SandboxError] =>
      typeof entry[1] === 'function' && (entry[1] === SandboxError || entry[1].prototype instanceof SandboxError),
  ),
);

describe('errors', () => {
  it('map statuses to classes as clients/errors.json says', () => {
    const ours = Object.fromEntries(Object.entries(STATUS_ERRORS).map(([status, cls]) => [status, cls.name]));
    assert.deepEqual(ours, table.statuses);
  });

  it('form the tree of clients/errors.json, all exported', () => {
    assert.deepEqual([...exported.keys()].sort(), Object.keys(table.classes).sort());
    for (const [name, parent] of Object.entries(table.classes)) {
      const cls = exported.get(name);
      assert.ok(cls !== undefined, name);
      const base = Object.getPrototypeOf(cls) as { name: string };
      assert.equal(base.name, parent ?? 'Error', name);
    }
  });

  it('are shown in docs/clients.md', () => {
    const doc = readFileSync(join(root, 'docs', 'clients.md'), 'utf8');
    for (const [status, name] of Object.entries(table.statuses)) {
      assert.match(doc, new RegExp(`\`${status}\`[^\\n]*\`${name}\``), `${status} -> ${name} is not in docs/clients.md`);
    }
  });

  it('carry the status and the server message, or a default for a core server', () => {
    const error = errorFromStatus('SANDBOX_CHECKPOINT_ERROR', 'checkpointing is not enabled');
    assert.ok(error instanceof api.SandboxCheckpointError);
    assert.equal(error.message, 'checkpointing is not enabled');
    assert.equal(error.status, 'SANDBOX_CHECKPOINT_ERROR');
    assert.equal(error.name, 'SandboxCheckpointError');
    assert.equal(errorFromStatus('SANDBOX_NOT_FOUND', undefined).message, 'sandbox not found');
    assert.match(errorFromStatus('SANDBOX_KILL_ERROR', '').message, /SANDBOX_KILL_ERROR/);
  });

  it('treat unknown statuses as not errors', () => {
    assert.equal(isErrorStatus('SANDBOX_RUNNING'), false);
    assert.equal(isErrorStatus('SANDBOX_FUTURE_ERROR'), false);
    assert.equal(isErrorStatus('toString'), false);
    assert.equal(errorFromStatus('SANDBOX_FUTURE_ERROR', 'x').constructor, SandboxError);
  });

  it('have an authentication error that is not a connection error', () => {
    const error = new api.SandboxAuthenticationError('refused', { httpStatus: 401 });
    assert.ok(error instanceof SandboxError);
    assert.ok(!(error instanceof SandboxConnectionError), 'retrying the same credentials does not help');
    assert.equal(error.name, 'SandboxAuthenticationError');
    assert.equal(error.httpStatus, 401);
    assert.equal(error.status, undefined, 'not a protocol status');
  });

  it('keep close details and causes on connection errors', () => {
    const cause = new Error('ECONNRESET');
    const error = new SandboxConnectionError('lost', { closeCode: 1006, closeReason: '', cause });
    assert.equal(error.closeCode, 1006);
    assert.equal(error.cause, cause);
    assert.equal(error.status, undefined);
    assert.ok(new SandboxTimeoutError('slow') instanceof SandboxConnectionError);
  });
});
