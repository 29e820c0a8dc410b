"""Migration 8 of the monitoring store: performance-estimate columns of ``monitoring_runs``, the
alert lifecycle columns of ``alerts`` (earlier per-interval rows become closed conditions), the
``alert_evaluations``, ``estimate_checks`` and ``reference_refreshes`` tables, on SQLite and on the real PostgreSQL server.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from airloop.core import store
from tests.unit.core.conftest import column_names, rewind_store

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
ADDED = {"monitoring_runs": ["estimated_performance", "estimated_metric", "estimated_value", "estimated_low",
                             "estimated_high", "estimated_performance_drop", "reference_id"],
         "alerts": ["status", "first_seen", "last_seen", "fire_count", "closed_at", "close_delivery_status",
                    "close_delivery_attempts"]}


def build_v7_store(engine: sa.Engine) -> None:
    """A store exactly at schema version 7: migrated, then what migration 8 adds taken away."""
    rewind_store(engine, 8, ADDED, ['alert_evaluations', 'reference_refreshes', 'estimate_checks'])


def test_migration_8_keeps_old_alerts_as_closed_conditions(engine):
    assert 8 in [v for v, *_ in store.MIGRATIONS]
    build_v7_store(engine)
    assert not any(set(cols) & column_names(engine, t) for t, cols in ADDED.items())
    with engine.begin() as conn:  # an alert and a run written by a release before migration 8
        conn.execute(sa.text("INSERT INTO alerts (dedup_key, tenant, pipeline, interval_start, rule, severity, "
                             "message, raised_at, delivery_status, delivery_attempts) VALUES "
                             "('k', 'default', 'p', :ts, 'input_drift', 'high', 'm', :ts, 'delivered', 1)"), {"ts": T0})
        conn.execute(sa.text("INSERT INTO monitoring_runs (tenant, pipeline, interval_start, interval_end, rows) "
                             "VALUES ('default', 'p', :ts, :ts, 5)"), {"ts": T0})
    assert store.migrate(engine) == [8]
    for table, cols in ADDED.items():
        assert set(cols) <= column_names(engine, table), table
    for name in ("alert_evaluations", "reference_refreshes", "estimate_checks"):
        assert sa.inspect(engine).has_table(name), name
    with engine.connect() as conn:
        row = conn.execute(sa.select(store.alerts)).mappings().one()
        run = conn.execute(sa.select(store.monitoring_runs)).mappings().one()
    assert (row["status"], row["fire_count"], row["close_delivery_status"]) == ("closed", 1, "legacy")
    assert row["first_seen"] is not None and row["first_seen"] == row["last_seen"] == row["interval_start"]
    assert run["rows"] == 5 and run["estimated_value"] is None
    assert store.migrate(engine) == []  # idempotent
    store.upsert(engine, store.monitoring_runs, [{"tenant": "default", "pipeline": "q", "interval_start": T0,
                                                  "interval_end": T0, "rows": 5, "estimated_value": 0.8,
                                                  "estimated_metric": "roc_auc", "reference_id": "training"}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.monitoring_runs.c.estimated_value)
                            .where(store.monitoring_runs.c.pipeline == "q")).scalar_one() == 0.8
