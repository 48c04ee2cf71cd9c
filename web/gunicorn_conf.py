"""gunicorn settings for the web side: ``gunicorn -c web/gunicorn_conf.py 'web:create_app()'``.

Worker class: gthread. A request for uncached texts blocks in BLPOP for up to SYNC_WAIT_S while
its job runs; threads let each process hold many such waits at once without gevent's
monkey-patching of redis, kombu and prometheus_client. The work per request is small
(JSON, one Redis round trip), so one process per CPU and many threads per process fit.
"""

import os
import shutil
import tempfile

# Every process writes its metrics here and /metrics merges them (prometheus_client multiprocess
# mode). prometheus_client reads the variable when first imported, so set it before any import.
OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sentiment-web-metrics-")

from prometheus_client import multiprocess  # noqa: E402

from common.settings import Settings  # noqa: E402

settings = Settings.from_env()
bind = settings.web_bind
worker_class = "gthread"
workers = settings.web_processes or len(os.sched_getaffinity(0))
threads = settings.web_threads
# Idle keep-alive connections wait in gthread's poller, not in a thread, so they are cheap. Longer than
# the idle timeout of the proxies in front (the front door's 20 s, ingress-nginx's 60 s), so the proxy
# always closes an idle connection first and never sends a request on one gunicorn is closing (a 502).
keepalive = 75
# Above the front door's limits (a line of 8 KiB, 32 KiB of headers: as many as 6,500 short ones), so a
# request nginx accepts never meets gunicorn's own HTML 400/431 pages; nginx answers the rest in JSON.
limit_request_line = 0  # unlimited
limit_request_fields = 32768  # gunicorn's most
limit_request_field_size = 16384
timeout = 60
graceful_timeout = 30
accesslog = settings.access_log or None
# Heartbeat files in memory: faster than disk, and it works under a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
errorlog = "-"


def on_starting(server):
    """Start from an empty metrics folder so a restart does not replay old counts."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
