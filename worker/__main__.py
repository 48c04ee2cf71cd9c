"""Start a worker: ``python -m worker``. Loads the model first and exits 1 with a clear message if it cannot."""

from model.core import apply_worker_thread_env

apply_worker_thread_env()  # before torch loads

import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from celery import signals  # noqa: E402

from common.celery_app import create_celery  # noqa: E402
from common.settings import Settings  # noqa: E402
from worker.runtime import WorkerRuntime  # noqa: E402
from worker.tasks import register_tasks  # noqa: E402

log = logging.getLogger("worker")

# Pause before restarting a Celery consumer that died on a broker fault.
RESTART_DELAY_S = 2


def run_celery(app, settings, node_name: str, argv: list[str]) -> object:
    """Run Celery's worker until it stops; return its exit code."""
    try:
        app.worker_main(
            [
                "worker",
                # Threads, not prefork: the batcher must see many jobs inside the one process that holds the model.
                "--pool=threads",
                f"--hostname=sentiment-{node_name}",
                "--without-mingle",
                "--without-gossip",
                "--loglevel=INFO",
                *argv,
            ]
        )
    except SystemExit as exit_:
        return exit_.code
    return 0


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        # Answer before loading a model or starting a consumer: settings come from the environment.
        print(
            __doc__.strip() + "\nSettings are environment variables: see docs/settings.md. Other arguments go to Celery's worker."
        )
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        runtime = WorkerRuntime.start(settings)
    except Exception as error:  # any load failure: say so and stop, never limp on
        log.critical("cannot start worker: model %r failed to load: %s", settings.model, error)
        return 1
    app = create_celery(settings)
    register_tasks(app, runtime)
    runtime.start_lanes(app)
    shutdown_requested = threading.Event()

    def on_ready(**_):
        runtime.announce()

    def on_shutting_down(**_):
        shutdown_requested.set()
        runtime.stop_taking()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    try:
        return consume_until_shutdown(
            lambda: run_celery(app, settings, runtime.name, argv), shutdown_requested, runtime, RESTART_DELAY_S
        )
    finally:
        runtime.shutdown()


def consume_until_shutdown(run_consumer, shutdown_requested: threading.Event, runtime, restart_delay_s: float) -> int:
    """Run Celery's consumer; start a new one whenever it stops without a shutdown request.

    Celery's consumer can end on a Redis restart while jobs are unacked: kombu's Redis transport
    raises out of restoring them and Celery logs "Unrecoverable error" (seen with celery/kombu
    5.7.0; the neighbouring upstream report is celery/celery#9054, "worker stops consuming after
    Redis restart", fixed for that case by celery/kombu#2007). The model and batcher are fine, so
    start a new consumer instead of reloading the model; unacked jobs are redelivered after the
    visibility timeout. Until the new consumer is ready the worker stops heartbeating, so /ready
    does not count a worker that consumes nothing.
    """
    while True:
        exit_code = run_consumer()
        if shutdown_requested.is_set():
            return 0
        log.error("Celery's consumer stopped (exit %s) without a shutdown request; restarting it", exit_code)
        runtime.withdraw()
        time.sleep(restart_delay_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
