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


def as_of_from_asset_events(events: Any) -> tuple[str | None, str | None]:
    """(as_of, reason) of the newest retrain request among triggering asset events."""
    newest = None
    for asset_events in (events or {}).values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("as_of") and (newest is None or extra["as_of"] > newest.get("as_of", "")):
                newest = extra
    return (newest or {}).get("as_of"), (newest or {}).get("reason")
