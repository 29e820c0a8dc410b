"""Chaos: ``kill -9`` at random points of train, register, promote and deploy, on the real
scheduler, then Airflow's retries (and a restart of the killed component) finish the work.

Real ``airflow standalone`` (SQLite, LocalExecutor), the module's own MLflow store, monitoring
store and Optuna journal, a real serving process (uvicorn, the gateway). Training runs of the
demo pipeline, one interval after another; each run gets injections drawn (seeded) from:

* ``task``: the running task's process (its pid from the Airflow API) of ``train_trials``,
  ``evaluate``, ``register``, ``promote`` or ``deploy``, after a random delay;
* ``scheduler``: the scheduler process between tasks (the next one scheduled or queued, none
  running); restarted 3 s later;
* ``serving``: the serving process while ``promote`` runs; restarted 8 s later, so the deploy
  finds it down (it retries the reload) or restarting (it reconciles and loads the ledger's champion);
* ``fault:<point>``: a fault point of the promotion's write order (``after_ledger``, ...,
  :func:`airloop.registry.reconcile.fault_point`) armed for the run: ``promote`` kills itself
  between the ledger write and the alias move, and its retry repairs first.

Tasks are retried :data:`RETRIES` times here (``AIRLOOP_TASK_RETRIES``; the DAGs' own default is
2) and each task of a run gets injections worth at most ``RETRIES - 1`` tries (:data:`COST`). Then the invariants:
exactly one model version per interval, no MLflow run left RUNNING, ledger = registry aliases =
served version, each interval's Optuna study resumed (trials finished before a kill kept; no
trial left RUNNING; the budget not restarted). The figures are printed as one JSON line.

Size: ``AIRLOOP_CHAOS_KILLS`` kills landed (CI default 6; full size 20), ``AIRLOOP_CHAOS_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from airloop.ops.sandbox import free_port, restore_environ
from tests.e2e import conftest as _e2e
from tests.e2e.standalone import airflow_standalone

settings, claims_config = _e2e.settings, _e2e.claims_config  # the fixtures: this module's own state

pytestmark = pytest.mark.e2e

KILLS = int(os.environ.get("AIRLOOP_CHAOS_KILLS") or 6)
SEED = int(os.environ.get("AIRLOOP_CHAOS_SEED") or 15)
#: force_promote: every run moves dev -> staging -> prod (gates judged and recorded, overridden), so
#: every run has serving-environment moves for the kills to interrupt
CONF = {"window_days": 14, "n_trials": 4, "timeout_s": 300, "force_promote": True}
HISTORY_START, HISTORY_DAYS = date(2026, 1, 1), 80
FIRST_AS_OF = date(2026, 2, 1)
TASKS = ("train_trials", "evaluate", "register", "promote", "deploy")
PHASE = {"train_trials": "train", "evaluate": "train", "register": "register", "promote": "promote",
         "deploy": "deploy"}
FAULTS = ("before_ledger", "after_ledger", "after_alias", "after_commit")
#: The fault points that leave a move half done (a repair is due on the retry).
MID_MOVE = ("after_ledger", "after_alias")
RETRIES = 4
#: tries an injection can cost the task it hits
COST = {"task": 1, "scheduler": 1, "serving": 0}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Serving:
    """The serving process (uvicorn + gateway) on its own port; killed and restarted by the test."""

    def __init__(self, settings, logs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings, self.logs = settings, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        from airloop.core.settings import process_environ

        env = process_environ("serving") | {"AIRLOOP_SERVING_PORT": str(self.port), "AIRLOOP_SERVING_HOST": "127.0.0.1"}
        self.starts += 1
        log = open(self.logs / f"serving-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                                      "airloop.serving.gateway:create_gateway", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--no-access-log"],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.logs / f"serving-{self.starts}.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("serving did not start within 180 s")

    def kill(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Schedulers:
    """Finds the scheduler of ``airflow standalone`` and restarts it after a kill (the restarted
    ones are this test's own processes, stopped at the end)."""

    def __init__(self, standalone_pid: int, logs: Path, port: str) -> None:
        self.root, self.logs, self.port = standalone_pid, logs, port
        self.restarted: list[subprocess.Popen] = []

    def current(self) -> int | None:
        for proc in reversed(self.restarted):
            if proc.poll() is None:
                return proc.pid
        import psutil

        for child in psutil.Process(self.root).children(recursive=False):
            if " scheduler" in _cmdline(child.pid):
                return child.pid
        return None

    def kill_and_restart(self, after_s: float = 3.0) -> bool:
        pid = self.current()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        time.sleep(after_s)
        bin_dir = Path(sys.executable).parent
        from airloop.ops import topology

        # as standalone starts it: its tasks call this API server's execution API, not port 8080's
        env = {**os.environ, **topology.airflow_port_env({"AIRFLOW_PORT": self.port}),
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        log = open(self.logs / f"scheduler-{len(self.restarted) + 1}.log", "wb")  # noqa: SIM115
        self.restarted.append(subprocess.Popen([str(bin_dir / "airflow"), "scheduler"], env=env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        return True

    def stop(self) -> None:
        for proc in self.restarted:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def chaos(settings, claims_config, tmp_path_factory):
    """Serving, then ``airflow standalone`` whose tasks reach it; fault points armed by files."""
    from airloop.core.pipeline import resolve_source_path
    from airloop.data.simulator import write_history

    faults = tmp_path_factory.mktemp("faults")
    logs = tmp_path_factory.mktemp("chaos-logs")
    serving = Serving(settings, logs)
    env = {
        "AIRLOOP_FAULT_AT": str(faults),
        "AIRLOOP_RETRY_DELAY_S": "3",
        "AIRLOOP_TASK_RETRIES": str(RETRIES),
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW_CONN_AIRLOOP_SERVING": f"http://:{settings.admin_token}@127.0.0.1:{serving.port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    train = claims_config.dag_id("train")

    def history():
        write_history(resolve_source_path(claims_config, settings), start=HISTORY_START, days=HISTORY_DAYS,
                      pattern=claims_config.source.partition)

    schedulers = None
    try:
        serving.start()
        with airflow_standalone(settings, tmp_path_factory.mktemp("airflow-chaos"), [train], history) as running:
            import psutil

            root = next(p.pid for p in psutil.Process().children() if "standalone" in _cmdline(p.pid))
            schedulers = Schedulers(root, logs, running["port"])
            yield {**running, "train": train, "faults": faults, "serving": serving, "schedulers": schedulers,
                   "logs": logs}
    finally:
        if schedulers is not None:
            schedulers.stop()
        serving.stop()
        restore_environ(saved)


def _tis(api, dag_id: str, run_id: str) -> list[dict]:
    try:
        return api.task_instances(dag_id, run_id)
    except (httpx.HTTPError, Exception):  # noqa: BLE001 - the API server is busy (SQLite): ask again
        return []


def _plan(rng: random.Random, wanted: int) -> list[tuple[str, str]]:
    """Up to ``wanted`` injections ``(target, task)`` for one run, each task's worth at most
    ``RETRIES - 1`` tries (:data:`COST`)."""
    menu = ([("task", t) for t in TASKS] * 2 + [("fault:" + f, "promote") for f in FAULTS]
            + [("scheduler", t) for t in ("evaluate", "register", "promote")] + [("serving", "promote")])
    rng.shuffle(menu)
    # every run stops one promotion halfway (ledger row written, alias not yet, or the alias moved,
    # not yet committed), so the repair path is exercised through the real scheduler each time
    halfway = ("fault:" + rng.choice(MID_MOVE), "promote")
    menu = [halfway] + [m for m in menu if m != halfway]
    plan, per_task = [], Counter()
    for target, task in menu:
        cost = 1 if target.startswith("fault:") else COST[target]
        if per_task[task] + cost > RETRIES - 1 or len(plan) >= wanted:
            continue
        per_task[task] += cost
        plan.append((target, task))
    return plan


def _inject(chaos, run_id: str, plan: list[tuple[str, str]], rng: random.Random, figures: dict,
            done: threading.Event) -> None:
    """Carry out ``plan`` while the run goes (a thread): each injection when its task runs."""
    api, dag_id = chaos["api"], chaos["train"]
    pending = list(plan)
    killed: set[int] = set()
    for target, task in pending:
        if target.startswith("fault:"):
            (chaos["faults"] / target.split(":", 1)[1]).touch()  # armed: promote dies there once
    pending = [p for p in pending if not p[0].startswith("fault:")]
    while pending and not done.is_set():
        tis = _tis(api, dag_id, run_id)
        running = {t["task_id"]: t for t in tis if t["state"] == "running" and t.get("pid")}
        waiting = {t["task_id"]: t for t in tis if t["state"] in ("scheduled", "queued", "up_for_retry")}
        for item in list(pending):
            target, task = item
            # the scheduler dies between tasks (the next one scheduled, queued or waiting to retry):
            # the restarted scheduler must pick the run up (orphaned queued tries are reset and run again)
            ti = (waiting.get(task) if not running else None) if target == "scheduler" else running.get(task)
            if ti is None:
                continue
            time.sleep(rng.uniform(0.0, 1.5 if task in ("train_trials", "evaluate") else 0.3))
            landed = False
            if target == "task":
                pid = int(ti["pid"])
                if pid not in killed and "airflow" in _cmdline(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                        landed = True
                    except ProcessLookupError:
                        pass
            elif target == "scheduler":
                landed = chaos["schedulers"].kill_and_restart()
            elif target == "serving":
                landed = chaos["serving"].kill()
                if landed:
                    threading.Timer(8.0, chaos["serving"].start).start()
            figures["attempted"][f"{target}/{PHASE[task]}"] += 1
            figures["events"].append((round(time.monotonic(), 1), target, task, ti.get("try_number"), landed))
            if landed:
                figures["landed"][f"{target}/{PHASE[task]}"] += 1
            pending.remove(item)
            break
        time.sleep(0.3)


def _run_with_chaos(chaos, as_of: date, plan, rng, figures) -> dict:
    api, dag_id = chaos["api"], chaos["train"]
    run = api.trigger(dag_id, conf={"as_of": as_of.isoformat(), **CONF}, logical_date=datetime.now(timezone.utc))
    run_id = run["dag_run_id"]
    done = threading.Event()
    injector = threading.Thread(target=_inject, args=(chaos, run_id, plan, rng, figures, done), daemon=True)
    injector.start()
    try:
        finished = api.wait_run(dag_id, run_id, seconds=900, alive=chaos["alive"])
    finally:
        done.set()
        injector.join(60)
    for fault in FAULTS:  # an armed fault point that fired is gone; one that did not is disarmed
        path = chaos["faults"] / fault
        if any(t == f"fault:{fault}" for t, _ in plan):
            figures["attempted"][f"fault:{fault}/promote"] += 1
            if path.exists():
                path.unlink()
            else:
                figures["landed"][f"fault:{fault}/promote"] += 1
    tis = _tis(api, dag_id, run_id)
    figures["retries"] += sum(max(int(t.get("try_number") or 1) - 1, 0) for t in tis)
    states = {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"] for t in tis}
    return {"run_id": run_id, "state": finished["state"], "tasks": states}


def test_kill_9_anywhere_in_train_register_promote_deploy_converges(chaos, settings, claims_config):
    from mlflow.entities import ViewType
    from optuna.trial import TrialState

    from airloop.core import store
    from airloop.registry import client as registry
    from airloop.registry import reconcile
    from airloop.registry.audit import current_versions
    from airloop.serving.client import ServingEndpoint, served_version
    from airloop.tasks.training import study_name
    from airloop.training.search import open_study

    rng = random.Random(SEED)
    figures = {"attempted": Counter(), "landed": Counter(), "retries": 0, "events": []}
    started = time.monotonic()
    runs, as_of = [], FIRST_AS_OF
    max_runs = max(2, (KILLS + 2) // 3 + 2)
    while sum(figures["landed"].values()) < KILLS and len(runs) < max_runs:
        wanted = min(4, KILLS - sum(figures["landed"].values()) + 1)
        plan = _plan(rng, wanted)
        outcome = _run_with_chaos(chaos, as_of, plan, rng, figures)
        outcome |= {"as_of": as_of.isoformat(), "plan": plan}
        runs.append(outcome)
        assert outcome["state"] == "success", (outcome, figures["events"])
        as_of += timedelta(days=7)

    serving = chaos["serving"]
    if serving.proc is None or serving.proc.poll() is not None:
        time.sleep(10)  # a restart timer may still be pending
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{serving.url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)

    client = registry.get_client(settings)
    engine = store.get_engine(settings.monitoring_db_uri)
    # 1. exactly one version per interval
    for run in runs:
        key = registry.interval_key(claims_config, run["as_of"])
        found = client.search_model_versions(f"name = '{claims_config.model_name}' and tags.`airloop.interval_key` = '{key}'")
        assert len(found) == 1, (key, [v.version for v in found])
    # 2. no MLflow run left RUNNING
    experiment = client.get_experiment_by_name(claims_config.experiment_name)
    left = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in left] == []
    # 3. ledger = registry aliases = served version
    per_ledger = reconcile.ledger_versions(engine, claims_config)
    aliases = current_versions(client, claims_config)
    champion = per_ledger.get(claims_config.promotion.serving_environment.name)
    assert champion is not None, per_ledger  # every run was forced through to prod
    served = served_version(ServingEndpoint(serving.url, settings.admin_token).for_pipeline(claims_config))
    assert all(str(aliases.get(env)) == str(v) for env, v in per_ledger.items()), (per_ledger, aliases)
    assert served == champion, (served, champion, per_ledger)
    # 4. every study resumed: no trial left RUNNING, the budget met once (not restarted)
    trials = {}
    for run in runs:
        study = open_study(settings.optuna_storage, study_name(claims_config, run["as_of"]), claims_config)
        states = Counter(t.state for t in study.get_trials())
        numbers = sorted(t.number for t in study.get_trials())
        assert states[TrialState.RUNNING] == 0 and numbers == list(range(len(numbers)))
        done = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        assert CONF["n_trials"] <= done <= CONF["n_trials"] + claims_config.training.n_workers - 1, states
        trials[run["as_of"]] = {s.name.lower(): n for s, n in states.items()}

    repairs = [r for r in store_rows(engine, claims_config.name) if r["action"] == reconcile.RECONCILE]
    landed = sum(figures["landed"].values())
    summary = {
        "kills_target": KILLS, "seed": SEED, "runs": len(runs),
        "kills_attempted": sum(figures["attempted"].values()), "kills_landed": landed,
        "by_target_phase": dict(sorted(figures["landed"].items())),
        "attempted_by_target_phase": dict(sorted(figures["attempted"].items())),
        "task_retries": figures["retries"], "reconcile_repairs": len(repairs),
        "serving_starts": serving.starts, "scheduler_restarts": len(chaos["schedulers"].restarted),
        "versions": len(runs), "champion": champion, "trials": trials,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("CHAOS " + json.dumps(summary, sort_keys=True))
    assert landed >= KILLS, summary
    halfway = sum(n for k, n in figures["landed"].items() if k.split("/")[0] in {f"fault:{f}" for f in MID_MOVE})
    assert halfway >= 1 and len(repairs) >= 1, summary  # a move stopped halfway was repaired


def store_rows(engine, pipeline: str) -> list[dict]:
    from airloop.registry.ledger import ledger_rows

    return ledger_rows(engine, pipeline)
