"""A/B statistics (pure): two-proportion, Welch and DeLong tests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

from airloop.core.metrics import finite_or_none, higher_is_better
from airloop.core.names import CHALLENGER, CHAMPION


# ============================================================================ statistics
@dataclass(frozen=True)
class Comparison:
    """The challenger-minus-champion difference of the success metric and its test."""

    method: str
    estimand: str
    champion_value: float | None
    challenger_value: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _z(alpha: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def _normal_test(difference: float, se: float, alpha: float) -> tuple[float, float, float]:
    """``(p, low, high)`` of a two-sided z-test of ``difference`` with standard error ``se``."""
    from scipy import stats

    if not se > 0:
        return (1.0 if difference == 0 else 0.0), difference, difference
    half = _z(alpha) * se
    return float(2.0 * stats.norm.sf(abs(difference) / se)), difference - half, difference + half


def two_proportions(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float) -> tuple[float, float, float, float]:
    """``(p_b - p_a, p-value, ci_low, ci_high)``: pooled two-proportion z-test, Newcombe's hybrid
    score interval (method 10 of Newcombe 1998) from the Wilson intervals of both rates."""
    from scipy import stats

    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    p_value = _normal_test(diff, se, alpha)[0]
    ci_a = stats.binomtest(x_a, n_a).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    ci_b = stats.binomtest(x_b, n_b).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    low = diff - math.sqrt((p_b - ci_b.low) ** 2 + (ci_a.high - p_a) ** 2)
    high = diff + math.sqrt((ci_b.high - p_b) ** 2 + (p_a - ci_a.low) ** 2)
    return diff, p_value, low, high


def _mean_difference(a: np.ndarray, b: np.ndarray, alpha: float, paired: bool) -> tuple[float, float, float, float]:
    """``(mean(b) - mean(a), p, low, high)``: Welch's t-test, or the paired t-test."""
    from scipy import stats

    diff = float(b.mean() - a.mean())
    res = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    if not math.isfinite(res.pvalue):  # no variance at all: identical constant samples or pairs
        return diff, (1.0 if diff == 0 else 0.0), diff, diff
    ci = res.confidence_interval(confidence_level=1.0 - alpha)
    return diff, float(res.pvalue), float(ci.low), float(ci.high)


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong placements by midranks (Sun & Xu 2014): ``(auc[k], v10[k, m], v01[k, n])`` for the
    score rows ``scores[k]`` of the same labels ``y`` (1 = positive)."""
    import numpy as np
    from scipy import stats

    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    tz = stats.rankdata(scores, axis=1)
    tx = stats.rankdata(scores[:, pos], axis=1)
    ty = stats.rankdata(scores[:, neg], axis=1)
    auc = (tz[:, pos].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, pos] - tx) / n
    v01 = 1.0 - (tz[:, neg] - ty) / m
    return np.asarray(auc), v10, v01


def _auc_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(auc[k], covariance[k, k])`` of the AUCs of ``scores[k]`` on labels ``y`` (DeLong)."""
    import numpy as np

    auc, v10, v01 = _delong_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auc, cov


def delong(y_a: np.ndarray, s_a: np.ndarray, y_b: np.ndarray | None, s_b: np.ndarray,
           alpha: float) -> tuple[float, float, float, float, float, float]:
    """``(auc_a, auc_b, auc_b - auc_a, p, low, high)`` by DeLong's test.

    Independent samples (``y_b`` given): the variance of the difference is the sum of both DeLong
    variances. Paired (``y_b`` None: ``s_b`` scores the same rows as ``s_a``): the covariance of
    the two AUCs is subtracted.
    """
    import numpy as np

    if y_b is None:
        auc, cov = _auc_covariance(y_a, np.vstack([s_a, s_b]))
        auc_a, auc_b = float(auc[0]), float(auc[1])
        var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    else:
        auc_1, cov_a = _auc_covariance(y_a, s_a[None, :])
        auc_2, cov_b = _auc_covariance(y_b, s_b[None, :])
        auc_a, auc_b = float(auc_1[0]), float(auc_2[0])
        var = cov_a[0, 0] + cov_b[0, 0]
    diff = auc_b - auc_a
    p_value, low, high = _normal_test(diff, math.sqrt(max(float(var), 0.0)), alpha)
    return auc_a, auc_b, diff, p_value, low, high


@dataclass(frozen=True)
class Samples:
    """What one variant contributes to the test: per-row ``values`` of the metric (successes,
    losses), or ``y``/``score`` for AUC; ``request_id`` aligns the rows in shadow mode."""

    request_id: np.ndarray
    values: np.ndarray | None = None
    y: np.ndarray | None = None
    score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.request_id)


def compare(metric: str, champion: Samples, challenger: Samples, alpha: float, paired: bool = False) -> Comparison:
    """Test the challenger-minus-champion difference of ``metric`` (see the module docstring).

    ``paired`` (shadow mode): both samples hold the same requests in the same order.
    """
    import numpy as np

    if not len(champion) or not len(challenger):
        return Comparison("none", metric, None, None, None, None, None, None)
    if metric == "roc_auc":
        if paired:
            y_b, method = None, "delong_paired"
        else:
            y_b, method = challenger.y, "delong"
        ys = [champion.y] if paired else [champion.y, challenger.y]
        if any(len(np.unique(y)) < 2 for y in ys):  # AUC undefined without both classes
            return Comparison(method, "difference in roc_auc", None, None, None, None, None, None)
        a, b, diff, p, low, high = delong(champion.y, champion.score, y_b, challenger.score, alpha)
        return Comparison(method, "difference in roc_auc", a, b, diff, low, high, p)
    va, vb = champion.values, challenger.values
    value = (lambda v: math.sqrt(float(v.mean()))) if metric == "rmse" else (lambda v: float(v.mean()))
    estimand = "difference in mse (squared errors; rmse is reported per variant)" if metric == "rmse" \
        else f"difference in {metric}"
    if metric in ("accuracy", "conversion") and not paired:
        diff, p, low, high = two_proportions(int(va.sum()), len(va), int(vb.sum()), len(vb), alpha)
        method = "two_proportion_z_newcombe"
    else:
        diff, p, low, high = _mean_difference(va.astype(float), vb.astype(float), alpha, paired)
        method = "paired_t" if paired else "welch_t"
    return Comparison(method, estimand, value(va), value(vb), diff, low, high, p)


def significant_winner(metric: str, comparison: Comparison, alpha: float) -> str | None:
    """``"challenger"``/``"champion"`` when the difference is significant at ``alpha``, else None."""
    if comparison.p_value is None or comparison.difference is None or not comparison.p_value < alpha:
        return None
    if comparison.difference == 0:
        return None
    challenger_better = (comparison.difference > 0) == higher_is_better(metric)
    return CHALLENGER if challenger_better else CHAMPION
