"""`make run` (python -m stack) on an ordinary Debian box, where a system Redis already holds 6379."""

import os
import signal
import subprocess
import sys

import pytest

from stack import REPO, RedisServer, child_pids, free_port, http_status, port_is_free, wait_until

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


def descendants(pid: int) -> set[int]:
    found = set()
    for child in child_pids(pid):
        found |= {child} | descendants(child)
    return found


def test_a_launcher_killed_outright_leaves_nothing_behind():
    """SIGKILL to `python -m stack`: its Redis servers, worker, gunicorn and nginx die with it, freeing their ports."""
    web_port, redis_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "MAKEFLAGS")}
    env.update({"PORT": str(web_port), "REDIS_PORT": str(redis_port), "WORKER_METRICS_PORT": "0"})
    launcher = subprocess.Popen(
        [sys.executable, "-m", "stack"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{web_port}/ready") == 200, 240, "the stack's /ready", interval_s=0.5)
        started = descendants(launcher.pid)
        # Evidence of what is at stake: two Redis servers, a worker, gunicorn and its workers, nginx.
        assert len(started) >= 6, started
        launcher.kill()
        launcher.wait(10)
        wait_until(lambda: not [pid for pid in started if os.path.exists(f"/proc/{pid}")], 20, "the stack's processes to die")
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert port_is_free(web_port) and port_is_free(redis_port)
