"""A calibrated model (``CalibratedClassifierCV`` inside the demo's Pipeline) survives a skops
round trip under the trusted-type rules, for each calibration method and estimator family; a
calibrated model wrapping a class outside the trusted packages is still refused."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import skops.io

from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day
from airloop.models.trust import UntrustedModelError, load_skops_file, skops_trusted_types
from airloop.training.decision import fit_decided
from airloop.training.search import split_holdout


@pytest.fixture(scope="module")
def window() -> pd.DataFrame:
    days = [generate_day(date(2026, 1, 1) + timedelta(days=d)) for d in range(6)]
    return pd.concat(days, ignore_index=True).sort_values("claim_ts").reset_index(drop=True)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_calibrated_models_round_trip_through_skops(claims_config, window, tmp_path, method, family):
    config = claims_config.model_copy(update={"training": claims_config.training.model_copy(
        update={"calibration": method, "holdout_days": 1})})
    train, holdout = split_holdout(config, window, "2026-01-07")
    params = {"n_estimators": 20} if family == "random_forest" else {"max_iter": 30} if family != "logistic_regression" else {}
    model = fit_decided(config, train, {"family": family, "params": params}).model
    trusted = skops_trusted_types(model)  # what log_sklearn_model passes to MLflow
    assert "sklearn.calibration._CalibratedClassifier" in trusted
    assert all(name.split(".")[0] in ("sklearn", "numpy") for name in trusted)
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    back = load_skops_file(str(path))
    X, _ = features_and_target(config, holdout)
    assert np.array_equal(back.predict_proba(X), model.predict_proba(X))


class Outside:  # not a scikit-learn / numpy class
    pass


def test_a_calibrated_model_with_a_foreign_part_is_refused(claims_config, window, tmp_path):
    config = claims_config.model_copy(update={"training": claims_config.training.model_copy(
        update={"calibration": "sigmoid", "holdout_days": 1})})
    train, _ = split_holdout(config, window, "2026-01-07")
    model = fit_decided(config, train, {"family": "logistic_regression", "params": {}}).model
    model.named_steps["model"].calibrated_classifiers_[0].extra = Outside()
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    with pytest.raises(UntrustedModelError, match="Outside"):
        load_skops_file(str(path))
