"""The OpenAPI document validates and documents every operation; /docs and /redoc work offline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.http.shedding import LoadSheddingMiddleware
from app.main import create_app
from app.ml.manifest import load_manifest
from app.observability.metrics import InFlight
from tests.api.conftest import serve
from tests.conftest import make_settings

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Operations open to anyone; every other one documents its 401.
PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/token"),
    ("post", "/api/v1/auth/refresh"),
}

# Liveness touches nothing, by design: it has no error of its own to document.
CANNOT_FAIL = {("get", "/healthz"), ("get", "/v2/health/live")}


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _validator() -> Any:
    """The official OpenAPI 3.1 schema (as bundled by schemathesis), JSON Schema 2020-12.

    `format` is an annotation in 2020-12, not an assertion: OpenAPI 3.1 lets URL fields such as
    `tokenUrl` be relative references, which the schema's `format: uri` would otherwise refuse.
    """
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    return jsonschema_rs.Draft202012Validator(OPENAPI_31, validate_formats=False)


def test_openapi_document_validates(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.1")
    errors = [str(error) for error in _validator().iter_errors(openapi)]
    assert errors == []
    flows = openapi["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"] == "/api/v1/auth/token"


def test_the_validator_catches_a_broken_document(openapi: dict[str, Any]) -> None:
    """Control: the validator above is not a no-op."""
    broken = {**openapi, "paths": {"/x": {"get": {"responses": {"200": {"description": 5}}}}}}
    assert list(_validator().iter_errors(broken))


def test_every_operation_has_a_summary_tags_and_error_responses(openapi: dict[str, Any]) -> None:
    operations = _operations(openapi)
    assert len(operations) >= 15
    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), f"{where} has no summary"
        assert operation.get("tags"), f"{where} has no tags"
        statuses = {int(code) for code in operation["responses"] if code.isdigit()}
        assert any(200 <= s < 300 for s in statuses), f"{where} documents no success"
        errors = {s for s in statuses if s >= 400}
        if (method, path) in CANNOT_FAIL:
            continue
        assert errors, f"{where} documents no error response"
        if (method, path) not in PUBLIC:
            assert 401 in errors, f"{where} needs a token but does not document 401"
        if "requestBody" in operation:
            assert 422 in errors, f"{where} takes a body but does not document 422"


def test_service_core_routes_are_in_the_document(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    expected = {
        "/api/v1/auth/register": {"post"},
        "/api/v1/auth/token": {"post"},
        "/api/v1/auth/refresh": {"post"},
        "/api/v1/auth/logout": {"post"},
        "/api/v1/users/me": {"get", "patch"},
        "/api/v1/users/me/password": {"post"},
        "/api/v1/users": {"get"},
        "/api/v1/users/{user_id}": {"get", "patch", "delete"},
        "/api/v1/items": {"get", "post"},
        "/api/v1/items/{item_id}": {"get", "patch", "delete"},
        "/api/v2/items": {"get"},
        "/api/v1/jobs": {"get", "post"},
        "/api/v1/jobs/{job_id}": {"get", "delete"},
        "/api/v1/jobs/{job_id}/results": {"get"},
        "/api/v1/jobs/{job_id}/cancel": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= paths[path].keys(), path


PROBLEM = {"schema": {"$ref": "#/components/schemas/Problem"}}
OIP_ERROR = {"schema": {"$ref": "#/components/schemas/OipError"}}


def _is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def test_error_responses_are_documented_as_problem_details(openapi: dict[str, Any]) -> None:
    """Under the media type the server sends: a schema under `application/json` and an empty
    `application/problem+json` left generated clients with `parsed=None` for every error."""
    for method, path, operation in _operations(openapi):
        for code, response in operation["responses"].items():
            if not (code.isdigit() and int(code) >= 400):
                continue
            where = f"{method} {path} {code}"
            if _is_oip(path):
                # The protocol's own shape, also where middleware answers before a route runs.
                assert response["content"] == {"application/json": OIP_ERROR}, where
            else:
                assert response["content"] == {"application/problem+json": PROBLEM}, where
    problem = openapi["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "FieldError" in json.dumps(problem["properties"]["errors"])
    assert openapi["components"]["schemas"]["FieldError"]["required"] == ["field", "message"]


def test_every_status_the_service_can_answer_is_documented(openapi: dict[str, Any]) -> None:
    for method, path, operation in _operations(openapi):
        where = f"{method.upper()} {path}"
        statuses = {int(code) for code in operation["responses"]}
        if (method, path) != ("get", "/healthz"):  # the only operation load shedding never answers
            assert 503 in statuses, f"{where}: load shedding (and a database outage) answer 503"
        if operation.get("security"):
            assert {401, 429} <= statuses, f"{where}: a token is refused (401) or over its user's limit (429)"
        body = operation.get("requestBody", {}).get("content", {})
        if body:
            assert {400, 413, 422} <= statuses, f"{where} reads a body"
        if "application/json" in body and not _is_oip(path):
            assert 415 in statuses, f"{where} reads JSON: another content type is a 415"
    for path in ("/api/v1/auth/register", "/api/v1/auth/token"):
        assert "429" in openapi["paths"][path]["post"]["responses"], path
    # ... and none it cannot: refresh has no rate limit.
    assert "429" not in openapi["paths"]["/api/v1/auth/refresh"]["post"]["responses"]
    # A model that fails on its inputs is the one 500 by design (prediction-failed): documented where
    # a prediction runs, so a generated client parses it.
    for path in ("/api/v1/predict", "/api/v1/predict-heavy", "/api/v1/models/{name}/predict"):
        assert "500" in openapi["paths"][path]["post"]["responses"], path
    assert "500" in openapi["paths"]["/v2/models/{name}/infer"]["post"]["responses"]


async def test_a_204_documents_and_sends_no_content(
    openapi: dict[str, Any], client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    no_content = [
        (method, path, operation["responses"]["204"])
        for method, path, operation in _operations(openapi)
        if "204" in operation["responses"]
    ]
    # item, password, user, log-out, the two key revocations, an alias, a job
    assert len(no_content) == 8
    for method, path, response in no_content:
        assert "content" not in response, f"{method} {path}"
    created = await client.post("/api/v1/items", json={"title": "x"}, headers=user_headers)
    deleted = await client.delete(f"/api/v1/items/{created.json()['id']}", headers=user_headers)
    logged_out = await client.post("/api/v1/auth/logout", headers=user_headers)
    for response in (deleted, logged_out):
        assert response.status_code == 204
        assert "content-type" not in response.headers
        assert response.content == b""


def _document_with_models(database_url: str, **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = create_app(make_settings(database_url, ml_enabled=True, **overrides)).openapi()
    return document


def test_model_names_and_inputs_come_from_the_manifest(settings: Settings) -> None:
    document = _document_with_models(settings.database_url)
    manifest = load_manifest(settings.ml_model_dir)
    names = [spec.name for spec in manifest.models]
    schemas = document["components"]["schemas"]
    for path in (
        "/api/v1/models/{name}",
        "/api/v1/models/{name}/predict",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
    ):
        for operation in document["paths"][path].values():
            (parameter,) = [p for p in operation["parameters"] if p["name"] == "name"]
            assert parameter["schema"] == {"$ref": "#/components/schemas/ModelName"}, path
    assert schemas["ModelName"]["enum"] == names
    links = document["paths"]["/api/v1/models"]["get"]["responses"]["200"]["links"]
    assert {link["parameters"]["name"] for link in links.values()} == {"$response.body#/0/name"}
    # One row for the default and the heavy model: exactly their features, in order.
    for path, model in (
        ("/api/v1/predict", manifest.default_model),
        ("/api/v1/predict-heavy", manifest.heavy_model),
    ):
        spec = next(s for s in manifest.models if s.name == model)
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        features = schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]["features"]
        assert features["minItems"] == features["maxItems"] == len(spec.features), path
        assert ", ".join(spec.feature_names) in features["description"]
    # A batch: each row an array, or an object with every feature of one model.
    media = document["paths"]["/api/v1/models/{name}/predict"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    rows = schemas[media["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]["rows"]["items"]["anyOf"]
    objects = [schemas[r["$ref"].rsplit("/", 1)[1]] for r in rows if "$ref" in r]
    assert sorted(o["required"] for o in objects) == sorted(list(s.feature_names) for s in manifest.models)
    assert set(media["examples"]) == set(names)
    assert errors_of(document) == []


def errors_of(document: dict[str, Any]) -> list[str]:
    return [str(error) for error in _validator().iter_errors(document)]


def test_a_forks_models_are_the_ones_documented(settings: Settings, tmp_path: Path) -> None:
    manifest = json.loads((settings.ml_model_dir / "manifest.json").read_text())
    manifest["models"] = [{**manifest["models"][0], "name": "fork-model"}]
    manifest["default_model"], manifest["heavy_model"] = "fork-model", None
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    document = _document_with_models(settings.database_url, ml_model_dir=tmp_path)
    assert document["components"]["schemas"]["ModelName"]["enum"] == ["fork-model"]
    assert "ForkModelRow" in document["components"]["schemas"]
    # Models off: no model is served, so none is listed.
    off = create_app(make_settings(settings.database_url)).openapi()
    (parameter,) = off["paths"]["/api/v1/models/{name}"]["get"]["parameters"]
    assert parameter["schema"]["type"] == "string"
    assert "ModelName" not in off["components"]["schemas"]


async def test_a_request_shed_under_v2_gets_the_protocols_error_shape() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def never_called(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a shed request reaches no route")

    in_flight = InFlight()
    in_flight.value = 1
    shedding = LoadSheddingMiddleware(never_called, max_in_flight=1, in_flight=in_flight)
    for path, content_type, body in [
        (
            "/v2/models/iris/infer",
            b"application/json",
            {"error": "The server is at capacity; retry shortly."},
        ),
        ("/api/v1/items", b"application/problem+json", None),
    ]:
        sent.clear()
        await shedding({"type": "http", "path": path, "headers": []}, None, send)  # type: ignore[arg-type]
        start, message = sent
        assert start["status"] == 503
        assert (b"content-type", content_type) in start["headers"]
        if body is not None:
            assert json.loads(message["body"]) == body


def test_no_schema_exposes_a_password_hash(openapi: dict[str, Any]) -> None:
    assert "hashed_password" not in str(openapi)


_EXTERNAL_URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_use_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not _EXTERNAL_URL.search(html), "the page loads something from another host"
    assert "http://" not in html
    assert "https://" not in html
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert assets
    for asset in assets:
        assert asset.startswith("/static/docs/"), asset
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 0


def test_the_external_url_check_catches_a_cdn() -> None:
    assert _EXTERNAL_URL.search('<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/x.js">')
    assert _EXTERNAL_URL.search("<link href='//fonts.googleapis.com/css'>")
    assert not _EXTERNAL_URL.search('<script src="/static/docs/x.js">')


async def test_docs_can_be_switched_off(settings: Settings) -> None:
    async with serve(make_settings(settings.database_url, docs_enabled=False)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 404


def test_patch_fields_that_refuse_null_do_not_offer_it(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for model, field in [
        ("ItemUpdate", "title"),
        ("UserUpdateMe", "email"),
        ("UserUpdateAdmin", "email"),
        ("UserUpdateAdmin", "is_active"),
        ("UserUpdateAdmin", "is_admin"),
    ]:
        assert "null" not in json.dumps(schemas[model]["properties"][field]), f"{model}.{field}"
    # A description may be cleared with null, and says so.
    assert "null" in json.dumps(schemas["ItemUpdate"]["properties"]["description"])
