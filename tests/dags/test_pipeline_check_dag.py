"""The pipeline-check DAG: a real DAG when every file loads, its task fails without retrying on
a wrong pipeline file, and an unparseable file stays an import error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "airloop_pipeline_check.py"))
    assert bag.import_errors == {}
    return bag.dags["airloop__pipeline_check"]


def test_the_check_dag_is_a_scheduled_dag_with_one_retried_task(check_dag):
    assert [t.task_id for t in check_dag.tasks] == ["check_pipelines"]
    assert check_dag.schedule == "@daily" and not check_dag.catchup and check_dag.max_active_runs == 1
    assert {"airloop", "check"} <= set(check_dag.tags) and "training" not in check_dag.tags
    assert check_dag.get_task("check_pipelines").retries >= 1
    assert "airloop check" in check_dag.doc_md


def test_a_wrong_pipeline_file_fails_the_task_without_retry(check_dag, tmp_path, monkeypatch):
    """The task callable with a misspelled feature in a project folder: AirflowFailException
    naming the pipeline and the fix (no retry), not a generic error."""
    from airflow.exceptions import AirflowFailException

    from airloop.core.settings import get_settings
    from tests.unit.data.test_check import make_project

    settings = make_project(tmp_path)
    claims = settings.pipelines_dir / "claims_fraud.yaml"
    claims.write_text(claims.read_text().replace("  witness_count:", "  witnes_count:"))
    for key in ("AIRLOOP_PIPELINES_DIR", "AIRLOOP_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AIRLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("AIRLOOP_STATE_DIR", str(settings.state_dir))
    get_settings.cache_clear()
    try:
        with pytest.raises(AirflowFailException) as err:
            check_dag.get_task("check_pipelines").python_callable()
    finally:
        get_settings.cache_clear()
    text = str(err.value)
    assert text.startswith("1 of 2 pipeline file(s) have problems: claims_fraud")
    assert "features.witnes_count: column not in the source — did you mean 'witness_count'?" in text


def test_an_unparseable_file_is_still_an_import_error(tmp_path):
    import json
    import os
    import subprocess
    import sys

    shutil.copy(ROOT / "include" / "pipelines" / "claims_fraud.yaml", tmp_path / "claims_fraud.yaml")
    (tmp_path / "broken.yaml").write_text("name: broken\ntask: [")
    probe = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags' / 'airloop_pipeline_check.py')!r})\n"
        "print(json.dumps({'dags': sorted(bag.dags), 'errors': bag.import_errors}))\n"
    )
    env = os.environ | {"AIRLOOP_PIPELINES_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dags"] == []
    [message] = result["errors"].values()
    assert "broken.yaml" in message and "not valid YAML" in message
