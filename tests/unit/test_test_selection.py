"""The PostgreSQL pass of .ci/run runs only the tests that can go differently there
(TEST_ONLY_DATABASE, tests/conftest.py): those using the `database_url` fixture, and those marked
`database`. A test module that reaches the database or Redis another way must carry the mark, or
the PostgreSQL pass would silently leave it out."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Ways to the test services that bypass the `database_url` fixture.
OTHER_WAYS = re.compile(r"private_database|TEST_DATABASE_URL|TEST_REDIS_URL|TEST_DATABASE_SHARED_URL")
HELPERS = {"conftest.py", "faults/server.py"}


def test_every_module_reaching_the_services_itself_is_marked_database() -> None:
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.parent.name == "container" or path == Path(__file__).resolve():
            continue  # tests/container runs in its own step (make image-test), with every service
        source = path.read_text()
        if OTHER_WAYS.search(source) and "pytest.mark.database" not in source:
            unmarked.append(str(path.relative_to(TESTS)))
    assert unmarked == [], f"mark these pytest.mark.database: {unmarked}"


def test_helpers_reaching_the_services_are_known() -> None:
    """A new helper module reading the variables would let tests reach the services unmarked."""
    readers = {
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if not path.name.startswith("test_") and OTHER_WAYS.search(path.read_text())
    }
    assert readers <= HELPERS, f"helpers reading the service variables: {sorted(readers - HELPERS)}"
