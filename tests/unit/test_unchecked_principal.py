"""The check of the caller is kept by the type routes receive, not by a reviewer's memory.

A `Principal` (what `CurrentUser`, `ItemReader`, `Predictor`, ... give a route) says who is calling
only once the database has checked its credentials: before that, reading who it is raises, so no
route or service can act for an unchecked caller (the item routes receive theirs unchecked: the
item service checks it, in the same statement as its work on the hottest routes). Its credentials
are read in one place, the checking statements. `tests/security/test_api2_authentication.py::
test_every_authenticated_route_refuses_a_token_whose_login_ended` walks every route with a
logged-out, a deactivated and a deleted user's token and requires a 401.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from app.core.security import AccessClaims, KeyClaims, Principal, Unchecked

ROOT = Path(__file__).resolve().parents[2]
WHO = ("id", "email", "is_active", "is_admin", "created_at")


@pytest.mark.parametrize(
    "credentials",
    [
        AccessClaims(7, "s" * 32, "j" * 32, int(time.time()) + 600),
        KeyClaims(7, 3, frozenset({"items:read"}), None, "d" * 64),
    ],
    ids=["access token", "api key"],
)
@pytest.mark.parametrize("attribute", WHO)
def test_an_unchecked_principal_says_nobody(credentials: AccessClaims | KeyClaims, attribute: str) -> None:
    with pytest.raises(Unchecked):
        getattr(Principal(credentials), attribute)


def test_only_the_checking_statements_read_the_credentials() -> None:
    readers = sorted(
        {
            str(path.relative_to(ROOT))
            for path in sorted((ROOT / "app").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Attribute)
            and node.attr in {"_credentials", "_confirm"}
            and not _is_self(node.value)
        }
    )
    assert readers == ["app/repositories/users.py"], readers


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"
