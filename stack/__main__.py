"""Run the whole service on this machine: ``python -m stack`` (what ``make run`` does).

Starts redis-server (unless REDIS_URL is set), one worker, gunicorn on a private loopback port and
nginx, the front door, on PORT in front of it (as production runs: deploy/nginx/); waits until /ready
answers through the front door, then runs until Ctrl-C or SIGTERM stops it all, or until one process exits.

With --ha the main Redis is a primary, a replica and three Sentinels on free ports (Debian's
redis-sentinel), the service finds the primary through them (REDIS_SENTINELS) and each job reaches
the replica before its POST answers. Kill the primary and the Sentinels promote the replica within
seconds; the launcher then restarts the dead server as the new primary's replica, as Kubernetes would.

- PORT: the service's port (nginx's), 8000 by default.
- TRUST_PROXY_HOPS: proxies in front of this stack, if any; the front door counts as one more.
- REDIS_PORT: Redis's port; by default 6379, or a free port when something (often the system's
  own Redis) already listens there.
- REDIS_MAXMEMORY: that Redis's maxmemory (default 512mb, as compose and k8s run it); it refuses
  writes when full, and the queue's byte budgets follow it.
- CACHE_REDIS_MAXMEMORY: the prediction cache's own Redis, started beside it on a free port unless
  CACHE_REDIS_URL is set (default 256mb; it evicts the least recently used entries when full).
- Every other variable passes through to the worker and gunicorn (MODEL, TORCH_THREADS, ...).
- gunicorn runs on jemalloc (LD_PRELOAD=libjemalloc.so.2) where libjemalloc2 is installed, as in
  Dockerfile.web; a LD_PRELOAD of your own, even an empty one, replaces that.

Worker and web output reaches the terminal, each line prefixed with its process, and a log file.
"""

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping

from common.settings import Settings
from stack.front_door import FrontDoor
from stack.processes import (
    LOOPBACK,
    ChildProcess,
    RedisServer,
    StartupError,
    exited_during_startup,
    free_port,
    http_status,
    port_is_free,
    wait_until,
    web_allocator_env,
)
from stack.redis_ha import RedisHa

DEFAULT_WEB_PORT = 8000
DEFAULT_REDIS_PORT = 6379
DEFAULT_REDIS_MAXMEMORY = "512mb"
DEFAULT_CACHE_REDIS_MAXMEMORY = "256mb"
# The model load alone takes 10-20 s; a cold disk and first imports of torch can take several times that.
READY_TIMEOUT_S = 180
# How often the launcher checks that its processes are still running once the service is up.
WATCH_INTERVAL_S = 0.5


def say(message: str, stream=None) -> None:
    """Print a launcher message to stdout (or ``stream``), flushed."""
    # Flushed: the children's output is copied to stdout's buffer directly, from other threads.
    print(message, file=stream or sys.stdout, flush=True)


def choose_redis_port(environ: Mapping[str, str]) -> int:
    """REDIS_PORT when given; else 6379 when free; else any free port, rather than dying beside a system Redis."""
    if environ.get("REDIS_PORT"):
        return int(environ["REDIS_PORT"])
    if port_is_free(DEFAULT_REDIS_PORT):
        return DEFAULT_REDIS_PORT
    port = free_port()
    say(f"port {DEFAULT_REDIS_PORT} is taken (a system Redis?), so this stack's redis-server uses port {port}")
    return port


def stop_on_sigterm(signum, frame) -> None:
    """Treat SIGTERM like Ctrl-C: stop everything in order."""
    raise KeyboardInterrupt


def run(environ: Mapping[str, str], ha: bool = False) -> int:
    """Start the stack, wait until it is ready, and watch it; return the exit status."""
    web_port = int(environ.get("PORT") or DEFAULT_WEB_PORT)
    ready_url = f"http://{LOOPBACK}:{web_port}/ready"
    gunicorn_address = f"{LOOPBACK}:{free_port()}"
    env = {
        "PORT": str(web_port),
        "BIND": gunicorn_address,
        # X-Forwarded-For's last hop is the front door's view of the client: what rate limits must see.
        "TRUST_PROXY_HOPS": str(int(environ.get("TRUST_PROXY_HOPS") or 0) + 1),
        "PYTHONUNBUFFERED": "1",
    }
    processes: list[RedisServer | ChildProcess] = []
    redis_ha: RedisHa | None = None
    healthy_stop = False
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        if ha:
            maxmemory = environ.get("REDIS_MAXMEMORY") or DEFAULT_REDIS_MAXMEMORY
            redis_ha = RedisHa(maxmemory=maxmemory)
            redis_ha.start()
            env.update(REDIS_URL=redis_ha.url, REDIS_SENTINELS=redis_ha.sentinel_setting)
            say(
                f"redis-server primary on port {redis_ha.servers[0].port}, replica on port {redis_ha.servers[1].port},"
                f" maxmemory {maxmemory}; Sentinels on {redis_ha.sentinel_setting}"
            )
        elif not environ.get("REDIS_URL"):
            maxmemory = environ.get("REDIS_MAXMEMORY") or DEFAULT_REDIS_MAXMEMORY
            redis_server = RedisServer(choose_redis_port(environ), appendfsync="everysec", maxmemory=maxmemory)
            processes.append(redis_server)
            redis_server.start()
            env["REDIS_URL"] = redis_server.url
            say(f"redis-server on {LOOPBACK}:{redis_server.port}, maxmemory {maxmemory} (log: {redis_server.log_path})")
        if ha or not environ.get("REDIS_URL"):
            if not environ.get("CACHE_REDIS_URL"):
                # As compose and k8s run it: the cache evicts; the main server never drops queued work.
                cache_maxmemory = environ.get("CACHE_REDIS_MAXMEMORY") or DEFAULT_CACHE_REDIS_MAXMEMORY
                cache_server = RedisServer(maxmemory=cache_maxmemory, maxmemory_policy="allkeys-lru", appendonly=False)
                cache_server.name = "cache-redis-server"
                processes.append(cache_server)
                cache_server.start()
                env["CACHE_REDIS_URL"] = cache_server.url
                say(f"cache redis-server on {LOOPBACK}:{cache_server.port}, maxmemory {cache_maxmemory}, evicting")
        processes.append(ChildProcess("worker", [sys.executable, "-m", "worker"], env, echo=True))
        allocator_env = web_allocator_env(environ)
        if not allocator_env and "LD_PRELOAD" not in environ:
            say("libjemalloc2 is not installed, so gunicorn runs on glibc's malloc (make jemalloc installs it)")
        web_env = {**allocator_env, **env}
        processes.append(
            ChildProcess(
                "web", [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn_conf.py", "web:create_app()"], web_env, echo=True
            )
        )
        web_settings = Settings.from_env(environ={**environ, **env})
        processes.append(
            FrontDoor(web_port, gunicorn_address, web_settings.max_body_bytes, web_settings.max_job_body_bytes, echo=True)
        )

        def ready() -> bool:
            for process in processes:
                if not process.alive():
                    raise exited_during_startup(process)
            return http_status(ready_url) == 200

        wait_until(ready, READY_TIMEOUT_S, f"{ready_url} to answer 200", interval_s=0.2)
        say(
            f"\nSentiment Score API: http://{LOOPBACK}:{web_port}  (docs: http://{LOOPBACK}:{web_port}/docs; Ctrl-C stops)"
            f"\n  nginx on port {web_port} buffers each request, then hands it to gunicorn on {gunicorn_address}\n"
        )
        while all(process.alive() for process in processes):
            time.sleep(WATCH_INTERVAL_S)
            for restarted in redis_ha.heal() if redis_ha else []:
                say(
                    f"{restarted.name} had died; restarted on port {restarted.port} (the primary is on {redis_ha.primary_port()})"
                )
        exited = next(process for process in processes if not process.alive())
        say(
            f"{exited.name} exited with code {exited.process.returncode}; stopping the rest."
            f" Last lines of its log ({exited.log_path}):\n{exited.tail()}",
            sys.stderr,
        )
        return 1
    except StartupError as error:
        say(str(error), sys.stderr)
        return 1
    except TimeoutError as error:
        say(f"{error}; last lines of the logs:", sys.stderr)
        for process in [*(redis_ha.processes if redis_ha else []), *processes]:
            say(f"--- {process.name} ({process.log_path}):\n{process.tail()}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        healthy_stop = all(process.alive() for process in processes)
        return 0
    finally:
        # A second Ctrl-C must not cut the orderly stop short: web first, then the worker, Redis last.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping...")
        for process in reversed(processes):
            # Logs of a failed run stay, for a closer look; a run stopped while healthy leaves nothing behind.
            if healthy_stop:
                process.close()
            else:
                process.stop()
        if redis_ha is not None and healthy_stop:
            redis_ha.close()
        elif redis_ha is not None:
            redis_ha.stop()


if __name__ == "__main__":
    # No options: --help describes the environment variables above instead of starting the stack.
    parser = argparse.ArgumentParser(
        prog="python -m stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ha", action="store_true", help="the main Redis as a primary, a replica and three Sentinels")
    sys.exit(run(os.environ, ha=parser.parse_args().ha))
