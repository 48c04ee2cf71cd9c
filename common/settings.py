"""Every setting of the service, read from the environment in one place.

Each field names its environment variable and default; docs/settings.md lists them.
Tests build ``Settings.from_env(overrides)`` instead of touching ``os.environ``.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

# model.BUNDLED_MODEL_DIR, spelled out here so the web side (and its image) needs nothing from model/.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "sst2-minilm-l6"


def _setting(env: str, default, doc: str, secret: bool = False):
    # A secret stays out of repr(), so logging the settings never logs it.
    return field(default=default, repr=not secret, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Service settings; see docs/settings.md for the trade-off behind each default."""

    redis_url: str = _setting("REDIS_URL", "redis://127.0.0.1:6379/0", "Broker, job records and worker heartbeats.")
    redis_password: str = _setting(
        "REDIS_PASSWORD",
        "",
        "Password of both Redis servers (AUTH), filled into REDIS_URL and CACHE_REDIS_URL; empty: none.",
        secret=True,
    )
    redis_password_file: str = _setting(
        "REDIS_PASSWORD_FILE", "", "File holding the Redis password (a mounted secret); wins over REDIS_PASSWORD."
    )
    redis_sentinels: str = _setting(
        "REDIS_SENTINELS",
        "",
        "Comma-separated host:port of the Sentinels that watch the main Redis; empty: REDIS_URL names the server."
        " With them, REDIS_URL gives only the scheme (rediss: TLS), the database and the password, which the Sentinels share.",
    )
    redis_sentinel_master: str = _setting(
        "REDIS_SENTINEL_MASTER", "sentiment", "Name under which the Sentinels monitor the main Redis."
    )
    redis_replica_acks: int = _setting(
        "REDIS_REPLICA_ACKS",
        -1,
        "Replicas that must hold a new job before POST answers (Redis WAIT), so a failover loses nothing accepted;"
        " -1: 1 with REDIS_SENTINELS, else 0 (do not wait).",
    )
    redis_replica_ack_timeout_ms: int = _setting(
        "REDIS_REPLICA_ACK_TIMEOUT_MS",
        1000,
        "Longest a POST waits for those replicas; past it the job is withdrawn and POST answers 503.",
    )
    cache_redis_url: str = _setting(
        "CACHE_REDIS_URL", "", "Prediction cache; empty means REDIS_URL. Give the cache its own evicting Redis in production."
    )
    queue_name: str = _setting("QUEUE_NAME", "sentiment", "Celery queue (a Redis list) that carries jobs.")
    model: str = _setting("MODEL", str(BUNDLED_MODEL_DIR), "Model folder or hub id; the default is the bundled SST-2 model.")
    model_backend: str = _setting("MODEL_BACKEND", "torch", "torch, or onnx for an exported ONNX Runtime model.")
    device: str = _setting("DEVICE", "auto", "auto, cpu or cuda.")
    torch_threads: int = _setting("TORCH_THREADS", 0, "Intra-op threads per worker; 0 means the CPUs the process may use.")
    batch_max_texts: int = _setting("BATCH_MAX_TEXTS", 64, "Most texts in one forward pass.")
    batch_max_tokens: int = _setting(
        "BATCH_MAX_TOKENS", 8192, "Most tokens one forward pass computes: real tokens when packed, texts x longest when padded."
    )
    batch_max_wait_ms: float = _setting(
        "BATCH_MAX_WAIT_MS",
        0.0,
        "Extra wait for more texts after the first; 0 runs whatever is queued at once (continuous batching).",
    )
    gather_max_texts: int = _setting(
        "GATHER_MAX_TEXTS", 256, "Most texts the batcher takes from its queue at once, then cuts into forward passes."
    )
    worker_concurrency: int = _setting(
        "WORKER_CONCURRENCY",
        64,
        "Celery messages one worker process holds at once (threads); each carries the jobs of one or more requests.",
    )
    worker_max_rss_mb: int = _setting(
        "WORKER_MAX_RSS_MB",
        0,
        "Past this resident memory (MiB) a worker takes no more jobs, finishes those it holds and exits, "
        "for its orchestrator to restart it; 0: never.",
    )
    worker_metrics_port: int = _setting("WORKER_METRICS_PORT", 9101, "Worker's Prometheus /metrics port; 0 turns it off.")
    worker_metrics_host: str = _setting(
        "WORKER_METRICS_HOST", "127.0.0.1", "Address the worker's /metrics binds; 0.0.0.0 in containers."
    )
    cache_ttl_s: int = _setting("CACHE_TTL_S", 7 * 24 * 3600, "Lifetime of a cached prediction.")
    web_cache_entries: int = _setting(
        "WEB_CACHE_ENTRIES", 10000, "Recent predictions each web process keeps in memory in front of Redis; 0 turns it off."
    )
    job_ttl_s: int = _setting("JOB_TTL_S", 3600, "Lifetime of a job record, so clients can poll this long.")
    sync_wait_s: float = _setting("SYNC_WAIT_S", 5.0, "Longest a POST waits for its job before answering 202.")
    job_deadline_s: float = _setting("JOB_DEADLINE_S", 30.0, "Texts not started within this long (queue time included) expire.")
    visibility_timeout_s: int = _setting(
        "VISIBILITY_TIMEOUT_S", 120, "Unacked jobs are redelivered after this long; must exceed the longest job."
    )
    max_texts: int = _setting("MAX_TEXTS", 128, "Most texts in one request.")
    max_text_chars: int = _setting("MAX_TEXT_CHARS", 2000, "Longest text, in characters.")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", 1024 * 1024, "Largest request body.")
    max_queued_texts: int = _setting("MAX_QUEUED_TEXTS", 10000, "Texts waiting in the queue beyond which POST answers 429.")
    max_queued_bytes: int = _setting(
        "MAX_QUEUED_BYTES",
        0,
        "Redis bytes /predict jobs may hold until they end, beyond which POST /predict answers 429;"
        " 0: 10% of the main Redis's maxmemory (64 MiB without one).",
    )
    max_job_texts: int = _setting("MAX_JOB_TEXTS", 100_000, "Most texts in one bulk job (POST /jobs).")
    max_job_body_bytes: int = _setting("MAX_JOB_BODY_BYTES", 32 * 1024 * 1024, "Largest POST /jobs body.")
    max_queued_bulk_texts: int = _setting(
        "MAX_QUEUED_BULK_TEXTS", 1_000_000, "Texts of bulk jobs not yet scored beyond which POST /jobs answers 429."
    )
    max_queued_bulk_bytes: int = _setting(
        "MAX_QUEUED_BULK_BYTES",
        0,
        "Redis bytes bulk jobs' texts may hold until scored, beyond which POST /jobs answers 429;"
        " 0: 40% of the main Redis's maxmemory (256 MiB without one).",
    )
    redis_memory_high_water: float = _setting(
        "REDIS_MEMORY_HIGH_WATER",
        0.8,
        "Share of the main Redis's maxmemory past which no new job is admitted (429) until finished work expires; 0: off.",
    )
    job_submissions_per_process: int = _setting(
        "JOB_SUBMISSIONS_PER_PROCESS",
        2,
        "POST /jobs bodies one web process parses at once (each holds about its body's size); others wait, then 429.",
    )
    bulk_queue_name: str = _setting("BULK_QUEUE_NAME", "", "Queue of bulk jobs' chunks; empty means QUEUE_NAME-bulk.")
    bulk_chunk_texts: int = _setting(
        "BULK_CHUNK_TEXTS", 64, "Texts per chunk of a bulk job: the unit of work, progress and cancellation."
    )
    bulk_pass_max_tokens: int = _setting(
        "BULK_PASS_MAX_TOKENS",
        512,
        "Most tokens one forward pass over bulk texts computes: an interactive text waits behind at most one such pass.",
    )
    bulk_pass_max_ms: float = _setting(
        "BULK_PASS_MAX_MS",
        50.0,
        "Longest a forward pass over bulk texts should take, as the worker measures its own speed; it cuts passes"
        " below BULK_PASS_MAX_TOKENS on a slow CPU. 0: only the token bound.",
    )
    bulk_min_share: float = _setting(
        "BULK_MIN_SHARE",
        0.1,
        "Least share of a worker's forward-pass time bulk chunks get while interactive texts wait, so bulk never stalls.",
    )
    bulk_job_deadline_s: int = _setting(
        "BULK_JOB_DEADLINE_S",
        86400,
        "Longest a bulk job may stay queued or running; past it, it ends failed (error expired) and its webhook is sent.",
    )
    bulk_consumers: int = _setting(
        "BULK_CONSUMERS", 2, "Chunks one worker process works on at once, beside its interactive messages; 0: none."
    )
    webhook_secret: str = _setting(
        "WEBHOOK_SECRET",
        "",
        "Key that signs webhooks (Standard Webhooks; a whsec_ prefix means base64); callbacks are refused without it.",
        secret=True,
    )
    webhook_allow_private: int = _setting(
        "WEBHOOK_ALLOW_PRIVATE", 0, "1 allows callback URLs on loopback, private and link-local addresses (tests, labs)."
    )
    webhook_threads: int = _setting(
        "WEBHOOK_THREADS", 4, "Threads per worker process that deliver webhooks, apart from those that score texts; 0: none."
    )
    webhook_timeout_s: float = _setting(
        "WEBHOOK_TIMEOUT_S", 10.0, "Longest one webhook attempt may take in all: connect, send and read the answer."
    )
    webhook_max_attempts: int = _setting("WEBHOOK_MAX_ATTEMPTS", 8, "Deliveries tried per webhook before giving up.")
    webhook_retry_base_s: float = _setting(
        "WEBHOOK_RETRY_BASE_S", 2.0, "First retry delay of a failed webhook; doubled for each later one (at most an hour)."
    )
    rate_limit: str = _setting(
        "RATE_LIMIT", "", "Limit such as '600/minute', per API key when keys are on, else per client address; empty: off."
    )
    api_key_hashes: str = _setting("API_KEY_HASHES", "", "Comma-separated SHA-256 hex digests of accepted X-API-Key values.")
    api_keys_file: str = _setting(
        "API_KEYS_FILE",
        "",
        "JSON file of named API keys, each with limits of its own (a mounted Secret); adds to API_KEY_HASHES.",
    )
    max_queued_bulk_texts_per_key: int = _setting(
        "MAX_QUEUED_BULK_TEXTS_PER_KEY",
        0,
        "Bulk texts one API key may have queued, unless its entry in API_KEYS_FILE sets its own; 0: only the total bound.",
    )
    api_key_failures_per_minute: int = _setting(
        "API_KEY_FAILURES_PER_MINUTE",
        20,
        "Failed X-API-Key attempts one client address may make in a minute; past it every keyed request answers 429.",
    )
    trust_proxy_hops: int = _setting("TRUST_PROXY_HOPS", 0, "Proxies in front whose X-Forwarded-For is trusted.")
    port: int = _setting("PORT", 8000, "Port gunicorn listens on, on 127.0.0.1 unless BIND is set.")
    bind: str = _setting(
        "BIND", "", "gunicorn's full bind address, such as 0.0.0.0:8000 in containers; empty means 127.0.0.1:PORT."
    )
    web_processes: int = _setting("WEB_PROCESSES", 0, "gunicorn processes; 0 means one per CPU the process may use.")
    web_threads: int = _setting("WEB_THREADS", 32, "Threads per gunicorn process; each holds one waiting request.")
    access_log: str = _setting("ACCESS_LOG", "", "gunicorn access log destination, - for stdout; empty turns it off.")

    @classmethod
    def from_env(cls, overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Build settings from environment variables, then apply ``overrides`` (by field name)."""
        values = {}
        for item in fields(cls):
            raw = environ.get(item.metadata["env"])
            if raw is not None:
                values[item.name] = type(item.default)(raw)
        values.update(overrides or {})
        return cls(**values)

    @property
    def cache_url(self) -> str:
        """Redis URL of the prediction cache, as configured (no password)."""
        return self.cache_redis_url or self.redis_url

    @property
    def redis_connection_url(self) -> str:
        """REDIS_URL with the password filled in: for connecting only, never for a log line."""
        return with_password(self.redis_url, self.effective_redis_password())

    @property
    def cache_connection_url(self) -> str:
        """The cache's URL with the password filled in: for connecting only, never for a log line."""
        return with_password(self.cache_url, self.effective_redis_password())

    def effective_redis_password(self) -> str:
        """The password from REDIS_PASSWORD_FILE, else REDIS_PASSWORD; connections read it when they are built."""
        if self.redis_password_file:
            return Path(self.redis_password_file).read_text().strip()
        return self.redis_password

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each Sentinel in REDIS_SENTINELS; empty without them."""
        addresses = []
        for entry in filter(None, (part.strip() for part in self.redis_sentinels.split(","))):
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
            addresses.append((host.strip("[]"), int(port)))
        return addresses

    @property
    def sentinel_netlocs(self) -> list[str]:
        """Each Sentinel as host:port for a URL, an IPv6 address in brackets."""
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinel_addresses]

    @property
    def replica_acks_required(self) -> int:
        """Replicas that must acknowledge a new job's writes before POST answers."""
        if self.redis_replica_acks >= 0:
            return self.redis_replica_acks
        return 1 if self.redis_sentinels.strip() else 0

    @property
    def bulk_queue(self) -> str:
        """The queue bulk jobs' chunks travel on."""
        return self.bulk_queue_name or f"{self.queue_name}-bulk"

    @property
    def web_bind(self) -> str:
        """Address gunicorn binds."""
        return self.bind or f"127.0.0.1:{self.port}"

    @property
    def api_keys_enabled(self) -> bool:
        """Whether requests must carry a valid X-API-Key."""
        return bool(self.api_key_hashes.strip() or self.api_keys_file)


def documented_settings() -> list[tuple[str, object, str]]:
    """(variable, default, description) for every setting, for docs/settings.md and tests."""
    return [(item.metadata["env"], item.default, item.metadata["doc"]) for item in fields(Settings)]


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its AUTH password, unless it is empty or the URL already carries one."""
    parts = urlsplit(url)
    if not password or parts.password is not None:
        return url
    user = quote(parts.username, safe="") if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"))
