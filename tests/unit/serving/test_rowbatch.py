"""RowBatch and its bulk writer on the real SQLite and PostgreSQL stores: the rows stored are the
rows the per-row path (``PredictionLogger._prepare`` + ``store.insert_ignore``) stores, keys
already stored or sent twice are written once, and rows the database refuses raise SQLAlchemy's
data errors (which the logger isolates)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.serving import rowbatch
from airloop.serving.predlog import PredictionLogger, _encode_json
from airloop.serving.rowbatch import COPY_MIN_ROWS, RowBatch, copy_insert, executemany_insert, insert_batch
from tests.pg import fresh_database


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    with fresh_database() as uri:
        yield uri


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        return store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    eng = store.get_engine(request.getfixturevalue("pg_uri"))
    with eng.begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions, shadow_predictions"))
    return eng


def logger(engine: sa.Engine, tmp_path: Path) -> PredictionLogger:
    return PredictionLogger(lambda: engine, tmp_path / "spool", autostart=False)


def random_rows(rng: random.Random, n: int, prefix: str) -> list[dict[str, Any]]:
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "request_id": f"{prefix}-{i}",
            "ts": rng.choice([now, now - timedelta(days=2), "2026-02-01T10:00:00", datetime(2026, 1, 1, 8)]),
            "pipeline": "claims_fraud", "model_name": "claims_fraud", "model_version": rng.choice(["1", "2"]),
            "features": {"amount": rng.choice([1.5, None, np.float64(2.5)]), "region": rng.choice(["n", "s"]),
                         "age": rng.randint(18, 90)},
            "prediction": rng.choice([0, 1, True, "fraud", 0.25]),
            "score": rng.choice([0.1, None, np.float32(0.5)]), "latency_ms": rng.uniform(0, 5),
            "status": rng.choice(["ok", "ok", "error"]),
            "out_of_domain": rng.choice([None, ["amount"], ["amount", "region"]]),
        }
        if rng.random() < 0.5:
            row["tenant"] = rng.choice(["default", "acme"])
        if rng.random() < 0.3:
            row["variant"] = "challenger"
        if row["status"] == "error":
            row["error"] = "ValueError: boom"
        rows.append(row)
    return rows


def stored(engine: sa.Engine, table: sa.Table = store.predictions) -> dict[tuple, dict[str, Any]]:
    with engine.connect() as conn:
        out = {}
        for r in conn.execute(sa.select(table)).mappings():
            row = dict(r)
            row["ts"] = row["ts"].replace(tzinfo=timezone.utc) if row["ts"].tzinfo is None else row["ts"]
            out[row["tenant"], row["pipeline"], row["request_id"]] = row
        return out


def batch_of(log: PredictionLogger, rows: list[dict[str, Any]], table: sa.Table = store.predictions) -> RowBatch:
    return RowBatch.prepare(table, rows, defaults=log._defaults, json_columns=log._json_columns, encode=_encode_json)


@pytest.mark.parametrize("n", [3, COPY_MIN_ROWS, 700])
def test_rows_equal_the_per_row_path(engine: sa.Engine, tmp_path: Path, n: int) -> None:
    log = logger(engine, tmp_path)
    rng = random.Random(n)
    legacy_rows, bulk_rows = random_rows(rng, n, "legacy"), random_rows(random.Random(n), n, "bulk")
    assert [log._prepare(r) for r in legacy_rows][0]["features"] == batch_of(log, bulk_rows).rows()[0]["features"]
    assert store.insert_ignore(engine, store.predictions, [log._prepare(r) for r in legacy_rows]) == n
    assert insert_batch(engine, batch_of(log, bulk_rows)) == n
    rows = stored(engine)
    legacy = {k[:2] + (k[2].split("-", 1)[1],): v | {"request_id": None} for k, v in rows.items() if "legacy" in k[2]}
    bulk = {k[:2] + (k[2].split("-", 1)[1],): v | {"request_id": None} for k, v in rows.items() if "bulk" in k[2]}
    assert len(legacy) == len(bulk) == n
    assert legacy == bulk


def test_prepare_equals_the_row_by_row_prepare(tmp_path: Path) -> None:
    engine = store.get_engine(f"sqlite:///{tmp_path / 'm.db'}")
    log = logger(engine, tmp_path)
    rows = random_rows(random.Random(1), 200, "r")
    assert batch_of(log, rows).rows() == [log._prepare(r) for r in rows]


def test_duplicates_are_written_once(engine: sa.Engine, tmp_path: Path) -> None:
    log = logger(engine, tmp_path)
    rows = random_rows(random.Random(7), 120, "dup")
    for r in rows:
        r["tenant"] = "default"
    assert insert_batch(engine, batch_of(log, rows)) == 120
    assert insert_batch(engine, batch_of(log, rows)) == 0  # a replay: nothing new
    again = random_rows(random.Random(8), 80, "dup") + random_rows(random.Random(9), 80, "new")
    for r in again:
        r["tenant"] = "default"
    assert insert_batch(engine, batch_of(log, again + again[-10:])) == 80  # sent twice in one batch: once
    assert insert_batch(engine, batch_of(log, again[:10])) == 0  # fewer than COPY_MIN_ROWS
    assert insert_batch(engine, batch_of(log, again[:60])) == 0
    shadow = store.shadow_predictions  # not partitioned: each low-level writer skips stored keys
    assert executemany_insert(engine, batch_of(log, again[:60], shadow)) == 60
    assert executemany_insert(engine, batch_of(log, again[:60], shadow)) == 0
    if engine.dialect.name == "postgresql":
        assert copy_insert(engine, batch_of(log, again[:60], shadow)) == 0
    assert len(stored(engine)) == 200


def test_copy_and_executemany_store_the_same_rows(pg_uri: str, tmp_path: Path) -> None:
    engine = store.get_engine(pg_uri)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions, shadow_predictions"))
    log = logger(engine, tmp_path)
    assert copy_insert(engine, batch_of(log, random_rows(random.Random(3), 90, "a"))) == 90
    assert executemany_insert(engine, batch_of(log, random_rows(random.Random(3), 90, "b"), store.shadow_predictions)
                              ) == 90
    main = {k[:2] + (k[2][2:],): v | {"request_id": None} for k, v in stored(engine).items()}
    shadow = {k[:2] + (k[2][2:],): v | {"request_id": None} for k, v in stored(engine, store.shadow_predictions).items()}
    assert main == shadow and len(main) == 90


def test_refused_rows_raise_data_errors(engine: sa.Engine, tmp_path: Path) -> None:
    log = logger(engine, tmp_path)
    rows = random_rows(random.Random(5), COPY_MIN_ROWS + 10, "bad")
    rows[17]["status"] = None  # NOT NULL
    with pytest.raises((sa.exc.IntegrityError, sa.exc.DataError)):
        insert_batch(engine, batch_of(log, rows))
    assert stored(engine) == {}  # one transaction: nothing of the batch


def test_the_logger_isolates_refused_rows_of_a_bulk_write(engine: sa.Engine, tmp_path: Path) -> None:
    rows = random_rows(random.Random(6), 300, "iso")
    rows[123]["status"] = None
    with PredictionLogger(lambda: engine, tmp_path / "spool", batch_size=1000) as log:
        log.log(rows)
        log.flush()
        stats = log.stats()
    assert stats.rows_rejected == 1 and stats.rows_written == 299
    assert len(stored(engine)) == 299
    assert list((tmp_path / "spool" / "rejected").glob("*.jsonl"))


def test_slices_and_shape() -> None:
    with pytest.raises(ValueError):
        RowBatch(store.predictions, [[1]])
    columns = [[i, i + 1, i + 2] for i in range(len(store.predictions.columns))]
    batch = RowBatch(store.predictions, columns)
    assert len(batch) == 3 and len(batch[1:]) == 2 and batch[1:].rows()[0]["request_id"] == 1
    with pytest.raises(TypeError):
        batch[0]
    assert rowbatch.COPY_MIN_ROWS >= 1
