/**
 * The JSON messages of docs/protocol.md, as types, plus the encoders for what the client sends.
 * Nothing here does I/O. Keys are snake_case because they are the wire format.
 */

import { bytesToBase64 } from './base64.js';

export type Language = 'python' | 'bash';
export type StreamName = 'stdout' | 'stderr';

/** Init object: the first message on `/create`. Only the keys the caller set are sent. */
export interface InitFrame {
  idle_timeout?: number | null;
  enable_checkpoint?: boolean;
  enable_idle_timeout_auto_checkpoint?: boolean;
  enable_sandbox_handoff?: boolean;
  filesystem_snapshot_name?: string | null;
  /** Our addition: network egress under the server's policy. */
  enable_network?: boolean;
}

export interface ExecFrame {
  language: string;
  code: string;
  env?: Record<string, string>;
  cwd?: string;
  timeout?: number;
  output_encoding?: 'text' | 'base64';
}

export interface ExecRequest {
  language: string;
  code: string;
  env?: Readonly<Record<string, string>> | undefined;
  cwd?: string | undefined;
  timeout?: number | undefined;
  /** Ask for byte-exact output (`output_encoding: "base64"`). */
  binary?: boolean | undefined;
}

export function encodeInit(init: InitFrame): string {
  return JSON.stringify(init);
}

export function encodeExec(req: ExecRequest): string {
  const frame: ExecFrame = { language: req.language, code: req.code };
  if (req.env !== undefined) frame.env = { ...req.env };
  if (req.cwd !== undefined) frame.cwd = req.cwd;
  if (req.timeout !== undefined) frame.timeout = req.timeout;
  if (req.binary === true) frame.output_encoding = 'base64';
  return JSON.stringify(frame);
}

/** `{"event":"stdin"}`: text as is, bytes as base64; `eof` closes stdin after `data`. */
export function encodeStdin(data: string | Uint8Array | undefined, eof: boolean): string {
  const frame: Record<string, unknown> = { event: 'stdin' };
  if (typeof data === 'string') {
    frame['data'] = data;
  } else if (data !== undefined) {
    frame['data'] = bytesToBase64(data);
    frame['encoding'] = 'base64';
  }
  if (eof) frame['eof'] = true;
  return JSON.stringify(frame);
}

export type Action = 'kill_process' | 'kill_sandbox' | 'checkpoint' | 'reconnect';

export function encodeAction(action: Action): string {
  return JSON.stringify({ action });
}

export function encodeSnapshot(name: string): string {
  return JSON.stringify({ action: 'snapshot_filesystem', name });
}

/** A frame from the server after JSON parsing; every key is optional until checked. */
export type ServerFrame = Record<string, unknown>;

/** Parses one text frame. Returns `undefined` for anything that is not a JSON object. */
export function parseServerFrame(text: string): ServerFrame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  return value as ServerFrame;
}
