// The playground page: wires the form controls to a Session (client.js) and shows what it
// reports. Everything the sandbox sends is shown as text (textContent), never as HTML in the
// page: a code cell's HTML result (a DataFrame's table) is rendered in an iframe with
// `sandbox=""` (no scripts, its own opaque origin), and images only as `data:image/png` (or
// jpeg) URLs the page builds.

import { Session, websocketBase } from './client.js';
import { watchMetrics } from './metrics.js';

const KEY_STORAGE = 'cloud-run-sandbox.api-key';
const $ = (id) => document.getElementById(id);

let session = null;
// Each process's element, and back: the process it shows and the session that runs it.
const runViews = new Map();
const viewRuns = new WeakMap();
let viewCount = 0;

// --- the API key ---------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) ?? '';
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showKeyState() {
  $('api-key').value = '';
  $('api-key').placeholder = apiKey() ? 'a key is set for this tab' : 'only if the server asks for one';
  $('key-forget').disabled = !apiKey();
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const key = $('api-key').value.trim();
  if (key === '') return;
  sessionStorage.setItem(KEY_STORAGE, key);
  showKeyState();
  log('API key set for this tab');
  loadSnapshots();
});

$('key-forget').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
  log('API key forgotten');
});

// --- the event log -------------------------------------------------------------------------

const MAX_LOG_LINES = 200;

function log(text, kind = 'info') {
  const item = document.createElement('li');
  item.className = kind;
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, ' ', text);
  const list = $('log');
  list.prepend(item);
  while (list.children.length > MAX_LOG_LINES) list.lastElementChild.remove();
}

// --- the sandbox ---------------------------------------------------------------------------

function setSandboxState(text) {
  $('sandbox-state').textContent = text;
}

function updateControls() {
  const ready = session !== null && session.ready;
  for (const id of ['checkpoint', 'snapshot', 'disconnect', 'terminate', 'run']) {
    $(id).disabled = !ready;
  }
  const connecting = session !== null && !session.closed && !session.ready;
  $('create').disabled = connecting || ready;
  $('attach').disabled = connecting || ready;
}

const sessionEvents = {
  status(status, frame) {
    document.body.dataset.lastStatus = status;
    if (status === 'SANDBOX_EXECUTION_RUNNING' || status === 'SANDBOX_EXECUTION_DONE') return;
    log(frame.message ? `${status}: ${frame.message}` : status, status.endsWith('ERROR') ? 'error' : 'info');
    if (status === 'SANDBOX_CHECKPOINTED') setSandboxState('Checkpointed: attach with its id and token to go on.');
    if (status === 'SANDBOX_KILLED') setSandboxState('Deleted.');
  },
  sandbox(id, token) {
    $('sandbox-id').textContent = id;
    $('sandbox-token').textContent = token;
    $('sandbox-ids').hidden = false;
    $('attach-id').value = id;
    $('attach-token').value = token;
  },
  running(protocol) {
    document.body.dataset.protocol = String(protocol);
    const parallel = protocol === 2 ? 'processes run side by side' : 'one execution at a time';
    setSandboxState(`Sandbox ${session.sandboxId} is running (protocol ${protocol}: ${parallel}).`);
    document.body.dataset.sandbox = 'running';
    updateControls();
    $('editor').focus();
  },
  run(run, owner) {
    showRun(run, owner);
  },
  output(run, stream, text, owner) {
    appendOutput(showRun(run, owner).querySelector('.run-output'), stream, text);
  },
  result(run, frame, owner) {
    showResult(showRun(run, owner).querySelector('.run-results'), frame);
  },
  cellError(run, frame, owner) {
    const error = document.createElement('pre');
    error.className = 'cell-error stderr';
    const lines = Array.isArray(frame.traceback) ? frame.traceback.map(String) : [];
    error.textContent = lines.length > 0 ? lines.join('\n') : `${frame.name}: ${frame.value}`;
    showRun(run, owner).querySelector('.run-results').append(error);
  },
  error(message) {
    log(message, 'error');
  },
  closed(code, reason) {
    document.body.dataset.sandbox = 'closed';
    const why = reason ? `${code} ${reason}` : String(code);
    if (code === 1006 && session.protocol === null) {
      setSandboxState('Could not connect: check the API key (a server with keys refuses the connection without one).');
    } else if (!$('sandbox-state').textContent.startsWith('Checkpointed') && !$('sandbox-state').textContent.startsWith('Deleted')) {
      setSandboxState(`Disconnected (${why}).`);
    }
    log(`connection closed (${why})`);
    updateControls();
  },
};

function startSession(open) {
  if (session !== null && !session.closed) session.disconnect();
  document.body.dataset.sandbox = 'connecting';
  setSandboxState('Connecting…');
  // A session replaced by a newer one still reports on its own processes, but no longer
  // speaks for the page's sandbox state.
  let mine = null;
  const events = {
    ...sessionEvents,
    run: (run) => sessionEvents.run(run, mine),
    output: (run, stream, text) => sessionEvents.output(run, stream, text, mine),
    result: (run, frame) => sessionEvents.result(run, frame, mine),
    cellError: (run, frame) => sessionEvents.cellError(run, frame, mine),
  };
  for (const name of ['status', 'sandbox', 'running', 'closed']) {
    events[name] = (...args) => {
      if (session === mine) sessionEvents[name](...args);
    };
  }
  try {
    mine = open(websocketBase(window.location), apiKey(), events);
    session = mine;
  } catch (error) {
    session = null;
    setSandboxState(`Could not connect: ${error.message}`);
  }
  updateControls();
}

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const snapshot = $('opt-snapshot').value.trim();
  const init = {
    idle_timeout: null,
    enable_checkpoint: $('opt-checkpoint').checked,
    enable_idle_timeout_auto_checkpoint: false,
    enable_sandbox_handoff: false,
    filesystem_snapshot_name: snapshot === '' ? null : snapshot,
  };
  if ($('opt-network').checked) init.enable_network = true;
  startSession((base, key, events) => Session.create(base, key, init, events));
});

$('attach-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('attach-id').value.trim();
  const token = $('attach-token').value.trim();
  startSession((base, key, events) => Session.attach(base, key, id, token, events));
});

function act(action) {
  try {
    action();
  } catch (error) {
    log(error.message, 'error');
  }
}

$('checkpoint').addEventListener('click', () => act(() => session.checkpoint()));
$('terminate').addEventListener('click', () => act(() => session.terminate()));
$('disconnect').addEventListener('click', () => act(() => session.disconnect()));
$('snapshot-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('snapshot-name').value.trim();
  act(() => session.snapshot(name));
  setTimeout(loadSnapshots, 2000);
});

/** The names for "from snapshot": `GET /snapshots`, when the server keeps snapshots. */
async function loadSnapshots() {
  try {
    const response = await fetch('/snapshots', { headers: authHeaders(), cache: 'no-store' });
    if (!response.ok) return;
    const { snapshots = [] } = await response.json();
    const options = snapshots.map(({ name }) => {
      const option = document.createElement('option');
      option.value = name;
      return option;
    });
    $('snapshot-names').replaceChildren(...options);
  } catch {
    // Only a convenience: the name can still be typed.
  }
}

// --- code and processes --------------------------------------------------------------------

// Bounds that keep the page responsive under a flood of output or a long session: the newest
// text of each process, the newest processes.
const MAX_OUTPUT_CHARS = 200_000;
const MAX_RUN_VIEWS = 50;
const outputLengths = new WeakMap();

/** Append `text` of `stream` to a process's output, dropping its oldest text past the bound. */
function appendOutput(output, stream, text) {
  const last = output.lastElementChild;
  if (last && last.className === stream) {
    last.append(text);
  } else {
    const span = document.createElement('span');
    span.className = stream;
    span.textContent = text;
    output.append(span);
  }
  let length = (outputLengths.get(output) ?? 0) + text.length;
  while (length > MAX_OUTPUT_CHARS && output.firstElementChild) {
    const first = output.firstElementChild;
    const excess = length - MAX_OUTPUT_CHARS;
    if (first.textContent.length <= excess) {
      length -= first.textContent.length;
      first.remove();
    } else {
      first.textContent = first.textContent.slice(excess);
      length -= excess;
    }
  }
  outputLengths.set(output, length);
}

/** Forget the oldest processes that have ended, past the bound. */
function dropOldViews() {
  const views = [...document.querySelectorAll('#runs > li')];
  for (const view of views.slice(MAX_RUN_VIEWS).reverse()) {
    const shown = viewRuns.get(view);
    if (shown && shown.run.active) continue;
    if (shown) runViews.delete(shown.run);
    view.remove();
  }
}

function describe(run) {
  switch (run.state) {
    case 'starting':
      return 'starting';
    case 'running':
      return run.processId === null ? 'running' : `running · process ${run.processId}`;
    case 'failed':
      return `failed: ${run.error}`;
    case 'detached':
      return 'detached: the connection closed while it ran (attach to follow it)';
    default: {
      const { exitCode, reason, durationMs } = run.done;
      const parts = [`exit ${exitCode ?? '?'}`];
      if (durationMs !== null) parts.push(`${durationMs} ms`);
      if (reason && reason !== 'exited') parts.push(reason);
      return parts.join(' · ');
    }
  }
}

/**
 * A process found on attach that this page showed before it was detached: the same sandbox and
 * process id (protocol 2), or the one detached process of that sandbox (protocol 1, whose
 * frames may have no process id).
 */
function detachedView(run, owner) {
  if (run.code !== null) return null;
  const detached = [...document.querySelectorAll('#runs > li[data-state="detached"]')].filter(
    (view) => view.dataset.sandbox === owner.sandboxId,
  );
  if (run.processId !== null) {
    return detached.find((view) => view.dataset.processId === String(run.processId)) ?? null;
  }
  return detached.length === 1 ? detached[0] : null;
}

function newView(run, owner) {
  // Numbered across the page's sessions (an attach starts a new session).
  const number = ++viewCount;
  const view = $('run-template').content.firstElementChild.cloneNode(true);
  view.dataset.run = String(number);
  view.dataset.sandbox = owner.sandboxId;
  const what = run.code === null ? 'found running' : run.language;
  view.querySelector('.run-title').textContent = `#${number} ${what}`;
  view.querySelector('.run-code').textContent = run.code ?? '';
  view.querySelector('.run-code').hidden = run.code === null;
  const shown = () => viewRuns.get(view);
  view.querySelector('.run-kill').addEventListener('click', () => act(() => shown().owner.kill(shown().run)));
  const stdin = view.querySelector('.run-stdin');
  stdin.addEventListener('submit', (event) => {
    event.preventDefault();
    const field = stdin.querySelector('.stdin-text');
    act(() => {
      shown().owner.write(shown().run, `${field.value}\n`);
      field.value = '';
    });
  });
  stdin.querySelector('.stdin-eof').addEventListener('click', () => act(() => shown().owner.write(shown().run, '', true)));
  $('runs').prepend(view);
  dropOldViews();
  return view;
}

function showRun(run, owner) {
  let view = runViews.get(run);
  if (!view) {
    view = detachedView(run, owner) ?? newView(run, owner);
    viewRuns.set(view, { run, owner });
    runViews.set(run, view);
  }
  if (run.processId !== null) view.dataset.processId = String(run.processId);
  view.dataset.state = run.state;
  if (run.done) {
    view.dataset.exitCode = String(run.done.exitCode);
    view.dataset.reason = String(run.done.reason);
  }
  view.querySelector('.run-state').textContent = describe(run);
  view.querySelector('.run-kill').hidden = !run.active;
  view.querySelector('.run-stdin').hidden = run.state !== 'running';
  return view;
}

/** Characters of a cell's text result shown; base64 images past this are not shown either. */
const MAX_RESULT_CHARS = 8_000_000;

/**
 * One result of a code cell, as a notebook shows it: an image, else the HTML in a sandboxed
 * frame, else the text. Nothing of it runs in the page.
 */
function showResult(container, frame) {
  const data = typeof frame.data === 'object' && frame.data !== null ? frame.data : {};
  const item = document.createElement('div');
  item.className = frame.is_main_result ? 'result main' : 'result';
  const image = ['image/png', 'image/jpeg'].find(
    (mime) => typeof data[mime] === 'string' && /^[A-Za-z0-9+/=]*$/.test(data[mime]) && data[mime].length < MAX_RESULT_CHARS,
  );
  if (image) {
    const img = document.createElement('img');
    img.alt = 'an image the cell made';
    img.src = `data:${image};base64,${data[image]}`;
    item.append(img);
  } else if (typeof data['text/html'] === 'string' && data['text/html'].length < MAX_RESULT_CHARS) {
    // Untrusted HTML: an iframe with every sandbox restriction (no scripts, no forms, no
    // same-origin access); the page's CSP applies to it too.
    const iframe = document.createElement('iframe');
    iframe.setAttribute('sandbox', '');
    iframe.title = 'an HTML result of the cell';
    iframe.srcdoc = data['text/html'];
    item.append(iframe);
  } else {
    const text = document.createElement('pre');
    text.textContent = String(data['text/plain'] ?? '').slice(0, MAX_RESULT_CHARS);
    item.append(text);
  }
  container.append(item);
}

$('run-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const language = $('language').value;
  act(() => (language === 'cell' ? session.runCode($('editor').value) : session.exec($('editor').value, language)));
});

// The editor: Tab indents (Python needs it); Esc first lets Tab move the focus on, so the
// keyboard never gets stuck in the box; Ctrl+Enter (Cmd+Enter) runs.
let escaped = false;
$('editor').addEventListener('keydown', (event) => {
  const editor = event.target;
  if (event.key === 'Escape') {
    escaped = true;
    return;
  }
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $('run-form').requestSubmit();
  } else if (event.key === 'Tab' && !escaped && !event.shiftKey) {
    event.preventDefault();
    editor.setRangeText('    ', editor.selectionStart, editor.selectionEnd, 'end');
  }
  escaped = false;
});

// --- metrics -------------------------------------------------------------------------------

watchMetrics({
  headers: authHeaders,
  active: () => $('metrics-panel').open && !document.hidden,
  show(rows) {
    $('metrics-state').textContent = `Read from /metrics at ${new Date().toLocaleTimeString()}.`;
    const body = rows.map(([label, value, note]) => {
      const row = document.createElement('tr');
      for (const [tag, text] of [['th', label], ['td', value], ['td', note]]) {
        const cell = document.createElement(tag);
        cell.textContent = text;
        if (tag === 'th') cell.scope = 'row';
        row.append(cell);
      }
      row.dataset.metric = label;
      return row;
    });
    $('metrics').tBodies[0].replaceChildren(...body);
  },
  fail(message) {
    $('metrics-state').textContent = message;
  },
});

showKeyState();
updateControls();
loadSnapshots();
document.body.dataset.sandbox = 'none';
