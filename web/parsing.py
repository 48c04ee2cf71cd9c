"""Strict request parsing: JSON only, UTF-8 only, errors in the service's one shape."""

import json

from flask import g
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


def read_raw_body(
    req, media_types: tuple[str, ...], max_bytes: int | None = None, limit_setting: str = "MAX_BODY_BYTES"
) -> bytes:
    """The body of one of ``media_types``, whole, as bytes; 415, 413 or 400 (empty) otherwise.

    ``max_bytes`` replaces the app's MAX_CONTENT_LENGTH for this request (named ``limit_setting`` in its 413).
    """
    if req.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}, not {req.mimetype or 'missing'}")
    if max_bytes is not None:
        req.max_content_length = max_bytes
        g.body_limit_setting = limit_setting  # for werkzeug's own 413 (web.errors)
    raw = req.get_data(cache=True)  # werkzeug answers 413 here for a Content-Length over max_content_length
    if body_was_cut_at_the_limit(req, raw):
        raise PayloadTooLarge.over(req.max_content_length, limit_setting)
    if not raw:
        raise InvalidBody("request body is empty")
    return raw


# Bytes read from the client at a time into a large body's buffer.
READ_CHUNK_BYTES = 2**20


def read_large_body(req, media_types: tuple[str, ...], max_bytes: int, limit_setting: str) -> bytes | bytearray:
    """Like ``read_raw_body``, but a body with a Content-Length is read into one buffer of that size.

    werkzeug's ``get_data`` holds a large body about three times over while reading it (the
    server's buffer, the chunks, their join); this holds it once, plus one chunk.
    """
    if req.content_length is None:
        return read_raw_body(req, media_types, max_bytes, limit_setting)
    if req.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}, not {req.mimetype or 'missing'}")
    if req.content_length > max_bytes:
        raise PayloadTooLarge.over(max_bytes, limit_setting)
    if not req.content_length:
        raise InvalidBody("request body is empty")
    body = bytearray(req.content_length)
    view, received = memoryview(body), 0
    stream = req.environ["wsgi.input"]
    while received < len(body):
        chunk = stream.read(min(READ_CHUNK_BYTES, len(body) - received))
        if not chunk:
            raise InvalidBody(f"request body ended after {received} of its {len(body)} bytes")
        view[received : received + len(chunk)] = chunk
        received += len(chunk)
    return body


def read_text_body(req, media_types: tuple[str, ...]) -> str:
    """The body of one of ``media_types``, whole and decoded as UTF-8; 415, 413 or 400 otherwise."""
    raw = read_raw_body(req, media_types)
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


# Printable ASCII only: keys are logged and hashed into Redis keys, and a header cannot carry more reliably.
IDEMPOTENCY_KEY_PATTERN = r"^[ -~]+$"


class IdempotencyHeaderSchema(Schema):
    """The optional Idempotency-Key header of POST /predict and POST /jobs."""

    class Meta:
        unknown = EXCLUDE  # every other header

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=[validate.Length(1, MAX_KEY_LENGTH), validate.Regexp(IDEMPOTENCY_KEY_PATTERN)],
        metadata={
            "description": f"1 to {MAX_KEY_LENGTH} printable ASCII characters, such as a UUID. A retry with"
            " the same key and body within JOB_TTL_S answers from the same job; another body: 409.",
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        },
    )
