"""Migration 9 of the monitoring store: the ``label_revisions`` table (first-write-wins labels,
later ones kept and audited), on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from airloop.core import store
from tests.unit.core.conftest import column_names, rewind_store

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
COLUMNS = {"id", "request_id", "tenant", "pipeline", "old_label", "new_label", "actor", "received_at", "applied"}


def build_v8_store(engine: sa.Engine) -> None:
    """A store exactly at schema version 8: migrated, then what migration 9 adds taken away."""
    rewind_store(engine, 9, {}, ["label_revisions"])


def test_migration_9_adds_label_revisions(engine):
    assert 9 in [v for v, *_ in store.MIGRATIONS]
    build_v8_store(engine)
    assert not sa.inspect(engine).has_table("label_revisions")
    with engine.begin() as conn:  # a label written by a release before migration 9
        conn.execute(sa.text("INSERT INTO ground_truth (request_id, tenant, pipeline, label, label_ts, received_at) "
                             "VALUES ('r1', 'default', 'p', '1', :ts, :ts)"), {"ts": T0})
    assert store.migrate(engine) == [9]
    assert column_names(engine, "label_revisions") == COLUMNS
    indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("label_revisions")}
    assert indexes["ix_label_revisions_key"] == ["tenant", "pipeline", "request_id"]
    assert store.migrate(engine) == []  # idempotent
    with engine.begin() as conn:  # the old label is kept; a revision of it can be recorded
        assert conn.execute(sa.select(store.ground_truth.c.label)).scalar_one() == "1"
        conn.execute(store.label_revisions.insert(), [
            {"request_id": "r1", "tenant": "default", "pipeline": "p", "old_label": "1", "new_label": "0",
             "actor": "ingest", "received_at": T0, "applied": True}])
        row = conn.execute(sa.select(store.label_revisions)).mappings().one()
    assert row["id"] >= 1 and row["applied"] is True and row["actor"] == "ingest"


def test_a_new_store_has_it_directly(engine):
    assert store.migrate(engine) == [v for v, *_ in store.MIGRATIONS]
    assert sa.inspect(engine).has_table("label_revisions")
    assert store.migrate(engine) == []
