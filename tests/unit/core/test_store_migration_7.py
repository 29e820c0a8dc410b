"""Migration 7 of the monitoring store: the ``out_of_domain`` column of ``predictions`` and
``shadow_predictions``, the out-of-domain shares of ``monitoring_runs`` and the ``traffic_quality``
table, on SQLite and on the real PostgreSQL server.

A store at schema version 6 is the current schema without what migration 7 adds (columns dropped,
table dropped, version row removed); migrating it must add them, keep every row (new columns
NULL), and be idempotent.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from airloop.core import partitions, store
from tests.unit.core.conftest import column_names, rewind_store

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
ADDED = {"predictions": ["out_of_domain"], "shadow_predictions": ["out_of_domain"],
         "monitoring_runs": ["out_of_domain_share", "unseen_category_share", "out_of_domain_features"]}


def build_v6_store(engine: sa.Engine) -> None:
    """A store exactly at schema version 6: migrated, then what migration 7 adds taken away."""
    rewind_store(engine, 7, ADDED, ['traffic_quality'])


def test_migration_7_adds_the_out_of_domain_columns(engine):
    assert 7 in [v for v, *_ in store.MIGRATIONS]
    build_v6_store(engine)
    assert not any(set(cols) & column_names(engine, t) for t, cols in ADDED.items())
    # the rewound store is past migration 10 (day partitions on PostgreSQL): T0's partition first
    partitions.ensure_partitions(engine, "predictions", [T0])
    with engine.begin() as conn:  # a row written by a release before migration 7
        conn.execute(sa.text("INSERT INTO predictions (request_id, ts, tenant, pipeline, model_name, variant, "
                             "features, status) VALUES ('r1', :ts, 'default', 'p', 'p', 'champion', '{}', 'ok')"),
                     {"ts": T0})
    assert store.migrate(engine) == [7]
    for table, cols in ADDED.items():
        assert set(cols) <= column_names(engine, table), table
    assert sa.inspect(engine).has_table("traffic_quality")
    assert [c.name for c in store.traffic_quality.primary_key.columns] == ["tenant", "pipeline", "interval_start"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.predictions.c.request_id, store.predictions.c.out_of_domain)).all() == \
            [("r1", None)]
    assert store.migrate(engine) == []  # idempotent
    # what the new columns hold: a prediction's flagged features, an interval's traffic check
    store.insert_ignore(engine, store.predictions, [{
        "request_id": "r2", "ts": T0, "tenant": "default", "pipeline": "p", "model_name": "p", "variant": "champion",
        "features": '{"hour": 99}', "status": "ok", "out_of_domain": '["hour"]'}])
    store.upsert(engine, store.traffic_quality, [{
        "tenant": "default", "pipeline": "p", "interval_start": T0, "interval_end": T0, "rows": 3, "success": False,
        "failed_expectations": 1}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.predictions.c.out_of_domain)
                            .where(store.predictions.c.request_id == "r2")).scalar_one() == '["hour"]'
        assert conn.execute(sa.select(store.traffic_quality.c.success)).scalar_one() is False


def test_a_new_store_has_them_directly(engine):
    assert store.migrate(engine) == [v for v, *_ in store.MIGRATIONS]
    for table, cols in ADDED.items():
        assert set(cols) <= column_names(engine, table), table
    assert store.migrate(engine) == []
