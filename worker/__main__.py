"""Start a worker: ``python -m worker``. Loads the model first and exits 1 with a clear message if it cannot."""

import logging
import os
import socket
import sys

from celery import signals

from common.celery_app import create_celery
from common.settings import Settings
from worker.runtime import WorkerRuntime
from worker.tasks import register_tasks

log = logging.getLogger("worker")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        runtime = WorkerRuntime.start(settings)
    except Exception as error:  # any load failure: say so and stop, never limp on
        log.critical("cannot start worker: model %r failed to load: %s", settings.model, error)
        return 1
    app = create_celery(settings)
    register_tasks(app, runtime)
    signals.worker_ready.connect(lambda **_: runtime.announce(), weak=False)
    signals.worker_shutting_down.connect(lambda **_: log.info("shutting down after held jobs finish"), weak=False)
    signals.worker_shutdown.connect(lambda **_: runtime.shutdown(), weak=False)
    app.worker_main(
        [
            "worker",
            # Threads, not prefork: the batcher must see many jobs inside one process that holds the model.
            "--pool=threads",
            f"--concurrency={settings.worker_concurrency}",
            f"--queues={settings.queue_name}",
            f"--hostname=sentiment-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
            *argv,
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
