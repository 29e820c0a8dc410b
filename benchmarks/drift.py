"""Drift at a million rows: airloop's fast path (airloop.monitoring.driftstats) vs Evidently's DataDriftPreset.

    python benchmarks/drift.py [--rows N] [--repeats K] [--agreement-rows M] [--scaling 1e6,2e6,5e6,1e7]

Data: seeded frames of N reference and N current rows x 20 numeric + 5 categorical columns
(normal, log-normal, gamma, uniform, integer-valued and heavy-tailed numbers; 3 to 30
categories), the current frame with seeded shifts in some columns (mean, scale, tail, category
mix) and nulls in others.

What is timed, each side in its own fresh subprocess that builds the same frames from the seeds:

* ``ours``: what monitoring does per interval given the version's stored profile: load the
  profile file, then judge all 25 columns of the current frame (``driftstats.drift_verdicts``,
  Evidently's default method choice and thresholds, as ``monitoring.fast_drift_rows`` does with
  the configured ones). Building the profile from the reference (done once per model version at
  training time) is timed apart: ``profile_s``.
* ``evidently``: ``Report([DataDriftPreset()]).run(current, reference)`` with default settings on
  the same frames (explicit numeric/categorical column types).

A warm-up run on a 10,000-row slice comes first in each subprocess (imports, caches) and is not
timed; figures are medians of ``--repeats`` runs, wall time (``ours_s``, ``evidently_s``) and
CPU time of the process (``*_cpu_s``: less sensitive to other work on the machine). Peak memory, both measured the same way: the
subprocess's resident set after building its inputs (ours: the current frame; Evidently: both
frames) and releasing free heap memory (``malloc_trim``) is the baseline, the kernel's
peak-RSS mark is reset there (``/proc/self/clear_refs``) and ``ours_peak_mb`` /
``evidently_peak_mb`` is the peak during the timed runs minus that baseline.

``whylogs``: ``why.log(pandas=reference).view()`` (whylogs 1.6.4, its default profile of every
column) on the same reference frame, in its own virtual environment (``_common.bench_python``,
cached under the state folder) and process, read from a Parquet file; a warm-up on 10,000 rows,
then ``--repeats`` timed runs, against ours building the stored profile (``profile_s``, also a
median of ``--repeats`` after a warm-up): ``whylogs_s``, ``ratio_vs_whylogs``.

``agreement``: the share of per-column verdicts equal to Evidently's when both use the same method
and threshold, over several seeded scenarios at ``--agreement-rows`` rows (every method that
applies to each column; Evidently runs one ``ValueDrift`` per column and method), plus the verdicts
of the full-size run above (Evidently's default methods, our grid profile) in
``agreement_full_size``. ``scaling``: ours at 1M .. 10M current rows against the same profile (one
run per size after the warm-up).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_python, emit, log, median  # noqa: E402 - benchmarks/ on the path first (also fixes airloop's)

NUMERIC = [f"num_{i:02d}" for i in range(20)]
CATEGORICAL = [f"cat_{i}" for i in range(5)]
SCENARIOS = ["no_shift", "mean_shift", "scale_shift", "tail_shift", "category_mix", "nulls"]
#: The shifts of the benchmark's main current frame (the agreement scenarios vary them).
MAIN_SHIFTS = {"num_00": "mean", "num_01": "mean", "num_05": "scale", "num_09": "tail", "num_12": "nulls",
               "cat_0": "mix", "cat_3": "nulls"}
WARMUP_ROWS = 10_000
#: whylogs in its own virtual environment (``_common.bench_python``): a known-good set of pins.
WHYLOGS = ["whylogs==1.6.4", "numpy==1.26.4", "pandas==2.2.3", "pyarrow==17.0.0"]
#: Run by the whylogs environment's interpreter: profile the reference frame (a Parquet file)
#: ``repeats`` times after a warm-up on its first rows; one JSON line of seconds.
WHYLOGS_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
import pandas as pd
import whylogs as why
frame = pd.read_parquet(sys.argv[1])
why.log(pandas=frame.head(%d)).view()  # imports + caches, not timed
times, cpu = [], []
for _ in range(int(sys.argv[2])):
    t0, c0 = time.perf_counter(), time.process_time()
    view = why.log(pandas=frame).view()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
print(json.dumps({"times": times, "cpu": cpu, "columns": len(view.get_columns()), "rows": len(frame),
                  "version": why.__version__}))
""" % WARMUP_ROWS


# ============================================================================ data
def numeric_column(rng, i: int, n: int, shift: str | None):
    """Column ``num_<i>``: one of six distribution families, optionally shifted."""
    import numpy as np

    mean = 0.15 if shift == "mean" else 0.0
    scale = 1.3 if shift == "scale" else 1.0
    kind = i % 6
    if kind == 0:
        x = rng.normal(50 + 10 * mean, 10 * scale, n)
    elif kind == 1:
        x = np.exp(rng.normal(8 + mean, 0.9 * scale, n))
    elif kind == 2:
        x = rng.gamma(2.0, 300 * scale, n) + 600 * mean
    elif kind == 3:
        x = rng.uniform(0, 100 * scale, n) + 100 * mean
    elif kind == 4:
        x = np.round(rng.normal(40 + 12 * mean, 12 * scale, n))  # integer-valued, ~100 distinct values
    else:
        x = rng.standard_t(3, n) * scale + mean  # heavy tails
    if shift == "tail":
        tail = rng.random(n) < 0.05
        x[tail] = x[tail] * 3
    if shift == "nulls":
        x[rng.random(n) < 0.25] = np.nan
    return x


def categorical_column(rng, i: int, n: int, shift: str | None):
    """Column ``cat_<i>``: 3..30 categories with skewed shares, optionally re-mixed or nulled."""
    import numpy as np

    k = [3, 5, 8, 12, 30][i]
    values = np.array([f"c{i}_{j}" for j in range(k)], dtype=object)
    p = 1 / np.arange(1, k + 1)
    if shift == "mix":
        p = p[::-1]
    x = values[rng.choice(k, n, p=p / p.sum())]
    if shift == "nulls":
        x[rng.random(n) < 0.25] = None
    return x


def make_frame(rows: int, seed: int, shifts: dict[str, str] | None = None):
    """A seeded frame of 20 numeric + 5 categorical columns, with ``{column: shift}`` applied."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    shifts = shifts or {}
    data: dict[str, Any] = {c: numeric_column(rng, i, rows, shifts.get(c)) for i, c in enumerate(NUMERIC)}
    data |= {c: categorical_column(rng, i, rows, shifts.get(c)) for i, c in enumerate(CATEGORICAL)}
    return pd.DataFrame(data)


def scenario_shifts(scenario: str) -> dict[str, str]:
    """The shifts of an agreement scenario (a few columns each)."""
    return {
        "no_shift": {},
        "mean_shift": {c: "mean" for c in NUMERIC[:6]},
        "scale_shift": {c: "scale" for c in NUMERIC[6:12]},
        "tail_shift": {c: "tail" for c in NUMERIC[12:18]},
        "category_mix": {c: "mix" for c in CATEGORICAL[:3]},
        "nulls": {**{c: "nulls" for c in NUMERIC[::4]}, "cat_1": "nulls", "cat_4": "nulls"},
    }[scenario]


# ============================================================================ memory
def baseline_mb() -> float:
    """Release free heap memory to the OS (``malloc_trim``: memory freed while building the
    inputs would otherwise be reused unseen by the measured run), reset the kernel's peak-RSS
    mark of this process and return its resident set (MB): the baseline of a peak measurement."""
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    """Peak resident set since the last :func:`baseline_mb` (MB)."""
    return _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


# ============================================================================ the two sides
def evidently_report(reference, current):
    """Evidently's DataDriftPreset with default settings, explicit column types."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    return Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))


def evidently_value_drift(reference, current, metrics) -> dict[str, dict]:
    """Evidently's ValueDrift verdicts of ``metrics`` (one method per column)."""
    from evidently import DataDefinition, Dataset, Report

    from airloop.monitoring.drift import evidently_verdicts

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report(metrics, include_tests=True).run(Dataset.from_pandas(current, data_definition=definition),
                                                       Dataset.from_pandas(reference, data_definition=definition))
    return evidently_verdicts(snapshot)


def method_name(display_or_name: str) -> str:
    """Evidently records a method it chose itself by its display name."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    names = {next(iter(t.values())).display_name: name for name, t in _registered_stat_tests.items()}
    return names.get(display_or_name, display_or_name)


def ours(profile_path: Path, current) -> dict:
    """Monitoring's per-interval drift path given a stored profile: load it, judge every column."""
    from airloop.monitoring import driftstats

    profile = driftstats.ReferenceProfile.load(profile_path)
    return driftstats.drift_verdicts(profile, current, {c: (None, None) for c in [*NUMERIC, *CATEGORICAL]})


def worker(side: str, rows: int, repeats: int, out: Path, sizes: list[int]) -> None:
    """One side of the benchmark in this (fresh) process; figures written to ``out`` as JSON."""
    from airloop.monitoring import driftstats

    figures: dict[str, Any] = {"side": side, "threads": driftstats.THREADS}
    shifts = MAIN_SHIFTS
    if side == "ours":
        reference = make_frame(rows, seed=1)
        driftstats.build_profile(reference.head(WARMUP_ROWS), NUMERIC, CATEGORICAL)  # warm-up, not timed
        figures["profile_times"], figures["profile_cpu"] = [], []
        for _ in range(repeats):  # as whylogs is timed: the whole frame, median of the repeats
            t0, c0 = time.perf_counter(), time.process_time()
            profile = driftstats.build_profile(reference, NUMERIC, CATEGORICAL)
            figures["profile_times"].append(time.perf_counter() - t0)
            figures["profile_cpu"].append(time.process_time() - c0)
        figures["profile_s"] = median(figures["profile_times"])
        path = profile.save(out.with_suffix(".npz"))
        figures["profile_mb"] = path.stat().st_size / 2**20
        figures["profile_grid_columns"] = sum(1 for c in profile.columns.values()
                                              if isinstance(c, driftstats.NumericProfile) and not c.exact)
        warm = ours(path, make_frame(WARMUP_ROWS, seed=2, shifts=shifts))  # imports + caches, not timed
        del reference, profile, warm
        current = make_frame(rows, seed=2, shifts=shifts)
        figures["baseline_mb"] = baseline_mb()
        times, cpu, verdicts = [], [], None
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            verdicts = ours(path, current)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        figures["peak_mb"] = peak_mb() - figures["baseline_mb"]
        figures["times"], figures["cpu"] = times, cpu
        figures["verdicts"] = {c: [v.method, v.threshold, v.statistic, v.drifted] for c, v in verdicts.items()}
        del current
        gc.collect()
        scaling = {}
        for size in sizes:  # ours only, same profile, one run per size
            current = make_frame(size, seed=3, shifts=shifts)
            base = baseline_mb()
            t0, c0 = time.perf_counter(), time.process_time()
            ours(path, current)
            scaling[str(size)] = {"ours_s": round(time.perf_counter() - t0, 3),
                                  "ours_cpu_s": round(time.process_time() - c0, 3), "peak_mb": round(peak_mb() - base, 1)}
            log(f"ours at {size:,} current rows: {scaling[str(size)]}")
            del current
            gc.collect()
        figures["scaling"] = scaling
    else:
        reference, current = make_frame(WARMUP_ROWS, seed=1), make_frame(WARMUP_ROWS, seed=2, shifts=shifts)
        evidently_report(reference, current)  # imports + caches, not timed
        reference, current = make_frame(rows, seed=1), make_frame(rows, seed=2, shifts=shifts)
        figures["baseline_mb"] = baseline_mb()
        times, cpu, snapshot = [], [], None
        for _ in range(repeats):
            snapshot = None
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            snapshot = evidently_report(reference, current)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            log(f"evidently run: {times[-1]:.1f} s")
        figures["peak_mb"] = peak_mb() - figures["baseline_mb"]
        figures["times"], figures["cpu"] = times, cpu
        from airloop.monitoring.drift import evidently_verdicts

        figures["verdicts"] = {c: [method_name(v["method"]), v["threshold"], v["score"], v["drifted"]]
                               for c, v in evidently_verdicts(snapshot).items()}
    out.write_text(json.dumps(figures))


def whylogs_profile(rows: int, repeats: int, folder: Path) -> dict:
    """whylogs' ``why.log`` of the same reference frame as ours profiles (seed 1), in its own
    environment and process, from a Parquet file (writing and reading it is not timed)."""
    python = bench_python("whylogs", WHYLOGS)
    path = folder / "reference.parquet"
    make_frame(rows, seed=1).to_parquet(path, index=False)
    done = subprocess.run([str(python), "-c", WHYLOGS_SCRIPT, str(path), str(repeats)], capture_output=True, text=True,
                          env={**os.environ, "WHYLOGS_NO_ANALYTICS": "True"})
    path.unlink()
    if done.returncode:
        raise SystemExit(f"whylogs failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(side: str, rows: int, repeats: int, folder: Path, sizes: list[int], threads: int | None = None) -> dict:
    """Run :func:`worker` in a fresh interpreter (``AIRLOOP_DRIFT_THREADS=threads``; None: the
    default, ``driftstats.THREADS``) and read its figures."""
    out = folder / f"{side}-{threads}.json"
    env = {k: v for k, v in os.environ.items() if k != "AIRLOOP_DRIFT_THREADS"}
    subprocess.run([sys.executable, __file__, "--worker", side, "--rows", str(rows), "--repeats", str(repeats),
                    "--out", str(out), "--scaling", ",".join(map(str, sizes))], check=True,
                   env=env if threads is None else env | {"AIRLOOP_DRIFT_THREADS": str(threads)})
    return json.loads(out.read_text())


# ============================================================================ agreement
def agreement(rows: int) -> dict[str, Any]:
    """Verdicts of ours vs Evidently with the same method and threshold, every applicable method
    per column, over :data:`SCENARIOS` at ``rows`` reference and current rows; ours judged once
    with the default profile and once with a grid profile (``max_points = rows // 10``) so that
    the approximation is exercised at this size too."""
    from evidently.metrics import ValueDrift

    from airloop.monitoring import driftstats

    reference = make_frame(rows, seed=11)
    exact = driftstats.build_profile(reference, NUMERIC, CATEGORICAL)
    grid = driftstats.build_profile(reference, NUMERIC, CATEGORICAL, max_points=max(rows // 10, 1))
    counts = {"exact": [0, 0], "grid": [0, 0]}
    worst: dict[str, float] = {}
    disagreements = []
    for k, scenario in enumerate(SCENARIOS):
        current = make_frame(rows, seed=20 + k, shifts=scenario_shifts(scenario))
        for method, kinds in driftstats.METHOD_KINDS.items():
            columns = ([c for c in NUMERIC] if "num" in kinds else []) + ([c for c in CATEGORICAL] if "cat" in kinds else [])
            threshold = driftstats.DEFAULT_THRESHOLDS[method]
            theirs = evidently_value_drift(reference, current, [ValueDrift(column=c, method=method, threshold=threshold)
                                                                for c in columns])
            for column in columns:
                for name, profile in (("exact", exact), ("grid", grid)):
                    v = driftstats.column_drift(column, profile[column], current[column], method, threshold)
                    same = v.drifted == theirs[column]["drifted"]
                    counts[name][0] += same
                    counts[name][1] += 1
                    if not same:
                        disagreements.append(f"{scenario}/{column}/{method}/{name}: ours {v.statistic:.6g} "
                                             f"evidently {theirs[column]['score']:.6g} (threshold {threshold})")
                    if name == "exact" and method not in driftstats.P_VALUE_METHODS:
                        diff = abs(v.statistic - theirs[column]["score"])
                        worst[method] = max(worst.get(method, 0.0), diff)
        log(f"agreement scenario {scenario} done")
    return {"exact": counts["exact"][0] / counts["exact"][1], "grid": counts["grid"][0] / counts["grid"][1],
            "verdicts": counts["exact"][1], "max_abs_score_diff_exact": {m: float(f"{d:.3g}") for m, d in worst.items()},
            "disagreements": disagreements}


# ============================================================================ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="reference and current rows")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--agreement-rows", type=int, default=20_000, help="rows of each agreement scenario")
    p.add_argument("--scaling", default="1000000,2000000,5000000,10000000",
                   help="current-row counts of the scaling run (ours only); empty to skip")
    p.add_argument("--worker", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [int(float(s)) for s in args.scaling.split(",") if s.strip()]
    if args.worker:
        worker(args.worker, args.rows, args.repeats, args.out, sizes)
        return

    with tempfile.TemporaryDirectory(prefix="airloop-bench-drift-") as tmp:
        folder = Path(tmp)
        log(f"ours: {args.rows:,} rows x {len(NUMERIC) + len(CATEGORICAL)} columns, {args.repeats} repeats; "
            f"scaling {sizes}")
        mine = run_worker("ours", args.rows, args.repeats, folder, sizes)
        log(f"ours: {mine['times']} s on {mine['threads']} threads (the default); the same with AIRLOOP_DRIFT_THREADS=1 next")
        one = run_worker("ours", args.rows, args.repeats, folder, sizes[-1:], threads=1)
        log(f"ours: profile {mine['profile_times']} s; whylogs profiling next")
        why = whylogs_profile(args.rows, args.repeats, folder)
        log(f"whylogs: {why['times']} s; evidently next")
        theirs = run_worker("evidently", args.rows, args.repeats, folder, [])
        log(f"evidently: {theirs['times']} s; agreement scenarios at {args.agreement_rows:,} rows")
    agree = agreement(args.agreement_rows)

    same_method = [c for c in theirs["verdicts"] if theirs["verdicts"][c][:2] == mine["verdicts"][c][:2]]
    full_agree = sum(theirs["verdicts"][c][3] == mine["verdicts"][c][3] for c in same_method) / len(theirs["verdicts"])
    score_diff = max(abs(theirs["verdicts"][c][2] - mine["verdicts"][c][2]) for c in same_method)
    ours_s, evidently_s = median(mine["times"]), median(theirs["times"])
    scaling = mine["scaling"]
    per_m = [v["ours_s"] / (int(n) / 1e6) for n, v in scaling.items()]
    emit({
        "benchmark": "drift",
        "rows": args.rows,
        "cols": len(NUMERIC) + len(CATEGORICAL),
        "ours_s": ours_s,
        "evidently_s": evidently_s,
        "ratio": round(evidently_s / ours_s, 1),
        "ours_peak_mb": round(mine["peak_mb"], 1),
        "evidently_peak_mb": round(theirs["peak_mb"], 1),
        "agreement": round(agree["exact"], 4),
        "agreement_rows": args.agreement_rows,
        "agreement_scenarios": SCENARIOS,
        "agreement_verdicts": agree["verdicts"],
        "agreement_grid_profile": round(agree["grid"], 4),
        "agreement_max_abs_score_diff": agree["max_abs_score_diff_exact"],
        "agreement_disagreements": agree["disagreements"][:10],
        "agreement_full_size": round(full_agree, 4),
        "full_size_methods": sorted({tuple(v[:2]) for v in theirs["verdicts"].values()}),
        "full_size_max_abs_score_diff": float(f"{score_diff:.3g}"),
        "full_size_drifted": sorted(c for c, v in mine["verdicts"].items() if v[3]),
        "profile_s": round(mine["profile_s"], 3),
        "profile_cpu_s": median(mine["profile_cpu"]),
        "whylogs_s": median(why["times"]),
        "whylogs_cpu_s": median(why["cpu"]),
        "whylogs_rows_per_s": round(args.rows / median(why["times"])),
        "ours_profile_rows_per_s": round(args.rows / mine["profile_s"]),
        "ratio_vs_whylogs": round(median(why["times"]) / mine["profile_s"], 1),
        "cpu_ratio_vs_whylogs": round(median(why["cpu"]) / median(mine["profile_cpu"]), 1),
        "whylogs_version": why["version"],
        "profile_mb": round(mine["profile_mb"], 1),
        "profile_grid_columns": mine["profile_grid_columns"],
        "ours_cpu_s": median(mine["cpu"]),
        "evidently_cpu_s": median(theirs["cpu"]),
        "cpu_ratio": round(median(theirs["cpu"]) / median(mine["cpu"]), 1),
        "ours_times_s": [round(t, 3) for t in mine["times"]],
        "evidently_times_s": [round(t, 2) for t in theirs["times"]],
        "ours_baseline_mb": round(mine["baseline_mb"], 1),
        "evidently_baseline_mb": round(theirs["baseline_mb"], 1),
        "memory_method": "per-side fresh subprocess: peak RSS (VmHWM, reset via /proc/self/clear_refs after "
                         "building the inputs and malloc_trim) minus RSS at that point",
        "scaling": scaling,
        "scaling_s_per_million_rows": [round(x, 3) for x in per_m],
        "scaling_cpu_s_per_million_rows": [round(v["ours_cpu_s"] / (int(n) / 1e6), 3) for n, v in scaling.items()],
        "ours_10m_s": scaling.get("10000000", {}).get("ours_s"),
        "ours_10m_peak_mb": scaling.get("10000000", {}).get("peak_mb"),
        # the default is 2 threads (driftstats.THREADS); the same on one thread, AIRLOOP_DRIFT_THREADS=1
        "ours_threads": mine["threads"],
        "ours_s_1_thread": median(one["times"]),
        "ours_10m_s_1_thread": one["scaling"].get("10000000", {}).get("ours_s"),
        "ours_10m_peak_mb_1_thread": one["scaling"].get("10000000", {}).get("peak_mb"),
        "load_1m_at_end": round(os.getloadavg()[0], 2),
        "repeats": args.repeats,
    })


if __name__ == "__main__":
    main()
