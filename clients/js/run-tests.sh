#!/usr/bin/env bash
# The TypeScript client's checks, in order: install (from package-lock.json), type-check, lint,
# build, then the unit and integration tests with Node's test runner. Integration tests need live
# servers: $SANDBOX_TEST_URL (e.g. ws://127.0.0.1:8080), a server without checkpointing and
# snapshots, and $SANDBOX_TEST_PERSISTENT_URL / $SANDBOX_TEST_PERSISTENT_URL_2, two instances
# sharing CHECKPOINT_AND_RESTORE_PATH and FILESYSTEM_SNAPSHOT_PATH, and $SANDBOX_TEST_AUTH_URL, a
# server started with SANDBOX_API_KEYS, one of whose keys is $SANDBOX_TEST_API_KEY (scripts/test.sh
# starts all four). Tests whose servers are not set are skipped and say why. Exits non-zero on the first
# failure.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n== %s\n' "$*"; }

step "npm ci"
npm ci --no-audit --no-fund

step "tsc --noEmit"
npm run --silent typecheck

step "eslint"
npm run --silent lint

step "build (dist/)"
npm run --silent build

step "tests (SANDBOX_TEST_URL=${SANDBOX_TEST_URL:-<unset: skipped>}, SANDBOX_TEST_PERSISTENT_URL=${SANDBOX_TEST_PERSISTENT_URL:-<unset: skipped>}, SANDBOX_TEST_PERSISTENT_URL_2=${SANDBOX_TEST_PERSISTENT_URL_2:-<unset: skipped>}, SANDBOX_TEST_AUTH_URL=${SANDBOX_TEST_AUTH_URL:-<unset: skipped>})"
node --import tsx --test --test-reporter=spec test/unit/*.test.ts test/integration/*.test.ts
