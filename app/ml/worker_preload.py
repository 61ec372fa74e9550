"""Modules the forkserver imports once, so each forked worker starts with its model library loaded.

Importing scikit-learn and skops takes seconds; with this preload a replacement worker is ready
in milliseconds after a crash instead. Which modules: every process kind's `preload` and its
implementation (app.ml.runtimes). Only the forkserver process imports this module.
"""

import importlib

from app.ml.formats import RUNTIMES

PRELOAD = (
    *(m for kind in RUNTIMES.values() if kind.executor == "process" for m in kind.preload),
    *(kind.implementation for kind in RUNTIMES.values() if kind.executor == "process"),
    "app.ml.worker",
)

for _module in PRELOAD:
    importlib.import_module(_module)
