"""Real Python log writers for the log tailer's end-to-end tests.

Each mode writes numbered records (`seq` = 1..count) through a real logging library, the way a
Python service would, and prints one JSON line with what it wrote when it is done:

  jsonlogger   python-json-logger through logging.handlers.RotatingFileHandler (tiny maxBytes;
               --numbered puts the seq in the message too)
  timed        python-json-logger through TimedRotatingFileHandler (rotating every second)
  structlog    structlog's JSONRenderer through a WatchedFileHandler (logrotate `create` style:
               the test renames the file away and the handler reopens a new one)
  loguru       loguru with serialize=True and rotation="<size>"
  traceback    plain-text logging with chained exceptions (both banner kinds)
  copytruncate plain-text-ish JSON lines with a thread doing logrotate's copytruncate
"""

import argparse
import json
import logging
import logging.handlers
import os
import shutil
import sys
import threading
import time


def paced(count, rate):
    """Yields 1..count, sleeping to keep `rate` records per second (0 = as fast as possible)."""
    start = time.monotonic()
    for seq in range(1, count + 1):
        if rate and seq % 100 == 0:
            ahead = seq / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        yield seq


def json_logger(path, handler):
    from pythonjsonlogger.json import JsonFormatter

    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log = logging.getLogger("app.jsonlogger")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def levels(seq):
    return logging.ERROR if seq % 10 == 0 else logging.WARNING if seq % 10 == 5 else logging.INFO


def mode_jsonlogger(a):
    handler = logging.handlers.RotatingFileHandler(a.path, maxBytes=a.max_bytes, backupCount=a.backups)
    log = json_logger(a.path, handler)
    for seq in paced(a.count, a.rate):
        # --numbered: the seq in the message too, for sinks that keep only the body.
        message = f"request {seq} handled" if a.numbered else "request handled"
        log.log(levels(seq), message, extra={"seq": seq, "route": "/orders/{id}"})
    handler.close()


def mode_timed(a):
    handler = logging.handlers.TimedRotatingFileHandler(a.path, when="S", interval=1, backupCount=a.backups)
    log = json_logger(a.path, handler)
    for seq in paced(a.count, a.rate):
        log.log(levels(seq), "tick", extra={"seq": seq})
    handler.close()


def mode_structlog(a):
    import structlog

    handler = logging.handlers.WatchedFileHandler(a.path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("structlog.out")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    root.propagate = False
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    log = structlog.get_logger("structlog.out")
    for seq in paced(a.count, a.rate):
        if seq % 50 == 0:
            try:
                raise KeyError(f"order-{seq}")
            except KeyError:
                log.exception("lookup failed", seq=seq)
        else:
            log.info("order placed", seq=seq, user_id=seq % 7)
    handler.close()


def mode_loguru(a):
    from loguru import logger

    logger.remove()
    logger.add(a.path, serialize=True, rotation=a.loguru_rotation, enqueue=False, level="DEBUG")
    for seq in paced(a.count, a.rate):
        if seq % 25 == 0:
            logger.bind(seq=seq).warning("slow request")
        else:
            logger.bind(seq=seq).info("request")
    logger.remove()


def mode_traceback(a):
    handler = logging.FileHandler(a.path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("app.text")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False

    def db_call():
        raise ConnectionError("database unreachable")

    for seq in paced(a.count, a.rate):
        log.info("seq=%d ok", seq)
        if seq % 3 == 0:
            try:
                try:
                    db_call()
                except ConnectionError as e:
                    raise RuntimeError(f"seq={seq} cause") from e
            except RuntimeError:
                log.exception("seq=%d failed with a cause", seq)
        elif seq % 3 == 1:
            try:
                try:
                    {}["missing"]
                except KeyError:
                    int("not a number")
            except ValueError:
                log.exception("seq=%d failed while handling", seq)
    handler.close()


def mode_copytruncate(a):
    stop = threading.Event()
    lock = threading.Lock()
    f = open(a.path, "a", buffering=1)
    rotations = [0]

    def rotator():
        n = 0
        while not stop.wait(a.interval):
            n += 1
            with lock:
                # logrotate's copytruncate: copy, then truncate in place (the writer keeps its
                # descriptor; O_APPEND makes it write at the new end).
                shutil.copyfile(a.path, f"{a.path}.{n}")
                os.truncate(a.path, 0)
                rotations[0] += 1

    t = threading.Thread(target=rotator, daemon=True)
    t.start()
    for seq in paced(a.count, a.rate):
        if seq == a.count - 1000:
            # The last 1000 lines are written after the last rotation.
            stop.set()
            t.join()
        with lock:
            f.write(json.dumps({"message": "copy", "seq": seq, "levelname": "INFO"}) + "\n")
    stop.set()
    t.join()
    f.close()
    return {"rotations": rotations[0]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("path")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--max-bytes", type=int, default=20000)
    p.add_argument("--backups", type=int, default=1000)
    p.add_argument("--loguru-rotation", default="20 KB")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--numbered", action="store_true")
    a = p.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.path)), exist_ok=True)
    extra = globals()["mode_" + a.mode](a) or {}
    print(json.dumps({"mode": a.mode, "count": a.count, **extra}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
