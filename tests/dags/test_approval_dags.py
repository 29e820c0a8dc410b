"""DAG integrity with ``promotion.require_approval``: the training and promote DAGs gain an
approval task and a promote step after it (parsed the way the DAG processor does, in a fresh
interpreter with its own pipelines folder); without the setting they have none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag(dag_folder={dags!r})
out = {{"errors": bag.import_errors, "dags": {{}}}}
for dag_id in ("claims_fraud__train", "claims_fraud__promote"):
    dag = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[dag_id]))  # as the scheduler sees it
    parsed = bag.dags[dag_id]  # as the task runs (the worker parses the file)
    out["dags"][dag_id] = {{t.task_id: {{"upstream": sorted(t.upstream_task_ids), "rule": str(t.trigger_rule),
                                        "retries": t.retries}} for t in dag.tasks}}
    for t in parsed.tasks:
        out["dags"][dag_id][t.task_id] |= {{
            "timeout_h": t.response_timeout.total_seconds() / 3600 if getattr(t, "response_timeout", None) else None,
            "defaults": getattr(t, "defaults", None), "options": getattr(t, "options", None)}}
print(json.dumps(out, default=str))
"""


def _parse(tmp_path: Path, approval: str | None) -> dict:
    text = (ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text()
    if approval:
        text = text.replace("  auto_promote_to: prod", f"{approval}\n  auto_promote_to: prod", 1)
    (tmp_path / "claims_fraud.yaml").write_text(text)
    env = os.environ | {"AIRLOOP_PIPELINES_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(dags=str(ROOT / "dags"))], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, result["errors"]
    return result["dags"]


def test_require_approval_adds_an_approval_task_before_prod(tmp_path):
    dags = _parse(tmp_path, "  require_approval: [prod]\n  approval_timeout_hours: 6")
    for dag_id, first in (("claims_fraud__train", "promote"), ("claims_fraud__promote", "promote")):
        tasks = dags[dag_id]
        assert first in tasks["approve_prod"]["upstream"]
        assert {"approve_prod", first} <= set(tasks["promote_prod"]["upstream"])
        assert "promote_prod" in tasks["deploy"]["upstream"] and first not in tasks["deploy"]["upstream"]
        assert tasks["promote_prod"]["rule"] == "none_failed"  # runs when nothing was asked (approval skipped)
        assert tasks["approve_prod"]["timeout_h"] == 6.0
        assert tasks["approve_prod"]["options"] == ["Approve", "Reject"]
        assert tasks["approve_prod"]["defaults"] == ["Reject"]  # an unanswered request is a refusal
        assert all(t["retries"] >= 1 for t in tasks.values()), dag_id


def test_two_approvals_chain_in_path_order(tmp_path):
    tasks = _parse(tmp_path, "  require_approval: [prod, staging]")["claims_fraud__train"]
    assert "promote_staging" in tasks["approve_prod"]["upstream"]
    assert "approve_staging" in tasks["promote_staging"]["upstream"] and "promote" in tasks["approve_staging"]["upstream"]
    assert "promote_prod" in tasks["deploy"]["upstream"]


def test_without_require_approval_the_dags_are_unchanged(tmp_path):
    dags = _parse(tmp_path, None)
    assert not any(t.startswith("approve_") for d in dags.values() for t in d)
    assert "promote" in dags["claims_fraud__train"]["deploy"]["upstream"]
