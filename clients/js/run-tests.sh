#!/usr/bin/env bash
# The TypeScript client's checks, in order: install (from package-lock.json), type-check, lint,
# build, then the unit and integration tests with Node's test runner. Integration tests need a
# live server at $SANDBOX_TEST_URL (e.g. ws://127.0.0.1:8080); without it they are skipped and
# say why. Exits non-zero on the first failure.
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

step "tests (SANDBOX_TEST_URL=${SANDBOX_TEST_URL:-<unset: integration tests skipped>})"
node --import tsx --test --test-reporter=spec test/unit/*.test.ts test/integration/*.test.ts
