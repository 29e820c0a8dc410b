"""The column-wise request validator (:meth:`RecordSchema.validate`) against the pydantic one
(:meth:`RecordSchema.validate_models`, one object per record): over many random batches of good
and bad records, both accept the same batches with the same values (types included) and the
same frame, and refuse the same batches with the same errors (record index, field, message).
The column-wise domain check agrees with the per-record one."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.types import ColSpec, Schema

from airloop.models.schema import (
    COLUMNWISE_MIN_RECORDS,
    FeatureDomain,
    RecordSchema,
    RecordValidationError,
    ValidatedRecords,
)

SPECS = [
    ("amount", "double", False), ("premium", "double", True), ("ratio", "float", True),
    ("age", "long", True), ("claims", "integer", False), ("flag", "boolean", True),
    ("verified", "boolean", False), ("region", "string", True), ("report", "string", False),
]
REGIONS = ["north", "south", "east", "west"]

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 as float32


class Text(str):
    """A str subclass (pydantic decides what it makes of it)."""


def schema() -> RecordSchema:
    return RecordSchema(Schema([ColSpec(t, name, required=req) for name, t, req in SPECS]))


def good_value(rng: random.Random, kind: str) -> Any:
    if kind in ("double", "float"):
        return rng.choice([rng.uniform(-1e3, 1e4), rng.randint(-50, 5000), 0.0, 1e300])
    if kind == "long":
        return rng.choice([rng.randint(0, 120), -(2**63), 2**63 - 1])
    if kind == "integer":
        return rng.choice([rng.randint(0, 9), -(2**31), 2**31 - 1])
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(REGIONS)


def good_record(rng: random.Random) -> dict[str, Any]:
    record = {}
    for name, kind, required in SPECS:
        if not required and rng.random() < 0.15:
            if rng.random() < 0.5:
                record[name] = None
            continue  # an absent optional column
        record[name] = good_value(rng, kind)
    keys = list(record)
    rng.shuffle(keys)  # field order does not matter
    return {k: record[k] for k in keys}


BAD_VALUES: list[Any] = ["12", "", True, False, 1.5, float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1,
                         2**31, 2**1100, None, [], {}, [1], {"a": 1}, Text("north"), np.float64(1.0), np.int64(3),
                         b"bytes", 0, 3.0]


def bad_record(rng: random.Random) -> Any:
    record = good_record(rng)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        what = rng.random()
        name = rng.choice(SPECS)[0]
        if what < 0.6:
            record[name] = rng.choice(BAD_VALUES)
        elif what < 0.75:
            record.pop(name, None)
        elif what < 0.9:
            record[rng.choice(["extra", "c0", "Amount", "amount "])] = 1
        else:
            return rng.choice([None, 1, "record", [record], (), Text("x")])
    return record


def outcome(fn, records: list[Any]) -> tuple[str, Any]:
    try:
        return "ok", fn(records)
    except RecordValidationError as err:
        return "error", (err.status_code, err.errors)


def typed(record: dict[str, Any]) -> list[tuple[str, type, Any]]:
    return [(k, type(v), v) for k, v in record.items()]


@pytest.mark.parametrize("seed", range(6))
def test_columnwise_validation_matches_pydantic_on_random_batches(seed: int) -> None:
    s = schema()
    rng = random.Random(seed)
    fast_used = checked = 0
    for _ in range(150):
        n = rng.choice([1, 2, COLUMNWISE_MIN_RECORDS, 20, 100])
        bad_share = rng.choice([0.0, 0.0, 0.01, 0.1, 0.5])
        records = [bad_record(rng) if rng.random() < bad_share else good_record(rng) for _ in range(n)]
        expected_kind, expected = outcome(s.validate_models, records)
        got_kind, got = outcome(s.validate, records)
        assert got_kind == expected_kind, (records, expected, got)
        checked += 1
        if expected_kind == "error":
            assert got == expected  # same status, record indices, fields and messages, in order
            continue
        assert isinstance(got, ValidatedRecords) and len(got) == n
        assert [typed(r) for r in got] == [typed(s.as_dict(m)) for m in expected]
        assert list(got.records()[0]) == s.names  # signature order
        pd.testing.assert_frame_equal(s.to_frame(got), s.to_frame(expected))
        fast_used += s.validate_columns(records) is not None
    assert checked == 150
    assert fast_used > 20  # the column-wise pass itself answered a good share of the valid batches


def test_every_bad_value_in_a_batch_is_refused_as_pydantic_refuses_it() -> None:
    s = schema()
    rng = random.Random(99)
    for name, kind, required in SPECS:
        for bad in BAD_VALUES + ["__absent__"]:
            records = [good_record(rng) for _ in range(30)]
            if bad == "__absent__":
                records[7].pop(name, None)
            else:
                records[7][name] = bad
            expected_kind, expected = outcome(s.validate_models, records)
            got_kind, got = outcome(s.validate, records)
            assert got_kind == expected_kind, (name, bad)
            if expected_kind == "error":
                assert got == expected, (name, bad)
                assert {e["record"] for e in got[1]} == {7}
            else:
                assert [typed(r) for r in got] == [typed(s.as_dict(m)) for m in expected], (name, bad)


def test_ints_of_float_columns_become_floats_and_absent_optionals_none() -> None:
    s = schema()
    rng = random.Random(3)
    records = [good_record(rng) for _ in range(10)]
    for r in records:
        r["premium"] = 7
        r.pop("amount", None)
    fast = s.validate_columns(records)
    assert fast is not None
    assert fast.column("premium") == [7.0] * 10 and all(type(v) is float for v in fast.column("premium"))
    assert fast.column("amount") == [None] * 10
    assert math.isnan(s.to_frame(fast)["amount"].iloc[0])


def test_take_and_concat_keep_the_records() -> None:
    s = schema()
    rng = random.Random(5)
    a = s.validate([good_record(rng) for _ in range(10)])
    b = s.validate([good_record(rng) for _ in range(12)])
    both = ValidatedRecords.concat([a, b])
    assert both.records() == a.records() + b.records()
    assert both.take([3, 15, 0]).records() == [a[3], b[5], a[0]]
    assert a.take(range(10)) is a


def test_a_datetime_signature_is_left_to_pydantic() -> None:
    s = RecordSchema(Schema([ColSpec("datetime", "at"), ColSpec("double", "x")]))
    records = [{"at": "2026-01-01T00:00:00Z", "x": 1.0}] * 10
    assert s.validate_columns(records) is None
    assert len(s.validate(records)) == 10


@pytest.mark.parametrize("seed", range(3))
def test_columnwise_domain_check_matches_the_per_record_check(seed: int) -> None:
    s = schema()
    rng = random.Random(seed)
    domain = FeatureDomain({"amount": (0.0, 5000.0), "age": (18, None), "claims": (None, 5)},
                           {"region": frozenset({"north", "south", "east"}), "report": frozenset({"yes", "no"})},
                           learned=frozenset({"region"}))
    s.domain = domain
    for _ in range(50):
        records = [good_record(rng) for _ in range(rng.choice([8, 30, 100]))]
        for r in records:
            if "report" in r and rng.random() < 0.7:
                r["report"] = rng.choice(["yes", "no", "maybe", None])
        validated = s.validate(records)
        assert isinstance(validated, ValidatedRecords)
        expected = [domain.check(r) for r in validated]
        assert s.out_of_domain(validated) == expected
        assert any(e is not None for e in expected)
