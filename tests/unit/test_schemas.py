"""Schema helpers and the ORM's guards: null-refusing PATCH fields, no hash in a repr, UTC only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from app.models import User
from app.models.base import UTCDateTime
from app.schemas.common import NO_NULL_IN_SCHEMA, reject_null
from app.schemas.item import ItemUpdate
from app.schemas.user import UserCreate, UserPublic


class _Patch(BaseModel):
    single: Annotated[int | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None
    several: Annotated[int | str | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None


def test_null_is_neither_accepted_nor_offered() -> None:
    schema = _Patch.model_json_schema()["properties"]
    assert schema["single"]["type"] == "integer"
    assert {branch["type"] for branch in schema["several"]["anyOf"]} == {"integer", "string"}
    assert "null" not in json.dumps(schema)
    assert "default" not in json.dumps(schema)
    with pytest.raises(ValidationError) as caught:
        _Patch.model_validate({"single": None, "several": None})
    assert [error["loc"] for error in caught.value.errors()] == [("single",), ("several",)]
    assert _Patch.model_validate({}).model_dump(exclude_unset=True) == {}


def test_item_update_keeps_left_out_fields_out() -> None:
    assert ItemUpdate.model_validate({"description": None}).model_dump(exclude_unset=True) == {
        "description": None
    }


def test_user_create_normalises_the_email() -> None:
    assert UserCreate(email=" Ann@Example.COM ", password="long enough").email == "ann@example.com"


def test_no_user_schema_has_a_password_hash() -> None:
    assert "hashed_password" not in UserPublic.model_fields
    assert "hashed_password" not in json.dumps(UserPublic.model_json_schema())


def test_a_user_repr_shows_no_hash() -> None:
    user = User(id=1, email="a@example.com", hashed_password="$argon2id$v=19$secret")
    assert "argon2" not in repr(user)
    assert "a@example.com" in repr(user)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), None)  # noqa: DTZ001 - on purpose
