"""Redis with a password: the service authenticates from a mounted secret file, strangers are refused,
and the password never shows in a log line, a probe or a metric."""

import secrets

import pytest
import redis
import requests

from common.settings import Settings, with_password
from stack import RedisServer, free_port, start_web, start_worker


def test_with_password_fills_in_the_password_only_where_none_is_given():
    assert with_password("redis://redis:6379/0", "p@ss/word") == "redis://:p%40ss%2Fword@redis:6379/0"
    assert with_password("rediss://user@redis:6380/1", "pw") == "rediss://user:pw@redis:6380/1"
    assert with_password("redis://:given@redis:6379/0", "other") == "redis://:given@redis:6379/0"
    assert with_password("redis://redis:6379/0", "") == "redis://redis:6379/0"


def test_the_password_file_wins_and_the_password_stays_out_of_repr(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("from-the-file\n")
    settings = Settings.from_env(environ={"REDIS_PASSWORD": "from-env", "REDIS_PASSWORD_FILE": str(password_file)})
    assert settings.redis_connection_url == "redis://:from-the-file@127.0.0.1:6379/0"
    assert "from-env" not in repr(settings) and "from-the-file" not in repr(settings)


@pytest.fixture
def protected_redis():
    # A quote and a backslash: the password must survive Redis's config syntax and URL encoding.
    server = RedisServer(password=f'{secrets.token_hex(8)}"q\\{secrets.token_hex(8)}')
    server.start()
    yield server
    server.close()


def test_the_service_runs_on_a_password_protected_redis_that_refuses_strangers(service_env, protected_redis, tmp_path):
    password = protected_redis.password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(protected_redis.url, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(with_password(protected_redis.url, "wrong-" + password), socket_timeout=5).ping()

    password_file = tmp_path / "redis-password"
    password_file.write_text(password + "\n")
    env = {
        **service_env,
        "REDIS_URL": protected_redis.url,
        "REDIS_PASSWORD_FILE": str(password_file),
        "WORKER_METRICS_PORT": str(free_port()),
        "QUEUE_NAME": "sentiment-auth-test",
        "ACCESS_LOG": "-",
    }
    authenticated = redis.Redis.from_url(with_password(protected_redis.url, password), decode_responses=True)
    worker = start_worker(env, authenticated)
    port = free_port()
    web = start_web(env, port, processes=1)
    try:
        base = f"http://127.0.0.1:{port}"
        answer = requests.post(f"{base}/predict", json={"text": ["A password-protected review."]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
        ready = requests.get(f"{base}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        worker_metrics = requests.get(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics", timeout=5).text
        for where, text in {
            "/ready": ready.text,
            "web /metrics": metrics,
            "worker /metrics": worker_metrics,
            "web log": web.log(),
            "worker log": worker.log(),
        }.items():
            assert password not in text, f"the Redis password appears in {where}"
    finally:
        web.close()
        worker.close()
