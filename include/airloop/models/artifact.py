"""A registered model version's files: its model, signature and input example."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.models.schema import RecordSchema, feature_domain, input_example, model_signature
from airloop.models.scoring import DECISION_METADATA_KEY
from airloop.models.trust import ModelLoadError, UntrustedModelError, load_skops_file, quiet_skops, skops_trusted_types


def _example_records(example: pd.DataFrame) -> list[Any]:
    """The input example as a client would send it (JSON round trip: NaN -> null, ISO dates)."""
    return json.loads(example.to_json(orient="records", date_format="iso"))


def _read_input_example(mlmodel: Any, local_dir: str) -> pd.DataFrame:
    """The stored input example as a DataFrame (a model without one is refused)."""
    try:
        example = mlmodel.load_input_example(local_dir)
    except Exception as err:
        raise ModelLoadError(f"cannot read the model's input example: {err}") from err
    if example is None:
        raise ModelLoadError("the model has no input example to smoke-test (log it with input_example=...)")
    if isinstance(example, dict):
        example = pd.DataFrame([example])
    if not isinstance(example, pd.DataFrame) or example.empty:
        raise ModelLoadError(f"the input example must be a non-empty table, not {type(example).__name__}")
    return example


@dataclass(frozen=True)
class ModelFiles:
    """A version's model folder as loaded: the estimator, its request schema and input example,
    and its decision rule (``MLmodel`` metadata :data:`DECISION_METADATA_KEY`: ``threshold``,
    ``objective``, ``calibration``, ``positive_class``...; ``{}`` for a version without one)."""

    estimator: Any
    schema: RecordSchema
    input_example: pd.DataFrame
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The binary decision threshold the version was tuned with (None: none stored)."""
        value = self.decision.get("threshold")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_model_dir(local_dir: str, config: PipelineConfig | None = None) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """``(estimator, schema, input_example)`` of a downloaded model folder (:func:`load_model_files`)."""
    files = load_model_files(local_dir, config)
    return files.estimator, files.schema, files.input_example


def load_model_files(local_dir: str, config: PipelineConfig | None = None) -> ModelFiles:
    """Read a downloaded MLflow model folder: estimator, schema, input example and decision rule.

    Checks the sklearn flavour is stored as skops, loads it with vetted types only, builds the
    request schema from the signature and reads the input example. With the model's pipeline
    ``config`` the schema also gets the version's domain (``schema.domain``,
    :func:`airloop.models.schema.feature_domain`: declared ranges and values, and the vocabulary
    its fitted encoder learned for category features without ``values``).
    """
    from mlflow.models import Model

    try:
        mlmodel = Model.load(os.path.join(local_dir, "MLmodel"))
    except Exception as err:
        raise ModelLoadError(f"cannot read MLmodel: {type(err).__name__}: {err}") from err
    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"not an sklearn model (flavours: {sorted(mlmodel.flavors)})")
    if flavor.get("serialization_format") != "skops":
        raise UntrustedModelError(
            f"refusing serialization format {flavor.get('serialization_format')!r}: only 'skops' models are served"
        )
    if mlmodel.signature is None:
        raise ModelLoadError("the model has no signature (log it with signature=infer_signature(...))")
    schema = RecordSchema(mlmodel.signature.inputs)
    model_file = os.path.join(local_dir, flavor.get("pickled_model", "model.skops"))
    estimator = load_skops_file(model_file)
    if config is not None:
        schema.domain = feature_domain(config, estimator)
    decision = (mlmodel.metadata or {}).get(DECISION_METADATA_KEY) or {}
    if not isinstance(decision, dict):
        raise ModelLoadError(f"MLmodel metadata {DECISION_METADATA_KEY!r} must be a mapping, not {type(decision).__name__}")
    return ModelFiles(estimator, schema, _read_input_example(mlmodel, local_dir), dict(decision))


def pipeline_of_model(settings: Settings, model_name: str) -> PipelineConfig | None:
    """The pipeline file whose registered model is ``model_name`` (None when no valid file is)."""
    from airloop.core.pipeline import load_all_pipelines

    return next((c for c in load_all_pipelines(settings)[0] if c.model_name == model_name), None)


def log_sklearn_model(config: PipelineConfig, model: Any, features: pd.DataFrame,
                      decision: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Log a fitted model of ``config`` to the active MLflow run as serving and MLflow's own
    tools load it: skops with its vetted types, the signature of the pipeline's types
    (:func:`airloop.models.schema.model_signature`: ints ``long``, floats ``double``, categories
    ``string``), an input example typed the same (the first rows of ``features``), and a pyfunc
    flavour answering what serving scores (``predict_proba`` for classifiers, so that
    ``mlflow.pyfunc`` and ``mlflow models serve`` return the probabilities the signature's
    outputs declare) and the ``decision`` rule (threshold, objective, calibration) in the
    ``MLmodel`` metadata, where serving reads it with the model. ``kwargs`` go to
    ``mlflow.sklearn.log_model`` (e.g. ``pip_requirements``). Returns its ``ModelInfo``."""
    import mlflow.sklearn

    classifier = config.task != "regression"
    predict = model.predict_proba if classifier else model.predict
    signature = model_signature(config, predict(features.head(50)))
    with quiet_skops():
        return mlflow.sklearn.log_model(
            model, name="model", serialization_format="skops", skops_trusted_types=skops_trusted_types(model),
            signature=signature, input_example=input_example(config, features),
            pyfunc_predict_fn="predict_proba" if classifier else "predict",
            metadata={DECISION_METADATA_KEY: decision} if decision else None, **kwargs)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def read_model_version(client: Any, settings: Settings, model_name: str, version: str,
                       config: PipelineConfig | None = None) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """``(estimator, schema, input_example)`` of a registered version (:func:`read_model_files`)."""
    files = read_model_files(client, settings, model_name, version, config)
    return files.estimator, files.schema, files.input_example


def read_model_files(client: Any, settings: Settings, model_name: str, version: str,
                     config: PipelineConfig | None = None) -> ModelFiles:
    """Read a registered version's model folder safely: in place when local, else downloaded to a
    temp folder; see :func:`load_model_files`.
    ``config``: the model's pipeline (default: the pipeline file of ``model_name`` in
    ``settings.pipelines_dir``, :func:`pipeline_of_model`), whose domain the schema gets."""
    import mlflow.artifacts

    config = config or pipeline_of_model(settings, model_name)

    try:
        download_uri = client.get_model_version_download_uri(model_name, version)
    except Exception as err:
        raise ModelLoadError(f"cannot locate artifacts of version {version}: {err}") from err
    local = _existing_local_dir(download_uri)
    if local is not None:
        return load_model_files(local, config)
    with tempfile.TemporaryDirectory(prefix="airloop-serving-") as tmp:
        try:
            local_dir = mlflow.artifacts.download_artifacts(
                artifact_uri=download_uri,
                dst_path=tmp,
                tracking_uri=settings.mlflow_tracking_uri,
                registry_uri=settings.mlflow_registry_uri or settings.mlflow_tracking_uri,
            )
        except Exception as err:
            raise ModelLoadError(f"cannot download version {version} from {download_uri}: {err}") from err
        return load_model_files(local_dir, config)


# --------------------------------------------------------------------------------------------
# Registry access, loading and swapping
# --------------------------------------------------------------------------------------------


def _existing_local_dir(uri: str) -> str | None:
    """The folder a plain path or ``file:`` URI names, if it exists (else ``None``)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme == "":
        path = uri
    else:
        return None
    return path if os.path.isdir(path) else None
