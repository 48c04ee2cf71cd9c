"""Real processes for integration tests: redis-server, Celery workers and gunicorn, on free ports."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout_s``."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up_at:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class RedisServer:
    """A redis-server on a free loopback port, with append-only persistence so a restart keeps the queue."""

    def __init__(self):
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="sentiment-test-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.folder,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: self._pings(client), 10, "redis-server to answer")

    @staticmethod
    def _pings(client) -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Service:
    """A child process of the service (worker or web) with its output captured to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"sentiment-test-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=REPO, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self, timeout_s: float = 30) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def start_worker(env: dict[str, str], redis_client: redis.Redis, name: str = "worker", prefix: list[str] = ()) -> Service:
    """Start ``python -m worker`` and wait until its heartbeat says it is consuming."""
    from common.store import WORKERS_KEY

    before = set(redis_client.zrange(WORKERS_KEY, 0, -1))
    worker = Service(name, [*prefix, sys.executable, "-m", "worker"], env)

    def announced():
        if not worker.alive():
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log()[-3000:]}")
        return set(redis_client.zrange(WORKERS_KEY, 0, -1)) - before

    wait_until(announced, 120, "the worker's first heartbeat", interval_s=0.2)
    return worker


def start_web(
    env: dict[str, str],
    port: int,
    processes: int = 2,
    prefix: list[str] = (),
    app: str = "web:create_app()",
    config: str = "web/gunicorn_conf.py",
) -> Service:
    """Start gunicorn (by default the service's app and config) on ``port`` and wait for /health."""
    import requests

    web = Service(
        "web",
        [*prefix, sys.executable, "-m", "gunicorn", "-c", config, app],
        {**env, "PORT": str(port), "WEB_PROCESSES": str(processes)},
    )

    def healthy():
        if not web.alive():
            raise AssertionError(f"gunicorn exited:\n{web.log()[-3000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except requests.RequestException:  # refused while binding, or a read timeout while the app loads
            return False

    wait_until(healthy, 60, "gunicorn to answer /health", interval_s=0.2)
    return web
