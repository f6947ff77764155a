/**
 * Checkpoint and restore: save a sandbox (files and running processes) on one server instance,
 * then attach to it again, on the same instance or on another one sharing its
 * CHECKPOINT_AND_RESTORE_PATH. Without that setting this fails with the server's message.
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/checkpoint.ts [url] [url2]
 *
 * `url` defaults to $SANDBOX_URL, then ws://127.0.0.1:8080; `url2` (where the sandbox is
 * restored) defaults to `url`.
 */
import { Sandbox, SandboxError } from '@cloud-run-sandbox/client';

// For a server started with SANDBOX_API_KEYS (undefined: no key is sent).
const apiKey = process.env['SANDBOX_API_KEY'];
const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';
const url2 = process.argv[3] ?? url;

// A background process that writes an increasing number to /root/count every 0.2 s; the bash
// line waits until it has counted a little, then prints the count.
const COUNTER = `nohup python3 -c "
import itertools, os, time
for i in itertools.count():
    open('/root/count.tmp', 'w').write(str(i))
    os.replace('/root/count.tmp', '/root/count')
    time.sleep(0.2)
" >/dev/null 2>&1 &
until [ "$(cat /root/count 2>/dev/null || echo 0)" -ge 3 ]; do sleep 0.1; done
cat /root/count`;

async function main(): Promise<void> {
  const s1 = await Sandbox.create(url, { apiKey, enableCheckpoint: true });
  const id = s1.sandboxId;
  let restored: Sandbox | undefined;
  try {
    await s1.run("echo 'state before the checkpoint' > /root/state.txt", 'bash');
    const before = await s1.run(COUNTER, 'bash');
    console.log(`sandbox ${id} on ${url}: counter at ${before.stdout.trim()}`);
    await s1.checkpoint(); // save filesystem + running processes, end this session
    console.log(`checkpointed (handle state: ${s1.state})`);

    // Later, possibly on another server instance. In this process the token is remembered;
    // from another process pass it: Sandbox.attach(url2, id, token).
    const s2 = await Sandbox.attach(url2, id, undefined, { apiKey });
    restored = s2;
    const state = await s2.run('cat /root/state.txt; echo "counter at $(cat /root/count)"; sleep 1; echo "counter at $(cat /root/count)"', 'bash');
    console.log(`restored on ${url2}: ${state.stdout.trim().split('\n').join(', ')}`);

    // The restored sandbox is a normal session: stdin works as before.
    const greet = await s2.exec("print(f'Hello, {input()}!')", 'python');
    await greet.write('restored sandbox\n');
    console.log(`python says: ${(await greet.stdout.readAll()).trim()}`);
  } finally {
    // Deletes the sandbox and its saved state (s1.terminate() would go through s2's session).
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
