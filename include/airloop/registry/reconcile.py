"""Crash-safe alias moves: the promotion ledger is the truth, the registry aliases follow it.

**One write order for every move** (promotion, rollback, withdrawal), all under the pipeline's
lifecycle lock (:func:`airloop.registry.ledger.lifecycle_lock`):

1. the marker tag ``airloop.move.<env>`` = the move's idempotency key on the version moved to
   (:func:`begin_move`): "a move of this environment is in progress";
2. the ledger row, written in the lock's transaction (not visible yet);
3. the registry alias(es) set (or deleted for a withdrawal);
4. the transaction commits: the move has happened (the ledger row is the commit record);
5. the version's outcome tags, then the marker is removed (:func:`end_move`).

A ``kill -9`` can stop this anywhere. What it leaves, and what :func:`reconcile` does:

* marker present, ledger row absent (killed in 1-3, the transaction rolled back): the move did
  not happen. Any alias already moved goes back to the ledger's version; the marker goes.
* marker present, ledger row present (killed in 4-5): the move happened. The aliases are checked
  against the ledger (set where they are not), the outcome tag written, the marker removed.
  When the aliases already agree, only the move's bookkeeping was left, and no ``reconcile`` row
  is written: a move still alive looks the same while it writes step 5 (after the lock is
  released, so a concurrent caller's repair can see it), and that is not a repair.
* no marker, an alias differs from the ledger's version for it (a half-set pair of aliases, a
  hand-moved alias, an alias on a version the ledger never promoted): the alias is set back to
  the ledger's version (deleted when the ledger's last move withdrew the version).

An environment without any move in the ledger is left alone (the ledger has no opinion yet).
Every repair of an alias or of an uncommitted move appends one ``reconcile`` row to the ledger
(who, what was found, what was done); ``reconcile`` is not a move
(:data:`airloop.registry.ledger.MOVES`), so the audit's "which version served at T" is unchanged
by it. Reconciling a converged pipeline writes nothing (idempotent).

It runs before every move (inside the same lock, so a retried task repairs first), at serving
start-up (the model manager then loads the alias the ledger says) and in the monitoring DAG's
post-deploy guard (serving reloads when it answers with another version than the ledger's).
"""

from __future__ import annotations

import logging
import os
import signal
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.pipeline import EnvironmentConfig, PipelineConfig
from airloop.core.settings import AIRLOOP_FAULT_AT, Settings
from airloop.registry import client as registry
from airloop.registry import ledger
from airloop.registry.client import _alias_version, _quote
from airloop.registry.tags import MOVE_TAG_PREFIX, move_tag

log = logging.getLogger(__name__)

#: The ledger action of a repair (not a move).
RECONCILE = "reconcile"

#: The named points of the write order where a test can kill the process (:func:`fault_point`).
FAULT_POINTS = ("before_ledger", "after_ledger", "after_alias", "after_commit")


def fault_point(name: str) -> None:
    """Tests only: ``kill -9`` this process at write-order point ``name`` when it is armed.

    ``AIRLOOP_FAULT_AT`` names a folder; a file ``<folder>/<name>`` arms the point once (the
    process that removes the file first dies; a retry then passes). Unset: does nothing.
    """
    folder = AIRLOOP_FAULT_AT.get()
    if not folder:
        return
    try:
        os.remove(Path(folder) / name)
    except OSError:
        return
    log.warning("fault point %s armed: killing pid %s", name, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- the write order
def begin_move(client: Any, config: PipelineConfig, env: EnvironmentConfig, version: str, key: str) -> None:
    """Step 1: mark ``version`` as the target of ``env``'s move under idempotency ``key``."""
    client.set_model_version_tag(config.model_name, version, move_tag(env.name), key)


def end_move(client: Any, config: PipelineConfig, env: EnvironmentConfig, version: str) -> None:
    """Step 5: the move of ``env`` onto ``version`` is complete; remove its marker."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version_tag(config.model_name, version, move_tag(env.name))
    except MlflowException as err:  # already gone (a reconciler was faster)
        log.debug("marker %s of v%s already removed: %s", move_tag(env.name), version, err)


# ----------------------------------------------------------------------------------- reading
def ledger_target(engine: sa.Engine, pipeline: str, env: EnvironmentConfig) -> tuple[bool, str | None]:
    """``(known, version)``: the version the ledger's last committed move put into ``env``
    (``None``: withdrawn); ``known`` is False when the ledger has no move of ``env`` yet."""
    rows = ledger.ledger_rows(engine, pipeline, where=lambda t: sa.and_(
        t.c.alias == ledger.ledger_alias(env), t.c.action.in_(ledger.MOVES)))
    if not rows:
        return False, None
    return True, rows[-1]["to_version"]


def ledger_versions(engine: sa.Engine, config: PipelineConfig) -> dict[str, str | None]:
    """``{environment: version}`` per the ledger, for the environments it has moved."""
    out = {}
    for env in config.promotion.path():
        known, version = ledger_target(engine, config.name, env)
        if known:
            out[env.name] = version
    return out


def _markers(client: Any, config: PipelineConfig) -> list[tuple[str, str, str]]:
    """``(environment, version, key)`` of every move marker left on the model's versions."""
    versions = client.search_model_versions(f"name = {_quote(config.model_name)}")
    return [(tag[len(MOVE_TAG_PREFIX):], str(mv.version), value)
            for mv in versions for tag, value in (mv.tags or {}).items() if tag.startswith(MOVE_TAG_PREFIX)]


# ------------------------------------------------------------------------------------ repair
def repair(client: Any, engine: sa.Engine, conn: sa.Connection, config: PipelineConfig, *, actor: str,
           environments: list[EnvironmentConfig] | None = None) -> list[dict[str, Any]]:
    """Converge the registry on the ledger for ``environments`` (default: the whole path) inside
    the caller's :func:`~airloop.registry.ledger.lifecycle_lock` (``conn``); one ``reconcile``
    ledger row per repaired environment. Returns the repairs (empty: nothing to do)."""
    envs = environments or config.promotion.path()
    markers = _markers(client, config)
    repairs = []
    for env in envs:
        notes: list[str] = []
        finished: list[str] = []  # committed moves whose step 5 was left: bookkeeping, not a repair
        mine = [(version, key) for name, version, key in markers if name == env.name]
        for version, key in mine:
            committed = ledger.find_ledger(engine, key)
            if committed is not None:
                finished.append(f"finished move {key} (committed in the ledger, v{version})")
                if committed["action"] == "promote":
                    client.set_model_version_tag(config.model_name, version, f"airloop.promotion.{env.name}",
                                                 "promoted")
            else:
                notes.append(f"undid move {key} to v{version} (never committed in the ledger)")
        known, want = ledger_target(engine, config.name, env)
        before = _alias_version(client, config, ledger.ledger_alias(env))
        if known:
            for alias in ledger.moved_aliases(env):
                have = before if alias == ledger.ledger_alias(env) else _alias_version(client, config, alias)
                if have == want:
                    continue
                if want is None:
                    client.delete_registered_model_alias(config.model_name, alias)
                else:
                    client.set_registered_model_alias(config.model_name, alias, want)
                notes.append(f"alias {alias} v{have} -> {_v(want)} (the ledger's version)")
        for version, _ in mine:
            end_move(client, config, env, version)
        if not notes:
            # only a committed move's step 5 was left (a crash after its commit, or a live move
            # writing it now: see the module docstring); nothing that serves changed
            for line in finished:
                log.info("%s %s: %s (its outcome tags; no alias needed a repair)", config.model_name, env.name, line)
            continue
        notes = finished + notes
        reason = f"{env.name}: " + "; ".join(notes)
        ledger.append_ledger(conn, ledger.LedgerEntry(
            idempotency_key=f"{config.name}:{env.name}:{RECONCILE}:{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}",
            pipeline=config.name, model_name=config.model_name, action=RECONCILE, alias=ledger.ledger_alias(env),
            environment=env.name, from_version=before, to_version=want if known else before, actor=actor,
            reason=reason[:4000]))
        log.warning("reconciled %s: %s", config.model_name, reason)
        repairs.append({"environment": env.name, "from_version": before, "version": want if known else before,
                        "notes": notes})
    return repairs


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def reconcile(config: PipelineConfig, settings: Settings, environment: str | None = None, *,
              actor: str = "reconciler", client: Any = None) -> dict[str, Any]:
    """Repair every half-done move of ``config`` (or of one ``environment``) under the lifecycle
    lock. Returns ``{"repairs": [...], "versions": {environment: version per the ledger}}``."""
    engine = store.get_engine(settings.monitoring_db_uri)
    client = client or registry.get_client(settings)
    envs = [config.promotion.environment(environment)] if environment else None
    with ledger.lifecycle_lock(engine, config.name, holder=f"{actor} reconcile") as conn:
        repairs = repair(client, engine, conn, config, actor=actor, environments=envs)
    return {"repairs": repairs, "versions": ledger_versions(engine, config)}


def champion_per_ledger(config: PipelineConfig, settings: Settings) -> tuple[bool, str | None]:
    """``(known, version)`` of the serving environment per the ledger (see :func:`ledger_target`)."""
    engine = store.get_engine(settings.monitoring_db_uri)
    return ledger_target(engine, config.name, config.promotion.serving_environment)


def store_exists(settings: Settings) -> bool:
    """False for an SQLite monitoring store whose file does not exist (nothing was ever recorded:
    nothing to reconcile, and reading it must not create it)."""
    uri = store.resolve_uri(settings.monitoring_db_uri)
    if not uri.startswith("sqlite"):
        return True
    path = uri.split("sqlite:///", 1)[-1]
    return bool(path) and path != ":memory:" and Path(path).is_file()


def reconcile_at_startup(config: PipelineConfig, settings: Settings, client: Any = None) -> dict[str, Any] | None:
    """Serving start-up: reconcile when there is a ledger to follow (``None``: no store yet)."""
    if not store_exists(settings):
        return None
    return reconcile(config, settings, actor="serving start-up", client=client)

