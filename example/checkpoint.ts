/**
 * Checkpoint and restore: save a sandbox (files and running processes), then attach to it again.
 * The server needs CHECKPOINT_AND_RESTORE_PATH; without it this fails with the server's message.
 *
 *   cd clients/js && npm ci && npx tsx ../../example/checkpoint.ts [url]
 */
import { Sandbox, SandboxError } from '../clients/js/src/sandbox';

const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';

async function main(): Promise<void> {
  const s1 = await Sandbox.create(url, { enableCheckpoint: true });
  const id = s1.sandboxId;
  let restored: Sandbox | undefined;
  try {
    await s1.run("echo 'state before the checkpoint' > /root/state.txt", 'bash');
    // A background process keeps counting across the checkpoint.
    await s1.run('nohup python3 -c "import time,itertools\nfor i in itertools.count():\n    open(\'/root/count\',\'w\').write(str(i)); time.sleep(0.5)" >/dev/null 2>&1 &', 'bash');
    await s1.checkpoint(); // save filesystem + running processes, disconnect
    console.log(`checkpointed sandbox ${id}`);

    const s2 = await Sandbox.attach(url, id); // later, possibly on another server instance
    restored = s2;
    const state = await s2.run('cat /root/state.txt; sleep 1; echo "counter at $(cat /root/count)"', 'bash');
    console.log(`restored: ${state.stdout.trim()}`);
  } finally {
    await (restored ?? s1).terminate();
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
