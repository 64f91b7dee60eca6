#!/usr/bin/env bash
# Regenerates agent/link-order.txt, the functions lld lays out first in release builds (see
# agent/build.rs): a release build with a link map, run under callgrind on the embedded defaults
# through start-up, two host-collection cycles, log lines (JSON and a traceback), scrapes in both
# formats, OTLP spans over gRPC and HTTP (when the test venv is there), and a graceful stop.
# Usage: scripts/link-order.sh   (~15 min: a fat-LTO release build, then ~1 min under valgrind;
# needs ports 9464, 4317 and 4318 free). Review the diff and commit the list with the code.
# LINK_MAP=<map>: profile target/release/sidelight as it was built with SIDELIGHT_LINK_MAP=<map>
# instead of building it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command -v valgrind >/dev/null || { echo "link-order: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
for port in 9464 4317 4318; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "link-order: port $port is in use; the embedded defaults need it" >&2; exit 1
  fi
done
work=$(mktemp -d)
trap 'kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
if [ -n "${LINK_MAP:-}" ]; then
  # The binary in target/release was built with SIDELIGHT_LINK_MAP=$LINK_MAP.
  map=$LINK_MAP
else
  # A fixed path: a new one each run would make cargo rebuild (the variable is watched).
  map=$repo/target/release/sidelight.map
  SIDELIGHT_LINK_MAP="$map" cargo build --release --quiet -p sidelight --bin sidelight
fi
cp target/release/sidelight "$work/sidelight"
mkdir -p "$work/run/logs"
cd "$work/run"
valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
  --callgrind-out-file="$work/cg.out" "$work/sidelight" run >"$work/agent.log" 2>&1 &
pid=$!
for _ in $(seq 120); do
  curl -fsS -o /dev/null http://127.0.0.1:9464/metrics 2>/dev/null && break
  sleep 1
done
log=logs/app.log
for i in $(seq 200); do
  printf '{"timestamp":"2026-12-02T00:00:00Z","level":"info","event":"request","path":"/items/%d","status":200}\n' "$i" >>"$log"
done
printf 'Traceback (most recent call last):\n  File "app.py", line 3, in <module>\n    main()\nValueError: bad\n' >>"$log"
printf '{"asctime":"2026-12-02 00:00:00,000","levelname":"ERROR","name":"app","message":"boom"}\n' >>"$log"
python=$repo/.venv/bin/python
if [ -x "$python" ]; then
  "$python" - <<'PY' || echo "link-order: the OTLP step failed; its code is not in the list" >&2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
from opentelemetry.trace import SpanKind
provider = TracerProvider(resource=Resource.create({"service.name": "link-order"}))
provider.add_span_processor(BatchSpanProcessor(Grpc(endpoint="127.0.0.1:4317", insecure=True)))
provider.add_span_processor(BatchSpanProcessor(Http(endpoint="http://127.0.0.1:4318/v1/traces")))
tracer = provider.get_tracer("link-order")
for i in range(50):
    with tracer.start_as_current_span("GET /items", kind=SpanKind.SERVER) as s:
        s.set_attribute("http.route", "/items")
provider.shutdown()
PY
else
  echo "link-order: no .venv (bash scripts/test.sh makes it); OTLP code is not in the list" >&2
fi
for _ in 1 2 3; do
  curl -fsS -o /dev/null http://127.0.0.1:9464/metrics
  curl -fsS -o /dev/null -H 'Accept: application/openmetrics-text; version=1.0.0' http://127.0.0.1:9464/metrics
  sleep 10
done
kill -INT "$pid"
wait "$pid" || true
pid=
python3 "$repo/scripts/link_order.py" "$map" "$work/cg.out" sidelight >"$repo/agent/link-order.txt"
echo "link-order: wrote agent/link-order.txt ($(wc -l <"$repo/agent/link-order.txt") functions)"
