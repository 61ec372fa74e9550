"""docs/deployment.md's settings table and .env.example are generated from Settings: they must match."""

from __future__ import annotations

import subprocess
import sys

from app.core.config import Settings
from tests.faults.server import ROOT


def test_settings_table_and_env_example_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_is_documented_in_both_files() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        assert f"| `{name.upper()}` |" in doc
        assert f"# {name.upper()}=" in example
        assert field.description, f"{name} has no description for the table"
