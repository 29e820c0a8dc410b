"""Promotion gates: thresholds, latency, beats-the-champion, force."""

from __future__ import annotations

from airloop.promotion import evaluate_gates

GOOD = {"roc_auc": 0.82, "latency_p95_ms": 5.0}


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
