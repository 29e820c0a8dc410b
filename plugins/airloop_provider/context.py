"""Context helpers: read the lineage of the current run from an Airflow task context.

Shared by the DAG files, the operators and the API; light (no Airflow import), so a DAG file
that imports them still parses fast.
"""

from __future__ import annotations


def run_actor(context) -> str:
    """Who or what started this run: the triggering user, else the run type (scheduled, backfill)."""
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    return f"user:{user}" if user else f"airflow:{run_type(dag_run)}"


def run_type(dag_run) -> str:
    """The run type as Airflow names it (``manual``, ``scheduled``, ``backfill``, ``asset_triggered``)."""
    kind = getattr(dag_run, "run_type", "")
    return str(getattr(kind, "value", kind))


def is_manual(context) -> bool:
    """Whether the run was triggered by hand (the UI form, the REST API, ``airflow dags trigger``)."""
    return run_type(context["dag_run"]) == "manual"


def as_of_day(context, config, settings) -> str:
    """The run's as-of day: the form's ``as_of``, else the retrain request's (Asset event), else the
    data interval end (a manual run's moved back to the day after the newest data) — never the wall
    clock. The choice and its reason go to the task log."""
    import logging

    from airloop.tasks.runs import training_as_of
    from airloop_provider.assets import as_of_from_asset_events

    requested, _ = as_of_from_asset_events(context.get("triggering_asset_events"))
    as_of, why = training_as_of(config, settings, chosen=context["params"].get("as_of"), requested=requested,
                                interval_end=context.get("data_interval_end") or context["dag_run"].run_after,
                                manual=is_manual(context))
    logging.getLogger(__name__).info("%s: training as of %s (%s)", config.name, as_of, why)
    return as_of


def training_window(context, config) -> int:
    """The run's training window in days: the form's ``window_days`` for a manual run, else the
    retrain request's (a performance drop's recent window, ``monitoring.retrain_window_days``),
    else the form's default (``training.window_days``). The choice goes to the task log."""
    import logging

    from airloop_provider.assets import retrain_request_from_asset_events

    form = int(context["params"].get("window_days") or config.training.window_days)
    requested = retrain_request_from_asset_events(context.get("triggering_asset_events")).get("window_days")
    window, why = (int(requested), "the retrain request's recent window") if requested and not is_manual(context) \
        else (form, "the run's window_days")
    logging.getLogger(__name__).info("%s: training on %s days (%s)", config.name, window, why)
    return window


def monitored_interval(context, config, settings) -> dict[str, str]:
    """The interval a monitoring run covers (``start``, ``end`` ISO, ``note``): the form's ``day``,
    else the data interval (a manual run's moved to the newest day with served traffic)."""
    import logging

    from airloop.tasks.runs import monitoring_interval

    interval = monitoring_interval(config, settings, chosen_day=context["params"].get("day"),
                                   interval_start=context["data_interval_start"],
                                   interval_end=context["data_interval_end"], manual=is_manual(context))
    logging.getLogger(__name__).info("%s: monitoring [%s, %s) (%s)", config.name, interval.start, interval.end,
                                     interval.note)
    return interval.to_dict()


def run_context(context, as_of: str | None) -> dict[str, str]:
    """Lineage fields of the current DAG run (recorded as MLflow tags and in the ledger)."""
    from airloop_provider.assets import as_of_from_asset_events

    dag_run = context["dag_run"]
    conf = dag_run.conf or {}
    _, requested_reason = as_of_from_asset_events(context.get("triggering_asset_events"))
    return {
        "dag_id": dag_run.dag_id,
        "dag_run_id": dag_run.run_id,
        "run_type": run_type(dag_run),
        "as_of": as_of or "",
        "trigger_reason": str(conf.get("reason") or requested_reason or ""),
    }
