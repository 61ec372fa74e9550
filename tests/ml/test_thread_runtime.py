"""`ThreadRuntime`, the base of the thread kinds: a kind that forgets `compute` is told so by name
when it is built, not with a load failure whose reason is empty ("a test prediction failed: ")."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from app.ml.manifest import load_manifest
from app.ml.runtimes.base import ThreadRuntime
from tests.ml.conftest import MODEL_DIR


class NoCompute(ThreadRuntime):
    pass


def test_a_thread_kind_without_compute_cannot_be_built() -> None:
    spec = load_manifest(MODEL_DIR).models[0]
    with ThreadPoolExecutor(1) as executor, pytest.raises(TypeError, match="compute"):
        NoCompute(spec, executor)  # type: ignore[abstract]
