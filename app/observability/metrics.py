"""Prometheus metrics: the metric objects, the /metrics exposition and the per-worker samplers.

With several uvicorn workers each process keeps its own values, so prometheus_client runs in
multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` (set by `python -m app.cli serve` before the workers
start) holds one memory-mapped file per process and metric type, and a scrape that lands on any
worker adds up every worker's files. Gauges use the `livesum` mode: a worker that exits has its
gauge files removed (`mark_process_dead`), at its own shutdown or, if it was killed, at the next
scrape that finds its pid gone. Counters and histograms of dead workers are kept, so totals never
go backwards.

Gauges that describe a process's state (requests in flight, database pool, model queues) are not
updated per request: each worker samples them once a second and the scraping worker once more at
scrape time, so a request pays only for the counter and the histogram it records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latency buckets (seconds): fine below 100 ms where the API lives, coarse above.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status class.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching the app to the end of its response.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "Requests being handled now (sampled each second per worker).",
    multiprocess_mode="livesum",
)
HTTP_SHED = Counter(
    "http_requests_shed_total",
    "Requests answered 503 at once because the worker already had max_requests_in_flight.",
)
RATE_LIMITED = Counter(
    "rate_limited_requests_total",
    "Requests refused with 429, by limit.",
    ["limit"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "rate_limit_storage_errors_total",
    "Rate-limit checks that could not reach Redis (served with per-process limits instead).",
)
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out",
    "Database connections in use, all workers together.",
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW = Gauge(
    "db_pool_overflow",
    "Database connections open beyond pool_size (max_overflow bounds it), all workers together.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "db_pool_size",
    "Configured pool_size, all workers together.",
    multiprocess_mode="livesum",
)

# --- the model layer's API -------------------------------------------------------------------------
MODEL_PREDICTIONS = Counter(
    "model_predictions_total",
    "Rows predicted, by model version.",
    ["model", "version"],
)
MODEL_BATCHES = Counter(
    "model_batches_total",
    "Runtime calls (batches) made, by model version.",
    ["model", "version"],
)
MODEL_LATENCY = Histogram(
    "model_batch_duration_seconds",
    "Time of one runtime call (one batch), by model version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
MODEL_BATCH_SIZE = Histogram(
    "model_batch_size",
    "Rows per runtime call, by model version.",
    ["model", "version"],
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_QUEUE_DEPTH = Gauge(
    "model_queue_depth",
    "Requests waiting in a model version's batching queue, all workers together.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
MODEL_REJECTED = Counter(
    "model_requests_rejected_total",
    "Prediction requests refused, by model version and reason (queue full, timeout, failure).",
    ["model", "reason", "version"],
)


def observe_model_batch(model: str, version: str, rows: int, requests: int, seconds: float) -> None:
    """Record one runtime call. Matches app.ml's `BatchObserver(name, version, rows, requests,
    seconds)`."""
    del requests  # rows are what the model computed; requests per batch show in the HTTP metrics
    MODEL_PREDICTIONS.labels(model, version).inc(rows)
    MODEL_BATCHES.labels(model, version).inc()
    MODEL_LATENCY.labels(model, version).observe(seconds)
    MODEL_BATCH_SIZE.labels(model, version).observe(rows)


PREDICTION_LOG_DROPPED = Counter(
    "prediction_log_dropped_total",
    "Prediction records dropped because the log's queue was full.",
)


def observe_model_rejected(model: str, version: str, reason: str) -> None:
    """Count a refused prediction request (`reason`: "overloaded", "timeout", "failed", ...)."""
    MODEL_REJECTED.labels(model, reason, version).inc()


# Batch jobs (docs/jobs.md). The state gauges are read from the database (the same answer from
# every process), sampled by each process that runs jobs; `livemax` keeps one value, not a sum.
JOBS_BY_STATE = Gauge(
    "jobs", "Batch jobs by state (sampled from the database).", ["state"], multiprocess_mode="livemax"
)
JOBS_QUEUE_DEPTH = Gauge(
    "jobs_queue_depth", "Tasks waiting in the job engine's queue.", multiprocess_mode="livemax"
)
JOBS_OLDEST_QUEUED_AGE = Gauge(
    "jobs_oldest_queued_age_seconds",
    "Age of the oldest queued job (0: none queued).",
    multiprocess_mode="livemax",
)
JOB_ROWS = Counter("job_rows_total", "Input rows scored by batch jobs (rate: rows per second).", ["model"])
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "Time from a job's start to its end, by the state it ended in.",
    ["state"],
    buckets=(0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0),
)


def observe_job_states(counts: Mapping[str, int], queue_depth: int, oldest_age_s: float) -> None:
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        JOBS_BY_STATE.labels(state).set(counts.get(state, 0))
    JOBS_QUEUE_DEPTH.set(queue_depth)
    JOBS_OLDEST_QUEUED_AGE.set(oldest_age_s)


# Shadow traffic (docs/models.md): copies of requests answered by an alias's shadow, and the copies
# dropped (a full queue, the time limit, a failure), counted, never raised to the caller.
SHADOW_PREDICTIONS = Counter(
    "shadow_predictions_total", "Copies of requests a shadow answered.", ["model", "version"]
)
SHADOW_DROPPED = Counter(
    "shadow_dropped_total",
    "Copies of requests a shadow did not answer, by reason: queue-full, timeout, failed.",
    ["model", "version", "reason"],
)


# Live quality (docs/models.md): read from the database at each scrape by the worker scraped, over
# each version's newest labelled rows; `livemostrecent` keeps that scrape's value, not a sum.
MODEL_QUALITY = Gauge(
    "model_quality",
    "Live quality of a model version over its newest labelled rows (QUALITY_GAUGE_WINDOW), by figure: "
    "accuracy and log_loss (classifiers), mae and rmse (regressors).",
    ["model", "version", "figure"],
    multiprocess_mode="livemostrecent",
)
MODEL_QUALITY_LABELLED = Gauge(
    "model_quality_labelled_rows",
    "Labelled rows behind model_quality (at most the window).",
    ["model", "version"],
    multiprocess_mode="livemostrecent",
)


MODEL_DRIFT = Gauge(
    "model_drift_psi",
    "Population Stability Index of a model version's input feature over its newest rows "
    "(QUALITY_GAUGE_WINDOW) against its reference; over 0.2 is a shift worth acting on (app.ml.drift).",
    ["model", "version", "feature"],
    multiprocess_mode="livemostrecent",
)
MODEL_PREDICTION_DRIFT = Gauge(
    "model_prediction_drift_psi",
    "Population Stability Index of a model version's answers (labels or values) over its newest rows "
    "(QUALITY_GAUGE_WINDOW) against those it gave its reference sample.",
    ["model", "version"],
    multiprocess_mode="livemostrecent",
)
MODEL_DRIFT_ROWS = Gauge(
    "model_drift_rows",
    "Rows behind model_drift_psi (the newest minutes holding QUALITY_GAUGE_WINDOW rows asked about).",
    ["model", "version"],
    multiprocess_mode="livemostrecent",
)


def observe_drift(
    model: str, version: str, rows: int, features: Mapping[str, float | None], prediction: float | None
) -> None:
    MODEL_DRIFT_ROWS.labels(model, version).set(rows)
    for feature, value in features.items():
        if value is not None:
            MODEL_DRIFT.labels(model, version, feature).set(value)
    if prediction is not None:
        MODEL_PREDICTION_DRIFT.labels(model, version).set(prediction)


MODEL_SHADOW_AGREEMENT = Gauge(
    "model_shadow_agreement",
    "A shadow against the primary on the same requests, over the model's newest shadow records "
    "(QUALITY_GAUGE_WINDOW): the share of rows whose labels were alike (classifiers) or the mean "
    "|shadow - primary| (regressors), by figure.",
    ["figure", "model", "shadow_version", "version"],
    multiprocess_mode="livemostrecent",
)


def observe_shadow(
    model: str, version: str, shadow_version: str, figures: Mapping[str, float | None]
) -> None:
    for figure, value in figures.items():
        if value is not None:
            MODEL_SHADOW_AGREEMENT.labels(figure, model, shadow_version, version).set(value)


def observe_quality(model: str, version: str, labelled: int, figures: Mapping[str, float | None]) -> None:
    MODEL_QUALITY_LABELLED.labels(model, version).set(labelled)
    for figure, value in figures.items():
        if value is not None:
            MODEL_QUALITY.labels(model, version, figure).set(value)


# A callable returning {(model name, version): queue depth}, registered by whoever owns the models.
QueueDepthSource = Callable[[], Mapping[tuple[str, str], int]]


class InFlight:
    """The worker's count of requests being handled; LoadSheddingMiddleware keeps it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class RequestRecorder:
    """Per-request counter and histogram, with the labelled children cached: `labels()` costs a
    lock and a tuple build per call, the cache a dict lookup."""

    __slots__ = ("_children",)

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, _STATUS_CLASSES[status // 100] if 1 <= status // 100 <= 5 else "other")
        children = self._children.get(key)
        if children is None:
            children = (HTTP_REQUESTS.labels(*key), HTTP_LATENCY.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

# One per process: the label cache is shared by every app instance (tests build many).
REQUESTS = RequestRecorder()


def multiprocess_dir() -> str | None:
    """The multiprocess folder this process writes to, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: Path) -> Path:
    """Create the folder, or empty it of a previous run's files (stale pids would add up)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def mark_dead_workers(directory: str) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a killed worker never ran its
    own shutdown). Returns the pids that were marked."""
    dead: list[int] = []
    for name in os.listdir(directory):
        match = _LIVE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in dead or _alive(pid):
            continue
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        dead.append(pid)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


class Sampler:
    """Reads this worker's state gauges: requests in flight, database pool, model queues."""

    def __init__(self, in_flight: InFlight, pool: Any, pool_size: int) -> None:
        self.in_flight = in_flight
        self.pool = pool
        self.pool_size = pool_size
        self.queue_depth_sources: list[QueueDepthSource] = []

    def sample(self) -> None:
        HTTP_IN_FLIGHT.set(self.in_flight.value)
        checked_out = getattr(self.pool, "checkedout", None)
        overflow = getattr(self.pool, "overflow", None)
        if callable(checked_out) and callable(overflow):
            DB_POOL_CHECKED_OUT.set(checked_out())
            # QueuePool counts overflow from -pool_size up: negative means "not all opened yet".
            DB_POOL_OVERFLOW.set(max(0, overflow()))
            DB_POOL_SIZE.set(self.pool_size)
        for source in self.queue_depth_sources:
            for (model, version), depth in source().items():
                MODEL_QUEUE_DEPTH.labels(model, version).set(depth)

    async def run(self, interval: float = 1.0) -> None:
        """Sample until cancelled (multiprocess mode: other workers' scrapes read these files)."""
        while True:
            self.sample()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """At worker shutdown: this process's live gauges stop counting."""
        directory = multiprocess_dir()
        if directory is not None:
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """The text exposition of every metric (all workers' in multiprocess mode)."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    mark_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
