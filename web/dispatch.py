"""Send the jobs of one web process's concurrent requests to the workers in shared Celery messages.

A worker spends about as much CPU on a Celery message (decode, thread hand-off, ack, job-record
round trips) whether it holds one text or many, and so does the web side on a publish. So jobs
are coalesced, with no fixed wait: a request whose job finds nobody publishing sends it at once
(an idle service adds no latency); jobs that arrive while a message is being published wait and
leave together in the next one, which the first of them publishes. Each job keeps its own record,
deadline and answer; only the transport is shared. So is the wait for a replica to hold the jobs
(REDIS_REPLICA_ACKS): one fence per message.
"""

import threading

from common.celery_app import PREDICT_JOBS_TASK
from common.jobs import QueuedJob
from common.store.replication import ReplicationFence
from web import metrics


class _Outgoing:
    """One request's job on its way out, and what happened to it."""

    def __init__(self, job: QueuedJob):
        self.job = job
        self.sent = False
        self.error: BaseException | None = None
        # Set when the job has left (or failed to), or when this request must publish the next message.
        self.woken = threading.Event()


class JobDispatcher:
    """Publishes queued jobs, coalescing those that arrive while a publish is in flight."""

    def __init__(self, celery, replication: ReplicationFence | None = None):
        self.celery = celery
        self.replication = replication
        self._lock = threading.Lock()
        self._waiting: list[_Outgoing] = []
        self._publishing = False

    def send(self, job: QueuedJob) -> None:
        """Return once ``job`` is on the broker (and its replicas); raise what the publish or the fence raised."""
        outgoing = _Outgoing(job)
        with self._lock:
            self._waiting.append(outgoing)
            leads = not self._publishing
            self._publishing = True
        if not leads:
            outgoing.woken.wait()
        if not outgoing.sent:  # this request leads: it publishes everything waiting, its own job included
            self._publish_waiting()
        if outgoing.error is not None:
            raise outgoing.error

    def _publish_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        error: BaseException | None = RuntimeError("the publish was interrupted")
        try:
            self.celery.send_task(
                PREDICT_JOBS_TASK,
                args=[[outgoing.job.to_message() for outgoing in batch]],
                # Celery would otherwise copy a repr of the args (the clients' texts) into the message's
                # headers, for monitoring tools to show: needless text in the broker, and CPU per publish.
                argsrepr=f"jobs: {len(batch)}",
                kwargsrepr="{}",
            )
            if self.replication is not None:
                self.replication.wait()
            error = None
            metrics.JOBS_PER_MESSAGE.observe(len(batch))
        except Exception as publish_error:  # each request answers for its own job (503, reservation released)
            error = publish_error
        finally:
            # Whatever happened, hand on the lead and wake every request of this message, or
            # later requests of this process would wait forever.
            with self._lock:
                # Hand the next message to the first job that arrived meanwhile, so no request
                # publishes more than one message beyond its own and this one answers its client now.
                if self._waiting:
                    self._waiting[0].woken.set()
                else:
                    self._publishing = False
            for outgoing in batch:
                outgoing.error = error
                outgoing.sent = True
                outgoing.woken.set()
