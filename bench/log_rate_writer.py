"""Appends JSON log lines at a fixed rate for the log benchmark (a separate process from the
agent). Each line carries `t_ns`, its wall-clock write time, so the agent's observed time on the
exported record gives the append-to-record latency. Lines are written in small bursts every
10 ms, as a service behind a buffered handler does; with WRITES=line in the environment every
line is its own write(2), as Python's logging.FileHandler does (it flushes each record).

Usage: log_rate_writer.py PATH RATE SECONDS [SIZE] [ROTATE_BYTES]
With ROTATE_BYTES, the file is rotated as RotatingFileHandler does once it is that large
(PATH -> PATH.1 -> PATH.2 -> PATH.3, the oldest deleted) and a new PATH is started.
"""
import json
import os
import sys
import time

path, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
size = int(sys.argv[4]) if len(sys.argv) > 4 else 256
rotate_bytes = int(sys.argv[5]) if len(sys.argv) > 5 else 0
KEEP = 3
PER_LINE = os.environ.get("WRITES") == "line"
rotations = 0
written_bytes = 0
pad = "x" * max(0, size - 190)
tick = 0.01
per_tick = max(1, int(rate * tick))
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
start = time.monotonic()
seq = 0
ticks = int(seconds / tick)
for n in range(ticks):
    burst = []
    for _ in range(per_tick):
        seq += 1
        burst.append(json.dumps({
            "asctime": "2026-12-01 12:00:00,000", "levelname": "INFO", "name": "app.web",
            "message": "request handled " + pad, "seq": seq, "t_ns": time.time_ns(),
        }))
    if PER_LINE:
        for line in burst:
            data = (line + "\n").encode()
            os.write(fd, data)
            written_bytes += len(data)
    else:
        data = ("\n".join(burst) + "\n").encode()
        os.write(fd, data)
        written_bytes += len(data)
    if rotate_bytes and written_bytes >= rotate_bytes:
        os.close(fd)
        for i in range(KEEP, 0, -1):
            src = path if i == 1 else f"{path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{path}.{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        written_bytes = 0
        rotations += 1
    ahead = (n + 1) * tick - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
os.close(fd)
print(json.dumps({"lines": seq, "seconds": time.monotonic() - start, "rotations": rotations}))
