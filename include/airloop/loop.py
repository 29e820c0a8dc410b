"""The closed loop's stages: label ingest, monitoring of one interval, alerts, retrain decision.

Each function works on one data interval ``[start, end)`` of one tenant, writes only rows keyed
by that interval (upserts), and uses business time (event and label timestamps, the ledger's
as-of days), never the wall clock, so a backfill reproduces the scheduled results exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop import store
from airloop.config import PipelineConfig, Settings

log = logging.getLogger(__name__)



def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------------------ label ingest
def ingest_labels(config: PipelineConfig, settings: Settings, start: datetime, end: datetime,
                  tenant: str | None = None) -> dict[str, Any]:
    """Batch-ingest the labels that became known during the interval's performance window
    ``[end - monitoring.performance_window_days, end)`` (at least ``[start, end)``) from the source.

    Ingesting the whole window that the interval's performance is measured on (not only the
    interval) makes each interval self-contained: its result does not depend on which earlier
    intervals ran before it, so a backfill in any order matches the scheduled runs. Upserts make
    the overlap between consecutive intervals harmless.

    For file sources with a ``label_timestamp`` column: the partitions of the
    ``monitoring.label_lookback_days`` before ``end`` are read, rows whose label time falls in the
    window become ``ground_truth`` rows keyed by the id column (the request id used when the
    traffic was served). ``received_at`` is the label time, so re-runs write identical rows.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    from airloop.data import read_partition

    if not config.label_timestamp:
        return {"labels": 0, "reason": "pipeline has no label_timestamp column"}
    start, end = _utc(start), _utc(end)
    start = min(start, end - timedelta(days=config.monitoring.performance_window_days))
    first = (start - timedelta(days=config.monitoring.label_lookback_days)).date()
    rows: list[dict[str, Any]] = []
    day = first
    while day < end.date() or (day == end.date() and end.time() != datetime.min.time()):
        frame = read_partition(config, day, settings)
        day += timedelta(days=1)
        if frame is None or config.label_timestamp not in frame or config.target not in frame:
            continue
        known = frame[(frame[config.label_timestamp] >= start) & (frame[config.label_timestamp] < end)]
        known = known.dropna(subset=[config.target])
        for rid, label, ts in zip(known[config.id_column], known[config.target], known[config.label_timestamp]):
            value = label.item() if hasattr(label, "item") else label
            rows.append({"request_id": str(rid), "tenant": tenant, "pipeline": config.name,
                         "label": json.dumps(value), "label_ts": ts.to_pydatetime(), "received_at": ts.to_pydatetime()})
    engine = store.get_engine(settings.monitoring_db_uri)
    store.upsert(engine, store.ground_truth, rows)
    log.info("%s: ingested %s labels known in [%s, %s)", config.name, len(rows), start, end)
    return {"labels": len(rows)}


# ------------------------------------------------------------------------- champion in time
def champion_at(engine: sa.Engine, pipeline: str, at: datetime) -> str | None:
    """The version that was champion at business time ``at`` (its run's as-of day), from the
    promotion ledger."""
    from airloop.lifecycle import CHAMPION, version_at

    row = version_at(engine, pipeline, CHAMPION, _utc(at), business=True)
    return row["to_version"] if row else None


# ------------------------------------------------------------------------------ monitoring
def monitor(config: PipelineConfig, settings: Settings, start: datetime, end: datetime,
            tenant: str | None = None) -> dict[str, Any]:
    """Monitor one interval against the reference of the version that was champion then.

    Stores per-feature drift rows and the interval summary (upserts), saves the Evidently HTML
    report and logs it to the model version's MLflow run (``monitoring/<tenant>/<day>/``).
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    from airloop import monitoring, registry

    start, end = _utc(start), _utc(end)
    engine = store.get_engine(settings.monitoring_db_uri)
    version = champion_at(engine, config.name, start)
    if version is None:
        log.warning("%s: no champion at %s; nothing to monitor against", config.name, start)
        return {"skipped": "no champion at the interval start", "interval_start": start.isoformat()}
    client = registry.get_client(settings)
    reference = monitoring.load_reference(client, config, version, settings=settings)
    profile = monitoring.load_profile(client, config, version, settings=settings)
    reference_metrics = monitoring.load_reference_metrics(client, config, version)
    summary = monitoring.monitor_interval(
        config, settings, tenant, start, end, version, reference, settings.state_dir / "reports",
        reference_metrics=reference_metrics, engine=engine, profile=profile)
    report = summary.get("report_uri")
    if report and Path(report).is_file():
        run_id = client.get_model_version(config.model_name, version).run_id
        client.log_artifact(run_id, report, artifact_path=f"monitoring/{tenant}/{start:%Y-%m-%d}")
    summary["model_version"] = version
    return summary


# ----------------------------------------------------------------------------------- alerts
def _dedup_key(config: PipelineConfig, tenant: str, rule: str, start: datetime) -> str:
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    return f"{config.name}|{tenant}|{rule}|{_utc(start).isoformat()}"


def record_alerts(config: PipelineConfig, settings: Settings, start: datetime, summary: dict[str, Any],
                  tenant: str | None = None) -> list[dict[str, Any]]:
    """Write the interval's fired alerts to the alert table (once per rule and interval).

    Deduplication: a rule that also fired in the previous interval is an ongoing incident; its
    alert is kept but marked ``ongoing`` and not delivered again.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    engine = store.get_engine(settings.monitoring_db_uri)
    start = _utc(start)
    previous_start = start - _interval_length(summary, start)
    rows = []
    for alert in summary.get("alerts", []):
        ongoing = _fired(engine, _dedup_key(config, tenant, alert["rule"], previous_start))
        rows.append({
            "dedup_key": _dedup_key(config, tenant, alert["rule"], start), "tenant": tenant,
            "pipeline": config.name, "interval_start": start, "rule": alert["rule"],
            "severity": alert["severity"], "message": alert["message"],
            "details": json.dumps({k: alert.get(k) for k in ("metric", "op", "threshold", "observed", "details")},
                                  default=str, sort_keys=True),
            "raised_at": start, "delivery_status": "ongoing" if ongoing else "pending", "delivery_attempts": 0,
        })
    store.insert_ignore(engine, store.alerts, rows)
    return interval_alerts(engine, config, start, tenant)


def _interval_length(summary: dict[str, Any], start: datetime) -> timedelta:
    end = summary.get("interval_end")
    return (datetime.fromisoformat(end) - start) if end else timedelta(days=1)


def _fired(engine: sa.Engine, dedup_key: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(store.alerts.c.id).where(store.alerts.c.dedup_key == dedup_key)).first() is not None


def interval_alerts(engine: sa.Engine, config: PipelineConfig, start: datetime, tenant: str | None = None) -> list[dict[str, Any]]:
    """The alert rows of one interval."""
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    t = store.alerts
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.pipeline == config.name, t.c.tenant == tenant,
                                               t.c.interval_start == _utc(start)).order_by(t.c.id)).mappings().all()
    return [dict(r) for r in rows]


def deliver_alerts(config: PipelineConfig, settings: Settings, start: datetime,
                   senders: dict[str, Callable[[dict[str, Any]], None]], tenant: str | None = None) -> dict[str, Any]:
    """Deliver the interval's pending (or previously failed) alerts through ``senders``.

    Every attempt is recorded (status, attempts, last error). Raises :class:`AlertDeliveryError`
    when any delivery failed, so the orchestrator retries; delivered alerts are not sent twice.
    With no sender configured, alerts stay in the table with status ``no_route``.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    engine = store.get_engine(settings.monitoring_db_uri)
    t = store.alerts
    failures = []
    delivered = 0
    for alert in interval_alerts(engine, config, start, tenant):
        if alert["delivery_status"] not in ("pending", "failed"):
            continue
        if not senders:
            status, error = "no_route", None
        else:
            status, error = "delivered", None
            for name, send in senders.items():
                try:
                    send(alert)
                except Exception as err:  # noqa: BLE001 - any delivery failure is recorded and retried
                    status, error = "failed", f"{name}: {type(err).__name__}: {err}"
                    failures.append(f"{alert['rule']} via {error}")
        with engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == alert["id"]).values(
                delivery_status=status, delivery_attempts=t.c.delivery_attempts + 1, last_error=error))
        delivered += status == "delivered"
    if failures:
        raise AlertDeliveryError("alert delivery failed (will be retried): " + "; ".join(failures))
    return {"delivered": delivered}


class AlertDeliveryError(RuntimeError):
    """At least one alert could not be delivered; the attempt is recorded."""


# ---------------------------------------------------------------------------------- retrain
def decide_retrain(config: PipelineConfig, settings: Settings, start: datetime, end: datetime,
                   summary: dict[str, Any], tenant: str | None = None) -> dict[str, Any]:
    """Request a training run when a retrain rule fired, unless one was requested within the
    cool-down (``monitoring.retrain_cooldown_days`` of business time). The decision is stored
    per interval (a re-run returns the same decision)."""
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    start, end = _utc(start), _utc(end)
    reasons = [a["message"] for a in summary.get("alerts", []) if a.get("retrain")]
    as_of = end.date().isoformat()
    if not reasons:
        return {"retrain": False, "as_of": as_of, "reason": None}
    engine = store.get_engine(settings.monitoring_db_uri)
    t = store.retrain_requests
    cooldown = timedelta(days=config.monitoring.retrain_cooldown_days)
    with engine.connect() as conn:
        earlier = conn.execute(
            sa.select(t.c.interval_start).where(
                t.c.pipeline == config.name, t.c.tenant == tenant, t.c.requested.is_(True),
                t.c.interval_start < start, t.c.interval_start > start - cooldown,
            ).order_by(t.c.interval_start.desc())
        ).scalars().first()
    reason = f"{config.name} monitoring {start:%Y-%m-%d}: " + " | ".join(reasons)
    store.upsert(engine, t, [{"tenant": tenant, "pipeline": config.name, "interval_start": start, "as_of": as_of,
                              "requested": earlier is None, "reason": reason, "suppressed_by": earlier}])
    if earlier is not None:
        log.info("retrain not requested: cool-down since the request of %s", earlier)
        return {"retrain": False, "as_of": as_of, "reason": reason, "suppressed_by": _utc(earlier).isoformat()}
    return {"retrain": True, "as_of": as_of, "reason": reason}


def retrain_asset_uri(config: PipelineConfig) -> str:
    """The Asset that monitoring updates to request a training run of ``config``."""
    return f"airloop://{config.name}/retrain-requests"


def as_of_from_asset_events(events: Any) -> tuple[str | None, str | None]:
    """(as_of, reason) of the newest retrain request among triggering asset events."""
    newest = None
    for asset_events in (events or {}).values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("as_of") and (newest is None or extra["as_of"] > newest.get("as_of", "")):
                newest = extra
    return (newest or {}).get("as_of"), (newest or {}).get("reason")


def interval_of(data_interval_start: datetime, data_interval_end: datetime) -> tuple[datetime, datetime]:
    """The monitored interval of a run (UTC)."""
    return _utc(data_interval_start), _utc(data_interval_end)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[day, day + 1)`` in UTC."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)
