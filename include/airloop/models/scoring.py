"""The one definition of 'the score of a prediction', used by serving, reference and drift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airloop.core.pipeline import PipelineConfig


def score_function(config: PipelineConfig) -> Callable[[dict[str, Any]], float | None]:
    """How one prediction becomes the logged ``score``: the positive class's probability
    (``classes[-1]``) for binary tasks, the top probability for multi-class, the value for
    regression."""
    if config.task == "regression":
        def regression(item: dict[str, Any]) -> float | None:
            value = item.get("prediction")
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return regression
    if config.task == "binary_classification":
        positive = str(config.classes[-1]) if config.classes else None

        def binary(item: dict[str, Any]) -> float | None:
            return (item.get("probabilities") or {}).get(positive)
        return binary

    def multiclass(item: dict[str, Any]) -> float | None:
        probabilities = item.get("probabilities")
        return max(probabilities.values()) if probabilities else None
    return multiclass


def model_scores(config: PipelineConfig, model, X):
    """One number per row: positive-class probability (binary), max-class probability
    (multi-class) or the predicted value (regression)."""
    if config.task == "regression":
        return model.predict(X)
    proba = model.predict_proba(X)
    if config.task == "binary_classification":
        return proba[:, list(model.classes_).index(config.classes[-1])]
    return proba.max(axis=1)
