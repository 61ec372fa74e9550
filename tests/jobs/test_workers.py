"""Job workers as real processes (`python -m app.cli worker`) beside web processes
(`python -m app.cli serve` with the embedded worker off): a worker SIGKILLed mid-job, whose job
another worker resumes with every row in the results exactly once; a worker stopped with SIGTERM,
which hands its job back and exits within the grace period. On SQLite, and on PostgreSQL when
TEST_DATABASE_URL is set (`private_database`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.engine import create_engine
from tests.conftest import PASSWORD, make_settings
from tests.faults.server import ROOT, Server, free_port, private_database, server_env, start_server
from tests.jobs.conftest import WAIT_LIMIT_S, iris_csv
from tests.ml.conftest import MakeModelDir, make_model_dir  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.database]

ROWS = 12_000  # 120 chunks: a job runs for seconds, so a signal after its 500th row lands mid-job
COMMON = {
    "ML_ENABLED": "true",
    "JOBS_EMBEDDED_WORKER": "false",
    "JOBS_CHUNK_ROWS": "100",
    "JOBS_REAP_SECONDS": "1",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture
def common(make_model_dir: MakeModelDir) -> dict[str, str]:  # noqa: F811 - the fixture
    """The settings of every process here; the jobs score iris, the only model each one loads."""
    return {**COMMON, "ML_MODEL_DIR": str(make_model_dir(only=("iris",)))}


@contextmanager
def processes() -> Iterator[list[Server | subprocess.Popen[bytes]]]:
    started: list[Server | subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            popen = process.process if isinstance(process, Server) else process
            if popen.poll() is None:
                popen.kill()
                popen.wait(timeout=30)


def start_worker(
    database_url: str, log: Path, common: dict[str, str], **overrides: str
) -> subprocess.Popen[bytes]:
    env = server_env(database_url, free_port(), **{**common, **overrides})
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def login(base_url: str, email: str) -> dict[str, str]:
    httpx.post(f"{base_url}/api/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=30)
    token = httpx.post(
        f"{base_url}/api/v1/auth/token", data={"username": email, "password": PASSWORD}, timeout=30
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def submit(base_url: str, headers: dict[str, str]) -> int:
    response = httpx.post(
        f"{base_url}/api/v1/jobs",
        params={"model": "iris"},
        content=iris_csv(ROWS),
        headers={**headers, "Content-Type": "text/csv"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def job(base_url: str, headers: dict[str, str], job_id: int) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/api/v1/jobs/{job_id}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait(base_url: str, headers: dict[str, str], job_id: int, done: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        seen = job(base_url, headers, job_id)
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"job {job_id} never {what}: {seen}"
        time.sleep(0.02)


def assert_every_row_once(base_url: str, headers: dict[str, str], job_id: int) -> None:
    response = httpx.get(
        f"{base_url}/api/v1/jobs/{job_id}/results",
        headers={**headers, "Accept": "application/x-ndjson"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [row["row"] for row in rows] == list(range(ROWS))
    assert all("label" in row for row in rows)


async def attempts(database_url: str, job_id: int) -> int:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(text("SELECT attempts FROM jobs WHERE id = :id"), {"id": job_id})
    finally:
        await engine.dispose()
    return int(found)


async def test_a_worker_killed_mid_job_is_resumed_by_another_with_every_row_exactly_once(
    tmp_path: Path, common: dict[str, str]
) -> None:
    async with private_database(tmp_path) as url:
        with processes() as started:
            web_a = start_server(server_env(url, free_port(), **common), tmp_path / "web-a.log")
            started.append(web_a)
            # The worker starts beside the second web process (the first one has migrated).
            doomed = start_worker(url, tmp_path / "worker-1.log", common, JOBS_LEASE_SECONDS="3")
            started.append(doomed)
            web_b = start_server(server_env(url, free_port(), **common), tmp_path / "web-b.log")
            started.append(web_b)
            alice = login(web_a.base_url, "alice@example.com")
            bob = login(web_b.base_url, "bob@example.com")
            first = submit(web_a.base_url, alice)  # to one web process
            second = submit(web_b.base_url, bob)  # to the other
            running = wait(web_a.base_url, alice, first, lambda j: j["rows_done"] >= 500, "got going")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=30)
            at_kill = job(web_a.base_url, alice, first)
            assert at_kill["state"] == "running", at_kill
            assert at_kill["rows_done"] < ROWS, at_kill
            assert running["version"] == "1.0.0"
            # Two workers now: one takes the job still queued at once, the other (or the first,
            # once free) the killed worker's job once its lease has expired.
            for n in (2, 3):
                started.append(
                    start_worker(url, tmp_path / f"worker-{n}.log", common, JOBS_LEASE_SECONDS="3")
                )
            for base_url, headers, job_id in ((web_a.base_url, alice, first), (web_b.base_url, bob, second)):
                done = wait(
                    base_url,
                    headers,
                    job_id,
                    lambda j: j["state"] != "running" and j["state"] != "queued",
                    "ended",
                )
                assert done["state"] == "succeeded", done
                assert done["rows_done"] == done["rows_total"] == ROWS
                assert_every_row_once(base_url, headers, job_id)
            assert await attempts(url, first) == 2  # claimed twice: resumed, not restarted elsewhere


async def test_a_worker_stopped_with_sigterm_hands_its_job_back_and_exits_in_its_grace_period(
    tmp_path: Path, common: dict[str, str]
) -> None:
    async with private_database(tmp_path) as url:
        with processes() as started:
            web = start_server(server_env(url, free_port(), **common), tmp_path / "web.log")
            started.append(web)
            # A lease far longer than the test: only a hand-back lets another worker resume it.
            stopping = start_worker(
                url,
                tmp_path / "worker-1.log",
                common,
                JOBS_LEASE_SECONDS="3600",
                TIMEOUT_GRACEFUL_SHUTDOWN="10",
            )
            started.append(stopping)
            alice = login(web.base_url, "alice@example.com")
            job_id = submit(web.base_url, alice)
            wait(web.base_url, alice, job_id, lambda j: j["rows_done"] >= 500, "got going")
            stopping.send_signal(signal.SIGTERM)
            assert stopping.wait(timeout=10 + 20) == 0  # the grace period, and a margin for start-up's cost
            handed_back = job(web.base_url, alice, job_id)
            assert handed_back["state"] == "queued", handed_back
            assert 0 < handed_back["rows_done"] < ROWS
            log = (tmp_path / "worker-1.log").read_text()
            assert "job_handed_back" in log
            assert f'"job_id": {job_id}' in log
            started.append(start_worker(url, tmp_path / "worker-2.log", common, JOBS_LEASE_SECONDS="3600"))
            done = wait(
                web.base_url, alice, job_id, lambda j: j["state"] not in {"queued", "running"}, "ended"
            )
            assert done["state"] == "succeeded", done
            assert_every_row_once(web.base_url, alice, job_id)
