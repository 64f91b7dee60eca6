#!/usr/bin/env bash
# Idle footprint of the agent on its embedded defaults (host metrics every 15 s, the OTLP
# receivers, one log source with an empty directory): RSS and CPU over DURATION seconds.
# Usage: bench/idle.sh [DURATION=600]
# AGENT_BIN: the agent binary to run (default: $CARGO_TARGET_DIR or ./target, release/sidelight,
#   built first; a given AGENT_BIN is run as it is, so copies of two builds can be compared).
# IDLE_PEER=fluent-bit: measure Fluent Bit instead, on the nearest equivalent of the defaults
#   (`tail` with `Parser json` and a `DB` on an empty ./logs/*.log, `node_exporter_metrics`
#   every 15 s, `prometheus_exporter` on 127.0.0.1:2021, `null` output); FLUENT_BIT is its
#   binary (default ../shared/peers/fluent-bit).
# The last line printed is the result; the load average is printed with it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
duration=${1:-600}
work=$(mktemp -d)
pid=
# The process is waited for before its directory goes: the agent writes its checkpoint as it stops.
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"' EXIT
mkdir -p "$work/logs"
free_ports() {
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "bench/idle.sh: port $p is in use" >&2
      exit 1
    fi
  done
}
if [ "${IDLE_PEER:-}" = fluent-bit ]; then
  fb=${FLUENT_BIT:-$root/../shared/peers/fluent-bit}
  [ -x "$fb" ] || fb=/work/shared/peers/fluent-bit
  port=2021
  free_ports 2020 "$port"
  name="Fluent Bit ($("$fb" --version | head -1))"
  cat >"$work/parsers.conf" <<'EOF'
[PARSER]
    Name json
    Format json
EOF
  cat >"$work/fb.conf" <<EOF
[SERVICE]
    Flush 1
    Log_Level warn
    Parsers_File $work/parsers.conf
[INPUT]
    Name tail
    Path $work/logs/*.log
    Parser json
    DB $work/fb.db
[INPUT]
    Name node_exporter_metrics
    Tag node
    Scrape_Interval 15
[OUTPUT]
    Name prometheus_exporter
    Match node
    Host 127.0.0.1
    Port $port
[OUTPUT]
    Name null
    Match *
EOF
  (cd "$work" && exec "$fb" -c "$work/fb.conf" 2>"$work/peer.log" >/dev/null) &
  pid=$!
else
  agent_bin=${AGENT_BIN:-}
  if [ -z "$agent_bin" ]; then
    agent_bin=${CARGO_TARGET_DIR:-$root/target}/release/sidelight
    cargo build --release --quiet -p sidelight
  fi
  case $agent_bin in /*) ;; *) agent_bin=$root/$agent_bin ;; esac  # the agent runs from its work dir
  # The embedded defaults themselves (no --config): /metrics on 127.0.0.1:9464, the OTLP
  # receivers on 4317 / 4318, the log source on ./logs/*.log and the store in
  # ./sidelight-data, all under a fresh working directory. The three ports must be free.
  port=9464
  free_ports 9464 4317 4318
  name="sidelight ($agent_bin)"
  (cd "$work" && exec "$agent_bin" run 2>"$work/agent.log") &
  pid=$!
fi
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
c1=$(cpu); t1=$(date +%s.%N); last_rss=$(rss_kib)
echo "$name"
python3 - "$c0" "$c1" "$t0" "$t1" "$tps" "$max_rss" "$sum_rss" "$samples" "$last_rss" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys
c0, c1, t0, t1, tps, mx, total, n, last = map(float, sys.argv[1:10])
wall = t1 - t0
cpu_s = (c1 - c0) / tps
print(f"idle {wall:.0f}s: CPU {cpu_s:.2f}s = {100*cpu_s/wall:.3f}% of one core; RSS mean {total/n/1024:.1f} MiB, "
      f"max {mx/1024:.1f} MiB, at the end {last/1024:.1f} MiB; load average {sys.argv[10]}")
PY
