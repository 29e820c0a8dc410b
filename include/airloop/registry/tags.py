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
