"""/api/v1/auth: registration, login, refresh-token rotation and reuse, logout, token expiry."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import text, update

from app.core.config import Settings
from app.http.state import state_of
from app.models import AuthSession
from tests.api.conftest import bearer, login
from tests.conftest import PASSWORD, TEST_SECRET_KEY, MakeUser, assert_problem

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/users/me"


def _error_fields(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body["errors"]}


# --- register ---


async def test_register_returns_only_public_fields_with_email_normalised(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json={"email": "  Carol@Example.COM ", "password": PASSWORD})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "email", "is_active", "is_admin", "created_at"}
    assert body["email"] == "carol@example.com"
    assert body["is_active"] is True
    assert body["is_admin"] is False
    # The normalised address logs in, whatever case the user types.
    await login(client, "CAROL@example.com")


async def test_register_duplicate_email_in_another_case_is_409(client: httpx.AsyncClient) -> None:
    first = await client.post(REGISTER, json={"email": "dave@example.com", "password": PASSWORD})
    assert first.status_code == 201
    again = await client.post(REGISTER, json={"email": "DAVE@Example.com", "password": "another password"})
    body = assert_problem(again, 409)
    assert "email" in body["detail"].lower()


@pytest.mark.parametrize("password", ["short", "x" * 7, "y" * 129])
async def test_register_password_policy_is_a_422_naming_password(
    client: httpx.AsyncClient, password: str
) -> None:
    response = await client.post(REGISTER, json={"email": "erin@example.com", "password": password})
    assert _error_fields(assert_problem(response, 422)) == {"password"}


@pytest.mark.parametrize("password", ["x" * 8, "y" * 128])
async def test_register_password_length_bounds_are_accepted(client: httpx.AsyncClient, password: str) -> None:
    response = await client.post(REGISTER, json={"email": "fay@example.com", "password": password})
    assert response.status_code == 201, response.text
    await login(client, "fay@example.com", password)


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", "", 42])
async def test_register_bad_email_is_a_422_naming_email(client: httpx.AsyncClient, email: object) -> None:
    response = await client.post(REGISTER, json={"email": email, "password": PASSWORD})
    assert _error_fields(assert_problem(response, 422)) == {"email"}


async def test_register_refuses_privilege_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(
        REGISTER, json={"email": "mallory@example.com", "password": PASSWORD, "is_admin": True}
    )
    assert _error_fields(assert_problem(response, 422)) == {"is_admin"}


# --- token ---


async def test_login_returns_a_bearer_pair_that_works(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user("gina@example.com")
    pair = await login(client, "gina@example.com")
    assert set(pair) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == 900
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert {"exp", "iat", "sub", "jti"} <= claims.keys()
    me = await client.get(ME, headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == "gina@example.com"


@pytest.mark.parametrize(
    ("username", "password"),
    [("hank@example.com", "wrong password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
async def test_login_failures_are_the_same_401(
    client: httpx.AsyncClient, make_user: MakeUser, username: str, password: str
) -> None:
    await make_user("hank@example.com")
    response = await client.post(TOKEN, data={"username": username, "password": password})
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert body["detail"] == "Incorrect email or password."


async def test_login_of_a_deactivated_user_is_refused(
    client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user("ivan@example.com")
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET is_active = :no WHERE email = 'ivan@example.com'"), {"no": False}
        )
    response = await client.post(TOKEN, data={"username": "ivan@example.com", "password": PASSWORD})
    assert_problem(response, 401)


async def test_login_needs_the_form_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(TOKEN, data={"username": "x@example.com"})
    assert _error_fields(assert_problem(response, 422)) == {"password"}


# --- refresh ---


async def test_refresh_rotates_the_pair_and_spends_the_old_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user("judy@example.com")
    first = await login(client, "judy@example.com")
    second_response = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await client.get(ME, headers=bearer(second["access_token"]))).status_code == 200
    # The new refresh token works once too.
    third = await client.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user("kim@example.com")
    first = await login(client, "kim@example.com")
    other_login = await login(client, "kim@example.com")
    second = (await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})).json()

    replay = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert_problem(replay, 401)
    assert replay.headers["www-authenticate"] == "Bearer"

    # Everything of that login is over: the newest refresh token and every access token.
    assert_problem(await client.post(REFRESH, json={"refresh_token": second["refresh_token"]}), 401)
    assert_problem(await client.get(ME, headers=bearer(second["access_token"])), 401)
    assert_problem(await client.get(ME, headers=bearer(first["access_token"])), 401)
    # Another login of the same user is a different family and keeps working.
    assert (await client.get(ME, headers=bearer(other_login["access_token"]))).status_code == 200


@pytest.mark.parametrize("token", ["not-a-token", "x" * 256])
async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await client.post(REFRESH, json={"refresh_token": token}), 401)


@pytest.mark.parametrize(
    "body", [{}, {"refresh_token": ""}, {"refresh_token": "x" * 257}, {"refresh_token": 5}]
)
async def test_refresh_body_is_validated(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert _error_fields(assert_problem(await client.post(REFRESH, json=body), 422)) == {"refresh_token"}


async def test_an_expired_refresh_token_is_refused(
    client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user("lena@example.com")
    pair = await login(client, "lena@example.com")
    # The login session (the refresh-token family) ran out a minute ago.
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(update(AuthSession).values(expires_at=_minutes_ago(1)))
    assert_problem(await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}), 401)


async def test_refresh_of_a_deactivated_user_is_refused(
    client: httpx.AsyncClient, make_user: MakeUser, app: FastAPI
) -> None:
    await make_user("mia@example.com")
    pair = await login(client, "mia@example.com")
    async with state_of(app).resources.db.engine.begin() as conn:
        await conn.execute(text("UPDATE users SET is_active = :no"), {"no": False})
    assert_problem(await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}), 401)


# --- logout ---


async def test_logout_ends_the_access_token_and_its_refresh_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user("nina@example.com")
    pair = await login(client, "nina@example.com")
    other = await login(client, "nina@example.com")
    response = await client.post(LOGOUT, headers=bearer(pair["access_token"]))
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(ME, headers=bearer(pair["access_token"])), 401)
    assert_problem(await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}), 401)
    assert_problem(await client.post(LOGOUT, headers=bearer(pair["access_token"])), 401)
    # Only that login ends.
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_logout_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post(LOGOUT)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


# --- access tokens ---


def _forge(settings: Settings, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "1",
        "sid": "0" * 32,
        "jti": "j",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, TEST_SECRET_KEY, algorithm="HS256")


def _minutes_ago(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


async def _real_claims(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    pair = await login(client, email)
    claims: dict[str, Any] = jwt.decode(pair["access_token"], options={"verify_signature": False})
    return claims


async def test_a_forged_token_with_valid_claims_works(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    """Control for the tests below: the forging itself is right, only the changed claim fails."""
    await make_user("olga@example.com")
    claims = await _real_claims(client, "olga@example.com")
    token = _forge(settings, sub=claims["sub"], sid=claims["sid"])
    assert (await client.get(ME, headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"exp": int(time.time()) - 60, "iat": int(time.time()) - 960, "nbf": int(time.time()) - 960},
        {"iss": "someone-else"},
        {"aud": "another-service"},
        {"exp": None},
        {"jti": None},
        {"sub": "not-a-number"},
    ],
    ids=["expired", "issuer", "audience", "no-exp", "no-jti", "bad-sub"],
)
async def test_bad_access_tokens_are_401(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, change: dict[str, Any]
) -> None:
    await make_user("pia@example.com")
    claims = await _real_claims(client, "pia@example.com")
    token = _forge(settings, **{"sub": claims["sub"], "sid": claims["sid"], **change})
    response = await client.get(ME, headers=bearer(token))
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert body["detail"] == "The access token is invalid, expired or revoked."


async def test_token_signed_with_another_key_is_401(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    await make_user("quinn@example.com")
    claims = await _real_claims(client, "quinn@example.com")
    token = jwt.encode({**claims}, "another-key-" + "y" * 32, algorithm="HS256")
    assert_problem(await client.get(ME, headers=bearer(token)), 401)


async def test_alg_none_token_is_401(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    await make_user("rita@example.com")
    claims = await _real_claims(client, "rita@example.com")
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    assert unsigned.endswith(".")
    assert_problem(await client.get(ME, headers=bearer(unsigned)), 401)


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer a.b.c", "Token abc"]
)
async def test_missing_or_garbage_authorization_is_401(client: httpx.AsyncClient, authorization: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get(ME, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


# --- races ---


async def test_one_refresh_token_spent_three_times_at_once_succeeds_exactly_once(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user("rex@example.com")
    pair = await login(client, "rex@example.com")
    responses = await asyncio.gather(
        *(client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}) for _ in range(3))
    )
    # Exactly one request spends the token (a conditional UPDATE: one row changes, once); the
    # other two find it spent. A broken refresh that answers no one passes no longer.
    assert sorted(r.status_code for r in responses) == [200, 401, 401], [r.text for r in responses]
    for response in responses:
        if response.status_code == 401:
            assert_problem(response, 401)
    (winner,) = (r for r in responses if r.status_code == 200)
    # The token was replayed, so the whole family is revoked: the winner's new pair is dead too.
    again = await client.post(REFRESH, json={"refresh_token": winner.json()["refresh_token"]})
    assert_problem(again, 401)
    assert_problem(
        await client.get(ME, headers={"Authorization": f"Bearer {winner.json()['access_token']}"}), 401
    )


async def test_the_same_email_registered_twice_at_once_makes_one_user(client: httpx.AsyncClient) -> None:
    bodies = [{"email": email, "password": PASSWORD} for email in ("Twin@Example.com", "twin@example.COM")]
    responses = await asyncio.gather(*(client.post(REGISTER, json=body) for body in bodies))
    assert sorted(r.status_code for r in responses) == [201, 409]
    assert_problem(next(r for r in responses if r.status_code == 409), 409)
