#!/usr/bin/env bash
# The TypeScript client's checks, in order: install the dev tools (from package-lock.json),
# type-check, lint, check that the committed dist/ is what src/ builds to, the unit and
# integration tests (Node's test runner), and the install as the README says it: a clean copy of
# clients/js (the files a clone has) installed with `npm install clients/js/` into a new empty
# project, imported by name there, and its example run against $SANDBOX_TEST_URL.
#
# Integration tests need live servers: $SANDBOX_TEST_URL (e.g. ws://127.0.0.1:8080), a server
# without checkpointing and snapshots, and $SANDBOX_TEST_PERSISTENT_URL /
# $SANDBOX_TEST_PERSISTENT_URL_2, two instances sharing CHECKPOINT_AND_RESTORE_PATH and
# FILESYSTEM_SNAPSHOT_PATH, and $SANDBOX_TEST_AUTH_URL, a server started with SANDBOX_API_KEYS, one
# of whose keys is $SANDBOX_TEST_API_KEY (scripts/test.sh starts all four). Tests whose servers are
# not set are skipped and say why. The protocol-2 tests also run against the Python client's stand-in server
# (clients/python/tests/protocol2_fake.py) when a Python with `websockets` is found. Exits
# non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
repo=$(cd ../.. && pwd)

step() { printf '\n== %s\n' "$*"; }

step "npm ci"
npm ci --no-audit --no-fund

step "tsc --noEmit"
npm run --silent typecheck

step "eslint"
npm run --silent lint

step "dist/ is up to date"
npm run --silent check-dist

step "tests (SANDBOX_TEST_URL=${SANDBOX_TEST_URL:-<unset: skipped>}, SANDBOX_TEST_PERSISTENT_URL=${SANDBOX_TEST_PERSISTENT_URL:-<unset: skipped>}, SANDBOX_TEST_PERSISTENT_URL_2=${SANDBOX_TEST_PERSISTENT_URL_2:-<unset: skipped>}, SANDBOX_TEST_AUTH_URL=${SANDBOX_TEST_AUTH_URL:-<unset: skipped>})"
node --import tsx --test --test-reporter=spec test/unit/*.test.ts test/integration/*.test.ts

step "npm install clients/js/ in a clean project, as the README says"
project=$(mktemp -d /tmp/crs-js-install.XXXXXX)
trap 'rm -rf "$project"' EXIT
# What a clone has: the tracked files, and new ones not ignored (no node_modules, nothing built
# here but the committed dist/).
(cd "$repo" && git ls-files --cached --others --exclude-standard -- clients/js) | while read -r file; do
  [ -e "$repo/$file" ] || continue
  mkdir -p "$project/$(dirname "$file")"
  cp "$repo/$file" "$project/$file"
done
mkdir -p "$project/example"
cp "$repo/example/client_example.ts" "$project/example/"
(
  cd "$project"
  npm install --no-audit --no-fund clients/js/
  node --input-type=module -e "
    import { Sandbox, SandboxError, STATUS_ERRORS } from '@cloud-run-sandbox/client';
    if (typeof Sandbox.create !== 'function' || !(new SandboxError('x') instanceof Error)) process.exit(1);
    console.log('imported @cloud-run-sandbox/client by name:', Object.keys(STATUS_ERRORS).length, 'error statuses');
  "
  if [ -n "${SANDBOX_TEST_URL:-}" ]; then
    npx --no-install tsx example/client_example.ts "$SANDBOX_TEST_URL"
    if [ -n "${SANDBOX_TEST_AUTH_URL:-}" ]; then
      SANDBOX_API_KEY="$SANDBOX_TEST_API_KEY" npx --no-install tsx example/client_example.ts "$SANDBOX_TEST_AUTH_URL"
    fi
  else
    echo "SANDBOX_TEST_URL is not set: example/client_example.ts not run"
  fi
)
