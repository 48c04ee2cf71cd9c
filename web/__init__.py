"""Web front end: Flask app factory. Never imports torch or transformers."""

import time

from flask import Flask, send_from_directory
from flask_smorest import Api
from swagger_ui_bundle import swagger_ui_path
from werkzeug.middleware.proxy_fix import ProxyFix

from common.celery_app import create_celery
from common.settings import Settings
from common.store import connect, store_from_settings
from web import health, metrics
from web.errors import register_error_handlers
from web.predict import create_predict_blueprint
from web.schemas import ErrorSchema
from web.security import limit_rate, require_api_keys

MODEL_IDENTITY_TTL_S = 2.0


class ServiceApi(Api):
    """flask-smorest Api whose documented error responses use the service's error shape."""

    ERROR_SCHEMA = ErrorSchema


class Services:
    """What request handlers need: settings, the store, a blocking Redis client and the Celery app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = store_from_settings(settings)
        # BLPOP blocks for up to SYNC_WAIT_S, so this client's read timeout must be longer.
        self.blocking_redis = connect(settings.redis_url, socket_timeout=settings.sync_wait_s + 5)
        self.celery = create_celery(settings)
        self._model_identity: str | None = None
        self._model_identity_read_at = float("-inf")

    def model_identity(self) -> str | None:
        """The served model's identity, re-read from Redis at most every couple of seconds."""
        now = time.monotonic()
        if now - self._model_identity_read_at > MODEL_IDENTITY_TTL_S:
            self._model_identity = self.store.model_identity()
            self._model_identity_read_at = now
        return self._model_identity


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="Sentiment Score API",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Served by this app, not a CDN: clusters are often air-gapped.
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
    )
    if settings.trust_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trust_proxy_hops)
    services = Services(settings)
    app.extensions["sentiment"] = services

    api = ServiceApi(app)
    api.register_blueprint(create_predict_blueprint(settings))
    api.register_blueprint(health.blp)
    register_error_handlers(app)
    metrics.instrument(app, services)
    if settings.api_keys_enabled:
        require_api_keys(app, settings.api_key_hashes)
    if settings.rate_limit:
        limit_rate(app, settings.rate_limit, settings.redis_url)

    @app.get("/docs/assets/<path:filename>")
    def swagger_ui_assets(filename):
        return send_from_directory(swagger_ui_path, filename)

    return app
