"""End to end: the real training DAG (``dag.test``) on a window with an unreadable partition file.

The extract task fails once (``AirflowFailException``: no retry, where a plain error would be
retried twice), the day is quarantined with a copy of its file and the reason, nothing
downstream runs, and the champion, its aliases, the ledger and serving stay as they were. The
next run of the interval skips the quarantined day and gets past validation.
"""

from __future__ import annotations

from datetime import date, timedelta

import httpx
import pytest

from tests.e2e.conftest import run_dag, task_states
from tests.unit.tasks.test_bad_days import ALIASES, register_champion
from tests.conftest import serving_headers

pytestmark = pytest.mark.e2e

START = date(2026, 2, 1)
AS_OF = "2026-02-08"
BAD = date(2026, 2, 4)
FAST = {"window_days": 7, "n_trials": 2, "timeout_s": 120}


@pytest.fixture(scope="module", autouse=True)
def history(settings, claims_config, tmp_path_factory):
    """A week of simulator data and a registered champion (aliased on every environment)."""
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    write_history(resolve_source_path(claims_config, settings), start=START, days=7,
                  pattern=claims_config.source.partition)
    return register_champion(settings, claims_config, tmp_path_factory.mktemp("artifacts"))


def state(settings, claims_config, serving) -> dict:
    from airloop.core import store
    from airloop.registry import client as registry
    from airloop.registry import ledger

    client = registry.get_client(settings)
    return {"aliases": {a: str(registry.alias_version(client, claims_config.model_name, a).version) for a in ALIASES},
            "versions": len(client.search_model_versions(f"name = '{claims_config.model_name}'")),
            "ledger": ledger.ledger_rows(store.get_engine(settings.monitoring_db_uri), claims_config.name),
            "served": httpx.get(f"{serving.url}/model", headers=serving_headers()).json()["version"]}


def test_an_empty_partition_file_fails_extract_once_and_is_quarantined(training_dag, serving, settings,
                                                                       claims_config, history):
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.quarantine import quarantine_reason, quarantined_days
    from airloop.data.simulator import partition_path

    path = partition_path(resolve_source_path(claims_config, settings), claims_config.source.partition, BAD)
    path.write_bytes(b"")
    before = state(settings, claims_config, serving)
    assert before["served"] == history

    dag_run = run_dag(training_dag, AS_OF, FAST)

    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert states["extract"] == "failed"
    extract = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "extract")
    assert extract.try_number == 1  # not retried
    assert all(s in ("upstream_failed", "None") for t, s in states.items() if t != "extract"), states
    assert quarantined_days(claims_config, settings) == {BAD}
    reason = quarantine_reason(claims_config, settings, BAD)
    assert reason["kind"] == "unreadable" and "empty file (0 bytes)" in reason["failures"][0]["observed"]
    assert (settings.quarantine_dir / claims_config.name / BAD.isoformat() / "files" / "claims.csv").is_file()
    assert path.is_file() and path.stat().st_size == 0  # the source is kept as it is
    assert state(settings, claims_config, serving) == before


def test_the_next_run_skips_the_quarantined_day(training_dag, serving, settings, claims_config):
    from airloop.tasks import training as stages

    snapshot = stages.extract(claims_config, AS_OF, settings, window=FAST["window_days"])
    assert snapshot["excluded_days"] == [BAD.isoformat()]
    assert BAD.isoformat() not in snapshot["days"] and len(snapshot["days"]) == 6
    assert stages.validate(claims_config, snapshot, settings)["success"]
    assert START + timedelta(days=6) == date.fromisoformat(snapshot["days"][-1])
