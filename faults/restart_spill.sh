#!/usr/bin/env bash
# Scenario 3: a graceful restart (SIGTERM, then a new agent on the same store) in the middle of
# a downstream outage, with the disk spill on. Spans (otlp_load) and log lines flow before and
# after the restart; the endpoint comes back only after it. PASS when the first agent exits 0,
# every span either agent accepted is delivered once the endpoint is back (none counted as
# dropped), and no log line is lost.
#
# Usage: faults/restart_spill.sh   Env: PHASE=60 (seconds of load on each side of the restart)
#        SPAN_RATE=500 LOG_RATE=200; FAULTS_QUICK=1: PHASE=20
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then phase=${PHASE:-20}; else phase=${PHASE:-60}; fi
span_rate=${SPAN_RATE:-500}; log_rate=${LOG_RATE:-200}
build
start_sink
mkdir -p "$WORK/logs"
forwarding_config "$WORK/agent.yaml" "spill: { enabled: true }" "agent: { shutdown_timeout: 10s }"
start_agent "$WORK/agent.yaml" "$WORK/agent1.log"
lines=$((log_rate * (2 * phase + 10)))
nice "$PY" "$ROOT/faults/log_writer.py" "$WORK/logs/app.log" "$lines" "$log_rate" --rotate-every 10000 > "$WORK/writer.json" &
wpid=$!; PIDS+=("$wpid")
nice "$LOAD" send --target "http://$GRPC" --spans 50 --rate "$span_rate" --duration $((phase + 5)) > "$WORK/send1.json" &
spid=$!; PIDS+=("$spid")
sleep 5
sink_down; log "sink down"
wait "$spid"
acc1=$(metric sidelight_receiver_accepted_total signal=\"traces\")
spilled1=$(metric sidelight_exporter_spill_depth)
log "agent 1 accepted $acc1 spans, spill depth $spilled1 records; SIGTERM"
rc1=0; stop_agent || rc1=$?
grep -h '"OTLP exporter stopped"' "$WORK/agent1.log" | sed 's/.*"fields"://' >&2 || true
start_agent "$WORK/agent.yaml" "$WORK/agent2.log"
spill_at_start=$(metric sidelight_exporter_spill_depth)
nice "$LOAD" send --target "http://$GRPC" --spans 50 --rate "$span_rate" --duration "$phase" > "$WORK/send2.json"
acc2=$(metric sidelight_receiver_accepted_total signal=\"traces\")
wait "$wpid"
log "agent 2 accepted $acc2 spans (spill depth at its start $spill_at_start); sink up"
sink_up
drained() {
  [ "$(metric sidelight_exporter_spill_depth)" = 0 ] && [ "$(metric sidelight_queue_depth)" = 0 ] &&
    [ "$(metric sidelight_log_unacked_bytes)" = 0 ]
}
wait_until 600 drained || log "not drained after 600 s"
sleep 2
sink_state
failed=$(metric sidelight_exporter_failed_total)
delivered=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"]["traces"])' "$WORK/state.json")
counts=$("$PY" "$ROOT/faults/count_seqs.py" "$lines" --sink-state "$WORK/state.json")
read -r lost dups <<<"$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["lost"], d["duplicates"])' "$counts")"
failed1=$(grep -c 'reason="shutdown"\|unsent_items":[1-9]' "$WORK/agent1.log" || true)
acc=$((acc1 + acc2))
ok=0; [ "$rc1" = 0 ] && [ "$delivered" -ge "$acc" ] && [ "$failed" = 0 ] && [ "$lost" = 0 ] && ok=1
stop_agent || true
verdict "$ok" "restart after ${phase}s of outage: agent 1 exit $rc1, accepted $acc1 spans (spill depth before SIGTERM $spilled1, at restart $spill_at_start records); agent 2 accepted $acc2; delivered $delivered of $acc ($((delivered - acc)) repeats), counted drops $failed; log lines $lines: lost $lost, duplicates $dups"
