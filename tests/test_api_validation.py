"""Every bad input gets a 4xx JSON error in one shape; never a 500, never a stack trace."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

ERROR_KEYS = {"error", "message", "details"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ERROR_KEYS
    assert "Traceback" not in response.get_data(as_text=True)
    if code:
        assert body["error"] == code
    return body


def post_raw(client, data, content_type="application/json"):
    return client.post("/predict", data=data, content_type=content_type)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": "I love you."}, "text"),
        ({"text": {"a": "b"}}, "text"),
        ({"text": None}, "text"),
        ({"text": [["nested"]]}, "text"),
        ({"text": [1]}, "text"),
        ({"text": [1.5]}, "text"),
        ({"text": [True]}, "text"),
        ({"text": [None]}, "text"),
        ({"text": ["ok"], "extra": 1}, "extra"),
        (["I love you."], "_schema"),
        ("I love you.", "_schema"),
        (None, "_schema"),
        (42, "_schema"),
    ],
)
def test_schema_violations_are_422_with_field_details(client, body, field):
    body = assert_error(post_raw(client, json.dumps(body)), 422, "validation_error")
    assert field in body["details"]


def test_concurrent_invalid_requests_each_get_their_own_error_details(web_url, settings):
    """The web process parses every request with one shared schema object; errors must not leak between threads."""
    too_long = "a" * (settings.max_text_chars + 1)

    def bad_text_at(index: int) -> dict:
        texts = ["fine"] * 20
        texts[index] = too_long if index % 2 else "null\x00byte"
        response = requests.post(f"{web_url}/predict", json={"text": texts}, timeout=30)
        assert response.status_code == 422, response.text
        return response.json()["details"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        details = list(pool.map(bad_text_at, [request % 20 for request in range(400)]))
    for request, detail in enumerate(details):
        index = request % 20
        assert list(detail["text"]) == [str(index)], detail
        expected = "Longer than maximum length" if index % 2 else "disallowed character U+0000"
        assert expected in " ".join(detail["text"][str(index)]), detail


def test_too_many_texts_is_422(client, settings):
    body = assert_error(client.post("/predict", json={"text": ["a"] * (settings.max_texts + 1)}), 422, "validation_error")
    assert "text" in body["details"]


def test_text_over_the_character_limit_is_422(client, settings):
    assert_error(client.post("/predict", json={"text": ["a" * (settings.max_text_chars + 1)]}), 422, "validation_error")


def test_hostile_texts_are_refused(client):
    for text in ["x" * 100_000, "\U0001f600" * 10_000, "null\x00byte", "bidi \u202e override", "rtl \u200f mark"]:
        assert_error(client.post("/predict", json={"text": [text]}), 422, "validation_error")


def test_lone_surrogate_escape_is_refused(client):
    assert_error(post_raw(client, b'{"text": ["\\ud800"]}'), 422, "validation_error")


@pytest.mark.parametrize("data", [b"", b"not json", b'{"text": [', b"\xff\xfe{}", b'{"text": ["caf\xe9"]}'])
def test_undecodable_bodies_are_400(client, data):
    assert_error(post_raw(client, data), 400, "invalid_body")


def test_deeply_nested_json_is_400(client):
    assert_error(post_raw(client, b"[" * 10_000 + b"]" * 10_000), 400, "invalid_body")
    assert_error(post_raw(client, b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"), 400, "invalid_body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""])
def test_wrong_content_type_is_415(client, content_type):
    assert_error(post_raw(client, b'{"text": ["hi"]}', content_type), 415, "unsupported_media_type")


def test_body_over_the_size_limit_is_413(client, settings):
    assert_error(post_raw(client, b'{"text": ["' + b"a" * settings.max_body_bytes + b'"]}'), 413, "payload_too_large")
    assert_error(post_raw(client, b"x" * (10 * 1024 * 1024)), 413, "payload_too_large")


def test_413_names_the_limit(client, settings):
    body = assert_error(post_raw(client, b"x" * (settings.max_body_bytes + 1)), 413, "payload_too_large")
    assert str(settings.max_body_bytes) in body["message"]
    assert body["details"] == {"limit_bytes": settings.max_body_bytes}


def post_chunked(web_url: str, body: bytes) -> requests.Response:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length), as streaming clients do."""
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    return requests.post(f"{web_url}/predict", data=chunks, headers={"Content-Type": "application/json"}, timeout=60)


@pytest.mark.parametrize("megabytes", [1, 10])
def test_oversized_chunked_body_is_413_not_a_truncated_400(web_url, settings, megabytes):
    """Through gunicorn: werkzeug alone would cut a chunked body at the limit and report broken JSON."""
    body = json.dumps({"text": ["a" * 1000] * (megabytes * 1100)}).encode()
    assert len(body) > settings.max_body_bytes
    response = post_chunked(web_url, body)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert str(settings.max_body_bytes) in response.json()["message"]


def test_chunked_body_under_the_limit_is_parsed(web_url):
    response = post_chunked(web_url, json.dumps({"text": []}).encode())
    assert response.status_code == 200 and response.json() == {"predictions": []}


def test_wrong_method_is_405(client):
    for response in (client.get("/predict"), client.put("/predict", json={"text": []}), client.put("/jobs/x")):
        assert_error(response, 405, "method_not_allowed")


def test_unknown_route_is_404(client):
    assert_error(client.get("/nope"), 404, "not_found")


@pytest.mark.parametrize(
    "query", ["wait=-1", "wait=abc", "wait=nan", "wait=100000", "deadline=0", "deadline=0.5", "deadline=1e9"]
)
def test_bad_query_parameters_are_422(client, query):
    assert_error(client.post(f"/predict?{query}", json={"text": ["hi"]}), 422, "validation_error")


@pytest.mark.parametrize("job_id", ["nope", "00000000-0000-0000-0000-000000000000", "6f1c7a52-2a8f-4f0e-9d4b-3d2f0a1b2c3d"])
def test_unknown_job_is_404(client, redis_client, job_id):
    assert_error(client.get(f"/jobs/{job_id}"), 404, "not_found")


def test_empty_text_list_answers_empty_predictions(client):
    response = client.post("/predict", json={"text": []})
    assert response.status_code == 200
    assert response.get_json() == {"predictions": []}


def test_openapi_documents_every_endpoint_and_error_shape(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/predict", "/jobs/{job_id}", "/health", "/ready"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "202", "400", "413", "415", "422", "429", "503"} <= set(predict["responses"])
    assert {parameter["name"] for parameter in predict["parameters"]} == {"wait", "deadline", "Idempotency-Key"}
    assert set(spec["components"]["schemas"]["Error"]["required"]) == ERROR_KEYS


def test_openapi_declares_the_api_key_scheme(client):
    """Swagger UI's Authorize button can then send X-API-Key."""
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "//cdn" not in html and "https://" not in html
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_argument_schemas_are_built_once_not_per_request():
    from flask import Flask
    from flask_smorest import Api
    from marshmallow import Schema, fields

    from web.parsing import ApiBlueprint

    built = []

    class CountingSchema(Schema):
        name = fields.String()

        def __init__(self, *args, **kwargs):
            built.append(self)
            super().__init__(*args, **kwargs)

    app = Flask("schemas-built-once")
    app.config.update(API_TITLE="probe", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    blueprint = ApiBlueprint("probe", __name__)

    @blueprint.route("/probe", methods=["POST"])
    @blueprint.arguments(CountingSchema, location="json")
    def probe(body):
        return body

    Api(app).register_blueprint(blueprint)
    built_at_start = len(built)
    client = app.test_client()
    for name in ("a", "b", "c"):
        assert client.post("/probe", json={"name": name}).get_json() == {"name": name}
    assert len(built) == built_at_start


@pytest.mark.parametrize("metadata", [{"source": "bidi \u202e"}, {"bell\u0007": "x"}, {"ok": "nul \u0000"}])
def test_metadata_follows_the_texts_character_rules(client, metadata):
    answer = client.post("/jobs", json={"text": ["a"], "metadata": metadata})
    assert answer.status_code == 422
    ((key, problem),) = answer.get_json()["details"]["metadata"].items()
    ((part, messages),) = problem.items()  # the key itself, or its value
    assert key == next(iter(metadata)) and part in ("key", "value") and "disallowed character" in messages[0]


@pytest.mark.parametrize("key", ["x" * 256, "clé", "tab\there"])
def test_idempotency_keys_are_bounded_printable_ascii(client, key):
    answer = client.post("/jobs", json={"text": ["a"]}, headers={"Idempotency-Key": key.encode().decode("latin-1")})
    assert answer.status_code == 422 and "Idempotency-Key" in answer.get_json()["details"], answer.get_json()


def test_predict_parses_every_request_as_the_webargs_pipeline_would(settings):
    """POST /predict parses in one step (web.parsing.RequestShape, with a check for the plain body);
    the classic @arguments route over the same schemas must answer every request alike."""
    from flask import Flask, jsonify

    from web.errors import register_error_handlers
    from web.parsing import ApiBlueprint, IdempotencyHeaderSchema, RequestShape
    from web.schemas import plain_texts_body, predict_schemas

    body_schema, query_schema = predict_schemas(settings)
    blp = ApiBlueprint("shapes", __name__)

    @blp.route("/classic", methods=["POST"])
    @blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
    @blp.arguments(query_schema, location="query", as_kwargs=True)
    @blp.arguments(body_schema, location="json")
    def classic(body, **arguments):
        return jsonify(body=body, arguments=arguments)

    @blp.route("/shaped", methods=["POST"])
    @blp.shaped(RequestShape(body_schema(), query_schema(), IdempotencyHeaderSchema(), plain_texts_body(settings)))
    def shaped(body, **arguments):
        return jsonify(body=body, arguments=arguments)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.register_blueprint(blp)
    register_error_handlers(app)
    client = app.test_client()
    longest = "a" * settings.max_text_chars
    bodies = [
        {"text": ["I love you.", "I hate you."]},
        {"text": []},
        {"text": [longest]},
        {"text": [longest + "a"]},
        {"text": ["ok"] * settings.max_texts},
        {"text": ["ok"] * (settings.max_texts + 1)},
        {"text": ["bidi \u202e control"]},
        {"text": ["tab\tand newline\n are fine"]},
        {"text": ["nul \x00"]},
        {"text": ["lone \ud800 surrogate"]},
        {"text": ["ok", 1]},
        {"text": "not a list"},
        {"text": ["ok"], "extra": 1},
        {"texts": ["ok"]},
        {},
        ["ok"],
        None,
    ]
    requests_ = [(json.dumps(body), "", {}) for body in bodies]
    requests_ += [
        ("not json", "", {}),
        ("", "", {}),
        (json.dumps({"text": ["ok"]}), "?wait=0&deadline=5", {}),
        (json.dumps({"text": ["ok"]}), "?wait=-1", {}),
        (json.dumps({"text": ["ok"]}), "?wait=x&wait=1&other=2", {}),
        (json.dumps({"text": ["ok"]}), "?deadline=0.5", {}),
        (json.dumps({"text": ["ok"]}), "", {"Idempotency-Key": "order-42"}),
        (json.dumps({"text": ["ok"]}), "", {"Idempotency-Key": "naïve"}),
        (json.dumps({"text": "bad"}), "?wait=-1", {"Idempotency-Key": ""}),
    ]
    for data, query, headers in requests_:
        answers = [
            client.post(f"/{route}{query}", data=data, content_type="application/json", headers=headers)
            for route in ("classic", "shaped")
        ]
        assert answers[0].status_code == answers[1].status_code, (data[:80], query, headers)
        assert answers[0].get_json() == answers[1].get_json(), (data[:80], query, headers)
    assert client.post("/shaped", data="{}", content_type="text/plain").status_code == 415
