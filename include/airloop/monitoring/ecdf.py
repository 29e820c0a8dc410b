"""Reference CDFs, Wasserstein from cell counts and fast category counts: the drift fast path's kernels.

A reference column is described by its *knots*: ascending distinct ``values`` with ``cum[k]`` =
number of reference values ``<= values[k]`` (``n = cum[-1]``). An exact description is a step
function; a grid description is linear between knots (an atom at the minimum). These functions
take the arrays, not :class:`airloop.monitoring.driftstats.NumericProfile` (which delegates here),
so that this module sits below ``driftstats``.

:func:`wasserstein_cells` computes scipy's ``wasserstein_distance`` (the integral of
``|F_ref - F_cur|``) between such a reference and *unsorted* current values without sorting them:
the reference range is cut into uniform cells (a bin index by arithmetic, no search), each current
value adds its count and its position inside its cell to two sums (one loop compiled by numba,
:func:`_kernel`: the same arithmetic in numpy took ten to sixteen passes over the values), and on a cell
where the two CDFs do not cross the integral of their difference follows from those sums exactly;
only the values of cells where they may cross are sorted and merged with the reference knots.
Below the reference minimum and above its maximum the integral is closed-form (the reference CDF
is 0 or 1 there). An exact reference with at most one knot per cell is split at each knot
(values below, at and above it), so that atoms shared by both sides (integer-valued data) do not
make a cell ambiguous.

:func:`category_counts` counts the values of an object column by the identity of its objects
first (pandas' int64 hash table over the object pointers, ~7x faster than hashing the strings)
when the column repeats a few objects, as columns read from Parquet or built from a list of
categories do, then merges equal values; otherwise pandas' ``value_counts``.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

#: Most uniform cells over the reference range (bin indices fit in uint16 with the two tails), when
#: cells are split at reference knots (three bins each) or not.
MAX_CELLS = {True: (1 << 16) // 3 - 2, False: (1 << 16) - 3}

#: Uniform cells cut into parts by reference mass (:func:`_layout`).
COARSE_CELLS = 4096

#: Current values per uniform cell (fewer cells: less work per cell, more cells to sort).
VALUES_PER_CELL = 16

#: Largest reference mass of a cell, times sqrt(n), for which cells pay off (:func:`cells_fit`).
AMBIGUITY_MASS = 0.25

#: Most distinct objects counted by identity before merging them by value.
MAX_IDENTITY_KEYS = 1 << 14

#: Sample of an object column whose distinct objects decide the identity fast path.
IDENTITY_SAMPLE = 4096


# ============================================================================ reference CDF
def ref_below(values: np.ndarray, cum: np.ndarray, exact: bool, x: Any,
              side: Literal["left", "right"]) -> np.ndarray:
    """Number of reference values ``< x`` (``side="left"``) or ``<= x`` (``"right"``): exact
    for an exact description, else linear between knots (nothing below the minimum)."""
    if not exact:
        below = np.interp(x, values, cum.astype(np.float64), left=0.0)
        return np.where(np.asarray(x) <= values[0], 0.0, below) if side == "left" else below
    idx = np.searchsorted(values, x, side=side)
    return np.concatenate(([0], cum))[idx]


def abs_linear_integral(d1: np.ndarray, d2: np.ndarray, width: np.ndarray) -> float:
    """Sum of the integrals of ``|d|`` over segments where ``d`` is linear from ``d1`` to ``d2``."""
    total = float(np.dot(np.abs(d1) + np.abs(d2), width)) / 2
    cross = np.flatnonzero((d1 < 0) != (d2 < 0))
    if cross.size:  # the trapezoid is wrong where d changes sign: exact |linear| there
        a, b, w = d1[cross], d2[cross], width[cross]
        total += float(np.dot((a * a + b * b) / (2 * np.abs(b - a)) - (np.abs(a) + np.abs(b)) / 2, w))
    return total


# ============================================================================ cells
def _uniform_cell(v, inv, shift, top):  # pragma: no cover - compiled, inlined
    """(uniform bin, position inside it) of ``v``: bin 0 below the range, ``top`` above it. Decided
    by comparisons before any integer conversion, so a value far outside the range (more cells away
    than an int64 counts) lands in its tail."""
    t = v * inv + shift  # position in cells, 1-based: [1, m + 1) in range
    if t < 1.0:
        k = 0
    elif t >= top:
        k = top
    else:
        k = int(t)
    return k, t - k  # position inside the cell (tails: relative to lo and to the range's end)


def _pass_uniform(x, inv, shift, top, counts, sums, index):  # pragma: no cover - compiled
    """The cell pass over uniform cells (one loop per layout: no branch on it per value)."""
    for i in range(x.size):
        k, t = _uniform_cell(x[i], inv, shift, top)
        counts[k] += 1
        sums[k] += t
        index[i] = k


def _pass_split(x, inv, shift, top, split, counts, sums, index):  # pragma: no cover - compiled
    """The cell pass over uniform cells split at ``split[cell]``: bin ``3 * cell - 2 + (x >= knot)
    + (x > knot)`` (the tails' knots are +inf)."""
    for i in range(x.size):
        v = x[i]
        k, t = _uniform_cell(v, inv, shift, top)
        knot = split[k]
        k = 3 * k - 2 + (1 if v >= knot else 0) + (1 if v > knot else 0)
        if k < 0:
            k = 0
        counts[k] += 1
        sums[k] += t
        index[i] = k


def _pass_parts(x, inv, shift, top, parts, base, counts, sums, index):  # pragma: no cover - compiled
    """The cell pass over uniform cells cut into ``parts[cell]`` equal parts numbered from
    ``base[cell]``: the part is floor(position * parts), within [0, parts - 1]."""
    for i in range(x.size):
        k, t = _uniform_cell(x[i], inv, shift, top)
        g = parts[k]
        t *= g
        sub = math.floor(t)
        if sub < 0.0:
            sub = 0.0
        if sub > g - 1.0:
            sub = g - 1.0
        k = base[k] + int(sub)
        counts[k] += 1
        sums[k] += t - sub
        index[i] = k


def _pick(x, index, wanted, xs, bins):  # pragma: no cover - compiled
    """The values whose bin is ``wanted``, and their bins, into ``xs`` / ``bins`` (in value order
    of the input); how many."""
    j = 0
    for i in range(x.size):
        b = index[i]
        if wanted[b]:
            xs[j] = x[i]
            bins[j] = b
            j += 1
    return j


_compiled: dict[str, Any] = {}
_compiling = threading.Lock()  # drift's column threads may ask for the first kernel at once
_uniform_cell_py = _uniform_cell  # the Python function: the global name is rebound to its compiled form


def _kernel(name: str) -> Any:
    """The cell pass ``name`` (``_pass_uniform``, ``_pass_split``, ``_pass_parts``, ``_pick``)
    compiled by numba, which is imported on first use. The machine code is cached beside this
    module, so later processes load it instead of compiling; ``nogil`` lets drift's column threads
    run it side by side."""
    with _compiling:
        if not _compiled:
            _compile_all()
    return _compiled[name]


def _compile_all() -> None:
    """Compile the passes into :data:`_compiled` (under :data:`_compiling`)."""
    from numba import njit

    def compile_(fn: Any, **options: Any) -> Any:
        try:
            return njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # no writable cache folder (read-only install, no NUMBA_CACHE_DIR)
            return njit(nogil=True, **options)(fn)

    # the passes call _uniform_cell by its global name: compiled, it is inlined into them
    globals()["_uniform_cell"] = compile_(_uniform_cell_py, inline="always")
    _compiled.update({fn.__name__: compile_(fn) for fn in (_pass_uniform, _pass_split, _pass_parts, _pick)})


def _cells(x: np.ndarray, lo: float, inv: float, m: int, split: np.ndarray | None,
           nsub: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts, sums of the position inside the cell, bin index of every value as uint16).

    Bin 0: below ``lo``; bins ``1..m``: the uniform cells (split in three at the knot
    ``split[cell]`` when given: bins ``3 * cell - 2 + {0, 1, 2}`` for values below, at and above
    it; or in ``nsub[cell]`` equal parts, numbered on); last bin: above the range. The position is
    ``(x - cell start) / width`` (for the tails: relative to ``lo`` and to the range's end, in
    units of the uniform cells). One compiled loop per layout (:func:`_kernel`); in numpy the same
    arithmetic took ten to sixteen passes over the values, about half of drift's time at 10M rows."""
    index = np.empty(x.size, dtype=np.uint16)
    cells = float(inv), 1.0 - lo * inv, int(m) + 1  # inv, shift, top
    if nsub is not None:
        parts = np.concatenate(([1.0], nsub, [1.0]))
        base = np.concatenate(([0], 1 + np.cumsum(nsub) - nsub, [1 + int(nsub.sum())])).astype(np.int64)
        counts, sums = np.zeros(int(nsub.sum()) + 2, dtype=np.int64), np.zeros(int(nsub.sum()) + 2)
        _kernel("_pass_parts")(x, *cells, parts, base, counts, sums, index)
    elif split is not None:
        counts, sums = np.zeros(3 * m + 2, dtype=np.int64), np.zeros(3 * m + 2)
        _kernel("_pass_split")(x, *cells, split, counts, sums, index)
    else:
        counts, sums = np.zeros(m + 2, dtype=np.int64), np.zeros(m + 2)
        _kernel("_pass_uniform")(x, *cells, counts, sums, index)
    return counts, sums, index


def _layout(values: np.ndarray, cum: np.ndarray, exact: bool, n_cur: int,
            cells: int | None) -> tuple[int, np.ndarray | None, np.ndarray | None, float]:
    """The cells of :func:`wasserstein_cells`: (uniform cells ``m``, the knot split of an exact
    reference or None, the parts of each uniform cell or None, the largest reference mass of a
    (sub-)cell). Without ``cells``: ``COARSE_CELLS`` uniform cells, each cut into parts in
    proportion to its reference mass (heavy tails: the mass sits in a few uniform cells), or for
    an exact reference with at most one knot per cell, uniform cells split at the knots."""
    lo, hi, n_ref = float(values[0]), float(values[-1]), float(cum[-1])
    if hi <= lo:
        return 0, None, None, 0.0
    total = int(cells or min(MAX_CELLS[exact], max(1, n_cur // VALUES_PER_CELL)))
    if exact and (split := _split_knots(values, lo, total / (hi - lo), total)) is not None:
        return total, split, None, 0.0  # the reference is constant inside every sub-cell
    m = total if cells else max(1, min(COARSE_CELLS, total // 4))
    mass = np.diff(ref_below(values, cum, exact, np.linspace(lo, hi, m + 1), "right")) / n_ref
    if cells:
        return m, None, None, float(mass.max(initial=0.0))
    nsub = 1 + np.floor(mass * (min(total, MAX_CELLS[False]) - m))
    return m, None, nsub, float((mass / nsub).max(initial=0.0))


def cells_fit(values: np.ndarray, cum: np.ndarray, exact: bool, n_cur: int, cells: int | None = None) -> bool:
    """Whether :func:`wasserstein_cells` pays off for this reference: no cell may hold more
    reference mass than a fraction of the two CDFs' sampling noise (~1/sqrt(n)), else the CDFs
    cross inside most of the dense cells and their values must be sorted anyway."""
    if n_cur == 0:
        return True
    *_, mass = _layout(values, cum, exact, n_cur, cells)
    return bool(mass <= AMBIGUITY_MASS / math.sqrt(min(float(cum[-1]), n_cur)))


def wasserstein_cells(values: np.ndarray, cum: np.ndarray, exact: bool, x: np.ndarray,
                      cells: int | None = None) -> float:
    """First Wasserstein distance between a reference (knots ``values`` / ``cum``, exact or grid)
    and the finite current values ``x`` (any order): scipy's ``wasserstein_distance``. Exact for
    any data; fast when :func:`cells_fit`. ``cells``: that many uniform cells (else
    :func:`_layout`)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    n_cur, n_ref = x.size, float(cum[-1])
    if n_cur == 0 or n_ref == 0:
        raise ValueError("a Wasserstein distance needs values on both sides")
    lo, hi = float(values[0]), float(values[-1])
    m, split, nsub, _ = _layout(values, cum, exact, n_cur, cells)
    if m == 0:  # a single reference value: both tails only
        return float(np.abs(x - lo).sum()) / n_cur
    width = (hi - lo) / m
    edges = lo + width * np.arange(m + 1)
    edges[-1] = hi
    inv = m / (hi - lo)
    counts, sums, index = _cells(x, lo, inv, m, split, nsub)
    total = width * (counts[0] - sums[0] + sums[-1])  # the two tails, closed-form
    # sub-cells in value order: [left, right) with counts, position sums and the current CDF before each
    cell_w = width
    if nsub is not None:  # parts of the uniform cells
        k = np.repeat(np.arange(m), nsub.astype(np.intp))
        cell_w = width / nsub[k]
        j = np.arange(k.size) - np.repeat(np.cumsum(nsub) - nsub, nsub.astype(np.intp))
        left = edges[k] + j * cell_w
        right = np.append(left[1:], hi)
    elif split is None:
        left, right = edges[:-1], edges[1:]
    else:
        knot = np.clip(split[1:-1], edges[:-1], edges[1:])
        left = np.column_stack((edges[:-1], knot, knot)).ravel()
        right = np.column_stack((knot, knot, edges[1:])).ravel()
    c, s = counts[1:-1], sums[1:-1]
    before = np.cumsum(counts)[:-2].astype(np.float64)  # current values in earlier bins
    cell_start = np.repeat(edges[:-1], 3) if split is not None else left
    # integral over each sub-cell of F_cur (times n_cur) and of F_ref (times n_ref)
    cur_int = before * (right - left) + c * (right - cell_start) - cell_w * s
    ref_int = _ref_integral(values, cum, exact, left, right)
    f_lo = ref_below(values, cum, exact, left, "right") / n_ref  # F_ref over [left, right): f_lo .. f_hi
    f_hi = ref_below(values, cum, exact, right, "left") / n_ref
    c_lo, c_hi = before / n_cur, (before + c) / n_cur  # F_cur over it, within
    clear = (c_hi <= f_lo) | (c_lo >= f_hi) | (right <= left)  # the CDFs do not cross inside
    diff = ref_int[clear] / n_ref - cur_int[clear] / n_cur
    total_in = float(np.abs(diff).sum())
    amb = np.flatnonzero(~clear)
    if amb.size:
        total_in += _exact_cells(values, cum, exact, x, index, counts, amb + 1, left[amb], right[amb],
                                 before[amb], n_cur, n_ref)
    return float(total / n_cur + total_in)


def _split_knots(values: np.ndarray, lo: float, inv: float, m: int) -> np.ndarray | None:
    """The knot of each cell (``+inf`` for none; indexed by bin, 1-based) when no cell holds two
    knots (atoms of an exact reference, split off by :func:`_cells`), else None."""
    if m > MAX_CELLS[True]:
        return None
    cell = np.clip((values * inv + (1.0 - lo * inv)).astype(np.intp), 0, m + 1)  # as _cells bins values
    inner = (cell >= 1) & (cell <= m)
    if not np.all(np.diff(cell[inner]) > 0):
        return None
    split = np.full(m + 2, np.inf)
    split[cell[inner]] = values[inner]
    return split


def _ref_integral(values: np.ndarray, cum: np.ndarray, exact: bool, left: np.ndarray,
                  right: np.ndarray) -> np.ndarray:
    """Integral of the reference count function (``n_ref * F_ref``) over each ``[left, right]``
    (within the reference range)."""
    f = cum.astype(np.float64)
    dv = np.diff(values)
    if exact:
        g = np.concatenate(([0.0], np.cumsum(f[:-1] * dv)))  # integral from the minimum to each knot
        slope = np.zeros(values.size)
    else:
        g = np.concatenate(([0.0], np.cumsum((f[:-1] + f[1:]) / 2 * dv)))
        slope = np.append(np.diff(f) / dv, 0.0)

    def integral(t: np.ndarray) -> np.ndarray:
        i = np.maximum(np.searchsorted(values, t, side="right") - 1, 0)
        d = t - values[i]
        return g[i] + f[i] * d + slope[i] * d * d / 2

    # local form for a sub-cell between two knots (no cancellation against the whole range)
    i_l = np.maximum(np.searchsorted(values, left, side="right") - 1, 0)
    i_r = np.maximum(np.searchsorted(values, right, side="left") - 1, 0)
    out = integral(right) - integral(left)
    same = i_l == i_r
    dl, dr = left[same] - values[i_l[same]], right[same] - values[i_l[same]]
    out[same] = f[i_l[same]] * (dr - dl) + slope[i_l[same]] * (dr * dr - dl * dl) / 2
    return out


def _exact_cells(values: np.ndarray, cum: np.ndarray, exact: bool, x: np.ndarray, index: np.ndarray,
                 counts: np.ndarray, bins: np.ndarray, left: np.ndarray, right: np.ndarray, before: np.ndarray,
                 n_cur: int, n_ref: float) -> float:
    """Integral of ``|F_ref - F_cur|`` over the sub-cells ``bins`` (their current values sorted
    and merged with the reference knots inside them)."""
    wanted = np.zeros(counts.size, dtype=np.bool_)
    wanted[bins] = True
    xs, xb = np.empty(int(counts[bins].sum())), np.empty(int(counts[bins].sum()), dtype=np.uint16)
    _kernel("_pick")(x, index, wanted, xs, xb)
    # values sorted; their sub-cells too (bins are monotone in value, so the two orders pair up)
    xs.sort()
    xb.sort()
    xb = xb.astype(np.intp)
    label = np.searchsorted(bins, xb)  # position of each value's sub-cell in `bins`
    xs = np.clip(xs, left[label], right[label])
    start = np.searchsorted(label, np.arange(bins.size), side="left")
    end = np.searchsorted(label, np.arange(bins.size), side="right")
    # the other points, sorted by (sub-cell, value): each sub-cell's ends and the knots inside it
    k_lo = np.searchsorted(values, left, side="right")
    k_hi = np.searchsorted(values, right, side="left")
    n_knots = np.maximum(k_hi - k_lo, 0)
    k_label = np.repeat(np.arange(bins.size), n_knots)
    k_idx = np.repeat(k_lo - np.cumsum(n_knots) + n_knots, n_knots) + np.arange(k_label.size)
    o_pts = np.concatenate((left, right, values[k_idx]))
    o_lab = np.concatenate((np.arange(bins.size), np.arange(bins.size), k_label))
    o_rank = np.concatenate((np.zeros(bins.size), np.full(bins.size, 2.0), np.ones(k_label.size)))
    order = np.lexsort((o_rank, o_pts, o_lab))
    o_pts, o_lab = o_pts[order], o_lab[order]
    # merge: each other point goes after the values of its sub-cell that are <= it
    pos = np.clip(np.searchsorted(xs, o_pts, side="right"), start[o_lab], end[o_lab]) + np.arange(o_pts.size)
    total = xs.size + o_pts.size
    is_x = np.ones(total, dtype=bool)
    is_x[pos] = False
    pts, lab = np.empty(total), np.empty(total, dtype=np.intp)
    pts[pos], lab[pos] = o_pts, o_lab
    pts[is_x], lab[is_x] = xs, label
    seen = np.cumsum(is_x)
    seen_before = start  # current values of earlier sub-cells among the picked ones
    same = lab[1:] == lab[:-1]
    p, q, lb = pts[:-1][same], pts[1:][same], lab[:-1][same]
    f_cur = (before[lb] + seen[:-1][same] - seen_before[lb]) / n_cur
    d1 = ref_below(values, cum, exact, p, "right") / n_ref - f_cur
    d2 = ref_below(values, cum, exact, q, "left") / n_ref - f_cur
    return abs_linear_integral(d1, d2, q - p)


# ============================================================================ category counts
def _pointers(values: np.ndarray) -> np.ndarray:
    """The object pointers of a contiguous object array, as intp (a view: no copy)."""
    buffer = (ctypes.c_char * values.nbytes).from_address(values.ctypes.data)
    return np.frombuffer(buffer, dtype=np.intp)


def category_counts(values: Any) -> dict[Any, int]:
    """Counts of the non-null values of a column (pandas Series or array), by value."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(series.cat.categories))
        return _merge(zip(series.cat.categories, counts.tolist()))
    if series.dtype.kind == "f":
        x = series.to_numpy()
        series = pd.Series(x[np.isfinite(x)])
    elif series.dtype == object and len(series) > 4 * IDENTITY_SAMPLE:
        objects = np.ascontiguousarray(series.to_numpy())
        if np.unique(_pointers(objects[:IDENTITY_SAMPLE])).size <= IDENTITY_SAMPLE // 16:  # few objects, repeated
            return _identity_counts(objects)
    counts = series.value_counts(dropna=True, sort=False)
    return _merge(counts.items())


def _identity_counts(objects: np.ndarray) -> dict[Any, int]:
    """:func:`category_counts` of an object array by object identity, then merged by value."""
    import pandas as pd

    ptr = _pointers(objects)
    by_ptr = pd.Series(ptr, copy=False).value_counts(sort=False)
    if len(by_ptr) > MAX_IDENTITY_KEYS:  # not so few objects after all: count by value
        return _merge(pd.Series(objects, copy=False).value_counts(dropna=True, sort=False).items())
    keys = by_ptr.index.to_numpy()
    seen, first = np.unique(ptr[:IDENTITY_SAMPLE], return_index=True)  # one position of every object
    where = first[np.searchsorted(seen, keys).clip(0, seen.size - 1)]
    late = seen[np.searchsorted(seen, keys).clip(0, seen.size - 1)] != keys
    if late.any():  # objects first seen after the sample
        rows = np.flatnonzero(np.isin(ptr, keys[late]))
        more, at = np.unique(ptr[rows], return_index=True)
        where[late] = rows[at[np.searchsorted(more, keys[late])]]
    known = dict(zip(keys.tolist(), objects[where].tolist()))
    return _merge((known[p], c) for p, c in zip(by_ptr.index.tolist(), by_ptr.tolist()))


def _merge(items: Iterator[tuple[Any, int]] | Any) -> dict[Any, int]:
    """``{value: count}`` of the non-null values with a positive count, equal values merged."""
    import pandas as pd

    out: dict[Any, int] = {}
    for key, count in items:
        if count <= 0 or (not isinstance(key, (str, bytes)) and bool(pd.isna(key))):
            continue
        key = key.item() if isinstance(key, np.generic) else key
        out[key] = out.get(key, 0) + int(count)
    return out
