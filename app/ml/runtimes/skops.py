"""The `skops` runtime kind: scikit-learn estimators saved with skops.io, run in worker processes.

`load` runs in each worker process (app.ml.worker); `inspect` in `models add`. scikit-learn and
skops are imported inside them, never by a serving web process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.ml.errors import ModelLoadError
from app.ml.runtimes.base import Found


def load(data: bytes, trusted_types: Sequence[str]) -> Any:
    import skops.io  # noqa: PLC0415 - in the worker process only

    return skops.io.loads(data, trusted=list(trusted_types))


def inspect(data: bytes, where: str, trusted_types: Sequence[str]) -> Found:
    import skops.io  # noqa: PLC0415 - `models add` alone loads it here

    try:
        untrusted = [t for t in skops.io.get_untrusted_types(data=data) if t not in trusted_types]
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a skops file
        raise ModelLoadError(where, f"not a skops file: {exc}") from None
    if untrusted:
        raise ModelLoadError(
            where, f"types not trusted yet (review them, then pass --trust for each): {', '.join(untrusted)}"
        )
    try:
        model = load(data, trusted_types)
    except Exception as exc:  # noqa: BLE001 - as above
        raise ModelLoadError(where, f"cannot be loaded: {exc}") from None
    classifier = hasattr(model, "predict_proba")
    if not classifier and not hasattr(model, "predict"):
        raise ModelLoadError(where, "the object has neither predict_proba nor predict")
    width = getattr(model, "n_features_in_", None)
    names = getattr(model, "feature_names_in_", None)
    classes = getattr(model, "classes_", None)
    return Found(
        int(width) if width is not None else None,
        tuple(str(c) for c in classes) if classifier and classes is not None else None,
        classifier,
        tuple(str(n) for n in names) if names is not None else None,
        model,
    )
