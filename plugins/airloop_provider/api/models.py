"""Request bodies and response models of the plugin API (the OpenAPI document shows them).

Responses allow extra fields: rows of the monitoring store carry every column of their table
(:func:`airloop.tasks.overview.rows_json`), so a migration's new column shows up unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PromoteBody(BaseModel):
    """``POST …/promote``."""

    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1)]
    environment: str
    reason: Annotated[str, Field(min_length=3, max_length=1000)]
    force: bool = False
    requested_by: Annotated[str, Field(max_length=100)] | None = None


class RollbackBody(BaseModel):
    """``POST …/rollback``."""

    model_config = ConfigDict(extra="forbid")
    environment: str | None = None
    target: Annotated[str, Field(pattern=r"^(previous|[0-9]+)$")] = "previous"
    reason: Annotated[str, Field(min_length=3, max_length=1000)]
    requested_by: Annotated[str, Field(max_length=100)] | None = None


class PipelineSummary(_Open):
    """A pipeline, its DAG ids and the version each environment holds (``None``: empty)."""

    name: str
    tenant: str
    task: str
    model_name: str
    dag_ids: dict[str, str]
    serving_environment: str
    champion: dict[str, str | None]
    links: dict[str, str | None]


class PipelineList(BaseModel):
    """``GET /pipelines``: the pipelines the caller may read."""

    pipelines: list[PipelineSummary]


class PipelineCard(PipelineSummary):
    """The model card of one pipeline."""

    key_metric: str
    environments: list[dict[str, Any]]
    live: dict[str, Any]
    last_training: dict[str, Any] | None
    last_drift_check: dict[str, Any] | None
    open_alerts: dict[str, Any]
    ab_tests: list[dict[str, Any]]
    versions: int


class Version(_Open):
    """A registered version: holdout metrics (quality metrics; other figures apart), aliases,
    environments it holds, lineage and links (MLflow run, registered model, validation result)."""

    version: str
    run_id: str | None
    created: str | None
    aliases: list[str]
    environments: list[str]
    metrics: dict[str, float | None]
    figures: dict[str, float | None]
    train_rows: int | None
    lineage: dict[str, str | None]
    links: dict[str, str | None]


class VersionList(BaseModel):
    """``GET …/versions``: newest first."""

    pipeline: str
    versions: list[Version]


class VersionDetail(Version):
    """One version with its params and ledger rows."""

    params: dict[str, Any]
    source: str
    ledger: list[dict[str, Any]]


class DriftPoint(_Open):
    """One monitored interval's statistic of one feature."""

    interval_start: str
    interval_end: str
    statistic: float | None
    threshold: float
    drifted: bool
    method: str
    current_rows: int


class DriftHistory(BaseModel):
    """``GET …/drift``: per feature (``__prediction__``: the model's output), oldest first."""

    pipeline: str
    tenant: str
    intervals: int
    features: dict[str, list[DriftPoint]]


class Rows(BaseModel):
    """Rows of the monitoring store (every column), newest first."""

    pipeline: str
    rows: list[dict[str, Any]]


class Timeline(BaseModel):
    """The promotion ledger, oldest first."""

    pipeline: str
    rows: list[dict[str, Any]]
