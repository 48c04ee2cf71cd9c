"""The processes of a local stack: redis-server, a Celery worker and gunicorn, each with a log file."""

import ctypes.util
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

from common.store.keys import WORKERS_KEY

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
# Enough of a log to show why a process died (a traceback, a bind error) without flooding the terminal.
TAIL_LINES = 40


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a child before it runs: the kernel SIGKILLs it when the process that started it dies.

    So a launcher killed outright (SIGKILL, an OOM kill) leaves no redis-server, worker, gunicorn or
    nginx behind holding its ports. Linux only; elsewhere the children outlive a killed launcher.
    """
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class StartupError(RuntimeError):
    """A process of the stack exited before it was ready."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on this loopback port now."""
    with socket.socket() as sock:
        # As servers do, so a closed connection still in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition`` until it returns a truthy value, and return that; raise TimeoutError after ``timeout_s``."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up_at:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def http_status(url: str, timeout_s: float = 1) -> int | None:
    """Status code of a GET to ``url``, or None when nothing answers (refused, reset or timed out)."""
    # No proxy: http_proxy in the environment must not turn a loopback probe into outside traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):  # URLError and timeouts are OSErrors
        return None


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers under its master, make's launcher)."""
    return [int(child) for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def exited_during_startup(process: "ChildProcess | RedisServer") -> StartupError:
    """The error for a process that died while starting, with the tail of its log."""
    return StartupError(
        f"{process.name} exited with code {process.process.returncode} during start-up;"
        f" last lines of its log ({process.log_path}):\n{process.tail()}"
    )


class FolderServer:
    """A server process (``process``, once started) that keeps its data and ``log_path`` in a ``folder`` of its own."""

    folder: Path
    log_path: Path
    process: subprocess.Popen | None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            self.process.wait(10)

    def close(self) -> None:
        """Stop it and delete its folder: data, config and log."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisServer(FolderServer):
    """A redis-server on loopback with append-only persistence (so a restart keeps the queue), logging into its folder."""

    name = "redis-server"

    def __init__(
        self,
        port: int | None = None,
        appendfsync: str = "always",
        password: str = "",
        maxmemory: str = "0",
        maxmemory_policy: str = "noeviction",
        appendonly: bool = True,
        replica_of: int | None = None,
    ):
        self.port = port or free_port()
        # The port of the primary this server replicates when it starts; None: it starts as a primary.
        self.replica_of = replica_of
        # As deployed: a bounded server that refuses writes when full rather than dropping queued jobs.
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.appendonly = appendonly
        # Clients must AUTH with it when set; it reaches redis-server on stdin, never in its arguments.
        self.password = password
        # "always" lets a test SIGKILL Redis without losing a queued job; "everysec" is Redis's faster default.
        self.appendfsync = appendfsync
        self.folder = Path(tempfile.mkdtemp(prefix="sentiment-redis-"))
        self.log_path = self.folder / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start redis-server (again, after stop(), on the same port and data) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise StartupError("redis-server is not installed (apt-get install redis-server)")
        # Its own session, like ChildProcess, so a terminal's Ctrl-C does not stop Redis before the worker.
        self.process = subprocess.Popen(
            [
                binary,
                "-",  # the rest of the configuration from stdin: the password, if any
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.log_path),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--maxmemory",
                self.maxmemory,
                "--maxmemory-policy",
                self.maxmemory_policy,
                # A replica that (re)joins syncs at once: writes wait for it (WAIT) until it has.
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        config = []
        if self.password:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')  # Redis's config syntax
            # masterauth too: a server a failover turns into a replica must log in to the new primary.
            config += [f'requirepass "{quoted}"', f'masterauth "{quoted}"']
        if self.replica_of is not None:
            config.append(f"replicaof {LOOPBACK} {self.replica_of}")
        self.process.stdin.write("".join(line + "\n" for line in config).encode())
        self.process.stdin.close()
        client = redis.Redis(host=LOOPBACK, port=self.port, password=self.password or None, socket_connect_timeout=0.5)

        def answers() -> bool:
            if not self.alive():
                raise exited_during_startup(self)
            try:
                # Ours, not another server already on the port: that one would answer while ours fails to bind.
                return client.info("server")["process_id"] == self.process.pid
            except redis.ConnectionError:
                return False

        try:
            wait_until(answers, 10, "redis-server to answer")
        finally:
            client.close()


class ChildProcess:
    """A process of the service (worker or web) in its own session, its output captured to a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], echo: bool = False):
        """Start ``args`` in the repository with ``env`` over ours; ``echo`` also copies its output, prefixed, to our stdout."""
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"sentiment-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        # Its own session: a terminal's Ctrl-C reaches only the launcher, which stops the children in order,
        # and signal() reaches gunicorn's workers as well as its master.
        self.env = {**os.environ, **env}
        self.process = subprocess.Popen(
            list(args),
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE if echo else self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._copier: threading.Thread | None = None
        if echo:
            self._copier = threading.Thread(target=self._copy_output, name=f"{name}-output", daemon=True)
            self._copier.start()

    def _copy_output(self) -> None:
        prefix = f"{self.name} | ".encode()
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        if self._copier and not self.alive():
            self._copier.join(5)  # the last lines, often the reason it exited, may still be in the pipe
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM its process group, SIGKILL it after ``timeout_s``; the log stays."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(10)
        if self._copier:
            self._copier.join(5)
        self._log.close()

    def close(self) -> None:
        """Stop it and delete its log."""
        self.stop()
        self.log_path.unlink(missing_ok=True)


def start_worker(
    env: dict[str, str], redis_client: redis.Redis, name: str = "worker", prefix: Sequence[str] = ()
) -> ChildProcess:
    """Start ``python -m worker`` and wait until its first heartbeat says it is consuming."""
    before = set(redis_client.zrange(WORKERS_KEY, 0, -1))
    worker = ChildProcess(name, [*prefix, sys.executable, "-m", "worker"], env)

    def announced():
        if not worker.alive():
            raise exited_during_startup(worker)
        return set(redis_client.zrange(WORKERS_KEY, 0, -1)) - before

    wait_until(announced, 120, "the worker's first heartbeat", interval_s=0.2)
    return worker


def web_allocator_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment that runs gunicorn on jemalloc, as Dockerfile.web does.

    Empty where libjemalloc2 is missing, and where ``environ`` already sets LD_PRELOAD (even to
    nothing: ``LD_PRELOAD=`` runs the web on glibc's malloc). In soaks, glibc's per-thread arenas
    grew under gunicorn's threads and jemalloc's memory grew less (docs/reliability.md).
    """
    if "LD_PRELOAD" in environ:
        return {}
    library = ctypes.util.find_library("jemalloc")
    return {"LD_PRELOAD": library} if library else {}


def start_web(
    env: dict[str, str],
    port: int,
    processes: int = 2,
    prefix: Sequence[str] = (),
    app: str = "web:create_app()",
    config: str = "web/gunicorn_conf.py",
    allocator_env: dict[str, str] | None = None,
) -> ChildProcess:
    """Start gunicorn (by default the service's app, config and allocator) on ``port`` and wait for /health."""
    web = ChildProcess(
        "web",
        [*prefix, sys.executable, "-m", "gunicorn", "-c", config, app],
        {
            **(web_allocator_env() if allocator_env is None else allocator_env),
            **env,
            "PORT": str(port),
            "WEB_PROCESSES": str(processes),
        },
    )

    def healthy() -> bool:
        if not web.alive():
            raise exited_during_startup(web)
        # None while it binds, or while a slow app load makes the probe time out.
        return http_status(f"http://{LOOPBACK}:{port}/health") == 200

    wait_until(healthy, 60, "gunicorn to answer /health", interval_s=0.2)
    return web
