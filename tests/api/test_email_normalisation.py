"""Issue 11, finding 4: one normal form for email addresses at every entry point.

Before the fix emails were compared after `strip().lower()` only: `alice@example.com` in full-width letters
registered beside `alice@example.com`, and a punycode domain was stored decoded while the log-in
looked the typed (punycode) form up, so log-in with what the user typed failed.
"""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import bearer, login
from tests.conftest import PASSWORD, Headers, MakeUser, assert_problem

REGISTER = "/api/v1/auth/register"
ME = "/api/v1/users/me"
FULL_WIDTH = "\uff41\uff4c\uff49\uff43\uff45@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com"  # full-width
PUNYCODE = "carol@xn--bcher-kva.example"
UNICODE = "carol@bücher.example"


async def _register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(REGISTER, json={"email": email, "password": PASSWORD})


async def test_a_full_width_address_is_the_same_account(client: httpx.AsyncClient) -> None:
    first = await _register(client, "alice@example.com")
    assert first.status_code == 201, first.text
    assert_problem(await _register(client, FULL_WIDTH), 409)
    # Logging in with the full-width form finds the account.
    await login(client, FULL_WIDTH)


async def test_a_full_width_address_is_stored_folded(client: httpx.AsyncClient) -> None:
    response = await _register(client, FULL_WIDTH)
    assert response.status_code == 201, response.text
    assert response.json()["email"] == "alice@example.com"
    await login(client, "Alice@Example.com")


@pytest.mark.parametrize("registered", [PUNYCODE, UNICODE, "Carol@BÜCHER.example"])
@pytest.mark.parametrize(
    "typed", [PUNYCODE, UNICODE, "CAROL@XN--BCHER-KVA.EXAMPLE", "\uff43arol@bücher.example"]
)
async def test_an_international_domain_logs_in_in_either_form(
    client: httpx.AsyncClient, registered: str, typed: str
) -> None:
    response = await _register(client, registered)
    assert response.status_code == 201, response.text
    # The U-label is stored (what email-validator normalises to, and what was always stored).
    assert response.json()["email"] == UNICODE
    await login(client, typed)
    assert_problem(await _register(client, typed), 409)


async def test_patch_me_normalises_and_finds_a_taken_address(
    client: httpx.AsyncClient, user_headers: Headers, other_headers: Headers
) -> None:
    taken = await client.patch(
        ME, json={"email": "\uff42ob@example.com", "current_password": PASSWORD}, headers=user_headers
    )
    assert_problem(taken, 409)
    moved = await client.patch(
        ME, json={"email": PUNYCODE, "current_password": PASSWORD}, headers=user_headers
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["email"] == UNICODE
    await login(client, PUNYCODE)


async def test_admin_update_normalises(
    client: httpx.AsyncClient, make_user: MakeUser, admin_headers: Headers
) -> None:
    headers = await make_user("dave@example.com")
    me = (await client.get(ME, headers=headers)).json()
    response = await client.patch(
        f"/api/v1/users/{me['id']}",
        json={"email": "\uff24\uff21\uff36\uff252@xn--bcher-kva.example"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "dave2@bücher.example"
    tokens = await login(client, "dave2@xn--bcher-kva.example")
    assert (await client.get(ME, headers=bearer(tokens["access_token"]))).status_code == 200


async def test_a_username_that_is_no_address_is_an_ordinary_failed_login(client: httpx.AsyncClient) -> None:
    for username in ["admin", "x@xn--zz.com", "a" * 400, "@", "\uff41@"]:
        response = await client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
        assert_problem(response, 401)
