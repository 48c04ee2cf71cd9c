"""Shared fixtures: one real redis-server, one real Celery worker and one gunicorn for the whole run."""

import base64
import os
import uuid

import pytest
import redis

from common.settings import Settings
from stack import RedisServer, free_port, start_web, start_worker
from stack.front_door import FrontDoor


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def private_redis():
    """A redis-server of the test's own, for tests that change or break Redis state."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def service_env(redis_server) -> dict[str, str]:
    """Environment shared by the in-process app, the worker and gunicorn."""
    env = {
        "REDIS_URL": redis_server.url,
        "QUEUE_NAME": "sentiment-test",
        "VISIBILITY_TIMEOUT_S": "10",
        "WORKER_METRICS_PORT": str(free_port()),
        "TORCH_THREADS": "2",
        "SYNC_WAIT_S": "20",
        "JOB_DEADLINE_S": "60",
        "PYTHONUNBUFFERED": "1",
        # Webhooks on, to loopback receivers, retried quickly (tests/test_bulk.py).
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"a test webhook key").decode(),
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "WEBHOOK_RETRY_BASE_S": "0.5",
    }
    if os.environ.get("MODEL"):
        env["MODEL"] = os.environ["MODEL"]
    return env


@pytest.fixture(scope="session")
def redis_client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture(scope="session")
def worker(service_env, redis_client):
    process = start_worker(service_env, redis_client)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def web_url(service_env, worker):
    port = free_port()
    process = start_web(service_env, port)
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="session")
def public_port(web_url, service_env) -> int:
    """The public port: nginx, configured as `make run` and compose configure it, in front of the session's gunicorn."""
    settings = Settings.from_env(environ=service_env)
    door = FrontDoor(free_port(), web_url.removeprefix("http://"), settings.max_body_bytes, settings.max_job_body_bytes)
    door.wait_until_listening()
    yield door.port
    door.close()


@pytest.fixture
def settings(service_env) -> Settings:
    return Settings.from_env(environ=service_env)


@pytest.fixture
def app(settings):
    from web import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def unique():
    """Texts no other test has sent, so the cache starts cold for them."""
    tag = uuid.uuid4().hex[:8]
    return lambda text: f"{text} ({tag})"


@pytest.fixture
def model_is_bundled(service_env):
    """Checks of the bundled model's scores make no sense when MODEL points elsewhere."""
    if "MODEL" in service_env:
        pytest.skip("MODEL is overridden; these scores belong to the bundled model")
