"""Monitoring store: migrations and the append-only, idempotent promotion ledger, on SQLite and
on the real PostgreSQL server (a fresh database per run, dropped afterwards)."""

from __future__ import annotations

import sqlalchemy as sa

from airloop.core import store
from airloop.registry import ledger


def entry(key: str, action: str = "promote", to: str = "2") -> ledger.LedgerEntry:
    return ledger.LedgerEntry(idempotency_key=key, pipeline="p", model_name="p", action=action, alias="champion",
                             from_version="1", to_version=to, actor="user:test", reason="because",
                             metrics={"roc_auc": 0.8})


def test_migrations_apply_once(engine):
    assert store.migrate(engine) == [version for version, *_ in store.MIGRATIONS]
    assert store.migrate(engine) == []
    assert {"promotion_ledger", "predictions", "ground_truth", "feature_drift", "monitoring_runs", "alerts"} <= set(
        sa.inspect(engine).get_table_names())


def test_ledger_is_idempotent_and_ordered(engine):
    store.migrate(engine)
    assert ledger.append_ledger(engine, entry("a"))
    assert not ledger.append_ledger(engine, entry("a", to="9"))  # same key: ignored, not rewritten
    assert ledger.append_ledger(engine, entry("b", action="refuse", to="3"))
    rows = ledger.ledger_rows(engine, "p")
    assert [(r["idempotency_key"], r["to_version"]) for r in rows] == [("a", "2"), ("b", "3")]
    assert rows[0]["metrics"] == {"roc_auc": 0.8}
    assert ledger.find_ledger(engine, "b")["action"] == "refuse"
    assert ledger.find_ledger(engine, "zzz") is None


def test_upsert_overwrites_own_rows_only(engine):
    from datetime import datetime, timezone

    store.migrate(engine)
    t0, t1 = datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 2, tzinfo=timezone.utc)
    row = dict(tenant="default", pipeline="p", interval_start=t0, interval_end=t1, rows=10, drift_share=0.1)
    other = {**row, "interval_start": t1, "drift_share": 0.9}
    store.upsert(engine, store.monitoring_runs, [row, other])
    store.upsert(engine, store.monitoring_runs, [{**row, "rows": 12, "drift_share": 0.2}])
    with engine.connect() as conn:
        got = conn.execute(sa.select(store.monitoring_runs.c.rows, store.monitoring_runs.c.drift_share)
                           .order_by(store.monitoring_runs.c.interval_start)).all()
    assert [tuple(r) for r in got] == [(12, 0.2), (10, 0.9)]


def test_insert_ignore_deduplicates_replays(engine):
    from datetime import datetime, timezone

    store.migrate(engine)
    ts = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rows = [dict(request_id=f"r{i}", ts=ts, pipeline="p", model_name="p", features="{}", status="ok") for i in range(3)]
    store.insert_ignore(engine, store.predictions, rows[:2])
    store.insert_ignore(engine, store.predictions, rows)  # replay of a spool holding r0..r2
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.predictions)).scalar() == 3
