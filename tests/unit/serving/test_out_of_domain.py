"""Out-of-domain inputs on the predict path: every logged prediction names its inputs outside the
served version's domain (a number outside its feature's declared ``min``/``max``, a category
outside its declared ``values`` or learned vocabulary) in ``out_of_domain``; with the pipeline's
``serving.out_of_domain: reject`` such a request is refused with a 422 naming the record, the
feature, the value and what is allowed.

A real fitted model of the demo pipeline (``build_model``) behind a :class:`ServedModel` built the
way serving builds it; rows go through the real :class:`PredictionLogger` into SQLite.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa

from airloop.core import store
from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day
from airloop.models.schema import (
    FeatureDomain,
    RecordSchema,
    RecordValidationError,
    feature_domain,
    request_records,
    signature_inputs,
)
from airloop.models.scoring import score_function
from airloop.serving.handlers import shadow_score
from airloop.serving.metrics import ServingMetrics
from airloop.serving.predict import predict_jobs, prepare_job
from airloop.serving.predlog import PredictionLogger
from airloop.serving.runtime import Predictor, ServedModel
from airloop.serving.schema import PredictRequest, out_of_domain_errors
from airloop.training.search import build_model


def with_serving(config, policy: str):
    raw = config.model_dump(mode="json")
    raw["serving"] = {"out_of_domain": policy}
    return type(config).model_validate(raw)


@pytest.fixture(scope="module")
def fitted(claims_config):
    frame = pd.concat([generate_day(date(2026, 1, 5)), generate_day(date(2026, 1, 6))], ignore_index=True)
    X, y = features_and_target(claims_config, frame)
    return build_model(claims_config, "logistic_regression", {"C": 1.0}).fit(X, y), frame


def served(config, model, frame, variant: str = "champion") -> ServedModel:
    schema = RecordSchema(signature_inputs(config))
    schema.domain = feature_domain(config, model)
    return ServedModel(name=config.model_name, version="1", alias="champion", aliases=("champion",), run_id=None,
                       source="test", loaded_at=datetime.now(timezone.utc), metrics={}, tags={}, schema=schema,
                       predictor=Predictor(model), input_example=frame.head(3), variant=variant)


@pytest.fixture(scope="module")
def records(claims_config, fitted):
    _, frame = fitted
    return request_records(signature_inputs(claims_config), frame[list(claims_config.features)].head(4))


# ------------------------------------------------------------------------------------ domain
def test_the_domain_is_the_declared_ranges_and_values(claims_config, fitted):
    model, _ = fitted
    domain = feature_domain(claims_config, model)
    assert domain.policy == "flag" and domain.learned == frozenset()  # every category declares its values
    assert domain.ranges["customer_age"] == (18, 100) and domain.ranges["claim_amount"] == (0, 1_000_000)
    assert domain.categories["channel"] == {"agent", "online", "phone", "app"}
    base = {"customer_age": 40, "claim_amount": None, "channel": "app", "incident_type": "theft"}
    assert domain.check(base) is None  # within, and a null is never out of domain
    assert domain.check(base | {"customer_age": 101}) == ["customer_age"]
    assert domain.check(base | {"customer_age": 18, "channel": "pigeon", "claim_amount": -1.0}) == \
        ["claim_amount", "channel"]  # ranges first, then categories, in config order
    assert domain.allowed("customer_age") == {"min": 18, "max": 100}
    assert domain.allowed("channel") == {"values": ["agent", "app", "online", "phone"], "count": 4, "learned": False}
    assert domain.explain("customer_age", 150) == "out of domain: 150 is outside the declared range [18, 100]"
    assert "'pigeon' is not among the declared values (4: 'agent'" in domain.explain("channel", "pigeon")
    with pytest.raises(ValueError, match="policy"):
        FeatureDomain({}, {}, policy="drop")


# ------------------------------------------------------------------------------- flag (default)
def test_every_logged_prediction_names_its_out_of_domain_inputs(claims_config, fitted, records, tmp_path):
    model, frame = fitted
    champion = served(claims_config, model, frame)
    bad = [dict(records[0]), records[1] | {"customer_age": 150}, records[2] | {"channel": "pigeon", "witness_count": 99},
           records[3] | {"police_report": None}]
    job = prepare_job(champion, None, PredictRequest(bad, True), "default", time.perf_counter())
    ((items, rows),) = predict_jobs([job], claims_config.name, score_function(claims_config), ServingMetrics())
    assert len(items) == 4 and all("prediction" in i for i in items)  # flagged records are answered
    assert [r["out_of_domain"] for r in rows] == [None, ["customer_age"], ["witness_count", "channel"], None]
    assert rows[2]["features"]["channel"] == "pigeon"

    # the logger stores the list as JSON, NULL when none
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    store.migrate(engine)
    logger = PredictionLogger(lambda: engine, tmp_path / "spool", flush_interval_s=0.05)
    try:
        logger.log(rows)
        assert logger.flush(timeout=30)
    finally:
        logger.close()
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(store.predictions.c.request_id, store.predictions.c.out_of_domain)).all())
    assert [stored[r["request_id"]] for r in rows] == [None, '["customer_age"]', '["witness_count","channel"]', None]


def test_shadow_rows_are_flagged_against_the_challengers_domain(claims_config, fitted, records, tmp_path):
    model, frame = fitted
    challenger = served(claims_config, model, frame, variant="shadow")
    logged: list[dict] = []
    active = SimpleNamespace(challenger=challenger, test=SimpleNamespace(test_id="t1"))
    parsed = PredictRequest([records[0] | {"prior_claims": 51}, records[1]], True)
    shadow_score(active, parsed, ["a", "b"], "default", pipeline=claims_config.name,
                 score=score_function(claims_config), metrics=ServingMetrics(),
                 shadow_logger=SimpleNamespace(log=logged.extend))
    assert [r["out_of_domain"] for r in logged] == [["prior_claims"], None]
    assert {r["variant"] for r in logged} == {"shadow"}


def test_a_version_without_a_domain_flags_nothing(claims_config, fitted, records):
    model, frame = fitted
    champion = served(claims_config, model, frame)
    champion.schema.domain = None  # e.g. loaded without its pipeline file
    job = prepare_job(champion, None, PredictRequest([records[0] | {"customer_age": 150}], True), "default",
                      time.perf_counter())
    ((_, rows),) = predict_jobs([job], claims_config.name, score_function(claims_config), ServingMetrics())
    assert rows[0]["out_of_domain"] is None


# ------------------------------------------------------------------------------------ reject
def test_reject_answers_422_naming_record_feature_value_and_allowed(claims_config, fitted, records):
    model, frame = fitted
    strict = with_serving(claims_config, "reject")
    champion = served(strict, model, frame)
    assert champion.schema.domain.policy == "reject"
    # a request within the domain is answered as before
    ok = prepare_job(champion, None, PredictRequest(records[:2], True), "default", time.perf_counter())
    assert ok.size == 2
    bad = [records[0], records[1] | {"customer_age": 150}, records[2] | {"incident_type": "meteor"}]
    with pytest.raises(RecordValidationError) as err:
        prepare_job(champion, None, PredictRequest(bad, True), "default", time.perf_counter())
    assert err.value.status_code == 422
    age, incident = err.value.errors
    assert age == {"record": 1, "field": "customer_age", "type": "out_of_domain", "value": 150,
                   "allowed": {"min": 18, "max": 100},
                   "message": "out of domain: 150 is outside the declared range [18, 100]"}
    assert incident["record"] == 2 and incident["field"] == "incident_type" and incident["value"] == "meteor"
    assert incident["allowed"] == {"values": sorted(claims_config.features["incident_type"].values), "count": 6,
                                   "learned": False}
    assert "'meteor' is not among the declared values" in incident["message"]
    # a single record is record 0
    with pytest.raises(RecordValidationError) as one:
        prepare_job(champion, None, PredictRequest([records[0] | {"deductible": -5.0}], False), "default",
                    time.perf_counter())
    assert [(e["record"], e["field"], e["value"]) for e in one.value.errors] == [(0, "deductible", -5.0)]


def test_reject_errors_are_capped(claims_config, fitted, records):
    model, _ = fitted
    domain = feature_domain(with_serving(claims_config, "reject"), model)
    many = [records[0] | {"customer_age": 150, "prior_claims": 99}] * 80
    errors = out_of_domain_errors(domain, many)
    assert len(errors) == 100 and errors[-1]["record"] == 49


def test_the_check_is_cheap(claims_config, fitted, records):
    """Per record the check is a handful of comparisons: microseconds next to the model call."""
    model, _ = fitted
    domain = feature_domain(claims_config, model)
    record = records[0]
    t0 = time.perf_counter()
    for _ in range(20_000):
        domain.check(record)
    per_record_us = (time.perf_counter() - t0) / 20_000 * 1e6
    print(f"\nout-of-domain check: {per_record_us:.2f} us per record ({len(claims_config.features)} features)")
    assert per_record_us < 50
