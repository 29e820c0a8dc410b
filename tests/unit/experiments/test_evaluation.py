"""A/B tests and shadow mode: sticky routing, the statistics, the store, and real serving.

* routing: the same key always gets the same variant (also in another process with another hash
  seed), and the observed split of 20k keys is within tolerance of ``traffic_pct``;
* statistics: with equal models no winner is declared more often than ``alpha`` (plus a binomial
  tolerance) over 200 seeded repeats, for each test used (DeLong independent and paired,
  two-proportion, Welch, paired t); a truly better challenger is found (power); the
  fixed-horizon rules (continue, max duration, guardrail);
* store: the definitions and results on SQLite and PostgreSQL (idempotent create / evaluate /
  conclude / stop, one running test per pipeline and tenant);
* serving: a real MLflow registry with two versions, routing by key, per-variant logging,
  fallback, shadow rows written after the response, refresh behind the admin token, and the
  evaluation of what was really served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline

from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings
from airloop.data.simulator import generate_day
from airloop.experiments import definition, routing, stats
from airloop.experiments import evaluation as abtest_evaluation
from airloop.experiments.definition import ABTest, ABTestError
from airloop.experiments.stats import Samples
from airloop.serving.app import create_app
from tests.pg import fresh_database
from tests.unit.serving.test_app import AUTH, PIPELINE, TENANT_AUTH, _log_version, _preprocessor, _records, _settings

START = datetime(2026, 3, 2, tzinfo=timezone.utc)
REPEATS = 200


# --------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------


def test_assignment_is_sticky_and_the_split_matches_traffic_pct() -> None:
    keys = [f"customer-{i}" for i in range(20_000)]
    first = [routing.assign_variant(k, "t1", 30.0) for k in keys]
    assert first == [routing.assign_variant(k, "t1", 30.0) for k in keys]  # sticky
    share = first.count("challenger") / len(keys)
    assert abs(share - 0.30) < 0.015, share  # binomial sd 0.0032: about 4.6 sd
    # Another test id reshuffles independently: agreement ~ 0.3^2 + 0.7^2 = 0.58.
    other = [routing.assign_variant(k, "t2", 30.0) for k in keys]
    agreement = np.mean([a == b for a, b in zip(first, other)])
    assert 0.56 < agreement < 0.60, agreement
    # Raising the percentage only moves keys from champion to challenger (monotone in the hash).
    wider = [routing.assign_variant(k, "t1", 60.0) for k in keys]
    assert all(w == "challenger" for f, w in zip(first, wider) if f == "challenger")
    assert abs(wider.count("challenger") / len(keys) - 0.60) < 0.015


def test_assignment_is_the_same_in_another_process() -> None:
    keys = [f"k{i}" for i in range(300)]
    here = [routing.assign_variant(k, "claims.default.v1-v2", 50.0) for k in keys]
    code = ("import json, sys; from airloop.experiments.routing import assign_variant; "
            "print(json.dumps([assign_variant(f'k{i}', 'claims.default.v1-v2', 50.0) for i in range(300)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == here


def test_request_keys_by_field() -> None:
    records = [{"region": "north"}, {"region": None}, {"region": "north"}]
    ids = ["r1", "r2", "r3"]
    assert routing.request_keys("request_id", records, ids) == ids
    assert routing.request_keys("region", records, ids) == ["north", "r2", "north"]  # null: the request id
    assert routing.request_keys("header", records, ids, "user-7") == ["user-7"] * 3
    assert routing.request_keys("header", records, ids, None) == ids
    assert routing.request_keys("customer_age", [{"customer_age": 41}], ["x"]) == ["41"]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _scores(rng: np.random.Generator, y: np.ndarray, separation: float) -> np.ndarray:
    """Scores of a model whose quality grows with ``separation`` (probabilities in (0, 1))."""
    return 1.0 / (1.0 + np.exp(-(separation * (2 * y - 1) + rng.normal(size=len(y)) - 0.8)))


def _labels(rng: np.random.Generator, n: int, prevalence: float = 0.3) -> np.ndarray:
    return (rng.random(n) < prevalence).astype(int)


def _samples(metric: str, y: np.ndarray, s: np.ndarray) -> Samples:
    ids = np.array([f"r{i}" for i in range(len(y))], dtype=object)
    if metric == "roc_auc":
        return Samples(ids, y=y, score=s)
    if metric == "accuracy":
        return Samples(ids, values=((s >= 0.5).astype(int) == y).astype(float))
    if metric == "log_loss":
        return Samples(ids, values=-(y * np.log(s) + (1 - y) * np.log(1 - s)))
    raise AssertionError(metric)


def _trial(metric: str, paired: bool, seed: int, sep_champion: float, sep_challenger: float,
           n: int = 1000) -> tuple[Samples, Samples]:
    rng = np.random.default_rng(seed)
    y_a = _labels(rng, n)
    y_b = y_a if paired else _labels(rng, n)
    return (_samples(metric, y_a, _scores(rng, y_a, sep_champion)),
            _samples(metric, y_b, _scores(rng, y_b, sep_challenger)))


@pytest.mark.parametrize(
    ("metric", "paired", "alpha", "method"),
    [
        ("roc_auc", False, 0.05, "delong"),
        ("roc_auc", False, 0.10, "delong"),
        ("roc_auc", True, 0.05, "delong_paired"),
        ("accuracy", False, 0.05, "two_proportion_z_newcombe"),
        ("accuracy", True, 0.05, "paired_t"),
        ("log_loss", False, 0.05, "welch_t"),
    ],
)
def test_equal_models_rarely_declare_a_winner(metric: str, paired: bool, alpha: float, method: str) -> None:
    """False-positive rate over seeded repeats of equal models: at most alpha plus a binomial
    tolerance (about 2.3 sd for 200 repeats), and not absurdly conservative either."""
    winners, covered = 0, 0
    for seed in range(REPEATS):
        a, b = _trial(metric, paired, seed, 1.0, 1.0)
        comparison = stats.compare(metric, a, b, alpha, paired=paired)
        assert comparison.method == method
        winners += stats.significant_winner(metric, comparison, alpha) is not None
        covered += comparison.ci_low <= 0.0 <= comparison.ci_high  # the true difference is 0
    tolerance = 2.3 * np.sqrt(alpha * (1 - alpha) / REPEATS)
    assert winners / REPEATS <= alpha + tolerance, winners
    assert winners / REPEATS >= alpha / 5, winners  # a test that never fires would pass the line above
    assert covered / REPEATS >= 1 - alpha - tolerance, covered


@pytest.mark.parametrize(("metric", "paired"), [("roc_auc", False), ("roc_auc", True), ("accuracy", False),
                                                ("log_loss", False)])
def test_a_truly_better_challenger_is_found(metric: str, paired: bool) -> None:
    """Power: a moderate improvement (AUC about +0.04, accuracy about +3 points at 1000 rows per
    variant) is found in at least 80% of 50 seeded repeats (about 92-100% expected)."""
    wins = 0
    for seed in range(50):
        a, b = _trial(metric, paired, 10_000 + seed, 0.8, 1.1)
        comparison = stats.compare(metric, a, b, 0.05, paired=paired)
        wins += stats.significant_winner(metric, comparison, 0.05) == "challenger"
        assert stats.significant_winner(metric, stats.compare(metric, b, a, 0.05, paired=paired), 0.05) != \
            "challenger"  # swapped: never the worse one
    assert wins >= 40, wins


def test_delong_and_newcombe_match_references() -> None:
    rng = np.random.default_rng(3)
    y = _labels(rng, 600)
    s_a, s_b = _scores(rng, y, 0.7), _scores(rng, y, 0.9)
    auc_a, auc_b, diff, p, low, high = stats.delong(y, s_a, None, s_b, 0.05)
    assert auc_a == pytest.approx(roc_auc_score(y, s_a), abs=1e-12)
    assert auc_b == pytest.approx(roc_auc_score(y, s_b), abs=1e-12)
    assert low < diff < high and 0 < p < 1
    # Newcombe (1998), method 10, example: 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339].
    diff, p, low, high = stats.two_proportions(48, 80, 56, 70, 0.05)
    assert (round(diff, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)


def _test(**overrides: Any) -> ABTest:
    values = dict(test_id="t-1", pipeline=PIPELINE, champion_version="1", challenger_version="2",
                  success_metric="roc_auc", min_samples=500, max_duration_days=10, started_at=START)
    return ABTest(**{**values, **overrides})


def _frame(rng: np.random.Generator, n: int, separation: float, prefix: str, errors: int = 0) -> pd.DataFrame:
    """Served rows of one variant as :func:`abtest.load_variant` returns them, all labelled."""
    y = _labels(rng, n)
    s = _scores(rng, y, separation)
    frame = pd.DataFrame({"request_id": [f"{prefix}{i}" for i in range(n)], "status": "ok",
                          "latency_ms": rng.gamma(2.0, 2.0, n), "prediction": (s >= 0.5).astype(int).tolist(),
                          "score": s, "label": y.tolist()})
    frame.loc[frame.index[:errors], ["status", "prediction", "score", "label"]] = ["error", None, np.nan, None]
    return frame


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    return load_pipeline_config(PIPELINE, _settings(tmp_path_factory.mktemp("config"), "sqlite://"))


def test_decision_rules(config: PipelineConfig) -> None:
    rng = np.random.default_rng(7)
    champion, challenger = _frame(rng, 400, 0.6, "a"), _frame(rng, 400, 1.2, "b")
    test = _test(min_samples=500)
    early = abtest_evaluation.evaluate_frames(config, test, champion, challenger, START, START + timedelta(days=3))
    assert early["decision"] == "continue" and not early["final"]
    assert early["challenger"]["labelled_rows"] == 400 and early["comparison"]["p_value"] is not None
    late = abtest_evaluation.evaluate_frames(config, test, champion, challenger, START, START + timedelta(days=10))
    assert late["decision"] == "keep_champion" and "max duration" in late["reason"]

    horizon = abtest_evaluation.evaluate_frames(config, _test(min_samples=400), champion, challenger, START,
                                     START + timedelta(days=3))
    assert horizon["decision"] == "promote_challenger" and horizon["winner"] == "challenger"
    assert horizon["comparison"]["difference"] > 0 and horizon["comparison"]["ci_low"] > 0
    assert horizon["challenger"]["quality"]["roc_auc"] == pytest.approx(horizon["comparison"]["challenger_value"])
    assert horizon["champion"]["latency_p95_ms"] > horizon["champion"]["latency_p50_ms"] > 0

    worse = abtest_evaluation.evaluate_frames(config, _test(min_samples=400), challenger, champion, START,
                                   START + timedelta(days=3))
    assert worse["decision"] == "keep_champion" and worse["winner"] == "champion"

    # The guardrail: better on labelled rows but failing far more often.
    failing = _frame(np.random.default_rng(8), 500, 1.2, "c", errors=60)
    guarded = abtest_evaluation.evaluate_frames(config, _test(min_samples=400), _frame(rng, 500, 0.6, "d"), failing, START,
                                     START + timedelta(days=3))
    assert guarded["winner"] == "challenger" and guarded["guardrail"]["blocked"]
    assert guarded["decision"] == "keep_champion" and "error rate" in guarded["reason"]
    assert guarded["challenger"]["error_rate"] == pytest.approx(60 / 500)


def test_equal_models_decisions_through_the_rules(config: PipelineConfig) -> None:
    """The whole rule set at the horizon, on equal models: false promotions stay below alpha / 2
    (plus tolerance) and any winner below alpha (plus tolerance)."""
    test = _test(min_samples=800, alpha=0.05)
    decisions = []
    for seed in range(REPEATS):
        a, b = _trial("roc_auc", False, 50_000 + seed, 1.0, 1.0, n=800)
        comparison = stats.compare("roc_auc", a, b, test.alpha)
        decisions.append(abtest_evaluation.decide(test, comparison, len(a), len(b), START + timedelta(days=2))[0])
    assert set(decisions) <= {"promote_challenger", "keep_champion"}  # the horizon always decides
    promoted = decisions.count("promote_challenger") / REPEATS
    assert promoted <= 0.025 + 2.3 * np.sqrt(0.025 * 0.975 / REPEATS), promoted


def test_definition_is_validated(config: PipelineConfig) -> None:
    with pytest.raises(ValueError, match="same version"):
        _test(challenger_version="1")
    with pytest.raises(ValueError, match="success_metric"):
        _test(success_metric="f1")
    with pytest.raises(ValueError, match="needs A/B mode"):
        _test(mode="shadow", success_metric="conversion")
    with pytest.raises(ABTestError, match="key_field"):
        definition.check_test(config, _test(key_field="favourite_colour"))
    with pytest.raises(ABTestError, match="does not fit"):
        definition.check_test(config, _test(success_metric="rmse"))
    definition.check_test(config, _test(key_field="region"))
    assert definition.default_metric(config) == "roc_auc"


# --------------------------------------------------------------------------------------------
# Store: SQLite and PostgreSQL
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def monitoring_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield _settings(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}",
                        AIRLOOP_MONITORING_DB_URI=f"sqlite:///{tmp_path / 'monitoring.db'}")
        return
    with fresh_database() as uri:
        yield _settings(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", AIRLOOP_MONITORING_DB_URI=uri)


def _insert_served(engine: sa.Engine, frame: pd.DataFrame, variant: str, version: str, ts: datetime,
                   table: sa.Table = store.predictions, label_ts: datetime | None = None) -> None:
    """Store a variant's rows as serving and POST /feedback would (labels of ok rows)."""
    rows = [{"request_id": r.request_id, "ts": ts + timedelta(seconds=i), "tenant": "default", "pipeline": PIPELINE,
             "model_name": PIPELINE, "model_version": version, "variant": variant, "features": "{}",
             "prediction": None if r.prediction is None else json.dumps(r.prediction),
             "score": None if pd.isna(r.score) else float(r.score), "latency_ms": float(r.latency_ms),
             "status": r.status} for i, r in enumerate(frame.itertuples())]
    store.insert_ignore(engine, table, rows)
    labels = [{"request_id": r.request_id, "tenant": "default", "pipeline": PIPELINE, "label": json.dumps(r.label),
               "label_ts": label_ts or ts + timedelta(days=1), "received_at": ts + timedelta(days=1)}
              for r in frame.itertuples() if r.label is not None]
    store.upsert(engine, store.ground_truth, labels)


def test_store_lifecycle_promotes_a_better_challenger(monitoring_settings: Settings, config: PipelineConfig) -> None:
    settings = monitoring_settings
    started = abtest_evaluation.start_test(config, settings, START, champion_version=1, challenger_version=2, traffic_pct=20,
                                min_samples=600, max_duration_days=14)
    test_id = started["test_id"]
    assert test_id == f"{PIPELINE}.default.v1-v2.20260302T000000"
    assert started["status"] == "running" and started["success_metric"] == "roc_auc"
    # Idempotent: the same start again is the same test; another running test is refused.
    assert abtest_evaluation.start_test(config, settings, START, champion_version=1, challenger_version=2, traffic_pct=20,
                             min_samples=600, max_duration_days=14) == started
    with pytest.raises(ABTestError, match="different definition"):
        abtest_evaluation.start_test(config, settings, START, champion_version=1, challenger_version=2, traffic_pct=30,
                          min_samples=600, max_duration_days=14)
    with pytest.raises(ABTestError, match="already runs test"):
        abtest_evaluation.start_test(config, settings, START, champion_version=1, challenger_version=3)

    engine = store.get_engine(settings.monitoring_db_uri)
    rng = np.random.default_rng(11)
    _insert_served(engine, _frame(rng, 700, 0.6, "a", errors=5), "champion", "1", START + timedelta(hours=1))
    _insert_served(engine, _frame(rng, 700, 1.2, "b", errors=5), "challenger", "2", START + timedelta(hours=2))
    # Rows the test must not count: before the start, another version, another tenant's variant.
    _insert_served(engine, _frame(rng, 50, 3.0, "x"), "champion", "1", START - timedelta(days=1))
    _insert_served(engine, _frame(rng, 50, 3.0, "y"), "challenger", "3", START + timedelta(hours=3))

    day1 = abtest_evaluation.evaluate_test(config, settings, test_id, START, START + timedelta(days=1))
    assert day1["decision"] == "continue"  # labels arrive a day later: none known yet
    assert day1["champion"]["labelled_rows"] == 0 and day1["champion"]["served_rows"] == 700
    assert abtest_evaluation.conclude_test(config, settings, test_id, START + timedelta(days=1))["changed"] is False

    end = START + timedelta(days=2)
    day2 = abtest_evaluation.evaluate_test(config, settings, test_id, START + timedelta(days=1), end)
    assert (day2["champion"]["labelled_rows"], day2["challenger"]["labelled_rows"]) == (695, 695)
    assert day2["champion"]["errors"] == 5 and day2["champion"]["served_rows"] == 700
    assert day2["decision"] == "promote_challenger", day2["reason"]
    assert abtest_evaluation.evaluate_test(config, settings, test_id, START + timedelta(days=1), end) == day2  # re-run
    with engine.connect() as conn:
        stored = conn.execute(sa.select(store.ab_test_results)).mappings().all()
    assert len(stored) == 2 and {r["decision"] for r in stored} == {"continue", "promote_challenger"}

    outcome = abtest_evaluation.conclude_test(config, settings, test_id, end)
    assert outcome | {"decided_at": None} == {
        "test_id": test_id, "status": "concluded", "decision": "promote_challenger", "decided_at": None,
        "promote": True, "champion_version": "1", "challenger_version": "2", "changed": True}
    assert abtest_evaluation.conclude_test(config, settings, test_id, end)["changed"] is False
    assert abtest_evaluation.stop_test(config, settings, test_id, end)["decision"] == "promote_challenger"  # ended already
    test = definition.get_test(engine, test_id)
    assert test.status == "concluded" and test.decided_at == end and test.result["decision"] == "promote_challenger"
    # The window of an ended test stops at its decision.
    assert abtest_evaluation.window(test, end + timedelta(days=5)) == (START, end)
    # A new test may start once the first has ended.
    second = abtest_evaluation.start_test(config, settings, end, champion_version=2, challenger_version=3, mode="shadow")
    assert [t.test_id for t in definition.running_tests(engine, PIPELINE)] == [second["test_id"]]
    stopped = abtest_evaluation.stop_test(config, settings, second["test_id"], end + timedelta(days=1), "bad idea")
    assert stopped["status"] == "stopped" and stopped["decision"] == "stopped" and stopped["changed"]
    assert definition.running_tests(engine, PIPELINE) == []


def test_shadow_evaluation_pairs_rows_by_request(tmp_path: Path, config: PipelineConfig) -> None:
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}",
                         AIRLOOP_MONITORING_DB_URI=f"sqlite:///{tmp_path / 'monitoring.db'}")
    started = abtest_evaluation.start_test(config, settings, START, champion_version=1, challenger_version=2, mode="shadow",
                                success_metric="accuracy", min_samples=300)
    engine = store.get_engine(settings.monitoring_db_uri)
    rng = np.random.default_rng(5)
    champion = _frame(rng, 400, 0.5, "r")
    challenger = champion.copy()
    flip = rng.random(400) < 0.15  # the challenger corrects 15% of the rows the champion gets wrong
    wrong = np.array([p != lab for p, lab in zip(champion["prediction"], champion["label"])])
    challenger["prediction"] = np.where(flip & wrong, champion["label"], champion["prediction"]).tolist()
    _insert_served(engine, champion, "champion", "1", START + timedelta(hours=1))
    _insert_served(engine, challenger.iloc[:380], "shadow", "2", START + timedelta(hours=1),
                   table=store.shadow_predictions)
    result = abtest_evaluation.evaluate_test(config, settings, started["test_id"], START, START + timedelta(days=3))
    assert result["paired"] and result["comparison"]["method"] == "paired_t"
    assert result["champion"]["labelled_rows"] == result["challenger"]["labelled_rows"] == 380
    assert result["decision"] == "promote_challenger", result["reason"]
    acc_a = accuracy_score(champion["label"][:380], champion["prediction"][:380])
    assert result["comparison"]["champion_value"] == pytest.approx(acc_a)


# --------------------------------------------------------------------------------------------
# Serving with two real registered versions
# --------------------------------------------------------------------------------------------


@dataclass
class TwoVersions:
    tmp: Path
    uri: str
    config: PipelineConfig
    lr: Pipeline
    hgb: Pipeline
    frame: pd.DataFrame  # features + target of a later day


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> TwoVersions:
    """A SQLite MLflow store: claims_fraud v1 (logistic regression, champion), v2 (gradient boosting)."""
    tmp = tmp_path_factory.mktemp("abtest")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    config = load_pipeline_config(PIPELINE, _settings(tmp, uri))
    features = list(config.features)
    train = pd.concat([generate_day(date(2026, 1, 5)), generate_day(date(2026, 1, 6))], ignore_index=True)
    X, y = train[features], train[config.target]
    lr = Pipeline([("pre", _preprocessor(config)), ("model", LogisticRegression(max_iter=500))]).fit(X, y)
    hgb = Pipeline([("pre", _preprocessor(config)),
                    ("model", HistGradientBoostingClassifier(max_iter=15, random_state=0))]).fit(X, y)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(f"airloop/{PIPELINE}", artifact_location=str(tmp / "artifacts"))
    client.create_registered_model(PIPELINE)
    for model in (lr, hgb):
        _log_version(client, uri, experiment_id, model, X)
    client.set_registered_model_alias(PIPELINE, "champion", "1")
    client.set_registered_model_alias(PIPELINE, "challenger", "2")
    frame = generate_day(date(2026, 2, 2)).head(300).reset_index(drop=True)
    return TwoVersions(tmp, uri, config, lr, hgb, frame)


def _table(engine: sa.Engine, table: sa.Table) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["request_id"]: dict(r) for r in conn.execute(sa.select(table)).mappings()}


def test_serving_routes_by_key_logs_variants_and_evaluates(tmp_path: Path, two_versions: TwoVersions) -> None:
    tv = two_versions
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, tv.uri, AIRLOOP_MONITORING_DB_URI=uri)
    features = list(tv.config.features)
    records = _records(tv.frame[features])
    ids = [f"claim-{i}" for i in range(len(records))]
    served_at = START + timedelta(hours=5)
    with TestClient(create_app(settings), headers=TENANT_AUTH) as client:
        assert client.get("/abtest").json() == {
            "enabled": True, "champion": {"name": PIPELINE, "version": "1", "alias": "champion"}, "tests": []}
        test = abtest_evaluation.start_test(tv.config, settings, START, traffic_pct=40, min_samples=100)  # v1 vs v2 by alias
        assert client.post("/abtest/refresh").status_code == 401
        refreshed = client.post("/abtest/refresh", headers=AUTH)
        assert refreshed.status_code == 200, refreshed.text
        assert [t["test_id"] for t in refreshed.json()["tests"]] == [test["test_id"]]
        info = client.get("/abtest").json()["tests"][0]
        assert info["challenger_model"] == {"name": PIPELINE, "version": "2", "alias": None} and "warning" not in info

        replay = {**AUTH, "X-Airloop-Replay-Interval": f"{START.isoformat()}/{(START + timedelta(days=1)).isoformat()}"}
        response = client.post("/predict", json={"records": records, "request_ids": ids,
                                                 "event_ts": [served_at.isoformat()] * len(records)}, headers=replay)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["abtest"] == test["test_id"] and body["model"]["version"] == "1"
        items = body["predictions"]
        expected = [routing.assign_variant(rid, test["test_id"], 40.0) for rid in ids]
        assert [p["variant"] for p in items] == expected
        assert [p["request_id"] for p in items] == ids
        assert 0.25 < expected.count("challenger") / len(ids) < 0.55
        served = np.array([p["probabilities"]["1"] for p in items])
        by_model = np.where(np.array(expected) == "challenger", tv.hgb.predict_proba(tv.frame[features])[:, 1],
                            tv.lr.predict_proba(tv.frame[features])[:, 1])
        np.testing.assert_allclose(served, by_model, atol=1e-9)
        assert {p["model_version"] for p in items if p["variant"] == "challenger"} == {"2"}
        # The same key gets the same variant in a single-record request too.
        again = client.post("/predict", json={"records": records[:1], "request_ids": ["claim-0-again"]})
        assert again.json()["predictions"][0]["variant"] == routing.assign_variant("claim-0-again",
                                                                                test["test_id"], 40.0)
        # Labels come back, then the evaluation reads exactly what was served.
        labels = [{"request_id": rid, "label": int(v), "label_ts": (served_at + timedelta(days=1)).isoformat()}
                  for rid, v in zip(ids, tv.frame[tv.config.target])]
        assert client.post("/feedback", json={"items": labels}).json()["written"] == len(ids)
        assert client.app.state.prediction_logger.flush(10)
        assert client.get("/metrics").text.count('airloop_serving_ab_records_total{variant="challenger"}') == 1

    engine = store.get_engine(uri)
    rows = _table(engine, store.predictions)
    assert {rid: (rows[rid]["variant"], rows[rid]["model_version"]) for rid in ids} == {
        rid: (v, "2" if v == "challenger" else "1") for rid, v in zip(ids, expected)}
    evaluation = abtest_evaluation.evaluate_test(tv.config, settings, test["test_id"], START, START + timedelta(days=2))
    truth = tv.frame[tv.config.target].to_numpy()
    for variant in ("champion", "challenger"):
        mask = np.array(expected) == variant
        assert evaluation[variant]["labelled_rows"] == mask.sum()
        assert evaluation[variant]["quality"]["roc_auc"] == pytest.approx(roc_auc_score(truth[mask], served[mask]))
    assert evaluation["comparison"]["champion_value"] == pytest.approx(
        roc_auc_score(truth[np.array(expected) == "champion"], served[np.array(expected) == "champion"]))
    assert evaluation["decision"] in {"promote_challenger", "keep_champion"}  # >= 100 labelled rows each


def test_serving_routes_by_feature_and_falls_back(tmp_path: Path, two_versions: TwoVersions,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tv = two_versions
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, tv.uri, AIRLOOP_MONITORING_DB_URI=uri)
    records = _records(tv.frame[list(tv.config.features)].head(80))
    test = abtest_evaluation.start_test(tv.config, settings, START, key_field="region", traffic_pct=50)
    with TestClient(create_app(settings), headers=TENANT_AUTH) as client:  # picked up at startup
        assert [t["test_id"] for t in client.get("/abtest").json()["tests"]] == [test["test_id"]]
        items = client.post("/predict", json={"records": records}).json()["predictions"]
        by_region: dict[str, set[str]] = {}
        for record, item in zip(records, items):
            by_region.setdefault(record["region"], set()).add(item["variant"])
        assert all(len(v) == 1 for v in by_region.values())  # sticky by region
        assert {r: v.pop() for r, v in by_region.items()} == {
            r: routing.assign_variant(r, test["test_id"], 50.0) for r in by_region}
        # Another tenant is not in the test.
        other = client.post("/predict", json=records[0], headers={**AUTH, "X-Tenant": "acme"}).json()
        assert "variant" not in other["predictions"][0] and "abtest" not in other

        challenger = client.app.state.manager.tests["default"].challenger

        def broken(frame: pd.DataFrame) -> list[dict[str, Any]]:
            raise RuntimeError("challenger exploded")

        monkeypatch.setattr(challenger.predictor, "predict", broken)
        fallback = client.post("/predict", json={"records": records})
        assert fallback.status_code == 200
        variants = {p["variant"] for p in fallback.json()["predictions"]}
        assert variants == {"champion", "fallback"}
        np.testing.assert_allclose([p["probabilities"]["1"] for p in fallback.json()["predictions"]],
                                   tv.lr.predict_proba(tv.frame[list(tv.config.features)].head(80))[:, 1], atol=1e-9)
        assert client.app.state.prediction_logger.flush(10)
    rows = list(_table(store.get_engine(uri), store.predictions).values())
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["variant"] == "challenger" and errors[0]["model_version"] == "2"
    assert "challenger exploded" in errors[0]["error"]


def test_shadow_mode_answers_with_the_champion_and_logs_the_challenger(
    tmp_path: Path, two_versions: TwoVersions, monkeypatch: pytest.MonkeyPatch
) -> None:
    tv = two_versions
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, tv.uri, AIRLOOP_MONITORING_DB_URI=uri)
    features = list(tv.config.features)
    records = _records(tv.frame[features].head(50))
    ids = [f"s-{i}" for i in range(50)]
    with TestClient(create_app(settings), headers=TENANT_AUTH) as client:
        test = abtest_evaluation.start_test(tv.config, settings, START, mode="shadow", min_samples=30)
        assert client.post("/abtest/refresh", headers=AUTH).status_code == 200
        response = client.post("/predict", json={"records": records, "request_ids": ids})
        assert response.status_code == 200
        items = response.json()["predictions"]
        assert all("variant" not in p for p in items) and "abtest" not in response.json()
        np.testing.assert_allclose([p["probabilities"]["1"] for p in items],
                                   tv.lr.predict_proba(tv.frame[features].head(50))[:, 1], atol=1e-9)
        # A failing shadow never fails the request.
        challenger = client.app.state.manager.tests["default"].challenger
        monkeypatch.setattr(challenger.predictor, "predict", lambda frame: 1 / 0)
        assert client.post("/predict", json=records[0]).status_code == 200
        assert client.app.state.shadow_logger.flush(10) and client.app.state.prediction_logger.flush(10)
        # Stopping the test and refreshing ends the shadow scoring.
        abtest_evaluation.stop_test(tv.config, settings, test["test_id"], START + timedelta(days=1))
        assert client.post("/abtest/refresh", headers=AUTH).json() == {"tests": [], "errors": {}}
        client.post("/predict", json=records[1])
        assert client.app.state.shadow_logger.stats().rows_logged == 51
    engine = store.get_engine(uri)
    shadow = _table(engine, store.shadow_predictions)
    ok = {rid: r for rid, r in shadow.items() if r["status"] == "ok"}
    assert sorted(ok) == sorted(ids)
    assert {(r["variant"], r["model_version"]) for r in ok.values()} == {("shadow", "2")}
    np.testing.assert_allclose([ok[rid]["score"] for rid in ids],
                               tv.hgb.predict_proba(tv.frame[features].head(50))[:, 1], atol=1e-9)
    failed = [r for r in shadow.values() if r["status"] == "error"]
    assert len(failed) == 1 and "ZeroDivisionError" in failed[0]["error"]
    served = _table(engine, store.predictions)
    assert set(ids) <= set(served) and {served[rid]["variant"] for rid in ids} == {"champion"}


def test_refresh_reports_a_challenger_that_cannot_load(tmp_path: Path, two_versions: TwoVersions) -> None:
    tv = two_versions
    settings = _settings(tmp_path, tv.uri, AIRLOOP_MONITORING_DB_URI=f"sqlite:///{tmp_path / 'monitoring.db'}")
    test = abtest_evaluation.start_test(tv.config, settings, START, champion_version=1, challenger_version=9)
    with TestClient(create_app(settings), headers=TENANT_AUTH) as client:
        response = client.post("/abtest/refresh", headers=AUTH)
        assert response.status_code == 409
        assert "not found" in response.json()["errors"][test["test_id"]]
        assert client.get("/abtest").json()["tests"] == []
        assert client.post("/predict", json=_records(tv.frame[list(tv.config.features)].head(1))[0]).status_code == 200
    with TestClient(create_app(settings, log_predictions=False), headers=TENANT_AUTH) as client:
        assert client.post("/abtest/refresh", headers=AUTH).status_code == 409
        assert client.get("/abtest").json()["enabled"] is False
