"""Batch ingest of delayed ground-truth labels."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.data.sources import read_partition

log = logging.getLogger(__name__)


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
    window become ``ground_truth`` rows keyed by (tenant, pipeline, the id column — the request id
    used when the traffic was served): another pipeline over the same entities, or another tenant
    with overlapping ids, keeps its own labels. ``received_at`` is the label time, so re-runs write
    identical rows. An id appearing more than once in the window is one key: its latest label is
    kept and the others are counted (``duplicate_ids`` in the result) and logged.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default

    if not config.label_timestamp:
        return {"labels": 0, "reason": "pipeline has no label_timestamp column"}
    start, end = to_utc(start), to_utc(end)
    start = min(start, end - timedelta(days=config.monitoring.performance_window_days))
    first = (start - timedelta(days=config.monitoring.label_lookback_days)).date()
    rows: dict[str, dict[str, Any]] = {}
    duplicates = 0
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
            row = {"request_id": str(rid), "tenant": tenant, "pipeline": config.name,
                   "label": json.dumps(value), "label_ts": ts.to_pydatetime(), "received_at": ts.to_pydatetime()}
            earlier = rows.get(row["request_id"])
            if earlier is not None:
                duplicates += 1
                if earlier["label_ts"] > row["label_ts"]:
                    continue
            rows[row["request_id"]] = row
    engine = store.get_engine(settings.monitoring_db_uri)
    store.upsert(engine, store.ground_truth, list(rows.values()))
    log.info("%s (tenant %s): ingested %s labels known in [%s, %s)", config.name, tenant, len(rows), start, end)
    if duplicates:
        log.warning("%s (tenant %s): %d label row(s) repeat an id of the window; the latest label of each id is kept",
                    config.name, tenant, duplicates)
        return {"labels": len(rows), "duplicate_ids": duplicates}
    return {"labels": len(rows)}
