#!/usr/bin/env bash
# Received OTLP metrics (issue 18 item 5): the release agent with no exporter, fed by the
# official OpenTelemetry Python SDK (bench/otlp_metrics_send.py, a separate process) at a fixed
# rate of metric data points over OTLP/gRPC, and scraped every SCRAPE seconds as Prometheus
# would (OpenMetrics Accept header).
#
# Per run (fresh agent each time):
#   load:    RATE points/s (SERIES series exported every SERIES*1000/RATE ms, split over SENDERS
#            Python processes, each a service instance of its own) for WARMUP+WINDOW seconds; over the WINDOW: agent CPU % of a core (user + system, /proc/<pid>/stat),
#            mean and max RSS, points accepted per second (sidelight_receiver_accepted_total) and
#            the scrapes' latency; goal ≤ 3 % of a core.
#   metrics: with those series held, COUNT sequential GETs of /metrics (keep-alive off, as a
#            scraper opens one connection per scrape): p50 / p99 / max and the series served;
#            goal p99 ≤ 5 ms at 10k series.
# The medians over RUNS runs are printed last. Machine load distorts every figure: run it on a
# quiet machine (uptime's load average well below the core count).
#
# Usage: bench/otlp_metrics.sh [RUNS=3] [WINDOW=60]
# Env:   RATE=10000 SERIES=5000 SENDERS=2 FAMILIES=20 SCRAPE=15 WARMUP=10 COUNT=200
#        AGENT_BIN=path (another build of the agent, e.g. to compare before/after)
#        GZIP=1 (every scrape asks for gzip, as Prometheus does; curl decompresses it)
#        PYTHON=path (a Python with tests/python/requirements.txt installed; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; window=${2:-60}
rate=${RATE:-10000}; series=${SERIES:-5000}; families=${FAMILIES:-20}; senders=${SENDERS:-2}
scrape=${SCRAPE:-15}; warmup=${WARMUP:-10}; count=${COUNT:-200}
interval_ms=$((series * 1000 / rate))
target=${CARGO_TARGET_DIR:-$PWD/target}
python=${PYTHON:-$PWD/.venv/bin/python}
"$python" -c 'import opentelemetry.exporter.otlp.proto.grpc' 2>/dev/null || {
  echo "bench/otlp_metrics.sh: $python lacks the OTLP exporter (pip install -r tests/python/requirements.txt)" >&2
  exit 64
}
[ -n "${AGENT_BIN:-}" ] || cargo build --release --quiet -p sidelight
agent_bin=${AGENT_BIN:-$target/release/sidelight}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
tps=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
om='Accept: application/openmetrics-text; version=1.0.0'
# One GET of /metrics: its latency in seconds (curl's time_total), the body saved to $2.
gz=(); [ "${GZIP:-0}" = 1 ] && gz=(--compressed -H 'Accept-Encoding: gzip')
get_metrics() { curl -sf "${gz[@]}" -H "$om" -o "$2" -w '%{time_total}\n' "http://127.0.0.1:$1/metrics"; }
accepted() {   # points accepted so far, from the agent's own counter
  curl -sf "http://127.0.0.1:$1/metrics" |
    awk '/^sidelight_receiver_accepted_total\{.*signal="metrics"/ {s += $NF} END {print s + 0}'
}

results=$work/results.txt
: > "$results"
for r in $(seq "$runs"); do
  hport=$(free_port); gport=$(free_port)
  cat > "$work/bench.yaml" <<YAML
http: { listen: 127.0.0.1:$hport }
store: { path: $work/data }
logs: []
otlp:
  grpc: 127.0.0.1:$gport
  http: null
YAML
  rm -rf "$work/data"
  "$agent_bin" run --config "$work/bench.yaml" 2>"$work/agent.log" &
  agent_pid=$!; pids+=("$agent_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null && break; sleep 0.1; done
  spids=()
  for i in $(seq "$senders"); do
    "$python" bench/otlp_metrics_send.py "127.0.0.1:$gport" $((series / senders)) "$interval_ms" \
      $((warmup + window + 2)) "$families" "b$i" > "$work/send$i.json" 2>"$work/send$i.log" &
    spids+=("$!"); pids+=("$!")
  done
  sleep "$warmup"
  c0=$(cpu_ticks "$agent_pid"); a0=$(accepted "$hport"); t0=$(now)
  : > "$work/scrapes.txt"; max_rss=0; sum_rss=0; n=0
  for s in $(seq "$window"); do
    x=$(rss_kib "$agent_pid"); n=$((n + 1)); sum_rss=$((sum_rss + x))
    [ "$x" -gt "$max_rss" ] && max_rss=$x
    if [ $(((s - 1) % scrape)) -eq 0 ]; then get_metrics "$hport" /dev/null >> "$work/scrapes.txt"; fi
    sleep 1
  done
  c1=$(cpu_ticks "$agent_pid"); a1=$(accepted "$hport"); t1=$(now)
  for i in $(seq "$senders"); do
    wait "${spids[$((i - 1))]}" || { echo "sender $i failed:" >&2; tail -20 "$work/send$i.log" >&2; exit 1; }
  done
  # /metrics latency with the received series held (they expire only after the configured time).
  : > "$work/latency.txt"
  for _ in $(seq "$count"); do get_metrics "$hport" "$work/body.txt" >> "$work/latency.txt"; done
  served=$(grep -vc '^#' "$work/body.txt" || true)
  if ! kill -0 "$agent_pid" 2>/dev/null; then
    echo "the agent exited early; its log:" >&2; tail -20 "$work/agent.log" >&2; exit 1
  fi
  kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true
  python3 - "$c0" "$c1" "$a0" "$a1" "$t0" "$t1" "$tps" "$sum_rss" "$n" "$max_rss" "$served" \
    "$work/scrapes.txt" "$work/latency.txt" >> "$results" <<'PY'
import statistics, sys
c0, c1, a0, a1, t0, t1, tps, sum_rss, n, max_rss, served = map(float, sys.argv[1:12])
scrapes = [float(x) * 1e3 for x in open(sys.argv[12]).read().split()]
lat = sorted(float(x) * 1e3 for x in open(sys.argv[13]).read().split())
wall = t1 - t0
cpu = 100 * (c1 - c0) / tps / wall
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{cpu:.2f} {(a1 - a0) / wall:.0f} {sum_rss / n / 1024:.1f} {max_rss / 1024:.1f} "
      f"{max(scrapes):.2f} {p(0.5):.2f} {p(0.99):.2f} {lat[-1]:.2f} {served:.0f}")
PY
  tail -1 "$results" | awk -v r="$r" '{printf "run %s: agent %s %% of a core at %s points/s (RSS mean %s MiB, max %s; slowest scrape %s ms) | /metrics p50 %s ms p99 %s ms max %s ms, %s samples served\n", r, $1, $2, $3, $4, $5, $6, $7, $8, $9}'
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"median of {len(rows)} runs: agent {med[0]:.2f} % of a core at {med[1]:.0f} points/s "
      f"(goal ≤ 3 %), RSS mean {med[2]:.1f} MiB; /metrics p50 {med[5]:.2f} ms, p99 {med[6]:.2f} ms "
      f"(goal ≤ 5 ms), {med[8]:.0f} samples served")
PY
