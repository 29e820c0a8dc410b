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
from airloop.data.validation import format_failures, release_hint, validate_partitions
from airloop.models.artifact import log_sklearn_model
from airloop.models.trust import quiet_skops
from airloop.monitoring.reference import PROFILE_FILE, REFERENCE_DIR, REFERENCE_FILE, reference_frame
from airloop.registry import client as registry
from airloop.registry import client as registry_client
from airloop.registry import lifecycle
from airloop.training.evaluation import (
    evaluation_lines,
    format_params,
    holdout_metrics,
    json_safe,
    predict_latency_ms,
    write_plots,
)
from airloop.registry.tags import decision_tags
from airloop.training.decision import decision_line, fit_decided
from airloop.training.importance import importance_line, log_importances
from airloop.training.search import best_config, open_study, run_worker, split_holdout, study_history

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
    """Check the pipeline file against its source, re-validate the window's days quarantined under
    another suite (releasing those that pass now), then snapshot the training window ending at
    ``as_of`` (quarantined days excluded).

    A wrong pipeline file (misspelled column, type no value has, stale suite) raises
    :class:`airloop.core.pipeline.ConfigurationError` within seconds: not worth a retry. So does
    a partition file that is empty or cannot be read (:class:`ValidationFailed`, its day
    quarantined with copies of its files and the reason, :func:`~airloop.data.quarantine.quarantine_unreadable`).
    """
    from airloop.core.timeutil import day_start
    from airloop.data.check import ensure_pipeline_ok
    from airloop.data.integrity import failure_report
    from airloop.data.quarantine import quarantine_unreadable, revalidate_quarantined, unreadable_failure
    from airloop.data.snapshot import window_days
    from airloop.data.sources import ExtractError, UnreadableFile, UnreadablePartitions
    from airloop.data.validation import load_suite, release_hint, validation_fingerprint

    day = date.fromisoformat(as_of)
    ensure_pipeline_ok(config, settings, as_of=day)
    days = window_days(day, window or config.training.window_days)
    revalidated = revalidate_quarantined(config, settings, days=days)
    if revalidated["released"]:
        log.warning("released from quarantine after re-validation: %s", revalidated["released"])
    excluded = quarantined_days(config, settings)
    try:
        snapshot = extract_window(config, day, settings, window=window, exclude=excluded)
    except UnreadablePartitions as err:
        folders = quarantine_unreadable(config, err.files, settings, day_start(day).isoformat(),
                                        validation_fingerprint(config, load_suite(config, settings)))
        report = failure_report(config, [unreadable_failure(e) for e in err.files.values()], settings)
        log.error("%s as of %s: unreadable partition file(s), quarantined in %s:\n%s", config.name, as_of,
                  [str(f) for f in folders], report)
        raise ValidationFailed(f"{config.name} as of {as_of}: {len(err.files)} partition file(s) cannot be read "
                               f"(quarantined {[d.isoformat() for d in err.files]}, not retried):\n{report}\n"
                               f"{release_hint(config.name)}") from err
    except UnreadableFile as err:  # an unpartitioned source: the file holds every day, none to quarantine
        raise ValidationFailed(f"{err} (not retried; nothing quarantined: the file holds every day of the "
                               "window): fix or replace the file, then run again") from err
    except ExtractError as err:
        held = sorted(d.isoformat() for d in excluded if d in days)
        if not held:
            raise
        raise ExtractError(f"{err}; {len(held)} day(s) of the window are quarantined ({held[0]}..{held[-1]}). "
                           f"{release_hint(config.name)}") from err
    log.info("snapshot %s: %s rows over %s days (%s excluded), fingerprint %s",
             snapshot.path, snapshot.rows, len(snapshot.days), len(snapshot.excluded_days), snapshot.fingerprint[:16])
    return snapshot.to_dict()


# ----------------------------------------------------------------------------------- validate
def validate(config: PipelineConfig, snapshot: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Run the GX suite on every day of the snapshot; quarantine and raise on failure. Then the
    window check: the days that passed must hold at least 2 classes among the labels training
    will see (:func:`airloop.data.integrity.window_class_problem`); if not, the run stops with
    nothing quarantined (no single day is at fault)."""
    from datetime import datetime, timezone

    from airloop.data.integrity import failure_report, window_class_problem

    partitions = load_snapshot_days(snapshot)
    interval_end = datetime.fromisoformat(snapshot["as_of"]).replace(tzinfo=timezone.utc)
    outcome = validate_partitions(config, partitions, interval_end, settings)
    passed = {d: f for d, f in partitions.items() if d not in set(outcome.failed_days)}
    window_problem = window_class_problem(config, passed, interval_end.date())
    summary = {
        "success": outcome.success and window_problem is None,
        "result_path": str(outcome.result_path),
        "failed_days": [d.isoformat() for d in outcome.failed_days],
        "statistics": outcome.statistics,
        "window_problem": window_problem,
    }
    window_text = f"\nthe training window: {window_problem}" if window_problem else ""
    if not outcome.success:
        copies = quarantine_partitions(config, partitions, outcome, settings)
        message = failure_report(config, outcome.failures, settings)
        log.error("validation failed for %s as of %s:\n%s\nquarantined: %s\nresult: %s",
                  config.name, snapshot["as_of"], format_failures(outcome), [str(c) for c in copies],
                  outcome.result_path)
        raise ValidationFailed(f"{config.name} as of {snapshot['as_of']}: data failed validation "
                               f"(quarantined {summary['failed_days']}; result {outcome.result_path}):\n{message}"
                               f"{window_text}\n{release_hint(config.name)}")
    if window_problem:
        log.error("validation failed for %s as of %s: %s", config.name, snapshot["as_of"], window_problem)
        raise ValidationFailed(f"{config.name} as of {snapshot['as_of']}: the training window cannot be used "
                               f"(nothing quarantined: no single day is at fault; result {outcome.result_path}): "
                               f"{window_problem}. Check the label export of column '{config.target}' in "
                               f"{config.source.pattern if config.source.kind == 'files' else 'the SQL source'}, "
                               f"or train on a longer window (the form's window_days).")
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
    log.info("MLflow training run %s in experiment %s (id %s): %s", parent, config.experiment_name, experiment_id,
             registry.ui_url(settings, experiment_id, parent))
    log_validation_artifacts(client, parent, validation)
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


#: Artifact folder of the training run holding the validation result (``result.json``,
#: ``report.html`` and the GX Data Docs site ``data_docs/``).
VALIDATION_ARTIFACTS = "validation"
#: Run tag: digest of the validation files logged under :data:`VALIDATION_ARTIFACTS`.
VALIDATION_DIGEST_TAG = "airloop.validation_artifacts"


def _digest(files: list[Path], root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def log_validation_artifacts(client, run_id: str, validation: dict[str, Any]) -> bool:
    """Log the validate stage's files (``result.json``, ``report.html``, GX ``data_docs/``) under
    :data:`VALIDATION_ARTIFACTS` of the training run, once: a retry finds the same digest in the
    run's :data:`VALIDATION_DIGEST_TAG` and uploads nothing. False when nothing was logged."""
    result = Path(validation.get("result_path") or "")
    folder = result.parent
    if not result.is_file():
        log.warning("validation result %s not found on this machine: not logged to MLflow run %s", result, run_id)
        return False
    docs = folder / "data_docs"
    files = [result] + [p for p in (folder / "report.html",) if p.is_file()]
    docs_files = [p for p in docs.rglob("*") if p.is_file()] if docs.is_dir() else []
    digest = _digest(files + docs_files, folder)
    if client.get_run(run_id).data.tags.get(VALIDATION_DIGEST_TAG) == digest:
        log.info("validation result already logged to MLflow run %s (%s/)", run_id, VALIDATION_ARTIFACTS)
        return False
    for path in files:
        client.log_artifact(run_id, str(path), VALIDATION_ARTIFACTS)
    if docs_files:
        client.log_artifacts(run_id, str(docs), f"{VALIDATION_ARTIFACTS}/data_docs")
    client.set_tag(run_id, VALIDATION_DIGEST_TAG, digest)
    log.info("validation result logged to MLflow run %s: %s/ (%s%s)", run_id, VALIDATION_ARTIFACTS,
             ", ".join(p.name for p in files), ", data_docs/index.html" if docs_files else "; no Data Docs")
    return True


def train_worker(config: PipelineConfig, snapshot: dict[str, Any], plan: dict[str, Any], worker: int,
                 settings: Settings) -> dict[str, Any]:
    """One mapped worker: run its share of trials on the shared study, each tracked in MLflow."""

    client = registry.get_client(settings)
    registry.end_orphaned_runs(client, plan["experiment_id"], plan["interval_key"])  # a killed try's trial runs

    def track(trial, family, params, scores, state, seconds):
        score = f"CV {config.training.metric} {sum(scores) / len(scores):.4f}" if scores else "no fold scored"
        log.info("trial %s: %s %s, %s over %s of %s folds, %.1f s (%s)", trial.number, family, state.lower(), score,
                 len(scores), config.training.cv_folds, seconds, format_params(params))
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

    registry_client.end_orphaned_runs(registry_client.get_client(settings), plan["experiment_id"], plan["interval_key"])
    frame = load_snapshot(snapshot, config)
    train, holdout = split_holdout(config, frame, snapshot["as_of"])
    best = best_config(plan["storage"], plan["study_name"], config)
    decided = fit_decided(config, train, best)  # calibrated as configured; threshold tuned out of fold
    model, decision, threshold = decided.model, decided.decision, decided.decision.get("threshold")
    metrics = holdout_metrics(config, model, holdout, threshold) | predict_latency_ms(config, model, holdout)
    metrics["cv_best"] = best["value"]
    if decision:
        log.info("decision: %s", decision_line(decision, decided.cv))
    train_rows = len(train)

    client = registry_client.get_client(settings)
    champion_version = registry_client.alias_version(client, config.model_name, names.CHAMPION)
    champion: dict[str, Any] | None = None
    champion_error = None
    if champion_version is not None:
        try:
            with quiet_skops():
                champ_model = registry_client.load_sklearn_model(settings, config.model_name, champion_version.version)
            champ_threshold = registry_client.decision_threshold(client, config, champion_version.version)
            champion = {"version": str(champion_version.version),
                        "metrics": json_safe(holdout_metrics(config, champ_model, holdout, champ_threshold))}
        except Exception as err:  # noqa: BLE001 - a champion that cannot score is recorded, not fatal
            champion_error = f"{type(err).__name__}: {err}"
            log.warning("champion v%s could not score the holdout: %s", champion_version.version, champion_error)

    registry_client.configure_mlflow(settings)

    X_train, _ = features_and_target(config, train)
    serving = config.promotion.serving_environment
    for line in evaluation_lines(config.training.metric, best, json_safe(metrics), train_rows, champion,
                                 champion_error, serving.min_improvement, serving.name):
        log.info("%s", line)
    # The hyperparameters are params of the run (compare runs by them in the UI), and tags too:
    # a re-run that tops up the study may find another best trial, MLflow refuses to change a
    # logged param, so the first values are kept and the tags say what this refit used.
    conflicts = registry_client.log_params_once(client, plan["parent_run_id"],
                                                {"estimator": best["family"], **best["params"]})
    if conflicts:
        log.warning("params of run %s kept from an earlier evaluation of this interval (MLflow cannot change a "
                    "param); this refit uses %s (tags best.param.*)", plan["parent_run_id"],
                    ", ".join(f"{k}={new} (logged {old})" for k, (old, new) in sorted(conflicts.items())))
    with mlflow.start_run(run_id=plan["parent_run_id"]):
        mlflow.set_tags({"best.estimator": best["family"], "best.trial": best["number"],
                         "best.n_finished_trials": best["n_finished"],
                         **{f"best.param.{k}": registry_client.param_value(v) for k, v in best["params"].items()}})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in json_safe(metrics).items() if v is not None}
                           | {"train_rows": train_rows} | {k: v for k, v in json_safe(decided.cv).items() if v is not None})
        if decision:  # the threshold is a setting of the version, not a metric to rank
            mlflow.set_tags(decision_tags(decision))
        if champion:
            mlflow.log_metrics({f"champion_holdout_{k}": v for k, v in champion["metrics"].items() if v is not None})
        with tempfile.TemporaryDirectory() as tmp:
            history = study_history(plan["storage"], plan["study_name"], config)
            for path in write_plots(config, model, holdout, history, Path(tmp), threshold=threshold):
                mlflow.log_artifact(str(path), artifact_path="plots")
            reference = reference_frame(config, model, train, holdout)
            reference.to_parquet(Path(tmp) / REFERENCE_FILE, index=False)
            mlflow.log_artifact(str(Path(tmp) / REFERENCE_FILE), artifact_path=REFERENCE_DIR)
            from airloop.monitoring.reference import build_reference_profile  # the drift fast path's statistics

            build_reference_profile(config, reference).save(Path(tmp) / PROFILE_FILE)
            mlflow.log_artifact(str(Path(tmp) / PROFILE_FILE), artifact_path=REFERENCE_DIR)
            (Path(tmp) / "evaluation.json").write_text(json.dumps(
                {"metrics": json_safe(metrics), "champion": champion, "champion_error": champion_error,
                 "best": best, "decision": decision, "cv": json_safe(decided.cv), "holdout_rows": len(holdout), "train_rows": len(train)}, indent=2, default=str))
            mlflow.log_artifact(str(Path(tmp) / "evaluation.json"))
        try:  # global importances of the version: importance/permutation_importance.{json,png}
            log.info("%s", importance_line(log_importances(config, model, holdout)))
        except Exception as err:  # noqa: BLE001 - a diagnostic; the candidate is logged without it
            log.warning("permutation importances not logged: %s: %s", type(err).__name__, err)
        # skops + the pipeline's typed signature and input example + a pyfunc answering probabilities
        info = log_sklearn_model(config, model, X_train, decision=decision)
    log.info("candidate model logged to MLflow run %s as %s", plan["parent_run_id"], info.model_uri)
    return {
        "run_id": plan["parent_run_id"],
        "model_uri": info.model_uri,
        "metrics": json_safe(metrics),
        "best": best,
        "champion": champion,
        "champion_error": champion_error,
        "train_rows": train_rows,
        "decision": decision,
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
        **decision_tags(evaluation.get("decision") or {}),
        **{f"airloop.{k}": v for k, v in run_context.items() if v},
    }
    version = registry_client.register_version(client, config.model_name, evaluation["model_uri"], evaluation["run_id"],
                                        plan["interval_key"], tags)
    client.set_registered_model_alias(config.model_name, names.CHALLENGER, version.version)
    log.info("registered %s v%s from MLflow run %s (interval %s, validation %s); alias %s -> v%s",
             config.model_name, version.version, evaluation["run_id"], plan["interval_key"],
             tags["airloop.validation"], names.CHALLENGER, version.version)
    return {"model_name": config.model_name, "version": str(version.version), "interval_key": plan["interval_key"]}


# ------------------------------------------------------------------------------------ promote
def promote(config: PipelineConfig, registration: dict[str, Any], evaluation: dict[str, Any], settings: Settings,
            actor: str, run_context: dict[str, str], force: bool = False) -> dict[str, Any]:
    """Walk the promotion path (e.g. dev -> staging -> prod) with the training run's evidence,
    one gated, ledgered step per environment (:func:`airloop.registry.lifecycle.promote_along_path`).

    Idempotent per interval: a decided interval returns its recorded decisions unchanged.
    ``promoted`` is true when the version became the champion (serving environment).
    """

    path = [e.name for e in config.promotion.path()]
    log.info("promoting %s v%s along %s (training runs go up to %s)%s", config.model_name, registration["version"],
             " -> ".join(path), config.promotion.auto_target,
             "; forced by operator" if force else "")
    if run_context.get("trigger_reason"):
        log.info("run triggered because %s", run_context["trigger_reason"])
    result = lifecycle.promote_along_path(
        config, settings, registration["version"], promotion_evidence(evaluation), actor=actor,
        interval_key=registration["interval_key"], run_context=run_context, force=force)
    for line in promotion_lines(config, registration["version"], result):
        log.info("%s", line)
    return result


def promotion_evidence(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The training run's evidence for the gates (its holdout metrics, the champion on the same holdout)."""
    return {"metrics": evaluation["metrics"], "champion": evaluation.get("champion"),
            "champion_error": evaluation.get("champion_error"), "train_rows": evaluation.get("train_rows")}


def promote_approved(config: PipelineConfig, registration: dict[str, Any], evaluation: dict[str, Any],
                     settings: Settings, held: dict[str, Any], approval: dict[str, Any] | None, actor: str,
                     run_context: dict[str, str], force: bool = False) -> dict[str, Any]:
    """After an approval task: resume the walk of :func:`promote` with the approved environment
    (gates judged again, the approver in the ledger); ``held`` unchanged when nothing was asked."""
    from airloop.tasks.approval import promote_after_approval

    result = promote_after_approval(config, settings, held, approval, requested_by=actor, run_context=run_context,
                                    force=force, walk={"evidence": promotion_evidence(evaluation),
                                                       "interval_key": registration["interval_key"]})
    if result is not held:
        for line in promotion_lines(config, registration["version"], result):
            log.info("%s", line)
    return result


def promotion_lines(config: PipelineConfig, version: str, result: dict[str, Any]) -> list[str]:
    """After the walk: the environments not tried and why, then where the version ended."""
    judged = [s["environment"] for s in result["steps"]]
    target = config.promotion.auto_target
    lines = []
    for env in config.promotion.path():
        if env.name not in judged:
            why = (f"training runs promote up to {target}" if target in judged and judged[-1] == target
                   else f"the walk stopped at {judged[-1]}" if judged else "no step was taken")
            lines.append(f"{env.name}: not tried ({why})")
    serving = config.promotion.serving_environment.name
    last = next((s for s in result["steps"] if s["environment"] == serving), None)
    if result["promoted"]:
        was = f"v{result['previous']}" if result["previous"] else "none"
        champion = f"champion ({serving}) is now v{version} (was {was})"
    else:
        if last is None:
            champion = f"champion ({serving}) unchanged"
        elif last.get("noop"):
            champion = f"champion ({serving}) already is v{version}"
        else:
            champion = f"champion ({serving}) stays {'v' + last['previous'] if last['previous'] else 'none'}"
    reached = ", ".join(result["reached"]) or "no environment"
    if result.get("awaiting_approval"):
        champion += f"; {result['awaiting_approval']} awaits a person's approval (Airflow: Required Actions)"
    lines.append(f"result: v{version} reached {reached}; {champion}")
    return lines
