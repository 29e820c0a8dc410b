"""The append-only promotion ledger and the per-pipeline lifecycle lock."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from airloop.core.names import CHAMPION
from airloop.core.pipeline import EnvironmentConfig, PipelineConfig
from airloop.core.store import _dialect_insert, lifecycle_locks, promotion_ledger

MOVES = ("promote", "rollback")


# ----------------------------------------------------------------------------- environments
def ledger_alias(env: EnvironmentConfig) -> str:
    """The alias a move of ``env`` is recorded under: ``champion`` for the serving environment
    (whose moves also move the environment's own alias), else the environment's alias."""
    return CHAMPION if env.serving else env.registry_alias


def moved_aliases(env: EnvironmentConfig) -> list[str]:
    """The registry aliases a move of ``env`` sets."""
    return [env.registry_alias, CHAMPION] if env.serving else [env.registry_alias]


def _ever_in(engine: sa.Engine, config: PipelineConfig, env: EnvironmentConfig, version: str) -> bool:
    rows = ledger_rows(engine, config.name, where=lambda t: sa.and_(
        t.c.alias == ledger_alias(env), t.c.action.in_(MOVES), t.c.to_version == version))
    return bool(rows)


# ------------------------------------------------------------------------------- rollback
def previous_version(engine: sa.Engine, config: PipelineConfig, env: EnvironmentConfig, current: str | None) -> str | None:
    """The version ``env`` held before ``current``, skipping versions it was rolled back from
    (unless promoted into it again since: a fixed, re-gated version is a valid target again).

    Walks the environment's moves newest first; rolling back repeatedly therefore steps further
    back (v3 -> v2 -> v1) instead of toggling between two versions.
    """
    moves = ledger_rows(engine, config.name,
                        where=lambda t: sa.and_(t.c.alias == ledger_alias(env), t.c.action.in_(MOVES)))
    rolled_back_from: set[str] = set()
    for row in moves:  # oldest first: a later promotion of a version clears its rollback
        if row["action"] == "rollback":
            rolled_back_from.add(row["from_version"])
        else:
            rolled_back_from.discard(row["to_version"])
    for row in reversed(moves):
        for candidate in (row["to_version"], row["from_version"]):
            if candidate and candidate != current and candidate not in rolled_back_from:
                return candidate
    return None


# --------------------------------------------------------------------------------- audit
def _effective(row: dict[str, Any], business: bool) -> datetime:
    if business and row.get("data_interval_end"):
        return datetime.fromisoformat(row["data_interval_end"][:10]).replace(tzinfo=timezone.utc)
    moment = row["recorded_at"]
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def version_at(engine: sa.Engine, config_or_pipeline: PipelineConfig | str, alias: str, at: datetime,
               business: bool = False) -> dict[str, Any] | None:
    """The ledger move that put the version serving ``alias`` in place at ``at`` (``None``:
    nothing yet). ``business=True`` orders moves by their run's as-of day (backfills, the
    simulator's calendar), else by when they were recorded (audit)."""
    pipeline = config_or_pipeline if isinstance(config_or_pipeline, str) else config_or_pipeline.name
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    moves = ledger_rows(engine, pipeline, where=lambda t: sa.and_(t.c.alias == alias, t.c.action.in_(MOVES)))
    best, best_key = None, None
    for row in moves:
        key = (_effective(row, business), row["id"])
        if key[0] <= at and (best_key is None or key > best_key):
            best, best_key = row, key
    return best


@dataclass(frozen=True)
class LedgerEntry:
    """One alias move or decision in the promotion ledger."""

    idempotency_key: str
    pipeline: str
    model_name: str
    action: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    dag_id: str | None = None
    run_id: str | None = None
    data_interval_end: str | None = None
    metrics: dict[str, Any] | None = None
    environment: str | None = None


def append_ledger(engine: sa.Engine | sa.Connection, entry: LedgerEntry, recorded_at: datetime | None = None) -> bool:
    """Append ``entry`` unless its idempotency key is already recorded; True if written.

    Given a connection (inside :func:`lifecycle_lock`) the row joins that transaction.
    """
    values = {
        **{k: v for k, v in entry.__dict__.items() if k != "metrics"},
        "metrics": json.dumps(entry.metrics, sort_keys=True, default=str) if entry.metrics is not None else None,
        "recorded_at": recorded_at or datetime.now(timezone.utc),
    }
    if isinstance(engine, sa.Connection):
        stmt = _dialect_insert(engine, promotion_ledger).values(**values).on_conflict_do_nothing()
        return bool(engine.execute(stmt).rowcount)
    try:
        with engine.begin() as conn:
            conn.execute(promotion_ledger.insert().values(**values))
        return True
    except sa.exc.IntegrityError:
        existing = find_ledger(engine, entry.idempotency_key)
        if existing is None:
            raise
        return False


@contextmanager
def lifecycle_lock(engine: sa.Engine, pipeline: str, holder: str) -> Iterator[sa.Connection]:
    """Serialise promotions and rollbacks of ``pipeline`` with a database lock.

    Upserts the pipeline's row of ``lifecycle_locks`` at the start of a transaction and yields
    that transaction's connection: PostgreSQL keeps the row locked, SQLite its write lock, until
    the block ends (commit, or rollback on an exception). A second caller waits (SQLite: up to the
    connection timeout, 30 s). Ledger rows written through the yielded connection commit with it.
    """
    stmt = _dialect_insert(engine, lifecycle_locks).values(
        pipeline=pipeline, holder=holder[:300], acquired_at=datetime.now(timezone.utc))
    stmt = stmt.on_conflict_do_update(index_elements=["pipeline"],
                                      set_={"holder": stmt.excluded.holder, "acquired_at": stmt.excluded.acquired_at})
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
        conn.execute(stmt)
        yield conn


def find_ledger(engine: sa.Engine, idempotency_key: str) -> dict[str, Any] | None:
    """The ledger row with this idempotency key, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(promotion_ledger).where(promotion_ledger.c.idempotency_key == idempotency_key)
        ).mappings().first()
    return _row(row) if row else None


def ledger_rows(engine: sa.Engine, pipeline: str, where: Callable[[sa.Table], Any] | None = None) -> list[dict[str, Any]]:
    """Ledger rows of ``pipeline``, oldest first."""
    query = sa.select(promotion_ledger).where(promotion_ledger.c.pipeline == pipeline)
    if where is not None:
        query = query.where(where(promotion_ledger))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(promotion_ledger.c.id)).mappings().all()
    return [_row(r) for r in rows]


def _row(row) -> dict[str, Any]:
    out = dict(row)
    out["metrics"] = json.loads(out["metrics"]) if out.get("metrics") else None
    return out
