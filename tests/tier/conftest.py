"""The model tier's real processes: MLServer (in a virtualenv of its own, made here from PyPI and
cached under `.cache/`), this service's model server (`python -m app.cli model-server`), and web
apps whose manifest points their models at either with `"executor": "remote"`.

MLServer pins an older FastAPI, so it never shares the project's environment; its inference-pool
workers need uvloop below 0.22 here (docs/models.md). Its virtualenv is made once (tests/venvs.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import PASSWORD, empty_database, make_settings
from tests.faults.server import ROOT, Server, free_port, server_env, start_server
from tests.lifespan import SERVER_STARTUP_LIMIT_S, lifespan
from tests.venvs import cached_venv

MODEL_DIR = ROOT / "ml_models"
MODEL_SERVER_TOKEN = "model-server-test-token-" + "t" * 24
# What MLServer needs, pinned; scikit-learn and numpy as the project's, so the forest saved here
# with joblib loads there unchanged.
MLSERVER_PINS = (
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    "uvloop<0.22",
    f"scikit-learn=={version('scikit-learn')}",
    f"numpy=={version('numpy')}",
    f"joblib=={version('joblib')}",
)
FOREST = "breast_cancer"


def mlserver_venv() -> Path:
    """`.cache/mlserver-venv-<hash of the pins>` (tests/venvs.py)."""
    return cached_venv("mlserver", MLSERVER_PINS, "mlserver")


def save_forest_joblib(folder: Path) -> Path:
    """The bundled breast-cancer forest (the skops file of the manifest, sha256 checked) saved with
    joblib, the format MLServer's scikit-learn runtime loads."""
    import joblib
    import skops.io as sio

    from app.ml.manifest import load_manifest, read_verified

    spec = next(m for m in load_manifest(MODEL_DIR).models if m.name == FOREST)
    forest = sio.loads(read_verified(MODEL_DIR, spec), trusted=list(spec.trusted_types))
    path = folder / "model.joblib"
    joblib.dump(forest, path)
    return path


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = SERVER_STARTUP_LIMIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        if "address already in use" in log.read_text(errors="replace"):  # alive, never to be ready
            raise RuntimeError(f"a port was taken:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"not ready in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def start_mlserver(folder: Path) -> Server:
    """MLServer serving the forest as `breast_cancer` version 1.0.0 on free ports."""
    venv = mlserver_venv()
    model = folder / FOREST
    model.mkdir(parents=True, exist_ok=True)
    save_forest_joblib(model)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": 1,
                "debug": False,
            }
        )
    )
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": FOREST,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "1.0.0"},
            }
        )
    )
    log = folder / "mlserver.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PROMETHEUS"))}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(folder)],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, http_port, log)
    try:
        wait_ready(f"{server.base_url}/v2/models/{FOREST}/ready", process, log)
    except BaseException:
        server.kill()
        raise
    return server


def stop_group(server: Server) -> None:
    """Stop MLServer and its worker processes (its own session's process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, 15)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, 9)
        server.process.wait(timeout=10)


def model_server_env(port: int, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "REDIS_URL", "PROMETHEUS"))}
    env.update(
        {
            "ENVIRONMENT": "test",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MODEL_SERVER_TOKEN": MODEL_SERVER_TOKEN,
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "WEB_CONCURRENCY": "1",
            "TIMEOUT_GRACEFUL_SHUTDOWN": "5",
            "ML_ENABLED": "true",
            # The fleet's desired state is read from here (app.services.model_fleet): an empty
            # in-memory database has none, so the model server serves the manifest's seed unless
            # a test points it at the web tier's database.
            "DATABASE_URL": "sqlite+aiosqlite:///:memory:",
        }
    )
    env.update(overrides)
    return env


def start_model_server(folder: Path, port: int | None = None, **overrides: str) -> Server:
    """`python -m app.cli model-server` on a free port (or `port`), ready (every model answers)."""
    env = model_server_env(port or free_port(), **overrides)
    server = start_server(
        env,
        folder / "model-server.log",
        args=("-m", "app.cli", "model-server"),
        timeout=SERVER_STARTUP_LIMIT_S,
    )
    try:
        wait_ready(f"{server.base_url}/readyz", server.process, server.log_path)
    except BaseException:
        server.kill()
        raise
    return server


@contextlib.contextmanager
def remote_web_worker(
    model_server: Server, folder: Path, email: str, **overrides: str
) -> Iterator[tuple[Server, dict[str, str]]]:
    """A web process (real, on a free port, its SQLite database in `folder`) whose models are all
    remote (`ML_REMOTE_URL`: every model of its manifest served by `model_server`), ready, and
    the headers of `email` registered and logged in there; stopped at the end."""
    env = server_env(
        f"sqlite+aiosqlite:///{folder / 'app.db'}",
        free_port(),
        ML_ENABLED="true",
        AUTO_MIGRATE="true",
        ML_REMOTE_URL=model_server.base_url,
        MODEL_SERVER_TOKEN=MODEL_SERVER_TOKEN,
        **overrides,
    )
    web = start_server(env, folder / "web.log")
    try:
        wait_ready(f"{web.base_url}/readyz", web.process, web.log_path)
        httpx.post(f"{web.base_url}/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        token = httpx.post(
            f"{web.base_url}/api/v1/auth/token", data={"username": email, "password": PASSWORD}
        )
        yield web, {"Authorization": f"Bearer {token.json()['access_token']}"}
    finally:
        web.stop()


def remote_manifest(
    folder: Path, remotes: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A model folder whose manifest is the bundled one with the named models made remote
    (`remotes[name]` is the entry's `remote` object); the other models stay local, files copied.
    `changes[name]` updates that entry (e.g. its `timeout_ms`)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    for entry in manifest["models"]:
        entry.update((changes or {}).get(entry["name"], {}))
        if entry["name"] in remotes:
            for key in ("format", "file", "sha256", "trusted_types"):
                entry.pop(key, None)
            entry["executor"] = "remote"
            entry["remote"] = remotes[entry["name"]]
        else:
            shutil.copy(MODEL_DIR / entry["file"], folder / entry["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def own_server(url: str, name: str, task: str = "classification", **extra: Any) -> dict[str, Any]:
    """A `remote` object for a model of this service's own model server."""
    output = "probabilities" if task == "classification" else "prediction"
    return {"url": url, "model": name, "output": output, "auth": "service-token", **extra}


@contextlib.asynccontextmanager
async def web_app(
    database_url: str, model_dir: Path, *, empty: bool = True, **overrides: Any
) -> AsyncIterator[FastAPI]:
    """An in-process web tier (its lifespan run) serving the models of `model_dir`; `empty=False`
    leaves the tables to another app open on the same database (which empties them at its end)."""
    settings = make_settings(
        database_url,
        ml_enabled=True,
        ml_model_dir=model_dir,
        model_server_token=MODEL_SERVER_TOKEN,
        prediction_log_flush_ms=20,
        rate_limit_enabled=False,
        **overrides,
    )
    application = create_app(settings)
    try:
        async with lifespan(application):
            yield application
    finally:
        if empty:
            await empty_database(database_url)


# Package scope: the servers stop when tests/tier is done, so no later test finds them among this
# process's children (tests/ml checks that a closed registry leaves no child behind).
@pytest.fixture(scope="package")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_mlserver(tmp_path_factory.mktemp("mlserver"))
    try:
        yield server
    finally:
        stop_group(server)


@pytest.fixture(scope="package")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_model_server(tmp_path_factory.mktemp("model-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The reference: every model in process, as `make run` serves them."""
    async with web_app(database_url, MODEL_DIR) as application:
        yield application


def client_for(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver")
