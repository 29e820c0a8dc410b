"""Monitoring: Evidently drift verdicts, performance, operations, alert rules and the per-interval
computation against a real monitoring store (SQLite in tmp_path; PostgreSQL too when reachable).

Data: the simulator's claims. The reference is four weeks before the covariate shift
(2026-04-20), typed as served, with a deterministic score; "stable" days follow it directly,
"shifted" days come after 2026-04-20 (larger claims, younger customers, more online/app).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.core.settings import ConfigError
from airloop.data import features as mon_features
from airloop.data.simulator import generate_day
from airloop.monitoring import drift as mon_drift
from airloop.monitoring import driftstats, interval, performance, rules, traffic
from airloop.monitoring import reference as mon_reference
from airloop.monitoring.reference import SCORE_COLUMN
from tests.pg import fresh_database

REFERENCE_DAYS = [date(2026, 3, 11) + timedelta(days=i) for i in range(28)]  # 03-11 .. 04-07
STABLE_DAYS = [date(2026, 4, 8) + timedelta(days=i) for i in range(10)]  # 04-08 .. 04-17
SHIFTED_DAY = date(2026, 4, 25)
SHIFTED_FEATURES = {"claim_amount", "customer_age", "channel"}


def utc(day: date, hour: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def score(features: pd.DataFrame) -> np.ndarray:
    """A deterministic stand-in for a model's fraud probability."""
    z = (np.log(features["claim_amount"].clip(lower=1)) - 8.2) / 0.9
    return 1 / (1 + np.exp(-(-1.5 + 1.1 * z + 0.9 * (features["days_to_report"] > 14)
                             + 0.4 * (features["channel"] == "online"))))


def served(config, days) -> pd.DataFrame:
    """Features typed as serving types them, plus the score column."""
    raw = pd.concat([generate_day(d) for d in days], ignore_index=True)
    out = mon_features.coerce_features(config, raw, fill_missing=True)
    out[SCORE_COLUMN] = score(out)
    return out


def with_drift(config, **drift):
    """A copy of ``config`` with ``monitoring.drift`` fields replaced (re-validated)."""
    raw = config.model_dump(mode="json")
    raw["monitoring"]["drift"].update(drift)
    return type(config).model_validate(raw)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def config(claims_config):
    return claims_config


@pytest.fixture(scope="module")
def reference(config):
    return served(config, REFERENCE_DAYS)


@pytest.fixture(scope="module")
def shifted(config):
    return served(config, [SHIFTED_DAY])


@pytest.fixture(scope="module")
def shifted_rows(config, reference, shifted):
    """Drift rows of the shifted day with the shipped claims_fraud thresholds."""
    return mon_drift.drift_table(config, reference, shifted)


@pytest.fixture(scope="module")
def stable_tables(config, reference):
    """Drift rows of each stable day with the shipped claims_fraud thresholds."""
    return {day: mon_drift.drift_table(config, reference, served(config, [day])) for day in STABLE_DAYS}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
        store.migrate(eng)
        yield eng
        eng.dispose()
        return
    with fresh_database() as uri:
        eng = sa.create_engine(uri)
        store.migrate(eng)
        yield eng
        eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    store.migrate(eng)
    yield eng
    eng.dispose()


def prediction_rows(config, day: date, tenant: str = "default", version: str = "1", limit: int | None = None,
                    pipeline: str | None = None) -> list[dict]:
    """``predictions`` rows of the simulated claims of ``day`` (JSON features as a client sends them)."""
    raw = generate_day(day)
    if limit is not None:
        raw = raw.head(limit)
    s = score(mon_features.coerce_features(config, raw, fill_missing=True))
    rows = []
    for i, rec in enumerate(raw[list(config.features)].to_dict(orient="records")):
        rows.append({
            "request_id": f"{tenant}-{raw['claim_id'].iloc[i]}", "ts": raw["claim_ts"].iloc[i].to_pydatetime(),
            "tenant": tenant, "pipeline": pipeline or config.name, "model_name": config.name, "model_version": version,
            "variant": "champion", "features": json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}),
            "prediction": json.dumps(int(s[i] > 0.5)), "score": float(s[i]), "latency_ms": 4.0 + (i % 10),
            "status": "ok",
        })
    return rows


def label_rows(config, preds: list[dict], labels: dict[str, int], label_ts: datetime) -> list[dict]:
    return [{"request_id": p["request_id"], "tenant": p["tenant"], "pipeline": p["pipeline"],
             "label": json.dumps(labels[p["request_id"]]), "label_ts": label_ts, "received_at": label_ts}
            for p in preds]


def assert_same_rows(evidently_rows: list[dict], fast_rows: list[dict]) -> None:
    """Drift rows equal field by field, scores to 1e-12 relative (summation order differs)."""
    assert [r["feature"] for r in fast_rows] == [r["feature"] for r in evidently_rows]
    for ev, fast in zip(evidently_rows, fast_rows):
        for key in ("statistic", "p_value"):
            assert fast[key] == (None if ev[key] is None else pytest.approx(ev[key], rel=1e-12, abs=1e-300)), (ev, fast)
        assert {k: v for k, v in fast.items() if k not in ("statistic", "p_value")} == \
            {k: v for k, v in ev.items() if k not in ("statistic", "p_value")}


def table(engine, t: sa.Table) -> list[tuple]:
    """Full contents of a table, ordered by primary key, timestamps normalised to UTC."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all()
    norm = lambda v: v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v  # noqa: E731
    return [tuple(norm(v) for v in row) for row in rows]


# ----------------------------------------------------------------------- drift configuration
def test_column_settings_follow_config(config):
    settings = mon_drift.column_drift_settings(config)
    assert settings["claim_amount"] == ("wasserstein", 0.2)
    assert settings["channel"] == ("jensenshannon", 0.1)
    assert settings[SCORE_COLUMN] == ("psi", 0.2)
    custom = with_drift(config, columns={"deductible": {"method": "psi", "threshold": 0.3}})
    assert mon_drift.column_drift_settings(custom)["deductible"] == ("psi", 0.3)
    with pytest.raises(ConfigError, match="'ks' does not apply to categorical feature 'channel'"):
        mon_drift.column_drift_settings(with_drift(config, columns={"channel": {"method": "ks", "threshold": 0.05}}))
    with pytest.raises(ConfigError, match="unknown features"):
        mon_drift.column_drift_settings(with_drift(config, columns={"nope": {"method": "psi", "threshold": 0.1}}))


def test_method_tables_match_evidently_registry():
    """P_VALUE_METHODS and METHOD_TYPES restate Evidently's stat-test registry; check they still do."""
    from typing import get_args

    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    from airloop.core.pipeline import DriftMethod

    assert set(get_args(DriftMethod)) == set(mon_drift.METHOD_TYPES)
    for method, kinds in mon_drift.METHOD_TYPES.items():
        registered = _registered_stat_tests[method]
        assert {t.value[:3] for t in registered} == kinds, method
        test = next(iter(registered.values()))
        assert ("p_value" in test.display_name) == (method in driftstats.P_VALUE_METHODS), method


# ------------------------------------------------------------------------- drift verdicts
def test_shifted_day_flags_the_shifted_features_with_evidentlys_verdicts(config, reference, shifted, shifted_rows):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    rows = shifted_rows
    assert [r["feature"] for r in rows] == [*config.features, mon_reference.PREDICTION_FEATURE]
    drifted = {r["feature"] for r in rows if r["drifted"]}
    assert SHIFTED_FEATURES <= drifted
    assert mon_reference.PREDICTION_FEATURE in drifted  # the score follows claim_amount and channel

    # Each verdict is Evidently's: its stat test on the same columns gives the same score and verdict.
    for r in rows:
        column = SCORE_COLUMN if r["feature"] == mon_reference.PREDICTION_FEATURE else r["feature"]
        kind = ColumnType.Categorical if config.features.get(column) and config.features[column].type == "category" \
            else ColumnType.Numerical
        ref, cur = reference[column].dropna(), shifted[column].dropna()
        result = get_stattest(ref, cur, kind, r["method"])(ref, cur, kind, r["threshold"])
        assert (r["statistic"], r["drifted"]) == (pytest.approx(result.drift_score, rel=1e-12), bool(result.drifted))
        assert r["p_value"] is None and r["current_rows"] == len(cur) and r["reference_rows"] == len(ref)

    # The full preset (the HTML report's run) gives the same rows (scores to float rounding), and
    # its DriftedColumnsCount agrees with the interval's drift share and dataset-drift verdict.
    snapshot, judged, skipped = mon_drift.run_drift(config, reference, shifted, full=True)
    assert skipped == []
    assert_same_rows(mon_drift.drift_rows(config, snapshot, reference, shifted, judged), rows)
    share, dataset_drift = mon_drift.evidently_drift_share(snapshot)
    summary = mon_drift.drift_summary(config, rows)
    assert summary["drift_share"] == pytest.approx(share)
    assert summary["dataset_drift"] is dataset_drift
    assert set(summary["drifted_features"]) == drifted - {mon_reference.PREDICTION_FEATURE}


def test_p_value_methods_fill_p_value_and_per_column_overrides(config, reference, shifted):
    custom = with_drift(config, columns={"claim_amount": {"method": "ks", "threshold": 0.01},
                                         "region": {"method": "chisquare", "threshold": 0.001}})
    rows = {r["feature"]: r for r in mon_drift.drift_table(custom, reference, shifted)}
    assert rows["claim_amount"]["method"] == "ks" and rows["claim_amount"]["threshold"] == 0.01
    assert rows["claim_amount"]["p_value"] == rows["claim_amount"]["statistic"] < 0.01
    assert rows["claim_amount"]["drifted"]
    assert rows["region"]["method"] == "chisquare" and rows["region"]["p_value"] is not None
    assert rows["region"]["drifted"] is (rows["region"]["p_value"] < 0.001)
    assert rows["customer_age"]["method"] == "wasserstein" and rows["customer_age"]["p_value"] is None


def test_stable_days_raise_no_drift_alert(config, stable_tables):
    """False-positive check at the interval level: no stable day reaches the input-drift or
    prediction-drift rules, and no categorical feature or prediction drifts."""
    for day, rows in stable_tables.items():
        summary = mon_drift.drift_summary(config, rows)
        alerts = rules.evaluate_rules(config, summary)
        assert alerts == [], (day, alerts)
        assert summary["dataset_drift"] is False, day
        flagged = {r["feature"] for r in rows if r["drifted"]}
        assert not flagged & (set(config.categorical_features) | {mon_reference.PREDICTION_FEATURE}), (day, flagged)


def test_stable_days_zero_drifted_features_shipped_thresholds(stable_tables):
    """False-positive check: with claims_fraud.yaml's thresholds no stable day flags any feature."""
    flagged = {day: [r["feature"] for r in rows if r["drifted"]] for day, rows in stable_tables.items()}
    assert all(not f for f in flagged.values()), flagged


def test_numeric_threshold_0_2_separates_stable_from_shifted_days(config, stable_tables, shifted_rows):
    """Evidently's normed Wasserstein scores (distances: drift when score >= threshold) stay below
    0.2 on every stable day, while the shifted numeric features score above 0.5: a numeric
    threshold of 0.2 would give no false positive here and still catch the shift."""
    numeric = set(config.numeric_features)
    stable_max = max(r["statistic"] for rows in stable_tables.values() for r in rows if r["feature"] in numeric)
    shifted = {r["feature"]: r["statistic"] for r in shifted_rows}
    assert stable_max < 0.2
    assert min(shifted[f] for f in SHIFTED_FEATURES & numeric) > 0.5
    assert all(r["method"] == "wasserstein" for rows in stable_tables.values() for r in rows if r["feature"] in numeric)


def test_all_null_column_is_left_out_not_an_error(config, reference, shifted):
    current = shifted.assign(police_report=None)
    rows = mon_drift.drift_table(config, reference, current)
    assert "police_report" not in {r["feature"] for r in rows}
    assert len(rows) == len(config.features)  # 12 features + prediction


def test_html_report_uses_a_seeded_sample_above_max_rows(config, reference, shifted, tmp_path):
    path = mon_drift.save_drift_report(config, reference, shifted, tmp_path / "r" / "drift.html", max_rows=200)
    text = path.read_text()
    assert path.stat().st_size > 10_000 and "<html" in text.lower()
    assert mon_drift._html_sample(config, shifted, 200).equals(mon_drift._html_sample(config, shifted, 200))
    assert len(mon_drift._html_sample(config, shifted, 200)) == 200
    assert not list(path.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- alert rules
def test_rules_fire_only_on_present_metrics(config):
    quiet = {"drift_share": 0.1, "prediction_drift": 0.05, "performance_drop": 0.01, "volume_ratio": 0.9,
             "error_rate": 0.0, "latency_p95_ms": 20.0, "drifted_features": []}
    assert rules.evaluate_rules(config, quiet) == []
    loud = {"drift_share": 0.3, "prediction_drift": 0.56, "performance_drop": 0.12, "volume_ratio": 0.4,
            "error_rate": 0.06, "latency_p95_ms": 150.0,
            "drifted_features": ["claim_amount", "customer_age", "channel", "policy_tenure_days"],
            "metric": "roc_auc", "performance": {"roc_auc": 0.69}, "reference_performance": {"roc_auc": 0.75}}
    fired = {a["rule"]: a for a in rules.evaluate_rules(config, loud)}
    assert set(fired) == {"input_drift", "prediction_drift", "performance_drop", "volume_anomaly", "error_rate", "latency"}
    drift = fired["input_drift"]
    assert drift["severity"] == "high" and drift["retrain"] is False and drift["observed"] == 0.3  # drift alone: alert, no retrain
    assert "drift_share = 0.3 >= 0.2" in drift["message"]
    assert "claim_amount, customer_age, channel, policy_tenure_days" in drift["message"]
    assert "prediction_drift = 0.56 >= 0.2" in fired["prediction_drift"]["message"]
    assert "psi" in fired["prediction_drift"]["message"] and not fired["prediction_drift"]["retrain"]
    perf = fired["performance_drop"]
    assert perf["severity"] == "critical" and perf["retrain"] and "roc_auc 0.69 vs holdout 0.75" in perf["message"]
    assert "volume_ratio = 0.4 < 0.5" in fired["volume_anomaly"]["message"]
    assert "error_rate = 0.06 > 0.05" in fired["error_rate"]["message"]
    assert "latency_p95_ms = 150 > 100" in fired["latency"]["message"]
    # Strict vs inclusive comparisons at the threshold.
    edge = {"volume_ratio": 0.5, "error_rate": 0.05, "latency_p95_ms": 100.0, "drift_share": 0.1999}
    assert rules.evaluate_rules(config, edge) == []
    # Absent, None or NaN metrics never fire (drift not judged, too few labels, no baseline).
    assert rules.evaluate_rules(config, {}) == []
    assert rules.evaluate_rules(config, {k: None for k in rules.RULE_METRICS}) == []
    assert rules.evaluate_rules(config, {"performance_drop": float("nan"), "volume_ratio": float("nan")}) == []


# ------------------------------------------------------------------ performance / operations
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_performance_binary_and_study_metric(config):
    from sklearn import metrics as m

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    frame = pd.DataFrame({"label": [int(v) if i % 2 else str(v) for i, v in enumerate(y)],  # JSON 1 or "1"
                          "prediction": (s > 0.5).astype(int).tolist(), SCORE_COLUMN: s})
    perf = performance.performance(config, frame)
    assert perf["rows"] == 300 and perf["unusable_rows"] == 0
    assert perf["accuracy"] == pytest.approx(m.accuracy_score(y, s > 0.5))
    assert perf["f1"] == pytest.approx(m.f1_score(y, s > 0.5))
    assert perf["roc_auc"] == pytest.approx(m.roc_auc_score(y, s))
    assert perf[config.training.metric] == perf["roc_auc"]
    one_class = performance.performance(config, frame.assign(label=1))
    assert one_class["roc_auc"] is None and one_class["accuracy"] is not None
    odd = performance.performance(config, frame.assign(label=["maybe"] * 300))
    assert odd["rows"] == 0 and odd["unusable_rows"] == 300 and odd["roc_auc"] is None


def test_performance_regression(config):
    from sklearn import metrics as m

    reg = config.model_copy(update={"task": "regression", "classes": None})
    frame = pd.DataFrame({"label": [1.0, 2.0, 4.0, None], "prediction": [1.5, 2.0, 3.0, 1.0],
                          SCORE_COLUMN: [1.5, 2.0, 3.0, 1.0]})
    perf = performance.performance(reg, frame)
    assert perf["rows"] == 3 and perf["unusable_rows"] == 1
    assert perf["rmse"] == pytest.approx(math.sqrt(m.mean_squared_error([1, 2, 4], [1.5, 2, 3])))
    assert perf["mae"] == pytest.approx(0.5)
    assert perf["roc_auc"] is None  # the study metric of this config is not computable for regression


def test_performance_drop_direction():
    assert performance.performance_drop("roc_auc", 0.72, 0.80) == pytest.approx(0.1)
    assert performance.performance_drop("roc_auc", 0.88, 0.80) == pytest.approx(-0.1)
    assert performance.performance_drop("rmse", 11.0, 10.0) == pytest.approx(0.1)  # lower is better
    assert performance.performance_drop("log_loss", 0.45, 0.5) == pytest.approx(-0.1)
    assert performance.performance_drop("neg_root_mean_squared_error", -11.0, -10.0) == pytest.approx(0.1)
    assert performance.performance_drop("roc_auc", 0.0, 0.0) == 0.0


def test_operations():
    rows = pd.DataFrame({"status": ["ok"] * 18 + ["error"] * 2, "latency_ms": list(range(1, 20)) + [None]})
    ops = performance.operations(rows, [40, 40, 20])
    assert ops["volume"] == 20 and ops["volume_ratio"] == pytest.approx(0.6) and ops["error_rate"] == 0.1
    assert ops["latency_p50_ms"] == 10.0 and ops["latency_p95_ms"] == pytest.approx(np.percentile(range(1, 20), 95))
    empty = performance.operations(rows.iloc[:0], [])
    assert empty["volume"] == 0 and empty["volume_ratio"] is None and empty["error_rate"] is None
    assert empty["latency_p95_ms"] is None
    assert performance.operations(rows, [0, 0])["volume_ratio"] is None


def test_baseline_windows():
    start = utc(date(2026, 4, 8))
    assert traffic.baseline_windows(start, 2) == [(utc(date(2026, 4, 6)), utc(date(2026, 4, 7))),
                                              (utc(date(2026, 4, 7)), start)]
    hourly = traffic.baseline_windows(utc(date(2026, 4, 8), 5), 2, timedelta(hours=1))
    assert hourly[-1] == (utc(date(2026, 4, 7), 5), utc(date(2026, 4, 7), 6))
    weekly = traffic.baseline_windows(start, 7, timedelta(days=7))
    assert weekly == [(start - timedelta(days=7), start)]


# ------------------------------------------------------------------------------ store reads
def test_load_interval_filters_types_and_labels(config, engine):
    day = date(2026, 4, 8)
    preds = prediction_rows(config, day, limit=50)
    outside = prediction_rows(config, day - timedelta(days=1), limit=20)  # the day before
    other_tenant = prediction_rows(config, day, tenant="acme", limit=5)
    other_pipeline = prediction_rows(config, day, tenant="x", limit=5, pipeline="other")
    other_pipeline = [r | {"tenant": "default"} for r in other_pipeline]
    error = {**preds[0], "request_id": "err-1", "status": "error", "features": json.dumps({"batch_size": 3}),
             "prediction": None, "score": None, "error": "ValueError: boom"}
    missing = {**preds[1], "request_id": "missing-1",
               "features": json.dumps({k: v for k, v in json.loads(preds[1]["features"]).items() if k != "police_report"})}
    store.insert_ignore(engine, store.predictions, preds + outside + other_tenant + other_pipeline + [error, missing])
    labels = {p["request_id"]: i % 2 for i, p in enumerate(preds + outside)}
    store.insert_ignore(engine, store.ground_truth,
                        label_rows(config, preds[:10], labels, utc(day, 20))            # known inside the interval
                        + label_rows(config, preds[10:15], labels, utc(day + timedelta(days=3)))  # known later
                        + label_rows(config, outside[:4], labels, utc(day, 6)))         # older predictions, labelled today

    frame, labelled = traffic.load_interval(engine, config, "default", utc(day), utc(day + timedelta(days=1)))
    assert len(frame) == 52 and set(frame["request_id"]) == {p["request_id"] for p in preds} | {"err-1", "missing-1"}
    assert list(frame.columns) == [*traffic.META_COLUMNS, *config.features]
    assert frame["ts"].is_monotonic_increasing and str(frame["ts"].dt.tz) == "UTC"
    for c in config.numeric_features:
        assert frame[c].dtype == "float64", c
    ok = frame[frame["status"] == "ok"]
    assert all(isinstance(v, str) for c in config.categorical_features for v in ok.loc[ok["request_id"] != "missing-1", c])
    assert frame.loc[frame["request_id"] == "missing-1", "police_report"].item() is None
    assert frame.loc[frame["request_id"] == "err-1", "status"].item() == "error"
    assert math.isnan(frame.loc[frame["request_id"] == "err-1", "claim_amount"].item())
    first = frame.set_index("request_id").loc[preds[2]["request_id"]]
    assert first["claim_amount"] == json.loads(preds[2]["features"])["claim_amount"]
    assert first[SCORE_COLUMN] == preds[2]["score"] and first["prediction"] == json.loads(preds[2]["prediction"])

    # labels="arrived": labels known inside the interval, whatever day the prediction was served.
    expected = {p["request_id"] for p in preds[:10] + outside[:4]}
    assert set(labelled["request_id"]) == expected and len(labelled) == 14
    assert labelled.set_index("request_id")["label"].to_dict() == {k: labels[k] for k in expected}
    # labels="served": the interval's predictions whose label was known before its end.
    _, served_labels = traffic.load_interval(engine, config, "default", utc(day), utc(day + timedelta(days=1)),
                                         labels="served")
    assert set(served_labels["request_id"]) == {p["request_id"] for p in preds[:10]}
    _, none = traffic.load_interval(engine, config, "default", utc(day), utc(day + timedelta(days=1)), labelled_version="9")
    assert none.empty and "label" in none.columns

    assert traffic.trailing_volumes(engine, config, "default", utc(day + timedelta(days=1)), 3) == [0, 20, 52]
    assert traffic.trailing_volumes(engine, config, "acme", utc(day + timedelta(days=1)), 2) == [0, 5]


class FakeMlflow:
    """The three MlflowClient calls load_reference / load_profile make, over local files
    (``artifacts``: run artifact path -> local file) of one run, ``run-1`` of version 3."""

    def __init__(self, config, artifacts: dict[str, Path]):
        self.config, self.artifacts, self.downloads = config, artifacts, []

    def get_model_version(self, name, version):
        assert (name, version) == (self.config.model_name, "3")
        return type("MV", (), {"run_id": "run-1", "tags": {"airloop.reference_artifact": "reference/reference.parquet"}})

    def list_artifacts(self, run_id, path=None):
        assert run_id == "run-1"
        return [type("FileInfo", (), {"path": a}) for a in self.artifacts if a.rpartition("/")[0] == (path or "")]

    def download_artifacts(self, run_id, path, dst_path):
        self.downloads.append(path)
        target = os.path.join(dst_path, os.path.basename(path))
        with open(self.artifacts[path], "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        return target


def _artifact_settings(config, reference, tmp_path, with_profile: bool):
    from airloop.core.settings import load_settings

    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    folder = tmp_path / "mlflow-artifacts" / "run-1" / "reference"
    folder.mkdir(parents=True)
    reference.head(500).to_parquet(folder / "reference.parquet", index=False)
    artifacts = {"reference/reference.parquet": folder / "reference.parquet"}
    if with_profile:  # as stages.evaluate logs it
        mon_reference.build_reference_profile(config, reference.head(500)).save(folder / "profile.npz")
        artifacts["reference/profile.npz"] = folder / "profile.npz"
    return settings, FakeMlflow(config, artifacts)


def test_load_reference_downloads_once_and_caches(config, reference, tmp_path):
    settings, client = _artifact_settings(config, reference, tmp_path, with_profile=False)
    first = mon_reference.load_reference(client, config, 3, settings=settings)
    second = mon_reference.load_reference(client, config, "3", settings=settings)
    assert client.downloads == ["reference/reference.parquet"]
    assert mon_reference.reference_cache_path(settings, config, 3) == tmp_path / "state" / "references" / config.name / "3" / "reference.parquet"
    assert mon_reference.reference_cache_path(settings, config, 3).is_file()
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(first, reference.head(500))
    assert list(first.columns) == [*config.features, SCORE_COLUMN]


@pytest.mark.parametrize("with_profile", [True, False], ids=["logged-profile", "older-version-without-profile"])
def test_load_profile_downloads_once_or_builds_from_the_reference(config, reference, tmp_path, with_profile):
    settings, client = _artifact_settings(config, reference, tmp_path, with_profile)
    first = mon_reference.load_profile(client, config, 3, settings=settings)
    second = mon_reference.load_profile(client, config, "3", settings=settings)
    assert client.downloads == (["reference/profile.npz"] if with_profile else ["reference/reference.parquet"])
    assert mon_reference.profile_cache_path(settings, config, 3) == mon_reference.reference_cache_path(settings, config, 3).with_name("profile.npz")
    assert list(first.columns) == [*config.numeric_features, SCORE_COLUMN, *config.categorical_features]
    # the cached profile judges exactly as one built from the reference frame itself
    current = served(config, [SHIFTED_DAY])
    expected = mon_drift.drift_table(config, reference.head(500), current)
    assert mon_drift.drift_table(config, reference.head(500), current, profile=first) == expected
    assert mon_drift.drift_table(config, reference.head(500), current, profile=second) == expected


# ---------------------------------------------------------------------------- one interval
def _seed_interval(config, engine):
    """The shifted day's traffic, 80 labels arriving during it (for predictions of 04-15), labels of
    its own predictions arriving later, a week of baseline traffic and unrelated monitoring rows."""
    day = SHIFTED_DAY
    preds = prediction_rows(config, day)
    older = prediction_rows(config, date(2026, 4, 15), limit=80)
    baseline = []
    for k in range(1, 8):
        baseline += [{**r, "request_id": f"b{k}-{r['request_id']}"}
                     for r in prediction_rows(config, day - timedelta(days=k), limit=200)]
    errors = [{**preds[i], "request_id": f"err-{i}", "status": "error", "prediction": None, "score": None,
               "latency_ms": 250.0, "error": "RuntimeError: x"} for i in range(4)]
    store.insert_ignore(engine, store.predictions, preds + older + baseline + errors)
    truth = {r["request_id"]: int(r["score"] > 0.35) ^ (i % 7 == 0) for i, r in enumerate(older + preds)}
    store.insert_ignore(engine, store.ground_truth, label_rows(config, older, truth, utc(day, 9))
                        + label_rows(config, preds, truth, utc(day + timedelta(days=5))))
    other_key = {"tenant": "default", "pipeline": config.name, "interval_start": utc(day - timedelta(days=1))}
    store.upsert(engine, store.monitoring_runs, [other_key | {"interval_end": utc(day), "rows": 7}])
    store.upsert(engine, store.feature_drift, [other_key | {
        "feature": "claim_amount", "interval_end": utc(day), "method": "psi", "statistic": 0.5, "threshold": 0.2,
        "drifted": True, "current_rows": 7, "reference_rows": 9}])
    return preds, older, truth


def test_monitor_interval_upserts_rows_and_reruns_identically(config, settings, engine, reference, tmp_path):
    from sklearn import metrics as m

    # 80 labels in this fixture: judge performance from 50, on the interval's arrivals only
    config = config.model_copy(update={"monitoring": config.monitoring.model_copy(
        update={"min_labelled_rows": 50, "performance_window_days": 1})})
    preds, older, truth = _seed_interval(config, engine)
    start, end = utc(SHIFTED_DAY), utc(SHIFTED_DAY + timedelta(days=1))
    before_other = [r for r in table(engine, store.monitoring_runs) if r[2] != start]

    t0 = time.perf_counter()
    summary = interval.monitor_interval(config, settings, "default", start, end, "1", reference, tmp_path / "reports",
                                   reference_metrics={"roc_auc": 0.95, "accuracy": 0.9}, engine=engine)
    seconds = time.perf_counter() - t0
    print(f"\nmonitor_interval on {summary['rows']} rows vs {len(reference)} reference rows: {seconds:.2f}s")
    assert json.loads(json.dumps(summary)) == summary and len(json.dumps(summary)) < 10_000

    # Drift: judged on the ok rows, the shift flagged; stored rows = the summary.
    assert summary["rows"] == len(preds) + 4 and summary["ok_rows"] == len(preds) and summary["drift_judged"]
    assert SHIFTED_FEATURES <= set(summary["drifted_features"]) and summary["prediction_drifted"]
    stored = [r for r in table(engine, store.feature_drift) if r[2] == start]
    cols = [c.name for c in store.feature_drift.columns]
    stored = [dict(zip(cols, r)) for r in stored]
    assert sorted(r["feature"] for r in stored) == sorted([*config.features, mon_reference.PREDICTION_FEATURE])
    assert {r["feature"] for r in stored if r["drifted"]} == set(summary["drifted_features"]) | {mon_reference.PREDICTION_FEATURE}
    assert all(r["current_rows"] == len(preds) and r["reference_rows"] == len(reference) and r["model_version"] == "1"
               and r["interval_end"] == end for r in stored)
    assert summary["drift_share"] == pytest.approx(len(summary["drifted_features"]) / len(config.features))

    # Performance: the 80 labels that arrived during the interval (served on 04-15), not the later ones.
    assert summary["labelled_rows"] == 80 and summary["performance_judged"]
    y = [truth[r["request_id"]] for r in older]
    auc = m.roc_auc_score(y, [r["score"] for r in older])
    assert summary["performance"]["roc_auc"] == pytest.approx(auc)
    assert summary["performance_drop"] == pytest.approx((0.95 - auc) / 0.95)

    # Operations: 404 rows vs 200 a day; 4 errors.
    assert summary["volume_ratio"] == pytest.approx((len(preds) + 4) / 200)
    assert summary["error_rate"] == pytest.approx(4 / (len(preds) + 4))
    assert summary["latency_p95_ms"] >= summary["latency_p50_ms"] > 0

    (run,) = [dict(zip([c.name for c in store.monitoring_runs.columns], r))
              for r in table(engine, store.monitoring_runs) if r[2] == start]
    assert run["rows"] == summary["rows"] and run["labelled_rows"] == 80 and run["model_version"] == "1"
    assert run["drift_share"] == pytest.approx(summary["drift_share"])
    assert json.loads(run["drifted_features"]) == summary["drifted_features"]
    assert run["prediction_drift"] == pytest.approx(summary["prediction_drift"])
    assert json.loads(run["performance"]) == summary["performance"]
    assert json.loads(run["reference_performance"]) == {"accuracy": 0.9, "roc_auc": 0.95}
    assert run["report_uri"] == summary["report_uri"] and os.path.getsize(run["report_uri"]) > 10_000
    assert {a["rule"] for a in summary["alerts"]} >= {"input_drift", "prediction_drift"}
    # drift alone does not retrain (default policy); the realized and the estimated drop do
    assert "input_drift" not in run["retrain_reason"] and "performance_drop" in run["retrain_reason"]
    assert summary["retrain"]
    # the label-free estimate of the version's served rows, stored beside the realized figures
    est = summary["estimated"]
    assert est["metric"] == "roc_auc" and est["rows"] == len(preds) and est["low"] <= est["value"] <= est["high"]
    assert est["reference"] == 0.95 and summary["estimated_performance_drop"] == pytest.approx((0.95 - est["high"]) / 0.95)
    assert run["estimated_value"] == pytest.approx(est["value"]) and run["estimated_metric"] == "roc_auc"
    assert set(json.loads(run["estimated_performance"])["metrics"]) == {"roc_auc", "f1", "precision", "recall",
                                                                       "accuracy"}
    assert run["reference_id"] == "training"

    # A re-run rewrites exactly the same rows and touches nothing else; a stale feature row of
    # this interval (e.g. a feature since removed from the config) is dropped.
    first_drift, first_runs = table(engine, store.feature_drift), table(engine, store.monitoring_runs)
    store.upsert(engine, store.feature_drift, [{
        "tenant": "default", "pipeline": config.name, "interval_start": start, "feature": "retired_feature",
        "interval_end": end, "method": "psi", "statistic": 1.0, "threshold": 0.2, "drifted": True,
        "current_rows": 1, "reference_rows": 1}])
    again = interval.monitor_interval(config, settings, "default", start, end, "1", reference, tmp_path / "reports",
                                 reference_metrics={"roc_auc": 0.95, "accuracy": 0.9}, engine=engine)
    assert again == summary
    assert table(engine, store.feature_drift) == first_drift
    assert table(engine, store.monitoring_runs) == first_runs
    assert [r for r in first_runs if r[2] != start] == before_other


def test_too_few_rows_is_recorded_as_not_judged(config, settings, sqlite_engine, reference, tmp_path):
    engine = sqlite_engine
    day = STABLE_DAYS[0]
    store.insert_ignore(engine, store.predictions, prediction_rows(config, day, limit=30))
    start, end = utc(day), utc(day + timedelta(days=1))
    summary = interval.monitor_interval(config, settings, "default", start, end, "1", reference, tmp_path, engine=engine)
    assert summary["drift_judged"] is False and "30 ok rows < drift.min_rows 100" in summary["drift_reason"]
    assert summary["drift_share"] is None and summary["drifted_features"] is None and summary["report_uri"] is None
    assert summary["performance_judged"] is False and summary["performance_drop"] is None
    assert summary["volume_ratio"] is None  # no traffic in the baseline week
    assert summary["alerts"] == [] and summary["retrain_reason"] is None
    assert table(engine, store.feature_drift) == []
    (run,) = table(engine, store.monitoring_runs)
    run = dict(zip([c.name for c in store.monitoring_runs.columns], run))
    assert run["rows"] == 30 and run["drift_share"] is None and run["drifted_features"] is None
    assert run["report_uri"] is None and run["labelled_rows"] == 0 and run["performance"] is None
    assert not list(tmp_path.rglob("*.html"))
