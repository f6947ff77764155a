#!/usr/bin/env bash
# Fuzz the parsers and the session machine with libFuzzer, on the stable toolchain.
#
#   scripts/fuzz.sh                  every target for FUZZ_SECONDS each (default 12: six targets, 75 s): what CI runs
#   scripts/fuzz.sh session          one target (http_request, session, query, agent_frames, mcp, port_requests)
#   FUZZ_SECONDS=600 scripts/fuzz.sh http_request
#
# Exits non-zero when a target crashes (a panic or a broken invariant in src/fuzzing/), after
# printing the input; the input is kept in target/fuzz/artifacts/<target>/. Reproduce it with
#   target/fuzz/<host triple>/release/<target> target/fuzz/artifacts/<target>/crash-...
# and turn it into a unit test (and a file in fuzz/corpus/<target>/) once fixed.
#
# Inputs libFuzzer finds go to target/fuzz/corpus/<target>/, never into the repository; the
# committed corpus in fuzz/corpus/ is read only. To fold a long run's finds into it, keeping
# only inputs that each cover an edge no other covers (small enough to commit):
#   B=target/fuzz/<host triple>/release; mkdir /tmp/merged
#   $B/session -set_cover_merge=1 -use_counters=0 /tmp/merged fuzz/corpus/session target/fuzz/corpus/session
# then copy the new files of /tmp/merged into fuzz/corpus/session/.
#
# No cargo-fuzz needed: the build passes the same flags `cargo fuzz build --sanitizer none`
# does (coverage instrumentation, `--cfg fuzzing`, debug assertions), all stable rustc flags.
# Address sanitizer would need a nightly toolchain; the library forbids `unsafe`, so it would
# add little here. libfuzzer-sys comes from crates.io and compiles libFuzzer with the C++
# compiler; the build is cached in target/fuzz like any cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(http_request session query agent_frames mcp port_requests)
seconds=${FUZZ_SECONDS:-12}
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for target in "${targets[@]}"; do
  if [ ! -d "fuzz/corpus/$target" ]; then
    echo "fuzz.sh: unknown target $target (known: ${all_targets[*]})" >&2
    exit 2
  fi
done

triple=$(rustc -vV | sed -n 's/^host: //p')
# Only the crates built for `--target` get these flags; build scripts and proc macros do not.
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=target/fuzz
# Not --locked: fuzz/Cargo.lock pins what it lists, and cargo adds what a new dependency of the
# server needs (commit the updated lock then).
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" \
  $(printf -- '--bin %s ' "${targets[@]}")

failed=()
for target in "${targets[@]}"; do
  found="target/fuzz/corpus/$target"
  artifacts="target/fuzz/artifacts/$target"
  mkdir -p "$found" "$artifacts"
  echo "==> fuzzing $target for ${seconds}s" >&2
  dict=()
  if [ -f "fuzz/dict/$target.dict" ]; then dict=(-dict="fuzz/dict/$target.dict"); fi
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak is a failure.
  if ! "target/fuzz/$triple/release/$target" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
      "$found" "fuzz/corpus/$target" 2>"target/fuzz/$target.log"; then
    tail -n 60 "target/fuzz/$target.log" >&2
    for input in $(ls -t "$artifacts" | head -n 1); do
      echo "--- input $artifacts/$input:" >&2
      od -A d -c "$artifacts/$input" | head -n 40 >&2
    done
    failed+=("$target")
    continue
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' \
    "target/fuzz/$target.log" >&2 || true
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each without a crash" >&2
