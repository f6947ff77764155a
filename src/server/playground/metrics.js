// The operators' view: a few numbers of `GET /metrics` (Prometheus text), read every few
// seconds while the panel is open and the tab is visible.

/** `{name: value}` for samples without labels, `{name: {label: value}}` for labelled ones. */
export function parseMetrics(text) {
  const samples = {};
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const [, name, labels, raw] = match;
    const value = Number(raw);
    if (labels === undefined) {
      samples[name] = value;
    } else {
      const table = typeof samples[name] === 'object' ? samples[name] : (samples[name] = {});
      table[labels.replace(/^[a-z_]+="|"$/g, '')] = value;
    }
  }
  return samples;
}

function sum(table) {
  return typeof table === 'object' ? Object.values(table).reduce((a, b) => a + b, 0) : 0;
}

/** The rows the panel shows: [label, value, what it means]. */
export function summarize(samples) {
  // POST /execute and sessions' executions together, by how they ended.
  const executions = {};
  for (const table of [samples.sandbox_executions_total, samples.sandbox_session_executions_total]) {
    if (typeof table !== 'object') continue;
    for (const [reason, count] of Object.entries(table)) executions[reason] = (executions[reason] ?? 0) + count;
  }
  const byReason = Object.entries(executions)
    .map(([reason, count]) => `${reason} ${count}`)
    .join(', ');
  return [
    ['live sandboxes', samples.sandbox_live, 'running sandboxes, pooled ones included'],
    ['ready in pool', samples.sandbox_pool_ready, 'started and waiting for a request'],
    ['ready from snapshots', samples.sandbox_snapshot_pool_ready, 'pooled sandboxes restored from snapshots'],
    ['waiting for a slot', samples.sandbox_waiting_for_slot, 'requests waiting for a sandbox slot'],
    ['waiting in line', samples.sandbox_requests_waiting, '/execute requests waiting for the next sandbox to be ready'],
    ['sessions', samples.sandbox_sessions, 'WebSocket sessions, attached or not'],
    ['sandboxes created', samples.sandbox_created_total, 'since the server started'],
    ['executions', sum(executions), byReason || 'by how they ended'],
  ].map(([label, value, note]) => [label, value === undefined ? 'n/a' : String(value), note]);
}

/**
 * Read `/metrics` every `periodMs` while `active()` says so; `show(rows)` or `fail(message)`.
 * Returns a function that stops it.
 */
export function watchMetrics({ headers, active, show, fail, periodMs = 3000 }) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (active()) {
      try {
        const response = await fetch('/metrics', { headers: headers(), cache: 'no-store' });
        if (response.ok) {
          show(summarize(parseMetrics(await response.text())));
        } else {
          const body = await response.json().catch(() => ({}));
          fail(`GET /metrics answered ${response.status}: ${body.error ?? response.statusText}`);
        }
      } catch (error) {
        fail(`GET /metrics failed: ${error.message}`);
      }
    }
    if (!stopped) timer = setTimeout(tick, periodMs);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
