"""DAG parse time: every file in dags/ and the whole DagBag, against a minimal DAG file.

How: each measurement is a fresh Python process that first imports Airflow's ``DagBag`` (the
dag-processor has Airflow loaded before it parses a file), then times ``DagBag(<file>)`` — the
cold parse of that file, airloop's own imports included. The whole folder is timed the same
way (``total_s``), and once more in the same process (``warm_total_s``: modules cached, only
the DAG files re-executed). The reference is a minimal DAG (one ``@task``, imports from
``airflow.sdk`` only) parsed the same way in the same run: the floor Airflow itself sets.
A warm-up round runs first and is excluded; figures are medians of ``--repeats`` rounds.
Every parse must be free of import errors and must not import the heavy ML libraries.

Target: max_file_s <= 0.5.

    python benchmarks/parse.py [--repeats 5]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import ROOT, emit, last_json_line, log, median, parser, session

HEAVY = ("mlflow", "great_expectations", "evidently", "optuna", "sklearn", "pandas")

CHILD = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
path = sys.argv[1]
started = time.perf_counter()
bag = DagBag(dag_folder=path)
cold = time.perf_counter() - started
started = time.perf_counter()
again = DagBag(dag_folder=path)
warm = time.perf_counter() - started
print(json.dumps({
    "cold_s": cold, "warm_s": warm, "dags": sorted(bag.dag_ids),
    "errors": {k: str(v)[:500] for k, v in bag.import_errors.items()},
    "heavy": [m for m in %r if m in sys.modules],
    "files": {str(s.file).rsplit("/", 1)[-1]: s.duration.total_seconds() for s in bag.dagbag_stats},
}))
""" % (HEAVY,)

REFERENCE_DAG = '''"""Reference: the smallest useful Airflow 3 DAG file."""
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="reference_minimal", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["reference"])
def reference_minimal():
    @task
    def hello() -> str:
        return "hello"

    hello()


reference_minimal()
'''


def parse_once(path: Path) -> dict:
    """Parse ``path`` (a file or a folder) in a fresh process; its figures."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"parsing {path} failed:\n{out.stderr[-3000:]}")
    result = last_json_line(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"import errors parsing {path}: {result['errors']}")
    return result


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    files = sorted((ROOT / "dags").glob("*.py"))
    with session("parse", keep=args.keep) as folder:
        reference = folder / "reference_dag.py"
        reference.write_text(REFERENCE_DAG)
        targets = {f.name: f for f in files} | {"__reference__": reference, "__folder__": ROOT / "dags"}
        samples: dict[str, list[dict]] = {name: [] for name in targets}
        for round_ in range(args.repeats + 1):
            for name, path in targets.items():
                result = parse_once(path)
                if round_ > 0:  # round 0 is the warm-up (disk cache, .pyc files)
                    samples[name].append(result)
            log(f"round {round_}{' (warm-up)' if round_ == 0 else ''}: "
                + ", ".join(f"{n} {samples[n][-1]['cold_s']:.3f}s" for n in targets if round_ > 0))
    per_file = {name: median([r["cold_s"] for r in samples[name]]) for name in (f.name for f in files)}
    heavy = sorted({m for name in targets for r in samples[name] for m in r["heavy"]})
    folder_runs = samples["__folder__"]
    max_file_s = max(per_file.values())
    reference_s = median([r["cold_s"] for r in samples["__reference__"]])
    figures = {
        "benchmark": "parse",
        "files": per_file,
        "max_file_s": max_file_s,
        "total_s": median([r["cold_s"] for r in folder_runs]),
        "warm_total_s": median([r["warm_s"] for r in folder_runs]),
        "dagbag_stats_s": {k: median([r["files"][k] for r in folder_runs]) for k in folder_runs[0]["files"]},
        "dags": folder_runs[0]["dags"],
        "reference_file_s": reference_s,
        "ratio_vs_reference": round(max_file_s / reference_s, 2),
        "heavy_modules_imported": heavy,
        "repeats": args.repeats,
        "target_max_file_s": 0.5,
        "target_met": max_file_s <= 0.5 and not heavy,
    }
    log(json.dumps(figures, indent=1))
    emit(figures)


if __name__ == "__main__":
    main()
