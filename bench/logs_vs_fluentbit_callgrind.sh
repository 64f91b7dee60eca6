#!/usr/bin/env bash
# Side by side in instructions, not CPU time: the agent's log hot path (the `log_tail` bench:
# read, split, parse, default redaction, metrics, batching, OTLP encoding, on one thread) and
# Fluent Bit's `tail` (json parser or `multiline.parser python`, DB, null output, all threads),
# each under callgrind on the same generated files. Instructions per line =
# (count over LINES records - count over a 1-record file) / (LINES - 1), which removes start-up.
# Load-independent where CPU seconds on a shared machine are not; it is not CPU time (cache
# misses, branch mispredictions and the kernel's share are not counted).
# Usage: bash bench/logs_vs_fluentbit_callgrind.sh
#   LINES=100000  WORKLOADS=pjl,structlog,loguru,text
#   FLUENT_BIT=path (default ../shared/peers/fluent-bit)  BENCH_BIN=path (default: built)
#   PYTHON=path (a Python with python-json-logger, structlog and loguru)  OUT=dir
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fluent_bit=${FLUENT_BIT:-$root/../shared/peers/fluent-bit}
[ -x "$fluent_bit" ] || fluent_bit=/work/shared/peers/fluent-bit
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=${SIDELIGHT_TEST_PYTHON:-python3}
lines=${LINES:-100000}
IFS=, read -r -a wanted <<<"${WORKLOADS:-pjl,structlog,loguru,text}"
out=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/logs-callgrind.XXXX")}
data=${TMPDIR:-/tmp}/sidelight-logs-vs-fluentbit
mkdir -p "$out"
for n in 1 "$lines"; do
  for w in "${wanted[@]}"; do
    [ -f "$data/$n/$w.log.records" ] || "$python" bench/gen_log_workloads.py "$data/$n" "$n" "$w" >&2
  done
done
if [ -z "${BENCH_BIN:-}" ]; then
  BENCH_BIN=$(cargo bench -p sidelight-collector --bench log_tail --no-run --message-format=json 2>/dev/null |
    "$python" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "log_tail" and m.get("executable"):
        print(m["executable"])' | tail -1)
fi
refs() { grep -h 'I *refs' "$1" | tr -d ',' | awk '{print $NF}'; }

agent() { # workload lines
  local f=json
  [ "$1" = text ] && f=text
  LOG_TAIL_FILES=$f:$data/$2/$1.log valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.agent.$1.$2" "$BENCH_BIN" --bench >"$out/agent.$1.$2.log" 2>&1
  refs "$out/agent.$1.$2.log"
}

fluentbit() { # workload lines
  local work
  work=$(mktemp -d "$out/fb.XXXX")
  ln "$data/$2/$1.log" "$work/app.log" 2>/dev/null || cp "$data/$2/$1.log" "$work/app.log"
  printf '[PARSER]\n    Name json\n    Format json\n' >"$work/parsers.conf"
  local parser="    Parser json"
  [ "$1" = text ] && parser="    multiline.parser python"
  cat >"$work/fb.conf" <<EOF
[SERVICE]
    Flush 1
    Log_Level warn
    Parsers_File $work/parsers.conf
[INPUT]
    Name tail
    Path $work/app.log
    Read_from_Head On
    Exit_On_Eof On
    DB $work/fb.db
$parser
[OUTPUT]
    Name null
    Match *
EOF
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.fb.$1.$2" "$fluent_bit" -c "$work/fb.conf" \
    >"$out/fb.$1.$2.log" 2>&1
  rm -rf "$work"
  refs "$out/fb.$1.$2.log"
}

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); $("$fluent_bit" --version | head -1); agent bench: $BENCH_BIN ($(git rev-parse --short HEAD)); $lines lines; callgrind files in $out"
echo "| workload | Sidelight instructions/line | Fluent Bit instructions/line | ratio (Fluent Bit / Sidelight) |"
echo "|---|---|---|---|"
for w in "${wanted[@]}"; do
  a1=$(agent "$w" 1)
  an=$(agent "$w" "$lines")
  f1=$(fluentbit "$w" 1)
  fn=$(fluentbit "$w" "$lines")
  a=$(((an - a1) / (lines - 1)))
  f=$(((fn - f1) / (lines - 1)))
  echo "| $w | $a | $f | **$(awk -v a="$a" -v f="$f" 'BEGIN{printf "%.2f", f / a}')×** |"
done
