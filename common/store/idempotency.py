"""Idempotency-Key claims: the same key and body within JOB_TTL_S answer from the same job.

``idempotency:<route>:<owner>:<sha256 of the key>`` holds ``<sha256 of the canonical body> <job id>`` (the
job id is empty when the request needed no job: every text was cached). The first request claims
the key with SET NX before it creates its job, so two concurrent retries cannot both create one.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from common.store.keys import idempotency_key
from common.store.scripts import ALLOW_OOM

# Longest accepted key (Stripe and the IETF draft use UUIDs or similar).
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    """The key's earlier use: the hash of its body and its job (empty: answered from cache)."""

    body_hash: str
    job_id: str


# Forget a claim only while it still names this job: a retry may have pointed it elsewhere meanwhile.
_RELEASE_IF_BOUND_SCRIPT = (
    ALLOW_OOM
    + """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, -string.len(ARGV[1]) - 1) == ' ' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def body_hash(body) -> str:
    """Hash of a request's parsed body, so formatting (spaces, key order) does not matter."""
    return hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()


def job_body_hash(texts: Sequence[bytes], callback_url, metadata) -> str:
    """``body_hash`` of a bulk job's body ({"text", "callback_url", "metadata"}), its texts hashed one at a time."""
    digest = hashlib.sha256()
    digest.update(f'{{"callback_url":{canonical_json(callback_url)},"metadata":{canonical_json(metadata)},"text":['.encode())
    for index, text in enumerate(texts):
        digest.update((b"," if index else b"") + canonical_json(text.decode("utf-8")).encode())
    digest.update(b"]}")
    return digest.hexdigest()


@dataclass(frozen=True)
class KeyUse:
    """An Idempotency-Key as one owner uses it on one route: claims of two owners never meet."""

    route: str
    owner: str
    key: str

    @property
    def redis_key(self) -> str:
        return idempotency_key(self.route, self.owner, self.key)


class IdempotencyKeys:
    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._release_if_bound = client.register_script(_RELEASE_IF_BOUND_SCRIPT)

    def claim(self, use: KeyUse, hashed_body: str, job_id: str) -> Claim | None:
        """Claim the key for this body and job; None when claimed now, else the earlier claim."""
        if self.client.set(use.redis_key, f"{hashed_body} {job_id}", nx=True, ex=self.ttl_s):
            return None
        return self.get(use)

    def get(self, use: KeyUse) -> Claim | None:
        value = self.client.get(use.redis_key)
        if value is None:
            return None
        hashed, _, job_id = value.partition(" ")
        return Claim(hashed, job_id)

    def release(self, use: KeyUse) -> None:
        """Forget a claim whose request created nothing (refused, or its publish failed), so a retry can."""
        self.client.delete(use.redis_key)

    def release_if_bound_to(self, use: KeyUse, job_id: str) -> None:
        """Forget a claim that names ``job_id``, a job whose creation failed, so a retry creates one."""
        self._release_if_bound(keys=[use.redis_key], args=[job_id])

    def point_to(self, use: KeyUse, hashed_body: str, job_id: str) -> None:
        """Point a claim at the job a later retry created (the cache had lost a text meanwhile)."""
        self.client.set(use.redis_key, f"{hashed_body} {job_id}", ex=self.ttl_s)
