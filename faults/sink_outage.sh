#!/usr/bin/env bash
# Scenario 2: the downstream OTLP endpoint refuses everything (UNAVAILABLE) for OUTAGE seconds
# while spans (otlp_load, gRPC) and log lines (log_writer.py) flow through the agent, then comes
# back. PASS when every span the agent accepted is delivered or counted as dropped
# (accepted = delivered + sidelight_exporter_failed_total, exactly), no log line is lost, and
# the agent is still healthy. Beyond the queue bound the receiver refuses (the sender retries):
# those spans were never accepted and are reported apart.
#
# Usage: faults/sink_outage.sh     Env: OUTAGE=300 (the issue's 5 minutes) SPAN_RATE=500
#        LOG_RATE=200 QUEUE_ITEMS=1024 ROTATE_EVERY=20000 (lines per rename rotation)
#        INCLUDE=live (tail only app.log: files rotated while the full queue blocks the tailer
#        are followed by their rotated names); FAULTS_QUICK=1: OUTAGE=30
# Issue 25's case: OUTAGE=40 LOG_RATE=2000 ROTATE_EVERY=7000 (~1 MB files) INCLUDE=live
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then outage=${OUTAGE:-30}; else outage=${OUTAGE:-300}; fi
span_rate=${SPAN_RATE:-500}; log_rate=${LOG_RATE:-200}; queue=${QUEUE_ITEMS:-1024}
before=10; after=30
build
start_sink
mkdir -p "$WORK/logs"
forwarding_config "$WORK/agent.yaml" "queue: { max_items: $queue }"
if [ "${INCLUDE:-all}" = live ]; then sed -i 's|/logs/app\.log\*"|/logs/app.log"|' "$WORK/agent.yaml"; fi
start_agent "$WORK/agent.yaml" "$WORK/agent.log"
total_s=$((before + outage + after))
lines=$((log_rate * total_s))
nice "$LOAD" send --target "http://$GRPC" --spans 50 --rate "$span_rate" --duration "$total_s" > "$WORK/send.json" &
spid=$!; PIDS+=("$spid")
nice "$PY" "$ROOT/faults/log_writer.py" "$WORK/logs/app.log" "$lines" "$log_rate" --rotate-every "${ROTATE_EVERY:-20000}" > "$WORK/writer.json" &
wpid=$!; PIDS+=("$wpid")
sleep "$before"
sink_down; log "sink down for ${outage}s"
for _ in $(seq $((outage / 30))); do
  sleep 30
  log "queued $(metric sidelight_queue_depth queue=\"otlp_traces\") trace / $(metric sidelight_queue_depth queue=\"otlp_logs\") log envelopes; refused $(metric sidelight_queue_refused_total); failed $(metric sidelight_exporter_failed_total)"
done
sleep $((outage % 30))
sink_up; log "sink up"
wait "$spid"; wait "$wpid"
drained() {
  [ "$(metric sidelight_queue_depth)" = 0 ] && [ "$(metric sidelight_exporter_in_flight)" = 0 ] &&
    [ "$(metric sidelight_log_unacked_bytes)" = 0 ]
}
wait_until 600 drained || log "not drained after 600 s"
sleep 2
sink_state
accepted=$(metric sidelight_receiver_accepted_total signal=\"traces\")
failed=$(metric sidelight_exporter_failed_total signal=\"traces\")
failed_logs=$(metric sidelight_exporter_failed_total signal=\"logs\")
reasons=$(curl -s "http://$HTTP/metrics" | grep '^sidelight_exporter_failed_total' | sed 's/sidelight_exporter_failed_total//' | tr '\n' ' ' || true)
refused=$(metric sidelight_receiver_refused_total signal=\"traces\")
delivered=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"]["traces"])' "$WORK/state.json")
ok_spans=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok_spans"])' "$WORK/send.json")
counts=$("$PY" "$ROOT/faults/count_seqs.py" "$lines" --sink-state "$WORK/state.json")
read -r lost dups <<<"$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["lost"], d["duplicates"])' "$counts")"
healthy=0; curl -sf -o /dev/null "http://$HTTP/healthz" && kill -0 "$AGENT_PID" && healthy=1
ok=0; [ "$accepted" = $((delivered + failed)) ] && [ "$lost" = 0 ] && [ "$healthy" = 1 ] && ok=1
stop_agent || true
verdict "$ok" "outage ${outage}s at $span_rate spans/s + $log_rate lines/s: spans accepted $accepted = delivered $delivered + counted drops $failed [$reasons] ($(( accepted - delivered - failed )) unaccounted); generator acknowledged $ok_spans; refused requests (retryable, not accepted) $refused; log lines $lines: lost $lost, duplicates $dups, log drops counted $failed_logs; healthy after $healthy"
