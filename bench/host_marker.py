"""Two host-speed markers printed beside every suite run, so runs on different days can be
compared: the cost of a wake-up (a one-byte pipe ping-pong between two processes, round trip)
and of plain computation (a fixed integer loop in this interpreter). Neither involves the agent.

    python3 bench/host_marker.py        # prints: host: pipe round trip N µs, compute loop M ms
"""

import os
import statistics
import time

ROUND_TRIPS = 20_000
LOOP = 2_000_000


def pipe_round_trip_us() -> float:
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(to_parent_r)
        while os.read(to_child_r, 1):
            os.write(to_parent_w, b"y")
        os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    start = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        os.write(to_child_w, b"x")
        os.read(to_parent_r, 1)
    elapsed = time.perf_counter() - start
    os.close(to_child_w)
    os.waitpid(pid, 0)
    os.close(to_parent_r)
    return elapsed / ROUND_TRIPS * 1e6


def compute_loop_ms() -> float:
    start = time.process_time()
    acc = 0
    for i in range(LOOP):
        acc = (acc + i * i) & 0xFFFFFFFF
    return (time.process_time() - start) * 1e3


def main() -> None:
    pipe = statistics.median(pipe_round_trip_us() for _ in range(3))
    compute = statistics.median(compute_loop_ms() for _ in range(3))
    print(f"host: pipe round trip {pipe:.1f} µs, compute loop {compute:.0f} ms")


if __name__ == "__main__":
    main()
