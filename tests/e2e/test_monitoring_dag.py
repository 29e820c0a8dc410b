"""End to end: the closed loop on real components.

A champion trained as of 2026-04-01 serves replayed traffic (the simulator's claims, each with its
business timestamp and its claim id as request id) through the real serving app with prediction
logging; the real monitoring DAG (``dag.test``) then runs day by day over stable days and the
covariate shift of 2026-04-20:

* stable days raise no drift alert (false-positive check);
* the shift day is flagged on the shifted features, one alert condition opens and stays open
  (updated daily, not re-sent), and — the label-free estimate holding — no retrain is requested
  (the default policy: drift alone only alerts);
* re-running an interval leaves every table unchanged.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

SHIFT = date(2026, 4, 20)
DAYS = [date(2026, 4, 14) + timedelta(days=i) for i in range(9)]  # 04-14 .. 04-22, monitored one by one
STABLE = [d for d in DAYS if d < SHIFT]
BACKFILL = [date(2026, 4, 1) + timedelta(days=i) for i in range(30)]  # 04-01 .. 04-30, replayed traffic


@pytest.fixture(scope="module")
def loop_env(settings, claims_config, airflow_db):
    """History, a forced champion as of 2026-04-06, and the replayed traffic of DAYS."""
    from fastapi.testclient import TestClient

    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import generate_day, write_history
    from airloop.serving.app import create_app
    from airloop.tasks import training as stages

    write_history(resolve_source_path(claims_config, settings), start=date(2026, 3, 1), days=60,
                  pattern=claims_config.source.partition)
    as_of = "2026-04-01"
    snap = stages.extract(claims_config, as_of, settings, window=21)
    validation = stages.validate(claims_config, snap, settings)
    ctx = {"dag_id": "e2e", "dag_run_id": "monitoring-setup", "as_of": as_of}
    plan = stages.prepare_training(claims_config, snap, validation, settings, ctx, n_trials=3)
    stages.train_worker(claims_config, snap, plan, 0, settings)
    evaluation = stages.evaluate(claims_config, snap, plan, settings)
    registration = stages.register(claims_config, snap, validation, plan, evaluation, settings, ctx)
    promotion = stages.promote(claims_config, registration, evaluation, settings, "test", ctx, force=True)
    assert promotion["promoted"]

    app = create_app(settings)
    # historical traffic: the admin token and the replay interval it covers (serving's event_ts window)
    replay = serving_headers(replay=(BACKFILL[0], BACKFILL[-1] + timedelta(days=1)))
    with TestClient(app, headers=replay) as client:
        for day in BACKFILL:
            frame = generate_day(day)
            records = json.loads(frame[list(claims_config.features)].to_json(orient="records"))
            answer = client.post("/predict", json={
                "records": records, "request_ids": frame["claim_id"].tolist(),
                "event_ts": [ts.isoformat() for ts in frame["claim_ts"]]})
            assert answer.status_code == 200, answer.text[:500]
        assert app.state.prediction_logger.flush(timeout=60)
    return {"version": registration["version"]}


@pytest.fixture(scope="module")
def monitoring_dag(loop_env):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.join(os.environ["AIRFLOW_HOME"], "dags", "airloop_monitoring.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("claims_fraud__monitor")


def run_day(dag, day: date):
    """The run monitoring [day, day + 1), as the scheduler (or a backfill) would create it."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    # dag.test infers a manual run's interval as the last complete one before its logical date
    run = dag.test(logical_date=start + timedelta(days=1))
    assert (run.data_interval_start, run.data_interval_end) == (start, start + timedelta(days=1))
    return run


def table(engine, t, order):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t).order_by(*order)).all()]


@pytest.fixture(scope="module")
def monitored(monitoring_dag, settings):
    runs = {day: run_day(monitoring_dag, day) for day in DAYS}
    return runs


def test_every_interval_monitored(monitored, settings):
    from airloop.core import store

    for day, run in monitored.items():
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert str(run.state) == "success", (day, states)
    engine = store.get_engine(settings.monitoring_db_uri)
    runs = table(engine, store.monitoring_runs, [store.monitoring_runs.c.interval_start])
    assert [r[2].date() if hasattr(r[2], "date") else r[2] for r in runs][-len(DAYS):]  # one row per interval
    assert len({r[2] for r in runs}) >= len(DAYS)


def test_no_drift_alert_on_stable_days_and_shift_flagged(monitored, settings):
    from airloop.core import store

    engine = store.get_engine(settings.monitoring_db_uri)
    a = store.alerts
    with engine.connect() as conn:
        alerts = conn.execute(sa.select(a.c.first_seen, a.c.rule, a.c.message, a.c.delivery_status, a.c.last_seen,
                                        a.c.fire_count, a.c.status)).all()
        drifted = conn.execute(sa.select(store.feature_drift.c.interval_start, store.feature_drift.c.feature)
                               .where(store.feature_drift.c.drifted.is_(True))).all()
    by_day = {}
    for first, rule, message, status, last, count, state in alerts:
        by_day.setdefault(to_utc(first).date(), []).append((rule, message, status, to_utc(last).date(), count, state))
    for day in STABLE:
        assert not [x for x in by_day.get(day, []) if x[0] == "input_drift"], (day, by_day.get(day))
    shift_alerts = {x[0]: x[1:] for x in by_day[SHIFT]}
    assert "input_drift" in shift_alerts
    message, status, last, count, state = shift_alerts["input_drift"]
    assert "claim_amount" in message and "customer_age" in message
    assert status == "no_route"  # recorded; no webhook/e-mail route configured for the demo
    shifted_features = {f for start, f in drifted if (start.date() if hasattr(start, "date") else start) == SHIFT}
    assert {"claim_amount", "customer_age", "channel"} <= shifted_features
    # the shift goes on: one open condition updated every day, not a row (or a notice) per day
    assert (state, last, count) == ("open", DAYS[-1], (DAYS[-1] - SHIFT).days + 1)
    assert not [x for d, xs in by_day.items() if d > SHIFT for x in xs if x[0] == "input_drift"]


def test_covariate_shift_alerts_without_a_needless_retrain(monitored, settings, monitoring_dag):
    """The shift moves the inputs, not the fraud mechanism: the label-free estimate holds (no
    estimated drop beyond its band), so the default policy requests no training."""
    from airloop.core import store

    engine = store.get_engine(settings.monitoring_db_uri)
    runs = store.monitoring_runs
    with engine.connect() as conn:
        requests = conn.execute(sa.select(store.retrain_requests.c.interval_start)).all()
        estimated = conn.execute(sa.select(runs.c.interval_start, runs.c.estimated_metric, runs.c.estimated_value,
                                           runs.c.estimated_low, runs.c.estimated_high,
                                           runs.c.estimated_performance_drop, runs.c.reference_id)).all()
    assert requests == []
    by_day = {to_utc(r[0]).date(): r for r in estimated}
    for day in DAYS:
        _, metric, value, low, high, drop, reference_id = by_day[day]
        assert metric == "roc_auc" and low <= value <= high and reference_id, (day, by_day[day])
        assert drop is None or drop <= 0.02, (day, by_day[day])
    for day in DAYS:
        run_states = {ti.task_id: str(ti.state) for ti in monitored[day].get_task_instances()}
        assert run_states["retrain_decision"] == "success" and run_states["request_retrain"] == "skipped"


def test_rerunning_an_interval_changes_nothing(monitored, monitoring_dag, settings):
    from airloop.core import store

    engine = store.get_engine(settings.monitoring_db_uri)
    tables = [(store.monitoring_runs, [store.monitoring_runs.c.interval_start]),
              (store.feature_drift, [store.feature_drift.c.interval_start, store.feature_drift.c.feature]),
              (store.alerts, [store.alerts.c.id]),
              (store.retrain_requests, [store.retrain_requests.c.interval_start]),
              (store.ground_truth, [store.ground_truth.c.request_id])]
    before = [table(engine, t, o) for t, o in tables]
    run = run_day(monitoring_dag, SHIFT)
    assert str(run.state) == "success"
    after = [table(engine, t, o) for t, o in tables]
    for (t, _), b, a in zip(tables, before, after):
        assert b == a, f"table {t.name} changed on re-run"


def test_backfill_with_the_real_scheduler_matches_scheduled_results(monitored, settings, tmp_path):
    """`airflow backfill create` over 30 days, executed by a real scheduler (LocalExecutor) and
    api-server with runs side by side (the DAG's max_active_runs; the order-dependent tasks wait
    for their previous interval's): every interval gets its row, and the intervals already
    monitored one by one are unchanged to the last value."""
    import subprocess
    import sys
    import time

    from airloop.core import store
    from tests.conftest import free_port

    engine = store.get_engine(settings.monitoring_db_uri)
    tables = [(store.monitoring_runs, [store.monitoring_runs.c.interval_start]),
              (store.feature_drift, [store.feature_drift.c.interval_start, store.feature_drift.c.feature])]
    days = {datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc) for d in DAYS}

    def rows_of_monitored_days():
        return [[r for r in table(engine, t, o) if to_utc(r[2]) in days] for t, o in tables]

    before = rows_of_monitored_days()
    port = free_port()
    env = {**os.environ, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
    airflow = [sys.executable, "-m", "airflow"]
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run([*airflow, "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=300)
    # The one-by-one runs above were manual runs whose logical dates the backfill needs (a manual
    # run of day D is dated D + 1); their Airflow metadata goes, our monitoring tables stay.
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.dag_id == "claims_fraud__monitor",
                                                DagRun.run_type == DagRunType.MANUAL).all():
            session.delete(run)
    # A backfill's runs are only scheduled for an unpaused DAG.
    subprocess.run([*airflow, "dags", "unpause", "claims_fraud__monitor"], env=env, check=True, capture_output=True,
                   timeout=120)
    # Create the backfill before the scheduler starts: SQLite takes one writer at a time.
    started = time.perf_counter()
    out = subprocess.run([*airflow, "backfill", "create", "--dag-id", "claims_fraud__monitor",
                          "--from-date", "2026-04-01", "--to-date", "2026-04-30",
                          "--max-active-runs", str(settings.monitoring_max_active_runs),
                          "--reprocess-behavior", "completed"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    procs = [subprocess.Popen([*airflow, *cmd], env=env, stdout=open(logs / f"{cmd[0]}.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
             for cmd in (["api-server", "--port", str(port)], ["scheduler"])]
    try:
        deadline = time.monotonic() + 1800
        while True:
            with create_session() as session:
                runs = session.query(DagRun).filter(DagRun.dag_id == "claims_fraud__monitor",
                                                    DagRun.run_type == DagRunType.BACKFILL_JOB).all()
                states = [str(r.state) for r in runs]
            if len(runs) == 30 and all(s in ("success", "failed") for s in states):
                break
            assert all(p.poll() is None for p in procs), "scheduler or api-server died; see " + str(logs)
            assert time.monotonic() < deadline, f"backfill not done in 30 min: {states}"
            time.sleep(5)
        seconds = time.perf_counter() - started
        print(f"\nbackfill of 30 monitoring intervals: {seconds:.0f} s ({seconds / 30:.1f} s per interval)")
        assert states.count("success") == 30, states
        with create_session() as session:  # the runs did overlap
            spans = sorted((r.start_date, r.end_date) for r in session.query(DagRun).filter(
                DagRun.dag_id == "claims_fraud__monitor", DagRun.run_type == DagRunType.BACKFILL_JOB))
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two runs ran side by side"
        # the scheduler pre-imported the task libraries before its LocalExecutor forked them
        from airloop.ops.preload import DEFAULT_MODULES

        assert f"airloop preload: {len(DEFAULT_MODULES)} modules" in (logs / "scheduler.log").read_text()
    finally:
        from airloop.ops.sandbox import stop_process_groups

        stop_process_groups(procs)

    monitored_days = {to_utc(r[2]).date() for r in table(engine, store.monitoring_runs, [store.monitoring_runs.c.interval_start])}
    assert set(BACKFILL) <= monitored_days
    after = rows_of_monitored_days()
    # same results as the runs made one interval at a time: every value equal (floats up to the
    # last bits: the statistics come from another process, possibly another BLAS code path)
    for name, old_rows, new_rows in zip(("monitoring_runs", "feature_drift"), before, after):
        assert len(old_rows) == len(new_rows), name
        for old_row, new_row in zip(old_rows, new_rows):
            same = all(o == n or (isinstance(o, float) and isinstance(n, float) and o == pytest.approx(n, rel=1e-9, abs=1e-12))
                       for o, n in zip(old_row, new_row))
            assert same, f"{name} differs:\n one by one: {old_row}\n backfill:   {new_row}"


def to_utc(value):
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
