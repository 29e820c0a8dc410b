"""Migration 6 of the monitoring store: ``predictions``, ``shadow_predictions`` and ``ground_truth``
move from a ``request_id`` primary key to ``(tenant, pipeline, request_id)``, on SQLite (table
rebuild) and on the real PostgreSQL server (a fresh database per test, dropped afterwards).

A store at schema version 5 is built from a frozen copy of the tables as version 5 created them
(below: do not edit them to follow ``store.py``), filled, migrated; every row must survive with its
tenant and pipeline, the new keys and the old indexes must be in place, and the migration must be
idempotent — also when two processes migrate the same store at once.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from airloop.core import store
from tests.pg import fresh_database

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
NEW_KEY = ["tenant", "pipeline", "request_id"]
REKEYED = ("predictions", "shadow_predictions", "ground_truth")


# --------------------------------------------------------------------------------------------
# The schema at version 5, frozen
# --------------------------------------------------------------------------------------------

V5 = sa.MetaData()


def _v5_prediction_columns() -> list[sa.Column]:
    return [
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
        sa.Column("pipeline", sa.String(100), nullable=False, index=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(20)),
        sa.Column("variant", sa.String(50), nullable=False, server_default="champion"),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("prediction", sa.Text),
        sa.Column("score", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text),
    ]


V5_PREDICTIONS = sa.Table("predictions", V5, *_v5_prediction_columns())
V5_SHADOW = sa.Table("shadow_predictions", V5, *_v5_prediction_columns())
V5_GROUND_TRUTH = sa.Table(
    "ground_truth", V5,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("label_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
#: Tables version 5 had that migration 6 does not touch: created from store.py as they are.
UNCHANGED = [store.promotion_ledger, store.feature_drift, store.monitoring_runs, store.alerts,
             store.retrain_requests, store.lifecycle_locks, store.ab_tests, store.ab_test_results]
OLD = {"predictions": V5_PREDICTIONS, "shadow_predictions": V5_SHADOW, "ground_truth": V5_GROUND_TRUTH}
NEW = {"predictions": store.predictions, "shadow_predictions": store.shadow_predictions,
       "ground_truth": store.ground_truth}


def build_v5_store(engine: sa.Engine) -> None:
    """An empty store exactly at schema version 5."""
    with engine.begin() as conn:
        store.schema_migrations.create(conn)
        for table in UNCHANGED:
            table.create(conn)
        V5.create_all(conn)
        conn.execute(store.schema_migrations.insert(), [
            {"version": v, "description": d, "applied_at": T0} for v, d, *_ in store.MIGRATIONS if v <= 5])


def v5_rows() -> dict[str, list[dict[str, Any]]]:
    """Normal rows of a version-5 store (ids unique per table, as the old key forced), over two
    tenants and two pipelines, with NULLs and server defaults in the mix."""
    combos = [("default", "claims_fraud"), ("acme", "claims_fraud"), ("default", "tickets"), ("globex", "tickets")]
    predictions, shadow, truth = [], [], []
    for i in range(40):
        tenant, pipeline = combos[i % 4]
        row = {"request_id": f"r-{i:03d}", "ts": T0 + timedelta(minutes=i), "tenant": tenant, "pipeline": pipeline,
               "model_name": pipeline, "model_version": str(1 + i % 3), "variant": "champion",
               "features": f'{{"x": {i}}}', "prediction": str(i % 2), "score": i / 40,
               "latency_ms": 1.0 + i, "status": "ok", "error": None}
        if i % 10 == 9:
            row |= {"status": "error", "prediction": None, "score": None, "model_version": None, "error": "boom"}
        predictions.append(row)
        if i % 2 == 0:
            shadow.append(row | {"variant": "shadow", "model_version": "9", "score": 1 - i / 40})
        if i % 3 != 2:
            truth.append({"request_id": row["request_id"], "tenant": tenant, "pipeline": pipeline,
                          "label": str(i % 2), "label_ts": T0 + timedelta(days=1, minutes=i),
                          "received_at": T0 + timedelta(days=2, minutes=i)})
    return {"predictions": predictions, "shadow_predictions": shadow, "ground_truth": truth}


def fill(engine: sa.Engine, rows: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as conn:
        for name, table in OLD.items():
            conn.execute(table.insert(), rows[name])
        # one row relying on the server defaults (tenant "default", variant "champion")
        conn.execute(V5_PREDICTIONS.insert().values(request_id="defaults", ts=T0, pipeline="claims_fraud",
                                                    model_name="claims_fraud", features="{}", status="ok"))


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def stored(engine: sa.Engine, name: str) -> list[dict[str, Any]]:
    table = NEW[name]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.request_id)).mappings().all()
    return [{k: _utc(v) for k, v in r.items()} for r in rows]


def expected(rows: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    out = list(rows[name])
    if name == "predictions":
        out.append({"request_id": "defaults", "ts": T0, "tenant": "default", "pipeline": "claims_fraud",
                    "model_name": "claims_fraud", "model_version": None, "variant": "champion", "features": "{}",
                    "prediction": None, "score": None, "latency_ms": None, "status": "ok", "error": None})
    columns = [c.name for c in NEW[name].columns]
    return sorted(({c: r.get(c) for c in columns} for r in out), key=lambda r: r["request_id"])


def assert_new_keys(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    for name in REKEYED:
        # migration 10 partitions predictions by day on PostgreSQL: its key there adds ts
        want = [*NEW_KEY, "ts"] if name == "predictions" and engine.dialect.name == "postgresql" else NEW_KEY
        assert inspector.get_pk_constraint(name)["constrained_columns"] == want, name
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(name)}
        for index in NEW[name].indexes:  # the indexes the old table had are back
            assert indexes.get(index.name) == [c.name for c in index.columns], (name, indexes)
    assert not [t for t in inspector.get_table_names() if t.startswith("_airloop_rekey_")]


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def uri(request: pytest.FixtureRequest, tmp_path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitoring.db'}"
        return
    with fresh_database() as pg:
        yield pg


def _engine(uri: str) -> sa.Engine:
    return sa.create_engine(uri, **({"connect_args": {"timeout": 30}} if uri.startswith("sqlite") else {}))


@pytest.fixture
def engine(uri: str):
    eng = _engine(uri)
    yield eng
    eng.dispose()


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_migration_6_rekeys_every_request_table() -> None:
    assert 6 in [v for v, *_ in store.MIGRATIONS]
    for table in NEW.values():
        assert [c.name for c in table.primary_key.columns] == NEW_KEY


def test_v5_store_is_rekeyed_without_losing_a_row(engine: sa.Engine) -> None:
    build_v5_store(engine)
    rows = v5_rows()
    fill(engine, rows)
    assert sa.inspect(engine).get_pk_constraint("predictions")["constrained_columns"] == ["request_id"]

    assert store.migrate(engine) == [6, 7, 8, 9, 10]
    assert_new_keys(engine)
    for name in REKEYED:
        assert stored(engine, name) == expected(rows, name), name  # every row, every value, tenant + pipeline
    assert store.migrate(engine) == []  # idempotent
    assert_new_keys(engine)
    assert len(stored(engine, "predictions")) == 41

    # what the old key made impossible: the same id under another pipeline and another tenant
    same_id = [dict(rows["predictions"][0], pipeline="tickets"), dict(rows["predictions"][0], tenant="acme")]
    assert store.insert_ignore(engine, store.predictions, same_id) == 2
    assert store.insert_ignore(engine, store.predictions, same_id) == 0  # a replay: duplicates of their keys
    truth = rows["ground_truth"][0]
    store.upsert(engine, store.ground_truth, [dict(truth, pipeline="tickets", label="7")])
    got = {(r["tenant"], r["pipeline"]): r["label"] for r in stored(engine, "ground_truth")
           if r["request_id"] == truth["request_id"]}
    assert got == {(truth["tenant"], truth["pipeline"]): truth["label"], (truth["tenant"], "tickets"): "7"}
    # the server defaults survived the rebuild
    with engine.begin() as conn:
        conn.execute(store.predictions.insert().values(request_id="defaults-2", ts=T0, pipeline="p", model_name="p",
                                                       features="{}", status="ok"))
        assert conn.execute(sa.select(store.predictions.c.tenant, store.predictions.c.variant)
                            .where(store.predictions.c.request_id == "defaults-2")).one() == ("default", "champion")


def test_rerunning_the_step_on_a_migrated_store_changes_nothing(engine: sa.Engine) -> None:
    build_v5_store(engine)
    rows = v5_rows()
    fill(engine, rows)
    assert store.migrate(engine) == [6, 7, 8, 9, 10]
    with engine.begin() as conn:  # as if the version row had not been written
        conn.execute(sa.delete(store.schema_migrations).where(store.schema_migrations.c.version == 6))
    assert store.migrate(engine) == [6]
    assert_new_keys(engine)
    for name in REKEYED:
        assert stored(engine, name) == expected(rows, name), name


def test_a_new_store_gets_the_new_keys_directly(engine: sa.Engine) -> None:
    assert store.migrate(engine) == [v for v, *_ in store.MIGRATIONS]
    assert_new_keys(engine)
    assert store.migrate(engine) == []


def test_two_processes_migrating_at_once(uri: str) -> None:
    """Two engines (separate connections, as two processes have) migrate one v5 store at the
    same moment: the step runs once, no row is lost, both return without error."""
    setup = _engine(uri)
    build_v5_store(setup)
    rows = v5_rows()
    fill(setup, rows)
    setup.dispose()
    engines = [_engine(uri) for _ in range(2)]
    barrier = threading.Barrier(len(engines))
    results: list[Any] = [None] * len(engines)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.migrate(engines[i])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert all(isinstance(r, list) for r in results), results
        assert sorted(v for r in results for v in r) == [6, 7, 8, 9, 10]  # applied exactly once
        with engines[0].connect() as conn:
            versions = conn.execute(sa.select(store.schema_migrations.c.version)).scalars().all()
        assert sorted(versions) == [v for v, *_ in store.MIGRATIONS]
        assert_new_keys(engines[0])
        for name in REKEYED:
            assert stored(engines[0], name) == expected(rows, name), name
    finally:
        for eng in engines:
            eng.dispose()
