"""Faults under load on the production profile: PostgreSQL crashes while wrk drives ``/predict``.

Serving runs as its own process (uvicorn on ``airloop.serving.app:create_app``) with its
monitoring store on a private PostgreSQL 15 cluster (:mod:`tests.reliability.pgcluster`) and the
champion of a throw-away MLflow store (the ``registry`` fixture of the serving unit tests: real
scikit-learn models logged and registered as training does). wrk (:mod:`tests.reliability.load`)
sends one fresh request id per request at c=50 and keeps the id of every 2xx answer, so every
answered prediction can be looked up in PostgreSQL afterwards.

* :func:`test_pg_crash_under_load_loses_and_duplicates_nothing`: for ``AIRLOOP_OUTAGE_SECONDS``
  (CI 20, full size 60) of load, PostgreSQL is stopped with ``pg_ctl stop -m immediate`` after a
  third of the run and started again a third later (``outage_s``, measured, also counts its crash
  recovery until it accepts connections again). Zero non-2xx, zero socket errors; after the logger drained,
  every answered request id is stored exactly once; the spool was used and fully replayed.
* :func:`test_serving_restart_while_pg_down_replays_the_spool`: load while PostgreSQL is down,
  serving stopped with SIGTERM (its queue goes to the spool), started again while PostgreSQL is
  still down, then PostgreSQL comes back: the new process replays the old one's spool.
* :func:`test_soak_memory_is_bounded`: ``AIRLOOP_SOAK_SECONDS`` (CI 60, full size 600) of load
  on the outage test's serving process (the same process, after its outage: one start-up less);
  serving's RSS sampled every 5 s after a 5 s warm-up; the last minute's peak stays within
  10 % or 50 MiB (whichever is larger) of the first minute's (a third of the run instead of a
  minute when it is shorter than three minutes).

Each test prints one ``PGOUTAGE {json}`` line with its figures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from airloop.ops.sandbox import state_environ
from tests.conftest import TENANT_TOKENS
from tests.reliability import pgcluster
from tests.reliability.load import RssSampler, ServingProcess, emit, metrics, mib, run_wrk, wait_drained
from tests.unit.serving.test_app import registry  # noqa: F401  (module fixture: a real MLflow registry)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not pgcluster.available(), reason="PostgreSQL 15 server binaries not installed"),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (make wrk)"),
]

OUTAGE_S = float(os.environ.get("AIRLOOP_OUTAGE_SECONDS", "20"))
SOAK_S = float(os.environ.get("AIRLOOP_SOAK_SECONDS", "60"))
CONNECTIONS = 50
TOKEN = TENANT_TOKENS["default"]
PIPELINE = "claims_fraud"


@pytest.fixture(scope="module")
def pg():
    """The module's private PostgreSQL cluster (crashed and restarted by the tests)."""
    with pgcluster.PgCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def bodies(registry):  # noqa: F811
    """Real claims as JSON records (NaN as null), one per line."""
    records = json.loads(registry.test_frame.to_json(orient="records"))
    return [json.dumps(r) for r in records]


@pytest.fixture
def deployment(registry, pg, tmp_path):  # noqa: F811
    """The environment of a serving process: its own state folder, the registry's champion, the
    monitoring store on ``pg``; yields ``(env, state folder)``; PostgreSQL is left running."""
    state = tmp_path / "state"
    env = {**os.environ, **state_environ(state), "MLFLOW_TRACKING_URI": registry.uri,
           "AIRLOOP_MONITORING_DB_URI": pg.uri()}
    yield env, state
    if not pg.running():
        pg.start()


@pytest.fixture(scope="module")
def shared_serving(registry, pg, tmp_path_factory):  # noqa: F811
    """One serving process (PostgreSQL up at start) for the outage test and then the soak, which
    so measures the memory of a process that went through an outage: ``(serving, state)``."""
    folder = tmp_path_factory.mktemp("pg-outage-serving")
    state = folder / "state"
    env = {**os.environ, **state_environ(state), "MLFLOW_TRACKING_URI": registry.uri,
           "AIRLOOP_MONITORING_DB_URI": pg.uri()}
    serving = ServingProcess(env, folder / "serving.log", TOKEN).start()
    try:
        yield serving, state
    finally:
        serving.terminate()
        if not pg.running():
            pg.start()


def counter_delta(after: dict[str, float], before: dict[str, float], name: str) -> int:
    return int(after.get(name, 0) - before.get(name, 0))


def spool_folder(state: Path) -> Path:
    return state / "spool" / PIPELINE


def spool_rows(state: Path) -> tuple[int, int]:
    """(rows in spool files waiting for replay, rows rejected) under the pipeline's spool folder."""
    folder = spool_folder(state)
    waiting = sum(len(p.read_text().splitlines()) for p in folder.glob("*.jsonl")) if folder.exists() else 0
    rejected = sum(len(p.read_text().splitlines()) for p in (folder / "rejected").glob("*.jsonl")) \
        if (folder / "rejected").exists() else 0
    return waiting, rejected


def stored_ids(uri: str, prefix: str) -> dict[str, int]:
    """``{request_id: rows}`` of the logged predictions whose request id starts with ``prefix``."""
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT request_id, count(*) FROM predictions WHERE pipeline = :p AND request_id LIKE :prefix "
                "GROUP BY request_id"), {"p": PIPELINE, "prefix": prefix + "-%"}).all()
    finally:
        engine.dispose()
    return {r[0]: r[1] for r in rows}


def check_logged(answered: list[str], stored: dict[str, int], prefix: str) -> dict[str, int]:
    """Lost (answered, not stored), duplicated (stored twice) and extra (stored, answer not seen
    by wrk: requests in flight when it stopped) rows; asserts none lost or duplicated."""
    answered_set = set(answered)
    assert len(answered_set) == len(answered), "wrk saw a request id answered twice"
    lost = sorted(answered_set - stored.keys())
    duplicates = sum(n - 1 for n in stored.values() if n > 1)
    extra = len(stored.keys() - answered_set)
    assert not lost, f"{len(lost)} answered predictions not logged, e.g. {lost[:5]}"
    assert duplicates == 0
    assert extra <= CONNECTIONS, f"{extra} logged request ids that no answer carried ({prefix})"
    return {"rows_logged": len(stored), "lost": len(lost), "duplicates": duplicates, "rows_in_flight": extra}


def check_wrk(result) -> None:
    assert result.non_2xx == 0, result.output
    assert result.errors == 0, f"socket errors {result.socket_errors}:\n{result.output}"
    assert result.unparsed == 0
    assert result.ok == result.requests, (result.ok, result.requests)


def test_pg_crash_under_load_loses_and_duplicates_nothing(shared_serving, pg, bodies, tmp_path):
    serving, state = shared_serving
    before = metrics(serving.url)
    try:
        outcome: dict = {}

        def load() -> None:
            try:
                outcome["result"] = run_wrk(serving.url + "/predict", tmp_path / "wrk", bodies, TOKEN, OUTAGE_S,
                                            connections=CONNECTIONS, prefix="outage")
            except BaseException as err:  # reported by the test's thread
                outcome["error"] = err

        wrk = threading.Thread(target=load)
        started = time.monotonic()
        wrk.start()
        time.sleep(OUTAGE_S / 3)
        down_at = time.monotonic()
        pg.crash()
        time.sleep(max(0.0, OUTAGE_S / 3 - (time.monotonic() - down_at)))
        pg.start()
        outage = time.monotonic() - down_at
        wrk.join(OUTAGE_S + 180)
        if "error" in outcome:
            raise outcome["error"]
        assert "result" in outcome, "wrk did not finish"
        result = outcome["result"]
        load_s = time.monotonic() - started
        drain_s, counters = wait_drained(serving.url, 180)
        rss_end = serving_rss(serving)
    finally:
        if not pg.running():
            pg.start()
    waiting, rejected = spool_rows(state)
    figures = {"requests": result.requests, "2xx": result.ok, "non_2xx": result.non_2xx,
               "socket_errors": result.errors, "rps": result.rps, "load_s": round(load_s, 1),
               "outage_s": round(outage, 1), "drain_s": round(drain_s, 1),
               "spooled": counter_delta(counters, before, "rows_spooled"),
               "replayed": counter_delta(counters, before, "rows_replayed"),
               "replay_duplicates": counter_delta(counters, before, "rows_duplicate"), "rejected": rejected,
               "dropped": counter_delta(counters, before, "rows_dropped"),
               "write_errors": counter_delta(counters, before, "write_errors"),
               "spool_rows_left": waiting, "rss_end_mib": rss_end}
    try:
        check_wrk(result)
        figures |= check_logged(result.answered_ids, stored_ids(pg.uri(), "outage"), "outage")
        assert figures["spooled"] > 0, "PostgreSQL was down but nothing was spooled"
        assert figures["replayed"] == figures["spooled"]
        assert waiting == 0 and rejected == 0 and figures["dropped"] == 0
    finally:
        emit("pg_crash_under_load", figures)


def serving_rss(serving: ServingProcess) -> float:
    import psutil

    return mib(psutil.Process(serving.pid).memory_info().rss)


def test_serving_restart_while_pg_down_replays_the_spool(deployment, pg, bodies, tmp_path):
    env, state = deployment
    seconds = max(3.0, OUTAGE_S / 3)
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    first = ServingProcess(env, tmp_path / "serving-1.log", TOKEN).start()
    phase("start_1")
    second = None
    exit_code = None
    try:
        before = run_wrk(first.url + "/predict", tmp_path / "wrk", bodies, TOKEN, 2, connections=CONNECTIONS,
                         prefix="restart-a")  # PostgreSQL up
        pg.crash()
        during = run_wrk(first.url + "/predict", tmp_path / "wrk", bodies, TOKEN, seconds,
                         connections=CONNECTIONS, prefix="restart-b")  # PostgreSQL down
        first_counters = metrics(first.url)
        rss_start = serving_rss(first)
        phase("load_1")
        exit_code = first.terminate()
        phase("sigterm_1")
        spooled_at_restart, _ = spool_rows(state)
        second = ServingProcess(env, tmp_path / "serving-2.log", TOKEN).start()  # PostgreSQL still down
        phase("start_2")
        time.sleep(1.0)
        assert metrics(second.url)["rows_replayed"] == 0
        pg.start()
        phase("pg_start")
        after = run_wrk(second.url + "/predict", tmp_path / "wrk", bodies, TOKEN, 2, connections=CONNECTIONS,
                        prefix="restart-c")  # PostgreSQL up again
        phase("load_2")
        drain_s, counters = wait_drained(second.url, 180)
        rss_end = serving_rss(second)
    finally:
        first.terminate()
        if second is not None:
            second.terminate()
    waiting, rejected = spool_rows(state)
    results = (before, during, after)
    figures = {"requests": sum(r.requests for r in results), "2xx": sum(r.ok for r in results),
               "non_2xx": sum(r.non_2xx for r in results), "socket_errors": sum(r.errors for r in results),
               "outage_s": round(seconds, 1), "sigterm_exit": exit_code,
               "spooled": int(first_counters["rows_spooled"]), "spooled_at_restart": spooled_at_restart,
               "spooled_by_second": int(counters["rows_spooled"]),
               "replayed": int(counters["rows_replayed"]), "replay_duplicates": int(counters["rows_duplicate"]),
               "rejected": rejected, "spool_rows_left": waiting, "drain_s": round(drain_s, 1),
               "rss_start_mib": rss_start, "rss_end_mib": rss_end, "phases_s": phases}
    try:
        for result in results:
            check_wrk(result)
        figures |= {"rows_logged": 0, "lost": 0, "duplicates": 0, "rows_in_flight": 0}
        for prefix, result in zip(("restart-a", "restart-b", "restart-c"), results):
            part = check_logged(result.answered_ids, stored_ids(pg.uri(), prefix), prefix)
            figures = {**figures, **{k: figures[k] + part[k] for k in part}}
        assert exit_code in (0, -15), f"serving's SIGTERM shutdown exited with {exit_code}"  # uvicorn re-raises it
        assert spooled_at_restart > 0, "the first process left nothing in the spool"
        assert spooled_at_restart >= during.ok  # every answer of the outage, spooled by the first process
        # the second process replays the first one's spool, and the rows it spooled itself before
        # its own back-off let it see PostgreSQL again
        assert figures["replayed"] == spooled_at_restart + figures["spooled_by_second"], \
            "the second process did not replay the first one's spool"
        assert waiting == 0 and rejected == 0
    finally:
        emit("serving_restart_while_pg_down", figures)


def test_soak_memory_is_bounded(shared_serving, pg, bodies, tmp_path):
    serving, _ = shared_serving
    warmup_s = min(5.0, SOAK_S / 6)
    before = metrics(serving.url)
    run_wrk(serving.url + "/predict", tmp_path / "wrk", bodies, TOKEN, warmup_s, connections=CONNECTIONS,
            prefix="warmup")
    with RssSampler(serving.pid, interval_s=5.0) as sampler:
        result = run_wrk(serving.url + "/predict", tmp_path / "wrk", bodies, TOKEN, SOAK_S,
                         connections=CONNECTIONS, prefix="soak")
    drain_s, counters = wait_drained(serving.url, 180)
    samples = sampler.samples
    assert samples, "no RSS sample"
    window = min(60.0, SOAK_S / 3)  # a minute at full size; a third of a short run
    first = [rss for t, rss in samples if t <= window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    first_max, last_max = max(first), max(last)
    growth = last_max - first_max
    figures = {"requests": result.requests, "2xx": result.ok, "non_2xx": result.non_2xx,
               "socket_errors": result.errors, "rps": result.rps, "soak_s": SOAK_S, "samples": len(samples),
               "rss_start_mib": mib(samples[0][1]), "rss_end_mib": mib(samples[-1][1]),
               "rss_first_window_max_mib": mib(first_max), "rss_last_window_max_mib": mib(last_max),
               "rss_peak_mib": mib(max(r for _, r in samples)), "rss_growth_mib": mib(growth),
               "window_s": window, "spooled": counter_delta(counters, before, "rows_spooled"),
               "replayed": counter_delta(counters, before, "rows_replayed"), "drain_s": round(drain_s, 1),
               "outage_s": 0}
    try:
        check_wrk(result)
        figures |= check_logged(result.answered_ids, stored_ids(pg.uri(), "soak"), "soak")
        assert len(samples) >= 2, samples
        assert growth <= max(0.10 * first_max, 50 * 2**20), figures
        assert not math.isnan(result.rps)
    finally:
        emit("soak", figures)
