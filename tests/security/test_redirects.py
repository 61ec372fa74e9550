"""Finding 3 of the outside attack: with the default `TRUSTED_HOSTS=*`, the trailing-slash
redirects pointed at whatever Host the request named (`Host: evil.com` -> 307 to
`http://evil.com/...`). They are relative now: a redirect stays on the origin the client used.

Issue 21, finding 4: the model server (app.model_server) still answered `GET /v2/models/iris/` with
`Host: evil.com` by a 307 to `http://evil.com/v2/models/iris`; it uses the same relative redirects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.model_server import create_model_server
from tests.conftest import Headers, make_settings

MODEL_SERVER_TOKEN = "model-server-test-token-" + "r" * 24


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/docs/", "/docs"),
        ("/api/v1/items/", "/api/v1/items"),
        ("/api/v1/items/?limit=5&offset=0", "/api/v1/items?limit=5&offset=0"),
        ("/api/v1/models/", "/api/v1/models"),
    ],
)
async def test_slash_redirects_are_relative_whatever_the_host(
    client: httpx.AsyncClient, user_headers: Headers, path: str, location: str
) -> None:
    response = await client.get(path, headers={**user_headers, "Host": "evil.com"})
    assert response.status_code == 307
    assert response.headers["location"] == location
    # Followed, the redirect serves the resource (on the client's own origin).
    followed = await client.get(location, headers=user_headers)
    assert followed.status_code == 200


async def test_a_redirect_never_points_off_site(app: FastAPI, client: httpx.AsyncClient) -> None:
    """`//evil.com/` as a Location is a protocol-relative URL: another site, to a browser. A fork's
    route whose template can match a path starting with `//` must not turn into such a redirect."""

    async def page(rest: str) -> dict[str, str]:
        return {"page": rest}

    app.add_api_route("/pages/{rest:path}/", page)  # matches "/pages/x/", and "//..." after a slash
    app.add_api_route("/{rest:path}/", page)
    for path in ("//evil.com", "/\\evil.com"):
        request = client.build_request("GET", "/", headers={"Host": "evil.com"})
        request.url = request.url.copy_with(raw_path=path.encode())  # as sent, not as a URL parses it
        response = await client.send(request)
        assert response.status_code == 404, path
        assert "location" not in response.headers
    # The same route still gets its ordinary (relative) slash redirect.
    response = await client.get("/pages/about")
    assert (response.status_code, response.headers["location"]) == (307, "/pages/about/")


async def test_a_path_that_matches_no_route_either_way_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.fixture
async def model_server(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The model server in process, its models loaded (following a redirect reaches one)."""
    server = create_model_server(make_settings(database_url, model_server_token=MODEL_SERVER_TOKEN))
    # Its model worker processes can take longer to start than asgi-lifespan's default 5 s.
    async with LifespanManager(server, startup_timeout=120, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/v2/models/iris/", "/v2/models/iris"),
        ("/v2/models/iris/ready/", "/v2/models/iris/ready"),
        ("/v2/", "/v2"),
        ("/healthz/", "/healthz"),
        ("/v2/models/iris/?verbose=1", "/v2/models/iris?verbose=1"),
    ],
)
async def test_the_model_server_redirects_relatively_whatever_the_host(
    model_server: httpx.AsyncClient, path: str, location: str
) -> None:
    auth = {"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
    response = await model_server.get(path, headers={**auth, "Host": "evil.com"})
    assert response.status_code == 307
    assert response.headers["location"] == location
    followed = await model_server.get(location, headers=auth)
    assert followed.status_code == 200, followed.text
