#!/usr/bin/env bash
# Callgrind instructions per python-json-logger line for serde_json, sonic-rs and simd-json,
# each parsing into the same borrowed top-level fields (see src/main.rs). Instructions per line =
# (count over N lines - count over 1 line) / (N - 1).
# Usage: bash run.sh [N=20000]   RUSTFLAGS/TARGET as for cargo (default: baseline x86_64)
#   PYTHON=path (a Python with python-json-logger; default /work/main/.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")"
n=${1:-20000}
python=${PYTHON:-/work/main/.venv/bin/python}
repo=$(git rev-parse --show-toplevel 2>/dev/null || echo ../..)
data=${TMPDIR:-/tmp}/sidelight-logs-vs-fluentbit
for k in 1 "$n"; do
  [ -f "$data/$k/pjl.log" ] || "$python" "$repo/bench/gen_log_workloads.py" "$data/$k" "$k" pjl >&2
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/json-crates-callgrind}
cargo build --release --quiet
bin=$CARGO_TARGET_DIR/release/json-crates-callgrind
out=$(mktemp -d "${TMPDIR:-/tmp}/json-crates.XXXX")
refs() { grep -h 'I *refs' "$1" | tr -d ',' | awk '{print $NF}'; }
echo "| mode | instructions/line |"
echo "|---|---|"
for m in none serde_json sonic simd sonic_dom simd_borrowed; do
  for k in 1 "$n"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$m.$k" "$bin" "$m" "$data/$k/pjl.log" \
      >"$out/vg.$m.$k" 2>&1
  done
  a=$(refs "$out/vg.$m.1")
  b=$(refs "$out/vg.$m.$n")
  echo "| $m | $(((b - a) / (n - 1))) |"
done
