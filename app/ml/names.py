"""The one rule for the names and versions models are served under, used everywhere they enter:
`models add`, the manifest, the remote entries made from it (`ML_REMOTE_URL`), the routes' path
parameters and the fleet's state.

Lower case, digits and a few URL-safe marks only, so a name or version is the same string in a
file name (`{name}-{version}.onnx`), a URL path segment and a manifest, on every tier; the bundled
models (`1.0.0`) and every alias (app.ml.fleet.ALIAS_PATTERN) fit.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

MAX_LENGTH = 64
# Every loaded model has an alias of this name (app.ml.fleet): no version may be called so.
DEFAULT_ALIAS = "default"
MODEL_NAME_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_LENGTH - 1}}}$"
VERSION_PATTERN = rf"^[a-z0-9][a-z0-9._-]{{0,{MAX_LENGTH - 1}}}$"
MODEL_NAME_RULE = f"1 to {MAX_LENGTH} of a-z, 0-9, '_' and '-', starting with a letter or digit"
VERSION_RULE = f"1 to {MAX_LENGTH} of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"

ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def name_problem(value: str) -> str | None:
    """Why `value` cannot be a model's name, or None."""
    return None if _MODEL_NAME.fullmatch(value) else f"a model name is {MODEL_NAME_RULE}"


def version_problem(value: str) -> str | None:
    """Why `value` cannot be a model's version, or None."""
    if value == DEFAULT_ALIAS:
        return f"every model has an alias named {DEFAULT_ALIAS!r}: a version needs another name"
    return None if _VERSION.fullmatch(value) else f"a version is {VERSION_RULE}"
