"""Bugs the fuzzer found, each pinned by a plain test (and its check suspended in conftest until fixed)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Headers, MakeUser, assert_problem


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


async def test_405_allow_lists_every_method_of_the_resource(client: httpx.AsyncClient, app: FastAPI) -> None:
    """RFC 9110: `Allow` lists the methods the target resource supports, not those of one route."""
    document = app.openapi()
    for path, operations in document["paths"].items():
        documented = {method.upper() for method in operations}
        url = re.sub(r"\{[^}]+\}", "1", path)
        response = await client.request("PUT" if "PUT" not in documented else "TRACE", url)
        if path.startswith("/v2/") or path == "/v2":  # the Open Inference Protocol's error shape
            assert response.status_code == 405
            assert set(response.json()) == {"error"}
        else:
            assert_problem(response, 405)
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert documented <= allowed, f"{path}: Allow {sorted(allowed)}, documented {sorted(documented)}"


async def test_patch_schemas_do_not_document_null_where_it_is_refused(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, user_headers: Headers
) -> None:
    """A field documented as nullable accepts null: every PATCH body field the document marks
    `anyOf [..., null]`, sent as null on a resource the caller may change, is not refused."""
    admin = await make_user(admin=True)
    item = (await client.post("/api/v1/items", json={"title": "t"}, headers=user_headers)).json()
    other = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    targets = {
        "/api/v1/items/{item_id}": (f"/api/v1/items/{item['id']}", user_headers),
        "/api/v1/users/me": ("/api/v1/users/me", user_headers),
        "/api/v1/users/{user_id}": (f"/api/v1/users/{other['id']}", admin),
    }
    document = app.openapi()
    refused = []
    for path, (url, headers) in targets.items():
        body_schema = document["paths"][path]["patch"]["requestBody"]["content"]["application/json"]["schema"]
        for name, prop in _resolve(document, body_schema)["properties"].items():
            if {"type": "null"} in prop.get("anyOf", []):
                response = await client.patch(url, json={name: None}, headers=headers)
                if response.status_code == 422:
                    refused.append(f"PATCH {path} {name}=null")
    assert not refused, refused


async def test_predict_while_models_are_not_ready_is_503(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    """The suite's app runs without models (ML_ENABLED=false): the state of a registry that is
    starting or stopping. A prediction then is a 503 to retry, not a 500."""
    for path in ("/api/v1/predict", "/api/v1/predict-heavy"):
        response = await client.post(path, json={"features": [1.0, 2.0, 3.0, 4.0]}, headers=user_headers)
        assert_problem(response, 503)
        assert response.headers["retry-after"]


@pytest.mark.parametrize("path", ["/api/v2/items", "/api/v1/predictions"])
async def test_a_non_ascii_cursor_is_a_422(
    client: httpx.AsyncClient, user_headers: Headers, path: str
) -> None:
    for cursor in ("é", "aW\u00e9", "\n\u00d9"):
        response = await client.get(path, params={"cursor": cursor}, headers=user_headers)
        assert_problem(response, 422)
