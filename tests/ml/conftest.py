"""Fixtures for the model layer: the committed model directory, editable copies of it, registries."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from app.ml.manifest import ModelSpec, load_manifest
from app.ml.registry import ModelRegistry, RegistrySettings

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "ml_models"

EditManifest = Callable[[dict[str, Any]], None]
MakeModelDir = Callable[..., Path]


@pytest.fixture(scope="session")
def train_models() -> ModuleType:
    """scripts/train_models.py as a module: the same training code that built the committed files."""
    spec = importlib.util.spec_from_file_location("train_models", ROOT / "scripts" / "train_models.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def specs() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in load_manifest(MODEL_DIR).models}


def model_entry(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(m for m in manifest["models"] if m["name"] == name)
    return entry


@pytest.fixture
def make_model_dir(tmp_path: Path) -> MakeModelDir:
    """A copy of ml_models/ whose manifest `edit` may change (tighter limits, broken entries...)."""

    def _make(edit: EditManifest | None = None, *, only: tuple[str, ...] | None = None) -> Path:
        target = tmp_path / "models"
        shutil.copytree(MODEL_DIR, target, dirs_exist_ok=True)
        manifest = json.loads((target / "manifest.json").read_text())
        if only is not None:
            manifest["models"] = [m for m in manifest["models"] if m["name"] in only]
            manifest["default_model"] = only[0]
            manifest["heavy_model"] = only[0] if "breast_cancer" in only else None
        if edit is not None:
            edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return target

    return _make


def settings_for(model_dir: Path = MODEL_DIR, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {"model_dir": model_dir, "process_workers": 1, "close_timeout_s": 10.0}
    values.update(overrides)
    return RegistrySettings(**values)


@pytest.fixture
async def registry() -> AsyncIterator[ModelRegistry]:
    """A started registry over the committed models (one worker process for the skops model)."""
    reg = ModelRegistry(settings_for())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.close()


async def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `condition` until it holds (a test helper: the code under test waits on events)."""
    step = 0.002
    for _ in range(int(seconds / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {seconds} s")
