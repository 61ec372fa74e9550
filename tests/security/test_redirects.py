"""Finding 3 of the outside attack: with the default `TRUSTED_HOSTS=*`, the trailing-slash
redirects pointed at whatever Host the request named (`Host: evil.com` -> 307 to
`http://evil.com/...`). They are relative now: a redirect stays on the origin the client used."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Headers


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
