// The playground's client of the public protocol (docs/protocol.md): one WebSocket session,
// its processes and their output. No DOM here: app.js shows what this reports.
//
// Like the TypeScript and Python clients, it sends an `id` with every message and reads the
// server's capability from SANDBOX_RUNNING: with `"protocol": 2` answers are paired by id and
// processes run side by side (stdin with flow control, processes by process_id); without it
// (protocol 1) one execution runs at a time and answers come in order, so the client refuses a
// second run itself and sends stdin and kill to the one that runs.

export const SUBPROTOCOL = 'cloud-run-sandbox';
const KEY_PREFIX = 'api-key.';

/** `ws://host` or `wss://host` of the page's own origin (wss behind Cloud Run's HTTPS). */
export function websocketBase(location) {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`;
}

/** base64url without padding (RFC 4648 §5) of the key's UTF-8 bytes: a valid subprotocol. */
export function base64url(text) {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * What the page offers in `Sec-WebSocket-Protocol`: ours, which the server selects, and the
 * key, which a browser cannot send as `Authorization` on a WebSocket (docs/security.md).
 */
export function subprotocols(apiKey) {
  return apiKey ? [SUBPROTOCOL, KEY_PREFIX + base64url(apiKey)] : [SUBPROTOCOL];
}

function decodeBase64Text(data) {
  const binary = atob(data);
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

const DEFAULT_STDIN_WINDOW = 1024 * 1024;

/**
 * One process of the sandbox as this page knows it: started here (`code` set) or found on
 * attach (`code` null). `state`: starting, running, done, failed (refused), detached (the
 * connection closed while it ran).
 */
export class Run {
  constructor(number, requestId, language, code) {
    this.number = number;
    this.requestId = requestId;
    this.language = language;
    this.code = code;
    this.processId = null;
    this.state = 'starting';
    this.done = null;
    this.error = null;
    this.stdinSent = 0;
    this.stdinWritten = 0;
    this.stdinWindow = DEFAULT_STDIN_WINDOW;
    // A code interpreter cell (protocol 2): its results and error, as the server sent them.
    this.cell = false;
    this.results = [];
    this.cellError = null;
  }

  get active() {
    return this.state === 'starting' || this.state === 'running';
  }
}

/**
 * A session on `/create` or `/attach/{id}`. `events` receives:
 * status(status, frame), sandbox(id, token), running(protocol), run(run) (new or changed),
 * output(run, stream, text), result(run, frame) and cellError(run, frame) (a code cell's),
 * error(message), closed(code, reason).
 */
export class Session {
  constructor(url, apiKey, events, init) {
    this.events = events;
    this.protocol = null;
    this.sandboxId = null;
    this.sandboxToken = null;
    this.closed = false;
    this.nextId = 1;
    this.runs = [];
    this.pending = new Map();
    this.init = init;
    this.attaching = init === null;
    this.socket = new WebSocket(url, subprotocols(apiKey));
    this.socket.addEventListener('open', () => {
      if (this.init !== null) this.socket.send(JSON.stringify(this.init));
    });
    this.socket.addEventListener('message', (message) => this.receive(message.data));
    this.socket.addEventListener('close', (close) => this.onClose(close.code, close.reason));
  }

  static create(base, apiKey, init, events) {
    return new Session(`${base}/create`, apiKey, events, init);
  }

  static attach(base, apiKey, sandboxId, token, events) {
    const url = `${base}/attach/${encodeURIComponent(sandboxId)}?sandbox_token=${encodeURIComponent(token)}`;
    const session = new Session(url, apiKey, events, null);
    session.sandboxId = sandboxId;
    session.sandboxToken = token;
    return session;
  }

  get ready() {
    return this.protocol !== null && !this.closed;
  }

  send(message, extra = {}) {
    if (!this.ready) throw new Error('the sandbox is not running');
    const id = String(this.nextId++);
    this.socket.send(JSON.stringify({ ...message, ...extra, id }));
    return id;
  }

  /** A request whose `reply` (protocol 2) resolves the promise. */
  request(message) {
    return new Promise((resolve, reject) => {
      const id = this.send(message);
      this.pending.set(id, { resolve, reject });
    });
  }

  exec(code, language) {
    if (this.protocol === 1 && this.runs.some((run) => run.active)) {
      throw new Error('this server runs one execution at a time (protocol 1): wait for it or kill it');
    }
    const run = new Run(this.runs.length + 1, String(this.nextId), language, code);
    this.send({ language, code });
    this.runs.push(run);
    this.events.run(run);
    return run;
  }

  /** A cell in the sandbox's default code context (protocol 2): its state persists. */
  runCode(code) {
    if (this.protocol !== 2) throw new Error('code cells need a server that speaks protocol 2');
    const run = new Run(this.runs.length + 1, String(this.nextId), 'python cell', code);
    run.cell = true;
    this.send({ action: 'run_code', code });
    this.runs.push(run);
    this.events.run(run);
    return run;
  }

  /** Write `text` to the process's stdin (and close it after, with `eof`). */
  write(run, text, eof = false) {
    if (run.state !== 'running') throw new Error(`process ${run.number} is not running`);
    const bytes = new TextEncoder().encode(text).length;
    const message = { event: 'stdin' };
    if (this.protocol === 2) {
      // The flow-control rule of docs/protocol.md: never more unacknowledged than the window.
      if (run.stdinSent + bytes - run.stdinWritten > run.stdinWindow) {
        throw new Error('stdin window full: the process has not read what was sent yet');
      }
      message.process_id = run.processId;
    }
    if (text !== '' || !eof) message.data = text;
    if (eof) message.eof = true;
    this.send(message);
    run.stdinSent += bytes;
  }

  kill(run) {
    if (!run.active) throw new Error(`process ${run.number} has ended`);
    const message = { action: 'kill_process' };
    if (this.protocol === 2 && run.processId !== null) message.process_id = run.processId;
    this.send(message);
  }

  checkpoint() {
    this.send({ action: 'checkpoint' });
  }

  snapshot(name) {
    this.send({ action: 'snapshot_filesystem', name });
  }

  terminate() {
    this.send({ action: 'kill_sandbox' });
  }

  disconnect() {
    this.socket.close(1000, 'disconnected by the user');
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof frame !== 'object' || frame === null) return;
    switch (frame.event) {
      case 'status_update':
        return this.onStatus(frame);
      case 'sandbox_id':
        this.sandboxId = frame.sandbox_id;
        this.sandboxToken = frame.sandbox_token;
        return this.events.sandbox(this.sandboxId, this.sandboxToken);
      case 'stdout':
      case 'stderr':
        return this.onOutput(frame);
      case 'stdin_ack': {
        const run = this.find(frame);
        if (run && typeof frame.written === 'number') run.stdinWritten = frame.written;
        return;
      }
      case 'reply':
        return this.onReply(frame);
      case 'result':
      case 'execution_error': {
        const run = this.find(frame);
        if (!run) return;
        if (frame.event === 'result') {
          run.results.push(frame);
          return this.events.result(run, frame);
        }
        run.cellError = frame;
        return this.events.cellError(run, frame);
      }
      case 'error':
        return this.events.error(String(frame.message ?? 'error'));
      default:
        // Keys and events this page does not know are ignored, as the protocol asks.
        return;
    }
  }

  /**
   * The process a frame is about: by request id (protocol 2), by process id, or the one
   * foreground execution (protocol 1, and the id-less replay after a reconnect).
   */
  find(frame) {
    const processId = typeof frame.process_id === 'number' ? frame.process_id : null;
    if (frame.id !== undefined) {
      // Ids are unique per connection only: a process started by an earlier connection may
      // carry an id this one uses too. Its process id tells them apart.
      const run = this.runs.find(
        (candidate) =>
          candidate.requestId === String(frame.id) &&
          (processId === null || candidate.processId === null || candidate.processId === processId),
      );
      if (run) return run;
    }
    if (processId !== null) {
      const run = this.runs.find((candidate) => candidate.processId === processId);
      if (run) return run;
    }
    if (this.protocol === 2 && frame.process_id !== undefined) return null;
    const active = this.runs.filter((run) => run.active);
    return active.length > 0 ? active[0] : null;
  }

  /** A process started elsewhere (before a checkpoint, or by another connection). */
  adopt(frame) {
    const run = new Run(this.runs.length + 1, null, frame.language ?? null, null);
    run.processId = typeof frame.process_id === 'number' ? frame.process_id : null;
    run.state = 'running';
    this.runs.push(run);
    this.events.run(run);
    return run;
  }

  onStatus(frame) {
    const status = String(frame.status);
    this.events.status(status, frame);
    switch (status) {
      case 'SANDBOX_RUNNING':
        this.protocol = frame.protocol === 2 ? 2 : 1;
        this.events.running(this.protocol);
        if (this.attaching) {
          this.attaching = false;
          this.afterAttach();
        }
        return;
      case 'SANDBOX_EXECUTION_RUNNING': {
        const run = this.find(frame) ?? this.adopt(frame);
        if (typeof frame.process_id === 'number') run.processId = frame.process_id;
        if (typeof frame.stdin_window === 'number') run.stdinWindow = frame.stdin_window;
        run.state = 'running';
        return this.events.run(run);
      }
      case 'SANDBOX_EXECUTION_DONE': {
        const run = this.find(frame);
        if (!run) return;
        run.state = 'done';
        run.done = {
          exitCode: frame.exit_code ?? null,
          reason: frame.reason ?? null,
          durationMs: frame.duration_ms ?? null,
        };
        return this.events.run(run);
      }
      case 'SANDBOX_EXECUTION_ERROR':
      case 'SANDBOX_EXECUTION_UNSUPPORTED_LANGUAGE_ERROR':
      case 'SANDBOX_REQUEST_ERROR':
      case 'SANDBOX_CODE_CONTEXT_ERROR':
        return this.onRefusal(frame);
      default:
        return;
    }
  }

  /** A refusal answers an exec that has not started: that run failed. */
  onRefusal(frame) {
    const pending = frame.id !== undefined ? this.pending.get(String(frame.id)) : undefined;
    if (pending) {
      this.pending.delete(String(frame.id));
      return pending.reject(new Error(String(frame.message ?? frame.status)));
    }
    const starting = this.runs.filter((run) => run.state === 'starting');
    const run =
      frame.id !== undefined
        ? starting.find((candidate) => candidate.requestId === String(frame.id))
        : this.protocol === 1
          ? starting[0]
          : undefined;
    if (!run) return;
    run.state = 'failed';
    run.error = String(frame.message ?? frame.status);
    this.events.run(run);
  }

  onOutput(frame) {
    const run = this.find(frame) ?? this.adopt(frame);
    if (run.state === 'starting') run.state = 'running';
    const data = String(frame.data ?? '');
    const text = frame.encoding === 'base64' ? decodeBase64Text(data) : data;
    this.events.output(run, frame.event, text);
  }

  onReply(frame) {
    const pending = this.pending.get(String(frame.id));
    if (!pending) return;
    this.pending.delete(String(frame.id));
    pending.resolve(frame);
  }

  /**
   * After an attach: replay what the foreground execution wrote meanwhile (both protocols),
   * and on protocol 2 follow every process that still runs, by its process id.
   */
  async afterAttach() {
    this.send({ action: 'reconnect' });
    if (this.protocol !== 2) return;
    try {
      const listed = await this.request({ action: 'list_processes' });
      for (const info of listed.processes ?? []) {
        if (!info.running || this.runs.some((run) => run.processId === info.process_id)) continue;
        const run = this.adopt(info);
        const reply = await this.request({ action: 'attach_process', process_id: info.process_id });
        run.requestId = String(reply.id);
      }
    } catch (error) {
      this.events.error(`cannot list the sandbox's processes: ${error.message}`);
    }
  }

  onClose(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const { reject } of this.pending.values()) reject(new Error('the connection closed'));
    this.pending.clear();
    // Processes outlive connections (and checkpoints): attach again to follow them.
    for (const run of this.runs.filter((candidate) => candidate.active)) {
      run.state = 'detached';
      this.events.run(run);
    }
    this.events.closed(code, reason);
  }
}
