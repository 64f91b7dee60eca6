#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), one after another, single
# job, starting from the committed corpus (fuzz/corpus/<target>/, read only here: new inputs go
# to a temporary directory). Installs cargo-fuzz when it is missing. Exits non-zero on the first
# crash, hang (-timeout), huge allocation (-malloc_limit_mb) or RSS blow-up; libFuzzer leaves
# the input in fuzz/artifacts/<target>/.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the -Z flags it needs
# (-Zsanitizer=address, the sancov passes). See fuzz/README.md.
#
# Environment: FUZZ_TARGET_DIR (default fuzz/target), FUZZ_NICE (default 15),
# FUZZ_TARGETS (default: every target).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
log() { printf '==> %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
# The bundled SQLite (rusqlite, linked into the agent targets) has two static arrays named
# `aiOff`, which AddressSanitizer's ODR check reports at start-up; unrelated to what is fuzzed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
targets=${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}

log "building the fuzz targets"
for t in $targets; do (cd fuzz && cargo fuzz build --target-dir "$target_dir" "$t"); done

max_len() {
  case $1 in
    multiline | otlp_protobuf | otlp_json) echo 16384 ;;
    *) echo 8192 ;;
  esac
}

for t in $targets; do
  scratch=$(mktemp -d)
  mkdir "$scratch/corpus"
  log "fuzzing $t for ${seconds}s"
  set +e
  (cd fuzz && nice -n "${FUZZ_NICE:-15}" cargo fuzz run --target-dir "$target_dir" "$t" "$scratch/corpus" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
    -max_len="$(max_len "$t")" -print_final_stats=1) >"$scratch/log" 2>&1
  status=$?
  set -e
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Test unit written|Done [0-9]+ runs)' "$scratch/log" || true
  [ "$status" -eq 0 ] || tail -n 60 "$scratch/log" >&2
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $t failed (exit $status); see fuzz/artifacts/$t/" >&2
    exit "$status"
  fi
done
log "fuzzing: every target ran ${seconds}s without a finding"
