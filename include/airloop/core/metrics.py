"""Metric orientation and finite numbers: the one answer to "which way is better" and "is this a number".

Metric names are airloop's holdout/monitoring names (``roc_auc``, ``f1_macro``, ``rmse``, ...), the
A/B success metrics and the latency figures (``latency_p95_ms``). Errors, losses and latencies are
better when lower; scikit-learn's ``neg_*`` scorers and every other score are better when higher.
"""

from __future__ import annotations

import math
from typing import Any

# --------------------------------------------------------------------------------------------
# Scorer names (``training.metric``), by task
# --------------------------------------------------------------------------------------------

#: ``training.metric`` is a scikit-learn scorer name (``sklearn.metrics.get_scorer``); these are
#: the ones airloop supports, by the task they fit (tests check each is a real scorer).
REGRESSION_METRICS = frozenset({
    "r2", "explained_variance", "neg_root_mean_squared_error", "neg_mean_squared_error",
    "neg_mean_absolute_error", "neg_median_absolute_error", "neg_mean_absolute_percentage_error",
    "neg_max_error", "neg_root_mean_squared_log_error", "neg_mean_squared_log_error",
    "neg_mean_poisson_deviance", "neg_mean_gamma_deviance", "d2_absolute_error_score",
})  # fmt: skip
#: Classification scorers that work for binary and multi-class targets with any labels.
CLASSIFICATION_METRICS = frozenset({
    "accuracy", "balanced_accuracy", "matthews_corrcoef", "neg_log_loss",
    "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "precision_micro", "precision_weighted",
    "recall_macro", "recall_micro", "recall_weighted", "jaccard_macro", "jaccard_micro", "jaccard_weighted",
    "roc_auc_ovr", "roc_auc_ovo", "roc_auc_ovr_weighted", "roc_auc_ovo_weighted",
})  # fmt: skip
#: Binary-only scorers (``roc_auc`` ranks the second class's probability; works with any labels).
BINARY_METRICS = frozenset({"roc_auc"})
#: Binary-only scorers of the label ``1`` (scikit-learn's default ``pos_label``): the classes must
#: be ``[0, 1]`` (or ``[false, true]``) so that the positive class, listed last, is that label.
POSITIVE_LABEL_METRICS = frozenset({"f1", "precision", "recall", "jaccard", "average_precision", "neg_brier_score"})
#: Every supported ``training.metric``.
STUDY_METRICS = REGRESSION_METRICS | CLASSIFICATION_METRICS | BINARY_METRICS | POSITIVE_LABEL_METRICS
#: Common names that are not scorer names -> the scorer meant (sklearn's are higher-is-better).
METRIC_ALIASES = {
    "rmse": "neg_root_mean_squared_error", "mse": "neg_mean_squared_error", "mae": "neg_mean_absolute_error",
    "mape": "neg_mean_absolute_percentage_error", "median_absolute_error": "neg_median_absolute_error",
    "auc": "roc_auc", "roc_auc_score": "roc_auc", "pr_auc": "average_precision", "log_loss": "neg_log_loss",
    "logloss": "neg_log_loss", "brier": "neg_brier_score", "f1_score": "f1", "mcc": "matthews_corrcoef",
}  # fmt: skip


def task_kind(task: str) -> str:
    """``classification`` or ``regression`` (the key of :data:`ESTIMATORS`)."""
    return "regression" if task == "regression" else "classification"


def metrics_for_task(task: str, classes: list[Any] | None = None) -> frozenset[str]:
    """The ``training.metric`` names that fit ``task`` (and, for binary tasks, its classes)."""
    if task == "regression":
        return REGRESSION_METRICS
    if task == "multiclass_classification":
        return CLASSIFICATION_METRICS
    positive_one = bool(classes) and classes[-1] in (1, True) and classes[0] in (0, False)
    return CLASSIFICATION_METRICS | BINARY_METRICS | (POSITIVE_LABEL_METRICS if positive_one or not classes else frozenset())


#: Metrics where a smaller value is better (gates, comparisons, drops and A/B tests read it).
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "mape", "median_absolute_error", "max_error", "log_loss",
                             "brier", "ece", "expected_cost", "error_rate"})
#: Prefixes of metric names that are better when lower (``latency_p50_ms``, ``latency_p95_ms``, ...).
LOWER_IS_BETTER_PREFIXES = ("latency",)

#: Figures logged beside the holdout metrics that do not rank model quality: counts (``rows``,
#: ``train_rows``, ``labelled_rows``), the CV score of the study (not the holdout) and latencies
#: (lower is better, but a budget for the gates, not a quality rank).
NOT_QUALITY = frozenset({"rows", "train_rows", "labelled_rows", "cv_best", "positive_predictions"})
#: Prefixes of figures that are not quality metrics (``latency_p50_ms``, ``latency_p95_ms``, ...).
NOT_QUALITY_PREFIXES = ("latency",)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better."""
    return not (metric in LOWER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES))


def is_quality_metric(name: str) -> bool:
    """Whether ``name`` ranks model quality (false for counts, the CV score and latencies:
    :data:`NOT_QUALITY`); comparisons and the training log rank only these."""
    return name not in NOT_QUALITY and not name.startswith(NOT_QUALITY_PREFIXES) and not name.endswith("_rows")


def better_of(metric: str, a: float | None, b: float | None) -> str | None:
    """``"a"`` or ``"b"``: the better of two values of a quality metric, by its orientation;
    ``None`` for a tie, a missing or non-finite value, or a figure that is not a quality metric."""
    if not is_quality_metric(metric) or not is_finite_number(a) or not is_finite_number(b) or a == b:
        return None
    return "b" if (b > a) == higher_is_better(metric) else "a"


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN, infinite or not a number (JSON- and SQL-safe)."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is finite (not a string, None, NaN or infinity)."""
    return isinstance(value, (int, float)) and math.isfinite(value)
