"""What request handlers share: settings, Redis stores, a blocking client for waits, the Celery app and its dispatcher."""

import time

from flask import Flask, current_app

from common.celery_app import create_celery
from common.hot_cache import HotCache
from common.settings import Settings
from common.store import connect_main, stores_from_settings
from common.store.memory import RedisMemory
from common.store.replication import ReplicationFence
from web.dispatch import JobDispatcher

EXTENSION_KEY = "sentiment"
MODEL_IDENTITY_TTL_S = 2.0


class Services:
    """Built once per app by ``create_app``; handlers reach it through ``services()``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stores = stores_from_settings(settings)
        self.memory = RedisMemory(self.stores.main, settings)
        # BLPOP blocks for up to SYNC_WAIT_S, so this client's read timeout must be longer.
        self.blocking_redis = connect_main(settings, socket_timeout=settings.sync_wait_s + 5)
        self.celery = create_celery(settings)
        replicas = settings.replica_acks_required
        # Its own client, without retries: the fence must meet the primary that took the job, or fail.
        fence_timeout_s = settings.redis_replica_ack_timeout_ms / 1000 + 5
        fence_client = connect_main(settings, fence_timeout_s, retries=False) if replicas else None
        self.replication = ReplicationFence(fence_client, replicas, settings.redis_replica_ack_timeout_ms)
        self.dispatcher = JobDispatcher(self.celery, self.replication)
        self.hot_cache = HotCache(settings.web_cache_entries)
        self._model_identity: str | None = None
        self._model_identity_read_at = float("-inf")

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION_KEY] = self

    def model_identity(self) -> str | None:
        """The served model's identity, re-read from Redis at most every couple of seconds."""
        now = time.monotonic()
        if now - self._model_identity_read_at > MODEL_IDENTITY_TTL_S:
            self._model_identity = self.stores.workers.model_identity()
            self._model_identity_read_at = now
        return self._model_identity


def services() -> Services:
    """The current app's Services."""
    return current_app.extensions[EXTENSION_KEY]
