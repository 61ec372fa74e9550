"""The OpenAPI document validates and documents every operation; /docs and /redoc work offline."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from app.core.config import Settings
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
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= paths[path].keys(), path


def test_error_responses_are_documented_as_problem_details(openapi: dict[str, Any]) -> None:
    for method, path, operation in _operations(openapi):
        if path == "/v2" or path.startswith("/v2/"):
            continue  # the Open Inference Protocol has its own error shape
        for code, response in operation["responses"].items():
            if code.isdigit() and int(code) >= 400:
                assert "application/problem+json" in response["content"], f"{method} {path} {code}"


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
