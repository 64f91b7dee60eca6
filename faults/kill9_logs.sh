#!/usr/bin/env bash
# Scenario 1: LINES log lines written at RATE lines/s (rename rotation every ROTATE lines) while
# the agent is killed with SIGKILL and restarted RESTARTS times. What reached the file exporter
# is matched by line sequence number: PASS when none is lost and the repeats stay within the
# documented bound (README "Reliability": the checkpoint is rewritten after every
# acknowledgement, so after kill -9 only the batches not yet acknowledged are read again), taken
# here as RESTARTS x 2 x batch_max_records (the batch being acknowledged and the one in flight).
# INCLUDE=live: include only app.log (rotated files are followed by their rotated names).
#
# Usage: faults/kill9_logs.sh      Env: LINES=1000000 RESTARTS=50 RATE=5000 ROTATE=50000
#        FAULTS_QUICK=1: LINES=100000 RESTARTS=10
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then lines=${LINES:-100000}; restarts=${RESTARTS:-10}; else lines=${LINES:-1000000}; restarts=${RESTARTS:-50}; fi
rate=${RATE:-5000}; rotate=${ROTATE:-50000}; ckpt_s=1; batch=1024
if [ "${INCLUDE:-all}" = live ]; then include="$WORK/logs/app.log"; else include="$WORK/logs/app.log*"; fi
build
mkdir -p "$WORK/logs" "$WORK/out"
HTTP=127.0.0.1:$(free_port)
cat > "$WORK/agent.yaml" <<YAML
http: { listen: $HTTP }
store: { path: $WORK/data }
host: { interval: 15s }
logs:
  - source: app
    include: ["$include"]
    tail: { checkpoint_interval: ${ckpt_s}s, batch_max_records: $batch }
export:
  file: { path: $WORK/out/export.jsonl, signals: [logs], max_bytes: 17179869184 }
YAML
start_agent "$WORK/agent.yaml" "$WORK/agent.log"
nice "$PY" "$ROOT/faults/log_writer.py" "$WORK/logs/app.log" "$lines" "$rate" --rotate-every "$rotate" > "$WORK/writer.json" &
wpid=$!; PIDS+=("$wpid")
duration=$(( lines / rate ))
interval=$("$PY" -c "print($duration / ($restarts + 1))")
log "writing $lines lines at $rate/s (~${duration}s), kill -9 every ${interval}s, $restarts times"
kills=0
while [ "$kills" -lt "$restarts" ]; do
  sleep "$interval"
  kill9_agent
  kills=$((kills + 1))
  start_agent "$WORK/agent.yaml" "$WORK/agent.log"
  [ $((kills % 10)) = 0 ] && log "$kills restarts"
done
wait "$wpid"
log "writer done: $(cat "$WORK/writer.json"); waiting for the agent to catch up"
caught_up() {
  local a b
  a=$(metric sidelight_log_records_total); sleep 2; b=$(metric sidelight_log_records_total)
  [ "$a" = "$b" ] && [ "$(metric sidelight_log_unacked_bytes)" = 0 ]
}
wait_until 300 caught_up || log "still reading after 300 s"
stop_rc=0; stop_agent || stop_rc=$?
counts=$("$PY" "$ROOT/faults/count_seqs.py" "$lines" --file-export "$WORK/out/export.jsonl")
read -r lost dups maxrep distinct <<<"$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["lost"], d["duplicates"], d["max_repeat"], d["distinct"])' "$counts")"
bound=$(( restarts * 2 * batch ))
panics=$(grep -c '"level":"ERROR"\|panicked' "$WORK/agent.log" || true)
ok=0; [ "$lost" = 0 ] && [ "$dups" -le "$bound" ] && [ "$stop_rc" = 0 ] && ok=1
verdict "$ok" "$lines lines, $kills kill -9 restarts, $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rotations"])' "$WORK/writer.json") rotations at $rate lines/s: distinct $distinct, lost $lost, duplicates $dups (bound $bound = $restarts x 2 x $batch; $((dups / (kills > 0 ? kills : 1))) per restart), max copies of a line $maxrep, final SIGTERM exit $stop_rc, error/panic log lines $panics"
