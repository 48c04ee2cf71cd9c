"""The main Redis with failover, on loopback: a primary, a replica and three Sentinels (``python -m stack --ha``)."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from stack.processes import LOOPBACK, FolderServer, RedisServer, StartupError, die_with_parent, free_port, wait_until

MASTER_NAME = "sentiment"
SENTINELS = 3
# Sentinels that must agree the primary is down before one of them fails it over: a majority.
QUORUM = 2
# How long the primary may stay silent before a Sentinel counts it down. Lower fails over sooner,
# but a primary that stalls this long under load (a slow disk, a big AOF rewrite) is failed over too.
DOWN_AFTER_MS = 2000
# How long one failover may take before another Sentinel tries again.
FAILOVER_TIMEOUT_MS = 10000


class RedisSentinel(FolderServer):
    """A redis-sentinel on loopback that watches one primary, with its config and log in its own folder."""

    name = "redis-sentinel"

    def __init__(self, primary_port: int, password: str = "", down_after_ms: int = DOWN_AFTER_MS):
        self.port = free_port()
        self.primary_port = primary_port
        self.password = password
        self.down_after_ms = down_after_ms
        self.folder = Path(tempfile.mkdtemp(prefix="sentiment-sentinel-"))
        self.config_path = self.folder / "sentinel.conf"
        self.log_path = self.folder / "sentinel.log"
        self.process: subprocess.Popen | None = None

    def _write_config(self) -> None:
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            f"dir {self.folder}",
            f"logfile {self.log_path}",
            f"sentinel monitor {MASTER_NAME} {LOOPBACK} {self.primary_port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.password:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            # The same password for the Sentinels themselves, the servers they watch and each other.
            lines += [
                f'requirepass "{quoted}"',
                f'sentinel auth-pass {MASTER_NAME} "{quoted}"',
                f'sentinel sentinel-pass "{quoted}"',
            ]
        self.config_path.write_text("".join(line + "\n" for line in lines))
        self.config_path.chmod(0o600)

    def start(self) -> None:
        """Start it (again, on its own config, which it rewrites as it learns) and wait until it names a primary."""
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise StartupError("redis-sentinel is not installed (apt-get install redis-sentinel)")
        if not self.config_path.exists():
            self._write_config()
        self.process = subprocess.Popen(
            [binary, str(self.config_path)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        wait_until(self._answers, 10, "redis-sentinel to answer")

    def _answers(self) -> bool:
        if not self.alive():
            raise StartupError(f"redis-sentinel exited with code {self.process.returncode}:\n{self.tail()}")
        return self.primary_address() is not None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password or None, socket_connect_timeout=0.5, socket_timeout=0.5
        )

    def primary_address(self) -> tuple[str, int] | None:
        """The primary this Sentinel names now, or None when it does not answer."""
        try:
            with self.client() as client:
                address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
        return (address[0], int(address[1])) if address else None

    def knows(self) -> tuple[int, int]:
        """(other Sentinels, replicas) this Sentinel has found."""
        with self.client() as client:
            state = client.sentinel_master(MASTER_NAME)
        return int(state["num-other-sentinels"]), int(state["num-slaves"])


class RedisHa:
    """A primary, a replica and three Sentinels on loopback; ``heal`` plays the orchestrator after a failover."""

    name = "redis-ha"

    def __init__(
        self, password: str = "", maxmemory: str = "0", appendfsync: str = "everysec", down_after_ms: int = DOWN_AFTER_MS
    ):
        self.password = password
        self.down_after_ms = down_after_ms
        self.servers = [
            RedisServer(appendfsync=appendfsync, password=password, maxmemory=maxmemory),
            RedisServer(appendfsync=appendfsync, password=password, maxmemory=maxmemory),
        ]
        for number, server in enumerate(self.servers):
            server.name = f"redis-server-{number}"
        self.sentinels: list[RedisSentinel] = []

    @property
    def processes(self) -> list:
        return [*self.servers, *self.sentinels]

    @property
    def sentinel_setting(self) -> str:
        """REDIS_SENTINELS for the service."""
        return ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)

    @property
    def url(self) -> str:
        """REDIS_URL for the service: with Sentinels only its scheme and database count."""
        return f"redis://{LOOPBACK}:{self.servers[0].port}/0"

    def start(self) -> None:
        """Start the primary, its replica and the Sentinels; return once every Sentinel sees them all."""
        primary, replica = self.servers
        primary.start()
        replica.replica_of = primary.port
        replica.start()
        self.sentinels = [RedisSentinel(primary.port, self.password, self.down_after_ms) for _ in range(SENTINELS)]
        for sentinel in self.sentinels:
            sentinel.start()
        # Sentinels find each other and the replica through the primary, within a few seconds.
        wait_until(
            lambda: all(sentinel.knows() == (SENTINELS - 1, 1) for sentinel in self.sentinels),
            30,
            "the Sentinels to find each other and the replica",
            interval_s=0.2,
        )

    def primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            address = sentinel.primary_address()
            if address is not None:
                return address[1]
        return None

    def primary(self) -> RedisServer:
        """The server the Sentinels name as the primary now."""
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def heal(self) -> list:
        """Restart what died: a server as a replica of the primary the Sentinels name now, once they name
        another one (so it never comes back as a second primary); a Sentinel on its own config.

        What Kubernetes does for the StatefulSets; returns the processes it restarted.
        """
        restarted = []
        for sentinel in self.sentinels:
            if not sentinel.alive():
                sentinel.start()
                restarted.append(sentinel)
        primary_port = self.primary_port()
        for server in self.servers:
            if not server.alive() and primary_port is not None and server.port != primary_port:
                server.replica_of = primary_port
                server.start()
                restarted.append(server)
        return restarted

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.close()
