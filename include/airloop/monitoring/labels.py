"""Batch ingest of delayed ground-truth labels."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.data.sources import read_partition

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ first write wins
#: Actor of the corrections a label file of the monitoring DAG applies.
INGEST_ACTOR = "ingest"

#: Request ids per ``IN (...)`` lookup.
_CHUNK = 500


def same_label(a: str, b: str) -> bool:
    """Whether two stored labels (JSON texts) are the same value (``1`` and ``1.0`` are, ``true`` and ``1`` not)."""
    if a == b:
        return True
    try:
        x, y = json.loads(a), json.loads(b)
    except ValueError:
        return False
    if isinstance(x, bool) or isinstance(y, bool):
        return isinstance(x, bool) and isinstance(y, bool) and x == y
    return x == y


@dataclass
class LabelWrite:
    """What :func:`write_labels` did with each row."""

    #: labels stored for a prediction that had none
    written: int = 0
    #: the stored label sent again (nothing changed)
    unchanged: int = 0
    #: different labels applied as corrections (``correct=True``), each with an applied revision
    corrected: int = 0
    #: different labels refused (``correct=False``), each kept as a revision not applied:
    #: ``{"index", "request_id", "stored", "sent"}`` (labels as JSON texts)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


#: PostgreSQL: the stored label of each id, one probe of the key's index per id (a scalar subquery).
#: ``request_id IN (...)`` was planned as a scan of every label of the tenant and pipeline with
#: the ids as a filter while ``ground_truth`` had no statistics yet (a bulk ingest into a fresh
#: table): quadratic, 20 minutes for 220k labels in chunks of 20k (``benchmarks/predlog_scale.py``).
_PG_STORED = sa.text(
    "SELECT k.id, (SELECT g.label FROM ground_truth g WHERE g.tenant = :tenant AND g.pipeline = :pipeline "
    "AND g.request_id = k.id) FROM unnest(CAST(:ids AS VARCHAR[])) AS k(id)")

#: Ids per PostgreSQL lookup (one array parameter).
_PG_CHUNK = 10_000


def _stored_labels(conn: sa.Connection, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    g = store.ground_truth
    by_scope: dict[tuple[str, str], list[str]] = {}
    for tenant, pipeline, rid in keys:
        by_scope.setdefault((tenant, pipeline), []).append(rid)
    found: dict[tuple[str, str, str], str] = {}
    if conn.dialect.name == "postgresql":
        for (tenant, pipeline), ids in by_scope.items():
            for i in range(0, len(ids), _PG_CHUNK):
                params = {"tenant": tenant, "pipeline": pipeline, "ids": ids[i:i + _PG_CHUNK]}
                found.update({(tenant, pipeline, rid): label for rid, label in conn.execute(_PG_STORED, params)
                              if label is not None})
        return found
    for (tenant, pipeline), ids in by_scope.items():
        for i in range(0, len(ids), _CHUNK):
            query = sa.select(g.c.request_id, g.c.label).where(
                g.c.tenant == tenant, g.c.pipeline == pipeline, g.c.request_id.in_(ids[i:i + _CHUNK]))
            found.update({(tenant, pipeline, rid): label for rid, label in conn.execute(query)})
    return found


def write_labels(engine: sa.Engine, rows: list[dict[str, Any]], *, actor: str, correct: bool = False) -> LabelWrite:
    """Store ``ground_truth`` rows first-write-wins, in one transaction: a row for a prediction
    without a label is inserted; the same label again changes nothing; a different label is never
    a silent overwrite — with ``correct`` it replaces the stored one (label, ``label_ts``,
    ``received_at``) and a ``label_revisions`` row records it as applied, without it the stored
    label stays and the new one is kept as a revision not applied (once per distinct label).
    ``actor`` (``admin``, ``tenant:<name>``, ``ingest``, ...) goes into every revision."""
    out = LabelWrite()
    if not rows:
        return out
    g, revisions = store.ground_truth, store.label_revisions
    keyed = [((r["tenant"], r["pipeline"], r["request_id"]), r) for r in rows]
    with engine.begin() as conn:
        stored = _stored_labels(conn, [key for key, _ in keyed])
        fresh = [row for key, row in keyed if key not in stored]
        if fresh:
            conn.execute(store.dialect_insert(conn, g).on_conflict_do_nothing(), fresh)
            # a concurrent writer may have stored another label first: that one won
            now_stored = _stored_labels(conn, [key for key, _ in keyed if key not in stored])
        else:
            now_stored = {}
        for index, (key, row) in enumerate(keyed):
            if key not in stored:
                if same_label(now_stored.get(key, row["label"]), row["label"]):
                    out.written += 1
                    continue
                stored[key] = now_stored[key]
            old = stored[key]
            if same_label(old, row["label"]):
                out.unchanged += 1
                continue
            revision = {"request_id": key[2], "tenant": key[0], "pipeline": key[1], "old_label": old,
                        "new_label": row["label"], "actor": actor, "received_at": row["received_at"],
                        "applied": correct}
            if correct:
                conn.execute(g.update().where(g.c.tenant == key[0], g.c.pipeline == key[1], g.c.request_id == key[2])
                             .values(label=row["label"], label_ts=row["label_ts"], received_at=row["received_at"]))
                conn.execute(revisions.insert(), [revision])
                stored[key] = row["label"]
                out.corrected += 1
                continue
            out.conflicts.append({"index": index, "request_id": key[2], "stored": old, "sent": row["label"]})
            pending = conn.execute(sa.select(sa.func.count()).select_from(revisions).where(
                revisions.c.tenant == key[0], revisions.c.pipeline == key[1], revisions.c.request_id == key[2],
                revisions.c.new_label == row["label"], revisions.c.old_label == old,
                revisions.c.applied.is_(False))).scalar_one()
            if not pending:  # a client retrying the same refused label is kept once
                conn.execute(revisions.insert(), [revision])
    return out


# ------------------------------------------------------------------------------ label ingest
def ingest_labels(config: PipelineConfig, settings: Settings, start: datetime, end: datetime,
                  tenant: str | None = None) -> dict[str, Any]:
    """Batch-ingest the labels that became known during the interval's performance window
    ``[end - monitoring.performance_window_days, end)`` (at least ``[start, end)``) from the source.

    Ingesting the whole window that the interval's performance is measured on (not only the
    interval) makes each interval self-contained: its result does not depend on which earlier
    intervals ran before it, so a backfill in any order matches the scheduled runs. Upserts make
    the overlap between consecutive intervals harmless: labels are first-write-wins
    (:func:`write_labels`), so a label already stored is left alone, and a file whose label of an
    id differs from the stored one applies it as a correction with actor ``ingest``, audited in
    ``label_revisions`` (``corrected`` in the result) — never a silent overwrite.

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
    written = write_labels(engine, list(rows.values()), actor=INGEST_ACTOR, correct=True)
    log.info("%s (tenant %s): ingested %s labels known in [%s, %s) (%d new, %d corrected)", config.name, tenant,
             len(rows), start, end, written.written, written.corrected)
    result: dict[str, Any] = {"labels": len(rows)}
    if written.corrected:
        log.warning("%s (tenant %s): %d label(s) of the files differ from the stored ones: applied as corrections "
                    "(label_revisions, actor %s)", config.name, tenant, written.corrected, INGEST_ACTOR)
        result["corrected"] = written.corrected
    if duplicates:
        log.warning("%s (tenant %s): %d label row(s) repeat an id of the window; the latest label of each id is kept",
                    config.name, tenant, duplicates)
        result["duplicate_ids"] = duplicates
    return result
