#!/usr/bin/env bash
# OTLP/gRPC end to end: the release agent with its gRPC receiver, span metrics (http.route
# dimension) and export.otlp (gRPC) to a counting sink, fed by a load generator — three separate
# processes (collector/examples/otlp_load.rs is both the generator and the sink).
#
# Per batch size (100 and 512 spans per request, shaped like a web service's traces):
#   saturation: 16 concurrent calls for WARMUP+SAT seconds; spans forwarded (counted by the sink)
#               per second of agent CPU (user + system, /proc/<pid>/stat) over the SAT window;
#   fixed rate: 10,000 spans/s for WARMUP+FIXED seconds on a fresh agent; agent CPU % of a core
#               and RSS (sampled every second) over the FIXED window.
# Every scenario runs RUNS times (fresh agent and sink each time); the medians are printed last.
#
# Usage: bench/otlp.sh [RUNS=3] [SAT=10] [FIXED=20]
# Env:   COMPRESSION=gzip|zstd|none (export.otlp.compression; default: the agent's default)
#        LEVEL=N (export.otlp.compression_level), BATCHES="100 512", RATE=10000, WARMUP=3
#        AGENT_BIN=path (another build of the agent, e.g. to compare before/after in one run)
#        CLIENT=grpcio|tonic: the fixed-rate sender. grpcio (default when .venv has it: the
#        transport of Python's OTLP exporter) writes a request's frames together, as a Python
#        service does; tonic (the Rust load tool) writes HEADERS and each DATA frame separately,
#        which wakes the agent about twice per request. Saturation always uses the Rust tool.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; sat=${2:-10}; fixed=${3:-20}
warmup=${WARMUP:-3}; rate=${RATE:-10000}; batches=${BATCHES:-100 512}
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet -p sidelight
cargo build --release --quiet -p sidelight-collector --example otlp_load
agent_bin=${AGENT_BIN:-$target/release/sidelight}
load_bin=$target/release/examples/otlp_load
work=$(mktemp -d)
python=$PWD/.venv/bin/python
client=${CLIENT:-}
if [ -z "$client" ]; then
  if [ -x "$python" ] && "$python" -c 'import grpc' 2>/dev/null; then client=grpcio; else client=tonic; fi
fi
case $client in
  grpcio) "$load_bin" dump --spans 100 --out "$work/req100.bin" ;;
  tonic) ;;
  *) echo "bench/otlp.sh: CLIENT must be grpcio or tonic" >&2; exit 64 ;;
esac
echo "fixed-rate client: $client"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
tps=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
sink_spans() { awk '{print $1}' "$work/count" 2>/dev/null || echo 0; }
now() { date +%s.%N; }

start_pair() {   # starts a sink and an agent exporting to it; sets sink_pid, agent_pid, grpc
  rm -f "$work/count" "$work/sink.addr"
  "$load_bin" sink --listen 127.0.0.1:0 --count-file "$work/count" > "$work/sink.addr" &
  sink_pid=$!; pids+=("$sink_pid")
  for _ in $(seq 50); do [ -s "$work/sink.addr" ] && break; sleep 0.1; done
  local sink_addr; sink_addr=$(head -1 "$work/sink.addr")
  local gport hport; gport=$(free_port); hport=$(free_port)
  grpc=127.0.0.1:$gport
  {
    echo "http: { listen: 127.0.0.1:$hport }"
    echo "store: { path: $work/data }"
    echo "otlp:"
    echo "  grpc: $grpc"
    echo "  http: null"
    echo "  spanmetrics: { dimensions: [http.route] }"
    echo "export:"
    echo "  otlp:"
    echo "    endpoint: http://$sink_addr"
    echo "    signals: [traces]"
    echo "    self_metrics: false"
    [ -n "${COMPRESSION:-}" ] && echo "    compression: $COMPRESSION"
    [ -n "${LEVEL:-}" ] && echo "    compression_level: $LEVEL"
    true
  } > "$work/bench.yaml"
  rm -rf "$work/data"
  "$agent_bin" run --config "$work/bench.yaml" 2>"$work/agent.log" &
  agent_pid=$!; pids+=("$agent_pid")
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$gport") 2>/dev/null && break; sleep 0.1
  done
}

stop_pair() {
  if ! kill -0 "$agent_pid" 2>/dev/null; then
    echo "the agent exited early; its log:" >&2; tail -20 "$work/agent.log" >&2; exit 1
  fi
  kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true
  kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true
}

results=$work/results.txt
: > "$results"
for r in $(seq "$runs"); do
  for b in $batches; do
    # Saturation.
    start_pair
    "$load_bin" send --target "http://$grpc" --spans "$b" --duration $((warmup + sat)) \
      --connections 4 --in-flight 4 > "$work/send.json" &
    spid=$!
    sleep "$warmup"
    c0=$(cpu_ticks "$agent_pid"); s0=$(sink_spans); t0=$(now)
    sleep "$sat"
    c1=$(cpu_ticks "$agent_pid"); s1=$(sink_spans); t1=$(now)
    wait "$spid"
    refused=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["refused_requests"])' "$work/send.json")
    stop_pair
    python3 - "$r" "$b" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$tps" "$refused" >> "$results" <<'PY'
import sys
r, b = sys.argv[1:3]
c0, c1, s0, s1, t0, t1, tps = map(float, sys.argv[3:10])
cpu = (c1 - c0) / tps; wall = t1 - t0; spans = s1 - s0
print(f"sat {b} {spans / cpu if cpu else 0:.0f} {spans / wall:.0f} {100 * cpu / wall:.1f} {sys.argv[10]}")
PY
    tail -1 "$results" | awk -v r="$r" '{printf "run %s saturation batch %4s: %8d spans/s per agent CPU-second (%d spans/s wall, agent %s %% of a core, %s requests refused)\n", r, $2, $3, $4, $5, $6}'

    # Fixed rate, on a fresh agent.
    start_pair
    if [ "$client" = grpcio ]; then
      [ -f "$work/req$b.bin" ] || "$load_bin" dump --spans "$b" --out "$work/req$b.bin"
      "$python" bench/otlp_grpc_send.py "$work/req$b.bin" "$grpc" "$b" "$rate" \
        $((warmup + fixed + 1)) > "$work/send.json" &
    else
      "$load_bin" send --target "http://$grpc" --spans "$b" --rate "$rate" \
        --duration $((warmup + fixed + 1)) > "$work/send.json" &
    fi
    spid=$!
    sleep "$warmup"
    c0=$(cpu_ticks "$agent_pid"); s0=$(sink_spans); t0=$(now); max_rss=0; sum_rss=0; n=0
    for _ in $(seq "$fixed"); do
      x=$(rss_kib "$agent_pid"); n=$((n + 1)); sum_rss=$((sum_rss + x))
      [ "$x" -gt "$max_rss" ] && max_rss=$x
      sleep 1
    done
    c1=$(cpu_ticks "$agent_pid"); s1=$(sink_spans); t1=$(now)
    wait "$spid"
    stop_pair
    python3 - "$r" "$b" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$tps" "$sum_rss" "$n" "$max_rss" >> "$results" <<'PY'
import sys
r, b = sys.argv[1:3]
c0, c1, s0, s1, t0, t1, tps, total, n, mx = map(float, sys.argv[3:13])
cpu = (c1 - c0) / tps; wall = t1 - t0
print(f"fixed {b} {100 * cpu / wall:.2f} {total / n / 1024:.1f} {mx / 1024:.1f} {(s1 - s0) / wall:.0f}")
PY
    tail -1 "$results" | awk -v r="$r" '{printf "run %s fixed rate batch %4s: agent CPU %s %% of a core, RSS mean %s MiB max %s MiB (%d spans/s forwarded)\n", r, $2, $3, $4, $5, $6}'
  done
done

python3 - "$results" "$rate" "${COMPRESSION:-default}" "${LEVEL:-default}" "$client" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"\nmedians of the runs (compression {sys.argv[3]}, level {sys.argv[4]}, fixed-rate client {sys.argv[5]}):")
for b in sorted({r[1] for r in rows}, key=int):
    sat = [r for r in rows if r[0] == "sat" and r[1] == b]
    fx = [r for r in rows if r[0] == "fixed" and r[1] == b]
    per = sorted(float(r[2]) for r in sat)
    cpu = sorted(float(r[2]) for r in fx)
    rss = sorted(float(r[3]) for r in fx)
    rmax = sorted(float(r[4]) for r in fx)
    print(f"batch {b:>4}: saturation {statistics.median(per):,.0f} spans/s per agent CPU-second "
          f"({per[0]:,.0f}-{per[-1]:,.0f}); at {sys.argv[2]} spans/s: CPU {statistics.median(cpu):.2f} % "
          f"({cpu[0]:.2f}-{cpu[-1]:.2f}), RSS mean {statistics.median(rss):.1f} MiB, max {statistics.median(rmax):.1f} MiB")
PY
