"""The early start of the model workers' forkserver (app.ml.forkserver), used by the server entry
point before uvicorn imports the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.ml import forkserver
from tests.ml.conftest import MODEL_DIR


def test_the_committed_manifest_needs_worker_processes() -> None:
    assert forkserver.has_process_pool_models(MODEL_DIR)


@pytest.mark.parametrize(
    "manifest",
    [
        None,  # no manifest: the registry reports it at start-up
        "not json",
        json.dumps({"models": "nope"}),
        json.dumps({"models": [{"name": "iris", "format": "onnx"}]}),
    ],
    ids=["missing", "broken", "malformed", "onnx-only"],
)
def test_no_forkserver_without_a_process_pool_model(tmp_path: Path, manifest: str | None) -> None:
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)
    assert not forkserver.has_process_pool_models(tmp_path)
    assert not forkserver.start_early(tmp_path)


def test_no_early_start_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one core the forkserver's imports would only take turns with the web process's."""
    monkeypatch.setattr(forkserver.os, "sched_getaffinity", lambda _pid: {0})
    assert not forkserver.start_early(MODEL_DIR)
