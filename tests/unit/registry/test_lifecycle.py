"""Gated promotion along the path, idempotent retries and rollbacks: a real SQLite MLflow registry
and the real monitoring store (``claims_fraud``'s path: dev -> staging -> prod, prod serving).

Gates of claims_fraud.yaml: dev roc_auc >= 0.60 and 1000 rows; staging and prod roc_auc >= 0.70
and 1500 rows; prod (serving) also beats its incumbent by 0.002 on the same holdout.
"""

from __future__ import annotations

import pytest

from airloop.registry import ledger
from airloop.registry.audit import LifecycleError
from airloop.registry.lifecycle import promote_along_path, promote_version, promotion_key, rollback, rollback_key
from tests.unit.registry.lifecycle_store import LifecyclePipeline, lifecycle_store, pipe  # noqa: F401 - fixtures


def promote(pipe: LifecyclePipeline, version: str, environment: str, **kwargs):
    return promote_version(pipe.config, pipe.store.settings, version, environment, actor="tester", **kwargs)


def serve(pipe: LifecyclePipeline, version: str, day: str) -> dict:
    """A training run of ``day`` promoting ``version`` along the whole path (it beats the incumbent)."""
    incumbent = pipe.alias("champion")
    evidence = {"champion": {"version": incumbent, "metrics": {"roc_auc": 0.5}}} if incumbent else {}
    result = promote_along_path(pipe.config, pipe.store.settings, version, evidence, actor="training",
                                interval_key=f"{pipe.config.name}@{day}",
                                run_context={"dag_id": "train", "dag_run_id": f"scheduled__{day}", "as_of": day})
    assert result["promoted"], result
    return result


def actions(pipe: LifecyclePipeline) -> list[tuple[str, str, str | None]]:
    return [(r["action"], r["environment"], r["to_version"]) for r in pipe.ledger()]


# -------------------------------------------------------------------------------- promotion
def test_promotion_follows_the_path_and_the_serving_environment_moves_the_champion(pipe):
    v1 = pipe.add_version(0.80)
    skipped = promote(pipe, v1, "staging")  # not from dev: refused, recorded, no exception
    assert not skipped["promoted"] and not skipped["replayed"]
    assert skipped["reason"].startswith("refused: path: v1 was never in dev")
    assert [c["name"] for c in skipped["checks"] if not c["passed"]] == ["path"]
    assert pipe.alias("staging") is None
    assert pipe.tag(v1, "airloop.promotion.staging") == "refused"

    assert promote(pipe, v1, "dev")["promoted"] and pipe.alias("dev") == v1
    staged = promote(pipe, v1, "staging")
    assert staged["promoted"] and "path: v1 has been in dev" in staged["reason"]
    assert pipe.alias("staging") == v1 and pipe.alias("champion") is None  # only the staging alias moved
    served = promote(pipe, v1, "prod")
    assert served["promoted"] and served["previous"] is None
    assert "beats_champion: no champion yet" in served["reason"]
    assert pipe.alias("prod") == pipe.alias("champion") == v1
    assert pipe.tag(v1, "airloop.promotion.prod") == "promoted"
    assert actions(pipe) == [("refuse", "staging", "1"), ("promote", "dev", "1"), ("promote", "staging", "1"),
                             ("promote", "prod", "1")]
    rows = pipe.ledger()
    assert [r["alias"] for r in rows] == ["staging", "dev", "staging", "champion"]
    assert all(r["actor"] == "tester" and r["model_name"] == pipe.name for r in rows)
    assert rows[-1]["metrics"]["candidate"] == {"roc_auc": 0.80} and rows[-1]["metrics"]["train_rows"] == 6000


def test_the_path_remembers_a_version_that_has_left_the_previous_environment(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.81)
    promote(pipe, v1, "dev")
    promote(pipe, v2, "dev")  # v1 leaves dev
    assert pipe.alias("dev") == v2
    assert promote(pipe, v1, "staging")["promoted"]  # it has been in dev


def test_a_failed_gate_is_a_refusal_in_the_ledger_and_moves_nothing(pipe):
    weak = pipe.add_version(0.65)
    assert promote(pipe, weak, "dev")["promoted"]  # dev asks 0.60
    refused = promote(pipe, weak, "staging")
    assert not refused["promoted"]
    assert refused["reason"] == "refused: threshold:roc_auc: 0.6500 >= 0.7 required"
    assert pipe.alias("staging") is None
    (row,) = [r for r in pipe.ledger() if r["action"] == "refuse"]
    assert (row["alias"], row["from_version"], row["to_version"]) == ("staging", None, weak)
    assert row["metrics"]["forced"] is False
    assert {c["name"]: c["passed"] for c in row["metrics"]["checks"]} == {
        "path": True, "threshold:roc_auc": False, "min_training_rows": True}

    small = pipe.add_version(0.90, train_rows=1200)
    promote(pipe, small, "dev")
    assert "min_training_rows: 1200 rows, 1500 required" in promote(pipe, small, "staging")["reason"]
    unknown = pipe.add_version(0.90, train_rows=None)
    assert not promote(pipe, unknown, "dev")["promoted"]  # minimum data cannot be judged
    assert "number of training rows unknown" in pipe.ledger()[-1]["reason"]
    slow = pipe.add_version(0.90, latency_p95_ms=500.0)
    promote(pipe, slow, "dev")  # dev's budget is 200 ms
    assert pipe.alias("dev") == small
    assert "latency: p95 500.00 ms, budget 200.0 ms" in pipe.ledger()[-1]["reason"]


def test_the_serving_environment_must_beat_its_incumbent_on_the_same_holdout(pipe):
    serve(pipe, pipe.add_version(0.80), "2026-03-01")
    close = pipe.add_version(0.801)
    promote(pipe, close, "dev")
    promote(pipe, close, "staging")
    rows = len(pipe.ledger())
    # Without the training run's comparison, both are re-scored on the candidate's training
    # snapshot; this version has none: an error, and nothing is recorded or moved.
    with pytest.raises(LifecycleError, match="cannot be compared with v1 on the same holdout"):
        promote(pipe, close, "prod")
    assert len(pipe.ledger()) == rows and pipe.alias("champion") == "1"

    scored = {"champion": {"version": "1", "metrics": {"roc_auc": 0.80}}}
    refused = promote(pipe, close, "prod", evidence=scored)
    assert not refused["promoted"] and refused["previous"] == "1"
    assert "beats_champion: roc_auc 0.8010 vs champion 0.8000 (delta +0.0010, margin 0.002)" in refused["reason"]
    assert pipe.ledger()[-1]["metrics"]["incumbent"] == {"roc_auc": 0.80}
    # a comparison with another version than the incumbent is not evidence
    with pytest.raises(LifecycleError, match="cannot be compared"):
        promote(pipe, close, "prod", evidence={"champion": {"version": "7", "metrics": {"roc_auc": 0.5}}})

    better = pipe.add_version(0.85)
    promote(pipe, better, "dev")
    promote(pipe, better, "staging")
    won = promote(pipe, better, "prod", evidence=scored)
    assert won["promoted"] and won["previous"] == "1" and pipe.alias("champion") == better
    assert pipe.tag(better, "airloop.replaced.prod") == "1"
    # a champion that could not score the holdout does not block its successor
    broken = pipe.add_version(0.75)
    promote(pipe, broken, "dev")
    promote(pipe, broken, "staging")
    passed = promote(pipe, broken, "prod", evidence={"champion_error": "ValueError: columns missing"})
    assert passed["promoted"]
    assert "champion could not score the holdout (ValueError: columns missing)" in passed["reason"]


def test_an_ab_test_verdict_stands_in_for_the_holdout_comparison(pipe):
    serve(pipe, pipe.add_version(0.90), "2026-03-01")
    challenger = pipe.add_version(0.75)  # worse on its holdout, better on live traffic
    promote(pipe, challenger, "dev")
    promote(pipe, challenger, "staging")
    live = promote(pipe, challenger, "prod", evidence={"live_evidence": "A/B test t-1: challenger better"})
    assert live["promoted"] and "beats_champion: A/B test t-1: challenger better" in live["reason"]
    failing = pipe.add_version(0.60)  # the live verdict does not lift the thresholds
    promote(pipe, failing, "dev")
    assert not promote(pipe, failing, "prod", evidence={"live_evidence": "A/B"}, force=False)["promoted"]


def test_a_retry_with_the_same_key_replays_the_recorded_decision(pipe):
    v1 = pipe.add_version(0.80)
    first = promote(pipe, v1, "dev", idempotency_key="request-1", reason="first model")
    assert first["promoted"] and first["reason"].startswith("first model — ")
    again = promote(pipe, v1, "dev", idempotency_key="request-1", reason="first model")
    assert again["replayed"] and not first["replayed"]
    assert {k: again[k] for k in ("promoted", "environment", "version", "previous", "reason", "checks")} == \
        {k: first[k] for k in ("promoted", "environment", "version", "previous", "reason", "checks")}
    assert len(pipe.ledger()) == 1

    weak = pipe.add_version(0.50)
    assert not promote(pipe, weak, "dev", idempotency_key="request-2")["promoted"]
    # a decided request stays decided: forcing the same key changes nothing
    replay = promote(pipe, weak, "dev", idempotency_key="request-2", force=True)
    assert replay["replayed"] and not replay["promoted"] and replay["reason"].startswith("refused: ")
    assert pipe.alias("dev") == v1 and len(pipe.ledger()) == 2


def test_a_dag_run_is_its_own_idempotency_key(pipe):
    v1 = pipe.add_version(0.80)
    context = {"dag_id": "claims_fraud__promote", "dag_run_id": "manual__2026-03-01T10:00:00+00:00",
               "as_of": "2026-03-01"}
    promote(pipe, v1, "dev", run_context=context)
    row = ledger.find_ledger(pipe.store.engine, promotion_key(pipe.config, "dev", v1, context["dag_run_id"]))
    assert row is not None and (row["dag_id"], row["run_id"], row["data_interval_end"]) == (
        "claims_fraud__promote", context["dag_run_id"], "2026-03-01")
    assert promote(pipe, v1, "dev", run_context=context)["replayed"]
    assert len(pipe.ledger()) == 1


def test_promoting_the_version_already_there_is_a_noop(pipe):
    v1 = pipe.add_version(0.80)
    promote(pipe, v1, "dev")
    noop = promote(pipe, v1, "dev")
    assert noop["noop"] and not noop["promoted"] and noop["reason"] == "v1 is already in dev"
    assert len(pipe.ledger()) == 1


def test_force_overrides_gates_and_path_and_is_recorded_as_forced(pipe):
    weak = pipe.add_version(0.50, train_rows=10)
    forced = promote(pipe, weak, "prod", force=True, reason="incident 42")
    assert forced["promoted"] and forced["reason"].startswith("incident 42 — forced by operator; path: v1 was never")
    assert pipe.alias("champion") == pipe.alias("prod") == weak
    (row,) = pipe.ledger()
    assert row["action"] == "promote" and row["metrics"]["forced"] is True
    assert {c["name"] for c in row["metrics"]["checks"] if not c["passed"]} == {
        "path", "threshold:roc_auc", "min_training_rows"}


def test_promote_along_path_walks_to_the_target_once_per_interval(pipe):
    v1 = pipe.add_version(0.80)
    result = serve(pipe, v1, "2026-03-01")
    assert result["reached"] == ["dev", "staging", "prod"] and result["previous"] is None
    assert not result["replayed"] and [s["environment"] for s in result["steps"]] == ["dev", "staging", "prod"]
    key = f"{pipe.config.name}@2026-03-01"
    assert [r["idempotency_key"] for r in pipe.ledger()] == [f"{key}:promotion:dev", f"{key}:promotion:staging",
                                                             f"{key}:promotion"]
    assert {r["data_interval_end"] for r in pipe.ledger()} == {"2026-03-01"}
    again = serve(pipe, v1, "2026-03-01")
    assert again["replayed"] and again["reached"] == result["reached"] and len(pipe.ledger()) == 3

    weak = pipe.add_version(0.65)  # passes dev, stops at staging
    stopped = promote_along_path(pipe.config, pipe.store.settings, weak, {}, actor="training",
                                 interval_key=f"{pipe.config.name}@2026-03-08", run_context={"trigger_reason": "drift"})
    assert not stopped["promoted"] and stopped["reached"] == ["dev"] and stopped["previous"] is None
    assert [s["environment"] for s in stopped["steps"]] == ["dev", "staging"]
    assert stopped["reason"].startswith("drift — refused: threshold:roc_auc")
    assert (pipe.alias("dev"), pipe.alias("staging"), pipe.alias("champion")) == (weak, v1, v1)


def test_promote_along_path_stops_at_auto_promote_to(pipe):
    config = pipe.config.model_copy(update={"promotion": pipe.config.promotion.model_copy(
        update={"auto_promote_to": "staging"})})
    v1 = pipe.add_version(0.80)
    result = promote_along_path(config, pipe.store.settings, v1, {}, actor="training",
                                interval_key=f"{config.name}@2026-03-01", run_context={})
    assert result["reached"] == ["dev", "staging"] and not result["promoted"]  # not the champion
    assert pipe.alias("staging") == v1 and pipe.alias("champion") is None


# --------------------------------------------------------------------------------- rollback
def test_rollback_steps_back_one_version_at_a_time(pipe):
    v1, v2, v3 = (pipe.add_version(0.80 + i / 100) for i in range(3))
    for version, day in ((v1, "2026-03-01"), (v2, "2026-03-08"), (v3, "2026-03-15")):
        serve(pipe, version, day)
    settings = pipe.store.settings
    first = rollback(pipe.config, settings, actor="ops", reason="v3 misbehaves")
    assert first == {"rolled_back": True, "environment": "prod", "from_version": v3, "version": v2,
                     "reason": "v3 misbehaves", "replayed": False, "serving": None}
    assert pipe.alias("champion") == pipe.alias("prod") == v2
    assert (pipe.alias("dev"), pipe.alias("staging")) == (v3, v3)  # other environments untouched
    assert pipe.tag(v3, "airloop.rolled_back.prod") == "v3 misbehaves"
    row = pipe.ledger()[-1]
    assert (row["action"], row["alias"], row["environment"], row["from_version"], row["to_version"], row["actor"]) == (
        "rollback", "champion", "prod", v3, v2, "ops")

    second = rollback(pipe.config, settings, "prod", actor="ops", reason="v2 too")
    assert (second["from_version"], second["version"]) == (v2, v1)  # further back, not back to v3
    assert pipe.alias("champion") == v1
    with pytest.raises(LifecycleError, match="prod has no previous version to roll back to"):
        rollback(pipe.config, settings, actor="ops", reason="again")
    assert [a for a, _, _ in actions(pipe)].count("rollback") == 2


def test_rollback_to_a_named_version_only_if_it_served_there(pipe):
    v1, v2, v3 = (pipe.add_version(0.80 + i / 100) for i in range(3))
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    promote(pipe, v3, "dev")  # in dev, never in prod
    settings = pipe.store.settings
    with pytest.raises(LifecycleError, match="v3 never served prod; promote it instead"):
        rollback(pipe.config, settings, "prod", v3, actor="ops", reason="try")
    with pytest.raises(LifecycleError, match="version 99 not found"):
        rollback(pipe.config, settings, "prod", "99", actor="ops", reason="try")
    with pytest.raises(LifecycleError, match="prod already runs v2"):
        rollback(pipe.config, settings, "prod", v2, actor="ops", reason="try")
    assert pipe.alias("champion") == v2 and "rollback" not in [a for a, _, _ in actions(pipe)]
    back = rollback(pipe.config, settings, "prod", v1, actor="ops", reason="known good")
    assert (back["from_version"], back["version"]) == (v2, v1) and pipe.alias("champion") == v1
    # dev is its own environment: v3 -> v2 there
    dev = rollback(pipe.config, settings, "dev", actor="ops", reason="dev too")
    assert (dev["environment"], dev["from_version"], dev["version"]) == ("dev", v3, v2)
    assert pipe.alias("dev") == v2 and pipe.alias("champion") == v1  # the champion stays
    assert pipe.ledger()[-1]["alias"] == "dev"


def test_a_retried_rollback_replays_the_recorded_move(pipe):
    v1, v2 = pipe.add_version(0.80), pipe.add_version(0.81)
    serve(pipe, v1, "2026-03-01")
    serve(pipe, v2, "2026-03-08")
    settings = pipe.store.settings
    context = {"dag_id": "claims_fraud__rollback", "dag_run_id": "manual__1"}
    done = rollback(pipe.config, settings, actor="ops", reason="bad", run_context=context)
    assert ledger.find_ledger(pipe.store.engine, rollback_key(pipe.config, "prod", "manual__1")) is not None
    again = rollback(pipe.config, settings, actor="ops", reason="bad", run_context=context)
    assert again["replayed"] and again["rolled_back"] and again["serving"] is None
    assert (again["version"], again["previous"]) == (done["version"], done["from_version"]) == (v1, v2)
    assert [a for a, _, _ in actions(pipe)].count("rollback") == 1 and pipe.alias("champion") == v1
    # an explicit key: the same
    rollback(pipe.config, settings, "dev", actor="ops", reason="x", idempotency_key="rb-dev")
    assert rollback(pipe.config, settings, "dev", actor="ops", reason="x", idempotency_key="rb-dev")["replayed"]
    assert [a for a, _, _ in actions(pipe)].count("rollback") == 2


def test_key_formats_are_stable(pipe):
    name = pipe.config.name
    assert promotion_key(pipe.config, "prod", 3, "manual__2026-03-01T00:00:00+00:00") == \
        f"{name}:prod:3:manual__2026-03-01T00:00:00+00:00"
    assert promotion_key(pipe.config, "dev", "12", "r") == f"{name}:dev:12:r"
    assert rollback_key(pipe.config, "prod", "manual__x") == f"{name}:prod:rollback:manual__x"
