"""Shadow traffic (issue 24): an alias's shadow gets a copy of a share of its requests, its answers
are recorded beside the primary's and compared, never returned; a shadow that fails, hangs or is
full changes nothing for the caller, and what it drops is counted. On iris 1.0.0 and 2.0.0 (the
same file under two versions: they always agree)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.http.state import state_of
from tests.api.test_model_lifecycle import (
    IRIS_ROW,
    MODELS,
    REPOSITORY,
    App,
    eventually,
    infer,
    lifecycle_app,
    lifecycle_dir,
    load,
    make_user,
    ok,
    set_alias,
)
from tests.conftest import assert_problem
from tests.ml.conftest import MakeModelDir, make_model_dir  # noqa: F401 - the fixture

SHADOWED = {"version": "1.0.0", "shadow": {"version": "2.0.0", "percent": 100}}


@pytest.fixture
async def served(database_url: str, make_model_dir: MakeModelDir) -> Any:  # noqa: F811
    model_dir: Path = lifecycle_dir(make_model_dir, timeout_ms=300)
    async with lifecycle_app(database_url, model_dir, metrics_enabled=True) as pair:
        yield pair


async def _quality(client: Any, admin: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = ok(await client.get(f"{MODELS}/iris/quality", headers=admin))
    return body


def _counter(scraped: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in scraped.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _held_shadow(app: Any, client: Any) -> tuple[dict[str, str], asyncio.Event]:
    """An admin, and 2.0.0 loaded and shadowing `default` with its runtime held: each batch waits
    until the event is set, then raises."""
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(await set_alias(client, admin, "default", SHADOWED))
    shadow = state_of(app).resources.registry.resolve("iris", "2.0.0")
    release = asyncio.Event()

    async def held(*_: Any) -> Any:
        await release.wait()
        raise RuntimeError("released")

    shadow.runtime.run = held  # type: ignore[method-assign]
    return admin, release


async def test_a_shadow_answers_a_copy_of_every_request_beside_the_primary(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    alias = ok(await set_alias(client, admin, "default", SHADOWED))
    assert alias["shadow"] == {"version": "2.0.0", "percent": 100}
    listed = ok(await client.get(f"{MODELS}/iris/aliases", headers=admin))
    assert listed[0]["shadow"] == {"version": "2.0.0", "percent": 100}

    answers = [ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))]
    answers.append(
        ok(await client.post(f"{MODELS}/iris/predict", json={"rows": [IRIS_ROW, IRIS_ROW]}, headers=admin))
    )
    answers.append(ok(await infer(client, admin)))
    # The caller hears the primary only.
    assert [a.get("version", a.get("model_version")) for a in answers] == ["1.0.0"] * 3

    async def compared() -> bool:
        shadows = (await _quality(client, admin))["shadows"]
        return bool(shadows) and shadows[0]["compared"] == 3

    await eventually(compared, 5.0, "three copies answered by the shadow")
    (pair,) = (await _quality(client, admin))["shadows"]
    assert pair == {
        "version": "1.0.0", "shadow_version": "2.0.0", "compared": 3, "rows": 4, "agreement": 1.0,
        "mean_abs_difference": None,
    }  # fmt: skip
    scraped = (await client.get("/metrics")).text
    assert _counter(scraped, "shadow_predictions_total", model="iris", version="2.0.0") == 3
    # The truth sent for a prediction scores the shadow's answer too: live quality per shadow.
    sent = await client.post(
        f"/api/v1/predictions/{answers[1]['prediction_id']}/feedback",
        json={"truth": ["setosa", "virginica"]},
        headers=admin,
    )
    assert sent.status_code == 201, sent.text
    versions = {v["version"]: v for v in (await _quality(client, admin))["versions"]}
    assert versions["1.0.0"]["labelled"] == versions["2.0.0"]["labelled"] == 2
    assert versions["2.0.0"]["accuracy"] == versions["1.0.0"]["accuracy"] == 0.5
    # A version named directly has no shadow.
    ok(await client.post(f"{MODELS}/iris/versions/1.0.0/predict", json={"rows": [IRIS_ROW]}, headers=admin))
    await asyncio.sleep(0.3)
    assert (await _quality(client, admin))["shadows"][0]["compared"] == 3


async def test_a_shadow_that_fails_or_hangs_changes_nothing_for_the_caller(
    served: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(await set_alias(client, admin, "default", SHADOWED))
    shadow = state_of(app).resources.registry.resolve("iris", "2.0.0")

    async def fails(*_: Any) -> Any:
        raise RuntimeError("the shadow's model broke")

    async def hangs(*_: Any) -> Any:
        await asyncio.sleep(2.0)  # past the shadow's limit (3 x 300 ms), as a hung run its hard limit ends

    for behaviour, reason in ((fails, "failed"), (hangs, "timeout")):
        monkeypatch.setattr(shadow.runtime, "run", behaviour)
        for _ in range(5):
            answer = ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
            assert answer["version"] == "1.0.0"
            assert answer["prediction"] == "setosa"

        async def counted(reason: str = reason) -> bool:
            scraped = (await client.get("/metrics")).text
            return (
                _counter(scraped, "shadow_dropped_total", model="iris", reason=reason, version="2.0.0") == 5
            )

        await eventually(counted, 10.0, f"five copies dropped as {reason}")
    assert (await _quality(client, admin))["shadows"] == []


async def test_a_full_shadow_queue_drops_copies_and_never_waits(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811 - the fixture
) -> None:
    model_dir = lifecycle_dir(make_model_dir, timeout_ms=300)
    async with lifecycle_app(
        database_url, model_dir, metrics_enabled=True, shadow_queue_size=1, shadow_workers=1
    ) as (
        app,
        client,
    ):
        admin, release = await _held_shadow(app, client)
        for _ in range(6):
            ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
        scraped = (await client.get("/metrics")).text
        # One copy running, one queued, four dropped at once.
        assert (
            _counter(scraped, "shadow_dropped_total", model="iris", reason="queue-full", version="2.0.0") == 4
        )
        release.set()


async def test_a_shadow_is_a_loaded_version_the_alias_does_not_route_to(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    not_loaded = assert_problem(await set_alias(client, admin, "default", SHADOWED), 409)
    assert "not loaded" in not_loaded["detail"]
    await load(client, admin, "2.0.0")
    itself = {"version": "1.0.0", "shadow": {"version": "1.0.0", "percent": 50}}
    assert "routed to" in assert_problem(await set_alias(client, admin, "default", itself), 409)["detail"]
    for percent in (0, 101, "50"):
        bad = {"version": "1.0.0", "shadow": {"version": "2.0.0", "percent": percent}}
        refused = assert_problem(await set_alias(client, admin, "default", bad), 422)
        assert refused["errors"][0]["field"] == "shadow.percent"
    ok(await set_alias(client, admin, "default", SHADOWED))
    # Routed to as a shadow: not unloaded until the alias lets it go; then no copy goes anywhere.
    busy = assert_problem(await client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin), 409)
    assert "default" in busy["detail"]
    cleared = ok(await set_alias(client, admin, "default", {"version": "1.0.0"}))
    assert cleared["shadow"] is None
    ok(await client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin))
    ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
    await asyncio.sleep(0.3)
    assert (await _quality(client, admin))["shadows"] == []


async def test_a_shadow_takes_about_its_percent_of_requests(served: App) -> None:
    app, client = served
    admin = await make_user(app, client, "admin@example.com", admin=True)
    await load(client, admin, "2.0.0")
    ok(
        await set_alias(
            client, admin, "default", {"version": "1.0.0", "shadow": {"version": "2.0.0", "percent": 50}}
        )
    )
    for _ in range(60):
        ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
    await asyncio.sleep(0.5)
    scraped = (await client.get("/metrics")).text
    copies = _counter(scraped, "shadow_predictions_total", model="iris", version="2.0.0")
    assert 10 <= copies <= 50, copies  # 60 draws at 50%: outside this, 1 in 2 million


async def test_a_shadow_unloaded_while_its_copies_wait_changes_nothing_for_the_caller(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811 - the fixture
) -> None:
    """Copies held in the shadow (one running, three queued) when the alias lets it go and it is
    unloaded: the callers are answered by 1.0.0 throughout, each copy is dropped and counted, and
    none is answered or recorded."""
    model_dir = lifecycle_dir(make_model_dir, timeout_ms=300)
    async with lifecycle_app(database_url, model_dir, metrics_enabled=True, shadow_workers=1) as (
        app,
        client,
    ):
        admin, release = await _held_shadow(app, client)

        async def counted() -> dict[str, float]:
            """This version's shadow counters (the process's: other tests' counts are in them too)."""
            scraped = (await client.get("/metrics")).text
            seen = {
                reason: _counter(
                    scraped, "shadow_dropped_total", model="iris", reason=reason, version="2.0.0"
                )
                for reason in ("failed", "timeout", "queue-full")
            }
            seen["answered"] = _counter(scraped, "shadow_predictions_total", model="iris", version="2.0.0")
            return seen

        before = await counted()
        for _ in range(4):
            ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
        ok(await set_alias(client, admin, "default", {"version": "1.0.0"}))
        unloading = asyncio.create_task(
            client.post(f"{REPOSITORY}/iris/versions/2.0.0/unload", headers=admin)
        )
        for _ in range(3):
            answer = ok(await client.post("/api/v1/predict", json={"features": IRIS_ROW}, headers=admin))
            assert answer["version"] == "1.0.0"
        release.set()
        ok(await unloading)

        seen: dict[str, float] = {}

        async def all_dropped() -> bool:
            seen.update({k: v - before[k] for k, v in (await counted()).items()})
            # At least the four: the alias's change reaches routing as the fleet converges, so
            # a request just after it may still have been copied (and dropped in turn).
            return seen["failed"] + seen["timeout"] + seen["queue-full"] >= 4

        try:
            await eventually(all_dropped, 10.0, "the four copies dropped, counted")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; counted since the start {seen}") from None
        assert seen["answered"] == 0
        assert (await _quality(client, admin))["shadows"] == []
