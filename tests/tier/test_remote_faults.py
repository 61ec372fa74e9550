"""What a client of the web tier sees when a remote model's server fails: a named 502, 503 or 504
at once (never a 500, never a hang), counted in the metrics, every other model still serving, and
the server used again when it comes back, without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.http.state import state_of
from tests.faults.server import Server, free_port
from tests.serving.conftest import login
from tests.tier.conftest import client_for, own_server, remote_manifest, start_model_server, web_app
from tests.tier.faults import Mode, fault_server

IRIS = {"features": [5.1, 3.5, 1.4, 0.2]}
FOREST = {"rows": [[float(i % 7) for i in range(30)], [1.0] * 30]}


async def _forest(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/api/v1/models/breast_cancer/predict", json=FOREST, headers=headers)


async def _until(condition: object, what: str, seconds: float = 60.0) -> None:
    """Wait, bounded, for an async condition (a remote server's state is polled, not pushed)."""
    assert callable(condition)
    for _ in range(int(seconds * 10)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {seconds} s: {what}")


async def test_an_unreachable_server_is_a_503_trips_the_breaker_and_is_used_again_once_up(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    model_dir = remote_manifest(tmp_path / "models", {"breast_cancer": own_server(url, "breast_cancer")})
    async with web_app(database_url, model_dir) as app, client_for(app) as client:
        headers = await login(client, "faults@example.com")
        answers = [await _forest(client, headers) for _ in range(7)]
        assert {r.status_code for r in answers} == {503}
        assert all(r.json()["type"].endswith("/model-server-unavailable") for r in answers)
        assert "connection refused" in answers[0].json()["detail"]
        # After five failures the circuit is open: refused at once, with a Retry-After.
        assert "circuit open" in answers[-1].json()["detail"]
        assert int(answers[-1].headers["Retry-After"]) >= 1
        # Every other model keeps serving; readiness names the one that does not answer.
        assert (await client.post("/api/v1/predict", json=IRIS, headers=headers)).status_code == 200
        assert (await client.get("/v2/models/breast_cancer/ready", headers=headers)).status_code == 503
        assert (await client.get("/v2/models/iris/ready", headers=headers)).status_code == 200
        readiness = await client.get("/readyz")
        assert readiness.status_code == 200
        assert readiness.json()["models"] == "3 loaded; not answering: breast_cancer"
        metrics = (await client.get("/metrics")).text
        assert (
            'model_requests_rejected_total{model="breast_cancer",reason="model-server-unavailable"}'
            in metrics
        )

        # The server comes up on that address: the web tier uses it again, no restart.
        server = start_model_server(tmp_path, port=port)
        try:

            async def answers_again() -> bool:
                return (await _forest(client, headers)).status_code == 200

            await _until(answers_again, "the forest answers through the model server again")
            assert (await client.get("/v2/models/breast_cancer/ready", headers=headers)).status_code == 200
        finally:
            server.stop()


@pytest.mark.parametrize(
    "case",
    [
        ("slow", 504, "timeout", "did not answer within 300 ms"),
        ("close", 503, "model-server-unavailable", "connection failed"),
        ("garbage", 502, "bad-gateway", "the response is not JSON"),
        ("no-outputs", 502, "bad-gateway", "the response has no output 'probabilities'"),
    ],
)
async def test_a_misbehaving_server_is_a_named_gateway_error(
    database_url: str, tmp_path: Path, case: tuple[Mode, int, str, str]
) -> None:
    mode, status, kind, said = case
    with fault_server(mode) as url:
        model_dir = remote_manifest(
            tmp_path / "models",
            {"breast_cancer": own_server(url, "breast_cancer")},
            {"breast_cancer": {"timeout_ms": 300}},
        )
        async with web_app(database_url, model_dir) as app, client_for(app) as client:
            headers = await login(client, "faults@example.com")
            answer = await _forest(client, headers)
            assert answer.status_code == status, answer.text
            assert answer.json()["type"].endswith(f"/{kind}")
            assert said in answer.json()["detail"]
            # The protocol's routes say the same in the protocol's shape.
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}
            oip = await client.post("/v2/models/breast_cancer/infer", json=body, headers=headers)
            assert oip.status_code == status
            assert said in oip.json()["error"]
            assert (await client.post("/api/v1/predict", json=IRIS, headers=headers)).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert f'model_requests_rejected_total{{model="breast_cancer",reason="{kind}"}}' in metrics


async def test_wrong_shapes_and_unknown_versions_from_mlserver_are_502(
    database_url: str, tmp_path: Path, mlserver: Server
) -> None:
    url = mlserver.base_url
    model_dir = remote_manifest(
        tmp_path / "models",
        {
            # MLServer's default output: one label per row where two probabilities are expected.
            "breast_cancer": {"url": url, "model": "breast_cancer", "output": "predict"},
            # A version MLServer does not serve (served under the manifest's name `diabetes`).
            "diabetes": {"url": url, "model": "breast_cancer", "version": "9.9.9", "output": "predict"},
        },
    )
    async with web_app(database_url, model_dir) as app, client_for(app) as client:
        headers = await login(client, "faults@example.com")
        shaped = await _forest(client, headers)
        assert shaped.status_code == 502
        assert "output 'predict' has 2 values, expected 2 x 2" in shaped.json()["detail"]
        missing = await client.post(
            "/api/v1/models/diabetes/predict", json={"rows": [[0.0] * 10]}, headers=headers
        )
        assert missing.status_code == 502
        assert "404" in missing.json()["detail"]
        assert "version 9.9.9 not found" in missing.json()["detail"]
        assert (await client.post("/api/v1/predict", json=IRIS, headers=headers)).status_code == 200


async def _records(app: FastAPI, user_email: str) -> dict[str, int]:
    async with state_of(app).resources.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT r.outcome, count(*) FROM prediction_records r JOIN users u ON u.id = r.user_id "
                "WHERE u.email = :email GROUP BY r.outcome"
            ),
            {"email": user_email},
        )
        return {str(outcome): int(count) for outcome, count in rows.all()}


async def test_killing_the_model_server_under_load_loses_no_acknowledged_record(
    database_url: str, tmp_path: Path
) -> None:
    server = start_model_server(tmp_path)
    model_dir = remote_manifest(
        tmp_path / "models",
        {"breast_cancer": own_server(server.base_url, "breast_cancer")},
    )
    try:
        async with web_app(database_url, model_dir) as app, client_for(app) as client:
            email = "load@example.com"
            headers = await login(client, email)
            done: list[httpx.Response] = []

            async def user() -> None:
                for _ in range(40):
                    done.append(await _forest(client, headers))  # noqa: PERF401 - read as they come

            users = [asyncio.create_task(user()) for _ in range(8)]

            async def some_answered() -> bool:
                return sum(r.status_code == 200 for r in done) >= 40

            await _until(some_answered, "the first 40 predictions through the model server")
            os.kill(server.process.pid, signal.SIGKILL)
            # Reaped, as its parent (a container runtime, systemd, a shell) would: until then it is
            # a zombie, which the workers' check cannot tell from a live process.
            await asyncio.to_thread(server.process.wait, 10)
            await asyncio.gather(*users)

            statuses = [r.status_code for r in done]
            acknowledged = statuses.count(200)
            assert 40 <= acknowledged < len(statuses)  # some before the kill, none after it
            assert set(statuses) <= {200, 503, 504}, "a failing model server is never a 500"

            async def all_written() -> bool:
                return sum((await _records(app, email)).values()) >= len(statuses)

            await _until(all_written, "every prediction record written", seconds=20)
            records = await _records(app, email)
            assert records["ok"] == acknowledged
            assert sum(records.values()) == len(statuses)

            # Nothing of the killed server is left running: its forest workers (children of its
            # forkserver, not of the server) watch for it and end, and the forkserver with them.
            async def nothing_left() -> bool:
                return not _descendants_of_forkserver_for(server.log_path)

            await _until(nothing_left, "the killed model server's forkserver and workers to end", seconds=10)
    finally:
        server.kill()


def _descendants_of_forkserver_for(log_path: Path) -> list[int]:
    """Processes whose standard output is the killed server's log: its forkserver and workers."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if os.readlink(entry / "fd" / "1") == str(log_path):
                    left.append(int(entry.name))
            except OSError:
                continue
    return left
