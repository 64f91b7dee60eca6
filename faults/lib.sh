# Shared helpers of the fault-injection scenarios (sourced, not run). Each scenario drives the
# release `sidelight` binary and real peers as separate processes, prints one PASS/FAIL line
# with its figures and exits non-zero on failure.
#
# Env: CARGO_TARGET_DIR (where the builds are), AGENT_BIN (another agent binary),
#      SIDELIGHT_TEST_PYTHON (the interpreter with the peers' packages; default .venv/bin/python),
#      FAULTS_NO_BUILD=1 (skip `cargo build`), FAULTS_KEEP=1 (keep the work directory),
#      FAULTS_QUICK=1 (shortened runs: each scenario says what it shortens).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
AGENT=${AGENT_BIN:-$TARGET/release/sidelight}
LOAD=$TARGET/release/examples/otlp_load
# The test kit's loopback Slack Web API (testkit/src/bin/loopback-slack.rs; a debug build: a
# peer, not what is measured).
LOOPBACK_SLACK=$TARGET/debug/loopback-slack
PY=${SIDELIGHT_TEST_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
QUICK=${FAULTS_QUICK:-0}
SCENARIO=$(basename "$0" .sh)

build() {
  [ "${FAULTS_NO_BUILD:-0}" = 1 ] && return 0
  (cd "$ROOT" && nice cargo build --release --quiet -p sidelight &&
    nice cargo build --release --quiet -p sidelight-collector --example otlp_load &&
    nice cargo build --quiet -p sidelight-testkit --bin loopback-slack)
}

# start_slack ARGS...: starts the loopback Slack Web API (loopback-slack ARGS: --token-file F
# [--ratelimit-seconds S] [--retry-after S]), waits for its READY line, sets $SLACK (host:port).
# It answers GET /state with what it accepted and refused.
start_slack() {
  "$LOOPBACK_SLACK" "$@" > "$WORK/slack.out" 2>"$WORK/slack.err" &
  PIDS+=("$!")
  wait_until 20 grep -q READY "$WORK/slack.out"
  SLACK=127.0.0.1:$(sed -n 's/.*port=\([0-9]*\).*/\1/p' "$WORK/slack.out")
}

WORK=$(mktemp -d "/tmp/faults-$SCENARIO-XXXXXX")
PIDS=()
CLEANUPS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  for c in "${CLEANUPS[@]}"; do eval "$c" || true; done
  if [ "$rc" -ne 0 ] || [ "${FAULTS_KEEP:-0}" = 1 ]; then
    echo "($SCENARIO: work directory kept: $WORK)" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log() { echo "[$SCENARIO $(date -u +%H:%M:%S)] $*" >&2; }

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_agent CONFIG LOGFILE [ENV...]: starts the agent (appending to LOGFILE), sets AGENT_PID,
# waits until GET /healthz answers on $HTTP.
# Writes to $1 an agent config that forwards OTLP/gRPC traces (receiver on a new $GRPC, no span
# metrics) and the tailed $WORK/logs/app.log* to the sink (start_sink first); sets $HTTP and $GRPC.
# $2: one more `export.otlp` entry (e.g. `spill: { enabled: true }`), $3: one more top-level line.
forwarding_config() {
  HTTP=127.0.0.1:$(free_port); GRPC=127.0.0.1:$(free_port)
  cat > "$1" <<YAML
${3:-}
http: { listen: $HTTP }
store: { path: $WORK/data }
host: { interval: 15s }
otlp: { grpc: $GRPC, http: null, spanmetrics: { enabled: false } }
logs:
  - { source: app, include: ["$WORK/logs/app.log*"] }
export:
  otlp:
    endpoint: http://127.0.0.1:$SINK_GRPC
    signals: [traces, logs]
    self_metrics: false
    ${2:-}
YAML
}

start_agent() {
  local config=$1 logfile=$2; shift 2
  env "$@" "$AGENT" run --config "$config" >>"$logfile" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://$HTTP/healthz" && return 0
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited at start:" >&2; tail -20 "$logfile" >&2; return 1; }
    sleep 0.05
  done
  echo "the agent did not answer /healthz" >&2; tail -20 "$logfile" >&2; return 1
}

# stop_agent: SIGTERM, waits for the exit; returns its status.
stop_agent() {
  kill -TERM "$AGENT_PID" 2>/dev/null || true
  local rc=0
  wait "$AGENT_PID" || rc=$?
  return "$rc"
}

kill9_agent() {
  kill -9 "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
}

# metric NAME [LABEL_FRAGMENT...]: the sum of the samples of NAME on /metrics whose label text
# contains every fragment (0 when none).
metric() {
  local name=$1; shift
  curl -s --max-time 10 "http://$HTTP/metrics" | awk -v n="$name" -v frags="$*" '
    /^#/ { next }
    { v = $NF; s = substr($0, 1, length($0) - length(v) - 1)
      if (s != n && index(s, n "{") != 1) next
      k = split(frags, f, " "); ok = 1
      for (i = 1; i <= k; i++) if (index(s, f[i]) == 0) ok = 0
      if (ok) sum += v }
    END { printf "%.0f\n", sum }'
}

# start_sink: the Python OTLP sink (tests/python/otlp_sink.py), refusing with UNAVAILABLE while
# $WORK/sink-down exists; sets SINK_PID, SINK_GRPC, SINK_HTTP.
start_sink() {
  "$PY" "$ROOT/tests/python/otlp_sink.py" --down-file "$WORK/sink-down" >"$WORK/sink.out" 2>"$WORK/sink.err" &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  for _ in $(seq 200); do
    if grep -q READY "$WORK/sink.out" 2>/dev/null; then
      SINK_GRPC=$(sed -n 's/.*grpc=\([0-9]*\).*/\1/p' "$WORK/sink.out")
      SINK_HTTP=$(sed -n 's/.*http=\([0-9]*\).*/\1/p' "$WORK/sink.out")
      return 0
    fi
    sleep 0.1
  done
  echo "the OTLP sink did not start" >&2; cat "$WORK/sink.err" >&2; return 1
}
sink_down() { : > "$WORK/sink-down"; }
sink_up() { rm -f "$WORK/sink-down"; }

# sink_summary: "spans distinct_spans dup_spans logs" from the sink's /state (span names and
# log bodies are unique per item in these scenarios).
sink_state() { curl -s --max-time 60 "http://127.0.0.1:$SINK_HTTP/state" > "$WORK/state.json"; }

# wait_until SECONDS CMD...: polls CMD every second until it succeeds.
wait_until() {
  local t=$1; shift
  for _ in $(seq "$t"); do "$@" && return 0; sleep 1; done
  return 1
}

verdict() {   # verdict OK FIGURES
  if [ "$1" = 1 ]; then echo "PASS $SCENARIO: $2"; exit 0; else echo "FAIL $SCENARIO: $2"; exit 1; fi
}
