"""Settings: read from the environment in one place, every one documented in docs/settings.md."""

import pytest

from common.celery_app import broker
from common.settings import Settings, documented_settings
from common.store import main_redis_auth
from stack import REPO
from web.security import rate_limit_storage


def test_every_setting_is_documented_in_docs_settings():
    page = (REPO / "docs" / "settings.md").read_text()
    missing = [env for env, _, _ in documented_settings() if f"| `{env}` |" not in page]
    assert not missing, f"docs/settings.md's settings table lacks {missing}"


def test_environment_values_are_typed_and_overrides_win():
    settings = Settings.from_env({"max_texts": 7}, environ={"SYNC_WAIT_S": "1.5", "MAX_TEXTS": "3", "QUEUE_NAME": "q"})
    assert settings.sync_wait_s == 1.5
    assert settings.max_texts == 7
    assert settings.queue_name == "q"
    assert settings.cache_url == settings.redis_url


def test_defaults_need_no_environment():
    settings = Settings.from_env(environ={})
    assert settings.model.endswith("sst2-minilm-l6")
    assert not settings.api_keys_enabled and not settings.rate_limit


def test_sentinels_name_the_main_redis_and_turn_on_the_replica_wait():
    settings = Settings.from_env(environ={"REDIS_SENTINELS": " s1:26379, [::1]:26380 ,", "REDIS_URL": "rediss://:pw@x/3"})
    assert settings.sentinel_addresses == [("s1", 26379), ("::1", 26380)]
    assert settings.sentinel_netlocs == ["s1:26379", "[::1]:26380"]
    assert settings.replica_acks_required == 1
    assert main_redis_auth(settings) == {"ssl": True, "db": 3, "username": None, "password": "pw"}
    assert Settings.from_env(environ={}).replica_acks_required == 0
    assert Settings.from_env(environ={"REDIS_SENTINELS": "s1:1", "REDIS_REPLICA_ACKS": "0"}).replica_acks_required == 0
    with pytest.raises(ValueError, match="host:port"):
        _ = Settings.from_env(environ={"REDIS_SENTINELS": "s1"}).sentinel_addresses


def test_celery_and_the_rate_limiter_reach_the_primary_through_the_sentinels():
    settings = Settings.from_env(
        environ={"REDIS_SENTINELS": "s1:26379,s2:26380", "REDIS_PASSWORD": "p@ss", "REDIS_URL": "redis://x/2"}
    )
    url, options, use_ssl = broker(settings)
    assert url == "sentinel://:p%40ss@s1:26379/2;sentinel://:p%40ss@s2:26380/2"
    assert options["master_name"] == "sentiment"
    assert options["sentinel_kwargs"]["password"] == "p@ss"
    assert use_ssl is None
    uri, storage_options = rate_limit_storage(settings)
    assert uri == "redis+sentinel://s1:26379,s2:26380/sentiment"
    assert storage_options["password"] == "p@ss"  # limits gives it to the Sentinels as well
    assert storage_options["use_replicas"] is False
    plain = Settings.from_env(environ={"REDIS_URL": "redis://x/2"})
    assert broker(plain) == ("redis://x/2", {}, None)


def test_a_rediss_url_carries_its_tls_options_to_every_client_through_the_sentinels():
    environ = {"REDIS_SENTINELS": "s1:26379,[::1]:26380", "REDIS_URL": "rediss://x/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"}
    settings = Settings.from_env(environ=environ)
    tls = {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"}
    assert main_redis_auth(settings).items() >= {"ssl": True, **tls}.items()
    url, options, use_ssl = broker(settings)
    assert url == "sentinel://s1:26379/0;sentinel://[::1]:26380/0"
    assert use_ssl == tls
    assert options["sentinel_kwargs"].items() >= {"ssl": True, **tls}.items()
    uri, storage_options = rate_limit_storage(settings)
    assert uri == "redis+sentinel://s1:26379,[::1]:26380/sentiment"
    assert storage_options.items() >= {"ssl": True, **tls}.items()
    assert storage_options["sentinel_kwargs"].items() >= {"ssl": True, **tls}.items()
