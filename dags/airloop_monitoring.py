"""
### airloop monitoring — `<pipeline>__monitor`

One run per data interval (daily for the demo):

`ingest_labels → monitor → alerts → request_retrain`, and `monitor → post_deploy_guard`

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

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import get_settings
from airloop_provider.assets import retrain_asset_uri
from airloop_provider.dag_defaults import default_args


def monitoring_dag(pipeline: str):
    """Build the monitoring DAG of ``pipeline`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    retrain = Asset(retrain_asset_uri(config), extra={"pipeline": config.name})

    @dag(
        dag_id=config.dag_id("monitor"),
        description=f"Monitor {config.name}: drift, performance, operations, alerts, retraining",
        doc_md=__doc__,
        # Data-interval timetable: each run covers [previous tick, this tick) — e.g. one day.
        schedule=CronDataIntervalTimetable(config.monitoring.schedule, timezone="UTC"),
        start_date=config.schedule.start,
        end_date=config.schedule.end,
        catchup=False,
        max_active_runs=1,
        tags=["monitoring", "airloop", config.name],
        default_args=default_args("monitoring"),
    )
    def monitor_pipeline():
        @task
        def ingest_labels(data_interval_start=None, data_interval_end=None) -> dict:
            from airloop.tasks import monitoring

            return monitoring.ingest(config, get_settings(), data_interval_start, data_interval_end)

        @task
        def monitor(labels: dict, data_interval_start=None, data_interval_end=None) -> dict:
            from airloop.tasks import monitoring

            return monitoring.monitor(config, get_settings(), data_interval_start, data_interval_end)

        @task
        def alerts(summary: dict, data_interval_start=None, **context) -> dict:
            from airloop.tasks import monitoring
            from airloop_provider.notifiers import alert_senders

            return monitoring.alert(config, get_settings(), data_interval_start, summary, alert_senders(config, context))

        @task(outlets=[retrain])
        def request_retrain(summary: dict, data_interval_start=None, data_interval_end=None, **context) -> dict:
            from airflow.exceptions import AirflowSkipException

            from airloop.tasks import monitoring

            decision = monitoring.retrain_decision(config, get_settings(), data_interval_start, data_interval_end, summary)
            if not decision["retrain"]:
                raise AirflowSkipException(f"no retraining: {decision.get('reason') or 'no retrain rule fired'}")
            context["outlet_events"][retrain].extra = {"as_of": decision["as_of"], "reason": decision["reason"][:2000]}
            return decision

        @task
        def post_deploy_guard(summary: dict, **context) -> dict:
            from airloop.tasks import lifecycle
            from airloop_provider.context import run_actor, run_context
            from airloop_provider.hooks import ServingHook

            return lifecycle.post_deploy_guard(config, get_settings(), summary, actor=run_actor(context),
                                               run_context=run_context(context, None), endpoint=ServingHook().endpoint)

        summary = monitor(ingest_labels())
        alerts(summary)
        request_retrain(summary)
        post_deploy_guard(summary)

    return monitor_pipeline()


for _pipeline in (c.name for c in load_all_pipelines()[0]):  # bad files: see airloop_pipeline_check.py
    _dag = monitoring_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
