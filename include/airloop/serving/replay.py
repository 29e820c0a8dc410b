"""Replaying your own traffic: a pipeline's source rows of a day sent through serving's
``POST /predict`` as the business would have sent them (``airloop replay`` and the demo's loop).

Each day's rows are read through the pipeline's own source (:func:`airloop.data.sources.read_partition`:
files or SQL, as training reads them), typed as the model signature declares them, and sent in
batches with the ``id_column`` values as request ids and the ``timestamp`` column as event times,
to the pipeline's tenant route with the admin token and the day as the replay interval
(``X-Airloop-Replay-Interval``: serving accepts event times that old from the admin only, see
:mod:`airloop.serving.window`). So monitoring
sees the day's traffic on the day it happened, and a re-run sends the same request ids again:
serving answers them, and its prediction log ignores rows whose id it already holds (nothing is
counted twice).

Serving refuses a whole batch when one record is invalid (422 naming the records); the replay
then sets those records aside as rejected with serving's reason and sends the rest of the batch
again, so one bad row never costs its batch. Any other refusal (401/403/404/409) applies to every
batch and ends the day, each remaining row rejected with it. 5xx answers and connection errors
are retried a few times, then raise :class:`ReplayError`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import day_bounds
from airloop.data.sources import read_partition
from airloop.models.schema import request_records, signature_inputs
from airloop.serving.client import ServingEndpoint, predict
from airloop.serving.schema import MAX_BATCH_RECORDS

log = logging.getLogger(__name__)

#: Records per ``POST /predict`` unless asked otherwise.
DEFAULT_BATCH = 500
#: Tries of one request when serving answers 5xx or cannot be reached.
ATTEMPTS = 4
#: Rejected records listed with their request id in a result (the rest are only counted).
MAX_EXAMPLES = 20


class ReplayError(RuntimeError):
    """Serving could not be reached or kept failing (5xx); ``result`` holds what was done."""

    def __init__(self, message: str, result: "ReplayResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ReplayResult:
    """One day of one pipeline replayed: rows read, sent, accepted and rejected, and why."""

    pipeline: str
    day: date
    #: rows the source holds for the day
    rows: int = 0
    #: records sent to serving (rows with a request id and an event time)
    sent: int = 0
    #: records serving answered with a prediction
    accepted: int = 0
    #: records refused by serving (4xx) or not sendable (no id / no event time)
    rejected: int = 0
    #: why records were rejected: reason -> records
    reasons: Counter = field(default_factory=Counter)
    #: the first rejected records: ``{"request_id", "reason"}``
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: model versions that answered: version -> records
    versions: Counter = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0

    def reject(self, request_ids: list[str | None], reason: str) -> None:
        """Count ``request_ids`` as rejected for ``reason``."""
        self.rejected += len(request_ids)
        self.reasons[reason] += len(request_ids)
        room = MAX_EXAMPLES - len(self.examples)
        self.examples += [{"request_id": rid, "reason": reason} for rid in request_ids[:max(room, 0)]]

    def summary(self) -> str:
        """One line: ``2026-04-15 claims_fraud: 412 rows, 412 sent, 410 accepted, 2 rejected ...``."""
        line = (f"{self.day} {self.pipeline}: {self.rows} rows, {self.sent} sent, {self.accepted} accepted, "
                f"{self.rejected} rejected")
        if self.versions:
            line += " (model " + ", ".join(f"v{v}" for v in sorted(self.versions, key=str)) + ")"
        line += f" in {self.seconds:.1f} s"
        for reason, count in self.reasons.most_common(5):
            line += f"\n    rejected {count}: {reason}"
        if len(self.reasons) > 5:
            line += f"\n    ... and {len(self.reasons) - 5} other reasons"
        return line

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"pipeline": self.pipeline, "day": self.day.isoformat(), "rows": self.rows, "sent": self.sent,
                "accepted": self.accepted, "rejected": self.rejected, "reasons": dict(self.reasons),
                "examples": self.examples, "versions": dict(self.versions), "batches": self.batches,
                "seconds": round(self.seconds, 3)}


def replay_endpoint(settings: Settings, config: PipelineConfig, url: str | None = None) -> ServingEndpoint:
    """The pipeline's routes in the serving process (``<url>/t/<tenant>/<pipeline>``, default
    ``AIRLOOP_SERVING_URL``) with the admin token (``AIRLOOP_ADMIN_TOKEN``): a replay's event
    times lie outside serving's window around now, which only the admin may declare."""
    return ServingEndpoint(url or settings.serving_url, settings.admin_token).for_pipeline(config)


def _request_id(value: Any) -> str:
    """An id value as a request id (``123.0`` read from a column with nulls -> ``"123"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _reason(status: int, answer: Any) -> str:
    detail = answer.get("detail") if isinstance(answer, dict) else answer
    text = detail if isinstance(detail, str) else str(detail)
    hint = " (a replay sends the admin token, AIRLOOP_ADMIN_TOKEN)" if status in (401, 403) else ""
    return f"HTTP {status}: {text[:300]}{hint}"


def _record_errors(answer: Any, n: int) -> dict[int, str] | None:
    """``{record index: reason}`` of a 422 that names records, else ``None`` (the whole request)."""
    errors = answer.get("detail") if isinstance(answer, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    out: dict[int, str] = {}
    for error in errors:
        index = error.get("record") if isinstance(error, dict) else None
        if not isinstance(index, int) or not 0 <= index < n:
            return None
        where = error.get("field")
        out.setdefault(index, f"{where}: {error.get('message')}" if where else str(error.get("message")))
    return out


def replay_day(settings: Settings, config: PipelineConfig, day: date, *, batch: int = DEFAULT_BATCH,
               rate: float | None = None, endpoint: ServingEndpoint | None = None, http: Any = None,
               timeout: float = 120.0) -> ReplayResult:
    """Send ``day``'s source rows of ``config`` through serving's ``/predict`` (see the module
    docstring) in batches of ``batch`` records, at most ``rate`` records per second (``None``: as
    fast as serving answers). ``endpoint``: default :func:`replay_endpoint`; ``http``: an
    ``httpx.Client`` to reuse. Returns the day's :class:`ReplayResult`; raises
    :class:`ReplayError` when serving is unreachable or keeps answering 5xx."""
    import httpx

    if not 1 <= batch <= MAX_BATCH_RECORDS:
        raise ValueError(f"batch must be 1..{MAX_BATCH_RECORDS} records, got {batch}")
    started = time.perf_counter()
    result = ReplayResult(config.name, day)
    frame = read_partition(config, day, settings)
    if frame is None or frame.empty:
        return result
    result.rows = len(frame)
    missing_columns = [c for c in (config.id_column, config.timestamp) if c not in frame.columns]
    if missing_columns:
        raise ValueError(f"{config.name} {day}: the source has no column {missing_columns} (id_column / timestamp)")
    ids, stamps = frame[config.id_column], frame[config.timestamp]
    for column, missing in ((config.id_column, ids.isna()), (config.timestamp, stamps.isna() & ids.notna())):
        if missing.any():
            result.reject([None if column == config.id_column else _request_id(v) for v in ids[missing]],
                          f"{column}: no value (a replayed record needs its request id and event time)")
    frame = frame[ids.notna() & stamps.notna()]
    request_ids = [_request_id(v) for v in frame[config.id_column]]
    event_ts = [ts.isoformat() for ts in frame[config.timestamp]]
    records = request_records(signature_inputs(config), frame)
    endpoint = endpoint or replay_endpoint(settings, config)
    client = http if http is not None else httpx.Client(timeout=timeout)
    try:
        for start in range(0, len(records), batch):
            part = slice(start, start + batch)
            stop = _send(result, endpoint, config, records[part], request_ids[part], event_ts[part], client, timeout)
            if stop is not None:  # the same answer awaits every batch: the rest is rejected with it
                result.reject(request_ids[start + batch:], stop)
                break
            if rate:
                time.sleep(max(0.0, result.sent / rate - (time.perf_counter() - started)))
    finally:
        if http is None:
            client.close()
        result.seconds = time.perf_counter() - started
    log.debug("%s", result.summary())
    return result


def _send(result: ReplayResult, endpoint: ServingEndpoint, config: PipelineConfig, records: list[dict[str, Any]],
          request_ids: list[str], event_ts: list[str], client: Any, timeout: float) -> str | None:
    """One batch; records serving names in a 422 are rejected and the others sent again.
    Returns the reason to stop the day (a refusal that is not about records), else ``None``."""
    result.sent += len(records)
    pending = list(range(len(records)))
    while pending:
        result.batches += 1
        status, answer = _post(result, endpoint, config, [records[i] for i in pending],
                               [request_ids[i] for i in pending], [event_ts[i] for i in pending], client, timeout)
        if status == 200:
            predictions = answer.get("predictions", []) if isinstance(answer, dict) else []
            result.accepted += len(predictions)
            version = (answer.get("model") or {}).get("version") if isinstance(answer, dict) else None
            result.versions[str(version)] += len(predictions)
            return None
        errors = _record_errors(answer, len(pending)) if status == 422 else None
        if errors is None:
            reason = _reason(status, answer)
            result.reject([request_ids[i] for i in pending], reason)
            return None if status in (413, 422) else reason
        for index, reason in errors.items():
            result.reject([request_ids[pending[index]]], reason)
        pending = [i for n, i in enumerate(pending) if n not in errors]
    return None


def _post(result: ReplayResult, endpoint: ServingEndpoint, config: PipelineConfig, records: list[dict[str, Any]],
          request_ids: list[str], event_ts: list[str], client: Any, timeout: float) -> tuple[int, Any]:
    """``POST /predict``, retried on 5xx and connection errors (backoff 0.5, 1, 2 s)."""
    import httpx

    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.5 * 2 ** (attempt - 1))
        try:
            status, answer = predict(endpoint, records, request_ids=request_ids, event_ts=event_ts,
                                     tenant=config.tenant, http=client, timeout=timeout,
                                     replay_interval=day_bounds(result.day))
        except httpx.HTTPError as err:
            last = f"{type(err).__name__}: {err}"
            continue
        if status < 500:
            return status, answer
        last = _reason(status, answer)
    raise ReplayError(f"{config.name} {result.day}: serving at {endpoint.url} failed {ATTEMPTS} times: {last}", result)
