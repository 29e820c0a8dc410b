"""Operators: thin adapters from Airflow (context, templating, connections) to airloop stages."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airloop_provider.context import run_actor, run_context


class DeployModelOperator(BaseOperator):
    """Hot-reload the pipeline's ``champion`` in serving, smoke-test it, roll back on failure.

    A pipeline serving has not seen yet (its file added after serving started) is picked up by
    that reload. When serving cannot load the version (or does not know the pipeline, or the
    smoke test fails) the champion and the serving environment's alias go back to the previous
    version (a first model: they are removed), a ledger row records it, and the task fails with
    the pipeline, the version and serving's answer (:func:`airloop.tasks.lifecycle.deploy`).

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
        self.log.info("deploying %s champion (v%s) to %s", config.model_name, self.promotion.get("version"),
                      self.hook.endpoint.for_pipeline(config).url)
        return stages.deploy(config, self.promotion, self.snapshot, self.hook.endpoint, settings,
                             actor=run_actor(context),
                             run_context=run_context(context, (self.snapshot or {}).get("as_of")))
