"""Modules the forkserver imports once, so each forked worker starts with scikit-learn already loaded.

Importing scikit-learn and skops takes seconds; with this preload a replacement worker is ready
in milliseconds after a crash instead. Only the forkserver process imports this module.
"""

import importlib

PRELOAD = ("skops.io", "sklearn.ensemble", "sklearn.linear_model", "sklearn.tree", "app.ml.worker")

for _module in PRELOAD:
    importlib.import_module(_module)
