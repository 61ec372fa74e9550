"""The production server: uvicorn, under its own worker supervisor, every value from settings.

One worker and no `limit_max_requests`: uvicorn serves in this process (fastest start, fewest
processes). Otherwise uvicorn's `Multiprocess` supervisor binds the socket once, starts the
workers (spawned, each importing `app.main:app`), pings them, replaces any that dies or retires
after `limit_max_requests` (+ jitter), and on SIGTERM/SIGINT asks each to drain for
`timeout_graceful_shutdown` seconds before it exits itself with status 0.

After a clean drain the in-process path ends the process with `os._exit(0)` rather than letting the
interpreter free every module one by one (see `_exit_now`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from uvicorn.supervisors import Multiprocess

from app.core.config import Settings
from app.observability.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

log = structlog.get_logger("app.server")

APP = "app.main:app"
MODEL_SERVER_APP = "app.model_server:app"
# uvicorn's exit status for "the app failed before it started serving".
STARTUP_FAILURE = 3


def supervised(settings: Settings) -> bool:
    """Whether a supervisor process runs the workers (it must, to restart retired workers)."""
    return settings.web_concurrency > 1 or settings.limit_max_requests is not None


def metrics_dir(settings: Settings) -> Path | None:
    """The prometheus multiprocess folder to use: the configured one, or a fresh one in the temp
    dir when several processes serve; None for one in-process worker with none configured."""
    if settings.prometheus_multiproc_dir is not None:
        return settings.prometheus_multiproc_dir
    if supervised(settings):
        return Path(tempfile.mkdtemp(prefix="prometheus-multiproc-"))
    return None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    limit_max_requests = settings.limit_max_requests
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.web_concurrency,
        # Counted by uvicorn over open connections and running tasks: the backstop above the
        # app's own, lower, in-flight limit (app.http.shedding), which answers a 503 problem.
        "limit_concurrency": settings.limit_concurrency,
        "backlog": settings.backlog,
        "timeout_graceful_shutdown": settings.timeout_graceful_shutdown,
        "timeout_keep_alive": settings.timeout_keep_alive,
        "limit_max_requests": limit_max_requests,
        "limit_max_requests_jitter": settings.limit_max_requests_jitter if limit_max_requests else 0,
        # X-Forwarded-For/-Proto are believed only from these peers; then scope["client"] and
        # scope["scheme"] (used by rate limits, logs and HSTS) are the real client's.
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "server_header": False,
        "access_log": False,  # RequestContextMiddleware writes the one access line
        "log_config": None,  # keep the structlog handlers app.core.logging installed
        "lifespan": "on",
    }


def serve(settings: Settings, app: str = APP) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 3 if the app failed to start.

    With one in-process worker a clean drain does not return: the process ends there, with status 0
    and without the interpreter's teardown (`_exit_now`)."""
    directory = metrics_dir(settings)
    if directory is not None:
        # Before any worker imports prometheus_client: it reads the variable at import time.
        os.environ[MULTIPROC_ENV] = str(prepare_multiprocess_dir(directory))
    config = uvicorn.Config(app, **uvicorn_options(settings))
    log.info(
        "serving",
        app=app,
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        supervised=supervised(settings),
        metrics_dir=str(directory) if directory else None,
    )
    if supervised(settings):
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
        failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
        return STARTUP_FAILURE if failed else 0
    if settings.ml_enabled and settings.ml_remote_url is None and settings.ml_start_method == "forkserver":
        # Before uvicorn imports the app: the model workers' forkserver imports scikit-learn on the
        # other core meanwhile (with a supervisor, each worker starts its own in its lifespan).
        from app.ml.forkserver import start_early  # noqa: PLC0415 - standard library only

        start_early(settings.ml_model_dir)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped for once its handlers are removed; with Python's
    # default SIGTERM action that would end a clean drain with status 143 instead of 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        return STARTUP_FAILURE
    if drained_cleanly(server):
        _exit_now(0)
    return 0


def drained_cleanly(server: uvicorn.Server) -> bool:
    """Whether uvicorn ran the lifespan's shutdown to its end: no forced exit (a second Ctrl-C skips
    it), no failure reported by it. Then the pools, the prediction log, the metrics files, the
    tracer and the engine are closed and `stopped` is logged, before "Finished server process"."""
    lifespan = getattr(server, "lifespan", None)
    return server.started and not server.force_exit and lifespan is not None and not lifespan.should_exit


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, once everything of ours is closed.

    What a normal exit would still do here takes 0.24-0.30 s on a 2-core machine and is of no
    use to anyone: freeing the heap of every imported module (scikit-learn, SQLAlchemy, pydantic, FastAPI,
    ...) object by object. Measured in docs/deployment.md ("Graceful shutdown").

    The exit hooks still run first (`atexit`: logging's flush, multiprocessing's, coverage.py's
    data of a measured subprocess, an embedder's own), then stdout and stderr are flushed; only the
    teardown of the modules is skipped. Nothing of ours is left for it: the lifespan closed the
    model pools (multiprocessing has no children to join; the forkserver and the resource tracker
    exit when the pipe to this process closes, as at any exit), exported and shut the tracer down,
    marked this process's metrics files dead, and disposed of the engine.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
