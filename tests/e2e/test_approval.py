"""Approvals for production, as users meet them: a real Airflow (``airflow standalone`` on its
own metadata DB and ports), the demo pipeline with ``promotion.require_approval: [prod]`` in this
module's own pipelines folder, headless Chromium (Debian's ``/usr/bin/chromium``, Playwright).

* A training run moves dev and staging, then stops at ``approve_prod`` (``awaiting_input``); the
  Required Actions page lists it; a click on *Approve* in the browser lets the run finish: the
  prod alias and the champion moved, serving answers with the version, the ledger names the approver.
* A second run's request, listed in the MLOps view with Approve / Reject buttons, rejected there
  with a comment (the view answers through Airflow's HITL REST API, ``PATCH
  /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails``; an option the
  request does not offer is a 400), leaves prod unchanged, records the refusal with the comment,
  and the run ends without a failure.

Screenshots go to ``$AIRLOOP_TEST_ARTIFACTS/approval`` (default ``test-artifacts/approval``).
"""

from __future__ import annotations

import os
import re
import time
from datetime import date, datetime, timezone
from pathlib import Path

import httpx
import pytest

from airloop.ops.sandbox import restore_environ
from tests.e2e.standalone import ARTIFACTS as ALL_ARTIFACTS
from tests.e2e.standalone import airflow_standalone, chromium, login, shot
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HISTORY_START, HISTORY_DAYS = date(2026, 1, 1), 40  # data of 2026-01-01 .. 2026-02-09
FIRST_AS_OF, SECOND_AS_OF = "2026-02-01", "2026-02-08"
CONF = {"n_trials": 2, "window_days": 28, "timeout_s": 300, "force_promote": True}  # forced: the gates' figures
# on a loaded 2-core machine are tested elsewhere; an approval is asked for a forced promotion too
ARTIFACTS = ALL_ARTIFACTS / "approval"


@pytest.fixture(scope="module")
def settings(settings, tmp_path_factory):
    """The module's settings with its own pipelines folder: claims_fraud with prod approvals."""
    from airloop.core.settings import get_settings

    folder = tmp_path_factory.mktemp("pipelines")
    text = (ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text()
    assert "  auto_promote_to: prod" in text
    text = text.replace("  auto_promote_to: prod", "  require_approval: [prod]\n  approval_timeout_hours: 2\n"
                                                    "  auto_promote_to: prod", 1)
    (folder / "claims_fraud.yaml").write_text(text)
    saved = {"AIRLOOP_PIPELINES_DIR": os.environ.get("AIRLOOP_PIPELINES_DIR")}
    os.environ["AIRLOOP_PIPELINES_DIR"] = str(folder)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        restore_environ(saved)
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def airflow(settings, serving, claims_config, tmp_path_factory):
    """``airflow standalone`` with the module's stores and pipelines; the history written."""
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    assert claims_config.promotion.require_approval == ["prod"]
    train = claims_config.dag_id("train")

    def history():
        write_history(resolve_source_path(claims_config, settings), start=HISTORY_START, days=HISTORY_DAYS,
                      pattern=claims_config.source.partition)

    # 3.3: awaiting input needs no triggerer
    with airflow_standalone(settings, tmp_path_factory.mktemp("airflow-approval"), [train], history) as running:
        yield {**running, "train": train}


def _states(api, dag_id: str, run_id: str) -> dict[str, str]:
    return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"]
            for t in api.task_instances(dag_id, run_id)}


def _wait_for_approval(airflow, run_id: str, seconds: float = 1500) -> dict[str, str]:
    """Until ``approve_prod`` of the run waits for a person; the task states then."""
    api, deadline = airflow["api"], time.monotonic() + seconds
    while True:
        try:
            states = _states(api, airflow["train"], run_id)
            run_state = api.run(airflow["train"], run_id)["state"]
        except httpx.TimeoutException:  # the API server is busy: ask again
            continue
        if states.get("approve_prod") == "awaiting_input":
            return states
        assert run_state in ("queued", "running"), states
        assert airflow["alive"](), "an Airflow component exited"
        assert time.monotonic() < deadline, f"no approval asked within {seconds:.0f} s: {states}"
        time.sleep(2)


def _trigger(airflow, as_of: str) -> str:
    run = airflow["api"].trigger(airflow["train"], conf={"as_of": as_of, **CONF},
                                 logical_date=datetime.now(timezone.utc))
    return run["dag_run_id"]


def _prod_rows(settings, claims_config) -> list[dict]:
    from airloop.core import store
    from airloop.registry.ledger import ledger_rows

    return [r for r in ledger_rows(store.get_engine(settings.monitoring_db_uri), claims_config.name)
            if r["environment"] == "prod"]


def _aliases(settings, claims_config) -> dict[str, str | None]:
    from airloop.registry.client import alias_version, get_client

    client = get_client(settings)
    found = {a: alias_version(client, claims_config.model_name, a) for a in ("dev", "staging", "prod", "champion")}
    return {a: (str(v.version) if v is not None else None) for a, v in found.items()}


@pytest.fixture(scope="module")
def browser():
    with chromium(ARTIFACTS) as running:
        yield running


def _shot(page, name: str) -> Path:
    return shot(page, ARTIFACTS, name)


def test_an_approval_granted_in_the_browser_promotes_to_prod(airflow, browser, settings, claims_config, serving):
    api, base = airflow["api"], f"http://127.0.0.1:{airflow['port']}"
    run_id = _trigger(airflow, FIRST_AS_OF)
    states = _wait_for_approval(airflow, run_id)
    assert states["promote"] == "success" and states["promote_prod"] in (None, "none", "scheduled", "queued"), states
    aliases = _aliases(settings, claims_config)
    version = aliases["staging"]
    assert version and aliases["dev"] == version and aliases["prod"] is None and aliases["champion"] is None
    detail = api.request("GET", f"/dags/{airflow['train']}/dagRuns/{run_id}/taskInstances/approve_prod/-1/hitlDetails")
    assert detail["subject"] == f"claims_fraud: promote {claims_config.model_name} v{version} into prod?"
    assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
    assert f"Candidate **v{version}**" in detail["body"] and "#### Gates" in detail["body"]
    assert "| data window | 2026-01-04 → 2026-02-01 |" in detail["body"], detail["body"]

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    login(page, base)
    page.goto(f"{base}/required_actions?response_received=false")
    page.get_by_text(detail["subject"]).first.wait_for()
    _shot(page, "1-required-actions-list")
    page.get_by_text(detail["subject"]).first.click()
    approve = page.get_by_role("button", name=re.compile("^Approve$"))
    approve.first.wait_for()
    page.get_by_text("Holdout metrics").first.wait_for()
    _shot(page, "2-approval-request")
    approve.first.click()
    page.wait_for_timeout(1500)
    _shot(page, "3-approved")
    run = api.wait_run(airflow["train"], run_id, seconds=900, alive=airflow["alive"])
    states = _states(api, airflow["train"], run_id)
    assert run["state"] == "success", states
    assert states["approve_prod"] == states["promote_prod"] == states["deploy"] == "success", states
    assert _aliases(settings, claims_config)["prod"] == _aliases(settings, claims_config)["champion"] == version
    row = _prod_rows(settings, claims_config)[-1]
    assert (row["action"], row["to_version"], row["actor"]) == ("promote", version, "approved-by:admin"), row
    assert row["reason"].startswith("approved by admin (requested by user:admin)"), row["reason"]
    assert str(httpx.get(f"{serving.url}/model", timeout=10, headers=serving_headers()).json().get("version")) == version
    page.goto(f"{base}/dags/{airflow['train']}/runs/{run_id}")
    page.get_by_text("success").first.wait_for()
    _shot(page, "4-approved-run-succeeded")
    page.close()


def test_a_rejection_clicked_in_the_mlops_view_keeps_prod_and_records_the_refusal(airflow, browser, settings,
                                                                                claims_config):
    api, base = airflow["api"], f"http://127.0.0.1:{airflow['port']}"
    before = _aliases(settings, claims_config)
    assert before["prod"], "the approval test promotes first"
    run_id = _trigger(airflow, SECOND_AS_OF)
    _wait_for_approval(airflow, run_id)
    candidate = _aliases(settings, claims_config)["staging"]
    assert candidate != before["prod"]
    path = f"/dags/{airflow['train']}/dagRuns/{run_id}/taskInstances/approve_prod/-1/hitlDetails"
    with pytest.raises(Exception, match="HTTP 400"):  # not an option of the request: refused by Airflow
        api.request("PATCH", path, json={"chosen_options": ["Maybe"], "params_input": {}})
    # the MLOps view lists the waiting request with Approve / Reject (Airflow's own HITL API answers)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    login(page, base)
    page.goto(f"{base}/plugin/mlops/airloop/ui/pipelines/{claims_config.name}")
    view = page.frame_locator('iframe[title="MLOps"]')
    waiting = view.locator("#approvals .approvals-list li").filter(has_text=f"v{candidate} into prod")
    waiting.wait_for()
    waiting.locator("input[name=comment]").fill("wait for the fraud team's review")
    _shot(page, "5-view-pending-approval")
    waiting.get_by_role("button", name="Reject").click()
    view.locator("#approvals .approval-result").filter(has_text="Reject by admin").wait_for()
    _shot(page, "6-view-rejected")
    page.close()
    answer = api.request("GET", path)  # what Airflow recorded: the option and who chose it
    assert answer["chosen_options"] == ["Reject"] and answer["responded_by_user"]["name"] == "admin", answer
    assert answer["params_input"] == {"comment": "wait for the fraud team's review"}, answer
    run = api.wait_run(airflow["train"], run_id, seconds=600, alive=airflow["alive"])
    states = _states(api, airflow["train"], run_id)
    assert run["state"] == "success", states  # a refused promotion is a decision, not a crash
    assert states["approve_prod"] == "success" and states["promote_prod"] == states["deploy"] == "skipped", states
    after = _aliases(settings, claims_config)
    assert after["prod"] == after["champion"] == before["prod"] and after["staging"] == candidate
    row = _prod_rows(settings, claims_config)[-1]
    assert (row["action"], row["to_version"], row["from_version"], row["actor"]) == (
        "refuse", candidate, before["prod"], "rejected-by:admin"), row
    assert row["reason"] == "refused: rejected by admin: wait for the fraud team's review"
    log = api.task_log(airflow["train"], run_id, "approve_prod")
    assert "refused: rejected by admin" in log, log[-2000:]
