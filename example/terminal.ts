/**
 * Cloud Run Sandbox: terminal example (TypeScript). A shell on a pseudo-terminal in the
 * sandbox: type into it, resize it, interrupt a job with ctrl-C, end it with its exit code.
 *
 *   npm install clients/js/        # once, from the repository root (see README.md)
 *   npx tsx example/terminal.ts [url]
 *
 * The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. For an interactive shell in your
 * own terminal, use the CLI instead: `codesandbox shell URL` (installed with the Python client).
 */
import { Sandbox } from '@cloud-run-sandbox/client';

const apiKey = process.env['SANDBOX_API_KEY'];
const url = process.argv[2] ?? process.env['SANDBOX_URL'] ?? 'ws://127.0.0.1:8080';

// Escape sequences (colours, bracketed paste) and carriage returns: left out when showing lines
// here. The output is raw bytes, as a terminal emulator (xterm.js...) gets them.
const escapes = /\x1b\[[0-9;?]*[A-Za-z]|\r/g; // eslint-disable-line no-control-regex

async function main(): Promise<void> {
  const sandbox = await Sandbox.create(url, { apiKey });
  try {
    // What the terminal printed since the last marker, and a way to wait for the next one.
    let seen = '';
    let wake: (() => void) | undefined;
    const decoder = new TextDecoder();
    // The login shell on an 80x24 terminal (`command: 'python3'` etc. runs something else).
    const term = await sandbox.pty.create({
      cols: 80,
      rows: 24,
      onData: (bytes) => {
        seen += decoder.decode(bytes, { stream: true });
        wake?.();
      },
    });
    const readUntil = async (marker: string): Promise<string> => {
      const deadline = Date.now() + 60_000;
      while (!seen.includes(marker)) {
        if (Date.now() > deadline) throw new Error(`no ${marker} in the terminal's output: ${seen}`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 1000);
        });
      }
      const text = seen.replace(escapes, '');
      seen = '';
      return text;
    };

    // Keystrokes: "\r" is Enter. The marker's arithmetic shows only in the output, not in the
    // echo of the typed line.
    await term.write("tty; stty size; python3 -c 'import sys; print(sys.stdout.isatty())'\r");
    await term.write('echo done-$((1+1))\r');
    let text = await readUntil('done-2');
    const tty = /\/dev\/pts\/\d+/.exec(text)?.[0] ?? '?';
    console.log(`on ${tty}; size and isatty:`, ...(text.match(/^(24 80|True)$/gm) ?? []));

    // The window follows a resize (the program gets SIGWINCH).
    await term.resize(120, 40);
    await term.write('stty size; echo done-$((2+2))\r');
    text = await readUntil('done-4');
    console.log('after resize:', ...(text.match(/^\d+ \d+$/gm) ?? []));

    // Ctrl-C interrupts the job in the foreground; the shell goes on. The job prints its marker
    // itself and then becomes `sleep`: once the marker shows, the job ctrl-C must reach is in
    // the foreground (a ctrl-C typed before would go to the shell instead).
    await term.write("bash -c 'echo sleeping-$((3*3)); exec sleep 100'\r");
    await readUntil('sleeping-9');
    await term.write('\x03');
    await term.write('echo back-$((4*4))\r');
    await readUntil('back-16');
    console.log('ctrl-C stopped `sleep 100`; the shell goes on');

    // The shell's exit code comes back as any process's.
    await term.write('exit 3\r');
    const code = await term.wait();
    console.log(`the shell exited with code ${code}`);
    if (code !== 3) throw new Error(`expected exit code 3, got ${code}`);
  } finally {
    await sandbox.terminate();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
