"""Shared schema pieces: the base model and the problem-details shape shown in the OpenAPI document."""

from __future__ import annotations

from http import HTTPStatus

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.core.errors import PROBLEM_CONTENT_TYPE


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields: `owner_id` or `is_admin` sent by a client is an error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


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
