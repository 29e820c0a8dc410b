"""Monitoring store: the promotion ledger (and, later, predictions, drift results, alerts).

One schema for both dialects: SQLite (embedded default, a file in the state folder) and
PostgreSQL (production). Tables are SQLAlchemy Core objects; the schema is versioned in
``schema_migrations`` and upgraded by :func:`migrate`, which every entry point calls (it is a
no-op when up to date). All statements are parameterised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from airloop.core import partitions

log = logging.getLogger(__name__)


metadata = sa.MetaData()


schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


promotion_ledger = sa.Table(
    "promotion_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(300), nullable=False, unique=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),  # promote | refuse | rollback | deploy
    sa.Column("alias", sa.String(50), nullable=False),
    sa.Column("from_version", sa.String(20)),
    sa.Column("to_version", sa.String(20)),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("data_interval_end", sa.String(40)),
    sa.Column("metrics", sa.Text),  # JSON
    # migration 4: the environment whose alias moved (the serving one's rows have alias "champion")
    sa.Column("environment", sa.String(40)),
)


# ------------------------------------------------------------------ closed loop (migration 2)
#: The key of every row about one request or entity (``predictions``, ``shadow_predictions``,
#: ``ground_truth``): request ids are scoped by tenant and pipeline, so two pipelines over the same
#: entities (same ``id_column``), or two tenants whose ids overlap, never collide (migration 6).
REQUEST_KEY = ("tenant", "pipeline", "request_id")


#: Every prediction served (written in batches by serving, off the request path). On PostgreSQL
#: partitioned by UTC day of ``ts``, keyed ``(tenant, pipeline, request_id, ts)`` (migration 10,
#: :mod:`airloop.core.partitions`: the key, partition creation and retention); SQLite: this key.
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(20)),
    sa.Column("variant", sa.String(50), nullable=False, server_default="champion"),
    sa.Column("features", sa.Text, nullable=False),  # JSON object of the request record
    sa.Column("prediction", sa.Text),  # JSON: label or value
    sa.Column("score", sa.Float),  # positive-class probability (binary) or predicted value
    sa.Column("latency_ms", sa.Float),
    sa.Column("status", sa.String(20), nullable=False),  # ok | error
    sa.Column("error", sa.Text),
    # migration 7: JSON list of the features outside the model's domain (NULL: none, or not checked)
    sa.Column("out_of_domain", sa.Text),
    sa.PrimaryKeyConstraint(*REQUEST_KEY),
)


#: Labels arriving later, joined to predictions by (tenant, pipeline, request id).
ground_truth = sa.Table(
    "ground_truth",
    metadata,
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("label", sa.Text, nullable=False),  # JSON
    sa.Column("label_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint(*REQUEST_KEY),
)


#: Per data interval, per feature: drift statistic and verdict (stored every run, not on alarm).
feature_drift = sa.Table(
    "feature_drift",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("feature", sa.String(200), primary_key=True),  # a feature, or "__prediction__"
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(20)),
    sa.Column("method", sa.String(50), nullable=False),
    sa.Column("statistic", sa.Float),  # the method's score / distance
    sa.Column("p_value", sa.Float),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("current_rows", sa.Integer, nullable=False),
    sa.Column("reference_rows", sa.Integer, nullable=False),
)


#: Per data interval: the monitoring run's summary (drift, performance, operations).
monitoring_runs = sa.Table(
    "monitoring_runs",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(20)),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("drift_share", sa.Float),
    sa.Column("drifted_features", sa.Text),  # JSON list
    sa.Column("prediction_drift", sa.Float),
    sa.Column("labelled_rows", sa.Integer),
    sa.Column("performance", sa.Text),  # JSON metrics on labelled rows
    sa.Column("reference_performance", sa.Text),  # JSON: the version's holdout metrics
    sa.Column("volume_ratio", sa.Float),  # rows vs the trailing baseline
    sa.Column("error_rate", sa.Float),
    sa.Column("latency_p50_ms", sa.Float),
    sa.Column("latency_p95_ms", sa.Float),
    sa.Column("report_uri", sa.Text),  # the Evidently HTML report
    sa.Column("retrain_reason", sa.Text),
    # migration 7: served inputs outside the model's domain (shares of the interval's ok rows)
    sa.Column("out_of_domain_share", sa.Float),
    sa.Column("unseen_category_share", sa.Float),
    sa.Column("out_of_domain_features", sa.Text),  # JSON {feature: share of rows}
    # migration 8: label-free performance estimates (airloop.monitoring.estimation) and their check
    sa.Column("estimated_performance", sa.Text),  # JSON {metric: {value, low, high, std}} + rows, threshold
    sa.Column("estimated_metric", sa.String(50)),  # the metric judged against the holdout
    sa.Column("estimated_value", sa.Float),
    sa.Column("estimated_low", sa.Float),
    sa.Column("estimated_high", sa.Float),
    sa.Column("estimated_performance_drop", sa.Float),  # drop of the band's optimistic end vs the holdout
    sa.Column("reference_id", sa.String(200)),  # the drift reference used: "training" or "refresh:<day>"
)


#: Alerts raised by monitoring rules, deduplicated by key; delivery attempts recorded.
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(300), nullable=False, unique=True),
    sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),  # critical | high | medium | low
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.Text),  # JSON
    sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivery_status", sa.String(20), nullable=False, server_default="pending"),
    sa.Column("delivery_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    # migration 8: one row per ongoing condition (airloop.monitoring.alerts): open until an
    # interval is evaluated without the rule firing; delivery_* is the "opened" notice's
    sa.Column("status", sa.String(10)),  # open | closed
    sa.Column("first_seen", sa.DateTime(timezone=True)),  # first interval (start) it fired
    sa.Column("last_seen", sa.DateTime(timezone=True)),  # last interval (start) it fired
    sa.Column("fire_count", sa.Integer),  # intervals it fired
    sa.Column("closed_at", sa.DateTime(timezone=True)),  # the interval (start) that cleared it
    sa.Column("close_delivery_status", sa.String(20)),  # the "closed" notice: pending | delivered | ...
    sa.Column("close_delivery_attempts", sa.Integer),
)


#: Retraining requests decided by monitoring (one row per interval with a retrain-worthy alert).
retrain_requests = sa.Table(
    "retrain_requests",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("as_of", sa.String(10), nullable=False),  # the training run's as-of day
    sa.Column("requested", sa.Boolean, nullable=False),  # False: suppressed by the cool-down
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("suppressed_by", sa.DateTime(timezone=True)),  # the earlier request in the cool-down
)


#: One row per pipeline; promotions and rollbacks hold it (row lock on PostgreSQL, the database
#: write lock on SQLite) for their whole transaction, so they are serialised across processes.
lifecycle_locks = sa.Table(
    "lifecycle_locks",
    metadata,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(300), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
)


def _add_missing_columns(conn: sa.Connection, table: sa.Table, names: list[str]) -> None:
    """``ALTER TABLE … ADD COLUMN`` for columns of ``table`` the database does not have yet."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = table.c[name]
            type_sql = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {type_sql}'))


# ------------------------------------------------------------------ A/B tests (migration 5)
#: A/B and shadow tests of a pipeline (+ tenant): champion vs challenger version, the routing and
#: the statistics settings, the outcome. At most one running test per pipeline and tenant.
ab_tests = sa.Table(
    "ab_tests",
    metadata,
    sa.Column("test_id", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), nullable=False, index=True),
    sa.Column("tenant", sa.String(100), nullable=False, server_default="default"),
    sa.Column("champion_version", sa.String(20), nullable=False),
    sa.Column("challenger_version", sa.String(20), nullable=False),
    sa.Column("mode", sa.String(10), nullable=False),  # ab | shadow
    sa.Column("traffic_pct", sa.Float, nullable=False),  # share of keys routed to the challenger (ab)
    sa.Column("key_field", sa.String(200), nullable=False),
    sa.Column("success_metric", sa.String(50), nullable=False),
    sa.Column("alpha", sa.Float, nullable=False),
    sa.Column("min_samples", sa.Integer, nullable=False),  # labelled rows per variant (the horizon)
    sa.Column("max_duration_days", sa.Float, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | concluded | stopped
    sa.Column("decision", sa.String(30)),  # promote_challenger | keep_champion | stopped
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("result", sa.Text),  # JSON: the concluding evaluation (or the stop reason)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("uq_ab_tests_running", "pipeline", "tenant", unique=True,
             sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'")),
)


#: One evaluation of a test per data interval (upserted: re-running an interval rewrites its row).
ab_test_results = sa.Table(
    "ab_test_results",
    metadata,
    sa.Column("test_id", sa.String(100), primary_key=True),
    sa.Column("interval_end", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decision", sa.String(30), nullable=False),  # continue | promote_challenger | keep_champion
    sa.Column("champion_rows", sa.Integer, nullable=False),  # labelled rows used
    sa.Column("challenger_rows", sa.Integer, nullable=False),
    sa.Column("difference", sa.Float),  # challenger - champion, in the success metric's units
    sa.Column("ci_low", sa.Float),
    sa.Column("ci_high", sa.Float),
    sa.Column("p_value", sa.Float),
    sa.Column("result", sa.Text, nullable=False),  # JSON: the whole evaluation
)


#: The challenger's answers in shadow mode (same request ids as the served ``predictions`` rows,
#: hence a table of their own; variant "shadow"). Same columns and key as ``predictions``.
shadow_predictions = sa.Table(
    "shadow_predictions", metadata, *(column._copy() for column in predictions.columns),
    sa.PrimaryKeyConstraint(*REQUEST_KEY),
)


#: Per data interval: the pipeline's validation suite run on the served features (migration 7).
traffic_quality = sa.Table(
    "traffic_quality",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),  # ok rows validated
    sa.Column("success", sa.Boolean),  # NULL: not validated (no traffic, or the suite could not be read)
    sa.Column("evaluated_expectations", sa.Integer),
    sa.Column("failed_expectations", sa.Integer),
    sa.Column("failures", sa.Text),  # JSON list of {expectation, column, observed, details, message}
    sa.Column("skipped", sa.Text),  # JSON list of the suite's expectations not applicable to traffic
    sa.Column("result_uri", sa.Text),  # the GX result JSON
    sa.Column("data_docs_uri", sa.Text),
    sa.Column("error", sa.Text),  # why it was not validated
    sa.Column("duration_s", sa.Float),
)


#: Per interval and alert rule: whether the rule fired (migration 8). An interval whose metric
#: was not judged has no row. Alert rows (conditions) are derived from these in interval order.
alert_evaluations = sa.Table(
    "alert_evaluations",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("rule", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fired", sa.Boolean, nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("observed", sa.Float),
    sa.Column("message", sa.Text),
    sa.Column("details", sa.Text),  # JSON
)


#: An interval's estimate vs the realized figures of its own served rows (migration 8), written by
#: the interval (``checked_at`` = its end) in which new labels of those rows arrived once enough were
#: labelled: the latest check of an interval is its row with the greatest ``checked_at``.
estimate_checks = sa.Table(
    "estimate_checks",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("interval_start", sa.DateTime(timezone=True), primary_key=True),  # the estimated interval
    sa.Column("checked_at", sa.DateTime(timezone=True), primary_key=True),  # end of the checking interval
    sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(20)),
    sa.Column("metric", sa.String(50)),
    sa.Column("estimated", sa.Float),
    sa.Column("realized", sa.Float),
    sa.Column("error", sa.Float),  # estimated - realized
    sa.Column("errors", sa.Text),  # JSON {metric: estimated - realized}
    sa.Column("realized_performance", sa.Text),  # JSON: every realized metric of the rows
    sa.Column("labelled_rows", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),  # the interval's ok rows served by the version
)


#: Drift references refreshed from served traffic (migration 8), per model version and refresh day.
reference_refreshes = sa.Table(
    "reference_refreshes",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("model_version", sa.String(20), primary_key=True),
    sa.Column("refreshed_at", sa.DateTime(timezone=True), primary_key=True),  # business time: a refresh day
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("artifact", sa.Text),  # the reference's artifact path in the version's MLflow run
)


#: Labels that differ from a stored one (migration 9): ``ground_truth`` is first-write-wins, so a
#: later, different label of a (tenant, pipeline, request id) is kept here — refused (``applied``
#: false: ``POST /feedback`` answered 409) or applied as a correction (an admin's
#: ``POST /feedback?correct=true``, or a label file of the monitoring DAG: actor ``ingest``).
label_revisions = sa.Table(
    "label_revisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("pipeline", sa.String(100), nullable=False),
    sa.Column("old_label", sa.Text, nullable=False),  # JSON, the label stored when this one arrived
    sa.Column("new_label", sa.Text, nullable=False),  # JSON
    sa.Column("actor", sa.String(200), nullable=False),  # admin | tenant:<name> | anonymous | ingest
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied", sa.Boolean, nullable=False),
    sa.Index("ix_label_revisions_key", "tenant", "pipeline", "request_id"),
)


def _add_estimate_and_alert_lifecycle_columns(conn: sa.Connection) -> None:
    _add_missing_columns(conn, monitoring_runs, [
        "estimated_performance", "estimated_metric", "estimated_value", "estimated_low", "estimated_high",
        "estimated_performance_drop", "reference_id"])
    _add_missing_columns(conn, alerts, ["status", "first_seen", "last_seen", "fire_count", "closed_at",
                                        "close_delivery_status", "close_delivery_attempts"])
    # alerts of earlier releases were one row per rule and interval: each becomes a closed condition
    conn.execute(alerts.update().where(alerts.c.status.is_(None)).values(
        status="closed", first_seen=alerts.c.interval_start, last_seen=alerts.c.interval_start, fire_count=1,
        close_delivery_status="legacy", close_delivery_attempts=0))


def _add_out_of_domain_columns(conn: sa.Connection) -> None:
    _add_missing_columns(conn, predictions, ["out_of_domain"])
    _add_missing_columns(conn, shadow_predictions, ["out_of_domain"])
    _add_missing_columns(conn, monitoring_runs, ["out_of_domain_share", "unseen_category_share",
                                                 "out_of_domain_features"])


def _rekey(conn: sa.Connection, table: sa.Table) -> None:
    """Give ``table`` the primary key of its definition here, keeping every row (idempotent).

    A table whose key is already right is left alone (a new store creates it so). PostgreSQL:
    ``ALTER TABLE … DROP CONSTRAINT <old pkey>, ADD PRIMARY KEY (…)``. SQLite cannot alter a
    primary key: the table is rebuilt — a new table with the right key, every row copied (the
    counts must match), the old table dropped, the new one renamed, its indexes re-created.
    Runs inside the migration's transaction (DDL is transactional on both dialects).
    """
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name):
        table.create(conn)
        return
    if partitions.is_partitioned(conn, table.name):  # keyed by migration 10 (its key adds ts): leave it
        return
    want = [c.name for c in table.primary_key.columns]
    current = inspector.get_pk_constraint(table.name)
    if list(current.get("constrained_columns") or []) == want:
        return
    quote = conn.dialect.identifier_preparer.quote
    name, key = quote(table.name), ", ".join(quote(c) for c in want)
    if conn.dialect.name == "postgresql":
        if current.get("name"):
            conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT {quote(current['name'])}")
        conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT {quote(table.name + '_pkey')} PRIMARY KEY ({key})")
    else:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        new = sa.Table(
            f"_airloop_rekey_{table.name}", sa.MetaData(),
            *(sa.Column(c.name, c.type, nullable=c.nullable,
                        server_default=c.server_default.arg if c.server_default is not None else None)
              for c in table.columns),
            sa.PrimaryKeyConstraint(*want),
        )
        new.drop(conn, checkfirst=True)
        new.create(conn)
        columns = ", ".join(quote(c.name) for c in table.columns if c.name in present)
        conn.exec_driver_sql(f"INSERT INTO {quote(new.name)} ({columns}) SELECT {columns} FROM {name}")
        before = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table.name))).scalar_one()
        after = conn.execute(sa.select(sa.func.count()).select_from(sa.table(new.name))).scalar_one()
        if before != after:  # cannot happen (the old key was stricter); never drop rows silently
            raise RuntimeError(f"re-keying {table.name}: copied {after} of {before} rows; nothing changed")
        conn.exec_driver_sql(f"DROP TABLE {name}")
        conn.exec_driver_sql(f"ALTER TABLE {quote(new.name)} RENAME TO {name}")
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    log.info("monitoring store: %s re-keyed from %s to %s", table.name, current.get("constrained_columns"), want)


def _rekey_request_tables(conn: sa.Connection) -> None:
    for table in (predictions, shadow_predictions, ground_truth):
        _rekey(conn, table)


#: Ordered schema versions: (version, description, tables created by it[, extra step]).
MIGRATIONS: list[tuple] = [
    (1, "promotion ledger", [promotion_ledger]),
    (2, "closed loop: predictions, ground truth, drift, monitoring runs, alerts",
     [predictions, ground_truth, feature_drift, monitoring_runs, alerts]),
    (3, "retrain requests", [retrain_requests]),
    (4, "lifecycle: environments in the ledger, promotion lock", [lifecycle_locks],
     lambda conn: _add_missing_columns(conn, promotion_ledger, ["environment"])),
    (5, "ab tests", [ab_tests, ab_test_results, shadow_predictions]),
    (6, "request ids scoped by tenant and pipeline: (tenant, pipeline, request_id) keys", [],
     _rekey_request_tables),
    (7, "out-of-domain flags of predictions, their shares per interval, traffic quality", [traffic_quality],
     _add_out_of_domain_columns),
    (8, "performance estimates per interval, alert lifecycle (open/closed conditions), refreshed references",
     [alert_evaluations, estimate_checks, reference_refreshes], _add_estimate_and_alert_lifecycle_columns),
    (9, "label revisions: first-write-wins labels, later ones kept and audited", [label_revisions]),
    (10, "predictions partitioned by UTC day on PostgreSQL, keyed (tenant, pipeline, request_id, ts)", [],
     lambda conn: partitions.partition_by_day(conn, predictions)),
]


#: ``AIRLOOP_MONITORING_CONN_ID`` makes the store URI ``airflow-conn://<conn_id>``: the database
#: behind that Airflow connection, reached through the PostgreSQL provider's hook.
AIRFLOW_CONN_SCHEME = "airflow-conn://"


def resolve_uri(uri: str) -> str:
    """The SQLAlchemy URL of a store URI: ``airflow-conn://<id>`` is resolved with
    ``PostgresHook(postgres_conn_id=<id>).sqlalchemy_url`` (the connection from
    ``AIRFLOW_CONN_<ID>``, a secrets backend or the metadata DB); anything else is returned as is."""
    if not uri.startswith(AIRFLOW_CONN_SCHEME):
        return uri
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=uri[len(AIRFLOW_CONN_SCHEME):])
    return hook.sqlalchemy_url.render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def get_engine(uri: str) -> sa.Engine:
    """Engine for the monitoring store (cached per URI, schema migrated on first use)."""
    uri = resolve_uri(uri)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if uri.startswith("sqlite"):
        from pathlib import Path

        path = uri.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    engine = sa.create_engine(uri, **kwargs)
    migrate(engine)
    return engine


#: ``pg_advisory_xact_lock`` key serialising migrations of one PostgreSQL database ("airloop").
_PG_MIGRATION_LOCK = 0x6169726C6F6F70


def _applied_versions(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(schema_migrations.name):
            return set()
        return set(conn.execute(sa.select(schema_migrations.c.version)).scalars())


def _lock_migrations(conn: sa.Connection) -> None:
    """Serialise migrating processes for the rest of ``conn``'s transaction: PostgreSQL's
    transaction-scoped advisory lock, SQLite's write lock (``BEGIN IMMEDIATE``)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    elif conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: sa.Engine) -> list[int]:
    """Apply pending migrations; return the versions applied (empty when up to date).

    Each migration runs in one transaction that first takes the migration lock and re-reads the
    applied versions, so two processes migrating at once apply each step exactly once (the
    second finds it done and skips it). Up to date, nothing is locked.
    """
    if {version for version, *_ in MIGRATIONS} <= _applied_versions(engine):
        return []
    applied = []
    for version, description, tables, *step in MIGRATIONS:
        with engine.begin() as conn:
            _lock_migrations(conn)
            schema_migrations.create(conn, checkfirst=True)
            done = conn.execute(sa.select(schema_migrations.c.version)
                                .where(schema_migrations.c.version == version)).first()
            if done is not None:  # applied earlier, or by another process while we waited
                continue
            for table in tables:
                table.create(conn, checkfirst=True)
            for extra in step:
                extra(conn)
            try:
                with conn.begin_nested():  # a savepoint: the transaction stays usable if this fails
                    conn.execute(
                        schema_migrations.insert().values(
                            version=version, description=description, applied_at=datetime.now(timezone.utc)
                        )
                    )
            except sa.exc.IntegrityError:  # a process without the lock (an older release) won the race
                continue
        applied.append(version)
        log.info("monitoring store: applied migration %s (%s)", version, description)
    return applied


def dialect_insert(engine_or_conn, table: sa.Table):
    """The dialect's ``INSERT`` of ``table`` (with ``on_conflict_do_*``): SQLite or PostgreSQL."""
    name = engine_or_conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two tested dialects are supported
        raise NotImplementedError(f"monitoring store dialect {name!r} is not supported (sqlite, postgresql)")
    return insert(table)


_dialect_insert = dialect_insert  # the earlier private name (registry.ledger, monitoring.interval import it)


def upsert(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows`` or overwrite the existing rows with the same primary key (one transaction).

    Re-running an interval therefore rewrites its own rows and leaves every other row alone.
    """
    if not rows:
        return 0
    keys = [c.name for c in table.primary_key.columns]
    stmt = dialect_insert(engine, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    with engine.begin() as conn:
        conn.execute(stmt, rows)
    return len(rows)


def insert_ignore(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, skipping any whose primary/unique key already exists (replay-safe);
    return the rows inserted, so ``len(rows) - result`` were duplicates of stored keys (for the
    request tables: the same tenant, pipeline and request id — another pipeline's or tenant's
    row with that id is a different key and is inserted).

    A day-partitioned table (``predictions`` on PostgreSQL) gets the partitions of the rows' days
    first (:func:`airloop.core.partitions.write_with_partitions`) and is written by
    :func:`airloop.core.partitions.copy_new_requests` (request keys deduplicated across ``ts``).

    The columns are the first row's keys (a later row's missing key is NULL). The statement is
    compiled once per engine, table and columns and the rows go to the driver's ``executemany``
    with the dialect's own bind conversions (SQLite datetimes as SQLAlchemy stores them). That
    skips ``conn.execute(stmt, rows)``'s generic per-row parameter processing, ~8 us a row in a
    profile of the prediction logger's writes. Still one parameterised statement, one transaction.
    """
    if not rows:
        return 0
    sql, keys, processors = _insert_ignore_plan(engine, table, tuple(rows[0]))
    params = []
    for row in rows:
        values = [row.get(key) for key in keys]
        for i, process in processors:
            values[i] = process(values[i])
        params.append(tuple(values))

    def write() -> int:
        if partitions.is_day_partitioned(engine, table):
            return partitions.copy_new_requests(engine, table, keys, params, stamps())
        with engine.begin() as conn:
            result = conn.exec_driver_sql(sql, params)
        return result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows)

    def stamps() -> Any:
        return (row.get(partitions.PARTITION_COLUMN) for row in rows)

    return partitions.write_with_partitions(engine, table, stamps, write)


@lru_cache(maxsize=64)
def _insert_ignore_plan(engine: sa.Engine, table: sa.Table, columns: tuple[str, ...]
                        ) -> tuple[str, tuple[str, ...], list[tuple[int, Callable[[Any], Any]]]]:
    """``INSERT ... ON CONFLICT DO NOTHING`` of ``columns`` compiled for ``engine``'s dialect in
    positional style: the SQL, the column of each placeholder and the bind conversions."""
    dialect = engine.dialect
    positional = dialect.__class__(paramstyle="qmark" if dialect.name == "sqlite" else "format")
    compiled = dialect_insert(engine, table).on_conflict_do_nothing().compile(
        dialect=positional, column_keys=list(columns))
    keys = tuple(compiled.positiontup)
    unknown = set(keys) - set(columns)
    if unknown:  # bind names SQLAlchemy had to rename (none of our columns need it)
        raise ValueError(f"insert_ignore: cannot map placeholders {sorted(unknown)} of {table.name} to columns")
    processors = [(i, p) for i, key in enumerate(keys)
                  if (p := table.c[key].type.dialect_impl(dialect).bind_processor(dialect)) is not None]
    return str(compiled), keys, processors
