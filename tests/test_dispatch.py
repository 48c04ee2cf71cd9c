"""The web dispatcher: concurrent requests' jobs share Celery messages, with no fixed wait.

The broker is replaced by a recorder whose publish can be held open, so the tests decide which jobs
arrive while a message is on its way; the last test publishes to a real Redis to read a message.
"""

import base64
import json
import threading

import pytest
import redis

from common.celery_app import PREDICT_JOBS_TASK, create_celery
from common.jobs import QueuedJob
from common.settings import Settings
from common.store.replication import NotReplicated
from web.dispatch import JobDispatcher

WAIT_S = 5


class RecordingCelery:
    """Records each published message; a publish blocks while ``hold`` is clear."""

    def __init__(self):
        self.messages: list[list[str]] = []
        self.publishing = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self.fail_next = False

    def send_task(self, name, args, **options):
        assert name == PREDICT_JOBS_TASK
        self.publishing.set()
        assert self.hold.wait(WAIT_S)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker away")
        self.messages.append([job["job_id"] for job in args[0]])


def job(job_id: str) -> QueuedJob:
    return QueuedJob(job_id, [f"text of {job_id}"], deadline=1e12, enqueued_at=0.0)


def send_in_thread(dispatcher: JobDispatcher, job_id: str, errors: dict) -> threading.Thread:
    def send():
        try:
            dispatcher.send(job(job_id))
        except Exception as error:
            errors[job_id] = error

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def wait_until_waiting(dispatcher: JobDispatcher, count: int) -> None:
    for _ in range(WAIT_S * 100):
        if len(dispatcher._waiting) == count:
            return
        threading.Event().wait(0.01)
    pytest.fail(f"{count} jobs never queued behind the publish in flight")


def send_while_the_first_publishes(dispatcher: JobDispatcher, celery, later: int) -> dict:
    """Job "first" starts a publish that holds; ``later`` jobs queue behind it; then it is released. Errors by job."""
    errors = {}
    celery.hold.clear()
    first = send_in_thread(dispatcher, "first", errors)
    assert celery.publishing.wait(WAIT_S)
    behind = [send_in_thread(dispatcher, f"later-{i}", errors) for i in range(later)]
    wait_until_waiting(dispatcher, later)
    celery.hold.set()
    for thread in [first, *behind]:
        thread.join(WAIT_S)
    return errors


def test_a_lone_job_leaves_at_once_in_its_own_message():
    celery = RecordingCelery()
    JobDispatcher(celery).send(job("alone"))
    assert celery.messages == [["alone"]]


def test_jobs_arriving_during_a_publish_leave_together_in_the_next_message():
    celery = RecordingCelery()
    errors = send_while_the_first_publishes(JobDispatcher(celery), celery, later=5)
    assert not errors
    assert celery.messages[0] == ["first"]
    assert sorted(celery.messages[1]) == [f"later-{i}" for i in range(5)], celery.messages
    assert len(celery.messages) == 2


def test_a_failed_publish_fails_the_requests_it_carried_and_the_next_message_still_leaves():
    celery, errors = RecordingCelery(), {}
    dispatcher = JobDispatcher(celery)
    celery.hold.clear()
    celery.fail_next = True
    first = send_in_thread(dispatcher, "first", errors)
    assert celery.publishing.wait(WAIT_S)
    later = send_in_thread(dispatcher, "later", errors)
    wait_until_waiting(dispatcher, 1)
    celery.hold.set()
    first.join(WAIT_S)
    later.join(WAIT_S)
    assert isinstance(errors.pop("first"), ConnectionError)
    assert not errors
    assert celery.messages == [["later"]]


def test_published_messages_carry_the_texts_only_in_their_body(private_redis):
    settings = Settings.from_env({"redis_url": private_redis.url, "queue_name": "dispatch-test"}, environ={})
    text = "a private sentence that only the body may carry"
    celery = create_celery(settings)
    try:
        JobDispatcher(celery).send(QueuedJob("job-1", [text], deadline=1e12, enqueued_at=0.0))
    finally:
        celery.close()
    [raw] = redis.Redis.from_url(private_redis.url).lrange("dispatch-test", 0, -1)
    message = json.loads(raw)
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    assert text in body
    assert text not in json.dumps(message["headers"])
    assert message["headers"]["argsrepr"] == "jobs: 1"


class FailingFence:
    def wait(self) -> None:
        raise NotReplicated("0 of 1 replicas acknowledged within 10 ms")


def test_a_fence_that_no_replica_passes_fails_every_request_of_its_message():
    celery = RecordingCelery()
    errors = send_while_the_first_publishes(JobDispatcher(celery, FailingFence()), celery, later=2)
    assert sorted(errors) == ["first", "later-0", "later-1"]
    assert all(isinstance(error, NotReplicated) for error in errors.values())
    assert len(celery.messages) == 2
