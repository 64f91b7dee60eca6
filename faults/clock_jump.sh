#!/usr/bin/env bash
# Scenario 6: the agent's wall clock jumps forward 2 h, then back 3 h (to 1 h behind), then
# forward to the true time, while log lines (file exporter), spans (otlp_load -> agent -> the
# Python OTLP sink), alert bursts (error lines; notifications to the test kit's loopback-slack)
# and DORA deployments flow. The clock is moved with libfaketime (Debian `faketime`): the agent runs with
# LD_PRELOAD and FAKETIME_TIMESTAMP_FILE, rewritten at run time; the monotonic clock is left
# alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as a real clock step leaves it. The jump is checked
# on the agent itself (the observed time of the records it exports).
# PASS when no log line or span is lost, the agent never exits or panics, every error burst
# fires and resolves in Slack within DEADLINE seconds of real time (no timer stuck behind the
# jump), alert evaluations go on, and the DORA hub records every deployment.
#
# Usage: faults/clock_jump.sh   Env: DEADLINE=40 LOG_RATE=200 SPAN_RATE=200
source "$(dirname "$0")/lib.sh"
deadline=${DEADLINE:-40}; log_rate=${LOG_RATE:-200}; span_rate=${SPAN_RATE:-200}
FT=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
[ -e "$FT" ] || { echo "FAIL $SCENARIO: $FT missing (apt-get install faketime)"; exit 1; }
build
mkdir -p "$WORK/logs" "$WORK/out"
echo "+0" > "$WORK/faketime"
echo "xoxb-fault-$RANDOM$RANDOM" > "$WORK/slack-token"
start_slack --token-file "$WORK/slack-token" --ratelimit-seconds 0
start_sink
HTTP=127.0.0.1:$(free_port); GRPC=127.0.0.1:$(free_port)
cat > "$WORK/agent.yaml" <<YAML
http: { listen: $HTTP }
store: { path: $WORK/data }
host: { interval: 5s }
otlp: { grpc: $GRPC, http: null }
dora: { enabled: true }
logs:
  - { source: app, include: ["$WORK/logs/app.log*"] }
  - { source: err, include: ["$WORK/logs/err.log"], tail: { scan_interval: 200ms } }
export:
  file: { path: $WORK/out/export.jsonl, signals: [logs], max_bytes: 4294967296 }
  otlp:
    endpoint: http://127.0.0.1:$SINK_GRPC
    signals: [traces]
    self_metrics: false
alerts:
  evaluation_interval: 1s
  group_wait: 1s
  group_interval: 5s
  group_by: [alertname, source]
  groups:
    - name: faults
      rules:
        - alert: FaultErrors
          expr: sum by (source) (rate(sidelight_log_records_total{level="error"}[10s])) > 0
notifiers:
  slack:
    token_file: $WORK/slack-token
    channel: "#alerts"
    api_url: http://$SLACK/api
    rate_limit: 200ms
YAML
start_agent "$WORK/agent.yaml" "$WORK/agent.log" LD_PRELOAD="$FT" FAKETIME_TIMESTAMP_FILE="$WORK/faketime" \
  FAKETIME_DONT_FAKE_MONOTONIC=1 FAKETIME_CACHE_DURATION=1
total_s=150
lines=$((log_rate * total_s))
nice "$PY" "$ROOT/faults/log_writer.py" "$WORK/logs/app.log" "$lines" "$log_rate" --rotate-every 10000 > "$WORK/writer.json" &
wpid=$!; PIDS+=("$wpid")
nice "$LOAD" send --target "http://$GRPC" --spans 20 --rate "$span_rate" --duration "$total_s" > "$WORK/send.json" &
spid=$!; PIDS+=("$spid")
t0=$(date +%s)
at() { local s=$(( t0 + $1 - $(date +%s) )); [ "$s" -gt 0 ] && sleep "$s"; true; }
# The agent's clock minus the real one, in seconds, from the newest exported record.
skew() {
  sleep 3
  "$PY" - "$WORK/out/export.jsonl" <<'PY'
import json, sys, time, os
f = open(sys.argv[1], "rb"); f.seek(max(0, os.path.getsize(sys.argv[1]) - 400000)); tail = f.read().decode(errors="replace").splitlines()[1:]
t = [int(r["observedTimeUnixNano"]) for l in tail if l.strip() for rl in json.loads(l)["resourceLogs"] for sl in rl["scopeLogs"] for r in sl["logRecords"]][-1]
print(round(t / 1e9 - time.time()))
PY
}
burst() {   # burst NAME: 10 s of error lines; records when it started (real time)
  echo "$1 $(date +%s)" >> "$WORK/bursts"
  for t in $(seq 10); do echo "{\"levelname\": \"ERROR\", \"message\": \"$1 $t\"}" >> "$WORK/logs/err.log"; sleep 1; done
}
deploy() {
  "$AGENT" deploy --service checkout --version "$1" --commit "c0ffee$1" --url "http://$HTTP" >/dev/null 2>>"$WORK/deploy.err" &&
    echo "$1" >> "$WORK/deploys"
}
at 2; burst A; deploy v1
at 35; echo "+2h" > "$WORK/faketime"; skew1=$(skew); log "clock +2h: agent skew ${skew1}s"
at 45; burst B; deploy v2
at 80; echo "-1h" > "$WORK/faketime"; skew2=$(skew); log "clock -1h: agent skew ${skew2}s"
at 85; burst C; deploy v3
at 120; echo "+0" > "$WORK/faketime"; skew3=$(skew); log "clock +0: agent skew ${skew3}s"
at 125; burst D; deploy v4
ev1=$(metric sidelight_alert_evaluations_total)
wait "$wpid"; wait "$spid"
at $((total_s + deadline))
ev2=$(metric sidelight_alert_evaluations_total)
drained() { [ "$(metric sidelight_queue_depth)" = 0 ] && [ "$(metric sidelight_log_unacked_bytes)" = 0 ]; }
wait_until 120 drained || log "not drained"
sleep 2
sink_state
curl -s "http://$SLACK/state" > "$WORK/slack.json"
curl -s "http://$HTTP/api/v1/deployments" > "$WORK/deployments.json" || true
curl -s "http://$HTTP/api/v1/alerts" > "$WORK/alerts.json" || true
accepted=$(metric sidelight_receiver_accepted_total signal=\"traces\")
delivered=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["items"]["traces"])' "$WORK/state.json")
dora_deploys=$(metric dora_deployments_total)
counts=$("$PY" "$ROOT/faults/count_seqs.py" "$lines" --file-export "$WORK/out/export.jsonl")
read -r lost dups <<<"$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["lost"], d["duplicates"])' "$counts")"
alerts=$("$PY" - "$WORK/slack.json" "$WORK/bursts" "$deadline" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); deadline = float(sys.argv[3])
bursts = [(l.split()[0], float(l.split()[1])) for l in open(sys.argv[2])]
msgs = sorted([(m["t"], m["text"]) for m in s["posts"] + s["updates"] if "err" in m["text"]])
out = []
for i, (name, start) in enumerate(bursts):
    end = bursts[i + 1][1] if i + 1 < len(bursts) else float("inf")
    fired = next((t for t, x in msgs if "FIRING" in x and start <= t < end), None)
    resolved = next((t for t, x in msgs if "RESOLVED" in x and fired and fired <= t < end), None)
    ok = fired is not None and resolved is not None and fired - start <= deadline and resolved - start <= deadline
    out.append(f"{name}:{'ok' if ok else 'LATE/MISSING'}(fired +{fired - start:.0f}s, resolved +{resolved - start:.0f}s)" if fired and resolved
               else f"{name}:MISSING(fired {None if fired is None else round(fired - start)}, resolved {resolved is not None})")
print(" ".join(out))
PY
)
alive=0; kill -0 "$AGENT_PID" && alive=1
panics=$(grep -c 'panicked' "$WORK/agent.log" || true)
ndeploys=$(wc -l < "$WORK/deploys" 2>/dev/null || echo 0)
ok=0
[ "$lost" = 0 ] && [ "$accepted" = "$delivered" ] && [ "$alive" = 1 ] && [ "$panics" = 0 ] && ! grep -q 'LATE\|MISSING' <<<"$alerts" &&
  [ "$ev2" -gt "$ev1" ] && [ "$dora_deploys" = 4 ] && [ "$ndeploys" = 4 ] && ok=1
stop_agent || true
verdict "$ok" "agent clock skew +2h -> ${skew1}s, -1h -> ${skew2}s, +0 -> ${skew3}s; log lines $lines: lost $lost, duplicates $dups; spans accepted $accepted, delivered $delivered; alert bursts (deadline ${deadline}s real time): $alerts; evaluations $ev1 -> $ev2 over the last ${deadline}s; deployments recorded $ndeploys/4, dora_deployments_total $dora_deploys; alive $alive, panics $panics"
