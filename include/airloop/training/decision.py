"""Decisions and calibration: the served model of the best configuration, its decision threshold.

Everything here is decided on **out-of-fold** predictions of the best configuration over the
training part of the window (never the holdout): ``cv_folds`` contiguous folds of the time-ordered
training rows (:class:`sklearn.model_selection.KFold` without shuffling; a partition, as
out-of-fold predictions need, which the study's forward-chaining folds are not).

* **Calibration** (``training.calibration``): ``sigmoid`` / ``isotonic`` wrap the estimator in
  :class:`sklearn.calibration.CalibratedClassifierCV` with ``ensemble=False`` (the estimator refit
  on all training rows, the calibrator fit on out-of-fold responses), inside the usual
  ``Pipeline([("pre", ...), ("model", ...)])``. ``auto`` calibrates with the method whose
  cross-fitted calibrator (scikit-learn's own, fit on the other folds' responses) lowers the
  out-of-fold Brier score most, and not at all when none lowers it by :data:`AUTO_MIN_GAIN`.
* **Threshold** (binary, ``training.decision``): tuned on the (calibrated) out-of-fold scores of
  the positive class; the label is ``score >= threshold`` (:func:`airloop.models.scoring.decide`).
  A threshold that flags no row is never chosen. The served calibrator is the one fit on all
  out-of-fold responses, so its scores differ slightly from the cross-fitted ones tuned on.

A plain stored threshold (not :class:`sklearn.model_selection.TunedThresholdClassifierCV`): it
keeps the artefact a plain scikit-learn model, serving and monitoring apply the same number, and
the objectives (cost, precision at recall, ...) are ours, not scorer names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airloop.core.decision import DecisionConfig
from airloop.core.pipeline import PipelineConfig
from airloop.data.features import TrainingError, features_and_target
from airloop.models.scoring import positive_class
from airloop.training.search import build_model

log = logging.getLogger(__name__)

#: ``auto`` tries these methods.
AUTO_METHODS = ("sigmoid", "isotonic")
#: ``auto`` calibrates only when the Brier score drops by at least this share (0.5 %).
AUTO_MIN_GAIN = 0.005
#: Bins of the expected calibration error (equal width over [0, 1]).
ECE_BINS = 10


@dataclass
class Decided:
    """The served model of the best configuration and how it decides.

    ``decision``: what the artefact stores (``threshold``, ``objective``, ``calibration``,
    ``positive_class``, ``class_costs``); ``cv``: out-of-fold figures behind the choices."""

    model: Any
    decision: dict[str, Any]
    cv: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------- metrics
def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of positive-class probabilities: the row-weighted mean gap
    between the mean probability and the share of positives in ``n_bins`` equal-width bins."""
    y = np.asarray(y_true, dtype="float64")
    p = np.clip(np.asarray(prob, dtype="float64"), 0.0, 1.0)
    if not len(p):
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return float(total / len(p))


def brier(y_true: Any, prob: Any) -> float:
    """Brier score of positive-class probabilities (0/1 labels)."""
    y, p = np.asarray(y_true, dtype="float64"), np.asarray(prob, dtype="float64")
    return float(np.mean((p - y) ** 2))


def multiclass_brier(Y: np.ndarray, proba: np.ndarray) -> float:
    """Mean over rows of the summed squared error of the class probabilities (one-hot ``Y``)."""
    return float(np.mean(np.sum((proba - Y) ** 2, axis=1)))


# -------------------------------------------------------------------------------- threshold
def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score ``t`` (descending): true and false positives of ``s >= t``."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # last row of each distinct score
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return s_sorted[last], tp.astype("float64"), fp.astype("float64")


def tune_threshold(decision: DecisionConfig, y_true: Any, scores: Any) -> dict[str, Any]:
    """The threshold of ``decision.objective`` on labelled scores (``y_true`` 0/1).

    ``max_f1``: the largest F1; ``cost``: the lowest ``fp * FP + fn * FN`` per row;
    ``precision_at_recall``: the largest precision with recall >= ``target``;
    ``recall_at_precision``: the largest recall with precision >= ``target``. When no threshold
    reaches the target, the one closest to it (largest recall, resp. precision) is used and
    ``feasible`` is false. Ties go to the larger threshold. Returns ``{threshold, objective,
    value, feasible, precision, recall, f1}`` (figures on these scores)."""
    y = np.asarray(y_true, dtype="float64")
    s = np.asarray(scores, dtype="float64")
    positives = y.sum()
    if not len(s) or positives == 0 or positives == len(y):
        raise TrainingError(f"cannot tune a threshold on {len(s)} scores with {int(positives)} positives: "
                            "the out-of-fold predictions need both classes")
    thresholds, tp, fp = _counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    objective, feasible = decision.objective, True
    if objective == "max_f1":
        value = f1
    elif objective == "cost":
        fn = positives - tp
        value = -(decision.cost.fp * fp + decision.cost.fn * fn) / len(y)
    else:
        constraint, goal = (recall, precision) if objective == "precision_at_recall" else (precision, recall)
        meets = constraint >= decision.target - 1e-12
        feasible = bool(meets.any())
        value = np.where(meets, goal, -np.inf) if feasible else constraint
    best = np.flatnonzero(value == value.max())[0]  # thresholds descend: the first is the largest
    figure = float(value[best])
    return {"threshold": float(thresholds[best]), "objective": objective,
            "value": -figure if objective == "cost" else figure, "feasible": feasible,
            "precision": float(precision[best]), "recall": float(recall[best]), "f1": float(f1[best])}


# ------------------------------------------------------------------------------ calibration
class _GivenScores:
    """A stand-in classifier whose response is its input: lets :class:`CalibratedClassifierCV`
    fit its own calibrators on out-of-fold responses (decision-making only; never stored)."""

    _estimator_type = "classifier"

    def __init__(self, classes: np.ndarray) -> None:
        self.classes_ = classes

    def fit(self, X: Any, y: Any) -> "_GivenScores":
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype="float64")
        return X[:, 0] if X.shape[1] == 1 else X

    def predict(self, X: Any) -> np.ndarray:
        r = self.decision_function(X)
        return self.classes_[(r > 0).astype(int)] if r.ndim == 1 else self.classes_[np.argmax(r, axis=1)]

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"classes": self.classes_}


def _calibrate_responses(method: str, classes: np.ndarray, fit_r: np.ndarray, fit_y: np.ndarray,
                         apply_r: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of ``apply_r`` with scikit-learn's own ``method`` calibrators fit on
    (``fit_r``, ``fit_y``)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    calibrated = CalibratedClassifierCV(FrozenEstimator(_GivenScores(classes)), method=method)
    return calibrated.fit(fit_r, fit_y).predict_proba(apply_r)


def cross_fitted_calibration(method: str, classes: np.ndarray, responses: np.ndarray, y: np.ndarray,
                             folds: int) -> np.ndarray:
    """Out-of-fold calibrated probabilities: each fold of ``responses`` calibrated by a
    calibrator fit on the other folds (an honest Brier score for ``auto``)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros((len(y), len(classes)))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for fit_idx, apply_idx in splitter.split(responses, y):
        out[apply_idx] = _calibrate_responses(method, classes, responses[fit_idx], y[fit_idx], responses[apply_idx])
    return out


def choose_calibration(requested: str, classes: np.ndarray, responses: np.ndarray, proba: np.ndarray,
                       y: np.ndarray, folds: int) -> tuple[str, np.ndarray, dict[str, float]]:
    """``(method, out-of-fold probabilities under it, Brier figures)``: ``requested`` unless it is
    ``auto``, which picks the method of :data:`AUTO_METHODS` with the lowest cross-fitted Brier
    score if it beats the uncalibrated one, else ``none``."""
    Y = (np.asarray(y)[:, None] == classes[None, :]).astype("float64")
    figures = {"cv_brier_none": multiclass_brier(Y, proba) / (2 if len(classes) == 2 else 1)}
    if requested == "none":
        return "none", proba, figures
    candidates = AUTO_METHODS if requested == "auto" else (requested,)
    options = {"none": proba} if requested == "auto" else {}
    for method in candidates:
        options[method] = cross_fitted_calibration(method, classes, responses, y, folds)
        figures[f"cv_brier_{method}"] = multiclass_brier(Y, options[method]) / (2 if len(classes) == 2 else 1)
    chosen = min(options, key=lambda m: figures[f"cv_brier_{m}"])
    if requested == "auto" and chosen != "none" and (
            figures[f"cv_brier_{chosen}"] > figures["cv_brier_none"] * (1 - AUTO_MIN_GAIN)):
        chosen = "none"  # a gain within the noise of the folds is not worth a calibrator
    return chosen, options[chosen], figures


# ------------------------------------------------------------------------------ the fitting
def _response_name(estimator: Any) -> str:
    """The response scikit-learn calibrates: ``decision_function`` when there is one."""
    return "decision_function" if hasattr(estimator, "decision_function") else "predict_proba"


def out_of_fold(config: PipelineConfig, X: pd.DataFrame, y: pd.Series, family: str, params: dict[str, Any],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, probabilities, responses)`` of every training row, each from the model fitted
    on the other folds (responses: what a calibrator sees, ``(n, 1)`` for binary)."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    template = build_model(config, family, params)
    classes = np.unique(y)
    proba = np.zeros((len(X), len(classes)))
    response = np.zeros((len(X), 1 if len(classes) == 2 else len(classes)))
    for fit_idx, apply_idx in KFold(n_splits=config.training.cv_folds).split(X):
        fitted = clone(template).fit(X.iloc[fit_idx], y.iloc[fit_idx])
        if len(fitted.classes_) != len(classes):
            raise TrainingError(f"{config.name}: a CV fold of the training window misses a class "
                                f"({list(fitted.classes_)} of {list(classes)}); widen the window")
        part = X.iloc[apply_idx]
        proba[apply_idx] = fitted.predict_proba(part)
        if _response_name(fitted[-1]) == "decision_function":
            r = np.asarray(fitted.decision_function(part), dtype="float64")
            response[apply_idx] = r.reshape(len(part), -1)
        else:
            response[apply_idx] = proba[apply_idx][:, 1:] if len(classes) == 2 else proba[apply_idx]
    return classes, proba, response


def fit_decided(config: PipelineConfig, train: pd.DataFrame, best: dict[str, Any]) -> Decided:
    """Refit the best configuration on the training rows, calibrated as configured, with its
    decision rule (binary: the tuned threshold) and the out-of-fold figures behind both."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import KFold

    X, y = features_and_target(config, train)
    model = build_model(config, best["family"], best["params"])
    if config.task == "regression":
        return Decided(model.fit(X, y), {})
    training = config.training
    folds = training.cv_folds
    needs_oof = config.task == "binary_classification" or training.calibration == "auto"
    classes = np.unique(y)
    method, cv = training.calibration, {}
    if needs_oof:
        classes, proba, responses = out_of_fold(config, X, y, best["family"], best["params"])
        method, proba, cv = choose_calibration(training.calibration, classes, responses, proba, y.to_numpy(), folds)
    if method != "none":
        model.set_params(model=CalibratedClassifierCV(model.named_steps["model"], method=method,
                                                      cv=KFold(n_splits=folds), ensemble=False))
    model.fit(X, y)
    decision: dict[str, Any] = {"calibration": method, "calibration_requested": training.calibration}
    if config.task == "binary_classification":
        positive = positive_class(config)
        column = [str(c) for c in classes].index(str(positive))
        y_pos = (y.astype(str).to_numpy() == str(positive)).astype(int)
        scores = proba[:, column]
        tuned = tune_threshold(training.decision, y_pos, scores)
        if not tuned["feasible"]:
            log.warning("%s: no threshold reaches %s %s on the out-of-fold scores; using the closest (%s)",
                        config.name, training.decision.objective, training.decision.target, tuned)
        decision |= {"threshold": tuned["threshold"], "objective": tuned["objective"],
                     "positive_class": str(positive), "target_met": tuned["feasible"]}
        if training.decision.cost is not None:
            decision["cost"] = training.decision.cost.model_dump()
        if training.decision.target is not None:
            decision["target"] = training.decision.target
        cv |= {"cv_threshold_value": tuned["value"], "cv_f1": tuned["f1"], "cv_precision": tuned["precision"],
               "cv_recall": tuned["recall"], "cv_ece": expected_calibration_error(y_pos, scores)}
    elif training.decision.class_costs:
        decision["class_costs"] = dict(training.decision.class_costs)
    return Decided(model, decision, cv)


def decision_line(decision: dict[str, Any], cv: dict[str, float]) -> str:
    """``threshold 0.1388 (max_f1; CV f1 0.3196, precision 0.2517, recall 0.4376), calibration
    sigmoid (auto; CV Brier none 0.0432, sigmoid 0.0431, isotonic 0.0432)``: the evaluate log line."""
    parts = []
    if decision.get("threshold") is not None:
        target = f" {decision['target']}" if decision.get("target") is not None else ""
        missed = ", target not reached" if decision.get("target_met") is False else ""
        parts.append(f"threshold {decision['threshold']:.4f} ({decision['objective']}{target}; CV f1 "
                     f"{cv.get('cv_f1', float('nan')):.4f}, precision {cv.get('cv_precision', float('nan')):.4f}, "
                     f"recall {cv.get('cv_recall', float('nan')):.4f}{missed})")
    if decision.get("class_costs"):
        parts.append(f"class costs {decision['class_costs']}")
    briers = ", ".join(f"{k.removeprefix('cv_brier_')} {v:.4f}" for k, v in cv.items() if k.startswith("cv_brier_"))
    requested = decision.get("calibration_requested")
    parts.append(f"calibration {decision.get('calibration', 'none')}"
                 + (f" ({requested}; CV Brier {briers})" if briers else f" ({requested})" if requested else ""))
    return ", ".join(parts)
