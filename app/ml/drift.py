"""Drift (issue 24): how far a version's live inputs and answers have moved from those of its
reference sample, by the Population Stability Index.

A version's reference (`Reference` in its manifest entry: `models add --reference`, and the bundled
models' from their training rows) holds, per feature and for the answers, the shares of the sample
in each bin: deciles of the sample's values for a number (`BINS` bins, fewer where values repeat),
one bin per label for a classifier's answers. Each prediction adds its rows to counts per bin
(`bin_counts`, summed by ten-minute period in `drift_counts`); a window's counts are compared with the shares:

    PSI = sum over bins of (a - e) * ln(a / e)

a and e the window's and the reference's shares of a bin, each at least `EPSILON` (an empty bin
would make it infinite). PSI was chosen over a two-sample test (Kolmogorov-Smirnov) because it is a
sum over counts: a window of any size is a SQL sum over stored counts, never the log's rows. By the
usual reading, under 0.1 the two are alike, 0.1 to 0.2 a moderate shift, and over `DRIFT_THRESHOLD`
(0.2) a shift worth acting on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.ml.manifest import Histogram, ModelSpec, Reference, Task

BINS = 10
EPSILON = 1e-4
DRIFT_THRESHOLD = 0.2
# The "feature" index under which the answers' bins are counted (features are 0, 1, ...).
ANSWERS = -1
# Counts are summed by periods this long (`drift_counts.period`): windows resolve to them. Ten
# minutes keeps a month of a version's counts near 200,000 rows at most (a minute made 2.6 million
# for 1,000,000 iris predictions: 0.6 s to sum a month on PostgreSQL, docs/performance.md).
PERIOD_MINUTES = 10


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


def histogram(values: np.ndarray, bins: int = BINS) -> Histogram:
    """The shares of `values` in the bins cut at its quantiles (6 significant digits, repeats
    merged)."""
    cuts = np.quantile(values.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    edges = tuple(sorted({_rounded(float(c)) for c in cuts}))
    counts = _bins(edges, values)
    return Histogram(edges=edges, fractions=_shares(counts))


def _shares(counts: np.ndarray) -> tuple[float, ...]:
    total = int(counts.sum())
    return tuple(round(int(c) / total, 6) for c in counts)


def make_reference(task: Task, labels: Sequence[str], x: np.ndarray, outputs: np.ndarray) -> Reference:
    """The reference of rows `x` (rows, features) and the model's `outputs` for them (rows, k)."""
    if task == "classification":
        answers = Histogram(fractions=_shares(_labels(outputs, len(labels))))
    else:
        answers = histogram(outputs[:, 0])
    features = tuple(histogram(x[:, j]) for j in range(x.shape[1]))
    return Reference(rows=len(x), features=features, prediction=answers)


def _labels(outputs: np.ndarray, n: int) -> np.ndarray:
    """Rows per label answered: the first highest probability, as a classifier's answer is read."""
    counts: np.ndarray = np.bincount(np.argmax(outputs, axis=1), minlength=n)
    return counts


def _bins(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Rows per bin. Compared in float32, as the model takes its rows: 3.1 as float32 is below 3.1
    as float64, and iris's values, measured to 0.1 cm, sit on the edges."""
    at = np.searchsorted(np.asarray(edges, dtype=np.float32), values.astype(np.float32), side="right")
    counts: np.ndarray = np.bincount(at, minlength=len(edges) + 1)
    return counts


def bin_counts(spec: ModelSpec, x: np.ndarray, outputs: np.ndarray) -> list[tuple[int, int, int]]:
    """(feature, bin, rows) of rows `x` and their `outputs`, bins with rows only; the answers under
    ANSWERS. Nothing for a version without a reference."""
    reference = spec.reference
    if reference is None:
        return []
    out: list[tuple[int, int, int]] = []
    for j, h in enumerate(reference.features):
        out.extend((j, b, int(n)) for b, n in enumerate(_bins(h.edges, x[:, j])) if n)
    if spec.task == "classification":
        answered = _labels(outputs, len(spec.labels))
    else:
        answered = _bins(reference.prediction.edges, outputs[:, 0])
    out.extend((ANSWERS, b, int(n)) for b, n in enumerate(answered) if n)
    return out


def psi(expected: Sequence[float], counts: Sequence[int]) -> float | None:
    """The PSI of a window's `counts` per bin against the reference's shares; None for no rows."""
    total = sum(counts)
    if not total:
        return None
    value = 0.0
    for share, n in zip(expected, counts, strict=True):
        a, e = max(n / total, EPSILON), max(share, EPSILON)
        value += (a - e) * math.log(a / e)
    return value
