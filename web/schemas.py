"""marshmallow schemas of every request and response; they also generate /openapi.json."""

import re

from marshmallow import Schema, ValidationError, fields, validate

from common.jobs import BulkStatus, JobError, JobStatus
from common.labels import ID2LABEL

# C0/C1 control characters (tab, newline and carriage return are fine), Unicode bidi controls
# (which can make text display differently from what is scored) and lone surrogates.
UNSAFE_RANGES = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
UNSAFE_CHARACTERS = re.compile(f"[{UNSAFE_RANGES}\ud800-\udfff]")
# The same rule for OpenAPI clients (JSON Schema regexes cannot name lone surrogates).
SAFE_TEXT_PATTERN = f"^[^{UNSAFE_RANGES}]*$"


# A Dict field's rules for its keys, as JSON Schema's propertyNames (which apispec does not derive).
PROPERTY_NAMES = "property_names"


def property_names(converter, field, **kwargs) -> dict:
    """apispec attribute function: a Dict field's PROPERTY_NAMES metadata as the schema's propertyNames."""
    rules = field.metadata.get(PROPERTY_NAMES)
    return {"propertyNames": rules} if rules else {}


def reject_unsafe_characters(value: str) -> None:
    """Refuse text carrying control, bidi-control or lone-surrogate characters."""
    match = UNSAFE_CHARACTERS.search(value)
    if match:
        raise ValidationError(f"Text contains a disallowed character U+{ord(match.group()):04X} at position {match.start()}.")


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable machine-readable error code."})
    message = fields.String(required=True)
    details = fields.Dict(required=True, metadata={"description": "Per-field messages, or context such as a job id."})


class LabelScoreSchema(Schema):
    label = fields.String(required=True, validate=validate.OneOf(list(ID2LABEL.values())))
    score = fields.Float(required=True, validate=validate.Range(0, 1))


def prediction_field(description: str, **kwargs) -> fields.List:
    """One list per input text: both labels, highest score first."""
    return fields.List(
        fields.List(fields.Nested(LabelScoreSchema), validate=validate.Length(equal=2)),
        metadata={"description": description},
        **kwargs,
    )


class PredictionsSchema(Schema):
    predictions = prediction_field(
        "One entry per input text, in input order; each lists both labels, highest score first.", required=True
    )


# Bounds of a bulk job's options.
MAX_CALLBACK_URL_CHARS = 2048
# http(s), a host name or IPv4 address, an optional port, a path of printable ASCII: what the
# service can call. The same in Python and in JSON Schema's (ECMA) regexes.
CALLBACK_URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$"
MAX_METADATA_ENTRIES = 16
MAX_METADATA_CHARS = 512

# Shorter deadlines are not meaningful for a queued service whose batches take up to hundreds of ms.
MIN_DEADLINE_S = 1.0


class JobAcceptedSchema(Schema):
    job_id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf([status.value for status in JobStatus]))
    status_url = fields.String(required=True, metadata={"description": "Poll this path with GET."})


BULK_STATUSES = [status.value for status in BulkStatus]
# A canonical job id (uuid4, lower case).
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


class ProgressSchema(Schema):
    total = fields.Integer(required=True)
    done = fields.Integer(required=True, metadata={"description": "Texts scored so far; never decreases."})
    failed = fields.Integer(required=True, metadata={"description": "Texts whose batch failed; their results stay null."})


class JobStatusSchema(Schema):
    job_id = fields.UUID(required=True)
    status = fields.String(
        required=True,
        validate=validate.OneOf(BULK_STATUSES),
        metadata={"description": "queued, running, done or failed; a bulk job may also be cancelled."},
    )
    predictions = prediction_field("/predict's job, when done: the request's full list, in input order.")
    error = fields.String(
        validate=validate.OneOf([reason.value for reason in JobError]),
        metadata={
            "description": f"When failed: {' or '.join(JobError)}. A bulk job carries it only when it failed"
            " as a whole (expired: it could not run within BULK_JOB_DEADLINE_S)."
        },
    )
    progress = fields.Nested(ProgressSchema, metadata={"description": "Bulk job: texts scored and failed so far."})
    metadata = fields.Dict(
        keys=fields.String(), values=fields.String(), metadata={"description": "Bulk job: the metadata given, as given."}
    )
    created_at = fields.String(metadata={"description": "Bulk job: RFC 3339 time of submission."})
    finished_at = fields.String(allow_none=True, metadata={"description": "Bulk job: RFC 3339 time it ended; null before."})


class BulkJobAcceptedSchema(Schema):
    job_id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf(BULK_STATUSES))
    status_url = fields.String(required=True, metadata={"description": "Follow the job here with GET."})
    total = fields.Integer(required=True, metadata={"description": "Texts in the job."})


class BulkResultsSchema(Schema):
    predictions = fields.List(
        fields.List(fields.Nested(LabelScoreSchema), validate=validate.Length(equal=2), allow_none=True),
        required=True,
        metadata={"description": "One entry per text of the page, in input order; null where not scored (yet)."},
    )
    offset = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total = fields.Integer(required=True)
    next = fields.Integer(
        required=True, allow_none=True, metadata={"description": "offset of the next page; null after the last."}
    )


class JobListQuerySchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100), metadata={"description": "Jobs per page."})
    after = fields.String(
        validate=validate.Regexp(UUID_PATTERN),
        metadata={
            "description": "A job_id: list the jobs older than it (the last job_id of the previous page).",
            "pattern": UUID_PATTERN,
        },
    )
    status = fields.String(validate=validate.OneOf(BULK_STATUSES), metadata={"description": "Only jobs with this status."})


class JobListSchema(Schema):
    data = fields.List(fields.Nested(JobStatusSchema), required=True, metadata={"description": "Newest first."})
    first_id = fields.UUID(required=True, allow_none=True)
    last_id = fields.UUID(required=True, allow_none=True, metadata={"description": "Pass as ``after`` for the next page."})
    has_more = fields.Boolean(required=True)


class ResultsQuerySchema(Schema):
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 10_000))


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    status = fields.String(
        required=True,
        validate=validate.OneOf(["ready", "overloaded"]),
        metadata={"description": "overloaded when the queue holds MAX_QUEUED_TEXTS texts: POST /predict then answers 429."},
    )
    workers = fields.Integer(required=True)
    queued_texts = fields.Integer(required=True)


class BacklogSchema(Schema):
    queued_texts = fields.Integer(
        required=True,
        metadata={
            "description": "Interactive texts accepted but not yet in a forward pass: in the Celery queue or held by a"
            " worker. KEDA scales workers on it."
        },
    )
    bulk_queued_texts = fields.Integer(
        required=True,
        metadata={"description": "Bulk jobs' texts not yet scored. KEDA scales workers on it too, with a larger target."},
    )


def text_field(settings) -> fields.String:
    """One text, under the rules of every route that takes texts: at most MAX_TEXT_CHARS, no unsafe characters."""
    return fields.String(
        validate=[validate.Length(max=settings.max_text_chars), reject_unsafe_characters], metadata={"pattern": SAFE_TEXT_PATTERN}
    )


def bulk_job_schema(settings) -> type[Schema]:
    """POST /jobs's body: what OpenAPI documents, and what checks it.

    The texts of a body are read and checked one at a time (web.job_body) under this schema's
    ``text`` field; the options are loaded with it. ``callback_url`` is part of it only when
    webhooks are on (a WEBHOOK_SECRET is set): otherwise it is an unknown field.
    """
    safe_metadata = validate.Length(max=MAX_METADATA_CHARS), reject_unsafe_characters
    options = {
        "metadata": fields.Dict(
            keys=fields.String(validate=safe_metadata),
            values=fields.String(validate=safe_metadata, metadata={"pattern": SAFE_TEXT_PATTERN}),
            validate=validate.Length(max=MAX_METADATA_ENTRIES),
            metadata={
                "description": f"Up to {MAX_METADATA_ENTRIES} string values, returned as given; keys and values"
                " follow the texts' character rules.",
                PROPERTY_NAMES: {"maxLength": MAX_METADATA_CHARS, "pattern": SAFE_TEXT_PATTERN},
                "maxProperties": MAX_METADATA_ENTRIES,
            },
        )
    }
    if settings.webhook_secret:
        options["callback_url"] = fields.String(
            validate=[validate.Length(max=MAX_CALLBACK_URL_CHARS), validate.Regexp(CALLBACK_URL_PATTERN)],
            metadata={
                "description": "Receives the job's status view, signed, when it ends (Standard Webhooks). Its host"
                " must resolve to public addresses unless the service sets WEBHOOK_ALLOW_PRIVATE=1.",
                "pattern": CALLBACK_URL_PATTERN,
            },
        )
    return Schema.from_dict(
        {
            "text": fields.List(
                text_field(settings),
                required=True,
                validate=validate.Length(min=1, max=settings.max_job_texts),
                metadata={"description": f"1 to {settings.max_job_texts} texts, each under /predict's rules."},
            ),
            **options,
        },
        name="BulkJobRequestSchema",
    )


def plain_texts_body(settings):
    """Whether a parsed body is one PredictRequestSchema loads unchanged: only ``text``, a list of valid texts.

    The same rules as the schema's, checked without it: the common body skips marshmallow's
    per-field machinery, and any other body still meets the schema and its messages.
    """
    most_texts, most_chars = settings.max_texts, settings.max_text_chars

    def accepts(data) -> bool:
        if type(data) is not dict or len(data) != 1:
            return False
        texts = data.get("text")
        return (
            type(texts) is list
            and len(texts) <= most_texts
            and all(type(text) is str and len(text) <= most_chars and not UNSAFE_CHARACTERS.search(text) for text in texts)
        )

    return accepts


def predict_schemas(settings) -> tuple[type[Schema], type[Schema]]:
    """Request body and query schemas, bounded by this deployment's settings."""

    class PredictRequestSchema(Schema):
        text = fields.List(
            text_field(settings),
            required=True,
            validate=validate.Length(max=settings.max_texts),
            metadata={
                "description": f"Texts to score: at most {settings.max_texts}, each at most {settings.max_text_chars} characters."
            },
        )

    class PredictQuerySchema(Schema):
        wait = fields.Float(
            validate=validate.Range(0, settings.sync_wait_s),
            metadata={
                "description": f"Seconds to wait for uncached texts before answering 202"
                f" (default and most {settings.sync_wait_s}); 0 answers at once."
            },
        )
        deadline = fields.Float(
            validate=validate.Range(MIN_DEADLINE_S, settings.job_deadline_s),
            metadata={
                "description": f"Seconds, queue time included, after which uncached texts are not computed"
                f" (default and most {settings.job_deadline_s})."
            },
        )

    return PredictRequestSchema, PredictQuerySchema
