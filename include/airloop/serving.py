"""Model serving: a FastAPI app that answers predictions with the registry's champion model.

Run it with ``uvicorn --factory airloop.serving:create_app``. One app serves one pipeline (default
``Settings.default_pipeline``); its registered model ``models:/<name>@champion`` is loaded at
startup from the MLflow registry named in :class:`~airloop.config.Settings`, through an explicit
:class:`mlflow.MlflowClient` (no global MLflow state is touched, so several apps can live in one
process).

Loading is deliberately strict, because deserialising a model is code execution in disguise:

* only models stored in the **skops** format are served (pickle/cloudpickle are refused);
* the types a skops file needs beyond skops' defaults are vetted here: only *classes* from the
  ``sklearn`` and ``numpy`` packages are trusted. The allow-list stored in the model's own MLmodel
  file is ignored, since a crafted model could whitelist anything there. (This is why the model
  file is loaded with :func:`skops.io.load` after the vetting, not with
  ``mlflow.sklearn.load_model``: that function trusts the MLmodel's list and also requires the
  process-wide ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, which would open pickle loading too.)
* every request record is validated against the model's MLflow signature with a pydantic model
  built once per loaded version (unknown fields are refused, non-required columns may be null);
* a new version (``POST /reload``) is loaded beside the serving one, smoke-tested on its stored
  input example through the very same request path, and only then swapped in by one reference
  assignment; on failure the old version keeps serving.

Concurrent ``/predict`` requests are micro-batched (:mod:`airloop.batching`): each request is
parsed, validated (its own 422) and routed on its own, then waits at most
``AIRLOOP_SERVING_BATCH_WAIT_MS`` (default 2 ms; not at all when no other request is on its way)
to share **one** predict call per served version with the requests around it, up to
``AIRLOOP_SERVING_BATCH_MAX_RECORDS`` records (default 1024; 1 turns batching off). A
scikit-learn pipeline's call costs nearly the same for 1 row as for 100 (per-call input
validation in every step), so this is what makes concurrent single-record traffic cheap. Each
request still gets exactly its own predictions, request ids, latency, variant and log rows; a
batch holds one model snapshot per request (a reload never mixes versions inside an answer); when
a shared call fails, each request is predicted alone, so only the one that makes the model fail
answers 500 (or, for an A/B challenger, falls back to the champion).

Every prediction is logged to the monitoring store (``predictions`` table, one row per record,
plus one ``error`` row per request whose prediction failed with a 5xx) by a
:class:`~airloop.predlog.PredictionLogger`: the request only enqueues; a background thread writes
batches and spools them to ``<state_dir>/spool/<pipeline>`` while the database is unavailable.
Labels come back through ``POST /feedback`` into ``ground_truth``, joined by request id.

A/B tests and shadow mode (:mod:`airloop.abtest`): the running tests of the pipeline are read
from the monitoring store at startup and on ``POST /abtest/refresh`` (never per request); each
test's challenger version is loaded and smoke-tested beside the champion, and the table of active
tests (one per tenant) is swapped in by one reference assignment. In an A/B test each record is
routed by :func:`airloop.abtest.assign_variant` on its request key (``key_field``: the request id,
the ``X-Request-Key`` header or a feature of the record), answered by that variant, and logged with
``variant`` and the version that answered; the answer items carry ``variant`` and
``model_version``. A challenger that fails on its records never fails the request: the champion
answers them (logged as variant ``fallback``) and one ``error`` row is logged for the challenger.
In shadow mode the champion answers; the challenger scores the same records after the response is
sent (a background task) and its rows go to ``shadow_predictions`` through a second logger.

Endpoints: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /ready``, ``GET /model``,
``POST /reload`` and ``POST /abtest/refresh`` (both ``Authorization: Bearer
<AIRLOOP_ADMIN_TOKEN>``), ``GET /abtest`` and ``GET /metrics`` (Prometheus, one registry per app).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Annotated, Any, AsyncIterator

import anyio.to_thread
import numpy as np
import pandas as pd
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
)

from starlette.background import BackgroundTask

from airloop import abtest, store
from airloop.batching import MicroBatcher
from airloop.config import PipelineConfig, Settings, get_settings, load_pipeline_config
from airloop.predlog import PredictionLogCollector, PredictionLogger, spool_dir_for, to_utc

log = logging.getLogger(__name__)

#: Largest number of records one ``POST /predict`` may carry.
MAX_BATCH_RECORDS = 10_000
#: Batches larger than this are predicted in a worker thread so the event loop stays responsive.
INLINE_BATCH_RECORDS = 256
#: Environment variable: longest wait (ms) of a request for others to share its model call.
BATCH_WAIT_ENV = "AIRLOOP_SERVING_BATCH_WAIT_MS"
#: Environment variable: most records in one micro-batch (1 turns micro-batching off).
BATCH_MAX_RECORDS_ENV = "AIRLOOP_SERVING_BATCH_MAX_RECORDS"
#: Environment variable: "0" keeps the startup heap out of :func:`gc.freeze` (see :func:`create_app`).
GC_FREEZE_ENV = "AIRLOOP_SERVING_GC_FREEZE"
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_BATCH_MAX_RECORDS = 1024
#: At most this many field errors are returned in one 422 answer.
MAX_REPORTED_ERRORS = 100
#: How long app startup waits for the first model load before serving anyway (not ready).
STARTUP_LOAD_WAIT_S = 30.0
#: The registry alias served by default.
DEFAULT_ALIAS = "champion"
#: The variant recorded with every prediction outside an A/B test (and of the champion in one).
DEFAULT_VARIANT = abtest.CHAMPION
#: Longest ``X-Request-Key`` header (the A/B routing key when a test's ``key_field`` is "header").
MAX_REQUEST_KEY_LENGTH = 200
#: Tenant recorded when a request has no ``X-Tenant`` header.
DEFAULT_TENANT = "default"
#: Largest number of labels one ``POST /feedback`` may carry.
MAX_FEEDBACK_ITEMS = 10_000
#: Longest request id (the ``request_id`` column).
MAX_REQUEST_ID_LENGTH = 64
#: How long app shutdown waits for the prediction log to drain (the rest is spooled).
SHUTDOWN_FLUSH_S = 10.0
#: Top-level packages whose classes may be instantiated from a skops file.
TRUSTED_SKOPS_PACKAGES: frozenset[str] = frozenset({"sklearn", "numpy"})

_ENDPOINTS = frozenset({"/predict", "/feedback", "/health", "/ready", "/model", "/reload", "/metrics", "/abtest",
                        "/abtest/refresh"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Micro-batching of concurrent ``/predict`` requests (see :mod:`airloop.batching`)."""

    #: Longest time the oldest queued request waits for others (it never waits when none is coming).
    max_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000.0
    #: Most records in one model call; a request this large or larger is predicted alone.
    max_records: int = DEFAULT_BATCH_MAX_RECORDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BatchingConfig":
        """Read :data:`BATCH_WAIT_ENV` and :data:`BATCH_MAX_RECORDS_ENV` (defaults when unset);
        ``ValueError`` for a negative wait, more than 1000 ms, or a size outside 1..10000."""
        env = os.environ if env is None else env
        wait_ms = float(env.get(BATCH_WAIT_ENV) or DEFAULT_BATCH_WAIT_MS)
        max_records = int(env.get(BATCH_MAX_RECORDS_ENV) or DEFAULT_BATCH_MAX_RECORDS)
        if not 0.0 <= wait_ms <= 1000.0 or not math.isfinite(wait_ms):
            raise ValueError(f"{BATCH_WAIT_ENV} must be between 0 and 1000 ms, got {wait_ms}")
        if not 1 <= max_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"{BATCH_MAX_RECORDS_ENV} must be between 1 and {MAX_BATCH_RECORDS}, got {max_records}")
        return cls(wait_ms / 1000.0, max_records)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ModelLoadError(RuntimeError):
    """A model version could not be resolved, loaded or smoke-tested.

    ``outcome`` is a short machine label (``not_found``, ``rejected``, ``unavailable``, ``busy``,
    ``error``) and ``status_code`` the HTTP status ``POST /reload`` answers with.
    """

    def __init__(self, message: str, *, outcome: str = "rejected", status_code: int = 409) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status_code = status_code


class UntrustedModelError(ModelLoadError):
    """The model file is not skops, or needs types outside the sklearn/numpy allow-list."""


class RecordValidationError(ValueError):
    """Request records do not match the model signature; ``errors`` are field-level dicts."""

    def __init__(self, errors: list[dict[str, Any]], status_code: int = 422) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors
        self.status_code = status_code


# --------------------------------------------------------------------------------------------
# skops: vetting the types a model file needs
# --------------------------------------------------------------------------------------------


def _is_trusted_type_name(type_name: str) -> bool:
    """True when ``type_name`` names a class defined in an allowed package (never a function)."""
    module_name, _, attr = type_name.rpartition(".")
    if not module_name or module_name.split(".", 1)[0] not in TRUSTED_SKOPS_PACKAGES:
        return False
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(obj, type)


def vet_skops_types(type_names: Iterable[str]) -> list[str]:
    """Return ``type_names`` sorted if every one is a sklearn/numpy class; else raise.

    Raises :class:`UntrustedModelError` listing the refused names (functions, builtins, any other
    package, names that do not resolve).
    """
    names = sorted(set(type_names))
    refused = [name for name in names if not _is_trusted_type_name(name)]
    if refused:
        raise UntrustedModelError(
            f"model file needs types outside the trusted packages {sorted(TRUSTED_SKOPS_PACKAGES)}: {refused}"
        )
    return names


def skops_trusted_types(sk_model: Any) -> list[str]:
    """The vetted ``skops_trusted_types`` to pass to ``mlflow.sklearn.log_model`` for ``sk_model``.

    MLflow reloads a skops dump right after writing it and fails unless every non-default type is
    listed (e.g. ``numpy.dtype`` for any fitted pipeline, ``sklearn.tree._tree.Tree`` for forests,
    ``...predictor.TreePredictor`` for hist gradient boosting). This computes that list from a
    dump of ``sk_model`` and refuses anything the serving process would refuse too.
    """
    import skops.io

    return vet_skops_types(skops.io.get_untrusted_types(data=skops.io.dumps(sk_model)))


def load_skops_file(path: str) -> Any:
    """Load a skops file, trusting only vetted sklearn/numpy classes (see :func:`vet_skops_types`)."""
    import skops.io

    try:
        trusted = vet_skops_types(skops.io.get_untrusted_types(file=path))
        return skops.io.load(path, trusted=trusted)
    except ModelLoadError:
        raise
    except Exception as err:  # corrupt zip, unknown node types, skops/sklearn incompatibility...
        raise ModelLoadError(f"cannot read model file {os.path.basename(path)}: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------------------------
# Request records: a pydantic model built from the MLflow signature
# --------------------------------------------------------------------------------------------


_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _field_type(data_type: Any) -> Any:
    """Pydantic type for one MLflow column type (JSON-strict: no strings for numbers)."""
    from mlflow.types import DataType

    if not isinstance(data_type, DataType):
        raise ModelLoadError(f"unsupported column type in the model signature: {data_type}")
    if data_type is DataType.boolean:
        return StrictBool
    if data_type in (DataType.integer, DataType.long):
        low, high = _INT32 if data_type is DataType.integer else _INT64
        return Annotated[int, Strict(), Field(ge=low, le=high)]
    if data_type in (DataType.float, DataType.double):
        return Annotated[float, Strict(), Field(allow_inf_nan=False)]
    if data_type is DataType.string:
        return StrictStr
    if data_type is DataType.datetime:
        return datetime
    if data_type is DataType.binary:
        return bytes
    raise ModelLoadError(f"unsupported column type in the model signature: {data_type}")


@dataclass(frozen=True, slots=True)
class InputColumn:
    """One signature column: its name, MLflow type, whether it is required, and its attribute."""

    name: str
    type: str
    required: bool
    attr: str
    numpy_dtype: np.dtype | None


def _to_array(column: InputColumn, values: list[Any]) -> Any:
    """Column values as the array the model was trained on (nulls become NaN)."""
    if column.type == "datetime":
        return pd.to_datetime(values)
    dtype = column.numpy_dtype
    has_null = None in values
    if dtype is None or (has_null and dtype.kind == "b"):  # strings, bytes, nullable booleans
        if has_null:
            values = [np.nan if v is None else v for v in values]
        return np.array(values, dtype=object)
    if has_null and dtype.kind in "iu":  # a nullable integer column travels as float, like pandas
        return np.array(values, dtype=np.float64)
    return np.array(values, dtype=dtype)  # floats: None -> NaN


class RecordSchema:
    """Validates request records against a model signature and turns them into a DataFrame."""

    def __init__(self, signature_inputs: Any, title: str = "Record") -> None:
        """Build the pydantic model from ``signature.inputs`` (an MLflow column-based Schema)."""
        from mlflow.types import DataType

        if signature_inputs is None or signature_inputs.is_tensor_spec():
            raise ModelLoadError("the model signature must describe named columns (not tensors)")
        columns: list[InputColumn] = []
        fields: dict[str, Any] = {}
        for i, spec in enumerate(signature_inputs.inputs):
            if spec.name is None:
                raise ModelLoadError("the model signature has an unnamed input column")
            py_type = _field_type(spec.type)
            attr = f"c{i}"
            if spec.required:
                fields[attr] = (py_type, Field(..., alias=spec.name))
            else:
                fields[attr] = (py_type | None, Field(None, alias=spec.name))
            numpy_dtype = None
            if spec.type not in (DataType.string, DataType.binary, DataType.datetime):
                numpy_dtype = np.dtype(spec.type.to_numpy())
            columns.append(InputColumn(spec.name, spec.type.name, bool(spec.required), attr, numpy_dtype))
        self.columns: tuple[InputColumn, ...] = tuple(columns)
        self.names: list[str] = [c.name for c in columns]
        self.model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            title, __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields
        )
        self._many = TypeAdapter(list[self.model])  # type: ignore[name-defined]

    def describe(self) -> list[dict[str, Any]]:
        """The input columns as JSON-friendly dicts."""
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]

    def validate(self, records: list[Any]) -> list[BaseModel]:
        """Validate ``records``; raise :class:`RecordValidationError` with field-level messages."""
        try:
            if len(records) == 1:
                return [self.model.model_validate(records[0])]
            return self._many.validate_python(records)
        except ValidationError as err:
            raise RecordValidationError(_field_errors(err, single=len(records) == 1)) from None

    def as_dict(self, row: BaseModel) -> dict[str, Any]:
        """A validated record as ``{column: value}`` in signature order (absent optional columns: None).

        The model's ``__dict__`` holds exactly its fields (``extra="forbid"``) in declaration order,
        which is the signature's."""
        return dict(zip(self.names, row.__dict__.values()))

    def to_frame(self, rows: Sequence[BaseModel]) -> pd.DataFrame:
        """One DataFrame with the signature's columns, dtypes and order."""
        dicts = [row.__dict__ for row in rows]
        data = {c.name: _to_array(c, [d[c.attr] for d in dicts]) for c in self.columns}
        return pd.DataFrame(data, columns=self.names, copy=False)


def _field_errors(err: ValidationError, single: bool) -> list[dict[str, Any]]:
    """Convert a pydantic error into ``[{"record", "field", "message"}]`` (capped)."""
    out = []
    for e in err.errors(include_url=False)[:MAX_REPORTED_ERRORS]:
        loc = list(e["loc"])
        record = 0 if single else (loc.pop(0) if loc and isinstance(loc[0], int) else None)
        field_name = ".".join(str(p) for p in loc) or None
        out.append({"record": record, "field": field_name, "message": e["msg"]})
    return out


def _request_error(message: str, status_code: int = 422) -> RecordValidationError:
    return RecordValidationError([{"record": None, "field": None, "message": message}], status_code)


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A parsed ``/predict`` body: the records and, optionally, their ids and business times."""

    records: list[Any]
    is_batch: bool
    #: Client-chosen request ids, one per record (None: the server draws UUIDv7 hex ids, :func:`new_request_ids`).
    request_ids: list[str] | None = None
    #: Business time of each record as tz-aware UTC (None: the server's current time).
    event_ts: list[datetime] | None = None


_ENVELOPE_KEYS = ("records", "request_ids", "event_ts")


def _check_request_ids(value: Any, n: int) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """Validate ``request_ids``: a list of ``n`` unique, non-empty strings of at most 64 characters."""
    if not isinstance(value, list) or len(value) != n:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        return None, [{"record": None, "field": "request_ids",
                       "message": f'"request_ids" must be a list with one id per record ({n}), got {got}'}]
    errors = []
    seen: dict[str, int] = {}
    for i, rid in enumerate(value):
        if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID_LENGTH or not rid.isprintable():
            errors.append({"record": i, "field": "request_ids",
                           "message": f"a request id must be a non-empty printable string of at most "
                                      f"{MAX_REQUEST_ID_LENGTH} characters, got {rid!r:.80}"})
        elif rid in seen:
            errors.append({"record": i, "field": "request_ids",
                           "message": f"duplicate request id {rid!r} (also record {seen[rid]})"})
        else:
            seen[rid] = i
    return value, errors


def _check_event_ts(value: Any, n: int) -> tuple[list[datetime] | None, list[dict[str, Any]]]:
    """Validate ``event_ts``: a list of ``n`` ISO-8601 timestamps (naive ones are taken as UTC)."""
    if not isinstance(value, list) or len(value) != n:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        return None, [{"record": None, "field": "event_ts",
                       "message": f'"event_ts" must be a list with one timestamp per record ({n}), got {got}'}]
    out: list[datetime] = []
    errors = []
    for i, ts in enumerate(value):
        try:
            if not isinstance(ts, str):
                raise TypeError
            out.append(to_utc(ts))
        except (TypeError, ValueError, OverflowError):
            errors.append({"record": i, "field": "event_ts",
                           "message": f"not an ISO-8601 timestamp: {ts!r:.80}"})
    return out, errors


def parse_predict_request(body: bytes) -> PredictRequest:
    """Parse a ``/predict`` body.

    A body is one record (a JSON object) or ``{"records": [ ... ]}`` with 1..MAX_BATCH_RECORDS
    items, optionally with parallel lists ``"request_ids"`` (unique strings, at most 64
    characters) and ``"event_ts"`` (ISO-8601 timestamps; naive ones are UTC). Raises
    :class:`RecordValidationError` (422, or 413 for an oversized batch).
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _request_error(f"body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise _request_error('body must be a JSON object (one record) or {"records": [ ... ]}')
    if "records" not in payload:
        return PredictRequest([payload], False)
    unknown = sorted(set(payload) - set(_ENVELOPE_KEYS))
    if unknown:
        raise _request_error(f'unknown field(s) next to "records": {unknown} (allowed: {list(_ENVELOPE_KEYS)})')
    records = payload["records"]
    if not isinstance(records, list) or not records:
        raise _request_error('"records" must be a non-empty list of records')
    if len(records) > MAX_BATCH_RECORDS:
        raise _request_error(f"at most {MAX_BATCH_RECORDS} records per request, got {len(records)}", 413)
    errors: list[dict[str, Any]] = []
    request_ids = event_ts = None
    if payload.get("request_ids") is not None:
        request_ids, id_errors = _check_request_ids(payload["request_ids"], len(records))
        errors += id_errors
    if payload.get("event_ts") is not None:
        event_ts, ts_errors = _check_event_ts(payload["event_ts"], len(records))
        errors += ts_errors
    if errors:
        raise RecordValidationError(errors[:MAX_REPORTED_ERRORS])
    return PredictRequest(records, True, request_ids, event_ts)


def parse_predict_body(body: bytes) -> tuple[list[Any], bool]:
    """Split a ``/predict`` body into records; return ``(records, is_batch)`` (see
    :func:`parse_predict_request`, which also returns the optional ids and event times)."""
    parsed = parse_predict_request(body)
    return parsed.records, parsed.is_batch


# --------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------


class Predictor:
    """Runs a fitted sklearn estimator or Pipeline; transforms the input once for label + proba."""

    def __init__(self, estimator: Any) -> None:
        """Split a Pipeline into its transform steps and final estimator (shared objects)."""
        from sklearn.pipeline import Pipeline

        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"the model ({type(estimator).__name__}) has no predict()")
        self.estimator = estimator
        self._pre: Any = None
        self._final: Any = estimator
        if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
            final = estimator.steps[-1][1]
            if final not in (None, "passthrough") and hasattr(final, "predict"):
                self._pre, self._final = estimator[:-1], final
        self.is_classifier = hasattr(self._final, "predict_proba") and hasattr(self._final, "classes_")
        self.class_keys: list[str] = [str(c) for c in self._final.classes_] if self.is_classifier else []

    def predict(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """``[{"prediction": ..., "probabilities": {class: p}}]`` (probabilities for classifiers)."""
        features = self._pre.transform(frame) if self._pre is not None else frame
        labels = np.asarray(self._final.predict(features)).tolist()
        if not self.is_classifier:
            return [{"prediction": label} for label in labels]
        keys = self.class_keys
        proba = np.asarray(self._final.predict_proba(features)).tolist()
        return [{"prediction": label, "probabilities": dict(zip(keys, row))} for label, row in zip(labels, proba)]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One registered model version loaded in memory, with its request schema."""

    name: str
    version: str
    alias: str | None
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    loaded_at: datetime
    metrics: dict[str, float]
    tags: dict[str, str]
    schema: RecordSchema
    predictor: Predictor
    input_example: pd.DataFrame = field(repr=False)
    #: Recorded with every logged prediction: champion, or challenger / shadow in a test.
    variant: str = DEFAULT_VARIANT

    def ref(self) -> dict[str, Any]:
        """``{"name", "version", "alias"}`` as returned with every prediction."""
        return {"name": self.name, "version": self.version, "alias": self.alias}

    def describe(self) -> dict[str, Any]:
        """Everything ``GET /model`` reports."""
        return {
            **self.ref(),
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "source": self.source,
            "loaded_at": self.loaded_at.isoformat(),
            "metrics": self.metrics,
            "tags": self.tags,
            "task": "classification" if self.predictor.is_classifier else "regression",
            "classes": self.predictor.class_keys or None,
            "inputs": self.schema.describe(),
        }

    def predict_records(self, records: list[Any]) -> list[dict[str, Any]]:
        """Validate ``records`` and predict them (the whole request path, minus HTTP)."""
        return self.predict_validated(records)[1]

    def predict_validated(self, records: list[Any]) -> tuple[list[BaseModel], list[dict[str, Any]]]:
        """Like :meth:`predict_records`, also returning the validated rows."""
        rows = self.schema.validate(records)
        return rows, self.predictor.predict(self.schema.to_frame(rows))


def _example_records(example: pd.DataFrame) -> list[Any]:
    """The input example as a client would send it (JSON round trip: NaN -> null, ISO dates)."""
    return json.loads(example.to_json(orient="records", date_format="iso"))


def smoke_test(model: ServedModel) -> None:
    """Predict the model's stored input example through the request path; raise on any problem."""
    records = _example_records(model.input_example)
    try:
        predictions = model.predict_records(records)
    except RecordValidationError as err:
        raise ModelLoadError(f"smoke test: the input example does not match the signature: {err.errors[:3]}") from None
    except Exception as err:
        raise ModelLoadError(f"smoke test: predicting the input example failed: {type(err).__name__}: {err}") from err
    if len(predictions) != len(records):
        raise ModelLoadError(f"smoke test: {len(predictions)} predictions for {len(records)} records")
    for item in predictions:
        values = list(item.get("probabilities", {}).values())
        if isinstance(item["prediction"], float):
            values.append(item["prediction"])
        if not all(math.isfinite(v) for v in values):
            raise ModelLoadError(f"smoke test: non-finite output {item}")


def _read_input_example(mlmodel: Any, local_dir: str) -> pd.DataFrame:
    """The stored input example as a DataFrame (a model without one is refused)."""
    try:
        example = mlmodel.load_input_example(local_dir)
    except Exception as err:
        raise ModelLoadError(f"cannot read the model's input example: {err}") from err
    if example is None:
        raise ModelLoadError("the model has no input example to smoke-test (log it with input_example=...)")
    if isinstance(example, dict):
        example = pd.DataFrame([example])
    if not isinstance(example, pd.DataFrame) or example.empty:
        raise ModelLoadError(f"the input example must be a non-empty table, not {type(example).__name__}")
    return example


def load_model_dir(local_dir: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """Read a downloaded MLflow model folder: ``(estimator, schema, input_example)``.

    Checks the sklearn flavour is stored as skops, loads it with vetted types only, builds the
    request schema from the signature and reads the input example.
    """
    from mlflow.models import Model

    try:
        mlmodel = Model.load(os.path.join(local_dir, "MLmodel"))
    except Exception as err:
        raise ModelLoadError(f"cannot read MLmodel: {type(err).__name__}: {err}") from err
    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"not an sklearn model (flavours: {sorted(mlmodel.flavors)})")
    if flavor.get("serialization_format") != "skops":
        raise UntrustedModelError(
            f"refusing serialization format {flavor.get('serialization_format')!r}: only 'skops' models are served"
        )
    if mlmodel.signature is None:
        raise ModelLoadError("the model has no signature (log it with signature=infer_signature(...))")
    schema = RecordSchema(mlmodel.signature.inputs)
    model_file = os.path.join(local_dir, flavor.get("pickled_model", "model.skops"))
    estimator = load_skops_file(model_file)
    return estimator, schema, _read_input_example(mlmodel, local_dir)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def read_model_version(client: Any, settings: Settings, model_name: str, version: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """Read a registered version's model folder safely: in place when local, else downloaded to a
    temp folder. Returns ``(estimator, schema, input_example)``; see :func:`load_model_dir`."""
    import mlflow.artifacts

    try:
        download_uri = client.get_model_version_download_uri(model_name, version)
    except Exception as err:
        raise ModelLoadError(f"cannot locate artifacts of version {version}: {err}") from err
    local = _existing_local_dir(download_uri)
    if local is not None:
        return load_model_dir(local)
    with tempfile.TemporaryDirectory(prefix="airloop-serving-") as tmp:
        try:
            local_dir = mlflow.artifacts.download_artifacts(
                artifact_uri=download_uri,
                dst_path=tmp,
                tracking_uri=settings.mlflow_tracking_uri,
                registry_uri=settings.mlflow_registry_uri or settings.mlflow_tracking_uri,
            )
        except Exception as err:
            raise ModelLoadError(f"cannot download version {version} from {download_uri}: {err}") from err
        return load_model_dir(local_dir)


class ServingMetrics:
    """Prometheus metrics of one app, in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        """Create the registry and the metrics."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "airloop_serving_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "airloop_serving_prediction_latency_seconds", "Time to validate and predict one request.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.records = Counter(
            "airloop_serving_records_predicted", "Records predicted.", registry=self.registry
        )
        self.model_info = Gauge(
            "airloop_serving_model_info", "The loaded model version (value 1).", ["name", "version", "alias"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "airloop_serving_model_version", "Version number of the loaded model (0 = none).", ["name"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "airloop_serving_reloads", "POST /reload calls by outcome.", ["outcome"], registry=self.registry
        )
        self.feedback_labels = Counter(
            "airloop_serving_feedback_labels", "Labels written to ground_truth by POST /feedback.",
            registry=self.registry,
        )
        self.ab_records = Counter(
            "airloop_serving_ab_records", "Records of A/B and shadow tests by variant.", ["variant"],
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "airloop_serving_batch_records", "Records per model call of the micro-batcher (one or more requests).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000), registry=self.registry,
        )
        self.batch_requests = Histogram(
            "airloop_serving_batch_requests", "Requests sharing one micro-batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=self.registry,
        )
        self.abtest_refreshes = Counter(
            "airloop_serving_abtest_refreshes", "A/B test refreshes by outcome.", ["outcome"], registry=self.registry
        )

    def set_model(self, model: ServedModel) -> None:
        """Point the model gauges at ``model``."""
        self.model_info.clear()
        self.model_info.labels(model.name, model.version, model.alias or "").set(1)
        self.model_version.labels(model.name).set(float(model.version) if model.version.isdigit() else 0.0)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)


class _RequestCounter:
    """Pure ASGI middleware counting responses by endpoint and status (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(path if path in _ENDPOINTS else "other", str(status)).inc()


# --------------------------------------------------------------------------------------------
# Registry access, loading and swapping
# --------------------------------------------------------------------------------------------


def _existing_local_dir(uri: str) -> str | None:
    """The folder a plain path or ``file:`` URI names, if it exists (else ``None``)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme == "":
        path = uri
    else:
        return None
    return path if os.path.isdir(path) else None


@dataclass(frozen=True, slots=True)
class ActiveTest:
    """A running A/B or shadow test as serving applies it: the definition and the loaded
    challenger (its ``variant`` is ``challenger`` in A/B mode, ``shadow`` in shadow mode)."""

    test: abtest.ABTest
    challenger: ServedModel

    def describe(self) -> dict[str, Any]:
        """The definition plus the loaded challenger's reference."""
        return {**self.test.describe(), "challenger_model": self.challenger.ref()}

    def route(self, records: Sequence[Any], request_ids: Sequence[str], header_key: str | None) -> list[str]:
        """The variant of each record (``champion`` / ``challenger``), sticky by request key."""
        test = self.test
        keys = abtest.request_keys(test.key_field, records, request_ids, header_key)
        return [abtest.assign_variant(key, test.test_id, test.traffic_pct) for key in keys]


class ModelManager:
    """Holds the served model of one app; loads new versions beside it and swaps atomically.

    Also holds the active A/B and shadow tests (by tenant) with their loaded challengers; they
    are replaced together by :meth:`refresh_tests`.
    """

    def __init__(self, settings: Settings, config: PipelineConfig, metrics: ServingMetrics) -> None:
        """Nothing is contacted here; the MLflow client is created on first use."""
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.model_name = config.model_name
        self._current: ServedModel | None = None
        self._client: Any = None
        self._reload_lock = threading.Lock()
        self._tests: dict[str, ActiveTest] = {}
        self._tests_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        """The model answering requests (read once per request)."""
        return self._current

    @property
    def tests(self) -> dict[str, ActiveTest]:
        """The active tests by tenant (read once per request; never mutated, only replaced)."""
        return self._tests

    @property
    def client(self) -> Any:
        """An explicit MlflowClient for the settings' tracking and registry URIs."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.settings.mlflow_tracking_uri,
                registry_uri=self.settings.mlflow_registry_uri or self.settings.mlflow_tracking_uri,
            )
        return self._client

    def _resolve(self, alias: str | None, version: str | None) -> Any:
        """The ModelVersion for an alias or a version number."""
        from mlflow.exceptions import MlflowException

        target = f"{self.model_name}@{alias}" if alias else f"{self.model_name}/{version}"
        try:
            if alias:
                return self.client.get_model_version_by_alias(self.model_name, alias)
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in err.message.lower():
                raise ModelLoadError(
                    f"models:/{target} not found: {err.message}", outcome="not_found", status_code=404
                ) from err
            raise ModelLoadError(
                f"model registry unavailable: {err.message}", outcome="unavailable", status_code=503
            ) from err
        except Exception as err:
            raise ModelLoadError(
                f"model registry unavailable: {type(err).__name__}: {err}", outcome="unavailable", status_code=503
            ) from err

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        """Metrics of the version's source run ({} when unknown or unreachable)."""
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except Exception as err:  # metadata only; never block a load on it
            log.warning("cannot read metrics of run %s: %s", run_id, err)
            return {}

    def _read_artifacts(self, version: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
        """Read a version's model folder (see :func:`read_model_version`)."""
        return read_model_version(self.client, self.settings, self.model_name, version)

    def load(self, alias: str | None = None, version: str | None = None) -> ServedModel:
        """Resolve, read, verify, load and smoke-test one version (does not swap it in)."""
        mv = self._resolve(alias, version)
        version_str = str(mv.version)
        estimator, schema, example = self._read_artifacts(version_str)
        model = ServedModel(
            name=self.model_name,
            version=version_str,
            alias=alias,
            aliases=tuple(getattr(mv, "aliases", None) or ()),
            run_id=mv.run_id,
            source=str(mv.source),
            loaded_at=datetime.now(timezone.utc),
            metrics=self._run_metrics(mv.run_id),
            tags=dict(mv.tags or {}),
            schema=schema,
            predictor=Predictor(estimator),
            input_example=example,
        )
        smoke_test(model)
        return model

    def reload(self, alias: str | None = None, version: str | None = None) -> tuple[ServedModel, ServedModel | None]:
        """Load a version beside the current one and swap it in; return ``(new, previous)``.

        Raises :class:`ModelLoadError` (the current model keeps serving) on any failure, or with
        outcome ``busy`` when another load is in progress.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ModelLoadError("another model load is in progress", outcome="busy", status_code=409)
        try:
            try:
                candidate = self.load(alias=alias, version=version)
            except ModelLoadError as err:
                self.last_error = str(err)
                raise
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
                raise ModelLoadError(
                    f"unexpected error while loading: {self.last_error}", outcome="error", status_code=500
                ) from err
            previous = self._current
            self._current = candidate  # the swap: one reference assignment
            self.last_error = None
            self.metrics.set_model(candidate)
        finally:
            self._reload_lock.release()
        log.info(
            "serving %s version %s (alias %s), previously %s",
            candidate.name, candidate.version, candidate.alias, previous.version if previous else None,
        )
        return candidate, previous

    def refresh_tests(self) -> dict[str, Any]:
        """Read the pipeline's running tests from the monitoring store, load each challenger
        (smoke-tested; versions already loaded are reused) and swap the table of active tests in.

        Returns ``{"tests": [...], "errors": {test_id: message}}``: a test whose challenger cannot
        be loaded (or that does not fit the pipeline) is reported and not routed; the others are.
        Raises :class:`ModelLoadError` (``unavailable``, 503) when the store cannot be read, and
        ``busy`` while another refresh runs; the previous tests then stay active.
        """
        if not self._tests_lock.acquire(blocking=False):
            raise ModelLoadError("another A/B test refresh is in progress", outcome="busy", status_code=409)
        try:
            try:
                running = abtest.running_tests(store.get_engine(self.settings.monitoring_db_uri), self.config.name)
            except Exception as err:
                raise ModelLoadError(f"monitoring store unavailable: {type(err).__name__}: {err}".splitlines()[0],
                                     outcome="unavailable", status_code=503) from err
            loaded = {a.test.challenger_version: a.challenger for a in self._tests.values()}
            active: dict[str, ActiveTest] = {}
            errors: dict[str, str] = {}
            for test in running:
                try:
                    abtest.check_test(self.config, test)
                    model = loaded.get(test.challenger_version) or self.load(version=test.challenger_version)
                except (abtest.ABTestError, ModelLoadError) as err:
                    errors[test.test_id] = str(err)
                    log.error("A/B test %s not routed: %s", test.test_id, err)
                    continue
                loaded[test.challenger_version] = model
                variant = abtest.SHADOW if test.mode == "shadow" else abtest.CHALLENGER
                active[test.tenant] = ActiveTest(test, replace(model, alias=None, variant=variant))
            self._tests = active  # the swap: one reference assignment
        finally:
            self._tests_lock.release()
        log.info("A/B tests active: %s", {t: a.test.test_id for t, a in active.items()} or "none")
        return {"tests": [a.describe() for a in active.values()], "errors": errors}

    def load_initial(self) -> None:
        """Startup: try to serve the champion; log and stay not-ready on any failure."""
        try:
            self.reload(alias=DEFAULT_ALIAS)
        except ModelLoadError as err:
            if err.outcome == "not_found":
                log.warning("no %s@%s to serve yet: %s", self.model_name, DEFAULT_ALIAS, err)
            else:
                log.error("could not load %s@%s at startup: %s", self.model_name, DEFAULT_ALIAS, err)


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------


class ReloadRequest(BaseModel):
    """Body of ``POST /reload``: an alias or a version (neither = the champion)."""

    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    version: Annotated[str, Field(pattern=r"^[0-9]+$")] | Annotated[int, Field(ge=1)] | None = None

    def target(self) -> tuple[str | None, str | None]:
        """``(alias, version)`` with exactly one set; raise ``ValueError`` if both are given."""
        if self.alias is not None and self.version is not None:
            raise ValueError("give either 'alias' or 'version', not both")
        if self.version is not None:
            return None, str(self.version)
        return self.alias or DEFAULT_ALIAS, None


def _json(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
          background: BackgroundTask | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=dict(headers) if headers else None,
                        background=background)


def _admin_denied(request: Request, admin_token: str | None, action: str, outcomes: Counter) -> JSONResponse | None:
    """The 401/403 answer when ``request`` lacks the admin token (see :func:`check_admin_token`),
    counted in ``outcomes`` as ``unauthorized`` / ``forbidden``; None when the token is right."""
    denied = check_admin_token(request.headers.get("authorization"), admin_token)
    if denied is None:
        return None
    outcomes.labels("forbidden" if denied == 403 else "unauthorized").inc()
    message = f"{action} is disabled: no admin token configured" if denied == 403 else "invalid or missing bearer token"
    return _json({"detail": message}, denied, {"WWW-Authenticate": "Bearer"} if denied == 401 else None)


def check_admin_token(authorization: str | None, admin_token: str | None) -> int | None:
    """``None`` if ``authorization`` carries the admin token, else the HTTP status to answer.

    403 when no admin token is configured (admin endpoints are never open), 401 when the header
    is missing or the token is wrong. The comparison takes constant time.
    """
    if not admin_token:
        return 403
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401
    if not secrets.compare_digest(token.strip().encode(), admin_token.encode()):
        return 401
    return None


_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


def request_tenant(request: Request, default: str = DEFAULT_TENANT) -> str:
    """The ``X-Tenant`` header (default: the pipeline's tenant); 422 unless 1-100 of
    ``[A-Za-z0-9_.:@-]``. Which values a route accepts is checked by :mod:`airloop.gateway`."""
    tenant = request.headers.get("x-tenant", "").strip()
    if not tenant:
        return default
    if len(tenant) > 100 or not set(tenant) <= _TENANT_CHARS:
        raise RecordValidationError([{
            "record": None, "field": "X-Tenant",
            "message": "X-Tenant must be 1-100 characters of letters, digits and _ . : @ -",
        }])
    return tenant


def score_function(config: PipelineConfig) -> Callable[[dict[str, Any]], float | None]:
    """How one prediction becomes the logged ``score``: the positive class's probability
    (``classes[-1]``) for binary tasks, the top probability for multi-class, the value for
    regression."""
    if config.task == "regression":
        def regression(item: dict[str, Any]) -> float | None:
            value = item.get("prediction")
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return regression
    if config.task == "binary_classification":
        positive = str(config.classes[-1]) if config.classes else None

        def binary(item: dict[str, Any]) -> float | None:
            return (item.get("probabilities") or {}).get(positive)
        return binary

    def multiclass(item: dict[str, Any]) -> float | None:
        probabilities = item.get("probabilities")
        return max(probabilities.values()) if probabilities else None
    return multiclass


def new_request_ids(n: int) -> list[str]:
    """``n`` fresh request ids: UUIDv7 (RFC 9562) as 32 hex digits, like ``uuid4().hex``.

    Version 7 puts the Unix time in milliseconds first, then 74 random bits (one ``os.urandom``
    call for the whole request). Time-ordered ids matter for the prediction log: its primary
    key index then grows at its right edge, where random uuid4 keys land anywhere in it — on a
    600k-row SQLite log an insert cost 30 us of CPU with uuid4 ids and 8 us with these, which
    decided the logging overhead of batch requests. Not guessable: 74 bits from the OS's CSPRNG
    per id. Python 3.14's ``uuid.uuid7`` is the same layout.
    """
    if n <= 0:
        return []
    prefix = f"{time.time_ns() // 1_000_000:012x}7"
    rnd = os.urandom(10 * n).hex()
    return [f"{prefix}{rnd[i:i + 3]}{_VARIANT[rnd[i + 3]]}{rnd[i + 4:i + 19]}" for i in range(0, 20 * n, 20)]


#: RFC 9562 variant bits (10xx) for a random hex digit: keeps its two low bits.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def prediction_rows(
    model: ServedModel,
    pipeline: str,
    tenant: str,
    validated: Sequence[BaseModel],
    predictions: Sequence[dict[str, Any]],
    request_ids: Sequence[str],
    event_ts: Sequence[datetime] | None,
    now: datetime,
    latency_ms: float,
    score: Callable[[dict[str, Any]], float | None],
) -> list[dict[str, Any]]:
    """One ``predictions`` row per record (``features``/``prediction`` as Python objects: the
    logger's writer thread JSON-encodes them)."""
    as_dict = model.schema.as_dict
    rows = []
    for i, (row, item) in enumerate(zip(validated, predictions)):
        rows.append({
            "request_id": request_ids[i],
            "ts": event_ts[i] if event_ts is not None else now,
            "tenant": tenant,
            "pipeline": pipeline,
            "model_name": model.name,
            "model_version": model.version,
            "variant": model.variant,
            "features": as_dict(row),
            "prediction": item["prediction"],
            "score": score(item),
            "latency_ms": latency_ms,
            "status": "ok",
        })
    return rows


def request_key_header(request: Request) -> str | None:
    """The ``X-Request-Key`` header (None when absent); 422 unless 1-200 printable characters."""
    key = request.headers.get("x-request-key")
    if key is None or not key.strip():
        return None
    if len(key) > MAX_REQUEST_KEY_LENGTH or not key.isprintable():
        raise RecordValidationError([{
            "record": None, "field": abtest.KEY_HEADER_NAME,
            "message": f"{abtest.KEY_HEADER_NAME} must be 1-{MAX_REQUEST_KEY_LENGTH} printable characters",
        }])
    return key


def error_row(
    model: ServedModel, pipeline: str, tenant: str, parsed: PredictRequest | None, now: datetime,
    latency_ms: float, err: BaseException,
) -> dict[str, Any]:
    """The one ``error`` row of a request whose prediction failed (a fresh request id, so a
    retry with the client's ids is still logged)."""
    records = parsed.records if parsed is not None else []
    features: Any = records[0] if len(records) == 1 else {"batch_size": len(records), "records": records[:10]}
    return {
        "request_id": new_request_ids(1)[0],
        "ts": parsed.event_ts[0] if parsed is not None and parsed.event_ts else now,
        "tenant": tenant,
        "pipeline": pipeline,
        "model_name": model.name,
        "model_version": model.version,
        "variant": model.variant,
        "features": features,
        "prediction": None,
        "score": None,
        "latency_ms": latency_ms,
        "status": "error",
        "error": f"{type(err).__name__}: {err}"[:2000],
    }


# --------------------------------------------------------------------------------------------
# Micro-batched prediction: concurrent requests share one model call per served version
# --------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class PredictJob:
    """One ``/predict`` request as the micro-batcher carries it: parsed, validated against its
    champion snapshot's schema and (in an A/B test) routed record by record."""

    #: The champion snapshot read when the request arrived: it answers the whole request, even
    #: when a reload swaps another version in meanwhile.
    model: ServedModel
    parsed: PredictRequest
    validated: list[BaseModel]
    request_ids: list[str]
    tenant: str
    #: ``time.perf_counter()`` when the request arrived.
    started: float
    #: The A/B test routing this request (None: the champion answers every record).
    active: ActiveTest | None = None
    #: Per record: ``champion`` or ``challenger`` (A/B tests only).
    variants: list[str] | None = None

    @property
    def size(self) -> int:
        """Records in the request."""
        return len(self.validated)


def prepare_job(model: ServedModel, active: ActiveTest | None, parsed: PredictRequest, tenant: str, started: float,
                header_key: str | None = None) -> PredictJob:
    """Validate a request against ``model``'s schema (422 with field errors), draw its request ids
    and, in an A/B test (``active``), route each record by its key."""
    validated = model.schema.validate(parsed.records)
    request_ids = parsed.request_ids or new_request_ids(len(validated))
    if active is None or active.test.mode != "ab":
        return PredictJob(model, parsed, validated, request_ids, tenant, started)
    variants = active.route(parsed.records, request_ids, header_key)
    return PredictJob(model, parsed, validated, request_ids, tenant, started, active, variants)


@dataclass(slots=True)
class _JobOutcome:
    """What one batch produced for one job: items and rows by variant, or the job's failure."""

    items: list[dict[str, Any] | None]
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None


def _grouped(indices: Iterable[int], key: Callable[[int], Any]) -> list[list[int]]:
    """``indices`` grouped by ``key`` (first-seen order)."""
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())


def predict_parts(model: ServedModel, parts: Sequence[Sequence[BaseModel]]) -> list[tuple[Any, float]]:
    """Predict several requests' validated rows with **one** call of ``model`` (one frame built from
    all of them); return per part ``(items or exception, call seconds)``.

    When the shared call fails, every part is predicted alone, so only the part that makes the
    model fail gets the exception.
    """
    rows = [row for part in parts for row in part]
    if not rows:
        return [([], 0.0) for _ in parts]
    t0 = time.perf_counter()
    try:
        items = model.predictor.predict(model.schema.to_frame(rows))
        if len(items) != len(rows):
            raise RuntimeError(f"{len(items)} predictions for {len(rows)} records")
    except Exception as err:
        if len(parts) == 1:
            return [(err, time.perf_counter() - t0)]
        log.warning("a batch of %d requests failed (%s: %s); predicting each request alone",
                    len(parts), type(err).__name__, err)
        return [predict_parts(model, [part])[0] for part in parts]
    seconds = time.perf_counter() - t0
    out, offset = [], 0
    for part in parts:
        out.append((items[offset:offset + len(part)], seconds))
        offset += len(part)
    return out


def predict_jobs(jobs: Sequence[PredictJob], pipeline: str, score: Callable[[dict[str, Any]], float | None],
                 metrics: ServingMetrics) -> list[Any]:
    """Answer a batch of requests; return per job ``(predictions, log rows)`` or its exception.

    One predict call per served version: every champion snapshot answers the records of its jobs
    together, every A/B challenger likewise (validated against its own schema first). A challenger
    failing on a job's records never fails the job: the champion answers them as ``fallback``
    and the job gets one challenger ``error`` row. Each row's ``latency_ms`` is the request's time
    from arrival to the start of the batch plus the model call of its variant.
    """
    dispatched = time.perf_counter()
    now = datetime.now(timezone.utc)
    out = [_JobOutcome([None] * job.size) for job in jobs]
    champion_idx: list[list[int]] = [list(range(job.size)) for job in jobs]  # records the champion answers
    fallback: list[list[int]] = [[] for _ in jobs]

    def answer(j: int, served: ServedModel, idx: list[int], items: list[dict[str, Any]], seconds: float) -> None:
        job, outcome = jobs[j], out[j]
        extra = {"variant": served.variant, "model_version": served.version} if job.active is not None else {}
        for i, item in zip(idx, items):
            item["request_id"] = job.request_ids[i]
            item.update(extra)
            outcome.items[i] = item
        event_ts = job.parsed.event_ts
        latency_ms = (dispatched - job.started + seconds) * 1000.0
        outcome.rows.extend(prediction_rows(
            served, pipeline, job.tenant, [job.validated[i] for i in idx], items, [job.request_ids[i] for i in idx],
            [event_ts[i] for i in idx] if event_ts is not None else None, now, latency_ms, score,
        ))
        if job.active is not None:
            metrics.ab_records.labels(served.variant).inc(len(idx))

    # A/B challengers first: their failures move records back to the champion's call.
    routed = [j for j, job in enumerate(jobs) if job.variants is not None and abtest.CHALLENGER in job.variants]
    for group in _grouped(routed, lambda j: id(jobs[j].active.challenger)):  # type: ignore[union-attr]
        challenger = jobs[group[0]].active.challenger  # type: ignore[union-attr]
        parts: list[tuple[int, list[int], list[BaseModel]]] = []
        for j in group:
            job = jobs[j]
            idx = [i for i, v in enumerate(job.variants or ()) if v == abtest.CHALLENGER]
            t0 = time.perf_counter()
            try:  # the challenger's own schema may be stricter than the champion's
                parts.append((j, idx, challenger.schema.validate([job.parsed.records[i] for i in idx])))
            except Exception as err:
                _challenger_failed(job, challenger, err, time.perf_counter() - t0, out[j], fallback[j], idx,
                                   pipeline, now)
        results = predict_parts(challenger, [rows for _, _, rows in parts])
        for (j, idx, _), (items, seconds) in zip(parts, results):
            if isinstance(items, BaseException):
                _challenger_failed(jobs[j], challenger, items, seconds, out[j], fallback[j], idx, pipeline, now)
            else:
                answer(j, challenger, idx, items, seconds)
    for j in routed:
        falls = set(fallback[j])
        champion_idx[j] = [i for i, v in enumerate(jobs[j].variants or ()) if v != abtest.CHALLENGER or i in falls]

    for group in _grouped(range(len(jobs)), lambda j: id(jobs[j].model)):
        model = jobs[group[0]].model
        results = predict_parts(model, [[jobs[j].validated[i] for i in champion_idx[j]] for j in group])
        for j, (items, seconds) in zip(group, results):
            if isinstance(items, BaseException):
                out[j].error = items
                continue
            by_index = dict(zip(champion_idx[j], items))
            falls = set(fallback[j])
            own = [i for i in champion_idx[j] if i not in falls]
            if own:
                answer(j, model, own, [by_index[i] for i in own], seconds)
            if falls:
                answer(j, replace(model, variant=abtest.FALLBACK), fallback[j], [by_index[i] for i in fallback[j]],
                       seconds)
    finished = time.perf_counter()
    outcomes: list[Any] = []
    for job, outcome in zip(jobs, out):
        if outcome.error is not None:
            outcomes.append(outcome.error)
            continue
        metrics.latency.observe(finished - job.started)
        outcomes.append((outcome.items, outcome.rows))
    return outcomes


def _challenger_failed(job: PredictJob, challenger: ServedModel, err: BaseException, seconds: float,
                       outcome: _JobOutcome, fallback: list[int], idx: list[int], pipeline: str, now: datetime) -> None:
    """A challenger could not answer ``job``'s records ``idx``: the champion will (``fallback``); one
    challenger ``error`` row is logged for the request."""
    log.warning("A/B test %s: challenger v%s failed, the champion answers: %s",
                job.active.test.test_id if job.active else "?", challenger.version, err)
    outcome.rows.append(error_row(challenger, pipeline, job.tenant, job.parsed, now, seconds * 1000.0, err))
    fallback.extend(idx)


class FeedbackItem(BaseModel):
    """One label of ``POST /feedback``."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]
    label: Any = Field(...)
    label_ts: StrictStr | None = None


def _same_value(a: Any, b: Any) -> bool:
    """JSON equality that does not confuse booleans with 0/1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def canonical_label(label: Any, config: PipelineConfig) -> Any:
    """The label as stored: one of ``config.classes`` (the value, or its string form as in the
    ``probabilities`` keys) for classification, a finite number for regression. ``ValueError``
    otherwise."""
    if config.task == "regression":
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise ValueError(f"label must be a finite number for a regression pipeline, got {label!r:.80}")
        return label
    classes = config.classes or []
    for cls in classes:
        if _same_value(label, cls) or (isinstance(label, str) and not isinstance(cls, str) and label == str(cls)):
            return cls
    raise ValueError(f"label must be one of the pipeline's classes {classes}, got {label!r:.80}")


def _feedback_error(message: str, status_code: int = 422, field_name: str | None = None) -> RecordValidationError:
    return RecordValidationError([{"item": None, "field": field_name, "message": message}], status_code)


def parse_feedback_body(body: bytes, config: PipelineConfig) -> list[dict[str, Any]]:
    """Validate a ``/feedback`` body; return ``[{"request_id", "label", "label_ts"}]``.

    A body is one item ``{"request_id", "label", "label_ts"?}`` or ``{"items": [ ... ]}`` with
    1..MAX_FEEDBACK_ITEMS items; ``label`` is canonicalised (:func:`canonical_label`) and
    ``label_ts`` parsed to UTC (None when absent). Request ids must be unique within a body.
    Raises :class:`RecordValidationError` with ``{"item", "field", "message"}`` errors (422, or
    413 for too many items).
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _feedback_error(f"body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise _feedback_error('body must be a JSON object: one label or {"items": [ ... ]}')
    if "items" in payload:
        if payload.keys() != {"items"}:
            raise _feedback_error(f'unknown field(s) next to "items": {sorted(set(payload) - {"items"})}')
        items = payload["items"]
        if not isinstance(items, list) or not items:
            raise _feedback_error('"items" must be a non-empty list of labels', field_name="items")
        if len(items) > MAX_FEEDBACK_ITEMS:
            raise _feedback_error(f"at most {MAX_FEEDBACK_ITEMS} items per request, got {len(items)}", 413, "items")
    else:
        items = [payload]
    out: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(items):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        try:
            item = FeedbackItem.model_validate(raw)
        except ValidationError as err:
            errors.extend(
                {"item": i, "field": ".".join(map(str, e["loc"])) or None, "message": e["msg"]}
                for e in err.errors(include_url=False)
            )
            continue
        try:
            label = canonical_label(item.label, config)
        except ValueError as err:
            errors.append({"item": i, "field": "label", "message": str(err)})
            continue
        label_ts = None
        if item.label_ts is not None:
            try:
                label_ts = to_utc(item.label_ts)
            except ValueError:
                errors.append({"item": i, "field": "label_ts",
                               "message": f"not an ISO-8601 timestamp: {item.label_ts!r:.80}"})
                continue
        if item.request_id in seen:
            errors.append({"item": i, "field": "request_id",
                           "message": f"duplicate request id {item.request_id!r} (also item {seen[item.request_id]})"})
            continue
        seen[item.request_id] = i
        out.append({"request_id": item.request_id, "label": label, "label_ts": label_ts})
    if errors:
        raise RecordValidationError(errors[:MAX_REPORTED_ERRORS])
    return out


def write_feedback(uri: str, rows: list[dict[str, Any]]) -> int:
    """Upsert ``ground_truth`` rows (a label sent again overwrites the earlier one)."""
    return store.upsert(store.get_engine(uri), store.ground_truth, rows)


def _not_ready(manager: ModelManager) -> JSONResponse:
    reason = manager.last_error or f"no model loaded for {manager.model_name}"
    return _json({"status": "not ready", "detail": reason}, 503)


def _add_routes(
    app: FastAPI,
    manager: ModelManager,
    metrics: ServingMetrics,
    settings: Settings,
    prediction_logger: PredictionLogger | None = None,
    shadow_logger: PredictionLogger | None = None,
    ab_tests: bool = False,
    batching: BatchingConfig | None = None,
) -> None:
    """Register the endpoints on ``app`` (predictions are logged to ``prediction_logger``, shadow
    predictions to ``shadow_logger``; ``ab_tests`` enables ``POST /abtest/refresh``; concurrent
    ``/predict`` requests are micro-batched by ``app.state.batcher`` as ``batching`` says)."""
    batching = batching or BatchingConfig()
    pipeline = manager.config.name
    score = score_function(manager.config)

    def log_rows(rows: list[dict[str, Any]]) -> None:
        if prediction_logger is not None:
            prediction_logger.log(rows)

    def run_batch(jobs: list[PredictJob]) -> list[Any]:
        """The batcher's ``run``: predict, then enqueue the batch's log rows with one call."""
        metrics.batch_requests.observe(len(jobs))
        metrics.batch_records.observe(sum(job.size for job in jobs))
        outcomes = predict_jobs(jobs, pipeline, score, metrics)
        log_rows([row for outcome in outcomes if not isinstance(outcome, BaseException) for row in outcome[1]])
        return outcomes

    batcher: MicroBatcher[PredictJob] = MicroBatcher(
        run_batch, max_wait_s=batching.max_wait_s, max_records=batching.max_records,
        offload_records=INLINE_BATCH_RECORDS,
    )
    app.state.batcher = batcher

    def shadow_score(active: ActiveTest, parsed: PredictRequest, request_ids: list[str], tenant: str) -> None:
        """Shadow mode, after the response: the challenger scores the request's records; its rows
        (or one error row) go to ``shadow_predictions``. Never raises."""
        challenger = active.challenger
        started = time.perf_counter()
        now = datetime.now(timezone.utc)
        try:
            try:
                validated, items = challenger.predict_validated(parsed.records)
                rows = prediction_rows(challenger, pipeline, tenant, validated, items, request_ids, parsed.event_ts,
                                       now, (time.perf_counter() - started) * 1000.0, score)
            except Exception as err:
                log.warning("shadow test %s: challenger v%s failed: %s", active.test.test_id, challenger.version, err)
                rows = [error_row(challenger, pipeline, tenant, parsed, now, (time.perf_counter() - started) * 1000.0,
                                  err)]
            metrics.ab_records.labels(abtest.SHADOW).inc(len(rows))
            if shadow_logger is not None:
                shadow_logger.log(rows)
        except Exception:  # the response is already sent; nothing may escape into the server
            log.exception("shadow test %s: could not log the challenger's rows", active.test.test_id)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Predict one record or ``{"records": [...], "request_ids"?: [...], "event_ts"?: [...]}``."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        tests = manager.tests
        started = time.perf_counter()
        parsed: PredictRequest | None = None
        tenant = manager.config.tenant
        active: ActiveTest | None = None
        background = None
        try:
            with batcher.incoming():  # a forming batch waits for this request (see airloop.batching)
                tenant = request_tenant(request, manager.config.tenant)
                active = tests.get(tenant) if tests else None
                parsed = parse_predict_request(await request.body())
                header_key = None
                if active is not None and active.test.mode == "ab" and active.test.key_field == abtest.KEY_HEADER:
                    header_key = request_key_header(request)
                job = prepare_job(model, active, parsed, tenant, started, header_key)
            predictions, _ = await batcher.submit(job, job.size)
            if active is not None and active.test.mode == "shadow":
                background = BackgroundTask(shadow_score, active, parsed, job.request_ids, tenant)
        except RecordValidationError as err:
            return _json({"detail": err.errors}, err.status_code)
        except Exception as err:
            log.exception("prediction failed (model %s v%s)", model.name, model.version)
            latency_ms = (time.perf_counter() - started) * 1000.0
            log_rows([error_row(model, pipeline, tenant, parsed, datetime.now(timezone.utc), latency_ms, err)])
            return _json({"detail": "prediction failed"}, 500)
        metrics.records.inc(len(predictions))
        body: dict[str, Any] = {"model": model.ref(), "predictions": predictions}
        if active is not None and active.test.mode == "ab":
            body["abtest"] = active.test.test_id
        return _json(body, background=background)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """Labels for earlier predictions: ``{"request_id", "label", "label_ts"?}`` or
        ``{"items": [...]}``, upserted into ``ground_truth`` (503 when the store is down)."""
        try:
            tenant = request_tenant(request, manager.config.tenant)
            items = parse_feedback_body(await request.body(), manager.config)
        except RecordValidationError as err:
            return _json({"detail": err.errors}, err.status_code)
        received_at = datetime.now(timezone.utc)
        rows = [
            {
                "request_id": item["request_id"],
                "tenant": tenant,
                "pipeline": pipeline,
                "label": json.dumps(item["label"]),
                "label_ts": item["label_ts"] or received_at,
                "received_at": received_at,
            }
            for item in items
        ]
        try:
            written = await run_in_threadpool(write_feedback, settings.monitoring_db_uri, rows)
        except (sa.exc.SQLAlchemyError, OSError) as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log.warning("feedback not stored, monitoring store unavailable: %s", reason)
            return _json(
                {"detail": f"monitoring database unavailable; the feedback was not stored, retry later ({reason})"},
                503, {"Retry-After": "5"},
            )
        metrics.feedback_labels.inc(written)
        return _json({"written": written})

    @app.get("/health")
    async def health() -> Response:
        """Process liveness (always 200)."""
        model = manager.current
        logged = None
        if prediction_logger is not None:
            stats = prediction_logger.stats()
            logged = {"db_up": stats.db_up, "queue_depth": stats.queue_depth, "spool_files": stats.spool_files,
                      "last_error": stats.last_error}
        return _json({
            "status": "ok",
            "pipeline": manager.config.name,
            "model_loaded": model is not None,
            "model_version": model.version if model else None,
            "last_error": manager.last_error,
            "prediction_log": logged,
        })

    @app.get("/ready")
    async def ready() -> Response:
        """200 when a model is loaded, else 503."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        return _json({"status": "ready", "model": model.ref()})

    @app.get("/model")
    async def model_info() -> Response:
        """The loaded version: name, version, alias, run, metrics, tags, inputs."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        return _json(model.describe())

    @app.post("/reload")
    async def reload(request: Request) -> Response:
        """Load another version (admin token), smoke-test it and swap it in."""
        denied = _admin_denied(request, settings.admin_token, "reload", metrics.reloads)
        if denied is not None:
            return denied
        raw = await request.body()
        try:
            alias, version = ReloadRequest.model_validate_json(raw or b"{}").target()
        except (ValidationError, ValueError) as err:
            metrics.reloads.labels("invalid").inc()
            if isinstance(err, ValidationError):
                errors = err.errors(include_url=False)
            else:
                errors = [{"loc": (), "msg": str(err)}]
            detail = [{"field": ".".join(map(str, e["loc"])) or None, "message": e["msg"]} for e in errors]
            return _json({"detail": detail}, 422)
        try:
            new, previous = await run_in_threadpool(manager.reload, alias, version)
        except ModelLoadError as err:
            metrics.reloads.labels(err.outcome).inc()
            current = manager.current
            log.warning("reload to %s refused: %s", alias or f"version {version}", err)
            return _json(
                {"detail": str(err), "outcome": err.outcome, "serving": current.ref() if current else None},
                err.status_code,
            )
        metrics.reloads.labels("success").inc()
        return _json({"model": new.describe(), "previous_version": previous.version if previous else None})

    @app.get("/abtest")
    async def abtest_info() -> Response:
        """The active A/B and shadow tests (one per tenant) and the champion serving beside them."""
        model = manager.current
        tests = []
        for active in manager.tests.values():
            info = active.describe()
            if model is not None and model.version != active.test.champion_version:
                info["warning"] = (f"serving champion v{model.version}, the test compares v{active.test.champion_version}:"
                                   " its champion rows are not counted")
            tests.append(info)
        return _json({"enabled": ab_tests, "champion": model.ref() if model else None, "tests": tests})

    @app.post("/abtest/refresh")
    async def abtest_refresh(request: Request) -> Response:
        """Re-read the running tests from the monitoring store (admin token) and route by them."""
        denied = _admin_denied(request, settings.admin_token, "A/B test refresh", metrics.abtest_refreshes)
        if denied is not None:
            return denied
        if not ab_tests:
            metrics.abtest_refreshes.labels("disabled").inc()
            return _json({"detail": "A/B tests are disabled in this process (prediction logging is off)"}, 409)
        try:
            outcome = await run_in_threadpool(manager.refresh_tests)
        except ModelLoadError as err:
            metrics.abtest_refreshes.labels(err.outcome).inc()
            return _json({"detail": str(err), "outcome": err.outcome}, err.status_code)
        failed = bool(outcome["errors"])
        metrics.abtest_refreshes.labels("partial" if failed else "success").inc()
        return _json(outcome, 409 if failed else 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    settings: Settings | None = None, pipeline: str | None = None, log_predictions: bool = True,
    ab_tests: bool | None = None, batching: BatchingConfig | None = None,
) -> FastAPI:
    """Build the serving app for ``pipeline`` (default ``settings.default_pipeline``).

    The champion is loaded during the app's startup (lifespan), in a worker thread; startup waits
    up to :data:`STARTUP_LOAD_WAIT_S` for it and then serves regardless (``/ready`` says 503 until
    a model is loaded; ``POST /reload`` can load one later). A wrong pipeline name raises
    :class:`~airloop.config.ConfigError` immediately.

    With ``log_predictions`` (default) every prediction is logged to ``settings.monitoring_db_uri``
    through a :class:`~airloop.predlog.PredictionLogger` (``app.state.prediction_logger``),
    started with the app and drained on shutdown; the store may be down at startup.

    ``ab_tests`` (default: as ``log_predictions``; a test without logged rows cannot be evaluated)
    makes the app read the running A/B and shadow tests at startup, after the champion, and on
    ``POST /abtest/refresh``; shadow rows go through ``app.state.shadow_logger``.

    Once the champion is loaded, the startup heap (a few hundred thousand objects of pandas,
    scikit-learn, MLflow, FastAPI and the model) is moved out of the garbage collector's reach with
    :func:`gc.freeze` (after a :func:`gc.collect`, so only live objects are frozen): otherwise every
    full collection, triggered every few seconds by log rows surviving in the logger's queue, walks
    all of it and stalls every request for tens to hundreds of milliseconds (the p99).
    ``AIRLOOP_SERVING_GC_FREEZE=0`` turns this off.

    Concurrent ``/predict`` requests share model calls (``batching``, default
    :meth:`BatchingConfig.from_env`): each is validated on its own, then waits at most
    ``max_wait_s`` for others, and gets exactly its own predictions, request ids, latency and log rows.
    """
    settings = settings or get_settings()
    config = load_pipeline_config(pipeline or settings.default_pipeline, settings)
    batching = batching or BatchingConfig.from_env()
    metrics = ServingMetrics()
    manager = ModelManager(settings, config, metrics)
    metrics.model_version.labels(manager.model_name).set(0)
    ab_tests = log_predictions if ab_tests is None else ab_tests
    prediction_logger = shadow_logger = None
    if log_predictions:
        spool = spool_dir_for(settings.state_dir, config.name)
        prediction_logger = PredictionLogger.for_uri(
            settings.monitoring_db_uri, spool, autostart=False, name=f"airloop-predlog-{config.name}",
        )
        metrics.registry.register(PredictionLogCollector(prediction_logger))
        shadow_logger = PredictionLogger.for_uri(
            settings.monitoring_db_uri, spool / "shadow", table=store.shadow_predictions, autostart=False,
            name=f"airloop-shadowlog-{config.name}",
        )
        metrics.registry.register(PredictionLogCollector(shadow_logger, prefix="airloop_shadowlog"))
    loggers = [lg for lg in (prediction_logger, shadow_logger) if lg is not None]

    def initial_load() -> None:
        manager.load_initial()
        if ab_tests:
            try:
                manager.refresh_tests()
            except ModelLoadError as err:
                log.warning("A/B tests not read at startup (POST /abtest/refresh later): %s", err)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for logger in loggers:
            logger.start()
        loader = threading.Thread(target=initial_load, name="airloop-initial-load", daemon=True)
        loader.start()
        await anyio.to_thread.run_sync(loader.join, STARTUP_LOAD_WAIT_S)
        if loader.is_alive():
            log.warning("model still loading after %.0fs; serving without a model meanwhile", STARTUP_LOAD_WAIT_S)
        elif os.environ.get(GC_FREEZE_ENV, "1") != "0":
            gc.collect()
            gc.freeze()  # the startup heap (libraries, the model): full collections no longer walk it
        try:
            yield
        finally:
            await app.state.batcher.aclose()
            for logger in loggers:
                await anyio.to_thread.run_sync(logger.close, SHUTDOWN_FLUSH_S)

    app = FastAPI(
        title=f"airloop serving: {config.name}",
        description=config.description,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.prediction_logger = prediction_logger
    app.state.shadow_logger = shadow_logger
    _add_routes(app, manager, metrics, settings, prediction_logger, shadow_logger, ab_tests, batching)
    app.add_middleware(_RequestCounter, metrics=metrics)
    from airloop.gateway import add_tenant_guard

    add_tenant_guard(app, config, settings)  # /t/<tenant>/<pipeline> routes, tenant token, tenant rows
    return app
