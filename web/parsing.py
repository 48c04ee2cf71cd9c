"""Strict request parsing: JSON only, UTF-8 only, errors in the service's one shape."""

import inspect
import json
from collections.abc import Callable
from functools import wraps

from flask import g, request
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate
from webargs.flaskparser import FlaskParser
from webargs.multidictproxy import MultiDictProxy

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
    length, limit = req.content_length, req.max_content_length
    if length is not None:
        # Straight from the server's stream: werkzeug's wrapped streams cost a small request more than its parsing.
        if limit is not None and length > limit:
            raise PayloadTooLarge.over(limit, limit_setting)
        raw = req.environ["wsgi.input"].read(length) if length else b""
        if len(raw) < length:
            raise InvalidBody(f"request body ended after {len(raw)} of its {length} bytes")
    else:
        raw = req.get_data(cache=True)
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
        raise validation_failed(*error.normalized_messages().values())


def validation_failed(*messages) -> ValidationFailed:
    """422 whose details are the fields' messages (marshmallow's, of one or more locations)."""
    details = {}
    for each in messages:
        details.update(each if isinstance(each, dict) else {"_schema": each})
    return ValidationFailed("request is invalid", details=details)


def loads_nothing_from_nothing(schema: Schema) -> bool:
    """Whether loading an empty mapping gives an empty result: no required field, no default."""
    return not any(field.required or field.load_default is not missing for field in schema.fields.values())


class RequestShape:
    """A JSON route's body, query and header schemas, parsed in one step, as ``@arguments`` would.

    The same loads, in the same order (headers, query, body), with the same unknown-field rules
    and the same 4xx, without webargs' per-request machinery, which was a quarter of a cached
    POST /predict's Python time. ``accepts_as_is`` may vouch for a body the schema would load
    unchanged (the common, valid one): it is used as parsed; any other goes through the schema.
    """

    def __init__(
        self,
        body: Schema,
        query: Schema | None = None,
        headers: Schema | None = None,
        accepts_as_is: Callable[[object], bool] | None = None,
    ):
        self.body, self.query, self.headers = body, query, headers
        self.accepts_as_is = accepts_as_is
        self.header_names = [field.data_key or name for name, field in headers.fields.items()] if headers else []
        self.skip_absent_headers = headers is not None and loads_nothing_from_nothing(headers)
        self.skip_absent_query = query is not None and loads_nothing_from_nothing(query)

    def parse(self, req) -> tuple[object, dict]:
        """The loaded body, and the query's and headers' values as keyword arguments; 4xx otherwise."""
        arguments = {}
        if self.headers is not None:
            given = {name: req.headers[name] for name in self.header_names if name in req.headers}
            if given or not self.skip_absent_headers:
                arguments.update(self._load(self.headers, given, EXCLUDE))
        if self.query is not None and (req.args or not self.skip_absent_query):
            arguments.update(self._load(self.query, MultiDictProxy(req.args, self.query), EXCLUDE))
        data = load_json(read_text_body(req, ("application/json",)))
        if self.accepts_as_is is not None and self.accepts_as_is(data):
            return data, arguments
        return self._load(self.body, data), arguments

    @staticmethod
    def _load(schema: Schema, data, unknown=None):
        try:
            return schema.load(data, unknown=unknown) if unknown else schema.load(data)
        except ValidationError as error:
            raise validation_failed(error.messages) from None


def documented_only(document):
    """A flask-smorest decorator reduced to the OpenAPI doc it records, with no pass-through wrapper at run time.

    Each of flask-smorest's doc decorators wraps the view in a function that only calls it (through
    ``ensure_sync``, which inspects the view every call); a route with a dozen of them paid for each.
    """

    def decorator(func):
        documented = document(func)
        if inspect.iscoroutinefunction(inspect.unwrap(func)):
            return documented
        func._apidoc = documented._apidoc
        return func

    return decorator


class ApiBlueprint(Blueprint):
    """flask-smorest blueprint that parses with StrictParser, each schema built once, docs without wrappers."""

    ARGUMENTS_PARSER = StrictParser()

    def arguments(self, schema, *args, **kwargs):
        # Given a class, webargs builds a schema (deep-copying its fields) on every request: 12 % of
        # a cached POST /predict's CPU under py-spy. One shared instance is safe: marshmallow's
        # load keeps no per-call state on the schema.
        return super().arguments(schema() if isinstance(schema, type) else schema, *args, **kwargs)

    def alt_response(self, *args, **kwargs):
        return documented_only(super().alt_response(*args, **kwargs))

    def doc(self, *args, **kwargs):
        return documented_only(super().doc(*args, **kwargs))

    def shaped(self, shape: RequestShape):
        """Document ``shape``'s schemas as ``arguments`` would; at run time, call the view with ``shape.parse``'s results.

        The view takes the body first, then the query's and headers' values as keyword arguments.
        """
        documents = [
            documented_only(super(ApiBlueprint, self).arguments(schema, location=location))
            for schema, location in ((shape.body, "json"), (shape.query, "query"), (shape.headers, "headers"))
            if schema is not None
        ]

        def decorator(view):
            @wraps(view)
            def parsed(*args, **kwargs):
                body, arguments = shape.parse(request)
                return view(*args, body, **arguments, **kwargs)

            for document in documents:
                parsed = document(parsed)
            return parsed

        return decorator


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
