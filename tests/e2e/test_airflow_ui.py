"""As users meet it: a real Airflow (``airflow standalone``: API server, scheduler, DAG processor
on SQLite + LocalExecutor) driven through its REST API — the calls the UI's trigger form, Backfill
dialog and "Clear run" make — and through the UI itself in headless Chromium (Debian's
``/usr/bin/chromium`` driven by Playwright).

A short demo-like history: 40 simulated days, a training run backfilled as of 2026-02-01, three
days of traffic served. Then:

* a Backfill over three days runs every interval of it, each on its own day;
* clearing a run, or triggering the same day with the form's ``day`` field, changes nothing;
* the monitoring form with its defaults (logical date now, months after the traffic) monitors the
  newest day with traffic and says so in the task log;
* in the browser: log in, trigger the training DAG from the form with its defaults (it trains as
  of the day after the newest data), wait for success, open a task log of a backfilled run and
  find its text, open serving's ``/docs`` (offline Swagger UI). Screenshots are kept in
  ``$AIRLOOP_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.standalone import ARTIFACTS as ALL_ARTIFACTS
from tests.e2e.standalone import airflow_standalone, chromium, login, shot

pytestmark = pytest.mark.e2e

HISTORY_START, HISTORY_DAYS = date(2026, 1, 1), 40  # data of 2026-01-01 .. 2026-02-09
TRAIN_AS_OF = date(2026, 2, 1)  # a Sunday: a tick of the weekly training schedule
TRAFFIC_DAYS = [date(2026, 2, 2), date(2026, 2, 3), date(2026, 2, 4)]
ARTIFACTS = ALL_ARTIFACTS / "airflow-ui"


@pytest.fixture(scope="module")
def airflow(settings, serving, claims_config, tmp_path_factory):
    """``airflow standalone`` on its own metadata DB and ports, with the module's stores; the
    history above made through it. Yields the REST client and the processes."""
    from airloop.cli.demo import replay_traffic, wait_for_serving_log
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    home = tmp_path_factory.mktemp("airflow-standalone")
    train, monitor = claims_config.dag_id("train"), claims_config.dag_id("monitor")
    history = lambda: write_history(resolve_source_path(claims_config, settings), start=HISTORY_START,  # noqa: E731
                                    days=HISTORY_DAYS, pattern=claims_config.source.partition)
    with airflow_standalone(settings, home, [train, monitor], before_start=history) as running:
        api, alive = running["api"], running["alive"]
        # the demo-like history: a backfilled training run (forced: the gates' figures on a loaded
        # 2-core machine are tested elsewhere; the decision is still recorded), then traffic
        backfill = api.backfill(train, TRAIN_AS_OF, TRAIN_AS_OF,
                                conf={"n_trials": 4, "window_days": 28, "timeout_s": 300, "force_promote": True})
        runs = api.wait_backfill(backfill, seconds=900, alive=alive)
        assert [r["state"] for r in runs] == ["success"], (runs, (home / "airflow-standalone.log").read_text()[-3000:])
        served = settings.model_copy(update={"serving_url": serving.url})  # this module's serving, not :8000
        for day in TRAFFIC_DAYS:
            sent = replay_traffic(served, claims_config, day)
            assert wait_for_serving_log(settings, claims_config, day, sent) == sent
        yield running | {"train": train, "monitor": monitor}


def _interval_rows(settings, pipeline: str, day: date) -> dict:
    """What monitoring stored for ``day``: its summary row and per-feature drift rows (minus
    bookkeeping timestamps)."""
    from airloop.core import store
    from airloop.core.timeutil import day_bounds

    start = day_bounds(day)[0]
    engine = store.get_engine(settings.monitoring_db_uri)
    with engine.connect() as conn:
        runs = [dict(r._mapping) for r in conn.execute(sa.select(store.monitoring_runs).where(
            store.monitoring_runs.c.pipeline == pipeline, store.monitoring_runs.c.interval_start == start))]
        drift = [dict(r._mapping) for r in conn.execute(sa.select(store.feature_drift).where(
            store.feature_drift.c.pipeline == pipeline, store.feature_drift.c.interval_start == start))]
    drop = {"computed_at", "created_at", "updated_at", "report_uri"}
    return {"runs": [{k: v for k, v in r.items() if k not in drop} for r in runs],
            "drift": sorted(({k: v for k, v in r.items() if k not in drop} for r in drift), key=str)}


def test_a_backfill_runs_every_interval_of_its_range(airflow, settings, claims_config):
    api = airflow["api"]
    # the dialog's "Missing and Errored Runs": a DAG with depends_on_past tasks needs a reprocess
    # behaviour other than "Missing Runs" (Airflow refuses that one for it)
    backfill = api.backfill(airflow["monitor"], TRAFFIC_DAYS[0], TRAFFIC_DAYS[-1], reprocess="failed")
    runs = api.wait_backfill(backfill, seconds=600, alive=airflow["alive"])
    assert [r["state"] for r in runs] == ["success"] * 3
    assert [r["data_interval_start"][:10] for r in runs] == [d.isoformat() for d in TRAFFIC_DAYS]
    assert [r["data_interval_end"][:10] for r in runs] == [(d + timedelta(days=1)).isoformat() for d in TRAFFIC_DAYS]
    for run in runs:  # wall-clock times, not the business day
        assert run["start_date"][:4] != "2026-02" and run["duration"] < 3600
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(airflow["monitor"], run["dag_run_id"])}
        assert states["monitor"] == "success" and states["ingest_labels"] == "success", states
    for day in TRAFFIC_DAYS:
        rows = _interval_rows(settings, claims_config.name, day)["runs"]
        assert len(rows) == 1 and rows[0]["rows"] > 0, rows


def test_clearing_or_re_triggering_a_day_changes_nothing(airflow, settings, claims_config):
    api, day = airflow["api"], TRAFFIC_DAYS[1]
    before = _interval_rows(settings, claims_config.name, day)
    assert before["runs"], "the backfill test stores the day first"
    run = next(r for r in api.runs(airflow["monitor"], run_type=["backfill"])
               if r["data_interval_start"][:10] == day.isoformat())
    api.clear(airflow["monitor"], run["dag_run_id"])
    assert api.wait_run(airflow["monitor"], run["dag_run_id"], alive=airflow["alive"])["state"] == "success"
    assert _interval_rows(settings, claims_config.name, day) == before
    # the same day again from the form: a new run (logical date now) with the day field set
    again = api.trigger(airflow["monitor"], conf={"day": day.isoformat()},
                        logical_date=datetime.now(timezone.utc))
    assert api.wait_run(airflow["monitor"], again["dag_run_id"], alive=airflow["alive"])["state"] == "success"
    assert _interval_rows(settings, claims_config.name, day) == before


def test_the_monitoring_form_defaults_monitor_the_newest_day_with_traffic(airflow):
    api = airflow["api"]
    run = api.trigger(airflow["monitor"], conf={}, logical_date=datetime.now(timezone.utc))
    done = api.wait_run(airflow["monitor"], run["dag_run_id"], alive=airflow["alive"])
    log = api.task_log(airflow["monitor"], run["dag_run_id"], "ingest_labels")
    assert done["state"] == "success", log[-3000:]
    assert f"the newest is of {TRAFFIC_DAYS[-1]}" in log, log[-3000:]
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(airflow["monitor"], run["dag_run_id"])}
    assert states["monitor"] == "success", states


@pytest.fixture(scope="module")
def browser():
    with chromium(ARTIFACTS) as running:
        yield running


def _shot(page, name: str) -> Path:
    return shot(page, ARTIFACTS, name)


def test_the_ui_trigger_form_with_its_defaults_does_real_work(airflow, browser, settings):
    """Log in, trigger training from the form as it opens, wait, read a task log, open /docs."""
    api, base = airflow["api"], f"http://127.0.0.1:{airflow['port']}"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    login(page, base)
    _shot(page, "1-logged-in")

    known = {r["dag_run_id"] for r in api.runs(airflow["train"])}
    page.goto(f"{base}/dags/{airflow['train']}")
    page.get_by_role("button", name=re.compile("^Trigger", re.I)).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    _shot(page, "2-trigger-form-defaults")
    dialog.get_by_role("button", name=re.compile("^Trigger$", re.I)).click()
    page.wait_for_timeout(2000)
    new = [r for r in api.runs(airflow["train"]) if r["dag_run_id"] not in known]
    assert len(new) == 1 and new[0]["run_type"] == "manual", new
    run = api.wait_run(airflow["train"], new[0]["dag_run_id"], seconds=1200, alive=airflow["alive"])
    tasks = api.task_instances(airflow["train"], run["dag_run_id"])
    extract_log = api.task_log(airflow["train"], run["dag_run_id"], "extract")
    assert run["state"] == "success", ({t["task_id"]: t["state"] for t in tasks}, extract_log[-2000:])
    states = {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"] for t in tasks}
    assert len(states) == 9, states  # 8 tasks, 2 mapped training workers: real work, not an empty run
    # deploy skips when the gates keep the champion (a recorded decision); everything else ran
    assert {s for t, s in states.items() if t != "deploy"} == {"success"} and states["deploy"] in ("success", "skipped"), states
    newest = HISTORY_START + timedelta(days=HISTORY_DAYS - 1)
    assert f"training as of {newest + timedelta(days=1)}" in extract_log, extract_log[-2000:]
    page.goto(f"{base}/dags/{airflow['train']}/runs/{run['dag_run_id']}")
    page.get_by_text("success").first.wait_for()
    _shot(page, "3-triggered-run-succeeded")

    # a task log of the history's backfilled runs, as the UI shows it
    backfilled = next(r for r in api.runs(airflow["train"], run_type=["backfill"]))
    page.goto(f"{base}/dags/{airflow['train']}/runs/{backfilled['dag_run_id']}/tasks/extract")
    page.get_by_text(re.compile(f"training as of {TRAIN_AS_OF}")).first.wait_for()
    _shot(page, "4-task-log-of-a-backfilled-run")

    # serving's API docs as `make up` serves them: the gateway's /docs, open without a token
    # (a pipeline app's own copy, like the ``serving`` fixture's, is behind its tenant's token)
    from airloop.serving.gateway import create_gateway
    from tests.conftest import ServerThread, free_port

    with ServerThread(create_gateway(settings, log_predictions=False), free_port()) as gateway:
        page.goto(f"{gateway.url}/docs")
        page.get_by_text("/predict").first.wait_for()
        _shot(page, "5-serving-docs")
    page.close()
