"""The model lifecycle across the tiers, real model server: two web tiers (in process, as two web
workers) whose models are all served by one model server (ML_REMOTE_URL), the three sharing one
database (a SQLite file). Under a steady predict load spread across both web tiers, an admin loads
iris 2.0.0 through web tier A (the model server loads it first, through its repository extension,
before the state names it), sends it a 10% canary, moves `default` to it and unloads 1.0.0: no
request fails, every answer names the version that served it, the canary's share of 2,000
predictions is within a few points of 10%, and both web tiers and the model server come to report
the same revision and versions after each change (the model server drops 1.0.0 after its grace, not
before, by its own log). A version whose file fails its hash is refused by the model server, and the
web tier answers 409 naming the file, with nothing changed. How long each change took to reach
every process is printed, not asserted: a busy host only makes it longer.

And a regression: a version the model server loaded at a web tier's request was held 120 s even
after the state named it, so unloading it took two minutes to reach the model server."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.db.engine import create_engine
from app.db.migrations import upgrade_to_head
from app.http.state import state_of
from app.services.model_fleet import LOCAL_LOAD_HOLD_S
from tests.conftest import PASSWORD, assert_problem, make_settings
from tests.faults.server import ROOT, Server
from tests.steady_load import Outcome, SteadyLoad, post_json
from tests.tier.conftest import MODEL_SERVER_TOKEN, client_for, start_model_server, web_app

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
VERSIONS = {"1.0.0", "2.0.0"}
POLL_S = 0.3
# The model server unloads a version the state dropped this long after it first saw the change
# (app.model_server: 3 polls).
GRACE_S = 3 * POLL_S
# Every change must reach every process: waited for up to this long (a ceiling for a change that
# never arrives; the seconds each took are printed). Below the 120 s a web tier's load was held on
# the model server before the fix, so the regression case below still fails if it comes back.
CONVERGENCE_CEILING_S = 60.0
# The model server's poll in the within-one-poll case: room for a web tier's load and unload both
# to fall between two of its polls; a try where a poll fell between them is made again.
ONE_POLL_S = 3.0
ONE_POLL_TRIES = 5
PREDICT = "/api/v1/models/iris/predict"
LOAD_CLIENTS = 6  # concurrent predict loops, each alternating between the web tiers
CANARY_SAMPLE = 2_000
CANARY_SHARE = (0.06, 0.14)  # the share of the sample 2.0.0 must serve (10% asked)
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
    # What the steady load must show is that no change fails a request, not iris's 500 ms time
    # limit: in a CI rehearsal beside the other pytest pass, 3 of 2,700 requests, sent within
    # 20 ms of each other, were answered past it (504), the processes starved of CPU. A change
    # that broke requests still fails them, or holds them past this limit.
    manifest["models"][first]["timeout_ms"] = 10_000
    iris = manifest["models"][first]
    shutil.copyfile(model_dir / iris["file"], model_dir / BAD_FILE)
    v2 = {**iris, "version": "2.0.0"}
    v3 = {**iris, "version": "3.0.0", "file": BAD_FILE, "sha256": "0" * 64}
    manifest["models"][first + 1 : first + 1] = [v2, v3]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return model_dir


async def migrate(database_url: str) -> None:
    """The shared database at the head revision before any tier starts: the model server only
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


# --- the deployment -------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One model server (a subprocess) and `len(webs)` web tiers in front of it, on one database;
    an admin and a user (both usable on every web tier: the users table is shared)."""

    server: Server
    model_server: httpx.AsyncClient
    webs: dict[str, httpx.AsyncClient]
    admin: dict[str, str]
    user: dict[str, str]

    def web(self, name: str) -> httpx.AsyncClient:
        return self.webs[name]

    async def ready(self) -> dict[str, Any]:
        """The model server's /readyz."""
        return await server_ready(self.model_server)

    def model_server_log(self) -> list[dict[str, Any]]:
        log = self.server.log_path.read_text(errors="replace")
        return [json.loads(line) for line in log.splitlines() if line.startswith("{")]

    def model_server_events(self) -> list[str]:
        return [str(line.get("event", "")) for line in self.model_server_log()]

    async def logged(self, event: str) -> list[float]:
        """When (time.time()) the model server logged `event`, by its own log's timestamps; waits
        for the first such line (up to CONVERGENCE_CEILING_S)."""
        deadline = time.monotonic() + CONVERGENCE_CEILING_S
        while True:
            moments = [
                datetime.fromisoformat(line["timestamp"]).timestamp()
                for line in self.model_server_log()
                if line.get("event") == event
            ]
            if moments:
                return moments
            assert time.monotonic() < deadline, (
                f"the model server never logged {event!r}:\n{self.server.log_tail()}"
            )
            await asyncio.sleep(0.05)


@asynccontextmanager
async def deployment(
    tmp_path: Path, web_tiers: int, *, model_server_poll_s: float = POLL_S
) -> AsyncIterator[Deployment]:
    """The model server polling every `model_server_poll_s` (its INFO log names each load and
    unload), and `web_tiers` web tiers ("a", "b", ...) with every model remote on it, polling
    every POLL_S."""
    model_dir = model_dir_with_iris_versions(tmp_path)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await migrate(database_url)
    server: Server = await asyncio.to_thread(
        start_model_server,
        tmp_path,
        DATABASE_URL=database_url,
        MODEL_STATE_POLL_SECONDS=str(model_server_poll_s),
        ML_MODEL_DIR=str(model_dir),
        LOG_LEVEL="INFO",  # the registry's "model iris@2.0.0 loaded" lines
    )
    try:
        async with AsyncExitStack() as stack:
            apps: list[FastAPI] = []
            webs: dict[str, httpx.AsyncClient] = {}
            for name in "ab"[:web_tiers]:
                # empty=False on every tier: the database is this test's own file, and emptying it
                # while the model server still polls would send that server back to the
                # manifest's seed (loading 1.0.0 again).
                application = await stack.enter_async_context(
                    web_app(
                        database_url,
                        model_dir,
                        empty=False,
                        ml_remote_url=server.base_url,
                        model_state_poll_seconds=POLL_S,
                    )
                )
                apps.append(application)
                webs[name] = await stack.enter_async_context(client_for(application))
            model_server = await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.base_url, timeout=30)
            )
            first = webs["a"]
            yield Deployment(
                server,
                model_server,
                webs,
                admin=await make_admin(apps[0], first),
                user=await login(first, f"lifecycle-{uuid.uuid4().hex[:10]}@example.com"),
            )
    finally:
        server.stop()


# --- what each process reports --------------------------------------------------------------------


async def server_ready(client: httpx.AsyncClient) -> dict[str, Any]:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body: dict[str, Any] = ready.json()
    return body


def iris_on(ready: dict[str, Any]) -> list[str] | None:
    versions: list[str] | None = ready["model_versions"].get("iris")
    return versions


async def until(
    check: Callable[[], Awaitable[dict[str, Any]]],
    want: Callable[[dict[str, Any]], bool],
    what: str,
    bound: float = CONVERGENCE_CEILING_S,
) -> tuple[dict[str, Any], float]:
    """Poll `check` until `want` holds of its answer; (that answer, seconds it took)."""
    started = time.monotonic()
    while True:
        seen = await check()
        elapsed = time.monotonic() - started
        if want(seen):
            return seen, elapsed
        assert elapsed < bound, f"not within {bound} s: {what}; last seen {seen}"
        await asyncio.sleep(0.05)


async def predict_version(client: httpx.AsyncClient, headers: dict[str, str], version: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/models/iris/versions/{version}/predict", json={"rows": IRIS_ROWS}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["model"] == "iris"
    assert body["version"] == version
    return body


def at(revision: int, versions: list[str] | None = None) -> Callable[[dict[str, Any]], bool]:
    """Whether a /readyz answer is at `revision` (and, given `versions`, serves those of iris)."""
    return lambda r: r["model_state_revision"] == revision and (versions is None or iris_on(r) == versions)


def loaded_iris(state: dict[str, Any]) -> list[str]:
    """The iris versions a model-repository answer says the fleet loads."""
    return sorted(x["version"] for x in state["loaded"] if x["name"] == "iris")


def here(state: dict[str, Any]) -> dict[tuple[str, str], str]:
    """How the answering web process stands: (name, version) -> READY, LOADING or UNAVAILABLE."""
    return {(v["name"], v["version"]): v["state"] for v in state["here"]}


# --- the lifecycle under load ---------------------------------------------------------------------


async def test_two_web_tiers_and_the_model_server_load_canary_promote_and_unload_under_load(
    tmp_path: Path,
) -> None:
    async with deployment(tmp_path, web_tiers=2) as tiers:
        run = Lifecycle(tiers)
        await run.run()
    # Each version loaded once on the model server (web tier A's repository call; B's load when
    # it followed the state, and the polls, found it loaded), 1.0.0 unloaded once, and the
    # refused file never loaded.
    log = tiers.server.log_path.read_text(errors="replace")
    events = tiers.model_server_events()
    assert events.count("model iris@2.0.0 loaded") == 1, log[-3000:]
    assert events.count("model iris@1.0.0 unloaded") == 1, log[-3000:]
    assert "model iris@1.0.0 loaded" not in events, log[-3000:]
    assert not any("iris@3.0.0 loaded" in e for e in events), log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@dataclass
class Lifecycle:
    """The changes, made through either web tier, and the steady predict load running through
    them; when each was asked and how long every process took to report it."""

    tiers: Deployment
    load: SteadyLoad = field(init=False)
    moments: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # Seconds after 1.0.0's unload was asked until the model server dropped it: by its own log
    # ("logged") and as this test saw it in its /readyz ("seen").
    unload_took: dict[str, float] = field(default_factory=dict)
    sample: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        # POST /api/v1/models/iris/predict (no version: `default`) in closed loops alternating
        # between the web tiers; on this event loop, where the in-process web tiers live.
        self.load = SteadyLoad(
            self.tiers.webs,
            post_json(PREDICT, {"rows": IRIS_ROWS}, self.tiers.user),
            loops=LOAD_CLIENTS,
            pause_s=0.002,
        )

    async def states(self) -> dict[str, dict[str, Any]]:
        """What each process reports: its /readyz's revision and iris versions; and, on the web
        tiers, how iris's `default` is routed there (version -> weight)."""
        ready = await self.tiers.ready()
        seen = {"model server": {"revision": ready["model_state_revision"], "versions": iris_on(ready)}}
        for name, web in self.tiers.webs.items():
            ready = await server_ready(web)
            model = await web.get("/api/v1/models/iris", headers=self.tiers.admin)
            assert model.status_code == 200, model.text
            default = model.json()["aliases"].get("default", [])
            seen[f"web {name}"] = {
                "revision": ready["model_state_revision"],
                "versions": iris_on(ready),
                "default": {r["version"]: r["weight"] for r in default},
            }
        return seen

    async def converged(
        self, step: str, *, revision: int, versions: list[str], default: dict[str, int]
    ) -> None:
        """Until every process reports `revision` with iris `versions` loaded (and, on the web
        tiers, `default` routed as given); the seconds since the admin's call returned (the
        moment `step`) are this step's convergence time. Fails after CONVERGENCE_CEILING_S."""
        want = {"revision": revision, "versions": versions}
        want_web = {**want, "default": default}

        def agree(seen: dict[str, Any]) -> bool:
            return all(s == (want if p == "model server" else want_web) for p, s in seen.items())

        await until(self.states, agree, f"every process at revision {revision}, iris {versions}, {default}")
        self.timings[step] = time.monotonic() - self.moments[step]

    async def run(self) -> None:
        web_a, web_b = self.tiers.web("a"), self.tiers.web("b")
        first = await self.states()
        assert set(first) == {"model server", "web a", "web b"}
        for process, seen in first.items():
            # Nothing stored yet: the manifest's seed.
            assert seen["revision"] == 0, (process, seen)
            assert seen["versions"] == ["1.0.0"], (process, seen)
        reference = await predict_version(web_a, self.tiers.user, "1.0.0")
        assert (await predict_version(web_b, self.tiers.user, "1.0.0"))["predictions"] == reference[
            "predictions"
        ]
        await self.load.start()
        try:
            await self.load.wait_for(100, time.monotonic())  # steady before the first change
            await self.load_2(reference)
            await self.canary()
            await self.promote_2_and_unload_1()
            await self.refuse_a_file_failing_its_hash()
        finally:
            await self.load.stop()
        await self.check_the_load()

    async def load_2(self, reference: dict[str, Any]) -> None:
        """Load 2.0.0 through web tier A: the model server has it loaded when the call returns
        (it loaded it before the state was stored), and every process follows the state to
        revision 1; nothing routes to 2.0.0 yet."""
        tiers = self.tiers
        loaded = await tiers.web("a").post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=tiers.admin)
        assert loaded.status_code == 200, f"{loaded.text}\n{tiers.server.log_tail()}"
        self.moments["load"] = time.monotonic()
        state = loaded.json()
        assert state["revision"] == 1
        assert loaded_iris(state) == ["1.0.0", "2.0.0"]
        assert here(state)[("iris", "2.0.0")] == "READY"
        at_once = await tiers.ready()
        assert iris_on(at_once) == ["1.0.0", "2.0.0"], at_once
        index = await tiers.model_server.post("/v2/repository/index", json={"ready": True}, headers=SERVICE)
        assert index.status_code == 200, index.text
        assert {("iris", "1.0.0"), ("iris", "2.0.0")} <= {(v["name"], v["version"]) for v in index.json()}
        await self.converged("load", revision=1, versions=["1.0.0", "2.0.0"], default={"1.0.0": 100})

        # 2.0.0 answers by version on both web tiers, as 1.0.0 does (the same file).
        for web in tiers.webs.values():
            by_version = await predict_version(web, tiers.user, "2.0.0")
            assert by_version["predictions"] == reference["predictions"]
        await self.load.wait_for(50, time.monotonic())

    async def canary(self) -> None:
        """`default` split 90/10 between 1.0.0 and 2.0.0 (not sticky), set through web tier B;
        then a sample of the predictions sent once every process routes it."""
        tiers = self.tiers
        split = [{"version": "1.0.0", "weight": 90}, {"version": "2.0.0", "weight": 10}]
        self.moments["canary asked"] = time.monotonic()
        alias = await tiers.web("b").put(
            "/api/v1/models/iris/aliases/default", json={"split": split, "sticky": False}, headers=tiers.admin
        )
        assert alias.status_code == 200, alias.text
        self.moments["canary"] = time.monotonic()
        assert alias.json()["splits"] == split
        assert alias.json()["sticky"] is False
        await self.converged(
            "canary", revision=2, versions=["1.0.0", "2.0.0"], default={"1.0.0": 90, "2.0.0": 10}
        )
        self.sample = await self.load.wait_for(CANARY_SAMPLE, time.monotonic())

    async def promote_2_and_unload_1(self) -> None:
        """`default` to 2.0.0 (through A), then 1.0.0 unloaded (through B): the web tiers drop it
        at their next poll, the model server after a poll and its grace, and no sooner."""
        tiers = self.tiers
        moved = await tiers.web("a").put(
            "/api/v1/models/iris/aliases/default", json={"version": "2.0.0"}, headers=tiers.admin
        )
        assert moved.status_code == 200, moved.text
        self.moments["promote"] = time.monotonic()
        assert moved.json()["splits"] == [{"version": "2.0.0", "weight": 100}]
        await self.converged("promote", revision=3, versions=["1.0.0", "2.0.0"], default={"2.0.0": 100})
        self.moments["promoted"] = time.monotonic()
        await self.load.wait_for(100, self.moments["promoted"])

        asked, asked_at = time.monotonic(), time.time()
        unloaded = await tiers.web("b").post(f"{REPOSITORY}/iris/versions/1.0.0/unload", headers=tiers.admin)
        assert unloaded.status_code == 200, unloaded.text
        self.moments["unload"] = time.monotonic()
        assert unloaded.json()["revision"] == 4
        assert loaded_iris(unloaded.json()) == ["2.0.0"]
        await until(
            tiers.ready,
            lambda r: iris_on(r) == ["2.0.0"] and r["model_state_revision"] == 4,
            "the model server serving iris 2.0.0 alone, at revision 4",
        )
        self.unload_took["seen"] = time.monotonic() - asked
        # The model server kept 1.0.0 for its grace (counted from its first poll after `asked`),
        # for web workers that have not moved on yet. Its own log says when it dropped it, so this
        # holds however late this test looked.
        [dropped] = await tiers.logged("model iris@1.0.0 unloaded")
        took = self.unload_took["logged"] = dropped - asked_at
        assert took >= GRACE_S, f"1.0.0 left the model server {took:.2f} s after the unload was asked"
        await self.converged("unload", revision=4, versions=["2.0.0"], default={"2.0.0": 100})
        await self.load.wait_for(50, time.monotonic())

    async def refuse_a_file_failing_its_hash(self) -> None:
        """The model server refuses iris 3.0.0 (its file fails its sha256): the web tier answers
        409 naming the file, and nothing changes anywhere."""
        tiers = self.tiers
        refused = await tiers.web("a").post(f"{REPOSITORY}/iris/versions/3.0.0/load", headers=tiers.admin)
        body = assert_problem(refused, 409)
        assert body["type"].endswith("/model-load-failed"), body
        assert BAD_FILE in body["detail"], body
        assert "sha256" in body["detail"], body
        after = await tiers.web("b").get(REPOSITORY, headers=tiers.admin)
        assert after.status_code == 200, after.text
        assert after.json()["revision"] == 4
        assert loaded_iris(after.json()) == ["2.0.0"]
        refused_here = await tiers.web("a").get(REPOSITORY, headers=tiers.admin)
        assert here(refused_here.json())[("iris", "3.0.0")] != "READY"
        for process, seen in (await self.states()).items():
            assert seen["revision"] == 4, (process, seen)
            assert seen["versions"] == ["2.0.0"], (process, seen)
        for web in tiers.webs.values():
            by_3 = await web.post(
                "/api/v1/models/iris/versions/3.0.0/predict", json={"rows": IRIS_ROWS}, headers=tiers.user
            )
            assert by_3.status_code == 404, by_3.text
        await self.load.wait_for(50, time.monotonic())

    async def check_the_load(self) -> None:
        outcomes = self.load.outcomes
        statuses = dict(self.load.statuses())
        broken = self.load.failures(VERSIONS)
        assert not broken, f"{statuses}, e.g. {broken[:5]}\n{self.tiers.server.log_tail()}"
        assert {o.client for o in outcomes} == {"a", "b"}

        # Answered before the canary was asked: 1.0.0. Sent once every process routed the
        # canary: the sample, both versions from both tiers, 2.0.0 near 10%. Sent once every
        # process routed `default` to 2.0.0: 2.0.0 only.
        before = self.load.answered_before(self.moments["canary asked"])
        assert before
        assert {o.version for o in before} == {"1.0.0"}
        sample = self.sample
        assert len(sample) == CANARY_SAMPLE
        share = sum(o.version == "2.0.0" for o in sample) / len(sample)
        by_tier = {
            tier: (sum(o.version == "2.0.0" for o in mine) / len(mine), len(mine))
            for tier in ("a", "b")
            if (mine := [o for o in sample if o.client == tier])
        }
        assert set(by_tier) == {"a", "b"}, by_tier
        assert all(tier_share > 0 for tier_share, _ in by_tier.values()), by_tier
        after = self.load.since(self.moments["promoted"])
        assert after
        assert {o.version for o in after} == {"2.0.0"}, {o.version for o in after}
        print(
            f"\n{len(outcomes)} predictions across web tiers a and b during the changes: {statuses}; "
            f"canary share {share:.1%} of {len(sample)} "
            f"({', '.join(f'{t}: {s:.1%} of {n}' for t, (s, n) in by_tier.items())}); "
            f"convergence (admin call returned -> both web tiers and the model server report it), "
            f"poll {POLL_S} s, grace {GRACE_S:.1f} s: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
            + f"; 1.0.0 dropped by the model server {self.unload_took['logged']:.2f} s after its "
            f"unload was asked (its log), seen gone after {self.unload_took['seen']:.2f} s"
        )
        assert CANARY_SHARE[0] <= share <= CANARY_SHARE[1], share

        # The model server only read the state: every revision was the admin's.
        history = (await self.tiers.web("a").get(REPOSITORY, headers=self.tiers.admin)).json()["history"]
        assert [h["revision"] for h in history] == [4, 3, 2, 1]
        assert len({h["changed_by"] for h in history}) == 1


# --- regression -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seen", [True, False], ids=["after-the-model-server-saw-the-load", "within-one-poll"]
)
async def test_a_version_loaded_for_a_web_tier_leaves_the_model_server_soon_after_its_unload(
    tmp_path: Path, seen: bool
) -> None:
    """The model server holds a version it loaded at a web tier's request (LocalRepository, 120 s)
    only until a later state comes: unloaded through the web tier without any alias ever routing
    to it, 2.0.0 leaves the model server after a poll and its grace, not two minutes later; also
    when the load and the unload both happen within one of its polls (it never sees a state
    naming 2.0.0: still at the revision before the load when the unload has returned)."""
    poll = POLL_S if seen else ONE_POLL_S
    grace = 3 * poll
    async with deployment(tmp_path, web_tiers=1, model_server_poll_s=poll) as tiers:
        web = tiers.web("a")
        assert iris_on(await tiers.ready()) == ["1.0.0"]
        tries = 0
        while True:
            tries += 1
            before = (await tiers.ready())["model_state_revision"]
            loaded = await web.post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=tiers.admin)
            assert loaded.status_code == 200, f"{loaded.text}\n{tiers.server.log_tail()}"
            assert loaded.json()["revision"] == before + 1
            assert iris_on(await tiers.ready()) == ["1.0.0", "2.0.0"]
            if seen:
                # The model server has seen the state name 2.0.0 (its hold for the web tier is over).
                await until(
                    tiers.ready,
                    at(before + 1),
                    f"the model server at revision {before + 1}",
                )
            asked_at = time.time()
            unloaded = await web.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=tiers.admin)
            assert unloaded.status_code == 200, unloaded.text
            revision = unloaded.json()["revision"]
            assert revision == before + 2
            assert loaded_iris(unloaded.json()) == ["1.0.0"]
            if seen:
                break
            # Still at the revision before the load, with both changes stored: the model server
            # never saw the state naming 2.0.0 (its revision only moves forward, to the newest).
            if (await tiers.ready())["model_state_revision"] == before:
                break
            # One of its polls fell between the two: settle, and try again.
            assert tries < ONE_POLL_TRIES, f"a poll fell between the load and the unload {tries} times"
            await until(
                tiers.ready,
                at(revision, ["1.0.0"]),
                f"the model server settled at revision {revision} before another try",
            )

        await until(
            tiers.ready,
            at(revision, ["1.0.0"]),
            "the model server serving iris 1.0.0 alone after 2.0.0's unload",
        )
        dropped = (await tiers.logged("model iris@2.0.0 unloaded"))[-1]
        took = dropped - asked_at
        print(
            f"\n2.0.0 dropped by the model server {took:.2f} s after its unload was asked (poll "
            f"{poll} s, grace {grace:.1f} s; the hold it once waited for: {LOCAL_LOAD_HOLD_S:.0f} s); "
            f"{tries} tr{'y' if tries == 1 else 'ies'}"
        )
        assert took >= grace, f"2.0.0 left the model server {took:.2f} s after the unload was asked"
        web_ready = await server_ready(web)
        assert iris_on(web_ready) == ["1.0.0"], web_ready
        by_default = await web.post(PREDICT, json={"rows": IRIS_ROWS}, headers=tiers.user)
        assert by_default.status_code == 200, by_default.text
        assert by_default.json()["version"] == "1.0.0"
    events = tiers.model_server_events()
    assert events.count("model iris@2.0.0 loaded") == tries, events
    assert events.count("model iris@2.0.0 unloaded") == tries, events
