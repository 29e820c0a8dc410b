"""Retries after a kill -9: the Optuna study resumes (trials a killed process left RUNNING are
failed, the finished ones still count), MLflow runs a killed process left RUNNING are ended
KILLED, and registration gives exactly one model version per interval however often it runs.

The killed processes are real: a child opens the store, starts its work and SIGKILLs itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from airloop.core.process import owner_gone
from airloop.core.settings import load_settings
from airloop.registry import client as registry
from airloop.registry.tags import KEY_TAG
from airloop.training.search import fail_stale_trials, finished_trials, open_study, run_worker
from tests.unit.training import test_search as _search


frame = _search.frame  # the fixture: ten simulated days


@pytest.fixture()
def small_config(claims_config):
    space = {"logistic_regression": claims_config.training.search_space["logistic_regression"]}
    training = claims_config.training.model_copy(update={"search_space": space, "holdout_days": 2, "cv_folds": 2})
    return claims_config.model_copy(update={"training": training})


def killed_child(code: str) -> int:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself at the end; its exit code."""
    script = textwrap.dedent(code) + "\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return done.returncode


def test_owner_gone_judges_only_dead_processes_of_this_host():
    import socket

    here = socket.gethostname()
    assert not owner_gone(here, os.getpid())  # me
    assert not owner_gone(here, os.getppid())  # alive
    assert not owner_gone("another-host", 999999999) and not owner_gone(None, None) and not owner_gone(here, "x")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owner_gone(here, child.pid)


def test_a_killed_process_not_yet_reaped_is_gone():
    """A zombie (killed, its parent has not waited for it yet) still answers signal 0."""
    import socket

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not owner_gone(socket.gethostname(), child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert owner_gone(socket.gethostname(), child.pid)  # a zombie: gone, though not reaped
    finally:
        child.wait()


def test_a_superseded_try_of_the_same_worker_is_failed_even_while_it_dies(small_config, tmp_path):
    """After a scheduler restart Airflow starts a new try while the old one is still being stopped:
    the old try's RUNNING trial (same worker, another live process of this host) is stale for
    that worker's new try only."""
    import socket

    study = open_study(f"journal://{tmp_path / 'j.log'}", "s", small_config)
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = study.ask()
        for k, v in {"worker": 0, "host": socket.gethostname(), "pid": dying.pid}.items():
            old.set_user_attr(k, v)
        assert fail_stale_trials(study, worker=1) == []  # another worker's live trial is left alone
        assert fail_stale_trials(study, worker=0) == [old.number]
    finally:
        dying.kill()
        dying.wait()


def test_a_killed_workers_running_trial_is_failed_and_the_study_resumes(small_config, frame, tmp_path):
    storage = f"journal://{tmp_path / 'journal.log'}"
    first = run_worker(small_config, frame, "2026-01-11", "s", storage, 0, 1, 2, 120)
    assert first.trials_run == 2 and first.finished_in_study == 2
    killed_child(f"""
        import os, socket
        from airloop.core.pipeline import load_pipeline_config
        from airloop.training.search import open_study
        study = open_study({storage!r}, "s", load_pipeline_config("claims_fraud"))
        trial = study.ask()
        for k, v in {{"worker": 0, "host": socket.gethostname(), "pid": os.getpid()}}.items():
            trial.set_user_attr(k, v)
        """)
    study = open_study(storage, "s", small_config)
    (left,) = study.get_trials(states=(TrialState.RUNNING,))
    assert left.number == 2

    retried = run_worker(small_config, frame, "2026-01-11", "s", storage, 0, 1, 4, 120)
    study = open_study(storage, "s", small_config)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[2] == TrialState.FAIL and study.get_trials()[2].system_attrs["fail_reason"].startswith("left RUNNING")
    assert retried.trials_run == 2  # the failed one does not count towards the budget: two more to finish
    assert finished_trials(study) == 4 and sorted(states) == [0, 1, 2, 3, 4]  # resumed: numbers continue
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_live_trial_is_never_failed_another_hosts_only_by_its_own_worker(small_config, tmp_path):
    study = open_study(f"journal://{tmp_path / 'j.log'}", "s", small_config)
    mine = study.ask()
    for k, v in {"worker": 0, "host": __import__("socket").gethostname(), "pid": os.getpid()}.items():
        mine.set_user_attr(k, v)
    remote = study.ask()
    for k, v in {"worker": 1, "host": "another-host", "pid": 1}.items():
        remote.set_user_attr(k, v)
    assert fail_stale_trials(study, worker=0) == []  # mine is alive; the remote one belongs to worker 1
    assert fail_stale_trials(study, worker=1) == [remote.number]  # worker 1's retry: its previous try is gone
    assert [t.number for t in study.get_trials(states=(TrialState.RUNNING,))] == [mine.number]


@pytest.fixture
def local(tmp_path):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return settings, MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def test_runs_a_killed_task_left_running_are_ended_killed(local):
    settings, client = local
    experiment_id = client.create_experiment("t")
    key = "p@2026-01-11"
    training = client.create_run(experiment_id, tags={KEY_TAG: key, "airloop.kind": "training"}).info.run_id
    live = client.create_run(experiment_id, tags={KEY_TAG: key, "airloop.kind": "trial",
                                                  **registry.owner_tags()}).info.run_id
    killed_child(f"""
        from mlflow import MlflowClient
        from airloop.registry import client as registry
        c = MlflowClient(tracking_uri={settings.mlflow_tracking_uri!r})
        c.create_run({experiment_id!r}, tags={{{KEY_TAG!r}: {key!r}, "airloop.kind": "trial", **registry.owner_tags()}})
        """)
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    assert len(running) == 3
    orphan = next(r.info.run_id for r in running if r.info.run_id not in (training, live))

    assert registry.end_orphaned_runs(client, experiment_id, key) == [orphan]
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["airloop.ended_by"].startswith("retry: its process")
    assert client.get_run(training).info.status == "RUNNING"  # open until its evaluation ends it
    assert client.get_run(live).info.status == "RUNNING"  # its process (this one) is alive
    assert registry.end_orphaned_runs(client, experiment_id, key) == []  # idempotent


def test_registration_is_one_version_per_interval_however_often_it_runs(local):
    _, client = local
    experiment_id = client.create_experiment("t")
    versions = []
    for attempt in range(3):  # a first try and two retries, each with its own evaluation run's model
        run = client.create_run(experiment_id, tags={KEY_TAG: "m@2026-01-11"})
        source = f"{run.info.artifact_uri}/model"
        versions.append(registry.register_version(client, "m", source, run.info.run_id, "m@2026-01-11",
                                                  {"airloop.pipeline": "m", "try": str(attempt)}).version)
    other = client.create_run(experiment_id)
    registry.register_version(client, "m", f"{other.info.artifact_uri}/model", other.info.run_id, "m@2026-01-12", {})
    assert versions == ["1", "1", "1"] or versions == [1, 1, 1]
    by_key = [v.tags[KEY_TAG] for v in client.search_model_versions("name = 'm'")]
    assert sorted(by_key) == ["m@2026-01-11", "m@2026-01-12"]
