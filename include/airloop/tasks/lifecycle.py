"""Lifecycle DAG tasks: deploy, reload, post-deploy guard, A/B evaluations."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from airloop.core import names, store
from airloop.core.names import CHAMPION
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.data.features import coerce_features
from airloop.data.snapshot import load_snapshot
from airloop.experiments import definition, evaluation
from airloop.experiments import evaluation as abtest_evaluation
from airloop.models.artifact import _example_records, read_model_version
from airloop.monitoring.guard import guard_breaches
from airloop.monitoring.interval import monitored_intervals
from airloop.registry import client as registry
from airloop.registry import client as registry_client
from airloop.registry.audit import version_record
from airloop.registry.client import _alias_version
from airloop.registry.ledger import _effective, version_at
from airloop.registry.lifecycle import promote_version, promotion_key, rollback, rollback_key
from airloop.serving.client import DeployError, refresh_abtest, reload_alias, smoke_test

log = logging.getLogger(__name__)


def reload_serving(config: PipelineConfig, settings: Settings, endpoint: Any, version: str) -> dict[str, Any]:
    """Make serving load the champion and check it answers with ``version`` (smoke test)."""

    endpoint = endpoint.for_pipeline(config)
    reload_alias(endpoint, CHAMPION)
    return smoke_test(endpoint, version, smoke_inputs(config, settings, version))


def rollback_and_reload(config: PipelineConfig, settings: Settings, environment: str | None = None,
                        target: str = "previous", *, endpoint: Any = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`airloop.registry.lifecycle.rollback`, then, for the serving environment with an
    ``endpoint``, serving reloads the champion and is smoke-tested (a replayed rollback reloads
    too, so a retry after a crash between the move and the reload converges)."""
    result = rollback(config, settings, environment, target, **kwargs)
    if config.promotion.environment(result["environment"]).serving and endpoint is not None:
        result["serving"] = reload_serving(config, settings, endpoint, result["version"])
    return result


def smoke_inputs(config: PipelineConfig, settings: Settings, version: str,
                 snapshot: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Records to smoke-test ``version`` with: the newest rows of its training snapshot (or of
    ``snapshot``) while that is on disk, else the input example stored with the model."""

    snapshot = snapshot or version_record(registry.get_client(settings), config, version)["snapshot"]
    if snapshot and Path(snapshot["path"]).is_dir():

        return smoke_records(config, snapshot)

    _, _, example = read_model_version(registry.get_client(settings), settings, config.model_name, version)
    return _example_records(example)


def post_deploy_guard(config: PipelineConfig, settings: Settings, summary: dict[str, Any], *, actor: str,
                      run_context: dict[str, str] | None = None, endpoint: Any = None) -> dict[str, Any]:
    """Roll the champion back when, within its first ``post_deploy_guard.intervals`` monitored
    intervals, the interval's monitoring ``summary`` breaks the guard's error-rate, latency or
    quality limits. Acts only when the judged version is still the champion (a backfill over old
    history never rolls back today's model); once per version (idempotency key)."""

    guard = config.promotion.post_deploy_guard
    version = summary.get("model_version")
    if not guard.intervals or not version or summary.get("skipped"):
        return {"action": "none", "reason": "guard disabled or nothing monitored"}
    engine = store.get_engine(settings.monitoring_db_uri)
    start = datetime.fromisoformat(summary["interval_start"])
    promoted = version_at(engine, config, CHAMPION, start, business=True)
    if promoted is None or promoted["to_version"] != str(version):
        return {"action": "none", "reason": f"v{version} has no promotion in the ledger"}
    since = _effective(promoted, business=True)
    seen = monitored_intervals(engine, config.name, summary.get("tenant", "default"), str(version), since, start)
    if seen > guard.intervals:
        return {"action": "none", "reason": f"v{version} is past its first {guard.intervals} monitored intervals"}
    breaches = guard_breaches(config, summary)
    if not breaches:
        return {"action": "none", "reason": f"v{version} within the guard's limits ({seen}/{guard.intervals})"}
    current = _alias_version(registry.get_client(settings), config, CHAMPION)
    if current != str(version):
        return {"action": "none", "reason": f"v{version} is no longer the champion (v{current} is)",
                "breaches": breaches}
    reason = (f"post-deploy guard: v{version} in its monitored interval {seen} of {guard.intervals} "
              f"({summary['interval_start'][:10]}): " + "; ".join(breaches))
    result = rollback_and_reload(config, settings, None, "previous", actor=actor, reason=reason,
                                 run_context=(run_context or {}) | {"as_of": summary.get("interval_end", "")[:10]},
                                 idempotency_key=f"{config.name}:v{version}:post-deploy-guard", endpoint=endpoint)
    return {"action": "rollback", "reason": reason, "breaches": breaches, **result}


# -------------------------------------------------------------------------------- A/B tests
def run_ab_evaluations(config: PipelineConfig, settings: Settings, start: datetime, end: datetime, *, actor: str,
                       run_context: dict[str, str] | None = None, endpoint: Any = None) -> list[dict[str, Any]]:
    """For every running A/B or shadow test of the pipeline: evaluate it on the interval
    ``[start, end)`` and conclude. A ``promote_challenger`` verdict promotes the challenger into
    the serving environment through the gated path (the test's significant live result stands in
    for the holdout comparison; thresholds, latency and the path still apply), serving reloads;
    any ended test makes serving re-read its tests. Idempotent per interval."""

    outcomes = []
    engine = store.get_engine(settings.monitoring_db_uri)
    for test in definition.running_tests(engine, config.name):
        evaluation = abtest_evaluation.evaluate_test(config, settings, test.test_id, start, end)
        outcome = abtest_evaluation.conclude_test(config, settings, test.test_id, end)
        outcome["evaluation"] = {k: evaluation.get(k) for k in ("metric", "decision", "reason", "comparison", "winner",
                                                                "champion", "challenger")}
        if outcome["promote"]:
            summary = evaluation.get("reason") or "challenger significantly better"
            outcome["promotion"] = promote_version(
                config, settings, test.challenger_version, config.promotion.serving_environment.name,
                actor=actor, reason=f"A/B test {test.test_id} concluded: promote the challenger",
                run_context=(run_context or {}) | {"as_of": end.date().isoformat()},
                evidence={"live_evidence": f"A/B test {test.test_id}: {summary}"[:2000]},
                idempotency_key=f"{test.test_id}:promotion")
            if outcome["promotion"]["promoted"] and endpoint is not None:
                outcome["serving"] = reload_serving(config, settings, endpoint, test.challenger_version)
        if outcome["status"] != "running" and endpoint is not None:
            outcome["refresh"] = refresh_abtest(endpoint.for_pipeline(config))
        log.info("A/B test %s: %s (%s)", test.test_id, outcome["decision"] or "continue", outcome["status"])
        outcomes.append(outcome)
    return outcomes


# ------------------------------------------------------------------------------------- deploy
def smoke_records(config: PipelineConfig, snapshot: dict[str, Any], n: int = 20) -> list[dict[str, Any]]:
    """The newest ``n`` records of the snapshot, as JSON-ready feature dicts."""

    frame = load_snapshot(snapshot, config).tail(n)
    features = coerce_features(config, frame)
    return json.loads(features.to_json(orient="records"))


def deploy(config: PipelineConfig, promotion: dict[str, Any], snapshot: dict[str, Any] | None, endpoint, settings: Settings,
           actor: str, run_context: dict[str, str]) -> dict[str, Any]:
    """Hot-reload ``champion`` in serving and smoke-test it; on failure restore the previous champion.

    Returns what serving runs now. Raises :class:`airloop.serving.client.DeployError` after a rollback so
    the failure is visible in Airflow (serving keeps answering with the previous model).
    """

    endpoint = endpoint.for_pipeline(config)  # /t/<tenant>/<pipeline> in the serving process
    client = registry_client.get_client(settings)
    champion_version = registry_client.alias_version(client, config.model_name, names.CHAMPION)
    if champion_version is None:
        raise DeployError(f"{config.model_name} has no champion to deploy")
    version = str(champion_version.version)

    records = smoke_inputs(config, settings, version, snapshot)
    try:
        reload_alias(endpoint, names.CHAMPION)
        smoke = smoke_test(endpoint, version, records)
        log.info("serving at %s runs %s v%s (smoke test: %s records)", endpoint.url, config.model_name, version, smoke["records"])
        return {"deployed": True, "version": version, "serving_url": endpoint.url}
    except DeployError as err:
        previous = promotion.get("previous")
        log.error("deploy of v%s failed: %s", version, err)
        if not promotion.get("promoted") or not previous or str(promotion.get("version")) != version:
            raise  # not our promotion to undo (nothing promoted, first model, or champion moved since)
        from airloop.registry import lifecycle

        lifecycle.rollback(
            config, settings, None, previous, actor=actor, reason=f"deploy smoke test failed: {err}",
            run_context=run_context,
            idempotency_key=f"{promotion.get('version')}:{run_context.get('dag_run_id')}:deploy-rollback")
        try:
            reload_alias(endpoint, names.CHAMPION)
        except DeployError as reload_err:
            log.error("serving could not reload the restored champion v%s: %s", previous, reload_err)
        raise DeployError(f"deploy of v{version} failed and champion was rolled back to v{previous}: {err}") from err


# ------------------------------------------------------------------ the lifecycle DAGs' tasks
def promote(config: PipelineConfig, settings: Settings, version: str, environment: str, *, actor: str, reason: str,
            force: bool, run_context: dict[str, str]) -> dict[str, Any]:
    """The ``<pipeline>__promote`` DAG's task: one gated move into ``environment``, idempotent per
    DAG run (a retried task replays the recorded decision)."""

    return promote_version(config, settings, str(version), environment, actor=actor, reason=reason, force=force,
                           run_context=run_context,
                           idempotency_key=promotion_key(config, environment, version, run_context["dag_run_id"]))


def rollback_environment(config: PipelineConfig, settings: Settings, environment: str, target: str, *, actor: str,
                         reason: str, run_context: dict[str, str], endpoint: Any = None) -> dict[str, Any]:
    """The ``<pipeline>__rollback`` DAG's task: one step back (or to ``target``), idempotent per
    DAG run; serving reloads when the environment is the serving one."""

    env = config.promotion.environment(environment)
    return rollback_and_reload(config, settings, env.name, target, actor=actor, reason=reason, run_context=run_context,
                               idempotency_key=rollback_key(config, env.name, run_context["dag_run_id"]),
                               endpoint=endpoint if env.serving else None)


def apply_abtest(config: PipelineConfig, settings: Settings, params: dict[str, Any], at: datetime,
                 endpoint: Any) -> dict[str, Any]:
    """The ``<pipeline>__abtest`` DAG's task: start or stop a test from the form's ``params`` at
    business time ``at``, then make serving re-read its tests."""

    if params["action"] == "stop":
        if not params["test_id"]:
            raise ValueError("stopping needs test_id (see GET /abtest on serving or the ab_tests table)")
        result = evaluation.stop_test(config, settings, params["test_id"], at, reason=params["reason"] or "stopped")
    else:
        result = evaluation.start_test(
            config, settings, at, mode=params["mode"], traffic_pct=float(params["traffic_pct"]),
            key_field=params["key_field"], success_metric=params["success_metric"],
            alpha=float(params["alpha"]), min_samples=int(params["min_samples"]),
            max_duration_days=float(params["max_duration_days"]), tenant=params["tenant"],
            challenger_version=params["challenger_version"], test_id=params["test_id"])
    result["serving"] = refresh_abtest(endpoint.for_pipeline(config))
    return result
