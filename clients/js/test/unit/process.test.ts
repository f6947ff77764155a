/** OutputStream and SandboxProcess on their own (no server, no sandbox): the twin of test_process.py. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SandboxConnectionError, SandboxStateError } from '../../src/errors.js';
import { type OutputCallback, type ProcessControl, type ProcessHost, newProcess } from '../../src/process.js';
import type { ExecutionResult } from '../../src/results.js';

const DONE: ExecutionResult = { exitCode: 0, signal: null, reason: 'exited', durationMs: 10 };

function make(callbacks: { onStdout?: OutputCallback; onStderr?: OutputCallback } = {}): {
  control: ProcessControl;
  sent: unknown[];
} {
  const sent: unknown[] = [];
  const host: ProcessHost = {
    writeStdin: async (key, data) => void sent.push([key, data]),
    closeStdin: async (key) => void sent.push([key, 'EOF']),
    killProcess: async (key) => void sent.push([key, 'kill']),
  };
  return { control: newProcess(host, '7', 3, callbacks), sent };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('OutputStream', () => {
  it('readAll waits for the end', async () => {
    const { control } = make();
    const all = control.process.stdout.readAll();
    control.output('stdout', 'a');
    await tick();
    control.output('stdout', 'b');
    control.finish(DONE);
    assert.equal(await all, 'ab');
    assert.equal(control.process.stdout.finished, true);
    assert.equal(await control.process.stdout.readAll(), '');
  });

  it('hands each chunk out once', async () => {
    const { control } = make();
    for (const chunk of ['1', '2', '3']) control.output('stdout', chunk);
    control.finish(DONE);
    const iterator = control.process.stdout[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value, '1');
    assert.equal(await control.process.stdout.readAll(), '23');
  });

  it('gives lines across chunks, and a last partial line', async () => {
    const { control } = make();
    for (const chunk of ['one\ntw', 'o\n', '\nthr', 'ee']) control.output('stdout', chunk);
    control.finish(DONE);
    const lines: string[] = [];
    for await (const line of control.process.stdout.lines()) lines.push(line);
    assert.deepEqual(lines, ['one', 'two', '', 'three']);
  });

  it('gives lines as they complete', async () => {
    const { control } = make();
    const lines = control.process.stderr.lines()[Symbol.asyncIterator]();
    control.output('stderr', 'a\nb');
    assert.equal((await lines.next()).value, 'a');
    let second: string | undefined;
    const next = lines.next().then((r) => (second = r.value as string));
    await tick();
    assert.equal(second, undefined, 'b is not a line until its newline or the end');
    control.output('stderr', '\n');
    await next;
    assert.equal(second, 'b');
  });

  it('calls the callbacks with text as it arrives, and the stream keeps it', async () => {
    const got: [string, string][] = [];
    const { control } = make({ onStdout: (t) => got.push(['out', t]), onStderr: (t) => got.push(['err', t]) });
    control.output('stdout', 'a');
    control.output('stderr', new Uint8Array([0xc3])); // half of é: nothing to say yet
    control.output('stderr', new Uint8Array([0xa9, 0x21]));
    control.output('stdout', new Uint8Array([0xff]));
    control.finish(DONE);
    assert.deepEqual(got, [
      ['out', 'a'],
      ['err', 'é!'],
      ['out', '\ufffd'],
    ]);
    assert.equal(await control.process.stdout.readAll(), 'a\ufffd');
  });

  it('survives a callback that throws', async () => {
    const { control } = make({
      onStdout: () => {
        throw new Error('user bug');
      },
    });
    control.output('stdout', 'kept');
    control.finish(DONE);
    assert.equal(await control.process.stdout.readAll(), 'kept');
  });

  it('decodes bytes as text across splits', async () => {
    const { control } = make();
    const data = new TextEncoder().encode('é✓');
    for (let i = 0; i < data.length; i++) control.output('stdout', data.subarray(i, i + 1));
    control.output('stdout', new Uint8Array([0xff]));
    control.finish(DONE);
    assert.equal(await control.process.stdout.readAll(), 'é✓\ufffd');
  });

  it('gives exact bytes, and text as UTF-8 bytes', async () => {
    const { control } = make();
    control.output('stdout', new Uint8Array([0, 0xff]));
    control.output('stdout', new Uint8Array([1]));
    control.output('stderr', 'é');
    control.finish(DONE);
    const chunks: Uint8Array[] = [];
    for await (const chunk of control.process.stdout.bytes()) chunks.push(chunk);
    assert.deepEqual(chunks, [new Uint8Array([0, 0xff]), new Uint8Array([1])]);
    assert.deepEqual(await control.process.stderr.readAllBytes(), new TextEncoder().encode('é'));
  });

  it('fails after the buffered chunks', async () => {
    const { control } = make();
    control.output('stdout', 'kept');
    control.fail(new SandboxConnectionError('lost'));
    const iterator = control.process.stdout[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value, 'kept');
    await assert.rejects(iterator.next(), SandboxConnectionError);
    await assert.rejects(control.process.stdout.readAll(), SandboxConnectionError);
  });
});

describe('SandboxProcess', () => {
  it('wait() resolves to the exit code; the fields follow', async () => {
    const { control } = make();
    const process = control.process;
    const waited = process.wait();
    assert.equal(process.exitCode, null);
    control.finish({ exitCode: 3, signal: null, reason: 'exited', durationMs: 10 });
    assert.equal(await waited, 3);
    assert.deepEqual(
      [process.exitCode, process.reason, process.signal, process.durationMs, process.done, process.processId],
      [3, 'exited', null, 10, true, 3],
    );
    assert.deepEqual(await process.result(), { exitCode: 3, signal: null, reason: 'exited', durationMs: 10 });
  });

  it('wait() rejects when the session is lost', async () => {
    const { control } = make();
    control.fail(new SandboxConnectionError('gone'));
    await assert.rejects(control.process.wait(), /gone/);
  });

  it('stdin rules', async () => {
    const { control, sent } = make();
    const process = control.process;
    await process.write('a');
    await process.write(new Uint8Array([0]));
    await process.writeToStdin(new Uint8Array([1]));
    await process.closeStdin();
    await process.closeStdin(); // closing twice does nothing
    assert.deepEqual(sent, [
      ['7', 'a'],
      ['7', new Uint8Array([0])],
      ['7', new Uint8Array([1])],
      ['7', 'EOF'],
    ]);
    await assert.rejects(process.write('late'), (e: unknown) => e instanceof SandboxStateError && e.message.includes('stdin is closed'));
    await assert.rejects(process.write(5 as unknown as string), TypeError);
  });

  it('an ended process refuses stdin and ignores kill', async () => {
    const { control, sent } = make();
    control.finish(DONE);
    await assert.rejects(control.process.write('x'), /ended/);
    await control.process.kill();
    // A process that read what it needed and exited did not need the end-of-file.
    await control.process.closeStdin();
    assert.deepEqual(sent, []);
  });
});
