"""Label-free performance estimates of one interval of served scores.

Labels arrive days to weeks after a prediction; until then the model's own scores say how well it
is probably doing, provided they are calibrated (what serving answers once calibration is on):

* binary classification — confidence-based performance estimation (the method of NannyML's CBPE):
  with ``y_i ~ Bernoulli(p_i)`` the expected confusion matrix at the served threshold gives
  precision, recall, F1 and accuracy; ROC AUC is the area under the curve whose true/false
  positive rates are the cumulated ``p`` and ``1 - p`` of the rows sorted by score;
* multi-class — the score is the top class's probability, so the expected accuracy is its mean;
* regression — direct loss estimation (DLE): a gradient-boosting model of ``|error|`` (and of the
  squared error) fitted on the version's reference rows with realized errors (its holdout),
  averaged over the interval: estimated MAE and RMSE.

Every estimate has an uncertainty band: for classification a parametric bootstrap over labels
drawn from the scores (vectorised: one ``(draws, rows)`` matrix; the realized metric of each draw
is computed with matrix products) gives the sampling standard deviation ``std``, and the band is
``value ± BAND_SIGMAS * std`` clipped to the metric's range (±3 std, NannyML's choice); for DLE
the band is the standard error of the mean predicted loss times :data:`BAND_SIGMAS` (the DLE
model's own error is not in it). The bootstrap is seeded: the same scores give the same band.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Half-width of the band in standard deviations of the metric's sampling distribution.
BAND_SIGMAS = 3.0
#: Bootstrap label draws per interval.
DRAWS = 200
#: Metrics estimated per task (the keys of :func:`estimate_performance`'s ``metrics``).
BINARY_METRICS = ("roc_auc", "f1", "precision", "recall", "accuracy")
MULTICLASS_METRICS = ("accuracy",)
REGRESSION_METRICS = ("mae", "rmse")
#: Study metrics (sklearn scorer names) and the estimated metric they map to.
STUDY_TO_ESTIMATED = {"roc_auc": "roc_auc", "f1": "f1", "precision": "precision", "recall": "recall",
                      "accuracy": "accuracy", "neg_mean_absolute_error": "mae",
                      "neg_root_mean_squared_error": "rmse", "neg_mean_squared_error": "rmse"}
LOWER_IS_BETTER = frozenset(REGRESSION_METRICS)


@dataclass(frozen=True)
class Estimate:
    """One estimated metric: ``value`` and its band ``[low, high]`` (``std``: sampling std)."""

    value: float | None
    low: float | None
    high: float | None
    std: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in asdict(self).items()}


def _band(value: float, std: float, lo: float = 0.0, hi: float = 1.0) -> Estimate:
    if not math.isfinite(value):
        return Estimate(None, None, None, None)
    std = std if math.isfinite(std) else 0.0
    return Estimate(value, max(lo, value - BAND_SIGMAS * std), min(hi, value + BAND_SIGMAS * std), std)


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ============================================================================ binary (CBPE)
def expected_roc_auc(p: np.ndarray) -> float:
    """CBPE's ROC AUC: the area under the curve of cumulated ``p`` (TPR) vs ``1 - p`` (FPR) over
    the rows sorted by descending score (ties form one step). NaN when ``p`` is all 0 or all 1."""
    p = np.asarray(p, dtype=float)
    return _expected_auc_sorted(np.sort(p)[::-1]) if len(p) else math.nan


def _expected_auc_sorted(ps: np.ndarray) -> float:
    """:func:`expected_roc_auc` of scores already sorted in descending order."""
    last = np.r_[ps[1:] != ps[:-1], True]  # one point per distinct score: ties move TPR and FPR together
    tp, fp = np.cumsum(ps)[last], np.cumsum(1.0 - ps)[last]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return math.nan
    tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def _average_ranks(p: np.ndarray, order: np.ndarray) -> np.ndarray:
    """1-based ranks of ``p`` (ties share their average rank), given ``order = argsort(p)``."""
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    ends = np.r_[starts[1:], len(ps)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(p), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def _confusion_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    n = tp + fp + fn + tn
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, n)}


def _draw_labels(p: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """``(draws, rows)`` labels ``y ~ Bernoulli(p)`` as float32 (seeded)."""
    rng = np.random.default_rng(seed)
    return (rng.random((draws, len(p)), dtype=np.float32) < p.astype(np.float32)).astype(np.float32)


def _realized_auc_of_draws(ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``y`` against scores of the given average ``ranks`` (Mann-Whitney)."""
    npos = y.sum(axis=1, dtype=np.float64)
    nneg = y.shape[1] - npos
    rank_sum = y @ ranks
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - npos * (npos + 1) / 2) / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), auc, np.nan)


def _std(values: np.ndarray) -> float:
    finite = values if np.isfinite(values).all() else values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if len(finite) > 1 else math.nan


def estimate_binary(scores: np.ndarray, threshold: float = 0.5, *, predicted: np.ndarray | None = None,
                    draws: int = DRAWS, seed: int = 0) -> dict[str, Estimate]:
    """CBPE estimates of :data:`BINARY_METRICS` from positive-class probabilities ``scores``.

    ``predicted``: the served labels as booleans (positive = True); default ``scores >= threshold``.
    The point estimates are CBPE's (ratios of expected confusion counts, the expected-curve AUC);
    each ``std`` is the std of the realized metric over ``draws`` label sets drawn from ``scores``.
    """
    p = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    p = p[np.isfinite(p)] if predicted is None else p
    pred = (p >= threshold) if predicted is None else np.asarray(predicted, dtype=bool)
    if len(p) == 0:
        return {m: Estimate(None, None, None, None) for m in BINARY_METRICS}
    pos = pred.astype(np.float64)
    tp, fp = float(p @ pos), float((1 - p) @ pos)
    fn, tn = float(p @ (1 - pos)), float((1 - p) @ (1 - pos))
    order = np.argsort(p, kind="stable")
    point = {k: float(v) for k, v in _confusion_metrics(tp, fp, fn, tn).items()} | \
        {"roc_auc": _expected_auc_sorted(p[order][::-1])}
    y = _draw_labels(p, draws, seed)
    tp_d = y @ pos.astype(np.float32)
    npos_d = y.sum(axis=1)
    fp_d, fn_d = pos.sum() - tp_d, npos_d - tp_d
    tn_d = len(p) - tp_d - fp_d - fn_d
    sims = _confusion_metrics(tp_d, fp_d, fn_d, tn_d) | {"roc_auc": _realized_auc_of_draws(_average_ranks(p, order), y)}
    return {metric: _band(point[metric], _std(sims[metric])) for metric in BINARY_METRICS}


# ============================================================================ multi-class
def estimate_multiclass(top_scores: np.ndarray, *, draws: int = DRAWS, seed: int = 0) -> dict[str, Estimate]:
    """Expected accuracy from the top class's probability of each row (the served label's)."""
    p = np.clip(np.asarray(top_scores, dtype=float), 0.0, 1.0)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return {"accuracy": Estimate(None, None, None, None)}
    return {"accuracy": _band(float(p.mean()), _std(_draw_labels(p, draws, seed).mean(axis=1)))}


# ============================================================================ regression (DLE)
@dataclass
class LossModel:
    """DLE: models of the absolute and squared error of the served value, fitted on a reference."""

    abs_model: Any
    sq_model: Any
    columns: list[str]
    reference_rows: int

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        Xc = X[self.columns]
        return (np.clip(self.abs_model.predict(Xc), 0.0, None), np.clip(self.sq_model.predict(Xc), 0.0, None))


def fit_loss_model(X, predicted: np.ndarray, actual: np.ndarray, *, seed: int = 0) -> LossModel:
    """Fit DLE's loss models on reference rows: inputs ``X`` (a frame of features; categoricals as
    pandas ``category``) plus the served value, targets ``|actual - predicted|`` and its square."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame = X.copy()
    frame["__predicted__"] = np.asarray(predicted, dtype=float)
    error = np.asarray(actual, dtype=float) - frame["__predicted__"].to_numpy()
    ok = np.isfinite(error)
    if ok.sum() < 20:
        raise ValueError(f"direct loss estimation needs at least 20 reference rows with realized errors, got {ok.sum()}")
    frame = frame.loc[ok]
    models = []
    for target in (np.abs(error[ok]), error[ok] ** 2):
        model = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=20,
                                              categorical_features="from_dtype", random_state=seed)
        models.append(model.fit(frame, target))
    return LossModel(models[0], models[1], list(frame.columns), int(ok.sum()))


def estimate_regression(loss_model: LossModel, X, predicted: np.ndarray) -> dict[str, Estimate]:
    """DLE estimates of MAE and RMSE of an interval from its inputs and served values."""
    if len(X) == 0:
        return {m: Estimate(None, None, None, None) for m in REGRESSION_METRICS}
    frame = X.copy()
    frame["__predicted__"] = np.asarray(predicted, dtype=float)
    abs_err, sq_err = loss_model.predict(frame)
    n = len(abs_err)
    mae, mse = float(abs_err.mean()), float(sq_err.mean())
    # the band: sampling error of the interval's mean loss (the spread of |e| around its modelled mean
    # is at least the spread of the modelled means; for |e| ~ half-normal, sd(|e|) = mae * 0.755)
    mae_std = max(float(abs_err.std(ddof=1)) if n > 1 else 0.0, 0.755 * mae) / math.sqrt(n)
    rmse = math.sqrt(mse)
    mse_std = max(float(sq_err.std(ddof=1)) if n > 1 else 0.0, math.sqrt(2) * mse) / math.sqrt(n)
    rmse_std = mse_std / (2 * rmse) if rmse > 0 else 0.0
    return {"mae": _band(mae, mae_std, 0.0, math.inf), "rmse": _band(rmse, rmse_std, 0.0, math.inf)}


# ============================================================================ summary
def estimated_metric(task: str, study_metric: str) -> str:
    """The estimated metric judged against the holdout: the study metric when it is estimated,
    else ROC AUC (binary), accuracy (multi-class) or MAE (regression)."""
    wanted = STUDY_TO_ESTIMATED.get(study_metric)
    available = {"binary_classification": BINARY_METRICS, "multiclass_classification": MULTICLASS_METRICS,
                 "regression": REGRESSION_METRICS}.get(task, MULTICLASS_METRICS)
    if wanted in available:
        return wanted
    return {"binary_classification": "roc_auc", "regression": "mae"}.get(task, "accuracy")


def estimated_drop(metric: str, estimate: dict[str, float | None], reference: float | None) -> float | None:
    """Relative drop beyond the band of ``estimate`` from the holdout ``reference``: the drop of the
    band's optimistic end (``high``, or ``low`` for losses), so it is > 0 only when the whole band is
    worse than the reference. None without an estimate or a non-zero reference."""
    if reference is None or not math.isfinite(reference) or reference == 0:
        return None
    if metric in LOWER_IS_BETTER:
        best = estimate.get("low")
        return None if best is None else float((best - reference) / abs(reference))
    best = estimate.get("high")
    return None if best is None else float((reference - best) / abs(reference))


def point_drop(metric: str, value: float | None, reference: float | None) -> float | None:
    """Relative drop of the point estimate from the holdout ``reference`` (positive = worse)."""
    if value is None or reference is None or not math.isfinite(reference) or reference == 0:
        return None
    worse = (value - reference) if metric in LOWER_IS_BETTER else (reference - value)
    return float(worse / abs(reference))


def holdout_reference(metric: str, holdout: dict[str, float | None]) -> float | None:
    """The version's holdout figure of an estimated metric (holdout metrics keyed by name; a
    loss may be logged as its negated scorer, ``neg_mean_absolute_error``)."""
    for key in (metric, {"mae": "neg_mean_absolute_error", "rmse": "neg_root_mean_squared_error"}.get(metric)):
        value = holdout.get(key) if key else None
        if value is not None and math.isfinite(value):
            return abs(float(value)) if key and key.startswith("neg_") else float(value)
    return None
