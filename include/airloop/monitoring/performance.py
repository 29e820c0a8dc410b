"""Quality on delayed labels and operational figures of one interval."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from airloop.core.pipeline import PipelineConfig
from airloop.monitoring.reference import SCORE_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


from airloop.core.metrics import finite_or_none, higher_is_better

LabelPolicy = Literal["arrived", "served"]


# ============================================================================ performance
def _to_class(value: Any, classes: dict[str, Any]) -> Any:
    """A served prediction or label (decoded JSON) as one of the configured classes, else None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return classes.get(str(value))


def performance(config: PipelineConfig, labelled: pd.DataFrame) -> dict:
    """Quality of the served predictions on labelled rows (``prediction`` and ``label`` columns
    hold decoded JSON values, :data:`SCORE_COLUMN` the served score).

    Classification: accuracy, f1_macro, balanced_accuracy; binary adds f1/precision/recall of the
    positive class (``classes[-1]``) — decision metrics of the served label, which serving logs as
    ``score >= the version's threshold`` (:class:`airloop.serving.runtime.Predictor`), so they are
    at the served threshold — and, from the score, roc_auc, pr_auc, log_loss, brier (None
    when only one class is present). Regression: rmse, mae, r2 from the served value. The study
    metric (``training.metric``, an sklearn scorer name) is added when computable, else None.
    ``rows`` counts the rows used (labels or predictions outside the classes are left out and
    counted in ``unusable_rows``).
    """
    import numpy as np
    import pandas as pd
    from sklearn import metrics as m

    out: dict[str, Any] = {}
    if config.task == "regression":
        y = pd.to_numeric(labelled["label"], errors="coerce")
        pred = pd.to_numeric(labelled[SCORE_COLUMN], errors="coerce")
        ok = y.notna() & pred.notna()
        y, pred = y[ok].to_numpy(float), pred[ok].to_numpy(float)
        out["rows"], out["unusable_rows"] = int(ok.sum()), int((~ok).sum())
        if len(y):
            mse = float(m.mean_squared_error(y, pred))
            out |= {"rmse": math.sqrt(mse), "mae": float(m.mean_absolute_error(y, pred)),
                    "r2": float(m.r2_score(y, pred)) if len(y) > 1 else None}
            scorers = {"neg_root_mean_squared_error": -out["rmse"], "neg_mean_absolute_error": -out["mae"],
                       "neg_mean_squared_error": -mse, "r2": out["r2"]}
        else:
            scorers = {}
    else:
        classes = {str(c): c for c in config.classes or []}
        y = labelled["label"].map(lambda v: _to_class(v, classes))
        pred = labelled["prediction"].map(lambda v: _to_class(v, classes))
        ok = y.notna() & pred.notna()
        y, pred = list(y[ok]), list(pred[ok])
        out["rows"], out["unusable_rows"] = int(ok.sum()), int((~ok).sum())
        scorers = {}
        if y:
            labels = list(config.classes or [])
            out |= {"accuracy": float(m.accuracy_score(y, pred)),
                    "f1_macro": float(m.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
                    "balanced_accuracy": float(m.balanced_accuracy_score(y, pred))}
            scorers |= {"accuracy": out["accuracy"], "f1_macro": out["f1_macro"],
                        "balanced_accuracy": out["balanced_accuracy"]}
        if y and config.task == "binary_classification":
            positive = config.classes[-1]
            out |= {"f1": float(m.f1_score(y, pred, pos_label=positive, zero_division=0)),
                    "precision": float(m.precision_score(y, pred, pos_label=positive, zero_division=0)),
                    "recall": float(m.recall_score(y, pred, pos_label=positive, zero_division=0)),
                    "roc_auc": None, "pr_auc": None, "log_loss": None, "brier": None}
            score = pd.to_numeric(labelled.loc[ok, SCORE_COLUMN], errors="coerce")
            has = score.notna().to_numpy()
            y_pos = np.array([v == positive for v in y])[has].astype(int)
            s = score.to_numpy(float)[has]
            if len(s) and len(np.unique(y_pos)) == 2:
                out |= {"roc_auc": float(m.roc_auc_score(y_pos, s)),
                        "pr_auc": float(m.average_precision_score(y_pos, s)),
                        "log_loss": float(m.log_loss(y_pos, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])),
                        "brier": float(m.brier_score_loss(y_pos, s))}
            scorers |= {"f1": out["f1"], "precision": out["precision"], "recall": out["recall"],
                        "roc_auc": out["roc_auc"], "average_precision": out["pr_auc"],
                        "neg_log_loss": None if out["log_loss"] is None else -out["log_loss"],
                        "neg_brier_score": None if out["brier"] is None else -out["brier"]}
    metric = config.training.metric
    out[metric] = out.get(metric, scorers.get(metric))
    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in out.items()}


def performance_drop(metric: str, current: float, reference: float) -> float:
    """Relative drop of ``metric`` from the version's holdout ``reference`` to ``current``:
    positive = worse, for higher-is-better metrics ``(reference - current) / |reference|`` and for
    :func:`airloop.core.metrics.higher_is_better` false ``(current - reference) / |reference|``.
    A zero reference gives 0 when unchanged, else +/-inf."""

    worse_by = (reference - current) if higher_is_better(metric) else (current - reference)
    if reference == 0:
        return 0.0 if worse_by == 0 else math.copysign(math.inf, worse_by)
    return float(worse_by / abs(reference))


# ============================================================================ operations
def operations(pred_rows: pd.DataFrame, baseline_counts: list[int]) -> dict:
    """Traffic health of an interval: ``volume`` (prediction rows, model errors included),
    ``volume_ratio`` (volume / mean of ``baseline_counts``; None without a non-zero baseline),
    ``error_rate`` (share of rows with status ``error``, the model's failures; None without rows),
    ``latency_p50_ms`` / ``latency_p95_ms`` (over rows with a latency; None without) and
    ``client_errors`` (rows of requests that failed because of their own records, status
    ``client_error``: counted apart, in none of the figures above)."""
    import numpy as np
    import pandas as pd

    from airloop.core.names import CLIENT_ERROR, MODEL_ERROR

    client = pred_rows["status"] == CLIENT_ERROR if len(pred_rows) else pd.Series(dtype=bool)
    client_errors = int(client.sum()) if len(pred_rows) else 0
    if client_errors:
        pred_rows = pred_rows[~client]
    volume = int(len(pred_rows))
    baseline = float(np.mean(baseline_counts)) if len(baseline_counts) else 0.0
    latency = pd.to_numeric(pred_rows["latency_ms"], errors="coerce").dropna() if volume else pd.Series(dtype=float)
    return {
        "volume": volume,
        "baseline_mean": baseline if len(baseline_counts) else None,
        "volume_ratio": volume / baseline if baseline > 0 else None,
        "error_rate": float((pred_rows["status"] == MODEL_ERROR).mean()) if volume else None,
        "latency_p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "latency_p95_ms": float(np.percentile(latency, 95)) if len(latency) else None,
        "client_errors": client_errors,
    }
