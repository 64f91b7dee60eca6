#!/usr/bin/env bash
# Runs every fault-injection scenario in turn (builds once), prints their PASS/FAIL lines and
# exits non-zero if any failed. Not part of scripts/test.sh: at full size this takes about
# 25 minutes. FAULTS_QUICK=1 runs the shortened versions (a few minutes).
# Usage: faults/run-all.sh [SCENARIO...]   (default: all; names without .sh)
# Env: as faults/lib.sh (FAULTS_QUICK, FAULTS_NO_BUILD, AGENT_BIN, CARGO_TARGET_DIR, ...).
set -uo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kill9_logs sink_outage restart_spill disk_full slack_429 clock_jump)
if [ "${FAULTS_NO_BUILD:-0}" != 1 ]; then
  (cd "$dir/.." && nice cargo build --release --quiet -p sidelight &&
    nice cargo build --release --quiet -p sidelight-collector --example otlp_load &&
    nice cargo build --quiet -p sidelight-testkit --bin loopback-slack) || exit 1
fi
results=()
failed=0
for s in "${scenarios[@]}"; do
  start=$(date +%s)
  line=$(FAULTS_NO_BUILD=1 bash "$dir/$s.sh" | tail -1)
  rc=${PIPESTATUS[0]}
  [ -n "$line" ] || line="FAIL $s: no verdict (exit $rc)"
  [ "$rc" = 0 ] || failed=1
  results+=("$line ($(( $(date +%s) - start ))s)")
  echo "${results[-1]}"
done
echo
echo "== fault injection: ${#scenarios[@]} scenarios =="
printf '%s\n' "${results[@]}"
exit "$failed"
