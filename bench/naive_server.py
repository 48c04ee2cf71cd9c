"""The naive design, for comparison only: one process, the model called per request, no queue, no cache.

PORT=8100 gunicorn -c bench/naive_gunicorn_conf.py 'bench.naive_server:create_app()'
"""

import os

from flask import Flask, jsonify, request

from model import BUNDLED_MODEL_DIR
from model.torch_backend import TorchClassifier


def create_app() -> Flask:
    model = TorchClassifier.load(
        os.environ.get("MODEL", str(BUNDLED_MODEL_DIR)), device="cpu", threads=int(os.environ.get("TORCH_THREADS", "2"))
    )
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        return jsonify(predictions=model.predict(request.get_json()["text"]))

    return app
