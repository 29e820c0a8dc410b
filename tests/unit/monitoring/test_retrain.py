"""The default retrain policy: realized drops and estimated drops beyond their band retrain;
drift alone alerts, unless a rule opts in with ``retrain: true``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airloop.core import store
from airloop.core.pipeline import AlertRule
from airloop.core.settings import load_settings
from airloop.monitoring import retrain, rules

START = datetime(2026, 4, 21, tzinfo=timezone.utc)


@pytest.fixture()
def local(tmp_path):
    return load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})


def summary(**metrics) -> dict:
    return {"interval_end": (START + timedelta(days=1)).isoformat(), "drifted_features": ["claim_amount"],
            "metric": "roc_auc", "estimated": {"metric": "roc_auc", "value": 0.7, "low": 0.66, "high": 0.74,
                                               "reference": 0.8}, **metrics}


def decide(config, settings, s):
    s = s | {"alerts": rules.evaluate_rules(config, s)}
    return s["alerts"], retrain.decide_retrain(config, settings, START, START + timedelta(days=1), s)


def test_drift_only_alerts_without_retraining(claims_config, local):
    fired, decision = decide(claims_config, local, summary(drift_share=0.6, prediction_drift=0.5))
    assert {a["rule"] for a in fired} == {"input_drift", "prediction_drift"}
    assert not any(a["retrain"] for a in fired) and decision["retrain"] is False
    engine = store.get_engine(local.monitoring_db_uri)
    assert retrain.retrain_request(engine, claims_config.name, START) is None  # nothing stored


def test_realized_drop_retrains(claims_config, local):
    fired, decision = decide(claims_config, local, summary(drift_share=0.0, performance_drop=0.2))
    assert [a["rule"] for a in fired] == ["performance_drop"] and decision["retrain"] is True
    assert "performance_drop" in decision["reason"]
    # on the recent window: the new concept, not weeks of the old one
    assert decision["window_days"] == claims_config.monitoring.retrain_window_days == 14


def test_retrain_window_must_exceed_the_holdout(claims_config):
    from airloop.core.pipeline import PipelineConfig

    data = claims_config.model_dump()
    data["monitoring"]["retrain_window_days"] = claims_config.training.holdout_days
    with pytest.raises(ValueError, match="retrain_window_days .* must exceed training.holdout_days"):
        PipelineConfig.model_validate(data)


def test_estimated_drop_beyond_its_band_retrains(claims_config, local):
    fired, decision = decide(claims_config, local, summary(estimated_performance_drop=(0.8 - 0.74) / 0.8))
    assert [a["rule"] for a in fired] == ["estimated_drop"] and fired[0]["retrain"] and decision["retrain"]
    assert "band 0.66..0.74" in fired[0]["message"]


def test_estimated_drop_within_its_band_does_not(claims_config, local):
    # the estimate (0.78) is below the holdout (0.8) but its band (0.72..0.84) reaches it: band drop < 0
    within = summary(estimated_performance_drop=(0.8 - 0.84) / 0.8)
    fired, decision = decide(claims_config, local, within)
    assert fired == [] and decision["retrain"] is False


def test_drift_rule_may_opt_in_to_retrain(claims_config, local):
    rules_ = [r if r.name != "input_drift" else AlertRule(**(r.model_dump() | {"retrain": True}))
              for r in claims_config.monitoring.alerts]
    config = claims_config.model_copy(update={"monitoring": claims_config.monitoring.model_copy(
        update={"alerts": rules_})})
    fired, decision = decide(config, local, summary(drift_share=0.6))
    assert [a["rule"] for a in fired] == ["input_drift"] and decision["retrain"] is True
    assert decision["window_days"] is None  # drift alone: the usual training window
    assert rules.retrains(AlertRule(name="x", metric="drift_share", op=">", value=0.1, severity="low")) is False
    assert rules.retrains(AlertRule(name="x", metric="drift_share", op=">", value=0.1, severity="low",
                                    retrain=True)) is True
    assert rules.retrains(AlertRule(name="x", metric="performance_drop", op=">", value=0.1, severity="low",
                                    retrain=False)) is False


def test_rule_states_tell_not_judged_from_clear(claims_config):
    states = rules.rule_states(claims_config, summary(drift_share=0.1, estimated_performance_drop=None))
    assert states["input_drift"] is False and states["estimated_drop"] is None and states["performance_drop"] is None
