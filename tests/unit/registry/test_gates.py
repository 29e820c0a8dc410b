"""Promotion gates: thresholds, latency, beats-the-champion, force."""

from __future__ import annotations

from functools import partial

from airloop.registry.gates import evaluate_gates as _evaluate_gates

GOOD = {"roc_auc": 0.82, "latency_p95_ms": 5.0}
# enough training rows for every environment of claims_fraud.yaml (minimum data has its own test)
evaluate_gates = partial(_evaluate_gates, train_rows=50_000)


def test_first_model_passes_when_above_thresholds(claims_config):
    decision = evaluate_gates(claims_config, GOOD, None)
    assert decision.promote and not decision.forced
    assert "no champion yet" in decision.reason


def test_threshold_and_latency_failures_are_reasons(claims_config):
    decision = evaluate_gates(claims_config, {"roc_auc": 0.6, "latency_p95_ms": 500.0}, None)
    assert not decision.promote
    assert "threshold:roc_auc" in decision.reason and "latency" in decision.reason


def test_must_beat_champion_by_margin(claims_config):
    margin = claims_config.promotion.min_improvement
    assert not evaluate_gates(claims_config, GOOD, {"roc_auc": 0.82}).promote
    assert not evaluate_gates(claims_config, GOOD, {"roc_auc": 0.82 - margin / 2}).promote
    assert evaluate_gates(claims_config, GOOD, {"roc_auc": 0.82 - 2 * margin}).promote


def test_broken_champion_does_not_block(claims_config):
    decision = evaluate_gates(claims_config, GOOD, None, champion_error="KeyError: 'new_column'")
    assert decision.promote and "could not score" in decision.reason


def test_force_promotes_but_records_failed_gates(claims_config):
    decision = evaluate_gates(claims_config, {"roc_auc": 0.5}, {"roc_auc": 0.9}, force=True)
    assert decision.promote and decision.forced
    assert "forced" in decision.reason and "threshold:roc_auc" in decision.reason


def test_lower_is_better_metrics(claims_config):
    cfg = claims_config.model_copy(update={"promotion": claims_config.promotion.model_copy(
        update={"thresholds": {"log_loss": 0.3}})})
    assert evaluate_gates(cfg, {"log_loss": 0.2, "roc_auc": 0.8}, None).promote
    assert not evaluate_gates(cfg, {"log_loss": 0.4, "roc_auc": 0.8}, None).promote


def test_environment_gates_and_minimum_data(claims_config):
    """dev has its own looser gates and no comparison with its incumbent; prod needs enough rows."""
    dev = claims_config.promotion.environment("dev")
    prod = claims_config.promotion.environment("prod")
    assert (dev.thresholds, dev.min_improvement, prod.min_improvement) == ({"roc_auc": 0.6}, None, 0.002)
    weak = {"roc_auc": 0.65, "latency_p95_ms": 120.0}
    assert _evaluate_gates(claims_config, weak, {"roc_auc": 0.9}, environment=dev, train_rows=2000).promote
    refused = _evaluate_gates(claims_config, GOOD, None, environment=prod, train_rows=800)
    assert not refused.promote and "min_training_rows: 800 rows, 1500 required" in refused.reason
    unknown = _evaluate_gates(claims_config, GOOD, None, environment=prod)
    assert not unknown.promote and "training rows unknown" in unknown.reason
