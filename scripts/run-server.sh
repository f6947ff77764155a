#!/usr/bin/env bash
# Start the server on this machine: install what is missing (runsc, the sandbox image, local
# checkpoint/snapshot directories), build the server in release mode, and run it in the
# foreground on 127.0.0.1:${PORT:-8080}. Every SANDBOX_* variable in the README applies.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run-server.sh: runsc needs root; run it as root" >&2
  exit 1
fi

bash scripts/setup.sh
cargo build --release --bins

export PORT="${PORT:-8080}"
export SANDBOX_ROOTFS="${SANDBOX_ROOTFS:-/var/lib/cloud-run-sandbox/rootfs}"
# Local directories (made by setup.sh) as the embedded default for checkpoints and snapshots.
export CHECKPOINT_AND_RESTORE_PATH="${CHECKPOINT_AND_RESTORE_PATH:-/var/lib/cloud-run-sandbox/checkpoints}"
export FILESYSTEM_SNAPSHOT_PATH="${FILESYSTEM_SNAPSHOT_PATH:-/var/lib/cloud-run-sandbox/snapshots}"
exec target/release/sandbox-server
