"""The prediction cache: one key per (model identity, text), so a new model never reads old scores."""

import json
from collections.abc import Sequence

import redis

from common.store.keys import cache_key


class PredictionCache:
    """Cached predictions in the cache Redis (which may be a separate, evicting server)."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s

    def lookup(self, model_identity: str, texts: Sequence[str]) -> list[list | None]:
        """Cached prediction of each text, or None where it is not cached."""
        return [json.loads(value) if value is not None else None for value in self.lookup_encoded(model_identity, texts)]

    def lookup_encoded(self, model_identity: str, texts: Sequence[str]) -> list[str | None]:
        """Cached prediction of each text as stored (its JSON), or None where it is not cached."""
        if not texts:
            return []
        return self.client.mget([cache_key(model_identity, text) for text in texts])

    def store(self, model_identity: str, predictions: dict[str, list], pipeline: redis.client.Pipeline | None = None) -> None:
        """Cache each text's prediction with the cache TTL; with ``pipeline``, only queue the commands there."""
        pipe = pipeline or self.client.pipeline(transaction=False)
        for text, prediction in predictions.items():
            pipe.set(cache_key(model_identity, text), json.dumps(prediction), ex=self.ttl_s)
        if pipeline is None:
            pipe.execute()
