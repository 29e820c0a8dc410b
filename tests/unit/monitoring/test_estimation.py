"""Label-free performance estimates: CBPE for classification, DLE for regression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as m

from airloop.monitoring import estimation


def calibrated_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Probabilities of a fraud-like model: ~10 % positives, well separated."""
    return 1 / (1 + np.exp(-(rng.normal(-2.6, 1.6, n))))


def realized(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    pred = p >= threshold
    return {"roc_auc": m.roc_auc_score(y, p), "f1": m.f1_score(y, pred, zero_division=0),
            "precision": m.precision_score(y, pred, zero_division=0),
            "recall": m.recall_score(y, pred, zero_division=0), "accuracy": m.accuracy_score(y, pred)}


def test_binary_estimate_holds_the_realized_metric_within_its_band_on_stable_data():
    rng = np.random.default_rng(0)
    inside = {k: 0 for k in estimation.BINARY_METRICS}
    repeats = 200
    for i in range(repeats):
        p = calibrated_scores(rng, 1500)
        y = (rng.random(len(p)) < p).astype(int)  # labels drawn from the calibrated probabilities
        est = estimation.estimate_binary(p, 0.3, seed=i)
        for metric, value in realized(p, y, 0.3).items():
            inside[metric] += est[metric].low <= value <= est[metric].high
    coverage = {k: v / repeats for k, v in inside.items()}
    assert all(c >= 0.95 for c in coverage.values()), coverage


def test_binary_point_estimates_are_unbiased():
    rng = np.random.default_rng(1)
    p = calibrated_scores(rng, 20_000)
    y = (rng.random(len(p)) < p).astype(int)
    est = estimation.estimate_binary(p, 0.3)
    for metric, value in realized(p, y, 0.3).items():
        assert est[metric].value == pytest.approx(value, abs=3 * est[metric].std + 1e-3), metric


def test_band_shrinks_with_rows_and_is_seeded():
    rng = np.random.default_rng(2)
    p = calibrated_scores(rng, 16_000)
    widths = [estimation.estimate_binary(p[:n], 0.3)["roc_auc"] for n in (250, 1000, 4000, 16_000)]
    spans = [e.high - e.low for e in widths]
    assert spans == sorted(spans, reverse=True) and spans[-1] < spans[0] / 4
    assert estimation.estimate_binary(p[:500], 0.3) == estimation.estimate_binary(p[:500], 0.3)


def test_expected_auc_matches_a_sampled_mean_and_handles_degenerate_scores():
    rng = np.random.default_rng(3)
    p = calibrated_scores(rng, 3000)
    draws = [m.roc_auc_score((rng.random(len(p)) < p).astype(int), p) for _ in range(300)]
    assert estimation.expected_roc_auc(p) == pytest.approx(np.mean(draws), abs=0.005)
    assert np.isnan(estimation.expected_roc_auc(np.zeros(10)))
    assert estimation.estimate_binary(np.array([]), 0.5)["roc_auc"].value is None


def test_multiclass_expected_accuracy_is_the_mean_top_probability():
    rng = np.random.default_rng(4)
    top = rng.uniform(0.3, 1.0, 5000)
    correct = rng.random(len(top)) < top
    est = estimation.estimate_multiclass(top)["accuracy"]
    assert est.value == pytest.approx(top.mean()) and est.low <= correct.mean() <= est.high


def test_direct_loss_estimation_tracks_heteroscedastic_errors():
    rng = np.random.default_rng(5)

    def frame(n, shift=0.0):
        x = rng.uniform(0, 10, n) + shift
        region = rng.choice(["a", "b"], n)
        noise_sd = np.where(region == "a", 0.5, 3.0) * (1 + x / 10)
        y = 2 * x + rng.normal(0, noise_sd)
        X = pd.DataFrame({"x": x, "region": pd.Categorical(region, categories=["a", "b"])})
        return X, 2 * x, y

    X_ref, pred_ref, y_ref = frame(4000)
    loss = estimation.fit_loss_model(X_ref, pred_ref, y_ref)
    # the analysis period has more of the noisy region: the estimated MAE must rise with it
    X_cur, pred_cur, y_cur = frame(3000)
    noisy = X_cur["region"] == "b"
    X_cur, pred_cur, y_cur = X_cur[noisy].reset_index(drop=True), pred_cur[noisy.to_numpy()], y_cur[noisy.to_numpy()]
    est = estimation.estimate_regression(loss, X_cur, pred_cur)
    mae, rmse = np.abs(y_cur - pred_cur).mean(), np.sqrt(((y_cur - pred_cur) ** 2).mean())
    assert est["mae"].value == pytest.approx(mae, rel=0.08) and est["mae"].low <= mae <= est["mae"].high
    assert est["rmse"].value == pytest.approx(rmse, rel=0.08)
    assert est["mae"].value > np.abs(y_ref - pred_ref).mean() * 1.3
    with pytest.raises(ValueError, match="at least 20"):
        estimation.fit_loss_model(X_ref.head(5), pred_ref[:5], y_ref[:5])


def test_drop_beyond_the_band_and_metric_choice():
    est = {"value": 0.80, "low": 0.76, "high": 0.84}
    assert estimation.estimated_drop("roc_auc", est, 0.85) == pytest.approx((0.85 - 0.84) / 0.85)
    assert estimation.estimated_drop("roc_auc", est, 0.82) < 0  # the band reaches the holdout: no drop
    assert estimation.estimated_drop("mae", {"value": 2.0, "low": 1.8, "high": 2.2}, 1.5) == pytest.approx(0.2)
    assert estimation.estimated_drop("roc_auc", est, None) is None
    assert estimation.estimated_metric("binary_classification", "roc_auc") == "roc_auc"
    assert estimation.estimated_metric("binary_classification", "neg_log_loss") == "roc_auc"
    assert estimation.estimated_metric("multiclass_classification", "f1_macro") == "accuracy"
    assert estimation.estimated_metric("regression", "neg_root_mean_squared_error") == "rmse"
    assert estimation.holdout_reference("mae", {"neg_mean_absolute_error": -1.5}) == 1.5
