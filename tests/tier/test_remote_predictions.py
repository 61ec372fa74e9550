"""Remote models give what in-process models give: through MLServer (a server no one here wrote)
and through this service's own model server, both real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from tests.faults.server import Server
from tests.serving.conftest import login
from tests.tier.conftest import (
    FOREST,
    client_for,
    own_server,
    remote_manifest,
    web_app,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MLSERVER_VERSION = "1.0.0"  # the forest's version on MLServer (tests/tier/conftest.py: start_mlserver)
ROWS = {
    "iris": load_iris().data[::3].tolist(),  # 50 rows
    "breast_cancer": load_breast_cancer().data[::5].tolist(),  # 114 rows
    "diabetes": load_diabetes().data[::7].tolist(),  # 64 rows
}


async def _predict(
    application: FastAPI, model: str, rows: list[list[float]], version: str | None = None
) -> list[dict[str, object]]:
    """The predictions of POST /api/v1/models/{model}/predict, or, given `version`, of
    /api/v1/models/{model}/versions/{version}/predict (whose answer must name that version)."""
    path = f"/api/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    async with client_for(application) as client:
        headers = await login(client, "tier@example.com")
        response = await client.post(f"{path}/predict", json={"rows": rows}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    if version is not None:
        assert body["version"] == version
    predictions: list[dict[str, object]] = body["predictions"]
    return predictions


def _assert_same(remote: list[dict[str, object]], local: list[dict[str, object]]) -> None:
    assert len(remote) == len(local)
    for got, want in zip(remote, local, strict=True):
        if want["probabilities"] is None:  # a regressor's value
            assert got["prediction"] == pytest.approx(want["prediction"], abs=1e-6)
            continue
        assert got["prediction"] == want["prediction"]  # labels exact
        assert isinstance(got["probabilities"], dict)
        assert isinstance(want["probabilities"], dict)
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-6)


async def test_the_forest_through_mlserver_equals_the_in_process_forest(
    local_app: FastAPI, mlserver: Server, database_url: str, tmp_path: Path
) -> None:
    # The entry names the version MLServer serves (start_mlserver: 1.0.0), so this service calls
    # /v2/models/breast_cancer/versions/1.0.0/infer there.
    remote = {
        "url": mlserver.base_url,
        "model": "breast_cancer",
        "version": MLSERVER_VERSION,
        "output": "predict_proba",
    }
    model_dir = remote_manifest(tmp_path / "models", {"breast_cancer": remote})
    [entry] = [
        m for m in json.loads((model_dir / "manifest.json").read_text())["models"] if m["name"] == FOREST
    ]
    version = entry["version"]
    local = await _predict(local_app, "breast_cancer", ROWS["breast_cancer"])
    async with web_app(database_url, model_dir, empty=False) as remote_app:
        remote_rows = await _predict(remote_app, "breast_cancer", ROWS["breast_cancer"])
        # The version named in this service's URL gives the same answers, and its answer names it.
        by_version = await _predict(remote_app, "breast_cancer", ROWS["breast_cancer"][:3], version=version)
        assert by_version == remote_rows[:3]
    _assert_same(remote_rows, local)
    assert {p["prediction"] for p in local} == {"malignant", "benign"}  # both classes are compared


async def test_every_model_through_the_model_server_equals_in_process(
    local_app: FastAPI, model_server: Server, database_url: str, tmp_path: Path
) -> None:
    url = model_server.base_url
    model_dir = remote_manifest(
        tmp_path / "models",
        {
            "iris": own_server(url, "iris"),
            "breast_cancer": own_server(url, "breast_cancer", version="1.0.0"),
            "diabetes": own_server(url, "diabetes", task="regression"),
        },
    )
    async with web_app(database_url, model_dir, empty=False) as remote_app:
        for model, rows in ROWS.items():
            _assert_same(await _predict(remote_app, model, rows), await _predict(local_app, model, rows))
        # The catalogue lists the remote models as the local ones, saying where they run.
        async with client_for(remote_app) as client:
            headers = await login(client, "tier@example.com")
            listed = await client.get("/api/v1/models", headers=headers)
            assert listed.status_code == 200, listed.text
            assert {(m["name"], m["executor"]) for m in listed.json()} == {
                ("iris", "remote"),
                ("breast_cancer", "remote"),
                ("diabetes", "remote"),
            }
            one = await client.get("/api/v1/models/iris", headers=headers)
            assert one.status_code == 200, one.text
