"""gunicorn settings for finding what grows in a web process: the service's own, plus tracemalloc.

Each gunicorn worker process traces its allocations from its start and writes a snapshot to
TRACEMALLOC_DIR every TRACEMALLOC_EVERY_S seconds (default 120), named <pid>-<n>.snapshot:

    python -m bench.soak --minutes 10 --web-config bench/web_tracemalloc_conf.py --web-env TRACEMALLOC_DIR=/tmp/snapshots
    python -m bench.tracemalloc_diff /tmp/snapshots

Tracing slows the web down and adds its own memory; use it to find a cause, not to measure.
"""

import os
import threading
import time
import tracemalloc

from web.gunicorn_conf import *  # noqa: F403  (the service's settings and hooks, unchanged)

TRACEBACK_FRAMES = 8


def post_fork(server, worker):
    tracemalloc.start(TRACEBACK_FRAMES)
    folder = os.environ["TRACEMALLOC_DIR"]
    os.makedirs(folder, exist_ok=True)
    every_s = float(os.environ.get("TRACEMALLOC_EVERY_S", "120"))

    def write_snapshots():
        for number in range(10_000):
            time.sleep(every_s)
            tracemalloc.take_snapshot().dump(os.path.join(folder, f"{os.getpid()}-{number:03d}.snapshot"))

    threading.Thread(target=write_snapshots, name="tracemalloc-snapshots", daemon=True).start()
