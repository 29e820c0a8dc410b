"""The MLOps view's read models on a real MLflow store (SQLite tracking + registry, a real model)
and a real SQLite monitoring store (``tests.unit.registry.lifecycle_store``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from airloop.core import store
from airloop.registry.ledger import LedgerEntry, append_ledger, ledger_alias, moved_aliases
from airloop.tasks import overview
from tests.unit.registry.lifecycle_store import lifecycle_store  # noqa: F401 - fixture

DAY = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def pl(lifecycle_store):  # noqa: F811 - the imported fixture
    """A pipeline of this test's own in the module's real store."""
    return lifecycle_store.pipeline()


def move(pl, environment: str, version: str, previous: str | None = None, action: str = "promote") -> None:
    """Point ``environment``'s aliases at ``version`` and record the move, as the lifecycle does."""
    env = pl.config.promotion.environment(environment)
    for alias in moved_aliases(env):
        pl.store.client.set_registered_model_alias(pl.name, alias, version)
    append_ledger(pl.store.engine, LedgerEntry(
        idempotency_key=f"{pl.name}:{environment}:{version}:{action}", pipeline=pl.config.name,
        model_name=pl.name, action=action, alias=ledger_alias(env), from_version=previous, to_version=version,
        actor="test", reason=f"{action} v{version}", environment=environment))


def monitored(pl, days: int = 3, report: bool = True) -> list[datetime]:
    """``days`` monitored intervals: drift rows of two features and the prediction, a run row with
    a report file in the report folder, a traffic-quality row; return the interval starts."""
    config, engine, settings = pl.config, pl.store.engine, pl.store.settings
    folder = settings.reports_dir / config.name / config.tenant
    folder.mkdir(parents=True, exist_ok=True)
    starts = [DAY + timedelta(days=i) for i in range(days)]
    features = list(config.features)[:2]
    for i, start in enumerate(starts):
        key = {"tenant": config.tenant, "pipeline": config.name, "interval_start": start}
        end = start + timedelta(days=1)
        store.upsert(engine, store.feature_drift, [key | {
            "feature": name, "interval_end": end, "model_version": "1", "method": "psi", "statistic": 0.05 * (i + 1),
            "p_value": None, "threshold": 0.1, "drifted": 0.05 * (i + 1) > 0.1, "current_rows": 500 + i,
            "reference_rows": 4000} for name in features + ["__prediction__"]])
        path = folder / f"drift_{start:%Y%m%dT%H%M%SZ}.html"
        path.write_text(f"<html><body>report {i}</body></html>")
        store.upsert(engine, store.monitoring_runs, [key | {
            "interval_end": end, "model_version": "1", "rows": 500 + i, "drift_share": 0.5 * i,
            "drifted_features": json.dumps(features[:i]), "labelled_rows": 100 * i,
            "performance": json.dumps({"roc_auc": 0.8 - 0.01 * i}) if i else None,
            "reference_performance": json.dumps({"roc_auc": 0.81}), "volume_ratio": 1.0 + i / 10,
            "error_rate": 0.0, "latency_p50_ms": 2.0, "latency_p95_ms": 5.0,
            "report_uri": str(path) if report else None}])
        store.upsert(engine, store.traffic_quality, [key | {
            "interval_end": end, "rows": 500 + i, "success": i != 1, "evaluated_expectations": 10,
            "failed_expectations": int(i == 1), "failures": json.dumps([{"column": features[0]}] if i == 1 else [])}])
    return starts


def test_versions_list_metrics_environments_lineage_and_links(pl):
    v1 = pl.add_version(0.80, rows=900, latency_p95_ms=4.0, log_loss=0.4,
                          tags={"airloop.data_interval": "2026-01-01/2026-02-01", "airloop.study": "s1",
                                "airloop.code_version": "abc", "airloop.data_fingerprint": "f" * 64})
    v2 = pl.add_version(0.85)
    move(pl, "dev", v2)
    move(pl, "prod", v1)
    listed = overview.versions(pl.config, pl.store.settings)
    assert [v["version"] for v in listed] == [v2, v1]  # newest first
    first = listed[1]
    assert first["metrics"] == {"roc_auc": 0.80, "log_loss": 0.4}  # quality only
    assert first["figures"] == {"rows": 900.0, "latency_p95_ms": 4.0}
    assert first["environments"] == ["prod"] and "champion" in first["aliases"]
    assert listed[0]["environments"] == ["dev"]
    assert first["lineage"]["data_interval"] == "2026-01-01/2026-02-01" and first["lineage"]["study"] == "s1"
    assert first["lineage"]["code_version"] == "abc" and first["lineage"]["data_fingerprint"] == "f" * 64
    assert first["links"]["mlflow_run"].endswith(f"/runs/{first['run_id']}?workflowType=machine_learning")
    assert first["links"]["registered_model"].endswith(f"#/models/{pl.name}/versions/{v1}")

    detail = overview.version_detail(pl.config, pl.store.settings, v1)
    assert detail["version"] == v1 and [r["to_version"] for r in detail["ledger"]] == [v1]
    for missing in ("99", "abc", 0):
        with pytest.raises(overview.NotFound):
            overview.version_detail(pl.config, pl.store.settings, missing)


def test_pipeline_config_is_not_found_for_unknown_or_odd_names(settings):
    assert overview.pipeline_config("claims_fraud", settings).name == "claims_fraud"
    for name in ("nope", "../claims_fraud", "claims fraud", "_x"):
        with pytest.raises(overview.NotFound):
            overview.pipeline_config(name, settings)


def test_drift_history_has_one_point_per_monitored_interval(pl):
    starts = monitored(pl, days=3)
    engine, config = pl.store.engine, pl.config
    history = overview.drift_history(engine, config)
    features = list(config.features)[:2]
    assert set(history["features"]) == set(features) | {"__prediction__"} and history["intervals"] == 3
    points = history["features"][features[0]]
    assert [p["interval_start"] for p in points] == [s.isoformat() for s in starts]
    assert [p["statistic"] for p in points] == pytest.approx([0.05, 0.10, 0.15])
    assert [p["drifted"] for p in points] == [False, False, True] and points[0]["method"] == "psi"
    assert points[2]["current_rows"] == 502 and points[0]["threshold"] == 0.1

    one = overview.drift_history(engine, config, features[1], since=starts[1], until=starts[2])
    assert list(one["features"]) == [features[1]] and len(one["features"][features[1]]) == 1
    with pytest.raises(ValueError, match="feature 'nope'"):
        overview.drift_history(engine, config, "nope")
    with pytest.raises(ValueError, match="since"):
        overview.drift_history(engine, config, since=starts[2], until=starts[0])


def test_monitoring_runs_join_traffic_quality_and_link_reports(pl):
    starts = monitored(pl, days=3)
    runs = overview.monitoring_runs(pl.store.engine, pl.config, limit=2)
    assert [r["interval_start"] for r in runs] == [starts[2].isoformat(), starts[1].isoformat()]
    newest = runs[0]
    assert newest["performance"] == {"roc_auc": pytest.approx(0.78)} and newest["reference_performance"] == {"roc_auc": 0.81}
    assert newest["volume_ratio"] == pytest.approx(1.2) and newest["latency_p95_ms"] == 5.0
    assert newest["drifted_features"] == list(pl.config.features)[:2]
    assert "report_uri" not in newest  # never a local path
    assert newest["report"] == f"/airloop/api/v1/pipelines/{pl.config.name}/reports/2026-03-03T00:00:00Z"
    assert newest["data_quality"]["success"] is True
    assert runs[1]["data_quality"]["failures"] == [{"column": list(pl.config.features)[0]}]
    with pytest.raises(ValueError, match="limit"):
        overview.monitoring_runs(pl.store.engine, pl.config, limit=0)


def test_report_file_stays_inside_the_report_folder(pl, tmp_path):
    starts = monitored(pl, days=2)
    engine, config, settings = pl.store.engine, pl.config, pl.store.settings
    path = overview.report_file(engine, config, starts[1], settings)
    assert path.read_text() == "<html><body>report 1</body></html>"
    assert overview.report_file(engine, config, "2026-03-02T00:00:00Z", settings) == path
    with pytest.raises(overview.NotFound):
        overview.report_file(engine, config, starts[1] + timedelta(days=5), settings)
    outside = tmp_path / "secret.html"
    outside.write_text("not a report")
    for uri in (str(outside), str(settings.reports_dir / ".." / "x.html"), "/etc/passwd"):
        store.upsert(engine, store.monitoring_runs, [{
            "tenant": config.tenant, "pipeline": config.name, "interval_start": starts[0],
            "interval_end": starts[1], "rows": 1, "report_uri": uri}])
        with pytest.raises(overview.NotFound, match="not in the report folder"):
            overview.report_file(engine, config, starts[0], settings)


def test_alerts_retrains_and_the_card(pl):
    v1 = pl.add_version(0.82, log_loss=0.3, tags={"airloop.data_interval": "2026-01-01/2026-02-01",
                                                      "airloop.validation": "passed"})
    move(pl, "dev", v1)
    move(pl, "staging", v1)
    move(pl, "prod", v1)
    starts = monitored(pl, days=3)
    engine, config = pl.store.engine, pl.config
    store.insert_ignore(engine, store.alerts, [{
        "dedup_key": f"{config.name}:{rule}", "tenant": config.tenant, "pipeline": config.name,
        "interval_start": starts[i], "rule": rule, "severity": "high", "message": f"{rule} fired",
        "details": json.dumps({"observed": i}), "raised_at": starts[i] + timedelta(days=1)}
        for i, rule in enumerate(("drift", "volume"))])
    store.upsert(engine, store.retrain_requests, [{
        "tenant": config.tenant, "pipeline": config.name, "interval_start": starts[2], "as_of": "2026-03-04",
        "requested": True, "reason": "drift share 1.0"}])

    listed = overview.alerts(engine, config)
    assert [a["rule"] for a in listed] == ["volume", "drift"] and listed[0]["details"] == {"observed": 1}
    assert overview.alerts(engine, config, limit=1)[0]["rule"] == "volume"
    retrains = overview.retrain_requests(engine, config)
    assert retrains[0]["requested"] is True and retrains[0]["as_of"] == "2026-03-04"

    card = overview.pipeline_card(config, pl.store.settings, engine)
    assert card["champion"] == {"dev": v1, "staging": v1, "prod": v1}
    assert {e["name"]: e["metrics"] for e in card["environments"]}["prod"] == {"roc_auc": 0.82, "log_loss": 0.3}
    assert card["live"]["latest"]["interval_start"] == starts[2].isoformat()
    assert card["live"]["realized"]["performance"] == {"roc_auc": pytest.approx(0.78)}
    assert card["last_training"]["version"] == v1 and card["last_training"]["data_interval"] == "2026-01-01/2026-02-01"
    assert card["last_drift_check"]["drift_share"] == 1.0 and card["last_drift_check"]["report"].endswith("03T00:00:00Z")
    assert card["open_alerts"]["count"] == 2 and len(card["open_alerts"]["alerts"]) == 2
    assert card["ab_tests"] == [] and card["dag_ids"]["monitor"] == config.dag_id("monitor")
    timeline = overview.ledger_timeline(engine, config)
    assert [(r["environment"], r["to_version"]) for r in timeline] == [("dev", v1), ("staging", v1), ("prod", v1)]
    assert [r["environment"] for r in overview.ledger_timeline(engine, config, "staging")] == ["staging"]


def test_ab_tests_carry_their_latest_statistics(pl):
    from airloop.experiments import definition

    v1, v2 = pl.add_version(0.8), pl.add_version(0.82)
    engine, config = pl.store.engine, pl.config
    test = definition.create_test(engine, definition.ABTest(
        test_id=f"{config.name}-t1", pipeline=config.name, champion_version=v1, challenger_version=v2,
        success_metric=definition.default_metric(config), started_at=DAY))
    for day, diff in ((1, 0.01), (2, 0.03)):
        definition.save_evaluation(engine, {
            "test_id": test.test_id, "interval_start": DAY, "interval_end": DAY + timedelta(days=day),
            "decision": "continue", "champion": {"labelled_rows": 100 * day}, "challenger": {"labelled_rows": 90 * day},
            "comparison": {"difference": diff, "ci_low": diff - 0.02, "ci_high": diff + 0.02, "p_value": 0.3}})
    tests = overview.ab_tests(config, pl.store.settings, engine)
    assert len(tests) == 1 and tests[0]["status"] == "running" and tests[0]["evaluations"] == 2
    latest = tests[0]["latest"]
    assert latest["difference"] == pytest.approx(0.03) and latest["challenger_rows"] == 180
    assert latest["result"]["comparison"]["p_value"] == 0.3  # the stored evaluation, decoded
    card = overview.pipeline_card(config, pl.store.settings, engine)
    assert [t["test_id"] for t in card["ab_tests"]] == [test.test_id]


def test_validation_result_is_read_from_the_training_run(pl, tmp_path):
    v1, v2 = pl.add_version(0.8), pl.add_version(0.81)
    client = pl.store.client
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"success": True, "evaluated_expectations": 12}))
    (folder / "report.html").write_text("<html>validation passed</html>")
    run_id = client.get_model_version(pl.name, v1).run_id
    for name in ("result.json", "report.html"):
        client.log_artifact(run_id, str(folder / name), "validation")
    content, media = overview.validation_result(pl.config, pl.store.settings, v1)
    assert media == "application/json" and json.loads(content)["evaluated_expectations"] == 12
    content, media = overview.validation_result(pl.config, pl.store.settings, v1, "html")
    assert media == "text/html" and b"validation passed" in content
    with pytest.raises(overview.NotFound, match="no validation json"):
        overview.validation_result(pl.config, pl.store.settings, v2)
    with pytest.raises(ValueError, match="format"):
        overview.validation_result(pl.config, pl.store.settings, v1, "pdf")


def test_pipelines_overview_lists_every_pipeline_file(lifecycle_store):  # noqa: F811 - fixture
    listed = {p["name"]: p for p in overview.pipelines_overview(lifecycle_store.settings)}
    assert {"claims_fraud", "ticket_triage"} <= set(listed)
    claims = listed["claims_fraud"]
    assert claims["dag_ids"]["train"] == "claims_fraud__train" and claims["task"] == "binary_classification"
    assert set(claims["champion"]) == {"dev", "staging", "prod"}
