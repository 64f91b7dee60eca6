#!/usr/bin/env bash
# Scenario 4: the data directory (log checkpoints, the OTLP spill) is a tiny tmpfs that fills up
# while the downstream endpoint is down and spans and log lines flow; then space returns (a
# filler file is removed) and later the endpoint comes back. PASS when the agent keeps running,
# says so clearly in its log (ENOSPC) and in a self-metric, spills again once space returns
# (no restart), and in the end every accepted span is delivered or counted as dropped (no
# acknowledged span dropped silently) and no log line is lost. Needs root (mount -t tmpfs).
#
# Usage: faults/disk_full.sh   Env: SIZE_MB=8 FREE_KB=1024 (left free beside the filler)
#        FULL=60 (seconds with the disk full) SPAN_RATE=500 LOG_RATE=200; FAULTS_QUICK=1: FULL=20
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then full=${FULL:-20}; else full=${FULL:-60}; fi
size_mb=${SIZE_MB:-8}; free_kb=${FREE_KB:-1024}; span_rate=${SPAN_RATE:-500}; log_rate=${LOG_RATE:-200}
build
mkdir -p "$WORK/data" "$WORK/logs"
mount -t tmpfs -o size=${size_mb}m sidelight-faults "$WORK/data"
CLEANUPS+=("umount '$WORK/data'")
avail_kb() { df -k --output=avail "$WORK/data" | tail -1 | tr -d ' '; }
dd if=/dev/zero of="$WORK/data/filler" bs=1k count=$(( $(avail_kb) - free_kb )) status=none
log "tmpfs ${size_mb} MiB, $(avail_kb) KiB free beside the filler"
start_sink
forwarding_config "$WORK/agent.yaml" "spill: { enabled: true }"
start_agent "$WORK/agent.yaml" "$WORK/agent.log"
total_s=$((10 + full + 20 + 20))
lines=$((log_rate * total_s))
nice "$LOAD" send --target "http://$GRPC" --spans 50 --rate "$span_rate" --duration "$total_s" > "$WORK/send.json" &
spid=$!; PIDS+=("$spid")
nice "$PY" "$ROOT/faults/log_writer.py" "$WORK/logs/app.log" "$lines" "$log_rate" --rotate-every 10000 > "$WORK/writer.json" &
wpid=$!; PIDS+=("$wpid")
sleep 5
sink_down; log "sink down"
is_full() { [ "$(avail_kb)" -lt 64 ]; }
wait_until 60 is_full || log "the tmpfs did not fill ($(avail_kb) KiB free)"
log "tmpfs full ($(avail_kb) KiB free); $full s so"
sleep "$full"
space_errors=$(grep -ci 'no space left' "$WORK/agent.log" || true)
metric_full=$(metric sidelight_exporter_spill_write_errors_total)
ckpt_errors=$(metric sidelight_log_checkpoint_write_errors_total)
depth_full=$(metric sidelight_exporter_spill_depth)
alive_full=0; kill -0 "$AGENT_PID" && curl -sf -o /dev/null "http://$HTTP/healthz" && alive_full=1
rm -f "$WORK/data/filler"; log "space back ($(avail_kb) KiB free)"
# The held batches are retried with the export backoff (at most retry.max, 30 s by default).
back_t0=$(date +%s)
spilling_again() { [ "$(metric sidelight_exporter_spill_depth)" -gt "$depth_full" ]; }
wait_until 60 spilling_again || true
back_s=$(( $(date +%s) - back_t0 ))
depth_back=$(metric sidelight_exporter_spill_depth)
log "spill depth $depth_full records while full, $depth_back ${back_s}s after space returned; sink up"
sink_up
wait "$spid"; wait "$wpid"
drained() {
  [ "$(metric sidelight_exporter_spill_depth)" = 0 ] && [ "$(metric sidelight_queue_depth)" = 0 ] &&
    [ "$(metric sidelight_log_unacked_bytes)" = 0 ]
}
wait_until 600 drained || log "not drained after 600 s"
sleep 2
sink_state
accepted=$(metric sidelight_receiver_accepted_total signal=\"traces\")
failed=$(metric sidelight_exporter_failed_total signal=\"traces\")
reasons=$(curl -s "http://$HTTP/metrics" | grep '^sidelight_exporter_failed_total' | sed 's/sidelight_exporter_failed_total//' | tr '\n' ' ' || true)
refused=$(metric sidelight_receiver_refused_total signal=\"traces\")
delivered=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"]["traces"])' "$WORK/state.json")
counts=$("$PY" "$ROOT/faults/count_seqs.py" "$lines" --sink-state "$WORK/state.json")
read -r lost dups <<<"$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["lost"], d["duplicates"])' "$counts")"
ok=0
[ "$alive_full" = 1 ] && [ "$space_errors" -gt 0 ] && [ "$metric_full" -gt 0 ] && [ "$depth_back" -gt "$depth_full" ] &&
  [ "$accepted" = $((delivered + failed)) ] && [ "$failed" = 0 ] && [ "$lost" = 0 ] && ok=1
stop_agent || true
verdict "$ok" "tmpfs ${size_mb} MiB full for ${full}s: alive $alive_full, 'No space left' log lines $space_errors, sidelight_exporter_spill_write_errors_total $metric_full, checkpoint write errors $ckpt_errors; spill depth $depth_full -> $depth_back records ${back_s}s after space returned (no restart); spans accepted $accepted = delivered $delivered + counted drops $failed [$reasons], refused (retryable) $refused; log lines $lines: lost $lost, duplicates $dups"
