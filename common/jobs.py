"""The job vocabulary web and worker share: statuses, failure reasons, job ids and job messages."""

import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is; ``done`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


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

    def to_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, fields: dict) -> "QueuedJob":
        return cls(fields["job_id"], list(fields["texts"]), float(fields["deadline"]), float(fields["enqueued_at"]))
