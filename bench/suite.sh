#!/usr/bin/env bash
# Every benchmark the issues name, in one command, against its goal; writes the table between
# the `suite:begin` / `suite:end` markers of BENCHMARKS.md (and prints it).
#
#   bench/suite.sh [RUNS=3]          # the full suite: ~25 minutes on the 2-core VM
#   QUICK=1 bench/suite.sh 1         # short windows, to check the harness (~6 minutes)
#
# What runs (load generators and the agent are separate processes wherever the figure is about
# the agent under load; the in-process ones measure a code path on one thread's CPU clock):
#   idle       bench/idle.sh IDLE_SECONDS           release agent on its embedded defaults
#   process    cargo bench --bench process_cycle    CPU per collection cycle, 100 / 500 processes
#   metrics    cargo bench --bench metrics_latency  /metrics p99 at 1k / 10k / 100k series
#   log_tail   cargo bench --bench log_tail         tail+parse+redact+OTLP MiB per CPU-second
#   logs       bench/logs.sh 10000 LOG_SECONDS      10k lines/s: CPU and RSS with no exporter (SINK=none), written
#                                                    in 10 ms bursts and one write per line (WRITES=line), then with
#                                                    the file exporter and its append-to-record p99 (RUNS runs)
#   otlp       bench/otlp.sh RUNS SAT FIXED          spans/s per core at saturation, 10k spans/s CPU/RSS
#   otlp_metrics bench/otlp_metrics.sh RUNS WINDOW  10k OTLP metric points/s from the Python SDK:
#                                                    CPU with 15 s scrapes; /metrics p99 with them held
#   alerts     cargo bench --bench alert_eval       200 Prometheus rules over 10k series, per Alerting::cycle
#   dora       cargo bench --bench dora_report      90-day report, 100 services
#   dora_hub   cargo bench --bench dora_hub         the hub's recomputations on a 400-day history
#   host       bench/host_marker.py                 pipe round trip and a compute loop, before and after
# Raw outputs are kept in $OUT (default: a new directory under /tmp, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
if [ -n "${QUICK:-}" ]; then
  idle_s=${IDLE_SECONDS:-30}; log_s=${LOG_SECONDS:-15}; sat=${SAT:-4}; fixed=${FIXED:-6}
  metrics_s=${METRICS_SECONDS:-31}
else
  idle_s=${IDLE_SECONDS:-300}; log_s=${LOG_SECONDS:-60}; sat=${SAT:-8}; fixed=${FIXED:-20}
  metrics_s=${METRICS_SECONDS:-60}
fi
out=${OUT:-$(mktemp -d /tmp/sidelight-suite.XXXXXX)}
mkdir -p "$out"
started=$(date -u +%Y-%m-%dT%H:%MZ)
log() { printf '==> %s\n' "$*" >&2; }

log "host markers (wake-up and compute cost, to compare runs on different days)"
python3 bench/host_marker.py > "$out/host.txt"
log "building release binaries and benches"
cargo build --release --quiet -p sidelight
cargo bench --no-run --quiet -p sidelight -p sidelight-collector 2>/dev/null

log "idle footprint (${idle_s}s)"
bash bench/idle.sh "$idle_s" > "$out/idle.txt"
log "process collection cycle"
cargo bench --quiet -p sidelight-collector --bench process_cycle > "$out/process.txt" 2>/dev/null
log "/metrics latency"
cargo bench --quiet -p sidelight --bench metrics_latency > "$out/metrics.txt" 2>/dev/null
log "log tail + parse per core"
cargo bench --quiet -p sidelight-collector --bench log_tail > "$out/log_tail.txt" 2>/dev/null
: > "$out/logs.txt"; : > "$out/logs_none.txt"; : > "$out/logs_lines.txt"
for r in $(seq 1 "$runs"); do
  log "10k lines/s, run $r of $runs (${log_s}s each: no exporter, no exporter one write per line, the file exporter)"
  SINK=none bash bench/logs.sh 10000 "$log_s" 256 >> "$out/logs_none.txt"
  WRITES=line SINK=none bash bench/logs.sh 10000 "$log_s" 256 >> "$out/logs_lines.txt"
  bash bench/logs.sh 10000 "$log_s" 256 >> "$out/logs.txt"
done
log "OTLP saturation and 10k spans/s ($runs runs)"
bash bench/otlp.sh "$runs" "$sat" "$fixed" > "$out/otlp.txt"
log "10k OTLP metric points/s from the Python SDK ($runs runs)"
bash bench/otlp_metrics.sh "$runs" "$metrics_s" > "$out/otlp_metrics.txt"
log "rule evaluation"
cargo bench --quiet -p sidelight --bench alert_eval > "$out/alerts.txt" 2>/dev/null
log "DORA report"
cargo bench --quiet -p sidelight --bench dora_report > "$out/dora.txt" 2>/dev/null
log "DORA hub"
cargo bench --quiet -p sidelight --bench dora_hub > "$out/dora_hub.txt" 2>/dev/null

python3 bench/host_marker.py >> "$out/host.txt"
python3 bench/suite_report.py "$out" "$started" "bench/suite.sh $runs${QUICK:+ (QUICK=1)}" BENCHMARKS.md
log "raw outputs in $out"
