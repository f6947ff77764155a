/**
 * Replays the message flows of tests/flows/*.json (the repository's one corpus, also replayed by
 * the Python client and the server's session tests) through the public API, over a scripted
 * transport: the twin of the Python suite's `test_flows.py`.
 *
 * For each flow: `call` steps make the API call (not awaited), `client` steps check the next
 * frame the client sent (exactly), `server` / `server_raw` / `close` / `drop` steps feed the
 * client, `connect` steps check the next connection it opened, and `expect` steps check what the
 * API shows. `runtime` and `control` steps are the server's and are skipped. At the end every
 * frame the client sent and every connection it opened must have been checked by a step. The
 * vocabulary is in tests/flows/README.md.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { Execution, Sandbox, SandboxError, SandboxProcess, type CreateOptions } from '../../src/index.js';
import { base64ToBytes, bytesToBase64 } from '../../src/internal/base64.js';
import { type ScriptedConnection, ScriptedTransport } from './scripted.js';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Step = Record<string, Json>;
interface Flow {
  flow: string;
  protocol?: number;
  readers?: string[];
  setup?: string;
  create_options?: Record<string, Json>;
  steps: Step[];
}

const FLOWS = join(import.meta.dirname, '..', '..', '..', '..', 'tests', 'flows');
const URL_ = 'ws://sandbox.test';
/** Milliseconds an expected outcome may take (all in memory: it takes microseconds). */
const WAIT = 2000;
const SANDBOX_ID = '0123456789abcdef0123456789abcdef';
const SANDBOX_TOKEN = 'secret-token';
/** Create options that are the client's own (not in the init message). */
const CLIENT_OPTIONS = new Set(['auto_reconnect', 'request_timeout', 'connect_timeout', 'close_timeout']);

/** JSON equality that tells `true` from `1`. */
export function sameJson(actual: unknown, expected: unknown): boolean {
  if (expected === null || typeof expected !== 'object') return actual === expected;
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => sameJson(actual[i], e));
  }
  if (actual === null || typeof actual !== 'object' || Array.isArray(actual)) return false;
  const a = actual as Record<string, unknown>;
  const e = expected as Record<string, unknown>;
  const keys = Object.keys(e);
  return keys.length === Object.keys(a).length && keys.every((k) => k in a && sameJson(a[k], e[k]));
}

/** Partial match: objects compare only the keys the flow gives; arrays element-wise. */
function matches(actual: unknown, expected: unknown): boolean {
  if (expected !== null && typeof expected === 'object' && !Array.isArray(expected)) {
    if (actual === null || typeof actual !== 'object' || Array.isArray(actual)) return false;
    const a = actual as Record<string, unknown>;
    return Object.entries(expected).every(([k, v]) => k in a && matches(a[k], v));
  }
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => matches(actual[i], e));
  }
  return sameJson(actual, expected);
}

function errorView(error: unknown): Record<string, unknown> {
  if (error instanceof SandboxError) return { class: error.name, status: error.status ?? null, message: error.message };
  return { class: error instanceof Error ? error.name : typeof error, message: String(error) };
}

/** A call's result as JSON, in the corpus's snake_case vocabulary. */
function valueView(value: unknown): unknown {
  if (value instanceof Sandbox) {
    return { sandbox_id: value.sandboxId, sandbox_token: value.sandboxToken ?? null, protocol: value.protocol, state: value.state };
  }
  if (value instanceof SandboxProcess) return { process_id: value.processId };
  if (value instanceof Execution) {
    return {
      text: value.text ?? null,
      results: value.results.map((result) => ({ is_main_result: result.isMainResult, data: result.data })),
      stdout: value.logs.stdout,
      stderr: value.logs.stderr,
      error: value.error ?? null,
      process_id: value.processId ?? null,
      exit_code: value.exitCode ?? null,
      reason: value.reason ?? null,
    };
  }
  if (Array.isArray(value)) return value.map(valueView);
  if (value !== null && typeof value === 'object') {
    const row = value as Record<string, unknown>;
    if ('exitCode' in row) {
      return {
        stdout: row['stdout'],
        stderr: row['stderr'],
        exit_code: row['exitCode'],
        reason: row['reason'],
        signal: row['signal'],
        duration_ms: row['durationMs'],
      };
    }
    if ('contextId' in row) {
      const view: Record<string, unknown> = { context_id: row['contextId'], cwd: row['cwd'], language: row['language'] };
      if (row['state'] !== undefined) view['state'] = row['state'];
      if (row['died'] !== undefined) view['died'] = row['died'];
      return view;
    }
    if ('processId' in row) {
      return {
        process_id: row['processId'],
        request_id: row['requestId'],
        kind: row['kind'],
        language: row['language'],
        running: row['running'],
        started_unix_ms: row['startedUnixMs'],
      };
    }
  }
  return value ?? null;
}

/** The init message `Sandbox.create` sends for these options. */
function initFrame(options: Record<string, Json>): Record<string, Json> {
  const frame: Record<string, Json> = {
    idle_timeout: null,
    enable_checkpoint: false,
    enable_idle_timeout_auto_checkpoint: false,
    enable_sandbox_handoff: false,
    filesystem_snapshot_name: null,
  };
  for (const [k, v] of Object.entries(options)) if (!CLIENT_OPTIONS.has(k)) frame[k] = v;
  if (frame['enable_network'] !== true) delete frame['enable_network'];
  return frame;
}

/** The steps `"setup": "create"` stands for (tests/flows/README.md). */
function preamble(flow: Flow): Step[] {
  if (flow.setup !== 'create') return [];
  const options = flow.create_options ?? {};
  const running: Record<string, Json> = { event: 'status_update', status: 'SANDBOX_RUNNING' };
  if (flow.protocol === 2) running['protocol'] = 2;
  return [
    { call: { create: options }, client: initFrame(options) },
    { server: { event: 'status_update', status: 'SANDBOX_CREATING' } },
    { runtime: { ready: {} } },
    { server: { event: 'sandbox_id', sandbox_id: SANDBOX_ID, sandbox_token: SANDBOX_TOKEN } },
    { server: running },
    { expect: { call: 'create', returns: { protocol: flow.protocol ?? 1 } } },
    { expect: { statuses: ['SANDBOX_CREATING', 'SANDBOX_RUNNING'] } },
  ];
}

/** A flow value that must be a string. */
function str(value: Json | undefined): string {
  assert.equal(typeof value, 'string', `expected a string, got ${JSON.stringify(value)}`);
  return value as string;
}

function camel(key: string): string {
  return key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

interface Outcome {
  done: boolean;
  value?: unknown;
  error?: unknown;
}

class Replay {
  readonly transport = new ScriptedTransport();
  readonly tasks = new Map<string, { promise: Promise<unknown>; outcome: Outcome }>();
  readonly output = new Map<string, { stdout: string; stderr: string }>();
  notices: SandboxError[] = [];
  statuses: string[] = [];
  sandbox: Sandbox | undefined;
  /** The connection the flow talks about: the last one a step checked. */
  connection: ScriptedConnection | undefined;

  options(args: Record<string, Json>): CreateOptions {
    const options: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(args)) {
      if (key === 'auto_reconnect') {
        if (value === false) continue;
        const attempts = value !== null && typeof value === 'object' && !Array.isArray(value) ? value['max_attempts'] : 3;
        options['autoReconnect'] = { maxAttempts: attempts ?? 3, initialDelay: 0, jitter: 0 };
      } else if (key !== 'sandbox_id' && key !== 'sandbox_token') {
        options[camel(key)] = value;
      }
    }
    options['requestTimeout'] ??= 5;
    options['closeTimeout'] ??= 5;
    options['transport'] = this.transport;
    options['onStatus'] = (status: string) => this.statuses.push(status);
    options['onError'] = (error: SandboxError) => this.notices.push(error);
    return options;
  }

  collector(name: string, stream: 'stdout' | 'stderr'): (text: string) => void {
    if (!this.output.has(name)) this.output.set(name, { stdout: '', stderr: '' });
    return (text) => {
      const got = this.output.get(name);
      if (got !== undefined) got[stream] += text;
    };
  }

  async process(name: string): Promise<SandboxProcess> {
    const task = this.tasks.get(name);
    assert.ok(task !== undefined, `no call named ${name}`);
    const process = await task.promise;
    assert.ok(process instanceof SandboxProcess, `${name} is not a process`);
    return process;
  }

  async call(name: string, kind: string, args: Record<string, Json>): Promise<unknown> {
    if (kind === 'create') {
      this.sandbox = await Sandbox.create(URL_, this.options(args));
      return this.sandbox;
    }
    if (kind === 'attach') {
      const token = typeof args['sandbox_token'] === 'string' ? args['sandbox_token'] : undefined;
      this.sandbox = await Sandbox.attach(URL_, str(args['sandbox_id']), token, this.options(args));
      return this.sandbox;
    }
    const sandbox = this.sandbox;
    assert.ok(sandbox !== undefined, 'no sandbox yet: the flow must create or attach first');
    const callbacks = { onStdout: this.collector(name, 'stdout'), onStderr: this.collector(name, 'stderr') };
    const options: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(args)) options[camel(key)] = value;
    switch (kind) {
      case 'exec': {
        const { code, language, ...rest } = options;
        return sandbox.exec(String(code), String(language), { ...rest, ...callbacks });
      }
      case 'run': {
        const { code, language, stdinB64, ...rest } = options;
        if (typeof stdinB64 === 'string') rest['stdin'] = base64ToBytes(stdinB64);
        return sandbox.run(String(code), String(language), { ...rest, ...callbacks });
      }
      case 'attach_process': {
        const { processId, ...rest } = options;
        return sandbox.attachProcess(Number(processId), { ...rest, ...callbacks });
      }
      case 'stdin': {
        const process = await this.process(str(args['process']));
        const data = typeof args['data'] === 'string' ? args['data'] : base64ToBytes(str(args['data_b64']));
        return process.write(data);
      }
      case 'close_stdin':
        return (await this.process(str(args['process']))).closeStdin();
      case 'kill':
        return (await this.process(str(args['process']))).kill();
      case 'terminate':
        return sandbox.terminate();
      case 'checkpoint':
        return sandbox.checkpoint();
      case 'snapshot':
        return sandbox.snapshotFilesystem(str(args['name']));
      case 'list_processes':
        return sandbox.listProcesses();
      case 'set_idle_timeout':
        return sandbox.setIdleTimeout(Number(args['idle_timeout']));
      case 'disconnect':
        return sandbox.disconnect();
      case 'run_code': {
        const { code, ...rest } = options;
        return sandbox.runCode(String(code), { ...rest, ...callbacks });
      }
      case 'create_code_context':
        return sandbox.createCodeContext(typeof args['cwd'] === 'string' ? { cwd: args['cwd'] } : {});
      case 'list_code_contexts':
        return sandbox.listCodeContexts();
      case 'restart_code_context':
        return sandbox.restartCodeContext(str(args['context']));
      case 'delete_code_context':
        return sandbox.deleteCodeContext(str(args['context']));
      default:
        throw new Error(`unknown call ${kind}`);
    }
  }

  /** Lets the client process what it was given (everything is in memory). */
  async settle(): Promise<void> {
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
  }

  current(): ScriptedConnection {
    assert.ok(this.connection !== undefined, 'no connection checked yet');
    return this.connection;
  }

  async step(step: Step, where: string): Promise<void> {
    if ('call' in step) {
      const [[kind, args]] = Object.entries(step['call'] as Record<string, Record<string, Json>>) as [[string, Record<string, Json>]];
      const client = step['client'] as Record<string, Json> | undefined;
      const name = (step['as'] as string | undefined) ?? (client?.['id'] as string | undefined) ?? kind;
      assert.ok(!this.tasks.has(name), `${where}: a call named ${name} exists already`);
      const outcome: Outcome = { done: false };
      const promise = this.call(name, kind, args ?? {}).then(
        (value) => {
          outcome.done = true;
          outcome.value = value;
          return value;
        },
        (error: unknown) => {
          outcome.done = true;
          outcome.error = error;
          throw error;
        },
      );
      promise.catch(() => undefined);
      this.tasks.set(name, { promise, outcome });
      await this.settle();
      if ('connect' in step) await this.connect(str(step['connect']), where);
      if (client !== undefined) await this.checkSent(client, where);
    } else if ('client' in step) {
      await this.checkSent(step['client'] as Record<string, Json>, where);
    } else if ('connect' in step) {
      await this.connect(str(step['connect']), where);
    } else if ('server' in step) {
      this.current().push(JSON.stringify(step['server']));
      await this.settle();
    } else if ('server_raw' in step) {
      this.current().push(str(step['server_raw']));
      await this.settle();
    } else if ('close' in step) {
      const close = step['close'] as { code: number; reason?: string };
      this.current().closeByServer(close.code, close.reason ?? '');
      await this.settle();
    } else if ('drop' in step) {
      this.current().drop();
      await this.settle();
    } else if ('expect' in step) {
      await this.expect(step['expect'] as Record<string, Json>, where);
    } else if (!('runtime' in step) && !('control' in step)) {
      throw new Error(`${where}: unknown step`);
    }
  }

  async checkSent(expected: Record<string, Json>, where: string): Promise<void> {
    const sent = await this.transport.sent.next(WAIT);
    assert.ok(sent !== undefined, `${where}: the client sent nothing`);
    const frame = JSON.parse(sent[1]) as unknown;
    assert.ok(sameJson(frame, expected), `${where}\n  expected: ${JSON.stringify(expected)}\n  sent:     ${sent[1]}`);
  }

  async connect(path: string, where: string): Promise<void> {
    const connection = await this.transport.connections.next(WAIT);
    assert.ok(connection !== undefined, `${where}: the client opened no connection`);
    assert.equal(connection.path, path, `${where}: connected to ${connection.path}`);
    this.connection = connection;
  }

  async outcome(name: string, where: string): Promise<Outcome> {
    const task = this.tasks.get(name);
    assert.ok(task !== undefined, `${where}: no call named ${name}`);
    await Promise.race([task.promise.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, WAIT))]);
    assert.ok(task.outcome.done, `${where}: call ${name} is still pending`);
    return task.outcome;
  }

  async expect(expect: Record<string, Json>, where: string): Promise<void> {
    if ('call' in expect) {
      const name = str(expect['call']);
      if (expect['pending'] === true) {
        await this.settle();
        assert.ok(!this.tasks.get(name)?.outcome.done, `${where}: ${name} settled`);
        return;
      }
      const outcome = await this.outcome(name, where);
      if ('error' in expect) {
        assert.ok('error' in outcome, `${where}: ${name} returned ${JSON.stringify(valueView(outcome.value))}`);
        const view = errorView(outcome.error);
        assert.ok(matches(view, expect['error']), `${where}: ${name} raised ${JSON.stringify(view)}`);
      } else {
        assert.ok(!('error' in outcome), `${where}: ${name} raised ${String(outcome.error)}`);
        if ('returns' in expect) {
          const view = valueView(outcome.value);
          assert.ok(matches(view, expect['returns']), `${where}: ${name} gave ${JSON.stringify(view)}`);
        }
      }
    }
    if ('process' in expect) await this.expectProcess(str(expect['process']), expect, where);
    if ('sandbox' in expect) {
      assert.ok(this.sandbox !== undefined);
      const view = { ...(valueView(this.sandbox) as Record<string, unknown>), closed: this.sandbox.closed };
      assert.ok(matches(view, expect['sandbox']), `${where}: sandbox is ${JSON.stringify(view)}`);
    }
    if ('notices' in expect) {
      const views = this.notices.map(errorView);
      this.notices = [];
      assert.ok(matches(views, expect['notices']), `${where}: notices were ${JSON.stringify(views)}`);
    }
    if ('statuses' in expect) {
      const seen = this.statuses;
      this.statuses = [];
      assert.deepEqual(seen, expect['statuses'], `${where}: statuses were ${JSON.stringify(seen)}`);
    }
  }

  async expectProcess(name: string, expect: Record<string, Json>, where: string): Promise<void> {
    for (const stream of ['stdout', 'stderr'] as const) {
      if (stream in expect) {
        const got = this.output.get(name)?.[stream] ?? '';
        assert.equal(got, expect[stream], `${where}: ${stream} is ${JSON.stringify(got)}`);
      }
    }
    if (Object.keys(expect).every((k) => ['process', 'stdout', 'stderr'].includes(k))) return; // a run()
    const process = await this.process(name);
    if ('done' in expect) {
      await this.settle();
      assert.equal(process.done, expect['done'], `${where}: done is ${process.done}`);
    }
    if ('error' in expect) {
      const failure = await Promise.race([
        process.wait().then(
          () => undefined,
          (error: unknown) => error,
        ),
        new Promise((resolve) => setTimeout(() => resolve('still running'), WAIT)),
      ]);
      assert.ok(failure !== undefined && failure !== 'still running', `${where}: the process did not fail`);
      const view = errorView(failure);
      assert.ok(matches(view, expect['error']), `${where}: the process raised ${JSON.stringify(view)}`);
    }
    const ended = ['exit_code', 'reason', 'signal', 'duration_ms'].filter((k) => k in expect);
    if (ended.length > 0) {
      await Promise.race([process.wait(), new Promise((resolve) => setTimeout(resolve, WAIT))]);
      assert.ok(process.done, `${where}: the process did not end`);
      const got: Record<string, unknown> = {
        exit_code: process.exitCode,
        reason: process.reason,
        signal: process.signal,
        duration_ms: process.durationMs,
      };
      for (const key of ended) assert.ok(sameJson(got[key], expect[key]), `${where}: ${key} is ${String(got[key])}`);
    }
    for (const stream of ['stdout', 'stderr'] as const) {
      const key = `${stream}_b64`;
      if (key in expect) {
        const data = await process[stream].readAllBytes();
        assert.equal(bytesToBase64(data), expect[key], where);
      }
    }
    if ('process_id' in expect) assert.equal(process.processId, expect['process_id'], where);
  }

  async finish(): Promise<void> {
    await this.settle();
    const extra = this.transport.sent.peek();
    assert.ok(extra === undefined, `frames sent and not in the flow: ${extra?.[1] ?? ''}`);
    assert.equal(this.transport.connections.size, 0, 'a connection was opened and not in the flow');
    for (const connection of this.transport.opened) connection.drop();
    await this.settle();
  }
}

const files = readdirSync(FLOWS)
  .filter((f) => f.endsWith('.json'))
  .sort();
const flows = files.map((file) => [file.replace(/\.json$/, ''), JSON.parse(readFileSync(join(FLOWS, file), 'utf8')) as Flow] as const);

describe('tests/flows (the corpus)', () => {
  it('is there', () => {
    assert.ok(flows.length >= 40, `only ${flows.length} flows in ${FLOWS}`);
    for (const [name, flow] of flows) {
      assert.ok(flow.flow, name);
      assert.ok(flow.steps.length > 0, name);
      for (const reader of flow.readers ?? ['server', 'clients']) assert.ok(['server', 'clients'].includes(reader), name);
    }
  });

  for (const [name, flow] of flows) {
    if (!(flow.readers ?? ['server', 'clients']).includes('clients')) continue;
    it(name, async () => {
      const replay = new Replay();
      const steps = [...preamble(flow), ...flow.steps].map((step) =>
        'call' in step && Object.keys(step['call'] as object)[0] === 'create' && !('connect' in step)
          ? { ...step, connect: '/create' }
          : step,
      );
      for (const [index, step] of steps.entries()) await replay.step(step, `step ${index}: ${JSON.stringify(step)}`);
      await replay.finish();
    });
  }
});
