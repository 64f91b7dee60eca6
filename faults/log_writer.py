"""Writes numbered JSON log lines at a fixed rate, rotating by rename like
TimedRotatingFileHandler (PATH -> PATH.NNNN, never deleted), for the fault scenarios.

Each line is {"levelname": ..., "message": "fault line <seq>", "seq": <seq>, ...}; <seq> runs
from 1 to TOTAL, so a reader of the exported records can tell lost lines from repeated ones.
Lines are written in bursts every 10 ms. Prints {"lines": N, "rotations": R, "seconds": S} at
the end.

Usage: log_writer.py PATH TOTAL RATE [--rotate-every N] [--size BYTES] [--level INFO]
"""
import argparse
import json
import os
import time

p = argparse.ArgumentParser()
p.add_argument("path")
p.add_argument("total", type=int)
p.add_argument("rate", type=float)
p.add_argument("--rotate-every", type=int, default=0)
p.add_argument("--size", type=int, default=120)
p.add_argument("--level", default="INFO")
a = p.parse_args()

pad = "x" * max(0, a.size - 100)
tick = 0.01
per_tick = max(1, int(a.rate * tick))
fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
start = time.monotonic()
seq = 0
rotations = 0
n = 0
since_rotation = 0
while seq < a.total:
    burst = []
    for _ in range(min(per_tick, a.total - seq)):
        seq += 1
        burst.append(json.dumps({"levelname": a.level, "name": "app.fault",
                                 "message": f"fault line {seq}", "seq": seq, "pad": pad}))
    os.write(fd, ("\n".join(burst) + "\n").encode())
    since_rotation += len(burst)
    if a.rotate_every and since_rotation >= a.rotate_every and seq < a.total:
        os.close(fd)
        rotations += 1
        os.rename(a.path, f"{a.path}.{rotations:04d}")
        fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        since_rotation = 0
    n += 1
    ahead = n * tick - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
os.close(fd)
print(json.dumps({"lines": seq, "rotations": rotations, "seconds": round(time.monotonic() - start, 2)}))
