import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  ERROR_CLASS_BY_STATUS,
  SandboxAuthenticationError,
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
} from '../../src/index.js';
import { errorFromStatus, isErrorStatus } from '../../src/errors.js';

describe('errors', () => {
  it('has one root', () => {
    for (const cls of [
      SandboxConnectionError,
      SandboxCreationError,
      SandboxExecutionError,
      SandboxCheckpointError,
      SandboxSnapshotError,
      SandboxPermissionError,
      SandboxNotFoundError,
      SandboxInUseError,
      SandboxStateError,
    ]) {
      const error = new cls('boom');
      assert.ok(error instanceof SandboxError, cls.name);
      assert.ok(error instanceof Error, cls.name);
      assert.equal(error.name, cls.name);
      assert.equal(error.message, 'boom');
    }
  });

  it('maps every error status of docs/protocol.md to a class, with the message and status', () => {
    const expected: Record<string, typeof SandboxError> = {
      SANDBOX_ERROR: SandboxError,
      SANDBOX_CREATION_ERROR: SandboxCreationError,
      SANDBOX_NOT_FOUND: SandboxNotFoundError,
      SANDBOX_IN_USE: SandboxInUseError,
      SANDBOX_PERMISSION_DENIAL_ERROR: SandboxPermissionError,
      SANDBOX_EXECUTION_ERROR: SandboxExecutionError,
      SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR: SandboxExecutionError,
      SANDBOX_EXECUTION_FORCE_KILL_ERROR: SandboxExecutionError,
      SANDBOX_STDIN_ERROR: SandboxExecutionError,
      SANDBOX_EXECUTION_IN_PROGRESS_ERROR: SandboxCheckpointError,
      SANDBOX_CHECKPOINT_ERROR: SandboxCheckpointError,
      SANDBOX_RESTORE_ERROR: SandboxCheckpointError,
      SANDBOX_FILESYSTEM_SNAPSHOT_ERROR: SandboxSnapshotError,
      SANDBOX_KILL_ERROR: SandboxError,
      SANDBOX_LOCK_RENEWAL_ERROR: SandboxError,
    };
    assert.deepEqual(Object.keys(ERROR_CLASS_BY_STATUS).sort(), Object.keys(expected).sort());
    for (const [status, cls] of Object.entries(expected)) {
      const error = errorFromStatus(status, `message for ${status}`);
      assert.equal(error.constructor, cls, status);
      assert.equal(error.status, status);
      assert.equal(error.message, `message for ${status}`);
      assert.ok(isErrorStatus(status));
    }
  });

  it('has an authentication error that is not a connection error', () => {
    const error = new SandboxAuthenticationError('refused', { httpStatus: 401 });
    assert.ok(error instanceof SandboxError);
    assert.ok(!(error instanceof SandboxConnectionError), 'retrying the same credentials does not help');
    assert.equal(error.name, 'SandboxAuthenticationError');
    assert.equal(error.httpStatus, 401);
    assert.equal(error.status, undefined, 'not a protocol status');
  });

  it('treats unknown statuses as not errors', () => {
    assert.equal(isErrorStatus('SANDBOX_RUNNING'), false);
    assert.equal(isErrorStatus('SANDBOX_FUTURE_ERROR'), false);
    assert.equal(isErrorStatus('toString'), false);
    assert.equal(errorFromStatus('SANDBOX_FUTURE_ERROR', 'x').constructor, SandboxError);
  });

  it('keeps close details and causes on connection errors', () => {
    const cause = new Error('ECONNRESET');
    const error = new SandboxConnectionError('lost', { closeCode: 1006, closeReason: '', cause });
    assert.equal(error.closeCode, 1006);
    assert.equal(error.closeReason, '');
    assert.equal(error.cause, cause);
    assert.equal(error.status, undefined);
  });
});
