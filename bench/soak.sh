#!/usr/bin/env bash
# Soak: DURATION seconds (default 1800) of 10k log lines/s into a file rotated like
# RotatingFileHandler does, 10k spans/s over OTLP/gRPC and a /metrics scrape every second,
# against the release agent forwarding traces and tailed logs to a counting OTLP sink — four
# processes. Stops by itself; prints PASS or FAIL and exits non-zero on FAIL.
#
# Pass: 0 lines lost and none duplicated (written = read by the agent = exported = at the sink),
# 0 spans lost (accepted by the agent = exported = at the sink; spans the agent refused with
# UNAVAILABLE are the sender's to retry and are counted apart), no RSS growth trend (the mean of
# the last fifth of the run is within 2 MiB of the mean of the second fifth), no scrape failed.
#
# Usage: bench/soak.sh [DURATION=1800]   Env: RATE=10000 SPAN_RATE=10000 ROTATE_BYTES=67108864
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-1800}
rate=${RATE:-10000}; span_rate=${SPAN_RATE:-10000}; rotate=${ROTATE_BYTES:-67108864}
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet -p sidelight
cargo build --release --quiet -p sidelight-collector --example otlp_load
agent_bin=$target/release/sidelight
load_bin=$target/release/examples/otlp_load
work=$(mktemp -d /tmp/sidelight-soak.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$work/logs"

"$load_bin" sink --listen 127.0.0.1:0 --count-file "$work/count" > "$work/sink.addr" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/sink.addr" ] && break; sleep 0.1; done
sink=$(head -1 "$work/sink.addr")
http_port=$(free_port); grpc_port=$(free_port)
cat > "$work/soak.yaml" <<YAML
http: { listen: 127.0.0.1:$http_port }
host: { interval: 15s }
store: { path: $work/data }
logs:
  - { source: soak, include: ["$work/logs/app.log*"] }
otlp:
  grpc: 127.0.0.1:$grpc_port
  http: null
  spanmetrics: { dimensions: [http.route] }
export:
  otlp:
    endpoint: http://$sink
    protocol: grpc
    signals: [traces, logs]
    self_metrics: false
YAML
(cd "$work" && exec "$agent_bin" run --config soak.yaml 2>"$work/agent.log") &
agent=$!; pids+=("$agent")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null && break; sleep 0.1; done

python3 bench/log_rate_writer.py "$work/logs/app.log" "$rate" "$duration" 256 "$rotate" > "$work/writer.json" &
writer=$!; pids+=("$writer")
"$load_bin" send --target "http://127.0.0.1:$grpc_port" --spans 100 --rate "$span_rate" --duration "$duration" > "$work/load.json" &
load=$!; pids+=("$load")

# Every second: one scrape (kept when it fails: a failure fails the soak) and the agent's RSS.
scrape_fail=0; n=0
: > "$work/rss"
while kill -0 "$writer" 2>/dev/null || kill -0 "$load" 2>/dev/null; do
  curl -sf -o "$work/metrics.txt" "http://127.0.0.1:$http_port/metrics" || scrape_fail=$((scrape_fail + 1))
  awk '/^VmRSS/ {print $2}' "/proc/$agent/status" >> "$work/rss"
  n=$((n + 1))
  if [ $((n % 300)) -eq 0 ]; then
    printf '==> %ds: RSS %s KiB, sink %s\n' "$n" "$(tail -1 "$work/rss")" "$(cat "$work/count" 2>/dev/null)" >&2
  fi
  sleep 1
done
wait "$writer" "$load" || true

metric() {  # sum of a family's samples matching a label fragment
  curl -sf "http://127.0.0.1:$http_port/metrics" | awk -v n="$1" -v f="$2" \
    'index($0, n) == 1 && (f == "" || index($0, f)) { split($0, a, " "); s += a[2] } END { printf "%.0f\n", s }'
}
# Drain: wait until the tailer has read every line and the sink's counts stop moving.
written=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lines"])' "$work/writer.json")
prev=""
for _ in $(seq 120); do
  now=$(cat "$work/count" 2>/dev/null || echo "0 0 0")
  read_lines=$(metric sidelight_log_records_total 'source="soak"')
  if [ "$now" = "$prev" ] && [ "$read_lines" -ge "$written" ]; then break; fi
  prev=$now; sleep 1
done
read -r sink_spans _ sink_logs < "$work/count"
read_lines=$(metric sidelight_log_records_total 'source="soak"')
accepted=$(metric sidelight_receiver_accepted_total 'signal="traces"')
sent_spans=$(metric sidelight_exporter_sent_total 'signal="traces"')
sent_logs=$(metric sidelight_exporter_sent_total 'signal="logs"')
failed=$(metric sidelight_exporter_failed_total '')
rotations=$(metric sidelight_log_rotations_total 'source="soak"')
ok_spans=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok_spans"])' "$work/load.json")
refused=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["refused_requests"])' "$work/load.json")
kill -TERM "$agent"; wait "$agent" || true

python3 - "$work/rss" "$duration" <<PY
import statistics, sys
rss = [int(x) for x in open(sys.argv[1]) if x.strip()]
n = len(rss); fifth = max(1, n // 5)
second, last = rss[fifth:2 * fifth] or rss, rss[-fifth:]
m2, m5 = statistics.mean(second) / 1024, statistics.mean(last) / 1024
xs = list(range(n)); slope = statistics.linear_regression(xs[fifth:], rss[fifth:]).slope if n > 2 * fifth else 0.0
written, read_lines, sent_logs, sink_logs = $written, $read_lines, $sent_logs, $sink_logs
accepted, sent_spans, sink_spans, ok_spans = $accepted, $sent_spans, $sink_spans, $ok_spans
checks = {
    "lines written = read": written == read_lines,
    "lines read = exported = at the sink": read_lines == sent_logs == sink_logs,
    "spans accepted = exported = at the sink": accepted == sent_spans == sink_spans,
    "spans acknowledged to the sender = accepted": ok_spans <= accepted,
    "no exporter failure": $failed == 0,
    "no scrape failed": $scrape_fail == 0,
    "RSS flat (last fifth within 2 MiB of the second fifth)": m5 - m2 <= 2.0,
}
print(f"soak {sys.argv[2]}s: lines written {written:,}, read {read_lines:,}, exported {sent_logs:,}, at the sink {sink_logs:,} "
      f"({$rotations:.0f} rotations); spans acknowledged {ok_spans:,} (+{$refused:,} requests refused, retried), "
      f"accepted {accepted:,}, exported {sent_spans:,}, at the sink {sink_spans:,}; scrapes {n:,} ({$scrape_fail} failed); "
      f"RSS mean {m2:.1f} MiB (2nd fifth) -> {m5:.1f} MiB (last fifth), max {max(rss)/1024:.1f} MiB, "
      f"trend {slope * 3600 / 1024:+.2f} MiB/hour")
bad = [k for k, ok in checks.items() if not ok]
print("PASS" if not bad else "FAIL: " + "; ".join(bad))
sys.exit(1 if bad else 0)
PY
