"""The model lifecycle without restarts (issue 14): versions side by side, aliases and canaries, the
fleet's desired state in the database that every process polls, and the Open Inference Protocol's
repository extension; all as a client sees them.

Each test starts an app on a copy of ml_models/ holding only iris, whose manifest also lists:

- iris 2.0.0: the same file as 1.0.0 under another version (loads and serves);
- iris 3.0.0: a copy of the file whose manifest sha256 is not the file's (refused on load);
- iris 4.0.0: the diabetes ONNX file declared with iris's four features (its load fails).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.http.state import state_of
from app.ml import converging as converging_module
from app.ml.runtimes.onnx import OnnxRuntime
from app.services.model_fleet import ModelFleet
from tests.conftest import PASSWORD, Headers, assert_problem
from tests.ml.conftest import (
    MODEL_DIR,
    MakeModelDir,
    make_model_dir,  # noqa: F401 - the fixture
    model_entry,
)
from tests.ops.conftest import running_app

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
BROKEN_HASH_FILE = "iris-3.0.0.onnx"
BAD_SHAPE_FILE = "iris-4.0.0.onnx"
MODELS = "/api/v1/models"
REPOSITORY = "/api/v1/model-repository"

App = tuple[FastAPI, httpx.AsyncClient]


# --- set-up --------------------------------------------------------------------------------------


def lifecycle_dir(make_model_dir: MakeModelDir, *, timeout_ms: int | None = None) -> Path:  # noqa: F811
    """ml_models/ with iris alone, listing versions 1.0.0 to 4.0.0 (see the module's docstring)."""

    def edit(manifest: dict[str, Any]) -> None:
        iris = model_entry(manifest, "iris")
        if timeout_ms is not None:
            iris["timeout_ms"] = timeout_ms
        v2 = {**copy.deepcopy(iris), "version": "2.0.0"}
        v3 = {
            **copy.deepcopy(iris),
            "version": "3.0.0",
            "file": BROKEN_HASH_FILE,
            "sha256": hashlib.sha256(b"not the file").hexdigest(),
        }
        diabetes_sha = hashlib.sha256((MODEL_DIR / "diabetes.onnx").read_bytes()).hexdigest()
        v4 = {**copy.deepcopy(iris), "version": "4.0.0", "file": BAD_SHAPE_FILE, "sha256": diabetes_sha}
        manifest["models"].extend([v2, v3, v4])

    target = make_model_dir(edit, only=("iris",))
    shutil.copyfile(target / "iris.onnx", target / BROKEN_HASH_FILE)
    shutil.copyfile(target / "diabetes.onnx", target / BAD_SHAPE_FILE)
    return target


@asynccontextmanager
async def lifecycle_app(database_url: str, model_dir: Path, **overrides: Any) -> AsyncIterator[App]:
    values: dict[str, Any] = {
        "ml_enabled": True,
        "ml_model_dir": model_dir,
        "rate_limit_enabled": False,
        "prediction_log_flush_ms": 20,
    }
    values.update(overrides)
    async with running_app(database_url, **values) as (app, client):
        yield app, client


@pytest.fixture
def model_dir(make_model_dir: MakeModelDir) -> Path:  # noqa: F811
    return lifecycle_dir(make_model_dir)


@pytest.fixture
async def served(database_url: str, model_dir: Path) -> AsyncIterator[App]:
    async with lifecycle_app(database_url, model_dir) as pair:
        yield pair


async def make_user(app: FastAPI, client: httpx.AsyncClient, email: str, *, admin: bool = False) -> Headers:
    response = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    if admin:
        async with state_of(app).resources.db.engine.begin() as conn:
            await conn.execute(
                text("UPDATE users SET is_admin = :yes WHERE email = :email"), {"yes": True, "email": email}
            )
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def id_of(client: httpx.AsyncClient, headers: Headers) -> int:
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response.json() if response.content else None


def assert_oip_error(response: httpx.Response, status: int) -> str:
    """The Open Inference Protocol's error shape, `{"error": "..."}`; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in response.text
    message: str = body["error"]
    return message


def problem_code(body: dict[str, Any]) -> str:
    return str(body["type"]).rsplit("/", 1)[-1]


async def load(client: httpx.AsyncClient, admin: Headers, version: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(await client.post(f"{REPOSITORY}/iris/versions/{version}/load", headers=admin))
    return body


async def oip_repository(
    client: httpx.AsyncClient, admin: Headers, action: str, version: str | None = None
) -> httpx.Response:
    """The protocol's repository extension: `action` (load, unload) of iris, `version` in its
    parameters (None: no body)."""
    body = {"parameters": {"version": version}} if version is not None else None
    return await client.post(f"/v2/repository/models/iris/{action}", json=body, headers=admin)


async def set_alias(
    client: httpx.AsyncClient, admin: Headers, alias: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.put(f"{MODELS}/iris/aliases/{alias}", json=body, headers=admin)


async def predict(client: httpx.AsyncClient, headers: Headers, ref: str | None = None) -> httpx.Response:
    path = f"{MODELS}/iris/predict" if ref is None else f"{MODELS}/iris/versions/{ref}/predict"
    return await client.post(path, json={"rows": [IRIS_ROW]}, headers=headers)


async def served_version(client: httpx.AsyncClient, headers: Headers, ref: str | None = None) -> str:
    body = ok(await predict(client, headers, ref))
    assert body["model"] == "iris"
    assert len(body["predictions"]) == 1
    return str(body["version"])


async def infer(client: httpx.AsyncClient, headers: Headers, version: str | None = None) -> httpx.Response:
    path = "/v2/models/iris/infer" if version is None else f"/v2/models/iris/versions/{version}/infer"
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}
    return await client.post(path, json={"inputs": [tensor]}, headers=headers)


async def repository(client: httpx.AsyncClient, admin: Headers) -> dict[str, Any]:
    body: dict[str, Any] = ok(await client.get(REPOSITORY, headers=admin))
    return body


def routes(info: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """A ModelInfo's aliases as {alias: [(version, weight)]}."""
    return {name: [(s["version"], s["weight"]) for s in splits] for name, splits in info["aliases"].items()}


def alias_targets(aliases: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    """AliasPublic rows as {alias: [(version, weight)]}."""
    return {a["name"]: [(s["version"], s["weight"]) for s in a["splits"]] for a in aliases}


def here(state: dict[str, Any]) -> dict[str, str]:
    return {f"{v['name']}@{v['version']}": v["state"] for v in state["here"]}


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll `check` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {seconds} s")


# --- the fresh state -----------------------------------------------------------------------------


async def test_a_fresh_deployment_serves_the_first_listed_version_as_default(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)

    state = await repository(client, admin)
    assert state["revision"] == 0
    assert state["changed_by"] is None
    assert state["changed_at"] is None
    assert state["loaded"] == [{"name": "iris", "version": "1.0.0"}]
    [default] = state["aliases"]
    assert default["model"] == "iris"
    assert default["name"] == "default"
    assert default["splits"] == [{"version": "1.0.0", "weight": 100}]
    assert default["sticky"] is False
    assert default["changed_by"] is None
    assert state["here_revision"] == 0
    assert state["history"] == []
    assert here(state) == {
        "iris@1.0.0": "READY",
        "iris@2.0.0": "UNAVAILABLE",
        "iris@3.0.0": "UNAVAILABLE",
        "iris@4.0.0": "UNAVAILABLE",
    }

    [info] = ok(await client.get(MODELS, headers=admin))
    assert info["name"] == "iris"
    assert info["version"] == "1.0.0"
    assert info["versions"] == ["1.0.0"]
    assert routes(info) == {"default": [("1.0.0", 100)]}
    assert routes(ok(await client.get(f"{MODELS}/iris", headers=admin))) == {"default": [("1.0.0", 100)]}

    aliases = ok(await client.get(f"{MODELS}/iris/aliases", headers=admin))
    assert alias_targets(aliases) == {"default": [("1.0.0", 100)]}

    assert await served_version(client, admin) == "1.0.0"
    assert await served_version(client, admin, "default") == "1.0.0"
    readiness = ok(await client.get("/readyz"))
    assert readiness["model_versions"] == {"iris": ["1.0.0"]}
    assert readiness["model_state_revision"] == 0


# --- versions side by side -----------------------------------------------------------------------


@pytest.mark.parametrize("via", ["api", "oip"])
async def test_a_loaded_version_is_served_side_by_side(served: App, via: str) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    admin_id = await id_of(client, admin)

    if via == "api":
        state = await load(client, admin, "2.0.0")
        assert state["revision"] == 1
        assert state["changed_by"] == admin_id
        assert {"name": "iris", "version": "2.0.0"} in state["loaded"]
        assert here(state)["iris@2.0.0"] == "READY"
        assert state["here_revision"] == 1
        [change] = state["history"]
        assert change["revision"] == 1
        assert change["changed_by"] == admin_id
        assert "2.0.0" in change["action"]
    else:
        answer = ok(await oip_repository(client, admin, "load", "2.0.0"))
        assert answer == {"name": "iris", "version": "2.0.0", "revision": 1}
        state = await repository(client, admin)
        assert state["revision"] == 1
        assert here(state)["iris@2.0.0"] == "READY"

    # Loading routes nothing to the new version: the default alias still names 1.0.0.
    assert alias_targets(state["aliases"]) == {"default": [("1.0.0", 100)]}

    assert await served_version(client, admin, "2.0.0") == "2.0.0"
    assert await served_version(client, admin, "1.0.0") == "1.0.0"
    assert await served_version(client, admin) == "1.0.0"
    direct = ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
    assert direct["version"] == "1.0.0"

    for version in ("1.0.0", "2.0.0"):
        answer = ok(await infer(client, admin, version))
        assert answer["model_name"] == "iris"
        assert answer["model_version"] == version
        assert [o["name"] for o in answer["outputs"]] == ["label", "probabilities"]
        assert answer["outputs"][0]["data"] == ["setosa"]
    assert ok(await infer(client, admin))["model_version"] == "1.0.0"
    for version in ("1.0.0", "2.0.0"):
        ready = ok(await client.get(f"/v2/models/iris/versions/{version}/ready", headers=admin))
        assert ready == {"name": "iris", "ready": True}
    assert_oip_error(await client.get("/v2/models/iris/versions/3.0.0/ready", headers=admin), 404)

    [info] = ok(await client.get(MODELS, headers=admin))
    assert info["version"] == "1.0.0"
    assert info["versions"] == ["1.0.0", "2.0.0"]
    assert routes(info) == {"default": [("1.0.0", 100)]}
    metadata = ok(await client.get("/v2/models/iris", headers=admin))
    assert metadata["versions"] == ["1.0.0", "2.0.0"]
    readiness = ok(await client.get("/readyz"))
    assert readiness["model_versions"] == {"iris": ["1.0.0", "2.0.0"]}
    assert readiness["model_state_revision"] == 1

    index = ok(await client.post("/v2/repository/index", headers=admin))
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert states[("iris", "1.0.0")] == states[("iris", "2.0.0")] == "READY"


async def test_an_alias_names_the_version_it_points_at(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    user = await make_user(app, client, "user@example.com")
    admin_id = await id_of(client, admin)
    await load(client, admin, "2.0.0")

    alias = ok(await set_alias(client, admin, "production", {"version": "2.0.0"}))
    assert alias["model"] == "iris"
    assert alias["name"] == "production"
    assert alias["splits"] == [{"version": "2.0.0", "weight": 100}]
    assert alias["sticky"] is False
    assert alias["changed_by"] == admin_id
    assert alias["changed_at"] is not None

    assert await served_version(client, user, "production") == "2.0.0"
    assert ok(await infer(client, user, "production"))["model_version"] == "2.0.0"
    assert await served_version(client, user) == "1.0.0"  # the default alias did not move
    version_metadata = ok(await client.get("/v2/models/iris/versions/production", headers=user))
    assert version_metadata["name"] == "iris"

    # Reading the aliases needs models:read, not admin.
    listed = ok(await client.get(f"{MODELS}/iris/aliases", headers=user))
    by_name = {a["name"]: a for a in listed}
    assert set(by_name) == {"default", "production"}
    assert by_name["production"]["splits"] == [{"version": "2.0.0", "weight": 100}]

    [info] = ok(await client.get(MODELS, headers=user))
    assert routes(info) == {"default": [("1.0.0", 100)], "production": [("2.0.0", 100)]}

    # Which admin pointed each alias is in the state admins read.
    state = await repository(client, admin)
    authors = {a["name"]: a["changed_by"] for a in state["aliases"]}
    assert authors == {"default": None, "production": admin_id}
    assert state["revision"] == 2
    assert [c["revision"] for c in state["history"]] == [2, 1]  # newest first
    assert "production" in state["history"][0]["action"]

    # Setting the same target again changes nothing (no new revision).
    ok(await set_alias(client, admin, "production", {"version": "2.0.0"}))
    assert (await repository(client, admin))["revision"] == 2

    # Moving the default moves the requests that name no version.
    ok(await set_alias(client, admin, "default", {"version": "2.0.0"}))
    assert await served_version(client, user) == "2.0.0"
    direct = ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=user))
    assert direct["version"] == "2.0.0"
    assert ok(await infer(client, user))["model_version"] == "2.0.0"
    [info] = ok(await client.get(MODELS, headers=user))
    assert info["version"] == "2.0.0"

    # Removing an alias: it no longer routes.
    assert (await client.delete(f"{MODELS}/iris/aliases/production", headers=admin)).status_code == 204
    assert alias_targets(ok(await client.get(f"{MODELS}/iris/aliases", headers=user))) == {
        "default": [("2.0.0", 100)]
    }
    body = assert_problem(await predict(client, user, "production"), 404)
    assert "production" in body["detail"]


# --- canaries ------------------------------------------------------------------------------------


async def test_a_split_sends_about_its_share_to_the_canary(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    split = {"split": [{"version": "1.0.0", "weight": 90}, {"version": "2.0.0", "weight": 10}]}
    alias = ok(await set_alias(client, admin, "default", split))
    assert alias["splits"] == split["split"]
    assert alias["sticky"] is False
    [info] = ok(await client.get(MODELS, headers=admin))
    assert routes(info) == {"default": [("1.0.0", 90), ("2.0.0", 10)]}
    assert info["version"] == "1.0.0"  # the larger share

    seen: Counter[str] = Counter()
    total = 1000
    for _ in range(total // 50):
        answers = await asyncio.gather(*(predict(client, admin) for _ in range(50)))
        seen.update(ok(a)["version"] for a in answers)
    assert set(seen) == {"1.0.0", "2.0.0"}
    # Binomial(1000, 0.1): mean 100, sd 9.5; 50..150 is beyond five sd either way.
    assert 50 <= seen["2.0.0"] <= 150, seen


async def test_a_sticky_split_keeps_each_user_on_one_version(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    split = {
        "split": [{"version": "1.0.0", "weight": 50}, {"version": "2.0.0", "weight": 50}],
        "sticky": True,
    }
    alias = ok(await set_alias(client, admin, "canary", split))
    assert alias["sticky"] is True

    users = [await make_user(app, client, f"user{i}@example.com") for i in range(16)]
    versions_of: list[set[str]] = []
    for n, user in enumerate(users):
        count = 50 if n == 0 else 10
        answers = await asyncio.gather(*(predict(client, user, "canary") for _ in range(count)))
        versions_of.append({ok(a)["version"] for a in answers})
    assert versions_of[0] in ({"1.0.0"}, {"2.0.0"})  # 50 requests, one version
    assert all(len(v) == 1 for v in versions_of), versions_of
    assert set().union(*versions_of) == {"1.0.0", "2.0.0"}, "the users did not spread"
    # The OIP route follows the same stickiness.
    (first,) = versions_of[0]
    for _ in range(5):
        assert ok(await infer(client, users[0], "canary"))["model_version"] == first


async def test_the_prediction_record_names_the_version_that_served(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(await set_alias(client, admin, "production", {"version": "2.0.0"}))
    assert await served_version(client, admin, "production") == "2.0.0"
    assert await served_version(client, admin) == "1.0.0"
    assert ok(await infer(client, admin, "2.0.0"))["model_version"] == "2.0.0"

    async def records() -> list[dict[str, Any]]:
        body = ok(await client.get("/api/v1/predictions", headers=admin))
        items: list[dict[str, Any]] = body["items"]
        return items

    async def written() -> bool:
        return len(await records()) >= 3

    await eventually(written, 5.0, "three prediction records")
    items = await records()
    assert sorted((r["model"], r["version"], r["outcome"]) for r in items) == [
        ("iris", "1.0.0", "ok"),
        ("iris", "2.0.0", "ok"),
        ("iris", "2.0.0", "ok"),
    ]
    # Newest first: the OIP call on 2.0.0, then the default (1.0.0), then production (2.0.0).
    assert [r["version"] for r in items] == ["2.0.0", "1.0.0", "2.0.0"]


# --- refusals ------------------------------------------------------------------------------------


async def test_unknown_versions_and_aliases_are_404(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)

    for ref in ("9.9.9", "staging", "2.0.0"):  # 2.0.0 is in the manifest, not loaded
        body = assert_problem(await predict(client, admin, ref), 404)
        assert ref in body["detail"]
        assert "iris" in body["detail"]
        assert ref in assert_oip_error(await infer(client, admin, ref), 404)
    assert_problem(
        await client.post(f"{MODELS}/nope/versions/1.0.0/predict", json={"rows": [IRIS_ROW]}, headers=admin),
        404,
    )

    body = assert_problem(await set_alias(client, admin, "production", {"version": "9.9.9"}), 404)
    assert "9.9.9" in body["detail"]
    body = assert_problem(
        await client.put(f"{MODELS}/nope/aliases/production", json={"version": "1.0.0"}, headers=admin), 404
    )
    assert "nope" in body["detail"]
    body = assert_problem(await client.post(f"{REPOSITORY}/iris/versions/9.9.9/load", headers=admin), 404)
    assert "9.9.9" in body["detail"]
    assert_problem(await client.post(f"{REPOSITORY}/nope/versions/1.0.0/load", headers=admin), 404)
    assert_problem(await client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin), 404)
    assert_problem(await client.get(f"{MODELS}/nope/aliases", headers=admin), 404)
    body = assert_problem(await client.delete(f"{MODELS}/iris/aliases/staging", headers=admin), 404)
    assert "staging" in body["detail"]
    message = assert_oip_error(await oip_repository(client, admin, "load", "9.9.9"), 404)
    assert "9.9.9" in message

    state = await repository(client, admin)
    assert state["revision"] == 0
    assert state["history"] == []


async def test_an_alias_to_a_version_not_loaded_is_refused_and_routes_stay(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)

    body = assert_problem(await set_alias(client, admin, "production", {"version": "2.0.0"}), 409)
    assert problem_code(body) == "model-state-conflict"
    assert "2.0.0" in body["detail"]
    split = {"split": [{"version": "1.0.0", "weight": 90}, {"version": "2.0.0", "weight": 10}]}
    body = assert_problem(await set_alias(client, admin, "default", split), 409)
    assert "2.0.0" in body["detail"]

    state = await repository(client, admin)
    assert state["revision"] == 0
    assert alias_targets(state["aliases"]) == {"default": [("1.0.0", 100)]}
    [info] = ok(await client.get(MODELS, headers=admin))
    assert routes(info) == {"default": [("1.0.0", 100)]}
    assert_problem(await predict(client, admin, "production"), 404)
    seen = {await served_version(client, admin) for _ in range(20)}
    assert seen == {"1.0.0"}


async def test_invalid_alias_bodies_are_422_naming_the_field(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")

    short = {"split": [{"version": "1.0.0", "weight": 90}, {"version": "2.0.0", "weight": 5}]}
    body = assert_problem(await set_alias(client, admin, "default", short), 422)
    assert problem_code(body) == "validation-error"
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert "split" in fields, body
    assert "95" in fields["split"]
    assert "100" in fields["split"]

    both = {
        "version": "2.0.0",
        "split": [{"version": "1.0.0", "weight": 50}, {"version": "2.0.0", "weight": 50}],
    }
    body = assert_problem(await set_alias(client, admin, "default", both), 422)
    messages = " ".join(e["message"] for e in body["errors"])
    assert "version" in messages
    assert "split" in messages
    body = assert_problem(await set_alias(client, admin, "default", {}), 422)
    assert "split" in " ".join(e["message"] for e in body["errors"])

    twice = {"split": [{"version": "2.0.0", "weight": 50}, {"version": "2.0.0", "weight": 50}]}
    body = assert_problem(await set_alias(client, admin, "default", twice), 422)
    assert "split" in {e["field"] for e in body["errors"]}
    assert_problem(await set_alias(client, admin, "Not An Alias", {"version": "2.0.0"}), 422)
    assert_problem(await set_alias(client, admin, "1.0.0", {"version": "2.0.0"}), 422)

    state = await repository(client, admin)
    assert state["revision"] == 1  # the load only
    assert alias_targets(state["aliases"]) == {"default": [("1.0.0", 100)]}


async def test_a_version_whose_hash_does_not_match_is_refused_and_nothing_changes(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(await set_alias(client, admin, "production", {"version": "2.0.0"}))
    before = await repository(client, admin)

    response = await client.post(f"{REPOSITORY}/iris/versions/3.0.0/load", headers=admin)
    body = assert_problem(response, 409)
    assert problem_code(body) == "model-load-failed"
    assert BROKEN_HASH_FILE in body["detail"]
    assert "sha256" in body["detail"]
    message = assert_oip_error(await oip_repository(client, admin, "load", "3.0.0"), 409)
    assert BROKEN_HASH_FILE in message

    after = await repository(client, admin)
    assert after["revision"] == before["revision"] == 2
    assert after["loaded"] == before["loaded"]
    assert after["aliases"] == before["aliases"]
    assert after["history"] == before["history"]
    assert here(after)["iris@3.0.0"] == "UNAVAILABLE"
    assert await served_version(client, admin) == "1.0.0"
    assert await served_version(client, admin, "production") == "2.0.0"
    assert_problem(await predict(client, admin, "3.0.0"), 404)
    body = assert_problem(await set_alias(client, admin, "production", {"version": "3.0.0"}), 409)
    assert "3.0.0" in body["detail"]
    assert await served_version(client, admin, "production") == "2.0.0"
    [info] = ok(await client.get(MODELS, headers=admin))
    assert info["versions"] == ["1.0.0", "2.0.0"]


async def test_a_version_that_cannot_load_is_refused_and_stays_unroutable(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)

    body = assert_problem(await client.post(f"{REPOSITORY}/iris/versions/4.0.0/load", headers=admin), 409)
    assert problem_code(body) == "model-load-failed"
    assert BAD_SHAPE_FILE in body["detail"]
    assert "features" in body["detail"]  # the model takes 10, the manifest lists 4
    message = assert_oip_error(await oip_repository(client, admin, "load", "4.0.0"), 409)
    assert BAD_SHAPE_FILE in message

    state = await repository(client, admin)
    assert state["revision"] == 0
    assert state["loaded"] == [{"name": "iris", "version": "1.0.0"}]
    assert here(state)["iris@4.0.0"] == "UNAVAILABLE"
    assert_problem(await predict(client, admin, "4.0.0"), 404)
    assert_oip_error(await infer(client, admin, "4.0.0"), 404)
    assert_problem(await set_alias(client, admin, "production", {"version": "4.0.0"}), 409)
    assert await served_version(client, admin) == "1.0.0"
    assert ok(await client.get("/readyz"))["model_versions"] == {"iris": ["1.0.0"]}


async def test_routed_versions_and_the_default_alias_cannot_be_removed(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(await set_alias(client, admin, "production", {"version": "2.0.0"}))

    body = assert_problem(await client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin), 409)
    assert problem_code(body) == "model-state-conflict"
    assert "production" in body["detail"]
    body = assert_problem(await client.post(f"{REPOSITORY}/iris/versions/1.0.0/unload", headers=admin), 409)
    assert "default" in body["detail"]
    message = assert_oip_error(await oip_repository(client, admin, "unload", "2.0.0"), 409)
    assert "production" in message
    # The whole model serves /api/v1/predict: refused.
    assert_oip_error(await oip_repository(client, admin, "unload"), 409)

    body = assert_problem(await client.delete(f"{MODELS}/iris/aliases/default", headers=admin), 409)
    assert "default" in body["detail"]

    state = await repository(client, admin)
    assert state["revision"] == 2
    assert alias_targets(state["aliases"]) == {"default": [("1.0.0", 100)], "production": [("2.0.0", 100)]}
    assert await served_version(client, admin, "production") == "2.0.0"
    assert await served_version(client, admin) == "1.0.0"

    # Once nothing routes to it, it unloads; then it is gone from routes and from the index.
    assert (await client.delete(f"{MODELS}/iris/aliases/production", headers=admin)).status_code == 204
    state = ok(await client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin))
    assert state["revision"] == 4
    assert state["loaded"] == [{"name": "iris", "version": "1.0.0"}]
    assert here(state)["iris@2.0.0"] == "UNAVAILABLE"
    assert_problem(await predict(client, admin, "2.0.0"), 404)
    [info] = ok(await client.get(MODELS, headers=admin))
    assert info["versions"] == ["1.0.0"]


async def test_only_admins_change_the_state(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    user = await make_user(app, client, "user@example.com")
    scopes = ["predict", "models:read", "predictions:read", "items:read", "items:write"]
    made = ok(
        await client.post("/api/v1/api-keys", json={"name": "no admin", "scopes": scopes}, headers=admin), 201
    )
    plain_key = {"Authorization": f"Bearer {made['key']}"}
    made = ok(
        await client.post("/api/v1/api-keys", json={"name": "admin", "scopes": ["admin"]}, headers=admin), 201
    )
    admin_key = {"Authorization": f"Bearer {made['key']}"}

    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", REPOSITORY, None),
        ("POST", f"{REPOSITORY}/iris/versions/2.0.0/load", None),
        ("POST", f"{REPOSITORY}/iris/versions/1.0.0/unload", None),
        ("PUT", f"{MODELS}/iris/aliases/production", {"version": "1.0.0"}),
        ("DELETE", f"{MODELS}/iris/aliases/production", None),
    ]
    oip_calls: list[tuple[str, dict[str, Any] | None]] = [
        ("/v2/repository/index", None),
        ("/v2/repository/models/iris/load", {"parameters": {"version": "2.0.0"}}),
        ("/v2/repository/models/iris/unload", {"parameters": {"version": "1.0.0"}}),
    ]
    for headers, code in ((user, "forbidden"), (plain_key, "insufficient-scope")):
        for method, path, body in calls:
            problem = assert_problem(await client.request(method, path, json=body, headers=headers), 403)
            assert problem_code(problem) == code, (method, path, problem)
        for path, body in oip_calls:
            assert_oip_error(await client.post(path, json=body, headers=headers), 403)
    for method, path, body in calls[:1]:
        assert_problem(await client.request(method, path, json=body), 401)

    # Nothing changed; reading the aliases is for any reader, predicting for any predictor.
    assert (await repository(client, admin))["revision"] == 0
    assert alias_targets(ok(await client.get(f"{MODELS}/iris/aliases", headers=user))) == {
        "default": [("1.0.0", 100)]
    }
    assert alias_targets(ok(await client.get(f"{MODELS}/iris/aliases", headers=plain_key))) == {
        "default": [("1.0.0", 100)]
    }
    assert await served_version(client, plain_key, "1.0.0") == "1.0.0"

    # An admin's key with the admin scope may.
    assert (await load(client, admin_key, "2.0.0"))["changed_by"] == await id_of(client, admin)
    ok(await set_alias(client, admin_key, "production", {"version": "2.0.0"}))
    assert await served_version(client, plain_key, "production") == "2.0.0"


async def test_the_repository_index_lists_every_version_with_its_state(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    assert_problem(await client.post(f"{REPOSITORY}/iris/versions/4.0.0/load", headers=admin), 409)

    index = ok(await client.post("/v2/repository/index", headers=admin))
    assert {(m["name"], m["version"]): m["state"] for m in index} == {
        ("iris", "1.0.0"): "READY",
        ("iris", "2.0.0"): "READY",
        ("iris", "3.0.0"): "UNAVAILABLE",
        ("iris", "4.0.0"): "UNAVAILABLE",
    }
    assert all(set(m) == {"name", "version", "state", "reason"} for m in index)
    assert all(m["reason"] for m in index if m["state"] == "UNAVAILABLE")
    assert all(m["reason"] == "" for m in index if m["state"] == "READY")
    assert ok(await client.post("/v2/repository/index", json={}, headers=admin)) == index

    ready = ok(await client.post("/v2/repository/index", json={"ready": True}, headers=admin))
    assert sorted(m["version"] for m in ready) == ["1.0.0", "2.0.0"]
    # The protocol's `ready: false` filters nothing (Triton, KServe): every version, as with no body.
    assert ok(await client.post("/v2/repository/index", json={"ready": False}, headers=admin)) == index

    answer = ok(await oip_repository(client, admin, "unload", "2.0.0"))
    assert answer == {"name": "iris", "version": "2.0.0", "revision": 2}
    ready = ok(await client.post("/v2/repository/index", json={"ready": True}, headers=admin))
    assert [m["version"] for m in ready] == ["1.0.0"]


# --- several admins, several processes -----------------------------------------------------------


def _targets(count: int) -> list[dict[str, Any]]:
    """`count` distinct alias targets (splits of 1.0.0 / 2.0.0)."""
    return [
        {"split": [{"version": "1.0.0", "weight": 5 + 9 * i}, {"version": "2.0.0", "weight": 95 - 9 * i}]}
        for i in range(count)
    ]


async def test_concurrent_alias_changes_apply_one_revision_at_a_time(
    database_url: str, model_dir: Path
) -> None:
    async with (
        lifecycle_app(database_url, model_dir) as (app_a, client_a),
        lifecycle_app(database_url, model_dir) as (app_b, client_b),
    ):
        admin_a = await make_user(app_a, client_a, "admin-a@example.com", admin=True)
        admin_b = await make_user(app_b, client_b, "admin-b@example.com", admin=True)
        # Both load 2.0.0 at once: one change stored, the other finds it done.
        loads = await asyncio.gather(
            client_a.post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=admin_a),
            client_b.post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=admin_b),
        )
        assert [ok(answer)["revision"] for answer in loads] == [1, 1]
        targets = _targets(10)
        calls = [
            set_alias(client_a, admin_a, "production", t)
            if i % 2 == 0
            else set_alias(client_b, admin_b, "production", t)
            for i, t in enumerate(targets)
        ]
        answers = await asyncio.gather(*calls)

        applied = []
        for target, answer in zip(targets, answers, strict=True):
            if answer.status_code == 409:
                body = assert_problem(answer, 409)
                assert problem_code(body) == "model-state-contended", body
            else:
                alias = ok(answer)
                assert alias["splits"] == target["split"]
                applied.append(target["split"])
        assert applied, "no change applied"

        state = await repository(client_a, admin_a)
        final = next(a for a in state["aliases"] if a["name"] == "production")
        assert final["splits"] in applied
        # One revision for the load, one per change applied; consecutive, one history row each.
        assert state["revision"] == 1 + len(applied)
        history = ok(await client_a.get(REPOSITORY, headers=admin_a))["history"]
        revisions = sorted(c["revision"] for c in history)
        assert revisions == list(range(1, state["revision"] + 1))
        assert sum("production" in c["action"] for c in history) == len(applied)
        # Both processes end up routing the final state.
        assert ok(await client_b.get(REPOSITORY, headers=admin_b))["revision"] == state["revision"]


async def test_another_process_converges_by_polling(database_url: str, model_dir: Path) -> None:
    # Nothing tells the second app of a change: it finds it by polling the state's revision. How
    # fast is measured by make bench (bench/bench_swap.py); here it is waited for, 60 s at most.
    async with (
        lifecycle_app(database_url, model_dir) as (app_a, client_a),
        lifecycle_app(database_url, model_dir, model_state_poll_seconds=0.2) as (_, client_b),
    ):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        assert ok(await client_b.get("/readyz"))["model_versions"] == {"iris": ["1.0.0"]}

        await load(client_a, admin, "2.0.0")
        ok(await set_alias(client_a, admin, "production", {"version": "2.0.0"}))

        async def converged() -> bool:
            readiness = ok(await client_b.get("/readyz"))
            return bool(
                readiness["model_versions"] == {"iris": ["1.0.0", "2.0.0"]}
                and readiness["model_state_revision"] == 2
            )

        await eventually(converged, 60.0, "the second app loading 2.0.0")
        assert await served_version(client_b, admin, "production") == "2.0.0"
        state_b = await repository(client_b, admin)
        assert state_b["revision"] == state_b["here_revision"] == 2
        assert here(state_b)["iris@2.0.0"] == "READY"
        assert await served_version(client_b, admin, "2.0.0") == "2.0.0"
        [info] = ok(await client_b.get(MODELS, headers=admin))
        assert routes(info) == {"default": [("1.0.0", 100)], "production": [("2.0.0", 100)]}

        # And unloading: the alias moved back first, then 2.0.0 goes everywhere.
        ok(await set_alias(client_a, admin, "production", {"version": "1.0.0"}))
        ok(await client_a.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin))

        async def unloaded() -> bool:
            readiness = ok(await client_b.get("/readyz"))
            return bool(
                readiness["model_versions"] == {"iris": ["1.0.0"]} and readiness["model_state_revision"] == 4
            )

        await eventually(unloaded, 60.0, "the second app unloading 2.0.0")
        assert await served_version(client_b, admin, "production") == "1.0.0"
        assert_problem(await predict(client_b, admin, "2.0.0"), 404)


async def test_a_process_started_later_serves_the_stored_state(database_url: str, model_dir: Path) -> None:
    async with lifecycle_app(database_url, model_dir) as (app_a, client_a):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        await load(client_a, admin, "2.0.0")
        split = {"split": [{"version": "1.0.0", "weight": 80}, {"version": "2.0.0", "weight": 20}]}
        ok(await set_alias(client_a, admin, "default", split))
        ok(await set_alias(client_a, admin, "production", {"version": "2.0.0"}))

        async with lifecycle_app(database_url, model_dir) as (_, client_c):
            readiness = ok(await client_c.get("/readyz"))
            assert readiness["model_versions"] == {"iris": ["1.0.0", "2.0.0"]}
            assert readiness["model_state_revision"] == 3
            assert await served_version(client_c, admin, "production") == "2.0.0"
            [info] = ok(await client_c.get(MODELS, headers=admin))
            assert routes(info) == {"default": [("1.0.0", 80), ("2.0.0", 20)], "production": [("2.0.0", 100)]}


# --- unloading drains ----------------------------------------------------------------------------


async def test_unloading_lets_an_in_flight_request_finish(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A time limit long enough for the request to be held while the version is unloaded.
    model_dir = lifecycle_dir(make_model_dir, timeout_ms=10_000)
    held = asyncio.Event()
    release = asyncio.Event()
    original = OnnxRuntime.run

    async def held_run(self: OnnxRuntime, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        if self.spec.version == "1.0.0" and not release.is_set() and held_armed:
            held.set()
            await release.wait()
        return await original(self, x, hard_timeout_s)

    held_armed = False
    monkeypatch.setattr(OnnxRuntime, "run", held_run)
    async with lifecycle_app(database_url, model_dir) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        await load(client, admin, "2.0.0")

        held_armed = True
        in_flight = asyncio.create_task(predict(client, admin, "1.0.0"))
        await asyncio.wait_for(held.wait(), 60)
        ok(await set_alias(client, admin, "default", {"version": "2.0.0"}))
        unloading = asyncio.create_task(
            client.post(f"{REPOSITORY}/iris/versions/1.0.0/unload", headers=admin)
        )

        async def draining() -> bool:
            return bool(ok(await client.get("/readyz"))["model_versions"] == {"iris": ["2.0.0"]})

        # The version left every route at once: a new request for it is a 404 while the one it
        # holds still runs (and the unload waits for it).
        await eventually(draining, 60.0, "1.0.0 out of the routes")
        body = assert_problem(await predict(client, admin, "1.0.0"), 404)
        assert "1.0.0" in body["detail"]
        assert "1.0.0" in assert_oip_error(await infer(client, admin, "1.0.0"), 404)
        assert not in_flight.done()
        assert not unloading.done()
        # Meanwhile new requests follow the default alias to 2.0.0.
        assert await served_version(client, admin) == "2.0.0"
        release.set()

        answer = ok(await asyncio.wait_for(in_flight, 60))
        assert answer["version"] == "1.0.0"
        assert len(answer["predictions"]) == 1
        state = ok(await asyncio.wait_for(unloading, 60))
        assert state["loaded"] == [{"name": "iris", "version": "2.0.0"}]
        assert here(state)["iris@1.0.0"] == "UNAVAILABLE"
        assert_problem(await predict(client, admin, "1.0.0"), 404)
        assert await served_version(client, admin) == "2.0.0"
        assert ok(await client.get("/readyz"))["model_versions"] == {"iris": ["2.0.0"]}


# --- the lifecycle's limits (docs/models.md) ------------------------------------------------------


def versions_dir(make_model_dir: MakeModelDir, versions: tuple[str, ...]) -> Path:  # noqa: F811
    """ml_models/ with iris alone, listing `versions` in that order, each the bundled iris file."""

    def edit(manifest: dict[str, Any]) -> None:
        iris = model_entry(manifest, "iris")
        manifest["models"] = [{**copy.deepcopy(iris), "version": v} for v in versions]

    return make_model_dir(edit, only=("iris",))


async def test_a_split_routes_to_at_most_4_versions(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
) -> None:
    versions = ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0")
    async with lifecycle_app(database_url, versions_dir(make_model_dir, versions)) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        for version in versions[1:]:
            await load(client, admin, version)

        four = {"split": [{"version": v, "weight": 25} for v in versions[:4]]}
        alias = ok(await set_alias(client, admin, "default", four))
        assert [s["version"] for s in alias["splits"]] == list(versions[:4])

        five = {"split": [{"version": v, "weight": 20} for v in versions]}
        body = assert_problem(await set_alias(client, admin, "default", five), 422)
        fields = {e["field"]: e["message"] for e in body["errors"]}
        assert "split" in fields, body
        assert "4" in fields["split"]
        # Refused with nothing changed: every version is loaded, only the count is wrong.
        [info] = ok(await client.get(MODELS, headers=admin))
        assert routes(info)["default"] == [(v, 25) for v in versions[:4]]
        assert (await repository(client, admin))["revision"] == 5  # four loads, one alias


async def test_an_alias_cannot_take_the_name_of_one_of_the_models_versions(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
) -> None:
    # `v2` fits both the version and the alias rules, so the name itself is what is refused.
    model_dir = versions_dir(make_model_dir, ("1.0.0", "v2", "v3"))
    async with lifecycle_app(database_url, model_dir) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        await load(client, admin, "v2")
        # Named like a loaded version, and like one the manifest lists but nothing loaded.
        for name, target in (("v2", "1.0.0"), ("v3", "v2"), ("v2", "v2")):
            body = assert_problem(await set_alias(client, admin, name, {"version": target}), 409)
            assert problem_code(body) == "model-state-conflict"
            assert repr(name) in body["detail"]
            assert "version" in body["detail"]
        # Nothing changed: `v2` still names the version, not an alias.
        state = await repository(client, admin)
        assert state["revision"] == 1
        assert alias_targets(state["aliases"]) == {"default": [("1.0.0", 100)]}
        assert await served_version(client, admin, "v2") == "v2"
        assert await served_version(client, admin, "1.0.0") == "1.0.0"


async def test_the_history_lists_the_last_20_changes_newest_first(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    for i in range(21):  # 22 changes in all
        ok(await set_alias(client, admin, "production", {"version": ("1.0.0", "2.0.0")[i % 2]}))

    state = await repository(client, admin)
    assert state["revision"] == 22
    history = state["history"]
    assert [c["revision"] for c in history] == list(range(22, 2, -1))
    assert history[0]["action"] == "alias iris/production -> 1.0.0:100"
    assert history[-1]["action"] == "alias iris/production -> 2.0.0:100"  # revision 3
    admin_id = await id_of(client, admin)
    assert all(c["changed_by"] == admin_id for c in history)


async def test_a_load_naming_no_version_loads_the_newest_the_manifest_lists(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
) -> None:
    model_dir = versions_dir(make_model_dir, ("1.0.0", "2.0.0", "3.0.0"))
    async with lifecycle_app(database_url, model_dir) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        bodies: tuple[dict[str, Any] | None, ...] = (None, {}, {"parameters": {}})
        for body in bodies:
            answer = ok(await client.post("/v2/repository/models/iris/load", json=body, headers=admin))
            assert answer["name"] == "iris"
            assert answer["version"] == "3.0.0"
        state = await repository(client, admin)
        assert state["loaded"] == [{"name": "iris", "version": "1.0.0"}, {"name": "iris", "version": "3.0.0"}]
        assert state["revision"] == 1  # loading a loaded version changes nothing
        assert [c["action"] for c in state["history"]] == ["load iris@3.0.0"]
        assert await served_version(client, admin, "3.0.0") == "3.0.0"
        assert await served_version(client, admin) == "1.0.0"  # routed to by nothing yet


class StoppedClock:
    """app.ml.converging's `time`, its monotonic clock moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return self.now


async def test_a_version_that_failed_to_load_here_is_tried_again_after_10_s(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # App A has 2.0.0's file; app B's manifest lists it under a file B does not have yet (a
    # replica whose copy is late), so B's load of it fails, until the file arrives.
    dir_a = versions_dir(make_model_dir, ("1.0.0", "2.0.0"))
    dir_b = dir_a.parent / "models-b"
    shutil.copytree(dir_a, dir_b)
    manifest_b = json.loads((dir_b / "manifest.json").read_text())
    manifest_b["models"][1]["file"] = "iris-2.0.0.onnx"
    (dir_b / "manifest.json").write_text(json.dumps(manifest_b))
    clock = StoppedClock()
    monkeypatch.setattr(converging_module, "time", clock)
    async with (
        lifecycle_app(database_url, dir_a) as (app_a, client_a),
        # B converges only when this test calls its poll's step (`sync`), never by itself here.
        lifecycle_app(database_url, dir_b, model_state_poll_seconds=60) as (app_b, client_b),
    ):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        fleet_b = state_of(app_b).resources.fleet
        await load(client_a, admin, "2.0.0")

        await fleet_b.sync()
        state_b = await repository(client_b, admin)
        assert state_b["here_revision"] == 1
        [failed] = [v for v in state_b["here"] if v["version"] == "2.0.0"]
        assert failed["state"] == "UNAVAILABLE"
        assert "iris-2.0.0.onnx" in failed["reason"]
        # The fleet loads it, this process cannot serve it yet: a 503 (retry), not a 404, that says
        # which version, why, and when it is tried again (it said "Models are not ready yet.").
        refused = await predict(client_b, admin, "2.0.0")
        detail = assert_problem(refused, 503)["detail"]
        assert "'2.0.0' cannot be served here" in detail
        assert "iris-2.0.0.onnx" in detail
        assert refused.headers["Retry-After"] == "10"

        # The file arrives. Within 10 s of the failure, B's polls leave the version as it is.
        shutil.copyfile(dir_b / "iris.onnx", dir_b / "iris-2.0.0.onnx")
        clock.now += 9.9
        await fleet_b.sync()
        assert here(await repository(client_b, admin))["iris@2.0.0"] == "UNAVAILABLE"
        assert_problem(await predict(client_b, admin, "2.0.0"), 503)

        # 10 s after the failure, the next poll tries again, and B serves it.
        clock.now += 0.1
        await fleet_b.sync()
        assert here(await repository(client_b, admin))["iris@2.0.0"] == "READY"
        assert await served_version(client_b, admin, "2.0.0") == "2.0.0"
        assert ok(await client_b.get("/readyz"))["model_versions"] == {"iris": ["1.0.0", "2.0.0"]}


class UnreadableDatabase:
    """A database every statement of which fails, as one that is down or unreachable; it counts
    the attempts."""

    def __init__(self) -> None:
        self.attempts = 0

    def _fail(self, *_args: Any, **_kwargs: Any) -> Any:
        self.attempts += 1
        raise OperationalError("SELECT revision FROM model_state", {}, ConnectionRefusedError(111, "refused"))

    statements = session = _fail


async def test_a_process_that_cannot_read_the_state_serves_what_it_has_and_converges_later(
    database_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        lifecycle_app(database_url, model_dir) as (app_a, client_a),
        lifecycle_app(database_url, model_dir, model_state_poll_seconds=0.2) as (app_b, client_b),
    ):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        fleet_b = state_of(app_b).resources.fleet
        unreadable = UnreadableDatabase()
        monkeypatch.setattr(fleet_b, "db", unreadable)

        await load(client_a, admin, "2.0.0")
        ok(await set_alias(client_a, admin, "default", {"version": "2.0.0"}))

        async def polled_three_times() -> bool:
            return unreadable.attempts >= 3

        await eventually(polled_three_times, 60.0, "the second app polling the unreadable state")
        # B keeps serving what it had (1.0.0 as default), with no error for its clients.
        assert {await served_version(client_b, admin) for _ in range(5)} == {"1.0.0"}
        assert ok(await client_b.get("/readyz"))["model_state_revision"] == 0

        monkeypatch.undo()  # the database answers again

        async def converged() -> bool:
            readiness = ok(await client_b.get("/readyz"))
            return bool(readiness["model_state_revision"] == 2)

        await eventually(converged, 60.0, "the second app converging once it can read the state")
        assert await served_version(client_b, admin) == "2.0.0"
        assert ok(await client_b.get("/readyz"))["model_versions"] == {"iris": ["1.0.0", "2.0.0"]}


async def test_a_process_that_cannot_read_the_state_at_start_serves_the_seed_and_converges_later(
    database_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = UnreadableDatabase()
    readable: list[tuple[ModelFleet, Any]] = []
    start = ModelFleet.start

    async def start_unreadable(self: ModelFleet) -> None:
        readable.append((self, self.db))
        self.db = unreadable  # type: ignore[assignment]
        await start(self)

    async with lifecycle_app(database_url, model_dir) as (app_a, client_a):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        await load(client_a, admin, "2.0.0")
        ok(await set_alias(client_a, admin, "default", {"version": "2.0.0"}))

        monkeypatch.setattr(ModelFleet, "start", start_unreadable)
        async with lifecycle_app(database_url, model_dir, model_state_poll_seconds=0.2) as (_, client_b):
            monkeypatch.undo()
            # It started on the manifest's seed: 1.0.0 as default, revision 0.
            readiness = ok(await client_b.get("/readyz"))
            assert readiness["model_versions"] == {"iris": ["1.0.0"]}
            assert readiness["model_state_revision"] == 0
            assert await served_version(client_b, admin) == "1.0.0"
            assert unreadable.attempts >= 1

            [(fleet_b, database)] = readable
            fleet_b.db = database  # the database answers again

            async def converged() -> bool:
                return bool(ok(await client_b.get("/readyz"))["model_state_revision"] == 2)

            await eventually(converged, 60.0, "the second app converging once it can read the state")
            assert await served_version(client_b, admin) == "2.0.0"


async def test_readyz_reports_a_revision_only_once_this_process_serves_it(
    database_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that is still loading the versions of a new state keeps reporting (and serving)
    the revision it had: `model_state_revision` moving means the routes moved. It used to move
    as soon as the state was read, before the load (a test waiting for the revision then found
    the old version still answering)."""
    entered, release = asyncio.Event(), asyncio.Event()
    build = converging_module.Loader.build
    slowed: list[Any] = []  # the loader of the second app, whose loads wait for `release`

    async def slow_build(self: Any, spec: Any) -> Any:
        if self in slowed:
            entered.set()
            await release.wait()
        return await build(self, spec)

    monkeypatch.setattr(converging_module.Loader, "build", slow_build)
    async with lifecycle_app(database_url, model_dir) as (app_a, client_a):
        admin = await make_user(app_a, client_a, "admin@example.com", admin=True)
        async with lifecycle_app(database_url, model_dir, model_state_poll_seconds=0.2) as (app_b, client_b):
            slowed.append(state_of(app_b).resources.registry._lifecycle.loader)
            await load(client_a, admin, "2.0.0")  # revision 1
            ok(await set_alias(client_a, admin, "default", {"version": "2.0.0"}))  # revision 2
            await asyncio.wait_for(entered.wait(), 60)
            readiness = ok(await client_b.get("/readyz"))
            assert readiness["model_versions"] == {"iris": ["1.0.0"]}
            assert readiness["model_state_revision"] == 0
            assert await served_version(client_b, admin) == "1.0.0"
            release.set()

            async def converged() -> bool:
                return bool(ok(await client_b.get("/readyz"))["model_state_revision"] == 2)

            await eventually(converged, 60.0, "the second app converging once its load finishes")
            assert await served_version(client_b, admin) == "2.0.0"
