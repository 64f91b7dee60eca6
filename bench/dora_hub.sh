#!/usr/bin/env bash
# The release DORA hub on a 400-day store of 100 services × 20 deploys/day (800,000 deploy
# events, 3 changes each, an incident a day per service; written once by
# `DORA_HUB_STORE=DIR cargo bench --bench dora_hub`, ending now): start time, then CPU and RSS
# idle and at 1 deployment/s (POST /api/v1/deployments, one a second), each over DURATION
# seconds, and the wall time of `sidelight dora report` on the store.
# Usage: bench/dora_hub.sh [DURATION=300]
# DORA_HUB_WORK=DIR keeps the store there between runs (default: a fresh temp dir, ~1 GB).
# AGENT_BIN: the agent binary (default: $CARGO_TARGET_DIR or ./target, release/sidelight).
set -euo pipefail
cd "$(dirname "$0")/.."
agent_bin=${AGENT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/sidelight}
case $agent_bin in /*) ;; *) agent_bin=$PWD/$agent_bin ;; esac
duration=${1:-300}
port=${PORT:-19464}
cargo build --release --quiet -p sidelight
work=${DORA_HUB_WORK:-$(mktemp -d)}
mkdir -p "$work"
if [ ! -f "$work/data/sidelight.db" ]; then
  DORA_HUB_STORE="$work/data" cargo bench --quiet -p sidelight --bench dora_hub
fi
cat > "$work/agent.yaml" <<YAML
http: { listen: 127.0.0.1:$port }
host: { enabled: false }
logs: []
otlp: { grpc: 127.0.0.1:$((port + 1)), http: 127.0.0.1:$((port + 2)) }
store: { path: $work/data }
dora: { enabled: true }
YAML
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
"$agent_bin" run --config "$work/agent.yaml" 2>"$work/agent.log" &
pid=$!
until curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; do
  kill -0 "$pid" 2>/dev/null || { echo "agent exited; see $work/agent.log" >&2; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
tps=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
python3 -c "import sys; print(f'dora_hub.sh: ready after {float(sys.argv[2]) - float(sys.argv[1]):.1f} s, RSS $(rss_mib) MiB')" "$t0" "$t1"
measure() {  # label seconds post?
  local label=$1 secs=$2 post=$3 c0 c1 w0 w1 k=0 max=0 r
  c0=$(cpu); w0=$(date +%s.%N)
  local end=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ "$post" = 1 ]; then
      now=$(date +%s); k=$((k + 1))
      curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' \
        --data "{\"id\":\"bench-$now-$k\",\"service\":\"service-$(printf %03d $((k % 100)))\",\"environment\":\"production\",\"version\":\"bench-$now-$k\",\"started_at\":$((now - 60)),\"finished_at\":$now,\"commits\":[{\"sha\":\"bench$now$k\",\"timestamp\":$((now - 3600))}]}" \
        "http://127.0.0.1:$port/api/v1/deployments"
    fi
    r=$(rss_mib); [ "$r" -gt "$max" ] && max=$r
    sleep 1
  done
  c1=$(cpu); w1=$(date +%s.%N)
  python3 -c "
import sys
c0, c1, w0, w1, tps = map(float, sys.argv[1:6])
print(f'dora_hub.sh: {sys.argv[6]} {w1 - w0:.0f}s: CPU {(c1 - c0) / tps:.2f}s = {100 * (c1 - c0) / tps / (w1 - w0):.2f}% of one core; RSS max {sys.argv[7]} MiB')
" "$c0" "$c1" "$w0" "$w1" "$tps" "$label" "$max"
}
measure idle "$duration" 0
measure "1 deployment/s" "$duration" 1
kill "$pid"; wait "$pid" 2>/dev/null || true
r0=$(date +%s.%N)
"$agent_bin" dora report --config "$work/agent.yaml" --window 30d > "$work/report.txt"
r1=$(date +%s.%N)
python3 -c "import sys; print(f'dora_hub.sh: sidelight dora report --window 30d: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s wall ({sys.argv[3]} rows)')" "$r0" "$r1" "$(($(wc -l < "$work/report.txt") - 2))"
