"""Tests of airloop.serving.predlog_process: the prediction log's writer in a real process of its
own, writing real SQLite files and the real PostgreSQL server; crashes are real (SIGKILL of the
writer, ``os._exit`` of the process that logs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.serving import predlog_process
from airloop.serving.predlog_process import ProcessPredictionLogger
from tests.unit.serving.test_predlog import (  # noqa: F401 (db_uri and pg_uri: the same store fixtures)
    CLOSED_PORT_URI,
    _ids,
    _rows,
    _spooled_ids,
    db_uri,
    pg_uri,
)


def _logger(uri: str, spool: Path, **kwargs) -> ProcessPredictionLogger:
    kwargs.setdefault("flush_interval_s", 0.05)
    return ProcessPredictionLogger(uri, spool, **kwargs)


def _writer_pid(logger: ProcessPredictionLogger) -> int:
    writer = logger._writer
    assert writer is not None, "no writer process running"
    return writer.proc.pid


def test_rows_reach_the_database_through_the_writer_process(db_uri: str, tmp_path: Path) -> None:
    expected = _rows("p", 1234)
    with _logger(db_uri, tmp_path / "spool", batch_size=200) as logger:
        for i in range(0, len(expected), 100):
            logger.log(expected[i:i + 100])
        assert logger.flush(60)
        pid = _writer_pid(logger)
        assert pid != os.getpid()
        stats = logger.stats()
    assert stats.rows_logged == 1234 and stats.rows_written == 1234 and stats.queue_depth == 0
    assert stats.rows_dropped == 0 and stats.db_up
    assert _ids(db_uri) == sorted(r["request_id"] for r in expected)
    with store.get_engine(db_uri).connect() as conn:  # the same values the thread writer stores
        row = conn.execute(sa.select(store.predictions).where(store.predictions.c.request_id == "p-00007")).one()
    assert row.ts.replace(tzinfo=None) == expected[7]["ts"].replace(tzinfo=None)
    assert json.loads(row.features) == {"claim_amount": 107.0, "region": "north", "police_report": None}
    assert json.loads(row.prediction) == 1 and row.tenant == "default" and row.variant == "champion"


def test_the_writer_gets_no_secrets_and_no_uri_in_its_arguments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIRLOOP_ADMIN_TOKEN", "admin-secret-token")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "fernet-secret")
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    with _logger(uri, tmp_path / "spool") as logger:
        logger.log(_rows("s", 3))
        assert logger.flush(60)
        pid = _writer_pid(logger)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not any(v.startswith((b"AIRLOOP_ADMIN_TOKEN=", b"AIRFLOW__CORE__FERNET_KEY=")) for v in environ)
    assert b"monitoring.db" not in argv


def test_a_killed_writer_is_replaced_and_its_loss_counted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(predlog_process, "RESTART_MIN_S", 0.05)
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    with _logger(uri, tmp_path / "spool") as logger:
        logger.log(_rows("a", 50))
        assert logger.flush(60)
        first = _writer_pid(logger)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while logger._writer is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # past the back-off
        logger.log(_rows("b", 50))
        assert logger.flush(60)
        assert _writer_pid(logger) != first
        stats = logger.stats()
    # everything the first writer took had been flushed: nothing lost, all 100 rows stored
    assert stats.rows_dropped == 0 and stats.rows_written == 100
    assert len(_ids(uri)) == 100


def test_a_writer_that_cannot_start_leaves_the_rows_in_the_spool(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(predlog_process, "START_TIMEOUT_S", 20.0)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the writer exits at once
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    spool = tmp_path / "spool"
    logger = _logger(uri, spool)
    logger.log(_rows("x", 40))
    assert not logger.flush(30)
    assert len(_spooled_ids(spool)) == 40  # kept on disk, not lost
    assert "did not start" in (logger.stats().last_error or "")
    logger.close()
    monkeypatch.undo()
    with _logger(uri, spool) as again:  # a working writer replays them
        assert again.flush(60)
    assert len(_ids(uri)) == 40 and _spooled_ids(spool) == []


def test_the_writer_drains_when_the_logging_process_crashes(db_uri: str, tmp_path: Path) -> None:
    """The process that logs dies (``os._exit``) right after handing rows over: its writer sees
    its stdin close, writes the rows and ends."""
    code = (
        "import os, sys\n"
        "from airloop.serving.predlog_process import ProcessPredictionLogger\n"
        "from tests.unit.serving.test_predlog import _rows\n"
        "logger = ProcessPredictionLogger(sys.argv[1], sys.argv[2], flush_interval_s=5)\n"
        "logger.log(_rows('c', 300))\n"
        "import time\n"
        "deadline = time.monotonic() + 60\n"
        "while (logger._writer is None or logger._writer.sent < 300) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(logger._writer.proc.pid, flush=True)\n"
        "os._exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, db_uri, str(tmp_path / "spool")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 3, done.stderr[-2000:]
    writer = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 60
    while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_ids(db_uri)) == 300


def test_database_down_the_writer_spools_and_a_later_writer_replays(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with _logger(CLOSED_PORT_URI, spool) as logger:
        logger.log(_rows("d", 25))
        assert not logger.flush(30)
        assert not logger.stats().db_up
    assert len(_spooled_ids(spool)) == 25
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    with _logger(uri, spool) as logger:
        assert logger.flush(60)
        assert logger.stats().rows_replayed == 25
    assert len(_ids(uri)) == 25


def test_full_queue_spools_here(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    spool = tmp_path / "spool"
    logger = _logger(uri, spool, max_queue_rows=10, autostart=False)  # no sender: the queue fills
    logger.log(_rows("q", 8))
    logger.log(_rows("r", 8))  # 16 > 10: spooled by this process
    assert logger.stats().rows_overflowed == 8
    logger.start()
    assert logger.flush(60)
    logger.close()
    assert len(_ids(uri)) == 16 and _spooled_ids(spool) == []
