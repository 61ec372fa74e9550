"""The token check of the hot routes is kept by a type, not by a reviewer's memory.

`UnverifiedClaims` (what `ItemReadClaims` and `ItemWriteClaims` give a route) is opaque: nothing but
a repository statement that checks it in its own round trip reads the user from it. Reading it
anywhere else fails `mypy --strict` (it has no user to read) or the scan below (its one private
field is read in one place). `tests/security/test_api2_authentication.py::
test_every_authenticated_route_refuses_a_token_whose_login_ended` walks every route that takes it
with a logged-out, a deactivated and a deleted user's token and requires a 401.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parents[2]


def test_a_route_cannot_read_the_user_from_unverified_claims(tmp_path: Path) -> None:
    route = tmp_path / "a_forgetful_route.py"
    route.write_text(
        textwrap.dedent(
            """
            from app.api.deps import ItemReadClaims

            async def read_something(claims: ItemReadClaims) -> int:
                return claims.user_id  # a caller's id taken on trust
            """
        )
    )
    stdout, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", "--cache-dir=/dev/null", str(route)]
    )
    assert status == 1, stdout
    assert '"UnverifiedClaims" has no attribute "user_id"' in stdout, stdout


def test_only_the_checking_statements_read_the_claims() -> None:
    readers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "app").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "_claims" and not _is_self(node.value)
    ]
    assert readers == ["app/repositories/users.py"], readers


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"
