"""Read models of the MLOps view: what the plugin's JSON API (``airloop_provider.api``) and its
HTML pages answer, as plain JSON-ready dicts.

Rows of the monitoring store are returned generically (every column of the table, JSON text
columns decoded, times as ISO strings), so columns added by a migration show up without a change
here. Every function reads one pipeline (``config``) of its own tenant. A missing pipeline,
version, report or validation result raises :class:`NotFound`; a bad argument ``ValueError``
naming it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.metrics import is_quality_metric
from airloop.core.pipeline import PipelineConfig, load_all_pipelines, load_pipeline_config
from airloop.core.settings import ConfigError, Settings, get_settings
from airloop.core.timeutil import to_utc
from airloop.registry import audit
from airloop.registry import client as registry
from airloop.registry.ledger import ledger_alias
from airloop.registry.tags import LINEAGE_TAGS

#: Where the plugin mounts the API on the Airflow API server, and the API's own prefix: links in
#: the read models point there (``/airloop/api/v1/pipelines/<pipeline>/...``).
API_MOUNT = "/airloop"
API_PREFIX = "/api/v1"
API_ROOT = API_MOUNT + API_PREFIX
#: DAG kinds of a pipeline (``config.dag_id(kind)``) the view links to.
DAG_KINDS = ("train", "monitor", "promote", "rollback", "abtest", "abtest_evaluate")
#: Alert statuses that count as open (alerts without a status, recorded before it was kept, too).
OPEN_ALERT_STATUSES = ("open",)
#: Artifact folder of a training run holding the validation result (``tasks.training.VALIDATION_ARTIFACTS``).
VALIDATION_FILES = {"json": "result.json", "html": "report.html"}


class NotFound(LookupError):
    """A pipeline, version, report or result that does not exist (the API answers 404)."""


# ============================================================================ rows
def _value(value: Any, text_column: bool) -> Any:
    if isinstance(value, datetime):
        return to_utc(value).isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if text_column and isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def rows_json(table: sa.Table, rows: Any) -> list[dict[str, Any]]:
    """Rows of ``table`` as JSON-ready dicts: every column, JSON text decoded, times as ISO."""
    text = {c.name for c in table.columns if isinstance(c.type, sa.Text)}
    return [{k: _value(v, k in text) for k, v in dict(r).items()} for r in rows]


def _select(engine: sa.Engine, table: sa.Table, config: PipelineConfig, *where: Any, order: Any = None,
            limit: int | None = None) -> list[dict[str, Any]]:
    query = sa.select(table).where(table.c.pipeline == config.name, *where)
    if "tenant" in table.c:
        query = query.where(table.c.tenant == config.tenant)
    if order is not None:
        query = query.order_by(*(order if isinstance(order, tuple) else (order,)))
    if limit is not None:
        query = query.limit(_limit(limit))
    with engine.connect() as conn:
        return rows_json(table, conn.execute(query).mappings().all())


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    return limit


def _iso(moment: datetime) -> str:
    """``2026-03-01T00:00:00Z``: an interval start as the report links spell it."""
    return f"{to_utc(moment):%Y-%m-%dT%H:%M:%SZ}"


# ============================================================================ pipelines
def pipeline_config(name: str, settings: Settings | None = None) -> PipelineConfig:
    """The pipeline called ``name``; :class:`NotFound` for a name without a (valid) pipeline file."""
    settings = settings or get_settings()
    if not name.replace("_", "").isalnum() or not name[:1].isalpha():
        raise NotFound(f"unknown pipeline {name!r}")
    try:
        return load_pipeline_config(name, settings)
    except ConfigError as err:
        raise NotFound(str(err).splitlines()[0]) from None


def dag_ids(config: PipelineConfig) -> dict[str, str]:
    """``{kind: dag_id}`` of the pipeline's DAGs."""
    return {kind: config.dag_id(kind) for kind in DAG_KINDS}


def _summary(config: PipelineConfig, champions: dict[str, str | None]) -> dict[str, Any]:
    return {"name": config.name, "tenant": config.tenant, "task": config.task, "model_name": config.model_name,
            "description": config.description, "dag_ids": dag_ids(config),
            "serving_environment": config.promotion.serving_environment.name, "champion": champions,
            "links": {"self": f"{API_ROOT}/pipelines/{config.name}"}}


def pipelines_overview(settings: Settings, include: Callable[[PipelineConfig], bool] | None = None) -> list[dict[str, Any]]:
    """Every valid pipeline (that ``include`` accepts: the caller may read it) with its DAG ids and
    the version each environment holds now."""
    configs = [c for c in load_all_pipelines(settings)[0] if include is None or include(c)]
    client = registry.get_client(settings)
    return [_summary(c, audit.current_versions(client, c)) for c in configs]


# ============================================================================ versions
def _experiment_id(client: Any, config: PipelineConfig) -> str | None:
    found = client.get_experiment_by_name(config.experiment_name)
    return found.experiment_id if found is not None else None


def _version_json(config: PipelineConfig, settings: Settings, record: dict[str, Any], experiment_id: str | None,
                  current: dict[str, str | None]) -> dict[str, Any]:
    version = record["version"]
    tags = record["tags"]
    run_url = registry.ui_url(settings, experiment_id, record["run_id"]) if experiment_id and record["run_id"] else None
    return {
        "version": version,
        "run_id": record["run_id"],
        "created": record["created"],
        "aliases": record["aliases"],
        "environments": [env for env, held in current.items() if held == version],
        "metrics": {k: v for k, v in record["metrics"].items() if is_quality_metric(k)},
        "figures": {k: v for k, v in record["metrics"].items() if not is_quality_metric(k)},
        "train_rows": record["train_rows"],
        "lineage": {name: tags.get(tag) or None for name, tag in LINEAGE_TAGS.items()},
        "links": {
            "mlflow_run": run_url,
            "registered_model": registry.model_ui_url(settings, config.model_name, version),
            "self": f"{API_ROOT}/pipelines/{config.name}/versions/{version}",
            "validation": f"{API_ROOT}/pipelines/{config.name}/versions/{version}/validation",
        },
    }


def versions(config: PipelineConfig, settings: Settings) -> list[dict[str, Any]]:
    """Every registered version (newest first): holdout metrics, aliases and environments,
    lineage (data interval, fingerprint, validation, study, code version, ...) and links."""
    from mlflow.exceptions import MlflowException

    client = registry.get_client(settings)
    try:
        found = client.search_model_versions(f"name = '{config.model_name}'")
    except MlflowException:
        return []
    numbers = sorted({int(mv.version) for mv in found}, reverse=True)
    current = audit.current_versions(client, config)
    experiment_id = _experiment_id(client, config)
    return [_version_json(config, settings, audit.version_record(client, config, str(n)), experiment_id, current)
            for n in numbers]


def version_detail(config: PipelineConfig, settings: Settings, version: str | int) -> dict[str, Any]:
    """One version as :func:`versions` lists it, plus its params and ledger; :class:`NotFound`."""
    if not str(version).isdigit():
        raise NotFound(f"{config.model_name} has no version {version!r}")
    client = registry.get_client(settings)
    try:
        record = audit.version_record(client, config, str(int(version)))
    except audit.LifecycleError as err:
        raise NotFound(str(err)) from None
    out = _version_json(config, settings, record, _experiment_id(client, config), audit.current_versions(client, config))
    engine = store.get_engine(settings.monitoring_db_uri)
    out["params"] = record["params"]
    out["source"] = record["source"]
    out["ledger"] = [audit._jsonable(r) for r in audit.history(engine, config, version=record["version"])]
    return out


def validation_result(config: PipelineConfig, settings: Settings, version: str | int,
                      kind: str = "json") -> tuple[bytes, str]:
    """The data validation result of the run that trained ``version``: ``(content, media type)``,
    the GX result JSON (``kind="json"``) or its HTML report (``"html"``), read from the training
    run's ``validation/`` artifacts (never a local path). :class:`NotFound` when none was logged."""
    from mlflow.exceptions import MlflowException

    if kind not in VALIDATION_FILES:
        raise ValueError(f"format must be one of {sorted(VALIDATION_FILES)}, not {kind!r}")
    detail = version_detail(config, settings, version)
    name = VALIDATION_FILES[kind]
    if detail["run_id"]:
        client = registry.get_client(settings)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = Path(client.download_artifacts(detail["run_id"], f"validation/{name}", tmp))
                if path.is_file():
                    return path.read_bytes(), "application/json" if kind == "json" else "text/html"
            except (MlflowException, OSError):
                pass
    raise NotFound(f"no validation {kind} logged for {config.model_name} version {detail['version']}")


# ============================================================================ monitoring
def drift_history(engine: sa.Engine, config: PipelineConfig, feature: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Per feature (and ``__prediction__``), one point per monitored interval, oldest first, from
    the stored per-interval drift statistics; ``since``/``until`` bound the interval start
    (``[since, until)``)."""
    fd = store.feature_drift
    where = []
    if feature is not None:
        known = set(config.features) | {"__prediction__"}
        if feature not in known:
            raise ValueError(f"feature {feature!r} is not a feature of {config.name} "
                             f"(one of {sorted(known)})")
        where.append(fd.c.feature == feature)
    if since is not None and until is not None and to_utc(since) >= to_utc(until):
        raise ValueError("since must be before until")
    if since is not None:
        where.append(fd.c.interval_start >= to_utc(since))
    if until is not None:
        where.append(fd.c.interval_start < to_utc(until))
    rows = _select(engine, fd, config, *where, order=(fd.c.interval_start))
    features: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        features[row["feature"]].append({k: row[k] for k in (
            "interval_start", "interval_end", "statistic", "p_value", "threshold", "drifted", "method",
            "current_rows", "reference_rows", "model_version")})
    return {"pipeline": config.name, "tenant": config.tenant,
            "intervals": len({r["interval_start"] for r in rows}), "features": dict(sorted(features.items()))}


def _report_link(config: PipelineConfig, row: dict[str, Any]) -> str | None:
    if not row.get("report_uri"):
        return None
    return f"{API_ROOT}/pipelines/{config.name}/reports/{_iso(to_utc(row['interval_start']))}"


def monitoring_runs(engine: sa.Engine, config: PipelineConfig, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` monitored intervals, newest first: every stored column (realized and
    reference performance, volume ratio, latency p50/p95, error rate, drift share, model version,
    ...), the interval's traffic data quality (``data_quality``) and the report's API link
    (``report``; the local ``report_uri`` is left out)."""
    runs = store.monitoring_runs
    rows = _select(engine, runs, config, order=runs.c.interval_start.desc(), limit=limit)
    quality = {}
    if rows:
        tq = store.traffic_quality
        oldest = to_utc(rows[-1]["interval_start"])
        quality = {r["interval_start"]: r for r in _select(engine, tq, config, tq.c.interval_start >= oldest)}
    out = []
    for row in rows:
        q = quality.get(row["interval_start"])
        if q:
            q = {k: v for k, v in q.items() if k not in ("tenant", "pipeline", "interval_start", "interval_end",
                                                        "result_uri")}
        report = _report_link(config, row)
        out.append({k: v for k, v in row.items() if k != "report_uri"} | {"data_quality": q, "report": report})
    return out


def alerts(engine: sa.Engine, config: PipelineConfig, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts (every column), newest first; ``status`` filters on the
    alert's status (``ValueError`` when the store keeps none)."""
    table = store.alerts
    where = []
    if status is not None:
        if "status" not in table.c:
            raise ValueError("status: this monitoring store keeps no alert status")
        where.append(table.c.status == status)
    return _select(engine, table, config, *where, order=_newest_alert(table), limit=limit)


def _newest_alert(table: sa.Table) -> Any:
    seen = sa.func.coalesce(table.c.last_seen, table.c.raised_at) if "last_seen" in table.c else table.c.raised_at
    return sa.desc(seen), table.c.id.desc()


def open_alerts(engine: sa.Engine, config: PipelineConfig, limit: int = 50) -> dict[str, Any]:
    """``{"count", "alerts"}``: the open alerts (:data:`OPEN_ALERT_STATUSES`), newest first."""
    table = store.alerts
    where = [sa.or_(table.c.status.in_(OPEN_ALERT_STATUSES), table.c.status.is_(None))] if "status" in table.c else []
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.pipeline == config.name,
                                                                    table.c.tenant == config.tenant, *where)
        count = conn.execute(query).scalar_one()
    listed = _select(engine, table, config, *where, order=_newest_alert(table), limit=limit)
    return {"count": int(count), "alerts": listed}


def retrain_requests(engine: sa.Engine, config: PipelineConfig, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` retrain decisions (requested or suppressed by the cool-down), newest first."""
    table = store.retrain_requests
    return _select(engine, table, config, order=table.c.interval_start.desc(), limit=limit)


def ab_tests(config: PipelineConfig, settings: Settings, engine: sa.Engine) -> list[dict[str, Any]]:
    """Every A/B or shadow test of the pipeline (newest first) with its status, decision and the
    statistics of its latest stored evaluation (``latest``: rows per variant, difference,
    confidence interval, p-value, the whole evaluation) and the number of evaluations."""
    from airloop.experiments import definition

    results = store.ab_test_results
    tests = [t for t in definition.list_tests(engine, config.name) if t.tenant == config.tenant]
    out = []
    for test in reversed(tests):
        with engine.connect() as conn:
            rows = conn.execute(sa.select(results).where(results.c.test_id == test.test_id)
                                .order_by(results.c.interval_end.desc())).mappings().all()
        evaluations = rows_json(results, rows)
        out.append(test.describe() | {"result": test.result, "evaluations": len(evaluations),
                                      "latest": evaluations[0] if evaluations else None})
    return out


def ledger_timeline(engine: sa.Engine, config: PipelineConfig, environment: str | None = None) -> list[dict[str, Any]]:
    """The promotion ledger, oldest first, each row with its environment (``ValueError`` for an
    unknown ``environment``)."""
    by_alias = {ledger_alias(env): env.name for env in config.promotion.path()}
    return [audit._jsonable(r) | {"environment": r.get("environment") or by_alias.get(r["alias"])}
            for r in audit.history(engine, config, environment)]


def report_file(engine: sa.Engine, config: PipelineConfig, interval_start: datetime | str,
                settings: Settings | None = None) -> Path:
    """The stored Evidently report of the interval starting at ``interval_start``; it must lie
    inside the report folder (``settings.reports_dir``), else :class:`NotFound`."""
    settings = settings or get_settings()
    runs = store.monitoring_runs
    start = to_utc(interval_start)
    with engine.connect() as conn:
        uri = conn.execute(sa.select(runs.c.report_uri).where(
            runs.c.pipeline == config.name, runs.c.tenant == config.tenant, runs.c.interval_start == start)).scalar()
    if not uri:
        raise NotFound(f"no drift report stored for {config.name} at {_iso(start)}")
    root = settings.reports_dir.resolve()
    path = Path(uri).resolve()
    if not path.is_relative_to(root) or path.suffix != ".html" or not path.is_file():
        raise NotFound(f"the drift report of {config.name} at {_iso(start)} is not in the report folder")
    return path


# ============================================================================ the card
def _env_metrics(client: Any, config: PipelineConfig, version: str | None) -> dict[str, Any] | None:
    if version is None:
        return None
    try:
        record = audit.version_record(client, config, version)
    except audit.LifecycleError:
        return None
    return {k: v for k, v in record["metrics"].items() if is_quality_metric(k)}


def pipeline_card(config: PipelineConfig, settings: Settings, engine: sa.Engine) -> dict[str, Any]:
    """The model card: champion and key holdout metrics per environment, live metrics (the newest
    monitored interval and the newest one with realized performance), the last training, the
    last drift check, open alerts, running A/B tests and links."""
    client = registry.get_client(settings)
    champions = audit.current_versions(client, config)
    environments = [{"name": env.name, "serving": env.serving, "version": champions[env.name],
                     "metrics": _env_metrics(client, config, champions[env.name])} for env in config.promotion.path()]
    recent = monitoring_runs(engine, config, limit=60)
    realized = next((r for r in recent if r.get("labelled_rows") and r.get("performance")), None)
    drift = next((r for r in recent if r.get("drift_share") is not None), None)
    listed = versions(config, settings)
    newest = listed[0] if listed else None
    return _summary(config, champions) | {
        "key_metric": config.training.metric,
        "environments": environments,
        "live": {
            "latest": recent[0] if recent else None,
            "realized": None if realized is None else {
                "interval_start": realized["interval_start"], "model_version": realized["model_version"],
                "labelled_rows": realized["labelled_rows"], "performance": realized["performance"],
                "reference_performance": realized["reference_performance"]},
        },
        "last_training": None if newest is None else {
            "version": newest["version"], "created": newest["created"],
            "data_interval": newest["lineage"]["data_interval"], "validation": newest["lineage"]["validation"],
            "mlflow_run": newest["links"]["mlflow_run"]},
        "last_drift_check": None if drift is None else {
            "interval_start": drift["interval_start"], "drift_share": drift["drift_share"],
            "drifted_features": drift.get("drifted_features") or [], "report": drift["report"]},
        "open_alerts": open_alerts(engine, config),
        "ab_tests": [t for t in ab_tests(config, settings, engine) if t["status"] == "running"],
        "versions": len(listed),
        "links": {f"{name}": f"{API_ROOT}/pipelines/{config.name}/{name}"
                  for name in ("versions", "drift", "monitoring", "alerts", "retrains", "abtests", "ledger")}
        | {"self": f"{API_ROOT}/pipelines/{config.name}",
           "registered_model": registry.model_ui_url(settings, config.model_name)},
    }
