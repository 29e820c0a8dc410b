"""Request bodies of the serving API: parsing and validation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import msgspec
from fastapi import Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import AIRLOOP_SERVING_MAX_RECORDS
from airloop.core.timeutil import to_utc
from airloop.models.schema import MAX_REPORTED_ERRORS, FeatureDomain, RecordValidationError
from airloop.serving import protocol as abtest
from airloop.serving.runtime import DEFAULT_ALIAS

#: Largest number of records one ``POST /predict`` may carry (default of ``AIRLOOP_SERVING_MAX_RECORDS``).
MAX_BATCH_RECORDS = AIRLOOP_SERVING_MAX_RECORDS.default


#: Longest ``X-Request-Key`` header (the A/B routing key when a test's ``key_field`` is "header").
MAX_REQUEST_KEY_LENGTH = 200


#: Tenant recorded when a request has no ``X-Tenant`` header.
DEFAULT_TENANT = "default"


#: Largest number of labels one ``POST /feedback`` may carry (default of ``AIRLOOP_SERVING_MAX_RECORDS``).
MAX_FEEDBACK_ITEMS = AIRLOOP_SERVING_MAX_RECORDS.default


def max_records() -> int:
    """Most records (``/predict``) or labels (``/feedback``) one request may carry:
    ``AIRLOOP_SERVING_MAX_RECORDS`` (default 10,000)."""
    return AIRLOOP_SERVING_MAX_RECORDS.get()


#: msgspec's JSON decoder: for valid JSON the same values as ``json.loads`` (ints of any size
#: included), about 3x faster on a 100-record body.
_fast_loads = msgspec.json.Decoder().decode


def load_json(body: bytes) -> Any:
    """``json.loads`` of a request body; ``ValueError`` for bodies that are not JSON, not UTF-8, or
    nest deeper than the parser's recursion limit (which ``json`` reports as ``RecursionError``).

    msgspec decodes first; whatever it refuses goes to the standard library, which decides as
    before: it accepts ``NaN``/``Infinity`` and lone surrogates (the validators then name those
    values) and words the errors of bodies that are not JSON."""
    try:
        return _fast_loads(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the JSON nests too deeply (records are flat objects of feature values)") from None


#: Longest request id (the ``request_id`` column).
MAX_REQUEST_ID_LENGTH = 64


def _request_error(message: str, status_code: int = 422) -> RecordValidationError:
    return RecordValidationError([{"record": None, "field": None, "message": message}], status_code)


@dataclass(slots=True)
class PredictRequest:
    """A parsed ``/predict`` body: the records (or, for a column-wise batch, its columns) and,
    optionally, their ids and business times."""

    #: The records as sent (a column-wise batch: built from :attr:`columns` when first read).
    _records: list[Any] | None
    is_batch: bool
    #: Client-chosen request ids, one per record (None: the server draws UUIDv7 hex ids, :func:`new_request_ids`).
    request_ids: list[str] | None = None
    #: Business time of each record as tz-aware UTC (None: the server's current time).
    event_ts: list[datetime] | None = None
    #: A column-wise batch (``{"columns": {feature: [values]}}``): the lists as sent, all of one length.
    columns: dict[str, list[Any]] | None = field(default=None)

    @property
    def records(self) -> list[Any]:
        """One dict per record (for a column-wise batch, made once from its columns)."""
        if self._records is None:
            names = list(self.columns or {})
            self._records = [dict(zip(names, values)) for values in zip(*(self.columns or {}).values())]
        return self._records

    def __len__(self) -> int:
        if self._records is None and self.columns:
            return len(next(iter(self.columns.values())))
        return len(self.records)


_ENVELOPE_KEYS = ("records", "request_ids", "event_ts")

#: The envelope of a column-wise batch: ``columns`` instead of ``records``.
_COLUMN_ENVELOPE_KEYS = ("columns", "request_ids", "event_ts")


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

    A body is one record (a JSON object), ``{"records": [ ... ]}`` with 1..MAX_BATCH_RECORDS
    items, or the same batch column-wise, ``{"columns": {feature: [values, ...], ...}}`` (one
    list per feature, all of one length; the cheaper form for large batches). Either batch may
    carry parallel lists ``"request_ids"`` (unique strings, at most 64 characters) and
    ``"event_ts"`` (ISO-8601 timestamps; naive ones are UTC). Raises
    :class:`RecordValidationError` (422, or 413 for an oversized batch).
    """
    try:
        payload = load_json(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _request_error(f"body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise _request_error('body must be a JSON object (one record), {"records": [ ... ]} or '
                             '{"columns": {feature: [ ... ]}}')
    if "records" in payload:
        envelope, n = _ENVELOPE_KEYS, _batch_size(payload, "records")
    elif "columns" in payload:
        envelope, n = _COLUMN_ENVELOPE_KEYS, _batch_size(payload, "columns")
    else:
        return PredictRequest([payload], False)
    unknown = sorted(set(payload) - set(envelope))
    if unknown:
        raise _request_error(f'unknown field(s) next to "{envelope[0]}": {unknown} (allowed: {list(envelope)})')
    errors: list[dict[str, Any]] = []
    request_ids = event_ts = None
    if payload.get("request_ids") is not None:
        request_ids, id_errors = _check_request_ids(payload["request_ids"], n)
        errors += id_errors
    if payload.get("event_ts") is not None:
        event_ts, ts_errors = _check_event_ts(payload["event_ts"], n)
        errors += ts_errors
    if errors:
        raise RecordValidationError(errors[:MAX_REPORTED_ERRORS])
    if envelope is _COLUMN_ENVELOPE_KEYS:
        return PredictRequest(None, True, request_ids, event_ts, payload["columns"])
    return PredictRequest(payload["records"], True, request_ids, event_ts)


def _batch_size(payload: dict[str, Any], key: str) -> int:
    """The records of a batch body's ``records`` list or ``columns`` object (422 when malformed,
    413 above :func:`max_records`)."""
    value = payload[key]
    if key == "records":
        if not isinstance(value, list) or not value:
            raise _request_error('"records" must be a non-empty list of records')
        n = len(value)
    else:
        if not isinstance(value, dict) or not value:
            raise _request_error('"columns" must be a non-empty object of feature name -> list of values')
        lengths: dict[int, str] = {}
        for name, values in value.items():
            if not isinstance(values, list) or not values:
                raise RecordValidationError([{"record": None, "field": name,
                                              "message": f'column "{name}" must be a non-empty list of values'}])
            lengths.setdefault(len(values), name)
        if len(lengths) > 1:
            found = ", ".join(f"{name!r}: {n}" for n, name in sorted(lengths.items()))
            raise _request_error(f'every column of "columns" must have the same length, got {found}')
        n = next(iter(lengths))
    if n > (limit := max_records()):
        raise _request_error(f"at most {limit} records per request, got {n}", 413)
    return n


def out_of_domain_errors(domain: FeatureDomain, features: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The 422 errors of records outside ``domain`` (``serving.out_of_domain: reject``): one per
    record and feature, ``{"record": index in the request, "field": feature, "type": "out_of_domain",
    "value": the value sent, "allowed": {"min", "max"} | {"values", "count", "learned"}, "message"}``
    (capped at :data:`MAX_REPORTED_ERRORS`); ``features`` are the validated records as dicts."""
    errors: list[dict[str, Any]] = []
    for i, record in enumerate(features):
        for name in domain.check(record) or ():
            value = record[name]
            errors.append({"record": i, "field": name, "type": "out_of_domain", "value": value,
                           "allowed": domain.allowed(name), "message": domain.explain(name, value)})
            if len(errors) >= MAX_REPORTED_ERRORS:
                return errors
    return errors


def parse_predict_body(body: bytes) -> tuple[list[Any], bool]:
    """Split a ``/predict`` body into records; return ``(records, is_batch)`` (see
    :func:`parse_predict_request`, which also returns the optional ids and event times)."""
    parsed = parse_predict_request(body)
    return parsed.records, parsed.is_batch


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------


class ReloadRequest(BaseModel):
    """Body of ``POST /reload``: an alias or a version (neither = the champion)."""

    model_config = ConfigDict(extra="forbid")

    #: An alias name as MLflow stores it: letters, digits, ``_`` and ``-`` (no path characters).
    alias: Annotated[StrictStr, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    #: A version number (``true`` is not one): 1 .. 2**31 - 1, as a number or a string of digits.
    version: (Annotated[StrictStr, Field(pattern=r"^[1-9][0-9]{0,9}$")]
              | Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | None) = None

    def target(self) -> tuple[str | None, str | None]:
        """``(alias, version)`` with exactly one set; raise ``ValueError`` if both are given."""
        if self.alias is not None and self.version is not None:
            raise ValueError("give either 'alias' or 'version', not both")
        if self.version is not None:
            return None, str(self.version)
        return self.alias or DEFAULT_ALIAS, None


_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


def is_tenant_name(value: str) -> bool:
    """Whether ``value`` is a tenant name ``X-Tenant`` may carry: 1-100 of ``[A-Za-z0-9_.:@-]``."""
    return 0 < len(value) <= 100 and set(value) <= _TENANT_CHARS


def request_tenant(request: Request, default: str = DEFAULT_TENANT) -> str:
    """The ``X-Tenant`` header (default: the pipeline's tenant); 422 unless 1-100 of
    ``[A-Za-z0-9_.:@-]``. Which values a route accepts (and with which token) is checked by :mod:`airloop.serving.auth`."""
    tenant = request.headers.get("x-tenant", "").strip()
    if not tenant:
        return default
    if not is_tenant_name(tenant):
        raise RecordValidationError([{
            "record": None, "field": "X-Tenant",
            "message": "X-Tenant must be 1-100 characters of letters, digits and _ . : @ -",
        }])
    return tenant


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
        payload = load_json(body)
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
        if len(items) > (limit := max_records()):
            raise _feedback_error(f"at most {limit} items per request, got {len(items)}", 413, "items")
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
            except (ValueError, OverflowError):
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
