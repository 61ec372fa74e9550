"""Bring your own model (`python -m app.cli models add`): a file is inspected, run once, copied and
entered in the manifest, and the service then serves it; a file it cannot serve is refused with one
line, and nothing is copied or written."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.ml.errors import ModelLoadError
from app.ml.importer import add_model
from app.ml.manifest import load_manifest
from app.ml.registry import ModelRegistry
from tests.ml.conftest import MODEL_DIR, MakeModelDir, model_entry, settings_for

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
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    names = [f"x{i}" for i in range(cancer.data.shape[1])]
    rows = tmp_path / "cancer.csv"
    rows.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in cancer.data))
    tumours = add_model(
        model_dir,
        MODEL_DIR / "breast_cancer.skops",
        name="tumours",
        version="1.1",
        trusted_types=["sklearn.tree._tree.Tree"],
        reference=rows,  # scored as a worker process scores
    )
    assert tumours.executor == "process"
    assert tumours.labels == ("0", "1")  # the estimator's classes_, as it carries them
    assert tumours.reference is not None
    # 212 malignant (0) and 357 benign (1) in the data; the forest answers nearly all as such.
    assert tumours.reference.prediction.fractions == pytest.approx([212 / 569, 357 / 569], abs=0.02)
    assert [(m.name, m.version) for m in load_manifest(model_dir).models] == [
        ("iris", "1.0.0"),
        ("breast_cancer", "1.0.0"),
        ("diabetes", "1.0.0"),
        ("flowers", "2"),
        ("tumours", "1.1"),
    ]
    # The documented defaults (docs/models.md): 64-row batches, 2 ms, 1 s, 512 queued, no inputs logged.
    for added in (flowers, tumours):
        assert (added.batching.max_batch_size, added.batching.max_batch_wait_ms) == (64, 2)
        assert (added.timeout_ms, added.max_queue, added.log_inputs) == (1000, 512, False)

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
            "--reference",
            str(_iris_csv(tmp_path / "rows.csv", "d,c,b,a")),  # by name, in any order
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    assert "added petals 3 (onnx, 4 features, 3 classes, a reference of 150 rows)" in added.stdout
    entry = next(
        m for m in json.loads((model_dir / "manifest.json").read_text())["models"] if m["name"] == "petals"
    )
    assert [f["name"] for f in entry["features"]] == ["a", "b", "c", "d"]
    assert entry["labels"] == ["0", "1", "2"]  # the ONNX classifier's own class labels
    # Iris's 150 rows: 50 of each species, answered as such but for a few; feature a (the file's
    # last column) is sepal length, its deciles cut from 4.8 cm.
    assert entry["reference"]["rows"] == 150
    assert entry["reference"]["prediction"]["fractions"] == pytest.approx([1 / 3] * 3, abs=0.03)
    assert entry["reference"]["features"][0]["edges"][0] == 4.8

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
    # Every runtime kind of the table is named (a fork's new kind joins the list).
    assert refused.stderr.startswith(f"cannot serve {bad}: only ONNX (.onnx)")
    assert "skops (.skops)" in refused.stderr
    assert "files are served" in refused.stderr


async def test_a_version_added_to_a_running_registry_is_loaded_from_the_manifest_read_again(
    make_model_dir: MakeModelDir, tmp_path: Path
) -> None:
    """`models add` while the service runs, then a load: the registry reads the manifest again."""
    model_dir = make_model_dir()
    registry = ModelRegistry(settings_for(model_dir))
    await registry.start()
    try:
        source = tmp_path / "retrained.onnx"
        source.write_bytes((MODEL_DIR / "iris.onnx").read_bytes())
        add_model(model_dir, source, name="iris", version="2.0.0")
        spec = await registry.load_now("iris", "2.0.0")
        assert spec.labels == ("0", "1", "2")  # the ONNX classifier's own labels
        x = np.array(IRIS_ROWS, dtype=np.float32)
        assert (await registry.predict("iris", x, version="2.0.0")).version == "2.0.0"
        assert [s.version for s in registry.index() if s.name == "iris"] == ["1.0.0", "2.0.0"]
    finally:
        await registry.close()


def _unnamed_onnx_classifier() -> bytes:
    """An ONNX classifier (a `probabilities` output) whose graph names no classes."""
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "unnamed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
        ],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_classifier_that_names_no_classes_needs_labels(
    make_model_dir: MakeModelDir, tmp_path: Path
) -> None:
    model_dir = make_model_dir()
    before = _snapshot(model_dir)
    source = tmp_path / "unnamed.onnx"
    source.write_bytes(_unnamed_onnx_classifier())
    with pytest.raises(ModelLoadError, match="a classifier that names no classes: pass --labels"):
        add_model(model_dir, source, name="unnamed", version="1")
    assert _snapshot(model_dir) == before
    spec = add_model(model_dir, source, name="unnamed", version="1", labels=["a", "b", "c"])
    assert spec.labels == ("a", "b", "c")


def test_an_estimators_feature_names_are_read(make_model_dir: MakeModelDir, tmp_path: Path) -> None:
    import skops.io
    from sklearn.linear_model import LogisticRegression

    rows = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    model = LogisticRegression().fit(rows, [0, 1, 0, 1])
    # What fitting on a DataFrame with these columns leaves on the estimator.
    model.feature_names_in_ = np.array(["height", "weight"], dtype=object)
    source = tmp_path / "named.skops"
    skops.io.dump(model, source)
    trusted = list(skops.io.get_untrusted_types(file=source))
    spec = add_model(make_model_dir(), source, name="named", version="1", trusted_types=trusted)
    assert spec.feature_names == ("height", "weight")


def _add(model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "add", "--model-dir", str(model_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--name", "iris", "--version", "7 beta"], "--version '7 beta': a version is 1 to 64 of a-z"),
        (["--name", "iris", "--version", "a/b"], "--version 'a/b': a version is"),
        (["--name", "iris", "--version", "/abs"], "--version '/abs': a version is"),
        (["--name", "iris", "--version", "../up"], "--version '../up': a version is"),
        (["--name", "iris", "--version", "V2"], "--version 'V2': a version is"),
        (["--name", "iris", "--version", "x" * 65], "a version is 1 to 64"),
        (["--name", "iris", "--version", "default"], "every model has an alias named 'default'"),
        (["--name", "Iris", "--version", "2"], "--name 'Iris': a model name is 1 to 64 of a-z"),
        (["--name", "iris", "--version", "2", "--labels", "a,a,b"], "--labels names 'a' more than once"),
    ],
)
def test_the_command_refuses_a_name_version_or_labels_outside_the_rule(
    make_model_dir: MakeModelDir, args: list[str], says: str
) -> None:
    """Issue 21, findings 2 and 6: each was accepted (a version with a space or a repeated label),
    or crashed with a traceback and exit code 1 (a version with a slash)."""
    model_dir = make_model_dir()
    before = _snapshot(model_dir)
    refused = _add(model_dir, str(MODEL_DIR / "iris.onnx"), *args)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert says in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _snapshot(model_dir) == before


def test_the_manifest_and_a_new_file_keep_readable_modes(make_model_dir: MakeModelDir) -> None:
    """Issue 21, finding 6: both came out 0600 (mkstemp's), unreadable by a service running as
    another user; the manifest keeps its own mode and a new file gets 0644."""
    model_dir = make_model_dir()
    (model_dir / "manifest.json").chmod(0o664)
    added = _add(model_dir, str(MODEL_DIR / "iris.onnx"), "--name", "iris", "--version", "2.0.0")
    assert added.returncode == 0, added.stderr
    assert (model_dir / "manifest.json").stat().st_mode & 0o777 == 0o664
    assert (model_dir / "iris-2.0.0.onnx").stat().st_mode & 0o777 == 0o644
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]


def test_an_entry_set_aside_stays_listed_when_a_model_is_added(make_model_dir: MakeModelDir) -> None:
    """A manifest that holds an entry this code refuses (a version an older `models add` took)
    keeps it, byte for byte, when another is added; it is reported, never served."""

    def seven_beta(manifest: dict[str, Any]) -> None:
        manifest["models"].append(dict(model_entry(manifest, "iris"), version="7 beta"))

    model_dir = make_model_dir(seven_beta)
    added = _add(model_dir, str(MODEL_DIR / "iris.onnx"), "--name", "iris", "--version", "2.0.0")
    assert added.returncode == 0, added.stderr
    written = json.loads((model_dir / "manifest.json").read_text())
    assert [m["version"] for m in written["models"] if m["name"] == "iris"] == ["1.0.0", "7 beta", "2.0.0"]
    manifest = load_manifest(model_dir)
    assert [r.key for r in manifest.rejected] == [("iris", "7 beta")]
    assert manifest.versions("iris") == ("1.0.0", "2.0.0")


def _iris_csv(path: Path, header: str) -> Path:
    """Iris's rows as a CSV whose columns `header` names (sepal length last)."""
    from sklearn.datasets import load_iris

    rows = load_iris().data[:, ::-1]
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("content", "refusal"),
    [
        ("a,b,c\n1,2,3\n", "the header names no column 'd'"),
        ("a,b,c,d\n" + "1,2,3,4\n" * 99, "99 rows; at least 100"),
        ("a,b,c,d\n" + "1,2,3,4\n" * 100 + "1,2,x,4\n", "line 102 is not a row of numbers"),
        ("a,b,c,d\n" + "1,2,3,nan\n" * 100, "every value must be a finite number"),
    ],
    ids=["a missing column", "too few rows", "not a number", "not finite"],
)
def test_a_reference_that_cannot_be_used_is_refused_and_nothing_changes(
    make_model_dir: MakeModelDir, tmp_path: Path, content: str, refusal: str
) -> None:
    model_dir = make_model_dir()
    before = (model_dir / "manifest.json").read_bytes()
    rows = tmp_path / "rows.csv"
    rows.write_text(content)
    with pytest.raises(ModelLoadError, match=re.escape(refusal)):
        add_model(
            model_dir,
            MODEL_DIR / "iris.onnx",
            name="petals",
            version="3",
            features=list("abcd"),
            reference=rows,
        )
    assert (model_dir / "manifest.json").read_bytes() == before
    assert not (model_dir / "p-3.onnx").exists()
