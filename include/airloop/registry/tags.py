"""Every ``airloop.*`` MLflow tag key."""

from __future__ import annotations

LINEAGE_TAGS = {
    "data_interval": "airloop.data_interval", "data_fingerprint": "airloop.data_fingerprint",
    "validation": "airloop.validation", "validation_result": "airloop.validation_result",
    "study": "airloop.study", "best_trial": "airloop.best_trial", "estimator": "airloop.estimator",
    "code_version": "airloop.code_version", "replaced_champion": "airloop.replaces",
    "snapshot": "airloop.snapshot", "dag_id": "airloop.dag_id", "dag_run_id": "airloop.dag_run_id",
    "run_type": "airloop.run_type", "trigger_reason": "airloop.trigger_reason",
}


KEY_TAG = "airloop.interval_key"

#: Run tags naming the process that created a run: ``airloop.owner.host``, ``airloop.owner.pid``.
OWNER_TAG_PREFIX = "airloop.owner."

#: Model version tag marking an alias move of an environment in progress (its value: the move's
#: ledger idempotency key); see :mod:`airloop.registry.reconcile`.
MOVE_TAG_PREFIX = "airloop.move."


def move_tag(environment: str) -> str:
    """The in-progress marker tag of a move of ``environment`` (``airloop.move.<env>``)."""
    return f"{MOVE_TAG_PREFIX}{environment}"

#: Model version tags of the decision rule (binary tasks: the served threshold and its objective;
#: every classifier: the calibration method). The artefact's ``MLmodel`` metadata holds the same
#: (what serving reads); read them with :func:`airloop.registry.client.decision_threshold`.
THRESHOLD_TAG = "airloop.decision.threshold"
OBJECTIVE_TAG = "airloop.decision.objective"
CALIBRATION_TAG = "airloop.calibration"


def decision_tags(decision: dict) -> dict[str, str]:
    """The version tags of a decision rule (``airloop.training.decision.Decided.decision``)."""
    out = {}
    if decision.get("threshold") is not None:
        out[THRESHOLD_TAG] = repr(float(decision["threshold"]))
    if decision.get("objective"):
        out[OBJECTIVE_TAG] = str(decision["objective"])
    if decision.get("calibration"):
        out[CALIBRATION_TAG] = str(decision["calibration"])
    return out
