"""A loaded model version ready to predict, and the active A/B tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from airloop.core import names
from airloop.experiments import definition, routing
from airloop.models.artifact import _example_records
from airloop.models.schema import RecordSchema, RecordValidationError, ValidatedRecords
from airloop.models.trust import ModelLoadError

#: The registry alias served by default.
DEFAULT_ALIAS = names.CHAMPION


#: The variant recorded with every prediction outside an A/B test (and of the champion in one).
DEFAULT_VARIANT = names.CHAMPION


# --------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------


class NonFiniteOutput(ValueError):
    """The model returned NaN or an infinity for some record (never sent as JSON: the request
    fails as the model's error)."""


def _finite(values: np.ndarray) -> np.ndarray:
    """``values`` (a model's output), or :class:`NonFiniteOutput` when a float in it is not finite."""
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise NonFiniteOutput("the model returned a value that is not a finite number")
    return values


class Predictor:
    """Runs a fitted sklearn estimator or Pipeline; transforms the input once for label + proba.

    A binary classifier with a decision ``threshold`` (the version's ``MLmodel`` metadata,
    :class:`airloop.models.artifact.ModelFiles`) labels a record with its positive class when
    that class's probability is ``>= threshold`` (:func:`airloop.models.scoring.decide`'s rule),
    and every prediction carries the ``threshold``; without one, the estimator's own label.
    """

    def __init__(self, estimator: Any, decision: dict[str, Any] | None = None) -> None:
        """Split a Pipeline into its transform steps and final estimator (shared objects)."""
        from sklearn.pipeline import Pipeline

        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"the model ({type(estimator).__name__}) has no predict()")
        self.estimator = estimator
        self._pre: Any = None
        self._final: Any = estimator
        if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
            final = estimator.steps[-1][1]
            if final not in (None, "passthrough") and hasattr(final, "predict"):
                self._pre, self._final = estimator[:-1], final
        self.is_classifier = hasattr(self._final, "predict_proba") and hasattr(self._final, "classes_")
        self.class_keys: list[str] = [str(c) for c in self._final.classes_] if self.is_classifier else []
        self.decision: dict[str, Any] = dict(decision or {})
        self.threshold: float | None = None
        self._positive: int | None = None
        threshold, positive = self.decision.get("threshold"), self.decision.get("positive_class")
        if threshold is not None:
            if len(self.class_keys) != 2 or str(positive) not in self.class_keys:
                raise ModelLoadError(f"decision threshold {threshold} needs a binary classifier with positive class "
                                     f"{positive!r} (classes {self.class_keys})")
            if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
                raise ModelLoadError(f"decision threshold must be a finite number, not {threshold!r}")
            self.threshold, self._positive = float(threshold), self.class_keys.index(str(positive))

    def predict(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """``[{"prediction": ..., "probabilities": {class: p}}]`` (probabilities for classifiers;
        ``threshold`` too when the version has one); :class:`NonFiniteOutput` when a predicted
        value or probability is NaN or infinite."""
        features = self._pre.transform(frame) if self._pre is not None else frame
        if not self.is_classifier:
            return [{"prediction": label} for label in _finite(np.asarray(self._final.predict(features))).tolist()]
        keys = self.class_keys
        proba_array = _finite(np.asarray(self._final.predict_proba(features)))
        proba = proba_array.tolist()
        if self.threshold is None:
            labels = np.asarray(self._final.predict(features)).tolist()
            return [{"prediction": label, "probabilities": dict(zip(keys, row, strict=True))}
                    for label, row in zip(labels, proba, strict=True)]
        classes = np.asarray(self._final.classes_).tolist()
        positive, negative, t = classes[self._positive], classes[1 - self._positive], self.threshold
        return [{"prediction": positive if p >= t else negative, "probabilities": dict(zip(keys, row, strict=True)),
                 "threshold": t} for p, row in zip(proba_array[:, self._positive], proba, strict=True)]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One registered model version loaded in memory, with its request schema."""

    name: str
    version: str
    alias: str | None
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    loaded_at: datetime
    metrics: dict[str, float]
    tags: dict[str, str]
    schema: RecordSchema
    predictor: Predictor
    input_example: pd.DataFrame = field(repr=False)
    #: Recorded with every logged prediction: champion, or challenger / shadow in a test.
    variant: str = DEFAULT_VARIANT

    def ref(self) -> dict[str, Any]:
        """``{"name", "version", "alias"}`` as returned with every prediction."""
        return {"name": self.name, "version": self.version, "alias": self.alias}

    def describe(self) -> dict[str, Any]:
        """Everything ``GET /model`` reports."""
        return {
            **self.ref(),
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "source": self.source,
            "loaded_at": self.loaded_at.isoformat(),
            "metrics": self.metrics,
            "tags": self.tags,
            "task": "classification" if self.predictor.is_classifier else "regression",
            "classes": self.predictor.class_keys or None,
            "decision": self.predictor.decision or None,
            "inputs": self.schema.describe(),
        }

    def predict_records(self, records: list[Any]) -> list[dict[str, Any]]:
        """Validate ``records`` and predict them (the whole request path, minus HTTP)."""
        return self.predict_validated(records)[1]

    def predict_validated(self, records: list[Any]) -> tuple[ValidatedRecords, list[dict[str, Any]]]:
        """Like :meth:`predict_records`, also returning the validated rows."""
        rows = self.schema.validate(records)
        return rows, self.predictor.predict(self.schema.to_frame(rows))


def smoke_test(model: ServedModel) -> None:
    """Predict the model's stored input example through the request path; raise on any problem."""
    records = _example_records(model.input_example)
    try:
        predictions = model.predict_records(records)
    except RecordValidationError as err:
        raise ModelLoadError(f"smoke test: the input example does not match the signature: {err.errors[:3]}") from None
    except Exception as err:
        raise ModelLoadError(f"smoke test: predicting the input example failed: {type(err).__name__}: {err}") from err
    if len(predictions) != len(records):
        raise ModelLoadError(f"smoke test: {len(predictions)} predictions for {len(records)} records")
    for item in predictions:
        values = list(item.get("probabilities", {}).values())
        if isinstance(item["prediction"], float):
            values.append(item["prediction"])
        if not all(math.isfinite(v) for v in values):
            raise ModelLoadError(f"smoke test: non-finite output {item}")


@dataclass(frozen=True, slots=True)
class ActiveTest:
    """A running A/B or shadow test as serving applies it: the definition and the loaded
    challenger (its ``variant`` is ``challenger`` in A/B mode, ``shadow`` in shadow mode)."""

    test: definition.ABTest
    challenger: ServedModel

    def describe(self) -> dict[str, Any]:
        """The definition plus the loaded challenger's reference."""
        return {**self.test.describe(), "challenger_model": self.challenger.ref()}

    def route(self, records: Sequence[Any], request_ids: Sequence[str], header_key: str | None) -> list[str]:
        """The variant of each record (``champion`` / ``challenger``), sticky by request key."""
        test = self.test
        keys = routing.request_keys(test.key_field, records, request_ids, header_key)
        return [routing.assign_variant(key, test.test_id, test.traffic_pct) for key in keys]
