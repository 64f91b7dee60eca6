"""A stand-in Python service for the end-to-end tests: a parent with worker children (like a
gunicorn master and its workers), each holding some memory, until it is killed.

Usage: idle_service.py --marker TEXT [--workers N]
The marker appears in every process's command line so the agent can match them."""

import argparse
import multiprocessing
import os
import signal
import sys
import time


def die_with_parent() -> None:
    """Workers end when the parent does, even if it is SIGKILLed (PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit(0)


def worker(marker: str) -> None:
    die_with_parent()
    work(marker)


def work(marker: str) -> None:
    ballast = bytearray(8 * 1024 * 1024)  # resident memory the agent should see
    ballast[::4096] = b"x" * len(ballast[::4096])
    while True:
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marker", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=worker, args=(args.marker,), daemon=True) for _ in range(args.workers)]
    for w in workers:
        w.start()

    def stop(*_):
        for w in workers:
            w.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"ready {os.getpid()}", flush=True)
    work(args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
