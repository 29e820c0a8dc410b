"""Approvals of promotions (``promotion.require_approval``) as plain functions: the request's
content, the configuration check, and what approve / reject / timeout do — on a real SQLite MLflow
registry and the real monitoring store (``claims_fraud``'s path dev -> staging -> prod)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airloop.core.settings import ConfigError
from airloop.registry.lifecycle import promote_along_path, promote_version
from airloop.tasks import lifecycle as lifecycle_tasks
from airloop.tasks.approval import (
    TIMEOUT_ACTOR,
    approval_subject,
    approval_summary,
    promote_after_approval,
    refuse_unapproved,
)
from tests.unit.registry.lifecycle_store import LifecyclePipeline, lifecycle_store  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[3]
DAY = "2026-02-01"
APPROVE = {"chosen_options": ["Approve"], "params_input": {"comment": "holdout looks right"},
           "responded_by_user": {"id": "alice", "name": "alice"}}


def _add(pipe: LifecyclePipeline, roc_auc: float, **kwargs) -> str:
    """A version that flags positives on its holdout (the binary tasks' built-in gate)."""
    return pipe.add_version(roc_auc, **{"recall": 0.4, **kwargs})


def _raw() -> dict:
    return yaml.safe_load((ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())


@pytest.fixture
def pipe(lifecycle_store) -> LifecyclePipeline:  # noqa: F811 - the fixture imported above
    """A pipeline of this test's own whose prod needs approval (1 h timeout)."""
    pipe = lifecycle_store.pipeline()
    promotion = pipe.config.promotion.model_copy(update={"require_approval": ["prod"], "approval_timeout_hours": 1.0})
    pipe.config = pipe.config.model_copy(update={"promotion": promotion})
    return pipe


def walk(pipe: LifecyclePipeline, version: str, evidence: dict | None = None, **kwargs) -> dict:
    return promote_along_path(pipe.config, pipe.store.settings, version, evidence or {}, actor="airflow:scheduled",
                              interval_key=f"{pipe.config.name}@{DAY}", run_context=_ctx(), **kwargs)


def _ctx() -> dict[str, str]:
    return {"dag_id": "train", "dag_run_id": f"scheduled__{DAY}", "as_of": DAY}


def resume(pipe: LifecyclePipeline, held: dict, approval: dict | None, evidence: dict | None = None) -> dict:
    return promote_after_approval(pipe.config, pipe.store.settings, held, approval, requested_by="airflow:scheduled",
                                  run_context=_ctx(), walk={"evidence": evidence or {},
                                                            "interval_key": f"{pipe.config.name}@{DAY}"})


def moves(pipe: LifecyclePipeline) -> list[tuple[str, str, str, str]]:
    return [(r["action"], r["environment"], r["to_version"], r["actor"]) for r in pipe.ledger()]


# ------------------------------------------------------------------------------ configuration
def test_require_approval_names_environments_of_the_path_with_a_did_you_mean():
    from airloop.core.pipeline import parse_pipeline_config

    raw = _raw()
    raw["promotion"]["require_approval"] = ["prd"]
    with pytest.raises(ConfigError, match=r"require_approval: 'prd' is not an environment of the promotion path "
                                          r"\['dev', 'staging', 'prod'\] — did you mean 'prod'\?"):
        parse_pipeline_config(raw, "p.yaml")
    raw["promotion"]["require_approval"] = ["prod", "prod"]
    with pytest.raises(ConfigError, match="twice"):
        parse_pipeline_config(raw, "p.yaml")
    raw["promotion"]["require_approval"] = ["prod"]
    raw["promotion"]["approval_timeout_hours"] = 0
    with pytest.raises(ConfigError, match="approval_timeout_hours"):
        parse_pipeline_config(raw, "p.yaml")
    del raw["promotion"]["approval_timeout_hours"]
    promotion = parse_pipeline_config(raw, "p.yaml").promotion
    assert promotion.needs_approval("prod") and not promotion.needs_approval("staging")
    assert promotion.approval_timeout_hours == 72
    default = parse_pipeline_config(_raw(), "p.yaml").promotion
    assert default.require_approval == [] and not default.needs_approval("prod")


# ------------------------------------------------------------------------- the walk holds
def test_a_training_walk_moves_dev_and_staging_and_holds_before_prod(pipe):
    v1 = _add(pipe, 0.80)
    held = walk(pipe, v1)
    assert held["awaiting_approval"] == "prod" and held["approval_key"] == f"{pipe.config.name}@{DAY}:promotion"
    assert not held["promoted"] and held["reached"] == ["dev", "staging"]
    assert pipe.alias("dev") == pipe.alias("staging") == v1 and pipe.alias("champion") is None
    assert moves(pipe) == [("promote", "dev", v1, "airflow:scheduled"), ("promote", "staging", v1, "airflow:scheduled")]
    assert held["steps"][-1]["checks"] and all(c["passed"] for c in held["steps"][-1]["checks"])
    # nothing approved yet: walking again (a retried task) asks again and moves nothing
    assert walk(pipe, v1)["awaiting_approval"] == "prod" and len(pipe.ledger()) == 2


def test_a_candidate_failing_the_gates_is_refused_without_asking_anyone(pipe):
    weak = _add(pipe, 0.65)  # passes dev (0.60), fails staging (0.70)
    pipe.config = pipe.config.model_copy(update={"promotion": pipe.config.promotion.model_copy(
        update={"require_approval": ["staging", "prod"]})})
    result = walk(pipe, weak)
    assert result["awaiting_approval"] is None and not result["promoted"]
    assert moves(pipe)[-1][:3] == ("refuse", "staging", weak)


def test_without_require_approval_nothing_waits(lifecycle_store):  # noqa: F811
    plain = lifecycle_store.pipeline()
    v1 = _add(plain, 0.80)
    result = promote_along_path(plain.config, plain.store.settings, v1, {}, actor="t", interval_key="k@1",
                                run_context={})
    assert result["promoted"] and result["awaiting_approval"] is None and plain.alias("champion") == v1


# --------------------------------------------------------------------------- the request
def test_the_summary_shows_candidate_against_incumbent_with_gates_metrics_data_and_links(pipe):
    v1 = _add(pipe, 0.78, tags={"airloop.data_interval": "2026-01-01/2026-01-29",
                                      "airloop.data_fingerprint": "fp-old"})
    promote_version(pipe.config, pipe.store.settings, v1, "dev", actor="t")
    promote_version(pipe.config, pipe.store.settings, v1, "staging", actor="t")
    promote_version(pipe.config, pipe.store.settings, v1, "prod", actor="t", force=True)
    v2 = _add(pipe, 0.83, tags={"airloop.data_interval": "2026-01-04/2026-02-01",
                                      "airloop.data_fingerprint": "fp-new", "airloop.dag_run_id": "scheduled__x"},
                          log_loss=0.21)
    evidence = {"champion": {"version": v1, "metrics": {"roc_auc": 0.78, "log_loss": 0.30}}}
    held = walk(pipe, v2, evidence)
    assert held["awaiting_approval"] == "prod"
    text = approval_summary(pipe.config, pipe.store.settings, v2, "prod", evidence)
    assert approval_subject(pipe.config, v2, "prod") == f"{pipe.config.name}: promote {pipe.name} v{v2} into prod?"
    assert f"Candidate **v{v2}** against the incumbent **v{v1}**" in text
    assert "the `champion` alias and serving" in text
    assert "| gate | result | detail |" in text and "all pass" in text
    assert "| beats_champion | pass | roc_auc 0.8300 vs champion 0.7800" in text
    assert "| path | pass |" in text and "| threshold:roc_auc | pass | 0.8300 >= 0.7 required |" in text
    assert "(both scored on the candidate's holdout)" in text
    assert "| roc_auc | **0.8300** | 0.7800 |" in text  # the better one in bold
    assert "| log_loss | **0.2100** | 0.3000 |" in text  # lower is better
    assert "| data window | 2026-01-04 → 2026-02-01 | 2026-01-01 → 2026-01-29 |" in text
    assert "| data fingerprint | fp-new | fp-old |" in text and "| training rows | 6000 | 6000 |" in text
    assert f"#/models/{pipe.name}/versions/{v2})" in text and f"#/models/{pipe.name}/versions/{v1})" in text
    assert "[training run](" in text and "/runs/" in text
    assert "no answer within 1 h: refused" in text and f"prod stays on v{v1}" in text


def test_the_summary_says_when_the_gates_cannot_be_judged(pipe):
    v1 = _add(pipe, 0.80)
    for env in ("dev", "staging", "prod"):
        promote_version(pipe.config, pipe.store.settings, v1, env, actor="t", force=True)
    v2 = _add(pipe, 0.81)  # no training snapshot on disk and no evidence: no common holdout
    text = approval_summary(pipe.config, pipe.store.settings, v2, "prod")
    assert "**The gates cannot be judged now:**" in text and "snapshot is not available" in text


# ------------------------------------------------------------------------------- answers
def test_approve_promotes_and_the_ledger_names_the_approver(pipe):
    v1 = _add(pipe, 0.80)
    held = walk(pipe, v1)
    done = resume(pipe, held, APPROVE)
    assert done["promoted"] and done["reached"] == ["dev", "staging", "prod"] and done["awaiting_approval"] is None
    assert pipe.alias("champion") == pipe.alias("prod") == v1
    row = pipe.ledger()[-1]
    assert (row["action"], row["environment"], row["actor"]) == ("promote", "prod", "approved-by:alice")
    assert row["reason"].startswith("approved by alice (requested by airflow:scheduled): holdout looks right")
    assert [r["actor"] for r in pipe.ledger()[:2]] == ["airflow:scheduled"] * 2  # dev/staging: the run's own moves
    assert resume(pipe, held, APPROVE)["replayed"]  # a retried task: recorded, nothing moves twice
    assert len(pipe.ledger()) == 3


def test_approval_judges_the_gates_again_against_the_incumbent_of_that_moment(pipe):
    v1 = _add(pipe, 0.80)
    held = walk(pipe, v1)
    v2 = _add(pipe, 0.95)  # meanwhile someone put a much better version into prod
    for env in ("dev", "staging", "prod"):
        promote_version(pipe.config, pipe.store.settings, v2, env, actor="someone", force=True)
    now = {"champion": {"version": v2, "metrics": {"roc_auc": 0.95}}}  # both on the candidate's holdout
    done = resume(pipe, held, APPROVE, now)
    assert not done["promoted"] and pipe.alias("champion") == v2
    row = pipe.ledger()[-1]
    assert (row["action"], row["to_version"], row["from_version"], row["actor"]) == ("refuse", v1, v2,
                                                                                    "approved-by:alice")
    assert "beats_champion: roc_auc 0.8000 vs champion 0.9500" in row["reason"]


def test_reject_is_a_recorded_refusal_and_the_earlier_moves_stay(pipe):
    v0 = _add(pipe, 0.75)
    for env in ("dev", "staging", "prod"):
        promote_version(pipe.config, pipe.store.settings, v0, env, actor="t", force=True)
    v1 = _add(pipe, 0.80)
    held = walk(pipe, v1, {"champion": {"version": v0, "metrics": {"roc_auc": 0.75}}})
    refused = refuse_unapproved(pipe.config, pipe.store.settings, held, user="bob", comment="wait for the audit",
                                timed_out=False, run_context=_ctx())
    assert not refused["promoted"] and refused["previous"] == v0
    assert refused["reason"] == "refused: rejected by bob: wait for the audit"
    assert pipe.alias("champion") == pipe.alias("prod") == v0 and pipe.alias("staging") == v1
    row = pipe.ledger()[-1]
    assert (row["action"], row["environment"], row["from_version"], row["to_version"], row["actor"]) == (
        "refuse", "prod", v0, v1, "rejected-by:bob")
    assert row["data_interval_end"] == DAY and row["metrics"]["checks"][0]["name"] == "approval"
    assert pipe.tag(v1, "airloop.promotion.prod") == "refused"
    # the interval is decided: a re-run replays the refusal instead of asking again
    again = walk(pipe, v1)
    assert again["awaiting_approval"] is None and not again["promoted"] and again["steps"][-1]["replayed"]
    assert resume(pipe, held, None) is held  # nothing approved: nothing done


def test_a_timeout_is_a_refusal_that_says_so(pipe):
    v1 = _add(pipe, 0.80)
    held = walk(pipe, v1)
    refused = refuse_unapproved(pipe.config, pipe.store.settings, held, user=None, comment=None, timed_out=True,
                                run_context=_ctx())
    assert refused["reason"] == "refused: no approval within 1 h (the request timed out)"
    row = pipe.ledger()[-1]
    assert (row["action"], row["actor"]) == ("refuse", TIMEOUT_ACTOR) and pipe.alias("champion") is None


def test_the_promote_dag_task_holds_prod_and_moves_it_once_approved(pipe):
    v1 = _add(pipe, 0.80)
    ctx = {"dag_id": "promote", "dag_run_id": "manual__1"}
    settings = pipe.store.settings
    for env in ("dev", "staging"):  # no approval needed: moved at once
        assert lifecycle_tasks.promote(pipe.config, settings, v1, env, actor="user:admin", reason="ship it",
                                       force=False, run_context=ctx)["promoted"]
    held = lifecycle_tasks.promote(pipe.config, settings, v1, "prod", actor="user:admin", reason="ship it",
                                   force=False, run_context=ctx)
    assert held["awaiting_approval"] == "prod" and pipe.alias("champion") is None
    done = promote_after_approval(pipe.config, settings, held, APPROVE, requested_by="user:admin", run_context=ctx)
    assert done["promoted"] and pipe.alias("champion") == v1
    row = pipe.ledger()[-1]
    assert row["actor"] == "approved-by:alice" and row["run_id"] == "manual__1"
    assert row["reason"].startswith("ship it — approved by alice (requested by user:admin): holdout looks right")
