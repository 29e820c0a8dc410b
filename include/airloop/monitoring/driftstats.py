"""Fast per-column drift statistics with Evidently's verdicts, from a stored reference profile.

Evidently 0.7 (``ValueDrift`` / ``DataDriftPreset``) judges a column by calling one of its legacy
stat tests on two pandas Series; at a million rows that costs minutes, mostly in pandas and in
the report's plots. This module computes the same statistics with a handful of vectorised numpy
passes per column, against a :class:`ReferenceProfile` computed once per model version at
training time (stored as ``reference/profile.npz`` next to ``reference.parquet``):

* numeric column: the finite values as sorted unique values with cumulative counts (exact while
  the column has at most ``max_points`` distinct values, else a grid of ``max_points`` points,
  half even in rank and half even in value, with the exact count of values at or below each,
  the CDF taken as linear in between), plus the count, mean, the
  ``ddof=0`` standard deviation Evidently normalises Wasserstein by and the number of distinct
  values (which decides Evidently's binning and default method);
* categorical column: the count of every category.

Per interval only the current data is touched: ``wasserstein`` from cell counts without sorting
where they pay off (:func:`airloop.monitoring.ecdf.wasserstein_cells`), else one sort per numeric
column judged by ``wasserstein``/``ks``/``hellinger`` (none for the histogram methods), one hash
count per categorical column (:func:`airloop.monitoring.ecdf.category_counts`), columns side by
side on up to :data:`THREADS` threads, no per-row Python.

What is replicated from ``evidently/legacy/calculations/stattests`` (0.7.23), per method:

==============  =========================================================  ===================
method          statistic                                                  drift when
==============  =========================================================  ===================
wasserstein     W1(ref, cur) / max(std(ref, ddof=0), 0.001)                score >= threshold
ks              two-sample KS p-value (scipy: exact if both n <= 10,000,   p <= threshold
                else Smirnov's asymptotic ``kstwo.sf(D, round(mn/(m+n)))``)
psi             sum((r - c) * ln(r / c)) over bins, zeros filled           score >= threshold
jensenshannon   scipy ``jensenshannon`` over bins (no zero filling)        score >= threshold
kl_div          scipy ``entropy(r, c)`` over bins, zeros filled            score >= threshold
hellinger       Hellinger distance (density histogram, Sturges bins over   score >= threshold
                the distinct values; categories: proportions)
chisquare       scipy ``chisquare(cur counts, ref counts * n_cur/n_ref)``  p < threshold
z               two-proportion z-test of "not the first sorted category"   p < threshold
==============  =========================================================  ===================

Bins ("get_binned_data"): a numeric column with more than 20 distinct reference values is cut
into numpy's Sturges bins over the *combined* reference + current range and size (so the edges
depend on the current data: they are recomputed per interval from the profile's cumulative
counts); otherwise (and for categories) one bin per distinct value of either side. The default
method when none is configured follows ``_get_default_stattest``: reference of at most 1,000
values: ks (numeric with more than 5 distinct values), else chisquare (more than 2) or z;
larger references: wasserstein (numeric with more than 5 distinct values) or jensenshannon.

Where the fast path can differ from Evidently: with an exact profile the statistics equal
Evidently's up to floating-point summation order (~1e-12 relative). With a grid profile (a
reference column with more than ``max_points`` distinct values) the reference CDF is exact at the
grid points and linear between them, so a reference count is off by at most the values of one
grid step (``2 * n_ref / max_points``) and the statistics carry a small error (measured in
``tests/unit/monitoring/test_driftstats.py`` and ``benchmarks/drift.py``): a verdict can differ only for a
score that close to its threshold. For ``hellinger`` on a grid profile the number of distinct
values of both sides together (which sets its bin count) is estimated.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from airloop.core.files import atomic_path
from airloop.monitoring import ecdf

#: Most points kept per numeric reference column (its distinct values, else a rank + value grid).
PROFILE_MAX_POINTS = 100_000


#: Threads that profile and judge columns side by side (``AIRLOOP_DRIFT_THREADS``; default 2, or 1
#: on a single usable CPU). The statistics of a column do not depend on it. With the numpy cell
#: pass, GIL hand-offs made 2 threads 2.4x slower on a saturated machine (2026-12-02, load 6); with
#: the compiled ``nogil`` passes (:mod:`airloop.monitoring.ecdf`) 2 threads were faster both idle
#: (10M rows: 2.20 s vs 3.52 s) and beside four busy processes on 2 cores (1M rows: 0.95-1.02 s vs
#: 1.51-1.63 s; 10M rows: 7.6 s vs 14.5 s), measured 2026-12-04.
THREADS = max(1, int(os.environ.get("AIRLOOP_DRIFT_THREADS") or min(2, len(os.sched_getaffinity(0)))))


#: Current values per block of the ECDF merge (cache-sized temporaries).
ECDF_BLOCK = 1 << 18


#: scipy's ``ks_2samp`` computes the exact p-value when both samples have at most this many values.
KS_EXACT_MAX_N = 10_000


#: Methods whose drift score is a p-value (drift when small); the others are distances.
P_VALUE_METHODS = frozenset({"ks", "chisquare", "z"})


#: Evidently's default threshold of each stat test (``StatTest.default_threshold``).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.05, "chisquare": 0.05, "z": 0.05,
    "wasserstein": 0.1, "psi": 0.1, "jensenshannon": 0.1, "kl_div": 0.1, "hellinger": 0.1,
}


#: Column kinds each method accepts in Evidently (``StatTest.allowed_feature_types``) when it is
#: configured; its default choice may also apply chisquare/z to a low-cardinality numeric column.
METHOD_KINDS: dict[str, frozenset[str]] = {
    "ks": frozenset({"num"}), "wasserstein": frozenset({"num"}),
    "chisquare": frozenset({"cat"}), "z": frozenset({"cat"}),
    "psi": frozenset({"num", "cat"}), "jensenshannon": frozenset({"num", "cat"}),
    "kl_div": frozenset({"num", "cat"}), "hellinger": frozenset({"num", "cat"}),
}


#: Evidently bins a numeric column by value (not Sturges bins) up to this many distinct reference values.
DISCRETE_MAX_UNIQUE = 20


#: Reference size up to which Evidently's default choice is ks / chisquare / z.
SMALL_REFERENCE_ROWS = 1000


#: Version of the profile file layout.
PROFILE_FORMAT = 1


Kind = Literal["num", "cat"]


# ============================================================================ profile
@dataclass(frozen=True, eq=False)
class NumericProfile:
    """A numeric reference column: ``values`` ascending and distinct, ``cum[k]`` = number of
    reference values ``<= values[k]`` (exact at every point). ``exact``: ``values`` holds every
    distinct value (else a grid including the minimum and maximum, the CDF linear in between)."""

    n: int
    values: np.ndarray
    cum: np.ndarray
    exact: bool
    n_unique: int
    mean: float
    std: float
    kind: Kind = "num"

    @property
    def counts(self) -> np.ndarray:
        """Reference values at each point (exact profiles: the multiplicity of each value)."""
        return np.diff(self.cum, prepend=0)

    def below(self, x: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
        """Number of reference values ``< x`` (``side="left"``) or ``<= x`` (``"right"``): exact
        for an exact profile, else interpolated linearly between grid points."""
        return ecdf.ref_below(self.values, self.cum, self.exact, x, side)


@dataclass(frozen=True, eq=False)
class CategoricalProfile:
    """A categorical reference column: each category (JSON-able value) and its count."""

    n: int
    categories: tuple[Any, ...]
    counts: np.ndarray
    kind: Kind = "cat"

    @property
    def n_unique(self) -> int:
        return len(self.categories)


ColumnProfile = NumericProfile | CategoricalProfile


def profile_numeric(values: Any, max_points: int = PROFILE_MAX_POINTS) -> NumericProfile:
    """Profile of a numeric column (NaN and +-inf dropped, as Evidently drops them).

    ``max_points`` is raised to :data:`KS_EXACT_MAX_N` so that every reference small enough for
    scipy's exact KS p-value is kept exactly."""
    x = finite_values(values)
    n = int(x.size)
    if n == 0:
        return NumericProfile(0, np.empty(0), np.empty(0, np.int64), True, 0, math.nan, math.nan)
    # Evidently's norm is np.std(<the reference Series>) = Series.std(ddof=0): pandas' two-pass
    # nanvar (without bottleneck), replicated operation for operation on the finite values
    std = float(np.sqrt(np.square(x.sum(dtype=np.float64) / np.float64(n) - x).sum(dtype=np.float64) / np.float64(n)))
    mean = float(x.mean())
    s = np.sort(x)
    change = np.empty(n, dtype=bool)  # last index of every run of equal values
    np.not_equal(s[1:], s[:-1], out=change[:-1])
    change[-1] = True
    last = np.flatnonzero(change)
    n_unique = int(last.size)
    max_points = max(int(max_points), KS_EXACT_MAX_N)
    if n_unique <= max_points:
        return NumericProfile(n, s[last], (last + 1).astype(np.int64), True, n_unique, mean, std)
    # Half the points evenly spaced in rank (bounded mass per step), half evenly spaced in value
    # (bounded width per step: long tails); the CDF is exact at every point, linear in between.
    ranks = np.round(np.linspace(0, n - 1, max_points // 2)).astype(np.int64)
    grid = np.unique(np.concatenate((s[ranks], np.linspace(s[0], s[-1], max_points - max_points // 2))))
    cum = np.searchsorted(s, grid, side="right").astype(np.int64)
    return NumericProfile(n, grid, cum, False, n_unique, mean, std)


def profile_categorical(values: Any) -> CategoricalProfile:
    """Profile of a categorical column: counts of the non-null values."""
    counts = ecdf.category_counts(values)
    items = sorted(((_json_scalar(k), int(v)) for k, v in counts.items()), key=lambda kv: (str(type(kv[0])), str(kv[0])))
    return CategoricalProfile(n=sum(v for _, v in items), categories=tuple(k for k, _ in items),
                              counts=np.array([v for _, v in items], dtype=np.int64))


def _json_scalar(value: Any) -> Any:
    """A category as a plain Python value (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """The drift reference of one model version: a profile per column, in column order.

    ``seasonal``: per column judged against the nearest weekday, one profile per weekday (0 =
    Monday) of the reference rows; ``calibration``: the thresholds learned for ``threshold: auto``
    (:mod:`airloop.monitoring.calibration`), stored with the profile. Both empty / None for a
    version without calibrated thresholds (and in profiles written before they existed)."""

    columns: dict[str, ColumnProfile]
    seasonal: dict[str, dict[int, ColumnProfile]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    def __getitem__(self, column: str) -> ColumnProfile:
        return self.columns[column]

    def __contains__(self, column: object) -> bool:
        return column in self.columns

    def save(self, path: Path | str) -> Path:
        """Write the profile as one ``.npz`` file (numpy arrays + a JSON header, no pickle),
        atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header: dict[str, Any] = {"format": PROFILE_FORMAT, "columns": []}
        arrays: dict[str, np.ndarray] = {}
        for i, (name, col) in enumerate(self.columns.items()):
            header["columns"].append(_save_column(name, col, str(i), arrays))
        if self.seasonal:
            header["seasonal"] = [_save_column(name, col, f"s{i}_{day}", arrays) | {"weekday": day}
                                  for i, (name, by_day) in enumerate(self.seasonal.items())
                                  for day, col in sorted(by_day.items())]
        if self.calibration is not None:
            header["calibration"] = self.calibration
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
        return path

    @classmethod
    def load(cls, path: Path | str) -> ReferenceProfile:
        """Read a profile written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != PROFILE_FORMAT:
                raise ValueError(f"{path}: unsupported drift profile format {header.get('format')!r}")
            columns = {c["name"]: _load_column(c, str(i), data) for i, c in enumerate(header["columns"])}
            seasonal: dict[str, dict[int, ColumnProfile]] = {}
            names = list(dict.fromkeys(c["name"] for c in header.get("seasonal", [])))
            for c in header.get("seasonal", []):
                key = f"s{names.index(c['name'])}_{c['weekday']}"
                seasonal.setdefault(c["name"], {})[int(c["weekday"])] = _load_column(c, key, data)
        return cls(columns, seasonal=seasonal, calibration=header.get("calibration"))


def _save_column(name: str, col: ColumnProfile, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A column's header entry; its arrays go into ``arrays`` under names ending in ``key``."""
    if isinstance(col, NumericProfile):
        arrays[f"values_{key}"], arrays[f"cum_{key}"] = col.values, col.cum
        return {"name": name, "kind": "num", "n": col.n, "exact": col.exact, "n_unique": col.n_unique,
                "mean": _nan_to_none(col.mean), "std": _nan_to_none(col.std)}
    arrays[f"counts_{key}"] = col.counts
    return {"name": name, "kind": "cat", "n": col.n, "categories": list(col.categories)}


def _load_column(c: dict[str, Any], key: str, data: Any) -> ColumnProfile:
    """A column written by :func:`_save_column`."""
    if c["kind"] == "num":
        return NumericProfile(n=int(c["n"]), values=data[f"values_{key}"], cum=data[f"cum_{key}"],
                              exact=bool(c["exact"]), n_unique=int(c["n_unique"]), mean=_none_to_nan(c["mean"]),
                              std=_none_to_nan(c["std"]))
    return CategoricalProfile(n=int(c["n"]), categories=tuple(c["categories"]), counts=data[f"counts_{key}"])


def _nan_to_none(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def build_profile(frame: Any, numeric: Iterable[str], categorical: Iterable[str],
                  max_points: int = PROFILE_MAX_POINTS) -> ReferenceProfile:
    """Profile the ``numeric`` and ``categorical`` columns of a reference frame (pandas)."""
    numeric, categorical = list(numeric), list(categorical)
    jobs = [(profile_numeric, frame[name], max_points) for name in numeric]
    jobs += [(profile_categorical, frame[name]) for name in categorical]
    return ReferenceProfile(dict(zip(numeric + categorical, _in_threads(jobs))))


def _in_threads(jobs: list[tuple[Any, ...]]) -> list[Any]:
    """``fn(*args)`` of every ``(fn, *args)`` job, in order, on up to :data:`THREADS` threads
    (numpy's sorts, searches and bincounts release the GIL: columns are profiled side by side)."""
    workers = min(THREADS, len(jobs))
    if workers <= 1:
        return [fn(*args) for fn, *args in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="airloop-drift") as pool:
        return list(pool.map(lambda job: job[0](*job[1:]), jobs))


# ============================================================================ current side
def finite_values(values: Any) -> np.ndarray:
    """A numeric current column as float64 without NaN / +-inf (Evidently drops both)."""
    if hasattr(values, "to_numpy"):  # a float64 column is read in place, others converted (nulls as NaN)
        x = values.to_numpy() if values.dtype == np.float64 else values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    return x if finite.all() else x[finite]  # no copy of a column without nulls


def value_counts(values: Any) -> dict[Any, int]:
    """Counts of the non-null (and finite) values of a current column (:func:`ecdf.category_counts`)."""
    return ecdf.category_counts(values)


def _discrete(ref: ColumnProfile, cur_counts: Mapping[Any, int]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Union of the distinct values of both sides with the count of each (reference, current)."""
    if isinstance(ref, NumericProfile):
        if not ref.exact:
            raise ValueError("value-binned statistics need an exact numeric profile")
        ref_counts = dict(zip(ref.values.tolist(), ref.counts.tolist()))
    else:
        ref_counts = dict(zip(ref.categories, ref.counts.tolist()))
    keys = list(ref_counts.keys() | cur_counts.keys())
    return (keys, np.array([ref_counts.get(k, 0) for k in keys], dtype=np.float64),
            np.array([cur_counts.get(k, 0) for k in keys], dtype=np.float64))


# ============================================================================ binning
def sturges_edges(lo: float, hi: float, size: int) -> np.ndarray:
    """``np.histogram_bin_edges(a, bins="sturges")`` for data of ``size`` values spanning
    ``[lo, hi]``, computed without the data (same float operations as numpy 2)."""
    lo, hi = np.float64(lo), np.float64(hi)
    first, last = lo, hi
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (hi - lo) / (np.log2(size) + 1.0)
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True, dtype=np.float64)


def _hist_from_below(left: np.ndarray, right_last: int) -> np.ndarray:
    """Histogram counts from "values below each edge" counts (numpy: the last bin is closed)."""
    cum = np.append(left[:-1], right_last)
    return np.diff(cum).astype(np.float64)


def reference_hist(ref: NumericProfile, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(reference, edges)[0]`` from the profile."""
    return _hist_from_below(ref.below(edges, "left"), int(ref.below(edges[-1:], "right")[0]))


def current_hist(x: np.ndarray, edges: np.ndarray, x_sorted: bool = False) -> np.ndarray:
    """``np.histogram(x, edges)[0]`` for uniform ``edges`` (numpy's fast uniform-bin path, or
    two binary searches per edge when ``x`` is already sorted)."""
    if x_sorted:
        return _hist_from_below(np.searchsorted(x, edges, side="left"),
                                int(np.searchsorted(x, edges[-1], side="right")))
    return np.histogram(x, bins=len(edges) - 1, range=(edges[0], edges[-1]))[0].astype(np.float64)


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    """Evidently's ``feel_zeroes``: empty bins get min(non-zero)/1e6 when that minimum is at most
    1e-4, else 1e-4."""
    nonzero = p[p != 0]
    if nonzero.size == 0 or nonzero.size == p.size:
        return p
    low = nonzero.min()
    out = p.copy()
    out[out == 0] = low / 10**6 if low <= 0.0001 else 0.0001
    return out


def binned(ref: ColumnProfile, cur: np.ndarray | Mapping[Any, int],
           fill_zeroes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``get_binned_data``: the shares of reference and current values per bin.

    ``cur``: the finite current values (numeric) or their counts (:func:`current_data`)."""
    if isinstance(ref, NumericProfile) and ref.n_unique > DISCRETE_MAX_UNIQUE:
        x = np.asarray(cur)
        edges = sturges_edges(min(ref.values[0], x.min()), max(ref.values[-1], x.max()), ref.n + x.size)
        r = reference_hist(ref, edges) / ref.n
        c = current_hist(x, edges) / x.size
    else:
        _, rc, cc = _discrete(ref, cur if isinstance(cur, Mapping) else value_counts(cur))
        r, c = rc / ref.n, cc / cc.sum()
    if fill_zeroes:
        r, c = _fill_zeroes(r), _fill_zeroes(c)
    return r, c


# ============================================================================ ECDF distances
def ecdf_segments(ref: NumericProfile, s: np.ndarray,
                  block: int = ECDF_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Cut the real line at every reference point and sorted current value ``s``, block by block.

    Yields, per block of ``block`` current values (with the reference points among them), per
    segment ``[x_i, x_i+1)`` of the merged values: its width, the reference CDF at its left end
    (right-continuous) and just before its right end, and the current CDF on it. Blocks keep the
    temporaries small (cache-sized, reused by the allocator instead of fresh pages per column).
    Exact profile: the reference CDF is a step function (the two ends are equal). Grid profile: it
    is linear between grid points (each step's values spread evenly) and continuous but at the
    minimum (an atom). Within a run of equal values only the last position carries the
    right-continuous CDFs; the segments before it have zero width.
    """
    v, k, n = ref.values, ref.values.size, s.size
    cdf = np.concatenate(([0.0], ref.cum / ref.n))  # reference CDF once r points are passed
    if not ref.exact:
        slope = np.zeros(k + 1)
        slope[1:-1] = np.diff(cdf[1:]) / np.diff(v)
        origin = np.concatenate(([0.0], v))
    starts = list(range(0, n, block)) + [n]
    # reference points of block b: those < its first current value .. < the next block's first
    firsts = np.searchsorted(v, s[starts[1:-1]], side="left")
    knots = np.concatenate(([0], firsts, [k])).astype(np.int64)
    for b in range(len(starts) - 1):
        j0, j1, k0, k1 = starts[b], starts[b + 1], int(knots[b]), int(knots[b + 1])
        cur, pts = s[j0:j1], v[k0:k1]
        m = cur.size + pts.size
        pos = np.searchsorted(cur, pts, side="right") + np.arange(pts.size)  # equal values: current first
        merged = np.empty(m + (j1 < n))
        is_cur = np.ones(m, dtype=bool)
        is_cur[pos] = False
        merged[pos] = pts
        merged[:m][is_cur] = cur
        if j1 < n:
            merged[m] = s[j1]  # the block's last segment ends at the next block's first value
        run = np.repeat(np.arange(k0, k1 + 1), np.diff(np.concatenate(([0], pos, [m]))))  # points passed
        f_cur = (j0 + k0 + np.arange(1, m + 1) - run) / n  # current values passed / n
        if ref.exact:
            f = cdf[run]
        else:
            f = cdf[run] + (merged[:m] - origin[run]) * slope[run]
        width = np.diff(merged)
        f_left = f[:width.size]
        if ref.exact:
            yield width, f_left, f_left, f_cur[:width.size]
            continue
        f_right = np.empty(width.size)
        f_right[:m - 1] = f[1:]
        if j1 < n:
            f_right[m - 1] = cdf[k1] + (s[j1] - origin[k1]) * slope[k1]
        f_right[merged[1:] <= v[0]] = 0.0  # nothing below the minimum
        yield width, f_left, f_right, f_cur[:width.size]


def wasserstein(ref: NumericProfile, s: np.ndarray, block: int = ECDF_BLOCK) -> float:
    """First Wasserstein distance between the reference and the sorted current values
    (scipy's ``wasserstein_distance``: the integral of |F_ref - F_cur|)."""
    total = 0.0
    for width, f_left, f_right, f_cur in ecdf_segments(ref, s, block):
        da = f_left - f_cur
        if ref.exact:
            total += float(np.dot(np.abs(da), width))
            continue
        total += ecdf.abs_linear_integral(da, f_right - f_cur, width)  # linear between grid points
    return total


def ks_statistic(ref: NumericProfile, s: np.ndarray, block: int = ECDF_BLOCK) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_ref - F_cur| (sorted current values)."""
    best = 0.0
    for width, f_left, f_right, f_cur in ecdf_segments(ref, s, block):
        open_ = width > 0
        gap = np.abs(f_left - f_cur)[open_]
        if not ref.exact:
            gap = np.maximum(gap, np.abs(f_right - f_cur)[open_])
        if gap.size:
            best = max(best, float(gap.max()))
    return best


def ks_pvalue(ref: NumericProfile, s: np.ndarray) -> float:
    """scipy ``ks_2samp(reference, current).pvalue`` (two-sided, method "auto")."""
    from scipy import stats

    if max(ref.n, s.size) <= KS_EXACT_MAX_N:  # exact p-value: the reference is kept exactly
        return float(stats.ks_2samp(np.repeat(ref.values, ref.counts), s).pvalue)
    m, n = sorted([float(ref.n), float(s.size)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(stats.kstwo.sf(ks_statistic(ref, s), np.round(en)), 0, 1))


# ============================================================================ stat tests
def _hellinger(ref: ColumnProfile, cur: np.ndarray | Mapping[Any, int]) -> float:
    if isinstance(ref, CategoricalProfile):
        _, rc, cc = _discrete(ref, cur)  # type: ignore[arg-type]
        total = float(np.sum(np.sqrt((rc / ref.n) * (cc / cc.sum()))))
    else:
        s = np.sort(np.asarray(cur))
        cur_unique = s[np.append(s[1:] != s[:-1], True)]
        # distinct values of both sides; with a grid profile only grid points can match (an estimate)
        pos = np.minimum(np.searchsorted(ref.values, cur_unique), ref.values.size - 1)
        n_keys = ref.n_unique + cur_unique.size - int(np.count_nonzero(ref.values[pos] == cur_unique))
        edges = sturges_edges(min(ref.values[0], s[0]), max(ref.values[-1], s[-1]), n_keys)
        widths = np.diff(edges)
        h1, h2 = reference_hist(ref, edges), current_hist(s, edges, x_sorted=True)
        h1, h2 = h1 / widths / h1.sum(), h2 / widths / h2.sum()
        bin_width = (edges.max() - edges.min()) / (len(edges) - 1)
        total = float(np.sum(np.sqrt(h1 * h2) * bin_width))
    return math.sqrt(1 - float(np.clip(total, 0, 1)))


def _chisquare(ref: ColumnProfile, counts: Mapping[Any, int]) -> float:
    from scipy import stats

    _, rc, cc = _discrete(ref, counts)
    with np.errstate(divide="ignore"):  # a category new in the current data: expected 0, p = 0
        return float(stats.chisquare(cc, rc * (cc.sum() / ref.n))[1])


def _ztest(ref: ColumnProfile, counts: Mapping[Any, int]) -> float:
    from scipy.stats import norm

    keys, rc, cc = _discrete(ref, counts)
    if np.count_nonzero(rc) == 1 and np.count_nonzero(cc) == 1 and np.argmax(rc) == np.argmax(cc):
        return 1.0  # one and the same value on both sides
    first = keys.index(sorted(keys)[0])
    n1, n2 = float(rc.sum()), float(cc.sum())
    p1, p2 = float(n1 - rc[first]) / n1, float(n2 - cc[first]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def current_data(ref: ColumnProfile, current: Any) -> np.ndarray | dict[Any, int]:
    """What the statistics read of a current column: its finite values (numeric profile) or the
    counts of its non-null values (categorical profile)."""
    return finite_values(current) if isinstance(ref, NumericProfile) else value_counts(current)


def _size(cur: np.ndarray | Mapping[Any, int]) -> int:
    return int(sum(cur.values())) if isinstance(cur, Mapping) else int(cur.size)


def statistic(ref: ColumnProfile, cur: np.ndarray | Mapping[Any, int], method: str) -> float:
    """Evidently's drift score of ``method`` for a current column (:func:`current_data`)."""
    from scipy import stats
    from scipy.spatial import distance

    if method not in METHOD_KINDS:
        raise ValueError(f"unknown drift method {method!r}; known: {sorted(METHOD_KINDS)}")
    if ref.n == 0 or _size(cur) == 0:
        raise ValueError("a drift statistic needs values on both sides")
    if isinstance(ref, CategoricalProfile) and method in ("ks", "wasserstein"):
        raise ValueError(f"drift method {method!r} does not apply to a categorical column")
    if isinstance(ref, NumericProfile) and method in ("chisquare", "z"):
        cur = value_counts(cur)  # Evidently's default choice for a low-cardinality numeric column
    if method == "wasserstein":  # from cell counts when they pay off, else sorted and merged
        x = np.asarray(cur)
        fit = ecdf.cells_fit(ref.values, ref.cum, ref.exact, x.size)  # type: ignore[union-attr]
        w = (ecdf.wasserstein_cells(ref.values, ref.cum, ref.exact, x) if fit  # type: ignore[union-attr]
             else wasserstein(ref, np.sort(x)))  # type: ignore[arg-type]
        return w / max(float(ref.std), 0.001)  # type: ignore[union-attr]
    if method == "ks":
        return ks_pvalue(ref, np.sort(cur))  # type: ignore[arg-type]
    if method == "chisquare":
        return _chisquare(ref, cur)  # type: ignore[arg-type]
    if method == "z":
        return _ztest(ref, cur)  # type: ignore[arg-type]
    if method == "hellinger":
        return _hellinger(ref, cur)
    r, c = binned(ref, cur, fill_zeroes=method != "jensenshannon")
    if method == "psi":
        return float(np.sum((r - c) * np.log(r / c)))
    if method == "kl_div":
        return float(stats.entropy(r, c))
    return float(distance.jensenshannon(r, c))


def drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently's verdict: ks p <= threshold; chisquare/z p < threshold; distances >= threshold
    (a NaN score never drifts)."""
    if method == "ks":
        return bool(score <= threshold)
    if method in P_VALUE_METHODS:
        return bool(score < threshold)
    return bool(score >= threshold)


def default_method(ref: ColumnProfile, cur: np.ndarray | Mapping[Any, int]) -> str:
    """The stat test Evidently picks when none is configured (``_get_default_stattest``): by the
    reference size and the number of distinct values of both sides (:func:`current_data`)."""
    if isinstance(ref, CategoricalProfile):
        if ref.n > SMALL_REFERENCE_ROWS:
            return "jensenshannon"
        return "chisquare" if len(set(ref.categories) | set(cur)) > 2 else "z"
    if ref.n_unique > 5:
        n_values = ref.n_unique
    else:  # at most 5 distinct reference values: the profile holds each of them
        x = np.asarray(cur)
        n_values = ref.n_unique + int(np.unique(x[~np.isin(x, ref.values)]).size)
    if ref.n <= SMALL_REFERENCE_ROWS:
        return "ks" if n_values > 5 else ("chisquare" if n_values > 2 else "z")
    return "wasserstein" if n_values > 5 else "jensenshannon"


@dataclass(frozen=True)
class DriftVerdict:
    """One column's drift: Evidently's method, threshold, score and verdict, and the number of
    non-null values compared on each side."""

    column: str
    kind: Kind
    method: str
    threshold: float
    statistic: float
    drifted: bool
    current_rows: int
    reference_rows: int

    @property
    def p_value(self) -> float | None:
        return self.statistic if self.method in P_VALUE_METHODS else None


def column_drift(column: str, ref: ColumnProfile, current: Any, method: str | None = None,
                 threshold: float | None = None) -> DriftVerdict:
    """Judge one current column (Series or array; nulls allowed) against its profile like
    Evidently's ``ValueDrift(column, method, threshold)``: ``method=None`` = Evidently's default
    choice, ``threshold=None`` = the method's default threshold."""
    return verdict(column, ref, current_data(ref, current), method, threshold)


def verdict(column: str, ref: ColumnProfile, cur: np.ndarray | Mapping[Any, int], method: str | None = None,
            threshold: float | None = None) -> DriftVerdict:
    """:func:`column_drift` of a current column already read by :func:`current_data`."""
    method = method or default_method(ref, cur)
    threshold = DEFAULT_THRESHOLDS[method] if threshold is None else float(threshold)
    score = statistic(ref, cur, method)
    return DriftVerdict(column=column, kind=ref.kind, method=method, threshold=threshold, statistic=score,
                        drifted=drifted(method, score, threshold), current_rows=_size(cur), reference_rows=ref.n)


def drift_verdicts(profile: ReferenceProfile, current: Any,
                   settings: Mapping[str, tuple[str | None, float | None]]) -> dict[str, DriftVerdict]:
    """:func:`column_drift` for every column of ``settings`` (``{column: (method, threshold)}``),
    in that order, with ``current`` a pandas frame holding those columns."""
    jobs = [(column_drift, column, profile[column], current[column], method, threshold)
            for column, (method, threshold) in settings.items()]
    return dict(zip(settings, _in_threads(jobs)))
