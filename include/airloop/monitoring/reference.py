"""The monitoring reference of a model version: its layout, builder, loader and cache."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from airloop.monitoring.driftstats import ReferenceProfile

from airloop.core.settings import get_settings
from airloop.data.features import coerce_features, features_and_target
from airloop.models.scoring import model_scores
from airloop.monitoring import calibration, driftstats
from airloop.registry import client as registry

log = logging.getLogger(__name__)


#: ``feature`` value of the prediction-drift row (drift of the served score).
PREDICTION_FEATURE = "__prediction__"


def _drift_columns(config: PipelineConfig) -> tuple[list[str], list[str]]:
    """``(numeric, categorical)`` drift columns: numeric features plus :data:`SCORE_COLUMN`,
    categorical features (the column types Evidently is given, see :func:`_datasets`)."""
    numeric = [c for c, spec in config.features.items() if spec.type != "category"] + [SCORE_COLUMN]
    categorical = [c for c, spec in config.features.items() if spec.type == "category"]
    return numeric, categorical


def build_reference_profile(config: PipelineConfig, reference: pd.DataFrame) -> ReferenceProfile:
    """The drift profile (:class:`airloop.monitoring.driftstats.ReferenceProfile`) of a reference frame:
    every feature and :data:`SCORE_COLUMN`, typed as Evidently types them here.

    A reference with calibrated thresholds (``threshold: auto``: ``reference.attrs`` holds them,
    see :func:`reference_frame`) passes them on to the profile, with one profile per weekday of
    each column calibrated as seasonal (from the reference's :data:`calibration.DAY_COLUMN`)."""

    numeric, categorical = _drift_columns(config)
    frame = reference if all(c in reference.columns for c in [*numeric, *categorical]) else \
        reference.reindex(columns=[*numeric, *categorical])
    profile = driftstats.build_profile(frame, numeric, categorical)
    calibrated = reference.attrs.get(calibration.CALIBRATION_ATTR)
    if not calibrated:
        return profile
    seasonal: dict[str, dict[int, driftstats.ColumnProfile]] = {}
    columns = [c for c in calibrated.get("columns", {}) if calibration.is_seasonal(calibrated, c) and c in frame.columns]
    if columns and calibration.DAY_COLUMN in reference.columns:
        import pandas as pd

        weekday = pd.to_datetime(reference[calibration.DAY_COLUMN]).dt.dayofweek.to_numpy()
        for column in columns:
            values = frame[column].reset_index(drop=True)
            seasonal[column] = {
                int(w): driftstats.build_profile(values[weekday == w].to_frame(), *(
                    ([], [column]) if column in categorical else ([column], [])))[column]
                for w in sorted(set(weekday.tolist()))}
    return driftstats.ReferenceProfile(profile.columns, seasonal=seasonal, calibration=calibrated)


# ============================================================================ reference
def reference_cache_path(settings: Settings, config: PipelineConfig, version: str | int) -> Path:
    """Local copy of a version's reference: ``<state_dir>/references/<pipeline>/<version>/reference.parquet``."""
    return Path(settings.state_dir) / "references" / config.name / str(version) / REFERENCE_FILE


def _version_artifact(client_or_settings: Any, config: PipelineConfig, version: str | int, cache: Path,
                      name: str) -> bool:
    """Make sure ``cache`` holds the file ``name`` of the version's reference folder (the folder
    of its ``airloop.reference_artifact`` tag, default ``reference/``), downloading it once from
    the version's MLflow run (atomic: a concurrent reader sees the whole file or none).

    ``cache`` is resolved by the caller from ``settings``. Returns False when the run has no such
    artifact (only asked when ``name`` is not the reference itself, which must exist)."""
    if cache.is_file():
        return True
    if isinstance(client_or_settings, Settings):
        from airloop.registry import client as registry

        client = registry.get_client(client_or_settings)
    else:
        client = client_or_settings
    mv = client.get_model_version(config.model_name, str(version))
    if not getattr(mv, "run_id", None):
        raise LookupError(f"{config.model_name} v{version} has no MLflow run: no drift reference")
    reference = (getattr(mv, "tags", None) or {}).get("airloop.reference_artifact") or f"{REFERENCE_DIR}/{REFERENCE_FILE}"
    folder = reference.rpartition("/")[0]
    artifact = reference if name == REFERENCE_FILE else (f"{folder}/{name}" if folder else name)
    if artifact != reference and artifact not in {a.path for a in client.list_artifacts(mv.run_id, folder or None)}:
        return False
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".download-") as tmp:
        os.replace(client.download_artifacts(mv.run_id, artifact, tmp), cache)
    log.info("%s of %s v%s cached at %s", name, config.model_name, version, cache)
    return True


def _settings_of(client_or_settings: Any, settings: Settings | None) -> Settings:

    return client_or_settings if isinstance(client_or_settings, Settings) else settings or get_settings()


def load_reference(client_or_settings: Any, config: PipelineConfig, version: str | int,
                   settings: Settings | None = None) -> pd.DataFrame:
    """The drift reference of model ``version``: features typed as served plus :data:`SCORE_COLUMN`.

    Downloaded once from the version's MLflow run (``run_id`` of the model version; artifact
    ``reference/reference.parquet``, or the path in its ``airloop.reference_artifact`` tag) and
    cached on local disk under ``settings.state_dir/references/<pipeline>/<version>/`` — a
    version's reference is immutable, so a cached copy is used without asking MLflow. Pass
    :class:`Settings` (a client is made from it) or an ``MlflowClient`` (then ``settings`` gives
    the cache folder; default :func:`airloop.core.settings.get_settings`).
    """
    import pandas as pd

    cache = reference_cache_path(_settings_of(client_or_settings, settings), config, version)
    _version_artifact(client_or_settings, config, version, cache, REFERENCE_FILE)
    frame = pd.read_parquet(cache)
    missing = [c for c in [*config.features, SCORE_COLUMN] if c not in frame.columns]
    if missing:
        raise ValueError(f"reference of {config.model_name} v{version} ({cache}) lacks columns {missing}")
    out = coerce_features(config, frame, fill_missing=True)
    out[SCORE_COLUMN] = pd.to_numeric(frame[SCORE_COLUMN], errors="coerce").astype("float64")
    if calibration.DAY_COLUMN in frame.columns:  # a reference with calibrated thresholds
        out[calibration.DAY_COLUMN] = frame[calibration.DAY_COLUMN].astype(str)
    if TARGET_COLUMN in frame.columns:  # a regression version's realized holdout targets
        out[TARGET_COLUMN] = pd.to_numeric(frame[TARGET_COLUMN], errors="coerce").astype("float64")
    out.attrs.update(frame.attrs)  # the calibration (kept in the Parquet file's metadata)
    return out


def profile_cache_path(settings: Settings, config: PipelineConfig, version: str | int) -> Path:
    """Local copy of a version's drift profile, next to its cached reference."""
    return reference_cache_path(settings, config, version).with_name(PROFILE_FILE)


def load_profile(client_or_settings: Any, config: PipelineConfig, version: str | int,
                 settings: Settings | None = None) -> ReferenceProfile:
    """The drift profile of model ``version`` (:class:`airloop.monitoring.driftstats.ReferenceProfile`).

    Downloaded once from the version's MLflow run (``profile.npz`` next to the reference
    artifact) and cached under ``settings.state_dir/references/<pipeline>/<version>/`` like
    :func:`load_reference`. A version logged before profiles existed has none: its profile is
    then built from its reference (:func:`load_reference`) and cached the same way. Arguments
    as :func:`load_reference`.
    """

    cache = profile_cache_path(_settings_of(client_or_settings, settings), config, version)
    if not _version_artifact(client_or_settings, config, version, cache, PROFILE_FILE):
        reference = load_reference(client_or_settings, config, version, settings=settings)
        build_reference_profile(config, reference).save(cache)
        log.info("%s v%s has no logged drift profile: built from its reference, cached at %s",
                 config.model_name, version, cache)
    return driftstats.ReferenceProfile.load(cache)


def load_reference_metrics(client_or_settings: Any, config: PipelineConfig, version: str | int) -> dict[str, float]:
    """The version's holdout metrics (its run's ``holdout_<name>`` metrics, as ``{name: value}``)."""

    client = registry.get_client(client_or_settings) if isinstance(client_or_settings, Settings) else client_or_settings
    mv = client.get_model_version(config.model_name, str(version))
    metrics = client.get_run(mv.run_id).data.metrics
    return {k.removeprefix("holdout_"): float(v) for k, v in sorted(metrics.items()) if k.startswith("holdout_")}


REFERENCE_DIR = "reference"


REFERENCE_FILE = "reference.parquet"


#: The reference's drift profile (airloop.monitoring.driftstats), logged next to it.
PROFILE_FILE = "profile.npz"


REFERENCE_MAX_ROWS = 20_000


SCORE_COLUMN = "__score__"


#: Reference column of a regression version's holdout rows: the realized target (NaN on training
#: rows), what direct loss estimation (:mod:`airloop.monitoring.estimation`) learns errors from.
TARGET_COLUMN = "__target__"


def reference_rows(config: PipelineConfig, train, holdout=None):
    """The rows a version's reference is drawn from: its training rows and its holdout (the
    newest days of its snapshot), restricted to the last ``monitoring.reference.training_days``
    days when set. Leaving the holdout out made every retrain soon after a shift keep a reference
    of pre-shift days only (the holdout is exactly the newest, shifted, days)."""
    import pandas as pd

    frames = [train] if holdout is None or len(holdout) == 0 else [train, holdout]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else train.reset_index(drop=True)
    days = config.monitoring.reference.training_days
    if days is not None and len(rows):
        ts = pd.to_datetime(rows[config.timestamp], utc=True)
        recent = rows[ts >= ts.max().floor("D") - pd.Timedelta(days=days - 1)]
        rows = recent if len(recent) else rows
    return rows


def reference_frame(config: PipelineConfig, model, train, holdout=None):
    """The drift reference of a model version: features (typed as served) plus its score on them
    (positive-class probability, or the predicted value) of :func:`reference_rows` (training rows
    and holdout), at most 20k rows, seeded; regression adds :data:`TARGET_COLUMN` on holdout rows.

    With ``threshold: auto`` anywhere in ``monitoring.drift`` the reference also holds each row's
    UTC day (:data:`calibration.DAY_COLUMN`) and, in ``attrs`` (written into the Parquet file's
    metadata, then into the profile by :func:`build_reference_profile`), the thresholds
    calibrated on every training day of ``train`` (:func:`calibration.calibrate_reference`)."""
    import numpy as np

    rows = reference_rows(config, train, holdout)
    start = holdout[config.timestamp].min() if holdout is not None and len(holdout) else None
    marked = rows.assign(__holdout__=(rows[config.timestamp] >= start) if start is not None else False)
    sample = marked.sample(n=min(len(marked), REFERENCE_MAX_ROWS), random_state=config.training.seed)
    ordered = sample.sort_values(config.timestamp, kind="stable")
    X, y = features_and_target(config, ordered)
    out = X.reset_index(drop=True)
    out[SCORE_COLUMN] = model_scores(config, model, X)
    if config.task == "regression":
        target = np.asarray(y, dtype="float64")
        out[TARGET_COLUMN] = np.where(ordered["__holdout__"].to_numpy(bool), target, np.nan)
    if calibration.wanted(config, SCORE_COLUMN):
        days = calibration.day_of(ordered[config.timestamp])
        out[calibration.DAY_COLUMN] = [d.isoformat() for d in days]
        out.attrs[calibration.CALIBRATION_ATTR] = calibration.calibrate_reference(config, model, train, out, SCORE_COLUMN)
    return out
