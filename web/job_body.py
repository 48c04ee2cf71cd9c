"""POST /jobs bodies, parsed within bounds: a 32 MiB body costs about twice its size, whatever it holds.

A full ``json.loads`` of a body builds every value first and checks limits after: a 32 MiB body of
short lines or tiny array items becomes millions of Python objects (over a GiB). Here a JSON body
is read token by token with a regular expression over its bytes, and an NDJSON body line by line:
each text is decoded alone, checked at once under /predict's rules, and kept as UTF-8 bytes (a
Python str of a text with one emoji takes 4 bytes a character). Parsing stops at the first limit
passed (MAX_JOB_TEXTS texts, a text too long to be one, nesting too deep, 20 bad texts), and
nothing else is built: unknown fields are skipped, options are decoded only when small.
"""

import codecs
import json
import re
from dataclasses import dataclass, field

from marshmallow import ValidationError, validate

from web.errors import InvalidBody, ValidationFailed

# Per-text problems reported at once; past these, the client has a file to fix, not a typo.
MAX_REPORTED_PROBLEMS = 20
# Deepest nesting skipped inside an unknown field or a wrong value.
MAX_NESTING = 64
# Largest encoded option (callback_url, metadata, or an NDJSON options line) that is decoded.
MAX_OPTIONS_BYTES = 256 * 1024
# A JSON string escapes a character in at most 12 bytes (a surrogate pair, \ud83d\ude00).
MAX_ESCAPED_BYTES_PER_CHAR = 12

JSON_WHITESPACE = b" \t\r\n"
# One JSON token after optional whitespace: a string, a structural character, a literal or a number.
# Strings hold no raw control characters (JSON forbids them); their escapes are checked by json.loads.
_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:("[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*")|([\[\]{}:,])|(true|false|null)'
    rb"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?))",
    re.DOTALL,
)
STRING, PUNCTUATION, LITERAL, NUMBER, END = "string", "punctuation", "literal", "number", "end"


@dataclass
class JobBody:
    """What a POST /jobs body holds: its texts (UTF-8) and its options."""

    texts: list[bytes] = field(default_factory=list)
    callback_url: object = None
    metadata: object = None
    # Bad texts by index (JSON) or line number (NDJSON).
    problems: dict[str, list[str]] = field(default_factory=dict)


class TextChecker:
    """Checks each text as it is read, under the rules of the schema's ``text`` field; refuses a body with too many."""

    def __init__(self, schema, body: JobBody, problems_key: str):
        texts = schema.fields["text"]
        length = next(rule for rule in texts.validators if isinstance(rule, validate.Length))
        self.max_texts = length.max
        self.too_many_message = length.message_all.format(min=length.min, max=length.max)
        self.text_rules = texts.inner.validators
        self.max_chars = next(rule.max for rule in self.text_rules if isinstance(rule, validate.Length))
        self.max_token_bytes = 2 + self.max_chars * MAX_ESCAPED_BYTES_PER_CHAR
        self.body = body
        self.problems_key = problems_key

    def too_many(self) -> ValidationFailed:
        return ValidationFailed("request is invalid", details={"text": [self.too_many_message]})

    def add(self, where: int, token: bytes | bytearray | None, value=None) -> None:
        """Take one text, from its encoded JSON ``token`` (or an already decoded ``value``); record a problem instead."""
        if len(self.body.texts) + len(self.body.problems) >= self.max_texts:
            raise self.too_many()
        if token is not None:
            if len(token) > self.max_token_bytes:
                self.problem(where, f"Longer than maximum length {self.max_chars}.")
                return
            value = decode_string(token)
        if not isinstance(value, str):
            self.problem(where, "Not a valid string.")
            return
        for rule in self.text_rules:
            try:
                rule(value)
            except ValidationError as error:
                self.problem(where, error.messages[0])
                return
        self.body.texts.append(value.encode("utf-8"))

    def problem(self, where: int, message: str) -> None:
        self.body.problems[str(where)] = [message]
        if len(self.body.problems) >= MAX_REPORTED_PROBLEMS:
            raise ValidationFailed("request is invalid", details={self.problems_key: self.body.problems})

    def finish(self) -> None:
        if self.body.problems:
            raise ValidationFailed("request is invalid", details={self.problems_key: self.body.problems})
        if not self.body.texts:
            raise self.too_many()


def decode_string(token: bytes) -> str:
    """A JSON string token's value: a fast path for plain ASCII, json.loads for escapes and UTF-8."""
    inner = token[1:-1]
    if b"\\" not in inner and inner.isascii():
        return inner.decode("ascii")
    try:
        return json.loads(token)
    except ValueError as error:  # a bad escape
        raise InvalidBody(f"request body is not valid JSON: {error} in a string") from None


def check_utf8(raw: bytes, slice_bytes: int = 2**20) -> None:
    """400 unless ``raw`` is UTF-8, decoded a slice at a time, so the check never holds the body as a str."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(raw), slice_bytes):
        try:
            decoder.decode(raw[start : start + slice_bytes], final=start + slice_bytes >= len(raw))
        except UnicodeDecodeError as error:
            raise InvalidBody(f"request body is not valid UTF-8: {error.reason} at byte {start + error.start}") from None


class Tokens:
    """The tokens of a JSON document in ``raw``, one at a time: (kind, start, end)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.position = 0

    def next(self) -> tuple[str, int, int]:
        match = _TOKEN.match(self.raw, self.position)
        if match is None:
            rest = self.raw[self.position :].lstrip(JSON_WHITESPACE)
            if not rest:
                self.position = len(self.raw)
                return END, self.position, self.position
            raise InvalidBody(f"request body is not valid JSON: unexpected data at byte {len(self.raw) - len(rest)}")
        self.position = match.end()
        kind = (STRING, PUNCTUATION, LITERAL, NUMBER)[match.lastindex - 1]
        return kind, match.start(match.lastindex), match.end()

    def text(self, start: int, end: int) -> bytes:
        return self.raw[start:end]

    def expect(self, punctuation: bytes) -> None:
        kind, start, end = self.next()
        if kind != PUNCTUATION or self.raw[start:end] != punctuation:
            raise self.unexpected(kind, start)

    def unexpected(self, kind: str, start: int) -> InvalidBody:
        found = "the end" if kind == END else repr(self.raw[start : start + 20].decode("utf-8", "replace"))
        return InvalidBody(f"request body is not valid JSON: unexpected {found} at byte {start}")

    def skip_value(self, first: tuple[str, int, int]) -> None:
        """Skip the value that starts with token ``first``, however nested (up to MAX_NESTING)."""
        kind, start, end = first
        if kind in (STRING, LITERAL, NUMBER):
            return
        opening = self.raw[start:end]
        if kind != PUNCTUATION or opening not in b"[{":
            raise self.unexpected(kind, start)
        depth = 1
        while depth:
            kind, start, end = self.next()
            if kind == END:
                raise self.unexpected(kind, start)
            if kind == PUNCTUATION and self.raw[start:end] in b"[{":
                depth += 1
                if depth > MAX_NESTING:
                    raise InvalidBody(f"request body is nested too deeply (over {MAX_NESTING} levels)")
            elif kind == PUNCTUATION and self.raw[start:end] in b"]}":
                depth -= 1

    def small_value(self, name: str):
        """The next value, decoded, if it is at most MAX_OPTIONS_BYTES encoded; 422 naming ``name`` otherwise."""
        first = self.next()
        self.skip_value(first)
        start, end = first[1], self.position
        if end - start > MAX_OPTIONS_BYTES:
            raise ValidationFailed("request is invalid", details={name: [f"Longer than {MAX_OPTIONS_BYTES} bytes."]})
        try:
            return json.loads(self.raw[start:end])
        except ValueError as error:  # a bad escape in a string
            raise InvalidBody(f"request body is not valid JSON: {error} in {name!r}") from None


def parse_json_body(raw: bytes, schema, options: tuple[str, ...]) -> JobBody:
    """A JSON body: {"text": [...], <options>}; texts checked as read under ``schema``, problems named by index."""
    body = JobBody()
    checker = TextChecker(schema, body, "text")
    tokens = Tokens(raw)
    kind, start, end = tokens.next()
    if kind != PUNCTUATION or tokens.text(start, end) != b"{":
        tokens.skip_value((kind, start, end))
        if tokens.next()[0] != END:
            raise InvalidBody("request body is not valid JSON: extra data after the value")
        raise ValidationFailed("request is invalid", details={"_schema": ["Invalid input type."]})
    seen: dict[str, object] = {}
    unknown: list[str] = []
    text_problem = None
    kind, start, end = tokens.next()
    if not (kind == PUNCTUATION and tokens.text(start, end) == b"}"):
        while True:
            if kind != STRING:
                raise tokens.unexpected(kind, start)
            name = decode_string(tokens.text(start, end))
            if name in seen:
                raise InvalidBody(f"request body names the field {name!r} twice")
            tokens.expect(b":")
            if name == "text":
                seen[name] = text_problem = read_texts(tokens, checker)
            elif name in options:
                seen[name] = tokens.small_value(name)
            else:
                seen[name] = None
                unknown.append(name)
                tokens.skip_value(tokens.next())
            kind, start, end = tokens.next()
            if kind == PUNCTUATION and tokens.text(start, end) == b"}":
                break
            if not (kind == PUNCTUATION and tokens.text(start, end) == b","):
                raise tokens.unexpected(kind, start)
            kind, start, end = tokens.next()
    if tokens.next()[0] != END:
        raise InvalidBody("request body is not valid JSON: extra data after the object")
    if unknown:
        raise ValidationFailed("request is invalid", details={name: ["Unknown field."] for name in sorted(unknown)})
    if "text" not in seen:
        raise ValidationFailed("request is invalid", details={"text": ["Missing data for required field."]})
    if text_problem is not None:
        raise ValidationFailed("request is invalid", details={"text": [text_problem]})
    refuse_null_options(seen, options)
    checker.finish()
    body.callback_url, body.metadata = seen.get("callback_url"), seen.get("metadata")
    return body


def read_texts(tokens: Tokens, checker: TextChecker) -> str | None:
    """Read the text array into the checker; a problem with the field itself (not a list), or None."""
    kind, start, end = tokens.next()
    if not (kind == PUNCTUATION and tokens.text(start, end) == b"["):
        tokens.skip_value((kind, start, end))
        return "Not a valid list."
    index = 0
    kind, start, end = tokens.next()
    if kind == PUNCTUATION and tokens.text(start, end) == b"]":
        return None
    while True:
        if kind == STRING:
            checker.add(index, tokens.text(start, end))
        else:
            tokens.skip_value((kind, start, end))
            checker.add(index, None, value=None)
        index += 1
        kind, start, end = tokens.next()
        if kind == PUNCTUATION and tokens.text(start, end) == b"]":
            return None
        if not (kind == PUNCTUATION and tokens.text(start, end) == b","):
            raise tokens.unexpected(kind, start)
        kind, start, end = tokens.next()


def refuse_null_options(document: dict, options: tuple[str, ...]) -> None:
    """422 for an option sent as null: omit it instead."""
    for name in options:
        if name in document and document[name] is None:
            raise ValidationFailed("request is invalid", details={name: ["Field may not be null."]})


def parse_ndjson_body(raw: bytes, schema, options: tuple[str, ...]) -> JobBody:
    """One JSON string per line, checked under ``schema``; a first line holding an object carries the job's options.

    Problems are named by line number (details.lines); a line that is not JSON is a 400 naming it.
    """
    body = JobBody()
    checker = TextChecker(schema, body, "lines")
    first_line = True
    number, position = 0, 0
    while position < len(raw):
        newline = raw.find(b"\n", position)
        stop = len(raw) if newline < 0 else newline
        line = raw[position:stop].strip(JSON_WHITESPACE)
        position = stop + 1
        number += 1
        if not line:
            continue
        if first_line and line.startswith(b"{"):
            first_line = False
            if len(line) > MAX_OPTIONS_BYTES:
                raise ValidationFailed(
                    "request is invalid", details={"lines": {str(number): [f"Longer than {MAX_OPTIONS_BYTES} bytes."]}}
                )
            value = load_line(line, number)
            if isinstance(value, dict):
                unknown = set(value) - set(options)
                if unknown:
                    raise ValidationFailed("request is invalid", details={name: ["Unknown field."] for name in sorted(unknown)})
                refuse_null_options(value, options)
                body.callback_url, body.metadata = value.get("callback_url"), value.get("metadata")
                continue
        first_line = False
        if line.startswith(b'"'):
            if len(line) <= checker.max_token_bytes:
                checker.add(number, None, value=load_line(line, number))
                continue
            checker.add(number, line)  # too long to be a text: a problem, never decoded
        elif len(line) <= MAX_OPTIONS_BYTES:
            checker.add(number, None, value=load_line(line, number))
        else:
            checker.add(number, None, value=None)
    checker.finish()
    return body


def load_line(line: bytes, number: int):
    try:
        return json.loads(line)
    except RecursionError:
        raise InvalidBody(f"line {number} is nested too deeply", details={"line": number}) from None
    except ValueError as error:
        raise InvalidBody(f"line {number} is not valid JSON: {error}", details={"line": number}) from None
