"""A registered model version's files: its model, signature and input example."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
import urllib.request
from typing import Any

import pandas as pd

from airloop.core.settings import Settings
from airloop.models.schema import RecordSchema
from airloop.models.trust import ModelLoadError, UntrustedModelError, load_skops_file


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


def load_model_dir(local_dir: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """Read a downloaded MLflow model folder: ``(estimator, schema, input_example)``.

    Checks the sklearn flavour is stored as skops, loads it with vetted types only, builds the
    request schema from the signature and reads the input example.
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
    return estimator, schema, _read_input_example(mlmodel, local_dir)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def read_model_version(client: Any, settings: Settings, model_name: str, version: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
    """Read a registered version's model folder safely: in place when local, else downloaded to a
    temp folder. Returns ``(estimator, schema, input_example)``; see :func:`load_model_dir`."""
    import mlflow.artifacts

    try:
        download_uri = client.get_model_version_download_uri(model_name, version)
    except Exception as err:
        raise ModelLoadError(f"cannot locate artifacts of version {version}: {err}") from err
    local = _existing_local_dir(download_uri)
    if local is not None:
        return load_model_dir(local)
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
        return load_model_dir(local_dir)


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
