"""Explanations of served predictions: what ``POST /explain`` and :func:`get_model_explanations` do.

The model explained is always one loaded from the registry's vetted skops artefact (the serving
app's champion, another version loaded the same way, or :func:`airloop.models.artifact.read_model_version`
for the library function); nothing is ever unpickled. The explanation itself is
:mod:`airloop.models.explain`; this module adds its background (a sample of the version's
monitoring reference, :func:`airloop.monitoring.reference.load_reference`; the version's input
example when it has no reference), the records (posted and validated like ``/predict``, or read
from the prediction log by request id under the caller's tenant) and the response models.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from airloop.core import store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.models.explain import ExplainError, Explanation, ModelExplainer, needs_background
from airloop.models.schema import RecordSchema, RecordValidationError
from airloop.models.trust import ModelLoadError
from airloop.serving.schema import MAX_BATCH_RECORDS, MAX_REQUEST_ID_LENGTH, out_of_domain_errors

log = logging.getLogger(__name__)

#: Contributions listed in ``top`` unless the request asks for another number.
DEFAULT_TOP_K = 5
#: Most versions (and their explainers) one app keeps loaded for explanations besides the champion.
MAX_CACHED_VERSIONS = 4
#: Most background rows taken from the version's reference.
BACKGROUND_ROWS = 100


# ------------------------------------------------------------------------------ HTTP models
class ExplainRequest(BaseModel):
    """Body of ``POST /explain``: ``records`` (validated like ``/predict``) or ``prediction_ids``
    (request ids of logged predictions of the caller's tenant), not both."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    records: list[Any] | None = Field(None, min_length=1, description="Records as /predict takes them.")
    prediction_ids: list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)]] | None = Field(
        None, min_length=1, description="Request ids of logged predictions (the caller's tenant only).")
    version: Annotated[str, Field(pattern=r"^[0-9]+$")] | Annotated[int, Field(ge=1)] | None = Field(
        None, description="Model version to explain with (default: the served champion for records, the "
                          "version that answered for logged predictions).")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=100, description="How many contributions `top` lists.")
    explained_class: StrictStr | int | None = Field(
        None, alias="class", description="Class to explain (default: the positive class of a binary model, the "
                                         "predicted class of a multi-class one).")

    @model_validator(mode="after")
    def _one_source(self) -> ExplainRequest:
        if (self.records is None) == (self.prediction_ids is None):
            raise ValueError('give either "records" or "prediction_ids"')
        return self


class Contribution(BaseModel):
    """One input feature's share of the output."""

    feature: str
    value: Any = Field(description="The record's value of the feature.")
    contribution: float


class RecordExplanation(BaseModel):
    """One record: ``base_value + sum(contributions) == output`` in ``space``."""

    model_config = ConfigDict(populate_by_name=True)

    prediction_id: str | None = Field(description="Request id of the logged prediction (None for posted records).")
    model_version: str
    method: str = Field(description="tree_shap, linear or permutation_shap.")
    space: str = Field(description="log_odds, logit (a class's softmax input), probability or prediction.")
    explained_class: str | None = Field(alias="class", description="The class explained (None for regression).")
    base_value: float
    output: float = Field(description="The model's output for the record in `space`.")
    contributions: dict[str, float] = Field(description="Per input feature, by decreasing magnitude.")
    top: list[Contribution]


class ExplainResponse(BaseModel):
    """Answer of ``POST /explain``."""

    model_name: str
    explanations: list[RecordExplanation]


# ------------------------------------------------------------------------------- background
def version_background(client: Any, settings: Settings, config: PipelineConfig, version: str,
                       fallback: pd.DataFrame | None = None) -> tuple[pd.DataFrame | None, str]:
    """``(background rows, source)``: a seeded sample of the version's reference (``reference``),
    else ``fallback`` (the input example, ``input_example``), else ``(None, "none")``."""
    from airloop.monitoring.reference import load_reference

    try:
        reference = load_reference(client, config, version, settings=settings)
        features = reference[list(config.features)]
        if len(features) > BACKGROUND_ROWS:
            features = features.sample(n=BACKGROUND_ROWS, random_state=config.training.seed)
        return features.reset_index(drop=True), "reference"
    except Exception as err:  # noqa: BLE001 - a version without a reference is explained on its example
        log.warning("no reference for %s v%s (%s: %s); explaining against its input example",
                    config.model_name, version, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
    if fallback is not None and len(fallback):
        return fallback, "input_example"
    return None, "none"


def build_explainer(estimator: Any, config: PipelineConfig, background: Callable[[], pd.DataFrame | None]) -> ModelExplainer:
    """A :class:`ModelExplainer` of ``estimator``; ``background()`` is only read when the method needs it."""
    rows = background() if needs_background(estimator) else None
    positive = config.classes[-1] if config.task == "binary_classification" and config.classes else None
    return ModelExplainer(estimator, rows, positive_class=positive, seed=config.training.seed)


# ------------------------------------------------------------------------------ records
def logged_predictions(uri: str, tenant: str, pipeline: str, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``ok`` rows of the prediction log with these request ids under ``(tenant, pipeline)``:
    ``{request_id: {"features", "model_version", "model_name"}}`` (ids not found are absent)."""
    t = store.predictions
    wanted = list(dict.fromkeys(request_ids))
    found: dict[str, dict[str, Any]] = {}
    engine = store.get_engine(uri)
    with engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            query = sa.select(t.c.request_id, t.c.features, t.c.model_version, t.c.model_name).where(
                t.c.tenant == tenant, t.c.pipeline == pipeline, t.c.status == "ok",
                t.c.request_id.in_(wanted[start:start + 500]))
            for rid, features, version, name in conn.execute(query):
                found[rid] = {"features": json.loads(features), "model_version": version, "model_name": name}
    return found


def unknown_ids_error(missing: Sequence[str]) -> ExplainError:
    """The 404 naming the prediction ids not in the caller's prediction log."""
    shown = list(missing)[:20]
    more = f" (and {len(missing) - len(shown)} more)" if len(missing) > len(shown) else ""
    return ExplainError(f"no logged prediction with request id(s) {shown}{more} for this tenant and pipeline",
                        status_code=404, field="prediction_ids")


def validated_frame(schema: RecordSchema, records: list[Any]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Validate ``records`` against ``schema`` like ``/predict`` (422 naming record and field; the
    version's ``reject`` out-of-domain policy applies too); ``(frame, records as dicts)``."""
    rows = schema.validate(records)
    values = [schema.as_dict(row) for row in rows]
    domain = schema.domain
    if domain is not None and domain.policy == "reject":
        errors = out_of_domain_errors(domain, values)
        if errors:
            raise RecordValidationError(errors)
    return schema.to_frame(rows), values


def record_explanations(explainer: ModelExplainer, frame: pd.DataFrame, values: list[dict[str, Any]],
                        version: str, prediction_ids: Sequence[str | None], top_k: int = DEFAULT_TOP_K,
                        target: Any = None) -> list[RecordExplanation]:
    """Explain the rows of ``frame`` (``values``: the same records as dicts) with one version's explainer."""
    out = []
    explained: list[Explanation] = explainer.explain(frame, target)
    for e, record, pid in zip(explained, values, prediction_ids, strict=True):
        out.append(RecordExplanation(
            prediction_id=pid, model_version=version, method=explainer.method, space=e.space,
            explained_class=e.target, base_value=e.base_value, output=e.output, contributions=e.contributions,
            top=[Contribution(feature=f, value=record.get(f), contribution=c) for f, c in e.top(top_k)]))
    return out


# ------------------------------------------------------------------------ the app's cache
class ExplainerCache:
    """Per serving app: the explainer of each version asked for, and the versions other than the
    champion loaded for it (``ModelManager.load``: resolved, vetted, smoke-tested), LRU-bounded."""

    def __init__(self, manager: Any, max_versions: int = MAX_CACHED_VERSIONS) -> None:
        """Nothing is loaded here."""
        self.manager = manager
        self.max_versions = max_versions
        self._entries: OrderedDict[str, tuple[Any, ModelExplainer]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str | None) -> tuple[Any, ModelExplainer]:
        """``(served model, explainer)`` of ``version`` (None: the served champion). Raises
        :class:`ModelLoadError` (404 unknown version, 503 registry down, 503 no champion)."""
        current = self.manager.current
        if version is None:
            if current is None:
                raise ModelLoadError(f"no model loaded for {self.manager.model_name}", outcome="unavailable",
                                     status_code=503)
            version = current.version
        with self._lock:
            entry = self._entries.get(version)
            if entry is not None and (current is None or current.version != version or entry[0] is current):
                self._entries.move_to_end(version)
                return entry
        served = current if current is not None and current.version == version else self.manager.load(version=version)
        manager = self.manager

        def background() -> pd.DataFrame | None:
            rows, source = version_background(manager.client, manager.settings, manager.config, version,
                                              served.input_example[list(manager.config.features)]
                                              if set(manager.config.features) <= set(served.input_example.columns)
                                              else None)
            log.info("explanations of %s v%s: background of %s rows from its %s", manager.model_name, version,
                     0 if rows is None else len(rows), source)
            return rows

        explainer = build_explainer(served.predictor.estimator, manager.config, background)
        with self._lock:
            self._entries[version] = (served, explainer)
            self._entries.move_to_end(version)
            while len(self._entries) > self.max_versions + 1:
                self._entries.popitem(last=False)
        return served, explainer


def check_size(request: ExplainRequest) -> None:
    """413 for more than :data:`~airloop.serving.schema.MAX_BATCH_RECORDS` records or ids (as ``/predict``)."""
    for name in ("records", "prediction_ids"):
        items = getattr(request, name)
        if items is not None and len(items) > MAX_BATCH_RECORDS:
            raise RecordValidationError([{"record": None, "field": name, "message":
                                          f"at most {MAX_BATCH_RECORDS} {name} per request, got {len(items)}"}], 413)


def explain_request(cache: ExplainerCache, request: ExplainRequest, tenant: str, monitoring_uri: str) -> ExplainResponse:
    """Answer a parsed ``POST /explain`` body (blocking: run it in a worker thread)."""
    check_size(request)
    config = cache.manager.config
    version = None if request.version is None else str(request.version)
    target = request.explained_class
    if request.records is not None:
        served, explainer = cache.get(version)
        frame, values = validated_frame(served.schema, request.records)
        items = record_explanations(explainer, frame, values, served.version, [None] * len(values), request.top_k,
                                    target)
        return ExplainResponse(model_name=cache.manager.model_name, explanations=items)
    ids = list(request.prediction_ids or [])
    try:
        logged = logged_predictions(monitoring_uri, tenant, config.name, ids)
    except (sa.exc.SQLAlchemyError, OSError) as err:
        raise ModelLoadError(f"monitoring store unavailable: {type(err).__name__}".splitlines()[0],
                             outcome="unavailable", status_code=503) from err
    missing = [rid for rid in dict.fromkeys(ids) if rid not in logged]
    if missing:
        raise unknown_ids_error(missing)
    by_version: dict[str, list[str]] = {}
    for rid in ids:
        by_version.setdefault(version or str(logged[rid]["model_version"]), []).append(rid)
    answers: dict[int, RecordExplanation] = {}
    positions = {rid: [i for i, r in enumerate(ids) if r == rid] for rid in set(ids)}
    for v, rids in by_version.items():
        served, explainer = cache.get(v)
        frame, values = validated_frame(served.schema, [logged[rid]["features"] for rid in rids])
        for rid, item in zip(rids, record_explanations(explainer, frame, values, served.version, rids, request.top_k,
                                                         target), strict=True):
            for i in positions[rid]:
                answers.setdefault(i, item)
    return ExplainResponse(model_name=cache.manager.model_name, explanations=[answers[i] for i in range(len(ids))])


# ------------------------------------------------------------------------ library function
_LIBRARY_CACHE: OrderedDict[tuple[str, str, str], tuple[RecordSchema, ModelExplainer]] = OrderedDict()
_LIBRARY_LOCK = threading.Lock()


def get_model_explanations(model_name: str, version: str | int | None, prediction_ids: Sequence[str], *,
                           settings: Settings | None = None, tenant: str | None = None,
                           top_k: int = DEFAULT_TOP_K, explained_class: Any = None) -> list[dict[str, Any]]:
    """Explanations of logged predictions of registered model ``model_name``, one dict per id (the
    fields of :class:`RecordExplanation`, ``class`` for the class explained).

    ``version``: the model version to explain with (None: the version that made each prediction).
    Reads the predictions' logged features from the monitoring store (``predictions`` rows of the
    model's pipeline under ``tenant``, default the pipeline's tenant), loads the version from the
    registry's skops artefact (vetted types only) and its reference as background. Raises
    :class:`~airloop.models.explain.ExplainError` (``status_code`` 404) naming unknown ids,
    :class:`~airloop.models.trust.ModelLoadError` for a version that cannot be loaded,
    ``ValueError`` when no pipeline file registers ``model_name``.
    """
    from airloop.core.settings import get_settings
    from airloop.models.artifact import pipeline_of_model
    from airloop.registry.client import get_client

    settings = settings or get_settings()
    config = pipeline_of_model(settings, model_name)
    if config is None:
        raise ValueError(f"no pipeline file in {settings.pipelines_dir} registers the model {model_name!r}")
    ids = list(prediction_ids)
    if not ids:
        return []
    tenant = tenant or config.tenant
    logged = logged_predictions(settings.monitoring_db_uri, tenant, config.name, ids)
    missing = [rid for rid in dict.fromkeys(ids) if rid not in logged]
    if missing:
        raise unknown_ids_error(missing)
    client = get_client(settings)
    by_version: dict[str, list[str]] = {}
    for rid in dict.fromkeys(ids):
        by_version.setdefault(str(version) if version is not None else str(logged[rid]["model_version"]), []).append(rid)
    answers: dict[str, dict[str, Any]] = {}
    for v, rids in by_version.items():
        schema, explainer = _library_explainer(client, settings, config, v)
        frame, values = validated_frame(schema, [logged[rid]["features"] for rid in rids])
        for rid, item in zip(rids, record_explanations(explainer, frame, values, v, rids, top_k, explained_class),
                             strict=True):
            answers[rid] = item.model_dump(by_alias=True)
    return [answers[rid] for rid in ids]


def _library_explainer(client: Any, settings: Settings, config: PipelineConfig, version: str
                       ) -> tuple[RecordSchema, ModelExplainer]:
    """``(schema, explainer)`` of a registered version, read once per process (LRU-bounded)."""
    from airloop.models.artifact import read_model_version

    key = (settings.mlflow_tracking_uri, config.model_name, version)
    with _LIBRARY_LOCK:
        cached = _LIBRARY_CACHE.get(key)
        if cached is not None:
            _LIBRARY_CACHE.move_to_end(key)
            return cached
    estimator, schema, example = read_model_version(client, settings, config.model_name, version, config)
    examples = example[list(config.features)] if set(config.features) <= set(example.columns) else None
    explainer = build_explainer(estimator, config,
                                lambda: version_background(client, settings, config, version, examples)[0])
    with _LIBRARY_LOCK:
        _LIBRARY_CACHE[key] = (schema, explainer)
        while len(_LIBRARY_CACHE) > MAX_CACHED_VERSIONS:
            _LIBRARY_CACHE.popitem(last=False)
    return schema, explainer
