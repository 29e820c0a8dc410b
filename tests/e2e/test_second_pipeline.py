"""End to end: the second pipeline, added by configuration only, runs through the whole loop.

``include/pipelines/ticket_triage.yaml`` — support-ticket triage, multi-class (five queues), tenant
``globex``, daily Parquet partitions read through a glob — on the ticket simulator's history:

1. ``airloop simulate --pipeline ticket_triage`` writes the history; the real training DAG
   ``globex__ticket_triage__train`` (``dag.test``, few trials) validates it with the committed GX
   suite, trains, registers ``globex__ticket_triage``, promotes it and deploys it to a serving
   app of that pipeline (its own uvicorn server, reached through ``AIRFLOW_CONN_AIRLOOP_SERVING``);
2. the days after the as-of day are replayed through serving (ticket ids as request ids, creation
   times as event timestamps), the first day's labels come back through ``/feedback``, the rest
   through the monitoring DAG's label ingest from the source;
3. the real monitoring DAG ``globex__ticket_triage__monitor`` runs a stable day and two days from
   the covariate shift on: rows in ``monitoring_runs`` / ``feature_drift`` carry tenant
   ``globex``, the shifted features are flagged from the shift date on (not before), and the
   multi-class performance metrics are stored.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import load_dag, run_dag, served_to_tasks, task_states
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

AS_OF = "2026-03-15"
SHIFT = date(2026, 3, 18)  # TICKET_EVENTS["covariate_shift"]
TRAFFIC = [date(2026, 3, 15) + timedelta(days=i) for i in range(5)]  # 03-15 .. 03-19
MONITORED = [date(2026, 3, 16), SHIFT, date(2026, 3, 19)]
SHIFTED = {"product", "language", "channel", "body_words", "error_codes"}  # what the simulator moves
FAST = {"window_days": 21, "n_trials": 4, "timeout_s": 300}
TENANT = "globex"


@pytest.fixture(scope="module")
def config(settings):
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config("ticket_triage", settings)


@pytest.fixture(scope="module")
def history(settings, config):
    """2026-01-01 .. 2026-03-25, through the CLI as a user would write it."""
    from airloop.cli import commands as cli
    from airloop.data.simulator import TICKET_EVENTS

    assert TICKET_EVENTS["covariate_shift"] == SHIFT
    assert cli.cmd_simulate(argparse.Namespace(pipeline="ticket_triage", days=84, seed=7)) == 0
    return sorted((settings.data_dir / "ticket_triage").glob("dt=*/*.parquet"))


@pytest.fixture(scope="module")
def triage_serving(settings, config):
    """The ticket_triage serving app on its own port; DAG tasks reach it through the
    ``airloop_serving`` connection for this module's runs."""
    from airloop.serving.app import create_app

    with served_to_tasks(create_app(settings, "ticket_triage"), settings) as server:
        yield server


@pytest.fixture(scope="module")
def trained(history, triage_serving, settings, config, airflow_db):
    dag = load_dag("airloop_training.py", "globex__ticket_triage__train")
    run = run_dag(dag, AS_OF, FAST)
    return run


def engine(settings):
    from airloop.core import store

    return store.get_engine(settings.monitoring_db_uri)


def test_history_is_parquet_partitions_read_through_the_glob(history, config):
    assert len(history) == 84 and all(p.suffix == ".parquet" for p in history)
    assert config.source.partition == "dt={date}/*.parquet" and config.tenant == TENANT
    assert config.task == "multiclass_classification" and len(config.classes) == 5


def test_training_dag_registers_promotes_and_deploys(trained, triage_serving, settings, config):
    from airloop.registry import client as registry

    states = task_states(trained)
    assert str(trained.state) == "success", states
    assert all(states[t] == "success" for t in ("extract", "validate", "evaluate", "register", "promote", "deploy"))
    client = registry.get_client(settings)
    assert config.model_name == "globex__ticket_triage"
    champion = registry.alias_version(client, "globex__ticket_triage", "champion")
    assert champion is not None
    version = str(champion.version)
    assert champion.tags["airloop.data_interval"] == f"2026-02-22/{AS_OF}"
    assert champion.tags["airloop.validation"] == "passed"
    metrics = client.get_run(champion.run_id).data.metrics
    holdout = {k[len("holdout_"):]: v for k, v in metrics.items() if k.startswith("holdout_")}
    assert {"accuracy", "f1_macro", "roc_auc_ovr", "log_loss"} <= set(holdout), sorted(metrics)
    assert holdout["f1_macro"] > 0.45  # the gate in the pipeline file, five queues
    rows = [r for r in _ledger(settings) if r["action"] == "promote"]
    assert [(r["environment"], r["to_version"]) for r in rows] == [("prod", version)]

    info = httpx.get(f"{triage_serving.url}/model", headers=serving_headers()).json()
    assert str(info["version"]) == version and info["name"] == "globex__ticket_triage"
    record = {"channel": "chat", "customer_tier": "pro", "product": "api", "language": "de",
              "account_age_days": 400, "seats": 9, "tickets_last_30d": 1, "attachments": 2, "error_codes": 3,
              "invoice_mentions": 0, "body_words": 150, "subject_words": 8, "sentiment": -0.3}
    answer = httpx.post(f"{triage_serving.url}/predict", json=record, headers=serving_headers())
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    assert set(prediction["probabilities"]) == set(config.classes)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction["prediction"] in config.classes


def _ledger(settings):
    from airloop.registry import ledger as store

    return store.ledger_rows(engine(settings), "ticket_triage")


@pytest.fixture(scope="module")
def traffic(trained, triage_serving, settings, config):
    """TRAFFIC's tickets through serving in batches of 100; the first day's labels via /feedback."""
    from airloop.data.simulator import generate_ticket_day

    assert str(trained.state) == "success"
    sent = 0
    replay = serving_headers(replay=(TRAFFIC[0], TRAFFIC[-1] + timedelta(days=1)))  # historical event times
    for day in TRAFFIC:
        frame = generate_ticket_day(day)
        for lo in range(0, len(frame), 100):
            part = frame.iloc[lo:lo + 100]
            answer = httpx.post(f"{triage_serving.url}/predict", timeout=60, headers=replay, json={
                "records": json.loads(part[list(config.features)].to_json(orient="records")),
                "request_ids": part["ticket_id"].tolist(),
                "event_ts": [ts.isoformat() for ts in part["created_ts"]]})
            assert answer.status_code == 200, answer.text[:500]
            sent += len(part)
    first = generate_ticket_day(TRAFFIC[0])
    known = first[first["triaged_ts"] < datetime.combine(TRAFFIC[1], datetime.min.time(), tzinfo=timezone.utc)]
    items = [{"request_id": rid, "label": label, "label_ts": ts.isoformat()}
             for rid, label, ts in zip(known["ticket_id"], known["queue"], known["triaged_ts"])]
    answer = httpx.post(f"{triage_serving.url}/feedback", json={"items": items}, headers=serving_headers())
    assert answer.status_code == 200 and answer.json()["written"] == len(items), answer.text[:500]
    wrong = httpx.post(f"{triage_serving.url}/feedback", json={"request_id": items[0]["request_id"], "label": "spam"},
                       headers=serving_headers())
    assert wrong.status_code == 422 and "classes" in wrong.text
    assert triage_serving.app.state.prediction_logger.flush(timeout=60)
    return {"sent": sent, "feedback": len(items)}


@pytest.fixture(scope="module")
def monitored(traffic, settings):
    dag = load_dag("airloop_monitoring.py", "globex__ticket_triage__monitor")
    runs = {}
    for day in MONITORED:
        start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
        runs[day] = dag.test(logical_date=start + timedelta(days=1))  # the interval [day, day + 1)
        assert runs[day].data_interval_start == start
    return runs


def _day(value) -> date:
    return value.date() if hasattr(value, "date") else value


def test_traffic_and_labels_are_the_tenants(traffic, settings):
    from airloop.core import store
    from airloop.serving.protocol import SMOKE_TENANT

    replayed = store.predictions.c.request_id.like("T2026%")  # ticket ids (not the deploy smoke test's)
    with engine(settings).connect() as conn:
        served = conn.execute(sa.select(store.predictions.c.tenant, sa.func.count())
                              .where(store.predictions.c.pipeline == "ticket_triage", replayed)
                              .group_by(store.predictions.c.tenant)).all()
        tenants = conn.execute(sa.select(store.predictions.c.tenant).distinct()
                               .where(store.predictions.c.pipeline == "ticket_triage")).scalars().all()
        labels = conn.execute(sa.select(store.ground_truth.c.tenant, sa.func.count())
                              .where(store.ground_truth.c.pipeline == "ticket_triage")
                              .group_by(store.ground_truth.c.tenant)).all()
    assert dict(served) == {TENANT: traffic["sent"]}, f"replayed prediction rows by tenant: {served}"
    assert set(tenants) <= {TENANT, SMOKE_TENANT}, tenants
    assert dict(labels) == {TENANT: traffic["feedback"]}, f"feedback rows by tenant: {labels}"


def test_monitoring_runs_are_the_tenants_with_multiclass_performance(monitored, settings, config):
    from airloop.core import store

    for day, run in monitored.items():
        assert str(run.state) == "success", (day, task_states(run))
    with engine(settings).connect() as conn:
        rows = conn.execute(sa.select(store.monitoring_runs).where(
            store.monitoring_runs.c.pipeline == "ticket_triage")).mappings().all()
    by_day = {_day(r["interval_start"]): r for r in rows}
    assert set(by_day) == set(MONITORED), sorted(by_day)
    assert {r["tenant"] for r in rows} == {TENANT}
    for day in MONITORED:
        row = by_day[day]
        assert row["rows"] > 150 and row["model_version"], (day, dict(row))
        assert row["labelled_rows"] >= config.monitoring.min_labelled_rows, (day, row["labelled_rows"])
        performance = json.loads(row["performance"])
        assert {"accuracy", "f1_macro", "balanced_accuracy"} <= set(performance), performance
        assert 0.3 < performance["f1_macro"] < 1.0 and "roc_auc" not in performance, performance
        assert json.loads(row["reference_performance"])["f1_macro"] > 0.45


def test_drift_flagged_from_the_shift_date_not_before(monitored, settings):
    from airloop.core import store

    with engine(settings).connect() as conn:
        drift = conn.execute(sa.select(store.feature_drift.c.tenant, store.feature_drift.c.interval_start,
                                       store.feature_drift.c.feature, store.feature_drift.c.drifted)
                             .where(store.feature_drift.c.pipeline == "ticket_triage")).all()
        alerts = conn.execute(sa.select(store.alerts.c.tenant, store.alerts.c.interval_start, store.alerts.c.rule)
                              .where(store.alerts.c.pipeline == "ticket_triage")).all()
        retrain = conn.execute(sa.select(store.retrain_requests.c.tenant, store.retrain_requests.c.interval_start,
                                         store.retrain_requests.c.requested)
                               .where(store.retrain_requests.c.pipeline == "ticket_triage")).all()
    assert drift and {t for t, *_ in drift} == {TENANT}
    flagged = {day: {f for t, s, f, d in drift if _day(s) == day and d} for day in MONITORED}
    assert not flagged[MONITORED[0]] - {"__prediction__"}, flagged  # a stable day: no input drift
    for day in (SHIFT, MONITORED[2]):
        assert len(flagged[day] & SHIFTED) >= 4, (day, flagged[day])
        assert not flagged[day] & {"customer_tier", "seats", "account_age_days"}, flagged[day]  # unshifted
    rules = {(_day(s), rule) for t, s, rule in alerts if t == TENANT}
    assert (SHIFT, "input_drift") in rules and (MONITORED[0], "input_drift") not in rules, rules
    # default retrain policy: drift alone alerts; only a realized or estimated drop requests training
    dropped = {d for d, rule in rules if rule in ("performance_drop", "estimated_drop")}
    requested = [_day(s) for t, s, req in retrain if req]
    assert set(requested) <= dropped and len(requested) <= 1, (requested, rules)
