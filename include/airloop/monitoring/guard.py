"""The post-deploy guard's breach rules (pure)."""

from __future__ import annotations

from typing import Any

from airloop.core.pipeline import PipelineConfig


# --------------------------------------------------------------------------- deploy guard
def guard_breaches(config: PipelineConfig, summary: dict[str, Any]) -> list[str]:
    """The post-deploy guard's limits that an interval's monitoring summary breaks."""
    guard = config.promotion.post_deploy_guard
    found = []
    checks = (("error_rate", guard.max_error_rate), ("latency_p95_ms", guard.max_latency_p95_ms),
              ("performance_drop", guard.max_performance_drop))
    for metric, limit in checks:
        value = summary.get(metric)
        if limit is not None and isinstance(value, (int, float)) and value == value and value > limit:
            found.append(f"{metric} = {value:.4g} > {limit:.4g}")
    return found
