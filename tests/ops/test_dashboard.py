"""The Grafana dashboard (deploy/grafana, issue 24) checked for real: a real server under traffic
(two versions of iris, one the other's shadow; feedback; refusals; shadow copies dropped; drift)
scraped by a real Prometheus (Debian's package), and every query of every panel evaluated through
Prometheus' HTTP API, each returning series. Grafana is not packaged here: the JSON is checked for
what importing it needs (unique ids, the provisioned data source's uid, a 24-column grid, its
variables' metrics present)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.api.test_feedback import _feedback
from tests.conftest import PASSWORD
from tests.faults.server import ROOT, free_port, server_env, start_server
from tests.ml.conftest import MakeModelDir, make_model_dir, model_entry  # noqa: F401 - the fixture

PROMETHEUS = os.environ.get("PROMETHEUS_PATH", "/usr/bin/prometheus")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fastapi-ml-service.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
# What Grafana puts in place of the dashboard's variables with "All" selected, and of its rate
# window (at least four scrapes: here one a second).
SUBSTITUTES = {"$model": ".+", "$version": ".+", "$__rate_interval": "1m"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(PROMETHEUS).exists(),
        reason=f"no Prometheus at {PROMETHEUS}: install Debian's `prometheus` package (CI does)",
    ),
]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_the_dashboard_is_one_grafana_imports_and_compose_provisions() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "fastapi-ml-service.yaml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    # What issue 24 asks to see per version, each in a panel.
    text = json.dumps(dashboard)
    for metric in (
        "model_predictions_total",  # requests
        "model_batch_duration_seconds",  # latency
        "model_requests_rejected_total",  # errors
        "model_queue_depth",
        "model_batch_size",
        "model_quality",
        "model_shadow_agreement",
        "model_drift_psi",
    ):
        assert metric in text, metric


async def test_every_panel_query_returns_series_from_a_real_prometheus(
    tmp_path: Path,
    make_model_dir: MakeModelDir,  # noqa: F811 - the fixture
) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        iris, diabetes = model_entry(manifest, "iris"), model_entry(manifest, "diabetes")
        # Failures whatever the machine's load: iris 3.0.0 takes diabetes's ten features, so each
        # copy of an iris request it shadows is dropped (it cannot score it); `broken`'s one
        # version is on a model server that is down, so each request to it is refused (503).
        other = {"features": diabetes["features"], "task": "regression", "labels": [], "reference": None}
        local = ("format", "file", "sha256", "trusted_types")
        down = {k: v for k, v in copy.deepcopy(diabetes).items() if k not in local}
        remote = {"url": f"http://127.0.0.1:{free_port()}", "model": "diabetes", "output": "prediction"}
        manifest["models"] += [
            {**copy.deepcopy(iris), "version": "2.0.0"},
            {**copy.deepcopy(diabetes), "name": "iris", "version": "3.0.0", **other},
            {**down, "name": "broken", "executor": "remote", "remote": remote},
        ]

    model_dir = make_model_dir(edit, only=("iris", "diabetes", "broken"))
    port = free_port()
    # A SQLite file, whichever pass runs it: what the dashboard shows does not depend on the database.
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    env = server_env(
        database_url,
        port,
        ML_ENABLED="true",
        ML_MODEL_DIR=str(model_dir),
        METRICS_ENABLED="true",
        PREDICTION_LOG_FLUSH_MS="20",
    )
    server = start_server(env, tmp_path / "server.log")
    prometheus = _start_prometheus(tmp_path, port)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            await _traffic(client, env)
        queries = _queries(json.loads(DASHBOARD.read_text()))
        async with httpx.AsyncClient(base_url=prometheus.url, timeout=10) as prom:
            await _until_scraped_twice_since(prom, time.time())
            empty = []
            for title, template in queries:
                expr = template
                for name, value in SUBSTITUTES.items():
                    expr = expr.replace(name, value)
                answer = (await prom.get("/api/v1/query", params={"query": expr})).json()
                assert answer["status"] == "success", f"{title}: {expr}: {answer}"
                if not answer["data"]["result"]:
                    empty.append(f"{title}: {expr}")
            assert not empty, "panel queries with no series:\n" + "\n".join(empty)
            for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
                found = re.fullmatch(r"label_values\((\w+).*, (\w+)\)", variable["definition"])
                assert found is not None, variable["definition"]
                metric, label = found.groups()
                values = await prom.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
                assert values.json()["data"], variable["name"]
    finally:
        prometheus.stop()
        server.stop()


class _Prometheus:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.url, self.log = process, f"http://127.0.0.1:{port}", log

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _start_prometheus(tmp_path: Path, target_port: int) -> _Prometheus:
    """Prometheus scraping the server every second, on a port of its own, storing under tmp_path."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "api", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
                ],
            }
        )
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = _Prometheus(process, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{prometheus.url}/-/ready", timeout=1).status_code == 200:
                return prometheus
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    prometheus.stop()
    raise AssertionError(f"Prometheus not ready in 30 s:\n{log.read_text()}")


async def _until_scraped_twice_since(prom: httpx.AsyncClient, since: float) -> None:
    """Two successful scrapes after the traffic (a rate needs two samples; a scrape that timed out
    while the server was busy marks every series stale), within 30 s."""
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        targets = (await prom.get("/api/v1/targets")).json()["data"]["activeTargets"]
        for target in targets:  # the one target, once Prometheus has set it up
            if target["health"] == "up" and _seconds(target["lastScrape"]) > since:
                seen.add(target["lastScrape"])
        if len(seen) >= 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not scraped twice since the traffic: {targets}")


def _seconds(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")[:26] + "+00:00").timestamp()


async def _traffic(client: httpx.AsyncClient, env: dict[str, str]) -> None:
    """Predictions on iris (1.0.0, shadowed by 2.0.0) and diabetes, the truth for them, a burst
    each: what every panel shows."""
    email = "admin@example.com"
    registered = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    promoted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "create-admin", "--email", email, "--password", PASSWORD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    assert promoted.returncode == 0, promoted.stderr.decode()
    token = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
    for model, version in (("iris", "2.0.0"), ("iris", "3.0.0")):
        loaded = await client.post(f"/api/v1/model-repository/{model}/versions/{version}/load", headers=admin)
        assert loaded.status_code == 200, loaded.text
    # `default` shadowed by 2.0.0 (the same model: they agree); `down` by 3.0.0, which drops each copy.
    for alias, shadow in (("default", "2.0.0"), ("down", "3.0.0")):
        shadowed = await client.put(
            f"/api/v1/models/iris/aliases/{alias}",
            json={"version": "1.0.0", "shadow": {"version": shadow, "percent": 100}},
            headers=admin,
        )
        assert shadowed.status_code == 200, shadowed.text

    from sklearn.datasets import load_diabetes, load_iris

    iris, diabetes = load_iris(), load_diabetes()
    labels = iris.target_names.tolist()
    rng = np.random.default_rng(3)
    for model, data, truth in (
        ("iris", iris.data, lambda i: labels[iris.target[i]]),
        ("diabetes", diabetes.data, lambda i: float(diabetes.target[i])),
    ):
        for _ in range(8):
            picked = rng.choice(len(data), size=16)
            rows = data[picked].round(4).tolist()
            answer = await client.post(f"/api/v1/models/{model}/predict", json={"rows": rows}, headers=admin)
            assert answer.status_code == 200, answer.text
            sent = await _feedback(client, admin, answer.json()["prediction_id"], [truth(i) for i in picked])
            assert sent.status_code == 201, sent.text
    for _ in range(3):
        row = {"rows": [iris.data[0].tolist()]}
        answered = await client.post("/api/v1/models/iris/versions/down/predict", json=row, headers=admin)
        assert answered.status_code == 200, answered.text  # 1.0.0 answers; 3.0.0's copy is dropped
        row = {"rows": [diabetes.data[0].tolist()]}
        refused = await client.post("/api/v1/models/broken/predict", json=row, headers=admin)
        assert refused.status_code == 503, refused.text
