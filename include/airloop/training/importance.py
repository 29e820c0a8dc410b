"""Global feature importances of a trained version: permutation importance on its holdout.

One figure per raw input feature (the pipeline's ``features``, before the model's own
preprocessing): how much the training metric (``training.metric``, a scikit-learn scorer, so
higher is better) falls when that column of the holdout is shuffled, averaged over a few
repeats (:func:`sklearn.inspection.permutation_importance` on the whole fitted Pipeline). Kept
cheap: at most :data:`MAX_ROWS` holdout rows (a seeded random sample, so every day of the
holdout is represented) and :data:`N_REPEATS` shuffles per feature.

The training run's evaluate step logs it (:func:`log_importances`) as
``importance/permutation_importance.json`` and ``importance/permutation_importance.png`` of the
run the version is registered from; :func:`load_importances` reads a version's record back.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from airloop.core.pipeline import PipelineConfig
from airloop.data.features import features_and_target

#: Artifact folder of the training run holding the importances.
IMPORTANCE_DIR = "importance"
#: The JSON record (see :func:`permutation_importances` for its fields).
IMPORTANCE_FILE = "permutation_importance.json"
#: The bar chart of the same figures.
IMPORTANCE_PLOT = "permutation_importance.png"
#: Most holdout rows scored per shuffle.
MAX_ROWS = 2000
#: Shuffles per feature.
N_REPEATS = 3


def permutation_importances(config: PipelineConfig, model: Any, holdout: pd.DataFrame, *,
                            n_repeats: int = N_REPEATS, max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """Permutation importance of every raw feature of ``model`` (a fitted Pipeline) on ``holdout``.

    Returns ``{"metric", "n_repeats", "rows", "seed", "baseline", "seconds", "features": [{"feature",
    "importance_mean", "importance_std"}]}``, features sorted by decreasing mean importance (a
    drop of the metric; negative when shuffling helped). ``baseline`` is the metric on the
    unshuffled sample."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import get_scorer

    if n_repeats < 1 or max_rows < 1:
        raise ValueError(f"n_repeats and max_rows must be at least 1, got {n_repeats} and {max_rows}")
    X, y = features_and_target(config, holdout)
    if X.empty:
        raise ValueError(f"{config.name}: no holdout rows to compute permutation importances on")
    seed = config.training.seed
    if len(X) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(X), size=max_rows, replace=False))
        X, y = X.iloc[rows], y.iloc[rows]
    metric = config.training.metric
    started = time.perf_counter()
    result = permutation_importance(model, X, y, scoring=metric, n_repeats=n_repeats, random_state=seed, n_jobs=1)
    seconds = time.perf_counter() - started
    order = np.argsort(-result.importances_mean, kind="stable")
    features = [{"feature": str(X.columns[i]), "importance_mean": float(result.importances_mean[i]),
                 "importance_std": float(result.importances_std[i])} for i in order]
    return {"metric": metric, "n_repeats": n_repeats, "rows": len(X), "seed": seed,
            "baseline": float(get_scorer(metric)(model, X, y)), "seconds": round(seconds, 3), "features": features}


def importance_line(record: dict[str, Any], top: int = 5) -> str:
    """``permutation importance (roc_auc, 2000 holdout rows, 5 repeats, 3.1 s): claim_amount 0.0812,
    police_report 0.0420, ...``: the evaluate log line of the ``top`` features."""
    best = ", ".join(f"{f['feature']} {f['importance_mean']:.4f}" for f in record["features"][:top])
    return (f"permutation importance ({record['metric']}, {record['rows']} holdout rows, {record['n_repeats']} "
            f"repeats, {record['seconds']:.1f} s): {best}")


def write_importances(record: dict[str, Any], out_dir: Path, title: str = "") -> list[Path]:
    """Write ``record`` (:func:`permutation_importances`) as :data:`IMPORTANCE_FILE` and its bar
    chart :data:`IMPORTANCE_PLOT` into ``out_dir``; return both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / IMPORTANCE_FILE
    data.write_text(json.dumps(record, indent=2))
    features = record["features"][::-1]  # barh draws bottom-up: the most important on top
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(features) + 1.2))
    ax.barh([f["feature"] for f in features], [f["importance_mean"] for f in features],
            xerr=[f["importance_std"] for f in features])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"drop of {record['metric']} when shuffled ({record['n_repeats']} repeats, {record['rows']} rows)")
    ax.set_title(title or "Permutation importance (holdout)")
    plot = out_dir / IMPORTANCE_PLOT
    fig.savefig(plot, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return [data, plot]


def log_importances(config: PipelineConfig, model: Any, holdout: pd.DataFrame, **kwargs: Any) -> dict[str, Any]:
    """Compute (:func:`permutation_importances`) and log the importances to the active MLflow run
    under :data:`IMPORTANCE_DIR`; return the record. ``kwargs`` go to :func:`permutation_importances`."""
    import mlflow

    record = permutation_importances(config, model, holdout, **kwargs)
    with tempfile.TemporaryDirectory(prefix="airloop-importance-") as tmp:
        paths = write_importances(record, Path(tmp), f"{config.name}: permutation importance (holdout)")
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=IMPORTANCE_DIR)
    return record


def load_importances(client: Any, model_name: str, version: str | int) -> dict[str, Any] | None:
    """The importances logged for a registered version (its source run's :data:`IMPORTANCE_FILE`),
    None when that run has none (a version trained before they were logged). ``client`` is an
    ``MlflowClient``."""
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(model_name, str(version)).run_id
    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="airloop-importance-") as tmp:
        try:
            path = client.download_artifacts(run_id, f"{IMPORTANCE_DIR}/{IMPORTANCE_FILE}", tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())
