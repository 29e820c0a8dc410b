"""Metric orientation: which way is better for a metric name."""

from __future__ import annotations

import math
from typing import Any


#: Success metrics by task, and whether higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "conversion": True, "roc_auc": True,
    "log_loss": False, "brier": False, "mae": False, "rmse": False,
}


#: Metrics where a smaller value is better (gates compare the other way round).
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier"})


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, NaN or infinite (JSON- and SQL-safe)."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
