"""API4: request headers are bounded by the app (issue 11, finding 4).

uvicorn's httptools parser has no header count or size limit: before the fix a request with 5,000
headers or one 200 KB header was served (200). Now past MAX_REQUEST_HEADERS header fields or
MAX_REQUEST_HEADER_BYTES of names and values together it is a 431 problem."""

from __future__ import annotations

import pytest

from tests.conftest import assert_problem, make_settings
from tests.security.conftest import serve


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({f"x-h{i}": "v" for i in range(500)}, "more than 100 header fields"),
        ({"x-big": "v" * 200_000}, "larger than 32768 bytes"),
        ({f"x-h{i}": "v" * 400 for i in range(90)}, "larger than 32768 bytes"),  # many, each small
    ],
)
async def test_too_many_or_too_large_headers_are_a_431(
    database_url: str, headers: dict[str, str], fragment: str
) -> None:
    async with serve(make_settings(database_url, access_log=False)) as client:
        for path in ("/healthz", "/api/v1/items", "/v2/models/iris/infer"):
            response = await client.get(path, headers=headers)
            if path.startswith("/v2"):  # the Open Inference Protocol's own error shape
                assert response.status_code == 431
                assert response.headers["content-type"] == "application/json"
                assert fragment in response.json()["error"]
            else:
                problem = assert_problem(response, 431)
                assert problem["title"] == "Request Header Fields Too Large"
                assert fragment in problem["detail"]
            assert response.headers["x-request-id"]
            assert response.headers["connection"] == "close"


async def test_headers_within_the_limits_are_served(database_url: str) -> None:
    settings = make_settings(
        database_url, access_log=False, max_request_headers=20, max_request_header_bytes=2_000
    )
    async with serve(settings) as client:
        # httpx adds host, accept, accept-encoding, connection, user-agent (5 fields).
        ok = await client.get("/healthz", headers={f"x-h{i}": "v" for i in range(15)})
        assert ok.status_code == 200
        assert_problem(await client.get("/healthz", headers={f"x-h{i}": "v" for i in range(16)}), 431)
        assert (await client.get("/healthz", headers={"x-big": "v" * 1_800})).status_code == 200
        assert_problem(await client.get("/healthz", headers={"x-big": "v" * 2_000}), 431)
