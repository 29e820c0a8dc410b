"""The evaluate stage's readable log lines (best trial, holdout metrics, champion comparison)."""

from __future__ import annotations

from airloop.training.evaluation import evaluation_lines, format_metrics, format_params

BEST = {"family": "hist_gradient_boosting", "params": {"learning_rate": 0.051234, "max_iter": 120},
        "value": 0.87123, "number": 5, "n_finished": 16}
METRICS = {"rows": 2800.0, "accuracy": 0.95, "roc_auc": 0.879, "pr_auc": None, "latency_p50_ms": 0.91,
           "latency_p95_ms": 1.4, "cv_best": 0.87123}


def test_params_and_metrics_read_as_text():
    assert format_params({"max_iter": 120, "learning_rate": 0.051234}) == "learning_rate=0.05123, max_iter=120"
    assert format_params({}) == "defaults"
    assert format_metrics(METRICS, "roc_auc") == "roc_auc 0.8790, accuracy 0.9500, pr_auc n/a"


def test_lines_without_a_champion():
    lines = evaluation_lines("roc_auc", BEST, METRICS, 9000, None, None, 0.002, "prod")
    assert lines == [
        "best trial: #5 of 16 finished, hist_gradient_boosting, CV roc_auc 0.8712",
        "best trial params: learning_rate=0.05123, max_iter=120",
        "candidate holdout (2800 rows; refit on 9000 rows): roc_auc 0.8790, accuracy 0.9500, pr_auc n/a",
        "candidate latency: p50 0.91 ms, p95 1.40 ms per single-record prediction",
        "champion: none yet; prod compares the candidate with its thresholds only",
    ]


def test_lines_compare_with_the_champion_on_the_same_holdout():
    champion = {"version": "3", "metrics": {"rows": 2800.0, "roc_auc": 0.878, "accuracy": 0.94}}
    lines = evaluation_lines("roc_auc", BEST, METRICS, 9000, champion, None, 0.002, "prod")
    assert lines[-2] == "champion v3 on the same holdout: roc_auc 0.8780, accuracy 0.9400"
    assert lines[-1] == ("candidate vs champion v3: roc_auc 0.8790 vs 0.8780, improvement +0.0010 "
                         "(misses min_improvement 0.002 of prod)")
    better = {"version": "3", "metrics": {"roc_auc": 0.85}}
    assert evaluation_lines("roc_auc", BEST, METRICS, 9000, better, None, 0.002, "prod")[-1].endswith(
        "improvement +0.0290 (meets min_improvement 0.002 of prod)")
    # an error metric: lower is better, the improvement is still positive when the candidate is better
    errors = evaluation_lines("rmse", BEST | {"value": -1.2}, {"rows": 10.0, "rmse": 1.0}, 50,
                              {"version": "2", "metrics": {"rmse": 1.5}}, None, None, "prod")
    assert errors[-1] == "candidate vs champion v2: rmse 1.0000 vs 1.5000, improvement +0.5000 (no margin required)"
    broken = evaluation_lines("roc_auc", BEST, METRICS, 9000, None, "ValueError: boom", 0.002, "prod")
    assert broken[-1] == "champion: could not score the same holdout (ValueError: boom); the prod gate lets the candidate pass on that"


def test_latency_is_the_models_compute_time_not_the_machines_wait(claims_config):
    """The gate's latency figure counts the CPU a prediction takes: time the process spends
    waiting (here a sleep, on a busy machine the scheduler's queue) is not the model's."""
    import time

    import numpy as np
    import pandas as pd

    from airloop.training.evaluation import predict_latency_ms

    class Waiting:
        def predict_proba(self, X):
            time.sleep(0.02)  # 20 ms of wall-clock, next to no CPU
            return np.full((len(X), 2), 0.5)

    class Working:
        def predict_proba(self, X):
            end = time.process_time() + 0.01  # 10 ms of CPU
            while time.process_time() < end:
                pass
            return np.full((len(X), 2), 0.5)

    frame = pd.DataFrame({c: [0] * 20 for c in [*claims_config.features, claims_config.target]})
    waiting = predict_latency_ms(claims_config, Waiting(), frame, n=20)
    working = predict_latency_ms(claims_config, Working(), frame, n=20)
    assert waiting["latency_p95_ms"] < 5
    assert 9.5 <= working["latency_p50_ms"] <= 30
