"""Serving: our FastAPI app vs MLServer and ``mlflow models serve`` on the same registered model.

How: a fresh state folder gets the demo history and one champion trained by the real stages
(``plain_training``: extract, validate, a 3-trial Optuna study, evaluate, register, promote) in
an isolated MLflow store. Three servers then run side by side, each one uvicorn worker:

* ``ours``: uvicorn on ``airloop.serving.app:create_app`` (the options of ``airloop.cli.commands.serving_argv``), prediction
  logging on (every record enqueued and written to the SQLite monitoring store by the logger
  thread);
* ``ours_off``: the same command on :func:`app_without_logging` (``create_app(log_predictions=False)``);
* ``mlserver``: MLServer 1.7.1 with ``mlserver-sklearn`` (Seldon's inference server) in its own
  virtual environment (``_common.bench_python``, cached under the state folder, scikit-learn
  pinned to ours): the version's ``model.skops`` loaded there (with the types its MLmodel
  trusts) and dumped as ``model.joblib``; adaptive batching on (``max_batch_size`` 100,
  ``max_batch_time`` 5 ms), ``parameters.extra.predict_fn`` ``predict_proba``, the V2 protocol
  (one input per column, ``content_type`` ``pd`` so the pipeline gets a DataFrame), default
  ``parallel_workers`` (1 inference worker);
* ``mlflow``: ``mlflow models serve -m models:/claims_fraud/<v> --env-manager local -w 1`` with
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`` (MLflow 3.17 refuses to load any sklearn flavour,
  skops included, without it; it then trusts the MLmodel's ``skops_trusted_types``) and
  ``UVICORN_ACCESS_LOG=false`` (ours runs with ``--no-access-log``; the same for both).

Load: ``wrk`` (a separate C process, ``apt-get install -y wrk``), 1 thread, 10 and 50 connections,
``--duration`` seconds (default 15) per run, cycling through the same real claims from the
demo data for both servers: single-record requests (ours: the record as the body; MLflow:
``{"dataframe_records": [record]}``; MLServer: one V2 input per column) and 100-record batches
(ours column-wise, ``{"columns": {feature: [...]}}``, as V2 carries them to MLServer; MLflow:
``{"dataframe_records": [...]}``). Ours also answers the same batches as ``{"records": [...]}``
at c=10 (``batch_records_ours_rps``, ``batch_records_ratio_vs_mlserver``). Every run must end with zero non-2xx answers and zero socket
errors. A 3-second warm-up of every server and kind runs first (excluded); then ``--repeats``
rounds, the server order rotated each round; figures are medians over rounds. After each run of
``ours`` the benchmark waits until the logger has written everything (its queue empty, nothing
spooled) so the next run is not slowed by the previous one's writes; that drain time is reported
(``drain_s``) and at the end the logged rows are counted against the answered records.

Answers differ in content: ours returns per record the label, the class probabilities and a
request id; MLflow's pyfunc returns the label only (``predict``), so ours does strictly more.

Fields (c=10 unless suffixed ``_c50``): ``ours_rps``, ``mlserver_rps``, ``mlflow_rps``,
``ratio_vs_mlserver``, ``ratio`` (vs mlflow), ``ours_p50_ms``, ``ours_p99_ms``, the peers' p50/p99,
``logging_overhead`` (1 - rps logging on / off) for single records; the same prefixed ``batch_``
for 100-record batches, where ``batch_ratio_vs_mlserver`` compares records/s; ``ceiling_records_per_s``
(the estimator's own ``predict_proba`` on the same 100-record frames, in-process, no HTTP) and
``ceiling_fraction`` (ours' batch records/s over it); ``rows_lost`` = max(0, records answered by
ours - rows logged; ours_thread's records count too). Ours is called with the session's admin
token. ``ours`` writes its prediction log from a writer process (the default since 2026-12-04,
:mod:`airloop.serving.predlog_process`); ``ours_thread`` is the same app with the writer as a
thread of the serving process (``AIRLOOP_PREDLOG_PROCESS=0``), measured at c=10 for single
records and batches (``ours_thread_rps``, ``batch_ours_thread_rps``, ``thread_ratio_vs_mlserver``,
``batch_thread_ratio_vs_mlserver``, ``*thread_logging_overhead``). Targets: ratio_vs_mlserver
>= 2.5, batch_ratio_vs_mlserver >= 1.2, ours_p99_ms <= 25, batch_logging_overhead <= 15 %,
rows_lost 0.

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
    bench_python,
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
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then headers["Authorization"] = auth end
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then headers["Authorization"] = auth end
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


#: MLflow column type -> V2 datatype (strings travel as BYTES).
V2_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
            "string": "BYTES"}


def v2_body(records: list[dict[str, Any]], columns: list[tuple[str, str]]) -> dict[str, Any]:
    """A V2 inference request of ``records``: one input per signature column, decoded by MLServer
    into a DataFrame (``content_type`` ``pd``) as the pipeline was fitted on."""
    return {"parameters": {"content_type": "pd"},
            "inputs": [{"name": name, "datatype": V2_TYPES[kind], "shape": [len(records)],
                        "data": [r.get(name) for r in records]} for name, kind in columns]}


def write_bodies(folder: Path, records: list[dict[str, Any]], columns: list[tuple[str, str]]
                 ) -> dict[tuple[str, str], Path]:
    """One file per (server kind, request kind): one JSON body per line."""
    batches = [records[i * BATCH:(i + 1) * BATCH] for i in range(BATCH_BODIES)]
    bodies = {
        ("ours", "single"): [json.dumps(r) for r in records[:SINGLE_BODIES]],
        # ours' batches column-wise ({"columns": {feature: [...]}}, as V2 sends them to MLServer);
        # the same records as {"records": [...]} too (batch_records_*)
        ("ours", "batch"): [json.dumps({"columns": {name: [r.get(name) for r in b] for name in b[0]}})
                            for b in batches],
        ("ours", "batch_records"): [json.dumps({"records": b}) for b in batches],
        ("mlflow", "single"): [json.dumps({"dataframe_records": [r]}) for r in records[:SINGLE_BODIES]],
        ("mlflow", "batch"): [json.dumps({"dataframe_records": b}) for b in batches],
        ("mlserver", "single"): [json.dumps(v2_body([r], columns)) for r in records[:SINGLE_BODIES]],
        ("mlserver", "batch"): [json.dumps(v2_body(b, columns)) for b in batches],
    }
    paths = {}
    for (server, kind), lines in bodies.items():
        paths[server, kind] = folder / f"bodies-{server}-{kind}.jsonl"
        paths[server, kind].write_text("\n".join(lines) + "\n")
    return paths


def body_kind(server: str) -> str:
    """Which bodies a server takes (ours with or without logging: the same)."""
    return server if server in ("mlflow", "mlserver") else "ours"


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


def run_wrk(url: str, bodies: Path, script: Path, seconds: int, connections: int = CONNECTIONS,
            auth: str | None = None) -> dict[str, float]:
    """One closed-loop wrk run (1 thread, ``connections`` connections); raise on any failed request."""
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_PATH": urllib.parse.urlsplit(url).path,
           "BENCH_AUTH": auth or ""}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, env=env, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    figures = parse_wrk(out.stdout)
    if figures["errors"]:
        raise RuntimeError(f"{figures['errors']} failed requests against {url}:\n{out.stdout}")
    return figures


def bearer() -> str:
    """The ``Authorization`` header of the session's admin token (ours may require a token on /predict)."""
    return f"Bearer {os.environ['AIRLOOP_ADMIN_TOKEN']}"


def logger_stats(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/health", headers={"Authorization": bearer()}, timeout=10).json()["prediction_log"]


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


def mlserver_requirements() -> list[str]:
    """MLServer's own venv: its pins, with scikit-learn, joblib and skops equal to ours (the
    same estimator code runs in both servers)."""
    from importlib.metadata import version

    return ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0",
            *(f"{name}=={version(name)}" for name in ("scikit-learn", "joblib", "skops"))]


#: Run by MLServer's interpreter: the skops artefact (only the types its MLmodel trusts) -> joblib.
EXPORT_JOBLIB = """
import json, sys, joblib, skops.io as sio
src, dst, trusted = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
joblib.dump(sio.load(src, trusted=trusted), dst)
"""


def mlserver_folder(folder: Path, python: Path, model_uri: str, port: int, workers: int = 1) -> Path:
    """MLServer's model repository: the version's estimator as ``model.joblib`` and its settings
    (adaptive batching, ``predict_proba``), plus server settings on free loopback ports."""
    import mlflow.artifacts
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "mlserver-artifact")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["sklearn"]
    trusted = flavor.get("skops_trusted_types") or []
    repo = folder / "mlserver"
    (repo / "champion").mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-c", EXPORT_JOBLIB, str(local / flavor["pickled_model"]),
                    str(repo / "champion" / "model.joblib"), json.dumps(trusted)], check=True)
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "debug": False, "parallel_workers": workers}))
    (repo / "champion" / "model-settings.json").write_text(json.dumps({
        "name": "champion", "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": BATCH, "max_batch_time": 0.005,
        "parameters": {"uri": "./model.joblib", "extra": {"predict_fn": "predict_proba"}}}))
    return repo


SERVERS = ("ours", "ours_off", "mlserver", "mlflow")
#: Also measured (single records and batches at c=10): ours with the prediction log's writer as a
#: thread of the serving process (``AIRLOOP_PREDLOG_PROCESS=0``, before 2026-12-04) instead of a process.
EXTRA = ("ours_thread",)


def start_servers(folder: Path, model: str, version: str, mlserver_python: Path, mlserver_workers: int = 1
                  ) -> tuple[dict[str, str], list[subprocess.Popen]]:
    """Start ours (logging on and off), MLServer and mlflow models serve; wait until each answers."""
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    ready = {"mlflow": "/ping", "mlserver": "/v2/models/champion/ready"}
    try:
        for name in SERVERS + EXTRA:
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
            elif name == "mlserver":
                repo = mlserver_folder(folder, mlserver_python, f"models:/{model}/{version}", port, mlserver_workers)
                argv = [str(mlserver_python.with_name("mlserver")), "start", str(repo)]
                env = {k: v for k, v in env.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
                env["PATH"] = os.pathsep.join((str(mlserver_python.parent), env.get("PATH", "")))
            else:
                argv = ours_argv(port, "serving:app_without_logging" if name == "ours_off" else "airloop.serving.app:create_app")
                if name == "ours_thread":
                    env["AIRLOOP_PREDLOG_PROCESS"] = "0"
            procs[name] = start_group(argv, folder / f"{name}.log", env)
        for name, url in urls.items():
            # MLServer answers 400 until its inference worker loaded the model
            wait_http(f"{url}{ready.get(name, '/ready')}", procs[name], seconds=180,
                      ok_below=300 if name == "mlserver" else 500)
    except Exception:
        stop_group(list(procs.values()))
        raise
    return urls, list(procs.values())


def targets_of(urls: dict[str, str]) -> dict[str, str]:
    """The predict URL of each server."""
    paths = {"mlflow": "/invocations", "mlserver": "/v2/models/champion/infer"}
    return {name: f"{url}{paths.get(name, '/predict')}" for name, url in urls.items()}


def check_answers(urls: dict[str, str], records: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Every server answers the same batch with the same positive-class probabilities (ours with
    one item per record)."""
    import httpx

    batch = records[:BATCH]
    targets = targets_of(urls)
    ours = httpx.post(targets["ours"], json={"records": batch}, headers={"Authorization": bearer()},
                      timeout=30).raise_for_status().json()
    theirs = httpx.post(targets["mlflow"], json={"dataframe_records": batch}, timeout=30).raise_for_status().json()
    v2 = httpx.post(targets["mlserver"], json=v2_body(batch, columns), timeout=30).raise_for_status().json()
    # the registered model's pyfunc answers predict_proba (the signature's outputs); MLServer's
    # predict_proba output is the flattened [n, classes] array: compare the positive class with ours
    scores = [list(p["probabilities"].values())[-1] for p in ours["predictions"]]  # classes_ order, as theirs
    positive = [row[-1] for row in theirs["predictions"]]
    output = v2["outputs"][0]
    width = output["shape"][-1]
    served = output["data"][width - 1::width]
    for peer, values in (("mlflow", positive), ("mlserver", served)):
        if len(scores) != len(values) or any(abs(a - b) > 1e-9 for a, b in zip(scores, values)):
            raise RuntimeError(f"ours and {peer} disagree: {scores[:5]} vs {values[:5]}")
    log(f"answers agree on {len(batch)} records; ours per record: {sorted(ours['predictions'][0])}")


def model_ceiling(model_uri: str, records: list[dict[str, Any]], seconds: float = 3.0) -> float:
    """Records/s of the estimator's own ``predict_proba`` on the benchmark's 100-record frames,
    in this process (no HTTP, no validation): the most any server of this model can answer."""
    from airloop.models.artifact import load_model_dir
    import mlflow.artifacts

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp)
        estimator, schema, _ = load_model_dir(local)
    frames = [schema.to_frame(schema.validate(records[i * BATCH:(i + 1) * BATCH])) for i in range(BATCH_BODIES)]
    estimator.predict_proba(frames[0])  # warm
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for frame in frames:
            estimator.predict_proba(frame)
            done += len(frame)
    return done / (time.perf_counter() - started)


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
    """Ours (logging on; the same uvicorn options) under cProfile for one run of ``bodies``
    (not measured: cProfile slows it); top functions on stderr."""
    import pstats

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = folder / "ours.prof"
    proc = start_group([sys.executable, "-c", PROFILED, str(out), *ours_argv(port)[3:]], folder / "ours-profile.log")
    try:
        wait_http(f"{url}/ready", proc, seconds=180)
        run_wrk(f"{url}/predict", bodies, script, WARMUP_S, auth=bearer())
        os.kill(proc.pid, signal.SIGUSR1)
        log(f"under cProfile: {run_wrk(f'{url}/predict', bodies, script, seconds, auth=bearer())}")
    finally:
        stop_group([proc])
    stats = pstats.Stats(str(out), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(45)


#: Connections of the measured runs: the targets are at CONNECTIONS; 50 shows the behaviour under more load.
LOADS = (CONNECTIONS, 50)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    p.add_argument("--profile", action="store_true", help="also profile ours under cProfile (stderr)")
    p.add_argument("--profile-kind", choices=("single", "batch"), default="batch",
                   help="the request kind profiled (default batch)")
    p.add_argument("--mlserver-workers", type=int, default=1,
                   help="MLServer's parallel_workers (default 1, its default: HTTP in the main process, inference "
                        "in one worker process; 0: everything in one process, like ours)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    mlserver_python = bench_python("mlserver", mlserver_requirements())  # once, under the state folder
    with session("serving", keep=args.keep) as folder:
        import sqlalchemy as sa

        from airloop.core import store
        from airloop.core.pipeline import load_pipeline_config
        from airloop.models.schema import signature_inputs

        settings = use_state(folder / "state")
        write_demo_history(settings)
        config = load_pipeline_config(PIPELINE, settings)
        out, _ = plain_training(config, AS_OF, settings, n_trials=3, force=True, run_id="champion")
        model_name, version = out["register"]["model_name"], str(out["register"]["version"])
        columns = [(spec.name, spec.type.name) for spec in signature_inputs(config).inputs]
        records = claim_records(settings, config, max(SINGLE_BODIES, BATCH * BATCH_BODIES))
        bodies = write_bodies(folder, records, columns)
        script = folder / "post.lua"
        script.write_text(LUA)
        ceiling = model_ceiling(f"models:/{model_name}/{version}", records)
        log(f"model ceiling: {ceiling:.0f} records/s (predict_proba on 100-record frames, in-process)")
        urls, procs = start_servers(folder, model_name, version, mlserver_python, args.mlserver_workers)
        try:
            import httpx

            described = httpx.get(f"{urls['ours']}/model", headers={"Authorization": bearer()}, timeout=10).json()
            log(f"serving {PIPELINE} v{version}: {described['tags'].get('airloop.estimator')}")
            check_answers(urls, records, columns)
            targets = targets_of(urls)
            answered = 0
            runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
            order = list(urls)
            for round_ in range(args.repeats + 1):  # round 0: warm-up, excluded
                seconds = WARMUP_S if round_ == 0 else args.duration
                for name in order:
                    for kind in ("single", "batch", "batch_records") if name == "ours" else ("single", "batch"):
                        extra = name in EXTRA or kind == "batch_records"
                        for connections in LOADS if round_ and not extra else (CONNECTIONS,):
                            figures = run_wrk(targets[name], bodies[body_kind(name), kind], script, seconds,
                                              connections, auth=bearer() if name.startswith("ours") else None)
                            if name in ("ours", "ours_thread"):
                                answered += figures["requests"] * (BATCH if kind.startswith("batch") else 1)
                                figures["drain_s"] = wait_drained(urls[name])
                            if round_:
                                runs.setdefault((name, kind, connections), []).append(figures)
                            log(f"{'warm-up' if not round_ else f'round {round_}'} {name} {kind} "
                                f"c={connections}: {figures}")
                order = order[1:] + order[:1]
            stats = logger_stats(urls["ours"])
        finally:
            stop_group(procs)
        engine = store.get_engine(settings.monitoring_db_uri)
        with engine.connect() as conn:
            logged = conn.execute(sa.select(sa.func.count()).select_from(store.predictions)).scalar_one()
        if args.profile:
            profile_ours(folder, bodies["ours", args.profile_kind], script, args.duration)

    def fig(name: str, kind: str, key: str, connections: int = CONNECTIONS) -> float:
        return median([r[key] for r in runs[name, kind, connections]])

    figures: dict[str, Any] = {"benchmark": "serving", "model_version": version,
                               "model": described["tags"].get("airloop.estimator")}
    for connections in LOADS:
        suffix = "" if connections == CONNECTIONS else f"_c{connections}"
        for kind, prefix in (("single", ""), ("batch", "batch_")):
            rps = {name: fig(name, kind, "rps", connections) for name in SERVERS}
            ratio_key = "batch_ratio_vs_mlserver" if kind == "batch" else "ratio_vs_mlserver"
            figures |= {
                f"{prefix}ours_rps{suffix}": rps["ours"], f"{prefix}mlserver_rps{suffix}": rps["mlserver"],
                f"{prefix}mlflow_rps{suffix}": rps["mlflow"],
                # batches: records/s, the same factor as req/s (every batch holds BATCH records)
                f"{ratio_key}{suffix}": round(rps["ours"] / rps["mlserver"], 2),
                f"{prefix}ratio{suffix}": round(rps["ours"] / rps["mlflow"], 2),
                f"{prefix}ours_p50_ms{suffix}": fig("ours", kind, "p50_ms", connections),
                f"{prefix}ours_p99_ms{suffix}": fig("ours", kind, "p99_ms", connections),
                f"{prefix}mlserver_p50_ms{suffix}": fig("mlserver", kind, "p50_ms", connections),
                f"{prefix}mlserver_p99_ms{suffix}": fig("mlserver", kind, "p99_ms", connections),
                f"{prefix}mlflow_p50_ms{suffix}": fig("mlflow", kind, "p50_ms", connections),
                f"{prefix}mlflow_p99_ms{suffix}": fig("mlflow", kind, "p99_ms", connections),
                f"{prefix}logging_overhead{suffix}": round(1 - rps["ours"] / rps["ours_off"], 3),
                f"{prefix}ours_off_rps{suffix}": rps["ours_off"],
                f"{prefix}ours_off_p99_ms{suffix}": fig("ours_off", kind, "p99_ms", connections),
                f"{prefix}drain_s{suffix}": fig("ours", kind, "drain_s", connections),
            }
        figures |= {f"batch_ours_records_per_s{suffix}": round(figures[f"batch_ours_rps{suffix}"] * BATCH),
                    f"batch_mlserver_records_per_s{suffix}": round(figures[f"batch_mlserver_rps{suffix}"] * BATCH),
                    f"batch_mlflow_records_per_s{suffix}": round(figures[f"batch_mlflow_rps{suffix}"] * BATCH)}
    for kind, prefix in (("single", ""), ("batch", "batch_")):
        thread_rps = fig("ours_thread", kind, "rps")
        figures |= {f"{prefix}ours_thread_rps": thread_rps, f"{prefix}ours_thread_p99_ms": fig("ours_thread", kind, "p99_ms"),
                    f"{prefix}thread_ratio_vs_mlserver": round(thread_rps / figures[f"{prefix}mlserver_rps"], 2),
                    f"{prefix}thread_logging_overhead": round(1 - thread_rps / figures[f"{prefix}ours_off_rps"], 3)}
    records_rps = fig("ours", "batch_records", "rps")
    figures |= {"batch_records_ours_rps": records_rps, "batch_records_ours_p99_ms": fig("ours", "batch_records", "p99_ms"),
                "batch_records_ratio_vs_mlserver": round(records_rps / figures["batch_mlserver_rps"], 2)}
    figures |= {"mlserver_rps": figures["mlserver_rps"],  # (named by the issue: single records, c=10)
                "ceiling_records_per_s": round(ceiling),
                "ceiling_fraction": round(figures["batch_ours_records_per_s"] / ceiling, 3),
                "rows_logged": logged, "records_answered_by_ours": answered,
                "rows_lost": max(0, answered - logged), "logger_last_error": stats.get("last_error"),
                "connections": list(LOADS), "duration_s": args.duration, "repeats": args.repeats,
                "load_generator": "wrk -t1", "workers": 1, "mlserver_parallel_workers": args.mlserver_workers, "load_1m_at_end": round(os.getloadavg()[0], 2)}
    emit(figures)


if __name__ == "__main__":
    main()
