"""The pipeline file's decision and calibration settings, and the metric names gates may use.

``training.decision`` says how a binary model's score becomes a label (a threshold tuned on
out-of-fold CV predictions, :mod:`airloop.training.decision`), ``training.calibration`` whether its
probabilities are calibrated first. Gates (``promotion.thresholds``) may name any holdout metric of
the task: :func:`holdout_metric_names`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Threshold objectives of a binary task.
Objective = Literal["max_f1", "cost", "precision_at_recall", "recall_at_precision"]
#: ``training.calibration``: ``auto`` calibrates when it lowers the out-of-fold Brier score.
Calibration = Literal["none", "sigmoid", "isotonic", "auto"]
#: The objective of a binary pipeline without ``training.decision``.
DEFAULT_OBJECTIVE: Objective = "max_f1"


class CostMatrix(BaseModel):
    """Cost of one false positive and of one false negative (a correct decision costs 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fp: float = Field(ge=0)
    fn: float = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> "CostMatrix":
        if self.fp == 0 and self.fn == 0:
            raise ValueError("cost: fp and fn cannot both be 0")
        return self


class DecisionConfig(BaseModel):
    """``training.decision``: binary tasks name an ``objective`` (``cost`` needs ``cost``,
    ``precision_at_recall`` / ``recall_at_precision`` need ``target``); multi-class pipelines may
    give ``class_costs`` (the cost of missing each class: the label maximises ``p * cost``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Objective | None = None
    cost: CostMatrix | None = None
    target: float | None = Field(default=None, gt=0, le=1)
    class_costs: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys_as_text(cls, raw: Any) -> Any:
        """YAML reads ``class_costs: {0: 1, 1: 5}`` with int keys: they name classes, as text."""
        if isinstance(raw, dict) and isinstance(raw.get("class_costs"), dict):
            raw = {**raw, "class_costs": {str(k): v for k, v in raw["class_costs"].items()}}
        return raw

    @model_validator(mode="after")
    def _check(self) -> "DecisionConfig":
        if self.objective == "cost" and self.cost is None:
            raise ValueError("objective 'cost' needs cost: {fp: <cost of a false positive>, fn: <of a false negative>}")
        if self.objective != "cost" and self.cost is not None:
            raise ValueError(f"cost is only for objective 'cost' (objective is {self.objective!r})")
        needs_target = self.objective in ("precision_at_recall", "recall_at_precision")
        if needs_target and self.target is None:
            raise ValueError(f"objective {self.objective!r} needs target: the recall or precision to reach (0-1]")
        if not needs_target and self.target is not None:
            raise ValueError(f"target is only for precision_at_recall / recall_at_precision "
                             f"(objective is {self.objective!r})")
        if self.class_costs and any(v <= 0 for v in self.class_costs.values()):
            raise ValueError(f"class_costs must be positive: {self.class_costs}")
        return self

    def for_task(self, task: str, classes: list[Any] | None) -> "DecisionConfig":
        """Check the settings fit ``task``; fill the binary default objective."""
        if task == "binary_classification":
            if self.class_costs:
                raise ValueError("decision.class_costs is for multi-class tasks; a binary task names an objective "
                                 "(e.g. objective: cost, cost: {fp: 1, fn: 10})")
            return self if self.objective else self.model_copy(update={"objective": DEFAULT_OBJECTIVE})
        if self.objective or self.cost or self.target is not None:
            raise ValueError(f"decision.objective is for binary tasks (this task is {task}); "
                             + ("multi-class tasks may set decision.class_costs" if task != "regression"
                                else "a regression task has no decision"))
        if self.class_costs:
            if task == "regression":
                raise ValueError("decision.class_costs is for multi-class tasks (this task is regression)")
            known = {str(c) for c in classes or []}
            unknown = sorted(set(self.class_costs) - known)
            if unknown:
                raise ValueError(f"decision.class_costs: {unknown} not among the classes {sorted(known)}")
        return self


#: Holdout metrics by task (``airloop.training.evaluation.holdout_metrics``), besides the study
#: metric and the latency figures: the names ``promotion.thresholds`` may gate on.
HOLDOUT_METRICS: dict[str, frozenset[str]] = {
    "regression": frozenset({"rmse", "mae", "r2"}),
    "multiclass_classification": frozenset({"accuracy", "f1_macro", "roc_auc_ovr", "log_loss"}),
    "binary_classification": frozenset({"accuracy", "f1_macro", "roc_auc", "pr_auc", "f1", "precision", "recall",
                                        "log_loss", "brier", "ece", "expected_cost", "positive_predictions"}),
}
#: Latency figures gates may name too.
LATENCY_METRICS = frozenset({"latency_p50_ms", "latency_p95_ms"})


def holdout_metric_names(task: str, training_metric: str) -> frozenset[str]:
    """Every metric name a gate of ``task`` may use."""
    return HOLDOUT_METRICS[task] | LATENCY_METRICS | {training_metric}


def check_gate_metrics(task: str, training_metric: str, objective: str | None, gates: dict[str, list[str]],
                       did_you_mean: Any) -> None:
    """Raise ``ValueError`` for a gate (``{where: metric names}``) naming no holdout metric of
    ``task`` (with ``did_you_mean(name, options)``'s hint), or ``expected_cost`` without a cost
    objective."""
    known = holdout_metric_names(task, training_metric)
    for where, names in gates.items():
        for name in names:
            if name not in known:
                raise ValueError(f"{where}.thresholds: {name!r} is not a holdout metric of a {task} pipeline"
                                 f"{did_you_mean(name, sorted(known))} (one of {', '.join(sorted(known))})")
            if name == "expected_cost" and objective != "cost":
                raise ValueError(f"{where}.thresholds: 'expected_cost' needs training.decision.objective 'cost'")
