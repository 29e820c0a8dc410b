"""
### airloop lifecycle — `<pipeline>__promote`, `<pipeline>__rollback`

Manual model lifecycle, one form each (Airflow UI → *Trigger DAG*):

* **`<pipeline>__promote`** — move a registered version into an environment (`dev → staging → prod`,
  from the pipeline file). Form: model, version, target environment, reason, force.
  `promote → deploy`: the version must be in the environment before it and pass the target's
  gates (thresholds, latency budget, minimum training rows, beating the environment's current
  version on the same holdout); the decision is written to the promotion ledger either way.
  Promoting into the serving environment makes the version the champion and hot-reloads serving
  (smoke-tested; a failure restores the previous champion). A refused promotion fails the run
  with the failed gates in the log; `force` overrides them (recorded as forced).
* **`<pipeline>__rollback`** — one step back: form with environment, target (`previous` or a
  version that served there before) and reason. The alias moves back, serving reloads (for the
  serving environment) and a `rollback` ledger row records who and why.

Promotions and rollbacks of a pipeline are serialised by a database lock: two at once never
both win. The same operations are in the airloop API (`/airloop/api/v1/...` on the Airflow API
server) and in `python -m airloop.cli promote|rollback`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task

from airloop.config import get_settings, load_pipeline_config
from airloop_provider.operators import DeployModelOperator, run_actor, run_context


def _common(config, action: str) -> dict:
    return {
        "schedule": None,
        "start_date": datetime.combine(config.schedule.start_date, datetime.min.time(), tzinfo=timezone.utc),
        "catchup": False,
        "doc_md": __doc__,
        "tags": ["lifecycle", action, "airloop", config.name],
        "default_args": {"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "airloop"},
    }


def promotion_dag(pipeline: str):
    """Build ``<pipeline>__promote`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    environments = [env.name for env in config.promotion.path()]

    @dag(
        dag_id=f"{config.name}__promote",
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

            from airloop import lifecycle

            params, dag_run = context["params"], context["dag_run"]
            key = f"{config.name}:{params['environment']}:{params['version']}:{dag_run.run_id}"
            result = lifecycle.promote_version(
                config, get_settings(), str(params["version"]), params["environment"], actor=run_actor(context),
                reason=params["reason"], force=bool(params["force"]), run_context=run_context(context, None),
                idempotency_key=key)
            if not result["promoted"] and not result.get("noop"):
                raise AirflowFailException(f"promotion refused (recorded in the ledger): {result['reason']}")
            return result

        DeployModelOperator(task_id="deploy", pipeline=config.name, promotion=promote())

    return promote_model()


def rollback_dag(pipeline: str):
    """Build ``<pipeline>__rollback`` (wiring only)."""
    config = load_pipeline_config(pipeline)
    environments = [env.name for env in config.promotion.path()]

    @dag(
        dag_id=f"{config.name}__rollback",
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
            from airloop import lifecycle
            from airloop_provider.hooks import ServingHook

            params, dag_run = context["params"], context["dag_run"]
            environment = config.promotion.environment(params["environment"])
            return lifecycle.rollback(
                config, get_settings(), environment.name, params["target"], actor=run_actor(context),
                reason=params["reason"], run_context=run_context(context, None),
                idempotency_key=f"{config.name}:{environment.name}:rollback:{dag_run.run_id}",
                endpoint=ServingHook().endpoint if environment.serving else None)

        rollback()

    return rollback_model()


for _pipeline in sorted(p.stem for p in get_settings().pipelines_dir.glob("*.yaml")):
    globals()[f"{_pipeline}__promote"] = promotion_dag(_pipeline)
    globals()[f"{_pipeline}__rollback"] = rollback_dag(_pipeline)
