"""Shared schema pieces: the base model and the problem-details shape shown in the OpenAPI document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields: `owner_id` or `is_admin` sent by a client is an error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def reject_null(value: object) -> object:
    """For PATCH fields that may be left out but not set to null."""
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


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
