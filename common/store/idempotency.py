"""Idempotency-Key claims: the same key and body within JOB_TTL_S answer from the same job.

``idempotency:<route>:<sha256 of the key>`` holds ``<sha256 of the canonical body> <job id>`` (the
job id is empty when the request needed no job: every text was cached). The first request claims
the key with SET NX before it creates its job, so two concurrent retries cannot both create one.
"""

import hashlib
import json
from dataclasses import dataclass

import redis

from common.store.keys import PREFIX

# Longest accepted key (Stripe and the IETF draft use UUIDs or similar).
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    """The key's earlier use: the hash of its body and its job (empty: answered from cache)."""

    body_hash: str
    job_id: str


def body_hash(body) -> str:
    """Hash of a request's parsed body, so formatting (spaces, key order) does not matter."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyKeys:
    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def _key(route: str, key: str) -> str:
        return f"{PREFIX}idempotency:{route}:{hashlib.sha256(key.encode()).hexdigest()}"

    def claim(self, route: str, key: str, hashed_body: str, job_id: str) -> Claim | None:
        """Claim ``key`` for this body and job; None when claimed now, else the earlier claim."""
        redis_key = self._key(route, key)
        if self.client.set(redis_key, f"{hashed_body} {job_id}", nx=True, ex=self.ttl_s):
            return None
        return self.get(route, key)

    def get(self, route: str, key: str) -> Claim | None:
        value = self.client.get(self._key(route, key))
        if value is None:
            return None
        hashed, _, job_id = value.partition(" ")
        return Claim(hashed, job_id)

    def release(self, route: str, key: str) -> None:
        """Forget a claim whose request created nothing (refused, or its publish failed), so a retry can."""
        self.client.delete(self._key(route, key))

    def point_to(self, route: str, key: str, hashed_body: str, job_id: str) -> None:
        """Point a claim at the job a later retry created (the cache had lost a text meanwhile)."""
        self.client.set(self._key(route, key), f"{hashed_body} {job_id}", ex=self.ttl_s)
