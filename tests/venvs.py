"""Virtualenvs of their own for outside programs the tests run (MLServer, openapi-python-client):
made once from PyPI under `.cache/<name>-venv-<hash of the pins>`, atomically (built aside, then
renamed), so the second pytest pass of CI and every later run reuse them. `make test-venvs` makes
them ahead of the passes (in .ci/run, beside the other jobs)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    local = ROOT / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else None


def cached_venv(name: str, pins: Sequence[str], program: str) -> Path:
    """`.cache/<name>-venv-<hash>` with `pins` installed; `program` (in its bin/) marks it done."""
    key = hashlib.sha256("\n".join((sys.version.split()[0], *pins)).encode()).hexdigest()[:12]
    venv = ROOT / ".cache" / f"{name}-venv-{key}"
    if (venv / "bin" / program).exists():
        return venv
    building = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    uv = _uv()
    if uv is not None:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(building)], check=True, env=env)
        install = [uv, "pip", "install", "-q", "--python", str(building / "bin" / "python")]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        install = [
            str(building / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
        ]
    # Only PyPI: no extra index, no local wheels.
    subprocess.run([*install, "--index-url", "https://pypi.org/simple", *pins], check=True, env=env)
    # The scripts' shebangs name the folder they were installed in: fix them for the final name.
    for script in (building / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            with contextlib.suppress(UnicodeDecodeError):
                text = script.read_text()
                if str(building) in text:
                    script.write_text(text.replace(str(building), str(venv)))
    (building / "pyvenv.cfg").write_text(
        (building / "pyvenv.cfg").read_text().replace(str(building), str(venv))
    )
    try:
        building.rename(venv)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return venv


if __name__ == "__main__":  # make test-venvs
    from tests.api.test_generated_client import generator_venv
    from tests.tier.conftest import mlserver_venv

    print(mlserver_venv())
    print(generator_venv())
