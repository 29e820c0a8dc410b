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

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airloop.config import PipelineConfig, Settings

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Variant of the challenger's rows in shadow mode (table ``shadow_predictions``).
SHADOW = "shadow"
#: Variant of champion answers given to records routed to a challenger that failed on them.
FALLBACK = "fallback"
#: ``key_field`` values besides feature names.
KEY_REQUEST_ID = "request_id"
KEY_HEADER = "header"
#: The HTTP header carrying the request key when ``key_field == "header"``.
KEY_HEADER_NAME = "X-Request-Key"

Mode = Literal["ab", "shadow"]
Status = Literal["running", "concluded", "stopped"]
CONTINUE = "continue"
PROMOTE = "promote_challenger"
KEEP = "keep_champion"
STOPPED = "stopped"

#: Success metrics by task, and whether higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "conversion": True, "roc_auc": True,
    "log_loss": False, "brier": False, "mae": False, "rmse": False,
}
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


def _utc(value: datetime | str) -> datetime:
    """A datetime or ISO string as tz-aware UTC (naive values are taken as UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# ============================================================================ routing
def assign_variant(key: str, test_id: str, traffic_pct: float) -> str:
    """``"challenger"`` for ``traffic_pct`` percent of the keys, else ``"champion"``.

    The key is hashed with the test id (BLAKE2b, 64 bits → a uniform number in ``[0, 1)``), so the
    assignment is sticky (same key, same test → same variant, in any process and whatever
    ``PYTHONHASHSEED``) and independent between tests.
    """
    digest = hashlib.blake2b(f"{test_id}\x00{key}".encode(), digest_size=8).digest()
    return CHALLENGER if int.from_bytes(digest, "big") / 2.0**64 < traffic_pct / 100.0 else CHAMPION


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def request_keys(key_field: str, records: Sequence[Any], request_ids: Sequence[str],
                 header_key: str | None = None) -> list[str]:
    """The routing key of each record (see the module docstring for ``key_field``)."""
    if key_field == KEY_REQUEST_ID or (key_field == KEY_HEADER and not header_key):
        return list(request_ids)
    if key_field == KEY_HEADER:
        return [header_key] * len(records)  # type: ignore[list-item]
    out = []
    for record, request_id in zip(records, request_ids):
        value = record.get(key_field) if isinstance(record, dict) else None
        out.append(request_id if value is None else _key_text(value))
    return out


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
        return None if value is None else _utc(value)

    @model_validator(mode="after")
    def _consistent(self) -> "ABTest":
        if self.champion_version == self.challenger_version:
            raise ValueError(f"champion and challenger are the same version ({self.champion_version})")
        if self.success_metric not in HIGHER_IS_BETTER:
            raise ValueError(f"success_metric must be one of {sorted(HIGHER_IS_BETTER)}, not {self.success_metric!r}")
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

    from airloop.store import ab_tests

    with engine.connect() as conn:
        row = conn.execute(sa.select(ab_tests).where(ab_tests.c.test_id == test_id)).mappings().first()
    return _from_row(row) if row else None


def list_tests(engine: sa.Engine, pipeline: str | None = None, status: Status | None = None) -> list[ABTest]:
    """Tests (of ``pipeline``, with ``status``), oldest first."""
    import sqlalchemy as sa

    from airloop.store import ab_tests

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

    from airloop.store import ab_tests

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

    from airloop.store import ab_tests

    values = {"status": status, "decision": decision, "decided_at": _utc(decided_at),
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
    from airloop import store

    store.upsert(engine, store.ab_test_results, [{
        "test_id": evaluation["test_id"],
        "interval_start": _utc(evaluation["interval_start"]),
        "interval_end": _utc(evaluation["interval_end"]),
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

    from airloop.store import ab_test_results as r

    with engine.connect() as conn:
        text = conn.execute(sa.select(r.c.result).where(r.c.test_id == test_id,
                                                        r.c.interval_end == _utc(interval_end))).scalar()
    return json.loads(text) if text else None


# ============================================================================ statistics
@dataclass(frozen=True)
class Comparison:
    """The challenger-minus-champion difference of the success metric and its test."""

    method: str
    estimand: str
    champion_value: float | None
    challenger_value: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _z(alpha: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def _normal_test(difference: float, se: float, alpha: float) -> tuple[float, float, float]:
    """``(p, low, high)`` of a two-sided z-test of ``difference`` with standard error ``se``."""
    from scipy import stats

    if not se > 0:
        return (1.0 if difference == 0 else 0.0), difference, difference
    half = _z(alpha) * se
    return float(2.0 * stats.norm.sf(abs(difference) / se)), difference - half, difference + half


def two_proportions(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float) -> tuple[float, float, float, float]:
    """``(p_b - p_a, p-value, ci_low, ci_high)``: pooled two-proportion z-test, Newcombe's hybrid
    score interval (method 10 of Newcombe 1998) from the Wilson intervals of both rates."""
    from scipy import stats

    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    p_value = _normal_test(diff, se, alpha)[0]
    ci_a = stats.binomtest(x_a, n_a).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    ci_b = stats.binomtest(x_b, n_b).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    low = diff - math.sqrt((p_b - ci_b.low) ** 2 + (ci_a.high - p_a) ** 2)
    high = diff + math.sqrt((ci_b.high - p_b) ** 2 + (p_a - ci_a.low) ** 2)
    return diff, p_value, low, high


def _mean_difference(a: np.ndarray, b: np.ndarray, alpha: float, paired: bool) -> tuple[float, float, float, float]:
    """``(mean(b) - mean(a), p, low, high)``: Welch's t-test, or the paired t-test."""
    from scipy import stats

    diff = float(b.mean() - a.mean())
    res = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    if not math.isfinite(res.pvalue):  # no variance at all: identical constant samples or pairs
        return diff, (1.0 if diff == 0 else 0.0), diff, diff
    ci = res.confidence_interval(confidence_level=1.0 - alpha)
    return diff, float(res.pvalue), float(ci.low), float(ci.high)


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong placements by midranks (Sun & Xu 2014): ``(auc[k], v10[k, m], v01[k, n])`` for the
    score rows ``scores[k]`` of the same labels ``y`` (1 = positive)."""
    import numpy as np
    from scipy import stats

    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    tz = stats.rankdata(scores, axis=1)
    tx = stats.rankdata(scores[:, pos], axis=1)
    ty = stats.rankdata(scores[:, neg], axis=1)
    auc = (tz[:, pos].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, pos] - tx) / n
    v01 = 1.0 - (tz[:, neg] - ty) / m
    return np.asarray(auc), v10, v01


def _auc_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(auc[k], covariance[k, k])`` of the AUCs of ``scores[k]`` on labels ``y`` (DeLong)."""
    import numpy as np

    auc, v10, v01 = _delong_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def delong(y_a: np.ndarray, s_a: np.ndarray, y_b: np.ndarray | None, s_b: np.ndarray,
           alpha: float) -> tuple[float, float, float, float, float, float]:
    """``(auc_a, auc_b, auc_b - auc_a, p, low, high)`` by DeLong's test.

    Independent samples (``y_b`` given): the variance of the difference is the sum of both DeLong
    variances. Paired (``y_b`` None: ``s_b`` scores the same rows as ``s_a``): the covariance of
    the two AUCs is subtracted.
    """
    import numpy as np

    if y_b is None:
        auc, cov = _auc_covariance(y_a, np.vstack([s_a, s_b]))
        auc_a, auc_b = float(auc[0]), float(auc[1])
        var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    else:
        auc_1, cov_a = _auc_covariance(y_a, s_a[None, :])
        auc_2, cov_b = _auc_covariance(y_b, s_b[None, :])
        auc_a, auc_b = float(auc_1[0]), float(auc_2[0])
        var = cov_a[0, 0] + cov_b[0, 0]
    diff = auc_b - auc_a
    p_value, low, high = _normal_test(diff, math.sqrt(max(float(var), 0.0)), alpha)
    return auc_a, auc_b, diff, p_value, low, high


@dataclass(frozen=True)
class Samples:
    """What one variant contributes to the test: per-row ``values`` of the metric (successes,
    losses), or ``y``/``score`` for AUC; ``request_id`` aligns the rows in shadow mode."""

    request_id: np.ndarray
    values: np.ndarray | None = None
    y: np.ndarray | None = None
    score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.request_id)


def compare(metric: str, champion: Samples, challenger: Samples, alpha: float, paired: bool = False) -> Comparison:
    """Test the challenger-minus-champion difference of ``metric`` (see the module docstring).

    ``paired`` (shadow mode): both samples hold the same requests in the same order.
    """
    import numpy as np

    if not len(champion) or not len(challenger):
        return Comparison("none", metric, None, None, None, None, None, None)
    if metric == "roc_auc":
        if paired:
            y_b, method = None, "delong_paired"
        else:
            y_b, method = challenger.y, "delong"
        ys = [champion.y] if paired else [champion.y, challenger.y]
        if any(len(np.unique(y)) < 2 for y in ys):  # AUC undefined without both classes
            return Comparison(method, "difference in roc_auc", None, None, None, None, None, None)
        a, b, diff, p, low, high = delong(champion.y, champion.score, y_b, challenger.score, alpha)
        return Comparison(method, "difference in roc_auc", a, b, diff, low, high, p)
    va, vb = champion.values, challenger.values
    value = (lambda v: math.sqrt(float(v.mean()))) if metric == "rmse" else (lambda v: float(v.mean()))
    estimand = "difference in mse (squared errors; rmse is reported per variant)" if metric == "rmse" \
        else f"difference in {metric}"
    if metric in ("accuracy", "conversion") and not paired:
        diff, p, low, high = two_proportions(int(va.sum()), len(va), int(vb.sum()), len(vb), alpha)
        method = "two_proportion_z_newcombe"
    else:
        diff, p, low, high = _mean_difference(va.astype(float), vb.astype(float), alpha, paired)
        method = "paired_t" if paired else "welch_t"
    return Comparison(method, estimand, value(va), value(vb), diff, low, high, p)


def significant_winner(metric: str, comparison: Comparison, alpha: float) -> str | None:
    """``"challenger"``/``"champion"`` when the difference is significant at ``alpha``, else None."""
    if comparison.p_value is None or comparison.difference is None or not comparison.p_value < alpha:
        return None
    if comparison.difference == 0:
        return None
    challenger_better = (comparison.difference > 0) == HIGHER_IS_BETTER[metric]
    return CHALLENGER if challenger_better else CHAMPION


def decide(test: ABTest, comparison: Comparison, n_champion: int, n_challenger: int, interval_end: datetime,
           guardrail: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(decision, reason)`` by the fixed-horizon rules of the module docstring."""
    n = min(n_champion, n_challenger)
    if n < test.min_samples:
        if _utc(interval_end) >= test.ends_at:
            return KEEP, (f"max duration ({test.max_duration_days:g} days) reached with {n} labelled rows per "
                          f"variant, {test.min_samples} needed: inconclusive, the champion stays")
        return CONTINUE, f"{n} of {test.min_samples} labelled rows per variant"
    winner = significant_winner(test.success_metric, comparison, test.alpha)
    summary = (f"{test.success_metric}: champion {comparison.champion_value:.4f}, challenger "
               f"{comparison.challenger_value:.4f}; {comparison.estimand} {comparison.difference:+.4f} "
               f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}], p={comparison.p_value:.4g} "
               f"({comparison.method}, alpha {test.alpha})") if comparison.p_value is not None else \
        f"{test.success_metric}: not computable ({comparison.method})"
    if winner == CHALLENGER:
        if guardrail and guardrail.get("blocked"):
            return KEEP, f"challenger better but its error rate is significantly higher ({guardrail['reason']}); {summary}"
        return PROMOTE, f"challenger significantly better; {summary}"
    if winner == CHAMPION:
        return KEEP, f"challenger significantly worse; {summary}"
    return KEEP, f"no significant difference at the horizon; {summary}"


# ============================================================================ evaluation
def _class_key(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and (math.isnan(value))):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def samples(config: PipelineConfig, metric: str, labelled: pd.DataFrame) -> Samples:
    """Per-row ingredients of ``metric`` from labelled rows (``request_id``, ``label``,
    ``prediction`` decoded, ``score``); rows without a usable label/prediction/score are left out."""
    import numpy as np
    import pandas as pd

    ids = labelled["request_id"].to_numpy(dtype=object)
    score = pd.to_numeric(labelled["score"], errors="coerce").to_numpy(float)
    if config.task == "regression":
        y = pd.to_numeric(labelled["label"], errors="coerce").to_numpy(float)
        ok = np.isfinite(y) & np.isfinite(score)
        err = y[ok] - score[ok]
        return Samples(ids[ok], values=np.abs(err) if metric == "mae" else err**2)
    classes = {str(c) for c in config.classes or []}
    label = np.array([_class_key(v) for v in labelled["label"]], dtype=object)
    has_label = np.array([v in classes for v in label], dtype=bool)
    positive = str(config.classes[-1]) if config.classes else None
    if metric == "conversion":
        return Samples(ids[has_label], values=(label[has_label] == positive).astype(float))
    if metric == "accuracy":
        pred = np.array([_class_key(v) for v in labelled["prediction"]], dtype=object)
        ok = has_label & np.array([v in classes for v in pred], dtype=bool)
        return Samples(ids[ok], values=(pred[ok] == label[ok]).astype(float))
    ok = has_label & np.isfinite(score)
    y, s = (label[ok] == positive).astype(int), score[ok]
    if metric == "roc_auc":
        return Samples(ids[ok], y=y, score=s)
    if metric == "log_loss":
        p = np.clip(s, 1e-15, 1 - 1e-15)
        return Samples(ids[ok], values=-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return Samples(ids[ok], values=(s - y) ** 2)  # brier


def pair(a: Samples, b: Samples) -> tuple[Samples, Samples]:
    """The rows of ``a`` and ``b`` with the same request id, in the same order (shadow mode)."""
    import numpy as np

    common, ia, ib = np.intersect1d(a.request_id.astype(str), b.request_id.astype(str), return_indices=True)

    def take(s: Samples, idx: np.ndarray) -> Samples:
        return Samples(common, *(None if v is None else v[idx] for v in (s.values, s.y, s.score)))

    return take(a, ia), take(b, ib)


def variant_summary(config: PipelineConfig, version: str, rows: pd.DataFrame) -> dict[str, Any]:
    """Served rows, labelled rows, error rate, latency and quality panel of one variant."""
    from airloop.monitoring import operations, performance
    from airloop.stages import SCORE_COLUMN

    ops = operations(rows, [])
    labelled = rows[(rows["status"] == "ok") & rows["label"].notna()]
    quality = performance(config, labelled.rename(columns={"score": SCORE_COLUMN})) if len(labelled) else {}
    return {"version": version, "served_rows": ops["volume"], "errors": int((rows["status"] == "error").sum()),
            "error_rate": ops["error_rate"], "latency_p50_ms": ops["latency_p50_ms"],
            "latency_p95_ms": ops["latency_p95_ms"], "quality": quality}


def error_guardrail(champion: dict[str, Any], challenger: dict[str, Any], alpha: float) -> dict[str, Any]:
    """Is the challenger's error rate significantly higher than the champion's (two-proportion z)?"""
    n_a, n_b = champion["served_rows"], challenger["served_rows"]
    if not n_a or not n_b:
        return {"blocked": False, "reason": "no served rows"}
    diff, p, low, high = two_proportions(champion["errors"], n_a, challenger["errors"], n_b, alpha)
    blocked = diff > 0 and p < alpha
    return {"blocked": blocked, "difference": diff, "p_value": p, "ci_low": low, "ci_high": high,
            "reason": f"error rate challenger - champion {diff:+.4f}, p={p:.4g}"}


def window(test: ABTest, interval_end: datetime) -> tuple[datetime, datetime]:
    """The served-time window an evaluation at ``interval_end`` reads: from the start to the
    interval end, capped at the max duration and at the decision (an ended test stays ended)."""
    end = min(_utc(interval_end), test.ends_at)
    if test.decided_at is not None:
        end = min(end, test.decided_at)
    return test.started_at, max(end, test.started_at)


def load_variant(engine: sa.Engine, table: sa.Table, test: ABTest, variant: str, version: str,
                 start: datetime, end: datetime, labels_before: datetime) -> pd.DataFrame:
    """Rows of one variant served in ``[start, end)`` (``table`` is ``predictions`` or
    ``shadow_predictions``) with their label when known before ``labels_before`` (else None)."""
    import pandas as pd
    import sqlalchemy as sa

    from airloop.store import ground_truth as g

    t = table
    joined = t.outerjoin(g, sa.and_(g.c.request_id == t.c.request_id, g.c.tenant == t.c.tenant,
                                    g.c.pipeline == t.c.pipeline, g.c.label_ts < _utc(labels_before)))
    query = (sa.select(t.c.request_id, t.c.status, t.c.latency_ms, t.c.prediction, t.c.score, g.c.label)
             .select_from(joined)
             .where(t.c.tenant == test.tenant, t.c.pipeline == test.pipeline, t.c.variant == variant,
                    t.c.model_version == version, t.c.ts >= _utc(start), t.c.ts < _utc(end))
             .order_by(t.c.request_id))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    frame = pd.DataFrame(rows, columns=["request_id", "status", "latency_ms", "prediction", "score", "label"])
    for column in ("prediction", "label"):
        frame[column] = [json.loads(v) if v is not None else None for v in frame[column]]
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce")
    return frame


def evaluate_frames(config: PipelineConfig, test: ABTest, champion_rows: pd.DataFrame,
                    challenger_rows: pd.DataFrame, interval_start: datetime, interval_end: datetime) -> dict[str, Any]:
    """The evaluation of ``test`` from each variant's rows (see :func:`load_variant`): summaries,
    the comparison of the success metric, the guardrail and the decision. Pure."""
    paired = test.mode == "shadow"
    metric = test.success_metric
    labelled = {name: rows[(rows["status"] == "ok") & rows["label"].notna()]
                for name, rows in (("champion", champion_rows), ("challenger", challenger_rows))}
    a = samples(config, metric, labelled["champion"])
    b = samples(config, metric, labelled["challenger"])
    if paired:
        a, b = pair(a, b)
    comparison = compare(metric, a, b, test.alpha, paired=paired)
    champion = {**variant_summary(config, test.champion_version, champion_rows), "labelled_rows": len(a)}
    challenger = {**variant_summary(config, test.challenger_version, challenger_rows), "labelled_rows": len(b)}
    guardrail = error_guardrail(champion, challenger, test.alpha)
    decision, reason = decide(test, comparison, len(a), len(b), interval_end, guardrail)
    start, end = window(test, interval_end)
    return {
        "test_id": test.test_id, "pipeline": test.pipeline, "tenant": test.tenant, "mode": test.mode,
        "interval_start": _utc(interval_start).isoformat(), "interval_end": _utc(interval_end).isoformat(),
        "window": [start.isoformat(), end.isoformat()], "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric], "alpha": test.alpha, "min_samples": test.min_samples,
        "paired": paired, "champion": champion, "challenger": challenger,
        "comparison": comparison.as_dict(), "winner": significant_winner(metric, comparison, test.alpha),
        "guardrail": guardrail, "decision": decision, "reason": reason, "final": decision != CONTINUE,
        "test_status": test.status,
    }


# ============================================================================ DAG-facing functions
def _engine(settings: Settings) -> sa.Engine:
    from airloop import store

    return store.get_engine(settings.monitoring_db_uri)


def _require(engine: sa.Engine, config: PipelineConfig, test_id: str) -> ABTest:
    test = get_test(engine, test_id)
    if test is None or test.pipeline != config.name:
        raise ABTestError(f"no A/B test {test_id!r} for pipeline {config.name}")
    return test


def _alias_version(config: PipelineConfig, settings: Settings, alias: str) -> str:
    """The version the registry alias points at (an explicit client: no global MLflow state)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                          registry_uri=settings.mlflow_registry_uri or settings.mlflow_tracking_uri)
    return str(client.get_model_version_by_alias(config.model_name, alias).version)


def start_test(config: PipelineConfig, settings: Settings, started_at: datetime | str, *, mode: Mode = "ab",
               traffic_pct: float = 50.0, key_field: str = KEY_REQUEST_ID, success_metric: str | None = None,
               alpha: float = 0.05, min_samples: int = 1000, max_duration_days: float = 14.0,
               tenant: str = "default", champion_version: str | int | None = None,
               challenger_version: str | int | None = None, test_id: str | None = None) -> dict[str, Any]:
    """Create (idempotently) a running test and return its definition.

    Versions default to the registry's ``champion`` and ``challenger`` aliases; the success metric
    to :func:`default_metric`; ``started_at`` is business time (the DAG run's data interval). The
    default id ``<pipeline>.<tenant>.v<champion>-v<challenger>.<started_at>`` makes a re-run of the
    same start return the same test. Serving picks it up on ``POST /abtest/refresh``
    (:func:`airloop.deploy.refresh_abtest`).
    """
    started = _utc(started_at)
    champion = str(champion_version) if champion_version is not None else _alias_version(config, settings, CHAMPION)
    challenger = str(challenger_version) if challenger_version is not None else \
        _alias_version(config, settings, CHALLENGER)
    test_id = test_id or f"{config.name}.{tenant}.v{champion}-v{challenger}.{started:%Y%m%dT%H%M%S}"
    try:
        test = ABTest(test_id=test_id, pipeline=config.name, tenant=tenant, champion_version=champion,
                      challenger_version=challenger, mode=mode, traffic_pct=traffic_pct, key_field=key_field,
                      success_metric=success_metric or default_metric(config), alpha=alpha,
                      min_samples=min_samples, max_duration_days=max_duration_days, started_at=started)
    except ValueError as err:
        raise ABTestError(f"invalid A/B test: {err}") from err
    check_test(config, test)
    return create_test(_engine(settings), test).describe()


def evaluate_test(config: PipelineConfig, settings: Settings, test_id: str, start: datetime | str,
                  end: datetime | str) -> dict[str, Any]:
    """Evaluate ``test_id`` at the end of the data interval ``[start, end)`` and upsert the result.

    Reads the whole test window up to ``end`` (cumulative, see :func:`window`) with the labels
    known before ``end``; re-running the interval rewrites its own ``ab_test_results`` row. Returns
    the evaluation (``decision``: continue | promote_challenger | keep_champion); the test itself
    changes only in :func:`conclude_test`.
    """
    from airloop import store

    engine = _engine(settings)
    test = _require(engine, config, test_id)
    check_test(config, test)
    w_start, w_end = window(test, _utc(end))
    champion = load_variant(engine, store.predictions, test, CHAMPION, test.champion_version, w_start, w_end, _utc(end))
    table, variant = (store.shadow_predictions, SHADOW) if test.mode == "shadow" else (store.predictions, CHALLENGER)
    challenger = load_variant(engine, table, test, variant, test.challenger_version, w_start, w_end, _utc(end))
    evaluation = evaluate_frames(config, test, champion, challenger, _utc(start), _utc(end))
    save_evaluation(engine, evaluation)
    return evaluation


def _outcome(test: ABTest, changed: bool) -> dict[str, Any]:
    return {"test_id": test.test_id, "status": test.status, "decision": test.decision,
            "decided_at": test.decided_at.isoformat() if test.decided_at else None,
            "promote": test.decision == PROMOTE, "champion_version": test.champion_version,
            "challenger_version": test.challenger_version, "changed": changed}


def conclude_test(config: PipelineConfig, settings: Settings, test_id: str, end: datetime | str) -> dict[str, Any]:
    """Apply the decision of the evaluation stored for the interval ending at ``end``.

    A final decision (promote_challenger / keep_champion) ends the running test (status
    ``concluded``, ``decided_at = end``, the evaluation as result); ``continue`` changes nothing.
    Idempotent: an ended test keeps its recorded decision. Returns ``{"test_id", "status",
    "decision", "promote", "champion_version", "challenger_version", "changed", ...}``; on
    ``promote`` the caller moves the ``champion`` alias to ``challenger_version`` (the promotion
    path), then refreshes serving.
    """
    engine = _engine(settings)
    test = _require(engine, config, test_id)
    evaluation = load_evaluation(engine, test_id, _utc(end))
    if evaluation is None:
        raise ABTestError(f"test {test_id} has no evaluation for the interval ending {_utc(end).isoformat()}; "
                          "run evaluate_test first")
    if evaluation["decision"] == CONTINUE or test.status != "running":
        return _outcome(test, False)
    test, changed = finish_test(engine, test_id, "concluded", evaluation["decision"], _utc(end), evaluation)
    return _outcome(test, changed)


def stop_test(config: PipelineConfig, settings: Settings, test_id: str, at: datetime | str,
              reason: str = "stopped by operator") -> dict[str, Any]:
    """End a running test without a winner (decision ``stopped``; the champion stays). Idempotent."""
    engine = _engine(settings)
    _require(engine, config, test_id)
    test, changed = finish_test(engine, test_id, "stopped", STOPPED, _utc(at), {"reason": reason})
    return _outcome(test, changed)


def running_tests(engine: sa.Engine, pipeline: str) -> list[ABTest]:
    """The running tests of ``pipeline`` (at most one per tenant); what serving routes by."""
    return list_tests(engine, pipeline, "running")
