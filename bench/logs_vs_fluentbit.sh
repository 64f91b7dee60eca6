#!/usr/bin/env bash
# Side by side with Fluent Bit: the agent's log source and Fluent Bit's tail read the same
# Python log files from the head to a discarding sink, alternately, in one sitting; CPU seconds
# until the last record is counted (median of RUNS), the lines-per-CPU-second ratio, peak RSS.
# Usage: bash bench/logs_vs_fluentbit.sh
#   LINES=1000000        records per workload file (files are generated once per LINES into DATA)
#   RUNS=3               runs per reader and workload
#   WORKLOADS=pjl,structlog,loguru,text
#   REDACTION=on|off     the agent's built-in redaction (default on, as users run it)
#   FLUENT_BIT=path      default ../shared/peers/fluent-bit (v5.1.1)
#   AGENT_BIN=path       default $CARGO_TARGET_DIR/release/sidelight, built if missing
#   PYTHON=path          a Python with python-json-logger, structlog and loguru (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export FLUENT_BIT=${FLUENT_BIT:-$root/../shared/peers/fluent-bit}
[ -x "$FLUENT_BIT" ] || FLUENT_BIT=/work/shared/peers/fluent-bit
export AGENT_BIN=${AGENT_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sidelight}
case $AGENT_BIN in /*) ;; *) AGENT_BIN=$root/$AGENT_BIN ;; esac
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=${SIDELIGHT_TEST_PYTHON:-python3}
lines=${LINES:-1000000}
export DATA=${DATA:-${TMPDIR:-/tmp}/sidelight-logs-vs-fluentbit/$lines}
export RUNS=${RUNS:-3} WORKLOADS=${WORKLOADS:-pjl,structlog,loguru,text} REDACTION=${REDACTION:-on}
[ -x "$AGENT_BIN" ] || cargo build --release --quiet -p sidelight
[ -x "$FLUENT_BIT" ] || { echo "no Fluent Bit at $FLUENT_BIT (set FLUENT_BIT=path)" >&2; exit 1; }
IFS=, read -r -a wanted <<<"$WORKLOADS"
missing=()
for w in "${wanted[@]}"; do [ -f "$DATA/$w.log.records" ] || missing+=("$w"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "generating ${missing[*]} ($lines records each) in $DATA" >&2
  "$python" bench/gen_log_workloads.py "$DATA" "$lines" "${missing[@]}" >&2
fi
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); $("$FLUENT_BIT" --version | head -1); agent: $AGENT_BIN ($(git rev-parse --short HEAD)); redaction $REDACTION; $(nproc) CPUs; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 bench/host_marker.py
python3 bench/logs_vs_fluentbit.py
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
