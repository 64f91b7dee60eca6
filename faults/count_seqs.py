"""Counts the log lines of log_writer.py that reached a sink: reads the `seq` attribute (file
exporter output: OTLP JSON lines, rotated files PATH.N included) or the `fault line <seq>` body
(the OTLP sink's /state JSON), and prints {"expected", "distinct", "lost", "duplicates",
"max_repeat", "first_lost"} as JSON.

Usage: count_seqs.py TOTAL --file-export PATH | --sink-state STATE.json
"""
import json
import os
import sys
from collections import Counter

total = int(sys.argv[1])
mode, path = sys.argv[2], sys.argv[3]
seen = Counter()
if mode == "--file-export":
    files = [path] + [f"{path}.{n}" for n in range(1, 1000) if os.path.exists(f"{path}.{n}")]
    for f in files:
        if not os.path.exists(f):
            continue
        with open(f) as fh:
            for line in fh:
                try:
                    req = json.loads(line)
                except ValueError:
                    continue
                for rl in req.get("resourceLogs", []):
                    for sl in rl.get("scopeLogs", []):
                        for r in sl.get("logRecords", []):
                            for kv in r.get("attributes", []):
                                if kv["key"] == "seq":
                                    seen[int(kv["value"]["intValue"])] += 1
else:
    state = json.load(open(path))
    for body in state.get("logs", []):
        if body.startswith("fault line "):
            seen[int(body.split()[-1])] += 1
lost = [s for s in range(1, total + 1) if s not in seen]
dups = sum(c - 1 for c in seen.values())
print(json.dumps({
    "expected": total, "distinct": len(seen), "lost": len(lost), "duplicates": dups,
    "max_repeat": max(seen.values(), default=0), "first_lost": lost[:5],
    "unexpected": sum(1 for s in seen if s < 1 or s > total),
}))
