"""The demo: the closed loop over the simulated history, and its summary."""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, datetime, timezone

from airloop.cli.commands import cmd_simulate, cmd_start_serving, ensure_secrets
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import AIRFLOW_PORT, MLFLOW_PORT, Settings, get_settings


# ---------------------------------------------------------------------------------- training
def run_training(pipeline: str, as_of: str, conf: dict | None = None) -> tuple[str, float]:
    """Run ``<pipeline>__train`` for ``as_of`` through Airflow's ``dag.test``; return (state, seconds).

    ``dag.test`` runs every task of a real DAG run in this process, one after the other (the
    mapped Optuna workers too); under the scheduler (``make up``) they run in parallel.
    """
    from airflow.dag_processing.dagbag import DagBag

    settings = get_settings()
    bag = DagBag(dag_folder=str(settings.root / "dags" / "airloop_training.py"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(load_pipeline_config(pipeline, settings).dag_id("train"))
    logical = datetime.fromisoformat(as_of).replace(tzinfo=timezone.utc)
    started = time.perf_counter()
    run = dag.test(logical_date=logical, run_conf={"as_of": as_of, **(conf or {})})
    return str(getattr(run, "state", "unknown")), time.perf_counter() - started


def _load_dag(file: str, dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(get_settings().root / "dags" / file))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def run_monitoring(pipeline: str, day: date) -> tuple[str, dict, float]:
    """Run ``<pipeline>__monitor`` for ``[day, day + 1)`` through ``dag.test``; return (state,
    the monitor task's summary, seconds)."""
    from datetime import timedelta

    dag = _load_dag("airloop_monitoring.py", load_pipeline_config(pipeline).dag_id("monitor"))
    started = time.perf_counter()
    # dag.test infers a manual run's interval as the last complete one before its logical date
    logical = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    run = dag.test(logical_date=logical)
    return str(run.state), interval_outcome(get_settings(), pipeline, day), time.perf_counter() - started


def interval_outcome(settings: Settings, pipeline: str, day: date) -> dict:
    """What monitoring stored for ``day``: the monitoring_runs row and the fired alert rules."""
    from airloop.core import store
    from airloop.core.timeutil import day_bounds
    from airloop.monitoring.interval import stored_interval

    return stored_interval(store.get_engine(settings.monitoring_db_uri), pipeline, day_bounds(day)[0])


def replay_traffic(settings: Settings, config, day: date) -> int:
    """Send ``day``'s claims through the serving API as the business would have: each record
    with its claim id as request id and its claim time as event time; return the records sent."""
    import httpx

    from airloop.data.simulator import generate_day

    frame = generate_day(day)
    records = json.loads(frame[list(config.features)].to_json(orient="records"))
    answer = httpx.post(f"{settings.serving_url}/predict", timeout=120, json={
        "records": records, "request_ids": frame[config.id_column].astype(str).tolist(),
        "event_ts": [ts.isoformat() for ts in frame[config.timestamp]]})
    answer.raise_for_status()
    return len(records)


def pending_retrain(settings: Settings, config, day: date) -> dict | None:
    """The retrain request monitoring made for ``day`` (None when none was requested)."""
    from airloop.core import store
    from airloop.core.timeutil import day_bounds
    from airloop.monitoring.retrain import retrain_request

    return retrain_request(store.get_engine(settings.monitoring_db_uri), config.name, day_bounds(day)[0])


def wait_for_serving_log(settings: Settings, seconds: float = 3.0) -> None:
    """Give serving's batched prediction writer time to flush (it writes every 0.5 s)."""
    time.sleep(seconds)


def cmd_train(args) -> int:
    """Train one interval through Airflow."""
    ensure_secrets(get_settings())
    state, seconds = run_training(args.pipeline, args.as_of)
    print(f"{args.pipeline}__train as of {args.as_of}: {state} in {seconds:.0f} s")
    return 0 if state == "success" else 1


# ------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The demo: history, serving, a training run to a champion, the bad-data day, a summary."""
    settings = get_settings()
    ensure_secrets(settings)
    t0 = time.perf_counter()
    cmd_simulate(argparse.Namespace(pipeline=args.pipeline, days=args.days, seed=7))
    if cmd_start_serving(args) != 0:
        return 1
    timeline = []
    state, seconds = run_training(args.pipeline, args.as_of)
    timeline.append((f"train as of {args.as_of}", state, seconds))
    print(f"training as of {args.as_of}: {state} ({seconds:.0f} s)")
    bad_as_of = "2026-03-11"
    bad_day = "2026-03-10"
    config = load_pipeline_config(args.pipeline, settings)
    from airloop.data.quarantine import quarantined_days

    already = date.fromisoformat(bad_day) in quarantined_days(config, settings)
    state_bad, seconds_bad = run_training(args.pipeline, bad_as_of)
    if already:
        what = f"train as of {bad_as_of} ({bad_day} was quarantined by an earlier run: excluded from the window)"
    else:
        what = f"train as of {bad_as_of} (window holds the bad-data day {bad_day}: expected to stop at validation)"
    timeline.append((what, state_bad, seconds_bad))
    print(f"{what}: {state_bad} ({seconds_bad:.0f} s)")
    loop_events = run_loop(settings, config, timeline, date.fromisoformat(args.loop_from), args.loop_days)
    print_summary(settings, args.pipeline, timeline, time.perf_counter() - t0, loop_events)
    quarantined = date.fromisoformat(bad_day) in quarantined_days(config, settings)
    stopped_or_excluded = state_bad == "failed" if not already else state_bad == "success"
    return 0 if state == "success" and quarantined and stopped_or_excluded else 1


def run_loop(settings: Settings, config, timeline: list, first: date, days: int) -> list[str]:
    """The closed loop, day by day: replay the day's traffic through serving, monitor the day,
    and when monitoring requests a retrain, run the training DAG as the Asset event asks (the
    scheduler does this under `make up`; here the demo plays the scheduler)."""
    from datetime import timedelta

    events: list[str] = []
    previous_alerts: list[str] = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        sent = replay_traffic(settings, config, day)
        wait_for_serving_log(settings)
        state, summary, seconds = run_monitoring(config.name, day)
        alerts = [a["rule"] for a in summary.get("alerts", [])]
        drifted = summary.get("drifted_features") or []
        line = (f"{day}: {sent} requests served by v{summary.get('model_version')}, monitoring {state} "
                f"({seconds:.0f} s), drift share {summary.get('drift_share')}, alerts {alerts or 'none'}")
        print(line)
        if alerts != previous_alerts:  # summarise changes; the alert table has every day
            events.append(f"{day}: alerts {alerts or 'none'}" + (f" (drifted: {', '.join(drifted)})" if drifted else ""))
        previous_alerts = alerts
        request = pending_retrain(settings, config, day)
        if request:
            events.append(f"{day}: retraining requested as of {request['as_of']}: {request['reason'][:160]}")
            state_t, seconds_t = run_training(config.name, request["as_of"], conf={"reason": request["reason"][:500]})
            timeline.append((f"retrain as of {request['as_of']} (requested by monitoring)", state_t, seconds_t))
            events.append(f"{request['as_of']}: retraining run {state_t} ({seconds_t:.0f} s)")
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
    else:
        lines.append("  champion: none")
    engine = store.get_engine(settings.monitoring_db_uri)
    if loop_events:
        lines.append("  closed loop:")
        lines += [f"    {e}" for e in loop_events]
    for row in ledger.ledger_rows(engine, config.name)[-5:]:
        lines.append(f"  ledger: {row['action']} v{row['from_version']} -> v{row['to_version']} by {row['actor']}: "
                     f"{row['reason'][:110]}")
    for day in sorted(quarantined_days(config, settings)):
        lines.append(f"  quarantined: {day} -> {settings.quarantine_dir / config.name / day.isoformat()}")
    try:
        answer = httpx.get(f"{settings.serving_url}/model", timeout=5)
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
        f"  MLflow UI       make up, then http://127.0.0.1:{MLFLOW_PORT.get()}  (experiment {config.experiment_name})",
        f"  Airflow UI      make up, then http://127.0.0.1:{AIRFLOW_PORT.get()}  (DAG {config.dag_id('train')})",
        f"  Validation      {settings.validation_dir / config.name}",
        f"  Ledger          {settings.monitoring_db_uri}  (table promotion_ledger)",
        f"  Monitoring      {settings.state_dir / 'reports'}  (Evidently HTML; tables monitoring_runs,"
        " feature_drift, alerts, retrain_requests)",
        f"  Try it          curl -s {settings.serving_url}/model",
    ]
    if total_s is not None:
        lines.append(f"\nDemo finished in {total_s / 60:.1f} min.")
    print("\n".join(lines))


def cmd_summary(args) -> int:
    """Print the summary on its own."""
    print_summary(get_settings(), args.pipeline)
    return 0
