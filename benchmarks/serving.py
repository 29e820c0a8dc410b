"""Serving: our FastAPI app vs ``mlflow models serve`` on the same registered model.

How: a fresh state folder gets the demo history and one champion trained by the real stages
(``plain_training``: extract, validate, a 3-trial Optuna study, evaluate, register, promote) in
an isolated MLflow store. Three servers then run side by side, each one uvicorn worker:

* ``ours``: uvicorn on ``airloop.serving.app:create_app`` (the options of ``airloop.cli.commands.serving_argv``), prediction
  logging on (every record enqueued and written to the SQLite monitoring store by the logger
  thread);
* ``ours_off``: the same command on :func:`app_without_logging` (``create_app(log_predictions=False)``);
* ``mlflow``: ``mlflow models serve -m models:/claims_fraud/<v> --env-manager local -w 1`` with
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` (MLflow 3.17 refuses to load any sklearn flavour,
  skops included, without it; it then trusts the MLmodel's ``skops_trusted_types``) and
  ``UVICORN_ACCESS_LOG=false`` (ours runs with ``--no-access-log``; the same for both).

Load: ``wrk`` (a separate C process, ``apt-get install -y wrk``), 1 thread, 10 connections,
``--duration`` seconds (default 15) per run, cycling through the same real claims from the
demo data for both servers: single-record requests (ours: the record as the body; MLflow:
``{"dataframe_records": [record]}``) and 100-record batches (``{"records": [...]}`` vs
``{"dataframe_records": [...]}``). Every run must end with zero non-2xx answers and zero socket
errors. A 3-second warm-up of every server and kind runs first (excluded); then ``--repeats``
rounds, the server order rotated each round; figures are medians over rounds. After each run of
``ours`` the benchmark waits until the logger has written everything (its queue empty, nothing
spooled) so the next run is not slowed by the previous one's writes; that drain time is reported
(``drain_s``) and at the end the logged rows are counted against the answered records.

Answers differ in content: ours returns per record the label, the class probabilities and a
request id; MLflow's pyfunc returns the label only (``predict``), so ours does strictly more.

Fields: ``ours_rps``, ``mlflow_rps``, ``ratio``, ``ours_p50_ms``, ``ours_p99_ms``,
``mlflow_p50_ms``, ``mlflow_p99_ms``, ``logging_overhead`` (1 - rps logging on / off) for single
records; the same prefixed ``batch_`` for 100-record batches. Targets: ratio >= 3,
ours_p99_ms <= 25, logging_overhead <= 15 %.

    python benchmarks/serving.py [--repeats 3] [--duration 15] [--profile]

``--profile`` also runs ``ours`` under cProfile for one single-record run (not measured) and
prints the top functions on stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import (
    PIPELINE,
    ROOT,
    emit,
    free_port,
    log,
    median,
    parser,
    plain_training,
    session,
    start_group,
    stop_group,
    use_state,
    wait_http,
    write_demo_history,
)

AS_OF = "2026-03-01"
CONNECTIONS = 10
BATCH = 100
WARMUP_S = 3
#: Distinct bodies each kind cycles through (the same claims for both servers).
SINGLE_BODIES = 200
BATCH_BODIES = 20

LUA = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("BENCH_PATH")
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, headers, bodies[i])
end
"""


def app_without_logging():
    """Our serving app with prediction logging off (uvicorn ``--factory`` target of ``ours_off``)."""
    from airloop.serving.app import create_app

    return create_app(log_predictions=False)


def claim_records(settings, config, n: int) -> list[dict[str, Any]]:
    """``n`` real claims (feature columns only, JSON-ready: NaN as null) from the demo days before AS_OF."""
    from datetime import date, timedelta

    from airloop.data.sources import read_partition

    names = list(config.features)
    out: list[dict[str, Any]] = []
    day = date.fromisoformat(AS_OF) - timedelta(days=1)
    while len(out) < n:
        frame = read_partition(config, day, settings)
        if frame is not None:
            for row in frame[names].to_dict(orient="records"):
                out.append({k: (None if isinstance(v, float) and math.isnan(v) else
                                v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        day -= timedelta(days=1)
    return out[:n]


def write_bodies(folder: Path, records: list[dict[str, Any]]) -> dict[tuple[str, str], Path]:
    """One file per (server kind, request kind): one JSON body per line."""
    batches = [records[i * BATCH:(i + 1) * BATCH] for i in range(BATCH_BODIES)]
    bodies = {
        ("ours", "single"): [json.dumps(r) for r in records[:SINGLE_BODIES]],
        ("ours", "batch"): [json.dumps({"records": b}) for b in batches],
        ("mlflow", "single"): [json.dumps({"dataframe_records": [r]}) for r in records[:SINGLE_BODIES]],
        ("mlflow", "batch"): [json.dumps({"dataframe_records": b}) for b in batches],
    }
    paths = {}
    for (server, kind), lines in bodies.items():
        paths[server, kind] = folder / f"bodies-{server}-{kind}.jsonl"
        paths[server, kind].write_text("\n".join(lines) + "\n")
    return paths


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms), completed requests and errors from ``wrk --latency``."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": requests, "errors": errors}


def run_wrk(url: str, bodies: Path, script: Path, seconds: int) -> dict[str, float]:
    """One closed-loop wrk run (1 thread, CONNECTIONS connections); raise on any failed request."""
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_PATH": urllib.parse.urlsplit(url).path}
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, env=env, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    figures = parse_wrk(out.stdout)
    if figures["errors"]:
        raise RuntimeError(f"{figures['errors']} failed requests against {url}:\n{out.stdout}")
    return figures


def logger_stats(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/health", timeout=10).json()["prediction_log"]


def wait_drained(url: str, seconds: float = 300) -> float:
    """Seconds until the server's prediction logger has an empty queue and no spool files."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        stats = logger_stats(url)
        if stats["queue_depth"] == 0 and stats["spool_files"] == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"prediction log not drained within {seconds:.0f} s: {logger_stats(url)}")


def ours_argv(port: int, factory: str = "airloop.serving.app:create_app") -> list[str]:
    """uvicorn on our serving app, with the options of ``airloop.cli.commands.serving_argv`` (1 worker, no access log)."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", str(ROOT / "benchmarks"),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]


def start_servers(folder: Path, model: str, version: str) -> tuple[dict[str, str], list[subprocess.Popen]]:
    """Start ours (logging on and off) and mlflow models serve; wait until each answers."""
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for name in ("ours", "ours_off", "mlflow"):
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            env = dict(os.environ)
            if name == "mlflow":
                argv = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                        f"models:/{model}/{version}", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                        "-w", "1"]
                env |= {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true", "UVICORN_ACCESS_LOG": "false",
                        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],  # it execs `uvicorn` from PATH:
                        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
            else:
                argv = ours_argv(port, "serving:app_without_logging" if name == "ours_off" else "airloop.serving.app:create_app")
            procs[name] = start_group(argv, folder / f"{name}.log", env)
        for name, url in urls.items():
            wait_http(f"{url}/ping" if name == "mlflow" else f"{url}/ready", procs[name], seconds=180)
    except Exception:
        stop_group(list(procs.values()))
        raise
    return urls, list(procs.values())


def check_answers(urls: dict[str, str], records: list[dict[str, Any]]) -> None:
    """Both servers answer the same batch with the same probabilities (and ours with one item per record)."""
    import httpx

    batch = records[:BATCH]
    ours = httpx.post(f"{urls['ours']}/predict", json={"records": batch}, timeout=30).raise_for_status().json()
    theirs = httpx.post(f"{urls['mlflow']}/invocations", json={"dataframe_records": batch},
                        timeout=30).raise_for_status().json()
    # the registered model's pyfunc answers predict_proba (the signature's outputs): compare the
    # positive-class probability with ours
    scores = [p["score"] for p in ours["predictions"]]
    positive = [row[-1] for row in theirs["predictions"]]
    if len(scores) != len(positive) or any(abs(a - b) > 1e-9 for a, b in zip(scores, positive)):
        raise RuntimeError(f"ours and mlflow disagree: {scores[:5]} vs {positive[:5]}")
    log(f"answers agree on {len(batch)} records; ours per record: {sorted(ours['predictions'][0])}")


PROFILED = """
import cProfile, signal, sys, uvicorn
out = sys.argv[1]
profile = cProfile.Profile()
def stop(*_):  # uvicorn re-raises SIGTERM after its graceful shutdown: dump, then exit
    profile.disable()
    profile.dump_stats(out)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())  # after start-up and a warm-up
uvicorn.main(sys.argv[2:])
"""


def profile_ours(folder: Path, bodies: Path, script: Path, seconds: int) -> None:
    """Ours (logging on; the same uvicorn options) under cProfile for one
    single-record run (not measured: cProfile slows it); top functions on stderr."""
    import pstats

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = folder / "ours.prof"
    proc = start_group([sys.executable, "-c", PROFILED, str(out), *ours_argv(port)[3:]], folder / "ours-profile.log")
    try:
        wait_http(f"{url}/ready", proc, seconds=180)
        run_wrk(f"{url}/predict", bodies, script, WARMUP_S)
        os.kill(proc.pid, signal.SIGUSR1)
        log(f"under cProfile: {run_wrk(f'{url}/predict', bodies, script, seconds)}")
    finally:
        stop_group([proc])
    stats = pstats.Stats(str(out), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(45)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    p.add_argument("--profile", action="store_true", help="also profile ours under cProfile (stderr)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    with session("serving", keep=args.keep) as folder:
        import sqlalchemy as sa

        from airloop.core import store
        from airloop.core.pipeline import load_pipeline_config

        settings = use_state(folder / "state")
        write_demo_history(settings)
        config = load_pipeline_config(PIPELINE, settings)
        out, _ = plain_training(config, AS_OF, settings, n_trials=3, force=True, run_id="champion")
        version = str(out["register"]["version"])
        records = claim_records(settings, config, max(SINGLE_BODIES, BATCH * BATCH_BODIES))
        bodies = write_bodies(folder, records)
        script = folder / "post.lua"
        script.write_text(LUA)
        urls, procs = start_servers(folder, out["register"]["model_name"], version)
        try:
            import httpx

            described = httpx.get(f"{urls['ours']}/model", timeout=10).json()
            log(f"serving {PIPELINE} v{version}: {described['tags'].get('airloop.estimator')}")
            check_answers(urls, records)
            targets = {name: (f"{url}/invocations" if name == "mlflow" else f"{url}/predict")
                       for name, url in urls.items()}
            answered = 0
            runs: dict[tuple[str, str], list[dict[str, float]]] = {}
            order = list(urls)
            for round_ in range(args.repeats + 1):  # round 0: warm-up, excluded
                seconds = WARMUP_S if round_ == 0 else args.duration
                for name in order:
                    for kind in ("single", "batch"):
                        figures = run_wrk(targets[name], bodies["mlflow" if name == "mlflow" else "ours", kind],
                                          script, seconds)
                        if name == "ours":
                            answered += figures["requests"] * (BATCH if kind == "batch" else 1)
                            figures["drain_s"] = wait_drained(urls["ours"])
                        if round_:
                            runs.setdefault((name, kind), []).append(figures)
                        log(f"{'warm-up' if not round_ else f'round {round_}'} {name} {kind}: {figures}")
                order = order[1:] + order[:1]
            stats = logger_stats(urls["ours"])
        finally:
            stop_group(procs)
        engine = store.get_engine(settings.monitoring_db_uri)
        with engine.connect() as conn:
            logged = conn.execute(sa.select(sa.func.count()).select_from(store.predictions)).scalar_one()
        if args.profile:
            profile_ours(folder, bodies["ours", "single"], script, args.duration)

    def fig(name: str, kind: str, key: str) -> float:
        return median([r[key] for r in runs[name, kind]])

    figures: dict[str, Any] = {"benchmark": "serving", "model_version": version,
                               "model": described["tags"].get("airloop.estimator")}
    for kind, prefix in (("single", ""), ("batch", "batch_")):
        ours, off, theirs = fig("ours", kind, "rps"), fig("ours_off", kind, "rps"), fig("mlflow", kind, "rps")
        figures |= {
            f"{prefix}ours_rps": ours, f"{prefix}mlflow_rps": theirs, f"{prefix}ratio": round(ours / theirs, 2),
            f"{prefix}ours_p50_ms": fig("ours", kind, "p50_ms"), f"{prefix}ours_p99_ms": fig("ours", kind, "p99_ms"),
            f"{prefix}mlflow_p50_ms": fig("mlflow", kind, "p50_ms"),
            f"{prefix}mlflow_p99_ms": fig("mlflow", kind, "p99_ms"),
            f"{prefix}logging_overhead": round(1 - ours / off, 3),
            f"{prefix}ours_off_rps": off, f"{prefix}ours_off_p99_ms": fig("ours_off", kind, "p99_ms"),
            f"{prefix}drain_s": fig("ours", kind, "drain_s"),
        }
    figures |= {"batch_ours_records_per_s": round(figures["batch_ours_rps"] * BATCH),
                "batch_mlflow_records_per_s": round(figures["batch_mlflow_rps"] * BATCH),
                "rows_logged": logged, "records_answered_by_ours": answered,
                "logger_dropped": stats.get("last_error"), "connections": CONNECTIONS,
                "duration_s": args.duration, "repeats": args.repeats, "load_generator": "wrk -t1 -c10",
                "workers": 1}
    emit(figures)


if __name__ == "__main__":
    main()
