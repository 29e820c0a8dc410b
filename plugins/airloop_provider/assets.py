"""The closed loop's stages: label ingest, monitoring of one interval, alerts, retrain decision.

Each function works on one data interval ``[start, end)`` of one tenant, writes only rows keyed
by that interval (upserts), and uses business time (event and label timestamps, the ledger's
as-of days), never the wall clock, so a backfill reproduces the scheduled results exactly.
"""

from __future__ import annotations

from typing import Any

from airloop.core.pipeline import PipelineConfig


def retrain_asset_uri(config: PipelineConfig) -> str:
    """The Asset that monitoring updates to request a training run of ``config``."""
    return f"airloop://{config.name}/retrain-requests"


def retrain_request_from_asset_events(events: Any) -> dict[str, Any]:
    """The newest retrain request among triggering asset events (``as_of``, ``reason`` and, for a
    performance drop, ``window_days``), or ``{}``."""
    newest: dict[str, Any] = {}
    for asset_events in (events or {}).values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("as_of") and extra["as_of"] > newest.get("as_of", ""):
                newest = dict(extra)
    return newest


def as_of_from_asset_events(events: Any) -> tuple[str | None, str | None]:
    """(as_of, reason) of the newest retrain request among triggering asset events."""
    newest = retrain_request_from_asset_events(events)
    return newest.get("as_of"), newest.get("reason")
