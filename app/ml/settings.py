"""The model layer's tunables (`RegistrySettings`); the service's Settings maps its ML_* variables
onto these (app.http.state)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.ml.runtimes.processes import StartMethod


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Tunables of the model layer."""

    model_dir: Path = Path("ml_models")
    # Threads running ONNX models (shared by all of them); each is one batch at a time.
    onnx_threads: int = 2
    # ONNX Runtime's own threads per run; 1 because batches already run side by side.
    onnx_intra_op_threads: int = 1
    # Worker processes per skops model; each holds a copy of the model.
    process_workers: int = 2
    # forkserver: workers fork from a server that imported scikit-learn once, so a replacement
    # worker starts in milliseconds; spawn starts a fresh interpreter (seconds) per worker.
    start_method: StartMethod = "forkserver"
    # Added to the worker processes' nice value (0: as the web process). Model work then yields the
    # CPU to the web worker's event loop when both want the same core (docs/models.md).
    process_worker_nice: int = 19
    batching_enabled: bool = True
    # A batch may run timeout_ms * this long before its thread run is terminated or its worker
    # processes killed (the request itself gets PredictionTimeout at timeout_ms).
    hard_timeout_factor: float = 3.0
    # close() waits this long for in-flight predictions before killing what is left.
    close_timeout_s: float = 30.0
    # Worker processes must have loaded their model within this time at start-up.
    start_timeout_s: float = 120.0
    # True: start() returns once every worker process has loaded its model (a broken skops file
    # fails start-up). False: start() returns after the files are verified and the ONNX models
    # loaded; process-pool models answer once their workers are up (requests wait for them within
    # their time limit), which cuts seconds of cold start. See `workers_ready`.
    wait_for_workers: bool = True
    # Serve every model of the manifest from this service's model server at this base URL (the
    # web tier's ML_REMOTE_URL); None: as the manifest says (local unless `executor: remote`).
    remote_url: str | None = None
    # Sent as `Authorization: Bearer` to remote models whose manifest entry says
    # `"auth": "service-token"` (this service's model server checks it: MODEL_SERVER_TOKEN).
    remote_token: str | None = None
    # Immediate retries of a remote call that could not connect (nothing reached the server; a
    # second one would wait 0.5 s, most of a time limit).
    remote_connect_retries: int = 1
    # How often each remote model's readiness is asked of its server.
    remote_probe_interval_s: float = 2.0
    # A version the desired state no longer loads is unloaded this long after (0: at once). The
    # model server waits a few polls, so web workers still routing to it have moved on first.
    unload_grace_s: float = 0.0
    # A version that failed to load is tried again after this long.
    load_retry_s: float = 10.0

    def __post_init__(self) -> None:
        if self.onnx_threads < 1 or self.onnx_intra_op_threads < 1 or self.process_workers < 1:
            raise ValueError("onnx_threads, onnx_intra_op_threads and process_workers must be >= 1")
        if self.hard_timeout_factor < 1:
            raise ValueError("hard_timeout_factor must be >= 1")
