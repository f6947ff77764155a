#!/usr/bin/env bash
# Run every test of the project and exit non-zero on any failure:
#   formatting and lints, the fuzz targets for a bounded time (scripts/fuzz.sh), Rust unit
#   tests, Rust integration tests (real server, real runsc), then the Python and TypeScript
#   client suites and the playground page (in headless Chromium) against real servers started
#   here.
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
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "fuzzing (each target ${FUZZ_SECONDS:-12} s)"
bash scripts/fuzz.sh

step "cargo test (unit and integration)"
# Two at a time: every integration test starts servers and sandboxes, on a 2-core machine.
cargo test --all -- --test-threads=2

step "client tests against live servers"
cargo build --bins
work_dir=$(mktemp -d /tmp/crs-client-tests.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_server NAME [VAR=VALUE...]: one server with its own port and state directory; prints
# its URL. Runs in a command substitution, so the PID goes to a file for stop_servers.
start_server() {
  local name=$1 port
  shift
  port=$(free_port)
  env "$@" SANDBOX_STATE_DIR="$work_dir/$name" PORT="$port" SANDBOX_POOL_SIZE=1 \
    target/debug/sandbox-server >"$work_dir/$name.log" 2>&1 &
  echo "$!" >>"$work_dir/pids"
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/status" >/dev/null; then
      echo "ws://127.0.0.1:$port"
      return 0
    fi
    sleep 0.2
  done
  echo "server $name did not start" >&2
  return 1
}
stop_servers() {
  local pids pid
  pids=$(cat "$work_dir/pids" 2>/dev/null || true)
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  # Not our children (started in subshells): wait by polling, at most 30 s.
  for pid in $pids; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  if [ "${keep_log:-0}" = 1 ]; then
    for log in "$work_dir"/*.log; do
      echo "--- $log (last 30 lines) ---" >&2
      tail -n 30 "$log" >&2 || true
    done
  fi
  rm -rf "$work_dir"
}
trap stop_servers EXIT
mkdir -p "$work_dir/shared/checkpoints" "$work_dir/shared/snapshots"
persistence=(CHECKPOINT_AND_RESTORE_PATH="$work_dir/shared/checkpoints" FILESYSTEM_SNAPSHOT_PATH="$work_dir/shared/snapshots")
# A server without persistence (the "not enabled" answers), and two instances sharing the
# checkpoint and snapshot directories (checkpoint on one, attach on the other).
SANDBOX_TEST_URL=$(start_server plain)
SANDBOX_TEST_PERSISTENT_URL=$(start_server persistent-a "${persistence[@]}")
SANDBOX_TEST_PERSISTENT_URL_2=$(start_server persistent-b "${persistence[@]}")
# A server that asks for API keys (two, the clients get one of them).
SANDBOX_TEST_API_KEY="client-test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
SANDBOX_TEST_AUTH_URL=$(start_server api-keys SANDBOX_API_KEYS="other-key-$$,$SANDBOX_TEST_API_KEY")
export SANDBOX_TEST_URL SANDBOX_TEST_PERSISTENT_URL SANDBOX_TEST_PERSISTENT_URL_2
export SANDBOX_TEST_AUTH_URL SANDBOX_TEST_API_KEY

keep_log=1
step "python client"
bash clients/python/run-tests.sh
step "typescript client"
bash clients/js/run-tests.sh
step "playground (headless Chromium)"
bash tests/playground/run-tests.sh
keep_log=0
step "all tests passed"
