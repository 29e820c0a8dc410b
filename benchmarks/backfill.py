"""Backfill cost: `airflow backfill create` of the monitoring DAG over N daily intervals, executed
by a real scheduler (LocalExecutor) and api-server, vs the same library calls in a plain loop.

Set-up (not timed): Airflow metadata DB, the demo's simulated history, a champion trained as of
the first interval (plain stage calls, 3 trials, force-promoted), and every interval's traffic
replayed through the real serving process (prediction logging on), as the loop demo does. The
state is then copied: the plain reference runs on the copy, the backfill on the original, so
each starts from the same stores with cold caches.

* backfill: `airflow dags reserialize`, unpause, `airflow backfill create --max-active-runs N`
  (N = ``AIRLOOP_MONITORING_MAX_ACTIVE_RUNS``, the DAG's own ``max_active_runs``: runs overlap, the
  order-dependent tasks wait for their previous interval's), then api-server + scheduler; timed
  from the first run's start to the last run's end (the scheduler's start-up is reported apart).
  Each interval's cost is the time between the ends of consecutive runs; task durations, queue
  latency, the hops of the ``monitor`` chain and overlaps come from the metadata DB, the split of a
  task's time into start-up and its own code from its log, CPU seconds per process kind from
  ``/proc`` (scheduler loop, task supervisors, task processes, api-server).
* reference: the tasks' library calls (``airloop.tasks.monitoring`` ``ingest``,
  ``traffic_quality``, ``monitor``, ``alert``, ``retrain_decision`` and
  ``airloop.tasks.lifecycle.post_deploy_guard``: what each task calls; ``request_retrain`` sends
  no event here, as in the DAG) per interval in one process, after one warm-up interval.

Flatness: the median interval cost of the last quarter over that of the first quarter.
Both runs' monitoring rows are compared (same results, floats to 1e-9).

The scheduler pre-imports the tasks' libraries (``airloop.ops.preload``) unless ``--preload off``.

    python benchmarks/backfill.py [--intervals 120] [--preload auto|off]
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from _common import (
    PIPELINE,
    airflow,
    emit,
    free_port,
    log,
    median,
    parser,
    plain_training,
    serving_process,
    session,
    start_group,
    stop_group,
    timed,
    use_state,
    wait_http,
    write_demo_history,
)

FIRST_DAY = date(2026, 1, 29)  # champion trained as of this day on the 28 days before it
DAG_ID = f"{PIPELINE}__monitor"


def replay(settings, config, days: list[date]) -> int:
    """Every day's claims through the serving API (``cli.replay_traffic``); wait until all are logged."""
    import sqlalchemy as sa

    from airloop.cli.demo import replay_traffic
    from airloop.core import store

    sent = sum(replay_traffic(settings, config, day) for day in days)
    engine = store.get_engine(settings.monitoring_db_uri)
    deadline = time.monotonic() + 120
    while True:
        with engine.connect() as conn:
            logged = conn.execute(sa.select(sa.func.count()).select_from(store.predictions)).scalar_one()
        if logged >= sent:
            return sent
        if time.monotonic() > deadline:
            raise RuntimeError(f"serving logged {logged} of {sent} predictions within 120 s")
        time.sleep(1)


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)


def plain_interval(config, settings, day: date, endpoint) -> dict[str, float]:
    """The monitoring DAG's six tasks as the same library calls (``airloop.tasks``), in the DAG's
    order, for ``[day, day + 1)``; seconds per task."""
    from airloop.tasks import lifecycle, monitoring

    start, end = day_start(day), day_start(day) + timedelta(days=1)
    seconds = {}
    _, seconds["ingest_labels"] = timed(lambda: monitoring.ingest(config, settings, start, end))
    _, seconds["traffic_quality"] = timed(lambda: monitoring.traffic_quality(config, settings, start, end))
    summary, seconds["monitor"] = timed(lambda: monitoring.monitor(config, settings, start, end))
    # no alert route is configured, as in the DAG's run here
    _, seconds["alerts"] = timed(lambda: monitoring.alert(config, settings, start, summary, {}))
    _, seconds["retrain_decision"] = timed(lambda: monitoring.retrain_decision(config, settings, start, end, summary))
    _, seconds["post_deploy_guard"] = timed(lambda: lifecycle.post_deploy_guard(
        config, settings, summary, actor="benchmark", endpoint=endpoint))
    return seconds


def run_plain(config, settings, days: list[date]) -> dict:
    """The reference: every interval in turn in this process, after one warm-up interval."""
    from airloop.serving.client import ServingEndpoint

    # the DAG's guard asks the same (stopped) serving URL whether it follows the ledger
    endpoint = ServingEndpoint(settings.serving_url, settings.admin_token)
    plain_interval(config, settings, days[0], endpoint)  # warm-up: imports, reference download, connections
    costs, per_task = [], {}
    started = time.perf_counter()
    for i, day in enumerate(days):
        seconds = plain_interval(config, settings, day, endpoint)
        costs.append(sum(seconds.values()))
        for task, s in seconds.items():
            per_task.setdefault(task, []).append(s)
        if i % 10 == 0 or i == len(days) - 1:
            log(f"plain: interval {i + 1}/{len(days)} ({day}) {costs[-1]:.2f} s")
    return {"total_s": time.perf_counter() - started, "costs": costs,
            "task_s": {task: median(values) for task, values in per_task.items()}}


def group_cpu(pgid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds of the live processes of a process group: ``{pid: (own, waited-for children)}``
    (``/proc/<pid>/stat`` utime + stime, cutime + cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ... utime(12) stime(13) cutime(14) cstime(15)
        if int(fields[2]) == pgid:
            out[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)
    return out


def cpu_split(procs: list) -> dict[str, float]:
    """CPU seconds so far of the api-server's group and of the scheduler's: its loop (the main
    process), the LocalExecutor's workers (each supervises the task process it forks) and the task
    processes they waited for."""
    scheduler = group_cpu(procs[1].pid)
    return {"api_server": sum(a + b for a, b in group_cpu(procs[0].pid).values()),
            "scheduler_loop": scheduler.pop(procs[1].pid, (0.0, 0.0))[0],
            "supervisors": sum(own for own, _ in scheduler.values()),
            "task_processes": sum(children for _, children in scheduler.values())}


def run_backfill(folder: Path, days: list[date], preload: str = "auto", max_active_runs: int = 1) -> dict:
    """`airflow backfill create` executed by a real scheduler; timings from the metadata DB.

    ``preload`` is the scheduler's ``AIRLOOP_PRELOAD`` (``airloop.ops.preload``: ``auto``, the
    default, imports the tasks' libraries before the LocalExecutor forks its workers; ``off``
    measures the tasks importing them themselves).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    port = free_port()
    os.environ.update({"AIRFLOW__API__PORT": str(port),
                       "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"})
    scheduler_env = {**os.environ, "AIRLOOP_PRELOAD": preload}
    airflow("dags", "reserialize")
    airflow("dags", "unpause", DAG_ID)
    # SQLite takes one writer at a time: create the backfill before the scheduler starts.
    airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", days[0].isoformat(), "--to-date",
            days[-1].isoformat(), "--max-active-runs", str(max_active_runs), "--reprocess-behavior", "completed")
    launched = time.time()
    procs = [start_group([sys.executable, "-m", "airflow", "api-server", "--port", str(port)], folder / "api-server.log")]
    try:
        # The scheduler's first tasks call the execution API at once: an api-server still starting
        # fails them (a read timeout, then a retry 30 s later), so it must answer first.
        wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", procs[0], seconds=300)
        procs.append(start_group([sys.executable, "-m", "airflow", "scheduler"], folder / "scheduler.log", scheduler_env))
        deadline = time.monotonic() + 60 * 60 * 4
        done = 0
        before = None  # CPU of both groups once the first run runs (start-up excluded)
        while True:
            with create_session() as s:
                states = [str(r.state) for r in s.query(DagRun).filter(
                    DagRun.dag_id == DAG_ID, DagRun.run_type == DagRunType.BACKFILL_JOB)]
            if before is None and any(st != "queued" for st in states):
                before = cpu_split(procs)
            finished = sum(st in ("success", "failed") for st in states)
            if finished != done and (finished % 10 == 0 or finished == len(days)):
                log(f"backfill: {finished}/{len(days)} runs finished")
            done = finished
            if len(states) == len(days) and finished == len(days):
                break
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[3]} exited with {p.returncode}; see {folder}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"backfill not finished in 4 h: {states}")
            time.sleep(2)
        after = cpu_split(procs)
        cpu = {k: after[k] - (before or {}).get(k, 0.0) for k in after}
    finally:
        stop_group(procs)
    with create_session() as s:
        runs = s.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_type == DagRunType.BACKFILL_JOB) \
            .order_by(DagRun.logical_date).all()
        rows = [{"run_id": r.run_id, "state": str(r.state), "start": r.start_date, "end": r.end_date} for r in runs]
        tis = s.query(TaskInstance).filter(TaskInstance.dag_id == DAG_ID,
                                           TaskInstance.run_id.in_([r["run_id"] for r in rows])).all()
        tasks = [{"run_id": t.run_id, "task": t.task_id, "state": str(t.state), "start": t.start_date,
                  "end": t.end_date, "queued": t.queued_dttm, "tries": t.try_number} for t in tis]
    logs = Path(os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") or folder / "airflow-logs")
    for t in tasks:
        t |= task_log_split(logs / f"dag_id={DAG_ID}" / f"run_id={t['run_id']}" / f"task_id={t['task']}"
                            / f"attempt={t['tries'] or 1}.log", t["start"])
    return {"launched": launched, "runs": rows, "tasks": tasks, "cpu_s": cpu}


def task_log_split(path: Path, start: datetime | None) -> dict[str, float]:
    """From a task's log: ``startup_s`` (its start to the end of Airflow's "Pre Execute" group:
    process start, DAG file parse) and ``code_s`` (from there to the last line); {} without a log."""
    import json

    try:
        stamps, pre_end = [], None
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            stamps.append(stamp)
            if pre_end is None and entry.get("event") == "::endgroup::":
                pre_end = stamp
    except (OSError, ValueError, KeyError):
        return {}
    if start is None or pre_end is None or not stamps:
        return {}
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    return {"startup_s": (pre_end - start).total_seconds(), "code_s": (stamps[-1] - pre_end).total_seconds()}


def monitor_chain(result: dict) -> dict[str, float | None]:
    """The ``monitor`` tasks' chain, interval after interval: ``period_s`` (median start of one
    interval's monitor to the next one's), ``tail_s`` (a monitor's end to the end of its last
    direct downstream task: the next monitor waits for them) and ``hop_s`` (that end to the
    next monitor's start: scheduling, queueing)."""
    by_run: dict[str, dict[str, dict]] = {}
    for t in result["tasks"]:
        by_run.setdefault(t["run_id"], {})[t["task"]] = t
    chain = [by_run.get(r["run_id"], {}) for r in result["runs"]]
    periods, tails, hops = [], [], []
    for a, b in zip(chain, chain[1:]):
        if not (a.get("monitor", {}).get("end") and b.get("monitor", {}).get("start")):
            continue
        periods.append((b["monitor"]["start"] - a["monitor"]["start"]).total_seconds())
        after = [a[k]["end"] for k in ("alerts", "retrain_decision", "post_deploy_guard") if a.get(k, {}).get("end")]
        last = max([a["monitor"]["end"], *after])
        tails.append((last - a["monitor"]["end"]).total_seconds())
        hops.append((b["monitor"]["start"] - last).total_seconds())
    return {"period_s": median(periods) if periods else None, "tail_s": median(tails) if tails else None,
            "hop_s": median(hops) if hops else None}


def most_side_by_side(runs: list[dict]) -> int:
    """The most runs that were running at one moment."""
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def backfill_figures(result: dict) -> dict:
    """Interval costs, task durations, queue latency, gaps between runs, the monitor chain."""
    runs = result["runs"]
    ends = sorted(r["end"].timestamp() for r in runs)  # runs overlap: each interval's cost is one more run done
    first_start = min(r["start"].timestamp() for r in runs)
    costs = [ends[0] - first_start] + [b - a for a, b in zip(ends, ends[1:])]
    by_task: dict[str, list[float]] = {}
    split: dict[str, dict[str, list[float]]] = {"startup_s": {}, "code_s": {}}
    queue: list[float] = []
    for t in result["tasks"]:
        if t["start"] and t["end"]:
            by_task.setdefault(t["task"], []).append((t["end"] - t["start"]).total_seconds())
        if t["queued"] and t["start"]:
            queue.append((t["start"] - t["queued"]).total_seconds())
        for key in split:
            if key in t:
                split[key].setdefault(t["task"], []).append(t[key])
    # negative: the next run started before this one ended (runs side by side)
    gaps = [(b["start"] - a["end"]).total_seconds() for a, b in zip(runs, runs[1:])]
    n = len(runs)
    return {
        "costs": costs,
        "total_s": ends[-1] - first_start,
        "startup_s": first_start - result["launched"],
        "run_s": median([(r["end"] - r["start"]).total_seconds() for r in runs]),
        "task_s": {task: median(values) for task, values in sorted(by_task.items())},
        "queue_latency_s": median(queue) if queue else None,
        "gap_between_runs_s": median(gaps) if gaps else None,
        "states": {st: sum(r["state"] == st for r in runs) for st in {r["state"] for r in runs}},
        "retried_tasks": sum((t["tries"] or 1) > 1 for t in result["tasks"]),
        "task_startup_s": {task: median(v) for task, v in sorted(split["startup_s"].items())},
        "task_code_s": {task: median(v) for task, v in sorted(split["code_s"].items())},
        "monitor_chain": monitor_chain(result),
        "most_runs_side_by_side": most_side_by_side(runs),
        "cpu_s_per_interval": {k: round(v / n, 2) for k, v in result["cpu_s"].items()},
    }


def quarters(costs: list[float]) -> tuple[float, float]:
    """Median cost of the first and of the last quarter of the intervals."""
    q = max(1, math.ceil(len(costs) / 4))
    return median(costs[:q]), median(costs[-q:])


def monitoring_rows(settings, root: Path) -> list[tuple]:
    """The monitoring_runs and feature_drift rows, state paths neutralised, for comparison."""
    import sqlalchemy as sa

    from airloop.core import store

    engine = store.get_engine(settings.monitoring_db_uri)
    out = []
    with engine.connect() as conn:
        for table, order in ((store.monitoring_runs, ["interval_start"]), (store.feature_drift, ["interval_start", "feature"])):
            for row in conn.execute(sa.select(table).order_by(*[table.c[c] for c in order])):
                out.append(tuple(v.replace(str(root), "<state>") if isinstance(v, str) else v for v in row))
    return out


def same_rows(a: list[tuple], b: list[tuple]) -> bool:
    """Equal row by row (floats to 1e-9 relative: another process may take another BLAS path)."""
    def close(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))
    return len(a) == len(b) and all(len(r) == len(s) and all(close(x, y) for x, y in zip(r, s)) for r, s in zip(a, b))


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--intervals", type=int, default=120, help="daily intervals to backfill (default 120)")
    p.add_argument("--skip-reference", action="store_true", help="backfill only (no plain-loop reference)")
    p.add_argument("--preload", choices=("auto", "off"), default="auto",
                   help="the scheduler's AIRLOOP_PRELOAD (default auto: task libraries imported before forking)")
    args = p.parse_args()
    days = [FIRST_DAY + timedelta(days=i) for i in range(args.intervals)]
    with session("backfill", keep=args.keep) as folder:
        from airloop.core.pipeline import load_pipeline_config
        from airloop.core.settings import get_settings

        state = folder / "state"
        airflow("db", "migrate")
        settings = use_state(state)
        write_demo_history(settings)
        config = load_pipeline_config(PIPELINE, settings)
        if days[-1] >= config.schedule.end_date:
            raise SystemExit(f"the demo history and schedule end at {config.schedule.end_date}: "
                             f"at most {(config.schedule.end_date - FIRST_DAY).days} intervals from {FIRST_DAY}")
        plain_training(config, FIRST_DAY.isoformat(), settings, window=28, n_trials=3, force=True, run_id="champion")
        with serving_process(folder, ready=True):
            sent = replay(get_settings(), config, days)  # settings now carrying the serving URL
        log(f"set-up done: champion, {sent} predictions over {len(days)} days")
        plain = None
        if not args.skip_reference:
            plain_state = folder / "plain-state"
            shutil.copytree(state, plain_state)
            plain_settings = use_state(plain_state, data_dir=settings.data_dir)
            plain = run_plain(config, plain_settings, days)
            plain_rows = monitoring_rows(plain_settings, plain_state)
            settings = use_state(state)
        max_active_runs = settings.monitoring_max_active_runs  # the DAG's max_active_runs, from the same setting
        log(f"backfill of {len(days)} intervals starts ({max_active_runs} runs at most side by side)")
        dag = backfill_figures(run_backfill(folder, days, preload=args.preload, max_active_runs=max_active_runs))
        dag_rows = monitoring_rows(settings, state)

    first_q, last_q = quarters(dag["costs"])
    per_interval = dag["total_s"] / len(days)
    figures = {
        "benchmark": "backfill",
        "intervals": len(days),
        "preload": args.preload,
        "max_active_runs": max_active_runs,
        "total_s": round(dag["total_s"], 1),
        "per_interval_s": round(per_interval, 2),
        "first_quarter_interval_s": first_q,
        "last_quarter_interval_s": last_q,
        "flatness": round(last_q / first_q, 2),
        "run_s": dag["run_s"],
        "task_s": dag["task_s"],
        "queue_latency_s": dag["queue_latency_s"],
        "gap_between_runs_s": dag["gap_between_runs_s"],
        "most_runs_side_by_side": dag["most_runs_side_by_side"],
        "monitor_chain": dag["monitor_chain"],
        "task_startup_s": dag["task_startup_s"],
        "task_code_s": dag["task_code_s"],
        "cpu_s_per_interval": dag["cpu_s_per_interval"],
        "airflow_startup_s": round(dag["startup_s"], 1),
        "run_states": dag["states"],
        "retried_tasks": dag["retried_tasks"],
    }
    if plain is not None:
        plain_first, plain_last = quarters(plain["costs"])
        plain_per_interval = plain["total_s"] / len(days)
        figures.update({
            "plain_total_s": round(plain["total_s"], 1),
            "plain_per_interval_s": round(plain_per_interval, 2),
            "plain_first_quarter_interval_s": plain_first,
            "plain_last_quarter_interval_s": plain_last,
            "plain_task_s": plain["task_s"],
            "overhead_ratio": round(per_interval / plain_per_interval, 2),
            "results_match": same_rows(plain_rows, dag_rows),
        })
    figures["interval_s_spread"] = round(statistics.pstdev(dag["costs"]), 2)
    figures["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    emit(figures)


if __name__ == "__main__":
    main()
