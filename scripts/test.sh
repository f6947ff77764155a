#!/usr/bin/env bash
# Run every test of the project and exit non-zero on any failure:
#   formatting and lints, Rust unit tests, Rust integration tests (real server, real runsc),
#   then the Python and TypeScript client suites against a real server started here.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the tests start runsc sandboxes and need root" >&2
  exit 1
fi

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (runsc, sandbox image)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit and integration)"
# Two at a time: every integration test starts servers and sandboxes, on a 2-core machine.
cargo test --all -- --test-threads=2

step "client tests against a live server"
cargo build --bins
state_dir=$(mktemp -d /tmp/crs-client-tests.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SANDBOX_STATE_DIR="$state_dir/state" PORT="$port" SANDBOX_POOL_SIZE=2 \
  target/debug/sandbox-server >"$state_dir/server.log" 2>&1 &
server_pid=$!
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  if [ "${keep_log:-0}" = 1 ]; then
    echo "--- server log (last 50 lines) ---" >&2
    tail -n 50 "$state_dir/server.log" >&2 || true
  fi
  rm -rf "$state_dir"
}
trap stop_server EXIT
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$port/status" >/dev/null; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then keep_log=1; echo "the server did not start" >&2; exit 1; fi
  sleep 0.2
done
export SANDBOX_TEST_URL="ws://127.0.0.1:$port"

keep_log=1
step "python client"
bash clients/python/run-tests.sh
step "typescript client"
bash clients/js/run-tests.sh
keep_log=0
step "all tests passed"
