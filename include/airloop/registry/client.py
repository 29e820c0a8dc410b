"""MLflow tracking and registry: experiments, runs keyed by data interval, versions and aliases.

Lifecycle state is kept with registry **aliases** (``challenger``, ``champion``) and **tags**,
never the deprecated stages. Idempotency: every artefact of a training run carries the tag
``airloop.interval_key`` (pipeline + as-of date), and lookups by that tag make retried or
re-run intervals reuse their parent run and model version instead of creating new ones.
"""

from __future__ import annotations

import logging
from typing import Any

from airloop.core.pipeline import PipelineConfig
from airloop.core.process import owner, owner_gone
from airloop.core.settings import MLFLOW_PORT, Settings
from airloop.models.artifact import read_model_version
from airloop.registry.tags import KEY_TAG, OWNER_TAG_PREFIX, THRESHOLD_TAG

log = logging.getLogger(__name__)


def _alias_version(client: Any, config: PipelineConfig, alias: str) -> str | None:

    found = alias_version(client, config.model_name, alias)
    return str(found.version) if found is not None else None


def interval_key(config: PipelineConfig, as_of: str) -> str:
    """Stable identity of one training interval of one pipeline."""
    return f"{config.name}@{as_of}"


def configure_mlflow(settings: Settings) -> None:
    """Point the process-wide MLflow fluent API at our tracking and registry stores."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if settings.mlflow_registry_uri:
        mlflow.set_registry_uri(settings.mlflow_registry_uri)


def get_client(settings: Settings):
    """The one MlflowClient factory: a client bound explicitly to the configured tracking and
    registry stores (the registry defaults to the tracking store).

    One policy on global state: the fluent API is pointed at the same stores, because MLflow
    resolves ``models:/m-…`` sources of new model versions through the global tracking URI,
    whatever the client says. Every airloop process works against one set of stores, so serving,
    training and monitoring all share this factory.
    """
    from mlflow import MlflowClient

    configure_mlflow(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                        registry_uri=settings.mlflow_registry_uri or settings.mlflow_tracking_uri)


#: The experiment tag the MLflow 3 UI keeps an experiment's kind in, and the kind of a classic
#: (model-training) experiment: ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT`` of the 3.17 UI bundle
#: (``mlflow/server/js/build/static/js/main.*.js``; the UI writes it with ``setExperimentTag``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = "custom_model_development"

#: URL query that opens the MLflow 3.17 UI in its "Model training" view: the view follows the
#: sidebar's GenAI / Model training switch (``workflowType`` in the URL, else the browser's
#: local storage, default GenAI), whatever the experiment's kind tag says.
UI_WORKFLOW_QUERY = "workflowType=machine_learning"

#: MLflow's longest param value (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``).
MAX_PARAM_VALUE = 6000


def ensure_experiment(client, config: PipelineConfig, settings: Settings) -> str:
    """Id of the pipeline's experiment, created with an artifact location in our store and
    tagged as a model-training experiment (:data:`EXPERIMENT_KIND_TAG`; existing ones too)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(config.experiment_name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_ML:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_ML)
        return found.experiment_id
    location: str | None = settings.mlflow_artifact_root
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        location = None  # a tracking server stores (and proxies) artifacts itself: clients need no shared disk
    elif "://" not in location:
        location = f"{location.rstrip('/')}/{config.name}"
    try:
        return client.create_experiment(config.experiment_name, artifact_location=location,
                                        tags={"airloop.pipeline": config.name, "airloop.tenant": config.tenant,
                                              EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_ML})
    except MlflowException:  # created concurrently by another worker
        return client.get_experiment_by_name(config.experiment_name).experiment_id


def ui_url(settings: Settings, experiment_id: str, run_id: str | None = None) -> str:
    """Link to an experiment (or one of its runs) in the MLflow UI, in its model-training view
    (:data:`UI_WORKFLOW_QUERY`): the tracking server's, or for a local store the UI ``make up``
    serves on it (``http://127.0.0.1:$MLFLOW_PORT``)."""
    base = settings.mlflow_tracking_uri
    if not base.startswith(("http://", "https://")):
        base = f"http://127.0.0.1:{MLFLOW_PORT.get()}"
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/#/{page}?{UI_WORKFLOW_QUERY}"


def model_ui_url(settings: Settings, model_name: str, version: str | int | None = None) -> str:
    """Link to a registered model (or one of its versions) in the MLflow UI (as :func:`ui_url`)."""
    from urllib.parse import quote

    base = settings.mlflow_tracking_uri
    if not base.startswith(("http://", "https://")):
        base = f"http://127.0.0.1:{MLFLOW_PORT.get()}"
    page = f"models/{quote(model_name, safe='')}" + (f"/versions/{version}" if version is not None else "")
    return f"{base.rstrip('/')}/#/{page}"


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: a string of at most :data:`MAX_PARAM_VALUE` characters."""
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_PARAM_VALUE]


def log_params_once(client, run_id: str, params: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Log ``params`` on ``run_id`` so that a retried or re-run task never fails: a param already
    logged with the same value is skipped, one logged with another value is kept (MLflow refuses
    to change a param) and returned as ``{key: (logged, new)}`` for the caller to report."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    wanted = {str(k): param_value(v) for k, v in params.items()}
    conflicts = {k: (logged[k], v) for k, v in wanted.items() if k in logged and logged[k] != v}
    new = [Param(k, v) for k, v in wanted.items() if k not in logged]
    for start in range(0, len(new), 100):  # MLflow's batch limit of params
        client.log_batch(run_id, params=new[start:start + 100])
    return conflicts


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"quote not allowed in MLflow filter value: {value!r}")
    return f"'{value}'"


def get_or_create_parent_run(client, experiment_id: str, key: str, run_name: str, tags: dict[str, str]) -> str:
    """The training run of interval ``key`` (resumed on re-runs), its tags refreshed."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = {_quote(key)} and tags.`airloop.kind` = 'training'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if runs:
        run_id = runs[0].info.run_id
    else:
        run = client.create_run(experiment_id, run_name=run_name, tags={KEY_TAG: key, "airloop.kind": "training"})
        run_id = run.info.run_id
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
    return run_id


def log_trial_run(client, experiment_id: str, parent_run_id: str, key: str, number: int, family: str,
                  params: dict[str, Any], scores: list[float], state: str, seconds: float) -> str:
    """One MLflow child run per Optuna trial, written in one batched call (no per-metric trips)."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(
        experiment_id,
        run_name=f"trial-{number:03d}-{family}",
        tags={"mlflow.parentRunId": parent_run_id, KEY_TAG: key, "airloop.kind": "trial", **owner_tags()},
    )
    now = int(time.time() * 1000)
    metrics = [Metric("cv_score_fold", float(s), now, step) for step, s in enumerate(scores)]
    if scores:
        metrics.append(Metric("cv_score", float(sum(scores) / len(scores)), now, 0))
    metrics.append(Metric("trial_seconds", float(seconds), now, 0))
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param("estimator", family), Param("trial_number", str(number))]
        + [Param(k, param_value(v)) for k, v in params.items() if k not in ("estimator", "trial_number")],
        tags=[RunTag("optuna.trial_state", state)],
    )
    client.set_terminated(run.info.run_id, status="FINISHED" if state != "FAIL" else "FAILED")
    return run.info.run_id


def owner_tags() -> dict[str, str]:
    """The run tags naming the process that created a run (:func:`end_orphaned_runs` reads them)."""
    return {f"{OWNER_TAG_PREFIX}{k}": v for k, v in owner().items()}


def end_orphaned_runs(client, experiment_id: str, key: str, stale_after_s: float = 600.0) -> list[str]:
    """End as ``KILLED`` the runs of interval ``key`` that a killed process left ``RUNNING``: its
    owner tags name a dead process of this host, or (no owner recorded) it started more than
    ``stale_after_s`` ago and is not the interval's training run (which stays open from the
    study's start to the evaluation). Returns the run ids ended."""
    import time

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = {_quote(key)} and "
                                                             "attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in runs:
        tags = run.data.tags
        if tags.get("airloop.kind") == "training":
            continue
        host, pid = tags.get(f"{OWNER_TAG_PREFIX}host"), tags.get(f"{OWNER_TAG_PREFIX}pid")
        if host is None:
            gone = (time.time() * 1000 - run.info.start_time) / 1000 > stale_after_s
        else:
            gone = owner_gone(host, pid)
        if gone:
            client.set_tag(run.info.run_id, "airloop.ended_by", f"retry: its process {host}:{pid} was gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("interval %s: ended %s MLflow run(s) left RUNNING by a killed process: %s", key, len(ended), ended)
    return ended


def find_version(client, model_name: str, key: str):
    """The registered version built for interval ``key``, or None."""
    versions = client.search_model_versions(
        f"name = {_quote(model_name)} and tags.`{KEY_TAG}` = {_quote(key)}"
    )
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register_version(client, model_name: str, model_uri: str, run_id: str, key: str, tags: dict[str, str]):
    """Register ``model_uri`` for interval ``key`` once; a re-run returns the existing version."""
    existing = find_version(client, model_name, key)
    if existing is not None:
        log.info("interval %s already registered as %s v%s; not creating another", key, model_name, existing.version)
        return existing
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, tags={"airloop.pipeline": tags.get("airloop.pipeline", "")})
    except MlflowException:
        pass  # exists
    # a logged model's URI (models:/m-<id>) names its LoggedModel; a tracking server requires the id
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(model_name, model_uri, run_id=run_id, tags={**tags, KEY_TAG: key},
                                          model_id=model_id)
    return version


def alias_version(client, model_name: str, alias: str):
    """The version an alias points at, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def load_sklearn_model(settings: Settings, model_name: str, version: str):
    """Load a registered scikit-learn model the way serving does: skops only, vetted types only
    (``mlflow.sklearn.load_model`` would trust the type list the model file declares itself)."""

    estimator, _, _ = read_model_version(get_client(settings), settings, model_name, version)
    return estimator


def run_metrics(client, run_id: str) -> dict[str, float]:
    """Latest metrics of a run."""
    return dict(client.get_run(run_id).data.metrics)


def decision_threshold(client, config: PipelineConfig, version: str | int) -> float | None:
    """The decision threshold version ``version`` of ``config``'s model serves with (its
    :data:`~airloop.registry.tags.THRESHOLD_TAG`): the positive class when ``score >= threshold``.
    None for non-binary pipelines; 0.5 (the argmax) for a binary version registered before
    thresholds were tuned. The one reader of it (monitoring, A/B tests, the summary)."""
    from airloop.models.scoring import DEFAULT_THRESHOLD

    if config.task != "binary_classification":
        return None
    tags = client.get_model_version(config.model_name, str(version)).tags or {}
    raw = tags.get(THRESHOLD_TAG)
    try:
        return float(raw) if raw is not None else DEFAULT_THRESHOLD
    except ValueError:
        log.warning("version %s of %s has a malformed %s tag %r; using %s", version, config.model_name,
                    THRESHOLD_TAG, raw, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
