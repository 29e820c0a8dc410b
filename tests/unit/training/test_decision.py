"""Decision thresholds and calibration (``airloop.training.decision``): each objective on a
constructed case, the holdout never used for tuning, ``calibration: auto`` on constructed
scores, ECE, the holdout's decision metrics at the threshold, and the pipeline file's errors."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from airloop.core.decision import DecisionConfig
from airloop.core.pipeline import ConfigError, parse_pipeline_config
from airloop.data.features import TrainingError, features_and_target
from airloop.data.simulator import generate_day
from airloop.models.scoring import decide, model_scores
from airloop.training.decision import (
    choose_calibration,
    expected_calibration_error,
    fit_decided,
    tune_threshold,
)
from airloop.training.evaluation import holdout_metrics
from airloop.training.search import split_holdout
from tests.unit.serving.test_app import REPO_ROOT

# scores descending; labels chosen so each objective has one right answer
SCORES = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
# threshold -> (tp, fp): 0.95 (1,0) 0.9 (2,0) 0.8 (2,1) 0.7 (3,1) 0.6 (3,2) 0.5 (3,3) 0.4 (4,3) ...


def raw_config(**training) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    raw["training"].update(training)
    return raw


def config_of(**training):
    return parse_pipeline_config(raw_config(**training))


# ------------------------------------------------------------------------------ objectives
def test_max_f1_picks_the_best_f1_threshold():
    tuned = tune_threshold(DecisionConfig(objective="max_f1"), LABELS, SCORES)
    # f1: 0.9 -> 2*1*.5/1.5=.667, 0.7 -> 2*.75*.75/1.5=.75, 0.4 -> 2*(4/7)*1/(4/7+1)=.727
    assert tuned["threshold"] == 0.7 and tuned["f1"] == pytest.approx(0.75) and tuned["value"] == pytest.approx(0.75)


def test_cost_picks_the_cheapest_threshold_and_moves_with_the_costs():
    # fn expensive: flag down to 0.4 (no false negative: 3 fp = 3) beats 0.7 (1 fn *10 + 1 fp = 11)
    cheap_fp = tune_threshold(DecisionConfig(objective="cost", cost={"fp": 1, "fn": 10}), LABELS, SCORES)
    assert cheap_fp["threshold"] == 0.4 and cheap_fp["value"] == pytest.approx(3 / 10)
    # fp expensive: flag only the top two (no fp; 2 fn = 2)
    cheap_fn = tune_threshold(DecisionConfig(objective="cost", cost={"fp": 10, "fn": 1}), LABELS, SCORES)
    assert cheap_fn["threshold"] == 0.9 and cheap_fn["value"] == pytest.approx(2 / 10)


def test_precision_at_recall_and_recall_at_precision():
    at_recall = tune_threshold(DecisionConfig(objective="precision_at_recall", target=0.75), LABELS, SCORES)
    assert at_recall["threshold"] == 0.7 and at_recall["precision"] == pytest.approx(0.75)
    at_precision = tune_threshold(DecisionConfig(objective="recall_at_precision", target=0.7), LABELS, SCORES)
    assert at_precision["threshold"] == 0.7 and at_precision["recall"] == pytest.approx(0.75)
    strict = tune_threshold(DecisionConfig(objective="recall_at_precision", target=1.0), LABELS, SCORES)
    assert strict["threshold"] == 0.9 and strict["recall"] == pytest.approx(0.5)  # the lowest with precision 1


def test_an_unreachable_target_falls_back_to_the_closest_and_says_so():
    y = np.array([0, 1, 0, 1])  # precision at .9: 0, .8: 1/2, .7: 1/3, .6: 1/2
    tuned = tune_threshold(DecisionConfig(objective="recall_at_precision", target=0.9), y, np.array([.9, .8, .7, .6]))
    assert tuned["feasible"] is False and tuned["threshold"] == 0.8 and tuned["precision"] == 0.5


def test_one_class_cannot_be_tuned():
    with pytest.raises(TrainingError, match="both classes"):
        tune_threshold(DecisionConfig(objective="max_f1"), np.zeros(5), np.linspace(0, 1, 5))


def test_decide_labels_at_the_threshold(claims_config):
    labels = decide(claims_config, np.array([0.1, 0.2, 0.35]), 0.2)
    assert labels.tolist() == [0, 1, 1]
    assert decide(claims_config, np.array([0.49, 0.5]), None).tolist() == [0, 1]  # no threshold: argmax


# ------------------------------------------------------------------------------ calibration
def _constructed(calibrated: bool, n: int = 6000):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.6, n)
    y = (rng.uniform(size=n) < (p if calibrated else p ** 2.5)).astype(int)  # miscalibrated: over-confident
    proba = np.column_stack([1 - p, p])
    return np.array([0, 1]), proba, np.log(p / (1 - p)).reshape(-1, 1), y


def test_auto_declines_calibrating_calibrated_scores():
    classes, proba, responses, y = _constructed(calibrated=True)
    method, scores, figures = choose_calibration("auto", classes, responses, proba, y, folds=3)
    assert method == "none" and scores is proba
    assert set(figures) == {"cv_brier_none", "cv_brier_sigmoid", "cv_brier_isotonic"}


def test_auto_calibrates_overconfident_scores_and_lowers_the_brier_score():
    classes, proba, responses, y = _constructed(calibrated=False)
    method, scores, figures = choose_calibration("auto", classes, responses, proba, y, folds=3)
    assert method in ("sigmoid", "isotonic")
    assert figures[f"cv_brier_{method}"] < figures["cv_brier_none"] * 0.95
    assert expected_calibration_error(y, scores[:, 1]) < expected_calibration_error(y, proba[:, 1]) / 2


def test_expected_calibration_error():
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([0, 0, 1, 1], [0.05, 0.05, 0.95, 0.95]) == pytest.approx(0.05)


# ------------------------------------------------------------------------------ the fitting
@pytest.fixture(scope="module")
def window() -> pd.DataFrame:
    days = [generate_day(date(2026, 1, 1) + timedelta(days=d)) for d in range(14)]
    return pd.concat(days, ignore_index=True).sort_values("claim_ts").reset_index(drop=True)


BEST = {"family": "logistic_regression", "params": {"C": 0.5}}


def test_tuning_uses_no_holdout_row(window):
    config = config_of(holdout_days=3, calibration="sigmoid")
    as_of = "2026-01-15"
    train, holdout = split_holdout(config, window, as_of)
    first = fit_decided(config, train, BEST)
    permuted = window.copy()
    in_holdout = permuted["claim_ts"] >= pd.Timestamp("2026-01-12", tz="UTC")
    assert in_holdout.sum() == len(holdout)
    permuted.loc[in_holdout, "is_fraud"] = 1 - permuted.loc[in_holdout, "is_fraud"]  # every holdout label flipped
    train2, holdout2 = split_holdout(config, permuted, as_of)
    again = fit_decided(config, train2, BEST)
    assert (holdout2["is_fraud"] != holdout["is_fraud"]).all()
    assert again.decision == first.decision and again.cv == first.cv
    X, _ = features_and_target(config, holdout)
    assert np.allclose(model_scores(config, again.model, X), model_scores(config, first.model, X))


def test_the_served_model_is_calibrated_and_the_threshold_flags_positives(window):
    config = config_of(holdout_days=3, calibration="isotonic", decision={"objective": "cost", "cost": {"fp": 1, "fn": 10}})
    train, holdout = split_holdout(config, window, "2026-01-15")
    decided = fit_decided(config, train, BEST)
    assert type(decided.model.named_steps["model"]).__name__ == "CalibratedClassifierCV"
    assert decided.decision["calibration"] == "isotonic" and decided.decision["objective"] == "cost"
    assert decided.decision["positive_class"] == "1" and 0 < decided.decision["threshold"] < 0.5
    metrics = holdout_metrics(config, decided.model, holdout, decided.decision["threshold"])
    at_half = holdout_metrics(config, decided.model, holdout, None)
    assert metrics["positive_predictions"] > at_half["positive_predictions"]
    assert metrics["recall"] > at_half["recall"]
    X, y = features_and_target(config, holdout)
    score = model_scores(config, decided.model, X)
    flagged = score >= decided.decision["threshold"]
    assert metrics["positive_predictions"] == flagged.sum()
    fp, fn = (flagged & (y == 0)).sum(), (~flagged & (y == 1)).sum()
    assert metrics["expected_cost"] == pytest.approx((fp + 10 * fn) / len(y))
    assert {"brier", "ece", "f1", "precision", "recall", "accuracy"} <= set(metrics)


# ------------------------------------------------------------------------------ config errors
@pytest.mark.parametrize(("training", "message"), [
    ({"decision": {"objective": "max_f2"}}, "decision.objective"),
    ({"decision": {"objective": "cost"}}, "objective 'cost' needs cost"),
    ({"decision": {"objective": "precision_at_recall"}}, "needs target"),
    ({"decision": {"objective": "max_f1", "target": 0.8}}, "target is only for"),
    ({"decision": {"objective": "cost", "cost": {"fp": 1, "fm": 10}}}, "decision.cost.fm"),
    ({"decision": {"class_costs": {"0": 1, "1": 5}}}, "class_costs is for multi-class"),
    ({"decision": {"treshold": 0.3}}, "decision.treshold"),
    ({"calibration": "platt"}, "training.calibration"),
])
def test_config_errors_name_the_field(training, message):
    with pytest.raises(ConfigError, match=message):
        config_of(**training)


def test_binary_default_objective_is_max_f1():
    raw = raw_config()
    raw["training"].pop("decision")
    assert parse_pipeline_config(raw).training.decision.objective == "max_f1"


def test_a_gate_typo_fails_at_load_with_did_you_mean():
    raw = raw_config()
    raw["promotion"]["environments"][2]["thresholds"] = {"f1_scor": 0.25}
    with pytest.raises(ConfigError, match=r"environments.prod.thresholds: 'f1_scor'.*did you mean 'f1"):
        parse_pipeline_config(raw)
    raw["promotion"]["environments"][2]["thresholds"] = {"expected_cost": 0.3}
    with pytest.raises(ConfigError, match="'expected_cost' needs training.decision.objective 'cost'"):
        parse_pipeline_config(raw)
    raw["promotion"]["environments"][2]["thresholds"] = {"f1": 0.25, "recall": 0.2}
    assert parse_pipeline_config(raw).promotion.environment("prod").thresholds == {"f1": 0.25, "recall": 0.2}


# ------------------------------------------------------------------------------ multi-class
def test_multiclass_class_costs_and_a_calibrated_multiclass_model():
    from airloop.core.pipeline import load_pipeline_config
    from airloop.data.simulator import generate_ticket_day

    base = load_pipeline_config("ticket_triage")
    classes = [str(c) for c in base.classes]
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "ticket_triage.yaml").read_text())
    raw["training"].update(calibration="auto", decision={"class_costs": {classes[-1]: 4}}, holdout_days=2)
    config = parse_pipeline_config(raw)
    assert len(classes) == 5
    proba = np.array([[0.4, 0.2, 0.1, 0.05, 0.25], [0.6, 0.2, 0.1, 0.05, 0.05]])
    assert decide(config, proba, None).tolist() == [classes[4], classes[0]]  # 0.25 * 4 > 0.4; 0.05 * 4 < 0.6
    assert decide(base, proba, None).tolist() == [classes[0], classes[0]]  # no costs: the argmax
    frame = pd.concat([generate_ticket_day(date(2026, 1, 1) + timedelta(days=d)) for d in range(8)], ignore_index=True)
    frame = frame.sort_values(config.timestamp).reset_index(drop=True)
    train, holdout = split_holdout(config, frame, "2026-01-09")
    family = sorted(config.training.search_space)[0]
    decided = fit_decided(config, train, {"family": family, "params": {}})
    assert decided.decision["class_costs"] == {classes[-1]: 4.0} and "threshold" not in decided.decision
    assert decided.decision["calibration"] in ("none", "sigmoid", "isotonic")
    metrics = holdout_metrics(config, decided.model, holdout)
    assert 0 <= metrics["accuracy"] <= 1 and "f1" not in metrics


def test_class_costs_must_name_classes():
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "ticket_triage.yaml").read_text())
    raw["training"]["decision"] = {"class_costs": {"nonexistent": 2}}
    with pytest.raises(ConfigError, match=r"class_costs: \['nonexistent'\] not among the classes"):
        parse_pipeline_config(raw)
