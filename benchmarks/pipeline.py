"""Orchestration overhead: the training DAG run by Airflow vs the same stage functions called in
one plain Python process, on the same data and as-of day; plus `make demo`'s time to first champion.

How: the demo's history (150 simulated days) is written once; every run then gets a fresh state
folder (MLflow store, monitoring store, Optuna journal: no study, model version or reference
carried over) and a fresh serving process to deploy to, started before the clock.

* dag: ``claims_fraud__train`` through ``dag.test()`` as of 2026-03-01 with the pipeline's
  defaults (56-day window, 16 trials, 2 mapped workers): the real DAG — parsed DAG file, task
  instances, XCom, params, the deploy operator and its hook — executed by Airflow in this
  process, task after task. ``dag.test()`` and not the scheduler, because it runs the tasks
  exactly as the plain path does (one process, mapped workers in turn), so the difference is the
  orchestration layer and not the parallelism; the scheduler's per-task process start-up is
  what benchmarks/backfill.py measures.
* plain: ``extract → validate → prepare_training → train_worker ×2 → evaluate → register →
  promote → deploy`` called directly (``_common.plain_training``).

One warm-up run of each (2 trials) is excluded, then the two alternate; medians of
``--repeats``. overhead_ratio = dag_s / plain_s. Target <= 1.5.

Time to first champion: in another clean state folder, the commands `make demo` runs
(``airloop.cli init``, ``airflow db migrate``, ``airloop.cli demo``) until the demo prints its
first training run's success (the installed .venv is reused; package installation excluded).

    python benchmarks/pipeline.py [--repeats 3] [--skip-demo]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import (
    PIPELINE,
    ROOT,
    airflow,
    emit,
    free_port,
    log,
    median,
    parser,
    plain_training,
    serving_process,
    session,
    stop_group,
    timed,
    use_state,
    write_demo_history,
)

AS_OF = "2026-03-01"
DEMO_CHAMPION = re.compile(r"^training as of (\S+): success")


def dag_run(dag, folder: Path, label: str, data_dir: Path, conf: dict) -> tuple[float, dict[str, float]]:
    """The training DAG through ``dag.test`` on fresh state; (seconds, seconds by task)."""
    use_state(folder / label, data_dir)
    with serving_process(folder):
        logical = datetime.fromisoformat(AS_OF).replace(tzinfo=timezone.utc)
        run, seconds = timed(lambda: dag.test(logical_date=logical, run_conf={"as_of": AS_OF, **conf}))
    tis = run.get_task_instances()
    states = {ti.task_id: str(ti.state) for ti in tis}
    if str(run.state) != "success":
        raise RuntimeError(f"{label}: training DAG run {run.state}: {states}")
    by_task: dict[str, float] = {}
    for ti in tis:
        by_task[ti.task_id] = by_task.get(ti.task_id, 0.0) + (ti.duration or 0.0)
    log(f"{label}: dag.test {seconds:.1f} s {({k: round(v, 1) for k, v in by_task.items()})}")
    return seconds, by_task


def plain_run(config, folder: Path, label: str, data_dir: Path, n_trials: int | None) -> tuple[float, dict[str, float]]:
    """The same stages called directly on fresh state; (seconds, seconds by stage)."""
    from airloop.core.settings import get_settings
    from airloop.serving.client import ServingEndpoint

    use_state(folder / label, data_dir)
    with serving_process(folder) as url:
        settings = get_settings()
        endpoint = ServingEndpoint(url, settings.admin_token)
        (out, by_stage), seconds = timed(lambda: plain_training(config, AS_OF, settings, n_trials=n_trials,
                                                                endpoint=endpoint, run_id=label))
    if "deploy" not in out:
        raise RuntimeError(f"{label}: the plain run did not deploy: {out.get('promote')}")
    log(f"{label}: plain {seconds:.1f} s {({k: round(v, 1) for k, v in by_stage.items()})}")
    return seconds, by_stage


def demo_time_to_champion(folder: Path) -> float:
    """Seconds from a clean state folder to the demo's first champion (make demo's commands)."""
    from airloop.ops.sandbox import isolated_environ

    session_dir = folder / "demo"
    port = free_port()
    env = {**os.environ, **isolated_environ(ROOT, session_dir), "AIRLOOP_SERVING_PORT": str(port),
           "AIRLOOP_SERVING_URL": f"http://127.0.0.1:{port}"}
    env.pop("AIRFLOW_CONN_AIRLOOP_SERVING", None)  # `airloop init` derives it from the port, as make demo does
    (session_dir / "state").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for argv in ([sys.executable, "-m", "airloop.cli", "init"], [sys.executable, "-m", "airflow", "db", "migrate"]):
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"{argv[2:]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    with open(session_dir / "demo.log", "w") as log_file:
        demo = subprocess.Popen([sys.executable, "-m", "airloop.cli", "demo"], env=env, stdout=subprocess.PIPE,
                                stderr=log_file, text=True, start_new_session=True, cwd=ROOT)
        try:
            for line in demo.stdout:
                log_file.write(line)
                if DEMO_CHAMPION.match(line.strip()):
                    return time.perf_counter() - started
                if line.startswith("training as of"):
                    raise RuntimeError(f"the demo's first training did not succeed: {line.strip()}")
            raise RuntimeError(f"the demo ended ({demo.wait()}) without a champion; see {session_dir / 'demo.log'}")
        finally:
            stop_group([demo])
            pid_file = session_dir / "state" / "run" / "serving.pid"  # the demo's own serving process
            if pid_file.is_file():
                try:
                    os.killpg(int(pid_file.read_text()), 15)
                except ProcessLookupError:
                    pass


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--skip-demo", action="store_true", help="do not measure make demo's time to first champion")
    p.add_argument("--trials", type=int, default=None, help="study budget (default: the pipeline's n_trials)")
    args = p.parse_args()
    with session("pipeline", keep=args.keep) as folder:
        from airloop.core.pipeline import load_pipeline_config

        airflow("db", "migrate")
        data_dir = folder / "data"
        settings = use_state(folder / "setup", data_dir)
        write_demo_history(settings)
        config = load_pipeline_config(PIPELINE, settings)
        n_trials = args.trials or config.training.n_trials
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(ROOT / "dags" / "airloop_training.py"))
        if bag.import_errors:
            raise RuntimeError(bag.import_errors)
        dag = bag.get_dag(f"{PIPELINE}__train")
        plain_run(config, folder, "warmup-plain", data_dir, 2)
        dag_run(dag, folder, "warmup-dag", data_dir, {"n_trials": 2})
        dags, plains = [], []
        for r in range(args.repeats):
            plains.append(plain_run(config, folder, f"plain-{r}", data_dir, n_trials))
            dags.append(dag_run(dag, folder, f"dag-{r}", data_dir, {"n_trials": n_trials}))
        demo_s = None if args.skip_demo else demo_time_to_champion(folder)

    dag_s, plain_s = median([s for s, _ in dags]), median([s for s, _ in plains])
    figures = {
        "benchmark": "pipeline",
        "dag_s": round(dag_s, 2),
        "plain_s": round(plain_s, 2),
        "overhead_ratio": round(dag_s / plain_s, 3),
        "overhead_s": round(dag_s - plain_s, 2),
        "dag_task_s": {k: median([t.get(k, 0.0) for _, t in dags]) for k in dags[0][1]},
        "plain_stage_s": {k: median([t.get(k, 0.0) for _, t in plains]) for k in plains[0][1]},
        "n_trials": n_trials,
        "as_of": AS_OF,
        "executor": "dag.test (in-process, tasks in turn)",
        "demo_time_to_first_champion_s": round(demo_s, 1) if demo_s is not None else None,
        "repeats": args.repeats,
        "target_overhead_ratio": 1.5,
    }
    figures["target_met"] = figures["overhead_ratio"] <= 1.5
    emit(figures)


if __name__ == "__main__":
    main()
