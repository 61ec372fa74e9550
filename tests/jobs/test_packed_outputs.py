"""A job's results packed straight from the runtime's outputs (app.jobs.formats.encode_outputs, the
worker's hot path) read back as the same rows as the row-at-a-time path gives: labels,
probabilities, values, per-row errors and their order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.jobs.formats import RowChunk, decode_results, encode_outputs, encode_results

LABELS = ("setosa", "versicolor", "virginica")


def chunk_of(first_row: int, n_rows: int, bad: set[int]) -> RowChunk:
    rows = [r for r in range(first_row, first_row + n_rows) if r not in bad]
    return RowChunk(
        first_row=first_row,
        n_rows=n_rows,
        rows=np.zeros((len(rows), 4), dtype=np.float32),
        good=rows,
        errors={r: f"sepal_width: bad number in row {r}" for r in bad},
        resume=b"",
    )


def row_by_row(chunk: RowChunk, labels: tuple[str, ...] | None, outputs: np.ndarray) -> list[dict[str, Any]]:
    scored = dict(zip(chunk.good, outputs.tolist(), strict=True))
    out: list[dict[str, Any]] = []
    for row in range(chunk.first_row, chunk.first_row + chunk.n_rows):
        if row not in scored:
            out.append({"row": row, "error": chunk.errors[row]})
        elif labels is None:
            out.append({"row": row, "value": scored[row][0]})
        else:
            shares = scored[row]
            out.append(
                {
                    "row": row,
                    "label": labels[shares.index(max(shares))],
                    "probabilities": dict(zip(labels, shares, strict=True)),
                }
            )
    return out


@pytest.mark.parametrize("labels", [LABELS, None], ids=["classifier", "regressor"])
def test_packed_outputs_read_back_as_the_rows_built_one_by_one(labels: tuple[str, ...] | None) -> None:
    chunk = chunk_of(8192, 500, bad={8192, 8300, 8301, 8691})
    rng = np.random.default_rng(1)
    outputs = rng.dirichlet(np.ones(3), len(chunk.good)) if labels else rng.normal(size=(len(chunk.good), 1))
    packed = encode_outputs(chunk, labels, outputs)
    assert packed is not None
    expected = row_by_row(chunk, labels, outputs)
    assert decode_results(packed) == expected == decode_results(encode_results(expected))


def test_outputs_with_nan_are_left_to_the_row_path() -> None:
    chunk = chunk_of(0, 3, bad=set())
    outputs = np.array([[0.2, 0.3, 0.5], [np.nan, 0.5, 0.5], [1.0, 0.0, 0.0]])
    assert encode_outputs(chunk, LABELS, outputs) is None
