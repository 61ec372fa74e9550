"""Shared schema pieces: the base model and the problem-details shape shown in the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict


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


def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """The `responses=` map for a route: each listed status documented as problem details."""
    return {status: {"model": Problem, "content": {"application/problem+json": {}}} for status in statuses}
