"""API1:2023 Broken Object Level Authorization: another user's ids, with one's own valid token.

Every route that names an object by id (path or query) is found in the app's routes and tried by
a second user on the first user's objects: it must answer 403 or 404 and change nothing. The same
request by someone entitled to it (the owner, or an admin for admin routes) then succeeds, so the
refusal is the authorization and not a malformed request.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.ids import new_prediction_id
from app.http.state import state_of
from app.models.base import utcnow
from app.models.job import Job
from app.repositories.predictions import PredictionRepository
from tests.conftest import Headers, MakeUser, assert_problem
from tests.security.conftest import OWNED_ID_PARAMS, PUBLIC_PATH_PARAMS, RouteInfo, api_routes

# A body the entitled caller may send; `{}` (change nothing) for the rest.
SAMPLE_BODIES: dict[str, dict[str, Any]] = {
    "PATCH /api/v1/items/{item_id}": {"title": "changed by the attacker"},
    "PATCH /api/v1/users/{user_id}": {"is_admin": True},
    "POST /api/v1/predictions/{prediction_id}/feedback": {"truth": ["setosa"]},
}
# What the entitled caller gets where it is not a success: this app serves no model, so the owner
# of a prediction gets past the ownership check to the model's (its version is not loaded here),
# which another user never reaches.
CONTROL_STATUS = {"POST /api/v1/predictions/{prediction_id}/feedback": 409}


def _object_routes(app: FastAPI) -> list[RouteInfo]:
    return [r for r in api_routes(app) if r.path_params or r.id_query_params]


async def test_every_id_parameter_is_classified(app: FastAPI) -> None:
    """A route with a new kind of id must be classified here (owned or public) before it ships."""
    unknown = {
        (route.label, param)
        for route in _object_routes(app)
        for param in route.path_params
        if param not in OWNED_ID_PARAMS | PUBLIC_PATH_PARAMS
    }
    assert not unknown, f"classify these parameters in tests/security/conftest.py: {sorted(unknown)}"


# The state an owned job is in for the entitled caller's control request to succeed (default:
# succeeded, whose results can be read and which can be deleted).
JOB_STATES = {"POST /api/v1/jobs/{job_id}/cancel": "queued"}


async def _owned_job(app: FastAPI, client: httpx.AsyncClient, headers: Headers, state: str) -> dict[str, Any]:
    """A job of the caller's, made in the database (this app serves no model to submit one to)."""
    owner_id = (await client.get("/api/v1/users/me", headers=headers)).json()["id"]
    async with state_of(app).resources.db.session() as session:
        job = Job(owner_id=owner_id, model="iris", input_format="csv", state=state)
        session.add(job)
        await session.commit()
    found = await client.get(f"/api/v1/jobs/{job.id}", headers=headers)
    assert found.status_code == 200, found.text
    return dict(found.json())


async def _owned_prediction(app: FastAPI, client: httpx.AsyncClient, headers: Headers) -> uuid.UUID:
    """A prediction of the caller's, recorded as the log's writer records one."""
    owner_id = (await client.get("/api/v1/users/me", headers=headers)).json()["id"]
    prediction_id = new_prediction_id()
    async with state_of(app).resources.db.session() as session:
        await PredictionRepository(session).add_many([{
            "prediction_id": prediction_id, "user_id": owner_id, "model": "iris", "version": "1.0.0",
            "rows": 1, "latency_ms": 1.0, "outcome": "ok", "outputs": [[0.9, 0.05, 0.05]],
            "created_at": utcnow(),
        }])  # fmt: skip
        await session.commit()
    return prediction_id


async def _owner_with_item(client: httpx.AsyncClient, make_user: MakeUser) -> tuple[Headers, dict[str, Any]]:
    headers = await make_user()
    title = f"secret-{uuid.uuid4().hex}"
    item = await client.post("/api/v1/items", json={"title": title, "description": "mine"}, headers=headers)
    assert item.status_code == 201, item.text
    me = await client.get("/api/v1/users/me", headers=headers)
    key = await client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["items:read"]}, headers=headers
    )
    assert key.status_code == 201, key.text
    keys = await client.get("/api/v1/api-keys", headers=headers)
    return headers, {"item": item.json(), "user": me.json(), "key": key.json(), "keys": keys.json()}


async def test_another_users_ids_are_refused_on_every_route(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser, admin_headers: Headers
) -> None:
    attacker = await make_user()
    tried = []
    for route in _object_routes(app):
        if not (set(route.path_params) | set(route.id_query_params)) & OWNED_ID_PARAMS:
            continue  # only shared objects (model names): nothing of another user's to reach
        owner, owned = await _owner_with_item(client, make_user)
        job = await _owned_job(app, client, owner, JOB_STATES.get(route.label, "succeeded"))
        ids = {
            "item_id": owned["item"]["id"],
            "user_id": owned["user"]["id"],
            "key_id": owned["key"]["id"],
            "job_id": job["id"],
            "prediction_id": await _owned_prediction(app, client, owner),
        }
        url = route.url(**ids)
        params = {name: ids[name] for name in route.id_query_params}
        body = SAMPLE_BODIES.get(route.label, {}) if route.has_json_body else None

        refused = await client.request(route.method, url, params=params, json=body, headers=attacker)
        assert refused.status_code in (403, 404), f"{route.label}: {refused.status_code} {refused.text}"
        assert_problem(refused, refused.status_code)
        assert owned["item"]["title"] not in refused.text
        # Nothing changed: the owner still sees their item and account as they were.
        item = await client.get(f"/api/v1/items/{ids['item_id']}", headers=owner)
        assert item.status_code == 200, f"{route.label} by another user removed the item"
        assert item.json() == owned["item"], f"{route.label} by another user changed the item"
        me = await client.get("/api/v1/users/me", headers=owner)
        assert me.json() == owned["user"], f"{route.label} by another user changed the account"
        keys = await client.get("/api/v1/api-keys", headers=owner)
        assert keys.json() == owned["keys"], f"{route.label} by another user changed the API keys"
        assert owned["key"]["key"] not in refused.text
        still = await client.get(f"/api/v1/jobs/{job['id']}", headers=owner)
        assert still.json() == job, f"{route.label} by another user changed or removed the job"

        entitled = admin_headers if route.admin_only or params else owner
        allowed = await client.request(route.method, url, params=params, json=body, headers=entitled)
        if route.label in CONTROL_STATUS:
            assert allowed.status_code == CONTROL_STATUS[route.label], (
                f"control: {route.label}: {allowed.text}"
            )
        else:
            assert allowed.is_success, f"control: {route.label} by its owner/admin: {allowed.text}"
        tried.append(route.label)
    # The inventory found the object routes this suite was written against (and any new ones).
    assert {
        "GET /api/v1/items/{item_id}",
        "DELETE /api/v1/users/{user_id}",
        "DELETE /api/v1/api-keys/{key_id}",
        "DELETE /api/v1/users/{user_id}/api-keys/{key_id}",
        "GET /api/v1/users/{user_id}/api-keys",
        "GET /api/v1/jobs/{job_id}",
        "GET /api/v1/jobs/{job_id}/results",
        "POST /api/v1/jobs/{job_id}/cancel",
        "DELETE /api/v1/jobs/{job_id}",
        "POST /api/v1/predictions/{prediction_id}/feedback",
    } <= set(tried), tried


async def test_lists_never_show_another_users_objects(
    client: httpx.AsyncClient, app: FastAPI, make_user: MakeUser
) -> None:
    owner, owned = await _owner_with_item(client, make_user)
    attacker = await make_user()
    await client.post("/api/v1/items", json={"title": "the attacker's own"}, headers=attacker)
    listed = []
    for route in api_routes(app):
        if route.method != "GET" or route.path_params or not route.needs_token or route.admin_only:
            continue
        response = await client.get(route.path, headers=attacker)
        assert owned["item"]["title"] not in response.text, f"{route.label} shows another user's item"
        assert owned["user"]["email"] not in response.text, f"{route.label} shows another user's email"
        listed.append(route.label)
    assert {"GET /api/v1/items", "GET /api/v2/items"} <= set(listed), listed
    mine = await client.get("/api/v1/items", headers=owner)
    assert owned["item"]["title"] in mine.text  # control: the owner does see it
