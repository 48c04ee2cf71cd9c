"""POST /jobs bodies, parsed within bounds (web.job_body), and the memory a 32 MiB one costs a real web process."""

import json

import pytest

from bench import parse_memory
from common.settings import Settings
from web.errors import InvalidBody, ValidationFailed
from web.job_body import MAX_REPORTED_PROBLEMS, check_utf8, parse_json_body, parse_ndjson_body
from web.schemas import bulk_job_schema

OPTIONS = ("callback_url", "metadata")


@pytest.fixture
def schema():
    """POST /jobs's schema, as web.jobs builds it, for a service of at most 100 texts of 50 characters."""
    return bulk_job_schema(Settings.from_env({"max_job_texts": 100, "max_text_chars": 50}, environ={}))()


def details(error) -> dict:
    return error.value.details


def test_texts_are_kept_as_utf8_in_order_with_the_options(schema):
    body = json.dumps({"metadata": {"k": "v"}, "text": ["plain", "tab\tand \\ escapes \u00e9", "😀 pair"]}).encode()
    parsed = parse_json_body(body, schema, OPTIONS)
    assert parsed.texts == [b"plain", "tab\tand \\ escapes é".encode(), "😀 pair".encode()]
    assert (parsed.metadata, parsed.callback_url) == ({"k": "v"}, None)


def test_reading_stops_at_the_first_text_past_the_limit(schema):
    # Millions of items would be millions of objects; the parser refuses at item 101 and builds nothing more.
    body = b'{"text": [' + b'"ok",' * 2_000_000 + b'"ok"]}'
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(body, schema, OPTIONS)
    assert details(refused) == {"text": ["Length must be between 1 and 100."]}
    with pytest.raises(ValidationFailed) as refused:
        parse_ndjson_body(b'"ok"\n' * 2_000_000, schema, OPTIONS)
    assert details(refused) == {"text": ["Length must be between 1 and 100."]}


def test_bad_texts_are_named_by_index_or_line_and_reporting_stops_at_twenty(schema):
    body = json.dumps({"text": ["fine", 7, "x" * 51, "bidi \u202e", None]}).encode()
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(body, schema, OPTIONS)
    assert details(refused) == {
        "text": {
            "1": ["Not a valid string."],
            "2": ["Longer than maximum length 50."],
            "3": ["Text contains a disallowed character U+202E at position 5."],
            "4": ["Not a valid string."],
        }
    }
    with pytest.raises(ValidationFailed) as refused:
        parse_ndjson_body(b'"fine"\n\n[1, 2]\n"' + b"y" * 700 + b'"\n', schema, OPTIONS)
    assert details(refused) == {"lines": {"3": ["Not a valid string."], "4": ["Longer than maximum length 50."]}}
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(json.dumps({"text": [1] * 99}).encode(), schema, OPTIONS)
    assert len(details(refused)["text"]) == MAX_REPORTED_PROBLEMS


def test_a_lone_surrogate_escape_is_refused_not_replaced(schema):
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(b'{"text": ["a \\ud800 b"]}', schema, OPTIONS)
    assert details(refused) == {"text": {"0": ["Text contains a disallowed character U+D800 at position 2."]}}


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"text": ["a"]', "unexpected the end"),
        (b'{"text": ["a"]} trailing', "unexpected data at byte 16"),
        (b'{"text": ["a"], "text": ["b"]}', "names the field 'text' twice"),
        (b'{"text": ["a"], "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested too deeply"),
        (b'{"text": ["bad \\x escape"]}', "not valid JSON"),
        (b"", "unexpected the end"),
    ],
)
def test_malformed_json_is_a_400_naming_what_is_wrong(schema, body, message):
    with pytest.raises(InvalidBody) as refused:
        parse_json_body(body, schema, OPTIONS)
    assert message in refused.value.message


def test_invalid_utf8_is_found_without_decoding_the_whole_body():
    check_utf8(("é" * 3_000_000).encode())
    with pytest.raises(InvalidBody) as refused:
        check_utf8(b"a" * (3 * 2**20) + b"\xff")
    assert refused.value.message == f"request body is not valid UTF-8: invalid start byte at byte {3 * 2**20}"


def test_fields_and_options_follow_the_json_bodys_rules(schema):
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(b'{"text": ["a"], "surprise": {"deep": [1]}}', schema, OPTIONS)
    assert details(refused) == {"surprise": ["Unknown field."]}
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(b'{"text": ["a"], "metadata": null}', schema, OPTIONS)
    assert details(refused) == {"metadata": ["Field may not be null."]}
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(b'["a"]', schema, OPTIONS)
    assert details(refused) == {"_schema": ["Invalid input type."]}
    with pytest.raises(ValidationFailed) as refused:
        parse_json_body(b'{"text": "a"}', schema, OPTIONS)
    assert details(refused) == {"text": ["Not a valid list."]}
    parsed = parse_ndjson_body(b'{"metadata": {"k": "v"}}\n"a"\n', schema, OPTIONS)
    assert (parsed.texts, parsed.metadata) == ([b"a"], {"k": "v"})
    with pytest.raises(InvalidBody) as refused:
        parse_ndjson_body(b'"a"\nnot json\n', schema, OPTIONS)
    assert refused.value.details == {"line": 2}


@pytest.mark.timeout(600)
def test_a_32_mib_body_raises_a_web_process_peak_memory_by_at_most_four_times_its_size():
    """Measured as ``python -m bench.parse_memory`` measures it: a fresh gunicorn process per body, VmHWM."""
    report = parse_memory.run(32 * 2**20 - 1024)
    print(json.dumps(report, indent=2))
    # Evidence each body was the one meant: the floods are refused, the long-text bodies are real jobs.
    assert {case: figures["status"] for case, figures in report.items()} == {
        "ndjson_short_lines": 422,
        "ndjson_long_lines": 202,
        "json_short_items": 422,
        "json_long_items": 202,
    }
    for case, figures in report.items():
        assert figures["rise_x_body"] <= 4, (case, figures)
