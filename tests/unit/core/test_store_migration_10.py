"""Migration 10 of the monitoring store: ``predictions`` partitioned by UTC day on PostgreSQL (key
``(tenant, pipeline, request_id, ts)``), every stored row moved; SQLite keeps its one table. Run on
SQLite and on the real PostgreSQL server, from a store rewound to version 9 with rows in it."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from airloop.core import partitions, store

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # rows over 4 UTC days, across midnights
REQUEST_KEY = ["tenant", "pipeline", "request_id"]


def build_v9_store(engine: sa.Engine) -> None:
    """A store exactly at schema version 9: migrated, then ``predictions`` re-created as the plain
    table versions 7-9 had (its definition in store.py) and migration 10's record deleted."""
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE predictions")
        store.predictions.create(conn)
        conn.execute(sa.delete(store.schema_migrations).where(store.schema_migrations.c.version == 10))
    partitions.forget(engine)


def v9_rows() -> list[dict[str, Any]]:
    """Rows a version-9 store holds: two tenants, two pipelines, NULLs, errors, four days."""
    rows = []
    for i in range(60):
        rows.append({"request_id": f"r-{i:03d}", "ts": T0 + timedelta(minutes=53 * i),
                     "tenant": ("default", "acme")[i % 2], "pipeline": ("claims_fraud", "tickets")[i % 3 == 0],
                     "model_name": "m", "model_version": str(1 + i % 2), "variant": "champion",
                     "features": f'{{"x": {i}}}', "prediction": str(i % 2), "score": i / 60, "latency_ms": 1.5,
                     "status": "ok" if i % 7 else "error", "error": None if i % 7 else "boom",
                     "out_of_domain": '["x"]' if i % 5 == 0 else None})
    return rows


def stored(engine: sa.Engine) -> list[dict[str, Any]]:
    t = store.predictions
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.request_id)).mappings().all()
    return [{k: _utc(v) for k, v in r.items()} for r in rows]


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def fill(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:  # as a version-9 release wrote them: straight into the plain table
        conn.execute(store.predictions.insert(), rows)
        conn.execute(sa.text("INSERT INTO predictions (request_id, ts, pipeline, model_name, features, status) "
                             "VALUES ('defaults', :ts, 'claims_fraud', 'm', '{}', 'ok')"), {"ts": T0})


def expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    default = {c.name: None for c in store.predictions.columns} | {
        "request_id": "defaults", "ts": T0, "tenant": "default", "pipeline": "claims_fraud", "model_name": "m",
        "variant": "champion", "features": "{}", "status": "ok"}
    return sorted([*rows, default], key=lambda r: r["request_id"])


def test_migration_10_is_the_latest():
    assert [v for v, *_ in store.MIGRATIONS][-1] == 10


def test_a_v9_store_with_rows_is_partitioned_without_losing_a_row(engine):
    build_v9_store(engine)
    rows = v9_rows()
    fill(engine, rows)
    assert sa.inspect(engine).get_pk_constraint("predictions")["constrained_columns"] == REQUEST_KEY

    assert store.migrate(engine) == [10]
    assert stored(engine) == expected(rows)  # every row, every value, server defaults kept
    inspector = sa.inspect(engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("predictions")}
    assert indexes == {"ix_predictions_ts": ["ts"], "ix_predictions_pipeline": ["pipeline"]}
    key = inspector.get_pk_constraint("predictions")["constrained_columns"]
    with engine.connect() as conn:
        partitioned = partitions.is_partitioned(conn, "predictions")
        tables = partitions.partition_tables(conn, "predictions") if partitioned else {}
    if engine.dialect.name == "postgresql":
        assert partitioned and key == [*REQUEST_KEY, "ts"]
        days = sorted({r["ts"].date() for r in rows})
        assert days == [date(2026, 3, d) for d in (1, 2, 3, 4)]
        assert tables == {partitions.partition_name("predictions", d): "attached" for d in days}
        with engine.connect() as conn:  # each row sits in its own day's partition
            for day in days:
                name = partitions.partition_name("predictions", day)
                in_partition = conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()
                assert in_partition == sum(r["ts"].date() == day for r in expected(rows))
        assert not inspector.has_table("_airloop_unpartitioned_predictions")
    else:
        assert not partitioned and key == REQUEST_KEY  # SQLite: one table, key unchanged
    assert store.migrate(engine) == []  # idempotent

    # the writer after the upgrade: a replayed row is not duplicated, a new day gets its partition
    assert store.insert_ignore(engine, store.predictions, rows[:5]) == 0
    later = dict(rows[0], request_id="later", ts=T0 + timedelta(days=5))
    assert store.insert_ignore(engine, store.predictions, [later]) == 1
    assert len(stored(engine)) == len(rows) + 2


def test_rerunning_the_step_changes_nothing(engine):
    build_v9_store(engine)
    rows = v9_rows()
    fill(engine, rows)
    assert store.migrate(engine) == [10]
    with engine.begin() as conn:  # as if the version row had not been written
        conn.execute(sa.delete(store.schema_migrations).where(store.schema_migrations.c.version == 10))
    assert store.migrate(engine) == [10]
    assert stored(engine) == expected(rows)


def test_a_new_store_is_partitioned_directly(engine):
    assert store.migrate(engine) == [v for v, *_ in store.MIGRATIONS]
    with engine.connect() as conn:
        assert partitions.is_partitioned(conn, "predictions") == (engine.dialect.name == "postgresql")
        assert not partitions.is_partitioned(conn, "shadow_predictions")  # shadow answers stay one table
        if engine.dialect.name == "postgresql":
            assert partitions.partition_tables(conn, "predictions") == {}  # created by the first write
    assert store.migrate(engine) == []
