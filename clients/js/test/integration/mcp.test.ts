/**
 * The server's MCP endpoint /mcp through the official TypeScript SDK (@modelcontextprotocol/sdk,
 * pinned): its Client over the Streamable HTTP transport (the handshake revision, 2025-11-25),
 * against the live server at $SANDBOX_TEST_URL. Skipped, with the reason, when it is unset.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const wsUrl = process.env['SANDBOX_TEST_URL'] ?? '';
const skip = wsUrl === '' ? 'SANDBOX_TEST_URL is not set (a live server)' : false;
const mcpUrl = new URL('/mcp', wsUrl.replace(/^ws/, 'http'));

// The tools the server offers: run_code comes with the code interpreter (issue 13), the file
// tools with the files API (issue 14), as `mcp::tools::Features::AVAILABLE` says.
const expectedTools = ['run_command', 'run_code', 'write_file', 'read_file', 'list_files', 'close_sandbox'];

function live(name: string, fn: () => Promise<void>, needs?: string): void {
  const missing = needs !== undefined && !expectedTools.includes(needs) ? `this build offers no ${needs}` : false;
  it(name, { skip: skip || missing, timeout: 180_000 }, fn);
}

interface Connected {
  client: Client;
  transport: StreamableHTTPClientTransport;
}

async function connect(): Promise<Connected> {
  const client = new Client({ name: 'codesandbox-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(mcpUrl);
  await client.connect(transport);
  return { client, transport };
}

async function close({ client, transport }: Connected): Promise<void> {
  await transport.terminateSession().catch(() => undefined);
  await client.close();
}

interface CommandResult {
  sandbox_id: string;
  stdout: string;
  stderr: string;
  exit_code: number;
}

async function run(client: Client, command: string, sandboxId?: string): Promise<CommandResult> {
  const args: Record<string, unknown> = { command };
  if (sandboxId !== undefined) args['sandbox_id'] = sandboxId;
  const result = await client.callTool({ name: 'run_command', arguments: args });
  assert.equal(result.isError, false, JSON.stringify(result));
  const structured: unknown = result.structuredContent;
  return structured as CommandResult;
}

describe('MCP through the TypeScript SDK', () => {
  live('lists the tools, keeps state across calls, reports exit codes', async () => {
    const session = await connect();
    try {
      const tools = await session.client.listTools();
      assert.deepEqual(
        tools.tools.map((tool) => tool.name),
        expectedTools,
      );
      const first = await run(session.client, 'echo 5 > /root/n; echo out; exit 4');
      assert.equal(first.exit_code, 4);
      assert.equal(first.stdout, 'out\n');
      const second = await run(session.client, 'cat /root/n');
      assert.equal(second.stdout, '5\n');
      assert.equal(second.sandbox_id, first.sandbox_id);
    } finally {
      await close(session);
    }
  });

  live('keeps two sessions apart and frees a session sandbox at DELETE', async () => {
    const one = await connect();
    const two = await connect();
    try {
      const mine = await run(one.client, 'echo private > /root/p');
      const theirs = await run(two.client, 'cat /root/p');
      assert.notEqual(theirs.exit_code, 0);
      assert.notEqual(theirs.sandbox_id, mine.sandbox_id);
      await one.transport.terminateSession();
      const gone = await two.client.callTool({
        name: 'run_command',
        arguments: { command: 'true', sandbox_id: mine.sandbox_id },
      });
      assert.equal(gone.isError, true);
    } finally {
      await one.client.close();
      await close(two);
    }
  });

  live('cancelling a call kills its command and keeps the sandbox', async () => {
    const session = await connect();
    try {
      const base = await run(session.client, 'echo kept > /root/s');
      const abort = new AbortController();
      let streamed = '';
      const call = session.client.callTool(
        {
          name: 'run_command',
          arguments: { command: 'echo started; sleep 100; echo late > /root/s' },
        },
        undefined,
        {
          signal: abort.signal,
          timeout: 120_000,
          onprogress: (progress) => {
            streamed += progress.message ?? '';
            if (streamed.includes('started')) abort.abort('enough');
          },
        },
      );
      await assert.rejects(call);
      let stopped = false;
      for (let attempt = 0; attempt < 100 && !stopped; attempt++) {
        const check = await run(session.client, 'pgrep -x sleep || echo none');
        stopped = check.stdout === 'none\n';
        if (!stopped) await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.ok(stopped, 'the cancelled command still runs');
      const kept = await run(session.client, 'cat /root/s', base.sandbox_id);
      assert.equal(kept.stdout, 'kept\n');
    } finally {
      await close(session);
    }
  });

  live('cancelling a time.sleep(100) cell interrupts it and keeps its state', async () => {
    const session = await connect();
    try {
      const base = await session.client.callTool({ name: 'run_code', arguments: { code: 'kept = 7' } });
      assert.equal(base.isError, false, JSON.stringify(base));
      const abort = new AbortController();
      let streamed = '';
      const call = session.client.callTool(
        { name: 'run_code', arguments: { code: "import time\nprint('sleeping', flush=True)\ntime.sleep(100)" } },
        undefined,
        {
          signal: abort.signal,
          timeout: 120_000,
          onprogress: (progress) => {
            streamed += progress.message ?? '';
            if (streamed.includes('sleeping')) abort.abort('enough');
          },
        },
      );
      await assert.rejects(call);
      const after = await session.client.callTool({ name: 'run_code', arguments: { code: 'kept' } });
      assert.equal(after.isError, false, JSON.stringify(after));
      const structured: unknown = after.structuredContent;
      assert.equal((structured as { result: string }).result, '7');
    } finally {
      await close(session);
    }
  }, 'run_code');
});
