"""Metric orientation and finite numbers: the one answer to "which way is better" and "is this a number".

Metric names are airloop's holdout/monitoring names (``roc_auc``, ``f1_macro``, ``rmse``, ...), the
A/B success metrics and the latency figures (``latency_p95_ms``). Errors, losses and latencies are
better when lower; scikit-learn's ``neg_*`` scorers and every other score are better when higher.
"""

from __future__ import annotations

import math
from typing import Any

#: Metrics where a smaller value is better (gates, comparisons, drops and A/B tests read it).
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier", "error_rate"})
#: Prefixes of metric names that are better when lower (``latency_p50_ms``, ``latency_p95_ms``, ...).
LOWER_IS_BETTER_PREFIXES = ("latency",)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better."""
    return not (metric in LOWER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES))


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN, infinite or not a number (JSON- and SQL-safe)."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is finite (not a string, None, NaN or infinity)."""
    return isinstance(value, (int, float)) and math.isfinite(value)
