"""/metrics in one process, the model layer's metric API, and the multiprocess bookkeeping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess

from app.core.config import Settings
from app.observability import metrics
from app.server import metrics_dir, supervised, uvicorn_options
from tests.conftest import make_settings
from tests.ops.conftest import running_app, user


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in the exposition")


async def test_metrics_count_requests_by_route_template_and_status_class(database_url: str) -> None:
    async with running_app(database_url) as (_, client):
        headers = await user(client)
        route = 'http_requests_total{method="GET",route="/api/v1/items/{item_id}",status="4xx"}'
        before = (await client.get("/metrics")).text
        for item_id in (1, 2, 3):
            assert (await client.get(f"/api/v1/items/{item_id}", headers=headers)).status_code == 404
        text = (await client.get("/metrics")).text
    start = _value(before, route) if route in before else 0.0
    assert _value(text, route) == start + 3
    assert (
        'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/items/{item_id}"' in text
    )
    # Read at scrape time from this worker: the scrape itself is in flight, the pool is configured.
    assert _value(text, "http_requests_in_flight ") >= 1
    assert _value(text, "db_pool_size ") == 5
    assert _value(text, "db_pool_checked_out ") >= 0
    assert _value(text, "db_pool_overflow ") >= 0


async def test_metrics_can_be_switched_off(database_url: str) -> None:
    async with running_app(database_url, metrics_enabled=False) as (_, client):
        response = await client.get("/metrics")
    assert response.status_code == 404


def test_model_layer_api_records_predictions_latency_batch_size_and_queue() -> None:
    model = "iris-test-metrics"
    metrics.observe_model_batch(model, "1.0.0", 16, 3, 0.004)
    metrics.observe_model_batch(model, "1.0.0", 4, 4, 0.002)
    metrics.observe_model_batch(model, "2.0.0", 1, 1, 0.001)  # another version: its own series
    metrics.observe_model_rejected(model, "1.0.0", "overloaded")
    sampler = metrics.Sampler(metrics.InFlight(), pool=None, pool_size=0)
    sampler.queue_depth_sources.append(lambda: {(model, "1.0.0"): 7})
    sampler.sample()
    text = metrics.exposition().decode()
    v1 = f'model="{model}",version="1.0.0"'
    assert _value(text, f"model_predictions_total{{{v1}}}") == 20
    assert _value(text, f'model_predictions_total{{model="{model}",version="2.0.0"}}') == 1
    assert _value(text, f"model_batches_total{{{v1}}}") == 2
    assert _value(text, f'model_batch_size_bucket{{le="16.0",{v1}}}') == 2
    assert _value(text, f"model_batch_duration_seconds_count{{{v1}}}") == 2
    assert _value(text, f"model_queue_depth{{{v1}}}") == 7
    assert (
        _value(text, f'model_requests_rejected_total{{model="{model}",reason="overloaded",version="1.0.0"}}')
        == 1
    )


def test_prepare_multiprocess_dir_removes_a_previous_runs_files(tmp_path: Path) -> None:
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    keep = tmp_path / "README"
    keep.write_text("not ours")
    assert metrics.prepare_multiprocess_dir(tmp_path) == tmp_path
    assert not stale.exists()
    assert keep.exists()
    assert metrics.prepare_multiprocess_dir(tmp_path / "new").is_dir()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_workers_live_gauges_stop_counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Write a live gauge as a worker that has since died (its pid no longer exists).
    dead = _dead_pid()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    registry = CollectorRegistry()
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: dead))
    gauge = Gauge("ops_test_live", "test", multiprocess_mode="livesum", registry=registry)
    gauge.set(5)
    counter = Counter("ops_test_total", "test", registry=registry)
    counter.inc(3)
    assert (tmp_path / f"gauge_livesum_{dead}.db").exists()
    assert metrics.mark_dead_workers(str(tmp_path)) == [dead]
    assert not (tmp_path / f"gauge_livesum_{dead}.db").exists()
    # The exposition in multiprocess mode reads the folder (and skips nothing that is alive).
    text = metrics.exposition().decode()
    assert "ops_test_live 5.0" not in text
    assert "ops_test_total 3.0" in text  # a dead worker's counts stay in the totals
    assert metrics.mark_dead_workers(str(tmp_path)) == []


def test_worker_shutdown_marks_its_own_gauges_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    own = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    own.write_bytes(b"")
    metrics.Sampler(metrics.InFlight(), pool=None, pool_size=0).close()
    assert not own.exists()


def test_uvicorn_gets_every_server_value_from_settings(database_url: str) -> None:
    settings: Settings = make_settings(
        database_url,
        host="0.0.0.0",  # noqa: S104 - the value under test
        port=9123,
        web_concurrency=3,
        limit_concurrency=900,
        max_requests_in_flight=100,
        backlog=512,
        timeout_graceful_shutdown=12,
        timeout_keep_alive=7,
        limit_max_requests=5000,
        limit_max_requests_jitter=500,
        forwarded_allow_ips="10.0.0.0/8",
    )
    options = uvicorn_options(settings)
    assert options["workers"] == 3
    assert options["limit_concurrency"] == 900
    assert options["backlog"] == 512
    assert options["timeout_graceful_shutdown"] == 12
    assert options["timeout_keep_alive"] == 7
    assert (options["limit_max_requests"], options["limit_max_requests_jitter"]) == (5000, 500)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "10.0.0.0/8"
    assert options["access_log"] is False
    assert options["log_config"] is None
    assert supervised(settings)


def test_one_worker_serves_in_process_unless_it_must_be_restarted(database_url: str, tmp_path: Path) -> None:
    one = make_settings(database_url, web_concurrency=1)
    assert not supervised(one)
    assert metrics_dir(one) is None
    assert uvicorn_options(one)["limit_max_requests_jitter"] == 0
    retiring = make_settings(database_url, web_concurrency=1, limit_max_requests=1000)
    assert supervised(retiring)  # someone must start the replacement of a retired worker
    assert metrics_dir(retiring) is not None
    configured = make_settings(database_url, prometheus_multiproc_dir=tmp_path)
    assert metrics_dir(configured) == tmp_path


def test_multiprocess_collector_reads_what_workers_wrote(tmp_path: Path) -> None:
    # The scrape path of several workers, end to end on files: prometheus_client's own reader.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert generate_latest(registry) == b""
