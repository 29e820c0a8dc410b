"""Operators: thin adapters from Airflow (context, templating, connections) to airloop stages."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
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


class PromotionApprovalOperator(ApprovalOperator):
    """Ask a person to approve a promotion into ``environment`` (Airflow's *Required Actions*).

    ``promotion`` is the previous step's result: when it awaits this environment's approval
    (``awaiting_approval``) the request shows :func:`airloop.tasks.approval.approval_summary`
    (candidate vs incumbent, computed when the task runs) and waits; otherwise the task skips
    (nothing to ask). *Approve*: the task succeeds and the next task promotes, gates judged again.
    *Reject*, or no answer within ``response_timeout`` (the default answer is *Reject*): a
    ``refuse`` ledger row names who rejected (and their *comment*) or says it timed out, and the
    downstream tasks are skipped: the run ends without a failure and earlier moves stay.

    :param pipeline: pipeline name.
    :param environment: the environment whose alias the approval guards.
    :param promotion: the previous promotion step's output (XComArg or dict).
    :param snapshot: the training run's extract output (its as-of day goes to the ledger), or ``None``.
    """

    template_fields: Sequence[str] = ("subject", "body", "pipeline", "environment", "promotion", "snapshot")
    ui_color = "#fdf0c6"

    def __init__(self, *, pipeline: str, environment: str, promotion: Any, snapshot: Any = None, **kwargs) -> None:
        from airflow.sdk import Param

        kwargs.setdefault("subject", f"{pipeline}: approve a promotion into {environment}")
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)  # what an unanswered request becomes
        kwargs.setdefault("params", {"comment": Param(None, type=["null", "string"], maxLength=1000,
                                                      description="Why (kept in the promotion ledger).")})
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.environment = environment
        self.promotion = promotion
        self.snapshot = snapshot

    def _config(self):
        from airloop.core.pipeline import load_pipeline_config
        from airloop.core.settings import get_settings

        settings = get_settings()
        return load_pipeline_config(self.pipeline, settings), settings

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        from airloop.tasks.approval import approval_subject, approval_summary

        held = self.promotion or {}
        if held.get("awaiting_approval") != self.environment:
            raise AirflowSkipException(f"nothing to approve for {self.environment}: {held.get('reason')}")
        config, settings = self._config()
        self.subject = approval_subject(config, held["version"], self.environment)
        self.body = approval_summary(config, settings, held["version"], self.environment)
        self.log.info("asking for approval: %s (Required Actions; timeout %s)", self.subject, self.response_timeout)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        from airflow.sdk.timezone import utcnow

        from airloop.tasks.approval import refuse_unapproved, responder

        timed_out = bool(event.get("timedout")) or event.get("error_type") == "timeout"
        if event.get("error_type") == "timeout":  # no default answer stored: the same as the default, Reject
            event = {"chosen_options": [self.REJECT], "params_input": {}, "responded_at": utcnow(),
                     "responded_by_user": None}
        approved = list(event.get("chosen_options") or []) == [self.APPROVE]
        outcome: dict[str, Any] = {"approved": approved, "timed_out": timed_out}
        if not approved and not event.get("error"):
            config, settings = self._config()  # recorded before the downstream tasks are skipped
            refusal = refuse_unapproved(
                config, settings, self.promotion, user=responder(event.get("responded_by_user")),
                comment=(event.get("params_input") or {}).get("comment"), timed_out=timed_out,
                run_context=run_context(context, (self.snapshot or {}).get("as_of")))
            outcome["refusal"] = refusal["reason"]
            self.log.info("%s stays on %s: %s", self.environment,
                          f"v{refusal['previous']}" if refusal["previous"] else "no version", refusal["reason"])
        result = super().execute_complete(context=context, event=event)
        return dict(result) | outcome
