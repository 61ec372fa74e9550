"""Shared schema pieces: the base model and the problem-details shape shown in the OpenAPI document."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from app.core.errors import PROBLEM_CONTENT_TYPE


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields: `owner_id` or `is_admin` sent by a client is an error.

    Their whole numbers and booleans take no conversion (`NOT_CONVERTED`, pydantic's `StrictBool`):
    `"50"` or `true` for a number, `"yes"` or `1` for a boolean are a 422 naming the field, where
    lax mode would read 50, 1 and true, guessing what a client meant. Per field, not a strict
    model: strict mode would also refuse the strings of enum fields (`scopes`) in the Python mode
    FastAPI validates bodies in."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _a_number(value: object) -> object:
    if isinstance(value, bool | str):
        kind = "a boolean" if isinstance(value, bool) else "a string"
        raise ValueError(f"must be a whole number, got {kind}")
    return value


# For an `int` field: a whole number as JSON Schema's `integer` has it, 50 or 50.0 (a number without
# a fraction, which some JSON encoders write), never "50" or true. (pydantic's strict int would
# refuse 50.0, which the OpenAPI document's `integer` allows, so a generated client could send it.)
# Placed after the field's bounds (`Annotated[int, Field(ge=1), NOT_CONVERTED]`), so the document
# keeps them as `minimum` and `maximum`.
NOT_CONVERTED = BeforeValidator(_a_number)


# Control characters (C0, DEL, C1: Unicode's Cc) in a name a person reads back: a NUL is cut off or
# refused by some databases and tools, a newline or an escape sequence forges lines in a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The same rule in the OpenAPI document (ECMA-262 syntax), so a generated client knows it.
_NO_CONTROL_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"


def _no_control_characters(value: str) -> str:
    found = _CONTROL.search(value)
    if found is not None:
        raise ValueError(
            f"must not contain control characters; found U+{ord(found.group()):04X} at {found.start()}"
        )
    return value


# Free text a person names something with (an API key's name): a string, without control characters.
DisplayName = Annotated[
    str,
    Field(strict=True, json_schema_extra={"pattern": _NO_CONTROL_PATTERN}),
    AfterValidator(_no_control_characters),
]


def reject_null(value: object) -> object:
    """For PATCH fields that may be left out but not set to null."""
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


def _offer_no_null(schema: JsonDict) -> None:
    branches = schema.pop("anyOf", None)
    if isinstance(branches, list):
        kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        if len(kept) == 1 and isinstance(kept[0], dict):
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    schema.pop("default", None)


# With `reject_null`: the OpenAPI document does not offer null either. (`X | None` keeps validation
# errors named by the field, `title`; a `SkipJsonSchema[None]` branch would make pydantic name
# them by union member, `title.function-after[...]`.)
NO_NULL_IN_SCHEMA = Field(json_schema_extra=_offer_no_null)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class FieldError(BaseModel):
    field: str = Field(description="The field's public name, as a dotted path (`rows.0.x`).")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, served as `application/problem+json`."""

    type: str = Field(description="A URI identifying the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The path of the request that failed.")
    errors: list[FieldError] | None = Field(None, description="Validation errors, one per field.")


# The component the document's error responses point at; app.api.openapi adds it (and FieldError)
# to the document's components, since no route names Problem as a `model`.
PROBLEM_REF = "#/components/schemas/Problem"

# What every operation behind an access token can answer: no, bad or revoked token (401), the
# per-user rate limit (429, counted before the database is touched), and load shedding or a
# database outage (503). Routers whose every route needs a token declare these once.
AUTHENTICATED_ERRORS = (401, 403, 429, 503)
# What every operation that reads a JSON body can answer: malformed JSON (400), a body over
# MAX_REQUEST_BODY_BYTES (413), a body sent as another content type (415), invalid fields (422).
JSON_BODY_ERRORS = (400, 413, 415, 422)

_DESCRIPTIONS = {422: "Invalid fields, each named in `errors`.", 429: "A rate limit; see `Retry-After`."}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The `responses=` map for a route: each listed status documented as problem details, under
    `application/problem+json`, the media type the server sends (a schema under `application/json`
    would leave generated clients unable to parse any error)."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
        }
        for status in statuses
    }
