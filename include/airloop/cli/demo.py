"""The demo: the closed loop over the simulated history, and its summary."""

from __future__ import annotations

import argparse
import time
from datetime import date, datetime, timezone

from airloop.cli.commands import cmd_simulate, cmd_start_serving, ensure_secrets, settings_with_secrets
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import AIRFLOW_PORT, MLFLOW_PORT, Settings, get_settings


# ------------------------------------------------------------------------- Airflow, for real
class DemoAirflow:
    """The Airflow the demo drives: ``airflow standalone`` (or the Celery components) on the
    project's own metadata DB, started for the demo and stopped after it, so that every run it
    leaves is a real one — made by the scheduler, with task logs, wall-clock times and the
    business day as its data interval — and ``make up`` shows them afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict = {}
        self.api = None

    def __enter__(self) -> "DemoAirflow":
        from airloop.cli.processes import airflow_api, start_airflow

        logs = self.settings.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        port = AIRFLOW_PORT.get()
        try:
            self.procs, _ = start_airflow(self.settings, logs, port, triggerer=False)
            self.api = airflow_api(self.settings, port)
            self.api.wait_healthy(alive=self.alive)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        print(f"Airflow is up at {self.api.base_url} (logs in {logs}); the demo's runs go through its scheduler")
        return self

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def __exit__(self, *exc) -> None:
        from airloop.cli.processes import _stop_all

        _stop_all(self.procs)


def _existing_runs(api, dag_id: str, first: date, last: date) -> list[dict]:
    return sorted(api.runs(dag_id, logical_date_gte=f"{first}T00:00:00Z", logical_date_lte=f"{last}T00:00:00Z"),
                  key=lambda r: r["logical_date"] or "")


def backfill_days(airflow: DemoAirflow, dag_id: str, first: date, last: date) -> tuple[list[dict], float, bool]:
    """Backfill ``dag_id`` over ``[first, last]`` (what the UI's Backfill dialog does) and wait;
    return the runs, the seconds and whether any is new. Days that already have a run (a second
    ``make demo``) are not run again: their runs are returned as they are."""
    started = time.perf_counter()
    backfill = airflow.api.backfill(dag_id, first, last)
    runs = airflow.api.wait_backfill(backfill, alive=airflow.alive)
    return runs or _existing_runs(airflow.api, dag_id, first, last), time.perf_counter() - started, bool(runs)


def trigger_day(airflow: DemoAirflow, dag_id: str, day: date) -> tuple[dict, float, bool]:
    """A run of ``dag_id`` on the data interval ``[day, day + 1)`` (the trigger form with the
    logical date and the interval given), and wait; return the run, the seconds and whether it is
    new. A day that already has a run (a second ``make demo``) keeps it."""
    from datetime import timedelta

    from airloop.core.timeutil import day_start
    from airloop.ops.airflow_api import AirflowApiError

    started = time.perf_counter()
    start = day_start(day)
    try:
        run = airflow.api.trigger(dag_id, logical_date=start, data_interval=(start, start + timedelta(days=1)))
    except AirflowApiError as err:
        if "HTTP 409" not in str(err):  # 409: the day has its run already
            raise
        run = _existing_runs(airflow.api, dag_id, day, day)[-1]
        return airflow.api.wait_run(dag_id, run["dag_run_id"], alive=airflow.alive), time.perf_counter() - started, False
    return airflow.api.wait_run(dag_id, run["dag_run_id"], alive=airflow.alive), time.perf_counter() - started, True


def run_training(airflow: DemoAirflow, pipeline: str, as_of: str) -> tuple[str, float]:
    """The training DAG's scheduled run of ``as_of`` (a schedule tick), as a backfill."""
    day = date.fromisoformat(as_of)
    runs, seconds, _ = backfill_days(airflow, load_pipeline_config(pipeline).dag_id("train"), day, day)
    if not runs:
        raise RuntimeError(f"{pipeline}: {as_of} is not a tick of the training schedule: no run to backfill")
    return runs[-1]["state"], seconds


def run_monitoring(airflow: DemoAirflow, config, day: date) -> tuple[str, dict, float, bool]:
    """The monitoring DAG's run of ``[day, day + 1)``; return (state, what the monitor stored for
    the day, seconds, whether the run is new). Triggered with its interval rather than backfilled:
    a DAG has one backfill at a time, and the scheduler closes one only some seconds after its
    run, which would add that wait to every day of the loop."""
    run, seconds, new = trigger_day(airflow, config.dag_id("monitor"), day)
    return run["state"], interval_outcome(get_settings(), config.name, day, config.tenant), seconds, new


def wait_for_retraining(airflow: DemoAirflow, pipeline: str, known: set[str]) -> list[dict]:
    """The training runs the retrain request's Asset event made the scheduler start (not in
    ``known``), once finished."""
    dag_id = load_pipeline_config(pipeline).dag_id("train")
    deadline = time.monotonic() + 120
    while True:
        new = [r for r in airflow.api.runs(dag_id, run_type=["asset_triggered"]) if r["dag_run_id"] not in known]
        if new or time.monotonic() > deadline:
            break
        time.sleep(1)
    return [airflow.api.wait_run(dag_id, r["dag_run_id"], alive=airflow.alive) for r in new]


def interval_outcome(settings: Settings, pipeline: str, day: date, tenant: str | None = None) -> dict:
    """What monitoring stored for ``day``: the monitoring_runs row and the fired alert rules."""
    from airloop.core import store
    from airloop.core.timeutil import day_bounds
    from airloop.monitoring.interval import stored_interval

    return stored_interval(store.get_engine(settings.monitoring_db_uri), pipeline, day_bounds(day)[0], tenant)


def replay_traffic(settings: Settings, config, day: date) -> int:
    """Send ``day``'s claims through the serving API as the business would have (``airloop
    replay``: each source row with its claim id as request id and its claim time as event
    time); return the records serving accepted."""
    from airloop.serving.replay import replay_day

    return replay_day(settings, config, day).accepted


def pending_retrain(settings: Settings, config, day: date) -> dict | None:
    """The retrain request monitoring made for ``day`` (None when none was requested)."""
    from airloop.core import store
    from airloop.core.timeutil import day_bounds
    from airloop.monitoring.retrain import retrain_request

    return retrain_request(store.get_engine(settings.monitoring_db_uri), config.name, day_bounds(day)[0], config.tenant)


def wait_for_serving_log(settings: Settings, config, day: date, sent: int, seconds: float = 30.0) -> int:
    """Wait until serving's batched prediction writer has logged the ``sent`` requests of ``day``
    (it writes every 0.5 s); return the rows logged."""
    import sqlalchemy as sa

    from airloop.core import store
    from airloop.core.timeutil import day_bounds

    start, end = day_bounds(day)
    table = store.predictions
    query = sa.select(sa.func.count()).select_from(table).where(
        table.c.pipeline == config.name, table.c.tenant == config.tenant, table.c.ts >= start, table.c.ts < end)
    engine = store.get_engine(settings.monitoring_db_uri)
    deadline = time.monotonic() + seconds
    while True:
        with engine.connect() as conn:
            logged = conn.execute(query).scalar() or 0
        if logged >= sent or time.monotonic() > deadline:
            return logged
        time.sleep(0.25)


def cmd_train(args) -> int:
    """Train one interval through Airflow's ``dag.test`` (in this process: no scheduler needed)."""
    from airflow.dag_processing.dagbag import DagBag

    settings = get_settings()
    ensure_secrets(settings)
    bag = DagBag(dag_folder=str(settings.root / "dags" / "airloop_training.py"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag_id = load_pipeline_config(args.pipeline, settings).dag_id("train")
    dag = bag.get_dag(dag_id)
    started = time.perf_counter()
    run = dag.test(logical_date=datetime.fromisoformat(args.as_of).replace(tzinfo=timezone.utc),
                   run_conf={"as_of": args.as_of})
    state, seconds = str(getattr(run, "state", "unknown")), time.perf_counter() - started
    print(f"{dag_id} as of {args.as_of}: {state} in {seconds:.0f} s")
    return 0 if state == "success" else 1


# ------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The demo: history, serving, a training run to a champion, the bad-data day, the closed
    loop over three weeks of traffic, a summary. Every run goes through Airflow's scheduler."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per REST call is noise here
    settings = settings_with_secrets()  # the admin token its replays and summary send to serving
    t0 = time.perf_counter()
    cmd_simulate(argparse.Namespace(pipeline=args.pipeline, days=args.days, seed=7))
    if cmd_start_serving(args) != 0:
        return 1
    config = load_pipeline_config(args.pipeline, settings)
    from airloop.data.quarantine import quarantined_days

    bad_as_of, bad_day = "2026-03-15", "2026-03-10"  # a weekly tick whose window holds the bad-data day
    timeline = []
    with DemoAirflow(settings) as airflow:
        airflow.api.wait_dags([config.dag_id("train"), config.dag_id("monitor")])
        for dag_id in (config.dag_id("train"), config.dag_id("monitor")):
            airflow.api.unpause(dag_id)  # their schedules end with the history: nothing else starts
        state, seconds = run_training(airflow, args.pipeline, args.as_of)
        timeline.append((f"train as of {args.as_of} (backfill)", state, seconds))
        print(f"training as of {args.as_of}: {state} ({seconds:.0f} s)")
        already = date.fromisoformat(bad_day) in quarantined_days(config, settings)
        state_bad, seconds_bad = run_training(airflow, args.pipeline, bad_as_of)
        what = (f"train as of {bad_as_of} (backfill; its window holds the bad-data day {bad_day}: "
                "expected to stop at validate — read its log in the Airflow UI)")
        timeline.append((what, state_bad, seconds_bad))
        print(f"{what}: {state_bad} ({seconds_bad:.0f} s)")
        loop_events = run_loop(airflow, settings, config, timeline, date.fromisoformat(args.loop_from), args.loop_days)
    print_summary(settings, args.pipeline, timeline, time.perf_counter() - t0, loop_events)
    quarantined = date.fromisoformat(bad_day) in quarantined_days(config, settings)
    # a second `make demo` finds every run made: the bad-data run stays the failed run it was
    stopped = state_bad == "failed" or (already and state_bad == "success")
    return 0 if state == "success" and quarantined and stopped else 1


def run_loop(airflow: DemoAirflow, settings: Settings, config, timeline: list, first: date, days: int) -> list[str]:
    """The closed loop, day by day: replay the day's traffic through serving, run the day's
    monitoring (a backfill), and when monitoring requests a retrain, wait for the training run
    that its Asset event makes the scheduler start."""
    from datetime import timedelta

    events: list[str] = []
    previous_alerts: list[str] = []
    train_dag = config.dag_id("train")
    known = {r["dag_run_id"] for r in airflow.api.runs(train_dag, run_type=["asset_triggered"])}
    for offset in range(days):
        day = first + timedelta(days=offset)
        sent = replay_traffic(settings, config, day)
        wait_for_serving_log(settings, config, day, sent)
        state, summary, seconds, new = run_monitoring(airflow, config, day)
        alerts = [a["rule"] for a in summary.get("alerts", [])]
        drifted = summary.get("drifted_features") or []
        line = (f"{day}: {sent} requests served by v{summary.get('model_version')}, monitoring {state} "
                f"({seconds:.0f} s), drift share {summary.get('drift_share')}, alerts {alerts or 'none'}")
        print(line)
        if alerts != previous_alerts:  # summarise changes; the alert table has every day
            events.append(f"{day}: alerts {alerts or 'none'}" + (f" (drifted: {', '.join(drifted)})" if drifted else ""))
        previous_alerts = alerts
        request = pending_retrain(settings, config, day)
        if request and not new:  # a second `make demo`: that retraining ran the first time
            events.append(f"{day}: retraining requested as of {request['as_of']} (run by an earlier demo)")
        elif request:
            events.append(f"{day}: retraining requested as of {request['as_of']}: {request['reason'][:160]}")
            started = time.perf_counter()
            for run in wait_for_retraining(airflow, config.name, known):
                known.add(run["dag_run_id"])
                seconds_t = time.perf_counter() - started
                timeline.append((f"retrain as of {request['as_of']} (Asset event from monitoring)", run["state"], seconds_t))
                events.append(f"{request['as_of']}: retraining run {run['dag_run_id']} {run['state']} ({seconds_t:.0f} s)")
    return events


def print_summary(settings: Settings, pipeline: str, timeline: list[tuple[str, str, float]] | None = None,
                  total_s: float | None = None, loop_events: list[str] | None = None) -> None:
    """Print where to look (UIs, serving, reports) and what the loop did."""
    import httpx

    from airloop.core import names, store
    from airloop.data.quarantine import quarantined_days
    from airloop.registry import client as registry_client
    from airloop.registry import ledger

    config = load_pipeline_config(pipeline, settings)
    client = registry_client.get_client(settings)
    champion = registry_client.alias_version(client, config.model_name, names.CHAMPION)
    lines = ["", "=" * 78, f"airloop demo summary — pipeline {config.name} ({config.task})", "=" * 78]
    for what, state, seconds in timeline or []:
        lines.append(f"  {what}: {state} ({seconds:.0f} s)")
    if champion:
        metrics = registry_client.run_metrics(client, champion.run_id)
        shown = {k.removeprefix("holdout_"): round(v, 4) for k, v in metrics.items()
                 if k in ("holdout_roc_auc", "holdout_pr_auc", "holdout_f1", "holdout_latency_p95_ms")}
        lines.append(f"  champion: {config.model_name} v{champion.version} ({champion.tags.get('airloop.estimator')}), "
                     f"holdout {shown}")
        lines.append(f"  champion decision: {decision_summary(config, champion.tags, metrics)}")
    else:
        lines.append("  champion: none")
    engine = store.get_engine(settings.monitoring_db_uri)
    if loop_events:
        lines.append("  closed loop:")
        lines += [f"    {e}" for e in loop_events]
    for row in ledger.ledger_rows(engine, config.name)[-9:]:  # a training run writes one row per environment
        lines.append(f"  ledger [{row.get('environment') or row.get('alias')}]: {row['action']} "
                     f"v{row['from_version'] or '-'} -> v{row['to_version']} by {row['actor']}: {row['reason'][:90]}")
    for day in sorted(quarantined_days(config, settings)):
        lines.append(f"  quarantined: {day} -> {settings.quarantine_dir / config.name / day.isoformat()}")
    from airloop.monitoring.history import daily_lines  # estimated vs realized per day, alerts opened(+)/closed(-)

    lines += ["  monitoring per day (estimate from served scores; realized once the day's labels arrived; "
              "trailing: the version's rows labelled so far, what the performance rules judge):",
              *daily_lines(engine, config)]
    try:
        auth = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
        answer = httpx.get(f"{settings.serving_url}/model", timeout=5, headers=auth)
        served = answer.json()
        if answer.status_code == 200:
            lines.append(f"  serving: {settings.serving_url} answers with {served.get('name')} v{served.get('version')}")
        else:
            lines.append(f"  serving: {settings.serving_url} is up but not ready: {served}")
    except (httpx.HTTPError, ValueError) as err:
        lines.append(f"  serving: {settings.serving_url} not reachable ({err})")
    lines += [
        "", "Where to look:",
        f"  Serving API     {settings.serving_url}/docs   (POST /predict, GET /model, /metrics)",
        f"  MLflow UI       make up, then {_experiment_url(settings, client, config)}  (experiment {config.experiment_name})",
        f"  Airflow UI      make up, then http://127.0.0.1:{AIRFLOW_PORT.get()}  (DAG {config.dag_id('train')})",
        f"  Validation      {settings.validation_dir / config.name}",
        f"  Ledger          {settings.monitoring_db_uri}  (table promotion_ledger)",
        f"  Monitoring      {settings.state_dir / 'reports'}  (Evidently HTML; tables monitoring_runs,"
        " feature_drift, alerts, retrain_requests)",
        f"  Try it          curl -s -H \"Authorization: Bearer $(make -s token)\" {settings.serving_url}/model"
        f"   (tokens in {settings.state_dir / 'secrets.env'})",
    ]
    if total_s is not None:
        lines.append(f"\nDemo finished in {total_s / 60:.1f} min.")
    print("\n".join(lines))


def decision_summary(config, tags: dict[str, str], metrics: dict[str, float]) -> str:
    """``threshold 0.1388 (max_f1), calibration sigmoid, holdout brier 0.0421, ece 0.0054, f1 0.2900,
    precision 0.2310, recall 0.3870 at the threshold``: how the champion decides and how well."""
    from airloop.registry.tags import CALIBRATION_TAG, OBJECTIVE_TAG, THRESHOLD_TAG

    def figure(name: str) -> str:
        value = metrics.get(f"holdout_{name}")
        return f"{name} {value:.4f}" if isinstance(value, (int, float)) else f"{name} n/a"

    parts = []
    if config.task == "binary_classification":
        threshold = tags.get(THRESHOLD_TAG)
        parts.append(f"threshold {float(threshold):.4f} ({tags.get(OBJECTIVE_TAG, '?')})" if threshold
                     else "threshold 0.5 (argmax; none tuned)")
    parts.append(f"calibration {tags.get(CALIBRATION_TAG, 'none')}")
    quality = ["brier", "ece", "f1", "precision", "recall"] if config.task == "binary_classification" else ["accuracy"]
    at = " at the threshold" if config.task == "binary_classification" else ""
    return ", ".join(parts) + ", holdout " + ", ".join(figure(q) for q in quality) + at


def _experiment_url(settings: Settings, client, config) -> str:
    """The experiment in MLflow's model-training view (``make up``'s MLflow UI for a local store)."""
    from airloop.registry import client as registry_client

    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return f"http://127.0.0.1:{MLFLOW_PORT.get()}"
    return registry_client.ui_url(settings, experiment.experiment_id)


def cmd_summary(args) -> int:
    """Print the summary on its own."""
    print_summary(settings_with_secrets(), args.pipeline)
    return 0
