"""Local stacks of real processes: redis-server, Celery worker, gunicorn, on loopback."""

from stack.processes import (
    REPO,
    ChildProcess,
    RedisServer,
    StartupError,
    child_pids,
    free_port,
    http_status,
    port_is_free,
    start_web,
    start_worker,
    wait_until,
    web_allocator_env,
)

__all__ = [
    "REPO",
    "ChildProcess",
    "RedisServer",
    "StartupError",
    "child_pids",
    "free_port",
    "http_status",
    "port_is_free",
    "start_web",
    "start_worker",
    "wait_until",
    "web_allocator_env",
]
