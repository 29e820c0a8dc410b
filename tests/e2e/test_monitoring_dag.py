"""End to end: the closed loop on real components.

A champion trained as of 2026-04-06 serves replayed traffic (the simulator's claims, each with its
business timestamp and its claim id as request id) through the real serving app with prediction
logging; the real monitoring DAG (``dag.test``) then runs day by day over stable days and the
covariate shift of 2026-04-20:

* stable days raise no drift alert (false-positive check);
* the shift day is flagged on the shifted features, an alert is recorded, and retraining is
  requested once (an Asset event carrying the reason), later days being held by the cool-down;
* re-running an interval leaves every table unchanged.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.e2e

SHIFT = date(2026, 4, 20)
DAYS = [date(2026, 4, 14) + timedelta(days=i) for i in range(9)]  # 04-14 .. 04-22
STABLE = [d for d in DAYS if d < SHIFT]


@pytest.fixture(scope="module")
def loop_env(settings, claims_config, airflow_db):
    """History, a forced champion as of 2026-04-06, and the replayed traffic of DAYS."""
    from fastapi.testclient import TestClient

    from airloop import stages
    from airloop.config import resolve_source_path
    from airloop.serving import create_app
    from airloop.simulator import generate_day, write_history

    write_history(resolve_source_path(claims_config, settings), start=date(2026, 3, 1), days=60,
                  pattern=claims_config.source.partition)
    as_of = "2026-04-06"
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
    with TestClient(app) as client:
        for day in DAYS:
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
    from airloop import store

    for day, run in monitored.items():
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert str(run.state) == "success", (day, states)
    engine = store.get_engine(settings.monitoring_db_uri)
    runs = table(engine, store.monitoring_runs, [store.monitoring_runs.c.interval_start])
    assert [r[2].date() if hasattr(r[2], "date") else r[2] for r in runs][-len(DAYS):]  # one row per interval
    assert len({r[2] for r in runs}) >= len(DAYS)


def test_no_drift_alert_on_stable_days_and_shift_flagged(monitored, settings):
    from airloop import store

    engine = store.get_engine(settings.monitoring_db_uri)
    with engine.connect() as conn:
        alerts = conn.execute(sa.select(store.alerts.c.interval_start, store.alerts.c.rule, store.alerts.c.message,
                                        store.alerts.c.delivery_status)).all()
        drifted = conn.execute(sa.select(store.feature_drift.c.interval_start, store.feature_drift.c.feature)
                               .where(store.feature_drift.c.drifted.is_(True))).all()
    by_day = {}
    for start, rule, message, status in alerts:
        by_day.setdefault(start.date() if hasattr(start, "date") else start, []).append((rule, message, status))
    for day in STABLE:
        assert not [a for a in by_day.get(day, []) if a[0] == "input_drift"], (day, by_day.get(day))
    shift_alerts = {rule: (message, status) for rule, message, status in by_day[SHIFT]}
    assert "input_drift" in shift_alerts
    message, status = shift_alerts["input_drift"]
    assert "claim_amount" in message and "customer_age" in message
    assert status == "no_route"  # recorded; no webhook/e-mail route configured for the demo
    shifted_features = {f for start, f in drifted if (start.date() if hasattr(start, "date") else start) == SHIFT}
    assert {"claim_amount", "customer_age", "channel"} <= shifted_features
    # the next day's drift alert is the same incident: kept, not delivered again
    assert ("input_drift" in {r for r, _, _ in by_day[SHIFT + timedelta(days=1)]})
    assert {s for r, _, s in by_day[SHIFT + timedelta(days=1)] if r == "input_drift"} == {"ongoing"}


def test_retrain_requested_once_with_reason(monitored, settings, monitoring_dag):
    from airloop import store

    engine = store.get_engine(settings.monitoring_db_uri)
    with engine.connect() as conn:
        requests = conn.execute(sa.select(store.retrain_requests.c.interval_start, store.retrain_requests.c.requested,
                                          store.retrain_requests.c.reason, store.retrain_requests.c.as_of)
                                .order_by(store.retrain_requests.c.interval_start)).all()
    requested = [r for r in requests if r[1]]
    assert len(requested) == 1
    start, _, reason, as_of = requested[0]
    assert (start.date() if hasattr(start, "date") else start) == SHIFT and as_of == "2026-04-21"
    assert "input_drift" in reason and "claim_amount" in reason
    assert all(not r[1] for r in requests if r[0] != start)  # held by the cool-down
    # the request reached Airflow as an Asset event carrying the reason and as-of day
    shift_run = monitored[SHIFT]
    states = {ti.task_id: str(ti.state) for ti in shift_run.get_task_instances()}
    assert states["request_retrain"] == "success"
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(
            AssetModel.uri == "airloop://claims_fraud/retrain-requests").all()
        extras = [e.extra for e in events]
    assert any(x.get("as_of") == "2026-04-21" and "input_drift" in x.get("reason", "") for x in extras), extras
    for day in STABLE:
        run_states = {ti.task_id: str(ti.state) for ti in monitored[day].get_task_instances()}
        assert run_states["request_retrain"] == "skipped"


def test_rerunning_an_interval_changes_nothing(monitored, monitoring_dag, settings):
    from airloop import store

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
