import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SandboxConnectionError, SandboxStateError } from '../../src/errors.js';
import { type ProcessControl, type ProcessHost, SandboxProcess } from '../../src/process.js';

function makeProcess(host: Partial<ProcessHost> = {}): { process: SandboxProcess; control: ProcessControl } {
  let control!: ProcessControl;
  const process = new SandboxProcess(
    {
      writeStdin: host.writeStdin ?? (async () => undefined),
      killProcess: host.killProcess ?? (async () => undefined),
    },
    (c) => (control = c),
  );
  return { process, control };
}

const done = { exitCode: 0, signal: null, reason: 'exited', durationMs: 5 };

describe('OutputStream', () => {
  it('readAll returns everything up to the end, including chunks pushed before reading', async () => {
    const { process, control } = makeProcess();
    control.stdout.push('a');
    const all = process.stdout.readAll();
    control.stdout.push('b\n');
    control.stderr.push('err');
    control.finish(done);
    assert.equal(await all, 'ab\n');
    assert.equal(await process.stderr.readAll(), 'err');
    assert.equal(process.stdout.finished, true);
  });

  it('iterates chunks in order as they arrive', async () => {
    const { process, control } = makeProcess();
    const seen: string[] = [];
    const reader = (async () => {
      for await (const chunk of process.stdout) seen.push(chunk);
    })();
    control.stdout.push('1\n');
    await new Promise((r) => setImmediate(r));
    control.stdout.push('2\n');
    control.finish(done);
    await reader;
    assert.deepEqual(seen, ['1\n', '2\n']);
  });

  it('decodes binary chunks without breaking a character split across them', async () => {
    const { process, control } = makeProcess();
    const euro = new TextEncoder().encode('€!'); // e2 82 ac 21
    control.stdout.push(euro.subarray(0, 2));
    control.stdout.push(euro.subarray(2));
    control.finish(done);
    assert.equal(await process.stdout.readAll(), '€!');
  });

  it('gives exact bytes with readAllBytes', async () => {
    const { process, control } = makeProcess();
    control.stdout.push(new Uint8Array([0xff, 0]));
    control.stdout.push('A');
    control.finish(done);
    assert.deepEqual(await process.stdout.readAllBytes(), new Uint8Array([0xff, 0, 0x41]));
  });

  it('rejects readers when the process is lost', async () => {
    const { process, control } = makeProcess();
    const all = process.stdout.readAll();
    control.fail(new SandboxConnectionError('gone'));
    await assert.rejects(all, SandboxConnectionError);
    await assert.rejects(process.wait(), SandboxConnectionError);
  });
});

describe('SandboxProcess', () => {
  it('resolves wait() to the exit code, also when it is non-zero', async () => {
    const { process, control } = makeProcess();
    assert.equal(process.exitCode, null);
    assert.equal(process.reason, null);
    assert.equal(process.done, false);
    control.finish({ exitCode: 137, signal: 9, reason: 'killed', durationMs: 10 });
    assert.equal(await process.wait(), 137);
    assert.equal(process.exitCode, 137);
    assert.equal(process.signal, 9);
    assert.equal(process.reason, 'killed');
    assert.equal(process.durationMs, 10);
    assert.equal(process.done, true);
  });

  it('passes stdin and eof to its host, and refuses stdin after close or end', async () => {
    const calls: [string | Uint8Array | undefined, boolean][] = [];
    const { process, control } = makeProcess({
      writeStdin: async (_p, data, eof) => {
        calls.push([data, eof]);
      },
    });
    await process.writeToStdin('x');
    await process.closeStdin();
    await assert.rejects(process.writeToStdin('y'), SandboxStateError);
    assert.deepEqual(calls, [
      ['x', false],
      [undefined, true],
    ]);
    control.finish(done);
    await assert.rejects(process.closeStdin(), /process has ended/);
  });

  it('kill() of an ended process does nothing', async () => {
    let kills = 0;
    const { process, control } = makeProcess({ killProcess: async () => void kills++ });
    await process.kill();
    control.finish(done);
    await process.kill();
    assert.equal(kills, 1);
  });
});
