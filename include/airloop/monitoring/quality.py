"""Data quality of served traffic: out-of-domain shares and the validation suite on logged features.

Two checks per (tenant, interval), both on the interval's ``ok`` rows of ``predictions``:

* **Out of domain** (:func:`out_of_domain_shares`, part of :func:`airloop.monitoring.interval.monitor_interval`):
  serving flags each prediction's inputs outside the served version's domain (the ``out_of_domain``
  column: a number outside its declared ``min``/``max``, a category outside its declared ``values``
  or the vocabulary the version learned). Monitoring counts those flags, so serving and monitoring
  of a version judge with the same vocabulary: ``out_of_domain_share`` (rows with any flagged
  input), ``unseen_category_share`` (rows with a flagged category) and the share per feature.
* **Traffic quality** (:func:`check_traffic`, the monitoring DAG's ``traffic_quality`` task): the
  pipeline's committed GX suite, restricted to its feature expectations
  (:func:`airloop.data.validation.traffic_suite`: what applies to served features — not the
  timestamp / id / target / label-timestamp columns nor the row count), run on the interval's
  logged features as the requests sent them. One ``traffic_quality`` row per interval (upserted),
  the GX result JSON and Data Docs under ``<validation dir>/<pipeline>/traffic/<day>/``; the count
  of failed expectations is the rule metric ``traffic_quality_failed``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import ConfigError, Settings
from airloop.core.timeutil import to_utc

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa

log = logging.getLogger(__name__)


#: Failure messages of the traffic check carried in the interval summary (and alert message).
SUMMARY_FAILURES = 5


# ============================================================================ out of domain
def out_of_domain_shares(config: PipelineConfig, ok: pd.DataFrame) -> dict[str, Any]:
    """Shares of the interval's ``ok`` rows (a frame of :func:`airloop.monitoring.traffic.load_interval`)
    that serving flagged out of domain: ``out_of_domain_share`` (any input), ``unseen_category_share``
    (a category feature; None when the pipeline has none) and ``out_of_domain_features``
    (``{feature: share}``, flagged features only, config order). All None / empty without rows.
    Rows logged without flags (before serving flagged, or a version without a domain) count as in domain."""
    n = len(ok)
    if n == 0 or "out_of_domain" not in ok.columns:
        return {"out_of_domain_share": None, "unseen_category_share": None, "out_of_domain_features": {}}
    categorical = set(config.categorical_features)
    counts: Counter[str] = Counter()
    flagged = unseen = 0
    for flags in ok["out_of_domain"]:
        if not flags:
            continue
        names = set(flags)
        counts.update(names)
        flagged += 1
        unseen += bool(names & categorical)
    return {
        "out_of_domain_share": flagged / n,
        "unseen_category_share": unseen / n if categorical else None,
        "out_of_domain_features": {f: counts[f] / n for f in config.features if counts[f]},
    }


# ============================================================================ traffic quality
def traffic_dir(settings: Settings, config: PipelineConfig, tenant: str, start: datetime, end: datetime) -> Path:
    """Where an interval's traffic validation is kept: ``<validation dir>/<pipeline>/traffic/<day>``
    (a day-long interval starting at midnight; else ``<start as %Y-%m-%dT%H%M%SZ>``), under a
    ``<tenant>/`` folder for a tenant other than the pipeline's own."""
    start, end = to_utc(start), to_utc(end)
    folder = Path(settings.validation_dir) / config.name / "traffic"
    if tenant != config.tenant:
        folder /= "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tenant)
    daily = end - start == timedelta(days=1) and start == start.replace(hour=0, minute=0, second=0, microsecond=0)
    return folder / (start.date().isoformat() if daily else f"{start:%Y-%m-%dT%H%M%SZ}")


def check_traffic(config: PipelineConfig, settings: Settings, tenant: str, start: datetime, end: datetime, *,
                  engine: sa.Engine | None = None, suite: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate the features of ``tenant``'s ``ok`` predictions in ``[start, end)`` with the
    pipeline's suite (:func:`airloop.data.validation.validate_traffic`) and upsert the interval's
    ``traffic_quality`` row (a re-run rewrites it).

    Not validated (``success`` NULL, ``traffic_quality_failed`` None: no rule fires): an interval
    without served traffic, or a suite that is missing or out of date (``error`` says which; the
    training DAG refuses to run with it too). Returns the row's summary: ``traffic_quality_failed``
    (failed expectations), ``traffic_quality_success``, ``rows``, ``failures`` (the first
    :data:`SUMMARY_FAILURES` messages), ``skipped`` (expectations not applicable to traffic),
    ``result_uri``, ``data_docs_uri``, ``error``, ``duration_s``."""
    import time

    from airloop.data.validation import validate_traffic
    from airloop.monitoring.traffic import load_served_features

    start, end = to_utc(start), to_utc(end)
    engine = engine or store.get_engine(settings.monitoring_db_uri)
    started = time.perf_counter()
    frame = load_served_features(engine, config, tenant, start, end)
    row: dict[str, Any] = {"interval_end": end, "rows": len(frame), "success": None, "evaluated_expectations": None,
                           "failed_expectations": None, "failures": None, "skipped": None, "result_uri": None,
                           "data_docs_uri": None, "error": None}
    failures: list[str] = []
    if frame.empty:
        row["error"] = "no served traffic in the interval"
    else:
        try:
            outcome = validate_traffic(config, frame, start.date(), settings,
                                       traffic_dir(settings, config, tenant, start, end), suite=suite)
        except ConfigError as err:  # the suite is missing or stale: say so, monitoring goes on
            log.warning("%s/%s: served traffic not validated: %s", config.name, tenant, err)
            row["error"] = str(err)[:2000]
        else:
            stats = outcome.statistics
            failures = [f.message for f in outcome.failures]
            skipped = json.loads(outcome.result_path.read_text()).get("skipped", [])
            row |= {"success": outcome.success, "evaluated_expectations": stats["evaluated_expectations"],
                    "failed_expectations": stats["unsuccessful_expectations"] or 0,
                    "failures": json.dumps([f.to_json() for f in outcome.failures], sort_keys=True, default=str),
                    "skipped": json.dumps(skipped, sort_keys=True), "result_uri": str(outcome.result_path),
                    "data_docs_uri": str(outcome.data_docs_path) if outcome.data_docs_path else None}
    row["duration_s"] = round(time.perf_counter() - started, 3)
    store.upsert(engine, store.traffic_quality,
                 [{"tenant": tenant, "pipeline": config.name, "interval_start": start} | row])
    if row["success"] is False:
        log.warning("%s/%s: served traffic of [%s, %s) failed %s expectation(s):\n%s", config.name, tenant,
                    start.isoformat(), end.isoformat(), row["failed_expectations"], "\n".join(failures))
    return _summary(row, failures)


def _summary(row: dict[str, Any], failures: list[str]) -> dict[str, Any]:
    judged = row["success"] is not None
    return {
        "traffic_quality_failed": row["failed_expectations"] if judged else None,
        "traffic_quality_success": row["success"],
        "traffic_quality_rows": row["rows"],
        "traffic_quality_failures": failures[:SUMMARY_FAILURES],
        "traffic_quality_skipped": len(json.loads(row["skipped"])) if row.get("skipped") else 0,
        "traffic_quality_result_uri": row["result_uri"],
        "traffic_quality_data_docs_uri": row["data_docs_uri"],
        "traffic_quality_error": row["error"],
        "traffic_quality_duration_s": row.get("duration_s"),
    }


def stored_traffic_quality(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime) -> dict[str, Any]:
    """The interval summary keys of its stored ``traffic_quality`` row (what :func:`check_traffic`
    returned); all None / empty when the interval was not checked."""
    import sqlalchemy as sa

    t = store.traffic_quality
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.tenant == tenant, t.c.pipeline == config.name,
                                              t.c.interval_start == to_utc(start))).mappings().first()
    if row is None:
        return {"traffic_quality_failed": None, "traffic_quality_success": None, "traffic_quality_rows": None,
                "traffic_quality_failures": [], "traffic_quality_skipped": 0, "traffic_quality_result_uri": None,
                "traffic_quality_data_docs_uri": None, "traffic_quality_error": None,
                "traffic_quality_duration_s": None}
    failures = [f.get("message") for f in json.loads(row["failures"])] if row["failures"] else []
    return _summary(dict(row), failures)
