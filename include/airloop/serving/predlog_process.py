"""The prediction log's writer in a process of its own, beside the serving process.

:class:`ProcessPredictionLogger` has the interface of :class:`~airloop.serving.predlog.PredictionLogger`
(``log``, ``start``, ``flush``, ``close``, ``stats``) and is what serving uses unless
``AIRLOOP_PREDLOG_PROCESS=0``. ``log()`` encodes the rows with msgpack in the caller's thread
(~0.7 us per row) and queues the bytes; a sender thread hands them to the writer process through
its stdin (the GIL released while the pipe takes them). The writer process
(``python -m airloop.serving.predlog_process``) runs a plain :class:`PredictionLogger`: the
bulk writes, spool, replay, rejection and counters documented in :mod:`airloop.serving.predlog`
are that logger's. What moves out of the serving process is the writer's ~20 us of CPU per row
(preparing the columns, SQLite or ``COPY``), which, in a thread, shared the GIL with the event loop
and the model calls (``benchmarks/README.md``, serving).

Reliability, beyond the logger's own:

* **Started on the first rows** (an app that never predicts starts none), with the environment
  of the ``predlog`` role (:func:`airloop.core.settings.process_environ`: none of the generated
  secrets); the store URI goes over its stdin, never in its argv. It ignores SIGINT/SIGTERM sent
  to the serving process's group and ends when its stdin closes: on the serving process's
  shutdown (:meth:`ProcessPredictionLogger.close`) *or crash*, after draining its queue to the
  database or the spool. So a serving crash no longer loses the rows that were queued.
* **Queue full, writer not running, or not starting**: rows go straight to the same spool folder
  from the serving process; the writer replays it like its own.
* **Writer dies**: rows it had taken but not yet written or spooled are counted as
  ``rows_dropped`` (at most that many; logged as an error); it is started again on the next rows
  after a back-off (rows spooled meanwhile).
* Counters (:meth:`ProcessPredictionLogger.stats`) add the writer's (sent every
  :data:`STATS_INTERVAL_S` and with every flush) to this process's; ``queue_depth`` counts rows
  queued here, in the pipe and in the writer's queue.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from airloop.core import store
from airloop.core.settings import process_environ
from airloop.serving.predlog import DEFAULT_MAX_QUEUE_ROWS, LoggerStats, PredictionLogger

log = logging.getLogger(__name__)

#: Seconds between the writer's counter snapshots.
STATS_INTERVAL_S = 0.25

#: Back-off before starting a writer again after it died or failed to start (doubles up to the max).
RESTART_MIN_S = 1.0

RESTART_MAX_S = 30.0

#: How long the first frame of a new writer (its counters) may take: its imports, on a busy machine.
START_TIMEOUT_S = 60.0

# frames: a 4-byte length (of the payload), a 1-byte kind, the msgpack payload
_HEADER = struct.Struct("<IB")
_CONFIG, _ROWS, _FLUSH, _CLOSE, _STATS, _ACK = range(1, 7)

_encode = msgspec.msgpack.Encoder(enc_hook=lambda v: v.item() if type(v).__module__ == "numpy" else str(v)).encode
_decode = msgspec.msgpack.Decoder().decode

#: The writer's counters that add up over its restarts (the others are its state now).
_SUMMED = ("rows_written", "rows_spooled", "rows_overflowed", "rows_replayed", "rows_rejected", "rows_dropped",
           "rows_duplicate", "write_errors")


def _frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), kind) + payload


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next frame of ``stream`` (None at its end)."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    size, kind = _HEADER.unpack(header)
    payload = _read_exactly(stream, size) if size else b""
    return None if payload is None else (kind, payload)


class _Writer:
    """One writer process and what this side knows of it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.sent = 0  # rows handed to its stdin
        self.snapshot: dict[str, Any] = {}  # its last counters
        self.ready = threading.Event()  # its first counters arrived, or its stdout closed
        self.alive = True
        self.registered = False  # it answered and became the logger's writer


class ProcessPredictionLogger:
    """A :class:`PredictionLogger` in a writer process, fed through a pipe (module docstring)."""

    def __init__(self, uri: str, spool_dir: Path, *, batch_size: int = 500, flush_interval_s: float = 0.5,
                 max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS, table: Any = store.predictions,
                 autostart: bool = True, name: str = "airloop-predlog") -> None:
        """Nothing is started or contacted here (the writer starts on the first rows or flush)."""
        if batch_size < 1 or max_queue_rows < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and max_queue_rows must be >= 1, flush_interval_s > 0")
        self.spool_dir = Path(spool_dir)
        self.table = table
        self.name = name
        self.max_queue_rows = max_queue_rows
        self._config = {"uri": uri, "spool_dir": str(self.spool_dir), "table": table.name, "batch_size": batch_size,
                        "flush_interval_s": flush_interval_s, "max_queue_rows": max_queue_rows, "name": name}
        # spools from this process (queue full, writer down); never opens the database
        self._local = PredictionLogger(_no_engine, self.spool_dir, table=table, autostart=False, name=name)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[tuple[int, int, bytes]] = deque()  # (kind, rows, payload)
        self._pending = 0  # rows queued here
        self._logged = 0
        self._lost = 0  # rows a dead writer had taken and not accounted for
        self._base = dict.fromkeys(_SUMMED, 0)  # counters of writers that ended
        self._writer: _Writer | None = None
        self._restart_at = 0.0
        self._restart_delay = 0.0
        self._acks: dict[int, dict[str, Any]] = {}
        self._next_ack = 0
        self._accepting = True
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._last_error: str | None = None
        self._ended_state: dict[str, Any] = {}  # db_up / last_error of the last writer that ended
        if autostart:
            self.start()

    @classmethod
    def for_uri(cls, uri: str, spool_dir: Path, **kwargs: Any) -> "ProcessPredictionLogger":
        """The same constructor (the writer process opens ``uri`` with :func:`store.get_engine`)."""
        return cls(uri, spool_dir, **kwargs)

    # ------------------------------------------------------------------ caller side

    def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue rows for the writer process; never blocks on I/O (a full queue spools them here)."""
        batch = rows if isinstance(rows, list) else list(rows)
        n = len(batch)
        if not n:
            return
        try:
            payload = _encode(batch)
        except Exception:  # a value msgpack cannot take: the local logger prepares (or rejects) it
            with self._lock:
                self._logged += n
            self._local.spool_rows(batch)
            return
        with self._lock:
            self._logged += n
            if self._accepting and self._pending + n <= self.max_queue_rows:
                self._queue.append((_ROWS, n, payload))
                self._pending += n
                self._cond.notify()
                return
        self._local.spool_rows(batch)

    def start(self) -> None:
        """Start (or restart after :meth:`close`) the sender thread; the writer starts on the first rows."""
        with self._lock:
            if self._sender is not None and self._sender.is_alive():
                return
            self._accepting = True
            self._stopping = False
            self._sender = threading.Thread(target=self._send_loop, name=f"{self.name}-sender", daemon=True)
            self._sender.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Everything logged so far written now (the writer's :meth:`PredictionLogger.flush`).

        True when it all reached the database and no spool file is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            idle = self._writer is None and self._pending == 0
            if self._sender is None or not self._sender.is_alive() or (idle and not self._local.stats().spool_files):
                return self._pending == 0 and not self._local.stats().spool_files
            ack = self._next_ack = self._next_ack + 1
            self._queue.append((_FLUSH, 0, _encode({"id": ack, "timeout": timeout})))
            self._cond.notify_all()
            while ack not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return bool(self._acks.pop(ack).get("ok"))

    def close(self, timeout: float = 10.0) -> None:
        """Hand every queued row to the writer, let it drain (to the database or the spool) and end.
        Rows it could not take in ``timeout`` are spooled here. Safe to call twice."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._accepting = False
            self._stopping = True
            sender = self._sender
            self._cond.notify_all()
        if sender is not None:
            sender.join(max(0.1, deadline - time.monotonic()))
        with self._cond:
            leftover = [payload for kind, _, payload in self._queue if kind == _ROWS]
            self._queue.clear()
            self._pending = 0
            writer = self._writer
        for payload in leftover:
            self._local.spool_rows(_decode(payload))
        if writer is not None:
            self._end_writer(writer, max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> "ProcessPredictionLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> LoggerStats:
        """This process's counters plus the writer's (its last snapshot)."""
        local = self._local.stats()
        with self._lock:
            writer, base, lost, pending, logged = self._writer, dict(self._base), self._lost, self._pending, self._logged
            snap = dict(writer.snapshot) if writer is not None else {}
            state = snap or self._ended_state
            in_pipe = max(0, writer.sent - snap.get("rows_logged", 0)) if writer is not None else 0
        counts = {key: base[key] + snap.get(key, 0) for key in _SUMMED}
        for key in ("rows_spooled", "rows_overflowed", "rows_dropped"):
            counts[key] += getattr(local, key)
        counts["rows_dropped"] += lost
        return LoggerStats(
            rows_logged=logged, **counts, queue_depth=pending + in_pipe + snap.get("queue_depth", 0),
            spool_files=local.spool_files, db_up=bool(state.get("db_up", False)),
            last_error=state.get("last_error") or self._last_error,
        )

    # ------------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping, all handed over
                kind, n, payload = self._queue.popleft()
            try:
                self._send(kind, n, payload)
            except Exception:  # a bug must not kill the sender; keep the rows
                log.exception("prediction log: could not hand %d row(s) to the writer process; spooling them", n)
                if kind == _ROWS:
                    self._local.spool_rows(_decode(payload))
            with self._cond:
                self._pending -= n
                self._cond.notify_all()

    def _send(self, kind: int, n: int, payload: bytes) -> None:
        writer = self._running_writer()
        if writer is None:
            if kind == _ROWS:
                self._local.spool_rows(_decode(payload))
            else:
                self._ack(_decode(payload)["id"], {"ok": False})
            return
        try:
            writer.proc.stdin.write(_frame(kind, payload))
            writer.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._writer_gone(writer)
            if kind == _ROWS:
                self._local.spool_rows(_decode(payload))
            else:
                self._ack(_decode(payload)["id"], {"ok": False})
            return
        with self._lock:
            writer.sent += n

    def _running_writer(self) -> _Writer | None:
        """The writer process, started when there is none (and the back-off has passed)."""
        writer = self._writer
        if writer is not None and writer.alive and writer.proc.poll() is None:
            return writer
        if writer is not None:
            self._writer_gone(writer)
        if time.monotonic() < self._restart_at:
            return None
        proc = None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airloop.serving.predlog_process"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=process_environ("predlog"), close_fds=True,
            )
            writer = _Writer(proc)
            threading.Thread(target=self._read_loop, args=(writer,), name=f"{self.name}-reader", daemon=True).start()
            proc.stdin.write(_frame(_CONFIG, _encode(self._config)))
            proc.stdin.flush()
            if not writer.ready.wait(START_TIMEOUT_S):
                raise RuntimeError(f"no answer from the writer process within {START_TIMEOUT_S:.0f} s")
            if not writer.snapshot:
                raise RuntimeError(f"the writer process exited with code {proc.wait()} before answering "
                                   "(its error is in this process's log)")
        except Exception as err:
            self._last_error = f"writer process did not start: {type(err).__name__}: {err}"[:500]
            log.error("prediction log: %s; spooling to %s", self._last_error, self.spool_dir)
            self._back_off()
            if proc is not None:
                proc.kill()
            return None
        with self._lock:
            writer.registered = True
            self._writer = writer
        self._restart_delay = 0.0
        log.info("prediction log: writer process %d started for %s", proc.pid, self.table.name)
        return writer

    def _back_off(self) -> None:
        self._restart_delay = min(RESTART_MAX_S, max(RESTART_MIN_S, self._restart_delay * 2))
        self._restart_at = time.monotonic() + self._restart_delay

    def _read_loop(self, writer: _Writer) -> None:
        """Counters and flush answers from one writer, until its stdout closes."""
        stream = writer.proc.stdout
        while True:
            try:
                frame = _read_frame(stream)
            except (OSError, ValueError):
                frame = None
            if frame is None:
                break
            kind, payload = frame
            message = _decode(payload)
            with self._cond:
                if kind in (_STATS, _ACK):
                    writer.snapshot = message["stats"]
                    writer.ready.set()
                if kind == _ACK:
                    self._acks[message["id"]] = message
                self._cond.notify_all()
        writer.ready.set()  # a writer that ends before answering does not keep its starter waiting
        writer.proc.wait()
        self._writer_gone(writer)

    def _ack(self, ack: int, message: dict[str, Any]) -> None:
        with self._cond:
            self._acks[ack] = message
            self._cond.notify_all()

    def _writer_gone(self, writer: _Writer) -> None:
        """Fold an ended writer's counters into the totals (once); count what it took and lost."""
        with self._cond:
            if not writer.alive:
                return
            writer.alive = False
            if not writer.registered:  # it never started: its starter reports that
                return
            snap = writer.snapshot
            for key in _SUMMED:
                self._base[key] += snap.get(key, 0)
            accounted = sum(snap.get(k, 0) for k in ("rows_written", "rows_spooled", "rows_rejected", "rows_dropped"))
            lost = max(0, writer.sent - accounted)
            self._lost += lost
            self._ended_state = {"db_up": snap.get("db_up", False), "last_error": snap.get("last_error")}
            if self._writer is writer:
                self._writer = None
            self._cond.notify_all()
        code = writer.proc.poll()
        if lost or not self._stopping:
            log.error("prediction log: writer process %d ended (exit %s); %d row(s) it had taken are lost; "
                      "a new one starts with the next rows", writer.proc.pid, code, lost)
            self._back_off()

    def _end_writer(self, writer: _Writer, timeout: float) -> None:
        try:
            writer.proc.stdin.write(_frame(_CLOSE, _encode({"timeout": max(0.1, timeout - 1.0)})))
            writer.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            writer.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("prediction log: writer process %d still busy after %.1fs; stopping it", writer.proc.pid, timeout)
            writer.proc.kill()
            writer.proc.wait()
        # the reader thread folds its last counters in; wait for it briefly
        deadline = time.monotonic() + 2.0
        with self._cond:
            while writer.alive and time.monotonic() < deadline:
                self._cond.wait(0.05)
        self._writer_gone(writer)


def _no_engine() -> Any:
    raise RuntimeError("this logger only spools (the writer process writes the database)")


# ---------------------------------------------------------------------------------------------
# the writer process
# ---------------------------------------------------------------------------------------------


def main() -> int:
    """The writer process: frames on stdin, counters and flush answers on stdout."""
    stdin = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print() cannot corrupt the frames
    for sig in (signal.SIGINT, signal.SIGTERM):  # the serving process ends us by closing stdin
        signal.signal(sig, signal.SIG_IGN)
    first = _read_frame(stdin)
    if first is None or first[0] != _CONFIG:
        return 2
    config = _decode(first[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{config['name']} writer] %(message)s")
    out_lock = threading.Lock()

    def send(kind: int, message: dict[str, Any]) -> None:
        with out_lock:
            out.write(_frame(kind, _encode(message)))
            out.flush()

    logger = PredictionLogger.for_uri(
        config["uri"], Path(config["spool_dir"]), table=store.metadata.tables[config["table"]],
        batch_size=config["batch_size"], flush_interval_s=config["flush_interval_s"],
        max_queue_rows=config["max_queue_rows"], name=config["name"],
    )
    done = threading.Event()

    def publish() -> None:
        while not done.wait(STATS_INTERVAL_S):
            try:
                send(_STATS, {"stats": logger.stats().as_dict()})
            except (BrokenPipeError, OSError, ValueError):
                return

    def flush(request: dict[str, Any]) -> None:
        ok = logger.flush(request.get("timeout", 10.0))
        try:
            send(_ACK, {"id": request["id"], "ok": ok, "stats": logger.stats().as_dict()})
        except (BrokenPipeError, OSError, ValueError):
            pass

    send(_STATS, {"stats": logger.stats().as_dict()})
    threading.Thread(target=publish, name="publish", daemon=True).start()
    close_timeout = 10.0
    while True:
        frame = _read_frame(stdin)
        if frame is None:
            break
        kind, payload = frame
        if kind == _ROWS:
            logger.log(_decode(payload))
        elif kind == _FLUSH:
            threading.Thread(target=flush, args=(_decode(payload),), name="flush", daemon=True).start()
        elif kind == _CLOSE:
            close_timeout = _decode(payload).get("timeout", close_timeout)
            break
    logger.close(close_timeout)
    done.set()
    try:
        send(_STATS, {"stats": logger.stats().as_dict()})
    except (BrokenPipeError, OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
