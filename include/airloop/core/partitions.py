"""Day partitions of the prediction log on PostgreSQL, and its retention (both dialects).

On PostgreSQL ``predictions`` is a table ``PARTITIONED BY RANGE (ts)`` (store migration 10), one
partition per UTC day, named ``predictions_pYYYYMMDD`` and holding ``[day 00:00, next day 00:00)``
UTC. SQLite keeps one plain table. ``store.predictions`` — the SQLAlchemy table every reader uses —
is the same on both: a query on the parent with a ``ts`` range reads only the partitions of those
days (partition pruning).

**Key.** PostgreSQL requires the partition key in every unique constraint of a partitioned table, so
the stored primary key there is :func:`partitioned_key` ``(tenant, pipeline, request_id, ts)``
(SQLite keeps ``(tenant, pipeline, request_id)``). That key alone would store a request id twice
when a client re-sends it and serving stamps it with another ``ts``. So every write into a
day-partitioned table goes through :func:`copy_new_requests`: the rows are ``COPY``-ed into a
temporary table, and one ``INSERT ... SELECT DISTINCT ON (tenant, pipeline, request_id)`` (the
earliest ``ts`` of a key sent twice in the batch) inserts those whose request key is not stored
with a ``ts`` within :data:`DEDUPE_WINDOW` of the batch's time range, under a transaction-scoped
advisory lock (two serving workers writing the same request id at once cannot both insert it).
The check reads the partitions of that range only (constant bounds: plan-time pruning), one
probe of the key's index per row (a scalar subquery, so no plan can scan a whole day per batch).
What is no longer enforced: the same request id again more than a day away from its
first ``ts`` (SQLite: never stored twice).

**Partitions before writes.** :func:`write_with_partitions` (the writers' wrapper:
:func:`airloop.serving.rowbatch.insert_batch`, :func:`airloop.core.store.insert_ignore`) first makes
sure the partitions of the rows' days exist, and the day after the newest (so midnight seldom creates
one under load): ``CREATE TABLE IF NOT EXISTS <partition> (LIKE <parent> INCLUDING DEFAULTS)`` and
``ALTER TABLE <parent> ATTACH PARTITION <partition> FOR VALUES FROM (..) TO (..)``. Attaching locks the
parent in SHARE UPDATE EXCLUSIVE mode, which reads and writes do not wait for (``CREATE TABLE ...
PARTITION OF`` takes ACCESS EXCLUSIVE: every reader and writer of the log would queue behind it).
Processes racing for the same day are serialised by a transaction-scoped advisory lock; the later one
finds the partition attached and does nothing. Days known to exist are cached per engine and table,
so a write of known days costs no query. A write that still finds no partition for a row (another
process's retention dropped a day cached here) forgets the cache, re-creates and retries once.

**Retention.** :func:`apply_retention` removes the rows with ``ts`` before a data interval's end minus
N days (:func:`retention_cutoff`: never the wall clock). PostgreSQL: every partition whose day ends
at or before the cutoff is detached (``DETACH PARTITION ... CONCURRENTLY``: it waits for the queries
using the partition and blocks none) and dropped; then the rows before the cutoff still stored (in a
partition straddling a cutoff that is not midnight; none otherwise: the ``DELETE`` is pruned to no
partition) are deleted. SQLite: that ``DELETE``. Re-running it removes nothing more.

Every statement takes values as parameters; the identifiers in DDL are table names of the store's
schema checked against :data:`_IDENTIFIER` and partition names built from a :class:`datetime.date`.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from airloop.core import bulkload
from airloop.core.timeutil import day_bounds, to_utc

log = logging.getLogger(__name__)

#: The column partitions are ranges of.
PARTITION_COLUMN = "ts"


def request_key(table: sa.Table) -> tuple[str, ...]:
    """The key ``table`` is defined with (``store.REQUEST_KEY`` for ``predictions``): one request."""
    return tuple(c.name for c in table.primary_key.columns)


def partitioned_key(table: sa.Table) -> tuple[str, ...]:
    """The primary key of ``table`` day-partitioned on PostgreSQL: its key plus the partition column."""
    return (*request_key(table), PARTITION_COLUMN)

#: ``pg_advisory_xact_lock`` key serialising partition creation ("airloop" + 1).
_CREATE_LOCK = 0x6169726C6F6F71

#: ``pg_advisory_lock`` key serialising retention runs ("airloop" + 2).
_RETENTION_LOCK = 0x6169726C6F6F72

#: Table names this module puts into DDL.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}\Z")

#: A request key written again within this time of a stored row of the same key is a duplicate
#: (day-partitioned tables, whose stored key includes ``ts``: :func:`copy_new_requests`).
DEDUPE_WINDOW = timedelta(days=1)

#: ``pg_advisory_xact_lock`` key serialising the inserts into a day-partitioned table ("airloop" + 3).
_WRITE_LOCK = 0x6169726C6F6F73

#: SQLSTATE of "no partition of relation ... found for row" (a check violation).
_NO_PARTITION = "23514"

_cache_lock = threading.Lock()
#: Per engine: {table: True/False} whether it is day-partitioned, {table: days whose partition exists}.
_partitioned: weakref.WeakKeyDictionary[sa.Engine, dict[str, bool]] = weakref.WeakKeyDictionary()
_known_days: weakref.WeakKeyDictionary[sa.Engine, dict[str, set[date]]] = weakref.WeakKeyDictionary()


def _checked(table_name: str) -> str:
    if not _IDENTIFIER.match(table_name):
        raise ValueError(f"not a store table name: {table_name!r}")
    return table_name


def partition_name(table_name: str, day: date) -> str:
    """The partition of ``table_name`` holding ``day``: ``<table>_pYYYYMMDD``."""
    return f"{_checked(table_name)}_p{day:%Y%m%d}"


def partition_day(table_name: str, name: str) -> date | None:
    """The day of a partition named by :func:`partition_name` (None: not such a name)."""
    match = re.fullmatch(re.escape(table_name) + r"_p(\d{4})(\d{2})(\d{2})", name)
    return date(*map(int, match.groups())) if match else None


def is_partitioned(conn: sa.Connection, table_name: str) -> bool:
    """Whether ``table_name`` is a partitioned table (PostgreSQL ``relkind = 'p'``; SQLite: never)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"),
                        {"name": _checked(table_name)}).scalar()
    return kind == "p"


def partition_tables(conn: sa.Connection, table_name: str) -> dict[str, str]:
    """Tables named like partitions of ``table_name`` (its schema), by name: ``attached``,
    ``pending`` (a ``DETACH ... CONCURRENTLY`` was interrupted) or ``detached`` (dropping was)."""
    rows = conn.execute(sa.text(
        "SELECT c.relname, i.inhdetachpending FROM pg_class c "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = to_regclass(:parent) "
        "WHERE c.relkind = 'r' AND starts_with(c.relname, :prefix) "
        "AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(:parent))"),
        {"parent": _checked(table_name), "prefix": f"{table_name}_p"}).all()
    states = {None: "detached", False: "attached", True: "pending"}
    return {name: states[pending] for name, pending in rows if partition_day(table_name, name) is not None}


def create_partition(conn: sa.Connection, table_name: str, day: date,
                     existing: dict[str, str] | None = None) -> bool:
    """Create and attach the partition of ``day`` unless it is attached (``existing``: what
    :func:`partition_tables` returned in this transaction); True when this call attached it.
    Runs in the caller's transaction (the caller holds the creation lock, or owns the table)."""
    name = partition_name(table_name, day)
    existing = partition_tables(conn, table_name) if existing is None else existing
    if existing.get(name) in ("attached", "pending"):
        return False
    quote = conn.dialect.identifier_preparer.quote
    start, end = day_bounds(day)
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {quote(name)} (LIKE {quote(table_name)} INCLUDING DEFAULTS)")
    conn.exec_driver_sql(f"ALTER TABLE {quote(table_name)} ATTACH PARTITION {quote(name)} "
                         f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
    existing[name] = "attached"
    return True


def days_of(timestamps: Iterable[Any]) -> set[date]:
    """The UTC days of ``timestamps`` (datetimes or ISO strings; None skipped)."""
    return {to_utc(v).date() for v in set(timestamps) if v is not None}


def _is_partitioned_cached(engine: sa.Engine, table_name: str) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with _cache_lock:
        known = _partitioned.setdefault(engine, {}).get(table_name)
    if known is None:
        with engine.connect() as conn:
            known = is_partitioned(conn, table_name)
        with _cache_lock:
            _partitioned.setdefault(engine, {})[table_name] = known
    return known


def ensure_partitions(engine: sa.Engine, table_name: str, timestamps: Iterable[Any]) -> list[date]:
    """Make sure ``table_name`` has the partitions of the days of ``timestamps`` and of the day
    after the newest, when it is day-partitioned (else nothing is read or done); return the days
    whose partition this call created. Days known to exist (cached per engine) cost no query;
    the missing ones are created in one transaction holding the creation lock."""
    if not _is_partitioned_cached(engine, table_name):
        return []
    days = days_of(timestamps)
    if not days:
        return []
    days.add(max(days) + timedelta(days=1))
    with _cache_lock:
        known = _known_days.setdefault(engine, {}).setdefault(table_name, set())
        missing = sorted(days - known)
    if not missing:
        return []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
        existing = partition_tables(conn, table_name)
        created = [day for day in missing if create_partition(conn, table_name, day, existing)]
    with _cache_lock:
        known.update(missing)
    if created:
        log.info("prediction log: created %s partition(s) %s", table_name,
                 ", ".join(partition_name(table_name, d) for d in created))
    return created


def forget(engine: sa.Engine | None = None) -> None:
    """Drop what is cached about partitions (of ``engine``, or of every engine)."""
    with _cache_lock:
        for cache in (_partitioned, _known_days):
            if engine is None:
                cache.clear()
            else:
                cache.pop(engine, None)


def _is_missing_partition(err: BaseException) -> bool:
    orig = getattr(err, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return isinstance(err, sa.exc.IntegrityError) and code == _NO_PARTITION


def write_with_partitions(engine: sa.Engine, table: sa.Table, timestamps: Callable[[], Iterable[Any]],
                          write: Callable[[], int]) -> int:
    """``write()`` (a bulk insert into ``table``) after :func:`ensure_partitions` for the rows'
    ``timestamps()`` (only called when ``table`` is day-partitioned). When a row still finds no
    partition (a cached day was dropped since), the cache is forgotten and it is tried once more."""
    ensure_partitions(engine, table.name, timestamps())
    try:
        return write()
    except sa.exc.IntegrityError as err:
        if not _is_missing_partition(err):
            raise
        log.warning("prediction log: a partition of %s vanished (retention?); re-creating it", table.name)
        forget(engine)
        ensure_partitions(engine, table.name, timestamps())
        return write()


def is_day_partitioned(engine: sa.Engine, table: sa.Table) -> bool:
    """Whether ``table`` is day-partitioned on ``engine`` (cached per engine; SQLite: never)."""
    return _is_partitioned_cached(engine, table.name)


def copy_new_requests(engine: sa.Engine, table: sa.Table, names: Sequence[str], rows: Iterable[Sequence[Any]],
                      timestamps: Iterable[Any]) -> int:
    """PostgreSQL, day-partitioned ``table``: write ``rows`` (tuples of the columns ``names``,
    values as the driver takes them) unless their request key is stored; return the rows inserted.

    One transaction (:func:`airloop.core.bulkload.temp_load`: ``COPY`` into a temporary table),
    then under the table's write lock one ``INSERT ... SELECT DISTINCT ON (tenant, pipeline,
    request_id) ... ON CONFLICT DO NOTHING`` of the rows whose key has no stored row with ``ts`` in
    ``[oldest - DEDUPE_WINDOW, newest + DEDUPE_WINDOW)`` of ``timestamps``. Values travel by COPY's own
    protocol and the bounds as parameters (no SQL built from values). A refused row raises
    SQLAlchemy's ``IntegrityError`` / ``DataError`` and nothing of the batch is stored."""
    stamps = [to_utc(v) for v in set(timestamps) if v is not None]

    key = request_key(table)

    def insert_new(load: bulkload.Load) -> int | None:
        q, cursor = load.quote, load.cursor
        same_key = " AND ".join(f"p.{q(k)} = t.{q(k)}" for k in key)
        distinct = ", ".join(f"t.{q(k)}" for k in key)
        ts = q(PARTITION_COLUMN)
        window, params = "", ()
        if stamps:
            window = f" AND p.{ts} >= %s AND p.{ts} < %s"
            params = (min(stamps) - DEDUPE_WINDOW, max(stamps) + DEDUPE_WINDOW)
        cursor.execute("SET LOCAL jit = off")  # compiling a 4000-row insert costs more than it saves
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
        cursor.execute(  # a scalar subplan per row: always one index probe (a NOT EXISTS join may be planned
            # as a scan of the whole range when fresh partitions have no statistics yet: quadratic)
            f"INSERT INTO {load.target} ({load.columns}) "
            f"SELECT DISTINCT ON ({distinct}) {', '.join(f't.{q(n)}' for n in load.names)} "
            f"FROM {load.temp} t WHERE (SELECT 1 FROM {load.target} p WHERE {same_key}{window} LIMIT 1) IS NULL "
            f"ORDER BY {distinct}, t.{ts} ON CONFLICT DO NOTHING", params)
        return cursor.rowcount

    inserted = bulkload.temp_load(engine, table, names, rows, insert_new)
    return inserted if inserted is not None and inserted >= 0 else 0


# ------------------------------------------------------------------ migration 10
def partitioned_table(table: sa.Table) -> sa.Table:
    """``table``'s definition partitioned by day: same columns, defaults and indexes, key
    :func:`partitioned_key`, ``PARTITION BY RANGE (ts)`` (a table of its own metadata)."""
    def columns():
        for column in table.columns:
            copy = column._copy()
            copy.primary_key = False
            yield copy

    return sa.Table(table.name, sa.MetaData(), *columns(),
                    sa.PrimaryKeyConstraint(*partitioned_key(table), name=f"{table.name}_pkey"),
                    postgresql_partition_by=f"RANGE ({PARTITION_COLUMN})")


def partition_by_day(conn: sa.Connection, table: sa.Table) -> None:
    """Turn ``table`` into its :func:`partitioned_table` on PostgreSQL, keeping every row (the
    store migration's step; nothing on SQLite, nothing when it is partitioned already).

    In the migration's transaction: the table is renamed aside (its key and indexes dropped, their
    names are the new table's), the partitioned table created, one partition per UTC day of the
    stored rows attached, every row copied (the counts must match, else it raises and the
    transaction rolls back: nothing changed), the old table dropped."""
    if conn.dialect.name != "postgresql" or is_partitioned(conn, table.name):
        return
    quote = conn.dialect.identifier_preparer.quote
    new = partitioned_table(table)
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name):
        new.create(conn)
        return
    present = {c["name"] for c in inspector.get_columns(table.name)}
    key = inspector.get_pk_constraint(table.name).get("name")
    indexes = [ix["name"] for ix in inspector.get_indexes(table.name)]
    old = quote(f"_airloop_unpartitioned_{_checked(table.name)}")
    conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} RENAME TO {old}")
    if key:
        conn.exec_driver_sql(f"ALTER TABLE {old} DROP CONSTRAINT {quote(key)}")
    for index in indexes:
        conn.exec_driver_sql(f"DROP INDEX {quote(index)}")
    new.create(conn)
    ts = quote(PARTITION_COLUMN)
    days = conn.exec_driver_sql(f"SELECT DISTINCT ({ts} AT TIME ZONE 'UTC')::date FROM {old}").scalars().all()
    existing: dict[str, str] = {}
    for day in sorted(days):
        create_partition(conn, table.name, day, existing)
    columns = ", ".join(quote(c.name) for c in table.columns if c.name in present)
    copied = conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({columns}) SELECT {columns} FROM {old}").rowcount
    before = conn.exec_driver_sql(f"SELECT count(*) FROM {old}").scalar_one()
    if copied != before:  # cannot happen (the old key was stricter); never drop rows silently
        raise RuntimeError(f"partitioning {table.name}: copied {copied} of {before} rows; nothing changed")
    conn.exec_driver_sql(f"DROP TABLE {old}")
    log.info("monitoring store: %s partitioned by day (%d rows, %d partitions), key %s",
             table.name, before, len(days), partitioned_key(table))


# ------------------------------------------------------------------ retention
def retention_cutoff(interval_end: datetime | str, days: int) -> datetime | None:
    """The retention cutoff of an interval ending at ``interval_end``: ``days`` before it (None
    when ``days`` is 0: everything is kept)."""
    if days < 0:
        raise ValueError(f"retention days must be >= 0, not {days}")
    return to_utc(interval_end) - timedelta(days=days) if days else None


def _drop_partitions_before(engine: sa.Engine, table_name: str, cutoff: datetime) -> list[date]:
    """PostgreSQL: detach and drop every partition of ``table_name`` whose day ends at or before
    ``cutoff`` (finishing the ones an interrupted run left pending or detached); the days dropped."""
    dropped = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not is_partitioned(conn, table_name):
            return []
        quote = conn.dialect.identifier_preparer.quote
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _RETENTION_LOCK})
        try:
            for name, state in sorted(partition_tables(conn, table_name).items()):
                day = partition_day(table_name, name)
                if day_bounds(day)[1] > cutoff:
                    continue
                if state == "attached":
                    conn.exec_driver_sql(f"ALTER TABLE {quote(table_name)} DETACH PARTITION {quote(name)} CONCURRENTLY")
                elif state == "pending":
                    conn.exec_driver_sql(f"ALTER TABLE {quote(table_name)} DETACH PARTITION {quote(name)} FINALIZE")
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
                dropped.append(day)
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _RETENTION_LOCK})
    return dropped


def remove_before(engine: sa.Engine, table: sa.Table, cutoff: datetime) -> dict[str, Any]:
    """Remove the rows of ``table`` with ``ts < cutoff``: whole day partitions dropped on
    PostgreSQL, then a ``DELETE`` of what is left before the cutoff. Returns what was removed."""
    cutoff = to_utc(cutoff)
    dropped = _drop_partitions_before(engine, table.name, cutoff) if engine.dialect.name == "postgresql" else []
    if dropped:
        forget(engine)
    with engine.begin() as conn:
        deleted = conn.execute(sa.delete(table).where(table.c[PARTITION_COLUMN] < cutoff)).rowcount
    log.info("retention of %s before %s: %d day partition(s) dropped%s, %d row(s) deleted", table.name,
             cutoff.isoformat(), len(dropped), f" ({dropped[0]} .. {dropped[-1]})" if dropped else "", deleted)
    return {"cutoff": cutoff.isoformat(), "partitions_dropped": len(dropped),
            "days_dropped": [d.isoformat() for d in dropped], "rows_deleted": int(deleted)}


def apply_retention(engine: sa.Engine, table: sa.Table, days: int, interval_end: datetime | str) -> dict[str, Any]:
    """Keep ``days`` days of ``table`` before ``interval_end`` (0: keep everything, nothing done):
    :func:`remove_before` the :func:`retention_cutoff`. Idempotent; safe to re-run and to run
    from several processes at once (serialised on PostgreSQL)."""
    cutoff = retention_cutoff(interval_end, days)
    if cutoff is None:
        return {"retention_days": 0, "cutoff": None, "partitions_dropped": 0, "days_dropped": [], "rows_deleted": 0}
    return {"retention_days": days, **remove_before(engine, table, cutoff)}
