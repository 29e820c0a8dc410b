"""The MLOps view as a person meets it: a real Airflow (``airflow standalone``) with the plugin,
in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright).

History made through Airflow itself: 40 simulated days, a training run backfilled as of
2026-02-01 (v1, forced into prod), four days of traffic served and monitored (a backfill of the
monitoring DAG), a second training run as of 2026-02-08 (v2, forced into prod). Then, in the
browser: log in, open the "MLOps" nav item; the champion shown equals the registry's; each
feature's drift chart has one point per monitored interval (SVG points vs rows in the store);
a rollback clicked in the view becomes a DAG run that succeeds, shows in the ledger after a reload
and in serving's ``/model`` (this module's serving, never :8000); its run link opens the run in
the Airflow UI; dark mode follows the UI's; the DAG tab opens the pipeline's card. Screenshots
of every step in ``test-artifacts/mlops-view/``.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.standalone import ARTIFACTS as ALL_ARTIFACTS
from tests.e2e.standalone import airflow_standalone, chromium, login, shot
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

HISTORY_START, HISTORY_DAYS = date(2026, 1, 1), 40  # data of 2026-01-01 .. 2026-02-09
FIRST_AS_OF, SECOND_AS_OF = date(2026, 2, 1), date(2026, 2, 8)  # Sundays: ticks of the weekly schedule
TRAFFIC_DAYS = [date(2026, 2, 2) + timedelta(days=i) for i in range(4)]
CONF = {"n_trials": 4, "window_days": 28, "timeout_s": 300, "force_promote": True}
ARTIFACTS = ALL_ARTIFACTS / "mlops-view"
REASON = "rolled back from the MLOps view <b>test</b>"


def _champion(settings, config) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    return str(client.get_model_version_by_alias(config.model_name, "champion").version)


def _train(api, alive, dag_id: str, as_of: date, home) -> None:
    backfill = api.backfill(dag_id, as_of, as_of, conf=CONF)
    runs = api.wait_backfill(backfill, seconds=1500, alive=alive)
    assert [r["state"] for r in runs] == ["success"], (runs, (home / "airflow-standalone.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def airflow(settings, serving, claims_config, tmp_path_factory):
    """``airflow standalone`` with this module's stores and serving; the history above made
    through it. Yields the REST client, the DAG ids and the versions (v1, v2)."""
    from airloop.cli.demo import replay_traffic, wait_for_serving_log
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    home = tmp_path_factory.mktemp("airflow-mlops-view")
    dags = {kind: claims_config.dag_id(kind) for kind in ("train", "monitor", "promote", "rollback", "abtest")}
    history = lambda: write_history(resolve_source_path(claims_config, settings), start=HISTORY_START,  # noqa: E731
                                    days=HISTORY_DAYS, pattern=claims_config.source.partition)
    with airflow_standalone(settings, home, list(dags.values()), before_start=history) as running:
        api, alive = running["api"], running["alive"]
        _train(api, alive, dags["train"], FIRST_AS_OF, home)
        first = _champion(settings, claims_config)
        served = settings.model_copy(update={"serving_url": serving.url})  # this module's serving, not :8000
        for day in TRAFFIC_DAYS:
            sent = replay_traffic(served, claims_config, day)
            assert wait_for_serving_log(settings, claims_config, day, sent) == sent
        # its order-dependent tasks (depends_on_past) make Airflow ask for a reprocess behaviour
        monitoring = api.wait_backfill(api.backfill(dags["monitor"], TRAFFIC_DAYS[0], TRAFFIC_DAYS[-1],
                                                    reprocess="failed"), seconds=900, alive=alive)
        assert [r["state"] for r in monitoring] == ["success"] * len(TRAFFIC_DAYS), monitoring
        _train(api, alive, dags["train"], SECOND_AS_OF, home)
        second = _champion(settings, claims_config)
        assert int(second) > int(first), (first, second)
        yield running | {"dags": dags, "versions": (first, second),
                         "base": f"http://127.0.0.1:{running['port']}"}


@pytest.fixture(scope="module")
def page(airflow):
    with chromium(ARTIFACTS) as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 1100})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        context.close()


def _drift_rows(settings, config) -> dict[str, int]:
    from airloop.core import store

    fd = store.feature_drift
    with store.get_engine(settings.monitoring_db_uri).connect() as conn:
        rows = conn.execute(sa.select(fd.c.feature, sa.func.count()).where(
            fd.c.pipeline == config.name, fd.c.tenant == config.tenant).group_by(fd.c.feature)).all()
    return {feature: count for feature, count in rows}


def _frame(page):
    return page.frame_locator('iframe[title="MLOps"]')


def test_the_mlops_view_follows_and_acts_on_the_loop(airflow, page, settings, serving, claims_config):
    api, base, dags = airflow["api"], airflow["base"], airflow["dags"]
    first, second = airflow["versions"]

    login(page, base)
    page.locator('a[href$="plugin/mlops"]').first.click()
    page.wait_for_url(re.compile(r"/plugin/mlops"))
    frame = _frame(page)
    card = frame.locator('section.model-card[data-pipeline="claims_fraud"]')
    card.wait_for()
    # the champion shown is the registry's (alias "champion" = the serving environment, prod)
    assert _champion(settings, claims_config) == second
    assert card.locator('tr[data-env="prod"] .champion-version').inner_text().strip() == f"v{second}"
    shot(page, ARTIFACTS, "1-mlops-nav-overview")

    card.get_by_role("link", name="Open").click()
    frame.locator("svg.drift-chart").first.wait_for()
    page.wait_for_url(re.compile(r"/plugin/mlops/airloop/ui/pipelines/claims_fraud"))  # deep link in the UI's URL
    shot(page, ARTIFACTS, "2-pipeline-page")
    # one drift point per monitored interval and feature, as stored
    stored = _drift_rows(settings, claims_config)
    assert stored and set(stored.values()) == {len(TRAFFIC_DAYS)}, stored
    for feature, count in stored.items():
        chart = frame.locator(f'svg.drift-chart[data-feature="{feature}"]')
        assert chart.locator("circle.pt").count() == count, feature
    # the approvals Airflow waits for (none here: this pipeline asks for none), read from /api/v2
    frame.locator("#approvals .approvals-status", has_text="None waiting").wait_for()
    drift_section = frame.locator("section.card", has=frame.locator("h2", has_text="Drift history"))
    drift_section.screenshot(path=str(ARTIFACTS / "3-drift-charts.png"))

    # a rollback clicked in the view: a DAG run through Airflow's API, followed to success
    known = {r["dag_run_id"] for r in api.runs(dags["rollback"])}
    form = frame.locator('form[data-action="rollback"]')
    form.locator('select[name="environment"]').select_option("prod")
    form.locator('select[name="target"]').select_option("previous")
    form.locator('input[name="reason"]').fill(REASON)
    form.get_by_role("button", name="Roll back").click()
    link = frame.locator("#action-result a.run-link")
    link.wait_for()
    run_id = link.inner_text().strip()
    assert run_id not in known
    run = api.wait_run(dags["rollback"], run_id, seconds=600, alive=airflow["alive"])
    assert run["state"] == "success" and run["run_type"] == "manual", run
    assert run["conf"] == {"environment": "prod", "target": "previous", "reason": REASON}
    frame.locator("#run-state", has_text="success").wait_for(timeout=120_000)
    frame.locator("#actions").screenshot(path=str(ARTIFACTS / "4-rollback-run-succeeded.png"))

    # the ledger (after a reload), the registry and serving all say v1
    page.reload()
    newest = _frame(page).locator("#ledger li").first
    newest.wait_for()
    assert newest.get_attribute("data-action") == "rollback" and newest.get_attribute("data-env") == "prod"
    assert newest.get_attribute("data-to") == first
    assert REASON in newest.inner_text()  # shown as text, not markup
    assert _champion(settings, claims_config) == first
    assert str(httpx.get(f"{serving.url}/model", timeout=10, headers=serving_headers()).json()["version"]) == first
    assert _frame(page).locator('tr[data-env="prod"] .champion-version').first.inner_text().strip() == f"v{first}"
    _frame(page).locator("section.card", has=_frame(page).locator("h2", has_text="Promotion ledger")).screenshot(
        path=str(ARTIFACTS / "5-ledger-after-rollback.png"))
    shot(page, ARTIFACTS, "6-pipeline-after-rollback")

    # the ledger row's run link opens the run in the Airflow UI around the view
    newest.get_by_role("link", name="run").click()
    page.wait_for_url(re.compile(rf"/dags/{dags['rollback']}/runs/"))
    page.get_by_text("success").first.wait_for()
    shot(page, ARTIFACTS, "7-rollback-run-in-airflow")

    # dark mode: the UI's stored choice (next-themes, localStorage "theme") is followed
    page.goto(f"{base}/plugin/mlops")
    page.evaluate("window.localStorage.setItem('theme', 'dark')")
    page.reload()
    _frame(page).locator("section.model-card").first.wait_for()
    assert _frame(page).locator("html").get_attribute("data-theme") == "dark"
    shot(page, ARTIFACTS, "8-dark-mode")
    page.evaluate("window.localStorage.setItem('theme', 'light')")

    # the DAG tab opens the card of the DAG's pipeline
    page.goto(f"{base}/dags/{dags['monitor']}/plugin/mlops-dag")
    tab = page.frame_locator("iframe").locator('section.model-card[data-pipeline="claims_fraud"]')
    tab.wait_for()
    shot(page, ARTIFACTS, "9-dag-tab")


def test_the_view_needs_the_airflow_login(airflow):
    answer = httpx.get(f"{airflow['base']}/airloop/ui/pipelines/claims_fraud", timeout=30)
    assert answer.status_code == 401 and "Sign in" in answer.text
    assert httpx.get(f"{airflow['base']}/airloop/ui/pipelines/nope", timeout=30,
                     headers=airflow["api"]._headers()).status_code == 404
