#!/usr/bin/env bash
# Scenario 5: Slack answers every call HTTP 429 (Retry-After) for RATELIMIT seconds while
# ALERTS alerts fire and later resolve. The alerts come from a rate rule over
# sidelight_log_records_total{level="error"}, one alert group per log source, driven by error
# lines written to each source's file. The Slack Web API is the test kit's loopback-slack
# (bearer token and payload shape checked as Slack checks them). PASS when every group's FIRING message is posted once and its
# RESOLVED state reaches Slack (an update of that message or a post), none refused.
#
# Usage: faults/slack_429.sh   Env: RATELIMIT=60 RETRY_AFTER=5 ALERTS=10
#        FAULTS_QUICK=1: RATELIMIT=20
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then ratelimit=${RATELIMIT:-20}; else ratelimit=${RATELIMIT:-60}; fi
retry_after=${RETRY_AFTER:-5}; n=${ALERTS:-10}
build
mkdir -p "$WORK/logs"
echo "xoxb-fault-$RANDOM$RANDOM" > "$WORK/slack-token"
start_slack --token-file "$WORK/slack-token" --ratelimit-seconds "$ratelimit" --retry-after "$retry_after"
HTTP=127.0.0.1:$(free_port)
{
  echo "http: { listen: $HTTP }"
  echo "store: { path: $WORK/data }"
  echo "host: { interval: 15s }"
  echo "logs:"
  for i in $(seq -w 0 $((n - 1))); do
    echo "  - { source: fault$i, include: [\"$WORK/logs/fault$i.log\"], tail: { scan_interval: 200ms } }"
  done
  cat <<YAML
alerts:
  evaluation_interval: 1s
  group_wait: 1s
  group_interval: 5s
  group_by: [alertname, source]
  groups:
    - name: faults
      rules:
        - alert: FaultErrors
          expr: sum by (source) (rate(sidelight_log_records_total{level="error"}[15s])) > 0
          annotations:
            summary: "{{ \$labels.source }} logs errors"
notifiers:
  slack:
    token_file: $WORK/slack-token
    channel: "#alerts"
    api_url: http://$SLACK/api
    rate_limit: 200ms
    max_retries: 5
YAML
} > "$WORK/agent.yaml"
start_agent "$WORK/agent.yaml" "$WORK/agent.log"
# Errors flow until the rate limit is over and a little more, then stop (the alerts resolve).
err_s=$((ratelimit + 25))
log "error lines in $n sources for ${err_s}s; Slack 429 for ${ratelimit}s from its first call"
for t in $(seq "$err_s"); do
  for i in $(seq -w 0 $((n - 1))); do
    echo "{\"levelname\": \"ERROR\", \"name\": \"app\", \"message\": \"boom $t\"}" >> "$WORK/logs/fault$i.log"
  done
  sleep 1
done
log "errors stopped; retried so far $(metric sidelight_notifications_retried_total), failed $(metric sidelight_notifications_failed_total)"
check() {
  curl -s "http://$SLACK/state" > "$WORK/slack.json"
  "$PY" - "$WORK/slack.json" "$n" > "$WORK/check.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); n = int(sys.argv[2])
res = {"fired": 0, "resolved": 0, "dup_posts": 0}
for i in range(n):
    src = f"fault{i:0{len(str(n - 1))}d}"
    posts = [p for p in s["posts"] if src in p["text"] and "FIRING" in p["text"] and not p["thread_ts"]]
    done = [u for u in s["updates"] + s["posts"] if src in u["text"] and "RESOLVED" in u["text"]]
    res["fired"] += bool(posts)
    res["resolved"] += bool(done)
    res["dup_posts"] += max(0, len(posts) - 1)
res.update(posts=len(s["posts"]), updates=len(s["updates"]), rejected_429=s["rejected_429"],
           refused=s["refused"][:3], refused_n=len(s["refused"]))
res["ok"] = res["fired"] == n and res["resolved"] == n and res["dup_posts"] == 0 and not s["refused"]
print(json.dumps(res))
PY
  grep -q '"ok": true' "$WORK/check.json"
}
all_ok=0; wait_until 180 check && all_ok=1
retried=$(metric sidelight_notifications_retried_total); failed=$(metric sidelight_notifications_failed_total)
sent=$(metric sidelight_notifications_sent_total)
alive=0; kill -0 "$AGENT_PID" && alive=1
stop_agent || true
verdict "$all_ok" "Slack 429 (Retry-After ${retry_after}s) for ${ratelimit}s, $n alert groups: $(cat "$WORK/check.json"); agent sent $sent, retried $retried, failed-then-requeued $failed; alive $alive"
