// Checks that dist/ (committed, so that `npm install clients/js/` works from a fresh clone with
// no build step) is exactly what `npm run build` makes from src/. Exits non-zero, naming the
// files that differ, when it is stale: run `npm run build` and commit dist/.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const here = join(import.meta.dirname, '..');
const fresh = mkdtempSync(join(tmpdir(), 'client-dist-'));

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

try {
  execFileSync(join(here, 'node_modules', '.bin', 'tsc'), ['-p', join(here, 'tsconfig.build.json'), '--outDir', fresh], {
    stdio: 'inherit',
  });
  // Source maps name their sources relative to where they were written: compare them as if
  // written to dist/.
  const read = (root, path) => {
    const text = readFileSync(path, 'utf8');
    return path.endsWith('.map') ? text.replaceAll(relative(root, join(here, 'src')), '../src') : text;
  };
  const built = new Map(files(fresh).map((p) => [relative(fresh, p), read(fresh, p)]));
  const committed = new Map(files(join(here, 'dist')).map((p) => [relative(join(here, 'dist'), p), read(join(here, 'dist'), p)]));
  const stale = [...new Set([...built.keys(), ...committed.keys()])].filter((f) => built.get(f) !== committed.get(f)).sort();
  if (stale.length > 0) {
    console.error(`dist/ is not what src/ builds to (${stale.join(', ')}): run \`npm run build\` in clients/js and commit dist/`);
    process.exit(1);
  }
  console.log(`dist/ is up to date (${built.size} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
