"""Monitoring store: the promotion ledger (and, later, predictions, drift results, alerts).

One schema for both dialects: SQLite (embedded default, a file in the state folder) and
PostgreSQL (production). Tables are SQLAlchemy Core objects; the schema is versioned in
``schema_migrations`` and upgraded by :func:`migrate`, which every entry point calls (it is a
no-op when up to date). All statements are parameterised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

promotion_ledger = sa.Table(
    "promotion_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(300), nullable=False, unique=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),  # promote | refuse | rollback | deploy
    sa.Column("alias", sa.String(50), nullable=False),
    sa.Column("from_version", sa.String(20)),
    sa.Column("to_version", sa.String(20)),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("data_interval_end", sa.String(40)),
    sa.Column("metrics", sa.Text),  # JSON
)

#: Ordered schema versions: (version, description, tables created by it).
MIGRATIONS: list[tuple[int, str, list[sa.Table]]] = [
    (1, "promotion ledger", [promotion_ledger]),
]


@lru_cache(maxsize=8)
def get_engine(uri: str) -> sa.Engine:
    """Engine for the monitoring store (cached per URI, schema migrated on first use)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if uri.startswith("sqlite"):
        from pathlib import Path

        path = uri.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    engine = sa.create_engine(uri, **kwargs)
    migrate(engine)
    return engine


def migrate(engine: sa.Engine) -> list[int]:
    """Apply pending migrations; return the versions applied (empty when up to date)."""
    schema_migrations.create(engine, checkfirst=True)
    with engine.connect() as conn:
        done = set(conn.execute(sa.select(schema_migrations.c.version)).scalars())
    applied = []
    for version, description, tables in MIGRATIONS:
        if version in done:
            continue
        with engine.begin() as conn:
            for table in tables:
                table.create(conn, checkfirst=True)
            try:
                conn.execute(
                    schema_migrations.insert().values(
                        version=version, description=description, applied_at=datetime.now(timezone.utc)
                    )
                )
            except sa.exc.IntegrityError:  # another process migrated concurrently
                continue
        applied.append(version)
        log.info("monitoring store: applied migration %s (%s)", version, description)
    return applied


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


def append_ledger(engine: sa.Engine, entry: LedgerEntry, recorded_at: datetime | None = None) -> bool:
    """Append ``entry`` unless its idempotency key is already recorded; True if written."""
    values = {
        **{k: v for k, v in entry.__dict__.items() if k != "metrics"},
        "metrics": json.dumps(entry.metrics, sort_keys=True, default=str) if entry.metrics is not None else None,
        "recorded_at": recorded_at or datetime.now(timezone.utc),
    }
    try:
        with engine.begin() as conn:
            conn.execute(promotion_ledger.insert().values(**values))
        return True
    except sa.exc.IntegrityError:
        existing = find_ledger(engine, entry.idempotency_key)
        if existing is None:
            raise
        return False


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
