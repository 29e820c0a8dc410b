"""The monitoring history of a pipeline as text lines, one per monitored interval (the demo summary)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.timeutil import to_utc

if TYPE_CHECKING:  # pragma: no cover
    import sqlalchemy as sa


def _fig(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def daily_lines(engine: sa.Engine, config: PipelineConfig, tenant: str | None = None) -> list[str]:
    """Per monitored interval: version, drift reference, the estimate of the judged metric (and,
    for binary pipelines, F1 at the served threshold) with its band against the realized figure of
    the interval's own rows once labelled, the *trailing* realized figure (the version's rows
    labelled so far within ``monitoring.performance_window_days``, judged once there are
    ``monitoring.min_labelled_rows`` of them, as the performance rules judge it: it shows a
    retrained version's recovery weeks before its own days are labelled), the
    alerts it opened and closed, and the retrain request."""
    import sqlalchemy as sa

    tenant = tenant or config.tenant
    runs, alerts, requests = store.monitoring_runs, store.alerts, store.retrain_requests
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c.pipeline == config.name, runs.c.tenant == tenant)
                            .order_by(runs.c.interval_start)).mappings().all()
        conds = conn.execute(sa.select(alerts.c.rule, alerts.c.first_seen, alerts.c.closed_at).where(
            alerts.c.pipeline == config.name, alerts.c.tenant == tenant, alerts.c.first_seen.is_not(None))).all()
        asked = {to_utc(r.interval_start): r.requested for r in conn.execute(sa.select(
            requests.c.interval_start, requests.c.requested).where(
            requests.c.pipeline == config.name, requests.c.tenant == tenant))}
    from airloop.monitoring.estimates import latest_checks

    checked = latest_checks(engine, config.name, tenant)
    opened: dict = {}
    closed: dict = {}
    for rule, first, end in conds:
        opened.setdefault(to_utc(first), []).append(rule)
        if end is not None:
            closed.setdefault(to_utc(end), []).append(rule)
    binary = config.task == "binary_classification"
    head = "    day        v   reference          estimated (band)          realized"
    lines = [head + ("   | F1 est (band) realized" if binary else "") + "   | trailing (labelled)   alerts / retrain"]
    for row in rows:
        start = to_utc(row["interval_start"])
        est = json.loads(row["estimated_performance"]) if row["estimated_performance"] else None
        check = checked.get(start)
        real = json.loads(check["realized_performance"]) if check else {}
        metric = row["estimated_metric"] or "-"
        text = f"    {start:%Y-%m-%d} v{row['model_version'] or '-':<3} {(row['reference_id'] or '-'):<18} "
        if est:
            text += (f"{metric} {_fig(est['value'])} ({_fig(est['low'])}..{_fig(est['high'])})  "
                     f"{_fig(real.get(metric))}")
            if binary:
                f1 = est["metrics"].get("f1", {})
                text += f"   | {_fig(f1.get('value'))} ({_fig(f1.get('low'))}..{_fig(f1.get('high'))}) {_fig(real.get('f1'))}"
        else:
            text += "no estimate".ljust(44)
        trailing = json.loads(row["performance"]) if row["performance"] else {}
        judged = row["estimated_metric"] or config.training.metric
        text += f"   | {_fig(trailing.get(judged))} (n={row['labelled_rows'] or 0})"
        events = [f"+{r}" for r in sorted(opened.get(start, []))] + [f"-{r}" for r in sorted(closed.get(start, []))]
        if start in asked:
            events.append("RETRAIN" if asked[start] else "retrain (cool-down)")
        lines.append(text + ("   " + " ".join(events) if events else ""))
    return lines
