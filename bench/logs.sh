#!/usr/bin/env bash
# The log source at a fixed rate: agent CPU and RSS while a separate process appends RATE JSON
# lines per second for DURATION seconds, and the append-to-record latency (the exported record's
# observed time minus the line's write time, from the file exporter's output).
# Usage: bench/logs.sh [RATE=10000] [DURATION=60] [SIZE=256]   (builds the release binary first)
# SINK=none: no exporter (records only counted in metrics; no latency figure).
# WRITES=line: the writer makes one write(2) per line (as logging.FileHandler does), not 10 ms bursts.
# AGENT_BIN: the agent binary to run (default: $CARGO_TARGET_DIR or ./target, release/sidelight).
set -euo pipefail
cd "$(dirname "$0")/.."
agent_bin=${AGENT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/sidelight}
case $agent_bin in /*) ;; *) agent_bin=$PWD/$agent_bin ;; esac  # the agent runs from its work dir
rate=${1:-10000}; duration=${2:-60}; size=${3:-256}
cargo build --release --quiet -p sidelight
work=$(mktemp -d)
# The agent is waited for before its directory goes: it writes its checkpoint as it stops.
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/logs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/bench.yaml" <<YAML
http: { listen: 127.0.0.1:$port }
store: { path: $work/data }
host: { interval: 15s }
logs:
  - { source: bench, include: ["$work/logs/*.log"] }
YAML
if [ "${SINK:-file}" != none ]; then
  printf 'export:\n  file: { path: %s/out/export.jsonl, signals: [logs], max_bytes: 4294967296 }\n' "$work" >> "$work/bench.yaml"
fi
(cd "$work" && exec "$agent_bin" run --config bench.yaml 2>"$work/agent.log") &
pid=$!
sleep 2
tps=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
python3 bench/log_rate_writer.py "$work/logs/app.log" "$rate" "$duration" "$size" > "$work/writer.json" &
wpid=$!
sleep 1
c0=$(cpu); t0=$(date +%s.%N); max_rss=0; sum_rss=0; n=0
while kill -0 "$wpid" 2>/dev/null; do
  r=$(rss_kib); n=$((n+1)); sum_rss=$((sum_rss+r)); [ "$r" -gt "$max_rss" ] && max_rss=$r
  sleep 1
done
c1=$(cpu); t1=$(date +%s.%N)
sleep 2
python3 - "$work/out/export.jsonl" "$c0" "$c1" "$t0" "$t1" "$tps" "$max_rss" "$sum_rss" "$n" "$rate" "$size" "$work/writer.json" <<'PY'
import json, sys
path = sys.argv[1]
c0, c1, t0, t1, tps, mx, total, n = map(float, sys.argv[2:10])
rate, size = sys.argv[10], sys.argv[11]
written = json.load(open(sys.argv[12]))["lines"]
lat = []
import os
for line in (open(path) if os.path.exists(path) else []):
    for rl in json.loads(line)["resourceLogs"]:
        for sl in rl["scopeLogs"]:
            for r in sl["logRecords"]:
                t = next((int(kv["value"]["intValue"]) for kv in r["attributes"] if kv["key"] == "t_ns"), None)
                if t is not None:
                    lat.append(int(r["observedTimeUnixNano"]) - t)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else float("nan")
wall = t1 - t0
cpu_s = (c1 - c0) / tps
print(f"{rate} lines/s x {size} B for {wall:.0f}s: agent CPU {100*cpu_s/wall:.2f}% of one core, "
      f"RSS mean {total/n/1024:.1f} MiB max {mx/1024:.1f} MiB; exported {len(lat)}/{written} lines; "
      f"append-to-record latency p50 {q(0.5):.1f} ms p99 {q(0.99):.1f} ms max {(lat[-1] if lat else 0)/1e6:.1f} ms")
PY
