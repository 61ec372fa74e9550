"""The forkserver the process-pool models' workers fork from, startable before the app is imported.

It imports scikit-learn and skops once (about a second, see `worker_preload`). Started by the
server entry point before uvicorn imports the app (app.server), that second runs on another
core while the web process imports FastAPI and SQLAlchemy, instead of after them: start-up to
ready is about a second shorter (docs/performance.md). Only the standard library is imported here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from multiprocessing import forkserver
from pathlib import Path

PRELOAD = ["app.ml.worker_preload"]


def use_preload(context: multiprocessing.context.BaseContext) -> None:
    """Make the forkserver of this process (started once, lazily) preload the worker modules."""
    context.set_forkserver_preload(PRELOAD)


def has_process_pool_models(model_dir: Path) -> bool:
    """Whether the manifest lists a model served by worker processes (`executor: process`). A
    missing or broken manifest answers False: the registry reports it at start-up, by name."""
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        return any(entry.get("executor") == "process" for entry in manifest["models"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def start_early(model_dir: Path) -> bool:
    """Start this process's forkserver now if the manifest needs worker processes and the process
    may use more than one core (on one core the two imports would only take turns: measured 0.15 s
    slower); True if it did. Returns at once: the forkserver imports in the background."""
    if len(os.sched_getaffinity(0)) < 2 or not has_process_pool_models(model_dir):
        return False
    use_preload(multiprocessing.get_context("forkserver"))
    forkserver.ensure_running()
    return True
