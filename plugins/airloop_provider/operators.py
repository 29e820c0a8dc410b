"""Operators: thin adapters from Airflow (context, templating, connections) to airloop stages."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator


class DeployModelOperator(BaseOperator):
    """Hot-reload the pipeline's ``champion`` in serving, smoke-test it, roll back on failure.

    :param pipeline: pipeline name (``include/pipelines/<name>.yaml``).
    :param promotion: the promote task's output (XComArg or dict); skipped unless it moved the
        serving environment (the champion).
    :param snapshot: the extract task's output (smoke-test records come from it); ``None``: the
        promoted version's own training snapshot, else its input example.
    :param serving_conn_id: connection of the serving process (see :class:`ServingHook`).
    """

    template_fields: Sequence[str] = ("pipeline", "promotion", "snapshot", "serving_conn_id")
    ui_color = "#d6f5e3"

    def __init__(self, *, pipeline: str, promotion: Any, snapshot: Any = None,
                 serving_conn_id: str = "airloop_serving", **kwargs) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.promotion = promotion
        self.snapshot = snapshot
        self.serving_conn_id = serving_conn_id

    @cached_property
    def hook(self):
        """The serving hook (built lazily, at execute time)."""
        from airloop_provider.hooks import ServingHook

        return ServingHook(serving_conn_id=self.serving_conn_id)

    def execute(self, context) -> dict[str, Any]:
        from airflow.exceptions import AirflowSkipException

        from airloop.core.pipeline import load_pipeline_config
        from airloop.core.settings import get_settings
        from airloop.tasks import lifecycle as stages

        if not self.promotion.get("promoted"):
            raise AirflowSkipException(f"nothing to deploy: {self.promotion.get('reason')}")
        settings = get_settings()
        config = load_pipeline_config(self.pipeline, settings)
        environment = self.promotion.get("environment")
        if environment and not config.promotion.environment(environment).serving:
            raise AirflowSkipException(f"{environment} is not served by this serving process; nothing to reload")
        self.log.info("deploying %s champion to %s", config.model_name, self.hook.endpoint.url)
        return stages.deploy(config, self.promotion, self.snapshot, self.hook.endpoint, settings,
                             actor=run_actor(context),
                             run_context=run_context(context, (self.snapshot or {}).get("as_of")))


def run_actor(context) -> str:
    """Who or what started this run: the triggering user, else the run type (scheduled, backfill)."""
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    return f"user:{user}" if user else f"airflow:{dag_run.run_type}"


def as_of_day(context) -> str:
    """The run's as-of day: the form's ``as_of``, else the retrain request's (Asset event), else the
    data interval end — never the wall clock."""
    from airloop_provider.assets import as_of_from_asset_events

    chosen = context["params"].get("as_of")
    if chosen:
        return str(chosen)[:10]
    requested, _ = as_of_from_asset_events(context.get("triggering_asset_events"))
    if requested:
        return requested
    end = context.get("data_interval_end") or context["dag_run"].run_after
    return end.date().isoformat()


def run_context(context, as_of: str | None) -> dict[str, str]:
    """Lineage fields of the current DAG run (recorded as MLflow tags and in the ledger)."""
    from airloop_provider.assets import as_of_from_asset_events

    dag_run = context["dag_run"]
    conf = dag_run.conf or {}
    _, requested_reason = as_of_from_asset_events(context.get("triggering_asset_events"))
    return {
        "dag_id": dag_run.dag_id,
        "dag_run_id": dag_run.run_id,
        "run_type": str(dag_run.run_type),
        "as_of": as_of or "",
        "trigger_reason": str(conf.get("reason") or requested_reason or ""),
    }
