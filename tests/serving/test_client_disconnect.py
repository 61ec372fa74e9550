"""A client that disconnects while its prediction waits in the model's queue: the request is
removed, so the model never computes it (docs/models.md, "Time limits"). A real server process and
a real socket, since what matters is what the server does when the connection goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.faults.server import Server, free_port, private_database, server_env, start_server
from tests.ml.conftest import MakeModelDir, model_entry
from tests.ops.test_serve import _metric

pytestmark = [pytest.mark.slow, pytest.mark.database]

HEAVY = "breast_cancer"
ROW = [10.0] * 30
WAIT_S = 30.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, not ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _model_worker(server: Server) -> int:
    """The one model worker: forked by the forkserver, the server's child; the server's other
    child (multiprocessing's resource tracker) has none."""
    workers = [pid for child in _children(server.process.pid) for pid in _children(child)]
    assert len(workers) == 1, workers
    return workers[0]


async def _scrape(client: httpx.AsyncClient, name: str) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return _metric(response.text, name, model=HEAVY)


async def _until_metric(
    client: httpx.AsyncClient, name: str, value: float, seconds: float, what: str
) -> None:
    deadline = time.monotonic() + seconds
    while (seen := await _scrape(client, name)) != value:
        assert time.monotonic() < deadline, f"{what}: {name} is {seen}, not {value}, after {seconds} s"
        await asyncio.sleep(0.05)


async def test_a_queued_request_whose_client_disconnects_is_never_computed(
    tmp_path: Path, make_model_dir: MakeModelDir
) -> None:
    def long_time_limit(manifest: dict[str, Any]) -> None:
        # Nothing may leave the queue by timing out while the test holds the worker.
        model_entry(manifest, HEAVY)["timeout_ms"] = 120_000

    model_dir = make_model_dir(long_time_limit, only=(HEAVY,))
    async with private_database(tmp_path) as database_url:
        env = server_env(database_url, free_port(), ML_ENABLED="true", ML_MODEL_DIR=str(model_dir))
        env["ML_PROCESS_WORKERS"] = "1"
        server = start_server(env, tmp_path / "server.log")
        worker = 0
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S * 4) as client:
                email = f"disconnect-{uuid.uuid4().hex[:8]}@example.com"
                creds = {"email": email, "password": PASSWORD}
                assert (await client.post("/api/v1/auth/register", json=creds)).status_code == 201
                token = await client.post(
                    "/api/v1/auth/token", data={"username": email, "password": PASSWORD}
                )
                access = token.json()["access_token"]
                headers = {"Authorization": f"Bearer {access}"}
                batches = await _scrape(client, "model_batches_total")
                rows = await _scrape(client, "model_predictions_total")

                worker = _model_worker(server)
                os.kill(worker, signal.SIGSTOP)  # the batch it gets next hangs there
                running = asyncio.create_task(
                    client.post("/api/v1/predict-heavy", json={"features": ROW}, headers=headers)
                )
                await asyncio.sleep(1)  # taken from the queue at once (the model was idle), then stuck
                await _until_metric(
                    client, "model_queue_depth", 0, WAIT_S, "the first request left the queue"
                )

                body = json.dumps({"features": ROW}).encode()
                leaving = socket.create_connection(("127.0.0.1", server.port))
                leaving.sendall(
                    b"POST /api/v1/predict-heavy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    + f"Authorization: Bearer {access}\r\nContent-Type: application/json\r\n".encode()
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await _until_metric(client, "model_queue_depth", 1, WAIT_S, "the second request queued")
                leaving.close()  # the client gives up while its request waits behind the stuck batch
                await _until_metric(
                    client, "model_queue_depth", 0, 10, "the disconnected client's request left the queue"
                )

                os.kill(worker, signal.SIGCONT)
                assert (await running).status_code == 200
                await asyncio.sleep(1)  # time for a wrongly kept request to run after it
                assert await _scrape(client, "model_batches_total") - batches == 1
                assert await _scrape(client, "model_predictions_total") - rows == 1
        finally:
            if worker:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGCONT)
            server.stop()
