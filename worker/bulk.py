"""Bulk jobs' chunks: read from their owners' queues by consumer threads beside Celery's, scored in the batcher's bulk lane.

Each of BULK_CONSUMERS threads holds one broker connection and at most one unacked chunk, so a
worker works on at most that many chunks at once however long the bulk queues are, and Celery's
threads stay free for interactive messages. Each owner's chunks have a queue of their own
(common.celery_app.bulk_queue); a consumer reads every owner's queue that the web side has named
in Redis (``bulk_owners``, looked up again every OWNERS_REFRESH_S), and kombu's Redis transport
takes from the non-empty ones in turn, so a small job of one owner is not stuck behind another's
100,000 texts. A chunk is acked after it is settled in Redis; a worker killed before that leaves
it unacked, and the broker hands it to a worker again after the visibility timeout (settling is
once per chunk, so nothing counts twice).
"""

import logging
import threading
import time

from common.celery_app import bulk_queue
from common.store.keys import BULK_OWNERS_KEY

log = logging.getLogger(__name__)

# Pause before reconnecting after a broker fault.
RECONNECT_DELAY_S = 1
# How often a consumer looks for owners whose queues it does not read yet.
OWNERS_REFRESH_S = 1


class BulkConsumer:
    def __init__(self, celery_app, settings, run_chunk, redis_client):
        """``run_chunk(job_id, chunk, start, stop)`` scores and settles one chunk; ``redis_client`` names the owners."""
        self.celery_app = celery_app
        self.settings = settings
        self.run_chunk = run_chunk
        self.redis_client = redis_client
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._consume, name=f"bulk-consumer-{index}", daemon=True)
            for index in range(settings.bulk_consumers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop_taking(self) -> None:
        """Take no more chunks (a warm shutdown began); those under way finish."""
        self._stopping.set()

    def stop(self, timeout_s: float = 30) -> None:
        """Take no more chunks; wait for those under way."""
        self._stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout_s)

    def owners(self) -> set[str]:
        return set(self.redis_client.smembers(BULK_OWNERS_KEY))

    def _consume(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.celery_app.connection_for_read() as connection:
                    # The shared queue holds chunks that web processes of the previous release published.
                    consumer = connection.Consumer(
                        [bulk_queue(self.settings)], callbacks=[self._on_message], accept=["json"], prefetch_count=1
                    )
                    with consumer:
                        reading: set[str] = set()
                        next_refresh = 0.0
                        while not self._stopping.is_set():
                            if time.monotonic() >= next_refresh:
                                for owner in sorted(self.owners() - reading):
                                    consumer.add_queue(bulk_queue(self.settings, owner))
                                    consumer.consume()
                                    reading.add(owner)
                                next_refresh = time.monotonic() + OWNERS_REFRESH_S
                            try:
                                connection.drain_events(timeout=1)
                            except TimeoutError:  # socket.timeout is TimeoutError
                                continue
            except Exception as error:  # a broker fault: reconnect; an unacked chunk comes back by itself
                log.warning("bulk consumer lost the broker (%s); reconnecting", error)
                self._stopping.wait(RECONNECT_DELAY_S)

    def _on_message(self, body: dict, message) -> None:
        try:
            self.run_chunk(body["job_id"], int(body["chunk"]), int(body["start"]), int(body["stop"]))
        except Exception:
            # Redis stayed away past the retries: leave the chunk unacked for redelivery.
            log.exception("bulk chunk %s of job %s not settled; it will be redelivered", body.get("chunk"), body.get("job_id"))
            raise
        message.ack()
