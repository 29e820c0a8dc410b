"""The predict path: jobs, micro-batched model calls, log rows."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from airloop.core import names as abtest
from airloop.core.settings import AIRLOOP_SERVING_BATCH_MAX_RECORDS, AIRLOOP_SERVING_BATCH_WAIT_MS
from airloop.models.schema import RecordValidationError, ValidatedRecords
from airloop.serving.metrics import ServingMetrics
from airloop.serving.runtime import ActiveTest, ServedModel
from airloop.serving.schema import MAX_BATCH_RECORDS, PredictRequest, out_of_domain_errors

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The answer of POST /predict (documented in OpenAPI; the route builds the same JSON)
# --------------------------------------------------------------------------------------------


class ModelRef(BaseModel):
    """The version that answered."""

    name: str
    version: str
    alias: str | None = None


class PredictionItem(BaseModel):
    """One record's answer. Binary classifiers: ``prediction`` is the positive class when its
    probability is ``>= threshold`` (the version's tuned decision threshold), else the other."""

    request_id: str
    prediction: Any = Field(description="The label (classification) or the predicted value (regression)")
    probabilities: dict[str, float] | None = Field(default=None, description="Class -> calibrated probability")
    threshold: float | None = Field(default=None, description="Decision threshold of the positive class's "
                                                              "probability (binary tasks)")
    variant: str | None = Field(default=None, description="A/B tests: champion, challenger or fallback")
    model_version: str | None = Field(default=None, description="A/B tests: the version that answered the record")


class PredictResponse(BaseModel):
    """``POST /predict``'s answer."""

    model: ModelRef
    predictions: list[PredictionItem]
    abtest: str | None = Field(default=None, description="The A/B test that routed the request, if any")


#: Batches larger than this are predicted in a worker thread so the event loop stays responsive.
INLINE_BATCH_RECORDS = 256


#: Environment variable: longest wait (ms) of a request for others to share its model call.
BATCH_WAIT_ENV = AIRLOOP_SERVING_BATCH_WAIT_MS.name


#: Environment variable: most records in one micro-batch (1 turns micro-batching off).
BATCH_MAX_RECORDS_ENV = AIRLOOP_SERVING_BATCH_MAX_RECORDS.name


DEFAULT_BATCH_WAIT_MS: float = AIRLOOP_SERVING_BATCH_WAIT_MS.default


DEFAULT_BATCH_MAX_RECORDS: int = AIRLOOP_SERVING_BATCH_MAX_RECORDS.default


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Micro-batching of concurrent ``/predict`` requests (see :mod:`airloop.serving.batching`)."""

    #: Longest time the oldest queued request waits for others (it never waits when none is coming).
    max_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000.0
    #: Most records in one model call; a request this large or larger is predicted alone.
    max_records: int = DEFAULT_BATCH_MAX_RECORDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BatchingConfig":
        """Read :data:`BATCH_WAIT_ENV` and :data:`BATCH_MAX_RECORDS_ENV` (defaults when unset);
        ``ValueError`` for a negative wait, more than 1000 ms, or a size outside 1..10000."""
        env = os.environ if env is None else env
        wait_ms = float(AIRLOOP_SERVING_BATCH_WAIT_MS.get(env))
        max_records = int(AIRLOOP_SERVING_BATCH_MAX_RECORDS.get(env))
        if not 0.0 <= wait_ms <= 1000.0 or not math.isfinite(wait_ms):
            raise ValueError(f"{BATCH_WAIT_ENV} must be between 0 and 1000 ms, got {wait_ms}")
        if not 1 <= max_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"{BATCH_MAX_RECORDS_ENV} must be between 1 and {MAX_BATCH_RECORDS}, got {max_records}")
        return cls(wait_ms / 1000.0, max_records)


def new_request_ids(n: int) -> list[str]:
    """``n`` fresh request ids: UUIDv7 (RFC 9562) as 32 hex digits, like ``uuid4().hex``.

    Version 7 puts the Unix time in milliseconds first, then 74 random bits (from
    :data:`_RANDOM`: the OS's CSPRNG, read 64 KiB at a time). Time-ordered ids matter for the prediction log: its primary
    key index then grows at its right edge, where random uuid4 keys land anywhere in it — on a
    600k-row SQLite log an insert cost 30 us of CPU with uuid4 ids and 8 us with these, which
    decided the logging overhead of batch requests. Not guessable: 74 bits from the OS's CSPRNG
    per id. Python 3.14's ``uuid.uuid7`` is the same layout.
    """
    if n <= 0:
        return []
    prefix = f"{time.time_ns() // 1_000_000:012x}7"
    rnd = _RANDOM.take(10 * n).hex()
    return [f"{prefix}{rnd[i:i + 3]}{_VARIANT[rnd[i + 3]]}{rnd[i + 4:i + 19]}" for i in range(0, 20 * n, 20)]


class RandomPool:
    """Bytes of ``os.urandom`` handed out in pieces, read ``chunk`` bytes at a time.

    ``os.urandom`` releases the GIL around its system call; in a serving process whose log
    writer thread is busy, every release let that thread run until the interpreter's switch
    interval (5 ms) took the GIL back, which made one ``os.urandom`` per request cost 1.7 ms of a
    100-record request's latency (py-spy, logging on). One read per ``chunk`` bytes instead (3,276
    requests of one record at 64 KiB). A forked child starts with an empty pool: it never hands
    out its parent's bytes."""

    def __init__(self, chunk: int = 64 * 1024) -> None:
        self.chunk = chunk
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0

    def take(self, n: int) -> bytes:
        """``n`` fresh random bytes (never handed out before)."""
        with self._lock:
            if self._offset + n > len(self._buffer):
                self._buffer, self._offset = os.urandom(max(self.chunk, n)), 0
            start = self._offset
            self._offset += n
            return self._buffer[start:self._offset]


#: The random bytes of request ids.
_RANDOM = RandomPool()


#: RFC 9562 variant bits (10xx) for a random hex digit: keeps its two low bits.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def prediction_rows(
    model: ServedModel,
    pipeline: str,
    tenant: str,
    validated: ValidatedRecords | Sequence[BaseModel],
    predictions: Sequence[dict[str, Any]],
    request_ids: Sequence[str],
    event_ts: Sequence[datetime] | None,
    now: datetime,
    latency_ms: float,
    score: Callable[[dict[str, Any]], float | None],
) -> list[dict[str, Any]]:
    """One ``predictions`` row per record (``features``/``prediction``/``out_of_domain`` as Python
    objects: the logger's writer thread JSON-encodes them). ``out_of_domain`` lists the record's
    features outside the served version's domain (``model.schema.domain``), None when none are
    (checked column by column for :class:`ValidatedRecords`)."""
    schema = model.schema
    if isinstance(validated, ValidatedRecords):
        records = validated.records()
    else:
        records = [schema.as_dict(row) for row in validated]
    flagged = schema.out_of_domain(validated)
    rows = []
    for i, (features, item, ood) in enumerate(zip(records, predictions, flagged)):
        rows.append({
            "request_id": request_ids[i],
            "ts": event_ts[i] if event_ts is not None else now,
            "tenant": tenant,
            "pipeline": pipeline,
            "model_name": model.name,
            "model_version": model.version,
            "variant": model.variant,
            "features": features,
            "prediction": item["prediction"],
            "score": score(item),
            "latency_ms": latency_ms,
            "status": "ok",
            "out_of_domain": ood,
        })
    return rows


def error_row(
    model: ServedModel, pipeline: str, tenant: str, parsed: PredictRequest | None, now: datetime,
    latency_ms: float, err: BaseException, status: str = abtest.MODEL_ERROR,
) -> dict[str, Any]:
    """The one ``error`` row of a request whose prediction failed (a fresh request id, so a
    retry with the client's ids is still logged); ``status`` ``client_error`` when the request's
    own records made it fail (:data:`airloop.core.names.CLIENT_ERROR`)."""
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
        "status": status,
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
    validated: ValidatedRecords
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
    """Validate a request against ``model``'s schema (422 with field errors; with the pipeline's
    ``serving.out_of_domain: reject`` also for records outside the version's domain, see
    :func:`out_of_domain_errors`), draw its request ids and, in an A/B test (``active``), route
    each record by its key."""
    if parsed.columns is not None:  # a column-wise batch: no object per record unless it fails
        validated = model.schema.validate_column_lists(parsed.columns, lambda: parsed.records)
    else:
        validated = model.schema.validate(parsed.records)
    domain = model.schema.domain
    if domain is not None and domain.policy == "reject":
        errors = out_of_domain_errors(domain, [model.schema.as_dict(row) for row in validated])
        if errors:
            raise RecordValidationError(errors)
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


def predict_parts(model: ServedModel, parts: Sequence[ValidatedRecords]) -> list[tuple[Any, float]]:
    """Predict several requests' validated rows with **one** call of ``model`` (one frame built from
    all of them); return per part ``(items or exception, call seconds)``.

    When the shared call fails, every part is predicted alone, so only the part that makes the
    model fail gets the exception.
    """
    if not parts:  # e.g. every job's records refused by a challenger's schema
        return []
    rows = ValidatedRecords.concat(parts)  # column by column
    if not len(rows):
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
                 metrics: ServingMetrics, log_rows: bool = True) -> list[Any]:
    """Answer a batch of requests; return per job ``(predictions, log rows)`` or its exception
    (no ``ok`` rows are built when ``log_rows`` is false: prediction logging is off).

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
        if job.active is not None:
            metrics.ab_records.labels(served.variant).inc(len(idx))
        if not log_rows:
            return
        event_ts = job.parsed.event_ts
        latency_ms = (dispatched - job.started + seconds) * 1000.0
        outcome.rows.extend(prediction_rows(
            served, pipeline, job.tenant, job.validated.take(idx), items, [job.request_ids[i] for i in idx],
            [event_ts[i] for i in idx] if event_ts is not None else None, now, latency_ms, score,
        ))

    # A/B challengers first: their failures move records back to the champion's call.
    routed = [j for j, job in enumerate(jobs) if job.variants is not None and abtest.CHALLENGER in job.variants]
    for group in _grouped(routed, lambda j: id(jobs[j].active.challenger)):  # type: ignore[union-attr]
        challenger = jobs[group[0]].active.challenger  # type: ignore[union-attr]
        parts: list[tuple[int, list[int], ValidatedRecords]] = []
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
        results = predict_parts(model, [jobs[j].validated.take(champion_idx[j]) for j in group])
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
