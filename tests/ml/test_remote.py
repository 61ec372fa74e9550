"""Remote manifest entries and the circuit breaker of app.ml.remote, on their own (the real servers
are in tests/tier)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.ml.manifest import load_manifest
from app.ml.remote import CircuitBreaker
from tests.ml.conftest import MODEL_DIR


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_refuses_probes_once_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_s=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open"
    assert not breaker.allow()  # refused at once while open
    assert breaker.retry_after() == 1
    clock.now += 1.0
    assert breaker.state == "half-open"
    assert breaker.allow()  # one probe...
    assert not breaker.allow()  # ...and only one
    breaker.failed()  # the probe failed: open again, for twice as long
    clock.now += 1.0
    assert breaker.state == "open"
    clock.now += 1.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.opened == 1


def test_calls_already_under_way_when_it_opened_do_not_keep_it_open_longer() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_s=1.0, clock=clock)
    for _ in range(2):
        breaker.failed()
    for _ in range(10):  # the rest of a burst sent before it opened
        breaker.failed()
    clock.now += 1.0
    assert breaker.state == "half-open"


def test_a_success_resets_the_count_of_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == "closed"


def _manifest_with(tmp_path: Path, **changes: Any) -> Path:
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    manifest["models"][0].update(changes)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


REMOTE = {"url": "http://model-server:8001", "model": "iris", "output": "probabilities"}


def test_a_remote_entry_needs_no_file(tmp_path: Path) -> None:
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    entry = manifest["models"][0]
    for key in ("format", "file", "sha256", "trusted_types"):
        entry.pop(key)
    entry.update(executor="remote", remote={**REMOTE, "version": "1.0.0", "auth": "service-token"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    spec = load_manifest(tmp_path).models[0]
    assert spec.remote is not None
    assert spec.remote.model_path == "/v2/models/iris/versions/1.0.0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"executor": "remote"}, "a remote model needs `remote`"),
        ({"executor": "remote", "remote": REMOTE}, "a remote model has no format, file"),
        ({"remote": REMOTE}, "`remote` only applies to executor 'remote'"),
        (
            {
                "executor": "remote",
                "format": None,
                "file": None,
                "sha256": None,
                "remote": {**REMOTE, "url": "ftp://x"},
            },
            "remote.url",
        ),
    ],
)
def test_inconsistent_remote_entries_are_set_aside_with_the_reason(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    # One entry a process cannot take is reported, never served, and stops nothing else.
    manifest = load_manifest(_manifest_with(tmp_path, **changes))
    [rejected] = manifest.rejected
    assert rejected.key == ("iris", "1.0.0")
    assert message in rejected.reason
    assert manifest.find("iris", "1.0.0") is None
    assert {spec.name for spec in manifest.models} == {"breast_cancer", "diabetes"}


def test_each_failed_probe_doubles_the_open_time_up_to_30_s_by_default() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)  # the defaults: 5 failures, 1 s, up to 30 s
    for _ in range(4):
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open"
    waits = []
    for _ in range(7):
        waits.append(breaker.retry_after())
        clock.now += breaker.retry_after() - 0.01
        assert breaker.state == "open"  # not a moment before its time
        clock.now += 0.01
        assert breaker.allow()  # the probe
        breaker.failed()
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert breaker.retry_after() == 30
    breaker.succeeded()
    assert breaker.state == "closed"
    for _ in range(4):
        breaker.failed()
    assert breaker.state == "closed"  # closed again from scratch: five failures to open
