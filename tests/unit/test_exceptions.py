"""The problem-details helpers and the "is the database down?" classification."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from app.core.errors import AppError, Conflict, NotFound, ServiceUnavailable, Unauthorized, ValidationFailed
from app.http.problems import (
    PROBLEM_CONTENT_TYPE,
    is_database_outage,
    problem_body,
    problem_response,
    validation_errors,
)


def test_problem_body_of_a_known_status() -> None:
    body = problem_body(404, detail="Item not found.", instance="/api/v1/items/3")
    assert body == {
        "type": "https://fastapi-ml-service.dev/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "Item not found.",
        "instance": "/api/v1/items/3",
    }


@pytest.mark.parametrize(("status", "title"), [(418, "I'm a Teapot"), (599, "Error")])
def test_problem_body_of_other_statuses(status: int, title: str) -> None:
    body = problem_body(status)
    assert body["status"] == status
    assert body["title"].lower() == title.lower()
    assert body["type"].endswith(f"/http-{status}")
    assert "instance" not in body
    assert "errors" not in body


def test_problem_response_is_problem_json() -> None:
    response = problem_response(
        422, detail="bad", errors=[{"field": "title", "message": "too long"}], headers={"X-A": "1"}
    )
    assert response.status_code == 422
    assert response.media_type == PROBLEM_CONTENT_TYPE
    assert response.headers["x-a"] == "1"
    body = json.loads(bytes(response.body))
    assert body["errors"] == [{"field": "title", "message": "too long"}]


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("body", "title"), "title"),
        (("body", "rows", 0, "x"), "rows.0.x"),
        (("query", "limit"), "limit"),
        (("path", "item_id"), "item_id"),
        (("header", "x-thing"), "x-thing"),
        (("body",), "body"),
        ((), "body"),
    ],
)
def test_validation_errors_use_public_field_names(loc: tuple[object, ...], field: str) -> None:
    assert validation_errors([{"loc": loc, "msg": "nope"}]) == [{"field": field, "message": "nope"}]


def test_app_errors_carry_status_title_and_detail() -> None:
    assert NotFound().detail == "Not Found"
    assert NotFound("Item not found.").detail == "Item not found."
    assert Conflict().status == 409
    unauthorized = Unauthorized()
    assert unauthorized.status == 401
    assert unauthorized.headers == {"WWW-Authenticate": "Bearer"}
    assert ValidationFailed(errors=[{"field": "a", "message": "b"}]).errors == [
        {"field": "a", "message": "b"}
    ]
    assert ServiceUnavailable(headers={"Retry-After": "1"}).headers == {"Retry-After": "1"}
    assert AppError().status == 500
    assert AppError().errors is None


def _dbapi(cls: type[sa_exc.DBAPIError], message: str, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, sqlite3.OperationalError(message), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (OSError("unreachable"), True),
        (sa_exc.TimeoutError("pool exhausted"), True),
        (_dbapi(sa_exc.OperationalError, "unable to open database file"), True),
        (_dbapi(sa_exc.OperationalError, "database is locked"), True),
        (_dbapi(sa_exc.InterfaceError, "connection closed"), True),
        (_dbapi(sa_exc.DBAPIError, "server closed the connection", invalidated=True), True),
        (_dbapi(sa_exc.OperationalError, "no such table: alembic_version"), False),
        (_dbapi(sa_exc.OperationalError, "no such column: users.email"), False),
        (_dbapi(sa_exc.ProgrammingError, 'relation "users" does not exist'), False),
        (_dbapi(sa_exc.IntegrityError, "UNIQUE constraint failed"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_database_outage(error: BaseException, outage: bool) -> None:
    assert is_database_outage(error) is outage
