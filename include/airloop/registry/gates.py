"""Promote: gate a challenger against thresholds and the champion, move aliases, keep a ledger.

A refused promotion is a recorded decision, not a crash. Every decision is appended to the
promotion ledger once per interval (idempotency key), so retries and re-runs never move an
alias twice or rewrite history: a re-run of an already decided interval returns the recorded
decision and touches nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from airloop.core.metrics import higher_is_better, is_finite_number
from airloop.core.pipeline import EnvironmentConfig, PipelineConfig
from airloop.training.evaluation import compare_to_champion


@dataclass(frozen=True)
class GateCheck:
    """One gate and its verdict."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    """The outcome of all gates for one challenger."""

    promote: bool
    forced: bool
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """Human-readable summary: failed gates first, or all passed."""
        failed = [c for c in self.checks if not c.passed]
        if self.forced:
            return "forced by operator; gates: " + "; ".join(f"{c.name}: {c.detail}" for c in self.checks)
        if failed:
            return "refused: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return "all gates passed: " + "; ".join(f"{c.name}: {c.detail}" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom, ledger)."""
        return {"promote": self.promote, "forced": self.forced, "reason": self.reason,
                "checks": [asdict(c) for c in self.checks]}


def flags_positives(metrics: dict[str, float]) -> GateCheck | None:
    """The built-in gate of binary tasks: at its served threshold the version predicts the
    positive class for some holdout rows (``positive_predictions`` > 0) and finds some of them
    (``recall`` > 0). A model that never flags anything never enters an environment. Evidence
    with neither figure (hand-made metrics; every training run records both) is not checked
    (None), like the latency budget without a latency."""
    flagged, recall = metrics.get("positive_predictions"), metrics.get("recall")
    if not is_finite_number(recall) and not is_finite_number(flagged):
        return None
    if not is_finite_number(recall):
        return GateCheck("flags_positives", False, "holdout recall not available")
    if is_finite_number(flagged) and flagged <= 0:
        return GateCheck("flags_positives", False, "predicts no positive on the holdout at its threshold")
    shown = f"{int(flagged)} positive predictions, " if is_finite_number(flagged) else ""
    return GateCheck("flags_positives", recall > 0, f"{shown}recall {recall:.4f} (> 0 required)")


def evaluate_gates(
    config: PipelineConfig,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    champion_error: str | None = None,
    force: bool = False,
    environment: EnvironmentConfig | None = None,
    train_rows: int | None = None,
) -> Decision:
    """Apply ``environment``'s gates (default: the serving environment's) to a candidate's
    holdout metrics.

    * absolute thresholds (floors, or ceilings for error metrics), decision metrics (f1,
      precision, recall, expected_cost) included: they are measured at the served threshold,
    * binary tasks, always: the version flags positives on the holdout (:func:`flags_positives`),
    * latency budget (``latency_p95_ms`` against ``latency_budget_ms``),
    * minimum data (``train_rows`` against ``min_training_rows``, when that is above 0),
    * "beats the incumbent by ``min_improvement``" on the training metric, both scored on the
      same holdout (``champion``: the environment's current version's metrics; skipped when the
      environment sets no ``min_improvement``). No incumbent yet passes; an incumbent that cannot
      score the holdout passes too (it is broken on current data), and the reason says so.
    ``force`` promotes whatever the gates say; the checks are still recorded.
    """
    gates = environment or config.promotion.serving_environment
    checks: list[GateCheck] = []
    for metric, bound in sorted(gates.thresholds.items()):
        value = challenger.get(metric)
        if not is_finite_number(value):
            checks.append(GateCheck(f"threshold:{metric}", False, f"metric {metric!r} not available"))
            continue
        lower = not higher_is_better(metric)
        ok = value <= bound if lower else value >= bound
        checks.append(GateCheck(f"threshold:{metric}", ok, f"{value:.4f} {'<=' if lower else '>='} {bound} required"))
    positives = flags_positives(challenger) if config.task == "binary_classification" else None
    if positives is not None:
        checks.append(positives)
    latency = challenger.get("latency_p95_ms")
    if is_finite_number(latency):
        checks.append(GateCheck("latency", latency <= gates.latency_budget_ms,
                                f"p95 {latency:.2f} ms, budget {gates.latency_budget_ms} ms"))
    if gates.min_training_rows:
        if train_rows is None:
            checks.append(GateCheck("min_training_rows", False, "number of training rows unknown"))
        else:
            checks.append(GateCheck("min_training_rows", train_rows >= gates.min_training_rows,
                                    f"{train_rows} rows, {gates.min_training_rows} required"))
    metric = config.training.metric
    if gates.min_improvement is None:
        pass  # this environment does not compare with its incumbent
    elif champion_error:
        checks.append(GateCheck("beats_champion", True, f"champion could not score the holdout ({champion_error})"))
    elif not champion:
        checks.append(GateCheck("beats_champion", True, "no champion yet"))
    else:
        delta = compare_to_champion(metric, challenger, champion)
        if delta is None:
            checks.append(GateCheck("beats_champion", False, f"{metric} missing for challenger or champion"))
        else:
            ok = delta >= gates.min_improvement
            checks.append(GateCheck("beats_champion", ok,
                                    f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
                                    f"(delta {delta:+.4f}, margin {gates.min_improvement})"))
    passed = all(c.passed for c in checks)
    return Decision(promote=passed or force, forced=force and not passed, checks=checks)
