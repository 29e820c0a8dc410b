"""Loading one interval of logged traffic and its trailing baselines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import ConfigError
from airloop.monitoring.reference import SCORE_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import sqlalchemy as sa


from airloop.core.store import ground_truth, predictions
from airloop.core.store import predictions as p
from airloop.core.timeutil import to_utc
from airloop.data.features import coerce_features
from airloop.monitoring.performance import LabelPolicy

#: Columns of the predictions frame besides the features (a feature may not use these names).
#: ``out_of_domain``: the features serving flagged outside the version's domain (a list, or None).
META_COLUMNS = ("request_id", "ts", "model_version", "variant", "status", "latency_ms", "prediction", SCORE_COLUMN,
                "out_of_domain")


# ============================================================================ store reads
#: msgspec's JSON decoder: the same values as ``json.loads`` for what the prediction logger writes
#: (its encoder), ~5x cheaper per value — a million-row interval decodes 2M JSON texts.
_fast_loads = msgspec.json.Decoder().decode


def _loads(text: str) -> Any:
    """``json.loads(text)``, by msgspec; what it refuses (``NaN``, numbers out of float range:
    the standard library's encoder of earlier releases could write them) by the standard library."""
    try:
        return _fast_loads(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _columns(result: sa.CursorResult) -> dict[str, tuple]:
    """A query result as one tuple per column (no per-row mapping objects)."""
    names = list(result.keys())
    rows = result.all()
    return dict(zip(names, zip(*rows))) if rows else dict.fromkeys(names, ())


def _expand(config: PipelineConfig, columns: dict[str, tuple]) -> pd.DataFrame:
    """Prediction rows (:func:`_columns` of a store query) as a frame: meta columns, decoded JSON,
    typed features."""
    import pandas as pd

    clash = sorted(set(config.features) & set(META_COLUMNS))
    if clash:
        raise ConfigError(f"{config.name}: feature names clash with prediction columns: {clash}")
    n = len(columns["request_id"])
    records = [_loads(text) if text else {} for text in columns["features"]]
    records = [r if isinstance(r, dict) else {} for r in records]
    raw = pd.DataFrame.from_records(records, columns=list(config.features)) if records else \
        pd.DataFrame(columns=list(config.features))
    feats = coerce_features(config, raw.reset_index(drop=True), fill_missing=True)
    meta = pd.DataFrame({
        "request_id": list(columns["request_id"]),
        "ts": pd.to_datetime(list(columns["ts"]), utc=True) if n else pd.to_datetime([], utc=True),
        "model_version": list(columns["model_version"]),
        "variant": list(columns["variant"]),
        "status": list(columns["status"]),
        "latency_ms": pd.to_numeric(pd.Series(columns["latency_ms"], dtype=object), errors="coerce"),
        "prediction": [_loads(v) if v is not None else None for v in columns["prediction"]],
        SCORE_COLUMN: pd.to_numeric(pd.Series(columns["score"], dtype=object), errors="coerce"),
        "out_of_domain": [_loads(v) if v else None for v in columns["out_of_domain"]],
    }, index=range(n))
    out = pd.concat([meta, feats], axis=1)
    if n and "label" in columns:
        out["label"] = [_loads(v) if v is not None else None for v in columns["label"]]
        out["label_ts"] = pd.to_datetime(list(columns["label_ts"]), utc=True)
    return out


def load_interval(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime, end: datetime, *,
                  labels: LabelPolicy = "arrived", labelled_version: str | None = None,
                  label_window: timedelta | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interval's prediction rows and its labelled rows, from the monitoring store.

    ``predictions_frame``: every ``predictions`` row of ``tenant`` and this pipeline with
    ``start <= ts < end`` (errors included), ordered by ts and request id, with columns
    :data:`META_COLUMNS` (``prediction`` decoded from JSON, the score as :data:`SCORE_COLUMN`)
    plus one column per configured feature, expanded from the features JSON and typed as served.

    ``labelled_frame``: ``ok`` predictions joined with ``ground_truth`` (same request id, tenant,
    pipeline), plus ``label`` (decoded) and ``label_ts``. Which labels belong to the interval:

    * ``labels="arrived"`` (default): labels whose ``label_ts`` falls in ``[start, end)``, with
      their predictions (served before ``end``). Labels arrive days after the prediction, so this
      is what makes performance measurable per interval; over consecutive intervals every label
      counts exactly once.
    * ``labels="served"``: predictions served in ``[start, end)`` whose label was known before
      ``end`` (strict point-in-time view; usually empty for daily intervals and delayed labels).

    ``label_window`` (with ``"arrived"``) widens the label window to ``[end - label_window, end)``:
    performance over a trailing week of arrivals instead of one day's handful of labels (with rare
    positives a single day's AUC is noise).

    ``labelled_version`` keeps only labelled rows served by that model version (performance is
    compared with that version's holdout). Both reads are parameterised SQLAlchemy Core queries.
    """
    import pandas as pd
    import sqlalchemy as sa

    start, end = to_utc(start), to_utc(end)
    p, g = predictions, ground_truth
    cols = [p.c.request_id, p.c.ts, p.c.model_version, p.c.variant, p.c.features, p.c.prediction, p.c.score,
            p.c.latency_ms, p.c.status, p.c.out_of_domain]
    mine = sa.and_(p.c.tenant == tenant, p.c.pipeline == config.name)
    query = sa.select(*cols).where(mine, p.c.ts >= start, p.c.ts < end).order_by(p.c.ts, p.c.request_id)
    joined = p.join(g, sa.and_(g.c.request_id == p.c.request_id, g.c.tenant == p.c.tenant,
                               g.c.pipeline == p.c.pipeline))
    lq = sa.select(*cols, g.c.label, g.c.label_ts).select_from(joined).where(mine, p.c.status == "ok")
    if labels == "arrived":
        since = end - label_window if label_window is not None else start
        lq = lq.where(g.c.label_ts >= since, g.c.label_ts < end, p.c.ts < end)
    elif labels == "served":
        lq = lq.where(p.c.ts >= start, p.c.ts < end, g.c.label_ts < end)
    else:
        raise ValueError(f"labels must be 'arrived' or 'served', not {labels!r}")
    if labelled_version is not None:
        lq = lq.where(p.c.model_version == str(labelled_version))
    lq = lq.order_by(p.c.ts, p.c.request_id)
    with engine.connect() as conn:
        rows = _columns(conn.execute(query))
        lrows = _columns(conn.execute(lq))
    frame = _expand(config, rows)
    labelled = _expand(config, lrows)
    if not lrows["request_id"]:
        labelled = labelled.assign(label=pd.Series(dtype=object), label_ts=pd.to_datetime([], utc=True))
    return frame, labelled


def load_served_features(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime,
                         end: datetime) -> pd.DataFrame:
    """The features of ``tenant``'s ``ok`` predictions with ``start <= ts < end``, as the requests
    sent them (the logged JSON decoded, not retyped: what the validation suite judges), one column
    per configured feature in config order (a feature a record left out is null), ordered by ts
    and request id."""
    import pandas as pd
    import sqlalchemy as sa

    start, end = to_utc(start), to_utc(end)
    query = sa.select(p.c.features).where(
        p.c.tenant == tenant, p.c.pipeline == config.name, p.c.status == "ok", p.c.ts >= start, p.c.ts < end,
    ).order_by(p.c.ts, p.c.request_id)
    with engine.connect() as conn:
        records = [_loads(text) if text else {} for text in conn.execute(query).scalars()]
    records = [r if isinstance(r, dict) else {} for r in records]
    return pd.DataFrame.from_records(records, columns=list(config.features)) if records else \
        pd.DataFrame(columns=list(config.features))


def baseline_windows(start: datetime, days: int, period: timedelta = timedelta(days=1)) -> list[tuple[datetime, datetime]]:
    """The trailing windows, oldest first, that form the volume baseline of an interval starting
    at ``start`` and lasting ``period``: for periods up to a day, the same window on each of the
    ``days`` previous days (so hourly intervals compare with the same hour); for longer periods,
    the ``max(1, days // period_days)`` previous periods."""
    start = to_utc(start)
    if period <= timedelta(days=1):
        step, n = timedelta(days=1), days
    else:
        step, n = period, max(1, days // max(1, period.days))
    return [(start - k * step, start - k * step + period) for k in range(n, 0, -1)]


def trailing_volumes(engine: sa.Engine, config: PipelineConfig, tenant: str, start: datetime, days: int,
                     period: timedelta = timedelta(days=1)) -> list[int]:
    """Prediction rows (model errors included, client errors not: as :func:`operations` counts
    ``volume``) of ``tenant`` in each :func:`baseline_windows` window before ``start``, oldest
    first; windows without traffic count 0."""
    import sqlalchemy as sa

    from airloop.core.names import CLIENT_ERROR

    windows = baseline_windows(start, days, period)
    counts = []
    with engine.connect() as conn:
        for a, b in windows:  # one indexed COUNT per window (portable; a handful of windows)
            query = sa.select(sa.func.count()).select_from(p).where(
                p.c.tenant == tenant, p.c.pipeline == config.name, p.c.ts >= a, p.c.ts < b, p.c.status != CLIENT_ERROR)
            counts.append(int(conn.execute(query).scalar_one()))
    return counts
