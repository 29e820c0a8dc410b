"""
### airloop monitoring — `<pipeline>__monitor`

One run per data interval (daily for the demo):

`ingest_labels → traffic_quality → monitor → {alerts, retrain_decision → request_retrain, post_deploy_guard}`

**Runs side by side, in interval order where it matters.** Up to `AIRLOOP_MONITORING_MAX_ACTIVE_RUNS`
(3) runs at once. `ingest_labels` and `traffic_quality` read only their own interval and overlap
freely. `monitor` (estimate checks of earlier intervals, the champion the previous guard may have
rolled back), `alerts` (alert lifecycles), `retrain_decision` (the cool-down) and
`post_deploy_guard` (the champion's first intervals) read earlier intervals' results: `monitor`
waits for the previous interval's monitor and for its alerts, decision and guard
(`depends_on_past` + `wait_for_downstream`; skipped counts as done), and those three follow
`monitor`, so all four keep the intervals' order. A failed one holds the later intervals until it
is cleared and succeeds. Backfills therefore need a reprocess behaviour (`--reprocess-behavior
failed`, or "Missing and Errored Runs" in the dialog).

* **traffic_quality**: the pipeline's validation suite (its feature expectations: types, nulls,
  ranges, declared values) on the interval's served features; a row in `traffic_quality`, the GX
  result and Data Docs under `<state>/validation/<pipeline>/traffic/<day>/`. The failed count is
  the rule metric `traffic_quality_failed` of the summary `monitor` computes.

* **monitor**: the interval's served traffic against the training reference of the model version
  that was champion then (promotion ledger): Evidently drift report (HTML, also logged to the
  version's MLflow run), per-feature statistic and verdict stored every run, prediction drift,
  performance on the delayed labels, volume / error rate / latency. Results are upserted per
  interval: re-running an interval changes nothing.
* **alerts**: rules from the pipeline file with severities; one row per rule and interval in the
  `alerts` table, delivered through Airflow notifiers (webhook, e-mail); failed deliveries are
  recorded and retried.
* **post_deploy_guard**: within a new champion's first monitored intervals, an error rate,
  latency or quality drop beyond the pipeline's `promotion.post_deploy_guard` limits rolls it
  back to the previous champion (ledger row, serving reloaded). Only the current champion is
  ever rolled back, so backfills over old history never touch today's model.
* **retrain_decision**: whether a retrain rule fired outside the cool-down (stored per interval);
  when not, `request_retrain` is skipped without starting a task process.
* **request_retrain**: the Asset event (with the reason and as-of day) that triggers
  `<pipeline>__train`.

Backfill with `airflow backfill create --dag-id <pipeline>__monitor --from-date … --to-date …
--reprocess-behavior failed`.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import get_settings
from airloop_provider.assets import retrain_asset_uri
from airloop_provider.dag_defaults import default_args
from airloop_provider.timetables import ScheduleUntilCronDataInterval

#: ``monitor`` and the tasks after it read earlier intervals' results: each monitor waits for the
#: previous interval's monitor and its direct downstream tasks to have succeeded (or been skipped),
#: which orders those too. One waiting task per run: the scheduler re-checks it on every loop.
IN_ORDER = {"depends_on_past": True, "wait_for_downstream": True}


def monitoring_dag(pipeline: str):
    """Build the monitoring DAG of ``pipeline`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    retrain = Asset(retrain_asset_uri(config), extra={"pipeline": config.name})

    @dag(
        dag_id=config.dag_id("monitor"),
        description=f"Monitor {config.name}: drift, performance, operations, alerts, retraining",
        doc_md=__doc__,
        # Data-interval timetable: each run covers [previous tick, this tick) — e.g. one day; the
        # schedule (and backfills) stop at schedule.end_date, manual runs always run.
        schedule=ScheduleUntilCronDataInterval(config.monitoring.schedule, "UTC", end=config.schedule.end),
        start_date=config.schedule.start,
        catchup=False,
        # runs overlap; the tasks reading earlier intervals keep their order (depends_on_past below)
        max_active_runs=get_settings().monitoring_max_active_runs,
        tags=["monitoring", "airloop", config.name],
        default_args=default_args("monitoring"),
        params={"day": Param(None, type=["null", "string"], format="date",
                             description="Monitor this day (re-run any day from here). Empty: the run's data "
                                         "interval; a manual run past the served traffic takes its newest day.")},
    )
    def monitor_pipeline():
        @task
        def ingest_labels(**context) -> dict:
            from airflow.exceptions import AirflowFailException

            from airloop.tasks import monitoring
            from airloop.tasks.runs import NoDataForRun
            from airloop_provider.context import monitored_interval

            try:  # resolved once here; every later task works on this interval
                interval = monitored_interval(context, config, get_settings())
            except NoDataForRun as err:  # nothing to monitor: say what to change, do not retry
                raise AirflowFailException(str(err)) from err
            return {**monitoring.ingest(config, get_settings(), interval["start"], interval["end"]),
                    "interval": interval}

        @task
        def traffic_quality(labels: dict) -> dict:
            from airloop.tasks import monitoring

            interval = labels["interval"]
            return {**monitoring.traffic_quality(config, get_settings(), interval["start"], interval["end"]),
                    "interval": interval}

        # waits for the previous interval's monitor, alerts, retrain decision and guard (a rollback
        # there changes the champion this interval is judged against)
        @task(**IN_ORDER)
        def monitor(labels: dict) -> dict:
            from airloop.tasks import monitoring

            interval = labels["interval"]
            return {**monitoring.monitor(config, get_settings(), interval["start"], interval["end"]),
                    "interval": interval}

        @task
        def alerts(summary: dict, **context) -> dict:
            from airloop.tasks import monitoring
            from airloop_provider.notifiers import alert_senders

            return monitoring.alert(config, get_settings(), summary["interval"]["start"], summary,
                                    alert_senders(config, context))

        # False skips request_retrain from here: a task ending in "skipped" is marked so only once
        # its process has exited, which Airflow 3.3's supervisor often notices a second late
        @task.short_circuit
        def retrain_decision(summary: dict) -> dict | bool:
            from airloop.tasks import monitoring

            interval = summary["interval"]
            return monitoring.retrain_condition(config, get_settings(), interval["start"], interval["end"], summary)

        @task(outlets=[retrain])
        def request_retrain(decision: dict, **context) -> dict:
            context["outlet_events"][retrain].extra = {"as_of": decision["as_of"], "reason": decision["reason"][:2000],
                                                       "window_days": decision.get("window_days")}
            return decision

        @task
        def post_deploy_guard(summary: dict, **context) -> dict:
            from airloop.tasks import lifecycle
            from airloop_provider.context import run_actor, run_context
            from airloop_provider.hooks import ServingHook

            return lifecycle.post_deploy_guard(config, get_settings(), summary, actor=run_actor(context),
                                               run_context=run_context(context, None), endpoint=ServingHook().endpoint)

        labels = ingest_labels()
        summary = monitor(labels)
        traffic_quality(labels) >> summary  # the summary (and its alert rules) reads the traffic check
        alerts(summary)
        request_retrain(retrain_decision(summary))
        post_deploy_guard(summary)

    return monitor_pipeline()


for _pipeline in (c.name for c in load_all_pipelines()[0]):  # bad files: see airloop_pipeline_check.py
    _dag = monitoring_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
