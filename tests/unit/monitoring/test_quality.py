"""Data quality of served traffic: the out-of-domain flags serving logged, counted per interval,
and the pipeline's validation suite run on the interval's logged features (the monitoring DAG's
``traffic_quality`` task), both judged by alert rules — against a real SQLite monitoring store,
the committed GX suite of the demo pipeline and the simulator's claims as served traffic.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.settings import load_settings
from airloop.monitoring import interval, quality, rules
from airloop.monitoring.alerts import record_alerts
from airloop.tasks import monitoring as tasks
from tests.unit.monitoring.test_interval import REFERENCE_DAYS, prediction_rows, served
from tests.unit.serving.test_app import REPO_ROOT

DAY = date(2026, 4, 14)


def utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


START, END = utc(DAY), utc(DAY + timedelta(days=1))


@pytest.fixture
def local(tmp_path):
    """Settings of this test (the repository's committed suites, state in tmp) and its store."""
    settings = load_settings({"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return settings, store.get_engine(settings.monitoring_db_uri)


@pytest.fixture(scope="module")
def config(claims_config):
    """The demo pipeline plus out-of-domain rules (its shipped rules include traffic_quality)."""
    raw = claims_config.model_dump(mode="json")
    raw["monitoring"]["alerts"] += [
        {"name": "unseen_categories", "metric": "unseen_category_share", "op": ">", "value": 0.01, "severity": "high"},
        {"name": "out_of_domain", "metric": "out_of_domain_share", "op": ">", "value": 0.5, "severity": "low"},
    ]
    return type(claims_config).model_validate(raw)


@pytest.fixture(scope="module")
def reference(config):
    return served(config, REFERENCE_DAYS)


def traffic(config, *, bad: bool, tenant: str = "default") -> list[dict]:
    """The day's served claims; ``bad``: 10 ages of 150 and 5 unknown channels, flagged by serving."""
    rows = prediction_rows(config, DAY, tenant=tenant)
    if bad:
        for i, row in enumerate(rows[:15]):
            features = json.loads(row["features"])
            if i < 10:
                features["customer_age"] = 150
                row["out_of_domain"] = json.dumps(["customer_age"])
            else:
                features["channel"] = "pigeon"
                row["out_of_domain"] = json.dumps(["channel"])
            row["features"] = json.dumps(features)
    return rows


def stored_row(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(store.traffic_quality)).mappings().one())


# ------------------------------------------------------------------------------ out of domain
def test_out_of_domain_shares_count_the_flags(config):
    import pandas as pd

    ok = pd.DataFrame({"out_of_domain": [None, ["customer_age"], ["customer_age", "channel"], ["region"], None]})
    assert quality.out_of_domain_shares(config, ok) == {
        "out_of_domain_share": 3 / 5, "unseen_category_share": 2 / 5,
        "out_of_domain_features": {"customer_age": 2 / 5, "region": 1 / 5, "channel": 1 / 5}}
    assert quality.out_of_domain_shares(config, ok.head(0))["out_of_domain_share"] is None
    assert set(rules.RULE_METRICS) >= {"out_of_domain_share", "unseen_category_share", "traffic_quality_failed"}


# ------------------------------------------------------------------------------ traffic quality
def test_clean_traffic_passes_the_suite_and_the_result_is_kept(config, local):
    settings, engine = local
    store.insert_ignore(engine, store.predictions, traffic(config, bad=False))
    t0 = time.perf_counter()
    summary = tasks.traffic_quality(config, settings, START.isoformat(), END.isoformat())
    seconds = time.perf_counter() - t0
    print(f"\ntraffic_quality on {summary['traffic_quality_rows']} rows: {seconds:.2f}s "
          f"(GX {summary['traffic_quality_duration_s']:.2f}s)")
    assert summary["traffic_quality_success"] is True and summary["traffic_quality_failed"] == 0
    folder = settings.validation_dir / config.name / "traffic" / DAY.isoformat()
    assert summary["traffic_quality_result_uri"] == str(folder / "result.json")
    assert (folder / "data_docs" / "index.html").is_file()
    result = json.loads((folder / "result.json").read_text())
    skipped = {(s["type"], s["column"]) for s in result["skipped"]}
    # not served: the timestamp, id, target and label timestamp; the row count bounds a source day
    assert {("expect_column_values_to_be_unique", "claim_id"), ("expect_column_max_to_be_between", "claim_ts"),
            ("expect_column_values_to_be_in_set", "is_fraud"), ("expect_table_row_count_to_be_between", None),
            ("expect_column_to_exist", "label_ts")} <= skipped
    assert all(s["column"] not in config.features for s in result["skipped"])
    row = stored_row(engine)
    assert row["rows"] == summary["traffic_quality_rows"] > 300 and row["success"] is True
    assert row["failed_expectations"] == 0 and row["evaluated_expectations"] == 52 and row["error"] is None


def test_bad_traffic_fails_the_suite_and_raises_a_medium_alert(config, local, reference, tmp_path):
    settings, engine = local
    store.insert_ignore(engine, store.predictions, traffic(config, bad=True))
    summary = tasks.traffic_quality(config, settings, START, END)
    assert summary["traffic_quality_success"] is False and summary["traffic_quality_failed"] == 2
    failures = summary["traffic_quality_failures"]
    assert any("customer_age" in f and "outside [18, 100]" in f for f in failures), failures
    assert any("channel" in f and "'pigeon'" in f for f in failures), failures
    first = stored_row(engine)
    assert tasks.traffic_quality(config, settings, START, END)["traffic_quality_failed"] == 2  # a re-run
    again = stored_row(engine)
    assert {k: v for k, v in again.items() if k != "duration_s"} == {k: v for k, v in first.items() if k != "duration_s"}

    # monitor reads the check and the flags into the summary the rules judge
    result = interval.monitor_interval(config, settings, "default", START, END, "1", reference, tmp_path / "reports",
                                       engine=engine)
    n = result["ok_rows"]
    assert result["traffic_quality_failed"] == 2
    assert result["out_of_domain_share"] == pytest.approx(15 / n)
    assert result["unseen_category_share"] == pytest.approx(5 / n)
    assert result["out_of_domain_features"] == pytest.approx({"customer_age": 10 / n, "channel": 5 / n})
    fired = {a["rule"]: a for a in result["alerts"]}
    assert fired["traffic_quality"]["severity"] == "medium" and fired["traffic_quality"]["observed"] == 2
    assert "served traffic failed" in fired["traffic_quality"]["message"] and "pigeon" in fired["traffic_quality"]["message"]
    assert fired["unseen_categories"]["severity"] == "high" and "channel" in fired["unseen_categories"]["message"]
    assert "out_of_domain" not in fired  # 15 of ~430 rows < 0.5
    with engine.connect() as conn:
        run = conn.execute(sa.select(store.monitoring_runs)).mappings().one()
    assert run["out_of_domain_share"] == pytest.approx(15 / n) and run["unseen_category_share"] == pytest.approx(5 / n)
    assert json.loads(run["out_of_domain_features"]) == pytest.approx({"customer_age": 10 / n, "channel": 5 / n})
    alerts = {a["rule"]: a for a in record_alerts(config, settings, START, result)}
    assert alerts["traffic_quality"]["severity"] == "medium"
    # the same store contents give the same summary
    assert interval.monitor_interval(config, settings, "default", START, END, "1", reference, tmp_path / "reports",
                                     engine=engine) == result


def test_an_interval_without_traffic_or_suite_is_not_judged(config, local, tmp_path):
    settings, engine = local
    summary = tasks.traffic_quality(config, settings, START, END)
    assert summary["traffic_quality_failed"] is None and summary["traffic_quality_error"] == \
        "no served traffic in the interval"
    assert rules.evaluate_rules(config, summary) == []
    # a missing (or stale) suite: recorded, monitoring goes on
    store.insert_ignore(engine, store.predictions, traffic(config, bad=True, tenant="acme"))
    bare = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(settings.state_dir),
                          "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    missing = quality.check_traffic(config, bare, "acme", START, END, engine=engine)
    assert missing["traffic_quality_failed"] is None and "run `make suite`" in missing["traffic_quality_error"]
    # another tenant's check is its own row and folder
    checked = quality.check_traffic(config, settings, "acme", START, END, engine=engine)
    assert checked["traffic_quality_failed"] == 2
    assert checked["traffic_quality_result_uri"] == str(
        settings.validation_dir / config.name / "traffic" / "acme" / DAY.isoformat() / "result.json")
    with engine.connect() as conn:
        tenants = conn.execute(sa.select(store.traffic_quality.c.tenant, store.traffic_quality.c.success)
                               .order_by(store.traffic_quality.c.tenant)).all()
    assert tenants == [("acme", False), ("default", None)]
    assert quality.stored_traffic_quality(engine, config, "acme", START)["traffic_quality_failed"] == 2
    assert quality.stored_traffic_quality(engine, config, "other", START)["traffic_quality_failed"] is None


def test_the_traffic_folder_of_an_hourly_interval(config, local):
    settings, _ = local
    start = START + timedelta(hours=5)
    assert quality.traffic_dir(settings, config, "default", start, start + timedelta(hours=1)).name == \
        "2026-04-14T050000Z"
    assert quality.traffic_dir(settings, config, "default", START, END).name == "2026-04-14"
