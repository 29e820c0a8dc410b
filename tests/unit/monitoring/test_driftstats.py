"""The drift fast path (airloop.monitoring.driftstats) against Evidently 0.7 itself.

Every comparison runs a real Evidently ``Report`` (``ValueDrift`` per column and method, or the
``DataDriftPreset`` with its default method choice) on seeded frames and reads Evidently's
``drift`` test verdicts and scores; the fast path must give the same method, threshold and
verdict, and the same score to floating-point rounding (exact profiles) or within the grid's
documented error (grid profiles).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from airloop.monitoring import driftstats as ds
from airloop.monitoring.drift import evidently_verdicts

NUMERIC = ["amount", "age", "tenure", "visits"]  # visits: 4 distinct values (Evidently bins it by value)
CATEGORICAL = ["channel", "region", "flag"]  # flag: binary
NUM_METHODS = ["wasserstein", "ks", "psi", "jensenshannon", "kl_div", "hellinger"]
CAT_METHODS = ["chisquare", "z", "psi", "jensenshannon", "kl_div", "hellinger"]
SCENARIOS = ["no_shift", "mean_shift", "scale_shift", "category_mix", "nulls"]


def frame(rng: np.random.Generator, n: int, scenario: str = "no_shift") -> pd.DataFrame:
    """A seeded mixed-type frame; ``scenario`` shifts it the way its name says."""
    mean = 0.4 if scenario == "mean_shift" else 0.0
    scale = 1.6 if scenario == "scale_shift" else 1.0
    mix = [0.2, 0.2, 0.2, 0.2, 0.2] if scenario == "category_mix" else [0.4, 0.3, 0.15, 0.1, 0.05]
    out = pd.DataFrame({
        "amount": np.exp(rng.normal(8 + mean, 0.9 * scale, n)),
        "age": np.round(rng.normal(45 + 6 * mean, 12 * scale, n)),
        "tenure": rng.gamma(2.0, 300 * scale, n) + 100 * mean,
        "visits": rng.choice([0.0, 1.0, 2.0, 3.0], n, p=[0.4, 0.3, 0.2, 0.1] if scenario != "mean_shift"
                             else [0.3, 0.3, 0.25, 0.15]),
        "channel": rng.choice(np.array(["agent", "online", "app", "phone", "mail"], dtype=object), n, p=mix),
        "region": rng.choice(np.array([f"r{i}" for i in range(8)], dtype=object), n),
        "flag": rng.choice(np.array(["no", "yes"], dtype=object), n, p=[0.5, 0.5] if scenario == "category_mix"
                           else [0.8, 0.2]),
    })
    if scenario == "nulls":
        for column in ["amount", "channel", "visits"]:
            out.loc[rng.random(n) < 0.3, column] = None
        out.loc[rng.random(n) < 0.01, "tenure"] = np.inf  # Evidently drops +-inf like NaN
    return out


def evidently(reference: pd.DataFrame, current: pd.DataFrame, metrics: list) -> dict[str, dict]:
    """Evidently's ValueDrift verdicts (``{column: {method, threshold, score, drifted}}``)."""
    from evidently import DataDefinition, Dataset, Report

    definition = DataDefinition(numerical_columns=[c for c in NUMERIC if c in reference],
                                categorical_columns=[c for c in CATEGORICAL if c in reference])
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))
    return evidently_verdicts(snapshot)


def method_name(method: str) -> str:
    """Evidently records a method it chose itself by its display name ("K-S p_value")."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    names = {next(iter(t.values())).display_name: name for name, t in _registered_stat_tests.items()}
    return names.get(method, method)


def assert_agrees(ours: ds.DriftVerdict, theirs: dict, rel: float = 1e-9) -> None:
    where = (ours.column, ours.method, theirs)
    assert (ours.method, ours.threshold, ours.drifted) == \
        (method_name(theirs["method"]), theirs["threshold"], theirs["drifted"]), where
    assert ours.statistic == pytest.approx(theirs["score"], rel=rel, abs=1e-12), where


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return frame(np.random.default_rng(7), 3000)


@pytest.fixture(scope="module")
def profile(reference) -> ds.ReferenceProfile:
    return ds.build_profile(reference, NUMERIC, CATEGORICAL)


# --------------------------------------------------------------------- verdicts vs Evidently
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_method_agrees_with_evidently_value_drift(reference, profile, scenario):
    from evidently.metrics import ValueDrift

    current = frame(np.random.default_rng(100 + SCENARIOS.index(scenario)), 1500, scenario)
    thresholds = {"wasserstein": 0.1, "ks": 0.05, "psi": 0.1, "jensenshannon": 0.1, "kl_div": 0.1,
                  "hellinger": 0.1, "chisquare": 0.05, "z": 0.05}
    pairs = [(c, m) for c in NUMERIC for m in NUM_METHODS] + [(c, m) for c in CATEGORICAL for m in CAT_METHODS]
    drifted = set()
    for method in sorted(set(NUM_METHODS + CAT_METHODS)):  # one report per method (results keyed by column)
        columns = [c for c, m in pairs if m == method]
        theirs = evidently(reference, current, [ValueDrift(column=c, method=method, threshold=thresholds[method])
                                                for c in columns])
        for column in columns:
            ours = ds.column_drift(column, profile[column], current[column], method, thresholds[method])
            assert_agrees(ours, theirs[column])
            assert ours.current_rows == int(np.isfinite(pd.to_numeric(current[column], errors="coerce")).sum()
                                            if column in NUMERIC else current[column].notna().sum())
            if ours.drifted:
                drifted.add(column)
    if scenario == "no_shift":
        assert not drifted & {"amount", "channel"}, drifted
    elif scenario == "mean_shift":
        assert {"amount", "age", "tenure", "visits"} <= drifted
    elif scenario == "category_mix":
        assert {"channel", "flag"} <= drifted


@pytest.mark.parametrize("rows", [3000, 800], ids=["large-reference", "small-reference"])
@pytest.mark.parametrize("scenario", ["no_shift", "mean_shift", "nulls"])
def test_default_method_choice_agrees_with_the_preset(rows, scenario):
    """DataDriftPreset with default settings: Evidently picks each column's method by reference
    size and distinct values (wasserstein/jensenshannon above 1,000 reference rows, ks/chisquare/z
    up to it); the fast path picks the same and gives the same verdict."""
    from evidently.presets import DataDriftPreset

    reference = frame(np.random.default_rng(rows), rows)
    current = frame(np.random.default_rng(rows + 1), 1200, scenario)
    profile = ds.build_profile(reference, NUMERIC, CATEGORICAL)
    theirs = evidently(reference, current, [DataDriftPreset()])
    assert set(theirs) == set(NUMERIC + CATEGORICAL)
    for column in NUMERIC + CATEGORICAL:
        assert_agrees(ds.column_drift(column, profile[column], current[column]), theirs[column])
    methods = {c: method_name(theirs[c]["method"]) for c in theirs}
    if rows > 1000:
        assert methods == {**{c: "wasserstein" for c in ["amount", "age", "tenure"]}, "visits": "jensenshannon",
                           **{c: "jensenshannon" for c in CATEGORICAL}}
    else:
        assert methods == {**{c: "ks" for c in ["amount", "age", "tenure"]}, "visits": "chisquare",
                           "channel": "chisquare", "region": "chisquare", "flag": "z"}


def test_new_category_and_single_value_edges_match_evidently(reference, profile):
    from evidently.metrics import ValueDrift

    current = frame(np.random.default_rng(3), 500)
    current.loc[:49, "region"] = "r_new"  # a category the reference never saw
    current["flag"] = "no"  # one value on the current side
    metrics = [ValueDrift(column="region", method=m, threshold=0.05) for m in ["chisquare"]] + \
              [ValueDrift(column="flag", method="z", threshold=0.05)]
    theirs = evidently(reference, current, metrics)
    assert_agrees(ds.column_drift("region", profile["region"], current["region"], "chisquare", 0.05), theirs["region"])
    assert_agrees(ds.column_drift("flag", profile["flag"], current["flag"], "z", 0.05), theirs["flag"])
    same = pd.DataFrame({"flag": ["no"] * 50})
    one = ds.build_profile(same, [], ["flag"])
    assert ds.column_drift("flag", one["flag"], same["flag"], "z", 0.05).statistic == 1.0  # Evidently's shortcut


def test_thresholds_and_kinds_restate_evidentlys_registry():
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    for method, kinds in ds.METHOD_KINDS.items():
        registered = _registered_stat_tests[method]
        test = next(iter(registered.values()))
        assert test.default_threshold == ds.DEFAULT_THRESHOLDS[method], method
        assert {t.value[:3] for t in registered} == kinds, method
        assert ("p_value" in test.display_name) == (method in ds.P_VALUE_METHODS), method


# ------------------------------------------------------------------------ grid profiles
@pytest.mark.parametrize("scenario", ["no_shift", "mean_shift", "scale_shift"])
def test_grid_profile_stays_close_to_the_full_reference(scenario):
    """A reference with more distinct values than ``max_points`` keeps a quantile grid: scores
    stay within the documented error of Evidently's on the full reference, verdicts agree."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    reference = frame(np.random.default_rng(11), 60_000)
    current = frame(np.random.default_rng(12), 20_000, scenario)
    grid = ds.build_profile(reference, NUMERIC, [], max_points=12_000)
    assert not grid["amount"].exact and grid["amount"].values.size <= 12_000 and grid["amount"].n == 60_000
    assert grid["visits"].exact  # 4 distinct values: always exact
    for column in ["amount", "tenure"]:
        ref, cur = reference[column].dropna(), current[column].dropna()
        for method in ["wasserstein", "ks", "psi", "jensenshannon", "kl_div", "hellinger"]:
            theirs = get_stattest(ref, cur, ColumnType.Numerical, method)(ref, cur, ColumnType.Numerical, None)
            ours = ds.column_drift(column, grid[column], current[column], method)
            assert ours.drifted == theirs.drifted, (column, method, ours, theirs)
            if method == "ks":  # p-values: compare the statistic they come from
                assert ds.ks_statistic(grid[column], np.sort(cur.to_numpy())) == pytest.approx(
                    ds.ks_statistic(ds.profile_numeric(ref), np.sort(cur.to_numpy())), abs=1 / 12_000)
            else:
                assert ours.statistic == pytest.approx(theirs.drift_score, rel=0.01, abs=1e-4), (column, method)


def test_wasserstein_and_ks_of_an_exact_profile_equal_scipy():
    from scipy import stats

    rng = np.random.default_rng(5)
    x, y = np.round(rng.normal(size=20_000), 2), np.round(rng.normal(0.1, 1.1, size=15_000), 2)  # many ties
    exact = ds.profile_numeric(x)
    assert exact.exact
    assert ds.wasserstein(exact, np.sort(y)) == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-12)
    assert ds.ks_statistic(exact, np.sort(y)) == pytest.approx(stats.ks_2samp(x, y).statistic, rel=1e-12)
    assert ds.ks_pvalue(exact, np.sort(y)) == pytest.approx(stats.ks_2samp(x, y).pvalue, rel=1e-9)


@pytest.mark.parametrize("max_points", [100_000, 10_000], ids=["exact", "grid"])
def test_blockwise_merge_equals_a_single_block(max_points):
    """The ECDF merge runs in blocks of current values; block edges (ties across them, reference
    points beyond either end) change nothing."""
    rng = np.random.default_rng(8)
    x = np.concatenate([np.round(rng.normal(size=30_000), 3), rng.normal(size=15_000)])
    y = np.sort(np.concatenate([np.round(rng.normal(0.2, 1.3, size=4_000), 2), [-9.0, 9.0]]))
    profile = ds.profile_numeric(x, max_points=max_points)
    assert profile.exact is (max_points == 100_000)
    whole = ds.wasserstein(profile, y, block=10**9), ds.ks_statistic(profile, y, block=10**9)
    for block in (1, 7, 500, 3_999):
        assert ds.wasserstein(profile, y, block=block) == pytest.approx(whole[0], rel=1e-12)
        assert ds.ks_statistic(profile, y, block=block) == pytest.approx(whole[1], rel=1e-12)


@pytest.mark.parametrize("data", [np.array([3.0] * 10), np.arange(7.0), np.linspace(-1e6, 1e-3, 4097),
                                  np.random.default_rng(1).lognormal(size=12_345)])
def test_sturges_edges_equal_numpys(data):
    np.testing.assert_array_equal(ds.sturges_edges(data.min(), data.max(), data.size),
                                  np.histogram_bin_edges(data, bins="sturges"))


# ---------------------------------------------------------------------------- round trip
def test_profile_round_trip(reference, profile, tmp_path):
    odd = reference.assign(empty=np.nan, codes=np.where(np.arange(len(reference)) % 3 == 0, None,
                                                        (np.arange(len(reference)) % 5).astype(str)))
    built = ds.build_profile(odd, [*NUMERIC, "empty"], [*CATEGORICAL, "codes"], max_points=10_000)
    path = built.save(tmp_path / "p" / "profile.npz")
    loaded = ds.ReferenceProfile.load(path)
    assert list(loaded.columns) == list(built.columns) and not list(path.parent.glob(".*.tmp"))
    for name, col in built.columns.items():
        back = loaded[name]
        assert type(back) is type(col) and back.n == col.n
        if isinstance(col, ds.NumericProfile):
            np.testing.assert_array_equal(back.values, col.values)
            np.testing.assert_array_equal(back.cum, col.cum)
            assert (back.exact, back.n_unique) == (col.exact, col.n_unique)
            assert back.std == col.std or (np.isnan(back.std) and np.isnan(col.std))
        else:
            assert back.categories == col.categories
            np.testing.assert_array_equal(back.counts, col.counts)
    assert loaded["empty"].n == 0 and loaded["codes"].n == len(reference) - len(range(0, len(reference), 3))
    assert set(loaded["codes"].categories) == {"0", "1", "2", "3", "4"}
    current = frame(np.random.default_rng(9), 700, "mean_shift")
    settings = {c: (None, None) for c in NUMERIC + CATEGORICAL}
    assert ds.drift_verdicts(loaded, current, settings) == ds.drift_verdicts(profile, current, settings)
    with pytest.raises(ValueError, match="values on both sides"):
        ds.column_drift("empty", loaded["empty"], current["amount"], "psi")
