"""Schemas of the model lifecycle: versions, aliases and canaries, the fleet's desired state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator

from app.ml.fleet import MAX_SPLITS, Alias, Shadow
from app.schemas.common import NOT_CONVERTED, RequestModel
from app.schemas.oip import VERSION_PATTERN


class SplitIn(RequestModel):
    version: str = Field(pattern=VERSION_PATTERN)
    weight: Annotated[int, Field(ge=1, le=100), NOT_CONVERTED] = Field(
        description="Percent of the alias's requests."
    )


class ShadowIn(RequestModel):
    version: str = Field(pattern=VERSION_PATTERN, description="A loaded version the alias does not route to.")
    percent: Annotated[int, Field(ge=1, le=100), NOT_CONVERTED] = Field(
        description="Percent of the alias's requests whose copy it gets."
    )

    def shadow(self) -> Shadow:
        return Shadow(self.version, self.percent)


class AliasUpdate(RequestModel):
    """Either `version` (the alias points at it), or `split` (a canary: versions with weights in
    whole percent adding up to 100); and, optionally, a `shadow`."""

    version: str | None = Field(None, pattern=VERSION_PATTERN)
    split: list[SplitIn] | None = Field(None, min_length=2, max_length=MAX_SPLITS)
    sticky: StrictBool = Field(
        False, description="A split sends each user (or key's owner) to the same version every time."
    )
    shadow: ShadowIn | None = Field(
        None,
        description="A version given a copy of a share of the alias's requests: its answers are "
        "recorded beside the answer given, never returned, and never slow or fail the request "
        "(docs/models.md, shadow traffic). Absent: no shadow (a shadow set before is cleared).",
    )

    @field_validator("split")
    @classmethod
    def _adds_up(cls, split: list[SplitIn] | None) -> list[SplitIn] | None:
        if split is None:
            return None
        if len({s.version for s in split}) != len(split):
            raise ValueError("each version may appear once")
        total = sum(s.weight for s in split)
        if total != 100:
            raise ValueError(f"the weights add up to {total}, not 100")
        return split

    @model_validator(mode="after")
    def _one_target(self) -> AliasUpdate:
        if (self.version is None) == (self.split is None):
            raise ValueError("give either `version` or `split`")
        return self

    def splits(self) -> list[tuple[str, int]]:
        if self.version is not None:
            return [(self.version, 100)]
        return [(s.version, s.weight) for s in self.split or ()]


class SplitOut(BaseModel):
    version: str
    weight: int


class ShadowOut(BaseModel):
    version: str
    percent: int


class AliasSummary(BaseModel):
    """An alias as anyone who may read the models sees it: where it sends requests, not who
    pointed it there (which admin did is for admins: `AliasPublic`)."""

    model: str
    name: str
    splits: list[SplitOut]
    sticky: bool
    shadow: ShadowOut | None = Field(description="The version given a copy of its requests, if any.")
    changed_at: datetime | None

    @classmethod
    def of(cls, alias: Alias) -> AliasSummary:
        shadow = alias.shadow
        return cls(
            model=alias.model,
            name=alias.name,
            splits=[SplitOut(version=s.version, weight=s.weight) for s in alias.splits],
            sticky=alias.sticky,
            shadow=ShadowOut(version=shadow.version, percent=shadow.percent) if shadow else None,
            changed_at=alias.changed_at,
        )


class AliasPublic(AliasSummary):
    """An alias as admins see it (the answer to pointing one, the fleet's state)."""

    changed_by: int | None = Field(description="The admin who last pointed it (null: the seed).")

    @classmethod
    def of(cls, alias: Alias) -> AliasPublic:
        summary = AliasSummary.of(alias)
        return cls(**dict(summary), changed_by=alias.changed_by)


class LoadedVersion(BaseModel):
    name: str
    version: str


class VersionHere(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"] = Field(
        description="In the process that answered: READY (loaded), LOADING (wanted, not yet), "
        "UNAVAILABLE (not wanted here, or failed to load: `reason`)."
    )
    reason: str


class StateChange(BaseModel):
    revision: int
    changed_by: int | None
    action: str
    changed_at: datetime


class ModelState(BaseModel):
    """The fleet's desired state, and how the process that answered stands against it."""

    revision: int = Field(description="0: nothing changed since the manifest's seed.")
    changed_by: int | None
    changed_at: datetime | None
    loaded: list[LoadedVersion] = Field(description="The versions every process should serve.")
    aliases: list[AliasPublic]
    here: list[VersionHere] = Field(description="Every version known to the answering process.")
    here_revision: int | None = Field(description="The revision the answering process has converged on.")
    history: list[StateChange] = Field(description="The latest changes, newest first.")
