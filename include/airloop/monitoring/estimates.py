"""Label-free estimates of one monitoring interval, and their check once the labels arrive.

:func:`interval_estimate` turns the interval's served scores into the estimates of
:mod:`airloop.monitoring.estimation` (at the served threshold) and their drop vs the version's
holdout; :func:`check_estimates` revisits earlier intervals: once at least
``monitoring.estimate_label_coverage`` of an interval's served rows have labels (known before the
checking interval's end), the realized metrics of exactly those rows are stored with the
estimate's error (estimated − realized) in ``estimate_checks``, keyed by the estimated interval
and the checking interval's end: each interval writes only rows of its own, so a re-run or a
backfill in any order writes the same rows.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airloop.core import store
from airloop.core.metrics import finite_or_none
from airloop.core.pipeline import PipelineConfig
from airloop.core.timeutil import to_utc
from airloop.monitoring import estimation
from airloop.monitoring.reference import SCORE_COLUMN, TARGET_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa

log = logging.getLogger(__name__)

#: DLE loss models per (pipeline, version, reference rows): fitted once per process.
_LOSS_MODELS: dict[tuple[str, str, int], estimation.LossModel] = {}


def _loss_model(config: PipelineConfig, version: str | None, reference: pd.DataFrame) -> estimation.LossModel | None:
    if TARGET_COLUMN not in reference.columns:
        return None
    labelled = reference[reference[TARGET_COLUMN].notna() & reference[SCORE_COLUMN].notna()]
    if len(labelled) < 20:
        return None
    key = (config.name, str(version), len(reference))
    if key not in _LOSS_MODELS:
        _LOSS_MODELS[key] = estimation.fit_loss_model(
            _model_inputs(config, labelled), labelled[SCORE_COLUMN].to_numpy(float),
            labelled[TARGET_COLUMN].to_numpy(float), seed=config.training.seed)
    return _LOSS_MODELS[key]


def _model_inputs(config: PipelineConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """Features as DLE's model takes them: numbers as float, categories as pandas categories
    over the declared values (or the values seen)."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name, spec in config.features.items():
        if spec.type == "category":
            values = [str(v) for v in (spec.values or [])] or None
            out[name] = pd.Categorical(frame[name].astype("string").astype(object), categories=values)
        else:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return out.reset_index(drop=True)


def interval_estimate(config: PipelineConfig, served: pd.DataFrame, *, threshold: float | None,
                      reference: pd.DataFrame | None, holdout: dict[str, float | None] | None,
                      version: str | None = None) -> dict[str, Any] | None:
    """The label-free estimate of an interval from its ``ok`` rows served by the monitored version.

    None when there are fewer than ``monitoring.drift.min_rows`` scored rows (or, for regression,
    no reference rows with realized errors). Otherwise ``metric`` (:func:`estimation.estimated_metric`),
    its ``value``/``low``/``high``/``std``, ``reference`` (the holdout figure), ``drop`` (of the
    point estimate) and ``band_drop`` (of the band's optimistic end: the rule metric
    ``estimated_performance_drop``), every estimated metric under ``metrics``, ``rows``, ``threshold``.
    """
    import numpy as np

    scored = served[served[SCORE_COLUMN].notna()]
    if len(scored) < config.monitoring.drift.min_rows:
        return None
    scores = scored[SCORE_COLUMN].to_numpy(float)
    threshold = 0.5 if threshold is None else float(threshold)
    if config.task == "binary_classification":
        metrics = estimation.estimate_binary(scores, threshold)
    elif config.task == "regression":
        loss_model = _loss_model(config, version, reference) if reference is not None else None
        if loss_model is None:
            return None
        metrics = estimation.estimate_regression(loss_model, _model_inputs(config, scored), scores)
    else:
        metrics = estimation.estimate_multiclass(scores)
    metric = estimation.estimated_metric(config.task, config.training.metric)
    main = metrics[metric].as_dict()
    ref = estimation.holdout_reference(metric, holdout or {})
    return {"metric": metric, **main, "reference": ref,
            "drop": estimation.point_drop(metric, main["value"], ref),
            "band_drop": estimation.estimated_drop(metric, main, ref),
            "metrics": {k: v.as_dict() for k, v in metrics.items()}, "rows": int(len(scored)),
            "threshold": threshold if config.task == "binary_classification" else None,
            "positive_rate": float(np.mean(scores >= threshold)) if config.task == "binary_classification" else None}


def run_columns(estimate: dict[str, Any] | None) -> dict[str, Any]:
    """The ``monitoring_runs`` columns of an interval's estimate (all None without one)."""
    if estimate is None:
        return {"estimated_performance": None, "estimated_metric": None, "estimated_value": None,
                "estimated_low": None, "estimated_high": None, "estimated_performance_drop": None}
    return {"estimated_performance": json.dumps(estimate, sort_keys=True, default=str),
            "estimated_metric": estimate["metric"], "estimated_value": estimate["value"],
            "estimated_low": estimate["low"], "estimated_high": estimate["high"],
            "estimated_performance_drop": finite_or_none(estimate["band_drop"])}


# ============================================================================ the check
def check_estimates(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime,
                    end: datetime) -> list[dict[str, Any]]:
    """Compare the estimates of earlier intervals (starting in the ``label_lookback_days`` before
    ``end``) with the realized metrics of their own served rows labelled before ``end``.

    A check of interval E is written by the interval ``[start, end)`` in which labels of E's
    rows arrived once ``monitoring.estimate_label_coverage`` of them are labelled: one
    ``estimate_checks`` row keyed by E and ``checked_at = end`` (estimated, realized, error =
    estimated − realized, every metric's error, labelled rows). Whether a row is written depends
    only on stored predictions and label times, so re-runs and backfills in any order write the
    same rows; the latest check of E is its row with the greatest ``checked_at``. Returns them.
    """
    import pandas as pd
    import sqlalchemy as sa

    from airloop.monitoring.performance import performance

    start, end = to_utc(start), to_utc(end)
    mon = config.monitoring
    since = end - timedelta(days=max(mon.label_lookback_days, 1))
    runs, p, g = store.monitoring_runs, store.predictions, store.ground_truth
    with engine.connect() as conn:
        candidates = [dict(r) for r in conn.execute(sa.select(
            runs.c.interval_start, runs.c.interval_end, runs.c.model_version, runs.c.estimated_performance).where(
            runs.c.tenant == tenant, runs.c.pipeline == config.name, runs.c.estimated_performance.is_not(None),
            runs.c.interval_start >= since, runs.c.interval_end <= end)).mappings()]
        if not candidates:
            return []
        first = min(to_utc(c["interval_start"]) for c in candidates)
        joined = p.outerjoin(g, sa.and_(g.c.request_id == p.c.request_id, g.c.tenant == p.c.tenant,
                                        g.c.pipeline == p.c.pipeline, g.c.label_ts < end))
        rows = conn.execute(sa.select(p.c.ts, p.c.model_version, p.c.prediction, p.c.score, g.c.label, g.c.label_ts)
                            .select_from(joined).where(p.c.tenant == tenant, p.c.pipeline == config.name,
                                                       p.c.status == "ok", p.c.ts >= first, p.c.ts < end)).all()
    frame = pd.DataFrame(rows, columns=["ts", "model_version", "prediction", SCORE_COLUMN, "label", "label_ts"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["label_ts"] = pd.to_datetime(frame["label_ts"], utc=True)
    checks = []
    for cand in sorted(candidates, key=lambda c: to_utc(c["interval_start"])):
        e_start, e_end = to_utc(cand["interval_start"]), to_utc(cand["interval_end"])
        mine = frame[(frame["ts"] >= e_start) & (frame["ts"] < e_end) & (frame["model_version"] == cand["model_version"])]
        labelled = mine[mine["label"].notna()]
        arrived = labelled["label_ts"] >= start  # labels of E that arrived in this interval
        if not len(mine) or len(labelled) / len(mine) < mon.estimate_label_coverage or not arrived.any():
            continue
        decoded = pd.DataFrame({
            "prediction": [json.loads(v) if v is not None else None for v in labelled["prediction"]],
            "label": [json.loads(v) for v in labelled["label"]],
            SCORE_COLUMN: pd.to_numeric(labelled[SCORE_COLUMN], errors="coerce").to_numpy()})
        realized = performance(config, decoded)
        estimate = json.loads(cand["estimated_performance"])
        errors = {m: est["value"] - realized[m] for m, est in sorted(estimate.get("metrics", {}).items())
                  if est.get("value") is not None and realized.get(m) is not None}
        metric = estimate.get("metric")
        checks.append({"tenant": tenant, "pipeline": config.name, "interval_start": e_start, "checked_at": end,
                       "interval_end": e_end, "model_version": cand["model_version"], "metric": metric,
                       "estimated": estimate.get("value"), "realized": finite_or_none(realized.get(metric)),
                       "error": finite_or_none(errors.get(metric)), "errors": json.dumps(errors, sort_keys=True),
                       "realized_performance": json.dumps(realized, sort_keys=True, default=str),
                       "labelled_rows": int(len(labelled)), "rows": int(len(mine))})
    store.upsert(engine, store.estimate_checks, checks)
    if checks:
        log.info("%s/%s: checked %d earlier estimate(s) against their labels", config.name, tenant, len(checks))
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in c.items()
             if k not in ("tenant", "pipeline", "errors", "realized_performance")} for c in checks]


def latest_checks(engine: sa.Engine, pipeline: str, tenant: str) -> dict[datetime, dict[str, Any]]:
    """The latest ``estimate_checks`` row of each checked interval, by interval start."""
    import sqlalchemy as sa

    t = store.estimate_checks
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.pipeline == pipeline, t.c.tenant == tenant)
                            .order_by(t.c.interval_start, t.c.checked_at)).mappings().all()
    return {to_utc(r["interval_start"]): dict(r) for r in rows}
