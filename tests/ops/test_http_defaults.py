"""Security headers, trusted hosts, CORS, load shedding and the access line, in process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Callable

import pytest

from app.http.state import state_of
from app.observability import metrics
from tests.conftest import LogLines, assert_problem
from tests.ops.conftest import new_email, register, running_app, user


async def test_every_response_carries_security_headers_and_no_hsts_over_http(database_url: str) -> None:
    async with running_app(database_url) as (_, client):
        for response in (
            await client.get("/healthz"),
            await client.get("/nope"),
            await client.get("/api/v1/items"),
        ):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
            assert "strict-transport-security" not in response.headers
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_hsts_only_when_the_request_came_over_https(database_url: str) -> None:
    async with running_app(database_url, base_url="https://testserver", hsts_max_age=600) as (_, client):
        response = await client.get("/healthz")
    assert response.headers["strict-transport-security"] == "max-age=600; includeSubDomains"


async def test_docs_pages_csp_allows_exactly_their_inline_script(database_url: str) -> None:
    async with running_app(database_url, docs_enabled=True) as (_, client):
        docs = await client.get("/docs")
        redoc = await client.get("/redoc")
        asset = await client.get("/static/docs/swagger-ui-bundle.js")
    assert docs.status_code == redoc.status_code == asset.status_code == 200
    csp = docs.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert scripts, "Swagger UI's start-up script is inline"
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert redoc.headers["content-security-policy"] == csp
    # Nothing on either page is loaded from another origin.
    assert not re.search(r"""(src|href)=["']https?://""", docs.text + redoc.text)


async def test_trusted_hosts_refuse_other_host_headers_with_a_problem(database_url: str) -> None:
    async with running_app(database_url, trusted_hosts=["api.example.com", "*.internal.example"]) as (
        _,
        client,
    ):
        assert (await client.get("/healthz", headers={"host": "api.example.com"})).status_code == 200
        assert (
            await client.get("/healthz", headers={"host": "pod-1.internal.example:8000"})
        ).status_code == 200
        refused = await client.get("/healthz", headers={"host": "evil.example.org"})
    assert_problem(refused, 400)
    assert refused.headers["x-request-id"]


async def test_cors_is_closed_by_default(database_url: str) -> None:
    async with running_app(database_url) as (_, client):
        response = await client.get("/healthz", headers={"origin": "https://app.example.com"})
        preflight = await client.options(
            "/api/v1/items",
            headers={"origin": "https://app.example.com", "access-control-request-method": "GET"},
        )
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_only_configured_origins(database_url: str) -> None:
    origin = "https://app.example.com"
    async with running_app(database_url, cors_origins=[origin]) as (_, client):
        allowed = await client.get("/healthz", headers={"origin": origin})
        preflight = await client.options(
            "/api/v1/items",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        foreign = await client.options(
            "/api/v1/items",
            headers={"origin": "https://evil.example.org", "access-control-request-method": "GET"},
        )
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    body = assert_problem(foreign, 400)
    assert "origin" in body["detail"].lower()


async def _wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - polls the app's own counter; nothing to wait on
            await asyncio.sleep(0.005)


async def test_past_the_in_flight_limit_requests_get_an_immediate_503_problem(database_url: str) -> None:
    # Slow, serialized password hashes keep two registrations in flight while a third arrives.
    async with running_app(
        database_url,
        max_requests_in_flight=2,
        limit_concurrency=10,
        password_hash_memory_kib=19_456,
        password_hash_time_cost=6,
        password_hash_concurrency=1,
    ) as (app, client):
        shed_before = metrics.HTTP_SHED._value.get()
        slow = [asyncio.create_task(register(client, new_email())) for _ in range(2)]
        await _wait_for(lambda: state_of(app).in_flight.value == 2)
        shed = await client.get("/api/v1/items", headers={"x-request-id": "caller-id-1"})
        probe = await client.get("/healthz")
        scrape = await client.get("/metrics")
        assert [r.status_code for r in await asyncio.gather(*slow)] == [201, 201]
        after = await client.get("/api/v1/items")
    body = assert_problem(shed, 503)
    assert shed.headers["retry-after"] == "1"
    assert shed.headers["x-request-id"] == "caller-id-1"
    assert shed.headers["x-content-type-options"] == "nosniff"
    assert body["instance"] == "/api/v1/items"
    assert metrics.HTTP_SHED._value.get() == shed_before + 1
    # Probes and the scrape are never shed: an overloaded pod must not be restarted for it.
    assert probe.status_code == 200
    assert scrape.status_code == 200
    # Once the slow requests are done, the worker takes requests again.
    assert after.status_code == 401


async def test_access_line_has_route_template_status_user_and_no_secrets(
    database_url: str, log_lines: LogLines, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_app(database_url, access_log=True) as (_, client):
        headers = await user(client)
        me = await client.get("/api/v1/users/me", headers=headers)
        item = await client.get("/api/v1/items/12345", headers=headers)
    lines = log_lines()
    out = json.dumps(lines) + capsys.readouterr().out
    access = [line for line in lines if line.get("event") == "request"]
    by_route = {(line["method"], line["route"]): line for line in access}
    read = by_route[("GET", "/api/v1/items/{item_id}")]
    assert read["status"] == 404
    assert read["user_id"] == me.json()["id"]
    assert read["request_id"] == item.headers["x-request-id"]
    assert isinstance(read["duration_ms"], float)
    assert by_route[("POST", "/api/v1/auth/token")]["user_id"] is None
    token = headers["Authorization"].split()[1]
    assert token not in out
    assert "correct horse battery" not in out


async def test_shedding_counts_only_what_is_in_flight(database_url: str) -> None:
    # Finished requests, failed ones included, give their slot back.
    async with running_app(database_url, max_requests_in_flight=1, limit_concurrency=2) as (app, client):
        for _ in range(5):
            assert (await client.get("/nope")).status_code == 404
            bad = await client.post(
                "/api/v1/auth/register", content=b"{", headers={"content-type": "application/json"}
            )
            assert bad.status_code == 400
        assert state_of(app).in_flight.value == 0
        assert (await client.get("/healthz")).status_code == 200


def test_shed_limit_must_stay_below_uvicorns(database_url: str) -> None:
    from pydantic import ValidationError

    from tests.conftest import make_settings

    with pytest.raises(ValidationError, match="MAX_REQUESTS_IN_FLIGHT must be below LIMIT_CONCURRENCY"):
        make_settings(database_url, max_requests_in_flight=300, limit_concurrency=300)


async def test_unmatched_and_mounted_routes_keep_metric_labels_bounded(database_url: str) -> None:
    async with running_app(database_url, docs_enabled=True) as (_, client):
        for path in ("/a", "/b/c", "/static/docs/swagger-ui.css", "/openapi.json"):
            await client.get(path)
        text = (await client.get("/metrics")).text
    assert 'route="<unmatched>"' in text
    assert 'route="/static/docs/{path}"' in text
    assert 'route="/openapi.json"' in text
    assert 'route="/a"' not in text
    assert 'route="/b/c"' not in text


@pytest.mark.parametrize("header", ["Bearer not-a-jwt", "Basic Zm9vOmJhcg=="])
async def test_bad_credentials_are_401_not_counted_against_a_user(database_url: str, header: str) -> None:
    async with running_app(database_url, rate_limit_per_user="1/minute") as (_, client):
        for _ in range(3):
            response = await client.get("/api/v1/users/me", headers={"Authorization": header})
            assert_problem(response, 401)


def test_request_recorder_labels_unknown_status_classes() -> None:
    recorder = metrics.RequestRecorder()
    recorder.record("GET", "/x", 999, 0.01)
    assert metrics.HTTP_REQUESTS.labels("GET", "/x", "other")._value.get() >= 1


async def test_httpx_client_sees_problem_for_oversized_body_with_headers(database_url: str) -> None:
    async with running_app(database_url, max_request_body_bytes=100) as (_, client):
        response = await client.post(
            "/api/v1/auth/register", content=b"x" * 500, headers={"content-type": "application/json"}
        )
    assert_problem(response, 413)
    assert response.headers["x-frame-options"] == "DENY"
