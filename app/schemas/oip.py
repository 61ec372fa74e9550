"""Open Inference Protocol (KServe V2) REST schemas, JSON tensors only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from app.schemas.common import NOT_CONVERTED

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class _Open(BaseModel):
    # The protocol lets clients send extra, implementation-specific keys; they are ignored. Numbers
    # and booleans are strict, as in every request body here (app.schemas.common.RequestModel):
    # a shape of `["1", "4"]` is a client's mistake to name, not a guess to make.
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Open):
    name: str = Field(max_length=128, description="The model's input, as its metadata names it: `input`.")
    shape: list[Annotated[int, NOT_CONVERTED]] = Field(min_length=1, max_length=8)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(_Open):
    name: str = Field(max_length=128)
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Open):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestOutput] | None = Field(
        None,
        max_length=16,
        description="The outputs to return, each once (none: all of them).",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("outputs")
    @classmethod
    def _each_once(cls, outputs: list[RequestOutput] | None) -> list[RequestOutput] | None:
        names = [o.name for o in outputs or ()]
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if repeated is not None:
            raise ValueError(f"each output at most once; {repeated!r} is asked for twice")
        return outputs


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="`prediction_id`: this answer's record in the prediction log, for sending the "
        "truth later (`POST /api/v1/predictions/{prediction_id}/feedback`); the protocol's `id` "
        "echoes the request's.",
    )
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class OipError(BaseModel):
    error: str


# --- the repository extension ---

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class RepositoryIndexRequest(_Open):
    ready: StrictBool | None = Field(
        None, description="true: only the versions ready now; false or none: all."
    )


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str


class LoadParameters(_Open):
    version: str | None = Field(
        None, pattern=VERSION_PATTERN, description="The version to load; none: the manifest's newest."
    )


class RepositoryLoadRequest(_Open):
    parameters: LoadParameters | None = None


class RepositoryChanged(BaseModel):
    name: str
    version: str | None = Field(description="The version loaded or unloaded; null: every version.")
    revision: int | None = Field(
        description="The fleet state's revision after the change (null on the model server, which "
        "loads for itself only)."
    )
