"""The closed loop's stages: label ingest, monitoring of one interval, alerts, retrain decision.

Each function works on one data interval ``[start, end)`` of one tenant, writes only rows keyed
by that interval (upserts), and uses business time (event and label timestamps, the ledger's
as-of days), never the wall clock, so a backfill reproduces the scheduled results exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc


# ----------------------------------------------------------------------------------- alerts
def _dedup_key(config: PipelineConfig, tenant: str, rule: str, start: datetime) -> str:
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    return f"{config.name}|{tenant}|{rule}|{to_utc(start).isoformat()}"


def record_alerts(config: PipelineConfig, settings: Settings, start: datetime, summary: dict[str, Any],
                  tenant: str | None = None) -> list[dict[str, Any]]:
    """Write the interval's fired alerts to the alert table (once per rule and interval).

    Deduplication: a rule that also fired in the previous interval is an ongoing incident; its
    alert is kept but marked ``ongoing`` and not delivered again.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    engine = store.get_engine(settings.monitoring_db_uri)
    start = to_utc(start)
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
                                               t.c.interval_start == to_utc(start)).order_by(t.c.id)).mappings().all()
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
