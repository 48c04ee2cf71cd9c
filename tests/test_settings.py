"""Settings: read from the environment in one place, every one documented in docs/settings.md."""

from common.settings import Settings, documented_settings
from stack import REPO


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
