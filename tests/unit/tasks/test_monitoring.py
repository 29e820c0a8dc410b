"""The monitoring DAG's task functions (include/airloop/tasks/monitoring.py) on a small real
store: the simulator's files as the source, the monitoring store on SQLite in the test's folder."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.settings import load_settings
from airloop.data.simulator import write_history
from airloop.monitoring.alerts import AlertDeliveryError
from airloop.registry import ledger
from airloop.tasks import monitoring as tasks

UTC = timezone.utc


def utc(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC)


@pytest.fixture
def local(tmp_path):
    """Settings of this test only (explicit environment: no user state, secrets or .env)."""
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return settings, store.get_engine(settings.monitoring_db_uri)


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# ---------------------------------------------------------------------------------- monitor
def test_monitor_without_a_champion_is_skipped(local, claims_config):
    settings, engine = local
    result = tasks.monitor(claims_config, settings, datetime(2026, 3, 1), datetime(2026, 3, 2))  # naive = UTC
    assert result.pop("retention")["retention_days"] == 0  # the default keeps every prediction
    assert result == {"skipped": "no champion at the interval start", "interval_start": "2026-03-01T00:00:00+00:00"}
    # a champion promoted by a later day's run was not the champion then (business time)
    ledger.append_ledger(engine, ledger.LedgerEntry(
        idempotency_key="later", pipeline=claims_config.name, model_name=claims_config.model_name, action="promote",
        alias="champion", from_version=None, to_version="1", actor="training", reason="first model",
        data_interval_end="2026-03-10"))
    assert "skipped" in tasks.monitor(claims_config, settings, utc(date(2026, 3, 9)), utc(date(2026, 3, 10)))
    # a refusal is not a champion either
    ledger.append_ledger(engine, ledger.LedgerEntry(
        idempotency_key="refused", pipeline=claims_config.name, model_name=claims_config.model_name, action="refuse",
        alias="champion", from_version=None, to_version="2", actor="training", reason="weak",
        data_interval_end="2026-03-01"))
    assert "skipped" in tasks.monitor(claims_config, settings, utc(date(2026, 3, 5)), utc(date(2026, 3, 6)))
    assert _count(engine, store.monitoring_runs) == 0


def test_monitor_applies_the_retention_relative_to_the_interval_end(tmp_path, claims_config):
    """AIRLOOP_PREDICTION_RETENTION_DAYS: each monitor run removes the predictions older than that
    many days before its interval's end (every tenant and pipeline), also when nothing is monitored."""
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                              "AIRLOOP_PREDICTION_RETENTION_DAYS": "50"})
    assert settings.prediction_retention_days == 50
    engine = store.get_engine(settings.monitoring_db_uri)
    rows = [{"request_id": f"r{k}", "ts": utc(date(2026, 1, 1)) + timedelta(days=k), "tenant": tenant,
             "pipeline": pipeline, "model_name": "m", "features": "{}", "status": "ok"}
            for k in range(60) for tenant, pipeline in (("default", "claims_fraud"), ("acme", "tickets"))]
    store.insert_ignore(engine, store.predictions, rows)
    end = utc(date(2026, 3, 1))  # cutoff 50 days before: 10 January
    result = tasks.monitor(claims_config, settings, end - timedelta(days=1), end)
    assert "skipped" in result
    assert result["retention"] == {"retention_days": 50, "cutoff": "2026-01-10T00:00:00+00:00", "partitions_dropped": 0,
                                   "days_dropped": [], "rows_deleted": 18}
    with engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(store.predictions.c.ts))).scalar_one()
    assert oldest.replace(tzinfo=UTC) == utc(date(2026, 1, 10)) and _count(engine, store.predictions) == 120 - 18
    assert tasks.monitor(claims_config, settings, end - timedelta(days=1), end)["retention"]["rows_deleted"] == 0


# ----------------------------------------------------------------------------------- ingest
def test_ingest_stores_the_labels_known_in_the_performance_window(local, claims_config):
    settings, engine = local
    files = write_history(settings.data_dir / "claims_fraud", start=date(2026, 1, 1), days=20)
    start, end = utc(date(2026, 1, 15)), utc(date(2026, 1, 16))
    window_start = end - timedelta(days=claims_config.monitoring.performance_window_days)
    source = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    label_ts = pd.to_datetime(source[claims_config.label_timestamp], utc=True)
    known = source[(label_ts >= window_start) & (label_ts < end) & source[claims_config.target].notna()]
    assert 0 < len(known) < len(source)

    assert tasks.ingest(claims_config, settings, start, end) == {"labels": len(known)}
    with engine.connect() as conn:
        stored = pd.DataFrame(conn.execute(sa.select(store.ground_truth)).mappings().all())
    assert sorted(stored["request_id"]) == sorted(known[claims_config.id_column].astype(str))
    assert set(stored["pipeline"]) == {"claims_fraud"} and set(stored["tenant"]) == {"default"}
    by_id = dict(zip(known[claims_config.id_column].astype(str), known[claims_config.target]))
    assert all(int(label) == by_id[rid] for rid, label in zip(stored["request_id"], stored["label"]))
    # a re-run (or the next interval's overlapping window) rewrites the same rows
    assert tasks.ingest(claims_config, settings, start, end) == {"labels": len(known)}
    assert _count(engine, store.ground_truth) == len(known)
    # the next interval's window overlaps this one: the overlap is upserted, not duplicated
    later = (label_ts >= window_start + timedelta(days=1)) & (label_ts < end + timedelta(days=1))
    known_next = source[later & source[claims_config.target].notna()]
    assert tasks.ingest(claims_config, settings, end, end + timedelta(days=1)) == {"labels": len(known_next)}
    ids = set(known[claims_config.id_column].astype(str)) | set(known_next[claims_config.id_column].astype(str))
    assert len(ids) < len(known) + len(known_next) and _count(engine, store.ground_truth) == len(ids)


def test_ingest_without_a_label_timestamp_reads_nothing(local, claims_config):
    settings, engine = local
    config = claims_config.model_copy(update={"label_timestamp": None})
    result = tasks.ingest(config, settings, utc(date(2026, 1, 15)), utc(date(2026, 1, 16)))
    assert result == {"labels": 0, "reason": "pipeline has no label_timestamp column"}
    assert _count(engine, store.ground_truth) == 0


# ------------------------------------------------------------------------------------ alert
def _summary(day: date, *rules: str, retrain: bool = True) -> dict:
    return {"interval_end": utc(day + timedelta(days=1)).isoformat(),
            "alerts": [{"rule": rule, "severity": "high", "message": f"{rule} on {day}", "retrain": retrain,
                        "metric": "drift_share", "op": ">=", "threshold": 0.2, "observed": 0.4, "details": {}}
                       for rule in rules]}


def test_alert_task_records_then_delivers_once(local, claims_config):
    settings, engine = local
    day = date(2026, 4, 20)
    sent: list[dict] = []
    assert tasks.alert(claims_config, settings, utc(day), _summary(day, "input_drift", "volume"),
                       {"webhook": sent.append}) == {"delivered": 2}
    assert sorted(a["rule"] for a in sent) == ["input_drift", "volume"]
    # a retried task: the same alert rows, nothing delivered twice
    assert tasks.alert(claims_config, settings, utc(day), _summary(day, "input_drift", "volume"),
                       {"webhook": sent.append}) == {"delivered": 0}
    assert len(sent) == 2 and _count(engine, store.alerts) == 2


def test_alert_task_fails_on_a_failed_delivery_and_retries_it(local, claims_config):
    settings, engine = local
    day = date(2026, 4, 20)

    def down(alert: dict) -> None:
        raise ConnectionError("webhook down")

    with pytest.raises(AlertDeliveryError, match="input_drift via webhook: ConnectionError: webhook down"):
        tasks.alert(claims_config, settings, utc(day), _summary(day, "input_drift"), {"webhook": down})
    sent: list[dict] = []
    assert tasks.alert(claims_config, settings, utc(day), _summary(day, "input_drift"),
                       {"webhook": sent.append}) == {"delivered": 1}
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(store.alerts)).mappings().all()
    assert (row["delivery_status"], row["delivery_attempts"]) == ("delivered", 2)
    # the same rule the next day is the same open condition: updated (fire_count 2), not delivered again
    nxt = day + timedelta(days=1)
    assert tasks.alert(claims_config, settings, utc(nxt), _summary(nxt, "input_drift"),
                       {"webhook": sent.append}) == {"delivered": 0}
    assert len(sent) == 1 and _count(engine, store.alerts) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.alerts.c.status, store.alerts.c.fire_count)).one() == ("open", 2)


def test_alert_task_without_senders_keeps_alerts_unrouted(local, claims_config):
    settings, engine = local
    day = date(2026, 4, 20)
    assert tasks.alert(claims_config, settings, utc(day), _summary(day, "input_drift"), {}) == {"delivered": 0}
    with engine.connect() as conn:
        assert conn.execute(sa.select(store.alerts.c.delivery_status)).scalars().all() == ["no_route"]
    assert tasks.alert(claims_config, settings, utc(day), {"alerts": []}, {}) == {"delivered": 0}


# ---------------------------------------------------------------------------------- retrain
def test_retrain_decision_requests_once_per_cool_down(local, claims_config):
    settings, engine = local
    cooldown = claims_config.monitoring.retrain_cooldown_days
    first_day = date(2026, 4, 20)

    def decide(day: date, summary: dict) -> dict:
        return tasks.retrain_decision(claims_config, settings, utc(day), utc(day + timedelta(days=1)), summary)

    first = decide(first_day, _summary(first_day, "input_drift"))
    assert first == {"retrain": True, "as_of": "2026-04-21",
                     "reason": "claims_fraud monitoring 2026-04-20: input_drift on 2026-04-20",
                     "window_days": None}  # not a performance drop: the usual training window
    assert decide(first_day, _summary(first_day, "input_drift")) == first  # a re-run: the same decision
    inside = first_day + timedelta(days=cooldown - 1)
    suppressed = decide(inside, _summary(inside, "input_drift"))
    assert not suppressed["retrain"] and suppressed["suppressed_by"].startswith("2026-04-20")
    after = first_day + timedelta(days=cooldown)
    assert decide(after, _summary(after, "input_drift"))["retrain"]
    # alerts that do not ask for a retrain, or none: no decision stored
    quiet = decide(date(2026, 5, 20), _summary(date(2026, 5, 20), "volume", retrain=False))
    assert quiet == {"retrain": False, "as_of": "2026-05-21", "reason": None}
    assert decide(date(2026, 5, 21), {"alerts": []})["retrain"] is False
    with engine.connect() as conn:
        rows = conn.execute(sa.select(store.retrain_requests.c.as_of, store.retrain_requests.c.requested)
                            .order_by(store.retrain_requests.c.interval_start)).all()
    assert [tuple(r) for r in rows] == [("2026-04-21", True), ((inside + timedelta(days=1)).isoformat(), False),
                                        ((after + timedelta(days=1)).isoformat(), True)]


def test_retrain_condition_is_the_decision_or_false_with_the_reason_logged(local, claims_config, caplog):
    """The ``retrain_decision`` task is a short-circuit: the decision when it requests training
    (``request_retrain`` sends it as the Asset event), else False (``request_retrain`` skipped)."""
    settings, _ = local
    cooldown = claims_config.monitoring.retrain_cooldown_days
    first_day = date(2026, 4, 20)

    def condition(day: date, summary: dict) -> dict | bool:
        return tasks.retrain_condition(claims_config, settings, utc(day), utc(day + timedelta(days=1)), summary)

    requested = condition(first_day, _summary(first_day, "input_drift"))
    assert requested == tasks.retrain_decision(claims_config, settings, utc(first_day), utc(first_day + timedelta(days=1)),
                                               _summary(first_day, "input_drift"))
    assert requested["retrain"] is True
    caplog.set_level("INFO", logger="airloop.tasks.monitoring")
    inside = first_day + timedelta(days=cooldown - 1)
    assert condition(inside, _summary(inside, "input_drift")) is False
    assert "no retraining: cool-down since the request of 2026-04-20" in caplog.text
    assert condition(date(2026, 5, 21), {"alerts": []}) is False
    assert "no retraining: no retrain rule fired" in caplog.text
