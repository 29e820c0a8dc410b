"""Model lifecycle: environments, gated promotion, one-step rollback, the post-deploy guard,
audit ("which version served X at T, who moved it and why") and lineage.

Environments (``promotion.environments`` of the pipeline file, e.g. ``dev -> staging -> prod``)
are registry aliases. Entering an environment needs the version to be in the environment before
it (the path) and to pass that environment's gates (thresholds, latency budget, minimum data,
beating the incumbent on the same holdout). The serving environment's version is also the
``champion`` alias, the one the serving process answers with.

Every move and every refused move is one row of the append-only promotion ledger
(:mod:`airloop.store`). Promotions and rollbacks of a pipeline are serialised by a database lock
(:func:`airloop.store.lifecycle_lock`): gates are judged, the alias moved and the ledger row
written while the lock is held, so two concurrent promotions cannot both win and an alias never
points at a version that failed the gate it was judged by.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop import store
from airloop.config import EnvironmentConfig, PipelineConfig, Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
MOVES = ("promote", "rollback")


class LifecycleError(RuntimeError):
    """A lifecycle request that cannot be carried out (unknown version, nothing to roll back to)."""


# ----------------------------------------------------------------------------- environments
def ledger_alias(env: EnvironmentConfig) -> str:
    """The alias a move of ``env`` is recorded under: ``champion`` for the serving environment
    (whose moves also move the environment's own alias), else the environment's alias."""
    return CHAMPION if env.serving else env.registry_alias


def moved_aliases(env: EnvironmentConfig) -> list[str]:
    """The registry aliases a move of ``env`` sets."""
    return [env.registry_alias, CHAMPION] if env.serving else [env.registry_alias]


def _alias_version(client: Any, config: PipelineConfig, alias: str) -> str | None:
    from airloop import registry

    found = registry.alias_version(client, config.model_name, alias)
    return str(found.version) if found is not None else None


def current_versions(client: Any, config: PipelineConfig) -> dict[str, str | None]:
    """``{environment: version}`` as the registry says now (``None``: empty)."""
    return {env.name: _alias_version(client, config, ledger_alias(env)) for env in config.promotion.path()}


# ------------------------------------------------------------------------------- evidence
def version_record(client: Any, config: PipelineConfig, version: str) -> dict[str, Any]:
    """What the registry and the version's training run say about ``version``: tags, holdout
    metrics (``holdout_`` prefix removed), training rows, snapshot reference, params, aliases."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(config.model_name, str(version))
    except MlflowException as err:
        raise LifecycleError(f"{config.model_name} version {version} not found: {err.message}") from None
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    run_tags: dict[str, str] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        metrics = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
        params = dict(run.data.params)
        run_tags = {k: v for k, v in run.data.tags.items() if k.startswith("best.")}
        if "train_rows" in run.data.metrics:
            metrics["train_rows"] = run.data.metrics["train_rows"]
    interval = tags.get("airloop.data_interval", "")
    snapshot = None
    if tags.get("airloop.snapshot") and "/" in interval:
        snapshot = {"path": tags["airloop.snapshot"], "as_of": interval.split("/", 1)[1]}
    train_rows = metrics.pop("train_rows", None)
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": str(mv.source),
        "aliases": sorted(getattr(mv, "aliases", None) or []),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat()
        if mv.creation_timestamp else None,
        "tags": tags,
        "metrics": metrics,
        "params": params | {k.removeprefix("best."): v for k, v in run_tags.items()},
        "train_rows": int(train_rows) if train_rows is not None else None,
        "snapshot": snapshot,
    }


def score_on_holdout(config: PipelineConfig, settings: Settings, snapshot: dict[str, Any],
                     versions: list[str]) -> dict[str, dict[str, float] | str]:
    """Score ``versions`` on the time holdout of ``snapshot`` (the candidate's own holdout):
    ``{version: metrics}``, or ``{version: "error text"}`` for a version that cannot score it."""
    from airloop import registry
    from airloop.data import load_snapshot
    from airloop.evaluation import holdout_metrics, json_safe
    from airloop.stages import quiet_skops
    from airloop.training import split_holdout

    _, holdout = split_holdout(config, load_snapshot(snapshot, config), snapshot["as_of"])
    out: dict[str, dict[str, float] | str] = {}
    for version in versions:
        try:
            with quiet_skops():
                model = registry.load_sklearn_model(settings, config.model_name, version)
            out[version] = json_safe(holdout_metrics(config, model, holdout))
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


def _ever_in(engine: sa.Engine, config: PipelineConfig, env: EnvironmentConfig, version: str) -> bool:
    rows = store.ledger_rows(engine, config.name, where=lambda t: sa.and_(
        t.c.alias == ledger_alias(env), t.c.action.in_(MOVES), t.c.to_version == version))
    return bool(rows)


# -------------------------------------------------------------------------------- promote
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
    from airloop import registry
    from airloop.promotion import GateCheck, evaluate_gates

    version = str(version)
    env = config.promotion.environment(environment)
    path = config.promotion.path()
    run_context = run_context or {}
    engine = store.get_engine(settings.monitoring_db_uri)
    key = idempotency_key or f"{config.name}:{env.name}:{version}:{run_context.get('dag_run_id') or _now_key()}"
    client = registry.get_client(settings)
    with store.lifecycle_lock(engine, config.name, holder=f"{actor} promote v{version} to {env.name}") as conn:
        recorded = store.find_ledger(engine, key)
        if recorded is not None:
            return _replay(recorded, env)
        record = version_record(client, config, version)
        incumbent = _alias_version(client, config, ledger_alias(env))
        if incumbent == version:
            return {"promoted": False, "environment": env.name, "version": version, "previous": incumbent,
                    "reason": f"v{version} is already in {env.name}", "checks": [], "replayed": False, "noop": True}
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
        train_rows = (evidence or {}).get("train_rows", record["train_rows"])
        decision = evaluate_gates(config, metrics, incumbent_metrics, incumbent_error, force=False,
                                  environment=gates, train_rows=train_rows)
        checks = ([path_check] if path_check else []) + decision.checks
        if live:
            checks.append(GateCheck("beats_champion", True, str(live)))
        passed = all(c.passed for c in checks)
        promote = passed or force
        summary = "; ".join(f"{c.name}: {c.detail}" for c in (checks if passed or force else [c for c in checks if not c.passed]))
        why = ("forced by operator; " if force and not passed else "" if passed else "refused: ") + summary
        if reason:
            why = f"{reason} — {why}" if why else reason
        store.append_ledger(conn, store.LedgerEntry(
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
            client.set_model_version_tag(config.model_name, version, f"airloop.replaced.{env.name}", incumbent or "")
            for alias in moved_aliases(env):
                client.set_registered_model_alias(config.model_name, alias, version)
        client.set_model_version_tag(config.model_name, version, f"airloop.promotion.{env.name}",
                                     "promoted" if promote else "refused")
    log.info("%s v%s -> %s: %s", config.model_name, version, env.name, why)
    return {"promoted": promote, "environment": env.name, "version": version, "previous": incumbent,
            "reason": why, "checks": [c.__dict__ for c in checks], "replayed": False}


def _now_key() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _replay(recorded: dict[str, Any], env: EnvironmentConfig) -> dict[str, Any]:
    log.info("already decided (%s v%s -> %s): %s", recorded["action"], recorded["to_version"], env.name, recorded["reason"])
    return {"promoted": recorded["action"] == "promote", "environment": env.name, "version": recorded["to_version"],
            "previous": recorded["from_version"], "reason": recorded["reason"],
            "checks": (recorded.get("metrics") or {}).get("checks", []), "replayed": True}


def promote_along_path(config: PipelineConfig, settings: Settings, version: str, evidence: dict[str, Any], *,
                       actor: str, interval_key: str, run_context: dict[str, str], force: bool = False,
                       ) -> dict[str, Any]:
    """A training run's promotion: walk the path up to ``promotion.auto_promote_to``, one gated
    step per environment, stopping at the first refusal. Idempotent per interval.

    Returns the serving environment's view as the deploy step needs it (``promoted`` = the
    version is now the champion) plus every step under ``"steps"``.
    """
    steps = []
    target = config.promotion.auto_target
    serving = config.promotion.serving_environment
    for env in config.promotion.path():
        key = f"{interval_key}:promotion" if env.serving else f"{interval_key}:promotion:{env.name}"
        step = promote_version(config, settings, version, env.name, actor=actor, force=force,
                               run_context=run_context, evidence=evidence, idempotency_key=key,
                               reason=run_context.get("trigger_reason") or "")
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
    }


# ------------------------------------------------------------------------------- rollback
def previous_version(engine: sa.Engine, config: PipelineConfig, env: EnvironmentConfig, current: str | None) -> str | None:
    """The version ``env`` held before ``current``, skipping versions it was rolled back from.

    Walks the environment's moves newest first; rolling back repeatedly therefore steps further
    back (v3 -> v2 -> v1) instead of toggling between two versions.
    """
    moves = store.ledger_rows(engine, config.name,
                              where=lambda t: sa.and_(t.c.alias == ledger_alias(env), t.c.action.in_(MOVES)))
    rolled_back_from = {r["from_version"] for r in moves if r["action"] == "rollback"}
    for row in reversed(moves):
        for candidate in (row["to_version"], row["from_version"]):
            if candidate and candidate != current and candidate not in rolled_back_from:
                return candidate
    return None


def rollback(config: PipelineConfig, settings: Settings, environment: str | None = None, target: str = "previous", *,
             actor: str, reason: str, run_context: dict[str, str] | None = None, idempotency_key: str | None = None,
             endpoint: Any = None) -> dict[str, Any]:
    """Move ``environment`` (default: the serving one) back to ``target`` (``"previous"`` or a
    version number) in one step: alias(es) moved and a ``rollback`` ledger row, under the lock;
    then, for the serving environment with an ``endpoint``, serving reloads the champion and is
    smoke-tested. No gates: a rollback goes to a version that has served before (checked).
    """
    from airloop import registry

    env = config.promotion.environment(environment or config.promotion.serving_environment.name)
    run_context = run_context or {}
    engine = store.get_engine(settings.monitoring_db_uri)
    client = registry.get_client(settings)
    key = idempotency_key or f"{config.name}:{env.name}:rollback:{run_context.get('dag_run_id') or _now_key()}"
    with store.lifecycle_lock(engine, config.name, holder=f"{actor} rollback {env.name}") as conn:
        recorded = store.find_ledger(engine, key)
        if recorded is not None:  # a retry: the move is recorded; make sure serving follows it
            result = _replay(recorded, env) | {"rolled_back": recorded["action"] == "rollback", "serving": None}
            if env.serving and endpoint is not None:
                result["serving"] = reload_serving(config, settings, endpoint, recorded["to_version"])
            return result
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
        store.append_ledger(conn, store.LedgerEntry(
            idempotency_key=key, pipeline=config.name, model_name=config.model_name, action="rollback",
            alias=ledger_alias(env), environment=env.name, from_version=current, to_version=goal, actor=actor,
            reason=reason or "rollback", dag_id=run_context.get("dag_id"), run_id=run_context.get("dag_run_id"),
            data_interval_end=run_context.get("as_of") or None))
        for alias in moved_aliases(env):
            client.set_registered_model_alias(config.model_name, alias, goal)
        if current:
            client.set_model_version_tag(config.model_name, current, f"airloop.rolled_back.{env.name}", reason[:500])
    log.warning("%s %s rolled back v%s -> v%s by %s: %s", config.model_name, env.name, current, goal, actor, reason)
    result = {"rolled_back": True, "environment": env.name, "from_version": current, "version": goal,
              "reason": reason, "replayed": False, "serving": None}
    if env.serving and endpoint is not None:
        result["serving"] = reload_serving(config, settings, endpoint, goal)
    return result


def reload_serving(config: PipelineConfig, settings: Settings, endpoint: Any, version: str) -> dict[str, Any]:
    """Make serving load the champion and check it answers with ``version`` (smoke test)."""
    from airloop.deploy import reload_alias, smoke_test

    endpoint = endpoint.for_pipeline(config)
    reload_alias(endpoint, CHAMPION)
    return smoke_test(endpoint, version, smoke_inputs(config, settings, version))


def smoke_inputs(config: PipelineConfig, settings: Settings, version: str,
                 snapshot: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Records to smoke-test ``version`` with: the newest rows of its training snapshot (or of
    ``snapshot``) while that is on disk, else the input example stored with the model."""
    from airloop import registry

    snapshot = snapshot or version_record(registry.get_client(settings), config, version)["snapshot"]
    if snapshot and Path(snapshot["path"]).is_dir():
        from airloop.stages import smoke_records

        return smoke_records(config, snapshot)
    from airloop.serving import _example_records, read_model_version

    _, _, example = read_model_version(registry.get_client(settings), settings, config.model_name, version)
    return _example_records(example)


# --------------------------------------------------------------------------------- audit
def _effective(row: dict[str, Any], business: bool) -> datetime:
    if business and row.get("data_interval_end"):
        return datetime.fromisoformat(row["data_interval_end"][:10]).replace(tzinfo=timezone.utc)
    moment = row["recorded_at"]
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def version_at(engine: sa.Engine, config_or_pipeline: PipelineConfig | str, alias: str, at: datetime,
               business: bool = False) -> dict[str, Any] | None:
    """The ledger move that put the version serving ``alias`` in place at ``at`` (``None``:
    nothing yet). ``business=True`` orders moves by their run's as-of day (backfills, the
    simulator's calendar), else by when they were recorded (audit)."""
    pipeline = config_or_pipeline if isinstance(config_or_pipeline, str) else config_or_pipeline.name
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    moves = store.ledger_rows(engine, pipeline, where=lambda t: sa.and_(t.c.alias == alias, t.c.action.in_(MOVES)))
    best, best_key = None, None
    for row in moves:
        key = (_effective(row, business), row["id"])
        if key[0] <= at and (best_key is None or key > best_key):
            best, best_key = row, key
    return best


def served_at(engine: sa.Engine, config: PipelineConfig, environment: str, at: datetime,
              business: bool = False) -> dict[str, Any]:
    """Which version served ``environment`` at ``at``, and who/what moved it there and why."""
    env = config.promotion.environment(environment)
    row = version_at(engine, config, ledger_alias(env), at, business=business)
    return {"environment": env.name, "at": at.isoformat(), "version": row["to_version"] if row else None,
            "since": row["recorded_at"].isoformat() if row else None, "action": row["action"] if row else None,
            "actor": row["actor"] if row else None, "reason": row["reason"] if row else None,
            "previous": row["from_version"] if row else None, "ledger_id": row["id"] if row else None}


def history(engine: sa.Engine, config: PipelineConfig, environment: str | None = None,
            version: str | None = None) -> list[dict[str, Any]]:
    """Ledger rows of the pipeline, oldest first, optionally of one environment or version."""
    def where(t: sa.Table) -> Any:
        clauses = []
        if environment:
            clauses.append(t.c.alias == ledger_alias(config.promotion.environment(environment)))
        if version:
            clauses.append(sa.or_(t.c.to_version == str(version), t.c.from_version == str(version)))
        return sa.and_(sa.true(), *clauses)
    return store.ledger_rows(engine, config.name, where=where)


LINEAGE_TAGS = {
    "data_interval": "airloop.data_interval", "data_fingerprint": "airloop.data_fingerprint",
    "validation": "airloop.validation", "validation_result": "airloop.validation_result",
    "study": "airloop.study", "best_trial": "airloop.best_trial", "estimator": "airloop.estimator",
    "code_version": "airloop.code_version", "replaced_champion": "airloop.replaces",
    "snapshot": "airloop.snapshot", "dag_id": "airloop.dag_id", "dag_run_id": "airloop.dag_run_id",
    "run_type": "airloop.run_type", "trigger_reason": "airloop.trigger_reason",
}


def lineage(config: PipelineConfig, settings: Settings, version: str | int) -> dict[str, Any]:
    """Everything known about how ``version`` came to be and where it went: data interval and
    fingerprint, validation result, study and best trial, code version, the champion it replaced,
    the DAG run, holdout metrics and params, and its ledger history."""
    from airloop import registry

    record = version_record(registry.get_client(settings), config, str(version))
    engine = store.get_engine(settings.monitoring_db_uri)
    return {
        "model_name": config.model_name,
        "version": record["version"],
        "run_id": record["run_id"],
        "created": record["created"],
        "aliases": record["aliases"],
        **{name: record["tags"].get(tag) or None for name, tag in LINEAGE_TAGS.items()},
        "train_rows": record["train_rows"],
        "metrics": record["metrics"],
        "params": record["params"],
        "ledger": [_jsonable(r) for r in history(engine, config, version=record["version"])],
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def compare_versions(config: PipelineConfig, settings: Settings, a: str | int, b: str | int,
                     log_artifact: bool = True) -> dict[str, Any]:
    """Side by side: metrics (with ``b - a``), params and data of two versions; logged as
    ``comparisons/v<a>_vs_v<b>.{json,md}`` on ``b``'s training run when ``log_artifact``."""
    from airloop import registry
    from airloop.evaluation import LOWER_IS_BETTER

    client = registry.get_client(settings)
    left, right = version_record(client, config, str(a)), version_record(client, config, str(b))
    metrics = {}
    for name in sorted(set(left["metrics"]) | set(right["metrics"])):
        x, y = left["metrics"].get(name), right["metrics"].get(name)
        delta = y - x if x is not None and y is not None else None
        better = None
        if delta is not None and delta != 0:
            better = right["version"] if (delta < 0) == (name in LOWER_IS_BETTER or name.startswith("latency")) else left["version"]
        metrics[name] = {"a": x, "b": y, "delta": delta, "better": better}
    params = {name: {"a": left["params"].get(name), "b": right["params"].get(name),
                     "same": left["params"].get(name) == right["params"].get(name)}
              for name in sorted(set(left["params"]) | set(right["params"]))}
    data = {field: {"a": left["tags"].get(tag), "b": right["tags"].get(tag)}
            for field, tag in (("data_interval", "airloop.data_interval"), ("data_fingerprint", "airloop.data_fingerprint"),
                               ("validation", "airloop.validation"), ("estimator", "airloop.estimator"),
                               ("study", "airloop.study"), ("code_version", "airloop.code_version"))}
    data["train_rows"] = {"a": left["train_rows"], "b": right["train_rows"]}
    result = {"model_name": config.model_name, "a": left["version"], "b": right["version"],
              "metrics": metrics, "params": params, "data": data, "artifact": None}
    if log_artifact and right["run_id"]:
        name = f"v{left['version']}_vs_v{right['version']}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
            (Path(tmp) / f"{name}.md").write_text(comparison_markdown(result))
            client.log_artifact(right["run_id"], str(Path(tmp) / f"{name}.json"), artifact_path="comparisons")
            client.log_artifact(right["run_id"], str(Path(tmp) / f"{name}.md"), artifact_path="comparisons")
        result["artifact"] = f"runs:/{right['run_id']}/comparisons/{name}.md"
    return result


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown page (MLflow shows it in the artifact view)."""
    a, b = result["a"], result["b"]
    lines = [f"# {result['model_name']}: v{a} vs v{b}", "", "## Holdout metrics", "",
             f"| metric | v{a} | v{b} | delta (b - a) | better |", "|---|---|---|---|---|"]

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))
    for name, row in result["metrics"].items():
        better = f"v{row['better']}" if row["better"] else "—"
        lines.append(f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} | {fmt(row['delta'])} | {better} |")
    lines += ["", "## Data", "", f"| | v{a} | v{b} |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} |" for name, row in result["data"].items()]
    lines += ["", "## Parameters", "", f"| param | v{a} | v{b} |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} |" for name, row in result["params"].items()]
    return "\n".join(lines) + "\n"


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


def post_deploy_guard(config: PipelineConfig, settings: Settings, summary: dict[str, Any], *, actor: str,
                      run_context: dict[str, str] | None = None, endpoint: Any = None) -> dict[str, Any]:
    """Roll the champion back when, within its first ``post_deploy_guard.intervals`` monitored
    intervals, the interval's monitoring ``summary`` breaks the guard's error-rate, latency or
    quality limits. Acts only when the judged version is still the champion (a backfill over old
    history never rolls back today's model); once per version (idempotency key)."""
    from airloop import registry

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
    runs = store.monitoring_runs
    with engine.connect() as conn:
        seen = conn.execute(sa.select(sa.func.count()).select_from(runs).where(
            runs.c.pipeline == config.name, runs.c.tenant == summary.get("tenant", "default"),
            runs.c.model_version == str(version), runs.c.interval_start >= since,
            runs.c.interval_start <= start)).scalar_one()
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
    result = rollback(config, settings, None, "previous", actor=actor, reason=reason,
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
    from airloop import abtest
    from airloop.deploy import refresh_abtest

    outcomes = []
    engine = store.get_engine(settings.monitoring_db_uri)
    for test in abtest.running_tests(engine, config.name):
        evaluation = abtest.evaluate_test(config, settings, test.test_id, start, end)
        outcome = abtest.conclude_test(config, settings, test.test_id, end)
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
