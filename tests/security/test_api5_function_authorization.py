"""API5:2023 Broken Function Level Authorization: admin functions with a user's token.

Admin routes are found by their dependencies (`AdminUser`), so a new admin route is covered the day
it is added; routes that check the role inside (another user's account, another user's records)
are listed below.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.conftest import Headers, MakeUser, assert_problem
from tests.security.conftest import SOME_PREDICTION_ID, api_routes


async def test_every_admin_route_refuses_a_user_token_with_403(
    client: httpx.AsyncClient,
    app: FastAPI,
    make_user: MakeUser,
    user_headers: Headers,
    admin_headers: Headers,
) -> None:
    victim = await make_user()
    victim_id = (await client.get("/api/v1/users/me", headers=victim)).json()["id"]
    admin_routes = [r for r in api_routes(app) if r.admin_only]
    assert {r.label for r in admin_routes} >= {
        "GET /api/v1/users",
        "PATCH /api/v1/users/{user_id}",
        "DELETE /api/v1/users/{user_id}",
    }
    for route in admin_routes:
        url = route.url(
            user_id=victim_id,
            item_id=1,
            key_id=1,
            job_id=1,
            prediction_id=SOME_PREDICTION_ID,
            name="x",
            version="1.0.0",
            alias="production",
        )
        body = {} if route.has_json_body else None
        refused = await client.request(route.method, url, json=body, headers=user_headers)
        anonymous = await client.request(route.method, url, json=body)
        if route.path.startswith("/v2/"):
            # The Open Inference Protocol's error shape (app.http.problems), same statuses.
            assert (refused.status_code, anonymous.status_code) == (403, 401), route.label
            assert "error" in refused.json(), route.label
            assert "error" in anonymous.json(), route.label
        else:
            assert_problem(refused, 403)
            assert_problem(anonymous, 401)
    # Nothing happened to the victim; and an admin is let through (the refusal was the role check).
    assert (await client.get("/api/v1/users/me", headers=victim)).status_code == 200
    for route in admin_routes:
        url = route.url(
            user_id=victim_id,
            item_id=1,
            key_id=1,
            job_id=1,
            prediction_id=SOME_PREDICTION_ID,
            name="x",
            version="1.0.0",
            alias="production",
        )
        body = {} if route.has_json_body else None
        response = await client.request(route.method, url, json=body, headers=admin_headers)
        assert response.status_code not in (401, 403), f"{route.label}: {response.text}"


async def test_role_checks_inside_routes(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers, admin_headers: Headers
) -> None:
    other_id = (await client.get("/api/v1/users/me", headers=other_headers)).json()["id"]
    assert_problem(await client.get(f"/api/v1/users/{other_id}", headers=user_headers), 403)
    assert (await client.get(f"/api/v1/users/{other_id}", headers=admin_headers)).status_code == 200
    records = await client.get("/api/v1/predictions", params={"user_id": other_id}, headers=user_headers)
    assert_problem(records, 403)
    assert (
        await client.get("/api/v1/predictions", params={"user_id": other_id}, headers=admin_headers)
    ).is_success


async def test_a_user_cannot_make_themself_admin_by_any_route(
    client: httpx.AsyncClient, app: FastAPI, user_headers: Headers
) -> None:
    me = (await client.get("/api/v1/users/me", headers=user_headers)).json()
    for route in api_routes(app):
        if route.method in ("PATCH", "POST", "PUT") and route.has_json_body:
            url = route.url(
                user_id=me["id"],
                item_id=1,
                key_id=1,
                job_id=1,
                prediction_id=SOME_PREDICTION_ID,
                name="x",
                version="1.0.0",
                alias="production",
            )
            await client.request(route.method, url, json={"is_admin": True}, headers=user_headers)
    after = await client.get("/api/v1/users/me", headers=user_headers)
    assert after.status_code == 200
    assert after.json()["is_admin"] is False
