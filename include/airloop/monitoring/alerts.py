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
#: ``close_delivery_status`` of alert rows from releases before the lifecycle (left alone).
LEGACY = "legacy"


def _key(config: PipelineConfig, tenant: str, rule: str, first_seen: datetime) -> str:
    return f"{config.name}|{tenant}|{rule}|{to_utc(first_seen).isoformat()}"


def _states(config: PipelineConfig, summary: dict[str, Any]) -> dict[str, bool | None]:
    """Each rule's state in the interval (True fired, False clear, None not judged)."""
    from airloop.monitoring.rules import rule_states

    states = dict(summary.get("rule_states") or rule_states(config, summary))
    for alert in summary.get("alerts", []):
        states[alert["rule"]] = True
    return states


def _conditions(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conditions of one rule, from its evaluations in interval order: a run of intervals in
    which it fired (intervals not judged neither extend nor end it), closed by the first interval
    judged without it firing."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for ev in evaluations:
        if ev["fired"]:
            if current is None:
                current = {"first_seen": ev["interval_start"], "fire_count": 0, "closed_at": None}
                out.append(current)
            current |= {"last_seen": ev["interval_start"], "fire_count": current["fire_count"] + 1, "last": ev}
        elif current is not None:
            current["closed_at"] = ev["interval_start"]
            current = None
    return out


def record_alerts(config: PipelineConfig, settings: Settings, start: datetime, summary: dict[str, Any],
                  tenant: str | None = None) -> list[dict[str, Any]]:
    """Record the interval's rule evaluations and bring the alert rows (conditions) up to date.

    One alert row per ongoing condition: ``status`` open/closed, ``first_seen``/``last_seen`` (the
    first and last interval it fired), ``fire_count`` and ``closed_at`` (the interval judged
    without it firing). A rule firing again on the next judged interval updates the open row.
    The rows are derived from the ``alert_evaluations`` of every interval in interval order, so
    re-running an interval changes nothing and a backfill in any order ends with the rows of the
    in-order run (a filled gap may split or merge conditions; a row replaced so keeps its sent
    notices). Returns the conditions this interval fired or closed (:func:`interval_alerts`).
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    engine = store.get_engine(settings.monitoring_db_uri)
    start = to_utc(start)
    end = to_utc(datetime.fromisoformat(summary["interval_end"])) if summary.get("interval_end") else \
        start + timedelta(days=1)
    fired = {a["rule"]: a for a in summary.get("alerts", [])}
    severities = {r.name: r.severity for r in config.monitoring.alerts}
    ev = store.alert_evaluations
    rows, unjudged = [], []
    for rule, state in sorted(_states(config, summary).items()):
        if state is None:
            unjudged.append(rule)
            continue
        alert = fired.get(rule, {})
        rows.append({"tenant": tenant, "pipeline": config.name, "rule": rule, "interval_start": start,
                     "interval_end": end, "fired": bool(state), "severity": alert.get("severity") or
                     severities.get(rule, "medium"), "observed": alert.get("observed"),
                     "message": alert.get("message"), "details": json.dumps(
                         {k: alert.get(k) for k in ("metric", "op", "threshold", "observed", "details")},
                         default=str, sort_keys=True) if alert else None})
    with engine.begin() as conn:
        if unjudged:
            conn.execute(sa.delete(ev).where(ev.c.tenant == tenant, ev.c.pipeline == config.name,
                                             ev.c.interval_start == start, ev.c.rule.in_(unjudged)))
    store.upsert(engine, ev, rows)
    for rule in sorted({r["rule"] for r in rows} | set(unjudged)):
        _reconcile(engine, config, tenant, rule)
    return interval_alerts(engine, config, start, tenant)


def _reconcile(engine: sa.Engine, config: PipelineConfig, tenant: str, rule: str) -> None:
    """Make the rule's alert rows the conditions of its evaluations (one transaction)."""
    ev, t = store.alert_evaluations, store.alerts
    with engine.begin() as conn:
        evaluations = [dict(r) for r in conn.execute(sa.select(ev).where(
            ev.c.tenant == tenant, ev.c.pipeline == config.name, ev.c.rule == rule).order_by(ev.c.interval_start))
            .mappings()]
        existing = [dict(r) for r in conn.execute(sa.select(t).where(
            t.c.tenant == tenant, t.c.pipeline == config.name, t.c.rule == rule,
            sa.or_(t.c.close_delivery_status.is_(None), t.c.close_delivery_status != LEGACY))
            .order_by(t.c.id)).mappings()]
        for row in existing:
            row["first_seen"], row["last_seen"] = to_utc(row["first_seen"]), to_utc(row["last_seen"])
        kept: set[int] = set()
        for cond in _conditions(evaluations):
            first, last, closed = (to_utc(cond["first_seen"]), to_utc(cond["last_seen"]),
                                   to_utc(cond["closed_at"]) if cond["closed_at"] is not None else None)
            key = _key(config, tenant, rule, first)
            same = [r for r in existing if r["dedup_key"] == key]
            overlapping = same or [r for r in existing if r["first_seen"] <= last and r["last_seen"] >= first]
            opened_sent = [r for r in overlapping if r["delivery_status"] not in ("pending", "failed")]
            closed_sent = [r for r in overlapping if r["close_delivery_status"] not in (None, "pending", "failed")
                           and r.get("closed_at") is not None and closed is not None
                           and to_utc(r["closed_at"]) == closed]
            last_ev = cond["last"]
            values = {"dedup_key": key, "tenant": tenant, "pipeline": config.name, "interval_start": first,
                      "rule": rule, "severity": last_ev["severity"], "message": last_ev["message"] or rule,
                      "details": last_ev["details"], "raised_at": first, "status": "closed" if closed else "open",
                      "first_seen": first, "last_seen": last, "fire_count": cond["fire_count"], "closed_at": closed}
            if same:
                row = same[0]
                if closed is None:
                    values |= {"close_delivery_status": None, "close_delivery_attempts": 0}
                elif row.get("closed_at") is None or to_utc(row["closed_at"]) != closed:
                    values |= {"close_delivery_status": "pending", "close_delivery_attempts": 0}
                conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
                kept.add(row["id"])
                continue
            values |= {"delivery_status": opened_sent[0]["delivery_status"] if opened_sent else "pending",
                       "delivery_attempts": opened_sent[0]["delivery_attempts"] if opened_sent else 0,
                       "close_delivery_status": (closed_sent[0]["close_delivery_status"] if closed_sent else "pending")
                       if closed else None, "close_delivery_attempts": 0}
            conn.execute(t.insert().values(**values))
        gone = [r["id"] for r in existing if r["id"] not in kept and r["dedup_key"] not in
                {_key(config, tenant, rule, to_utc(c["first_seen"])) for c in _conditions(evaluations)}]
        if gone:  # conditions a re-evaluated or filled-in interval split, merged or removed
            conn.execute(sa.delete(t).where(t.c.id.in_(gone)))


def interval_alerts(engine: sa.Engine, config: PipelineConfig, start: datetime, tenant: str | None = None) -> list[dict[str, Any]]:
    """The conditions one interval fired (``first_seen <= start <= last_seen``) or closed."""
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    t = store.alerts
    start = to_utc(start)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(
            t.c.pipeline == config.name, t.c.tenant == tenant,
            sa.or_(sa.and_(t.c.first_seen <= start, t.c.last_seen >= start), t.c.closed_at == start))
            .order_by(t.c.id)).mappings().all()
    return [dict(r) for r in rows]


def pending_notices(engine: sa.Engine, config: PipelineConfig, tenant: str | None = None) -> list[dict[str, Any]]:
    """Alert rows with an undelivered notice: opened (``delivery_status``) or closed
    (``close_delivery_status``) pending or failed; each with ``event`` "opened" or "closed"."""
    tenant = tenant or config.tenant
    t = store.alerts
    undelivered = ("pending", "failed")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.pipeline == config.name, t.c.tenant == tenant, sa.or_(
            t.c.delivery_status.in_(undelivered), t.c.close_delivery_status.in_(undelivered))).order_by(t.c.id)
        ).mappings().all()
    out = []
    for row in rows:
        if row["delivery_status"] in undelivered:
            out.append(dict(row) | {"event": "opened"})
        if row["close_delivery_status"] in undelivered:
            closed = dict(row) | {"event": "closed"}
            closed["message"] = (f"resolved: {row['rule']} cleared at {to_utc(row['closed_at']):%Y-%m-%d} after "
                                 f"{row['fire_count']} interval(s) since {to_utc(row['first_seen']):%Y-%m-%d}; "
                                 f"last: {row['message']}")
            out.append(closed)
    return out


def deliver_alerts(config: PipelineConfig, settings: Settings, start: datetime,
                   senders: dict[str, Callable[[dict[str, Any]], None]], tenant: str | None = None) -> dict[str, Any]:
    """Deliver the undelivered notices (:func:`pending_notices`: a condition opened, or closed)
    through ``senders`` — one notice when a condition opens and one when it closes, none while
    it goes on. ``start`` is the interval delivering (kept for the task's signature).

    Every attempt is recorded (status, attempts, last error). Raises :class:`AlertDeliveryError`
    when any delivery failed, so the orchestrator retries; delivered notices are not sent twice.
    With no sender configured, notices stay in the table with status ``no_route``.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    engine = store.get_engine(settings.monitoring_db_uri)
    t = store.alerts
    failures = []
    delivered = 0
    for alert in pending_notices(engine, config, tenant):
        if not senders:
            status, error = "no_route", None
        else:
            status, error = "delivered", None
            for name, send in senders.items():
                try:
                    send(alert)
                except Exception as err:  # noqa: BLE001 - any delivery failure is recorded and retried
                    status, error = "failed", f"{name}: {type(err).__name__}: {err}"
                    failures.append(f"{alert['rule']}{' (closed)' if alert['event'] == 'closed' else ''} via {error}")
        values = ({"delivery_status": status, "delivery_attempts": t.c.delivery_attempts + 1}
                  if alert["event"] == "opened" else
                  {"close_delivery_status": status,
                   "close_delivery_attempts": sa.func.coalesce(t.c.close_delivery_attempts, 0) + 1})
        with engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == alert["id"]).values(**values, last_error=error))
        delivered += status == "delivered"
    if failures:
        raise AlertDeliveryError("alert delivery failed (will be retried): " + "; ".join(failures))
    return {"delivered": delivered}


class AlertDeliveryError(RuntimeError):
    """At least one alert could not be delivered; the attempt is recorded."""
