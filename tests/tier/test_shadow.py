"""Shadow traffic through the model tier (issue 24): a web tier whose models are all on a real
model server sends a copy of each request to the alias's shadow, on that server too, and records
its answers beside the primary's; the caller hears the primary only. Drift counts the rows each
version was asked about, the shadow's copies among them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.test_model_lifecycle import eventually
from tests.tier.test_lifecycle import IRIS_ROWS, PREDICT, REPOSITORY, deployment

REQUESTS = 12


async def test_a_shadow_on_the_model_server_answers_a_copy_of_each_request(tmp_path: Path) -> None:
    async with deployment(tmp_path, web_tiers=1) as tiers:
        web = tiers.web("a")
        loaded = await web.post(f"{REPOSITORY}/iris/versions/2.0.0/load", headers=tiers.admin)
        assert loaded.status_code == 200, f"{loaded.text}\n{tiers.server.log_tail()}"
        shadowed = await web.put(
            "/api/v1/models/iris/aliases/default",
            json={"version": "1.0.0", "shadow": {"version": "2.0.0", "percent": 100}},
            headers=tiers.admin,
        )
        assert shadowed.status_code == 200, shadowed.text
        for _ in range(REQUESTS):
            answer = await web.post(PREDICT, json={"rows": IRIS_ROWS}, headers=tiers.user)
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == "1.0.0"

        async def shadows() -> list[dict[str, Any]]:
            quality = await web.get("/api/v1/models/iris/quality", headers=tiers.admin)
            assert quality.status_code == 200, quality.text
            found: list[dict[str, Any]] = quality.json()["shadows"]
            return found

        async def all_compared() -> bool:
            found = await shadows()
            return bool(found) and found[0]["compared"] == REQUESTS

        await eventually(all_compared, 15.0, f"{REQUESTS} copies answered by the shadow on the model server")
        (pair,) = await shadows()
        # The same file under two versions, both on the model server: every label alike.
        assert pair["version"] == "1.0.0"
        assert pair["shadow_version"] == "2.0.0"
        assert pair["rows"] == REQUESTS * len(IRIS_ROWS)
        assert pair["agreement"] == 1.0
        # Drift counts both: the primary's rows asked, and the copies the shadow answered.
        asked = REQUESTS * len(IRIS_ROWS)

        async def drift_counted() -> bool:
            quality = (await web.get("/api/v1/models/iris/quality", headers=tiers.admin)).json()
            return [(v["version"], (v["drift"] or {}).get("rows")) for v in quality["versions"]] == [
                ("1.0.0", asked),
                ("2.0.0", asked),
            ]

        await eventually(drift_counted, 10.0, "drift counted for the primary and the shadow")
        # Both versions are the model server's: the web tier runs no model of its own.
        info = await web.get("/api/v1/models/iris", headers=tiers.user)
        assert info.json()["executor"] == "remote", info.text
