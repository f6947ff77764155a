/**
 * Filesystem snapshots: save a sandbox's files under a name, start new sandboxes from it.
 * The server needs FILESYSTEM_SNAPSHOT_PATH; without it this fails with the server's message.
 *
 *   cd clients/js && npm ci && npx tsx ../../example/filesystem_snapshot.ts [url]
 */
import { Sandbox, SandboxError } from '../clients/js/src/sandbox';

const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';
const name = `example-snapshot-${Date.now()}`;

async function main(): Promise<void> {
  const s1 = await Sandbox.create(url);
  try {
    await s1.run("mkdir -p /root/project && echo 'print(\"from the snapshot\")' > /root/project/main.py", 'bash');
    await s1.snapshotFilesystem(name);
    console.log(`saved snapshot ${name} of sandbox ${s1.sandboxId}`);
  } finally {
    await s1.terminate();
  }

  const s3 = await Sandbox.create(url, { filesystemSnapshotName: name });
  try {
    const result = await s3.run('python3 /root/project/main.py', 'bash');
    console.log(`new sandbox ${s3.sandboxId} runs: ${result.stdout.trim()}`);
  } finally {
    await s3.terminate();
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
