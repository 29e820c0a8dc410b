"""The pipeline file's ``monitoring.reference`` settings: which data is a version's drift reference."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReferenceRefresh(BaseModel):
    """Refresh days: every ``every_days`` calendar days (days since 1970-01-01 divisible by it); the
    refreshed reference is the version's ok traffic of the ``window_days`` before the refresh day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_days: int = Field(ge=1)
    window_days: int = Field(ge=1)


class ReferenceConfig(BaseModel):
    """A version's drift reference: the last ``training_days`` of its training snapshot (holdout
    included; unset: the whole snapshot), optionally refreshed from served traffic (``refresh``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    training_days: int | None = Field(default=None, ge=1)
    refresh: ReferenceRefresh | None = None
