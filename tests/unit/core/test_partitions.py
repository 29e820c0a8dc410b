"""Day partitions of ``predictions`` (PostgreSQL) and the prediction log's retention (both
dialects), on the real PostgreSQL server and SQLite: partitions created before writes (idempotent,
safe when processes race), the writer's idempotency under the partitioned key, retention relative
to a data interval's end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airloop.core import partitions, store
from airloop.serving.rowbatch import COPY_MIN_ROWS, RowBatch, insert_batch
from tests.pg import fresh_database

UTC = timezone.utc
DAY = date(2026, 3, 10)
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.fixture
def pg_uri() -> Iterator[str]:
    with fresh_database() as uri:
        store.migrate(sa.create_engine(uri, poolclass=sa.pool.NullPool))
        yield uri


@pytest.fixture
def migrated(engine: sa.Engine) -> sa.Engine:
    """The conftest's empty store (SQLite file, or a fresh PostgreSQL database), migrated."""
    store.migrate(engine)
    return engine


def row(request_id: str, ts: datetime, **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "ts": ts, "tenant": "default", "pipeline": "claims_fraud",
            "model_name": "claims_fraud", "model_version": "1", "variant": "champion", "features": '{"x": 1}',
            "prediction": "0", "score": 0.2, "latency_ms": 1.0, "status": "ok", "error": None,
            "out_of_domain": None} | extra


def day_rows(days: list[date], per_day: int, prefix: str = "r") -> list[dict[str, Any]]:
    """``per_day`` rows on each day, spread over the day (first at 00:00, one at 23:59:59.999999)."""
    rows = []
    for day in days:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        step = timedelta(days=1) / per_day
        rows += [row(f"{prefix}-{day:%m%d}-{i}", start + i * step) for i in range(per_day - 1)]
        rows.append(row(f"{prefix}-{day:%m%d}-last", start + timedelta(days=1, microseconds=-1)))
    return rows


def count(engine: sa.Engine, where: Any = None) -> int:
    query = sa.select(sa.func.count()).select_from(store.predictions)
    with engine.connect() as conn:
        return conn.execute(query if where is None else query.where(where)).scalar_one()


def attached(engine: sa.Engine) -> list[date]:
    with engine.connect() as conn:
        tables = partitions.partition_tables(conn, "predictions")
    return sorted(partitions.partition_day("predictions", n) for n, state in tables.items() if state == "attached")


# --------------------------------------------------------------------------------------------
# Names and the cutoff
# --------------------------------------------------------------------------------------------


def test_names_and_cutoff():
    assert partitions.partition_name("predictions", DAY) == "predictions_p20260310"
    assert partitions.partition_day("predictions", "predictions_p20260310") == DAY
    assert partitions.partition_day("predictions", "predictions_pkey") is None
    with pytest.raises(ValueError):
        partitions.partition_name('predictions"; DROP TABLE x; --', DAY)
    end = datetime(2026, 3, 11, tzinfo=UTC)
    assert partitions.retention_cutoff(end, 0) is None  # keep everything
    assert partitions.retention_cutoff("2026-03-11T00:00:00Z", 7) == datetime(2026, 3, 4, tzinfo=UTC)
    with pytest.raises(ValueError):
        partitions.retention_cutoff(end, -1)


# --------------------------------------------------------------------------------------------
# Partitions before writes (PostgreSQL)
# --------------------------------------------------------------------------------------------


def test_partitions_are_created_once_and_cached(pg_uri: str):
    engine = sa.create_engine(pg_uri)
    try:
        created = partitions.ensure_partitions(engine, "predictions", [NOON, NOON - timedelta(days=2), None])
        # the rows' days and the day after the newest
        assert created == [DAY - timedelta(days=2), DAY, DAY + timedelta(days=1)]
        assert attached(engine) == created
        assert partitions.ensure_partitions(engine, "predictions", [NOON]) == []  # cached: no query
        other = sa.create_engine(pg_uri)  # another process: nothing cached, nothing left to create
        assert partitions.ensure_partitions(other, "predictions", ["2026-03-10T23:00:00"]) == []
        other.dispose()
        assert partitions.ensure_partitions(engine, "shadow_predictions", [NOON]) == []  # not partitioned
        # each partition holds exactly its UTC day
        store.insert_ignore(engine, store.predictions, [row("a", datetime(2026, 3, 10, tzinfo=UTC)),
                                                        row("b", datetime(2026, 3, 10, 23, 59, 59, 999999, tzinfo=UTC))])
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM predictions_p20260310").scalar_one() == 2
    finally:
        engine.dispose()


def test_processes_racing_for_the_same_days(pg_uri: str):
    """Four engines (separate connections, as separate processes) create the same partitions at
    the same moment, then write: every call succeeds, each day is created exactly once."""
    engines = [sa.create_engine(pg_uri) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    results: list[Any] = [None] * len(engines)
    days = [DAY + timedelta(days=k) for k in range(5)]

    def run(i: int) -> None:
        barrier.wait()
        try:
            created = partitions.ensure_partitions(engines[i], "predictions",
                                                   [datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in days])
            written = store.insert_ignore(engines[i], store.predictions, day_rows(days, 3, prefix=f"p{i}"))
            results[i] = (created, written)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(engines))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(isinstance(r, tuple) for r in results), results
        created = sorted(d for r in results for d in r[0])
        assert created == [*days, days[-1] + timedelta(days=1)]  # once each, whoever won
        assert [r[1] for r in results] == [15] * 4
        assert count(engines[0]) == 60
    finally:
        for eng in engines:
            eng.dispose()


def test_a_dropped_cached_day_is_re_created_on_write(pg_uri: str):
    """A writer caches a day; another process's retention drops it; the writer's next rows of
    that day still land (the cache is forgotten and the partition re-created)."""
    writer, monitor = sa.create_engine(pg_uri), sa.create_engine(pg_uri)
    try:
        assert store.insert_ignore(writer, store.predictions, [row("old-1", NOON)]) == 1
        removed = partitions.apply_retention(monitor, store.predictions, 1, NOON + timedelta(days=2))
        assert removed["partitions_dropped"] == 1 and DAY not in attached(monitor)
        assert store.insert_ignore(writer, store.predictions, [row("old-2", NOON)]) == 1  # cached, yet gone
        assert count(writer) == 1 and DAY in attached(writer)
    finally:
        writer.dispose()
        monitor.dispose()


# --------------------------------------------------------------------------------------------
# The writer's idempotency under the partitioned key (both dialects)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, COPY_MIN_ROWS + 10])  # executemany and COPY
def test_replayed_rows_are_not_duplicated(migrated: sa.Engine, n: int):
    rows = day_rows([DAY, DAY + timedelta(days=1)], n // 2 + 1)[:n]
    batch = RowBatch.from_prepared(store.predictions, rows)
    assert insert_batch(migrated, batch) == n
    assert insert_batch(migrated, RowBatch.from_prepared(store.predictions, rows)) == 0  # a spool replay
    assert store.insert_ignore(migrated, store.predictions, rows) == 0
    assert count(migrated) == n


def test_a_request_id_again_with_another_ts_is_a_duplicate(migrated: sa.Engine):
    """The same (tenant, pipeline, request_id) re-sent with another ts (a client's retry, stamped
    again by serving) is a duplicate on both dialects, though PostgreSQL's stored key includes ts;
    so is a key sent twice in one batch (the earliest ts is kept). More than a day away from its
    first ts, PostgreSQL stores it again (SQLite never)."""
    pg = migrated.dialect.name == "postgresql"
    assert store.insert_ignore(migrated, store.predictions, [row("same", NOON)]) == 1
    assert store.insert_ignore(migrated, store.predictions, [row("same", NOON + timedelta(hours=1))]) == 0
    assert store.insert_ignore(migrated, store.predictions, [row("same", NOON - timedelta(hours=23))]) == 0
    twice = [row("twice", NOON + timedelta(minutes=5)), row("twice", NOON + timedelta(minutes=1))]
    n = COPY_MIN_ROWS + 5
    bulk = [row(f"bulk-{i}", NOON + timedelta(seconds=i)) for i in range(n)]
    assert insert_batch(migrated, RowBatch.from_prepared(store.predictions, twice + bulk)) == n + 1
    resent = [row(f"bulk-{i}", NOON + timedelta(hours=2, seconds=i)) for i in range(n)]
    assert insert_batch(migrated, RowBatch.from_prepared(store.predictions, resent)) == 0
    with migrated.connect() as conn:
        kept = conn.execute(sa.select(store.predictions.c.ts).where(store.predictions.c.request_id == "twice")).scalar_one()
    assert kept.replace(tzinfo=UTC) == NOON + timedelta(minutes=1 if pg else 5)  # SQLite: first write wins
    later = store.insert_ignore(migrated, store.predictions, [row("same", NOON + timedelta(days=3))])
    assert later == (1 if pg else 0)
    assert count(migrated, store.predictions.c.request_id == "same") == (2 if pg else 1)


# --------------------------------------------------------------------------------------------
# Retention (both dialects)
# --------------------------------------------------------------------------------------------


def test_retention_is_relative_to_the_interval_end(migrated: sa.Engine):
    days = [DAY + timedelta(days=k) for k in range(6)]  # 10 .. 15 March
    store.insert_ignore(migrated, store.predictions, day_rows(days, 10))
    end = datetime(2026, 3, 16, tzinfo=UTC)  # the interval [15 March, 16 March)
    assert partitions.apply_retention(migrated, store.predictions, 0, end)["rows_deleted"] == 0  # 0: keep all
    assert count(migrated) == 60

    removed = partitions.apply_retention(migrated, store.predictions, 3, end)  # keep [13 March, 16 March)
    cutoff = datetime(2026, 3, 13, tzinfo=UTC)
    assert removed["cutoff"] == cutoff.isoformat() and removed["retention_days"] == 3
    assert count(migrated, store.predictions.c.ts < cutoff) == 0
    assert count(migrated) == 30  # the last three days, every row of them
    if migrated.dialect.name == "postgresql":  # whole partitions dropped, nothing deleted row by row
        assert removed["days_dropped"] == [d.isoformat() for d in days[:3]] and removed["rows_deleted"] == 0
        assert attached(migrated) == [*days[3:], days[-1] + timedelta(days=1)]
    else:
        assert removed["partitions_dropped"] == 0 and removed["rows_deleted"] == 30
    again = partitions.apply_retention(migrated, store.predictions, 3, end)  # a re-run removes nothing more
    assert (again["partitions_dropped"], again["rows_deleted"]) == (0, 0) and count(migrated) == 30
    # an older interval re-run (a backfill) never removes newer rows
    older = partitions.apply_retention(migrated, store.predictions, 3, end - timedelta(days=2))
    assert (older["partitions_dropped"], older["rows_deleted"]) == (0, 0) and count(migrated) == 30


def test_retention_with_a_cutoff_inside_a_day(migrated: sa.Engine):
    store.insert_ignore(migrated, store.predictions, day_rows([DAY, DAY + timedelta(days=1)], 24))
    removed = partitions.remove_before(migrated, store.predictions, NOON)  # half of 10 March
    assert count(migrated, store.predictions.c.ts < NOON) == 0
    assert count(migrated) == 24 + 12
    assert removed["partitions_dropped"] == 0 and removed["rows_deleted"] == 12


def test_retention_finishes_what_an_interrupted_run_left(pg_uri: str):
    """A partition detached but not dropped (a run stopped between the two) is dropped by the
    next run; an unrelated table whose name only looks alike is left alone."""
    engine = sa.create_engine(pg_uri)
    try:
        store.insert_ignore(engine, store.predictions, day_rows([DAY, DAY + timedelta(days=1)], 4))
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE predictions DETACH PARTITION predictions_p20260310")
            conn.exec_driver_sql("CREATE TABLE predictions_p2026031 (x int)")  # not a partition name
        removed = partitions.remove_before(engine, store.predictions, datetime(2026, 3, 11, tzinfo=UTC))
        assert removed["days_dropped"] == ["2026-03-10"]
        inspector = sa.inspect(engine)
        assert not inspector.has_table("predictions_p20260310") and inspector.has_table("predictions_p2026031")
        assert count(engine) == 4
    finally:
        engine.dispose()
