"""Model lifecycle: environments, gated promotion, one-step rollback, the post-deploy guard,
audit ("which version served X at T, who moved it and why") and lineage.

Environments (``promotion.environments`` of the pipeline file, e.g. ``dev -> staging -> prod``)
are registry aliases. Entering an environment needs the version to be in the environment before
it (the path) and to pass that environment's gates (thresholds, latency budget, minimum data,
beating the incumbent on the same holdout). The serving environment's version is also the
``champion`` alias, the one the serving process answers with.

Every move and every refused move is one row of the append-only promotion ledger
(:mod:`airloop.core.store`). Promotions and rollbacks of a pipeline are serialised by a database lock
(:func:`airloop.registry.ledger.lifecycle_lock`): gates are judged, the alias moved and the ledger row
written while the lock is held, so two concurrent promotions cannot both win and an alias never
points at a version that failed the gate it was judged by.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airloop.core import store
from airloop.core.pipeline import EnvironmentConfig, PipelineConfig
from airloop.core.settings import Settings
from airloop.data.snapshot import load_snapshot
from airloop.models.trust import quiet_skops
from airloop.registry import client as registry
from airloop.registry import ledger, reconcile
from airloop.registry.audit import LifecycleError, version_record
from airloop.registry.client import _alias_version
from airloop.registry.gates import GateCheck, evaluate_gates
from airloop.registry.ledger import _ever_in, ledger_alias, moved_aliases, previous_version
from airloop.training.evaluation import holdout_metrics, json_safe
from airloop.training.search import split_holdout

log = logging.getLogger(__name__)


def score_on_holdout(config: PipelineConfig, settings: Settings, snapshot: dict[str, Any],
                     versions: list[str]) -> dict[str, dict[str, float] | str]:
    """Score ``versions`` on the time holdout of ``snapshot`` (the candidate's own holdout):
    ``{version: metrics}``, or ``{version: "error text"}`` for a version that cannot score it."""

    _, holdout = split_holdout(config, load_snapshot(snapshot, config), snapshot["as_of"])
    out: dict[str, dict[str, float] | str] = {}
    for version in versions:
        try:
            with quiet_skops():
                model = registry.load_sklearn_model(settings, config.model_name, version)
            threshold = registry.decision_threshold(registry.get_client(settings), config, version)
            out[version] = json_safe(holdout_metrics(config, model, holdout, threshold))  # at its served threshold
        except Exception as err:  # noqa: BLE001 - recorded as the incumbent's failure
            out[version] = f"{type(err).__name__}: {err}"
    return out


def _incumbent_comparison(config: PipelineConfig, settings: Settings, env: EnvironmentConfig, record: dict[str, Any],
                          incumbent: str | None, evidence: dict[str, Any] | None,
                          ) -> tuple[dict[str, float], dict[str, float] | None, str | None]:
    """(candidate metrics, incumbent metrics, incumbent error), both on the same holdout.

    The training run's evaluation already scored the champion on its holdout (``evidence``);
    otherwise both are re-scored on the candidate's holdout."""
    metrics = dict((evidence or {}).get("metrics") or record["metrics"])
    if env.min_improvement is None or incumbent is None:
        return metrics, None, None
    scored = (evidence or {}).get("champion") or {}
    if str(scored.get("version")) == incumbent and scored.get("metrics"):
        return metrics, scored["metrics"], None
    if env.serving and evidence and evidence.get("champion_error"):
        return metrics, None, evidence["champion_error"]  # the training run could not score the champion
    if not record["snapshot"] or not Path(record["snapshot"]["path"]).is_dir():
        raise LifecycleError(f"v{record['version']} cannot be compared with v{incumbent} on the same holdout: its "
                             f"training snapshot is not available ({record['snapshot']})")
    scores = score_on_holdout(config, settings, record["snapshot"], [record["version"], incumbent])
    candidate, other = scores[record["version"]], scores[incumbent]
    if isinstance(candidate, str):
        raise LifecycleError(f"version {record['version']} cannot score its own holdout: {candidate}")
    metrics |= candidate
    return metrics, (other if isinstance(other, dict) else None), (other if isinstance(other, str) else None)


# -------------------------------------------------------------------------------- promote
def _judge(client: Any, engine: Any, config: PipelineConfig, settings: Settings, env: EnvironmentConfig, version: str,
           evidence: dict[str, Any] | None) -> dict[str, Any]:
    """The path check and ``env``'s gates for ``version`` against the environment's current
    version, nothing written: ``{"incumbent", "noop", "record", "checks", "metrics",
    "incumbent_metrics", "incumbent_error", "train_rows"}`` (``noop``: already there)."""
    record = version_record(client, config, version)
    incumbent = _alias_version(client, config, ledger_alias(env))
    out: dict[str, Any] = {"incumbent": incumbent, "noop": incumbent == version, "record": record, "checks": [],
                           "metrics": dict(record["metrics"]), "incumbent_metrics": None, "incumbent_error": None,
                           "train_rows": (evidence or {}).get("train_rows", record["train_rows"])}
    if out["noop"]:
        return out
    path = config.promotion.path()
    index = [e.name for e in path].index(env.name)
    path_check = None
    if index > 0:
        before = path[index - 1]
        ok = (_alias_version(client, config, ledger_alias(before)) == version
              or _ever_in(engine, config, before, version))
        path_check = GateCheck("path", ok, f"v{version} {'has been' if ok else 'was never'} in {before.name}")
    live = (evidence or {}).get("live_evidence")  # an A/B test's verdict replaces the holdout comparison
    gates = env.model_copy(update={"min_improvement": None}) if live else env
    metrics, incumbent_metrics, incumbent_error = _incumbent_comparison(
        config, settings, gates, record, incumbent, evidence)
    decision = evaluate_gates(config, metrics, incumbent_metrics, incumbent_error, force=False,
                              environment=gates, train_rows=out["train_rows"])
    checks = ([path_check] if path_check else []) + decision.checks
    if live:
        checks.append(GateCheck("beats_champion", True, str(live)))
    return out | {"checks": checks, "metrics": metrics, "incumbent_metrics": incumbent_metrics,
                  "incumbent_error": incumbent_error}


def preview_promotion(config: PipelineConfig, settings: Settings, version: str | int, environment: str,
                      evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`promote_version` would decide now, without the lock and writing nothing (the
    approval request shows it). ``checks`` as dicts; ``passed``: every gate passed."""
    env = config.promotion.environment(environment)
    judged = _judge(registry.get_client(settings), store.get_engine(settings.monitoring_db_uri), config, settings,
                    env, str(version), evidence)
    checks = [c.__dict__ for c in judged.pop("checks")]
    return judged | {"environment": env.name, "version": str(version), "checks": checks,
                     "passed": all(c["passed"] for c in checks)}


def _decision_request(config: PipelineConfig, settings: Settings, version: str | int, environment: str,
                      run_context: dict[str, str] | None, idempotency_key: str | None) -> tuple:
    """What a promotion or refusal works with: ``(version, environment config, run context,
    monitoring engine, idempotency key, registry client)``; the key defaults to one per DAG run
    (or per call outside Airflow)."""
    version = str(version)
    env = config.promotion.environment(environment)
    run_context = run_context or {}
    engine = store.get_engine(settings.monitoring_db_uri)
    key = idempotency_key or f"{config.name}:{env.name}:{version}:{run_context.get('dag_run_id') or _now_key()}"
    return version, env, run_context, engine, key, registry.get_client(settings)


def refuse_promotion(config: PipelineConfig, settings: Settings, version: str | int, environment: str, *,
                     actor: str, reason: str, run_context: dict[str, str] | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
    """Record a refusal decided outside the gates (an approval rejected or timed out): one
    ``refuse`` ledger row by ``actor`` with ``reason``, the alias untouched. A retried key
    replays the recorded decision (whatever it was)."""
    version, env, run_context, engine, key, client = _decision_request(
        config, settings, version, environment, run_context, idempotency_key)
    with ledger.lifecycle_lock(engine, config.name, holder=f"{actor} refuse v{version} for {env.name}") as conn:
        recorded = ledger.find_ledger(engine, key)
        if recorded is not None:
            return _replay(recorded, env)
        incumbent = _alias_version(client, config, ledger_alias(env))
        check = GateCheck("approval", False, reason)
        ledger.append_ledger(conn, ledger.LedgerEntry(
            idempotency_key=key, pipeline=config.name, model_name=config.model_name, action="refuse",
            alias=ledger_alias(env), environment=env.name, from_version=incumbent, to_version=version, actor=actor,
            reason=f"refused: {reason}", dag_id=run_context.get("dag_id"), run_id=run_context.get("dag_run_id"),
            data_interval_end=run_context.get("as_of") or None, metrics={"checks": [check.__dict__]}))
        client.set_model_version_tag(config.model_name, version, f"airloop.promotion.{env.name}", "refused")
    for line in verdict_lines(env.name, version, incumbent, [check], False):
        log.info("%s", line)
    return {"promoted": False, "environment": env.name, "version": version, "previous": incumbent,
            "reason": f"refused: {reason}", "checks": [check.__dict__], "replayed": False}


def promote_version(config: PipelineConfig, settings: Settings, version: str | int, environment: str, *,
                    actor: str, reason: str = "", force: bool = False, run_context: dict[str, str] | None = None,
                    evidence: dict[str, Any] | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
    """Move ``version`` into ``environment`` if it passes the path and the environment's gates.

    Under the pipeline's lifecycle lock: the path (the version must be, or have been, in the
    previous environment), the gates (the incumbent re-scored on the candidate's holdout unless
    ``evidence`` from the training run has it), the alias move(s) and one ledger row (``promote``
    or ``refuse``). ``force`` overrides failed gates and the path; the failures are recorded.
    With ``idempotency_key`` a decided request returns its recorded decision untouched.
    Returns ``{"promoted", "environment", "version", "previous", "reason", "checks", "replayed"}``.
    """

    version, env, run_context, engine, key, client = _decision_request(
        config, settings, version, environment, run_context, idempotency_key)
    with ledger.lifecycle_lock(engine, config.name, holder=f"{actor} promote v{version} to {env.name}") as conn:
        reconcile.repair(client, engine, conn, config, actor=f"{actor} (before a move)")  # a retry repairs first
        recorded = ledger.find_ledger(engine, key)
        if recorded is not None:
            return _replay(recorded, env)
        judged = _judge(client, engine, config, settings, env, version, evidence)
        incumbent = judged["incumbent"]
        if judged["noop"]:
            log.info("%s: v%s is already there, nothing to judge", env.name, version)
            return {"promoted": False, "environment": env.name, "version": version, "previous": incumbent,
                    "reason": f"v{version} is already in {env.name}", "checks": [], "replayed": False, "noop": True}
        checks, metrics, train_rows = judged["checks"], judged["metrics"], judged["train_rows"]
        incumbent_metrics, incumbent_error = judged["incumbent_metrics"], judged["incumbent_error"]
        passed = all(c.passed for c in checks)
        promote = passed or force
        summary = "; ".join(f"{c.name}: {c.detail}" for c in (checks if passed or force else [c for c in checks if not c.passed]))
        why = ("forced by operator; " if force and not passed else "" if passed else "refused: ") + summary
        if reason:
            why = f"{reason} — {why}" if why else reason
        if promote:  # the write order of a move: airloop.registry.reconcile
            reconcile.begin_move(client, config, env, version, key)
            reconcile.fault_point("before_ledger")
        ledger.append_ledger(conn, ledger.LedgerEntry(
            idempotency_key=key, pipeline=config.name, model_name=config.model_name,
            action="promote" if promote else "refuse", alias=ledger_alias(env), environment=env.name,
            from_version=incumbent, to_version=version, actor=actor, reason=why,
            dag_id=run_context.get("dag_id"), run_id=run_context.get("dag_run_id"),
            data_interval_end=run_context.get("as_of") or None,
            metrics={"candidate": metrics, "incumbent": incumbent_metrics, "incumbent_error": incumbent_error,
                     "train_rows": train_rows, "forced": force and not passed,
                     "checks": [c.__dict__ for c in checks]},
        ))
        if promote:
            reconcile.fault_point("after_ledger")
            for alias in moved_aliases(env):
                client.set_registered_model_alias(config.model_name, alias, version)
            reconcile.fault_point("after_alias")
    if promote:
        reconcile.fault_point("after_commit")
        client.set_model_version_tag(config.model_name, version, f"airloop.replaced.{env.name}", incumbent or "")
    client.set_model_version_tag(config.model_name, version, f"airloop.promotion.{env.name}",
                                 "promoted" if promote else "refused")
    if promote:
        reconcile.end_move(client, config, env, version)
    for line in verdict_lines(env.name, version, incumbent, checks, promote, forced=force and not passed):
        log.info("%s", line)
    return {"promoted": promote, "environment": env.name, "version": version, "previous": incumbent,
            "reason": why, "checks": [c.__dict__ for c in checks], "replayed": False}


def promotion_key(config: PipelineConfig, environment: str, version: str | int, run_id: str) -> str:
    """Idempotency key of a promotion asked by DAG run ``run_id`` (the promote DAG's form)."""
    return f"{config.name}:{environment}:{version}:{run_id}"


def rollback_key(config: PipelineConfig, environment: str, run_id: str) -> str:
    """Idempotency key of a rollback asked by DAG run ``run_id``."""
    return f"{config.name}:{environment}:rollback:{run_id}"


def _now_key() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def verdict_lines(environment: str, version: str, incumbent: str | None, checks: list, promoted: bool,
                  forced: bool = False, replayed: bool = False) -> list[str]:
    """The task-log lines of one environment's verdict: ``prod: FAIL at beats_champion -> v4
    refused, prod stays on v3`` and every gate with its figure vs threshold. ``checks``:
    :class:`GateCheck` objects or their dicts (ledger rows)."""
    items = [c if isinstance(c, dict) else c.__dict__ for c in checks]
    failed = [c["name"] for c in items if not c["passed"]]
    verdict = "PASS" if not failed else f"FAIL at {', '.join(failed)}" + (", FORCED by operator" if forced else "")
    was = f"v{incumbent}" if incumbent else "none"
    move = (f"v{version} promoted ({environment} was {was})" if promoted
            else f"v{version} refused, {environment} stays on {was}")
    head = f"{environment}: {'already decided for this request: ' if replayed else ''}{verdict} -> {move}"
    gates = "; ".join(f"{c['name']} {'ok' if c['passed'] else 'FAILED'} ({c['detail']})" for c in items)
    return [head, f"{environment} gates: {gates or 'none judged'}"]


def _replay(recorded: dict[str, Any], env: EnvironmentConfig) -> dict[str, Any]:
    if recorded["action"] in ("promote", "refuse"):
        for line in verdict_lines(env.name, recorded["to_version"], recorded["from_version"],
                                  (recorded.get("metrics") or {}).get("checks", []), recorded["action"] == "promote",
                                  forced=bool((recorded.get("metrics") or {}).get("forced")), replayed=True):
            log.info("%s", line)
    else:
        log.info("already decided (%s v%s -> %s): %s", recorded["action"], recorded["to_version"], env.name,
                 recorded["reason"])
    return {"promoted": recorded["action"] == "promote", "environment": env.name, "version": recorded["to_version"],
            "previous": recorded["from_version"], "reason": recorded["reason"],
            "checks": (recorded.get("metrics") or {}).get("checks", []), "replayed": True}


def step_key(interval_key: str, env: EnvironmentConfig) -> str:
    """Idempotency key of a training interval's step into ``env``."""
    return f"{interval_key}:promotion" if env.serving else f"{interval_key}:promotion:{env.name}"


def awaiting_approval(config: PipelineConfig, settings: Settings, version: str, env: EnvironmentConfig,
                      evidence: dict[str, Any] | None, key: str, force: bool = False) -> dict[str, Any] | None:
    """The step that waits for a person before ``version`` enters ``env`` (``promotion.require_approval``),
    or ``None`` when there is nothing to ask: no approval needed, already decided under ``key``,
    already there, or (unless ``force``) its gates fail now (the refusal is then recorded as usual)."""
    if not config.promotion.needs_approval(env.name):
        return None
    if ledger.find_ledger(store.get_engine(settings.monitoring_db_uri), key) is not None:
        return None
    preview = preview_promotion(config, settings, version, env.name, evidence)
    if preview["noop"] or not (preview["passed"] or force):
        return None
    log.info("%s: v%s passes its gates now; waiting for a person's approval (asked under %s)", env.name, version, key)
    return {"promoted": False, "environment": env.name, "version": str(version), "previous": preview["incumbent"],
            "reason": f"v{version} into {env.name} awaits approval", "checks": preview["checks"], "replayed": False,
            "awaiting_approval": env.name, "approval_key": key}


def promote_along_path(config: PipelineConfig, settings: Settings, version: str, evidence: dict[str, Any], *,
                       actor: str, interval_key: str, run_context: dict[str, str], force: bool = False,
                       approved: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """A training run's promotion: walk the path up to ``promotion.auto_promote_to``, one gated
    step per environment, stopping at the first refusal, or before an environment in
    ``promotion.require_approval`` that ``approved`` (``{env: {"actor", "reason"}}``) does not
    cover yet (``awaiting_approval`` names it). Idempotent per interval: walking again after an
    approval replays the recorded steps and judges the approved one now.

    Returns the serving environment's view as the deploy step needs it (``promoted`` = the
    version is now the champion) plus every step under ``"steps"``.
    """
    steps = []
    target = config.promotion.auto_target
    serving = config.promotion.serving_environment
    approved = approved or {}
    for env in config.promotion.path():
        key = step_key(interval_key, env)
        if env.name not in approved and (held := awaiting_approval(config, settings, version, env, evidence, key,
                                                                    force)):
            steps.append(held)
            break
        by = approved.get(env.name) or {}
        step = promote_version(config, settings, version, env.name, actor=by.get("actor") or actor, force=force,
                               run_context=run_context, evidence=evidence, idempotency_key=key,
                               reason=by.get("reason") or run_context.get("trigger_reason") or "")
        steps.append(step)
        if env.name == target or not (step["promoted"] or step.get("noop")):
            break
    last = next((s for s in steps if s["environment"] == serving.name), None)
    final = steps[-1]
    return {
        "promoted": bool(last and last["promoted"]),
        "version": version,
        "previous": last["previous"] if last else None,
        "reason": final["reason"],
        "reached": [s["environment"] for s in steps if s["promoted"] or s.get("noop")],
        "steps": steps,
        "replayed": all(s["replayed"] for s in steps),
        "awaiting_approval": final.get("awaiting_approval"),
        "approval_key": final.get("approval_key"),
    }


def rollback(config: PipelineConfig, settings: Settings, environment: str | None = None, target: str = "previous", *,
             actor: str, reason: str, run_context: dict[str, str] | None = None,
             idempotency_key: str | None = None) -> dict[str, Any]:
    """Move ``environment`` (default: the serving one) back to ``target`` (``"previous"`` or a
    version number) in one step: alias(es) moved and a ``rollback`` ledger row, under the lock.
    No gates: a rollback goes to a version that has served before (checked). A retried key
    replays the recorded move. Telling serving is the caller's part
    (:func:`airloop.tasks.lifecycle.rollback_and_reload`); ``"serving"`` is ``None`` here.
    """

    env = config.promotion.environment(environment or config.promotion.serving_environment.name)
    run_context = run_context or {}
    engine = store.get_engine(settings.monitoring_db_uri)
    client = registry.get_client(settings)
    key = idempotency_key or rollback_key(config, env.name, run_context.get("dag_run_id") or _now_key())
    with ledger.lifecycle_lock(engine, config.name, holder=f"{actor} rollback {env.name}") as conn:
        reconcile.repair(client, engine, conn, config, actor=f"{actor} (before a move)")
        recorded = ledger.find_ledger(engine, key)
        if recorded is not None:  # a retry: the move is recorded (the caller makes serving follow it)
            return _replay(recorded, env) | {"rolled_back": recorded["action"] == "rollback", "serving": None}
        current = _alias_version(client, config, ledger_alias(env))
        if str(target).lower() == "previous":
            goal = previous_version(engine, config, env, current)
            if goal is None:
                raise LifecycleError(f"{env.name} has no previous version to roll back to (now v{current})")
        else:
            goal = str(int(str(target)))
            version_record(client, config, goal)  # exists?
            if not _ever_in(engine, config, env, goal):
                raise LifecycleError(f"v{goal} never served {env.name}; promote it instead of rolling back to it")
        if goal == current:
            raise LifecycleError(f"{env.name} already runs v{goal}")
        reconcile.begin_move(client, config, env, goal, key)
        ledger.append_ledger(conn, ledger.LedgerEntry(
            idempotency_key=key, pipeline=config.name, model_name=config.model_name, action="rollback",
            alias=ledger_alias(env), environment=env.name, from_version=current, to_version=goal, actor=actor,
            reason=reason or "rollback", dag_id=run_context.get("dag_id"), run_id=run_context.get("dag_run_id"),
            data_interval_end=run_context.get("as_of") or None))
        reconcile.fault_point("after_ledger")
        for alias in moved_aliases(env):
            client.set_registered_model_alias(config.model_name, alias, goal)
    if current:
        client.set_model_version_tag(config.model_name, current, f"airloop.rolled_back.{env.name}", reason[:500])
    reconcile.end_move(client, config, env, goal)
    log.warning("%s %s rolled back v%s -> v%s by %s: %s", config.model_name, env.name, current, goal, actor, reason)
    return {"rolled_back": True, "environment": env.name, "from_version": current, "version": goal,
            "reason": reason, "replayed": False, "serving": None}
