"""The model lifecycle across the tiers, real model server: a web tier whose models are all served
by the model server (ML_REMOTE_URL) and that model server share one database (a SQLite file). An
admin loads iris 2.0.0 through the web tier: the model server loads it first (its repository
extension), before the state names it; the default alias moves to 2.0.0 and 1.0.0 is unloaded: the
model server, polling the state, drops 1.0.0 after its grace; a steady predict load sees no
failure meanwhile. A version whose file fails its hash is refused by the model server, and the web
tier answers 409 naming the file, with nothing changed."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.db.engine import create_engine
from app.db.migrations import upgrade_to_head
from app.http.state import state_of
from tests.conftest import PASSWORD, assert_problem, make_settings
from tests.faults.server import ROOT, Server
from tests.tier.conftest import MODEL_SERVER_TOKEN, client_for, start_model_server, web_app

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
POLL_S = 0.3
# The model server unloads a version the state dropped this long after it first saw the change
# (app.model_server: 3 polls).
GRACE_S = 3 * POLL_S
# Every change must have reached the model server within this long of the admin's call returning.
CONVERGENCE_S = 5.0
LOAD_CLIENTS = 2
BAD_FILE = "iris-3.0.0.onnx"
SERVICE = {"Authorization": f"Bearer {MODEL_SERVER_TOKEN}"}
REPOSITORY = "/api/v1/model-repository"


def model_dir_with_iris_versions(tmp_path: Path) -> Path:
    """A copy of ml_models/ whose manifest lists iris 1.0.0, then 2.0.0 (the same file and
    sha256), then 3.0.0 (a copy of the file under its own name, with a sha256 that is not the
    file's). A fresh deployment serves the first listed version: 1.0.0."""
    model_dir = tmp_path / "models"
    shutil.copytree(ROOT / "ml_models", model_dir)
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    first = next(i for i, m in enumerate(manifest["models"]) if m["name"] == "iris")
    iris = manifest["models"][first]
    shutil.copyfile(model_dir / iris["file"], model_dir / BAD_FILE)
    v2 = {**iris, "version": "2.0.0"}
    v3 = {**iris, "version": "3.0.0", "file": BAD_FILE, "sha256": "0" * 64}
    manifest["models"][first + 1 : first + 1] = [v2, v3]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return model_dir


async def migrate(database_url: str) -> None:
    """The shared database at the head revision before either tier starts: the model server only
    reads it (it never migrates), and must find the state's table from its first poll."""
    engine = create_engine(make_settings(database_url))
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    registered = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def make_admin(application: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    email = f"lifecycle-admin-{uuid.uuid4().hex[:10]}@example.com"
    await login(client, email)
    async with state_of(application).resources.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET is_admin = :yes WHERE email = :email"), {"yes": True, "email": email}
        )
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@dataclass(frozen=True, slots=True)
class Outcome:
    sent: float  # monotonic time the request was sent
    status: int  # 0: a transport error
    version: str | None
    body: str  # the answer's text when it was not a 200


@dataclass
class PredictLoad:
    """`LOAD_CLIENTS` closed loops of POST /api/v1/models/iris/predict (no version: `default`) on
    the web tier, until stopped; every answer recorded."""

    client: httpx.AsyncClient
    headers: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(LOAD_CLIENTS)]

    async def _loop(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                response = await self.client.post(
                    "/api/v1/models/iris/predict", json={"rows": IRIS_ROWS}, headers=self.headers
                )
            except httpx.HTTPError as exc:
                self.outcomes.append(Outcome(sent, 0, None, f"{type(exc).__name__}: {exc}"))
                continue
            if response.status_code == 200:
                self.outcomes.append(Outcome(sent, 200, response.json().get("version"), ""))
            else:
                self.outcomes.append(Outcome(sent, response.status_code, None, response.text[:300]))
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def since(self, moment: float, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if moment <= o.sent < until]

    async def wait_for(self, count: int, moment: float) -> None:
        """Until `count` answers to requests sent after `moment` (within 30 s)."""
        deadline = time.monotonic() + 30
        while len(self.since(moment)) < count:
            assert time.monotonic() < deadline, f"only {len(self.since(moment))} answers in 30 s"
            await asyncio.sleep(0.02)


async def server_ready(server: httpx.AsyncClient) -> dict[str, Any]:
    ready = await server.get("/readyz")
    assert ready.status_code == 200, ready.text
    body: dict[str, Any] = ready.json()
    return body


async def until(
    check: Callable[[], Awaitable[dict[str, Any]]], want: Callable[[dict[str, Any]], bool], what: str
) -> tuple[dict[str, Any], float]:
    """Poll `check` until `want` holds of its answer; (that answer, seconds it took)."""
    started = time.monotonic()
    while True:
        seen = await check()
        elapsed = time.monotonic() - started
        if want(seen):
            return seen, elapsed
        assert elapsed < CONVERGENCE_S, f"not within {CONVERGENCE_S} s: {what}; last seen {seen}"
        await asyncio.sleep(0.05)


def iris_on(ready: dict[str, Any]) -> list[str] | None:
    versions: list[str] | None = ready["model_versions"].get("iris")
    return versions


async def predict_version(client: httpx.AsyncClient, headers: dict[str, str], version: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/models/iris/versions/{version}/predict", json={"rows": IRIS_ROWS}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["model"] == "iris"
    assert body["version"] == version
    return body


def loaded_iris(state: dict[str, Any]) -> list[str]:
    """The iris versions a model-repository answer says the fleet loads."""
    return sorted(x["version"] for x in state["loaded"] if x["name"] == "iris")


def here(state: dict[str, Any]) -> dict[tuple[str, str], str]:
    """How the answering web process stands: (name, version) -> READY, LOADING or UNAVAILABLE."""
    return {(v["name"], v["version"]): v["state"] for v in state["here"]}


async def test_versions_load_through_the_web_tier_onto_the_model_server_and_leave_after_its_grace(
    tmp_path: Path,
) -> None:
    model_dir = model_dir_with_iris_versions(tmp_path)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await migrate(database_url)
    server: Server = await asyncio.to_thread(
        start_model_server,
        tmp_path,
        DATABASE_URL=database_url,
        MODEL_STATE_POLL_SECONDS=str(POLL_S),
        ML_MODEL_DIR=str(model_dir),
        LOG_LEVEL="INFO",  # the registry's "model iris@2.0.0 loaded" lines
    )
    try:
        # empty=False: the database is this test's own file, and emptying it while the model
        # server still polls would send that server back to the manifest's seed.
        async with (
            web_app(
                database_url,
                model_dir,
                empty=False,
                ml_remote_url=server.base_url,
                model_state_poll_seconds=POLL_S,
            ) as app,
            client_for(app) as web,
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as model_server,
        ):
            tiers = Tiers(
                web,
                model_server,
                server,
                admin=await make_admin(app, web),
                user=await login(web, f"lifecycle-{uuid.uuid4().hex[:10]}@example.com"),
            )
            await tiers.run()
    finally:
        server.stop()
    # Each version loaded once on the model server (the web tier's repository call; the polls
    # after it found it loaded), 1.0.0 unloaded once, and the refused file never loaded.
    log = server.log_path.read_text(errors="replace")
    events = [json.loads(line).get("event", "") for line in log.splitlines() if line.startswith("{")]
    assert events.count("model iris@2.0.0 loaded") == 1, log[-3000:]
    assert events.count("model iris@1.0.0 unloaded") == 1, log[-3000:]
    assert "model iris@1.0.0 loaded" not in events, log[-3000:]
    assert not any("iris@3.0.0 loaded" in e for e in events), log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@dataclass
class Tiers:
    """The test's web tier (in process), its model server, their clients and users, and the
    steady predict load running through the changes."""

    web: httpx.AsyncClient
    model_server: httpx.AsyncClient
    server: Server
    admin: dict[str, str]
    user: dict[str, str]
    load: PredictLoad = field(init=False)
    moments: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.load = PredictLoad(self.web, self.user)

    async def ready(self) -> dict[str, Any]:
        """The model server's /readyz."""
        return await server_ready(self.model_server)

    async def run(self) -> None:
        first = await self.ready()
        assert iris_on(first) == ["1.0.0"], first
        assert first["model_state_revision"] == 0  # nothing stored yet: the manifest's seed
        reference = await predict_version(self.web, self.user, "1.0.0")
        self.load.start()
        try:
            await self.load.wait_for(30, time.monotonic())  # steady before the first change
            await self.load_2(reference)
            await self.promote_2_and_unload_1()
            await self.refuse_a_file_failing_its_hash()
        finally:
            await self.load.stop()
        await self.check_the_load()

    async def load_2(self, reference: dict[str, Any]) -> None:
        """Load 2.0.0 through the web tier: the model server has it loaded when the call returns
        (it loaded it before the state was stored), and follows the state to revision 1."""
        loaded = await self.web.post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=self.admin)
        assert loaded.status_code == 200, f"{loaded.text}\n{self.server.log_tail()}"
        state = loaded.json()
        assert state["revision"] == 1
        assert loaded_iris(state) == ["1.0.0", "2.0.0"]
        assert here(state)[("iris", "2.0.0")] == "READY"
        at_once = await self.ready()
        assert iris_on(at_once) == ["1.0.0", "2.0.0"], at_once
        index = await self.model_server.post("/v2/repository/index", json={"ready": True}, headers=SERVICE)
        assert index.status_code == 200, index.text
        assert {("iris", "1.0.0"), ("iris", "2.0.0")} <= {(v["name"], v["version"]) for v in index.json()}
        await until(self.ready, lambda r: r["model_state_revision"] == 1, "the model server at revision 1")

        # 2.0.0 answers by version, as 1.0.0 does (the same file); nothing routes to it yet.
        by_version = await predict_version(self.web, self.user, "2.0.0")
        assert by_version["predictions"] == reference["predictions"]
        await self.load.wait_for(20, time.monotonic())

    async def promote_2_and_unload_1(self) -> None:
        """`default` to 2.0.0, then 1.0.0 unloaded: the model server drops it after a poll and
        its grace, and no sooner."""
        self.moments["moving"] = time.monotonic()
        moved = await self.web.put(
            "/api/v1/models/iris/aliases/default", json={"version": "2.0.0"}, headers=self.admin
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["splits"] == [{"version": "2.0.0", "weight": 100}]
        self.moments["promoted"] = time.monotonic()
        await self.load.wait_for(20, self.moments["promoted"])

        asked = time.monotonic()
        unloaded = await self.web.post(f"{REPOSITORY}/iris/versions/1.0.0/unload", headers=self.admin)
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["revision"] == 3
        assert loaded_iris(unloaded.json()) == ["2.0.0"]
        soon = await self.ready()
        self.moments["soon"] = time.monotonic() - asked
        if time.monotonic() < asked + GRACE_S:
            # Within the grace (counted from when the model server saw the change, after `asked`):
            # 1.0.0 is still loaded there, for web workers that have not moved on yet.
            assert iris_on(soon) == ["1.0.0", "2.0.0"], soon
        await until(
            self.ready,
            lambda r: iris_on(r) == ["2.0.0"] and r["model_state_revision"] == 3,
            "the model server serving iris 2.0.0 alone, at revision 3",
        )
        took = self.moments["gone"] = time.monotonic() - asked
        assert took >= GRACE_S, f"1.0.0 left the model server {took:.2f} s after the unload"
        web_ready = (await self.web.get("/readyz")).json()
        assert web_ready["model_versions"]["iris"] == ["2.0.0"], web_ready
        assert web_ready["model_state_revision"] == 3
        await self.load.wait_for(20, time.monotonic())

    async def refuse_a_file_failing_its_hash(self) -> None:
        """The model server refuses iris 3.0.0 (its file fails its sha256): the web tier answers
        409 naming the file, and nothing changes anywhere."""
        refused = await self.web.post(f"{REPOSITORY}/iris/versions/3.0.0/load", headers=self.admin)
        body = assert_problem(refused, 409)
        assert body["type"].endswith("/model-load-failed"), body
        assert BAD_FILE in body["detail"], body
        assert "sha256" in body["detail"], body
        after = await self.web.get(REPOSITORY, headers=self.admin)
        assert after.status_code == 200, after.text
        assert after.json()["revision"] == 3
        assert loaded_iris(after.json()) == ["2.0.0"]
        assert here(after.json())[("iris", "3.0.0")] != "READY"
        still = await self.ready()
        assert iris_on(still) == ["2.0.0"], still
        assert still["model_state_revision"] == 3
        by_3 = await self.web.post(
            "/api/v1/models/iris/versions/3.0.0/predict", json={"rows": IRIS_ROWS}, headers=self.user
        )
        assert by_3.status_code == 404, by_3.text
        await self.load.wait_for(20, time.monotonic())

    async def check_the_load(self) -> None:
        outcomes = self.load.outcomes
        statuses: dict[int, int] = {}
        for o in outcomes:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        broken = [o for o in outcomes if o.status != 200]
        assert statuses == {200: len(outcomes)}, f"{statuses}, e.g. {broken[:5]}\n{self.server.log_tail()}"
        # Until `default` was asked to move, 1.0.0 served every request; from its answer on, 2.0.0.
        assert {o.version for o in self.load.since(0, self.moments["moving"])} == {"1.0.0"}
        assert {o.version for o in self.load.since(self.moments["promoted"])} == {"2.0.0"}
        print(
            f"\n{len(outcomes)} predictions during the changes: {statuses}; 1.0.0 still on the model "
            f"server {self.moments['soon']:.2f} s after its unload was asked, gone after "
            f"{self.moments['gone']:.2f} s (poll {POLL_S} s, grace {GRACE_S:.1f} s)"
        )
        # The model server only read the state: every revision was the admin's.
        history = (await self.web.get(REPOSITORY, headers=self.admin)).json()["history"]
        assert [h["revision"] for h in history] == [3, 2, 1]
        assert len({h["changed_by"] for h in history}) == 1
