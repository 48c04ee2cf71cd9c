"""The job vocabulary web and worker share: statuses, failure reasons, job ids and job messages."""

import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum

# The owner of every job when API keys are off, and of records written before jobs had owners.
ANONYMOUS = "anonymous"


class JobStatus(StrEnum):
    """Where a job is; ``done`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


class BulkStatus(StrEnum):
    """Where a bulk job is; ``done``, ``failed`` and ``cancelled`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (BulkStatus.QUEUED, BulkStatus.RUNNING)


class JobError(StrEnum):
    """Why a job failed; also the ``error`` code of the 503 a waiting request gets."""

    EXPIRED = "expired"
    INFERENCE_ERROR = "inference_error"


def new_job_id() -> str:
    """An unguessable job id."""
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a canonical uuid4 string, so junk never reaches Redis."""
    try:
        return str(uuid.UUID(value, version=4)) == value
    except ValueError:
        return False


@dataclass(frozen=True)
class QueuedJob:
    """One job's uncached texts as they travel to the workers; several jobs share a Celery message."""

    job_id: str
    texts: list[str]
    deadline: float
    enqueued_at: float
    # The job's record takes its results as a list in the order of ``texts``; web processes of the
    # previous release leave it out and take a dict by text (until none of them runs any more).
    positional_results: bool = False

    def to_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, fields: dict) -> "QueuedJob":
        return cls(
            fields["job_id"],
            list(fields["texts"]),
            float(fields["deadline"]),
            float(fields["enqueued_at"]),
            bool(fields.get("positional_results", False)),
        )

    def record_results(self, computed: dict[str, list]) -> list | dict:
        """What the job's record takes as its results, from the predictions of its texts."""
        return [computed[text] for text in self.texts] if self.positional_results else computed
