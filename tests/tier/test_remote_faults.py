"""What a client of the web tier sees when a remote model's server fails: a named 502, 503 or 504
at once (never a 500, never a hang), counted in the metrics, every other model still serving, and
the server used again when it comes back, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpcore._backends.auto import AutoBackend
from sqlalchemy import text

from app.http.state import state_of
from app.ml import remote
from tests.faults.server import ROOT, Server, free_port
from tests.serving.conftest import login
from tests.tier.conftest import (
    MODEL_DIR,
    MODEL_SERVER_TOKEN,
    client_for,
    model_server_env,
    own_server,
    remote_manifest,
    start_model_server,
    web_app,
)
from tests.tier.faults import JsonHandler, Mode, fault_server, serving

IRIS = {"features": [5.1, 3.5, 1.4, 0.2]}
FOREST = {"rows": [[float(i % 7) for i in range(30)], [1.0] * 30]}


async def _forest(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/api/v1/models/breast_cancer/predict", json=FOREST, headers=headers)


@contextlib.asynccontextmanager
async def _forest_at(
    url: str, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """An in-process web tier whose forest is remote, served at `url` (the other models local),
    its client and a user's headers."""
    model_dir = remote_manifest(tmp_path / "models", {"breast_cancer": own_server(url, "breast_cancer")})
    async with web_app(database_url, model_dir) as app, client_for(app) as client:
        yield client, await login(client, "faults@example.com")


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
    async with _forest_at(url, database_url, tmp_path) as (client, headers):
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
            'model_requests_rejected_total{model="breast_cancer",reason="model-server-unavailable",'
            'version="1.0.0"}' in metrics
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
            assert (
                f'model_requests_rejected_total{{model="breast_cancer",reason="{kind}",version="1.0.0"}}'
                in metrics
            )


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


# --- each row of docs/models.md "Failures", and the circuit breaker's numbers ---------------------


class Faulty:
    """An Open Inference Protocol server that answers as a test says: every infer call with
    `answer` (a status and a body; None closes the connection without an answer), readiness probes
    with `ready_status`. It counts the infer calls that reached it."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] | None = (500, b'{"error": "out of memory"}')
        self.ready_status = 503
        self.posts = 0
        self._lock = threading.Lock()

    def healthy(self) -> None:
        """Ready, and every infer call answered with two finite probabilities per row."""
        self.ready_status = 200
        self.answer = (200, b"")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        faulty = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status = faulty.ready_status
                self._send(status, json.dumps({"ready": status == 200}).encode())

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with faulty._lock:
                    faulty.posts += 1
                answer = faulty.answer
                if answer is None:
                    self.close_connection = True  # no answer at all: the connection just closes
                    return
                status, body = answer
                if status == 200 and not body:
                    rows = int(request["inputs"][0]["shape"][0])
                    tensor = {"name": "probabilities", "shape": [rows, 2], "datatype": "FP64"}
                    body = json.dumps({"outputs": [{**tensor, "data": [0.25, 0.75] * rows}]}).encode()
                self._send(status, body)

        return Handler

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Its base URL while the block runs."""
        with serving(self._handler()) as url:
            yield url


class FrozenClock:
    """The circuit breaker's clock, moved only by the test: its open times are checked without
    waiting them out, and nothing but the readiness probe can close it by itself."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def breaker_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """Every circuit breaker made from now on reads this clock; its thresholds stay the defaults."""
    clock = FrozenClock()
    monkeypatch.setattr(remote, "CircuitBreaker", functools.partial(remote.CircuitBreaker, clock=clock))
    return clock


def _problem(answer: httpx.Response, status: int, kind: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["type"].endswith(f"/{kind}"), body
    assert "Traceback" not in answer.text
    return str(body["detail"])


async def test_five_server_errors_in_a_row_open_the_circuit_whose_open_time_doubles_up_to_30_s(
    database_url: str, tmp_path: Path, breaker_clock: FrozenClock
) -> None:
    faulty = Faulty()  # 500 to every call; its readiness says it is not ready
    with faulty.serving() as url:
        async with _forest_at(url, database_url, tmp_path) as (client, headers):
            # A 5xx is a 503 with the server's message, not retried: each call reached it once.
            for failures in range(1, 6):
                detail = _problem(await _forest(client, headers), 503, "model-server-unavailable")
                assert "the server answered 500: out of memory" in detail
                assert faulty.posts == failures
            # Exactly five opened it: the sixth and seventh are refused at once, nothing sent.
            for _ in range(2):
                refused = await _forest(client, headers)
                assert "circuit open" in _problem(refused, 503, "model-server-unavailable")
                assert refused.headers["Retry-After"] == "1"
            assert faulty.posts == 5
            assert (await client.post("/api/v1/predict", json=IRIS, headers=headers)).status_code == 200

            # Once its open time is over, one call goes through (half-open); its failure opens
            # the circuit again for twice as long, never longer than 30 s.
            open_for = 1
            for probe in range(1, 8):
                breaker_clock.now += open_for
                assert "500" in _problem(await _forest(client, headers), 503, "model-server-unavailable")
                assert faulty.posts == 5 + probe
                open_for = min(open_for * 2, 30)
                refused = await _forest(client, headers)
                assert "circuit open" in _problem(refused, 503, "model-server-unavailable")
                assert refused.headers["Retry-After"] == str(open_for)
            assert open_for == 30
            assert faulty.posts == 12

            # The server is back. The breaker's clock stands still, so the circuit (open for 30 s)
            # can only be closed by the readiness probe (every 2 s): the model answers again within
            # a few of its probes, no restart, no client call needed to find out.
            faulty.healthy()

            async def answers_again() -> bool:
                return (await _forest(client, headers)).status_code == 200

            await _until(answers_again, "the forest answering again through the readiness probe")
            assert (await client.get("/v2/models/breast_cancer/ready", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            (404, b'{"error": "Model breast_cancer version 7 not found"}'),
            "404: Model breast_cancer version 7",
        ),
        ((422, b'{"error": "input-0: expected 30 features"}'), "422: input-0: expected 30 features"),
        ((200, b'{"outputs": [{"name": "probabilities", "data": [NaN, 0.5]}]}'), "finite numbers"),
        ((200, b'{"outputs": [{"name": "probabilities", "data": [1e999, 0.5]}]}'), "finite numbers"),
        ((200, b'{"outputs": [{"name": "probabilities", "data": [-Infinity, 0.5]}]}'), "finite numbers"),
    ],
    ids=["404", "422", "nan", "overflow", "minus-infinity"],
)
# The breaker's clock frozen: a circuit opened by these answers would stay open for the whole test.
@pytest.mark.usefixtures("breaker_clock")
async def test_a_4xx_or_non_finite_outputs_are_502_and_never_open_the_circuit(
    database_url: str, tmp_path: Path, answer: tuple[int, bytes], said: str
) -> None:
    faulty = Faulty()
    faulty.ready_status = 200  # the server is up; it only answers these requests badly
    faulty.answer = answer
    with faulty.serving() as url:
        async with _forest_at(url, database_url, tmp_path) as (client, headers):
            for sent in range(1, 8):  # more than the 5 failures that open the circuit
                detail = _problem(await _forest(client, headers), 502, "bad-gateway")
                assert said in detail
                assert "circuit open" not in detail
                assert faulty.posts == sent  # each reached the server once: not retried
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}
            oip = await client.post("/v2/models/breast_cancer/infer", json=body, headers=headers)
            assert oip.status_code == 502
            assert said in oip.json()["error"]


async def test_a_connection_closed_before_the_answer_is_a_503_and_not_retried(
    database_url: str, tmp_path: Path
) -> None:
    faulty = Faulty()
    faulty.ready_status = 200
    faulty.answer = None
    with faulty.serving() as url:
        async with _forest_at(url, database_url, tmp_path) as (client, headers):
            for sent in range(1, 4):
                detail = _problem(await _forest(client, headers), 503, "model-server-unavailable")
                assert "connection failed" in detail
                assert faulty.posts == sent  # the batch may have run there: sent once only


# Set while a remote model's batch is being sent, so connections opened for it are told apart
# from the readiness probe's.
_sending: contextvars.ContextVar[bool] = contextvars.ContextVar("sending", default=False)


async def test_a_refused_connection_is_tried_once_more_at_once_then_a_503(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    attempts: list[int] = []
    connect = AutoBackend.connect_tcp
    run = remote.RemoteRuntime.run

    async def counted_connect(self: AutoBackend, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if _sending.get():
            attempts.append(port)
        return await connect(self, host, port, *args, **kwargs)

    async def marked_run(self: remote.RemoteRuntime, x: Any, hard_timeout_s: float) -> Any:
        token = _sending.set(True)
        try:
            return await run(self, x, hard_timeout_s)
        finally:
            _sending.reset(token)

    monkeypatch.setattr(AutoBackend, "connect_tcp", counted_connect)
    monkeypatch.setattr(remote.RemoteRuntime, "run", marked_run)
    url = f"http://127.0.0.1:{port}"
    async with _forest_at(url, database_url, tmp_path) as (client, headers):
        detail = _problem(await _forest(client, headers), 503, "model-server-unavailable")
        assert "connection refused" in detail
        assert attempts == [port, port]  # the call, and one retry: nothing had reached the server


# --- the model server ------------------------------------------------------------------------------


def _forest_workers(server: Server) -> list[int]:
    """The model server's forest workers: processes whose parent is its forkserver."""
    children = _children()
    forkservers = children.get(server.process.pid, [])
    return [pid for parent in forkservers for pid in children.get(parent, [])]


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            found.setdefault(parent, []).append(int(entry.name))
    return found


async def test_the_model_servers_readiness_is_503_while_a_model_does_not_answer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODEL_DIR, models)
    forest_file = models / "breast_cancer.skops"
    assert forest_file.exists()
    server = start_model_server(tmp_path, ML_MODEL_DIR=str(models))
    url = server.base_url
    auth = {"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/readyz")).status_code == 200
            # The forest's workers die, and their file is damaged, so the pool cannot come back.
            good = forest_file.read_bytes()
            forest_file.write_bytes(good + b"x")
            workers = _forest_workers(server)
            assert workers, "no forest worker found"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)

            async def not_ready() -> bool:
                # A prediction finds the pool broken; readiness then names the forest.
                await client.post("/v2/models/breast_cancer/infer", json=body, headers=auth)
                readiness = await client.get("/readyz")
                return readiness.status_code == 503 and "breast_cancer" in readiness.json()["detail"]

            await _until(not_ready, "the model server's /readyz to be 503 naming breast_cancer")
            readiness = await client.get("/readyz")
            assert readiness.status_code == 503
            assert readiness.headers["Retry-After"] == "1"
            assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
            iris = {
                "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS["features"]}]
            }
            assert (await client.post("/v2/models/iris/infer", json=iris, headers=auth)).status_code == 200

            forest_file.write_bytes(good)

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await _until(ready, "the model server's /readyz to be 200 once the forest answers again")
            answer = await client.post("/v2/models/breast_cancer/infer", json=body, headers=auth)
            assert answer.status_code == 200, answer.text
    finally:
        server.stop()


def test_a_production_model_server_refuses_to_start_without_its_token(tmp_path: Path) -> None:
    production = {"ENVIRONMENT": "production", "SECRET_KEY": secrets.token_urlsafe(48)}
    port = free_port()
    env = model_server_env(port, **production)
    del env["MODEL_SERVER_TOKEN"]
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "model-server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "MODEL_SERVER_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The same settings with the token: it starts and serves (production is not refused as such).
    server = start_model_server(tmp_path, port=port, **production)
    try:
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
