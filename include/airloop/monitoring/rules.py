"""Alert rules evaluated on one interval's monitoring summary."""

from __future__ import annotations

import operator
from typing import Any

from airloop.core.metrics import finite_or_none
from airloop.core.pipeline import PipelineConfig

#: Metrics the alert rules can test (``AlertRule.metric``), all top-level keys of the summary.
#: ``out_of_domain_share`` / ``unseen_category_share``: shares of the interval's ok rows serving
#: flagged (:mod:`airloop.monitoring.quality`); ``traffic_quality_failed``: expectations of the
#: pipeline's suite the interval's served features failed (None when not checked);
#: ``estimated_performance_drop``: relative drop of the label-free estimate's band (its optimistic
#: end) vs the version's holdout figure (:mod:`airloop.monitoring.estimation`).
RULE_METRICS = ("drift_share", "prediction_drift", "performance_drop", "volume_ratio", "error_rate", "latency_p95_ms",
                "out_of_domain_share", "unseen_category_share", "traffic_quality_failed", "estimated_performance_drop")

#: Default retrain policy (a rule without ``retrain:``): only a realized drop, or an estimated drop
#: beyond its band, requests training; drift and operational rules alert only.
RETRAIN_BY_DEFAULT = ("performance_drop", "estimated_performance_drop")


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


# ============================================================================ rules
def retrains(rule) -> bool:
    """Whether ``rule`` requests a training run when it fires: its ``retrain:`` when set, else
    the default policy (:data:`RETRAIN_BY_DEFAULT`)."""
    return rule.retrain if rule.retrain is not None else rule.metric in RETRAIN_BY_DEFAULT


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_rules(config: PipelineConfig, summary: dict) -> list[dict]:
    """Apply ``monitoring.alerts`` to an interval summary; return the rules that fire.

    A rule ``metric op value`` fires when ``summary[metric]`` is a finite number satisfying it.
    A metric absent from the summary or None (drift not judged, too few labels, no baseline)
    never fires. Each alert: ``rule``, ``metric``, ``op``, ``threshold``, ``observed``,
    ``severity``, ``retrain`` (:func:`retrains`) and a ``message`` naming the metric, the observed
    value and the threshold — and, for drift rules, the drifted features (``drifted_features`` of the summary)
    or the prediction's drift method.
    """
    fired = []
    for rule in config.monitoring.alerts:
        observed = finite_or_none(summary.get(rule.metric))
        if observed is None or not _OPS[rule.op](observed, rule.value):
            continue
        message = f"{rule.name}: {rule.metric} = {_fmt(observed)} {rule.op} {_fmt(rule.value)}"
        details: dict[str, Any] = {}
        if rule.metric == "drift_share":
            drifted = list(summary.get("drifted_features") or [])
            details["drifted_features"] = drifted
            message += f"; drifted features: {', '.join(drifted) if drifted else 'none'}"
        elif rule.metric == "prediction_drift":
            prediction = config.monitoring.drift.prediction
            details["method"] = prediction.method
            message += f"; prediction score drift ({prediction.method}, drift threshold {_fmt(prediction.threshold)})"
        elif rule.metric == "performance_drop":
            metric = summary.get("metric") or config.training.metric
            details |= {"metric": metric, "current": (summary.get("performance") or {}).get(metric),
                        "reference": (summary.get("reference_performance") or {}).get(metric)}
            if details["current"] is not None and details["reference"] is not None:
                message += f"; {metric} {_fmt(details['current'])} vs holdout {_fmt(details['reference'])}"
        elif rule.metric == "estimated_performance_drop":
            est = summary.get("estimated") or {}
            details |= {k: est.get(k) for k in ("metric", "value", "low", "high", "reference")}
            if est.get("value") is not None and est.get("reference") is not None:
                message += (f"; estimated {est['metric']} {_fmt(est['value'])} (band {_fmt(est['low'])}.."
                            f"{_fmt(est['high'])}) vs holdout {_fmt(est['reference'])}")
        elif rule.metric in ("out_of_domain_share", "unseen_category_share"):
            shares = dict(summary.get("out_of_domain_features") or {})
            if rule.metric == "unseen_category_share":
                shares = {f: v for f, v in shares.items() if f in config.categorical_features}
            details["features"] = shares
            listed = ", ".join(f"{f} {_fmt(v)}" for f, v in sorted(shares.items(), key=lambda kv: -kv[1]))
            message += f"; out-of-domain share by feature: {listed or 'none'}"
        elif rule.metric == "traffic_quality_failed":
            failures = list(summary.get("traffic_quality_failures") or [])
            details |= {"failures": failures, "result_uri": summary.get("traffic_quality_result_uri")}
            message += f"; served traffic failed: {'; '.join(failures) if failures else 'see the result'}"
        fired.append({"rule": rule.name, "metric": rule.metric, "op": rule.op, "threshold": rule.value,
                      "observed": observed, "severity": rule.severity, "retrain": retrains(rule),
                      "message": message, "details": details})
    return fired


def rule_states(config: PipelineConfig, summary: dict) -> dict[str, bool | None]:
    """Each rule's state in an interval: True fired, False judged and clear, None not judged
    (its metric None or absent: the interval neither extends nor clears the rule's alert)."""
    states: dict[str, bool | None] = {}
    for rule in config.monitoring.alerts:
        observed = finite_or_none(summary.get(rule.metric))
        states[rule.name] = None if observed is None else bool(_OPS[rule.op](observed, rule.value))
    return states
