#!/usr/bin/env bash
# The playground's checks: its protocol client under Node (client.test.mjs), then the page in
# Debian's headless Chromium driven by playwright-core (playground.test.mjs) against the live
# servers named by SANDBOX_TEST_URL, SANDBOX_TEST_PERSISTENT_URL and SANDBOX_TEST_AUTH_URL /
# SANDBOX_TEST_API_KEY (scripts/test.sh starts them; tests whose server is not set are skipped
# and say why), and against the clients' protocol-2 stand-in server (with the Python of
# $PYTHON or clients/python/.venv, which clients/python/run-tests.sh makes). Screenshots go to
# $PLAYGROUND_ARTIFACTS (default: a new directory under /tmp, printed, removed when the tests
# pass). Chromium comes from Debian (`chromium`, installed here when missing and root);
# playwright-core never downloads a browser. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n== %s\n' "$*"; }

if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "run-tests.sh: Chromium is missing; install Debian's chromium package (as root)" >&2
    exit 1
  fi
  step "apt-get install chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
CHROMIUM=$(command -v "${CHROMIUM:-chromium}")
export CHROMIUM

step "npm ci"
npm ci --no-audit --no-fund

# Screenshots and downloads: kept where PLAYGROUND_ARTIFACTS says, else in a temporary
# directory that is removed when the tests pass (kept to look at when they fail).
keep_artifacts=${PLAYGROUND_ARTIFACTS:+1}
export PLAYGROUND_ARTIFACTS=${PLAYGROUND_ARTIFACTS:-$(mktemp -d /tmp/crs-playground.XXXXXX)}
step "tests ($("$CHROMIUM" --version), artifacts in $PLAYGROUND_ARTIFACTS)"
# --experimental-websocket: Node 20's WebSocket, for the bridge to the protocol-2 stand-in.
node --experimental-websocket --test --test-reporter=spec --test-concurrency=1 \
  client.test.mjs playground.test.mjs
if [ -z "$keep_artifacts" ]; then
  rm -rf "$PLAYGROUND_ARTIFACTS"
fi
