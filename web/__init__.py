"""Web front end: Flask app factory. Never imports torch or transformers."""

import importlib.util
from pathlib import Path

from flask import Flask, send_from_directory
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from common.settings import Settings
from web import health, metrics
from web.errors import register_error_handlers
from web.jobs import create_jobs_blueprint
from web.keys import KeyRing, load_keys
from web.predict import create_predict_blueprint
from web.schemas import ErrorSchema, property_names
from web.security import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    FailedKeyAttempts,
    limit_rate,
    rate_limit_storage,
    require_api_keys,
)
from web.services import Services

# Swagger UI's own files (swagger-ui-py's static folder; the package's Python code is not used).
SWAGGER_UI_ASSETS = Path(importlib.util.find_spec("swagger_ui").origin).parent / "static"


class ServiceApi(Api):
    """flask-smorest Api whose documented error responses use the service's error shape."""

    ERROR_SCHEMA = ErrorSchema


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="Sentiment Score API",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Served by this app, not a CDN: clusters are often air-gapped.
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
    )
    if settings.trust_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trust_proxy_hops)
    services = Services(settings)
    services.install(app)

    api = ServiceApi(app)
    api.ma_plugin.converter.add_attribute_function(property_names)
    api.spec.components.security_scheme(API_KEY_SCHEME, {"type": "apiKey", "in": "header", "name": API_KEY_HEADER})
    api.register_blueprint(create_predict_blueprint(settings))
    api.register_blueprint(create_jobs_blueprint(settings))
    api.register_blueprint(health.blp)
    register_error_handlers(app)
    metrics.instrument(app, services)
    keys = load_keys(settings)  # a keys file it cannot use stops the app here, before it serves
    if keys:
        failures = FailedKeyAttempts(services.stores.main, settings.api_key_failures_per_minute)
        require_api_keys(app, KeyRing(keys), failures if settings.api_key_failures_per_minute else None)
    if settings.rate_limit or any(key.owner.rate_limit for key in keys):
        limit_rate(app, settings.rate_limit, rate_limit_storage(settings), per_owner=bool(keys))

    @app.get("/docs/assets/<path:filename>")
    def swagger_ui_assets(filename):
        return send_from_directory(SWAGGER_UI_ASSETS, filename)

    return app
