"""One definition of "which way is better" and "is this a quality metric" (airloop.core.metrics)."""

from __future__ import annotations

import pytest

from airloop.core.metrics import better_of, higher_is_better, is_quality_metric


@pytest.mark.parametrize("name", ["rows", "train_rows", "labelled_rows", "cv_best", "latency_p50_ms", "latency_p95_ms"])
def test_counts_the_cv_score_and_latency_are_not_quality_metrics(name):
    assert not is_quality_metric(name)
    assert better_of(name, 1.0, 2.0) is None


@pytest.mark.parametrize(("name", "a", "b", "better"), [
    ("roc_auc", 0.80, 0.85, "b"), ("f1_macro", 0.7, 0.6, "a"), ("neg_log_loss", -0.5, -0.4, "b"),
    ("log_loss", 0.40, 0.45, "a"), ("rmse", 2.0, 1.5, "b"), ("mape", 0.1, 0.2, "a"), ("brier", 0.1, 0.1, None),
    ("roc_auc", None, 0.8, None), ("roc_auc", float("nan"), 0.8, None),
])
def test_better_of_follows_the_metrics_orientation(name, a, b, better):
    assert is_quality_metric(name)
    assert better_of(name, a, b) == better


def test_latency_is_lower_is_better_without_being_a_quality_rank():
    assert not higher_is_better("latency_p95_ms") and not is_quality_metric("latency_p95_ms")
