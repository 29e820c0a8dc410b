"""Read side of the lifecycle: versions, lineage, history, comparisons."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airloop.core import store
from airloop.core.metrics import better_of, is_quality_metric
from airloop.core.names import CHAMPION
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.core.timeutil import to_utc
from airloop.registry import client as registry
from airloop.registry import ledger
from airloop.registry.client import _alias_version
from airloop.registry.ledger import ledger_alias, version_at
from airloop.registry.tags import LINEAGE_TAGS


class LifecycleError(RuntimeError):
    """A lifecycle request that cannot be carried out (unknown version, nothing to roll back to)."""


def current_versions(client: Any, config: PipelineConfig) -> dict[str, str | None]:
    """``{environment: version}`` as the registry says now (``None``: empty)."""
    return {env.name: _alias_version(client, config, ledger_alias(env)) for env in config.promotion.path()}


# ------------------------------------------------------------------------------- evidence
def version_record(client: Any, config: PipelineConfig, version: str) -> dict[str, Any]:
    """What the registry and the version's training run say about ``version``: tags, holdout
    metrics (``holdout_`` prefix removed), training rows, snapshot reference, params, aliases."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(config.model_name, str(version))
    except MlflowException as err:
        raise LifecycleError(f"{config.model_name} version {version} not found: {err.message}") from None
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    run_tags: dict[str, str] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        metrics = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
        params = dict(run.data.params)
        run_tags = {k: v for k, v in run.data.tags.items() if k.startswith("best.")}
        if "train_rows" in run.data.metrics:
            metrics["train_rows"] = run.data.metrics["train_rows"]
    interval = tags.get("airloop.data_interval", "")
    snapshot = None
    if tags.get("airloop.snapshot") and "/" in interval:
        snapshot = {"path": tags["airloop.snapshot"], "as_of": interval.split("/", 1)[1]}
    train_rows = metrics.pop("train_rows", None)
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": str(mv.source),
        "aliases": sorted(getattr(mv, "aliases", None) or []),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat()
        if mv.creation_timestamp else None,
        "tags": tags,
        "metrics": metrics,
        "params": params | {k.removeprefix("best."): v for k, v in run_tags.items()},
        "train_rows": int(train_rows) if train_rows is not None else None,
        "snapshot": snapshot,
    }


def served_at(engine: sa.Engine, config: PipelineConfig, environment: str, at: datetime,
              business: bool = False) -> dict[str, Any]:
    """Which version served ``environment`` at ``at``, and who/what moved it there and why."""
    env = config.promotion.environment(environment)
    row = version_at(engine, config, ledger_alias(env), at, business=business)
    return {"environment": env.name, "at": at.isoformat(), "version": row["to_version"] if row else None,
            "since": row["recorded_at"].isoformat() if row else None, "action": row["action"] if row else None,
            "actor": row["actor"] if row else None, "reason": row["reason"] if row else None,
            "previous": row["from_version"] if row else None, "ledger_id": row["id"] if row else None}


def history(engine: sa.Engine, config: PipelineConfig, environment: str | None = None,
            version: str | None = None) -> list[dict[str, Any]]:
    """Ledger rows of the pipeline, oldest first, optionally of one environment or version."""
    def where(t: sa.Table) -> Any:
        clauses = []
        if environment:
            clauses.append(t.c.alias == ledger_alias(config.promotion.environment(environment)))
        if version:
            clauses.append(sa.or_(t.c.to_version == str(version), t.c.from_version == str(version)))
        return sa.and_(sa.true(), *clauses)
    return ledger.ledger_rows(engine, config.name, where=where)


def lineage(config: PipelineConfig, settings: Settings, version: str | int) -> dict[str, Any]:
    """Everything known about how ``version`` came to be and where it went: data interval and
    fingerprint, validation result, study and best trial, code version, the champion it replaced,
    the DAG run, holdout metrics and params, and its ledger history."""

    record = version_record(registry.get_client(settings), config, str(version))
    engine = store.get_engine(settings.monitoring_db_uri)
    return {
        "model_name": config.model_name,
        "version": record["version"],
        "run_id": record["run_id"],
        "created": record["created"],
        "aliases": record["aliases"],
        **{name: record["tags"].get(tag) or None for name, tag in LINEAGE_TAGS.items()},
        "train_rows": record["train_rows"],
        "metrics": record["metrics"],
        "params": record["params"],
        "ledger": [_jsonable(r) for r in history(engine, config, version=record["version"])],
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def compare_versions(config: PipelineConfig, settings: Settings, a: str | int, b: str | int,
                     log_artifact: bool = True) -> dict[str, Any]:
    """Side by side: quality metrics (with ``b - a`` and the better version by the metric's
    orientation, :func:`airloop.core.metrics.better_of`), other figures (holdout rows, latency:
    ``b - a`` only), params and data of two versions; logged as
    ``comparisons/v<a>_vs_v<b>.{json,md}`` on ``b``'s training run when ``log_artifact``."""

    client = registry.get_client(settings)
    left, right = version_record(client, config, str(a)), version_record(client, config, str(b))
    metrics, figures = {}, {}
    for name in sorted(set(left["metrics"]) | set(right["metrics"])):
        x, y = left["metrics"].get(name), right["metrics"].get(name)
        delta = y - x if x is not None and y is not None else None
        if not is_quality_metric(name):
            figures[name] = {"a": x, "b": y, "delta": delta}
            continue
        better = {"a": left["version"], "b": right["version"], None: None}[better_of(name, x, y)]
        metrics[name] = {"a": x, "b": y, "delta": delta, "better": better}
    params = {name: {"a": left["params"].get(name), "b": right["params"].get(name),
                     "same": left["params"].get(name) == right["params"].get(name)}
              for name in sorted(set(left["params"]) | set(right["params"]))}
    data = {field: {"a": left["tags"].get(tag), "b": right["tags"].get(tag)}
            for field, tag in (("data_interval", "airloop.data_interval"), ("data_fingerprint", "airloop.data_fingerprint"),
                               ("validation", "airloop.validation"), ("estimator", "airloop.estimator"),
                               ("study", "airloop.study"), ("code_version", "airloop.code_version"))}
    data["train_rows"] = {"a": left["train_rows"], "b": right["train_rows"]}
    result = {"model_name": config.model_name, "a": left["version"], "b": right["version"],
              "metrics": metrics, "figures": figures, "params": params, "data": data, "artifact": None}
    if log_artifact and right["run_id"]:
        name = f"v{left['version']}_vs_v{right['version']}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
            (Path(tmp) / f"{name}.md").write_text(comparison_markdown(result))
            client.log_artifact(right["run_id"], str(Path(tmp) / f"{name}.json"), artifact_path="comparisons")
            client.log_artifact(right["run_id"], str(Path(tmp) / f"{name}.md"), artifact_path="comparisons")
        result["artifact"] = f"runs:/{right['run_id']}/comparisons/{name}.md"
    return result


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown page (MLflow shows it in the artifact view)."""
    a, b = result["a"], result["b"]
    lines = [f"# {result['model_name']}: v{a} vs v{b}", "", "## Holdout metrics", "",
             f"| metric | v{a} | v{b} | delta (b - a) | better |", "|---|---|---|---|---|"]

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))
    for name, row in result["metrics"].items():
        better = f"v{row['better']}" if row["better"] else "—"
        lines.append(f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} | {fmt(row['delta'])} | {better} |")
    if result.get("figures"):
        lines += ["", "## Other figures (not ranked)", "", f"| figure | v{a} | v{b} | delta (b - a) |", "|---|---|---|---|"]
        lines += [f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} | {fmt(row['delta'])} |"
                  for name, row in result["figures"].items()]
    lines += ["", "## Data", "", f"| | v{a} | v{b} |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} |" for name, row in result["data"].items()]
    lines += ["", "## Parameters", "", f"| param | v{a} | v{b} |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(row['a'])} | {fmt(row['b'])} |" for name, row in result["params"].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- champion in time
def champion_at(engine: sa.Engine, pipeline: str, at: datetime) -> str | None:
    """The version that was champion at business time ``at`` (its run's as-of day), from the
    promotion ledger."""

    row = version_at(engine, pipeline, CHAMPION, to_utc(at), business=True)
    return row["to_version"] if row else None
