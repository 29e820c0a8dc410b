"""Context helpers: read the lineage of the current run from an Airflow task context.

Shared by the DAG files, the operators and the API; light (no Airflow import), so a DAG file
that imports them still parses fast.
"""

from __future__ import annotations


def run_actor(context) -> str:
    """Who or what started this run: the triggering user, else the run type (scheduled, backfill)."""
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    return f"user:{user}" if user else f"airflow:{dag_run.run_type}"


def as_of_day(context) -> str:
    """The run's as-of day: the form's ``as_of``, else the retrain request's (Asset event), else the
    data interval end — never the wall clock."""
    from airloop_provider.assets import as_of_from_asset_events

    chosen = context["params"].get("as_of")
    if chosen:
        return str(chosen)[:10]
    requested, _ = as_of_from_asset_events(context.get("triggering_asset_events"))
    if requested:
        return requested
    end = context.get("data_interval_end") or context["dag_run"].run_after
    return end.date().isoformat()


def run_context(context, as_of: str | None) -> dict[str, str]:
    """Lineage fields of the current DAG run (recorded as MLflow tags and in the ledger)."""
    from airloop_provider.assets import as_of_from_asset_events

    dag_run = context["dag_run"]
    conf = dag_run.conf or {}
    _, requested_reason = as_of_from_asset_events(context.get("triggering_asset_events"))
    return {
        "dag_id": dag_run.dag_id,
        "dag_run_id": dag_run.run_id,
        "run_type": str(dag_run.run_type),
        "as_of": as_of or "",
        "trigger_reason": str(conf.get("reason") or requested_reason or ""),
    }
