"""
### airloop lifecycle — `<pipeline>__promote`, `<pipeline>__rollback`, `<pipeline>__abtest`, `<pipeline>__abtest_evaluate`

Manual model lifecycle, one form each (Airflow UI → *Trigger DAG*):

* **`<pipeline>__promote`** — move a registered version into an environment (`dev → staging → prod`,
  from the pipeline file). Form: model, version, target environment, reason, force.
  `promote → deploy`: the version must be in the environment before it and pass the target's
  gates (thresholds, latency budget, minimum training rows, beating the environment's current
  version on the same holdout); the decision is written to the promotion ledger either way.
  Promoting into the serving environment makes the version the champion and hot-reloads serving
  (smoke-tested; a failure restores the previous champion). A refused promotion fails the run
  with the failed gates in the log; `force` overrides them (recorded as forced). An environment
  in `promotion.require_approval` waits at `approve_<env>` (Airflow's *Required Actions*) for a
  person: approve → `promote_<env>` judges the gates again and moves it (the ledger names the
  approver); reject or timeout → a recorded refusal, the run ends without moving it.
* **`<pipeline>__rollback`** — one step back: form with environment, target (`previous` or a
  version that served there before) and reason. The alias moves back, serving reloads (for the
  serving environment) and a `rollback` ledger row records who and why.

* **`<pipeline>__abtest`** — start (or stop) an A/B or shadow test of the champion against a
  challenger version: traffic percentage, sticky request key, success metric, significance level,
  minimum labelled rows per variant, maximum duration. Serving starts routing at once.
* **`<pipeline>__abtest_evaluate`** — daily: per running test, per-variant quality on labelled
  rows, latency and error rate, a significance test with a confidence interval; at the fixed
  horizon it concludes: promote the challenger (gated path, serving reloaded) or keep the
  champion. Results are upserted per interval (re-runs and backfills change nothing).

Promotions and rollbacks of a pipeline are serialised by a database lock: two at once never
both win. The same operations are in the airloop API (`/airloop/api/v1/...` on the Airflow API
server, admin token).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import get_settings
from airloop_provider.context import run_actor, run_context
from airloop_provider.dag_defaults import default_args
from airloop_provider.operators import DeployModelOperator, PromotionApprovalOperator


def _common(config, action: str) -> dict:
    return {
        "schedule": None,
        "start_date": config.schedule.start,
        "catchup": False,
        "doc_md": __doc__,
        "tags": ["lifecycle", action, "airloop", config.name],
        "default_args": default_args("lifecycle"),
    }


def promotion_dag(pipeline: str):
    """Build ``<pipeline>__promote`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    environments = [env.name for env in config.promotion.path()]

    @dag(
        dag_id=config.dag_id("promote"),
        description=f"Promote a {config.name} model version into an environment (gated, ledgered)",
        params={
            "model": Param(config.model_name, type="string", enum=[config.model_name],
                           description="Registered model (this pipeline's)."),
            "version": Param(1, type="integer", minimum=1, description="Model version to promote."),
            "environment": Param(environments[0], type="string", enum=environments,
                                 description="Target environment; the version must be in the one before it."),
            "reason": Param("", type="string", minLength=3, maxLength=1000,
                            description="Why (kept in the promotion ledger)."),
            "force": Param(False, type="boolean",
                           description="Promote even if gates fail (recorded as forced)."),
        },
        **_common(config, "promotion"),
    )
    def promote_model():
        @task
        def promote(**context) -> dict:
            from airflow.exceptions import AirflowFailException

            from airloop.tasks import lifecycle

            params = context["params"]
            result = lifecycle.promote(
                config, get_settings(), str(params["version"]), params["environment"], actor=run_actor(context),
                reason=params["reason"], force=bool(params["force"]), run_context=run_context(context, None))
            if not result["promoted"] and not result.get("noop") and not result.get("awaiting_approval"):
                raise AirflowFailException(f"promotion refused (recorded in the ledger): {result['reason']}")
            return result

        @task(trigger_rule="none_failed")  # runs when its approval task skipped (nothing was asked)
        def promote_approved(held: dict, approval_task: str, **context) -> dict:
            from airflow.exceptions import AirflowFailException

            from airloop.tasks.approval import promote_after_approval

            approval = context["ti"].xcom_pull(task_ids=approval_task)
            result = promote_after_approval(config, get_settings(), held, approval, requested_by=run_actor(context),
                                            run_context=run_context(context, None),
                                            force=bool(context["params"]["force"]))
            if result is not held and not result["promoted"] and not result.get("noop"):
                raise AirflowFailException(f"approved, but refused by the gates judged now (recorded in the "
                                           f"ledger): {result['reason']}")
            return result

        promotion = promote()
        for env in (e for e in environments if config.promotion.needs_approval(e)):
            approval = PromotionApprovalOperator(
                task_id=f"approve_{env}", pipeline=config.name, environment=env, promotion=promotion,
                response_timeout=timedelta(hours=config.promotion.approval_timeout_hours))
            promotion = promote_approved.override(task_id=f"promote_{env}")(promotion, approval.task_id)
            approval >> promotion
        DeployModelOperator(task_id="deploy", pipeline=config.name, promotion=promotion)

    return promote_model()


def rollback_dag(pipeline: str):
    """Build ``<pipeline>__rollback`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    environments = [env.name for env in config.promotion.path()]

    @dag(
        dag_id=config.dag_id("rollback"),
        description=f"Roll a {config.name} environment back one step (or to a version)",
        params={
            "environment": Param(config.promotion.serving_environment.name, type="string", enum=environments,
                                 description="Environment to roll back."),
            "target": Param("previous", type="string", pattern=r"^(previous|[0-9]+)$",
                            description="'previous' or a version number that served there before."),
            "reason": Param("", type="string", minLength=3, maxLength=1000,
                            description="Why (kept in the promotion ledger)."),
        },
        **_common(config, "rollback"),
    )
    def rollback_model():
        @task
        def rollback(**context) -> dict:
            from airloop.tasks import lifecycle
            from airloop_provider.hooks import ServingHook

            params = context["params"]
            return lifecycle.rollback_environment(
                config, get_settings(), params["environment"], params["target"], actor=run_actor(context),
                reason=params["reason"], run_context=run_context(context, None), endpoint=ServingHook().endpoint)

        rollback()

    return rollback_model()


def abtest_dag(pipeline: str):
    """Build ``<pipeline>__abtest`` (start/stop form; wiring only)."""
    config = load_pipeline_config(pipeline)

    @dag(
        dag_id=config.dag_id("abtest"),
        description=f"Start or stop an A/B or shadow test of {config.name}'s champion against a challenger",
        params={
            "action": Param("start", type="string", enum=["start", "stop"]),
            "challenger_version": Param(None, type=["null", "integer"], minimum=1,
                                        description="Empty: the version the 'challenger' alias points at."),
            "mode": Param("ab", type="string", enum=["ab", "shadow"],
                          description="ab: split traffic; shadow: the challenger scores every request, unseen."),
            "traffic_pct": Param(20.0, type="number", exclusiveMinimum=0, exclusiveMaximum=100,
                                 description="Percent of request keys sent to the challenger (A/B mode)."),
            "key_field": Param("request_id", type="string",
                               description="Sticky key: request_id, header (X-Request-Key) or a feature name."),
            "success_metric": Param(None, type=["null", "string"],
                                    enum=[None, "roc_auc", "accuracy", "log_loss", "brier", "conversion", "mae", "rmse"],
                                    description="Empty: the pipeline's training metric."),
            "alpha": Param(0.05, type="number", exclusiveMinimum=0, maximum=0.2,
                           description="Significance level (two-sided)."),
            "min_samples": Param(1000, type="integer", minimum=30,
                                 description="Labelled rows per variant at which the test is decided."),
            "max_duration_days": Param(14, type="number", exclusiveMinimum=0),
            "tenant": Param("default", type="string"),
            "test_id": Param(None, type=["null", "string"], description="To stop: the test's id."),
            "reason": Param("", type="string", maxLength=1000),
        },
        **_common(config, "abtest"),
    )
    def ab_test():
        @task
        def apply(**context) -> dict:
            from airloop.tasks import lifecycle
            from airloop_provider.hooks import ServingHook

            at = context["dag_run"].run_after  # when the operator asked: business time of a manual run
            return lifecycle.apply_abtest(config, get_settings(), context["params"], at, ServingHook().endpoint)

        apply()

    return ab_test()


def abtest_evaluation_dag(pipeline: str):
    """Build ``<pipeline>__abtest_evaluate`` (scheduled; wiring only)."""
    config = load_pipeline_config(pipeline)
    common = _common(config, "abtest")
    common.pop("schedule")  # live traffic: no end date (unlike the simulated history's DAGs)

    @dag(
        dag_id=config.dag_id("abtest_evaluate"),
        description=f"Evaluate and conclude {config.name}'s running A/B and shadow tests",
        schedule=CronDataIntervalTimetable(config.monitoring.schedule, timezone="UTC"),
        max_active_runs=1,
        **common,
    )
    def evaluate_ab_tests():
        @task
        def evaluate(data_interval_start=None, data_interval_end=None, **context) -> list:
            from airloop.tasks import lifecycle
            from airloop_provider.hooks import ServingHook

            return lifecycle.run_ab_evaluations(
                config, get_settings(), data_interval_start, data_interval_end, actor=run_actor(context),
                run_context=run_context(context, None), endpoint=ServingHook().endpoint)

        evaluate()

    return evaluate_ab_tests()


for _pipeline in (c.name for c in load_all_pipelines()[0]):  # bad files: see airloop_pipeline_check.py
    _dag = promotion_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
    _dag = rollback_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
    _dag = abtest_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
    _dag = abtest_evaluation_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
