"""Closed-loop stages: champion in business time, alert dedup and delivery records, retrain
cool-down, and the concept drift showing up as a performance alert once labels arrive."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.settings import load_settings
from airloop.data.features import features_and_target
from airloop.data.simulator import DEFAULT_EVENTS, generate_day
from airloop.monitoring import alerts, performance, reference, retrain
from airloop.monitoring import rules as monitoring_rules
from airloop.registry import audit
from airloop.registry import ledger as store_ledger
from airloop.training.search import build_model


def utc(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=timezone.utc)


@pytest.fixture()
def local(tmp_path):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    return settings, store.get_engine(settings.monitoring_db_uri)


def ledger(engine, key, action, to, as_of, recorded):
    store_ledger.append_ledger(engine, store_ledger.LedgerEntry(idempotency_key=key, pipeline="claims_fraud", model_name="claims_fraud",
                                                  action=action, alias="champion", from_version=None, to_version=to,
                                                  actor="t", reason="r", data_interval_end=as_of), recorded_at=recorded)


def test_champion_at_uses_business_time(local):
    _, engine = local
    now = datetime(2026, 11, 22, tzinfo=timezone.utc)  # every move recorded "today", effective at its as-of day
    ledger(engine, "a", "promote", "1", "2026-03-01", now)
    ledger(engine, "b", "refuse", "2", "2026-03-08", now)
    ledger(engine, "c", "promote", "3", "2026-04-21", now)
    ledger(engine, "d", "rollback", "1", "2026-04-25", now)
    assert audit.champion_at(engine, "claims_fraud", utc(date(2026, 2, 1))) is None
    assert audit.champion_at(engine, "claims_fraud", utc(date(2026, 4, 20))) == "1"  # refusals do not count
    assert audit.champion_at(engine, "claims_fraud", utc(date(2026, 4, 21))) == "3"
    assert audit.champion_at(engine, "claims_fraud", utc(date(2026, 4, 30))) == "1"


def drift_summary(day: date, fired: bool = True) -> dict:
    """An interval summary judging drift (every other rule not judged): input_drift fires or not."""
    alerts_ = [{"rule": "input_drift", "severity": "high", "message": f"drift on {day}", "retrain": True,
                "metric": "drift_share", "op": ">=", "threshold": 0.2, "observed": 0.3, "details": {}}]
    return {"interval_end": utc(day + timedelta(days=1)).isoformat(), "drift_share": 0.3 if fired else 0.0,
            "alerts": alerts_ if fired else []}


def conditions(engine):
    with engine.connect() as conn:
        rows = conn.execute(sa.select(store.alerts).order_by(store.alerts.c.first_seen)).mappings().all()
    return [(r["rule"], r["status"], r["first_seen"].date(), r["last_seen"].date(), r["fire_count"],
             r["closed_at"].date() if r["closed_at"] else None) for r in rows]


def test_alert_is_one_row_per_ongoing_condition_opened_updated_closed(local, claims_config):
    settings, engine = local
    d = [date(2026, 4, 20) + timedelta(days=i) for i in range(6)]
    rows = alerts.record_alerts(claims_config, settings, utc(d[0]), drift_summary(d[0]))
    assert [(r["rule"], r["status"], r["fire_count"], r["delivery_status"]) for r in rows] == \
        [("input_drift", "open", 1, "pending")]
    assert alerts.record_alerts(claims_config, settings, utc(d[0]), drift_summary(d[0])) == rows  # re-run: same row
    alerts.record_alerts(claims_config, settings, utc(d[1]), drift_summary(d[1]))
    alerts.record_alerts(claims_config, settings, utc(d[2]), {"interval_end": utc(d[3]).isoformat()})  # not judged
    alerts.record_alerts(claims_config, settings, utc(d[3]), drift_summary(d[3]))
    assert conditions(engine) == [("input_drift", "open", d[0], d[3], 3, None)]
    alerts.record_alerts(claims_config, settings, utc(d[4]), drift_summary(d[4], fired=False))
    assert conditions(engine) == [("input_drift", "closed", d[0], d[3], 3, d[4])]
    assert alerts.interval_alerts(engine, claims_config, utc(d[4]))[0]["status"] == "closed"  # the interval closed it
    alerts.record_alerts(claims_config, settings, utc(d[5]), drift_summary(d[5]))  # a new condition
    assert conditions(engine)[-1] == ("input_drift", "open", d[5], d[5], 1, None)
    before = conditions(engine)
    for day in d[:2]:  # re-running earlier intervals changes nothing
        alerts.record_alerts(claims_config, settings, utc(day), drift_summary(day))
    assert conditions(engine) == before


def test_backfill_in_any_order_gives_the_in_order_conditions(local, claims_config, tmp_path):
    days = [date(2026, 4, 20) + timedelta(days=i) for i in range(8)]
    firing = [True, True, False, True, True, True, False, True]
    results = []
    for order in (list(range(8)), [7, 3, 0, 5, 1, 6, 2, 4], list(reversed(range(8)))):
        settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / f"s{order[0]}{order[1]}")})
        engine = store.get_engine(settings.monitoring_db_uri)
        for i in order:
            alerts.record_alerts(claims_config, settings, utc(days[i]), drift_summary(days[i], firing[i]))
        results.append(conditions(engine))
    assert results[0] == [("input_drift", "closed", days[0], days[1], 2, days[2]),
                          ("input_drift", "closed", days[3], days[5], 3, days[6]),
                          ("input_drift", "open", days[7], days[7], 1, None)]
    assert results[1] == results[0] and results[2] == results[0]


def test_notices_only_on_open_and_close_with_delivery_attempts_recorded(local, claims_config):
    settings, engine = local
    d1, d2, d3 = date(2026, 4, 20), date(2026, 4, 21), date(2026, 4, 22)
    alerts.record_alerts(claims_config, settings, utc(d1), drift_summary(d1))

    def broken(alert):
        raise ConnectionError("webhook down")

    with pytest.raises(alerts.AlertDeliveryError, match="webhook down"):
        alerts.deliver_alerts(claims_config, settings, utc(d1), {"webhook": broken})
    (row,) = alerts.interval_alerts(engine, claims_config, utc(d1))
    assert (row["delivery_status"], row["delivery_attempts"]) == ("failed", 1) and "webhook down" in row["last_error"]
    sent = []
    assert alerts.deliver_alerts(claims_config, settings, utc(d1), {"webhook": sent.append}) == {"delivered": 1}
    (row,) = alerts.interval_alerts(engine, claims_config, utc(d1))
    assert (row["delivery_status"], row["delivery_attempts"], len(sent)) == ("delivered", 2, 1)
    assert alerts.deliver_alerts(claims_config, settings, utc(d1), {"webhook": sent.append}) == {"delivered": 0}
    # the same rule the next day is the same condition: updated, not delivered again
    (next_day,) = alerts.record_alerts(claims_config, settings, utc(d2), drift_summary(d2))
    assert (next_day["id"], next_day["fire_count"], next_day["delivery_status"]) == (row["id"], 2, "delivered")
    assert alerts.deliver_alerts(claims_config, settings, utc(d2), {"webhook": sent.append}) == {"delivered": 0}
    # it clears: one "closed" notice
    alerts.record_alerts(claims_config, settings, utc(d3), drift_summary(d3, fired=False))
    assert alerts.deliver_alerts(claims_config, settings, utc(d3), {"webhook": sent.append}) == {"delivered": 1}
    assert [a["event"] for a in sent] == ["opened", "closed"] and sent[1]["message"].startswith("resolved: input_drift")
    assert alerts.deliver_alerts(claims_config, settings, utc(d3), {"webhook": sent.append}) == {"delivered": 0}
    alerts.record_alerts(claims_config, settings, utc(d3), drift_summary(d3, fired=False))  # re-run: nothing new
    assert alerts.deliver_alerts(claims_config, settings, utc(d3), {"webhook": sent.append}) == {"delivered": 0}


def test_retrain_requested_once_then_cool_down(local, claims_config):
    settings, _ = local
    days = [date(2026, 4, 20) + timedelta(days=i) for i in range(9)]
    decisions = [retrain.decide_retrain(claims_config, settings, utc(d), utc(d + timedelta(days=1)), drift_summary(d))
                 for d in days]
    requested = [d for d, dec in zip(days, decisions) if dec["retrain"]]
    assert requested == [date(2026, 4, 20), date(2026, 4, 27)]  # 7-day cool-down
    assert decisions[0]["as_of"] == "2026-04-21" and "drift on 2026-04-20" in decisions[0]["reason"]
    assert decisions[1]["suppressed_by"].startswith("2026-04-20")
    again = retrain.decide_retrain(claims_config, settings, utc(days[0]), utc(days[1]), drift_summary(days[0]))
    assert again == decisions[0]  # re-running an interval gives the same decision
    assert not retrain.decide_retrain(claims_config, settings, utc(days[0]), utc(days[1]), {"alerts": []})["retrain"]


def served_with_labels(config, model, days):
    frame = pd.concat([generate_day(d) for d in days], ignore_index=True)
    X, y = features_and_target(config, frame)
    proba = model.predict_proba(X)[:, 1]
    return pd.DataFrame({"label": y.tolist(), "prediction": model.predict(X).tolist(), reference.SCORE_COLUMN: proba})


def test_concept_drift_raises_a_performance_alert_once_labels_arrive(claims_config):
    """A model trained before the concept drift keeps its quality on labelled traffic before it
    and loses it after: the performance_drop rule (critical, retrain) fires only on the drifted
    period."""
    drift = DEFAULT_EVENTS["concept_drift"]
    train = pd.concat([generate_day(drift - timedelta(days=40 - i)) for i in range(20)], ignore_index=True)
    X, y = features_and_target(claims_config, train)
    model = build_model(claims_config, "logistic_regression", {"C": 1.0}).fit(X, y)
    holdout = performance.performance(claims_config, served_with_labels(
        claims_config, model, [drift - timedelta(days=19 - i) for i in range(7)]))
    before = performance.performance(claims_config, served_with_labels(
        claims_config, model, [drift - timedelta(days=9 - i) for i in range(7)]))
    after = performance.performance(claims_config, served_with_labels(
        claims_config, model, [drift + timedelta(days=2 + i) for i in range(7)]))
    metric = claims_config.training.metric

    def rules(perf):
        drop = performance.performance_drop(metric, perf[metric], holdout[metric])
        summary = {"performance_drop": drop, "metric": metric, "performance": perf, "reference_performance": holdout}
        return {a["rule"]: a for a in monitoring_rules.evaluate_rules(claims_config, summary)}

    assert "performance_drop" not in rules(before)
    fired = rules(after)
    assert "performance_drop" in fired, (holdout[metric], after[metric])
    assert fired["performance_drop"]["severity"] == "critical" and fired["performance_drop"]["retrain"]
