"""Training: search space, model building, the shared study's global trial budget."""

from __future__ import annotations

from datetime import date

import optuna
import pandas as pd
import pytest

from airloop.data.features import TrainingError, features_and_target
from airloop.data.simulator import generate_day
from airloop.training.search import (
    build_model,
    finished_trials,
    open_study,
    params_from_trial,
    run_worker,
    sampler_seed,
    split_holdout,
    suggest,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    days = [generate_day(date(2026, 1, d)) for d in range(1, 11)]
    return pd.concat(days, ignore_index=True).sort_values("claim_ts").reset_index(drop=True)


@pytest.fixture()
def small_config(claims_config):
    space = {
        "logistic_regression": claims_config.training.search_space["logistic_regression"],
        "hist_gradient_boosting": claims_config.training.search_space["hist_gradient_boosting"],
    }
    training = claims_config.training.model_copy(update={"search_space": space, "holdout_days": 2, "cv_folds": 2})
    return claims_config.model_copy(update={"training": training})


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "hist_gradient_boosting", "extra_trees"])
def test_every_family_fits_and_predicts(claims_config, frame, family):
    X, y = features_and_target(claims_config, frame.head(800))
    model = build_model(claims_config, family, {}).fit(X, y)
    proba = model.predict_proba(X.head(3))
    assert proba.shape == (3, 2)


def test_unknown_family_names_the_options(claims_config):
    with pytest.raises(TrainingError, match="choose from"):
        build_model(claims_config, "ridge", {})  # regression-only family on a classifier


def test_suggest_round_trips_to_estimator_params(small_config):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    space = {f: {k: v.model_dump() for k, v in ps.items()} for f, ps in small_config.training.search_space.items()}
    family, params = suggest(trial, space)
    assert params_from_trial(trial.params) == (family, params)


def test_time_based_holdout(small_config, frame):
    train, holdout = split_holdout(small_config, frame, "2026-01-11")
    assert train["claim_ts"].max() < pd.Timestamp("2026-01-09", tz="UTC") <= holdout["claim_ts"].min()
    with pytest.raises(TrainingError, match="time split"):
        split_holdout(small_config, frame, "2026-01-02")


def test_workers_share_one_budget_and_reruns_resume(small_config, frame, tmp_path):
    storage = f"journal://{tmp_path / 'journal.log'}"
    seen = []
    track = lambda trial, family, params, scores, state, seconds: seen.append((trial.number, state))  # noqa: E731
    first = run_worker(small_config, frame, "2026-01-11", "s1", storage, 0, 2, 4, 120, tracker=track)
    second = run_worker(small_config, frame, "2026-01-11", "s1", storage, 1, 2, 4, 120, tracker=track)
    assert first.best_value is not None
    assert first.trials_run == 4 and second.trials_run == 0  # alone, a worker spends the whole budget
    assert finished_trials(open_study(storage, "s1", small_config)) == 4
    assert len(seen) == 4 and second.best_value == first.best_value
    rerun = run_worker(small_config, frame, "2026-01-11", "s1", storage, 0, 2, 4, 120, tracker=track)
    assert rerun.trials_run == 0  # budget already spent: a re-run tops up, never repeats


def test_workers_and_resumes_sample_differently_a_lone_worker_as_before(small_config, tmp_path):
    """Side-by-side workers of one study (and a worker joining a study that already has trials)
    draw different random start-up configurations; worker 0 on an empty study keeps the
    pipeline's seed, so a lone worker trains exactly as with a plain seeded sampler."""
    seed = small_config.training.seed
    assert sampler_seed(seed, 0, 0) == seed
    assert len({sampler_seed(seed, w, n) for w in range(4) for n in (0, 3, 16)}) == 12
    assert sampler_seed(seed, 1, 3) == sampler_seed(seed, 1, 3)  # reproducible for the same history
    space = {f: {k: v.model_dump() for k, v in ps.items()} for f, ps in small_config.training.search_space.items()}

    def first_proposals(worker: int, study_name: str, n: int = 4) -> list[dict]:
        study = open_study(f"journal://{tmp_path / 'j.log'}", study_name, small_config, worker=worker)
        out = []
        for _ in range(n):
            trial = study.ask()
            suggest(trial, space)
            out.append(trial.params)
        return out

    # two workers joining the same empty study at the same time (both see 0 trials)
    a, b = first_proposals(0, "side-by-side"), first_proposals(1, "side-by-side-copy")
    assert a != b and all(x != y for x, y in zip(a, b))
    # a lone worker 0 proposes what a plain sampler with the pipeline's seed proposes
    plain = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=6))
    expected = []
    for _ in range(4):
        trial = plain.ask()
        suggest(trial, space)
        expected.append(trial.params)
    assert first_proposals(0, "lone") == expected


def test_trials_run_with_the_heap_frozen_and_it_is_thawed_after(small_config, frame, tmp_path):
    """Optuna's gc_after_trial collects only what a trial allocated: the heap as it was before the
    trials is frozen while they run, and unfrozen afterwards (it was not frozen before)."""
    import gc

    gc.unfreeze()
    frozen_during = []
    track = lambda *args: frozen_during.append(gc.get_freeze_count())  # noqa: E731
    run_worker(small_config, frame, "2026-01-11", "frozen", f"journal://{tmp_path / 'j.log'}", 0, 1, 2, 120,
               tracker=track)
    assert len(frozen_during) == 2 and all(count > 10_000 for count in frozen_during)
    assert gc.get_freeze_count() == 0


def test_worker_log_counts_what_it_asked_and_what_was_already_there(small_config, frame, tmp_path, caplog):
    """The train_trials log, one fact a line: the study as the worker found it, the trials it asked
    and how they ended, the study in all and the best trial so far; a resumed study says how many
    trials were already there."""
    import logging

    storage = f"journal://{tmp_path / 'journal.log'}"
    with caplog.at_level(logging.INFO, logger="airloop.training.search"):
        first = run_worker(small_config, frame, "2026-01-11", "logs", storage, 0, 2, 3, 120)
    lines = [r.getMessage() for r in caplog.records if r.name == "airloop.training.search"]
    study = open_study(storage, "logs", small_config)
    states = [t.state for t in study.get_trials()]
    complete, pruned = states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.PRUNED)
    best = study.best_trial
    assert lines == [
        "worker 0 of 2 joined study logs: no trials yet; budget 3 finished (complete or pruned) trials",
        f"worker 0: 3 of 3 trials asked of the shared study, {complete} complete, {pruned} pruned, 0 failed",
        f"study logs: 3 trials in all, 3 of 3 finished ({complete} complete, {pruned} pruned), 0 failed",
        f"best so far: roc_auc {best.value:.4f} (trial {best.number}, {best.params['estimator']}, this worker)",
    ]
    assert first.trials_run == 3

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="airloop.training.search"):
        run_worker(small_config, frame, "2026-01-11", "logs", storage, 1, 2, 5, 120)  # the budget raised to 5
    lines = [r.getMessage() for r in caplog.records if r.name == "airloop.training.search"]
    assert lines[0] == (f"worker 1 of 2 joined study logs: 3 trials already there ({complete} complete, {pruned} "
                        f"pruned, 0 failed, 0 running); budget 5 finished trials")
    assert lines[1].startswith("worker 1: 2 of 5 trials asked of the shared study, ")
    assert lines[2].startswith("study logs: 5 trials in all, 5 of 5 finished")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="airloop.training.search"):
        run_worker(small_config, frame, "2026-01-11", "logs", storage, 0, 2, 5, 120)  # a retry: budget spent
    lines = [r.getMessage() for r in caplog.records if r.name == "airloop.training.search"]
    assert lines[1] == "worker 0: nothing asked, the study already had 5 of 5 finished trials"
