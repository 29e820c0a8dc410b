"""Approvals of promotions (``promotion.require_approval``): what the person is shown, and what
their answer does.

The DAGs stop before an environment that needs approval at an Airflow approval task (Required
Actions page). Its body is :func:`approval_summary`: the candidate against the environment's
current version — gates judged at that moment, holdout metrics side by side, data windows,
MLflow links. The answer is then carried out here, as plain functions:

* approve: :func:`approved_by` names the approver for the ledger (actor ``approved-by:<user>``);
  the promotion runs through the usual gated path, gates judged again (the incumbent may have
  changed while the request waited);
* reject or timeout: :func:`refuse_unapproved` writes a ``refuse`` ledger row (actor
  ``rejected-by:<user>`` or ``approval-timeout``) and nothing moves.
"""

from __future__ import annotations

import logging
from typing import Any

from airloop.core.metrics import better_of, is_finite_number
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.registry import client as registry
from airloop.registry.audit import LifecycleError, version_record
from airloop.registry.lifecycle import preview_promotion, promote_along_path, promote_version, refuse_promotion

log = logging.getLogger(__name__)

#: The ledger actor of a promotion refused because nobody answered in time.
TIMEOUT_ACTOR = "approval-timeout"


def approval_subject(config: PipelineConfig, version: str | int, environment: str) -> str:
    """One line for the Required Actions list."""
    return f"{config.name}: promote {config.model_name} v{version} into {environment}?"


def _fmt(value: Any) -> str:
    if is_finite_number(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    return "—" if value is None else str(value)


def _mlflow_links(settings: Settings, config: PipelineConfig, record: dict[str, Any]) -> str:
    base = registry.ui_url(settings, "0").split("/#/", 1)[0]
    links = [f"[model version v{record['version']}]({base}/#/models/{config.model_name}/versions/{record['version']})"]
    if record.get("run_id"):
        try:
            experiment = registry.get_client(settings).get_run(record["run_id"]).info.experiment_id
            links.append(f"[training run]({registry.ui_url(settings, experiment, record['run_id'])})")
        except Exception as err:  # noqa: BLE001 - a missing run is shown, not fatal to the request
            links.append(f"training run {record['run_id']} unavailable ({type(err).__name__})")
    return " · ".join(links)


def approval_summary(config: PipelineConfig, settings: Settings, version: str | int, environment: str,
                     evidence: dict[str, Any] | None = None) -> str:
    """The approval request's body (Markdown): candidate ``version`` against ``environment``'s
    current version — the gates as they would be judged now, holdout metrics side by side (the
    better one marked), data windows, training rows, lineage and MLflow links, and what each
    answer does."""
    version = str(version)
    env = config.promotion.environment(environment)
    client = registry.get_client(settings)
    candidate = version_record(client, config, version)
    lines = [f"### {config.name}: v{version} into **{env.name}**"]
    try:
        preview = preview_promotion(config, settings, version, env.name, evidence)
        error = None
    except LifecycleError as err:  # e.g. the holdout needed for the comparison is gone
        preview, error = {"incumbent": None, "checks": [], "passed": False, "metrics": candidate["metrics"],
                          "incumbent_metrics": None, "incumbent_error": None}, str(err)
    incumbent_version = preview["incumbent"]
    incumbent = version_record(client, config, incumbent_version) if incumbent_version else None
    moves = "the `champion` alias and serving" if env.serving else f"the `{env.registry_alias}` alias"
    lines.append(f"Candidate **v{version}** against the incumbent "
                 f"**{'v' + incumbent_version if incumbent_version else 'none (first version here)'}**. "
                 f"Approving moves {moves} to v{version}.")
    lines += ["", "#### Gates (judged now; judged again when you approve)"]
    if error:
        lines.append(f"**The gates cannot be judged now:** {error}")
    elif not preview["checks"]:
        lines.append("No gates configured for this environment.")
    else:
        verdict = "all pass" if preview["passed"] else "**some FAIL** (approving would still be refused unless forced)"
        lines += [verdict, "", "| gate | result | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |" for c in preview["checks"]]
    same_holdout = preview["incumbent_metrics"] is not None
    lines += ["", "#### Holdout metrics" + (" (both scored on the candidate's holdout)" if same_holdout else
                                            " (each on its own holdout)")]
    theirs = preview["incumbent_metrics"] if same_holdout else (incumbent or {}).get("metrics") or {}
    ours = preview["metrics"] or candidate["metrics"]
    lines += [f"| metric | candidate v{version} | incumbent {'v' + incumbent_version if incumbent_version else '—'} |",
              "|---|---|---|"]
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        better = better_of(name, b, a)  # "b": the candidate
        mark_a, mark_b = ("**", "**") if better == "b" else ("", "")
        mark_c, mark_d = ("**", "**") if better == "a" else ("", "")
        lines.append(f"| {name} | {mark_a}{_fmt(a)}{mark_b} | {mark_c}{_fmt(b)}{mark_d} |")
    if preview.get("incumbent_error"):
        lines.append(f"The incumbent could not score the holdout: {preview['incumbent_error']}")
    lines += ["", "#### Data and lineage", "| | candidate | incumbent |", "|---|---|---|"]
    rows = [("data window", "airloop.data_interval"), ("data fingerprint", "airloop.data_fingerprint"),
            ("validation", "airloop.validation"), ("estimator", "airloop.estimator"),
            ("trained by run", "airloop.dag_run_id"), ("code version", "airloop.code_version")]
    for label, tag in rows:
        mine, other = candidate["tags"].get(tag), (incumbent or {}).get("tags", {}).get(tag)
        if label == "data window":
            mine, other = (v.replace("/", " → ") if v else v for v in (mine, other))
        lines.append(f"| {label} | {_fmt(mine)} | {_fmt(other)} |")
    lines.append(f"| training rows | {_fmt(candidate['train_rows'])} | {_fmt((incumbent or {}).get('train_rows'))} |")
    lines += ["", "#### Links", f"Candidate: {_mlflow_links(settings, config, candidate)}"]
    if incumbent:
        lines.append(f"Incumbent: {_mlflow_links(settings, config, incumbent)}")
    hours = config.promotion.approval_timeout_hours
    lines += ["", f"**Approve**: the promotion proceeds (gates judged again) and the ledger names you. "
                  f"**Reject** (say why in *comment*), or no answer within {hours:g} h: refused and recorded; "
                  f"{env.name} stays on {'v' + incumbent_version if incumbent_version else 'no version'}."]
    return "\n".join(lines)


def responder(responded_by: Any) -> str | None:
    """The answering user's name from a HITL response (``{"id", "name"}``), ``None`` for none."""
    if isinstance(responded_by, dict):
        return str(responded_by.get("name") or responded_by.get("id") or "") or None
    return str(responded_by) if responded_by else None


def approved_by(user: str, comment: str | None, requested_by: str) -> dict[str, str]:
    """Ledger actor and reason of an approved promotion."""
    why = f"approved by {user} (requested by {requested_by})"
    return {"actor": f"approved-by:{user}", "reason": f"{why}: {comment}" if comment else why}


def refuse_unapproved(config: PipelineConfig, settings: Settings, held: dict[str, Any], *, user: str | None,
                      comment: str | None, timed_out: bool, run_context: dict[str, str]) -> dict[str, Any]:
    """Record the refusal of the step ``held`` (a step that awaited approval: ``version``,
    ``awaiting_approval``, ``approval_key``) after a rejection by ``user`` or a timeout."""
    environment = held["awaiting_approval"]
    if timed_out:
        actor = TIMEOUT_ACTOR
        reason = f"no approval within {config.promotion.approval_timeout_hours:g} h (the request timed out)"
    else:
        actor = f"rejected-by:{user or 'unknown'}"
        reason = f"rejected by {user or 'unknown'}: {comment or 'no reason given'}"
    result = refuse_promotion(config, settings, held["version"], environment, actor=actor, reason=reason,
                              run_context=run_context, idempotency_key=held["approval_key"])
    log.warning("%s v%s into %s refused (%s); recorded in the ledger", config.model_name, held["version"],
                environment, reason)
    return result


def promote_after_approval(config: PipelineConfig, settings: Settings, held: dict[str, Any], approval: dict | None,
                           *, requested_by: str, run_context: dict[str, str], force: bool = False,
                           walk: dict[str, Any] | None = None) -> dict[str, Any]:
    """Carry out an approved promotion of the step ``held`` (the previous step's result).

    ``approval``: the approval task's result (``chosen_options``, ``params_input``,
    ``responded_by_user``); ``None`` or a ``held`` that awaits nothing: ``held`` is returned as it
    is (nothing was asked). ``walk``: a training run's path walk (``evidence``, ``interval_key``)
    to resume after the approved environment; else one move (the promote DAG).
    """
    if not held.get("awaiting_approval") or not approval:
        return held
    user = responder(approval.get("responded_by_user")) or "unknown"
    comment = (approval.get("params_input") or {}).get("comment")
    by = approved_by(user, comment, requested_by)
    if held.get("request_reason"):
        by["reason"] = f"{held['request_reason']} — {by['reason']}"
    log.info("%s approved by %s; judging the gates again", held["awaiting_approval"], user)
    if walk is not None:
        return promote_along_path(config, settings, held["version"], walk["evidence"], actor=requested_by,
                                  interval_key=walk["interval_key"], run_context=run_context, force=force,
                                  approved={held["awaiting_approval"]: by})
    return promote_version(config, settings, held["version"], held["awaiting_approval"], actor=by["actor"],
                           reason=by["reason"], force=force, run_context=run_context,
                           idempotency_key=held["approval_key"])
