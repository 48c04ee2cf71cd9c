"""`make run` (python -m stack) on an ordinary Debian box, where a system Redis already holds 6379."""

import os
import signal
import subprocess

import pytest

from stack import RedisServer, child_pids, free_port, http_status, port_is_free, wait_until
from tests.support import REPO

SYSTEM_REDIS_PORT = 6379


@pytest.fixture
def redis_on_6379():
    """Something listening on 6379 as a distribution's redis-server would; one already there will do."""
    server = None
    if port_is_free(SYSTEM_REDIS_PORT):
        server = RedisServer(SYSTEM_REDIS_PORT)
        server.start()
    assert not port_is_free(SYSTEM_REDIS_PORT)
    yield
    if server:
        server.close()


def test_make_run_reaches_ready_beside_a_redis_on_6379(redis_on_6379, tmp_path):
    web_port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "REDIS_PORT", "MAKEFLAGS")}
    env.update({"PORT": str(web_port), "WORKER_METRICS_PORT": "0"})
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def ready():
            assert run.poll() is None, f"make run exited with {run.returncode}:\n{log_path.read_text()[-3000:]}"
            return http_status(f"http://127.0.0.1:{web_port}/ready") == 200

        wait_until(ready, 240, "make run's /ready", interval_s=0.5)
        assert f"port {SYSTEM_REDIS_PORT} is taken" in log_path.read_text()
        # SIGTERM to the launcher itself (make would die of a SIGINT aimed at it): it stops the
        # stack in order and make then exits with the launcher's status.
        (launcher,) = child_pids(run.pid)
        os.kill(launcher, signal.SIGTERM)
        assert run.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
    assert http_status(f"http://127.0.0.1:{web_port}/health") is None, "make run left gunicorn running"
