"""Writes the four workload files of bench/logs_vs_fluentbit.sh with the real Python logging
libraries (python-json-logger, structlog, loguru from the test venv), so both log readers see
exactly what a Python service writes. Deterministic apart from timestamps (fixed seed).

    python gen_log_workloads.py DIR LINES     # DIR/{pjl,structlog,loguru,text}.log

`text` is the standard library's default-style text format with 5 % of records logged by
`logger.exception` (a multi-line traceback); LINES counts records, not physical lines. A
sidecar DIR/NAME.log.records holds the record count a reader should report.
"""

import json
import logging
import os
import random
import sys

WORDS = ("request served user cache miss retry upstream timeout order created payment "
         "accepted worker job queued shard rebalanced connection pool exhausted").split()
PATHS = ["/api/v1/orders", "/api/v1/users/42", "/healthz", "/api/v2/search", "/static/app.js"]


def message(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))


def null_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


def gen_pjl(path: str, n: int, rng: random.Random) -> int:
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log = null_logger("app.web", handler)
    for i in range(n):
        log.info(message(rng), extra={
            "method": rng.choice(["GET", "POST", "PUT"]), "path": rng.choice(PATHS),
            "status": rng.choice([200, 200, 200, 201, 404, 500]), "duration_ms": round(rng.random() * 250, 3),
            "request_id": "%032x" % rng.getrandbits(128), "user_id": rng.randint(1, 100000)})
    handler.close()
    return n


def gen_structlog(path: str, n: int, rng: random.Random) -> int:
    import structlog

    out = open(path, "w")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.WriteLoggerFactory(file=out), cache_logger_on_first_use=False)
    log = structlog.get_logger("worker")
    for i in range(n):
        log.info(message(rng), logger="worker", job_id=f"j-{i}", attempt=rng.randint(1, 3),
                 extra={"queue": rng.choice(["default", "mail", "billing"]),
                        "http": {"method": "POST", "path": rng.choice(PATHS), "status": 200},
                        "tags": ["a", "b", rng.choice(["x", "y"])], "latency_ms": round(rng.random() * 90, 2)})
    out.close()
    return n


def gen_loguru(path: str, n: int, rng: random.Random) -> int:
    from loguru import logger

    logger.remove()
    sink = logger.add(path, serialize=True, mode="w", level="TRACE", enqueue=False, catch=False)
    for i in range(n):
        logger.bind(request_id="r-%d" % i, tenant=rng.choice(["acme", "globex", "initech"]),
                    path=rng.choice(PATHS)).info(message(rng) + " " + message(rng))
    logger.remove(sink)
    return n


def gen_text(path: str, n: int, rng: random.Random) -> int:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = null_logger("app.text", handler)
    for i in range(n):
        if rng.random() < 0.05:
            try:
                {}[rng.choice(["missing", "user", "order"])]
            except KeyError:
                log.exception("lookup failed for %s", rng.choice(PATHS))
        else:
            log.info("%s %s took %.1f ms", message(rng), rng.choice(PATHS), rng.random() * 100)
    handler.close()
    return n


GENERATORS = {"pjl": gen_pjl, "structlog": gen_structlog, "loguru": gen_loguru, "text": gen_text}


def main() -> None:
    out_dir, n = sys.argv[1], int(sys.argv[2])
    only = sys.argv[3:] or list(GENERATORS)
    os.makedirs(out_dir, exist_ok=True)
    for name in only:
        path = os.path.join(out_dir, f"{name}.log")
        records = GENERATORS[name](path, n, random.Random(21))
        with open(path + ".records", "w") as f:
            f.write(f"{records}\n")
        size = os.path.getsize(path)
        print(json.dumps({"workload": name, "records": records, "bytes": size,
                          "bytes_per_record": round(size / records)}))


if __name__ == "__main__":
    main()
