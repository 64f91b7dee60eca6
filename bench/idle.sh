#!/usr/bin/env bash
# Idle footprint of the agent on its embedded defaults (host metrics every 15 s, the OTLP
# receivers, one log source with an empty directory): RSS and CPU over DURATION seconds.
# Usage: bench/idle.sh [DURATION=600]   (builds the release binary first)
# AGENT_BIN: the agent binary to run (default: $CARGO_TARGET_DIR or ./target, release/sidelight).
set -euo pipefail
cd "$(dirname "$0")/.."
agent_bin=${AGENT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/sidelight}
case $agent_bin in /*) ;; *) agent_bin=$PWD/$agent_bin ;; esac  # the agent runs from its work dir
duration=${1:-600}
cargo build --release --quiet -p sidelight
work=$(mktemp -d)
# The agent is waited for before its directory goes: it writes its checkpoint as it stops.
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
# The embedded defaults themselves (no --config): /metrics on 127.0.0.1:9464, the OTLP receivers
# on 4317 / 4318, the log source on ./logs/*.log and the store in ./sidelight-data, all under a
# fresh working directory. The three ports must be free.
port=9464
for p in 9464 4317 4318; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench/idle.sh: port $p is in use; the embedded defaults need 9464, 4317 and 4318" >&2
    exit 1
  fi
done
mkdir -p "$work/logs"
(cd "$work" && exec "$agent_bin" run 2>"$work/agent.log") &
pid=$!
sleep 2
tps=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
c0=$(cpu); t0=$(date +%s.%N)
max_rss=0; samples=0; sum_rss=0
end=$(( $(date +%s) + duration ))
while [ "$(date +%s)" -lt "$end" ]; do
  r=$(rss_kib); samples=$((samples+1)); sum_rss=$((sum_rss+r)); [ "$r" -gt "$max_rss" ] && max_rss=$r
  # One scrape every 15 s, like a Prometheus server would do.
  if [ $((samples % 15)) -eq 0 ]; then curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; fi
  sleep 1
done
c1=$(cpu); t1=$(date +%s.%N)
python3 - "$c0" "$c1" "$t0" "$t1" "$tps" "$max_rss" "$sum_rss" "$samples" <<'PY'
import sys
c0, c1, t0, t1, tps, mx, total, n = map(float, sys.argv[1:])
wall = t1 - t0
cpu_s = (c1 - c0) / tps
print(f"idle {wall:.0f}s: CPU {cpu_s:.2f}s = {100*cpu_s/wall:.3f}% of one core; RSS mean {total/n/1024:.1f} MiB, max {mx/1024:.1f} MiB")
PY
