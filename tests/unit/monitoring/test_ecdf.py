"""The drift fast path's kernels (airloop.monitoring.ecdf) against scipy and pandas.

``wasserstein_cells`` must equal scipy's ``wasserstein_distance`` on an exact reference (and the
sort-and-merge ``driftstats.wasserstein`` on a grid one) to floating-point rounding, whatever the
data: ties with the reference's atoms, values outside its range, a constant or single-value side,
cells where the two CDFs cross; ``category_counts`` must equal pandas' ``value_counts`` by value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from airloop.monitoring import driftstats as ds
from airloop.monitoring import ecdf


def cells(ref: np.ndarray, cur: np.ndarray, **kw) -> tuple[float, ds.NumericProfile]:
    p = ds.profile_numeric(ref, **kw)
    return ecdf.wasserstein_cells(p.values, p.cum, p.exact, cur), p


CASES = {
    "normal": lambda r, n: (r.normal(size=n), r.normal(0.02, 1.0, size=n + 17)),
    "shifted": lambda r, n: (r.normal(size=n), r.normal(0.5, 1.3, size=n)),
    "integers": lambda r, n: (np.round(r.normal(40, 12, n)), np.round(r.normal(41, 12, n))),
    "integers_vs_continuous": lambda r, n: (np.round(r.normal(40, 12, n)), r.normal(40, 12, n)),
    "heavy_tails": lambda r, n: (r.standard_t(3, n), r.standard_t(3, n) * 1.2),
    "outside_range": lambda r, n: (r.uniform(0, 1, n), r.uniform(-0.5, 2.0, n)),
    "lognormal": lambda r, n: (np.exp(r.normal(8, 0.9, n)), np.exp(r.normal(8.1, 0.9, n))),
    "few_values": lambda r, n: (r.integers(0, 3, n).astype(float), r.integers(0, 4, n // 3).astype(float)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n", [40, 3000, 60_000])
def test_wasserstein_cells_equals_scipy_on_an_exact_reference(case, n):
    ref, cur = CASES[case](np.random.default_rng(n), n)
    ours, profile = cells(ref, cur)
    assert profile.exact
    assert ours == pytest.approx(wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wasserstein_cells_equals_the_merge_on_a_grid_reference(case):
    ref, cur = CASES[case](np.random.default_rng(5), 200_000)
    ours, profile = cells(ref, cur, max_points=10_000)
    merged = ds.wasserstein(profile, np.sort(cur))
    assert ours == pytest.approx(merged, rel=1e-8, abs=1e-12)
    if profile.n_unique > 10_000:
        assert not profile.exact


def test_wasserstein_cells_in_any_order_and_cell_count():
    rng = np.random.default_rng(3)
    ref, cur = rng.gamma(2.0, 3.0, 5000), rng.gamma(2.2, 3.0, 7000)
    expected = wasserstein_distance(ref, cur)
    p = ds.profile_numeric(ref)
    for x in (cur, np.sort(cur), np.sort(cur)[::-1]):
        for m in (1, 7, 500, None):
            assert ecdf.wasserstein_cells(p.values, p.cum, p.exact, x, cells=m) == \
                pytest.approx(expected, rel=1e-9)


def test_wasserstein_cells_edge_cases():
    rng = np.random.default_rng(4)
    const = np.full(500, 3.0)
    # a constant reference: both tails only
    cur = rng.normal(3, 1, 800)
    assert cells(const, cur)[0] == pytest.approx(wasserstein_distance(const, cur), rel=1e-12)
    # a constant current side, a single current value, identical sides
    ref = rng.normal(size=1000)
    for x in (np.full(300, 0.25), np.array([0.25]), np.array([ref.max()]), np.array([ref.min() - 1])):
        assert cells(ref, x)[0] == pytest.approx(wasserstein_distance(ref, x), rel=1e-9)
    assert cells(ref, ref.copy())[0] == pytest.approx(0.0, abs=1e-12)
    # a single reference value vs itself
    assert cells(np.array([2.0]), np.array([2.0, 2.0]))[0] == 0.0
    # nulls are dropped before (finite_values), as Evidently drops them
    x = ref.copy()
    x[::3] = np.nan
    assert ds.statistic(ds.profile_numeric(ref), ds.finite_values(x), "wasserstein") == pytest.approx(
        wasserstein_distance(ref, x[np.isfinite(x)]) / ref.std(), rel=1e-9)
    with pytest.raises(ValueError, match="both sides"):
        cells(ref, np.empty(0))



@pytest.mark.parametrize("cells_", [None, 7])
def test_values_far_outside_the_reference_range_land_in_their_tail(cells_):
    """A served value far beyond the range (more cells away than an int64 counts) is in the upper
    tail, not wrapped into the lower one: the distance stays scipy's, never negative."""
    rng = np.random.default_rng(8)
    for ref in (rng.normal(size=2000), np.round(rng.normal(40, 12, 2000))):  # grid-free and knot split
        p = ds.profile_numeric(ref)
        for far in (1e300, -1e300, 3e19, -3e19):
            cur = np.append(rng.normal(0.1, 1.0, 999), far)
            got = ecdf.wasserstein_cells(p.values, p.cum, p.exact, cur, cells=cells_)
            assert got == pytest.approx(wasserstein_distance(ref, cur), rel=1e-9), far

def test_cells_fit_heavy_tails_only_with_cells_cut_by_reference_mass():
    rng = np.random.default_rng(6)
    heavy = ds.profile_numeric(rng.standard_t(2, 200_000))
    integers = ds.profile_numeric(np.round(rng.normal(40, 12, 200_000)))
    assert ecdf.cells_fit(heavy.values, heavy.cum, heavy.exact, 200_000)
    assert not ecdf.cells_fit(heavy.values, heavy.cum, heavy.exact, 200_000, cells=4096)  # uniform cells
    assert ecdf.cells_fit(integers.values, integers.cum, integers.exact, 200_000)
    cur = rng.standard_t(2, 300_000) * 1.1
    assert ecdf.wasserstein_cells(heavy.values, heavy.cum, heavy.exact, cur) == pytest.approx(
        ecdf.wasserstein_cells(heavy.values, heavy.cum, heavy.exact, cur, cells=4096), rel=1e-9)


def test_ref_below_matches_counts_on_an_exact_reference():
    rng = np.random.default_rng(8)
    ref = np.round(rng.normal(0, 3, 2000))
    p = ds.profile_numeric(ref)
    q = np.array([-100, -2.5, -2.0, 0.0, 0.1, 100])
    assert ecdf.ref_below(p.values, p.cum, True, q, "left").tolist() == [int((ref < v).sum()) for v in q]
    assert ecdf.ref_below(p.values, p.cum, True, q, "right").tolist() == [int((ref <= v).sum()) for v in q]
    # the KS statistic from it (sup |F_ref - F_cur|) equals scipy's
    cur = np.round(rng.normal(0.5, 3, 1500))
    assert ds.ks_statistic(p, np.sort(cur)) == pytest.approx(ks_2samp(ref, cur).statistic, abs=1e-12)


def expected_counts(values) -> dict:
    counts = pd.Series(values).value_counts(dropna=True, sort=False)
    return {(k.item() if isinstance(k, np.generic) else k): int(v) for k, v in counts.items()}


@pytest.mark.parametrize("shared", [True, False])
def test_category_counts_equal_value_counts(shared):
    rng = np.random.default_rng(9)
    cats = np.array(["a", "b", "c", "rare"], dtype=object)
    x = cats[rng.choice(4, 50_000, p=[0.5, 0.3, 0.1999, 0.0001])]
    x[rng.random(x.size) < 0.2] = None
    x[-1] = "late"  # a category first seen after the sample
    x[-2] = float("nan")
    if not shared:  # distinct (equal) string objects per row: counted by value
        x = np.array([None if v is None or v != v else "".join(v) for v in x], dtype=object)
    got = ecdf.category_counts(pd.Series(x))
    assert got == expected_counts(x)
    assert got["late"] == 1 and None not in got


def test_category_counts_merges_equal_objects_and_reads_categoricals():
    a1, a2 = "".join(["a", "b"]), "".join(["a", "b"])  # equal strings, distinct objects
    x = np.array([a1, a2] * 20_000 + ["c"], dtype=object)
    assert ecdf.category_counts(x) == {"ab": 40_000, "c": 1}
    cat = pd.Series(pd.Categorical(["x", "y", None, "x"], categories=["x", "y", "new"]))
    assert ecdf.category_counts(cat) == {"x": 2, "y": 1}
    assert ecdf.category_counts(pd.Series([1.0, np.nan, np.inf, 1.0])) == {1.0: 2}
    assert ecdf.category_counts(pd.Series([True, False, True])) == {True: 2, False: 1}


def test_new_categories_reach_the_statistics():
    ref = ds.profile_categorical(pd.Series(["a", "b"] * 5000))
    cur = ds.value_counts(pd.Series(["a", "b", "new"] * 10_000))
    assert cur == {"a": 10_000, "b": 10_000, "new": 10_000}
    assert ds.statistic(ref, cur, "jensenshannon") > 0.1


def test_columns_side_by_side_give_the_same_verdicts(monkeypatch):
    rng = np.random.default_rng(12)
    ref = pd.DataFrame({"a": rng.normal(size=30_000), "b": rng.standard_t(3, 30_000),
                        "c": rng.choice(np.array(["x", "y", "z"], dtype=object), 30_000)})
    cur = pd.DataFrame({"a": rng.normal(0.1, 1, 40_000), "b": rng.standard_t(3, 40_000),
                        "c": rng.choice(np.array(["x", "y", "z"], dtype=object), 40_000, p=[0.5, 0.3, 0.2])})
    settings = {"a": (None, None), "b": ("ks", None), "c": (None, None)}
    monkeypatch.setattr(ds, "THREADS", 1)
    one = ds.drift_verdicts(ds.build_profile(ref, ["a", "b"], ["c"]), cur, settings)
    monkeypatch.setattr(ds, "THREADS", 3)
    three = ds.drift_verdicts(ds.build_profile(ref, ["a", "b"], ["c"]), cur, settings)
    assert one == three
    assert [v.method for v in one.values()] == ["wasserstein", "ks", "jensenshannon"]
