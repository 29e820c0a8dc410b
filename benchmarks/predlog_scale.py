"""Prediction log at scale: a day of N rows (default 10M) on the real PostgreSQL, written by the
real writer, then one monitoring interval's reads and the retention at that size.

Set-up: a fresh throwaway database on the PostgreSQL server of the tests (``tests.pg``:
``AIRLOOP_TEST_PG_ADMIN_URI``, default the local server), migrated (``predictions`` partitioned by
UTC day). Rows are claims_fraud predictions as serving logs them: the features of the simulator's
claims (as ``/predict`` receives them), a score from a fixed logistic function of them, UUIDv7
request ids (``new_request_ids``), 0.2 % model errors, spread evenly over the day and over
``--keys`` (tenant, pipeline) keys (default 10 tenants of claims_fraud: ``--rows / --keys`` rows
per monitored interval). Two days are written, the monitored day D and the day before (the volume
baseline and the delayed labels need it), each ``--rows`` rows.

* **write**: every row goes through :class:`airloop.serving.predlog.PredictionLogger` with
  serving's settings (batch 500, backlog writes of up to 4000 rows; ``RowBatch`` + ``COPY``, day
  partitions created by the writer), fed by a producer thread in the same process that keeps the
  queue below its bound (nothing may spill to the spool). ``write_rows_per_s`` is wall-clock rows
  per second including building the rows; ``writer_cpu_us_per_row`` is the writer thread's CPU
  (what logging costs a serving worker); ``server_cpu_s`` the PostgreSQL backends' CPU.
* **labels**: ``--label-share`` of day D-1's rows of every key get a label arriving on D
  (:func:`airloop.monitoring.labels.write_labels`, as label ingest stores them).
* ``ANALYZE predictions, ground_truth`` (autovacuum analyses the day partitions by itself; the
  partitioned parent is never auto-analysed).
* **monitoring** of key 0 (tenant ``default``): the library functions the monitoring tasks call,
  each timed: ``newest_traffic_day`` (manual-run interval), ``load_served_features`` (traffic
  quality input), ``load_interval`` (drift input + the labelled-rows join, as ``monitor_interval``
  calls it), ``trailing_volumes`` and ``operations`` (volume / error rate / latency), then the whole
  ``monitor_interval`` of D-1 and of D (drift on every row, Evidently HTML on a sample, performance,
  estimate; D's run also checks D-1's estimate: ``check_estimates``) against a reference built from
  the simulator's claims. No MLflow: the reference is passed in, as the monitor task does after
  loading it.
* **retention**: ``apply_retention`` keeping 1 day before D's end: D-1's partition dropped.

    python benchmarks/predlog_scale.py [--rows 10000000] [--keys 10] [--label-share 0.1]
"""

from __future__ import annotations

import math
import os
import random
import statistics
import threading
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any

from _common import PIPELINE, emit, log, parser, session, timed

DAY = date(2026, 3, 10)  # the monitored day D
CHUNK = 2000  # rows the producer hands to the logger at once
MODEL_VERSION = "1"


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)


def score_of(record: dict[str, Any]) -> float:
    """A fixed logistic score of a claim (a stand-in for the model: the drift and performance
    code only needs served scores; the reference gets the same function)."""
    z = (0.6 * math.log1p(record["claim_amount"] or 0.0) - 5.0 + 0.35 * record["prior_claims"]
         + 0.02 * record["days_to_report"] - 0.3 * record["witness_count"]
         + (0.8 if record["police_report"] == "no" else 0.0))
    return 1.0 / (1.0 + math.exp(-z))


def claims_pool(config, days: int = 40):
    """The simulator's claims of ``days`` days before D: (records as serving logs them, the
    frame with scores and labels, for the reference)."""
    import pandas as pd

    from airloop.data.simulator import generate_day

    frame = pd.concat([generate_day(DAY - timedelta(days=k)) for k in range(days, 0, -1)], ignore_index=True)
    features = list(config.features)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
               for r in frame[features].to_dict("records")]
    frame["score"] = [score_of(r) for r in records]
    return records, frame


def reference_frame(config, frame):
    """The version's reference as training logs it: features as served plus the score."""
    from airloop.monitoring.reference import SCORE_COLUMN

    ref = frame[list(config.features)].copy()
    ref[SCORE_COLUMN] = frame["score"].to_numpy()
    ref[config.target] = frame[config.target].to_numpy()
    return ref


def keys_of(n: int) -> list[str]:
    return ["default", *(f"tenant{i:02d}" for i in range(1, n))]


def produce(logger, day: date, rows: int, keys: list[str], records: list[dict[str, Any]], seed: int,
            ids_out: dict[str, list[str]] | None, label_share: float) -> float:
    """Log ``rows`` rows of ``day`` (spread evenly over it and over ``keys``) through ``logger``,
    keeping its queue below its bound; return the producer thread's CPU seconds. With ``ids_out``,
    the request ids of a ``label_share`` of every key's rows are collected (to be labelled)."""
    from airloop.core.names import MODEL_ERROR
    from airloop.serving.predict import new_request_ids

    rng = random.Random(seed)
    started_cpu = time.thread_time()
    start = day_start(day)
    step = timedelta(days=1) / rows
    limit = logger.max_queue_rows - 4 * CHUNK
    scores = [score_of(r) for r in records]
    for first in range(0, rows, CHUNK):
        n = min(CHUNK, rows - first)
        ids = new_request_ids(n)
        chunk = []
        for j in range(n):
            i = first + j
            k = rng.randrange(len(records))
            tenant = keys[i % len(keys)]
            failed = rng.random() < 0.002
            chunk.append({
                "request_id": ids[j], "ts": start + i * step, "tenant": tenant, "pipeline": PIPELINE,
                "model_name": PIPELINE, "model_version": MODEL_VERSION, "variant": "champion",
                "features": records[k], "prediction": None if failed else int(scores[k] >= 0.5),
                "score": None if failed else scores[k], "latency_ms": rng.uniform(2.0, 40.0),
                "status": MODEL_ERROR if failed else "ok", "error": "RuntimeError: model failed" if failed else None,
                "out_of_domain": None})
            if ids_out is not None and not failed and rng.random() < label_share:
                ids_out.setdefault(tenant, []).append((ids[j], int(scores[k] >= 0.5) ^ (rng.random() < 0.1)))
        while logger._pending > limit:  # the queue's depth (no lock needed to read an int)
            time.sleep(0.002)
        logger.log(chunk)
    return time.thread_time() - started_cpu


def thread_cpu(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def server_cpu_s(uri: str) -> float:
    """CPU seconds (user + system) of the PostgreSQL backends of this database so far, from /proc
    (the server runs on this machine)."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND pid <> pg_backend_pid()")).scalars().all()
    engine.dispose()
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def write_days(uri: str, settings, rows: int, keys: list[str], records, label_share: float,
               spool) -> tuple[dict[str, Any], dict[str, list]]:
    """Both days through one PredictionLogger; the figures and the ids to label (of D-1)."""
    from airloop.core import store
    from airloop.serving.predlog import PredictionLogger

    to_label: dict[str, list] = {}
    logger = PredictionLogger(lambda: store.get_engine(uri), spool, name="predlog-bench")
    cpu_before = server_cpu_s(uri)
    started = time.perf_counter()
    producer_cpu = 0.0
    for offset, day in enumerate((DAY - timedelta(days=1), DAY)):
        producer_cpu += produce(logger, day, rows, keys, records, seed=offset,
                                ids_out=to_label if offset == 0 else None, label_share=label_share)
        log(f"logged {rows} rows of {day}; queue {logger._pending}")
    if not logger.flush(timeout=3600):
        raise RuntimeError(f"the logger did not drain: {logger.stats()}")
    write_s = time.perf_counter() - started
    writer_cpu = thread_cpu(logger._thread)
    server_cpu = server_cpu_s(uri) - cpu_before  # before close(): the writer's connection still open
    logger.close()
    stats = logger.stats()
    total = 2 * rows
    if (stats.rows_written, stats.rows_spooled, stats.rows_rejected, stats.rows_duplicate) != (total, 0, 0, 0):
        raise RuntimeError(f"not every row was written exactly once: {stats}")
    return {"rows_written": total, "write_s": round(write_s, 2), "write_rows_per_s": round(total / write_s),
            "producer_cpu_s": round(producer_cpu, 2), "writer_cpu_s": round(writer_cpu, 2),
            "writer_cpu_us_per_row": round(writer_cpu / total * 1e6, 2),
            "server_cpu_s": round(server_cpu, 2)}, to_label


def write_ground_truth(engine, to_label: dict[str, list]) -> tuple[int, float]:
    """Labels of D-1's chosen rows, arriving during D, through ``write_labels`` (chunks of 20k)."""
    from airloop.monitoring.labels import write_labels

    rows = []
    arrive = day_start(DAY)
    for tenant, pairs in to_label.items():
        step = timedelta(days=1) / max(len(pairs), 1)
        rows += [{"request_id": rid, "tenant": tenant, "pipeline": PIPELINE, "label": str(label),
                  "label_ts": arrive + i * step, "received_at": arrive + i * step}
                 for i, (rid, label) in enumerate(pairs)]
    started = time.perf_counter()
    written = sum(write_labels(engine, rows[i:i + 20_000], actor="ingest").written for i in range(0, len(rows), 20_000))
    return written, time.perf_counter() - started


def table_mb(engine) -> dict[str, float]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('predictions')"
                                    )).scalar_one()
        labels = conn.execute(sa.text("SELECT pg_total_relation_size('ground_truth')")).scalar_one()
    return {"table_mb": round(size / 2**20), "ground_truth_mb": round(labels / 2**20)}


def measure(fn, repeats: int) -> tuple[Any, float]:
    """``fn()``'s result and the median wall seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        result, took = timed(fn)
        seconds.append(took)
    return result, round(statistics.median(seconds), 3)


def monitoring_queries(engine, config, settings, repeats: int) -> dict[str, Any]:
    """The monitoring tasks' reads of interval D for tenant ``default``, each timed."""
    from airloop.monitoring.performance import operations
    from airloop.monitoring.traffic import load_interval, load_served_features, trailing_volumes
    from airloop.tasks.runs import newest_traffic_day

    start, end = day_start(DAY), day_start(DAY + timedelta(days=1))
    tenant, mon = config.tenant, config.monitoring
    out: dict[str, Any] = {}
    newest, out["newest_traffic_day_s"] = measure(lambda: newest_traffic_day(config, settings), repeats)
    assert newest == DAY, newest
    served, out["load_served_features_s"] = measure(
        lambda: load_served_features(engine, config, tenant, start, end), repeats)
    (frame, labelled), out["load_interval_s"] = measure(lambda: load_interval(
        engine, config, tenant, start, end, labels="arrived", labelled_version=MODEL_VERSION,
        label_window=timedelta(days=mon.performance_window_days)), repeats)
    volumes, out["trailing_volumes_s"] = measure(
        lambda: trailing_volumes(engine, config, tenant, start, mon.volume_baseline_days, end - start), repeats)
    ops, out["operations_s"] = measure(lambda: operations(frame, volumes), repeats)
    out |= {"interval_rows": len(frame), "served_feature_rows": len(served), "labelled_rows": len(labelled),
            "baseline_volumes": volumes, "volume_ratio": round(ops["volume_ratio"], 4),
            "error_rate": round(ops["error_rate"], 5), "latency_p95_ms": round(ops["latency_p95_ms"], 2)}
    return out


def monitor_intervals(engine, config, settings, reference, report_dir) -> dict[str, Any]:
    """``monitor_interval`` of D-1 (writes its estimate), then of D (checks D-1's): seconds each."""
    from airloop.monitoring.interval import monitor_interval
    from airloop.monitoring.reference import build_reference_profile

    profile = build_reference_profile(config, reference)
    out: dict[str, Any] = {}
    for name, day in (("monitor_interval_prev_s", DAY - timedelta(days=1)), ("monitor_interval_s", DAY)):
        start = day_start(day)
        summary, took = timed(lambda: monitor_interval(
            config, settings, config.tenant, start, start + timedelta(days=1), MODEL_VERSION, reference, report_dir,
            engine=engine, profile=profile, threshold=0.5))
        out[name] = round(took, 2)
        log(f"monitor_interval {day}: {took:.1f} s, {summary['rows']} rows, {summary['labelled_rows']} labelled, "
            f"drift share {summary['drift_share']}, estimate checks {len(summary['estimate_checks'])}")
    out["estimate_checks"] = len(summary["estimate_checks"])
    return out


def explain(engine, config) -> None:
    """EXPLAIN ANALYZE of the interval's two reads (the statements ``load_interval`` builds, rebuilt
    here the same way) on stderr, for profiling a slow run (``--explain``)."""
    import sqlalchemy as sa

    from airloop.core.store import ground_truth as g
    from airloop.core.store import predictions as p

    start, end = day_start(DAY), day_start(DAY + timedelta(days=1))
    mine = sa.and_(p.c.tenant == config.tenant, p.c.pipeline == config.name)
    rows = sa.select(p.c.request_id, p.c.ts, p.c.features).where(mine, p.c.ts >= start, p.c.ts < end) \
        .order_by(p.c.ts, p.c.request_id)
    joined = p.join(g, sa.and_(g.c.request_id == p.c.request_id, g.c.tenant == p.c.tenant, g.c.pipeline == p.c.pipeline))
    labelled = sa.select(p.c.request_id, g.c.label).select_from(joined).where(
        mine, p.c.status == "ok", g.c.label_ts >= end - timedelta(days=7), g.c.label_ts < end, p.c.ts < end,
        p.c.model_version == MODEL_VERSION).order_by(p.c.ts, p.c.request_id)
    with engine.connect() as conn:
        for query in (rows, labelled):
            sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").scalars().all()
            log("\n".join(plan))


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.set_defaults(repeats=1)
    p.add_argument("--rows", type=int, default=10_000_000, help="prediction rows per day (default 10M)")
    p.add_argument("--keys", type=int, default=10, help="(tenant, pipeline) keys sharing the rows (default 10)")
    p.add_argument("--label-share", type=float, default=0.1, help="share of D-1's rows labelled (default 0.1)")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the interval's reads")
    args = p.parse_args()
    load_start = os.getloadavg()

    import sqlalchemy as sa

    from tests.pg import fresh_database

    with session("predlog_scale", keep=args.keep) as folder, fresh_database() as uri:
        from airloop.core import partitions, store
        from airloop.core.pipeline import load_pipeline_config
        from airloop.core.settings import get_settings

        os.environ["AIRLOOP_MONITORING_DB_URI"] = uri
        get_settings.cache_clear()
        settings = get_settings()
        config = load_pipeline_config(PIPELINE, settings)
        engine = store.get_engine(uri)
        records, frame = claims_pool(config)
        keys = keys_of(args.keys)
        log(f"writing 2 x {args.rows} rows over {len(keys)} keys from {len(records)} simulated claims")

        figures: dict[str, Any] = {"rows": args.rows, "days": 2, "keys": len(keys),
                                   "rows_per_interval": args.rows // len(keys)}
        written, to_label = write_days(uri, settings, args.rows, keys, records, args.label_share,
                                       folder / "spool")
        figures |= written
        log(f"written: {written}")
        labels, labels_s = write_ground_truth(engine, to_label)
        figures |= {"labels": labels, "labels_s": round(labels_s, 2), "labels_per_s": round(labels / labels_s)}
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            _, analyze_s = timed(lambda: conn.exec_driver_sql("ANALYZE predictions, ground_truth"))
        figures["analyze_s"] = round(analyze_s, 2)
        figures |= table_mb(engine)
        with engine.connect() as conn:
            figures["partitions"] = len(partitions.partition_tables(conn, "predictions"))
        log(f"labels {labels} in {labels_s:.1f} s; {figures['table_mb']} MB in {figures['partitions']} partitions")
        if args.explain:
            explain(engine, config)

        queries = monitoring_queries(engine, config, settings, args.repeats)
        figures |= queries
        log(f"queries: {queries}")
        figures |= monitor_intervals(engine, config, settings, reference_frame(config, frame), folder / "reports")

        removed, retention_s = timed(lambda: partitions.apply_retention(
            engine, store.predictions, 1, day_start(DAY + timedelta(days=1))))
        with engine.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(store.predictions)).scalar_one()
        if removed["days_dropped"] != [(DAY - timedelta(days=1)).isoformat()] or left != args.rows:
            raise RuntimeError(f"retention removed {removed}, {left} rows left")
        figures |= {"retention_s": round(retention_s, 3), "retention_partitions_dropped": removed["partitions_dropped"]}
        slowest = max((k for k in figures if k.endswith("_s") and k.startswith(("load_", "trailing", "newest"))),
                      key=lambda k: figures[k])
        figures |= {"slowest_query": slowest, "queries_within_30s": figures[slowest] <= 30.0,
                    "load_at_start": [round(x, 2) for x in load_start],
                    "load_at_end": [round(x, 2) for x in os.getloadavg()]}
        engine.dispose()
    emit(figures)


if __name__ == "__main__":
    main()
