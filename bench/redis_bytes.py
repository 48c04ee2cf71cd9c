"""Redis bytes a queued job holds, as the byte budgets charge it and as the server's memory grows:

    python -m bench.redis_bytes

Starts a private Redis and the web app in-process, with no worker, so every job stays queued; posts
/predict jobs and bulk jobs of several shapes and prints, per shape, how far ``used_memory`` grew
per job (or per bulk text) against what MAX_QUEUED_BYTES / MAX_QUEUED_BULK_BYTES were charged.
A bulk job's charge also covers the results it will leave when done (about 90 bytes a text),
which a queued job does not hold yet.
"""

import argparse
import json

import redis

from common.settings import Settings
from common.store.keys import BULK_QUEUED_BYTES_KEY, MODEL_KEY, QUEUED_BYTES_KEY
from stack import RedisServer

# (label, texts per request, characters per text, requests, the character the texts are made of)
PREDICT_SHAPES = [
    ("1 text of 60 ASCII characters", 1, 60, 1000, "b"),
    ("8 texts of 100 ASCII characters", 8, 100, 300, "a"),
    ("8 texts of 100 CJK characters", 8, 100, 300, "很"),
    ("128 texts of 1,900 ASCII characters", 128, 1900, 20, "c"),
]
# (label, characters per text, texts)
BULK_SHAPES = [("texts of 20 characters", 20, 10_000), ("texts of 100 characters", 100, 10_000), ("texts of 2,000", 2000, 2000)]


def figures(grew: float, charged: float) -> dict:
    return {"grew": round(grew), "charged": round(charged), "charged_over_grew": round(charged / grew, 2)}


def on_a_fresh_server(post_all, charged_key: str, count: int) -> dict:
    """Run ``post_all(client)`` against the web app on an empty Redis; its growth and charge per ``count``."""
    from web import create_app

    server = RedisServer(appendfsync="no")
    server.start()
    try:
        redis_client = redis.Redis.from_url(server.url, decode_responses=True)
        overrides = {"redis_url": server.url, "queue_name": "nobody", "bulk_queue_name": "nobody-bulk", "max_queued_texts": 10**9}
        app = create_app(Settings.from_env(overrides, environ={})).test_client()
        redis_client.set(MODEL_KEY, "model@measure")
        before = int(redis_client.info("memory")["used_memory"])
        post_all(app)
        grew = int(redis_client.info("memory")["used_memory"]) - before
        return figures(grew / count, int(redis_client.get(charged_key) or 0) / count)
    finally:
        server.close()


def measure() -> dict:
    report = {"predict_per_job": {}, "bulk_per_text": {}}
    for label, per_request, chars, requests, character in PREDICT_SHAPES:

        def post_predicts(app, label=label, per_request=per_request, chars=chars, requests=requests, character=character):
            for number in range(requests):
                texts = [(f"{label} {number} {index} " + character * chars)[:chars] for index in range(per_request)]
                answer = app.post("/predict?wait=0", json={"text": texts})
                assert answer.status_code == 202, answer.get_json()

        report["predict_per_job"][label] = on_a_fresh_server(post_predicts, QUEUED_BYTES_KEY, requests)
    for label, chars, count in BULK_SHAPES:

        def post_job(app, label=label, chars=chars, count=count):
            answer = app.post("/jobs", json={"text": [(f"{label} {index} " + "x" * chars)[:chars] for index in range(count)]})
            assert answer.status_code == 202, answer.get_json()

        report["bulk_per_text"][label] = on_a_fresh_server(post_job, BULK_QUEUED_BYTES_KEY, count)
    return report


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
