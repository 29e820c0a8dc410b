"""Train: an Optuna study over several scikit-learn estimator families, shared by parallel workers.

The study lives in shared storage (a journal file by default, any SQLAlchemy URL such as
PostgreSQL in production) under a name derived from the pipeline and the data interval, so
mapped Airflow tasks cooperate on one study and a re-run resumes it instead of starting over.
Each trial cross-validates with time-ordered folds, reports the running mean after every fold
and is pruned by a median pruner when it falls behind. Every finished trial becomes one MLflow
child run, written in a single batched call (params, metrics and tags together).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from airloop.core.pipeline import ESTIMATORS, PipelineConfig  # noqa: F401 - ESTIMATORS re-exported (defined in core)
from airloop.data.features import TrainingError, features_and_target

log = logging.getLogger(__name__)


#: Fixed settings per family (not searched): convergence and determinism.
ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"max_iter": 2000},
    "random_forest": {"n_jobs": 1},
    "extra_trees": {"n_jobs": 1},
    "hist_gradient_boosting": {"early_stopping": False},
}


def task_kind(config: PipelineConfig) -> str:
    """``classification`` or ``regression``."""
    return "regression" if config.task == "regression" else "classification"


def _import(path: str) -> type:
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def estimator_class(config: PipelineConfig, family: str) -> type:
    """The scikit-learn class of ``family`` for the pipeline's task; clear error if unknown."""
    try:
        return _import(ESTIMATORS[family][task_kind(config)])
    except KeyError:
        options = sorted(f for f, kinds in ESTIMATORS.items() if task_kind(config) in kinds)
        raise TrainingError(
            f"{config.name}: estimator family {family!r} is not available for {config.task}; "
            f"choose from {options}"
        ) from None


def build_model(config: PipelineConfig, family: str, params: dict[str, Any]):
    """A fresh sklearn Pipeline: impute + scale numbers, impute + one-hot categories, estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from airloop.data.features import category_transformers

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    # categories: a vocabulary learned from the training data, capped at max_categories per column
    pre = ColumnTransformer([("num", numeric, config.numeric_features), *category_transformers(config)],
                            remainder="drop")
    kwargs = {**ESTIMATOR_DEFAULTS.get(family, {}), **params}
    cls = estimator_class(config, family)
    if "random_state" in cls().get_params():
        kwargs.setdefault("random_state", config.training.seed)
    return Pipeline([("pre", pre), ("model", cls(**kwargs))])


def split_holdout(config: PipelineConfig, frame: pd.DataFrame, as_of: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-based split: the last ``holdout_days`` before ``as_of`` are the holdout."""
    cutoff = pd.Timestamp(as_of, tz="UTC") - pd.Timedelta(days=config.training.holdout_days)
    is_holdout = frame[config.timestamp] >= cutoff
    train, holdout = frame.loc[~is_holdout], frame.loc[is_holdout]
    if train.empty or holdout.empty:
        raise TrainingError(
            f"{config.name}: time split at {cutoff.date()} leaves train={len(train)} "
            f"holdout={len(holdout)} rows; widen the window or shorten holdout_days"
        )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def suggest(trial, space: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Pick an estimator family and its parameters from the search space for ``trial``."""
    family = trial.suggest_categorical("estimator", sorted(space))
    params: dict[str, Any] = {}
    for name, spec in space[family].items():
        key = f"{family}__{name}"
        if spec["type"] == "float":
            params[name] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        else:
            params[name] = trial.suggest_categorical(key, spec["choices"])
    return family, params


def params_from_trial(trial_params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`suggest`: (family, estimator params) from a finished trial's params."""
    family = trial_params["estimator"]
    prefix = f"{family}__"
    return family, {k[len(prefix):]: v for k, v in trial_params.items() if k.startswith(prefix)}


def sampler_seed(seed: int, worker: int, trials_before: int) -> int:
    """The TPE sampler seed of one worker process joining a shared study.

    Each worker process builds its own sampler. Seeded alike, two workers drew the same random
    start-up configurations side by side (12-14 distinct of 16 trials with 2 workers in
    ``benchmarks/hpo.py``), and a retried worker re-proposed what its first try had already run.
    So the seed also depends on the worker index and on how many trials the study held when
    the worker joined (Optuna's advice for distributed studies: one seed per worker). Worker 0
    joining an empty study keeps the pipeline's seed: a lone worker (one-worker configs,
    ``dag.test``) samples exactly as before; the rest is reproducible given the same history.
    """
    if worker == 0 and trials_before == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, trials_before]).generate_state(1)[0])


def open_study(storage_uri: str, study_name: str, config: PipelineConfig, worker: int = 0):
    """Create or load the shared study (journal file ``journal://path`` or an SQLAlchemy URL),
    its sampler seeded for ``worker`` (:func:`sampler_seed`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_uri.startswith("journal://"):
        from pathlib import Path

        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage_uri[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    else:
        storage = optuna.storages.RDBStorage(storage_uri, heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",  # sklearn scorers are higher-is-better (neg_* for errors)
        sampler=optuna.samplers.TPESampler(seed=config.training.seed, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        load_if_exists=True,
    )
    seed = sampler_seed(config.training.seed, worker, len(study.get_trials(deepcopy=False)))
    if seed != config.training.seed:
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)
    return study


#: A trial left RUNNING without an owner (killed before it recorded its process) this old is stale.
STALE_UNOWNED_S = 600.0


def fail_stale_trials(study, worker: int) -> list[int]:
    """Mark FAIL the trials a killed process left RUNNING, so a retried worker resumes the study
    with an honest census (finished trials still count towards the budget; nothing restarts).

    A RUNNING trial is stale when its owner (the ``host``/``pid`` user attributes every trial
    records) is a dead process of this host, when it ran as this same ``worker`` in another
    process (the previous try of this mapped task — the training DAG runs one run at a time,
    ``max_active_runs=1``, and Airflow one try of a task at a time, but a try it
    superseded — after a scheduler restart, say — may still be dying, or even start one more
    trial, while the new one begins; :func:`run_worker` checks again when it is done), or when it
    has no owner and is older than :data:`STALE_UNOWNED_S`. Returns the trial numbers marked FAIL."""
    from datetime import datetime

    from optuna.trial import TrialState

    from airloop.core.process import owner_gone

    here = socket.gethostname()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        host, pid = attrs.get("host"), attrs.get("pid")
        if host is None:
            started = trial.datetime_start
            gone = started is not None and (datetime.now() - started).total_seconds() > STALE_UNOWNED_S
        else:
            previous_try = attrs.get("worker") == worker and (host != here or str(pid) != str(os.getpid()))
            gone = owner_gone(host, pid) or previous_try
        if gone:
            study._storage.set_trial_system_attr(trial._trial_id, "fail_reason",
                                                 f"left RUNNING by process {host}:{pid} (gone); failed on retry")
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            stale.append(trial.number)
    if stale:
        log.warning("study %s: trials %s were left RUNNING by a killed process; marked FAIL", study.study_name, stale)
    return stale


def finished_trials(study) -> int:
    """Trials that count towards the budget: completed or pruned."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def make_objective(config: PipelineConfig, X: pd.DataFrame, y: pd.Series, on_trial_end=None,
                   trial_attrs: dict[str, Any] | None = None):
    """Optuna objective: time-ordered CV of the suggested model, pruning after each fold.
    ``trial_attrs`` are stored on every trial (which worker, host and process ran it)."""
    import optuna
    from sklearn.base import clone
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import TimeSeriesSplit

    scorer = get_scorer(config.training.metric)
    folds = list(TimeSeriesSplit(n_splits=config.training.cv_folds).split(X))
    space = {fam: {k: v.model_dump() for k, v in ps.items()} for fam, ps in config.training.search_space.items()}

    def objective(trial) -> float:
        for key, value in (trial_attrs or {}).items():
            trial.set_user_attr(key, value)
        family, params = suggest(trial, space)
        model = build_model(config, family, params)
        scores: list[float] = []
        started = time.perf_counter()
        state = "COMPLETE"
        try:
            for step, (tr, va) in enumerate(folds):
                fitted = clone(model).fit(X.iloc[tr], y.iloc[tr])
                scores.append(float(scorer(fitted, X.iloc[va], y.iloc[va])))
                trial.report(float(np.mean(scores)), step)
                if trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned()
            return float(np.mean(scores))
        except optuna.TrialPruned:
            raise
        except Exception:
            state = "FAIL"
            raise
        finally:
            if on_trial_end is not None:
                on_trial_end(trial, family, params, scores, state, time.perf_counter() - started)

    return objective


@dataclass
class WorkerResult:
    """What one mapped worker did (XCom-sized)."""

    worker: int
    trials_run: int
    finished_in_study: int
    best_value: float | None
    seconds: float


def run_worker(
    config: PipelineConfig,
    frame: pd.DataFrame,
    as_of: str,
    study_name: str,
    storage_uri: str,
    worker: int,
    n_workers: int,
    n_trials: int,
    timeout_s: float,
    tracker=None,
) -> WorkerResult:
    """Run this worker's share of the remaining trials of the shared study.

    The budget is global: ``n_trials`` finished (complete or pruned) trials across all workers
    and runs, enforced by :class:`optuna.study.MaxTrialsCallback`, so a re-run or a retried
    worker only tops the study up. Workers running side by side each pull trials until the
    budget is met (at most ``n_workers - 1`` trials in flight can overshoot it); a worker that
    runs alone, as under ``dag.test``, does the whole remaining budget. ``tracker(trial, family, params, scores, state, seconds)``
    is called once per trial (MLflow logging).
    """
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    started = time.perf_counter()
    study = open_study(storage_uri, study_name, config, worker=worker)
    fail_stale_trials(study, worker)
    train, _ = split_holdout(config, frame, as_of)
    X, y = features_and_target(config, train)
    remaining = n_trials - finished_trials(study)
    ran = 0
    existing = {t.number for t in study.get_trials(deepcopy=False)}
    log.info("worker %s of %s joined study %s: %s", worker, n_workers, study_name, _census(study, existing, n_trials))
    if remaining > 0:
        before = len(study.get_trials(deepcopy=False))
        with _frozen_heap():
            study.optimize(
                make_objective(config, X, y, on_trial_end=tracker,
                               trial_attrs={"worker": worker, "host": socket.gethostname(), "pid": os.getpid()}),
                n_trials=remaining,
                timeout=timeout_s,
                callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
                catch=(ValueError, ArithmeticError),
                gc_after_trial=True,
            )
        ran = len(study.get_trials(deepcopy=False)) - before
    fail_stale_trials(study, worker)  # a superseded try of this worker may have started a trial meanwhile
    best = _best_value(study)
    for line in worker_summary(study, worker, existing, n_trials, config.training.metric, remaining):
        log.info("%s", line)
    return WorkerResult(worker, ran, finished_trials(study), best, round(time.perf_counter() - started, 2))


def _states(trials) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    for t in trials:
        key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(t.state, "running")
        out[key] += 1
    return out


def _census(study, numbers: set[int], n_trials: int) -> str:
    """``6 trials already there (5 complete, 1 pruned, 0 failed, 0 running); budget 16 finished trials``."""
    if not numbers:
        return f"no trials yet; budget {n_trials} finished (complete or pruned) trials"
    c = _states(t for t in study.get_trials(deepcopy=False) if t.number in numbers)
    return (f"{len(numbers)} trials already there ({c['complete']} complete, {c['pruned']} pruned, "
            f"{c['failed']} failed, {c['running']} running); budget {n_trials} finished trials")


def worker_summary(study, worker: int, existing: set[int], n_trials: int, metric: str, asked_for: int) -> list[str]:
    """The worker's log, one fact a line: how many trials it asked of the shared study (the ones it
    ran: ``worker``/``pid`` user attributes, not there when it joined) and how they ended, the
    study's state and its best trial so far."""
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.number not in existing
            and t.user_attrs.get("worker") == worker and t.user_attrs.get("pid") == os.getpid()]
    c = _states(mine)
    if asked_for <= 0:
        lines = [f"worker {worker}: nothing asked, the study already had {n_trials - asked_for} of {n_trials} "
                 f"finished trials"]
    else:
        lines = [f"worker {worker}: {len(mine)} of {n_trials} trials asked of the shared study, {c['complete']} complete, "
                 f"{c['pruned']} pruned, {c['failed']} failed"]
    total = _states(trials)
    lines.append(f"study {study.study_name}: {len(trials)} trials in all, {total['complete'] + total['pruned']} of "
                 f"{n_trials} finished ({total['complete']} complete, {total['pruned']} pruned), {total['failed']} failed")
    try:
        best = study.best_trial
        lines.append(f"best so far: {metric} {best.value:.4f} (trial {best.number}, {best.params.get('estimator')}"
                     f"{', this worker' if best.number in {t.number for t in mine} else ''})")
    except ValueError:
        lines.append("best so far: none (no trial completed)")
    return lines


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Trials run with the heap as it was before them frozen (``gc.freeze``): Optuna's
    ``gc_after_trial`` then collects only what the trials allocated instead of walking every
    object of MLflow, Airflow, pandas and scikit-learn after each trial (~0.3 s per trial, a
    fifth of a demo-size trial in a profile). Unfrozen afterwards, so the objects can be
    collected again in a long-lived process (``dag.test``) — unless the process had frozen its
    heap itself before (a forked task process inherits the LocalExecutor's freeze): then it
    stays frozen, as it was."""
    was_frozen = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not was_frozen:
            gc.unfreeze()


def _best_value(study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no completed trial yet
        return None


def best_config(storage_uri: str, study_name: str, config: PipelineConfig) -> dict[str, Any]:
    """Best trial of the study as ``{family, params, value, number, n_finished}``."""
    study = open_study(storage_uri, study_name, config)
    try:
        best = study.best_trial
    except ValueError:
        raise TrainingError(f"study {study_name!r} has no completed trial (all pruned or failed?)") from None
    family, params = params_from_trial(best.params)
    return {
        "family": family,
        "params": params,
        "value": float(best.value),
        "number": best.number,
        "n_finished": finished_trials(study),
    }


def study_history(storage_uri: str, study_name: str, config: PipelineConfig) -> pd.DataFrame:
    """Trials of the study as a frame (number, state, value, estimator, duration)."""
    study = open_study(storage_uri, study_name, config)
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))


def fit_best(config: PipelineConfig, train: pd.DataFrame, best: dict[str, Any]):
    """Refit the best configuration on the whole training part of the window."""
    X, y = features_and_target(config, train)
    return build_model(config, best["family"], best["params"]).fit(X, y)
