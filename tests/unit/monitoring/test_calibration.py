"""Drift thresholds learned from the training window (``threshold: auto``,
:mod:`airloop.monitoring.calibration`): the prediction bound gives the configured false-alarm
rate on stable synthetic data, a shifted day is flagged, a weekly pattern is handled by the
seasonal comparison, and the thresholds travel with the reference (frame attrs, Parquet
metadata, ``profile.npz``) into monitoring's verdicts and Evidently's report."""

from __future__ import annotations

import os
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from airloop.core.settings import ConfigError
from airloop.data.features import coerce_features
from airloop.data.simulator import generate_day
from airloop.monitoring import calibration, driftstats
from airloop.monitoring import drift as mon_drift
from airloop.monitoring import reference as mon_reference
from airloop.monitoring.reference import PREDICTION_FEATURE, SCORE_COLUMN

START = date(2026, 3, 11)  # before the simulator's covariate shift (2026-04-20), after its bad day


def with_drift(config, **drift):
    raw = config.model_dump(mode="json")
    raw["monitoring"]["drift"].update(drift)
    return type(config).model_validate(raw)


AUTO = {"numeric": {"method": "wasserstein", "threshold": "auto"},
        "categorical": {"method": "jensenshannon", "threshold": "auto"},
        "prediction": {"method": "psi", "threshold": "auto"}}


class ScoreModel:
    """A fitted-model stand-in: a deterministic fraud probability from the claim amount."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        z = (np.log(X["claim_amount"].clip(lower=1).fillna(3000)) - 8.2) / 0.9
        p = 1 / (1 + np.exp(-(-1.5 + 1.1 * z)))
        return np.column_stack([1 - p, p])


def synthetic_day(rng: np.random.Generator, day: date, n: int = 300, shift: float = 0.0,
                  weekly: float = 0.0) -> pd.DataFrame:
    """A stable day: a normal number, a five-category mix; ``weekly`` moves Saturdays' mean,
    ``shift`` every day's (and the category mix)."""
    mean = shift + (weekly if day.weekday() == 5 else 0.0)
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    if shift:
        p = np.array([0.2, 0.25, 0.15, 0.12, 0.28])
    return pd.DataFrame({"x": rng.normal(mean, 1.0, n), "c": rng.choice(list("abcde"), n, p=p)})


def window(rng, first: date, days: int, **kw) -> dict[date, pd.DataFrame]:
    return {first + timedelta(days=i): synthetic_day(rng, first + timedelta(days=i), **kw) for i in range(days)}


def reference_of(days: dict[date, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.concat(days.values(), ignore_index=True)
    return frame, np.concatenate([[d] * len(f) for d, f in days.items()])


COLUMNS = {"x": ("num", "wasserstein"), "c": ("cat", "jensenshannon")}


def flagged(cal: dict, reference: pd.DataFrame, day: pd.DataFrame, seasonal: dict | None = None) -> dict[str, bool]:
    """The verdict of each calibrated column of ``day`` against the whole reference."""
    out = {}
    for column, (kind, method) in COLUMNS.items():
        entry = cal["columns"][column]
        if seasonal and column in seasonal:
            cur = driftstats.current_data(seasonal[column][0], day[column])
            score = calibration.best_statistic(seasonal[column].values(), cur, method)
        else:
            ref = calibration._profile(kind, reference[column])
            score = driftstats.statistic(ref, driftstats.current_data(ref, day[column]), method)
        out[column] = driftstats.drifted(method, score, entry["threshold"])
    return out


# ------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("method", ["wasserstein", "ks"])
def test_prediction_bound_exceeded_at_the_configured_rate(method):
    """Day statistics of one window set the threshold; a new day from the same distribution
    exceeds it with the configured probability (lognormal distances / normal z-scores: the
    normal prediction bound is exact there), averaged over many windows."""
    rng = np.random.default_rng(1)
    windows, n = 1500, 30
    exceed = 0
    for _ in range(windows):
        z = rng.normal(2.0, 0.5, n + 1)  # log distances / normal scores (p ~ 0.02 typical)
        stats = np.exp(z) / 100 if method == "wasserstein" else norm.sf(z)  # p-values of normal scores
        t = calibration.threshold_from_statistics(method, stats[:n], 0.05)
        if t["limited"] is None:
            exceed += driftstats.drifted(method, float(stats[n]), t["threshold"])
        else:  # never for these scales
            raise AssertionError(t)
    assert abs(exceed / windows - 0.05) < 0.015, exceed / windows


def test_limits_keep_degenerate_calibrations_sane():
    constant = calibration.threshold_from_statistics("jensenshannon", np.zeros(20), 0.01)
    assert constant["threshold"] == pytest.approx(0.01) and constant["limited"] == "floor"
    noise = calibration.threshold_from_statistics("chisquare", np.full(20, 0.9), 0.01)
    assert noise["threshold"] == 0.05 and noise["limited"] == "cap"


def test_stable_synthetic_days_are_flagged_at_about_the_configured_rate():
    """28 stable reference days (each day its own sample), calibrated at 5 %: stable new days
    are flagged about 5 % of the time per feature-day, over 30 windows x 15 days x 2 features."""
    rng = np.random.default_rng(7)
    rate, hits, total = 0.05, 0, 0
    for w in range(30):
        first = date(2026, 1, 1) + timedelta(days=50 * w)
        days = window(rng, first, 28)
        reference, ref_days = reference_of(days)
        cal = calibration.calibrate(reference, ref_days, days, COLUMNS, rate=rate)
        assert {c: e["days"] for c, e in cal["columns"].items()} == {"x": 28, "c": 28}
        for k in range(15):
            verdict = flagged(cal, reference, synthetic_day(rng, first + timedelta(days=30 + k)))
            hits += sum(verdict.values())
            total += len(verdict)
    assert total == 900
    assert 0.02 <= hits / total <= 0.09, hits / total


def test_a_shifted_day_is_flagged_and_a_stable_one_is_not():
    rng = np.random.default_rng(3)
    days = window(rng, date(2026, 1, 5), 35)
    reference, ref_days = reference_of(days)
    cal = calibration.calibrate(reference, ref_days, days, COLUMNS, rate=0.01)
    assert all(e["fallback"] is None and e["limited"] is None for e in cal["columns"].values()), cal
    # the bound sits well above a typical day (log scale: the centre of the day statistics)
    assert all(e["threshold"] > 1.5 * np.exp(e["center"]) for e in cal["columns"].values())
    shifted = synthetic_day(rng, date(2026, 2, 20), shift=0.5)
    assert flagged(cal, reference, shifted) == {"x": True, "c": True}
    stable = synthetic_day(rng, date(2026, 2, 20))
    assert flagged(cal, reference, stable) == {"x": False, "c": False}


def test_too_few_days_fall_back_to_evidentlys_default():
    rng = np.random.default_rng(5)
    days = window(rng, date(2026, 1, 5), 4)
    reference, ref_days = reference_of(days)
    cal = calibration.calibrate(reference, ref_days, days, COLUMNS, rate=0.01, min_days=7)
    assert cal["columns"]["x"]["threshold"] == driftstats.DEFAULT_THRESHOLDS["wasserstein"]
    assert "4 usable days" in cal["columns"]["x"]["fallback"]


def test_seasonal_feature_is_compared_with_the_nearest_weekday():
    """Saturdays' mean is one standard deviation higher: pooled calibration must cover it (a high
    threshold); against the nearest weekday the threshold is low, stable Saturdays still pass
    and a Tuesday shifted by half a deviation is caught."""
    rng = np.random.default_rng(11)
    days = window(rng, date(2026, 1, 5), 42, weekly=1.0)
    reference, ref_days = reference_of(days)
    pooled = calibration.calibrate(reference, ref_days, days, COLUMNS, rate=0.01)
    seasonal = calibration.calibrate(reference, ref_days, days, COLUMNS, rate=0.01, seasonal=["x"])
    assert seasonal["columns"]["x"]["seasonal"] and not pooled["columns"]["x"]["seasonal"]
    assert seasonal["columns"]["x"]["threshold"] < pooled["columns"]["x"]["threshold"] / 2
    weekday = np.array([d.weekday() for d in ref_days])
    subs = {"x": {w: calibration._profile("num", reference["x"][weekday == w]) for w in range(7)}}
    saturday = synthetic_day(rng, date(2026, 2, 21), weekly=1.0)
    tuesday = synthetic_day(rng, date(2026, 2, 17), weekly=1.0)
    tuesday["x"] += 0.5
    assert not flagged(seasonal, reference, saturday, subs)["x"]
    assert flagged(seasonal, reference, tuesday, subs)["x"]
    assert not flagged(pooled, reference, saturday)["x"]


# ---------------------------------------------------------------------- configuration
def test_threshold_auto_is_validated(claims_config):
    config = with_drift(claims_config, **AUTO)
    assert config.monitoring.drift.numeric.auto and f"{config.monitoring.drift.numeric.threshold:.4g}" == "auto"
    assert not claims_config.monitoring.drift.numeric.auto
    for bad in (0, -0.1, "automatic"):
        with pytest.raises(ValueError):
            with_drift(claims_config, numeric={"method": "wasserstein", "threshold": bad})
    with pytest.raises(ConfigError, match="calibration.seasonal names unknown features"):
        mon_drift.column_drift_settings(with_drift(config, calibration={"seasonal": ["nope"]}))
    # a version without calibration: Evidently's default for the method
    settings = mon_drift.column_drift_settings(config)
    assert settings["claim_amount"] == ("wasserstein", 0.1) and settings[SCORE_COLUMN] == ("psi", 0.1)


# -------------------------------------------------------------- stored with the reference
@pytest.fixture(scope="module")
def auto_config(claims_config):
    return with_drift(claims_config, **AUTO, calibration={"false_alarm_rate": 0.01, "seasonal": ["region"]})


@pytest.fixture(scope="module")
def trained(auto_config):
    """A version's reference built as the training task builds it (21 days of claims)."""
    raw = pd.concat([generate_day(START + timedelta(days=i)) for i in range(21)], ignore_index=True)
    return mon_reference.reference_frame(auto_config, ScoreModel(), raw)


def test_reference_carries_the_calibration(auto_config, trained):
    cal = trained.attrs[calibration.CALIBRATION_ATTR]
    assert cal["days"] == {"first": START.isoformat(), "last": (START + timedelta(days=20)).isoformat(), "count": 21}
    assert set(cal["columns"]) == {*auto_config.features, SCORE_COLUMN}
    assert cal["columns"]["region"]["seasonal"] and not cal["columns"]["channel"]["seasonal"]
    assert all(e["days"] == 21 and e["fallback"] is None for e in cal["columns"].values())
    assert 0.05 < cal["columns"]["claim_amount"]["threshold"] < 0.5
    assert list(trained.columns) == [*auto_config.features, SCORE_COLUMN, calibration.DAY_COLUMN]
    # the reference: the newest monitoring.reference.training_days of the window (calibrated on all of it)
    days = auto_config.monitoring.reference.training_days or 21
    assert trained[calibration.DAY_COLUMN].min() == (START + timedelta(days=21 - days)).isoformat()


def test_calibration_survives_parquet_profile_and_load(auto_config, trained, tmp_path):
    """Reference -> reference.parquet (metadata) -> load_reference -> build_reference_profile ->
    profile.npz -> load: the same thresholds and seasonal profiles; monitoring's rows use them."""
    from tests.unit.monitoring.test_interval import FakeMlflow

    from airloop.core.settings import load_settings

    folder = tmp_path / "artifacts" / "reference"
    folder.mkdir(parents=True)
    trained.to_parquet(folder / "reference.parquet", index=False)
    mon_reference.build_reference_profile(auto_config, trained).save(folder / "profile.npz")
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state")})
    client = FakeMlflow(auto_config, {"reference/reference.parquet": folder / "reference.parquet",
                                      "reference/profile.npz": folder / "profile.npz"})
    loaded = mon_reference.load_reference(client, auto_config, 3, settings=settings)
    profile = mon_reference.load_profile(client, auto_config, 3, settings=settings)
    stored = trained.attrs[calibration.CALIBRATION_ATTR]
    assert loaded.attrs[calibration.CALIBRATION_ATTR] == stored
    assert profile.calibration == stored
    assert set(profile.seasonal) == {"region"} and set(profile.seasonal["region"]) == set(range(7))
    rebuilt = mon_reference.build_reference_profile(auto_config, loaded)
    assert rebuilt.calibration == stored
    assert all(np.array_equal(rebuilt.seasonal["region"][w].counts, profile.seasonal["region"][w].counts)
               for w in range(7))

    current = coerce_features(auto_config, generate_day(date(2026, 4, 25)), fill_missing=True)  # shifted
    current[SCORE_COLUMN] = ScoreModel().predict_proba(current)[:, 1]
    rows = {r["feature"]: r for r in mon_drift.fast_drift_rows(auto_config, profile, current)[0]}
    for feature, row in rows.items():
        column = SCORE_COLUMN if feature == PREDICTION_FEATURE else feature
        assert row["threshold"] == pytest.approx(stored["columns"][column]["threshold"]), feature
    assert {"claim_amount", "customer_age", "channel"} <= {f for f, r in rows.items() if r["drifted"]}
    stable = coerce_features(auto_config, generate_day(START + timedelta(days=25)), fill_missing=True)
    stable[SCORE_COLUMN] = ScoreModel().predict_proba(stable)[:, 1]
    summary = mon_drift.drift_summary(auto_config, mon_drift.fast_drift_rows(auto_config, profile, stable)[0])
    assert summary["drift_share"] < auto_config.monitoring.drift.drift_share

    # Evidently's report judges with the same thresholds (the consistency check of drift_rows)
    snapshot, judged, _ = mon_drift.run_drift(auto_config, loaded, current, full=True)
    evidently_rows = {r["feature"]: r for r in mon_drift.drift_rows(auto_config, snapshot, loaded, current, judged)}
    for feature in ("claim_amount", "channel", PREDICTION_FEATURE):
        assert evidently_rows[feature]["threshold"] == rows[feature]["threshold"]
        assert evidently_rows[feature]["drifted"] == rows[feature]["drifted"]
    path = mon_drift.save_drift_report(auto_config, loaded, current, tmp_path / "drift.html", max_rows=300)
    assert path is not None and path.stat().st_size > 10_000
    os.remove(path)


def test_seasonal_scoring_takes_the_nearest_weekday(auto_config, trained):
    profile = mon_reference.build_reference_profile(auto_config, trained)
    day = coerce_features(auto_config, generate_day(START + timedelta(days=23)), fill_missing=True)
    day[SCORE_COLUMN] = 0.5
    row = next(r for r in mon_drift.fast_drift_rows(auto_config, profile, day)[0] if r["feature"] == "region")
    cur = driftstats.current_data(profile.columns["region"], day["region"])
    per_weekday = [driftstats.statistic(p, cur, "jensenshannon") for p in profile.seasonal["region"].values()]
    assert row["statistic"] == pytest.approx(min(per_weekday))
    assert row["statistic"] <= driftstats.statistic(profile.columns["region"], cur, "jensenshannon") + 1e-12


def test_profile_without_calibration_loads_as_before(claims_config, tmp_path):
    raw = pd.concat([generate_day(START + timedelta(days=i)) for i in range(3)], ignore_index=True)
    reference = mon_reference.reference_frame(claims_config, ScoreModel(), raw)
    assert calibration.CALIBRATION_ATTR not in reference.attrs and calibration.DAY_COLUMN not in reference.columns
    path = mon_reference.build_reference_profile(claims_config, reference).save(tmp_path / "p.npz")
    loaded = driftstats.ReferenceProfile.load(path)
    assert loaded.calibration is None and loaded.seasonal == {}
