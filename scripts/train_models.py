"""Train the service's bundled models and write `ml_models/` (model files + manifest.json) reproducibly.

Run it as `uv run python scripts/train_models.py` (or `make models`). Every input is fixed (datasets
shipped inside scikit-learn, fixed seeds, single-threaded training) and every output is written in
a canonical form, so two runs on one machine give byte-identical files; `--check` rebuilds into a
temporary directory and fails when the committed files differ.

The functions `train_iris`, `train_breast_cancer` and `train_diabetes` are also used by the tests
to compare the served predictions with scikit-learn's own.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import skops.io as sio
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

if __package__ in (None, ""):  # run as a file (`make models`): the project on the path, for app.ml
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.ml.drift import make_reference
from app.ml.manifest import Task

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "ml_models"
SEED = 0
# The newest opset this onnxruntime (1.32) was tested with upstream; higher ones only warn.
TARGET_OPSET = {"": 22, "ai.onnx.ml": 3}
# Zip entries get this timestamp instead of "now", so the skops archive is byte-stable.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Dataset:
    """A scikit-learn bundled dataset with API-friendly feature names."""

    x: np.ndarray
    y: np.ndarray
    features: list[str]
    labels: list[str]


def _snake(name: str) -> str:
    """'sepal length (cm)' -> 'sepal_length': feature names that are valid JSON keys without quoting."""
    name = re.sub(r"\(.*?\)", "", name).strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def iris_data() -> Dataset:
    data = load_iris()
    return Dataset(
        data.data, data.target, [_snake(f) for f in data.feature_names], [str(t) for t in data.target_names]
    )


def breast_cancer_data() -> Dataset:
    data = load_breast_cancer()
    return Dataset(
        data.data, data.target, [_snake(f) for f in data.feature_names], [str(t) for t in data.target_names]
    )


def diabetes_data() -> Dataset:
    # Unscaled: clients send age in years, BMI, blood pressure... as measured; the pipeline scales.
    data = load_diabetes(scaled=False)
    return Dataset(data.data, data.target, [_snake(f) for f in data.feature_names], [])


def _split(ds: Dataset, *, stratify: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = train_test_split(
        ds.x, ds.y, test_size=0.2, random_state=SEED, stratify=ds.y if stratify else None
    )
    return parts[0], parts[1], parts[2], parts[3]


def train_iris() -> tuple[LogisticRegression, dict[str, float], np.ndarray]:
    x_train, x_test, y_train, y_test = _split(iris_data(), stratify=True)
    # Solved to 1e-10, not lbfgs's default 1e-4: the optimum, not where the solver stopped, so the
    # coefficients are the same on any CPU (at 1e-4 they differed by 1e-4 between this machine's
    # BLAS kernels and the ones that trained the committed file, and tests/ml/test_parity.py failed).
    clf = LogisticRegression(max_iter=10_000, tol=1e-10, random_state=SEED).fit(x_train, y_train)
    return clf, {"test_accuracy": round(float(accuracy_score(y_test, clf.predict(x_test))), 4)}, x_train


def train_breast_cancer() -> tuple[RandomForestClassifier, dict[str, float], np.ndarray]:
    x_train, x_test, y_train, y_test = _split(breast_cancer_data(), stratify=True)
    # 100 shallow trees: a realistic "heavy" scikit-learn model whose file stays well under 2 MB.
    clf = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=SEED, n_jobs=1)
    clf.fit(x_train, y_train)
    return clf, {"test_accuracy": round(float(accuracy_score(y_test, clf.predict(x_test))), 4)}, x_train


def train_diabetes() -> tuple[Pipeline, dict[str, float], np.ndarray]:
    x_train, x_test, y_train, y_test = _split(diabetes_data(), stratify=False)
    reg = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=1.0))]).fit(x_train, y_train)
    return reg, {"test_r2": round(float(r2_score(y_test, reg.predict(x_test))), 4)}, x_train


def onnx_bytes(
    estimator: BaseEstimator, n_features: int, *, name: str, version: str, classifier: bool
) -> bytes:
    """Convert to ONNX with plain probability arrays and every free-text/unstable field pinned."""
    options: dict[int, dict[str, Any]] | None = None
    if classifier:
        options = {id(estimator): {"zipmap": False}}
    model = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        options=options,
    )
    assert isinstance(model, onnx.ModelProto)  # noqa: S101 - narrows the type for mypy, not a check
    model.producer_name = "fastapi-ml-service/scripts/train_models.py"
    model.producer_version = "1"
    model.doc_string = ""
    model.graph.doc_string = ""
    model.graph.name = name
    model.model_version = 1
    del model.metadata_props[:]
    for key, value in (("name", name), ("version", version)):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _canonical_skops(data: bytes) -> bytes:
    """Rewrite a skops archive so it no longer depends on memory addresses or the clock.

    skops names arrays and tags nodes with `id(obj)` and stamps zip entries with the current time;
    ids are renumbered in order of first appearance (a bijection, so shared references survive)
    and entries get a fixed timestamp.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        schema = json.loads(src.read("schema.json"))
        blobs = {name: src.read(name) for name in src.namelist() if name != "schema.json"}
    ids: dict[str, str] = {}

    def new_id(old: str) -> str:
        return ids.setdefault(old, str(len(ids) + 1))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = int(new_id(str(value)))
                elif key == "file" and isinstance(value, str) and value in blobs:
                    stem, _, ext = value.rpartition(".")
                    out[key] = f"{new_id(stem)}.{ext}"
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    canonical = walk(schema)
    renamed = {
        f"{new_id(name.rpartition('.')[0])}.{name.rpartition('.')[2]}": blob for name, blob in blobs.items()
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as dst:
        entries = [("schema.json", json.dumps(canonical, indent=2).encode())]
        entries += sorted(renamed.items(), key=lambda item: int(item[0].partition(".")[0]))
        for name, blob in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, blob, compresslevel=9)
    return buffer.getvalue()


def skops_bytes(estimator: BaseEstimator) -> tuple[bytes, list[str]]:
    """Serialize with skops (never pickle) and return the bytes with the types a loader must trust."""
    data = _canonical_skops(sio.dumps(estimator))
    trusted = sorted(sio.get_untrusted_types(data=data))
    # The canonical form must load to the same model: refuse to write a file that would not.
    restored = sio.loads(data, trusted=trusted)
    if type(restored) is not type(estimator):
        raise RuntimeError("canonical skops archive did not round-trip")
    return data, trusted


def _features(names: list[str]) -> list[dict[str, str]]:
    return [{"name": name, "type": "float"} for name in names]


def reference(
    task: Task, labels: list[str], rows: np.ndarray, score: Callable[[np.ndarray], np.ndarray]
) -> dict[str, Any]:
    """A bundled model's reference for drift (app.ml.drift): its training rows and its answers to
    them, binned as `models add --reference` bins a sample."""
    return make_reference(task, labels, rows, score(rows)).model_dump(mode="json")


def build(out_dir: Path) -> dict[str, Any]:
    """Train every model, write its file into `out_dir`, and return the manifest (also written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []

    def emit(entry: dict[str, Any], data: bytes) -> None:
        (out_dir / entry["file"]).write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entries.append(entry)

    iris = iris_data()
    iris_clf, iris_metrics, iris_rows = train_iris()
    emit(
        {
            "name": "iris",
            "version": "1.0.0",
            "task": "classification",
            "format": "onnx",
            "file": "iris.onnx",
            "sha256": "",
            "executor": "thread",
            "features": _features(iris.features),
            "labels": iris.labels,
            "batching": {"max_batch_size": 64, "max_batch_wait_ms": 2},
            "timeout_ms": 500,
            "max_queue": 512,
            "log_inputs": True,
            "trusted_types": [],
            "metrics": iris_metrics,
            "reference": reference("classification", iris.labels, iris_rows, iris_clf.predict_proba),
            "description": "Iris species from flower measurements in cm (logistic regression, ONNX).",
        },
        onnx_bytes(iris_clf, len(iris.features), name="iris", version="1.0.0", classifier=True),
    )

    cancer = breast_cancer_data()
    cancer_clf, cancer_metrics, cancer_rows = train_breast_cancer()
    cancer_data, trusted = skops_bytes(cancer_clf)
    emit(
        {
            "name": "breast_cancer",
            "version": "1.0.0",
            "task": "classification",
            "format": "skops",
            "file": "breast_cancer.skops",
            "sha256": "",
            "executor": "process",
            "features": _features(cancer.features),
            "labels": cancer.labels,
            "batching": {"max_batch_size": 128, "max_batch_wait_ms": 5},
            "timeout_ms": 2000,
            "max_queue": 256,
            # Medical measurements: the prediction log keeps the outcome, not the patient's row.
            "log_inputs": False,
            "trusted_types": trusted,
            "metrics": cancer_metrics,
            "reference": reference("classification", cancer.labels, cancer_rows, cancer_clf.predict_proba),
            "description": (
                "Breast mass malignant/benign from 30 cell-nucleus measurements "
                "(scikit-learn random forest, 100 trees, skops, process pool)."
            ),
        },
        cancer_data,
    )

    diabetes = diabetes_data()
    diabetes_reg, diabetes_metrics, diabetes_rows = train_diabetes()
    emit(
        {
            "name": "diabetes",
            "version": "1.0.0",
            "task": "regression",
            "format": "onnx",
            "file": "diabetes.onnx",
            "sha256": "",
            "executor": "thread",
            "features": _features(diabetes.features),
            "labels": [],
            "batching": {"max_batch_size": 64, "max_batch_wait_ms": 2},
            "timeout_ms": 500,
            "max_queue": 512,
            "log_inputs": False,
            "trusted_types": [],
            "metrics": diabetes_metrics,
            "reference": reference(
                "regression", [], diabetes_rows, lambda x: diabetes_reg.predict(x).reshape(-1, 1)
            ),
            "description": (
                "Disease progression one year after baseline from age, sex, BMI, blood pressure "
                "and six blood serum measurements (standard scaler + ridge regression, ONNX)."
            ),
        },
        onnx_bytes(diabetes_reg, len(diabetes.features), name="diabetes", version="1.0.0", classifier=False),
    )

    manifest = {
        "schema_version": 1,
        "default_model": "iris",
        "heavy_model": "breast_cancer",
        "models": entries,
    }
    (out_dir / "manifest.json").write_text(dump_manifest(manifest))
    return manifest


def dump_manifest(manifest: dict[str, Any]) -> str:
    """Indented JSON with each feature, and each list, on one line: easy to edit by hand."""
    text = json.dumps(manifest, indent=2)
    # {"name": ..., "type": ...} objects and lists of short strings/numbers collapse to one line.
    text = re.sub(r"\{\n\s+(\"name\": \"[^\"]*\"),\n\s+(\"type\": \"[^\"]*\")\n\s+\}", r"{\1, \2}", text)
    text = re.sub(
        r"\[\n\s+((?:\"[^\"\n]*\",?\n\s+)*\"[^\"\n]*\")\n\s+\]",
        lambda m: "[" + ", ".join(part.strip().rstrip(",") for part in m.group(1).split("\n")) + "]",
        text,
    )
    text = re.sub(  # and lists of numbers (a reference's edges and fractions)
        r"\[\n\s+((?:-?[0-9][0-9.eE+-]*,\n\s+)*-?[0-9][0-9.eE+-]*)\n\s+\]",
        lambda m: "[" + ", ".join(part.strip().rstrip(",") for part in m.group(1).split("\n")) + "]",
        text,
    )
    json.loads(text)  # still the same JSON
    return text + "\n"


def _check(committed: Path) -> int:
    """Rebuild into a temporary directory and compare byte for byte with the committed files."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(Path(tmp))
        names = ["manifest.json", *(entry["file"] for entry in manifest["models"])]
        stale = [
            n
            for n in names
            if not (committed / n).is_file() or (committed / n).read_bytes() != (Path(tmp) / n).read_bytes()
        ]
    for name in stale:
        print(f"differs from a fresh build: {committed / name}", file=sys.stderr)
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="output directory (default: ml_models/)")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a fresh build differs from --out"
    )
    args = parser.parse_args(argv)
    if args.check:
        return _check(args.out)
    manifest = build(args.out)
    for entry in manifest["models"]:
        size = (args.out / entry["file"]).stat().st_size
        digest = entry["sha256"][:12]
        print(f"{entry['name']:<14} {entry['file']:<22} {size:>9,} bytes {digest} {entry['metrics']}")
    return 0


TRAINERS: dict[str, Callable[[], tuple[Any, dict[str, float], np.ndarray]]] = {
    "iris": train_iris,
    "breast_cancer": train_breast_cancer,
    "diabetes": train_diabetes,
}
DATASETS: dict[str, Callable[[], Dataset]] = {
    "iris": iris_data,
    "breast_cancer": breast_cancer_data,
    "diabetes": diabetes_data,
}

if __name__ == "__main__":
    sys.exit(main())
