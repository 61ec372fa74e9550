"""Each prediction request is routed once: the registry resolves its version (an alias, a split,
a sticky caller) one time, and the prediction runs on what that returned (issue 22, item 2)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.http.state import state_of
from app.ml.registry import Served
from tests.serving.conftest import login

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETOSA = [5.1, 3.5, 1.4, 0.2]
TENSOR = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}


@pytest.fixture
def resolved(ml_app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """Every `registry.resolve(name, version)` call, in order."""
    registry = state_of(ml_app).resources.registry
    calls: list[tuple[str, str | None]] = []
    resolve = registry.resolve

    def spy(name: str, version: str | None = None, caller: int | None = None) -> Served:
        calls.append((name, version))
        return resolve(name, version, caller)

    monkeypatch.setattr(registry, "resolve", spy)
    return calls


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/iris/infer", TENSOR),
        ("/v2/models/iris/versions/default/infer", TENSOR),
        ("/api/v1/predict", {"features": SETOSA}),
        ("/api/v1/models/iris/predict", {"rows": [SETOSA]}),
        ("/api/v1/models/iris/versions/default/predict", {"rows": [SETOSA]}),
    ],
)
async def test_a_prediction_request_resolves_its_version_once(
    ml_client: httpx.AsyncClient, resolved: list[tuple[str, str | None]], path: str, body: object
) -> None:
    headers = await login(ml_client, "routed-once@example.com")
    response = await ml_client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(resolved) == 1, resolved
    assert resolved[0][0] == "iris"
