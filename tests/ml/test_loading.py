"""Start-up: every file is verified and loaded; a missing or corrupt one stops start-up, naming it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from app.ml.errors import ModelLoadError, ModelNotFound, ModelsNotReady
from app.ml.manifest import ModelSpec, load_manifest
from app.ml.registry import ModelRegistry
from tests.ml.conftest import MODEL_DIR, MakeModelDir, model_entry, settings_for


async def _start_fails(model_dir: Path) -> ModelLoadError:
    registry = ModelRegistry(settings_for(model_dir))
    with pytest.raises(ModelLoadError) as caught:
        await registry.start()
    assert not registry.ready
    assert "\n" not in str(caught.value)  # one line, for a log line or a terminal
    # A failed start leaves no worker process behind.
    assert multiprocessing.active_children() == []
    return caught.value


@pytest.mark.asyncio
@pytest.mark.parametrize("file", ["iris.onnx", "breast_cancer.skops"])
async def test_missing_model_file_names_the_file(make_model_dir: MakeModelDir, file: str) -> None:
    model_dir = make_model_dir()
    (model_dir / file).unlink()
    error = await _start_fails(model_dir)
    assert error.file.endswith(file)
    assert file in str(error)
    assert "file not found" in str(error)


@pytest.mark.asyncio
@pytest.mark.parametrize("file", ["iris.onnx", "breast_cancer.skops", "diabetes.onnx"])
async def test_corrupt_model_file_names_the_file(make_model_dir: MakeModelDir, file: str) -> None:
    model_dir = make_model_dir()
    data = bytearray((model_dir / file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_dir / file).write_bytes(bytes(data))
    error = await _start_fails(model_dir)
    assert error.file.endswith(file)
    assert "sha256 mismatch" in str(error)


@pytest.mark.asyncio
@pytest.mark.parametrize("file", ["iris.onnx", "breast_cancer.skops"])
async def test_garbage_with_a_matching_hash_is_refused_too(make_model_dir: MakeModelDir, file: str) -> None:
    """A file replaced along with its manifest hash still has to load as a model."""
    garbage = b"not a model at all"

    def rehash(manifest: dict[str, Any]) -> None:
        for entry in manifest["models"]:
            if entry["file"] == file:
                entry["sha256"] = hashlib.sha256(garbage).hexdigest()

    model_dir = make_model_dir(rehash)
    (model_dir / file).write_bytes(garbage)
    error = await _start_fails(model_dir)
    assert error.file.endswith(file)


@pytest.mark.asyncio
async def test_model_and_manifest_disagreeing_on_features_is_refused(make_model_dir: MakeModelDir) -> None:
    def drop_a_feature(manifest: dict[str, Any]) -> None:
        model_entry(manifest, "iris")["features"].pop()

    error = await _start_fails(make_model_dir(drop_a_feature, only=("iris",)))
    assert error.file.endswith("iris.onnx")
    assert "4 features" in str(error)


@pytest.mark.asyncio
async def test_skops_model_and_manifest_disagreeing_on_labels_is_refused(
    make_model_dir: MakeModelDir,
) -> None:
    def three_labels(manifest: dict[str, Any]) -> None:
        model_entry(manifest, "breast_cancer")["labels"].append("unsure")

    error = await _start_fails(make_model_dir(three_labels, only=("breast_cancer",)))
    assert error.file.endswith("breast_cancer.skops")
    assert "2 classes" in str(error)


@pytest.mark.asyncio
async def test_missing_or_invalid_manifest_names_the_manifest(
    tmp_path: Path, make_model_dir: MakeModelDir
) -> None:
    error = await _start_fails(tmp_path)
    assert error.file.endswith("manifest.json")
    assert "file not found" in str(error)

    def typo(manifest: dict[str, Any]) -> None:
        model_entry(manifest, "iris")["timeout_msec"] = 10

    error = await _start_fails(make_model_dir(typo))
    assert error.file.endswith("manifest.json")
    assert "timeout_msec" in str(error)

    model_dir = make_model_dir()
    (model_dir / "manifest.json").write_text("{not json")
    error = await _start_fails(model_dir)
    assert "not valid JSON" in str(error)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"file": "../outside.onnx"}, "relative path inside"),
        ({"file": "/etc/passwd"}, "relative path inside"),
        ({"executor": "process"}, "runs in the 'thread' executor"),
        ({"labels": ["only-one"]}, "at least two labels"),
        ({"features": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"sha256": "abc"}, "sha256"),
    ],
)
def test_manifest_entries_are_validated(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    model_entry(manifest, "iris").update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=message):
        load_manifest(tmp_path)


def test_committed_manifest_describes_the_three_models(specs: dict[str, ModelSpec]) -> None:
    manifest = load_manifest(MODEL_DIR)
    assert manifest.default_model == "iris"
    assert manifest.heavy_model == "breast_cancer"
    assert specs["iris"].labels == ("setosa", "versicolor", "virginica")
    assert specs["breast_cancer"].format == "skops"
    assert specs["breast_cancer"].executor == "process"
    assert specs["breast_cancer"].trusted_types == ("sklearn.tree._tree.Tree",)
    assert specs["diabetes"].task == "regression"
    for spec in specs.values():
        assert (MODEL_DIR / spec.file).stat().st_size < 2_000_000


def test_training_is_reproducible(train_models: ModuleType, tmp_path: Path) -> None:
    """Two builds give the same bytes (skops ids and zip timestamps are canonicalised)."""
    first = train_models.build(tmp_path / "a")
    second = train_models.build(tmp_path / "b")
    assert first == second
    for name in ["manifest.json", *(entry["file"] for entry in first["models"])]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.asyncio
async def test_lookups(registry: ModelRegistry) -> None:
    assert registry.ready
    assert registry.default_model == "iris"
    assert registry.heavy_model == "breast_cancer"
    assert [spec.name for spec in registry.list()] == ["iris", "breast_cancer", "diabetes"]
    assert registry.get("diabetes").task == "regression"
    assert registry.worker_pids("iris") == []
    with pytest.raises(ModelNotFound) as caught:
        registry.get("nope")
    assert "iris" in str(caught.value)
    with pytest.raises(ModelNotFound):
        await registry.predict("nope", [[1.0]])


@pytest.mark.asyncio
async def test_predicting_before_start_is_refused() -> None:
    registry = ModelRegistry(settings_for())
    with pytest.raises(ModelsNotReady):
        await registry.predict_one("iris", [1.0, 2.0, 3.0, 4.0])
    await registry.close()  # closing an unstarted registry is harmless
