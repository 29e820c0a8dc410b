"""Tests of airloop.serving.predlog against real databases: SQLite files and the real PostgreSQL server
(a fresh database per module, dropped afterwards). Outages are real too: a closed port, a database
that does not exist yet, a TCP proxy that is cut and restored, a process that dies with a spool."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from airloop.core import store
from airloop.serving.predlog import STALE_TMP_S, PredictionLogCollector, PredictionLogger
from tests.pg import PG_ADMIN, admin_sql, drop_database, fresh_database
from tests.pg import pg_uri as pg_uri_of

CLOSED_PORT_URI = "postgresql+psycopg://postgres@127.0.0.1:1/airloop_unreachable"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    """A fresh PostgreSQL database for this module."""
    with fresh_database() as uri:
        yield uri


@pytest.fixture
def late_db() -> Iterator[tuple[str, str]]:
    """``(name, uri)`` of a PostgreSQL database that does not exist yet (dropped afterwards)."""
    name = f"airloop_test_late_{uuid.uuid4().hex[:12]}"
    uri = pg_uri_of(name)
    try:
        yield name, uri
    finally:
        drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty monitoring store: a SQLite file, or the module's PostgreSQL database truncated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    uri = request.getfixturevalue("pg_uri")
    with store.get_engine(uri).begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions, ground_truth"))
    return uri


def _db_rows(uri: str) -> list[dict[str, Any]]:
    with store.get_engine(uri).connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(store.predictions)).mappings()]


def _ids(uri: str) -> list[str]:
    return sorted(r["request_id"] for r in _db_rows(uri))


def to_utc(value: datetime) -> datetime:
    """A stored timestamp as aware UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# --------------------------------------------------------------------------------------------
# Rows and loggers
# --------------------------------------------------------------------------------------------


def _row(request_id: str, i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts": T0 + timedelta(minutes=i),
        "pipeline": "claims_fraud",
        "model_name": "claims_fraud",
        "model_version": "3",
        "features": {"claim_amount": 100.0 + i, "region": "north", "police_report": None},
        "prediction": i % 2,
        "score": 0.25,
        "latency_ms": 1.5,
        "status": "ok",
        **extra,
    }


def _rows(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [_row(f"{prefix}-{i:05d}", i) for i in range(start, start + n)]


def _logger(uri_or_factory: Any, spool: Path, **kwargs: Any) -> PredictionLogger:
    factory = uri_or_factory if callable(uri_or_factory) else (lambda: store.get_engine(uri_or_factory))
    kwargs.setdefault("flush_interval_s", 0.05)
    kwargs.setdefault("retry_min_s", 0.05)
    kwargs.setdefault("retry_max_s", 0.2)
    return PredictionLogger(factory, spool, **kwargs)


def _spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.jsonl*")) if spool.exists() else []


def _spooled_ids(spool: Path) -> list[str]:
    return sorted(json.loads(line)["request_id"] for f in _spool_files(spool) for line in f.read_text().splitlines())


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def test_rows_reach_the_database_in_batches(db_uri: str, tmp_path: Path) -> None:
    with _logger(db_uri, tmp_path / "spool", batch_size=500) as logger:
        expected = _rows("a", 1234)
        for start in range(0, 1234, 100):  # requests of up to 100 rows
            logger.log(expected[start:start + 100])
        assert logger.flush(20)
        stats = logger.stats()
    assert stats.rows_logged == stats.rows_written == 1234
    assert stats.rows_spooled == stats.rows_replayed == stats.write_errors == stats.queue_depth == 0
    assert stats.db_up and stats.spool_files == 0
    rows = {r["request_id"]: r for r in _db_rows(db_uri)}
    assert sorted(rows) == [r["request_id"] for r in expected]
    stored = rows["a-00007"]
    assert to_utc(stored["ts"]) == T0 + timedelta(minutes=7)
    assert json.loads(stored["features"]) == {"claim_amount": 107.0, "region": "north", "police_report": None}
    assert json.loads(stored["prediction"]) == 1
    assert stored["tenant"] == "default" and stored["variant"] == "champion"  # server defaults
    assert stored["model_version"] == "3" and stored["status"] == "ok" and stored["error"] is None
    assert not _spool_files(tmp_path / "spool")


def test_datetimes_are_stored_as_utc(db_uri: str, tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    with _logger(db_uri, tmp_path / "spool") as logger:
        logger.log([
            _row("naive", ts=datetime(2026, 3, 1, 12, 0)),  # naive: taken as UTC
            _row("offset", ts=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two)),
            _row("iso", ts="2026-03-01T12:00:00Z"),
            _row("feature-date", features={"when": datetime(2026, 1, 2, tzinfo=timezone.utc)}),
        ])
        assert logger.flush(10)
    rows = {r["request_id"]: r for r in _db_rows(db_uri)}
    for key in ("naive", "offset", "iso"):
        assert to_utc(rows[key]["ts"]) == T0, key
    # RFC 3339 (msgspec): UTC as "Z"; datetime.fromisoformat and pandas read it back as the same instant
    assert json.loads(rows["feature-date"]["features"]) == {"when": "2026-01-02T00:00:00Z"}
    assert datetime.fromisoformat(json.loads(rows["feature-date"]["features"])["when"]) == datetime(2026, 1, 2, tzinfo=timezone.utc)


def test_repeated_request_ids_are_written_once(db_uri: str, tmp_path: Path) -> None:
    with _logger(db_uri, tmp_path / "spool") as logger:
        logger.log(_rows("dup", 20))
        assert logger.flush(10)
        logger.log(_rows("dup", 30))  # 20 already known + 10 new
        assert logger.flush(10)
    assert _ids(db_uri) == sorted(r["request_id"] for r in _rows("dup", 30))


def test_rows_the_database_refuses_are_isolated(db_uri: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    rows = _rows("r", 10)
    rows[3]["features"] = None  # NOT NULL violation in the database
    rows[6]["ts"] = "yesterday"  # not a timestamp: refused before the database
    with _logger(db_uri, spool) as logger:
        logger.log(rows)
        assert logger.flush(10)
        stats = logger.stats()
    assert stats.rows_rejected == 2 and stats.rows_written == 8
    assert _ids(db_uri) == sorted(r["request_id"] for i, r in enumerate(rows) if i not in (3, 6))
    rejected = [json.loads(line) for f in (spool / "rejected").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["row"]["request_id"] for r in rejected) == ["r-00003", "r-00006"]
    assert all(r["error"] for r in rejected)


# --------------------------------------------------------------------------------------------
# Outages: spool and replay
# --------------------------------------------------------------------------------------------


def test_closed_port_spools_then_replays_when_reachable(pg_uri: str, tmp_path: Path) -> None:
    with store.get_engine(pg_uri).begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions"))
    spool = tmp_path / "spool"
    target = {"uri": CLOSED_PORT_URI}
    with _logger(lambda: store.get_engine(target["uri"]), spool, batch_size=100) as logger:
        for start in range(0, 300, 60):
            logger.log(_rows("down", 60, start))
        assert logger.flush(10) is False  # nothing reached the database
        stats = logger.stats()
        assert stats.rows_spooled == 300 and stats.rows_written == 0 and stats.write_errors >= 1
        assert not stats.db_up and "127.0.0.1" in stats.last_error and stats.spool_files >= 3
        assert _spooled_ids(spool) == [r["request_id"] for r in _rows("down", 300)]

        target["uri"] = pg_uri  # the database comes back
        logger.log(_rows("up", 40))
        assert logger.flush(10)
        stats = logger.stats()
    assert stats.rows_replayed == 300 and stats.rows_written == 40 and stats.db_up
    ids = _ids(pg_uri)
    assert len(ids) == len(set(ids)) == 340
    assert ids == sorted(r["request_id"] for r in _rows("down", 300) + _rows("up", 40))
    assert _spool_files(spool) == []


def test_database_created_while_serving(late_db: tuple[str, str], tmp_path: Path) -> None:
    name, uri = late_db
    spool = tmp_path / "spool"
    with _logger(uri, spool) as logger:  # the engine cannot even be created yet
        logger.log(_rows("early", 75))
        assert logger.flush(10) is False
        assert logger.stats().rows_spooled == 75
        admin_sql(f'CREATE DATABASE "{name}"')
        logger.log(_rows("late", 25))
        assert logger.flush(10)  # engine created (schema migrated), spool replayed first
        stats = logger.stats()
    assert (stats.rows_replayed, stats.rows_written, stats.rows_logged) == (75, 25, 100)
    assert _ids(uri) == sorted(r["request_id"] for r in _rows("early", 75) + _rows("late", 25))
    assert _spool_files(spool) == []


class TcpProxy:
    """A TCP forwarder to PostgreSQL that can be cut (all connections dropped) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuse new connections and drop the open ones (like a network outage)."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_connection_lost_mid_stream_and_restored(pg_uri: str, tmp_path: Path) -> None:
    """The engine exists and then the database goes away: batches spool; after it is back,
    the spool is replayed — zero rows lost, zero duplicated."""
    store.get_engine(pg_uri)  # schema in place
    with store.get_engine(pg_uri).begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions"))
    pg_host = sa.engine.make_url(PG_ADMIN)
    proxy = TcpProxy((pg_host.host, pg_host.port or 5432))
    proxy.start()
    uri = pg_uri_of(sa.engine.make_url(pg_uri).database, "127.0.0.1", proxy.port)
    engine = sa.create_engine(uri, pool_pre_ping=True)
    spool = tmp_path / "spool"
    try:
        with _logger(lambda: engine, spool, batch_size=50) as logger:
            logger.log(_rows("before", 120))
            assert logger.flush(10)
            proxy.cut()
            for start in range(0, 150, 30):
                logger.log(_rows("during", 30, start))
            assert logger.flush(10) is False
            assert logger.stats().rows_spooled == 150 and not logger.stats().db_up
            proxy.start()
            logger.log(_rows("after", 80))
            assert logger.flush(10)
            stats = logger.stats()
    finally:
        proxy.cut()
        engine.dispose()
    assert (stats.rows_written, stats.rows_spooled, stats.rows_replayed) == (200, 150, 150)
    ids = _ids(pg_uri)
    assert len(ids) == len(set(ids)) == 350
    assert ids == sorted(r["request_id"] for r in _rows("before", 120) + _rows("during", 150) + _rows("after", 80))
    assert _spool_files(spool) == []


_CRASHING_PROCESS = """
import os, sys
from datetime import datetime, timezone
from pathlib import Path
from airloop.serving.predlog import PredictionLogger
spool, uri = Path(sys.argv[1]), sys.argv[2]
logger = PredictionLogger.for_uri(uri, spool, flush_interval_s=0.05)
rows = [{"request_id": f"crash-{i:03d}", "ts": datetime(2026, 3, 2, tzinfo=timezone.utc), "pipeline": "p",
         "model_name": "p", "features": {"x": i}, "prediction": 0, "status": "ok"} for i in range(120)]
logger.log(rows[:70])
logger.log(rows[70:])
assert logger.flush(10) is False  # the database is down: all 120 rows are in the spool
os._exit(3)  # die without close()
"""


def test_spool_of_a_crashed_process_is_replayed_by_a_new_one(db_uri: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_PROCESS, str(spool), CLOSED_PORT_URI],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert len(_spooled_ids(spool)) == 120
    # A spool write the crash interrupted: a temp file with two whole lines and a partial one.
    torn = spool / "00000000000000000001-99999-abcdef.jsonl.tmp"
    lines = [json.dumps({**_row(f"torn-{i}", i), "ts": T0.isoformat(), "features": "{}", "prediction": "0"})
             for i in range(2)]
    torn.write_text("\n".join(lines) + '\n{"request_id": "torn-2", "ts"')
    old = time.time() - STALE_TMP_S - 5
    os.utime(torn, (old, old))

    with _logger(db_uri, spool) as logger:  # nothing logged: the idle writer replays the spool
        assert logger.flush(10)
        stats = logger.stats()
    assert stats.rows_replayed == 122 and stats.rows_logged == 0
    assert _ids(db_uri) == sorted([f"crash-{i:03d}" for i in range(120)] + ["torn-0", "torn-1"])
    assert _spool_files(spool) == []


def test_replaying_a_file_twice_is_harmless(db_uri: str, tmp_path: Path) -> None:
    """A crash between commit and delete leaves a replayed file behind: replaying it again
    (or by two processes sharing the folder) writes nothing twice."""
    spool = tmp_path / "spool"
    with _logger(CLOSED_PORT_URI, spool) as down:
        down.log(_rows("twice", 40))
        assert down.flush(10) is False
    copies = _spool_files(spool)
    kept = {p: p.read_bytes() for p in copies}
    with _logger(db_uri, spool) as up:
        assert up.flush(10)
    for path, data in kept.items():  # as if the deletes had not happened
        path.write_bytes(data)
    with _logger(db_uri, spool) as again:
        assert again.flush(10)
        assert again.stats().rows_replayed == 40
    ids = _ids(db_uri)
    assert len(ids) == len(set(ids)) == 40 and _spool_files(spool) == []


def test_full_queue_spills_to_the_spool(db_uri: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    logger = _logger(db_uri, spool, max_queue_rows=10, autostart=False)
    for i in range(5):
        logger.log(_rows(f"q{i}", 4))  # 8 rows fit, the next 12 overflow
    stats = logger.stats()
    assert stats.queue_depth == 8 and stats.rows_overflowed == stats.rows_spooled == 12
    assert len(_spooled_ids(spool)) == 12
    logger.start()
    try:
        assert logger.flush(10)
        stats = logger.stats()
    finally:
        logger.close()
    assert (stats.rows_written, stats.rows_replayed) == (8, 12)
    assert len(_ids(db_uri)) == 20 and _spool_files(spool) == []


def test_close_drains_to_the_spool_when_the_database_is_down(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    logger = _logger(CLOSED_PORT_URI, spool, flush_interval_s=30)  # the writer would wait long
    logger.log(_rows("shutdown", 33))
    logger.close(timeout=10)
    assert _spooled_ids(spool) == [r["request_id"] for r in _rows("shutdown", 33)]
    logger.log(_rows("late", 2))  # after close: straight to the spool, never lost
    assert len(_spooled_ids(spool)) == 35
    stats = logger.stats()
    assert stats.rows_logged == 35 and stats.rows_spooled == 35 and stats.rows_dropped == 0


def test_log_returns_in_well_under_a_millisecond(tmp_path: Path) -> None:
    """log() only enqueues, whether the database is up (SQLite) or down (closed port)."""
    for uri in (f"sqlite:///{tmp_path / 'fast.db'}", CLOSED_PORT_URI):
        with _logger(uri, tmp_path / f"spool-{uri[:6]}") as logger:
            batches = [[_row(f"fast-{i}", i)] for i in range(1000)]
            started = time.perf_counter()
            for batch in batches:
                logger.log(batch)
            mean_ms = (time.perf_counter() - started) / len(batches) * 1000
            logger.flush(10)
            assert logger.stats().rows_logged == 1000
        print(f"log() mean {mean_ms * 1000:.1f} us ({uri.split(':')[0]})")
        assert mean_ms < 5.0


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_prometheus_collector(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    holder: dict[str, PredictionLogger | None] = {"logger": None}
    registry.register(PredictionLogCollector(lambda: holder["logger"]))
    assert b"airloop_predlog" not in generate_latest(registry)
    with _logger(CLOSED_PORT_URI, tmp_path / "spool") as logger:
        holder["logger"] = logger
        logger.log(_rows("m", 7))
        logger.flush(10)
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples
        }
    assert samples["airloop_predlog_rows_logged_total"] == 7
    assert samples["airloop_predlog_rows_spooled_total"] == 7
    assert samples["airloop_predlog_write_errors_total"] >= 1
    assert samples["airloop_predlog_rows_replayed_total"] == 0
    assert samples["airloop_predlog_queue_depth"] == 0
    assert samples["airloop_predlog_spool_files"] >= 1
    assert samples["airloop_predlog_db_up"] == 0
