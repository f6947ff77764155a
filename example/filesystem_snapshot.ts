/**
 * Filesystem snapshots: save a sandbox's files under a name, then start new sandboxes from it,
 * on the same server instance or on another one sharing its FILESYSTEM_SNAPSHOT_PATH. Without
 * that setting this fails with the server's message.
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/filesystem_snapshot.ts [url] [url2]
 *
 * `url` defaults to $SANDBOX_URL, then ws://127.0.0.1:8080; `url2` (where the new sandbox is
 * created) defaults to `url`. The snapshot is deleted at the end (`DELETE /snapshots/{name}`).
 */
import { Sandbox, SandboxError } from '@cloud-run-sandbox/client';

// For a server started with SANDBOX_API_KEYS (undefined: no key is sent).
const apiKey = process.env['SANDBOX_API_KEY'];
const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';
const url2 = process.argv[3] ?? url;
// Names: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot).
const name = `example-snapshot-${Date.now()}`;

/** The server's HTTP base URL for a ws(s):// or http(s):// base URL. */
function httpUrl(base: string): string {
  return base.replace(/^ws(s?):\/\//, 'http$1://').replace(/\/+$/, '');
}

async function main(): Promise<void> {
  const s1 = await Sandbox.create(url, { apiKey });
  let saved = false;
  try {
    try {
      await s1.run("mkdir -p /root/project && echo 'print(\"from the snapshot\")' > /root/project/main.py", 'bash');
      await s1.snapshotFilesystem(name); // the session continues
      saved = true;
      console.log(`saved snapshot ${name} of sandbox ${s1.sandboxId} on ${url}`);
    } finally {
      await s1.terminate();
    }

    // A new sandbox (its own id and token) with the snapshot's files, none of s1's processes.
    const s3 = await Sandbox.create(url2, { apiKey, filesystemSnapshotName: name });
    try {
      const result = await s3.run('python3 /root/project/main.py', 'bash');
      console.log(`new sandbox ${s3.sandboxId} on ${url2} runs: ${result.stdout.trim()}`);
    } finally {
      await s3.terminate();
    }

    const listed = (await (await fetch(`${httpUrl(url)}/snapshots`)).json()) as { snapshots: { name: string }[] };
    console.log(`GET /snapshots lists it: ${listed.snapshots.some((s) => s.name === name)}`);
  } finally {
    if (saved) {
      const response = await fetch(`${httpUrl(url)}/snapshots/${encodeURIComponent(name)}`, { method: 'DELETE' });
      console.log(`DELETE /snapshots/${name}: ${response.status}`);
    }
  }
}

main().catch((error: unknown) => {
  if (error instanceof SandboxError) {
    console.error(`${error.name}${error.status ? ` [${error.status}]` : ''}: ${error.message}`);
  } else {
    console.error(error);
  }
  process.exitCode = 1;
});
