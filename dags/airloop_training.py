"""
### airloop training — `<pipeline>__train`

One DAG per pipeline file in `include/pipelines/`:

`extract → validate → prepare_study → train_trials (mapped, parallel, one shared Optuna study)
→ evaluate → register → promote → deploy`

(with `promotion.require_approval: [prod]`: `promote → approve_prod → promote_prod → deploy`)

* **Data interval**: the run trains "as of" its data interval end (or the `as_of` form field) on
  the `window_days` before it. Backfills (`airflow backfill create`) give each interval exactly
  what a scheduled run would have seen.
* **Validation is a gate**: a failing day stops the run before training, is quarantined
  (kept under `.airloop/quarantine/`) and the Great Expectations result is kept.
* **Retraining on demand**: scheduled on time *or* on the `airloop://<pipeline>/retrain-requests`
  Asset that monitoring updates when drift or a performance drop calls for it; the request's
  as-of day and reason are carried into the run (MLflow tags, ledger).
* **Approvals**: an environment in `promotion.require_approval` is not entered before a person
  approves it in *Required Actions* (candidate vs incumbent shown); reject or timeout is a
  recorded refusal, the environments before it keep their moves.
* **Trigger from the UI** with the form: as-of date, window, number of trials, timeout, and
  *force promote* (skip the gates, recorded in the ledger).

All logic lives in the `airloop` library (`include/airloop/stages.py`); this file only wires it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, Param, dag, task

from airloop.core.pipeline import load_all_pipelines, load_pipeline_config
from airloop.core.settings import get_settings
from airloop_provider.assets import retrain_asset_uri
from airloop_provider.context import as_of_day, run_actor, run_context, training_window
from airloop_provider.dag_defaults import default_args
from airloop_provider.operators import DeployModelOperator, PromotionApprovalOperator
from airloop_provider.timetables import ScheduleUntilCronTrigger


def training_dag(pipeline: str):
    """Build the training DAG of ``pipeline`` (wiring only)."""
    config = load_pipeline_config(pipeline)

    @dag(
        dag_id=config.dag_id("train"),
        description=f"Train, gate and deploy {config.name} ({config.task})",
        doc_md=__doc__,
        # On its schedule OR when monitoring requests a retrain (Asset event with reason + as-of).
        schedule=AssetOrTimeSchedule(
            # the schedule (and backfills) stop at schedule.end_date; manual runs always run
            timetable=ScheduleUntilCronTrigger(config.schedule.training, timezone="UTC", end=config.schedule.end),
            assets=[Asset(retrain_asset_uri(config), extra={"pipeline": config.name})],
        ),
        start_date=config.schedule.start,
        catchup=False,
        max_active_runs=1,
        tags=["training", "airloop", config.name],
        default_args=default_args("training"),
        params={
            "as_of": Param(None, type=["null", "string"], format="date",
                           description="Train as of this day (exclusive). Empty: the data interval end; a manual run "
                                       "past the data trains as of the day after the newest data."),
            "window_days": Param(config.training.window_days, type="integer", minimum=2,
                                 description="Days of history before the as-of day."),
            "n_trials": Param(config.training.n_trials, type="integer", minimum=1, maximum=1000,
                              description="Optuna trials (shared across the parallel workers)."),
            "timeout_s": Param(config.training.timeout_s, type="integer", minimum=10,
                               description="Time budget of each training worker, seconds."),
            "force_promote": Param(False, type="boolean",
                                   description="Promote even if gates fail (recorded in the ledger)."),
        },
        render_template_as_native_obj=True,
    )
    def train_pipeline():
        @task
        def extract(**context) -> dict:
            from airflow.exceptions import AirflowFailException

            from airloop.core.pipeline import ConfigurationError
            from airloop.tasks import training as stages
            from airloop.tasks.runs import NoDataForRun

            try:
                as_of = as_of_day(context, config, get_settings())
                return stages.extract(config, as_of, get_settings(), window=training_window(context, config))
            except (NoDataForRun, ConfigurationError, stages.ValidationFailed) as err:  # nothing to train on / a
                # wrong pipeline file / an unreadable partition (quarantined): say what to change, in seconds, no retry
                raise AirflowFailException(str(err)) from err

        @task
        def validate(snapshot: dict) -> dict:
            from airflow.exceptions import AirflowFailException

            from airloop.core.pipeline import ConfigurationError
            from airloop.tasks import training as stages

            try:
                return stages.validate(config, snapshot, get_settings())
            except (stages.ValidationFailed, ConfigurationError) as err:  # bad data / a column missing from
                # every day (a configuration error, nothing quarantined): do not retry, stop before training
                raise AirflowFailException(str(err)) from err

        @task
        def prepare_study(snapshot: dict, validation: dict, **context) -> dict:
            from airloop.tasks import training as stages

            params = context["params"]
            return stages.prepare_training(config, snapshot, validation, get_settings(),
                                           run_context(context, snapshot["as_of"]),
                                           n_trials=params["n_trials"], timeout_s=params["timeout_s"])

        @task(max_active_tis_per_dagrun=config.training.n_workers)
        def train_trials(worker: int, snapshot: dict, plan: dict) -> dict:
            from airloop.tasks import training as stages

            return stages.train_worker(config, snapshot, plan, worker, get_settings())

        @task
        def evaluate(snapshot: dict, plan: dict, workers: list) -> dict:
            from airloop.tasks import training as stages

            return stages.evaluate(config, snapshot, plan, get_settings())

        @task
        def register(snapshot: dict, validation: dict, plan: dict, evaluation: dict, **context) -> dict:
            from airloop.tasks import training as stages

            return stages.register(config, snapshot, validation, plan, evaluation, get_settings(),
                                   run_context(context, snapshot["as_of"]))

        @task
        def promote(registration: dict, evaluation: dict, snapshot: dict, **context) -> dict:
            from airloop.tasks import training as stages

            return stages.promote(config, registration, evaluation, get_settings(), actor=run_actor(context),
                                  run_context=run_context(context, snapshot["as_of"]),
                                  force=bool(context["params"]["force_promote"]))

        @task(trigger_rule="none_failed")  # runs when its approval task skipped (nothing was asked)
        def promote_approved(registration: dict, evaluation: dict, snapshot: dict, held: dict, approval_task: str,
                             **context) -> dict:
            from airloop.tasks import training as stages

            return stages.promote_approved(config, registration, evaluation, get_settings(), held,
                                           context["ti"].xcom_pull(task_ids=approval_task), actor=run_actor(context),
                                           run_context=run_context(context, snapshot["as_of"]),
                                           force=bool(context["params"]["force_promote"]))

        snapshot = extract()
        validation = validate(snapshot)
        plan = prepare_study(snapshot, validation)
        workers = train_trials.partial(snapshot=snapshot, plan=plan).expand(worker=list(range(config.training.n_workers)))
        evaluation = evaluate(snapshot, plan, workers)
        registration = register(snapshot, validation, plan, evaluation)
        promotion = promote(registration, evaluation, snapshot)
        for env in (e.name for e in config.promotion.path() if config.promotion.needs_approval(e.name)):
            approval = PromotionApprovalOperator(
                task_id=f"approve_{env}", pipeline=config.name, environment=env, promotion=promotion,
                snapshot=snapshot, response_timeout=timedelta(hours=config.promotion.approval_timeout_hours))
            promotion = promote_approved.override(task_id=f"promote_{env}")(
                registration, evaluation, snapshot, promotion, approval.task_id)
            approval >> promotion
        DeployModelOperator(task_id="deploy", pipeline=config.name, promotion=promotion, snapshot=snapshot)

    return train_pipeline()


for _pipeline in (c.name for c in load_all_pipelines()[0]):  # bad files: see airloop_pipeline_check.py
    _dag = training_dag(_pipeline)
    globals()[_dag.dag_id] = _dag
