"""One rule for model names and versions (app.ml.names), and an alias never named like a version
of its model, in either order (issue 21, finding 6)."""

from __future__ import annotations

import pytest

from app.ml.fleet import Alias, FleetState, Split, StateConflict, seed
from app.ml.manifest import RemoteSpec, load_manifest
from app.ml.names import name_problem, version_problem
from tests.ml.conftest import MODEL_DIR


def test_every_bundled_name_and_version_keeps_the_rule() -> None:
    for spec in load_manifest(MODEL_DIR).models:
        assert name_problem(spec.name) is None
        assert version_problem(spec.version) is None


@pytest.mark.parametrize("version", ["1.0.0", "2024-06-01", "v2_rc.1", "candidate", "x" * 64])
def test_a_version_the_rule_takes_is_one_a_remote_entry_takes(version: str) -> None:
    assert version_problem(version) is None
    remote = RemoteSpec(url="http://127.0.0.1:1", model="iris", version=version, output="probabilities")
    assert remote.model_path == f"/v2/models/iris/versions/{version}"


@pytest.mark.parametrize("version", ["7 beta", "a/b", "/abs", "..", ".hidden", "V2", "x" * 65, "", "default"])
def test_a_version_outside_the_rule_is_named_as_such(version: str) -> None:
    assert version_problem(version) is not None


def _state() -> FleetState:
    return seed(load_manifest(MODEL_DIR))


def test_a_version_named_like_an_alias_is_not_loaded() -> None:
    """It would shadow the alias on /versions/{ref}/predict while the alias kept its old target."""
    state = _state().set_alias(Alias("iris", "candidate", (Split("1.0.0", 100),)))
    with pytest.raises(StateConflict, match="'candidate' is an alias of model 'iris'"):
        state.load("iris", "candidate")
    with pytest.raises(StateConflict, match="'default' is an alias"):
        state.load("iris", "default")
    assert state.load("diabetes", "candidate").versions("diabetes") == ("1.0.0", "candidate")


def test_an_alias_named_like_a_loaded_version_is_refused() -> None:
    state = _state().load("iris", "candidate")
    with pytest.raises(StateConflict, match="'candidate' is a version of model 'iris'"):
        state.set_alias(Alias("iris", "candidate", (Split("1.0.0", 100),)))
