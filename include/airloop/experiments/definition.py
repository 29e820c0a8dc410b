"""A/B tests and shadow mode: routing, the test definitions in the monitoring store, the statistics.

A test compares the **champion** version of a pipeline with a **challenger** version on live
traffic of one tenant:

* ``mode="ab"``: serving routes each record to one variant by a stable hash of its *request key*
  (:func:`assign_variant`): ``traffic_pct`` percent of the keys go to the challenger, the same key
  always to the same variant (sticky, in every process). Both variants' rows are logged to
  ``predictions`` with ``variant`` = ``champion`` / ``challenger`` and the version that answered.
* ``mode="shadow"``: the champion answers every request; the challenger scores the same records
  after the response is sent, and its rows go to ``shadow_predictions`` (variant ``shadow``, same
  request ids). Nothing the challenger does reaches the client.

The request key (``key_field``) is ``"request_id"`` (the client's request id; a server-drawn id
when the client sends none, which makes the split per request, not per client), ``"header"`` (the
``X-Request-Key`` HTTP header, one key for all records of the request; the request id when it is
absent) or the name of a feature of the record (its value; the request id when null).

**Statistics.** :func:`evaluate_test` reads, for each variant, the rows served in the test window
``[started_at, min(interval end, started_at + max_duration))`` by the test's version of that
variant, with the labels known before the interval end (``ground_truth``, joined by request id):
per variant the served rows, labelled rows, error rate, latency p50/p95, the quality panel of
:func:`airloop.monitoring.performance`, and the *success metric*. The difference
(challenger - champion) of the success metric gets a two-sided test at ``alpha`` and a
``1 - alpha`` confidence interval:

* ``accuracy`` and ``conversion`` (share of labels equal to the positive class: a business outcome,
  A/B mode only), per-row successes: the pooled two-proportion z-test, with Newcombe's hybrid
  Wilson-score interval (good coverage at any rate, unlike the Wald interval). The two can disagree
  at the very boundary; the decision follows the p-value.
* ``log_loss``, ``brier``, ``mae``: per-row losses, Welch's t-test and interval (unequal variances).
  ``rmse`` is tested the same way on the squared errors: the p-value, difference and interval are
  those of the MSE (``estimand`` says so); the sign, hence the decision, is the same as the RMSE's.
* ``roc_auc`` (not a per-row mean): DeLong's test for two independent AUCs (the sum of their DeLong
  variances; Sun & Xu's fast midrank algorithm). Chosen over a bootstrap because it is exact in its
  asymptotics, deterministic and O(n log n): the false-positive check over hundreds of seeded
  repeats runs in a second.
* Shadow mode pairs the two answers to the same request: the paired t-test on per-row differences
  (McNemar's test in its asymptotic form for accuracy) and DeLong's paired test (with the covariance
  of the two AUCs) — more power from the same traffic.

Distributions come from :mod:`scipy.stats`.

**Two-sided, fixed horizon.** The test is two-sided (a significantly *worse* challenger is a
finding too), so the probability of declaring any winner between equal models is ``alpha`` (half
of it for a false promotion). The decision is taken once, at a fixed horizon: the first evaluation
at which *both* variants have ``min_samples`` labelled rows (paired rows in shadow mode); earlier
evaluations report their figures but always say ``continue``, and the test never waits for
significance after the horizon — so daily evaluations do not inflate the false-positive rate (no
peeking). Outcomes at the horizon: challenger significantly better → ``promote_challenger``
(unless its error rate is significantly higher than the champion's: a guardrail, same test,
``alpha``); significantly worse or no significant difference → ``keep_champion``. Reaching
``max_duration_days`` before the horizon ends the test with ``keep_champion`` (too few labels to
tell). Size ``min_samples`` for the smallest difference worth detecting (power), not for speed.

The store functions (:func:`create_test`, :func:`get_test`, :func:`list_tests`, :func:`finish_test`)
use the ``ab_tests`` / ``ab_test_results`` tables of migration 5; the DAG-facing functions
(:func:`start_test`, :func:`evaluate_test`, :func:`conclude_test`, :func:`stop_test`) take
``(config, settings, ...)`` and return small JSON-ready dicts. Times are business times (the data
interval), never the wall clock.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import sqlalchemy as sa

from airloop.core import store
from airloop.core.store import ab_test_results as r
from airloop.core.store import ab_tests
from airloop.core.timeutil import to_utc
from airloop.experiments.routing import KEY_HEADER, KEY_REQUEST_ID

Mode = Literal["ab", "shadow"]


Status = Literal["running", "concluded", "stopped"]


CONTINUE = "continue"


PROMOTE = "promote_challenger"


KEEP = "keep_champion"


STOPPED = "stopped"


#: Every success metric an A/B test can use (orientation: :func:`airloop.core.metrics.higher_is_better`).
SUCCESS_METRICS = frozenset({"accuracy", "conversion", "roc_auc", "log_loss", "brier", "mae", "rmse"})
METRICS_BY_TASK: dict[str, frozenset[str]] = {
    "binary_classification": frozenset({"accuracy", "roc_auc", "log_loss", "brier", "conversion"}),
    "multiclass_classification": frozenset({"accuracy"}),
    "regression": frozenset({"rmse", "mae"}),
}


#: Default success metric for a study metric (``training.metric``); others fall back by task.
_FROM_STUDY_METRIC = {
    "roc_auc": "roc_auc", "accuracy": "accuracy", "neg_log_loss": "log_loss", "neg_brier_score": "brier",
    "neg_root_mean_squared_error": "rmse", "neg_mean_squared_error": "rmse", "neg_mean_absolute_error": "mae",
}


_TASK_DEFAULT = {"binary_classification": "roc_auc", "multiclass_classification": "accuracy", "regression": "rmse"}


class ABTestError(ValueError):
    """A test cannot be created, found or changed as asked (the message says why)."""


# ============================================================================ the definition
class ABTest(BaseModel):
    """One A/B or shadow test (a row of ``ab_tests``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test_id: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,100}$")
    pipeline: str
    tenant: str = "default"
    champion_version: str = Field(pattern=r"^[0-9]+$")
    challenger_version: str = Field(pattern=r"^[0-9]+$")
    mode: Mode = "ab"
    #: Percent of request keys routed to the challenger (A/B mode; shadow scores every request).
    traffic_pct: float = Field(default=50.0, gt=0.0, lt=100.0)
    key_field: str = KEY_REQUEST_ID
    success_metric: str
    #: Significance level of the two-sided test (and 1 - alpha the confidence of the interval).
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    #: Labelled rows per variant at which the test is decided (the fixed horizon).
    min_samples: int = Field(default=1000, ge=30)
    max_duration_days: float = Field(default=14.0, gt=0.0)
    started_at: datetime
    status: Status = "running"
    decision: str | None = None
    decided_at: datetime | None = None
    result: dict[str, Any] | None = None

    @field_validator("started_at", "decided_at")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else to_utc(value)

    @model_validator(mode="after")
    def _consistent(self) -> "ABTest":
        if self.champion_version == self.challenger_version:
            raise ValueError(f"champion and challenger are the same version ({self.champion_version})")
        if self.success_metric not in SUCCESS_METRICS:
            raise ValueError(f"success_metric must be one of {sorted(SUCCESS_METRICS)}, not {self.success_metric!r}")
        if self.mode == "shadow" and self.success_metric == "conversion":
            raise ValueError("'conversion' needs A/B mode: in shadow mode the challenger's answers are never acted on")
        return self

    @property
    def ends_at(self) -> datetime:
        """The end of the test window (``started_at + max_duration_days``)."""
        return self.started_at + timedelta(days=self.max_duration_days)

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition and status (without the stored result)."""
        return {**self.model_dump(mode="json", exclude={"result"}), "ends_at": self.ends_at.isoformat()}


def default_metric(config: PipelineConfig) -> str:
    """The success metric matching the pipeline's study metric (else the task's default)."""
    metric = _FROM_STUDY_METRIC.get(config.training.metric)
    return metric if metric in METRICS_BY_TASK[config.task] else _TASK_DEFAULT[config.task]


def check_test(config: PipelineConfig, test: ABTest) -> None:
    """Raise :class:`ABTestError` unless ``test`` fits the pipeline (metric, key field)."""
    if test.pipeline != config.name:
        raise ABTestError(f"test {test.test_id} is for pipeline {test.pipeline!r}, not {config.name!r}")
    allowed = METRICS_BY_TASK[config.task]
    if test.success_metric not in allowed:
        raise ABTestError(f"success metric {test.success_metric!r} does not fit a {config.task} pipeline "
                          f"(allowed: {sorted(allowed)})")
    if test.key_field not in (KEY_REQUEST_ID, KEY_HEADER) and test.key_field not in config.features:
        raise ABTestError(f"key_field must be 'request_id', 'header' or a feature of {config.name}, "
                          f"not {test.key_field!r}")


# ============================================================================ store
def _to_row(test: ABTest) -> dict[str, Any]:
    row = test.model_dump(exclude={"result"})
    row["result"] = json.dumps(test.result, sort_keys=True, default=str) if test.result is not None else None
    return row


def _from_row(row: Any) -> ABTest:
    data = {k: v for k, v in dict(row).items() if k != "created_at"}
    data["result"] = json.loads(data["result"]) if data.get("result") else None
    return ABTest(**data)


def get_test(engine: sa.Engine, test_id: str) -> ABTest | None:
    """The test with this id, or None."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        row = conn.execute(sa.select(ab_tests).where(ab_tests.c.test_id == test_id)).mappings().first()
    return _from_row(row) if row else None


def list_tests(engine: sa.Engine, pipeline: str | None = None, status: Status | None = None) -> list[ABTest]:
    """Tests (of ``pipeline``, with ``status``), oldest first."""
    import sqlalchemy as sa

    query = sa.select(ab_tests)
    if pipeline is not None:
        query = query.where(ab_tests.c.pipeline == pipeline)
    if status is not None:
        query = query.where(ab_tests.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(ab_tests.c.started_at, ab_tests.c.test_id)).mappings().all()
    return [_from_row(r) for r in rows]


_DEFINITION = ("pipeline", "tenant", "champion_version", "challenger_version", "mode", "traffic_pct", "key_field",
               "success_metric", "alpha", "min_samples", "max_duration_days", "started_at")


def create_test(engine: sa.Engine, test: ABTest) -> ABTest:
    """Store a new running test; idempotent by ``test_id``.

    Creating the same definition again returns the stored test (whatever its status now); a
    different definition under an existing id, or a second running test for the same pipeline and
    tenant (a unique partial index, so concurrent creators cannot both win), raises
    :class:`ABTestError`.
    """
    import sqlalchemy as sa

    if test.status != "running":
        raise ABTestError("a new test must be running")
    try:
        with engine.begin() as conn:
            conn.execute(ab_tests.insert().values(**_to_row(test), created_at=datetime.now(timezone.utc)))
        return test
    except sa.exc.IntegrityError:
        existing = get_test(engine, test.test_id)
    if existing is None:
        running = [t.test_id for t in list_tests(engine, test.pipeline, "running") if t.tenant == test.tenant]
        raise ABTestError(f"pipeline {test.pipeline} (tenant {test.tenant}) already runs test {running}; "
                          "stop or conclude it first")
    differs = [k for k in _DEFINITION if getattr(existing, k) != getattr(test, k)]
    if differs:
        raise ABTestError(f"test {test.test_id} exists with a different definition ({', '.join(differs)})")
    return existing


def finish_test(engine: sa.Engine, test_id: str, status: Literal["concluded", "stopped"], decision: str,
                decided_at: datetime, result: dict[str, Any] | None) -> tuple[ABTest, bool]:
    """End a running test; return ``(test as stored, changed)``.

    Only a running test changes (one guarded UPDATE): ending it again returns the recorded outcome
    untouched, so retries and re-runs never rewrite a decision.
    """
    import sqlalchemy as sa

    values = {"status": status, "decision": decision, "decided_at": to_utc(decided_at),
              "result": json.dumps(result, sort_keys=True, default=str) if result is not None else None}
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(ab_tests).where(ab_tests.c.test_id == test_id, ab_tests.c.status == "running").values(**values)
        ).rowcount
    test = get_test(engine, test_id)
    if test is None:
        raise ABTestError(f"no A/B test {test_id!r}")
    return test, bool(changed)


def save_evaluation(engine: sa.Engine, evaluation: dict[str, Any]) -> None:
    """Upsert one evaluation into ``ab_test_results`` (keyed by test id and interval end)."""

    store.upsert(engine, store.ab_test_results, [{
        "test_id": evaluation["test_id"],
        "interval_start": to_utc(evaluation["interval_start"]),
        "interval_end": to_utc(evaluation["interval_end"]),
        "decision": evaluation["decision"],
        "champion_rows": evaluation["champion"]["labelled_rows"],
        "challenger_rows": evaluation["challenger"]["labelled_rows"],
        "difference": evaluation["comparison"]["difference"],
        "ci_low": evaluation["comparison"]["ci_low"],
        "ci_high": evaluation["comparison"]["ci_high"],
        "p_value": evaluation["comparison"]["p_value"],
        "result": json.dumps(evaluation, sort_keys=True, default=str),
    }])


def load_evaluation(engine: sa.Engine, test_id: str, interval_end: datetime) -> dict[str, Any] | None:
    """The stored evaluation of ``test_id`` for the interval ending at ``interval_end``, or None."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        text = conn.execute(sa.select(r.c.result).where(r.c.test_id == test_id,
                                                        r.c.interval_end == to_utc(interval_end))).scalar()
    return json.loads(text) if text else None


# ============================================================================ DAG-facing functions
def _engine(settings: Settings) -> sa.Engine:

    return store.get_engine(settings.monitoring_db_uri)


def running_tests(engine: sa.Engine, pipeline: str) -> list[ABTest]:
    """The running tests of ``pipeline`` (at most one per tenant); what serving routes by."""
    return list_tests(engine, pipeline, "running")
