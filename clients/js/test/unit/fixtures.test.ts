/**
 * Replays the recorded frame sequences in test/fixtures/*.json (written from the flows of
 * docs/protocol.md) through the sans-IO ProtocolMachine, checking both directions:
 * - `send` steps: the frame the machine produces for a request equals the recorded one;
 * - `s` / `raw` / `close` steps: the events the machine emits equal the recorded `events`
 *   (`status` events are checked separately: one per status_update frame, in order).
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { base64ToBytes } from '../../src/internal/base64.js';
import { type ProtocolEvent, ProtocolMachine, type SetupKind } from '../../src/internal/protocol.js';

const dir = join(import.meta.dirname, '..', 'fixtures');

type Json = Record<string, unknown>;
interface Step {
  send?: string;
  frame?: Json;
  s?: Json;
  raw?: string;
  close?: [number, string];
  reattach?: boolean;
  events?: Json[];
}
interface Fixture {
  description: string;
  setup: SetupKind;
  steps: Step[];
}

/** Events as JSON: undefined keys dropped, bytes as `{"bytes": [...]}`. */
function normalize(events: ProtocolEvent[]): Json[] {
  return JSON.parse(
    JSON.stringify(events, (_key, value: unknown) =>
      value instanceof Uint8Array ? { bytes: Array.from(value) } : value,
    ),
  ) as Json[];
}

function request(machine: ProtocolMachine, kind: string, frame: Json): string {
  switch (kind) {
    case 'init':
      return machine.init(frame);
    case 'exec':
      return machine.execute({
        language: frame['language'] as string,
        code: frame['code'] as string,
        env: frame['env'] as Record<string, string> | undefined,
        cwd: frame['cwd'] as string | undefined,
        timeout: frame['timeout'] as number | undefined,
        binary: frame['output_encoding'] === 'base64',
      }).frame;
    case 'stdin': {
      const data = frame['data'] as string | undefined;
      const bytes = frame['encoding'] === 'base64' && data !== undefined ? base64ToBytes(data) : data;
      return machine.stdin(bytes, frame['eof'] === true);
    }
    case 'kill_process':
      return machine.killProcess().frame;
    case 'kill_sandbox':
      return machine.killSandbox().frame;
    case 'checkpoint':
      return machine.checkpoint().frame;
    case 'snapshot':
      return machine.snapshotFilesystem(frame['name'] as string).frame;
    case 'reconnect':
      return machine.reconnect();
    default:
      throw new Error(`unknown request kind ${kind}`);
  }
}

const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

describe('recorded frame sequences', () => {
  it('has fixtures', () => {
    assert.ok(files.length >= 30, `only ${files.length} fixtures`);
  });

  for (const file of files) {
    const fixture = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Fixture;
    it(`${file.replace(/\.json$/, '')}: ${fixture.description}`, () => {
      const machine = new ProtocolMachine(fixture.setup);
      fixture.steps.forEach((step, index) => {
        const where = `step ${index} of ${file}: ${JSON.stringify(step)}`;
        if (step.send !== undefined) {
          const produced = request(machine, step.send, step.frame ?? {});
          assert.deepEqual(JSON.parse(produced), step.frame, where);
          return;
        }
        if (step.reattach === true) {
          machine.beginReattach();
          return;
        }
        let events: ProtocolEvent[];
        if (step.s !== undefined) events = machine.receive(JSON.stringify(step.s));
        else if (step.raw !== undefined) events = machine.receive(step.raw);
        else if (step.close !== undefined) events = machine.connectionClosed(step.close[0], step.close[1]);
        else throw new Error(`bad ${where}`);

        const statuses = events.filter((e) => e.type === 'status');
        if (step.s?.['event'] === 'status_update') {
          assert.equal(statuses.length, 1, `one status event for ${where}`);
          assert.equal(statuses[0]?.type === 'status' && statuses[0].status, step.s['status'], where);
        } else {
          assert.equal(statuses.length, 0, where);
        }
        const rest = normalize(events.filter((e) => e.type !== 'status'));
        assert.deepEqual(rest, step.events ?? [], where);
      });
    });
  }
});
