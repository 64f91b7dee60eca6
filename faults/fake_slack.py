"""A loopback Slack Web API for the fault scenarios: chat.postMessage and chat.update, checked
the way Slack checks them (bearer token, JSON body, a channel, `text` or Block Kit `blocks`),
with an injected rate limit: for --ratelimit-seconds from the first request, every call is
answered HTTP 429 with `Retry-After: --retry-after` (Slack's `ratelimited`).

GET /state answers what was accepted (posts and updates with their text, `ts`, `thread_ts`),
how many calls were answered 429 and the refused ones with the reason.
Prints `READY port=N` once listening.

Usage: fake_slack.py --token-file F [--ratelimit-seconds 60] [--retry-after 5]
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--token-file", required=True)
p.add_argument("--ratelimit-seconds", type=float, default=60)
p.add_argument("--retry-after", type=int, default=5)
a = p.parse_args()
token = open(a.token_file).read().strip()

lock = threading.Lock()
state = {"posts": [], "updates": [], "rejected_429": 0, "refused": [], "first_call": None,
         "ratelimit_until": None}
known_ts = set()
next_ts = [0]


def check_blocks(v):
    blocks = v.get("blocks")
    if blocks is None:
        return None if isinstance(v.get("text"), str) else "neither text nor blocks"
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return "bad blocks"
    for b in blocks:
        if b.get("type") not in ("header", "section", "context", "actions", "divider"):
            return f"unexpected block {b.get('type')}"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, extra=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.answer(200, state)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        method = self.path.removeprefix("/api/")
        now = time.time()
        with lock:
            if state["first_call"] is None:
                state["first_call"] = now
                state["ratelimit_until"] = now + a.ratelimit_seconds
            if self.headers.get("Authorization") != f"Bearer {token}":
                state["refused"].append(f"{method}: invalid_auth")
                return self.answer(200, {"ok": False, "error": "invalid_auth"})
            if now < state["ratelimit_until"]:
                state["rejected_429"] += 1
                return self.answer(429, {"ok": False, "error": "ratelimited"},
                                   [("Retry-After", str(a.retry_after))])
            if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                state["refused"].append(f"{method}: not JSON")
                return self.answer(200, {"ok": False, "error": "invalid_json"})
            try:
                v = json.loads(body)
            except ValueError:
                state["refused"].append(f"{method}: invalid_json")
                return self.answer(200, {"ok": False, "error": "invalid_json"})
            why = check_blocks(v) or (None if v.get("channel") in ("#alerts", "C0ALERTS") else "channel_not_found")
            if why:
                state["refused"].append(f"{method}: {why}")
                return self.answer(200, {"ok": False, "error": why})
            entry = {"t": now, "text": v.get("text", ""), "thread_ts": v.get("thread_ts")}
            if method == "chat.postMessage":
                next_ts[0] += 1
                ts = f"1700000000.{next_ts[0]:06d}"
                known_ts.add(ts)
                entry["ts"] = ts
                state["posts"].append(entry)
                return self.answer(200, {"ok": True, "channel": "C0ALERTS", "ts": ts,
                                         "message": {"type": "message", "ts": ts, "text": entry["text"]}})
            if method == "chat.update":
                if v.get("ts") not in known_ts:
                    state["refused"].append(f"chat.update: message_not_found {v.get('ts')}")
                    return self.answer(200, {"ok": False, "error": "message_not_found"})
                entry["ts"] = v["ts"]
                state["updates"].append(entry)
                return self.answer(200, {"ok": True, "channel": "C0ALERTS", "ts": v["ts"], "text": entry["text"],
                                         "message": {"text": entry["text"]}})
            state["refused"].append(f"unknown_method {method}")
            return self.answer(200, {"ok": False, "error": "unknown_method"})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"READY port={server.server_address[1]}", flush=True)
server.serve_forever()
