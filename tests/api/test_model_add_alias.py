"""A version named like one of its model's aliases. The manifest holds no aliases; the fleet state
in the database does, and `/versions/{ref}` names either. `models add` refuses such a version
when it can read the state; a version that got in anyway (added before the alias, or with the
database out of reach) is never loaded (app.ml.fleet.FleetState.load: 409 naming the alias) and
never takes the alias's requests, not even while a load of it is verified here before the state
refuses it (the one fault found: a load naming no version took the manifest's newest, loaded it
ahead of the state, and `/versions/candidate` went to it instead of the alias's target)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.ml.importer import add_model
from tests.api.test_model_lifecycle import (
    REPOSITORY,
    lifecycle_app,
    load,
    make_user,
    problem_code,
    repository,
    served_version,
    set_alias,
    versions_dir,
)
from tests.conftest import assert_problem
from tests.faults.server import ROOT
from tests.ml.conftest import (
    MODEL_DIR,
    MakeModelDir,
    make_model_dir,  # noqa: F401 - the fixture
)


def _models_add(database_url: str, model_dir: Path, version: str) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli models add` of iris.onnx as a version of iris, on this database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "REDIS_URL"))}
    env.update({"ENVIRONMENT": "test", "DATABASE_URL": database_url})
    command = [sys.executable, "-m", "app.cli", "models", "add", "--model-dir", str(model_dir)]
    return subprocess.run(
        [*command, str(MODEL_DIR / "iris.onnx"), "--name", "iris", "--version", version],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_models_add_refuses_a_version_named_like_a_stored_alias(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
) -> None:
    model_dir = versions_dir(make_model_dir, ("1.0.0", "2.0.0"))
    async with lifecycle_app(database_url, model_dir) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        await load(client, admin, "2.0.0")
        assert (await set_alias(client, admin, "candidate", {"version": "2.0.0"})).status_code == 200
        manifest = (model_dir / "manifest.json").read_bytes()

        refused = _models_add(database_url, model_dir, "candidate")
        assert refused.returncode == 2, refused.stdout
        assert "--version 'candidate': model 'iris' has an alias of that name" in refused.stderr
        assert (model_dir / "manifest.json").read_bytes() == manifest
        assert not (model_dir / "iris-candidate.onnx").exists()

        added = _models_add(database_url, model_dir, "3.0.0")  # another name: taken
        assert added.returncode == 0, added.stderr
        assert "added iris 3.0.0" in added.stdout


async def test_a_version_named_like_an_alias_never_takes_its_requests(
    database_url: str,
    make_model_dir: MakeModelDir,  # noqa: F811
) -> None:
    model_dir = versions_dir(make_model_dir, ("1.0.0", "2.0.0"))
    async with lifecycle_app(database_url, model_dir) as (app, client):
        admin = await make_user(app, client, "admin@example.com", admin=True)
        await load(client, admin, "2.0.0")
        assert (await set_alias(client, admin, "candidate", {"version": "2.0.0"})).status_code == 200
        # As `models add` takes it when it cannot read the state (or took it before the alias).
        add_model(model_dir, MODEL_DIR / "iris.onnx", name="iris", version="candidate")

        body = assert_problem(
            await client.post(f"{REPOSITORY}/iris/versions/candidate/load", headers=admin), 409
        )
        assert problem_code(body) == "model-state-conflict"
        assert "'candidate' is an alias of model 'iris'" in body["detail"]
        # A load naming no version takes the manifest's newest, now `candidate`: refused as well.
        newest = await client.post("/v2/repository/models/iris/load", headers=admin)
        assert newest.status_code == 409, newest.text
        assert "'candidate' is an alias of model 'iris'" in newest.json()["error"]
        state = await repository(client, admin)
        assert state["revision"] == 2  # the load and the alias; the refused loads changed nothing
        assert await served_version(client, admin, "candidate") == "2.0.0"
