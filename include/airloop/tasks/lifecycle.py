"""Lifecycle DAG tasks: deploy, reload, post-deploy guard, A/B evaluations."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airloop.core import names, store
from airloop.core.names import CHAMPION
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.data.snapshot import load_snapshot
from airloop.experiments import definition, evaluation
from airloop.experiments import evaluation as abtest_evaluation
from airloop.models.artifact import _example_records, read_model_version
from airloop.models.schema import request_records, signature_inputs
from airloop.models.trust import ModelLoadError
from airloop.monitoring.guard import guard_breaches
from airloop.monitoring.interval import monitored_intervals
from airloop.registry import client as registry
from airloop.registry import client as registry_client
from airloop.registry import ledger
from airloop.registry.audit import LifecycleError, version_record
from airloop.registry.client import _alias_version
from airloop.registry.ledger import _effective, version_at
from airloop.registry.lifecycle import awaiting_approval, promote_version, promotion_key, rollback, rollback_key
from airloop.registry import reconcile
from airloop.serving.client import (DeployError, ServingUnreachable, refresh_abtest, reload_alias, served_version,
                                    smoke_test)

log = logging.getLogger(__name__)


#: A reload that finds serving down (restarting) is tried this many times, this far apart, before
#: the task fails (and Airflow retries it); a serving process that comes back loads the ledger's
#: champion at start-up anyway. Nothing is rolled back for an unreachable serving process.
RELOAD_ATTEMPTS = 6
RELOAD_PAUSE_S = 5.0


def reload_when_up(endpoint: Any, alias: str = CHAMPION, attempts: int | None = None,
                   pause_s: float | None = None) -> dict[str, Any]:
    """:func:`airloop.serving.client.reload_alias`, tried again (bounded: :data:`RELOAD_ATTEMPTS`
    :data:`RELOAD_PAUSE_S` apart) while serving is unreachable; a refusal (serving answered) is
    raised at once."""
    attempts = attempts or RELOAD_ATTEMPTS
    pause_s = RELOAD_PAUSE_S if pause_s is None else pause_s
    for attempt in range(1, attempts + 1):
        try:
            return reload_alias(endpoint, alias)
        except ServingUnreachable as err:
            if attempt == attempts:
                raise
            log.warning("serving unreachable (try %s of %s), reloading again in %.0f s: %s", attempt, attempts,
                        pause_s, err)
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def reload_serving(config: PipelineConfig, settings: Settings, endpoint: Any, version: str) -> dict[str, Any]:
    """Make serving load the champion and check it answers with ``version`` (smoke test)."""

    endpoint = endpoint.for_pipeline(config)
    reload_when_up(endpoint, CHAMPION)
    return smoke_test(endpoint, version, smoke_inputs(config, settings, version))


def follow_ledger(config: PipelineConfig, settings: Settings, endpoint: Any, *, actor: str) -> dict[str, Any]:
    """Repair half-done moves (:func:`airloop.registry.reconcile.reconcile`), then make serving
    answer with the ledger's champion: reload it when serving runs another version. Serving
    unreachable is reported (``"serving": "unreachable"``), not raised: it follows the ledger at
    its start-up."""
    result = reconcile.reconcile(config, settings, actor=actor)
    known, want = reconcile.champion_per_ledger(config, settings)
    out: dict[str, Any] = {"repairs": result["repairs"], "ledger_version": want if known else None}
    if endpoint is None or not known or want is None:
        return out | {"serving": "not checked"}
    try:
        served = served_version(endpoint.for_pipeline(config))
        if served == want:
            return out | {"serving": "follows the ledger", "served_version": served}
        log.warning("serving answers with v%s, the ledger's champion is v%s: reloading", served, want)
        out["reload"] = reload_serving(config, settings, endpoint, want)
        return out | {"serving": "reloaded", "served_version": want, "was": served}
    except ServingUnreachable as err:
        log.warning("serving not checked against the ledger: %s", err)
        return out | {"serving": "unreachable"}


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

    followed = follow_ledger(config, settings, endpoint, actor=actor) if endpoint is not None else None
    result = _guard(config, settings, summary, actor=actor, run_context=run_context, endpoint=endpoint)
    return result | ({"ledger": followed} if followed is not None else {})


def _guard(config: PipelineConfig, settings: Settings, summary: dict[str, Any], *, actor: str,
           run_context: dict[str, str] | None, endpoint: Any) -> dict[str, Any]:
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
    """The newest ``n`` records of the snapshot, as JSON-ready feature dicts typed as the model
    signature declares them (ints as JSON integers: serving refuses ``40.0`` for a ``long``)."""

    frame = load_snapshot(snapshot, config).tail(n)
    return request_records(signature_inputs(config), frame)


def deploy_rollback_key(config: PipelineConfig, version: str, run_context: dict[str, str]) -> str | None:
    """Idempotency key of the rollback a failed deploy of ``version`` by one DAG run records
    (``None`` outside a DAG run, e.g. the lifecycle API: each such deploy is its own)."""
    run_id = run_context.get("dag_run_id")
    return f"{config.name}:v{version}:{run_id}:deploy-rollback" if run_id else None


def deploy(config: PipelineConfig, promotion: dict[str, Any], snapshot: dict[str, Any] | None, endpoint, settings: Settings,
           actor: str, run_context: dict[str, str]) -> dict[str, Any]:
    """Hot-reload ``champion`` in serving and smoke-test it; on failure put everything back.

    A deploy that serving refuses (it does not know the pipeline, cannot load the version, or the
    smoke test fails) undoes the promotion of this run: the champion and the serving
    environment's alias go back to the previous version (no previous version, the first model:
    both aliases are removed), one ``rollback`` ledger row records why, and serving reloads the
    restored champion. Then :class:`airloop.serving.client.DeployError` is raised naming the
    pipeline, the version and serving's answer, so the failure is visible in Airflow. A retry of
    the task after that fails again with the recorded reason (it never deploys what was undone).

    Returns what serving runs now.
    """

    endpoint = endpoint.for_pipeline(config)  # /t/<tenant>/<pipeline> in the serving process
    engine = store.get_engine(settings.monitoring_db_uri)
    promoted = str(promotion.get("version"))
    key = deploy_rollback_key(config, promoted, run_context)
    undone = ledger.find_ledger(engine, key) if key else None
    if promotion.get("promoted") and undone is not None:
        raise DeployError(f"{config.model_name} v{promoted}: an earlier try of this deploy failed and was rolled "
                          f"back (v{undone['from_version']} -> {_v(undone['to_version'])}): {undone['reason']}")
    client = registry_client.get_client(settings)
    champion_version = registry_client.alias_version(client, config.model_name, names.CHAMPION)
    if champion_version is None:
        raise DeployError(f"{config.model_name} has no champion to deploy")
    version = str(champion_version.version)

    swapped = False  # serving answers with ``version`` (its reload succeeded)
    try:
        records = smoke_inputs(config, settings, version, snapshot)
        reload_when_up(endpoint, names.CHAMPION)
        swapped = True
        smoke = smoke_test(endpoint, version, records)
    except ServingUnreachable as err:  # down, not refusing: keep the promotion; the retry (or serving's
        # start-up reconcile) loads the ledger's champion
        raise DeployError(f"deploy of {config.model_name} v{version}: {err}; the promotion stands (serving loads "
                          "the ledger's champion when it is back; the task's retry reloads it)") from err
    except (DeployError, ModelLoadError) as err:
        failure = f"deploy of {config.model_name} v{version} (pipeline {config.name}) to {endpoint.url} failed: {err}"
        log.error("%s", failure)
        if not promotion.get("promoted") or promoted != version:
            # not our promotion to undo (nothing promoted, or the champion moved since)
            raise DeployError(f"{failure}; the champion (v{version}) was not moved by this run and stays") from err
        try:
            restored = _undo_promotion(config, settings, version, promotion.get("previous"), reason=failure,
                                       actor=actor, run_context=run_context)
        except LifecycleError as undo_err:
            raise DeployError(f"{failure}; restoring v{promotion.get('previous')} failed too: {undo_err}") from err
        if restored is None:
            still = (f"; serving keeps answering with v{version} (it had no model before)" if swapped
                     else "; serving has no model for it")
            aliases = f"the champion and {config.promotion.serving_environment.registry_alias} aliases"
            raise DeployError(f"{failure}; v{version} was the first champion: {aliases} were removed{still}") from err
        try:
            reload_alias(endpoint, names.CHAMPION)
            log.info("serving at %s is back on %s v%s", endpoint.url, config.model_name, restored)
        except DeployError as reload_err:  # it kept the previous model if it never swapped
            log.error("serving could not reload the restored champion v%s: %s", restored, reload_err)
        raise DeployError(f"{failure}; the champion was rolled back to v{restored}") from err
    log.info("serving at %s runs %s v%s (smoke test: %s records)", endpoint.url, config.model_name, version,
             smoke["records"])
    return {"deployed": True, "version": version, "serving_url": endpoint.url}


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no champion"


def _undo_promotion(config: PipelineConfig, settings: Settings, version: str, previous: str | None, *, reason: str,
                    actor: str, run_context: dict[str, str]) -> str | None:
    """Move the serving environment back from ``version`` to ``previous`` (a ``rollback`` ledger
    row); without a previous version remove its aliases instead (a ``rollback`` row to no
    version). Returns the champion now (``None``: none)."""
    key = deploy_rollback_key(config, version, run_context) or (
        f"{config.name}:v{version}:{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}:deploy-rollback")
    if previous:
        result = rollback(config, settings, None, previous, actor=actor, reason=reason, run_context=run_context,
                          idempotency_key=key)
        return str(result["version"])
    env = config.promotion.serving_environment
    engine = store.get_engine(settings.monitoring_db_uri)
    client = registry_client.get_client(settings)
    with ledger.lifecycle_lock(engine, config.name, holder=f"{actor} withdraw v{version} from {env.name}") as conn:
        reconcile.repair(client, engine, conn, config, actor=f"{actor} (before a move)")
        if ledger.find_ledger(engine, key) is None and _alias_version(client, config, CHAMPION) == version:
            reconcile.begin_move(client, config, env, version, key)
            ledger.append_ledger(conn, ledger.LedgerEntry(
                idempotency_key=key, pipeline=config.name, model_name=config.model_name, action="rollback",
                alias=ledger.ledger_alias(env), environment=env.name, from_version=version, to_version=None,
                actor=actor, reason=reason, dag_id=run_context.get("dag_id"), run_id=run_context.get("dag_run_id"),
                data_interval_end=run_context.get("as_of") or None))
            for alias in ledger.moved_aliases(env):
                client.delete_registered_model_alias(config.model_name, alias)
            client.set_model_version_tag(config.model_name, version, f"airloop.rolled_back.{env.name}", reason[:500])
            moved = True
        else:
            moved = False
    if moved:
        reconcile.end_move(client, config, env, version)
    log.warning("%s %s: v%s withdrawn (it was the first champion): %s", config.model_name, env.name, version, reason)
    return None


# ------------------------------------------------------------------ the lifecycle DAGs' tasks
def promote(config: PipelineConfig, settings: Settings, version: str, environment: str, *, actor: str, reason: str,
            force: bool, run_context: dict[str, str]) -> dict[str, Any]:
    """The ``<pipeline>__promote`` DAG's task: one gated move into ``environment``, idempotent per
    DAG run (a retried task replays the recorded decision). An environment in
    ``promotion.require_approval`` whose gates pass is not moved: the result ``awaiting_approval``
    names it for the approval task (:func:`airloop.tasks.approval.promote_after_approval`)."""

    key = promotion_key(config, environment, version, run_context["dag_run_id"])
    held = awaiting_approval(config, settings, str(version), config.promotion.environment(environment), None, key,
                             force)
    if held is not None:
        return held | {"request_reason": reason}
    return promote_version(config, settings, str(version), environment, actor=actor, reason=reason, force=force,
                           run_context=run_context, idempotency_key=key)


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
