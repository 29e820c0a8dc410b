"""The retrain decision of one monitoring interval."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.monitoring.rules import RETRAIN_BY_DEFAULT

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- retrain
def decide_retrain(config: PipelineConfig, settings: Settings, start: datetime, end: datetime,
                   summary: dict[str, Any], tenant: str | None = None) -> dict[str, Any]:
    """Request a training run when a retrain rule fired, unless one was requested within the
    cool-down (``monitoring.retrain_cooldown_days`` of business time). The decision is stored
    per interval (a re-run returns the same decision)."""
    tenant = tenant or config.tenant  # the pipeline's own tenant by default
    start, end = to_utc(start), to_utc(end)
    fired = [a for a in summary.get("alerts", []) if a.get("retrain")]
    reasons = [a["message"] for a in fired]
    as_of = end.date().isoformat()
    if not reasons:
        return {"retrain": False, "as_of": as_of, "reason": None}
    window = retrain_window(config, fired)
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
        return {"retrain": False, "as_of": as_of, "reason": reason, "suppressed_by": to_utc(earlier).isoformat()}
    return {"retrain": True, "as_of": as_of, "reason": reason, "window_days": window}


def retrain_window(config: PipelineConfig, fired: list[dict[str, Any]]) -> int | None:
    """The training window of a retrain the ``fired`` alerts request: ``monitoring.retrain_window_days``
    when one of them is a (realized or estimated) performance drop, else None (the training window)."""
    drop = any(a.get("metric") in RETRAIN_BY_DEFAULT for a in fired)
    return config.monitoring.retrain_window_days if drop else None


def retrain_request(engine: sa.Engine, pipeline: str, start: datetime,
                    tenant: str | None = None) -> dict[str, Any] | None:
    """The retrain request monitoring made for the interval starting at ``start`` (None if none);
    ``tenant`` scopes the read (None: any tenant's, for a pipeline name only one tenant uses)."""
    t = store.retrain_requests
    mine = [t.c.pipeline == pipeline, t.c.requested.is_(True), t.c.interval_start == start]
    if tenant is not None:
        mine.append(t.c.tenant == tenant)
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(*mine)).mappings().first()
    return dict(row) if row else None
