// The playground page (src/server/playground/) in Debian's headless Chromium, driven by
// playwright-core against live servers, as a person would use it: load the page, create a
// sandbox, run code and watch the output come, stdin, kill, checkpoint, attach, snapshots,
// metrics, API keys. Screenshots go to $PLAYGROUND_ARTIFACTS.
//
// Servers (scripts/test.sh starts them; a test whose server is not set is skipped and says so):
//   SANDBOX_TEST_URL               plain server
//   SANDBOX_TEST_PERSISTENT_URL    with CHECKPOINT_AND_RESTORE_PATH and FILESYSTEM_SNAPSHOT_PATH
//   SANDBOX_TEST_AUTH_URL          with SANDBOX_API_KEYS, one of which is SANDBOX_TEST_API_KEY
// Until the server speaks protocol 2, the page's protocol-2 side runs against the clients'
// stand-in server (clients/python/tests/protocol2_fake.py, with the Python of $PYTHON or of
// clients/python/.venv): the page comes from SANDBOX_TEST_URL and its WebSockets are bridged
// to the stand-in (Node's WebSocket: run with --experimental-websocket on Node 20).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// The flags known to work on these machines: no sandbox as root, no GPU, and no background
// connections (the network is closed; Chromium would retry them at every start).
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const ARTIFACTS = process.env.PLAYGROUND_ARTIFACTS ?? mkdtempSync(join(tmpdir(), 'crs-playground-'));
// Bounds that detect a hang; not timing checks.
const WAIT = { timeout: 60_000 };

const httpUrl = (wsUrl) => wsUrl.replace(/^ws/, 'http');
const PLAIN = process.env.SANDBOX_TEST_URL && httpUrl(process.env.SANDBOX_TEST_URL);
const PERSISTENT = process.env.SANDBOX_TEST_PERSISTENT_URL && httpUrl(process.env.SANDBOX_TEST_PERSISTENT_URL);
const AUTH = process.env.SANDBOX_TEST_AUTH_URL && httpUrl(process.env.SANDBOX_TEST_AUTH_URL);
const API_KEY = process.env.SANDBOX_TEST_API_KEY;

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  console.log(`screenshots in ${ARTIFACTS}`);
});

after(async () => {
  await browser?.close();
});

/**
 * A fresh browser context (its own session storage) on the page at `base`; the problems the
 * page shows in its console are collected: a policy violation or an uncaught error fails the
 * test that caused it.
 */
async function openPage(base, t) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('console', (message) => {
    // Inside a code cell's HTML result (a sandboxed srcdoc frame), the page's policy blocking
    // that untrusted HTML's inline styles is the policy at work, not a problem of the page.
    const inResult = message.location().url === 'about:srcdoc';
    if (message.type() === 'error' && !inResult && /Content.Security.Policy|Refused to/i.test(message.text())) {
      problems.push(`console: ${message.text()}`);
    }
  });
  const response = await page.goto(`${base}/`);
  t.after(async () => {
    await context.close();
    assert.deepEqual(problems, [], 'the page reported problems');
  });
  return { page, response, problems };
}

async function createSandbox(page, options = {}) {
  if (options.checkpoint) await page.check('#opt-checkpoint');
  if (options.network) await page.check('#opt-network');
  if (options.snapshot) await page.fill('#opt-snapshot', options.snapshot);
  await page.click('#create');
  await page.waitForSelector('body[data-sandbox="running"]', WAIT);
}

/** Type `code` in the editor and run it; the run's element (by its number: newer ones go on top). */
async function startRun(page, language, code) {
  const before = await page.locator('#runs > li').count();
  await page.selectOption('#language', language);
  await page.fill('#editor', code);
  await page.click('#run');
  await page.waitForFunction((count) => document.querySelectorAll('#runs > li').length > count, before, WAIT);
  const number = await page.locator('#runs > li').first().getAttribute('data-run');
  return page.locator(`#runs > li[data-run="${number}"]`);
}

async function waitDone(run) {
  await run.locator('xpath=self::*[@data-state="done" or @data-state="failed"]').waitFor(WAIT);
  return {
    state: await run.getAttribute('data-state'),
    exitCode: await run.getAttribute('data-exit-code'),
    reason: await run.getAttribute('data-reason'),
    output: await run.locator('.run-output').textContent(),
    summary: await run.locator('.run-state').textContent(),
  };
}

async function run(page, language, code) {
  return waitDone(await startRun(page, language, code));
}

async function deleteSandbox(page) {
  await page.click('#terminate');
  await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
  assert.equal(await page.textContent('#sandbox-state'), 'Deleted.');
}

async function logText(page) {
  return page.locator('#log').textContent();
}

describe('the playground', { skip: PLAIN ? false : 'SANDBOX_TEST_URL is not set' }, () => {
  test('is served with its policy, runs code and streams output in order, stdin, kill', async (t) => {
    const { page, response } = await openPage(PLAIN, t);
    const headers = response.headers();
    assert.equal(response.status(), 200);
    assert.match(headers['content-security-policy'], /default-src 'none'/);
    assert.match(headers['content-security-policy'], /connect-src 'self'/);
    assert.equal(headers['x-content-type-options'], 'nosniff');

    await createSandbox(page);
    const state = await page.textContent('#sandbox-state');
    assert.match(state, /^Sandbox [0-9a-f]+ is running \(protocol [12]/);
    assert.match(await page.textContent('#sandbox-token'), /^[0-9a-f]{32}$/);

    const one = await run(page, 'python', 'print(1)');
    assert.deepEqual([one.state, one.exitCode, one.output], ['done', '0', '1\n']);
    assert.match(one.summary, /^exit 0 · \d+ ms$/);

    // Five lines, a pause between them: the first is on the page while the process still
    // runs, and all five end up there in order.
    const loop = await startRun(
      page,
      'python',
      'import time\nfor i in range(5):\n    print(f"line {i}", flush=True)\n    time.sleep(0.5)\n',
    );
    await page.waitForFunction(
      () => {
        const newest = document.querySelector('#runs > li');
        return newest.dataset.state === 'running' && newest.querySelector('.run-output').textContent.includes('line 0');
      },
      null,
      WAIT,
    );
    const streamed = await waitDone(loop);
    assert.equal(streamed.output, 'line 0\nline 1\nline 2\nline 3\nline 4\n');
    assert.equal(streamed.exitCode, '0');

    // stdout and stderr apart, in different colours.
    const both = await startRun(page, 'bash', 'echo out; sleep 0.2; echo err >&2; sleep 0.2; echo out again');
    const mixed = await waitDone(both);
    assert.equal(mixed.output, 'out\nerr\nout again\n');
    assert.deepEqual(await both.locator('.run-output .stderr').allTextContents(), ['err\n']);
    assert.deepEqual(await both.locator('.run-output .stdout').allTextContents(), ['out\n', 'out again\n']);
    const colour = (selector) => both.locator(selector).first().evaluate((node) => getComputedStyle(node).color);
    assert.notEqual(await colour('.run-output .stderr'), await colour('.run-output .stdout'));

    // stdin for a running process: a line typed in its box.
    const greet = await startRun(page, 'python', 'name = input()\nprint("Hello, " + name)');
    await greet.locator('.run-stdin:not([hidden])').waitFor(WAIT);
    await greet.locator('.stdin-text').fill('World');
    await greet.locator('.stdin-text').press('Enter');
    const greeted = await waitDone(greet);
    assert.deepEqual([greeted.output, greeted.exitCode], ['Hello, World\n', '0']);

    // A failing command is data: its exit code is shown.
    const failed = await run(page, 'bash', 'echo bad >&2; exit 3');
    assert.deepEqual([failed.state, failed.exitCode], ['done', '3']);
    assert.match(failed.summary, /^exit 3 · /);

    // Kill a sleep 100.
    const sleeper = await startRun(page, 'bash', 'echo sleeping; sleep 100');
    await sleeper.locator('.run-output', { hasText: 'sleeping' }).waitFor(WAIT);
    await page.screenshot({ path: join(ARTIFACTS, 'playground-running.png'), fullPage: true });
    await sleeper.locator('.run-kill').click();
    const killed = await waitDone(sleeper);
    assert.deepEqual([killed.state, killed.reason, killed.exitCode], ['done', 'killed', '137']);
    assert.match(killed.summary, /killed$/);
    assert.match(await logText(page), /SANDBOX_EXECUTION_FORCE_KILLED/);

    // Ctrl+Enter in the editor runs the code.
    const runs = await page.locator('#runs > li').count();
    await page.fill('#editor', 'echo keyboard');
    await page.selectOption('#language', 'bash');
    await page.focus('#editor');
    await page.keyboard.press('Control+Enter');
    await page.waitForFunction((count) => document.querySelectorAll('#runs > li').length > count, runs, WAIT);
    assert.equal((await waitDone(page.locator('#runs > li').first())).output, 'keyboard\n');

    // The operators' view.
    await page.click('#metrics-panel summary');
    await page.waitForSelector('#metrics tr[data-metric="live sandboxes"]', WAIT);
    const live = Number(await page.textContent('#metrics tr[data-metric="live sandboxes"] td'));
    assert.ok(live >= 1, `live sandboxes: ${live}`);
    const executions = Number(await page.textContent('#metrics tr[data-metric="executions"] td'));
    assert.ok(executions >= 7, `executions: ${executions}`);
    await page.screenshot({ path: join(ARTIFACTS, 'playground.png'), fullPage: true });

    // Created without the network option: only the loopback interface.
    const interfaces = await run(page, 'bash', "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert.equal(interfaces.output, 'lo\n', 'no network unless asked for');
    await deleteSandbox(page);
    assert.match(await logText(page), /SANDBOX_KILLED/);
  });

  test('with network; two runs at once: side by side on protocol 2, refused by the page on protocol 1', async (t) => {
    const { page } = await openPage(PLAIN, t);
    await createSandbox(page, { network: true });
    // A sandbox without network has only the loopback interface.
    const interfaces = await run(page, 'bash', "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort");
    assert.equal(interfaces.output, 'eth0\nlo\n');
    const protocol = await page.getAttribute('body', 'data-protocol');
    const sleeper = await startRun(page, 'bash', 'echo first; sleep 100');
    await sleeper.locator('.run-output', { hasText: 'first' }).waitFor(WAIT);
    if (protocol === '2') {
      const second = await run(page, 'python', 'print("second")');
      assert.deepEqual([second.output, second.exitCode], ['second\n', '0']);
      assert.equal(await sleeper.getAttribute('data-state'), 'running');
    } else {
      const count = await page.locator('#runs > li').count();
      await page.click('#run');
      await page.waitForFunction(() => document.querySelector('#log').textContent.includes('one execution at a time'), null, WAIT);
      assert.equal(await page.locator('#runs > li').count(), count, 'no second run was started');
    }
    await sleeper.locator('.run-kill').click();
    assert.equal((await waitDone(sleeper)).reason, 'killed');
    await deleteSandbox(page);
  });
});

describe('code interpreter cells', { skip: PLAIN ? false : 'SANDBOX_TEST_URL is not set' }, () => {
  test('state persists; a matplotlib cell shows an image, a DataFrame a sandboxed table, an error its traceback', async (t) => {
    const { page } = await openPage(PLAIN, t);
    await createSandbox(page);
    const first = await run(page, 'cell', 'x = 20\nprint("set")');
    assert.deepEqual([first.output, first.exitCode], ['set\n', '0']);
    const second = await startRun(page, 'cell', 'x * 2 + 2');
    await waitDone(second);
    assert.equal(await second.locator('.result.main pre').textContent(), '42');

    const plot = await startRun(page, 'cell', 'import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()');
    assert.equal((await waitDone(plot)).exitCode, '0');
    const image = plot.locator('.run-results img');
    await image.waitFor(WAIT);
    assert.match(await image.getAttribute('src'), /^data:image\/png;base64,iVBORw0KGgo/);
    // The browser decoded it: a real picture, as wide as matplotlib's default figure.
    const width = await image.evaluate((img) => (img.complete ? img.naturalWidth : 0));
    assert.ok(width >= 300, `the image is ${width} px wide`);

    const table = await startRun(
      page,
      'cell',
      "import pandas as pd\nclass Evil:\n    def _repr_html_(self):\n        return '<table><tr><td>evil</td></tr></table><script>parent.document.body.dataset.pwned = 1</script>'\ndisplay(Evil())\npd.DataFrame({'a': [1, 2]})",
    );
    await waitDone(table);
    const frames = table.locator('.run-results iframe');
    assert.equal(await frames.count(), 2);
    for (let index = 0; index < 2; index++) {
      assert.equal(await frames.nth(index).getAttribute('sandbox'), '', 'HTML results are in sandboxed frames');
      assert.match(await frames.nth(index).getAttribute('srcdoc'), /<table/);
    }
    assert.equal(await page.getAttribute('body', 'data-pwned'), null, 'the HTML of a result ran no script');
    // The browser rendered the tables (in the frames' own documents).
    const shown = await frames.nth(0).contentFrame().locator('table').textContent(WAIT);
    assert.match(shown, /evil/);
    const dataframe = await frames.nth(1).contentFrame().locator('table.dataframe').textContent(WAIT);
    assert.match(dataframe.replace(/\s+/g, ' '), /a 0 1 1 2/);

    const failed = await startRun(page, 'cell', 'a = 1\nb = a / 0');
    assert.equal((await waitDone(failed)).exitCode, '1');
    const traceback = await failed.locator('.cell-error').textContent();
    assert.match(traceback, /line 2/);
    assert.match(traceback, /ZeroDivisionError: division by zero/);
    await page.screenshot({ path: join(ARTIFACTS, 'playground-cells.png'), fullPage: true });
    await deleteSandbox(page);
  });
});

describe('bounds', { skip: PLAIN ? false : 'SANDBOX_TEST_URL is not set' }, () => {
  test('a flood of output keeps the newest 200000 characters of a process', async (t) => {
    const { page } = await openPage(PLAIN, t);
    await createSandbox(page);
    // 2000 lines of 207 characters: 414000 in all.
    const flood = await run(page, 'python', 'for i in range(2000):\n    print(f"{i:06d}" + "x" * 200)');
    assert.equal(flood.exitCode, '0');
    assert.equal(flood.output.length, 200_000);
    assert.ok(flood.output.endsWith(`001999${'x'.repeat(200)}\n`));
    assert.ok(!flood.output.includes('000000'), 'the oldest lines were dropped');
    await deleteSandbox(page);
  });
});

describe('re-attach', { skip: PLAIN ? false : 'SANDBOX_TEST_URL is not set' }, () => {
  test('after a disconnect the process goes on in the same element, with what it wrote meanwhile', async (t) => {
    const { page } = await openPage(PLAIN, t);
    await createSandbox(page);
    const slow = await startRun(page, 'bash', 'echo before; sleep 1; echo while away; sleep 1; echo after');
    await slow.locator('.run-output', { hasText: 'before' }).waitFor(WAIT);
    await page.click('#disconnect');
    await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.equal(await slow.getAttribute('data-state'), 'detached');
    await page.click('#attach');
    await page.waitForSelector('body[data-sandbox="running"]', WAIT);
    const followed = await waitDone(slow);
    assert.deepEqual([followed.output, followed.exitCode], ['before\nwhile away\nafter\n', '0']);
    assert.equal(await page.locator('#runs > li').count(), 1);
    await deleteSandbox(page);
  });
});

describe('checkpoint, attach and snapshots', { skip: PERSISTENT ? false : 'SANDBOX_TEST_PERSISTENT_URL is not set' }, () => {
  test('checkpoint, attach by id and token, snapshot, create from the snapshot', async (t) => {
    const { page } = await openPage(PERSISTENT, t);
    const snapshot = `playground-${process.pid}-${Date.now()}`;
    t.after(() => fetch(`${PERSISTENT}/snapshots/${snapshot}`, { method: 'DELETE' }).catch(() => {}));

    await createSandbox(page, { checkpoint: true });
    const sandboxId = await page.textContent('#sandbox-id');
    assert.equal((await run(page, 'bash', 'echo kept > /root/kept.txt')).exitCode, '0');

    await page.fill('#snapshot-name', snapshot);
    await page.click('#snapshot');
    await page.waitForFunction(() => document.querySelector('#log').textContent.includes('SANDBOX_FILESYSTEM_SNAPSHOT_CREATED'), null, WAIT);

    await page.click('#checkpoint');
    await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.match(await page.textContent('#sandbox-state'), /^Checkpointed/);
    assert.match(await logText(page), /SANDBOX_CHECKPOINTED/);

    // The attach form holds the id and token the page was given; a fresh page would type them.
    assert.equal(await page.inputValue('#attach-id'), sandboxId);
    await page.click('#attach');
    await page.waitForSelector('body[data-sandbox="running"]', WAIT);
    assert.match(await logText(page), /SANDBOX_RESTORING/);
    assert.equal((await run(page, 'bash', 'cat /root/kept.txt')).output, 'kept\n');
    await deleteSandbox(page);

    // A new sandbox from the snapshot has its files; the name is offered from GET /snapshots.
    await page.reload();
    await page.waitForFunction(
      (name) => [...document.querySelectorAll('#snapshot-names option')].some((option) => option.value === name),
      snapshot,
      WAIT,
    );
    await createSandbox(page, { snapshot });
    assert.notEqual(await page.textContent('#sandbox-id'), sandboxId);
    assert.equal((await run(page, 'bash', 'cat /root/kept.txt')).output, 'kept\n');
    await deleteSandbox(page);
  });

  test('attach in a fresh page with a typed id and token', async (t) => {
    const first = await openPage(PERSISTENT, t);
    await createSandbox(first.page, { checkpoint: true });
    const id = await first.page.textContent('#sandbox-id');
    const token = await first.page.textContent('#sandbox-token');
    await first.page.click('#disconnect');
    await first.page.waitForSelector('body[data-sandbox="closed"]', WAIT);

    const second = await openPage(PERSISTENT, t);
    await second.page.fill('#attach-token', 'not-the-token');
    await second.page.fill('#attach-id', id);
    await second.page.click('#attach');
    await second.page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.match(await logText(second.page), /SANDBOX_PERMISSION_DENIAL_ERROR/);

    await second.page.fill('#attach-token', token);
    await second.page.click('#attach');
    await second.page.waitForSelector('body[data-sandbox="running"]', WAIT);
    assert.equal((await run(second.page, 'python', 'print(6 * 7)')).output, '42\n');
    await deleteSandbox(second.page);
  });
});

describe('API keys', { skip: AUTH && API_KEY ? false : 'SANDBOX_TEST_AUTH_URL / SANDBOX_TEST_API_KEY are not set' }, () => {
  test('the page opens without a key; the key typed once opens sandboxes and metrics', async (t) => {
    const { page, response } = await openPage(AUTH, t);
    assert.equal(response.status(), 200);

    // Without the key the server refuses the WebSocket upgrade.
    await page.click('#create');
    await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.match(await page.textContent('#sandbox-state'), /API key/);
    await page.click('#metrics-panel summary');
    await page.waitForFunction(() => document.querySelector('#metrics-state').textContent.includes('401'), null, WAIT);

    await page.fill('#api-key', API_KEY);
    await page.press('#api-key', 'Enter');
    assert.equal(await page.inputValue('#api-key'), '', 'the key is not left in the field');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cloud-run-sandbox.api-key')), API_KEY);

    await createSandbox(page);
    assert.equal((await run(page, 'python', 'print(1)')).output, '1\n');
    await page.waitForSelector('#metrics tr[data-metric="live sandboxes"]', WAIT);

    // Entered once: a reload in the same tab keeps it.
    await deleteSandbox(page);
    await page.reload();
    await createSandbox(page);
    assert.equal((await run(page, 'bash', 'echo again')).output, 'again\n');
    await deleteSandbox(page);

    // A wrong key is refused like none.
    await page.fill('#api-key', `${API_KEY}-wrong`);
    await page.click('#key-save');
    await page.click('#create');
    await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.match(await page.textContent('#sandbox-state'), /API key/);
  });
});

const PYTHON = process.env.PYTHON ?? join(import.meta.dirname, '..', '..', 'clients', 'python', '.venv', 'bin', 'python');
const STAND_IN = join(import.meta.dirname, '..', '..', 'clients', 'python', 'tests', 'protocol2_fake.py');

function standInSkip() {
  if (!PLAIN) return 'SANDBOX_TEST_URL is not set (the page is loaded from it)';
  if (typeof WebSocket === 'undefined') return "Node has no WebSocket (run node with --experimental-websocket)";
  if (!existsSync(PYTHON) || spawnSync(PYTHON, ['-c', 'import websockets']).status !== 0) {
    return `no Python with websockets at ${PYTHON} (set $PYTHON, or run clients/python/run-tests.sh first)`;
  }
  return false;
}

/** Every WebSocket the page opens goes to `url` instead, frame for frame, closes included. */
async function bridgeWebSockets(page, url) {
  await page.routeWebSocket(/\/(create|attach\/)/, (route) => {
    const target = new URL(route.url());
    const upstream = new WebSocket(url + target.pathname + target.search);
    const early = [];
    upstream.onopen = () => {
      for (const message of early.splice(0)) upstream.send(message);
    };
    route.onMessage((message) => (upstream.readyState === WebSocket.OPEN ? upstream.send(message) : early.push(message)));
    upstream.onmessage = (event) => route.send(event.data);
    upstream.onclose = (event) => route.close({ code: event.code, reason: event.reason });
    route.onClose(() => upstream.close());
  });
}

describe('protocol 2 (the clients\' stand-in server)', { skip: standInSkip() }, () => {
  let standIn;
  let url;

  before(async () => {
    standIn = spawn(PYTHON, [STAND_IN], { stdio: ['ignore', 'pipe', 'inherit'] });
    url = await new Promise((resolve) => createInterface({ input: standIn.stdout }).once('line', resolve));
  });

  after(() => {
    standIn?.kill('SIGTERM');
  });

  test('processes side by side, stdin and kill by process, re-attach follows a process', async (t) => {
    const { page } = await openPage(PLAIN, t);
    await bridgeWebSockets(page, url);
    await createSandbox(page);
    assert.equal(await page.getAttribute('body', 'data-protocol'), '2');
    assert.match(await page.textContent('#sandbox-state'), /protocol 2: processes run side by side/);

    const sleeper = await startRun(page, 'bash', 'echo first; sleep 100');
    await sleeper.locator('.run-output', { hasText: 'first' }).waitFor(WAIT);
    const reader = await startRun(page, 'bash', 'read line; echo "got $line"');
    await reader.locator('.run-stdin:not([hidden])').waitFor(WAIT);
    await reader.locator('.stdin-text').fill('hello');
    await reader.locator('.stdin-text').press('Enter');
    const read = await waitDone(reader);
    assert.deepEqual([read.output, read.exitCode], ['got hello\n', '0']);
    assert.equal(await sleeper.getAttribute('data-state'), 'running', 'the first one still runs');
    const quick = await run(page, 'bash', 'echo third');
    assert.equal(quick.output, 'third\n');

    await sleeper.locator('.run-kill').click();
    const killed = await waitDone(sleeper);
    assert.deepEqual([killed.reason, killed.exitCode], ['killed', '137']);

    // A process outlives the connection: after a re-attach its held and later output arrive.
    const slow = await startRun(page, 'bash', 'echo before; sleep 1; echo while away; sleep 1; echo after');
    await slow.locator('.run-output', { hasText: 'before' }).waitFor(WAIT);
    await page.click('#disconnect');
    await page.waitForSelector('body[data-sandbox="closed"]', WAIT);
    assert.equal(await slow.getAttribute('data-state'), 'detached');
    const count = await page.locator('#runs > li').count();
    await page.click('#attach');
    await page.waitForSelector('body[data-sandbox="running"]', WAIT);
    // The same element goes on: the output from before, while away and after, in order.
    const followed = await waitDone(slow);
    assert.equal(followed.output, 'before\nwhile away\nafter\n');
    assert.equal(followed.exitCode, '0');
    assert.equal(await page.locator('#runs > li').count(), count, 'no second element for it');
    await page.screenshot({ path: join(ARTIFACTS, 'playground-protocol-2.png'), fullPage: true });
    await deleteSandbox(page);
  });
});
