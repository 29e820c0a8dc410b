"""The pipeline file schema (pydantic): one YAML file per pipeline, validated on load."""

from __future__ import annotations

import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from airloop.core.metrics import (
    BINARY_METRICS,
    METRIC_ALIASES,
    POSITIVE_LABEL_METRICS,
    REGRESSION_METRICS,
    STUDY_METRICS,
    metrics_for_task,
    task_kind,
)
from airloop.core.decision import Calibration, DecisionConfig, check_gate_metrics
from airloop.core.references import ReferenceConfig
from airloop.core.names import RESERVED_ALIASES
from airloop.core.settings import ConfigError, Settings, get_settings
from airloop.core.timeutil import day_start

TaskType = Literal["binary_classification", "multiclass_classification", "regression"]


class ConfigurationError(ConfigError):
    """The pipeline file does not fit its data or is out of step with its stored suite (a
    misspelled column, a declared type no value has, a stale suite): a person must fix the file,
    so a retry cannot help. The DAG files map it to ``AirflowFailException``."""


# --------------------------------------------------------------------------------------------
# Names the configuration is checked against (the one definition; training imports them)
# --------------------------------------------------------------------------------------------

#: estimator family -> task kind ("classification" | "regression") -> import path.
ESTIMATORS: dict[str, dict[str, str]] = {
    "logistic_regression": {"classification": "sklearn.linear_model:LogisticRegression"},
    "ridge": {"regression": "sklearn.linear_model:Ridge"},
    "random_forest": {
        "classification": "sklearn.ensemble:RandomForestClassifier",
        "regression": "sklearn.ensemble:RandomForestRegressor",
    },
    "extra_trees": {
        "classification": "sklearn.ensemble:ExtraTreesClassifier",
        "regression": "sklearn.ensemble:ExtraTreesRegressor",
    },
    "hist_gradient_boosting": {
        "classification": "sklearn.ensemble:HistGradientBoostingClassifier",
        "regression": "sklearn.ensemble:HistGradientBoostingRegressor",
    },
}

def did_you_mean(word: str, options: Any, cutoff: float = 0.6) -> str:
    """`` — did you mean 'x'?`` for the option closest to ``word`` (case-insensitive first), else ``""``."""
    import difflib

    options = [str(o) for o in options]
    exact = [o for o in options if o.lower() == str(word).lower()]
    close = exact or difflib.get_close_matches(str(word), options, n=1, cutoff=cutoff)
    return f" — did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------
# Pipeline configuration (YAML)
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Default ``max_categories`` of a category column: the most frequent values of the training
#: window the model encodes one by one; the others share one "other" bucket.
DEFAULT_MAX_CATEGORIES = 200


class ColumnSpec(_Strict):
    """One feature column: its type and the constraints the validation suite derives.

    A ``category`` column may declare its ``values`` (the validation suite then requires them,
    serving flags or rejects any other value); without ``values`` its vocabulary is learned
    from each training window: the ``max_categories`` most frequent values are encoded one by
    one, the rest (and values never seen in training) share an "other" bucket, and the
    vocabulary is stored with the model version (its fitted encoder)."""

    type: Literal["float", "int", "category", "bool"]
    min: float | None = None
    max: float | None = None
    #: The allowed categories (None: learned from the training window).
    values: list[str] | None = None
    #: Category columns: most categories encoded one by one (the most frequent of the training
    #: window; None: :data:`DEFAULT_MAX_CATEGORIES`, see :attr:`category_cap`).
    max_categories: int | None = Field(default=None, ge=1, le=100_000)
    #: Largest share of nulls tolerated in one partition (0 = never null).
    max_null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> "ColumnSpec":
        if self.type == "category" and self.values is not None and not self.values:
            raise ValueError("'values' is empty: list the allowed categories, or leave 'values' out to learn "
                             "them from the training window")
        if self.type != "category" and self.values:
            raise ValueError("'values' is only for category columns")
        if self.type != "category" and self.max_categories is not None:
            raise ValueError("'max_categories' is only for category columns")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def learned(self) -> bool:
        """A category column whose vocabulary is learned from the training window (no ``values``)."""
        return self.type == "category" and self.values is None

    @property
    def category_cap(self) -> int:
        """Most categories the model encodes one by one (``max_categories``, default 200)."""
        return self.max_categories or DEFAULT_MAX_CATEGORIES


_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]*"


_FILE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class SourceConfig(_Strict):
    """Where the raw data lives and how one day of it is selected.

    * ``kind: files`` (CSV or Parquet): the file pattern is ``path`` joined with ``partition``
      (either may be left out, either may hold glob characters, e.g. ``dt={date}/*.parquet``).
      With ``{date}`` (the day as YYYY-MM-DD) in the pattern, a day is the file(s) it matches for
      that day (daily partitions); without it, every matching file is read and the pipeline's
      timestamp column selects each day. ``format`` defaults to the pattern's suffix.
    * ``kind: sql``: ``table`` (``name`` or ``schema.name``) or ``query`` (one SELECT) through the
      Airflow connection ``conn_id``. A day is selected on the timestamp column with bound
      parameters (``ts >= :start AND ts < :end``, SQLAlchemy Core); a query must not hold
      placeholders of its own.
    """

    kind: Literal["files", "sql"] = "files"
    format: Literal["csv", "parquet"] | None = None
    #: Folder, file or glob; relative paths resolve against the data folder of Settings.
    path: str | None = None
    #: File pattern below ``path``; ``{date}`` is the day as YYYY-MM-DD.
    partition: str | None = None
    #: Airflow connection of a SQL source (``AIRFLOW_CONN_<ID>``, a secrets backend or the DB).
    conn_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,250}$")
    table: str | None = Field(default=None, pattern=rf"^{_IDENTIFIER}(\.{_IDENTIFIER})?$")
    query: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_format(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("kind", "files") == "files" and raw.get("format") is None:
            pattern = str(raw.get("partition") or raw.get("path") or "")
            raw = {**raw, "format": _FILE_SUFFIXES.get(Path(pattern).suffix.lower(), "parquet")}
        return raw

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if self.kind == "files":
            stray = [f for f in ("conn_id", "table", "query") if getattr(self, f) is not None]
            if stray:
                raise ValueError(f"source.{stray[0]} is only for kind 'sql' (this source has kind 'files')")
            if not self.path:
                raise ValueError("source.path is required for kind 'files' (a folder, file or glob)")
            for name in ("path", "partition"):
                value = getattr(self, name) or ""
                if value.replace("{date}", "").count("{") or value.replace("{date}", "").count("}"):
                    raise ValueError(f"source.{name} {value!r}: the only placeholder is {{date}}")
        else:
            stray = [f for f in ("path", "partition", "format") if getattr(self, f) is not None]
            if stray:
                raise ValueError(f"source.{stray[0]} is only for kind 'files' (this source has kind 'sql')")
            if not self.conn_id:
                raise ValueError("source.conn_id is required for kind 'sql' (an Airflow connection id)")
            if (self.table is None) == (self.query is None):
                raise ValueError("a sql source needs exactly one of source.table and source.query")
        return self

    @field_validator("query")
    @classmethod
    def _check_query(cls, query: str | None) -> str | None:
        """One SELECT (or WITH) statement without placeholders: the data interval is always
        applied by airloop as bound parameters, never formatted into the SQL."""
        if query is None:
            return None
        body = query.strip().rstrip(";").strip()
        if not body.split(None, 1) or body.split(None, 1)[0].lower() not in {"select", "with"}:
            raise ValueError("source.query must be one SELECT (or WITH ... SELECT) statement")
        if ";" in body:
            raise ValueError("source.query must be a single statement (no ';' inside)")
        placeholder = re.search(r"\{\s*\w*\s*\}|%\([^)]*\)s|%s|(?<![:\w]):[A-Za-z_]\w*|\?", body)
        if placeholder:
            raise ValueError(
                f"source.query holds the placeholder {placeholder.group(0)!r}: remove it — airloop selects "
                "each day on the timestamp column with bound parameters (ts >= :start AND ts < :end)"
            )
        return body

    @property
    def pattern(self) -> str:
        """The file pattern of a files source: ``path`` joined with ``partition``."""
        return str(Path(self.path or "") / self.partition) if self.partition else (self.path or "")

    @property
    def partitioned(self) -> bool:
        """Whether each day has its own file(s) (``{date}`` in the pattern)."""
        return "{date}" in self.pattern


class ParamSpec(_Strict):
    """One hyper-parameter of the search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("a numeric parameter needs low <= high")
        return self


class TrainingConfig(_Strict):
    """How the Optuna study searches, cross-validates and holds out data."""

    window_days: int = Field(default=60, gt=1)
    holdout_days: int = Field(default=7, gt=0)
    cv_folds: int = Field(default=3, ge=2)
    n_trials: int = Field(default=20, gt=0)
    n_workers: int = Field(default=2, gt=0, le=32)
    timeout_s: int = Field(default=900, gt=0)
    seed: int = 42
    metric: str = "roc_auc"
    #: estimator family -> parameter name -> spec; families: :data:`ESTIMATORS`.
    search_space: dict[str, dict[str, ParamSpec]]
    #: How scores become labels (binary: a threshold tuned on out-of-fold CV predictions).
    decision: DecisionConfig = DecisionConfig()
    #: Probability calibration of classifiers (``auto``: when it lowers the out-of-fold Brier score).
    calibration: Calibration = "none"

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, metric: str) -> str:
        if metric in STUDY_METRICS:
            return metric
        if metric in METRIC_ALIASES:
            raise ValueError(f"{metric!r} is not a scikit-learn scorer name: use {METRIC_ALIASES[metric]!r} "
                             "(scorers are higher-is-better, errors are negated)")
        raise ValueError(f"unknown metric {metric!r}{did_you_mean(metric, sorted(STUDY_METRICS))} "
                         f"(a scikit-learn scorer name: {', '.join(sorted(STUDY_METRICS))})")

    @field_validator("search_space")
    @classmethod
    def _check_families(cls, space: dict[str, Any]) -> dict[str, Any]:
        for family in space:
            if family not in ESTIMATORS:
                raise ValueError(f"unknown estimator family {family!r}{did_you_mean(family, ESTIMATORS)} "
                                 f"(families: {', '.join(ESTIMATORS)})")
        return space

    @model_validator(mode="after")
    def _check(self) -> "TrainingConfig":
        if self.holdout_days >= self.window_days:
            raise ValueError("holdout_days must be smaller than window_days")
        if not self.search_space:
            raise ValueError("search_space needs at least one estimator family")
        return self


class ValidationConfig(_Strict):
    """Table-level expectations plus explicit extra GX expectations."""

    min_rows_per_day: int = Field(default=1, ge=0)
    max_rows_per_day: int | None = None
    #: The newest row of the newest day must be at most this old at the interval end.
    freshness_hours: float = Field(default=48, gt=0)
    #: Share of a day's rows allowed to be whole-row duplicates (every copy of a row that appears
    #: more than once counts, as GX ``expect_compound_columns_to_be_unique`` counts); 0: none.
    max_duplicate_fraction: float = Field(default=0.0, ge=0, lt=1)
    #: Classification: a day missing a class fails when the chance of that, at the class's share
    #: in the window's other days, is below this (5 % positives, 400 rows: 0.95^400 ~ 1e-9).
    class_absence_p: float = Field(default=1e-6, gt=0, lt=1)
    #: Explicit expectations: {"type": "expect_...", "kwargs": {...}} (GX 1.x snake_case names).
    expectations: list[dict[str, Any]] = Field(default_factory=list)


class GateConfig(_Strict):
    """Gates a version must pass to enter an environment (all optional but the latency budget)."""

    #: Absolute floors (or ceilings for error metrics, see airloop.core.metrics.LOWER_IS_BETTER).
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: The candidate must beat the environment's current version by at least this much on the
    #: same holdout (the training metric). ``None``: no comparison with the incumbent.
    min_improvement: float | None = 0.0
    #: p95 single-record prediction latency budget in milliseconds.
    latency_budget_ms: float = Field(default=100.0, gt=0)
    #: Minimum number of training rows behind the version ("minimum data").
    min_training_rows: int = Field(default=0, ge=0)


_GATE_FIELDS = ("thresholds", "min_improvement", "latency_budget_ms", "min_training_rows")


class EnvironmentConfig(GateConfig):
    """One deployment environment: a registry alias and the gates to enter it.

    Gate fields left out inherit the ``promotion`` block's values, except ``min_improvement``,
    which only the serving environment inherits (lower environments do not compare with their
    incumbent unless they say so).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    #: The MLflow alias of the environment (default: its name).
    alias: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    #: The environment the serving process follows; its version is also the ``champion``.
    serving: bool = False

    @property
    def registry_alias(self) -> str:
        """The alias this environment moves."""
        return self.alias or self.name


class GuardConfig(_Strict):
    """Post-deploy guard: roll a new champion back when it breaks these within its first
    monitored intervals. A limit set to ``None`` is not checked."""

    #: How many monitored intervals after a promotion the guard watches (0 disables it).
    intervals: int = Field(default=3, ge=0)
    max_error_rate: float | None = Field(default=0.05, ge=0)
    max_latency_p95_ms: float | None = Field(default=None, gt=0)
    #: Relative drop of the training metric on labelled traffic vs the version's holdout.
    max_performance_drop: float | None = Field(default=0.10, gt=0)


class PromotionConfig(GateConfig):
    """The promotion path: environments in order (``dev -> staging -> prod``), their gates, the
    environment training runs promote into automatically, and the post-deploy guard.

    The gate fields at this level are the defaults of every environment. Without
    ``environments`` the path is a single serving environment ``prod`` with these gates.
    """

    environments: list[EnvironmentConfig] = Field(default_factory=list)
    #: Training runs walk the path up to this environment (default: the serving one).
    auto_promote_to: str | None = None
    post_deploy_guard: GuardConfig = GuardConfig()
    #: Environments a person must approve before their alias moves (an Airflow approval task,
    #: "Required Actions"); rejected or unanswered within ``approval_timeout_hours``: refused.
    require_approval: list[str] = Field(default_factory=list)
    approval_timeout_hours: float = Field(default=72.0, gt=0, le=24 * 90)

    @model_validator(mode="after")
    def _check_environments(self) -> "PromotionConfig":
        names = [e.name for e in self.environments]
        if len(set(names)) != len(names):
            raise ValueError(f"environment names must be unique: {names}")
        aliases = [e.registry_alias for e in self.environments]
        if len(set(aliases)) != len(aliases) or RESERVED_ALIASES & set(aliases):
            raise ValueError(f"environment aliases must be unique and not {sorted(RESERVED_ALIASES)}: {aliases}")
        if sum(e.serving for e in self.environments) > 1:
            raise ValueError("at most one environment may have 'serving: true' (default: the last)")
        if self.auto_promote_to is not None and self.auto_promote_to not in [e.name for e in self.path()]:
            raise ValueError(f"auto_promote_to {self.auto_promote_to!r} is not an environment: {names or ['prod']}")
        path = [e.name for e in self.path()]
        for name in self.require_approval:
            if name not in path:
                raise ValueError(f"require_approval: {name!r} is not an environment of the promotion path "
                                 f"{path}{did_you_mean(name, path)}")
        if len(set(self.require_approval)) != len(self.require_approval):
            raise ValueError(f"require_approval lists an environment twice: {self.require_approval}")
        return self

    def needs_approval(self, environment: str) -> bool:
        """Whether moving ``environment``'s alias waits for a person's approval."""
        return environment in self.require_approval

    def path(self) -> list[EnvironmentConfig]:
        """The environments in promotion order, gates resolved (inherited where not set)."""
        if not self.environments:
            return [EnvironmentConfig(name="prod", serving=True, **{f: getattr(self, f) for f in _GATE_FIELDS})]
        serving = next((e.name for e in self.environments if e.serving), self.environments[-1].name)
        resolved = []
        for env in self.environments:
            values = env.model_dump()
            for f in _GATE_FIELDS:
                if f not in env.model_fields_set and (f != "min_improvement" or env.name == serving):
                    values[f] = getattr(self, f)
                elif f == "min_improvement" and f not in env.model_fields_set:
                    values[f] = None
            values["serving"] = env.name == serving
            resolved.append(EnvironmentConfig(**values))
        return resolved

    def environment(self, name: str) -> EnvironmentConfig:
        """The resolved environment ``name``; ``ValueError`` naming the valid ones."""
        for env in self.path():
            if env.name == name:
                return env
        raise ValueError(f"unknown environment {name!r}; this pipeline has {[e.name for e in self.path()]}")

    @property
    def serving_environment(self) -> EnvironmentConfig:
        """The environment whose version serving answers with (the champion)."""
        return next(e for e in self.path() if e.serving)

    @property
    def auto_target(self) -> str:
        """Where training runs promote to."""
        return self.auto_promote_to or self.serving_environment.name


DriftMethod = Literal["ks", "psi", "wasserstein", "jensenshannon", "chisquare", "z", "kl_div", "hellinger"]


class AutoThreshold(str):
    """The ``auto`` of ``threshold: auto``: a ``str`` that prints as ``auto`` under any format
    spec, so messages formatting thresholds as numbers (``f"{t:.4g}"``) keep working."""

    def __format__(self, spec: str) -> str:
        return "auto"


class ColumnDrift(_Strict):
    """Drift method and threshold of one column (Evidently stattest names).

    ``threshold: auto`` learns the threshold from the training window's own day-to-day variation
    when a version is trained (``DriftConfig.calibration``; :mod:`airloop.monitoring.calibration`)."""

    method: DriftMethod
    threshold: float | Literal["auto"]

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            return AutoThreshold(value)
        if not value > 0:
            raise ValueError(f"threshold must be greater than 0, or 'auto' (got {value})")
        return value

    @property
    def auto(self) -> bool:
        """Whether the threshold is learned (``auto``) rather than given."""
        return isinstance(self.threshold, str)


class DriftCalibration(_Strict):
    """How ``threshold: auto`` is learned (:mod:`airloop.monitoring.calibration`): one drift
    statistic per training day (that day against the rest of the reference), the threshold at the
    ``1 - false_alarm_rate`` normal prediction bound of those statistics (log distances, normal
    scores of p-values), never below a tenth of Evidently's default distance threshold (never
    above its default p-value)."""

    #: Expected share of stable feature-days flagged as drifted.
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=0.5)
    #: Features with a weekly pattern: judged against the nearest weekday of the reference.
    seasonal: list[str] = Field(default_factory=list)
    #: Fewer usable training days than this: Evidently's default threshold (recorded as a fallback).
    min_days: int = Field(default=7, ge=3)
    #: Rows per training day used at most (a seeded sample above it).
    max_day_rows: int = Field(default=50_000, ge=100)


class DriftConfig(_Strict):
    """How input and prediction drift are judged per column (Evidently's DataDriftPreset methods).

    For p-value tests (ks, chisquare, z) a column drifts when p < threshold; for distances (psi,
    wasserstein, jensenshannon, kl_div, hellinger) when the distance >= threshold. A threshold
    may be ``auto`` (see :class:`DriftCalibration`).
    """

    numeric: ColumnDrift = ColumnDrift(method="wasserstein", threshold=0.1)
    categorical: ColumnDrift = ColumnDrift(method="jensenshannon", threshold=0.1)
    prediction: ColumnDrift = ColumnDrift(method="psi", threshold=0.2)
    columns: dict[str, ColumnDrift] = Field(default_factory=dict)
    #: The interval drifts (dataset drift) when at least this share of features drifts.
    drift_share: float = Field(default=0.3, gt=0, le=1)
    #: Fewer rows than this in an interval: drift is not judged (recorded as such).
    min_rows: int = Field(default=100, ge=1)
    #: How ``threshold: auto`` columns are calibrated.
    calibration: DriftCalibration = DriftCalibration()


Severity = Literal["critical", "high", "medium", "low"]


class AlertRule(_Strict):
    """A monitoring rule: ``metric op value`` raises an alert of ``severity``.

    Metrics: drift_share, prediction_drift, performance_drop (relative drop of the study metric
    on labelled rows vs the version's holdout), volume_ratio, error_rate, latency_p95_ms,
    out_of_domain_share (share of served rows with an input outside its declared range, declared
    values or learned vocabulary), unseen_category_share (share of served rows with a category
    outside its declared values or learned vocabulary), traffic_quality_failed (expectations of
    the pipeline's suite the interval's served features failed), estimated_performance_drop
    (relative drop of the label-free estimate's band, its optimistic end, vs the holdout: > 0 only
    when the whole band is worse).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    metric: Literal["drift_share", "prediction_drift", "performance_drop", "volume_ratio", "error_rate",
                    "latency_p95_ms", "out_of_domain_share", "unseen_category_share", "traffic_quality_failed",
                    "estimated_performance_drop"]
    op: Literal[">", ">=", "<", "<="]
    value: float
    severity: Severity
    #: Retrain when it fires; unset: only (estimated_)performance_drop rules do (monitoring.rules.retrains).
    retrain: bool | None = None


class MonitoringConfig(_Strict):
    """The monitoring DAG: schedule, drift judgement, alert rules and the retrain cool-down."""

    schedule: str = "@daily"
    drift: DriftConfig = DriftConfig()
    #: Trailing days of traffic that form the volume baseline.
    volume_baseline_days: int = Field(default=7, ge=1)
    #: Minimum labelled rows before performance is judged.
    min_labelled_rows: int = Field(default=50, ge=1)
    #: Performance is measured on the labels that arrived in this many trailing days (1 = the
    #: interval only); a longer window steadies metrics when positives are rare.
    performance_window_days: int = Field(default=7, ge=1)
    alerts: list[AlertRule] = Field(default_factory=list)
    #: No new retrain request within this many days of the previous one.
    retrain_cooldown_days: int = Field(default=7, ge=0)
    #: A retrain requested by a (realized or estimated) performance drop trains on this many recent
    #: days (None: ``training.window_days``): a changed concept is learnt from the days after it,
    #: not outvoted by weeks of the old one. Must exceed ``training.holdout_days``.
    retrain_window_days: int | None = Field(default=None, gt=1)
    #: Labels arrive at most this many days after the event (batch label ingest looks back so far).
    label_lookback_days: int = Field(default=45, ge=0)
    reference: ReferenceConfig = ReferenceConfig()
    #: An interval's estimate is checked against its realized figure once this share of its rows has labels.
    estimate_label_coverage: float = Field(default=0.9, gt=0, le=1)
    #: Airflow connection id of the alert webhook (HTTP), and e-mail recipients (SMTP provider).
    webhook_conn_id: str | None = None
    email_to: list[str] = Field(default_factory=list)


class ServingConfig(_Strict):
    """How serving treats a request record.

    ``out_of_domain``: what happens to a record with an input outside the model's domain (a
    number outside its feature's ``min``/``max``, a category outside its ``values`` or the
    vocabulary its model version learned): ``flag`` (default) answers it and logs the features in
    the prediction's ``out_of_domain`` column; ``reject`` refuses the request with a 422 naming
    the record, the feature, the value and what is allowed."""

    out_of_domain: Literal["flag", "reject"] = "flag"


class ScheduleConfig(_Strict):
    """When the pipeline's DAGs run."""

    training: str = "@weekly"
    start_date: date
    #: Last day to schedule (e.g. a historical dataset); manual runs and backfills still work.
    end_date: date | None = None

    @property
    def start(self) -> datetime:
        """``start_date`` as midnight UTC: the DAGs' ``start_date``."""
        return day_start(self.start_date)

    @property
    def end(self) -> datetime | None:
        """``end_date`` as midnight UTC (None: no end): the scheduled DAGs' ``end_date``."""
        return day_start(self.end_date) if self.end_date else None


class PipelineConfig(_Strict):
    """One pipeline: a dataset, how to validate it, train on it and promote its models."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")
    #: Who owns the pipeline. Non-default tenants get their own DAG ids
    #: (``<tenant>__<pipeline>__train``), registered-model names and MLflow experiments, and
    #: their rows in the monitoring store carry the tenant.
    tenant: str = Field(default="default", pattern=r"^[a-z][a-z0-9_]{1,39}$")
    description: str = ""
    task: TaskType
    source: SourceConfig
    timestamp: str
    id_column: str
    target: str
    #: Column holding when the label became known; a run only trains on labels known by then.
    label_timestamp: str | None = None
    #: Classes of the target for classification (the positive class last for binary tasks).
    classes: list[Any] | None = None
    features: dict[str, ColumnSpec]
    training: TrainingConfig
    validation: ValidationConfig = ValidationConfig()
    promotion: PromotionConfig = PromotionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    schedule: ScheduleConfig

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        reserved = {self.timestamp, self.id_column, self.target, self.label_timestamp}
        clash = reserved & set(self.features)
        if clash:
            raise ValueError(f"features must not include timestamp/id/target columns: {sorted(clash)}")
        if self.task != "regression" and not self.classes:
            raise ValueError("classification pipelines need 'classes'")
        if self.task == "binary_classification" and self.classes and len(self.classes) != 2:
            raise ValueError("binary_classification needs exactly two classes")
        if self.task == "regression" and self.classes:
            raise ValueError("'classes' is only for classification tasks (this pipeline has task 'regression')")
        if self.classes and len({repr(c) for c in self.classes}) != len(self.classes):
            raise ValueError(f"classes must be distinct: {self.classes}")
        window = self.monitoring.retrain_window_days
        if window is not None and window <= self.training.holdout_days:
            raise ValueError(f"monitoring.retrain_window_days ({window}) must exceed training.holdout_days "
                             f"({self.training.holdout_days})")
        return self

    @field_validator("training")
    @classmethod
    def _check_task_fit(cls, training: TrainingConfig, info: ValidationInfo) -> TrainingConfig:
        """The study metric and the estimator families fit the task (and a binary task's classes)."""
        task, classes = info.data.get("task"), info.data.get("classes")
        if task is None:
            return training  # the task itself is invalid: reported on its own
        kind, problems = task_kind(task), []
        metric, fitting = training.metric, metrics_for_task(task, classes)
        if metric not in fitting:
            if metric in REGRESSION_METRICS:
                why = "is a regression metric"
            elif metric in POSITIVE_LABEL_METRICS and task == "binary_classification":
                why = (f"scores the label 1 (scikit-learn's pos_label), but the classes are {classes}: "
                       "use classes [0, 1] or a metric such as 'roc_auc' or 'f1_macro'")
            elif metric in BINARY_METRICS | POSITIVE_LABEL_METRICS:
                why = "is a binary classification metric"
                why += " (multi-class: 'roc_auc_ovr')" if metric == "roc_auc" and kind == "classification" else ""
            else:
                why = "is a classification metric"
            default = "" if "metric" in training.model_fields_set else " (the default)"
            problems.append(f"metric {metric!r}{default} {why}; a {task} pipeline needs one of "
                            f"{', '.join(sorted(fitting))}")
        unfit = [f for f in training.search_space if kind not in ESTIMATORS[f]]
        if unfit:
            options = [f for f, kinds in ESTIMATORS.items() if kind in kinds]
            problems.append(f"search_space: {', '.join(map(repr, unfit))} cannot do {kind} (task {task}); "
                            f"{kind} families: {', '.join(options)}")
        if training.calibration != "none" and kind != "classification":
            problems.append(f"calibration {training.calibration!r} is for classification tasks (task {task})")
        try:
            training = training.model_copy(update={"decision": training.decision.for_task(task, classes)})
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        return training

    @field_validator("promotion")
    @classmethod
    def _check_gate_metrics(cls, promotion: PromotionConfig, info: ValidationInfo) -> PromotionConfig:
        """Every gate names a holdout metric of the task (a typo fails here, with did-you-mean)."""
        task, training = info.data.get("task"), info.data.get("training")
        if task is None or training is None:
            return promotion
        gates = [("promotion", promotion), *((f"environments.{e.name}", e) for e in promotion.environments)]
        check_gate_metrics(task, training.metric, training.decision.objective,
                           {where: list(g.thresholds) for where, g in gates}, did_you_mean)
        return promotion

    @property
    def task_kind(self) -> str:
        """``classification`` or ``regression``."""
        return task_kind(self.task)

    @property
    def qualified_name(self) -> str:
        """``<tenant>__<pipeline>`` (just the pipeline for the default tenant): the prefix of the
        pipeline's DAG ids and its registered-model name."""
        return self.name if self.tenant == "default" else f"{self.tenant}__{self.name}"

    def dag_id(self, kind: str) -> str:
        """The id of the pipeline's ``kind`` DAG (``train``, ``monitor``, ``promote``, ...)."""
        return f"{self.qualified_name}__{kind}"

    @property
    def model_name(self) -> str:
        """Registered model name in MLflow (tenant-qualified)."""
        return self.qualified_name

    @property
    def experiment_name(self) -> str:
        """MLflow experiment that holds this pipeline's runs (one folder per tenant)."""
        return f"airloop/{self.name}" if self.tenant == "default" else f"airloop/{self.tenant}/{self.name}"

    @property
    def numeric_features(self) -> list[str]:
        """Feature columns treated as numbers (float, int, bool)."""
        return [c for c, s in self.features.items() if s.type != "category"]

    @property
    def categorical_features(self) -> list[str]:
        """Feature columns treated as categories."""
        return [c for c, s in self.features.items() if s.type == "category"]


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline configuration"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {where}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_pipeline_config(raw: dict[str, Any], path: Path | str = "<memory>") -> PipelineConfig:
    """Validate a pipeline mapping; raise :class:`ConfigError` naming ``path`` and each field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file must hold a mapping, not {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(Path(path), err)) from None


def load_pipeline_config(name_or_path: str | Path, settings: Settings | None = None) -> PipelineConfig:
    """Load a pipeline by name (``include/pipelines/<name>.yaml``) or by file path."""
    settings = settings or get_settings()
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in {".yaml", ".yml"} else settings.pipelines_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        # libyaml when available: ~10x faster, and every DAG file parses every pipeline file
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_pipeline_config(raw, path)


def pipeline_files(settings: Settings | None = None) -> list[Path]:
    """Every pipeline file (``*.yaml`` in the pipelines folder), sorted."""
    settings = settings or get_settings()
    return sorted(settings.pipelines_dir.glob("*.yaml"))


def load_all_pipelines(settings: Settings | None = None) -> tuple[list[PipelineConfig], dict[str, str]]:
    """Load every pipeline file: ``(valid configs, {file: error})``. One bad file never hides
    the others (the DAG factories build the valid ones; ``dags/airloop_pipeline_check.py``
    turns the errors into an Airflow import error naming the file and field)."""
    settings = settings or get_settings()
    configs, errors = [], {}
    for path in pipeline_files(settings):
        try:
            config = load_pipeline_config(path, settings)
        except ConfigError as err:
            errors[str(path)] = str(err)
            continue
        if config.name != path.stem:
            errors[str(path)] = f"{path}: name {config.name!r} must equal the file name {path.stem!r}"
            continue
        configs.append(config)
    return configs, errors


def resolve_source_path(config: PipelineConfig, settings: Settings | None = None) -> Path:
    """Absolute ``path`` of a file source (relative paths are under the data folder); a folder,
    a file or a glob as configured. :class:`ConfigError` for a SQL source."""
    settings = settings or get_settings()
    if config.source.kind != "files" or config.source.path is None:
        raise ConfigError(f"{config.name}: source.path: a {config.source.kind} source has no file path")
    path = Path(os.path.expandvars(config.source.path))
    return path if path.is_absolute() else settings.data_dir / path
