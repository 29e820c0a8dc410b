"""Label-free ROC AUC estimates: airloop's CBPE (airloop.monitoring.estimation) vs NannyML's CBPE.

    python benchmarks/estimation.py [--repeats K]

Data: the demo simulator (claims fraud, seeded). A logistic-regression model is fitted on
2026-02-01..03-14; its scores are calibrated (isotonic) on the reference period 03-15..04-14, and
both tools get the same calibrated scores, served labels (at the threshold maximising F1 on the
reference) and daily chunks of the analysis period 04-15..05-31, which holds the covariate shift
(from 04-20: inputs move, the fraud mechanism does not) and the concept drift (from 04-30: the
fraud mechanism changes; no score-based estimate can see that).

* ``nannyml``: NannyML 0.13.1 in its own virtual environment (created once under
  ``<state>/bench-venvs/nannyml`` with ``uv``), run as a subprocess on Parquet files written here:
  ``CBPE(metrics=["roc_auc"], chunk_period="D")`` fitted on the reference, estimating the
  analysis period; timed inside the subprocess (imports excluded), median of ``--repeats``.
* ``ours``: :func:`airloop.monitoring.estimation.estimate_binary` on each daily chunk (ROC AUC,
  F1, precision, recall, accuracy, each with its bootstrap band), timed the same way.

Figures: ``auc_max_abs_diff`` / ``auc_mean_abs_diff`` between the two per chunk (target: within
0.02), ``speedup`` = NannyML time / ours (target >= 10), and per period (``stable`` before the
shift, ``shift``, ``drift``) our estimate's mean error vs the realized daily ROC AUC
(``*_mean_error``: estimated - realized; ``*_mae``) and the share of days whose realized AUC lies
inside our band (``*_band_coverage``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_python, emit, log, median, parser  # noqa: E402 - benchmarks/ on the path first

from airloop.data.simulator import DEFAULT_EVENTS  # noqa: E402

NANNYML = "nannyml==0.13.1"
#: Imported by NannyML 0.13.1 but not declared by it (plots), and the Parquet reader.
NANNYML_EXTRAS = ["statsmodels", "pyarrow"]
TRAIN = (date(2026, 2, 1), date(2026, 3, 15))
REFERENCE = (date(2026, 3, 15), date(2026, 4, 15))
ANALYSIS = (date(2026, 4, 15), date(2026, 6, 1))
SHIFT, DRIFT = DEFAULT_EVENTS["covariate_shift"], DEFAULT_EVENTS["concept_drift"]

NANNYML_SCRIPT = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
import nannyml as nml
reference, analysis, repeats = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2]), int(sys.argv[3])
def run():
    est = nml.CBPE(problem_type="classification_binary", y_pred_proba="p", y_pred="pred", y_true="y",
                   timestamp_column_name="ts", metrics=["roc_auc"], chunk_period="D")
    est.fit(reference)
    return est, est.estimate(analysis)
run()  # warm-up
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); est, result = run(); times.append(time.perf_counter() - t0)
df = result.filter(period="analysis").to_df()
out = {"times": times, "calibrated": bool(getattr(est, "needs_calibration", False)),
       "chunks": [{"start": str(s)[:10], "roc_auc": float(v)}
                  for s, v in zip(df[("chunk", "start_date")], df[("roc_auc", "value")])]}
print(json.dumps(out))
'''


def _days(span: tuple[date, date]) -> list[date]:
    return [span[0] + timedelta(days=i) for i in range((span[1] - span[0]).days)]


def build_data():
    """(reference, analysis) frames with ts, y, calibrated p and served pred, plus the threshold."""
    import numpy as np
    import pandas as pd
    from sklearn.isotonic import IsotonicRegression

    from airloop.core.pipeline import load_pipeline_config
    from airloop.core.settings import get_settings
    from airloop.data.features import features_and_target
    from airloop.data.simulator import generate_day
    from airloop.training.search import build_model

    config = load_pipeline_config("claims_fraud", get_settings())
    frames = {name: pd.concat([generate_day(d) for d in _days(span)], ignore_index=True)
              for name, span in (("train", TRAIN), ("reference", REFERENCE), ("analysis", ANALYSIS))}
    X, y = features_and_target(config, frames["train"])
    model = build_model(config, "logistic_regression", {"C": 1.0}).fit(X, y)
    positive = config.classes[-1]
    out = {}
    for name in ("reference", "analysis"):
        Xp, yp = features_and_target(config, frames[name])
        out[name] = pd.DataFrame({"ts": pd.to_datetime(frames[name][config.timestamp], utc=True).dt.tz_localize(None),
                                  "raw": model.predict_proba(Xp)[:, list(model.classes_).index(positive)],
                                  "y": (yp == positive).astype(int).to_numpy()})
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(out["reference"]["raw"],
                                                                                     out["reference"]["y"])
    for frame in out.values():
        frame["p"] = iso.predict(frame["raw"])
    ref = out["reference"]
    grid = np.unique(np.quantile(ref["p"], np.linspace(0.5, 0.995, 100)))
    f1 = [2 * ((ref["p"] >= t) & (ref["y"] == 1)).sum() / ((ref["p"] >= t).sum() + ref["y"].sum()) for t in grid]
    threshold = float(grid[int(np.argmax(f1))])
    for frame in out.values():
        frame["pred"] = (frame["p"] >= threshold).astype(int)
        frame.drop(columns=["raw"], inplace=True)
    return out["reference"], out["analysis"], threshold


def ours(analysis, threshold: float):
    from airloop.monitoring.estimation import estimate_binary

    day = analysis["ts"].dt.date
    return {d.isoformat(): estimate_binary(chunk["p"].to_numpy(), threshold, predicted=chunk["pred"].to_numpy() == 1)
            for d, chunk in analysis.groupby(day, sort=True)}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import numpy as np
    from sklearn.metrics import roc_auc_score

    python = bench_python("nannyml", [NANNYML, *NANNYML_EXTRAS])  # once; it pulls large dependencies
    reference, analysis, threshold = build_data()
    log(f"reference {len(reference)} rows, analysis {len(analysis)} rows, threshold {threshold:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, ana_path = Path(tmp) / "reference.parquet", Path(tmp) / "analysis.parquet"
        reference.to_parquet(ref_path, index=False)
        analysis.drop(columns=["y"]).to_parquet(ana_path, index=False)
        done = subprocess.run([str(python), "-c", NANNYML_SCRIPT, str(ref_path), str(ana_path), str(args.repeats)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"NannyML failed ({done.returncode}):\n{done.stderr[-3000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours(analysis.head(2000), threshold)  # warm-up
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        estimates = ours(analysis, threshold)
        times.append(time.perf_counter() - started)
    their_auc = {c["start"]: c["roc_auc"] for c in theirs["chunks"]}
    diffs = [abs(estimates[d]["roc_auc"].value - their_auc[d]) for d in estimates if d in their_auc]
    figures = {"chunks": len(estimates), "chunk": "1 day", "rows_per_chunk": round(len(analysis) / len(estimates)),
               "auc_max_abs_diff": round(max(diffs), 4), "auc_mean_abs_diff": round(float(np.mean(diffs)), 4),
               "auc_within_0.02": max(diffs) <= 0.02, "nannyml_calibrated": theirs["calibrated"],
               "ours_s": median(times), "nannyml_s": median(theirs["times"]),
               "speedup": round(median(theirs["times"]) / median(times), 1)}
    day = analysis["ts"].dt.date
    periods = {"stable": (ANALYSIS[0], SHIFT), "shift": (SHIFT, DRIFT), "drift": (DRIFT, ANALYSIS[1])}
    for name, (a, b) in periods.items():
        errors, inside = [], []
        for d, chunk in analysis.groupby(day, sort=True):
            if not a <= d < b or chunk["y"].nunique() < 2:
                continue
            est = estimates[d.isoformat()]["roc_auc"]
            real = roc_auc_score(chunk["y"], chunk["p"])
            errors.append(est.value - real)
            inside.append(est.low <= real <= est.high)
        figures |= {f"{name}_days": len(errors), f"{name}_mean_error": round(float(np.mean(errors)), 4),
                    f"{name}_mae": round(float(np.mean(np.abs(errors))), 4),
                    f"{name}_band_coverage": round(float(np.mean(inside)), 3)}
    emit(figures)


if __name__ == "__main__":
    main()
