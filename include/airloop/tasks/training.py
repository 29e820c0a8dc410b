"""The training pipeline's stages as plain functions: (config, interval, input refs) -> output refs.

Airflow tasks call these (see ``dags/``), and so can a plain Python process (benchmarks, the
CLI, tests): the orchestration layer adds scheduling, retries and XCom, never logic. Every stage
reads only its interval's inputs, writes outputs keyed by the interval (overwrite or upsert)
and returns a small JSON-serialisable dict of references.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from airloop.core import names
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import AIRLOOP_CODE_VERSION, Settings
from airloop.data.features import features_and_target
from airloop.data.quarantine import quarantine_partitions, quarantined_days
from airloop.data.snapshot import extract_window, load_snapshot, load_snapshot_days
from airloop.data.validation import format_failures, validate_partitions
from airloop.models.schema import model_signature
from airloop.models.trust import quiet_skops, skops_trusted_types
from airloop.monitoring.reference import PROFILE_FILE, REFERENCE_DIR, REFERENCE_FILE, reference_frame
from airloop.registry import client as registry
from airloop.registry import client as registry_client
from airloop.registry import lifecycle
from airloop.training.evaluation import holdout_metrics, json_safe, predict_latency_ms, write_plots
from airloop.training.search import best_config, fit_best, open_study, run_worker, split_holdout, study_history

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The interval's data failed its expectations; the run must stop before training."""


def code_version(settings: Settings) -> str:
    """Git commit of the deployed code (``AIRLOOP_CODE_VERSION`` wins), else the package version."""

    if AIRLOOP_CODE_VERSION.get():
        return AIRLOOP_CODE_VERSION.get()
    try:
        sha = subprocess.run(["git", "-C", str(settings.root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(settings.root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"airloop-{version('airloop')}"


# ------------------------------------------------------------------------------------ extract
def extract(config: PipelineConfig, as_of: str, settings: Settings, window: int | None = None) -> dict[str, Any]:
    """Snapshot the training window ending at ``as_of`` (quarantined days excluded)."""

    snapshot = extract_window(config, date.fromisoformat(as_of), settings, window=window,
                              exclude=quarantined_days(config, settings))
    log.info("snapshot %s: %s rows over %s days (%s excluded), fingerprint %s",
             snapshot.path, snapshot.rows, len(snapshot.days), len(snapshot.excluded_days), snapshot.fingerprint[:16])
    return snapshot.to_dict()


# ----------------------------------------------------------------------------------- validate
def validate(config: PipelineConfig, snapshot: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Run the GX suite on every day of the snapshot; quarantine and raise on failure."""
    from datetime import datetime, timezone

    partitions = load_snapshot_days(snapshot)
    interval_end = datetime.fromisoformat(snapshot["as_of"]).replace(tzinfo=timezone.utc)
    outcome = validate_partitions(config, partitions, interval_end, settings)
    summary = {
        "success": outcome.success,
        "result_path": str(outcome.result_path),
        "failed_days": [d.isoformat() for d in outcome.failed_days],
        "statistics": outcome.statistics,
    }
    if not outcome.success:
        copies = quarantine_partitions(config, partitions, outcome, settings)
        message = format_failures(outcome)
        log.error("validation failed for %s as of %s:\n%s\nquarantined: %s\nresult: %s",
                  config.name, snapshot["as_of"], message, [str(c) for c in copies], outcome.result_path)
        raise ValidationFailed(f"{config.name} as of {snapshot['as_of']}: data failed validation "
                               f"(quarantined {summary['failed_days']}; result {outcome.result_path}):\n{message}")
    return summary


# -------------------------------------------------------------------------------------- train
def study_name(config: PipelineConfig, as_of: str) -> str:
    """One Optuna study per pipeline and interval: re-runs resume it."""
    return f"{config.name}__{as_of}"


def prepare_training(config: PipelineConfig, snapshot: dict[str, Any], validation: dict[str, Any],
                     settings: Settings, run_context: dict[str, str], n_trials: int | None = None,
                     n_workers: int | None = None, timeout_s: int | None = None) -> dict[str, Any]:
    """Create (or resume) the study and the MLflow training run; return the worker plan."""

    as_of = snapshot["as_of"]
    key = registry.interval_key(config, as_of)
    name = study_name(config, as_of)
    open_study(settings.optuna_storage, name, config)
    client = registry.get_client(settings)
    experiment_id = registry.ensure_experiment(client, config, settings)
    tags = {
        "airloop.pipeline": config.name,
        "airloop.as_of": as_of,
        "airloop.window_start": snapshot["window_start"],
        "airloop.data_fingerprint": snapshot["fingerprint"],
        "airloop.data_rows": str(snapshot["rows"]),
        "airloop.validation": "passed" if validation.get("success") else "failed",
        "airloop.validation_result": validation.get("result_path", ""),
        "airloop.study": name,
        "airloop.code_version": code_version(settings),
        **{f"airloop.{k}": v for k, v in run_context.items() if v},
    }
    parent = registry.get_or_create_parent_run(client, experiment_id, key, f"train-{as_of}", tags)
    workers = n_workers or config.training.n_workers
    return {
        "study_name": name,
        "storage": settings.optuna_storage,
        "experiment_id": experiment_id,
        "parent_run_id": parent,
        "interval_key": key,
        "n_trials": n_trials or config.training.n_trials,
        "timeout_s": timeout_s or config.training.timeout_s,
        "n_workers": workers,
        "workers": list(range(workers)),
    }


def train_worker(config: PipelineConfig, snapshot: dict[str, Any], plan: dict[str, Any], worker: int,
                 settings: Settings) -> dict[str, Any]:
    """One mapped worker: run its share of trials on the shared study, each tracked in MLflow."""

    client = registry.get_client(settings)

    def track(trial, family, params, scores, state, seconds):
        try:
            registry.log_trial_run(client, plan["experiment_id"], plan["parent_run_id"], plan["interval_key"],
                                   trial.number, family, params, scores, state, seconds)
        except Exception:  # tracking must never lose a trial's result in the study
            log.exception("could not log trial %s to MLflow", trial.number)

    frame = load_snapshot(snapshot, config)
    result = run_worker(config, frame, snapshot["as_of"], plan["study_name"], plan["storage"], worker,
                        plan["n_workers"], plan["n_trials"], plan["timeout_s"], tracker=track)
    return result.__dict__


# ----------------------------------------------------------------------------------- evaluate
def evaluate(config: PipelineConfig, snapshot: dict[str, Any], plan: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Refit the best trial, score it and the champion on the same holdout, log model + plots."""
    import mlflow
    import mlflow.sklearn

    frame = load_snapshot(snapshot, config)
    train, holdout = split_holdout(config, frame, snapshot["as_of"])
    best = best_config(plan["storage"], plan["study_name"], config)
    model = fit_best(config, train, best)
    metrics = holdout_metrics(config, model, holdout) | predict_latency_ms(config, model, holdout)
    metrics["cv_best"] = best["value"]
    train_rows = len(train)

    client = registry_client.get_client(settings)
    champion_version = registry_client.alias_version(client, config.model_name, names.CHAMPION)
    champion: dict[str, Any] | None = None
    champion_error = None
    if champion_version is not None:
        try:
            with quiet_skops():
                champ_model = registry_client.load_sklearn_model(settings, config.model_name, champion_version.version)
            champion = {"version": str(champion_version.version), "metrics": json_safe(holdout_metrics(config, champ_model, holdout))}
        except Exception as err:  # noqa: BLE001 - a champion that cannot score is recorded, not fatal
            champion_error = f"{type(err).__name__}: {err}"
            log.warning("champion v%s could not score the holdout: %s", champion_version.version, champion_error)

    registry_client.configure_mlflow(settings)

    X_train, _ = features_and_target(config, train)
    example = X_train.head(5)
    predict = model.predict_proba if config.task != "regression" else model.predict
    signature = model_signature(config, predict(X_train.head(50)))
    with mlflow.start_run(run_id=plan["parent_run_id"]):
        # Tags, not params: a re-run that tops up the study may find another best trial, and
        # MLflow refuses to change a logged param.
        mlflow.set_tags({"best.estimator": best["family"], "best.trial": best["number"],
                         "best.n_finished_trials": best["n_finished"],
                         **{f"best.param.{k}": v for k, v in best["params"].items()}})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in json_safe(metrics).items() if v is not None}
                           | {"train_rows": train_rows})
        if champion:
            mlflow.log_metrics({f"champion_holdout_{k}": v for k, v in champion["metrics"].items() if v is not None})
        with tempfile.TemporaryDirectory() as tmp:
            history = study_history(plan["storage"], plan["study_name"], config)
            for path in write_plots(config, model, holdout, history, Path(tmp)):
                mlflow.log_artifact(str(path), artifact_path="plots")
            reference = reference_frame(config, model, train)
            reference.to_parquet(Path(tmp) / REFERENCE_FILE, index=False)
            mlflow.log_artifact(str(Path(tmp) / REFERENCE_FILE), artifact_path=REFERENCE_DIR)
            from airloop.monitoring.reference import build_reference_profile  # the drift fast path's statistics

            build_reference_profile(config, reference).save(Path(tmp) / PROFILE_FILE)
            mlflow.log_artifact(str(Path(tmp) / PROFILE_FILE), artifact_path=REFERENCE_DIR)
            (Path(tmp) / "evaluation.json").write_text(json.dumps(
                {"metrics": json_safe(metrics), "champion": champion, "champion_error": champion_error,
                 "best": best, "holdout_rows": len(holdout), "train_rows": len(train)}, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "evaluation.json"))
        with quiet_skops():
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops",
                                            skops_trusted_types=skops_trusted_types(model),
                                            signature=signature, input_example=example)
    return {
        "run_id": plan["parent_run_id"],
        "model_uri": info.model_uri,
        "metrics": json_safe(metrics),
        "best": best,
        "champion": champion,
        "champion_error": champion_error,
        "train_rows": train_rows,
    }


# ----------------------------------------------------------------------------------- register
def register(config: PipelineConfig, snapshot: dict[str, Any], validation: dict[str, Any], plan: dict[str, Any],
             evaluation: dict[str, Any], settings: Settings, run_context: dict[str, str]) -> dict[str, Any]:
    """Register the evaluated model once per interval, with lineage tags; alias it challenger."""

    client = registry_client.get_client(settings)
    tags = {
        "airloop.pipeline": config.name,
        "airloop.data_interval": f"{snapshot['window_start']}/{snapshot['as_of']}",
        "airloop.data_fingerprint": snapshot["fingerprint"],
        "airloop.validation": "passed" if validation.get("success") else "failed",
        "airloop.validation_result": validation.get("result_path", ""),
        "airloop.study": plan["study_name"],
        "airloop.best_trial": str(evaluation["best"]["number"]),
        "airloop.estimator": evaluation["best"]["family"],
        "airloop.code_version": code_version(settings),
        "airloop.replaces": (evaluation.get("champion") or {}).get("version", ""),
        "airloop.snapshot": snapshot["path"],
        "airloop.reference_artifact": f"{REFERENCE_DIR}/{REFERENCE_FILE}",
        **{f"airloop.{k}": v for k, v in run_context.items() if v},
    }
    version = registry_client.register_version(client, config.model_name, evaluation["model_uri"], evaluation["run_id"],
                                        plan["interval_key"], tags)
    client.set_registered_model_alias(config.model_name, names.CHALLENGER, version.version)
    return {"model_name": config.model_name, "version": str(version.version), "interval_key": plan["interval_key"]}


# ------------------------------------------------------------------------------------ promote
def promote(config: PipelineConfig, registration: dict[str, Any], evaluation: dict[str, Any], settings: Settings,
            actor: str, run_context: dict[str, str], force: bool = False) -> dict[str, Any]:
    """Walk the promotion path (e.g. dev -> staging -> prod) with the training run's evidence,
    one gated, ledgered step per environment (:func:`airloop.registry.lifecycle.promote_along_path`).

    Idempotent per interval: a decided interval returns its recorded decisions unchanged.
    ``promoted`` is true when the version became the champion (serving environment).
    """

    evidence = {"metrics": evaluation["metrics"], "champion": evaluation.get("champion"),
                "champion_error": evaluation.get("champion_error"), "train_rows": evaluation.get("train_rows")}
    result = lifecycle.promote_along_path(
        config, settings, registration["version"], evidence, actor=actor, interval_key=registration["interval_key"],
        run_context=run_context, force=force)
    log.info("promotion of %s v%s: reached %s; %s", config.model_name, registration["version"],
             result["reached"] or "no environment", result["reason"])
    return result
