"""Waiting until a replica holds what a request wrote, so a failover cannot lose what it answers for."""

import redis

from common.store.keys import REPLICATION_FENCE_KEY


class NotReplicated(Exception):
    """Fewer replicas than required acknowledged the writes in time."""


class ReplicationFence:
    """Returns once ``replicas`` replicas hold every write the primary took before it, from any connection.

    Redis's WAIT counts only its own connection's writes, so the fence writes first (a counter),
    then WAITs on the same connection: the replication stream is ordered, so a replica that has
    the fence's write has every earlier one, such as a job's record and its Celery message.
    The client must not retry on a new connection: that may reach a new primary, which would
    vouch for writes the old one took and lost.
    """

    def __init__(self, client: redis.Redis, replicas: int, timeout_ms: int):
        self.client = client
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    def wait(self) -> None:
        """Raise NotReplicated when too few replicas acknowledge within the timeout."""
        if self.replicas <= 0:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(REPLICATION_FENCE_KEY)
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        acknowledged = pipe.execute()[1]
        if acknowledged < self.replicas:
            raise NotReplicated(f"{acknowledged} of {self.replicas} replicas acknowledged within {self.timeout_ms} ms")
