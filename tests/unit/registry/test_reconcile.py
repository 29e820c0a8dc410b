"""Crash-safe alias moves: every half-done state a crash can leave converges on the ledger, once
(a second reconcile writes nothing), with a ``reconcile`` ledger row saying what was repaired.

Real SQLite MLflow registry and monitoring store; the crashes of the last tests are real: a
spawned process promoting (or rolling back) is killed with SIGKILL at a fault point of the write
order, then a retry in this process repairs and finishes.
"""

from __future__ import annotations

import multiprocessing

import pytest

from airloop.registry import ledger, reconcile
from airloop.registry.lifecycle import promote_version, rollback
from airloop.registry.tags import move_tag
from tests.unit.registry.faulted_move import promote_with_fault, rollback_with_fault
from tests.unit.registry import lifecycle_store as _store
from tests.unit.registry.lifecycle_store import LifecyclePipeline

lifecycle_store, pipe = _store.lifecycle_store, _store.pipe  # the fixtures


def key(pipe: LifecyclePipeline, name: str) -> str:
    """An idempotency key of this test's pipeline (keys are unique across the ledger)."""
    return f"{pipe.config.name}:{name}"


def to_prod(pipe: LifecyclePipeline, version: str, name: str) -> None:
    """``version`` through dev and staging into prod (it beats the incumbent)."""
    settings = pipe.store.settings
    key = f"{pipe.config.name}:{name}"
    for env in ("dev", "staging"):
        assert promote_version(pipe.config, settings, version, env, actor="t", idempotency_key=f"{key}:{env}")[
            "promoted"]
    incumbent = pipe.alias("champion")
    evidence = {"champion": {"version": incumbent, "metrics": {"roc_auc": 0.5}}} if incumbent else {}
    assert promote_version(pipe.config, settings, version, "prod", actor="t", idempotency_key=key,
                           evidence=evidence)["promoted"]


def serving_env(pipe: LifecyclePipeline):
    return pipe.config.promotion.serving_environment


def repairs(pipe: LifecyclePipeline) -> list[dict]:
    return [r for r in pipe.ledger() if r["action"] == reconcile.RECONCILE]


def run(pipe: LifecyclePipeline) -> dict:
    return reconcile.reconcile(pipe.config, pipe.store.settings, actor="tester")


def commit_row(pipe: LifecyclePipeline, key: str, action: str, env, from_v, to_v) -> None:
    ledger.append_ledger(pipe.store.engine, ledger.LedgerEntry(
        idempotency_key=key, pipeline=pipe.config.name, model_name=pipe.name, action=action,
        alias=ledger.ledger_alias(env), environment=env.name, from_version=from_v, to_version=to_v, actor="t",
        reason="test"))


def assert_converged(pipe: LifecyclePipeline, champion: str | None) -> None:
    assert pipe.alias("champion") == pipe.alias("prod") == champion
    markers = [t for v in pipe.store.client.search_model_versions(f"name = '{pipe.name}'") for t in (v.tags or {})
               if t.startswith("airloop.move.")]
    assert markers == []
    before = len(pipe.ledger())
    assert run(pipe)["repairs"] == []  # idempotent: nothing left to do, nothing written
    assert len(pipe.ledger()) == before


# ------------------------------------------------------------------- the half-done states
def test_uncommitted_move_with_aliases_moved_is_undone(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    env = serving_env(pipe)
    client = pipe.store.client
    reconcile.begin_move(client, pipe.config, env, v2, key(pipe, "lost"))  # killed after the alias move,
    client.set_registered_model_alias(pipe.name, "prod", v2)                # before the ledger commit
    client.set_registered_model_alias(pipe.name, "champion", v2)

    result = run(pipe)
    assert [r["environment"] for r in result["repairs"]] == ["prod"]
    assert_converged(pipe, v1)
    (row,) = repairs(pipe)
    assert row["actor"] == "tester" and row["from_version"] == v2 and row["to_version"] == v1
    assert f"undid move {key(pipe, 'lost')} to v2 (never committed in the ledger)" in row["reason"]
    assert "alias champion v2 -> v1" in row["reason"] and "alias prod v2 -> v1" in row["reason"]
    assert result["versions"]["prod"] == v1


def test_committed_move_whose_aliases_never_moved_is_finished(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    env = serving_env(pipe)
    reconcile.begin_move(pipe.store.client, pipe.config, env, v2, key(pipe, "done"))
    commit_row(pipe, key(pipe, "done"), "promote", env, v1, v2)  # committed, killed before the alias move

    run(pipe)
    assert_converged(pipe, v2)
    assert pipe.tag(v2, "airloop.promotion.prod") == "promoted"
    (row,) = repairs(pipe)
    assert f"finished move {key(pipe, 'done')} (committed in the ledger, v2)" in row["reason"]
    assert (row["from_version"], row["to_version"]) == (v1, v2)


@pytest.mark.parametrize("committed", [False, True])
def test_a_marker_left_behind_goes_whether_its_move_was_committed_or_not(pipe, committed):
    """Killed after the marker, before any alias moved (the move never happened), or after the
    commit, before the marker was removed (it happened): only the marker is left to remove."""
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    target, name = (v1, "k1") if committed else (v2, "pending")
    reconcile.begin_move(pipe.store.client, pipe.config, serving_env(pipe), target, key(pipe, name))
    run(pipe)
    assert_converged(pipe, v1)
    if committed:  # only its bookkeeping was left: finished, no ledger row (nothing that serves changed)
        assert repairs(pipe) == [] and pipe.tag(v1, "airloop.promotion.prod") == "promoted"
    else:
        assert [r["reason"] for r in repairs(pipe)] == \
            [f"prod: undid move {key(pipe, name)} to v2 (never committed in the ledger)"]


def test_alias_on_a_version_the_ledger_never_promoted_goes_back(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    pipe.store.client.set_registered_model_alias(pipe.name, "champion", v2)  # by hand, or half of a pair
    run(pipe)
    assert_converged(pipe, v1)
    assert [r["reason"] for r in repairs(pipe)] == ["prod: alias champion v2 -> v1 (the ledger's version)"]
    assert pipe.alias("staging") == v1 and pipe.alias("dev") == v1  # untouched: they agree with the ledger


def test_a_withdrawn_champion_loses_its_aliases(pipe):
    v1 = pipe.add_version(0.80)
    to_prod(pipe, v1, "k1")
    commit_row(pipe, key(pipe, "withdrawn"), "rollback", serving_env(pipe), v1, None)  # killed before the alias delete
    run(pipe)
    assert_converged(pipe, None)


def test_an_environment_the_ledger_never_moved_is_left_alone(pipe):
    v1 = pipe.add_version(0.80)
    pipe.store.client.set_registered_model_alias(pipe.name, "champion", v1)
    assert run(pipe) == {"repairs": [], "versions": {}}
    assert pipe.alias("champion") == v1 and pipe.ledger() == []


def test_every_move_repairs_first(pipe):
    v1, v2, v3 = (pipe.add_version(r) for r in (0.80, 0.85, 0.90))
    to_prod(pipe, v1, "k1")
    pipe.store.client.set_registered_model_alias(pipe.name, "staging", v3)  # drifted from the ledger (v1)
    moved = promote_version(pipe.config, pipe.store.settings, v2, "dev", actor="t", idempotency_key=key(pipe, "k2:dev"))
    assert moved["promoted"] and pipe.alias("dev") == v2
    assert pipe.alias("staging") == v1  # the move repaired staging before judging
    assert [r["environment"] for r in repairs(pipe)] == ["staging"]


def test_start_up_reconcile_does_not_create_a_missing_store(tmp_path, lifecycle_store):
    from airloop.core.settings import load_settings

    settings = load_settings({"AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp_path / 'none.db'}"})
    assert reconcile.reconcile_at_startup(lifecycle_store.base, settings) is None
    assert not (tmp_path / "none.db").exists()


# ---------------------------------------------------------------- real crashes (SIGKILL)
def _killed(target, *args) -> int:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(180)
    return process.exitcode


@pytest.mark.parametrize("point, committed", [("before_ledger", False), ("after_ledger", False),
                                              ("after_alias", False), ("after_commit", True)])
def test_a_promotion_killed_at_any_point_converges_and_the_retry_finishes_it(pipe, tmp_path, point, committed):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    for env in ("dev", "staging"):
        promote_version(pipe.config, pipe.store.settings, v2, env, actor="t", idempotency_key=key(pipe, f"k2:{env}"))
    (tmp_path / point).touch()  # armed once
    evidence = {"champion": {"version": v1, "metrics": {"roc_auc": 0.5}}}
    assert _killed(promote_with_fault, pipe.config, pipe.store.settings, v2, "prod", str(tmp_path), key(pipe, "k2"),
                   evidence) == -9
    assert not (tmp_path / point).exists()
    assert pipe.tag(v2, move_tag("prod")) == key(pipe, "k2")  # the crash left its marker
    assert (ledger.find_ledger(pipe.store.engine, key(pipe, "k2")) is not None) is committed

    retried = promote_version(pipe.config, pipe.store.settings, v2, "prod", actor="retry", idempotency_key=key(pipe, "k2"),
                              evidence=evidence)
    assert retried["promoted"] and retried["replayed"] is committed
    assert_converged(pipe, v2)
    assert pipe.tag(v2, "airloop.promotion.prod") == "promoted"
    moves = [(r["action"], r["to_version"]) for r in pipe.ledger() if r["environment"] == "prod"]
    assert moves == [("promote", v1), ("promote", v2)] if committed else \
        moves == [("promote", v1), ("reconcile", v1), ("promote", v2)]


def test_a_rollback_killed_after_its_ledger_row_is_undone_then_retried(pipe, tmp_path):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.85)
    to_prod(pipe, v1, "k1")
    to_prod(pipe, v2, "k2")
    (tmp_path / "after_ledger").touch()
    assert _killed(rollback_with_fault, pipe.config, pipe.store.settings, "prod", "previous", str(tmp_path),
                   key(pipe, "rb")) == -9
    assert pipe.alias("champion") == v2 and ledger.find_ledger(pipe.store.engine, key(pipe, "rb")) is None
    result = rollback(pipe.config, pipe.store.settings, "prod", "previous", actor="retry", reason="again",
                      idempotency_key=key(pipe, "rb"))
    assert result["rolled_back"] and result["version"] == v1
    assert_converged(pipe, v1)
