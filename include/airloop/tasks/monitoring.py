"""The monitoring DAG's task functions."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop.core import partitions, store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.monitoring import interval
from airloop.monitoring import reference as monitoring_reference
from airloop.monitoring.alerts import deliver_alerts, record_alerts
from airloop.monitoring.labels import ingest_labels
from airloop.monitoring.refresh import reference_for
from airloop.monitoring.retrain import decide_retrain
from airloop.registry import client as registry
from airloop.registry.audit import champion_at

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ monitoring
def monitor(config: PipelineConfig, settings: Settings, start: datetime | str, end: datetime | str,
            tenant: str | None = None) -> dict[str, Any]:
    """Monitor one interval against the reference of the version that was champion then (its
    training reference, or the one refreshed from its traffic: :func:`reference_for`), with the
    label-free estimate at the version's served threshold.

    Stores per-feature drift rows and the interval summary (upserts), saves the Evidently HTML
    report and logs it to the model version's MLflow run (``monitoring/<tenant>/<day>/``). Then
    applies the prediction log's retention relative to ``end`` (:func:`retain_predictions`; also
    when there is nothing to monitor); the summary's ``retention`` says what it removed.
    """
    tenant = tenant or config.tenant  # the pipeline's own tenant by default

    start, end = to_utc(start), to_utc(end)
    engine = store.get_engine(settings.monitoring_db_uri)
    summary = _monitor_champion(config, settings, engine, tenant, start, end)
    summary["retention"] = retain_predictions(config, settings, engine, end)
    return summary


def retain_predictions(config: PipelineConfig, settings: Settings, engine: sa.Engine, end: datetime) -> dict[str, Any]:
    """Remove the predictions (every tenant and pipeline) older than
    ``settings.prediction_retention_days`` before the interval's ``end``
    (:func:`airloop.core.partitions.apply_retention`: whole day partitions on PostgreSQL); 0 keeps
    everything. Idempotent: a re-run of the interval removes nothing more."""
    days = settings.prediction_retention_days
    needed = max(config.monitoring.label_lookback_days, config.monitoring.volume_baseline_days,
                 config.monitoring.performance_window_days)
    if 0 < days < needed:
        log.warning("%s: AIRLOOP_PREDICTION_RETENTION_DAYS=%d is shorter than this pipeline's monitoring "
                    "look-back (%d days): older intervals lose their predictions", config.name, days, needed)
    return partitions.apply_retention(engine, store.predictions, days, end)


def _monitor_champion(config: PipelineConfig, settings: Settings, engine: sa.Engine, tenant: str, start: datetime,
                      end: datetime) -> dict[str, Any]:
    version = champion_at(engine, config.name, start)
    if version is None:
        log.warning("%s: no champion at %s; nothing to monitor against", config.name, start)
        return {"skipped": "no champion at the interval start", "interval_start": start.isoformat()}
    client = registry.get_client(settings)
    training_reference = monitoring_reference.load_reference(client, config, version, settings=settings)
    profile = monitoring_reference.load_profile(client, config, version, settings=settings)
    reference_metrics = monitoring_reference.load_reference_metrics(client, config, version)
    reference, profile, reference_id = reference_for(engine, config, settings, tenant, version, start,
                                                     training_reference, profile)
    summary = interval.monitor_interval(
        config, settings, tenant, start, end, version, reference, settings.reports_dir,
        reference_metrics=reference_metrics, engine=engine, profile=profile,
        threshold=registry.decision_threshold(client, config, version), reference_id=reference_id,
        estimation_reference=training_reference)
    report = summary.get("report_uri")
    if report and Path(report).is_file():
        run_id = client.get_model_version(config.model_name, version).run_id
        client.log_artifact(run_id, report, artifact_path=f"monitoring/{tenant}/{start:%Y-%m-%d}")
    summary["model_version"] = version
    return summary


def traffic_quality(config: PipelineConfig, settings: Settings, start: datetime | str, end: datetime | str,
                    tenant: str | None = None) -> dict[str, Any]:
    """The ``traffic_quality`` task: the pipeline's suite (its feature expectations) on the
    interval's served features; one ``traffic_quality`` row, the GX result and Data Docs under
    ``<validation dir>/<pipeline>/traffic/<day>/`` (:func:`airloop.monitoring.quality.check_traffic`).
    The ``monitor`` task that follows reads the row into the summary the alert rules judge."""
    from airloop.monitoring.quality import check_traffic

    return check_traffic(config, settings, tenant or config.tenant, to_utc(start), to_utc(end))


def ingest(config: PipelineConfig, settings: Settings, start: datetime | str, end: datetime | str) -> dict[str, Any]:
    """The ``ingest_labels`` task: the labels that became known in ``[start, end)``."""

    return ingest_labels(config, settings, to_utc(start), to_utc(end))


def alert(config: PipelineConfig, settings: Settings, start: datetime | str, summary: dict[str, Any],
          senders: dict[str, Any]) -> dict[str, Any]:
    """The ``alerts`` task: record the interval's alerts (deduplicated), then deliver the pending ones."""

    start = to_utc(start)
    record_alerts(config, settings, start, summary)
    return deliver_alerts(config, settings, start, senders)


def retrain_decision(config: PipelineConfig, settings: Settings, start: datetime | str, end: datetime | str,
                     summary: dict[str, Any]) -> dict[str, Any]:
    """The retrain decision of an interval (rules, cool-down, no concurrent training)."""

    return decide_retrain(config, settings, to_utc(start), to_utc(end), summary)


def retrain_condition(config: PipelineConfig, settings: Settings, start: datetime | str, end: datetime | str,
                      summary: dict[str, Any]) -> dict[str, Any] | bool:
    """The ``retrain_decision`` task (a short-circuit): the decision (:func:`retrain_decision`)
    when it requests training — ``request_retrain`` then sends the Asset event — else False with
    the reason logged, and ``request_retrain`` is skipped."""

    decision = retrain_decision(config, settings, start, end, summary)
    if decision["retrain"]:
        return decision
    if decision.get("suppressed_by"):
        log.info("no retraining: cool-down since the request of %s (%s)", decision["suppressed_by"][:10],
                 decision["reason"])
    else:
        log.info("no retraining: %s", decision.get("reason") or "no retrain rule fired")
    return False
