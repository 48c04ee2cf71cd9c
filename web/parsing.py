"""Strict request parsing: JSON only, UTF-8 only, errors in the service's one shape."""

import json

from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, fields, validate
from webargs.flaskparser import FlaskParser

from common.store.idempotency import MAX_KEY_LENGTH
from web.errors import InvalidBody, PayloadTooLarge, UnsupportedMediaType, ValidationFailed


def body_was_cut_at_the_limit(req, raw: bytes) -> bool:
    """Whether a chunked body (no Content-Length) went on past MAX_CONTENT_LENGTH.

    werkzeug stops reading such a body at the limit without a word, which would turn an
    oversized body into a confusing "not valid JSON"; one more byte from the server's own
    stream tells a body of exactly the limit from a longer one.
    """
    limit = req.max_content_length
    return req.content_length is None and limit is not None and len(raw) >= limit and bool(req.environ["wsgi.input"].read(1))


def read_text_body(req, media_types: tuple[str, ...], limit_setting: str = "MAX_BODY_BYTES") -> str:
    """The body of one of ``media_types``, whole and decoded as UTF-8; 415, 413 or 400 otherwise."""
    if req.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}, not {req.mimetype or 'missing'}")
    raw = req.get_data(cache=True)  # werkzeug answers 413 here for a Content-Length over max_content_length
    if body_was_cut_at_the_limit(req, raw):
        raise PayloadTooLarge.over(req.max_content_length, limit_setting)
    if not raw:
        raise InvalidBody("request body is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidBody(f"request body is not valid UTF-8: {error.reason} at byte {error.start}") from None


def load_json(text: str, what: str = "request body", details: dict | None = None):
    """``text`` parsed as JSON; 400 invalid_body naming ``what`` when it is not JSON or nested too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidBody(f"{what} is nested too deeply", details=details) from None
    except ValueError as error:
        raise InvalidBody(f"{what} is not valid JSON: {error}", details=details) from None


class StrictParser(FlaskParser):
    """Refuses non-JSON content types and undecodable bodies, and raises ValidationFailed on schema errors."""

    def _raw_load_json(self, req):
        return load_json(read_text_body(req, ("application/json",)))

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        # webargs keys messages by location ({"json": {...}}); clients care about the fields.
        details = {}
        for messages in error.normalized_messages().values():
            details.update(messages if isinstance(messages, dict) else {"_schema": messages})
        raise ValidationFailed("request is invalid", details=details)


class ApiBlueprint(Blueprint):
    """flask-smorest blueprint that parses with StrictParser, each schema built once."""

    ARGUMENTS_PARSER = StrictParser()

    def arguments(self, schema, *args, **kwargs):
        # Given a class, webargs builds a schema (deep-copying its fields) on every request: 12 % of
        # a cached POST /predict's CPU under py-spy. One shared instance is safe: marshmallow's
        # load keeps no per-call state on the schema.
        return super().arguments(schema() if isinstance(schema, type) else schema, *args, **kwargs)


class IdempotencyHeaderSchema(Schema):
    """The optional Idempotency-Key header of POST /predict and POST /jobs."""

    class Meta:
        unknown = EXCLUDE  # every other header

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Length(1, MAX_KEY_LENGTH),
        metadata={
            "description": "A retry with the same key and body within JOB_TTL_S answers from the same job; another body: 409."
        },
    )
