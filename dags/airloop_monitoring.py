"""
### airloop monitoring — `<pipeline>__monitor`

One run per data interval (daily for the demo):

`ingest_labels → traffic_quality → monitor → alerts → request_retrain`, and `monitor → post_deploy_guard`

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
* **request_retrain**: when a retrain rule fires and the cool-down allows, an Asset event
  (with the reason and as-of day) triggers `<pipeline>__train`.

Backfill with `airflow backfill create --dag-id <pipeline>__monitor --from-date … --to-date …`.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import get_settings
from airloop_provider.assets import retrain_asset_uri
from airloop_provider.dag_defaults import default_args
from airloop_provider.timetables import ScheduleUntilCronDataInterval


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
        max_active_runs=1,
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

        @task
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

        @task(outlets=[retrain])
        def request_retrain(summary: dict, **context) -> dict:
            from airflow.exceptions import AirflowSkipException

            from airloop.tasks import monitoring

            interval = summary["interval"]
            decision = monitoring.retrain_decision(config, get_settings(), interval["start"], interval["end"], summary)
            if not decision["retrain"]:
                raise AirflowSkipException(f"no retraining: {decision.get('reason') or 'no retrain rule fired'}")
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
        request_retrain(summary)
        post_deploy_guard(summary)

    return monitor_pipeline()


for _pipeline in (c.name for c in load_all_pipelines()[0]):  # bad files: see airloop_pipeline_check.py
    _dag = monitoring_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
