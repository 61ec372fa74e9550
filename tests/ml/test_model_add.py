"""Bring your own model (`python -m app.cli models add`): a file is inspected, run once, copied and
entered in the manifest, and the service then serves it; a file it cannot serve is refused with one
line, and nothing is copied or written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.ml.errors import ModelLoadError
from app.ml.importer import add_model
from app.ml.manifest import load_manifest
from app.ml.registry import ModelRegistry
from tests.ml.conftest import MODEL_DIR, MakeModelDir, settings_for

ROOT = Path(__file__).resolve().parents[2]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


async def test_an_added_onnx_and_skops_model_are_served_like_the_bundled_ones(
    make_model_dir: MakeModelDir, tmp_path: Path
) -> None:
    model_dir = make_model_dir()
    source = tmp_path / "flowers.onnx"
    source.write_bytes((MODEL_DIR / "iris.onnx").read_bytes())
    flowers = add_model(
        model_dir, source, name="flowers", version="2", labels=["setosa", "versicolor", "virginica"]
    )
    assert flowers.file == "flowers-2.onnx"
    assert flowers.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert flowers.executor == "thread"
    assert [f.name for f in flowers.features] == ["x0", "x1", "x2", "x3"]  # ONNX names none
    tumours = add_model(
        model_dir,
        MODEL_DIR / "breast_cancer.skops",
        name="tumours",
        version="1.1",
        trusted_types=["sklearn.tree._tree.Tree"],
    )
    assert tumours.executor == "process"
    assert tumours.labels == ("0", "1")  # the estimator's classes_, as it carries them
    assert {m.name for m in load_manifest(model_dir).models} >= {"iris", "flowers", "tumours"}

    registry = ModelRegistry(settings_for(model_dir))
    await registry.start()
    try:
        x = np.array(IRIS_ROWS, dtype=np.float32)
        added = await registry.predict("flowers", x)
        assert added.version == "2"
        assert added.predictions == (await registry.predict("iris", x)).predictions
        rows = np.full((2, 30), 10.0, dtype=np.float32)
        forest = await registry.predict("breast_cancer", rows)
        assert [p.probabilities for p in (await registry.predict("tumours", rows)).predictions] == [
            {str(i): p.probabilities[label] for i, label in enumerate(("malignant", "benign"))}
            for p in forest.predictions
        ]
    finally:
        await registry.close()


async def test_a_new_version_is_listed_beside_the_old_and_served_side_by_side(
    make_model_dir: MakeModelDir, tmp_path: Path
) -> None:
    """A second version of a model is appended: the first stays listed (and is what a fresh
    deployment serves), and both can be loaded at once."""
    model_dir = make_model_dir()
    source = tmp_path / "retrained.onnx"
    source.write_bytes((MODEL_DIR / "iris.onnx").read_bytes())
    add_model(model_dir, source, name="iris", version="2.0.0", labels=["setosa", "versicolor", "virginica"])
    manifest = load_manifest(model_dir)
    assert manifest.versions("iris") == ("1.0.0", "2.0.0")
    assert {m.name for m in manifest.models} == {"iris", "breast_cancer", "diabetes"}

    registry = ModelRegistry(settings_for(model_dir))
    await registry.start()
    try:
        assert registry.versions("iris") == ["1.0.0"]  # the seed: each model's first version
        await registry.load_now("iris", "2.0.0")
        assert registry.versions("iris") == ["1.0.0", "2.0.0"]
        x = np.array(IRIS_ROWS, dtype=np.float32)
        new = await registry.predict("iris", x, version="2.0.0")
        old = await registry.predict("iris", x)
        assert (new.version, old.version) == ("2.0.0", "1.0.0")
        assert new.predictions == old.predictions
    finally:
        await registry.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("pickle", "a pickle or joblib file runs arbitrary code"),
        ("truncated", "not a loadable ONNX model"),
        ("width", "the model takes 4 features, --features names 2"),
        ("untrusted", "types not trusted yet"),
        ("taken", "the manifest already serves iris 1.0.0"),
        ("bad-name", "name"),
    ],
)
def test_a_file_that_cannot_be_served_is_refused_and_nothing_changes(
    make_model_dir: MakeModelDir, tmp_path: Path, case: str, reason: str
) -> None:
    model_dir = make_model_dir()
    before = _snapshot(model_dir)
    iris = (MODEL_DIR / "iris.onnx").read_bytes()
    files = {
        "pickle": ("model.pkl", b"\x80\x04K\x01."),
        "truncated": ("model.onnx", iris[:100]),
        "width": ("model.onnx", iris),
        "untrusted": ("model.skops", (MODEL_DIR / "breast_cancer.skops").read_bytes()),
        "taken": ("model.onnx", iris),
        "bad-name": ("model.onnx", iris),
    }
    filename, content = files[case]
    source = tmp_path / filename
    source.write_bytes(content)
    name, version = {"taken": ("iris", "1.0.0"), "bad-name": ("Not A Name", "1")}.get(case, ("new", "1"))
    with pytest.raises(ModelLoadError) as refused:
        add_model(
            model_dir,
            source,
            name=name,
            version=version,
            features=["a", "b"] if case == "width" else None,
            labels=["a", "b", "c"],
        )
    assert reason in str(refused.value)
    assert "\n" not in str(refused.value)
    assert _snapshot(model_dir) == before


def test_the_command_adds_a_model_or_refuses_with_one_line(
    make_model_dir: MakeModelDir, tmp_path: Path
) -> None:
    model_dir = make_model_dir()
    command = [sys.executable, "-m", "app.cli", "models", "add", "--model-dir", str(model_dir)]
    added = subprocess.run(
        [
            *command,
            str(MODEL_DIR / "iris.onnx"),
            "--name",
            "petals",
            "--version",
            "3",
            "--features",
            "a,b,c,d",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    assert "added petals 3 (onnx, 4 features, 3 classes)" in added.stdout
    entry = next(
        m for m in json.loads((model_dir / "manifest.json").read_text())["models"] if m["name"] == "petals"
    )
    assert [f["name"] for f in entry["features"]] == ["a", "b", "c", "d"]
    assert entry["labels"] == ["0", "1", "2"]  # the ONNX classifier's own class labels

    bad = tmp_path / "model.joblib"
    bad.write_bytes(b"not a model")
    refused = subprocess.run(
        [*command, str(bad), "--name", "x", "--version", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(
        f"cannot serve {bad}: only ONNX (.onnx) and skops (.skops) files are served"
    )
