/**
 * Cloud Run Sandbox: TypeScript client example.
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/client_example.ts [url]
 *
 * The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080 (use wss://<service> for Cloud Run).
 */
import { Sandbox, SandboxError } from '@cloud-run-sandbox/client';

// For a server started with SANDBOX_API_KEYS (undefined: no key is sent).
const apiKey = process.env['SANDBOX_API_KEY'];
const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';

async function main(): Promise<void> {
  // The README's quick start, exactly as written there (plus the API key).
  const sandbox = await Sandbox.create(url, { apiKey });
  const process = await sandbox.exec("echo 'Hello from the sandbox!'", "bash");
  const stdout = await process.stdout.readAll();
  console.log(`bash says: ${stdout.trim()}`);
  // eslint-disable-next-line @typescript-eslint/no-floating-promises -- the README's line, as written
  sandbox.terminate();

  // A longer session: state persists between executions in one sandbox.
  const box = await Sandbox.create(url, { apiKey, idleTimeout: 120 });
  try {
    console.log(`sandbox ${box.sandboxId}`);
    await box.run("echo 'saved in the sandbox' > /tmp/note.txt", 'bash');
    const py = await box.run("print(open('/tmp/note.txt').read().strip().upper())", 'python');
    console.log(`python read back: ${py.stdout.trim()}`);

    // Streaming output as it comes.
    const counter = await box.exec('for i in 1 2 3; do echo "tick $i"; sleep 0.2; done', 'bash');
    for await (const chunk of counter.stdout) globalThis.process.stdout.write(`  stream: ${chunk}`);
    console.log(`counter exited with ${await counter.wait()}`);

    // A failing command is a result, not an exception.
    const failed = await box.run('echo oops >&2; exit 3', 'bash');
    console.log(`exit code ${failed.exitCode} (${failed.reason}), stderr: ${failed.stderr.trim()}`);

    // stdin, env and cwd.
    const greeter = await box.exec('name = input(); print(f"Hello, {name} from {__import__(\'os\').getcwd()}")', 'python', {
      cwd: '/tmp',
    });
    await greeter.write('World\n');
    await greeter.closeStdin();
    console.log((await greeter.stdout.readAll()).trim());
  } finally {
    await box.terminate();
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
