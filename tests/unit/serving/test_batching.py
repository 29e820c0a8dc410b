"""Micro-batching of concurrent ``/predict`` requests (airloop.serving.batching and its use in serving).

* :class:`~airloop.serving.batching.MicroBatcher` alone: concurrent items share one ``run`` call and each
  gets its own outcome (an exception only in its own caller); a lone item does not wait; a
  request marked incoming is waited for; ``max_records`` caps a batch and larger items run alone.
* Serving, against a real MLflow registry (v1 logistic regression champion, v2 gradient
  boosting) and a real SQLite monitoring store, with truly concurrent requests on one event loop
  (httpx over ASGI): a bad record only fails its own request (422), the others get exactly the
  predictions they get unbatched, their own request ids and log rows; a model failing on one
  request's records fails (or, for an A/B challenger, falls back for) that request only; a reload
  during a burst gives zero errors and every answer from one version.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from airloop.core import store
from airloop.core.settings import Settings
from airloop.experiments import evaluation, routing
from airloop.serving.app import create_app
from airloop.serving.batching import MicroBatcher
from airloop.serving.predict import BatchingConfig
from tests.unit.experiments.test_evaluation import START, TwoVersions, _table, two_versions  # noqa: F401 - the fixture
from tests.unit.serving.test_app import AUTH, _records, _settings

# --------------------------------------------------------------------------------------------
# MicroBatcher alone
# --------------------------------------------------------------------------------------------


def _recording_run(calls: list[list[Any]]):
    def run(items: list[int]) -> list[Any]:
        calls.append(list(items))
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]
    return run


def test_concurrent_items_share_one_run_and_get_their_own_outcomes() -> None:
    calls: list[list[Any]] = []

    async def main() -> list[Any]:
        batcher = MicroBatcher(_recording_run(calls), max_wait_s=0.5, max_records=64)
        try:
            return await asyncio.gather(*(batcher.submit(x, 1) for x in (1, 2, -3, 4)), return_exceptions=True)
        finally:
            await batcher.aclose()

    results = asyncio.run(main())
    assert results[0] == 10 and results[1] == 20 and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad -3"
    assert calls == [[1, 2, -3, 4]]


def test_a_lone_item_does_not_wait_and_an_incoming_request_is_waited_for() -> None:
    calls: list[list[Any]] = []

    async def main() -> tuple[float, float]:
        batcher = MicroBatcher(_recording_run(calls), max_wait_s=5.0, max_records=64)
        try:
            t0 = time.perf_counter()
            assert await batcher.submit(7, 1) == 70
            alone = time.perf_counter() - t0

            async def late(x: int) -> Any:
                with batcher.incoming():  # e.g. still reading its body
                    await asyncio.sleep(0.05)
                return await batcher.submit(x, 1)

            t0 = time.perf_counter()
            assert await asyncio.gather(batcher.submit(1, 1), late(2)) == [10, 20]
            return alone, time.perf_counter() - t0
        finally:
            await batcher.aclose()

    alone, together = asyncio.run(main())
    assert alone < 1.0 and together < 1.0  # far below max_wait_s
    assert calls == [[7], [1, 2]]


def test_a_batch_waits_for_clients_just_answered_but_not_longer_than_max_wait() -> None:
    """Closed-loop clients (one request at a time per connection): the clients a batch answered
    come back, and the next batch waits for them instead of leaving with the first to return, so
    two clients keep sharing every call although one of them thinks 30 ms after each answer. A
    lone client never waits (its own next request is its return); a client that never comes back
    is waited for at most ``max_wait_s``."""
    calls: list[list[Any]] = []

    def run(items: list[tuple[str, int]]) -> list[Any]:
        calls.append(sorted(items))
        time.sleep(0.005)  # the model call
        return [n for _, n in items]

    async def client(batcher: MicroBatcher, name: str, think_s: float, n: int) -> list[Any]:
        out = []
        for i in range(n):
            out.append(await batcher.submit((name, i), 1, source=(name, 1)))
            await asyncio.sleep(think_s)  # before its next request
        return out

    async def main() -> tuple[float, float]:
        batcher = MicroBatcher(run, max_wait_s=0.4, max_records=64)
        try:
            assert await asyncio.gather(client(batcher, "a", 0.0, 4), client(batcher, "b", 0.03, 4)) == [
                [0, 1, 2, 3], [0, 1, 2, 3]]
            await asyncio.sleep(0.5)  # both answered long ago: nobody is expected
            t0 = time.perf_counter()
            assert await client(batcher, "c", 0.0, 3) == [0, 1, 2]
            lone = time.perf_counter() - t0
            await asyncio.sleep(0.5)
            await client(batcher, "d", 0.0, 1)  # answered, never comes back
            t0 = time.perf_counter()
            await client(batcher, "e", 0.0, 1)
            return lone, time.perf_counter() - t0
        finally:
            await batcher.aclose()

    lone, after_gone = asyncio.run(main())
    pairs = calls[:4]
    assert pairs == [[("a", i), ("b", i)] for i in range(4)], calls
    assert lone < 0.3, lone  # three requests, none waited for max_wait_s
    assert 0.3 < after_gone < 1.5, after_gone  # waited for "d" until max_wait_s, then went alone
    assert calls[4:] == [[("c", 0)], [("c", 1)], [("c", 2)], [("d", 0)], [("e", 0)]]


def test_max_records_caps_a_batch_and_larger_items_run_alone() -> None:
    calls: list[list[Any]] = []
    sizes = {1: 2, 2: 2, 3: 5, 4: 1}

    async def main() -> list[Any]:
        batcher = MicroBatcher(_recording_run(calls), max_wait_s=0.5, max_records=3)
        try:
            return await asyncio.gather(*(batcher.submit(x, sizes[x]) for x in sizes))
        finally:
            await batcher.aclose()

    assert asyncio.run(main()) == [10, 20, 30, 40]
    assert sorted(map(sorted, calls)) == [[1], [2, 4], [3]]
    assert all(sum(sizes[x] for x in call) <= 3 for call in calls if len(call) > 1)


def test_a_failing_run_fails_each_item_and_the_batcher_keeps_working() -> None:
    def run(items: list[int]) -> list[Any]:
        if 0 in items:
            raise RuntimeError("boom")
        return list(items)

    async def main() -> list[Any]:
        batcher = MicroBatcher(run, max_wait_s=0.2, max_records=8)
        try:
            failed = await asyncio.gather(batcher.submit(0, 1), batcher.submit(5, 1), return_exceptions=True)
            return [*failed, await batcher.submit(6, 1)]
        finally:
            await batcher.aclose()

    first, second, after = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError) and after == 6


def test_batching_config_from_env() -> None:
    assert BatchingConfig.from_env({}) == BatchingConfig()
    config = BatchingConfig.from_env({"AIRLOOP_SERVING_BATCH_WAIT_MS": "0.5",
                                      "AIRLOOP_SERVING_BATCH_MAX_RECORDS": "1"})
    assert config == BatchingConfig(0.0005, 1)
    for bad in ({"AIRLOOP_SERVING_BATCH_WAIT_MS": "-1"}, {"AIRLOOP_SERVING_BATCH_MAX_RECORDS": "0"},
                {"AIRLOOP_SERVING_BATCH_WAIT_MS": "nan"}):
        with pytest.raises(ValueError):
            BatchingConfig.from_env(bad)


# --------------------------------------------------------------------------------------------
# Serving: truly concurrent requests on one event loop
# --------------------------------------------------------------------------------------------

WAIT = BatchingConfig(max_wait_s=0.25, max_records=64)


async def _serve(app: Any, scenario: Any) -> Any:
    """Run ``scenario(client)`` against ``app`` with its lifespan (model load, loggers) around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving", headers=AUTH) as client:
            return await scenario(client)


def _monitored(tmp_path: Path, tv: TwoVersions, rows: int) -> tuple[str, Settings, pd.DataFrame]:
    """A monitoring store URI, settings serving ``tv``'s registry, and ``rows`` feature rows."""
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, tv.uri, AIRLOOP_MONITORING_DB_URI=uri)
    return uri, settings, tv.frame[list(tv.config.features)].head(rows).copy()


def _proba(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """The fitted model's positive-class probabilities, called directly (no serving)."""
    return model.predict_proba(frame)[:, 1]


def test_concurrent_requests_are_answered_alone_by_one_model_call(tmp_path: Path, two_versions: TwoVersions) -> None:
    tv = two_versions
    uri, settings, frame = _monitored(tmp_path, tv, 20)
    records = _records(frame)
    bodies = [{"records": [r], "request_ids": [f"r{i}"], "rows": [i]} for i, r in enumerate(records[:15])]
    bodies.append({"records": records[15:18], "request_ids": ["m0", "m1", "m2"], "rows": [15, 16, 17]})
    bad = {"records": [dict(records[18], customer_age="old")], "request_ids": ["bad"]}
    app = create_app(settings, batching=WAIT)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
        together = await asyncio.gather(*(
            client.post("/predict", json={k: v for k, v in b.items() if k != "rows"}) for b in [*bodies, bad]))
        alone = [await client.post("/predict", json={"records": b["records"],
                                                     "request_ids": [f"alone-{x}" for x in b["request_ids"]]})
                 for b in bodies]
        assert app.state.prediction_logger.flush(10)
        return together, alone

    together, alone = asyncio.run(_serve(app, scenario))
    *good, refused = together
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "customer_age"
    for body, batched, single in zip(bodies, good, alone):
        assert batched.status_code == 200, batched.text
        items = batched.json()["predictions"]
        assert [p["request_id"] for p in items] == body["request_ids"]
        expected = _proba(tv.lr, frame.iloc[body["rows"]])
        np.testing.assert_allclose([p["probabilities"]["1"] for p in items], expected, rtol=0, atol=1e-12)
        assert [p["prediction"] for p in items] == [p["prediction"] for p in single.json()["predictions"]]
        np.testing.assert_allclose([p["probabilities"]["1"] for p in items],
                                   [p["probabilities"]["1"] for p in single.json()["predictions"]], rtol=0, atol=1e-12)
    stats = app.state.batcher.stats
    # 16 good requests at once, then 16 one by one (the bad one never reaches the batcher): the
    # burst shared model calls.
    assert stats.items == 2 * len(bodies) and stats.batches - len(bodies) <= 3, stats
    rows = _table(store.get_engine(uri), store.predictions)
    assert "bad" not in rows
    for body in bodies:
        for rid, record in zip(body["request_ids"], body["records"]):
            row = rows[rid]
            assert row["status"] == "ok" and row["model_version"] == "1" and row["variant"] == "champion"
            assert json.loads(row["features"]) == record
            assert row["latency_ms"] > 0
    assert len([r for r in rows.values() if not r["request_id"].startswith("alone-")]) == 18


def test_a_model_failing_on_one_request_fails_only_that_request(
    tmp_path: Path, two_versions: TwoVersions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion raises on any frame holding the poisoned record: the shared call fails, each
    request is predicted alone, and only the poisoned request answers 500 (with its error row).
    Under an A/B test the challenger raising on it makes only that request fall back."""
    tv = two_versions
    uri, settings, frame = _monitored(tmp_path, tv, 12)
    frame.loc[0, "claim_amount"] = 123456.5
    records = _records(frame)
    poison = records[0]
    app = create_app(settings, batching=WAIT)

    def poisoned(predict: Any) -> Any:
        def predict_or_fail(frame: pd.DataFrame) -> list[dict[str, Any]]:
            if (frame["claim_amount"] == poison["claim_amount"]).any():
                raise RuntimeError("poisoned record")
            return predict(frame)
        return predict_or_fail

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        predictor = app.state.manager.current.predictor
        monkeypatch.setattr(predictor, "predict", poisoned(predictor.predict))
        bodies = [{"records": [r], "request_ids": [f"ok{i}"]} for i, r in enumerate(records[1:])]
        responses = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies),
                                         client.post("/predict", json={"records": [poison], "request_ids": ["p"]}))
        assert app.state.prediction_logger.flush(10)
        return responses

    *good, failed = asyncio.run(_serve(app, scenario))
    assert failed.status_code == 500 and failed.json() == {"detail": "prediction failed"}
    assert all(r.status_code == 200 for r in good)
    np.testing.assert_allclose([r.json()["predictions"][0]["probabilities"]["1"] for r in good],
                               _proba(tv.lr, frame.iloc[1:]), rtol=0, atol=1e-12)
    assert app.state.batcher.stats.batches <= 3
    rows = list(_table(store.get_engine(uri), store.predictions).values())
    assert sorted(r["status"] for r in rows) == ["error"] + ["ok"] * 11
    assert "poisoned record" in next(r["error"] for r in rows if r["status"] == "error")

    # A/B: the challenger fails on the poisoned record only; that request falls back to the champion.
    uri_ab = f"sqlite:///{tmp_path / 'monitoring-ab.db'}"
    settings_ab = _settings(tmp_path / "ab", tv.uri, AIRLOOP_MONITORING_DB_URI=uri_ab)
    test = evaluation.start_test(tv.config, settings_ab, START, traffic_pct=99.9)
    ids = [f"ok{i}" for i in range(1, 12)]
    assert {routing.assign_variant(k, test["test_id"], 99.9) for k in [*ids, "p"]} == {"challenger"}
    app = create_app(settings_ab, batching=WAIT)

    async def scenario_ab(client: httpx.AsyncClient) -> list[httpx.Response]:
        challenger = app.state.manager.tests["default"].challenger
        monkeypatch.setattr(challenger.predictor, "predict", poisoned(challenger.predictor.predict))
        bodies = [{"records": [r], "request_ids": [rid]} for rid, r in zip(ids, records[1:])]
        responses = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies),
                                         client.post("/predict", json={"records": [poison], "request_ids": ["p"]}))
        assert app.state.prediction_logger.flush(10)
        return responses

    *good, fell_back = asyncio.run(_serve(app, scenario_ab))
    assert all(r.status_code == 200 and r.json()["abtest"] == test["test_id"] for r in [*good, fell_back])
    assert {r.json()["predictions"][0]["variant"] for r in good} == {"challenger"}
    np.testing.assert_allclose([r.json()["predictions"][0]["probabilities"]["1"] for r in good],
                               _proba(tv.hgb, frame.iloc[1:]), rtol=0, atol=1e-12)
    item = fell_back.json()["predictions"][0]
    assert item["variant"] == "fallback" and item["model_version"] == "1"
    assert item["probabilities"]["1"] == pytest.approx(_proba(tv.lr, frame.iloc[:1])[0], abs=1e-12)
    rows = list(_table(store.get_engine(uri_ab), store.predictions).values())
    assert sorted((r["variant"], r["status"]) for r in rows) == sorted(
        [("challenger", "ok")] * 11 + [("fallback", "ok"), ("challenger", "error")])


def test_a_reload_during_a_burst_answers_every_request_from_one_version(
    tmp_path: Path, two_versions: TwoVersions
) -> None:
    tv = two_versions
    uri, settings, frame = _monitored(tmp_path, tv, 40)
    records = _records(frame)
    app = create_app(settings, batching=BatchingConfig(max_wait_s=0.002, max_records=8))

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response]:
        reloaded = asyncio.Event()

        async def wave(start: int) -> list[httpx.Response]:
            out: list[httpx.Response] = []
            round_ = 0
            while not reloaded.is_set() or round_ < 3:  # requests keep coming while the new version loads
                out += await asyncio.gather(*(
                    client.post("/predict", json={"records": [records[i]], "request_ids": [f"w{round_}-{i}"]})
                    for i in range(start, start + 8)))
                round_ += 1
            return out

        waves = [asyncio.create_task(wave(s)) for s in (0, 8, 16, 24, 32)]
        await asyncio.sleep(0.05)
        reload = await client.post("/reload", json={"version": 2}, headers=AUTH)
        reloaded.set()
        after = await client.post("/predict", json={"records": records[:5]})
        responses = [r for w in waves for r in await w] + [after]
        assert app.state.prediction_logger.flush(10)
        return responses, reload

    responses, reload = asyncio.run(_serve(app, scenario))
    assert reload.status_code == 200, reload.text
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    versions = {r.json()["model"]["version"] for r in responses}
    assert responses[-1].json()["model"]["version"] == "2" and versions == {"1", "2"}
    rows = _table(store.get_engine(uri), store.predictions)
    by_version = {"1": tv.lr, "2": tv.hgb}
    for response in responses[:-1]:
        version = response.json()["model"]["version"]
        item = response.json()["predictions"][0]
        row = int(item["request_id"].rsplit("-", 1)[1])
        assert item["probabilities"]["1"] == pytest.approx(_proba(by_version[version], frame.iloc[[row]])[0], abs=1e-12)
        assert rows[item["request_id"]]["model_version"] == version  # the log agrees with the answer
