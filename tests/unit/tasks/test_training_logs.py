"""Readable training runs: the training stages (include/airloop/tasks/training.py) run once on
simulator data into a real embedded MLflow store (SQLite in the module's folder), then their task
logs and what the MLflow UI shows are checked: the train_trials, evaluate and promote log lines,
the hyperparameters as params of the trial runs and of the candidate run, the experiment's kind
tag and the validation result as artifacts of the candidate's run. Retries change nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from airloop.core.pipeline import PipelineConfig, load_pipeline_config, resolve_source_path
from airloop.core.settings import Settings, load_settings
from airloop.data.simulator import write_history
from airloop.tasks import training as stages

REPO_ROOT = Path(__file__).resolve().parents[3]
AS_OF = "2026-01-22"
CONTEXT = {"dag_id": "claims_fraud__train", "dag_run_id": "manual__logs", "as_of": AS_OF}


class Lines(logging.Handler):
    """The airloop log messages of one stage."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Run:
    config: PipelineConfig
    settings: Settings
    client: MlflowClient
    out: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)

    def stage(self, name: str, fn, *args, **kwargs):
        handler = Lines()
        logger = logging.getLogger("airloop")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            result = fn(*args, **kwargs)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        self.logs[name] = handler.lines
        self.out[name] = result
        return result


def small_config(settings: Settings) -> PipelineConfig:
    """claims_fraud, with a fast search (one worker, logistic regression, 4 trials) and a staging
    that asks for more training rows than three weeks have: dev passes, staging refuses."""
    config = load_pipeline_config("claims_fraud", settings)
    training = config.training.model_copy(update={
        "n_trials": 4, "n_workers": 1, "cv_folds": 2, "holdout_days": 7, "window_days": 21,
        "search_space": {"logistic_regression": config.training.search_space["logistic_regression"]}})
    envs = [e.model_copy(update={"min_training_rows": 10**6}) if e.name == "staging" else e
            for e in config.promotion.environments]
    return config.model_copy(update={"training": training,
                                     "promotion": config.promotion.model_copy(update={"environments": envs})})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("training-logs")
    settings = load_settings({"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                              "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp / 'monitoring.db'}"})
    config = small_config(settings)
    write_history(resolve_source_path(config, settings), start=date(2026, 1, 1), days=21,
                  pattern=config.source.partition)
    r = Run(config, settings, MlflowClient(tracking_uri=settings.mlflow_tracking_uri))
    snapshot = r.stage("extract", stages.extract, config, AS_OF, settings)
    validation = r.stage("validate", stages.validate, config, snapshot, settings)
    plan = r.stage("prepare", stages.prepare_training, config, snapshot, validation, settings, CONTEXT)
    r.stage("train_trials", stages.train_worker, config, snapshot, plan, 0, settings)
    evaluation = r.stage("evaluate", stages.evaluate, config, snapshot, plan, settings)
    registration = r.stage("register", stages.register, config, snapshot, validation, plan, evaluation, settings,
                           CONTEXT)
    r.stage("promote", stages.promote, config, registration, evaluation, settings, actor="training",
            run_context=CONTEXT)
    return r


def test_train_trials_log_counts_the_trials(run):
    lines = run.logs["train_trials"]
    trials = [line for line in lines if line.startswith("trial ")]
    assert len(trials) == 4
    assert all(" logistic_regression " in t and " folds, " in t and "(C=" in t for t in trials)
    assert "worker 0 of 1 joined study claims_fraud__2026-01-22: no trials yet; budget 4 finished (complete or pruned) trials" in lines
    (asked,) = [line for line in lines if line.startswith("worker 0: ")]
    assert asked.startswith("worker 0: 4 of 4 trials asked of the shared study, ") and asked.endswith(" 0 failed")
    assert any(line.startswith("best so far: roc_auc ") and line.endswith(", logistic_regression, this worker)")
               for line in lines)
    assert run.out["train_trials"]["trials_run"] == 4  # the XCom keeps its shape


def test_evaluate_log_states_the_best_trial_the_holdout_and_the_champion(run):
    best = run.out["evaluate"]["best"]
    lines = run.logs["evaluate"]
    assert f"best trial: #{best['number']} of 4 finished, logistic_regression, CV roc_auc {best['value']:.4f}" in lines
    assert f"best trial params: C={best['params']['C']:.4g}" in lines
    holdout = next(line for line in lines if line.startswith("candidate holdout ("))
    assert f"roc_auc {run.out['evaluate']['metrics']['roc_auc']:.4f}, " in holdout
    assert any(line.startswith("candidate latency: p50 ") for line in lines)
    assert "champion: none yet; prod compares the candidate with its thresholds only" in lines
    assert set(run.out["evaluate"]) == {"run_id", "model_uri", "metrics", "best", "champion", "champion_error",
                                        "train_rows", "decision"}
    decision = run.out["evaluate"]["decision"]  # the tuned threshold travels to register (version tags)
    assert decision["objective"] == "max_f1" and 0 < decision["threshold"] < 1
    assert any(line.startswith(f"decision: threshold {decision['threshold']:.4f} (max_f1; CV f1 ") for line in lines)


def test_promote_log_gives_the_verdict_per_environment(run):
    version = run.out["register"]["version"]
    lines = run.logs["promote"]
    assert lines[0] == f"promoting claims_fraud v{version} along dev -> staging -> prod (training runs go up to prod)"
    assert f"dev: PASS -> v{version} promoted (dev was none)" in lines
    dev_gates = next(line for line in lines if line.startswith("dev gates: "))
    assert "threshold:roc_auc ok (" in dev_gates and ">= 0.6 required)" in dev_gates
    assert "min_training_rows ok (" in dev_gates and "1000 required)" in dev_gates
    assert f"staging: FAIL at min_training_rows -> v{version} refused, staging stays on none" in lines
    staging_gates = next(line for line in lines if line.startswith("staging gates: "))
    rows = run.out["evaluate"]["train_rows"]
    assert f"min_training_rows FAILED ({rows} rows, 1000000 required)" in staging_gates
    assert f"path ok (v{version} has been in dev)" in staging_gates
    assert lines[-2:] == ["prod: not tried (the walk stopped at staging)",
                          f"result: v{version} reached dev; champion (prod) unchanged"]
    # a retried promote task replays the recorded decisions, and says so
    retry = Run(run.config, run.settings, run.client)
    retry.stage("promote", stages.promote, run.config, run.out["register"], run.out["evaluate"], run.settings,
                actor="training", run_context=CONTEXT)
    assert f"dev: already decided for this request: PASS -> v{version} promoted (dev was none)" in retry.logs["promote"]
    assert retry.out["promote"]["replayed"] and retry.out["promote"]["reached"] == ["dev"]


def test_hyperparameters_are_params_of_the_trial_runs_and_the_candidate_run(run):
    plan, best = run.out["prepare"], run.out["evaluate"]["best"]
    candidate = run.client.get_run(plan["parent_run_id"])
    assert candidate.data.params == {"estimator": "logistic_regression", "C": str(best["params"]["C"])}
    assert candidate.data.tags["best.param.C"] == str(best["params"]["C"])  # tags as before
    trials = run.client.search_runs([plan["experiment_id"]], f"tags.`mlflow.parentRunId` = '{plan['parent_run_id']}'")
    assert len(trials) == 4
    assert all(set(t.data.params) == {"estimator", "trial_number", "C"} for t in trials)
    # the logged model carries them too (MLflow copies the run's params into the LoggedModel)
    model = run.client.get_logged_model(run.out["evaluate"]["model_uri"].removeprefix("models:/"))
    assert model.params["C"] == str(best["params"]["C"])


def test_experiment_is_a_model_training_experiment(run):
    tags = run.client.get_experiment(run.out["prepare"]["experiment_id"]).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_validation_result_and_data_docs_are_artifacts_of_the_candidate_run(run):
    run_id = run.out["prepare"]["parent_run_id"]
    names = {f.path for f in run.client.list_artifacts(run_id, "validation")}
    assert {"validation/result.json", "validation/report.html", "validation/data_docs"} <= names
    docs = {f.path for f in run.client.list_artifacts(run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in docs
    local = Path(run.client.download_artifacts(run_id, "validation/result.json", str(run.settings.state_dir / "dl")))
    assert local.read_bytes() == Path(run.out["validate"]["result_path"]).read_bytes()
    assert any(line.startswith(f"validation result logged to MLflow run {run_id}: validation/")
               for line in run.logs["prepare"])


def test_retried_prepare_and_evaluate_do_not_fail_or_log_twice(run):
    retry = Run(run.config, run.settings, run.client)
    snapshot, validation = run.out["extract"], run.out["validate"]
    plan = retry.stage("prepare", stages.prepare_training, run.config, snapshot, validation, run.settings, CONTEXT)
    assert plan["parent_run_id"] == run.out["prepare"]["parent_run_id"]
    assert f"validation result already logged to MLflow run {plan['parent_run_id']} (validation/)" in retry.logs["prepare"]
    params = run.client.get_run(plan["parent_run_id"]).data.params
    evaluation = retry.stage("evaluate", stages.evaluate, run.config, snapshot, plan, run.settings)  # no MlflowException
    assert evaluation["best"] == run.out["evaluate"]["best"]
    assert run.client.get_run(plan["parent_run_id"]).data.params == params
    assert not any("kept from an earlier evaluation" in line for line in retry.logs["evaluate"])
