"""The one definition of "the score of a prediction".

One number per prediction: the positive class's probability (``classes[-1]`` of the pipeline file)
for binary tasks, the top class probability for multi-class, the predicted value for regression.
Serving logs it with every prediction (:func:`score_function`), the monitoring reference stores
it for the training window (:func:`model_scores`) and prediction drift compares the two, so both
use :func:`positive_class` and the same rule, here and nowhere else
(``tests/unit/models/test_scoring.py`` checks that the served score equals the reference score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from airloop.core.pipeline import PipelineConfig


def positive_class(config: PipelineConfig) -> Any:
    """The positive class of a binary pipeline: the last of its ``classes``."""
    if not config.classes:
        raise ValueError(f"{config.name}: a binary pipeline needs `classes` (the positive one last)")
    return config.classes[-1]


def scores_from_probabilities(config: PipelineConfig, proba: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """The score of each row of a ``predict_proba`` matrix whose columns are ``classes``."""
    proba = np.asarray(proba, dtype="float64")
    if config.task == "binary_classification":
        wanted = str(positive_class(config))
        return proba[:, [str(c) for c in classes].index(wanted)]
    return proba.max(axis=1)


def model_scores(config: PipelineConfig, model: Any, X: Any) -> np.ndarray:
    """The score of each row of ``X`` under a fitted model (what the reference stores)."""
    if config.task == "regression":
        return np.asarray(model.predict(X), dtype="float64")
    return scores_from_probabilities(config, model.predict_proba(X), model.classes_)


def score_function(config: PipelineConfig) -> Callable[[dict[str, Any]], float | None]:
    """How one served prediction item (``{"prediction": ..., "probabilities": {class: p}}``)
    becomes its logged ``score``; ``None`` when the item has no usable number."""
    if config.task == "regression":
        def regression(item: dict[str, Any]) -> float | None:
            value = item.get("prediction")
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return regression

    if config.task == "binary_classification":
        positive = str(positive_class(config))  # served probabilities are keyed by str(class)

        def binary(item: dict[str, Any]) -> float | None:
            return (item.get("probabilities") or {}).get(positive)
        return binary

    def multiclass(item: dict[str, Any]) -> float | None:
        probabilities = item.get("probabilities")
        return max(probabilities.values()) if probabilities else None
    return multiclass


# --------------------------------------------------------------------------------------------
# Decisions: the label a score becomes
# --------------------------------------------------------------------------------------------

#: Key of the decision rule in the model artefact's ``MLmodel`` metadata (written by
#: :func:`airloop.models.artifact.log_sklearn_model`, read by
#: :func:`airloop.models.artifact.load_model_files`): ``{"threshold", "objective", "calibration",
#: "positive_class", "class_costs"}``.
DECISION_METADATA_KEY = "airloop_decision"

#: The threshold of a binary version trained before thresholds were tuned: the argmax at 0.5.
DEFAULT_THRESHOLD = 0.5


def decide(config: PipelineConfig, scores: Any, threshold: float | None,
           class_costs: dict[str, float] | None = None) -> np.ndarray:
    """The labels of ``scores``: binary, the positive class where ``score >= threshold``
    (``None``: :data:`DEFAULT_THRESHOLD`), else the other class; multi-class, ``scores`` is the
    probability matrix with columns in ``config.classes`` order and the label is the class of the
    largest ``p * cost`` (``class_costs``: the cost of missing each class, default
    ``training.decision.class_costs``, else 1 each: the argmax)."""
    if config.task == "binary_classification":
        positive, negative = positive_class(config), config.classes[0]
        t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        hit = np.asarray(scores, dtype="float64") >= t
        out = np.empty(hit.shape, dtype=object)
        out[hit], out[~hit] = positive, negative
        return out
    if config.task == "regression":
        raise ValueError(f"{config.name}: a regression pipeline has no decision (its score is the prediction)")
    proba = np.asarray(scores, dtype="float64")
    costs = class_costs if class_costs is not None else (config.training.decision.class_costs or {})
    weights = np.array([float(costs.get(str(c), 1.0)) for c in config.classes], dtype="float64")
    return np.asarray(config.classes, dtype=object)[np.argmax(proba * weights, axis=1)]
