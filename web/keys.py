"""API keys and who owns a job: each key has an owner name, and may carry limits of its own.

Keys come from API_KEY_HASHES (SHA-256 hex digests; each owner is named ``key-`` and the first 12
digits of its digest) and from API_KEYS_FILE, a JSON file (mounted from a Secret) of named keys:

    {"keys": [{"name": "team-a", "sha256": "<hex digest>", "rate_limit": "1200/minute",
               "max_queued_bulk_texts": 200000}]}

``rate_limit`` and ``max_queued_bulk_texts`` are optional: without them RATE_LIMIT and
MAX_QUEUED_BULK_TEXTS_PER_KEY apply. With keys off, every client is the one ``anonymous`` owner.
An owner's name is what jobs, logs and metric labels carry: never the key, nor its whole digest.
"""

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

from common.jobs import ANONYMOUS

# Owner names go into Redis keys, queue names and metric labels.
OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
KEY_FIELDS = {"name", "sha256", "rate_limit", "max_queued_bulk_texts"}


class KeysFileError(ValueError):
    """API_KEYS_FILE cannot be used as it is; the message says why (never a key)."""


@dataclass(frozen=True)
class Owner:
    """Who a request acts for, and the limits that apply to it (None: the service-wide ones)."""

    name: str
    rate_limit: str | None = None
    max_queued_bulk_texts: int | None = None


ANONYMOUS_OWNER = Owner(ANONYMOUS)


@dataclass(frozen=True)
class ApiKey:
    digest: str
    owner: Owner


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest that API_KEY_HASHES and API_KEYS_FILE store for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(settings) -> list[ApiKey]:
    """Every accepted key, from API_KEY_HASHES and API_KEYS_FILE; KeysFileError when the file is unusable."""
    keys = [
        ApiKey(digest, Owner(f"key-{digest[:12]}"))
        for digest in (entry.strip().lower() for entry in settings.api_key_hashes.split(","))
        if digest
    ]
    if settings.api_keys_file:
        keys += keys_from_file(Path(settings.api_keys_file))
    names = [key.owner.name for key in keys]
    if len(set(names)) != len(names) or len({key.digest for key in keys}) != len(keys):
        raise KeysFileError("two API keys share a name or a digest")
    return keys


def keys_from_file(path: Path) -> list[ApiKey]:
    try:
        entries = json.loads(path.read_text())["keys"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KeysFileError(f"{path}: not a JSON object with a list of keys ({type(error).__name__})") from None
    keys = []
    for number, entry in enumerate(entries):
        where = f"{path}: key {number}"
        if not isinstance(entry, dict) or set(entry) - KEY_FIELDS:
            raise KeysFileError(f"{where}: an object with only {', '.join(sorted(KEY_FIELDS))}")
        name, digest = entry.get("name"), str(entry.get("sha256", "")).lower()
        if not isinstance(name, str) or not OWNER_NAME.fullmatch(name) or name == ANONYMOUS:
            raise KeysFileError(f"{where}: name must match {OWNER_NAME.pattern} (and not be {ANONYMOUS!r})")
        if not DIGEST.fullmatch(digest):
            raise KeysFileError(f"{where} ({name}): sha256 must be the key's 64-digit hex SHA-256 digest")
        rate_limit, bulk_texts = entry.get("rate_limit"), entry.get("max_queued_bulk_texts")
        if rate_limit is not None and not (isinstance(rate_limit, str) and rate_limit.strip()):
            raise KeysFileError(f"{where} ({name}): rate_limit must be a limit such as '600/minute'")
        if bulk_texts is not None and not (isinstance(bulk_texts, int) and bulk_texts > 0):
            raise KeysFileError(f"{where} ({name}): max_queued_bulk_texts must be a positive integer")
        keys.append(ApiKey(digest, Owner(name, rate_limit, bulk_texts)))
    return keys


class KeyRing:
    """Finds the key a request presents, comparing digests in constant time."""

    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    def match(self, presented: str) -> ApiKey | None:
        digest = hash_api_key(presented)
        found = None
        # Compare against every stored digest, so timing does not reveal which one matched.
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def owner_names(self) -> list[str]:
        return [key.owner.name for key in self.keys]
