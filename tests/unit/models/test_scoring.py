"""The one definition of "the score of a prediction": what serving logs for each prediction equals
what the monitoring reference stores for the same rows, for every task type (prediction drift
compares the two, so they must never drift apart)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from airloop.core.pipeline import load_pipeline_config
from airloop.models.scoring import model_scores, positive_class, score_function, scores_from_probabilities
from airloop.serving.runtime import Predictor


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                         "colour": rng.choice(["red", "green", "blue"], size=n)})


def _pipeline(final) -> Pipeline:
    pre = ColumnTransformer([("num", StandardScaler(), ["x1", "x2"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"])])
    return Pipeline([("pre", pre), ("model", final)])


def _config(task: str, classes):
    base = load_pipeline_config("claims_fraud")
    return base.model_copy(update={"task": task, "classes": classes})


def _cases():
    X = _frame()
    yield "binary, positive class sorted first", _config("binary_classification", ["yes", "no"]), \
        _pipeline(LogisticRegression()).fit(X, np.where(X.x1 + X.x2 > 0, "no", "yes")), X
    yield "binary, integer classes", _config("binary_classification", [0, 1]), \
        _pipeline(RandomForestClassifier(n_estimators=10, random_state=0)).fit(X, (X.x1 > 0.3).astype(int)), X
    yield "multi-class", _config("multiclass_classification", ["a", "b", "c"]), \
        _pipeline(LogisticRegression()).fit(X, np.select([X.x1 < -0.5, X.x1 < 0.5], ["a", "b"], "c")), X
    yield "regression", _config("regression", None), \
        _pipeline(HistGradientBoostingRegressor(max_iter=20)).fit(X, 3 * X.x1 - X.x2), X


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_served_score_equals_the_reference_score(case):
    _, config, model, X = case
    reference = model_scores(config, model, X)
    served = [score_function(config)(item) for item in Predictor(model).predict(X)]
    assert len(served) == len(reference)
    np.testing.assert_allclose(np.asarray(served, dtype="float64"), reference, rtol=0, atol=1e-12)


def test_binary_score_is_the_positive_class_probability():
    config = _config("binary_classification", ["legit", "fraud"])
    proba = np.array([[0.2, 0.8], [0.9, 0.1]])  # columns in sklearn's sorted order: fraud, legit
    assert positive_class(config) == "fraud"
    np.testing.assert_allclose(scores_from_probabilities(config, proba, ["fraud", "legit"]), [0.2, 0.9])
    item = {"prediction": "fraud", "probabilities": {"fraud": 0.2, "legit": 0.8}}
    assert score_function(config)(item) == 0.2


def test_items_without_a_number_score_none():
    assert score_function(_config("regression", None))({"prediction": True}) is None
    assert score_function(_config("multiclass_classification", ["a", "b"]))({"prediction": "a"}) is None
