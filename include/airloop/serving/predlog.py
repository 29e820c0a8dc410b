"""Prediction log: serving's prediction rows reach the monitoring store off the request path.

:class:`PredictionLogger` takes rows (dicts of ``store.predictions`` columns) with a
non-blocking :meth:`~PredictionLogger.log` that only appends to a bounded in-memory queue. A
background thread prepares each batch column by column and writes it with one bulk statement
(:mod:`airloop.serving.rowbatch`: ``executemany`` on SQLite, ``COPY`` on PostgreSQL), which is
idempotent by the table's key ``(tenant, pipeline, request_id)``: another pipeline's or tenant's
row with the same request id is a row of its own. Nothing a request does can fail or wait because
of the database:

* **Database down or erroring** (including at startup: the engine itself is created lazily and
  retried with exponential back-off): the batch is written to a *spool file* — JSON lines,
  written to a temporary name, fsync'd, then atomically renamed to ``<time_ns>-<pid>-<tag>.jsonl``
  in ``spool_dir`` (one file per batch). While the database is known to be down, batches go
  straight to the spool without a connection attempt until the back-off delay has passed.
* **Recovery**: before every write the spool is replayed, oldest file first, several small files
  per transaction; a file is deleted only after its rows are committed. Replaying a file twice
  (a crash between commit and delete, or two processes sharing the folder) inserts nothing new,
  because the write ignores stored keys: after recovery no row is lost and none is duplicated. Rows whose
  key is already stored (such a replay, or a client sending a request id again) are not written
  twice: they are counted as ``rows_duplicate`` and logged, never dropped silently.
* **Queue full** (the writer cannot keep up): ``log()`` writes the rows straight to the spool.
* **Rows the database refuses** (a NOT NULL or type violation — never a connection problem):
  isolated by bisection so the good rows of the batch are still written; the bad ones go to
  ``spool_dir/rejected/`` with the error, and are counted.
* **Crash**: a spool file is complete or absent (atomic rename). A temporary file older than
  :data:`STALE_TMP_S` (left by a crash during a spool write) is salvaged line by line.
* **Shutdown**: :meth:`~PredictionLogger.close` drains the queue to the database, or the spool.

Row values are Python objects: the ``json_columns`` (``features``, ``prediction``, ``out_of_domain``) are JSON-encoded
by the writer thread, so the request path never serialises anything; datetimes are stored as
tz-aware UTC (a naive datetime or ISO string is taken as UTC). Missing columns get the column's
server default (``tenant`` "default", ``variant`` "champion") or NULL.

Counters (:meth:`~PredictionLogger.stats`, and :class:`PredictionLogCollector` for a Prometheus
registry): rows logged, written, spooled, overflowed, replayed, rejected, dropped (a spool write
failed too, e.g. disk full — logged as an error), duplicates (of rows already stored under the
same tenant, pipeline and request id), write errors, queue depth, spool files, and whether the
last database write succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa

from airloop.core import store
from airloop.core.files import atomic_write
from airloop.core.timeutil import to_utc
from airloop.serving.rowbatch import PLAIN_TYPES, RowBatch, insert_batch

log = logging.getLogger(__name__)


#: Rows the in-memory queue holds at most; beyond this ``log()`` spools directly.
DEFAULT_MAX_QUEUE_ROWS = 50_000


#: Columns whose values are JSON-encoded by the writer (``out_of_domain``: a list of feature
#: names, or None — stored as NULL — when every input is within the model's domain).
DEFAULT_JSON_COLUMNS = ("features", "prediction", "out_of_domain")


#: With a backlog and the database up, one write takes up to this many times ``batch_size`` rows
#: (fewer commits, each a few fsyncs on SQLite, while the writer catches up).
BACKLOG_BATCHES = 8


#: A spool temporary file older than this was left by a crash and is salvaged.
STALE_TMP_S = 60.0


#: Back-off between database attempts after a failure: doubles from min to max.
RETRY_MIN_S = 0.5


RETRY_MAX_S = 30.0


_SPOOL_SUFFIX = ".jsonl"


_TMP_SUFFIX = ".jsonl.tmp"


_REJECTED_DIR = "rejected"


def spool_dir_for(state_dir: Path, pipeline: str) -> Path:
    """The spool folder of one pipeline's serving process: ``<state_dir>/spool/<pipeline>``."""
    return Path(state_dir) / "spool" / pipeline


def _json_default(value: Any) -> Any:
    """JSON fallback for feature values: dates as ISO, numpy scalars as Python, bytes as text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


#: One encoder for all rows: msgspec's (compact, UTF-8), ~8x cheaper than the standard library's
#: for a 25-field record (1.0 vs 8.1 us), which was a third of the writer thread's CPU per row.
#: Datetimes come out in RFC 3339 (UTC as ``Z``), bytes as base64, non-finite floats as ``null``
#: (serving refuses them in features anyway); numpy scalars and other types via :func:`_json_default`.
_encoder = msgspec.json.Encoder(enc_hook=_json_default).encode


def _encode_json(value: Any) -> str:
    """``value`` as compact JSON; integers and booleans (most predicted labels) without the encoder."""
    cls = value.__class__
    if cls is int:
        return int.__repr__(value)
    if cls is bool:
        return "true" if value else "false"
    return _encoder(value).decode()


def _spool_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return _json_default(value)


def _is_data_error(err: BaseException) -> bool:
    """True when the database refused the *rows* (retrying will not help), not the connection."""
    if isinstance(err, (sa.exc.IntegrityError, sa.exc.DataError)):
        return True
    if isinstance(err, sa.exc.StatementError) and not isinstance(err, sa.exc.DBAPIError):
        return True  # bind/processing errors raised before the database saw the statement
    return isinstance(err, (TypeError, ValueError))


@dataclass(frozen=True)
class LoggerStats:
    """A snapshot of the logger's counters (rows unless named otherwise)."""

    rows_logged: int  # handed to log()
    rows_written: int  # committed to the database from the queue
    rows_spooled: int  # written to spool files (includes rows_overflowed)
    rows_overflowed: int  # spooled directly by log() because the queue was full or closed
    rows_replayed: int  # committed to the database from spool files
    rows_rejected: int  # refused by the database, moved to spool_dir/rejected/
    rows_dropped: int  # lost: the spool write failed too (disk full, permissions)
    rows_duplicate: int  # of rows_written + rows_replayed: key (tenant, pipeline, request_id) already stored
    write_errors: int  # failed database attempts (engine creation, replay or insert)
    queue_depth: int  # rows waiting in memory
    spool_files: int  # spool files waiting for replay
    db_up: bool  # the last database attempt succeeded
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return asdict(self)


class PredictionLogger:
    """Batches rows into a table off the caller's path; spools to disk while the database is away."""

    def __init__(
        self,
        engine_factory: Callable[[], sa.Engine],
        spool_dir: Path,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        *,
        max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
        table: sa.Table = store.predictions,
        json_columns: Sequence[str] = DEFAULT_JSON_COLUMNS,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        autostart: bool = True,
        name: str = "airloop-predlog",
    ) -> None:
        """Nothing is contacted here: ``engine_factory`` is called (and retried) by the writer.

        ``engine_factory`` returns the engine of the monitoring store, e.g.
        ``lambda: store.get_engine(uri)`` (which also migrates the schema); an exception means
        "not reachable yet". With ``autostart=False`` the writer starts on :meth:`start`; rows
        logged before that wait in the queue.
        """
        if batch_size < 1 or max_queue_rows < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and max_queue_rows must be >= 1, flush_interval_s > 0")
        self.engine_factory = engine_factory
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue_rows = max_queue_rows
        self.table = table
        self.name = name
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._columns = [c.name for c in table.columns]
        self._column_set = frozenset(self._columns)
        self._json_columns = frozenset(json_columns)
        self._datetime_columns = frozenset(c.name for c in table.columns if isinstance(c.type, sa.DateTime))
        self._defaults = {
            c.name: c.server_default.arg
            for c in table.columns
            if c.server_default is not None and isinstance(getattr(c.server_default, "arg", None), str)
        }
        # _prepare's plan: every column with its default, then the columns of each conversion
        self._fill = [(name, self._defaults.get(name)) for name in self._columns]
        self._json_names = [n for n in self._columns if n in self._json_columns]
        self._datetime_names = [n for n in self._columns if n in self._datetime_columns and n not in self._json_columns]
        self._plain_names = [n for n in self._columns if n not in self._json_columns and n not in self._datetime_columns]
        # queue state (guarded by _lock / _cond)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[list[Mapping[str, Any]]] = deque()
        self._pending = 0  # rows in the queue
        self._enqueued = 0  # rows ever enqueued
        self._processed = 0  # rows taken from the queue and written, spooled or rejected
        self._flush_gen = 0  # flush() requests
        self._done_gen = 0  # last flush request a completed writer cycle started after
        self._flush_target = 0
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._counts = dict.fromkeys(
            ("rows_logged", "rows_written", "rows_spooled", "rows_overflowed", "rows_replayed",
             "rows_rejected", "rows_dropped", "rows_duplicate", "write_errors"), 0,
        )
        # database state (writer thread; read by stats())
        self._engine: sa.Engine | None = None
        self._db_up = False
        self._last_error: str | None = None
        self._retry_delay = 0.0
        self._retry_at = 0.0
        # spool naming
        self._name_lock = threading.Lock()
        self._last_ns = 0
        self._tag = os.urandom(3).hex()
        self._warned_extra = False
        if autostart:
            self.start()

    @classmethod
    def for_uri(cls, uri: str, spool_dir: Path, **kwargs: Any) -> "PredictionLogger":
        """A logger for the monitoring store at ``uri`` (engine from :func:`store.get_engine`)."""
        return cls(lambda: store.get_engine(uri), spool_dir, **kwargs)

    # ------------------------------------------------------------------ caller side

    def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Hand rows to the writer. Never blocks on I/O and never raises (except when the queue is
        full or the logger closed: then the rows are spooled to disk right here)."""
        batch = rows if isinstance(rows, list) else list(rows)
        n = len(batch)
        if not n:
            return
        with self._lock:
            self._counts["rows_logged"] += n
            if self._accepting and self._pending + n <= self.max_queue_rows:
                self._queue.append(batch)
                self._pending += n
                self._enqueued += n
                if self._pending >= self.batch_size:
                    self._cond.notify()
                return
        self._spool_overflow(batch)

    def spool_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write rows straight to the spool (counted as overflowed), for the writer to replay:
        this logger's, or another process's sharing ``spool_dir``. Never raises."""
        self._spool_overflow(rows if isinstance(rows, list) else list(rows))

    def _spool_overflow(self, batch: list[Mapping[str, Any]]) -> None:
        try:
            prepared = self._prepare_all(batch)
            written = self._spool(prepared)
            with self._lock:
                self._counts["rows_overflowed"] += written
        except Exception:  # never fail the caller
            log.exception("prediction log: could not spool %d overflow rows", len(batch))
            with self._lock:
                self._counts["rows_dropped"] += len(batch)

    def start(self) -> None:
        """Start (or restart after :meth:`close`) the writer thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._accepting = True
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything logged so far now (retrying the database at once, replaying the spool).

        Returns True when it all reached the database and no spool file is left, False otherwise
        (rows are then in the spool, or still queued when ``timeout`` ran out).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return self._pending == 0 and not self._spool_files()
            self._flush_gen += 1
            gen = self._flush_gen
            target = self._enqueued
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            while not (self._done_gen >= gen and self._processed >= target):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return not self._spool_files()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer after it drained the queue (to the database or the spool).

        Rows still queued when ``timeout`` runs out are spooled here; rows logged afterwards are
        spooled directly. Safe to call twice.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._flush_gen += 1  # the first stopping cycle retries the database at once
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("prediction log: writer still busy after %.1fs; spooling the queue", timeout)
        with self._cond:
            leftover = self._take_locked(None)
        if leftover:
            try:
                self._spool(self._prepare_all(leftover))
            except Exception:
                log.exception("prediction log: could not spool %d rows at shutdown", len(leftover))
                with self._lock:
                    self._counts["rows_dropped"] += len(leftover)
            with self._cond:
                self._processed += len(leftover)
                self._cond.notify_all()

    def __enter__(self) -> "PredictionLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> LoggerStats:
        """The counters now."""
        with self._lock:
            counts = dict(self._counts)
            depth = self._pending
        return LoggerStats(
            **counts, queue_depth=depth, spool_files=len(self._spool_files()), db_up=self._db_up,
            last_error=self._last_error,
        )

    # ------------------------------------------------------------------ writer thread

    def _take_locked(self, limit: int | None) -> list[Mapping[str, Any]]:
        """Pop up to ``limit`` rows (all when None) off the queue; the caller holds the lock."""
        out: list[Mapping[str, Any]] = []
        while self._queue and (limit is None or len(out) < limit):
            chunk = self._queue.popleft()
            room = len(chunk) if limit is None else limit - len(out)
            if len(chunk) > room:
                self._queue.appendleft(chunk[room:])
                chunk = chunk[:room]
            out.extend(chunk)
        self._pending -= len(out)
        return out

    def _wake_needed(self) -> bool:
        return (
            self._stopping
            or self._pending >= self.batch_size
            or self._flush_gen > self._done_gen
            or (self._pending > 0 and self._flush_target > self._processed)
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wake_needed():
                    self._cond.wait(self.flush_interval_s)
                gen = self._flush_gen
                forced = gen > self._done_gen
                stopping = self._stopping
                backlog = self._db_up and self._pending > self.batch_size
                batch = self._take_locked(self.batch_size * BACKLOG_BATCHES if backlog else self.batch_size)
            try:
                self._cycle(batch, forced)
            except Exception:  # a bug must not kill the writer; keep the rows
                log.exception("prediction log: writer cycle failed; spooling its %d rows", len(batch))
                try:
                    self._spool(self._prepare_all(batch))
                except Exception:
                    with self._lock:
                        self._counts["rows_dropped"] += len(batch)
            with self._cond:
                self._processed += len(batch)
                if gen > self._done_gen:
                    self._done_gen = gen
                self._cond.notify_all()
                if stopping and self._pending == 0:
                    return

    def _cycle(self, batch: list[Mapping[str, Any]], forced: bool) -> None:
        """One writer step: replay the spool, then write ``batch`` — or spool it."""
        prepared = self._prepare_all(batch)
        if not prepared and not self._spool_files():
            return
        if not forced and time.monotonic() < self._retry_at:
            self._spool(prepared)  # known down: do not wait on a connection attempt
            return
        engine = self._get_engine()
        if engine is None:
            self._spool(prepared)
            return
        try:
            self._replay(engine)
            if prepared:
                written, duplicates = self._insert(engine, prepared)
                with self._lock:
                    self._counts["rows_written"] += written
                    self._counts["rows_duplicate"] += duplicates
                if duplicates:
                    log.warning("prediction log: %d of %d row(s) not written again: their (tenant, pipeline, "
                                "request_id) is already stored (a client re-sent a request id)",
                                duplicates, len(prepared))
        except Exception as err:
            self._mark_failed(err)
            self._spool(prepared)
            return
        self._mark_ok()

    def _get_engine(self) -> sa.Engine | None:
        if self._engine is None:
            try:
                self._engine = self.engine_factory()
            except Exception as err:
                self._mark_failed(err)
                return None
        return self._engine

    def _mark_failed(self, err: BaseException) -> None:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        with self._lock:
            self._counts["write_errors"] += 1
        was_up = self._db_up or self._last_error is None
        self._db_up = False
        self._last_error = message
        self._retry_delay = min(self.retry_max_s, max(self.retry_min_s, self._retry_delay * 2))
        self._retry_at = time.monotonic() + self._retry_delay
        (log.warning if was_up else log.debug)(
            "prediction log: database unavailable (%s); spooling to %s, retry in %.1fs",
            message, self.spool_dir, self._retry_delay,
        )

    def _mark_ok(self) -> None:
        if not self._db_up and self._last_error is not None:
            log.info("prediction log: database reachable again")
        self._db_up = True
        self._last_error = None
        self._retry_delay = 0.0
        self._retry_at = 0.0

    # ------------------------------------------------------------------ rows

    def _prepare(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row with every column, JSON columns encoded, datetimes in UTC."""
        if not self._warned_extra and not row.keys() <= self._column_set:
            self._warned_extra = True
            log.warning("prediction log: ignoring unknown columns %s", sorted(set(row) - self._column_set))
        get = row.get
        out = {name: get(name, default) for name, default in self._fill}
        for name in self._json_names:
            value = out[name]
            if value is not None:
                out[name] = _encode_json(value)
        for name in self._datetime_names:
            value = out[name]
            if value is not None:
                out[name] = to_utc(value)
        for name in self._plain_names:
            value = out[name]
            if value.__class__ not in PLAIN_TYPES and type(value).__module__ == "numpy":
                out[name] = value.item()
        return out

    def _prepare_all(self, rows: list[Mapping[str, Any]]) -> RowBatch:
        """The rows as one :class:`RowBatch`, prepared column by column (:meth:`RowBatch.prepare`:
        the same values as :meth:`_prepare`); when a row cannot be prepared, row by row, and the
        rows that fail are rejected."""
        columns = self._column_set
        if not self._warned_extra and not all(row.keys() <= columns for row in rows):
            self._warned_extra = True
            log.warning("prediction log: ignoring unknown columns %s",
                        sorted({key for row in rows for key in row} - columns))
        try:
            return RowBatch.prepare(self.table, rows, defaults=self._defaults, json_columns=self._json_columns,
                                    encode=_encode_json)
        except Exception:
            pass
        prepared, bad = [], []
        for row in rows:
            try:
                prepared.append(self._prepare(row))
            except Exception as err:
                bad.append((dict(row), err))
        if bad:
            self._reject(bad)
        return RowBatch.from_prepared(self.table, prepared, self._defaults)

    def _insert(self, engine: sa.Engine, rows: RowBatch | list[dict[str, Any]]) -> tuple[int, int]:
        """Insert ``rows`` with one bulk write (:func:`airloop.serving.rowbatch.insert_batch`,
        ignoring keys already stored); rows the database refuses are isolated by bisection and
        rejected. Connection errors propagate. Returns the rows not rejected and, of those, the
        duplicates (same tenant, pipeline and request id as a stored row)."""
        batch = rows if isinstance(rows, RowBatch) else RowBatch.from_prepared(self.table, rows, self._defaults)
        inserted, rejected = self._insert_isolating(engine, batch)
        if rejected:
            self._reject(rejected)
        kept = len(batch) - len(rejected)
        return kept, kept - inserted

    def _insert_isolating(self, engine: sa.Engine, batch: RowBatch
                          ) -> tuple[int, list[tuple[dict, BaseException]]]:
        try:
            return insert_batch(engine, batch), []
        except Exception as err:
            if not _is_data_error(err):
                raise
            if len(batch) == 1:
                return 0, [(batch.rows()[0], err)]
        mid = len(batch) // 2
        first, second = self._insert_isolating(engine, batch[:mid]), self._insert_isolating(engine, batch[mid:])
        return first[0] + second[0], first[1] + second[1]

    def _reject(self, pairs: list[tuple[dict[str, Any], BaseException]]) -> None:
        lines = [
            json.dumps({"row": row, "error": f"{type(err).__name__}: {err}".splitlines()[0][:1000]},
                       default=_spool_default)
            for row, err in pairs
        ]
        log.error("prediction log: %d row(s) refused, kept in %s: %s",
                  len(pairs), self.spool_dir / _REJECTED_DIR, lines[0][:300])
        try:
            self._write_lines(self.spool_dir / _REJECTED_DIR, lines)
        except OSError:
            log.exception("prediction log: could not keep the refused rows")
        with self._lock:
            self._counts["rows_rejected"] += len(pairs)

    # ------------------------------------------------------------------ spool

    def _next_name(self) -> str:
        with self._name_lock:
            ns = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = ns
        return f"{ns:020d}-{os.getpid()}-{self._tag}{_SPOOL_SUFFIX}"

    def _write_lines(self, folder: Path, lines: list[str]) -> Path:
        """Write ``lines`` to a new file in ``folder``: temp name, fsync, atomic rename, fsync dir."""
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / self._next_name()
        data = "".join(line + "\n" for line in lines).encode()
        atomic_write(final, data, fsync=True, tmp=final.with_name(final.name + ".tmp"))  # a stale .tmp is salvaged
        _fsync_dir(folder)
        return final

    def _spool(self, rows: RowBatch | list[dict[str, Any]]) -> int:
        """Append prepared rows to a new spool file; return the rows written (0 if it failed)."""
        if not len(rows):
            return 0
        if isinstance(rows, RowBatch):
            rows = rows.rows()
        try:
            self._write_lines(self.spool_dir, [json.dumps(r, default=_spool_default) for r in rows])
        except Exception:
            log.exception("prediction log: spool write to %s failed; %d rows lost", self.spool_dir, len(rows))
            with self._lock:
                self._counts["rows_dropped"] += len(rows)
            return 0
        with self._lock:
            self._counts["rows_spooled"] += len(rows)
        return len(rows)

    def _spool_files(self) -> list[Path]:
        """Spool files waiting for replay, oldest first."""
        try:
            with os.scandir(self.spool_dir) as entries:
                names = [e.name for e in entries if e.name.endswith(_SPOOL_SUFFIX) and e.is_file()]
        except FileNotFoundError:
            return []
        return [self.spool_dir / n for n in sorted(names)]

    def _read_spool(self, path: Path) -> list[dict[str, Any]] | None:
        """Rows of one spool file (None if it vanished: another process replayed it)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        rows, bad = [], []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for name in self._datetime_columns:
                    if row.get(name) is not None:
                        row[name] = to_utc(row[name])
                rows.append(row)
            except (ValueError, TypeError, AttributeError) as err:
                bad.append(({"line": line}, err))
        if bad:
            self._reject(bad)
        return rows

    def _salvage_stale_tmp(self) -> None:
        """Turn temp files a crashed writer left into spool files (complete lines only)."""
        try:
            with os.scandir(self.spool_dir) as entries:
                stale = [
                    Path(e.path) for e in entries
                    if e.name.endswith(_TMP_SUFFIX) and time.time() - e.stat().st_mtime > STALE_TMP_S
                ]
        except FileNotFoundError:
            return
        for tmp in stale:
            try:
                data = tmp.read_bytes()
            except FileNotFoundError:
                continue
            complete, _, partial = data.rpartition(b"\n")
            good = []
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    json.loads(line)
                    good.append(line)
                except ValueError:
                    pass
            if good:
                self._write_lines(self.spool_dir, good)
            tmp.unlink(missing_ok=True)
            log.warning("prediction log: salvaged %d row(s) from %s (%d partial byte(s) dropped)",
                        len(good), tmp.name, len(partial))

    def _replay(self, engine: sa.Engine) -> None:
        """Write the spool to the database, oldest first; delete files once committed."""
        self._salvage_stale_tmp()
        files = self._spool_files()
        chunk_files: list[Path] = []
        chunk_rows: list[dict[str, Any]] = []
        for i, path in enumerate(files):
            rows = self._read_spool(path)
            if rows is None:
                continue
            chunk_files.append(path)
            chunk_rows.extend(rows)
            if len(chunk_rows) >= self.batch_size or i == len(files) - 1:
                self._commit_replay(engine, chunk_files, chunk_rows)
                chunk_files, chunk_rows = [], []
                if self._stopping:  # shutting down: the rest stays on disk for the next start
                    return
        if chunk_files:
            self._commit_replay(engine, chunk_files, chunk_rows)

    def _commit_replay(self, engine: sa.Engine, files: list[Path], rows: list[dict[str, Any]]) -> None:
        replayed, duplicates = self._insert(engine, rows) if rows else (0, 0)
        for path in files:
            path.unlink(missing_ok=True)
        _fsync_dir(self.spool_dir)
        with self._lock:
            self._counts["rows_replayed"] += replayed
            self._counts["rows_duplicate"] += duplicates
        log.info("prediction log: replayed %d row(s) from %d spool file(s)%s", replayed, len(files),
                 f", {duplicates} already stored (same tenant, pipeline, request id)" if duplicates else "")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


class PredictionLogCollector:
    """Exposes a logger's counters to a prometheus_client registry (read at scrape time).

    ``source`` is a logger (anything with ``stats()``: also
    :class:`airloop.serving.predlog_process.ProcessPredictionLogger`) or a callable returning the
    current one (or None: nothing exported).
    """

    _COUNTERS = {
        "rows_logged": "Prediction rows handed to the logger.",
        "rows_written": "Prediction rows committed to the monitoring store from the queue.",
        "rows_spooled": "Prediction rows written to the local spool (database unavailable or queue full).",
        "rows_overflowed": "Prediction rows spooled directly because the queue was full.",
        "rows_replayed": "Prediction rows committed to the monitoring store from the spool.",
        "rows_rejected": "Prediction rows the database refused (kept under spool/rejected).",
        "rows_dropped": "Prediction rows lost because the spool could not be written.",
        "rows_duplicate": "Prediction rows not written again: same tenant, pipeline and request id already stored.",
        "write_errors": "Failed monitoring-store write attempts.",
    }

    def __init__(self, source: Any,
                 prefix: str = "airloop_predlog") -> None:
        self._source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        logger = self._source if hasattr(self._source, "stats") else self._source()
        if logger is None:
            return
        stats = logger.stats()
        for key, doc in self._COUNTERS.items():
            yield CounterMetricFamily(f"{self.prefix}_{key}", doc, value=getattr(stats, key))
        yield GaugeMetricFamily(f"{self.prefix}_queue_depth", "Prediction rows waiting in memory.",
                                value=stats.queue_depth)
        yield GaugeMetricFamily(f"{self.prefix}_spool_files", "Spool files waiting for replay.",
                                value=stats.spool_files)
        yield GaugeMetricFamily(f"{self.prefix}_db_up", "1 when the last monitoring-store write succeeded.",
                                value=1.0 if stats.db_up else 0.0)
