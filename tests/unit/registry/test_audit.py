"""The read side of the lifecycle: current versions, history, who served when, lineage and
version comparisons, on a real SQLite MLflow registry and the real monitoring store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airloop.registry import audit
from airloop.registry.lifecycle import promote_version, rollback
from airloop.registry.tags import LINEAGE_TAGS
from tests.unit.registry.lifecycle_store import lifecycle_store, pipe  # noqa: F401 - fixtures
from tests.unit.registry.test_lifecycle import serve


def test_current_versions_per_environment(pipe):
    client, config = pipe.store.client, pipe.config
    assert audit.current_versions(client, config) == {"dev": None, "staging": None, "prod": None}
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    promote_version(config, pipe.store.settings, v2, "dev", actor="tester")
    assert audit.current_versions(client, config) == {"dev": v2, "staging": v1, "prod": v1}
    # the serving environment is read from the champion alias, the one serving answers with
    client.set_registered_model_alias(pipe.name, "champion", v2)
    assert audit.current_versions(client, config)["prod"] == v2


def test_history_filters_by_environment_and_version(pipe):
    engine, config = pipe.store.engine, pipe.config
    v1, v2, v3 = (pipe.add_version(0.80 + i / 100) for i in range(3))
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    promote_version(config, pipe.store.settings, v3, "dev", actor="tester")
    rollback(config, pipe.store.settings, actor="ops", reason="bad v2")
    everything = audit.history(engine, config)
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)  # oldest first
    assert len(everything) == 8
    prod = audit.history(engine, config, environment="prod")
    assert [(r["action"], r["from_version"], r["to_version"]) for r in prod] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1)]
    assert {r["alias"] for r in prod} == {"champion"}
    dev = audit.history(engine, config, "dev")
    assert [r["to_version"] for r in dev] == [v1, v2, v3]
    # a version's rows: moves to it and away from it
    of_v2 = audit.history(engine, config, version=v2)
    assert [(r["environment"], r["action"], r["to_version"]) for r in of_v2] == [
        ("dev", "promote", v2), ("staging", "promote", v2), ("prod", "promote", v2), ("dev", "promote", v3),
        ("prod", "rollback", v1)]
    assert audit.history(engine, config, "staging", v3) == []
    with pytest.raises(ValueError, match="unknown environment 'qa'"):
        audit.history(engine, config, "qa")


def test_served_at_says_who_moved_which_version_and_why(pipe):
    engine, config = pipe.store.engine, pipe.config
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.82)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    assert audit.served_at(engine, config, "prod", before)["version"] is None
    now = audit.served_at(engine, config, "prod", datetime.now(timezone.utc) + timedelta(seconds=1))
    assert (now["version"], now["previous"], now["action"], now["actor"]) == (v2, v1, "promote", "training")
    assert now["environment"] == "prod" and now["ledger_id"] == pipe.ledger()[-1]["id"]
    # business time: the training run's as-of day
    week_one = audit.served_at(engine, config, "prod", datetime(2026, 3, 5, tzinfo=timezone.utc), business=True)
    assert week_one["version"] == v1
    assert audit.served_at(engine, config, "staging", datetime(2026, 3, 9, tzinfo=timezone.utc),
                           business=True)["version"] == v2


def test_lineage_gathers_tags_metrics_params_and_ledger(pipe):
    tags = {tag: f"value of {name}" for name, tag in LINEAGE_TAGS.items() if name not in ("validation_result",)}
    v1 = pipe.add_version(0.80, tags={"airloop.replaces": ""})
    v2 = pipe.add_version(0.83, train_rows=7000, pr_auc=0.41, params={"C": "0.5", "estimator": "logistic_regression"},
                          run_tags={"best.trial": "7", "best.cv_score": "0.81"}, tags=tags)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    out = audit.lineage(pipe.config, pipe.store.settings, v2)
    assert (out["model_name"], out["version"], out["train_rows"]) == (pipe.name, v2, 7000)
    assert out["aliases"] == ["champion", "dev", "prod", "staging"]
    assert out["metrics"] == {"roc_auc": 0.83, "pr_auc": 0.41}  # holdout_ prefix removed, train_rows apart
    assert out["params"] == {"C": "0.5", "estimator": "logistic_regression", "trial": "7", "cv_score": "0.81"}
    for name in LINEAGE_TAGS:
        assert out[name] == (None if name == "validation_result" else f"value of {name}"), name
    assert out["run_id"] and out["created"].endswith("+00:00")
    assert [(r["environment"], r["action"]) for r in out["ledger"]] == [
        ("dev", "promote"), ("staging", "promote"), ("prod", "promote")]
    json.dumps(out)  # JSON-ready (the audit API returns it)
    assert isinstance(out["ledger"][0]["recorded_at"], str)
    first = audit.lineage(pipe.config, pipe.store.settings, int(v1))
    assert first["replaced_champion"] is None  # an empty tag reads as nothing
    assert [r["to_version"] for r in first["ledger"]] == [v1, v1, v1, v2, v2, v2]  # moves to and away from v1
    with pytest.raises(audit.LifecycleError, match="version 42 not found"):
        audit.lineage(pipe.config, pipe.store.settings, 42)


def test_compare_versions_ranks_each_metric_in_its_own_direction(pipe):
    a = pipe.add_version(0.80, log_loss=0.40, latency_p95_ms=5.0, brier=0.10, rmse=1.0, rows=900, params={"C": "1.0"},
                         tags={"airloop.data_interval": "2026-01-04/2026-03-01", "airloop.estimator": "lr"})
    b = pipe.add_version(0.85, train_rows=7000, log_loss=0.45, latency_p95_ms=4.0, brier=0.10, pr_auc=0.3, rows=1200,
                         params={"C": "0.5", "max_iter": "300"}, tags={"airloop.estimator": "lr"})
    result = audit.compare_versions(pipe.config, pipe.store.settings, a, b)
    metrics = result["metrics"]
    assert (result["a"], result["b"]) == (a, b)
    assert metrics["roc_auc"]["delta"] == pytest.approx(0.05) and metrics["roc_auc"]["better"] == b  # higher wins
    assert metrics["log_loss"]["delta"] == pytest.approx(0.05) and metrics["log_loss"]["better"] == a  # lower wins
    # counts and latency are figures, never ranked as quality (core.metrics.is_quality_metric)
    assert "latency_p95_ms" not in metrics and "rows" not in metrics
    assert result["figures"]["latency_p95_ms"] == {"a": 5.0, "b": 4.0, "delta": pytest.approx(-1.0)}
    assert result["figures"]["rows"] == {"a": 900.0, "b": 1200.0, "delta": 300.0}
    assert metrics["brier"] == {"a": 0.10, "b": 0.10, "delta": 0.0, "better": None}  # a tie
    assert metrics["rmse"] == {"a": 1.0, "b": None, "delta": None, "better": None}
    assert metrics["pr_auc"]["better"] is None
    assert result["params"]["C"] == {"a": "1.0", "b": "0.5", "same": False}
    assert result["params"]["max_iter"] == {"a": None, "b": "300", "same": False}
    assert result["data"]["train_rows"] == {"a": 6000, "b": 7000}
    assert result["data"]["data_interval"] == {"a": "2026-01-04/2026-03-01", "b": None}
    assert result["data"]["estimator"] == {"a": "lr", "b": "lr"}

    # swapped: the same winners (by version), the delta's sign flips
    swapped = audit.compare_versions(pipe.config, pipe.store.settings, b, a, log_artifact=False)
    winners = {m: row["better"] for m, row in metrics.items()}
    assert {m: row["better"] for m, row in swapped["metrics"].items()} == winners
    assert swapped["metrics"]["roc_auc"]["delta"] == pytest.approx(-0.05) and swapped["artifact"] is None


def test_compare_versions_logs_json_and_markdown_on_the_newer_run(pipe):
    a, b = pipe.add_version(0.80, log_loss=0.40), pipe.add_version(0.85, log_loss=0.45)
    result = audit.compare_versions(pipe.config, pipe.store.settings, a, b)
    client = pipe.store.client
    run_id = client.get_model_version(pipe.name, b).run_id
    assert result["artifact"] == f"runs:/{run_id}/comparisons/v{a}_vs_v{b}.md"
    assert sorted(Path(f.path).name for f in client.list_artifacts(run_id, "comparisons")) == [
        f"v{a}_vs_v{b}.json", f"v{a}_vs_v{b}.md"]
    folder = Path(client.download_artifacts(run_id, "comparisons", str(pipe.store.tmp / f"dl-{pipe.config.name}")))
    assert json.loads((folder / f"v{a}_vs_v{b}.json").read_text())["metrics"]["log_loss"]["better"] == a
    markdown = (folder / f"v{a}_vs_v{b}.md").read_text()
    assert markdown == audit.comparison_markdown(result)
    assert f"| roc_auc | 0.8000 | 0.8500 | 0.0500 | v{b} |" in markdown
    assert f"| log_loss | 0.4000 | 0.4500 | 0.0500 | v{a} |" in markdown
    assert "| train_rows | 6000 | 6000 |" in markdown
    assert client.list_artifacts(client.get_model_version(pipe.name, a).run_id, "comparisons") == []
