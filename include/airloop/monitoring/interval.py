"""Monitoring: drift, performance and operations of one data interval of served predictions.

The monitoring DAG calls :func:`monitor_interval` once per (tenant, interval). It reads the
interval's rows of the ``predictions`` table (and the labels of ``ground_truth``), compares the
served features and scores with the model version's *reference* (its training features as served
plus its score on them, logged with every registered version as ``reference/reference.parquet``),
and stores the outcome in ``feature_drift`` (one row per feature and interval) and
``monitoring_runs`` (one row per interval), keyed by tenant, pipeline and interval start: a re-run
rewrites its own rows and nothing else.

Drift is judged with the methods and thresholds of ``monitoring.drift`` and Evidently's semantics
(0.7: ``DataDriftPreset``/``ValueDrift`` and its stat tests), in two ways:

* the stored verdicts (``feature_drift`` rows, drift share, prediction drift) come from the fast
  path, :mod:`airloop.monitoring.driftstats`: Evidently's statistics recomputed with numpy on *every* row of
  the interval against the version's reference profile (``reference/profile.npz``, logged with the
  version; the unit tests check score and verdict against Evidently's own stat tests and report);
* the human HTML report is Evidently's own ``Report``, drawn from a seeded sample of at most
  :data:`HTML_MAX_ROWS` rows of each side when the interval (or the reference) is larger.

The two can differ only where the HTML report works on a sample (a score near its threshold may
land on the other side) or, for a reference with more distinct values than the profile keeps
(``driftstats.PROFILE_MAX_POINTS``), by the profile's grid approximation (see driftstats). Only
data of ``[start, end)`` is used: nothing here looks at the wall clock to select rows.

Heavy imports (Evidently, scikit-learn, MLflow) happen inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.monitoring.reference import SCORE_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa

    from airloop.monitoring.driftstats import ReferenceProfile

from airloop.core import store
from airloop.core.metrics import finite_or_none
from airloop.core.store import _dialect_insert, feature_drift, monitoring_runs
from airloop.core.timeutil import to_utc
from airloop.monitoring.drift import drift_summary, fast_drift_rows, save_drift_report
from airloop.monitoring.estimates import check_estimates, interval_estimate, run_columns
from airloop.monitoring.performance import LabelPolicy, operations, performance, performance_drop
from airloop.monitoring.quality import out_of_domain_shares, stored_traffic_quality
from airloop.monitoring.reference import PREDICTION_FEATURE, build_reference_profile
from airloop.monitoring.rules import evaluate_rules, rule_states
from airloop.monitoring.traffic import load_interval, trailing_volumes

log = logging.getLogger(__name__)


def _json(value: Any) -> str | None:
    """Deterministic JSON text (sorted keys) or None."""
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


# ============================================================================ one interval
def _report_path(report_dir: Path | str, config: PipelineConfig, tenant: str, start: datetime) -> Path:
    safe_tenant = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tenant)
    return Path(report_dir) / config.name / safe_tenant / f"drift_{start:%Y%m%dT%H%M%SZ}.html"


def _store_interval(engine: sa.Engine, key: dict[str, Any], drift: list[dict[str, Any]], run: dict[str, Any]) -> None:
    """Upsert the interval's rows in one transaction; drop this interval's stale feature rows."""
    import sqlalchemy as sa

    def upsert(conn, table, rows):
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns]
        stmt = _dialect_insert(conn, table)  # only the columns written here (not a later run's estimate check)
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={
            c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys and c.name in rows[0]})
        conn.execute(stmt, rows)

    fd = feature_drift
    with engine.begin() as conn:
        stale = sa.delete(fd).where(fd.c.tenant == key["tenant"], fd.c.pipeline == key["pipeline"],
                                    fd.c.interval_start == key["interval_start"])
        if drift:
            stale = stale.where(fd.c.feature.not_in([r["feature"] for r in drift]))
        conn.execute(stale)
        upsert(conn, fd, [key | r for r in drift])
        upsert(conn, monitoring_runs, [key | run])


def monitor_interval(config: PipelineConfig, settings: Settings, tenant: str, start: datetime, end: datetime,
                     model_version: str | int | None, reference: pd.DataFrame, report_dir: Path | str, *,
                     reference_metrics: dict[str, float] | None = None, engine: sa.Engine | None = None,
                     labels: LabelPolicy = "arrived", profile: ReferenceProfile | None = None,
                     threshold: float | None = None, reference_id: str = "training",
                     estimation_reference: pd.DataFrame | None = None) -> dict:
    """Monitor one interval ``[start, end)`` of ``tenant``'s traffic and store the outcome.

    1. :func:`load_interval` (labelled rows restricted to ``model_version``).
    2. Drift of the ``ok`` rows when there are at least ``drift.min_rows`` of them: the verdicts
       by the fast path (:func:`fast_drift_rows`, every row) against ``profile`` (the version's
       stored profile, :func:`load_profile`; built from ``reference`` when not given), the HTML
       report by Evidently under ``report_dir`` (:func:`save_drift_report`: a seeded sample of
       each side above :data:`HTML_MAX_ROWS` rows); otherwise drift is recorded as not judged
       (``drift_share``/``drifted_features``/``report_uri`` NULL).
    3. :func:`performance` when at least ``monitoring.min_labelled_rows`` labelled rows, and
       :func:`performance_drop` of the study metric vs ``reference_metrics`` (the version's
       holdout metrics, :func:`load_reference_metrics`) when given.
    3b. The label-free estimate (:func:`interval_estimate`) of the ``ok`` rows served by
       ``model_version``, at the served ``threshold`` (None: 0.5); regression's loss model is
       fitted on ``estimation_reference`` (default ``reference``: the version's training
       reference with its holdout's realized targets). After the store, :func:`check_estimates`
       compares earlier intervals' estimates with their now-known labels.
    4. :func:`operations` against :func:`trailing_volumes` (``volume_baseline_days``).
    4b. Served data quality: the shares of ``ok`` rows serving flagged out of domain
       (:func:`out_of_domain_shares`) and the interval's stored traffic check
       (:func:`stored_traffic_quality`, written before by the ``traffic_quality`` task).
    5. :func:`evaluate_rules`; the reasons of fired ``retrain`` rules go to ``retrain_reason``
       (whether a retrain is requested — cool-down — is decided by the caller).
    6. Upsert ``feature_drift`` rows and the ``monitoring_runs`` row keyed by (tenant, pipeline,
       interval_start) in one transaction: a re-run overwrites its own rows (and removes feature
       rows it no longer produces) and changes nothing else. Same store contents and reference →
       identical stored rows.

    Returns a JSON-serialisable summary (no frames): the rule metrics at the top level
    (``drift_share``, ``prediction_drift``, ``performance_drop``, ``volume_ratio``, ``error_rate``,
    ``latency_p95_ms``, ``out_of_domain_share``, ``unseen_category_share``,
    ``traffic_quality_failed``), the fired ``alerts`` and the stored values.
    """

    start, end = to_utc(start), to_utc(end)
    if end <= start:
        raise ValueError(f"empty interval: start {start} >= end {end}")
    mon = config.monitoring
    engine = engine or store.get_engine(settings.monitoring_db_uri)
    version = None if model_version is None else str(model_version)

    frame, labelled = load_interval(engine, config, tenant, start, end, labels=labels, labelled_version=version,
                                    label_window=timedelta(days=config.monitoring.performance_window_days))
    ok = frame[frame["status"] == "ok"]
    current = ok[[*config.features, SCORE_COLUMN]].reset_index(drop=True)

    # -- drift
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    report_uri = None
    if len(current) >= mon.drift.min_rows:
        rows, skipped = fast_drift_rows(config, profile or build_reference_profile(config, reference), current)
        written = save_drift_report(config, reference, current, _report_path(report_dir, config, tenant, start),
                                    timestamp=end) if rows else None
        report_uri = str(written) if written else None
        drift = drift_summary(config, rows) | {"drift_judged": bool(rows), "drift_reason": None if rows else
                                               "no column has values on both sides"}
    else:
        drift = {"drift_share": None, "dataset_drift": None, "drifted_features": None, "prediction_drift": None,
                 "prediction_drifted": None, "drift_judged": False,
                 "drift_reason": f"{len(current)} ok rows < drift.min_rows {mon.drift.min_rows}: drift not judged"}

    # -- performance
    metric = config.training.metric
    perf = None
    drop = None
    if len(labelled) >= mon.min_labelled_rows:
        perf = performance(config, labelled)
        if perf.get("rows", 0) < mon.min_labelled_rows:
            perf = None
    ref_perf = {k: finite_or_none(v) for k, v in sorted((reference_metrics or {}).items())} or None
    if perf is not None and ref_perf is not None and perf.get(metric) is not None and ref_perf.get(metric) is not None:
        drop = finite_or_none(performance_drop(metric, perf[metric], ref_perf[metric]))

    # -- label-free estimate of the version's own traffic
    served = ok if version is None else ok[ok["model_version"].astype(str) == version]
    estimate = interval_estimate(config, served, threshold=threshold, version=version, holdout=ref_perf,
                                 reference=reference if estimation_reference is None else estimation_reference)

    # -- operations
    ops = operations(frame, trailing_volumes(engine, config, tenant, start, mon.volume_baseline_days, end - start))

    # -- served data quality: inputs serving flagged out of domain, the traffic check's outcome
    domain = out_of_domain_shares(config, ok)
    quality = stored_traffic_quality(engine, config, tenant, start)

    summary: dict[str, Any] = {
        "tenant": tenant, "pipeline": config.name, "interval_start": start.isoformat(),
        "interval_end": end.isoformat(), "model_version": version, "rows": int(len(frame)), "ok_rows": int(len(ok)),
        **drift, "unjudged_features": [PREDICTION_FEATURE if c == SCORE_COLUMN else c for c in skipped],
        "labelled_rows": int(len(labelled)), "performance_judged": perf is not None,
        "performance": perf, "reference_performance": ref_perf, "metric": metric, "performance_drop": drop,
        **{k: finite_or_none(v) if isinstance(v, float) else v for k, v in ops.items()},
        "report_uri": report_uri, **domain, **quality, "reference_id": reference_id,
        "estimated": estimate, "estimated_performance_drop": None if estimate is None else estimate["band_drop"],
    }
    alerts = evaluate_rules(config, summary)
    summary["rule_states"] = rule_states(config, summary)
    retrain = [a["message"] for a in alerts if a["retrain"]]
    summary |= {"alerts": alerts, "retrain": bool(retrain), "retrain_reason": "; ".join(retrain) or None}

    key = {"tenant": tenant, "pipeline": config.name, "interval_start": start}
    drift_db = [r | {"interval_end": end, "model_version": version} for r in rows]
    run_db = {
        "interval_end": end, "model_version": version, "rows": summary["rows"],
        "drift_share": finite_or_none(summary["drift_share"]),
        "drifted_features": _json(summary["drifted_features"]),
        "prediction_drift": finite_or_none(summary["prediction_drift"]),
        "labelled_rows": summary["labelled_rows"], "performance": _json(perf),
        "reference_performance": _json(ref_perf), "volume_ratio": summary["volume_ratio"],
        "error_rate": summary["error_rate"], "latency_p50_ms": summary["latency_p50_ms"],
        "latency_p95_ms": summary["latency_p95_ms"], "report_uri": report_uri,
        "retrain_reason": summary["retrain_reason"],
        "out_of_domain_share": domain["out_of_domain_share"], "unseen_category_share": domain["unseen_category_share"],
        "out_of_domain_features": _json(domain["out_of_domain_features"]) if domain["out_of_domain_share"] is not None
        else None,
        **run_columns(estimate), "reference_id": reference_id,
    }
    _store_interval(engine, key, drift_db, run_db)
    summary["estimate_checks"] = check_estimates(engine, config, tenant, start, end)
    log.info("monitored %s/%s [%s, %s): %s rows, drift %s, %s labelled, %s alerts", config.name, tenant,
             start.isoformat(), end.isoformat(), summary["rows"],
             summary["drifted_features"] if drift["drift_judged"] else "not judged", summary["labelled_rows"],
             len(alerts))
    return summary


# ------------------------------------------------------------------------------- read side
def stored_interval(engine: sa.Engine, pipeline: str, start: datetime, tenant: str | None = None) -> dict[str, Any]:
    """What monitoring stored for the interval starting at ``start``: the ``monitoring_runs`` row
    (``drifted_features`` decoded) and the rules that fired in it (``alerts``, from
    ``alert_evaluations``); ``{}`` parts when none.
    ``tenant`` scopes both reads (None: any tenant's, for a pipeline name only one tenant uses)."""
    import sqlalchemy as sa

    runs, evaluations = store.monitoring_runs, store.alert_evaluations
    mine = [runs.c.pipeline == pipeline, runs.c.interval_start == start]
    fired = [evaluations.c.pipeline == pipeline, evaluations.c.interval_start == start, evaluations.c.fired.is_(True)]
    if tenant is not None:
        mine.append(runs.c.tenant == tenant)
        fired.append(evaluations.c.tenant == tenant)
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs).where(*mine)).mappings().first()
        rules = conn.execute(sa.select(evaluations.c.rule).where(*fired).order_by(evaluations.c.rule)).scalars().all()
    out = dict(row) if row else {}
    out["drifted_features"] = json.loads(out["drifted_features"]) if out.get("drifted_features") else []
    out["alerts"] = [{"rule": r} for r in rules]
    return out


def monitored_intervals(engine: sa.Engine, pipeline: str, tenant: str, version: str, since: datetime,
                        until: datetime) -> int:
    """How many intervals starting in ``[since, until]`` monitored ``version`` of the pipeline."""
    import sqlalchemy as sa

    runs = store.monitoring_runs
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(runs).where(
            runs.c.pipeline == pipeline, runs.c.tenant == tenant, runs.c.model_version == str(version),
            runs.c.interval_start >= since, runs.c.interval_start <= until)).scalar_one()
