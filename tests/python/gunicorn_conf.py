"""gunicorn settings for tests/tests/restarts.rs: two workers; with SIDELIGHT_CRASH_AFTER set
(seconds), every worker exits with status 1 that long after it booted, so the master keeps
respawning them - a crash loop. Without it, a normal pool (SIGHUP reloads it gracefully)."""

import os
import threading

workers = 2
graceful_timeout = 5
timeout = 30


def post_worker_init(worker):
    after = float(os.environ.get("SIDELIGHT_CRASH_AFTER", "0"))
    if after > 0:
        threading.Timer(after, os._exit, (1,)).start()
