"""The web process's hot cache: recent predictions answered without Redis, never across models."""

import redis

from common.hot_cache import HotCache
from common.settings import Settings
from common.store import Stores

POSITIVE = [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]
NEGATIVE = [{"label": "NEGATIVE", "score": 0.8}, {"label": "POSITIVE", "score": 0.2}]


def test_least_recently_used_entries_leave_first():
    cache = HotCache(max_entries=2)
    cache.store("model@a", ["one", "two"], [POSITIVE, NEGATIVE])
    assert cache.lookup("model@a", ["one"]) == [POSITIVE]  # "one" is now the most recent
    cache.store("model@a", ["three"], [POSITIVE])
    assert cache.lookup("model@a", ["one", "two", "three"]) == [POSITIVE, None, POSITIVE]
    assert len(cache) == 2


def test_a_new_model_never_reads_another_models_scores():
    cache = HotCache(max_entries=10)
    cache.store("model@a", ["text"], [POSITIVE])
    assert cache.lookup("model@b", ["text"]) == [None]


def test_unknown_predictions_are_not_kept_and_zero_entries_turns_it_off():
    cache = HotCache(max_entries=10)
    cache.store("model@a", ["missing"], [None])
    assert len(cache) == 0
    off = HotCache(max_entries=0)
    off.store("model@a", ["text"], [POSITIVE])
    assert off.lookup("model@a", ["text"]) == [None]


def test_hot_texts_are_answered_without_redis(service_env, private_redis):
    from web import create_app

    app = create_app(Settings.from_env({"redis_url": private_redis.url}, environ=service_env))
    client = app.test_client()
    stores = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True))
    stores.workers.heartbeat("fake-worker", "model@x")
    stores.cache.store("model@x", {"a hot text": POSITIVE})
    assert client.post("/predict", json={"text": ["a hot text"]}).get_json() == {"predictions": [POSITIVE]}
    # Redis forgets the text (evicted, or the server restarted empty): the process still knows it.
    stores.main.flushall()
    stores.workers.heartbeat("fake-worker", "model@x")
    assert client.post("/predict?wait=0", json={"text": ["a hot text"]}).get_json() == {"predictions": [POSITIVE]}
