"""Evaluating and concluding A/B and shadow tests on one interval."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.registry.client import get_client

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa

from airloop.core import store
from airloop.core.metrics import higher_is_better
from airloop.core.names import CHALLENGER, CHAMPION, SHADOW
from airloop.core.store import ground_truth as g
from airloop.core.timeutil import to_utc
from airloop.experiments.definition import (
    CONTINUE,
    KEEP,
    PROMOTE,
    STOPPED,
    ABTest,
    ABTestError,
    Mode,
    _engine,
    check_test,
    create_test,
    default_metric,
    finish_test,
    get_test,
    load_evaluation,
    save_evaluation,
)
from airloop.experiments.routing import KEY_REQUEST_ID
from airloop.experiments.stats import Comparison, Samples, compare, significant_winner, two_proportions
from airloop.monitoring.performance import operations, performance
from airloop.monitoring.reference import SCORE_COLUMN


def decide(test: ABTest, comparison: Comparison, n_champion: int, n_challenger: int, interval_end: datetime,
           guardrail: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(decision, reason)`` by the fixed-horizon rules of the module docstring."""
    n = min(n_champion, n_challenger)
    if n < test.min_samples:
        if to_utc(interval_end) >= test.ends_at:
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
    ``prediction`` decoded, ``score``); rows without a usable label/prediction/score are left out.
    ``prediction`` is the label each variant served (binary: ``score >= its version's threshold``),
    so decision metrics judge the served decisions of both versions."""
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
    end = min(to_utc(interval_end), test.ends_at)
    if test.decided_at is not None:
        end = min(end, test.decided_at)
    return test.started_at, max(end, test.started_at)


def load_variant(engine: sa.Engine, table: sa.Table, test: ABTest, variant: str, version: str,
                 start: datetime, end: datetime, labels_before: datetime) -> pd.DataFrame:
    """Rows of one variant served in ``[start, end)`` (``table`` is ``predictions`` or
    ``shadow_predictions``) with their label when known before ``labels_before`` (else None)."""
    import pandas as pd
    import sqlalchemy as sa

    t = table
    joined = t.outerjoin(g, sa.and_(g.c.request_id == t.c.request_id, g.c.tenant == t.c.tenant,
                                    g.c.pipeline == t.c.pipeline, g.c.label_ts < to_utc(labels_before)))
    query = (sa.select(t.c.request_id, t.c.status, t.c.latency_ms, t.c.prediction, t.c.score, g.c.label)
             .select_from(joined)
             .where(t.c.tenant == test.tenant, t.c.pipeline == test.pipeline, t.c.variant == variant,
                    t.c.model_version == version, t.c.ts >= to_utc(start), t.c.ts < to_utc(end))
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
        "interval_start": to_utc(interval_start).isoformat(), "interval_end": to_utc(interval_end).isoformat(),
        "window": [start.isoformat(), end.isoformat()], "metric": metric,
        "higher_is_better": higher_is_better(metric), "alpha": test.alpha, "min_samples": test.min_samples,
        "paired": paired, "champion": champion, "challenger": challenger,
        "comparison": comparison.as_dict(), "winner": significant_winner(metric, comparison, test.alpha),
        "guardrail": guardrail, "decision": decision, "reason": reason, "final": decision != CONTINUE,
        "test_status": test.status,
    }


def _require(engine: sa.Engine, config: PipelineConfig, test_id: str) -> ABTest:
    test = get_test(engine, test_id)
    if test is None or test.pipeline != config.name:
        raise ABTestError(f"no A/B test {test_id!r} for pipeline {config.name}")
    return test


def _alias_version(config: PipelineConfig, settings: Settings, alias: str) -> str:
    """The version the registry alias points at."""
    return str(get_client(settings).get_model_version_by_alias(config.model_name, alias).version)


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
    (:func:`airloop.serving.client.refresh_abtest`).
    """
    started = to_utc(started_at)
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

    engine = _engine(settings)
    test = _require(engine, config, test_id)
    check_test(config, test)
    w_start, w_end = window(test, to_utc(end))
    champion = load_variant(engine, store.predictions, test, CHAMPION, test.champion_version, w_start, w_end, to_utc(end))
    table, variant = (store.shadow_predictions, SHADOW) if test.mode == "shadow" else (store.predictions, CHALLENGER)
    challenger = load_variant(engine, table, test, variant, test.challenger_version, w_start, w_end, to_utc(end))
    evaluation = evaluate_frames(config, test, champion, challenger, to_utc(start), to_utc(end))
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
    evaluation = load_evaluation(engine, test_id, to_utc(end))
    if evaluation is None:
        raise ABTestError(f"test {test_id} has no evaluation for the interval ending {to_utc(end).isoformat()}; "
                          "run evaluate_test first")
    if evaluation["decision"] == CONTINUE or test.status != "running":
        return _outcome(test, False)
    test, changed = finish_test(engine, test_id, "concluded", evaluation["decision"], to_utc(end), evaluation)
    return _outcome(test, changed)


def stop_test(config: PipelineConfig, settings: Settings, test_id: str, at: datetime | str,
              reason: str = "stopped by operator") -> dict[str, Any]:
    """End a running test without a winner (decision ``stopped``; the champion stays). Idempotent."""
    engine = _engine(settings)
    _require(engine, config, test_id)
    test, changed = finish_test(engine, test_id, "stopped", STOPPED, to_utc(at), {"reason": reason})
    return _outcome(test, changed)
