"""Per-prediction explanations of a loaded model version: a contribution per raw input feature.

Pure: takes the fitted model (the scikit-learn Pipeline loaded from the version's vetted skops
artefact, never anything unpickled) and records; the caller passes the background sample.
Each explanation is additive in its output space: ``base_value + sum(contributions) == output``
(within 1e-6), where ``output`` is the model's own output for the record in that space:

* **tree ensembles** (random forest, extra trees, histogram / classic gradient boosting,
  decision trees): TreeSHAP (:class:`shap.TreeExplainer`) on the fitted estimator step, fed the
  Pipeline's preprocessed matrix. It uses the path-dependent algorithm (the trees' own training
  covers; the base value is the model's mean output over its training data): shap 0.51's
  interventional variant broke additivity on our models by up to 0.36 log-odds (split
  thresholds equal to data values), the path-dependent one is exact. Space: ``log_odds`` for
  binary boosting, ``logit`` (the class's softmax input) for multi-class boosting,
  ``probability`` for forests and trees, ``prediction`` for regressors.
* **linear models** (logistic regression, ridge / least squares / lasso / elastic net): exact
  contributions ``coef * (x - mean of the background)`` in the preprocessed space
  (:class:`shap.LinearExplainer`); logistic regression in ``log_odds`` (binary) or ``logit``.
* **calibrated classifiers** (``CalibratedClassifierCV``, ``training.calibration``): a binary
  sigmoid calibration is affine in log-odds, so the base estimator's explanation (tree or
  linear) is mapped exactly into calibrated ``log_odds``, whose ``expit`` is the served score;
  other calibrations (isotonic, multi-class) go to the permutation explainer below.
* **anything else**: shap's permutation explainer on the predicted probability (or value),
  masking with the background sample; exact additivity by construction, slower.

Contributions of the preprocessed columns are summed per raw input feature: every one-hot
column of a category goes back to its category, an imputed and scaled number to itself. The
mapping is read from the fitted ``ColumnTransformer`` (its ``output_indices_`` and each step's
``get_feature_names_out``); a preprocessing step that mixes features cannot be mapped
(:class:`ExplainError`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Output spaces of an explanation.
LOG_ODDS, LOGIT, PROBABILITY, PREDICTION = "log_odds", "logit", "probability", "prediction"
#: Methods.
TREE_SHAP, LINEAR, PERMUTATION_SHAP = "tree_shap", "linear", "permutation_shap"
#: Most background rows kept (a seeded sample of what the caller passes).
MAX_BACKGROUND_ROWS = 100
#: Largest ``|base + sum(contributions) - output|`` accepted without a warning in the log.
ADDITIVITY_TOLERANCE = 1e-6

_TREE_CLASSES = (
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor", "GradientBoostingClassifier",
    "GradientBoostingRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor",
)
_LINEAR_REGRESSORS = ("Ridge", "LinearRegression", "Lasso", "ElasticNet")
#: Tree regressors whose raw output is the prediction (identity link).
_IDENTITY_LOSSES = {None, "squared_error", "absolute_error", "quantile", "friedman_mse", "huber"}


class ExplainError(ValueError):
    """A model or request that cannot be explained (``status_code`` for HTTP: 422 by default)."""

    def __init__(self, message: str, status_code: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.field = field


@dataclass(frozen=True, slots=True)
class Explanation:
    """One record's explanation: ``base_value + sum(contributions.values()) == output``."""

    base_value: float
    output: float
    space: str
    #: The class explained (str, as in served ``probabilities``); None for regression.
    target: str | None
    #: Per raw input feature, sorted by decreasing magnitude.
    contributions: dict[str, float] = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` largest contributions by magnitude, ``[(feature, contribution)]``."""
        return list(self.contributions.items())[:max(k, 0)]


# ------------------------------------------------------------------------ feature mapping
def _onehot_counts(encoder: Any) -> list[int]:
    """Output columns per input feature of a fitted ``OneHotEncoder`` (infrequent and dropped
    categories accounted for), from its public fitted attributes."""
    infrequent = getattr(encoder, "infrequent_categories_", None)
    drop = getattr(encoder, "drop_idx_", None)
    counts = []
    for i, categories in enumerate(encoder.categories_):
        n = len(categories)
        if infrequent is not None and infrequent[i] is not None:
            n = n - len(infrequent[i]) + 1
        if drop is not None and drop[i] is not None:
            n -= 1
        counts.append(n)
    return counts


def _step_origins(step: Any, names: list[str], origins: list[str]) -> tuple[list[str], list[str]]:
    """``(output names, raw feature of each output)`` of one fitted transformer whose inputs are
    called ``names`` and come from raw features ``origins``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if step is None or step == "passthrough":
        return names, origins
    if isinstance(step, Pipeline):
        for _, inner in step.steps:
            names, origins = _step_origins(inner, names, origins)
        return names, origins
    if isinstance(step, ColumnTransformer):
        return _column_transformer_origins(step, names, origins)
    out_names = [str(n) for n in step.get_feature_names_out(names)]
    if isinstance(step, OneHotEncoder):
        counts = _onehot_counts(step)
        if sum(counts) != len(out_names) or len(counts) != len(origins):
            raise ExplainError(f"cannot map the one-hot columns of {type(step).__name__} back to its features")
        return out_names, [o for o, n in zip(origins, counts, strict=True) for _ in range(n)]
    index = {n: i for i, n in enumerate(names)}
    if all(n in index for n in out_names):  # one output per kept input (imputers, scalers, ordinal encoders)
        return out_names, [origins[index[n]] for n in out_names]
    raise ExplainError(f"cannot map the outputs of {type(step).__name__} back to raw input features "
                       f"(it derives new columns); explanations need per-feature preprocessing")


def _column_transformer_origins(ct: Any, names: list[str], origins: list[str]) -> tuple[list[str], list[str]]:
    """Outputs of a fitted ``ColumnTransformer`` in its output order, each with its raw feature."""
    fitted_in = list(getattr(ct, "feature_names_in_", names))
    position = {str(n): i for i, n in enumerate(fitted_in)}
    width = sum(s.stop - s.start for s in ct.output_indices_.values())
    out_names: list[str | None] = [None] * width
    out_origins: list[str | None] = [None] * width
    for name, transformer, columns in ct.transformers_:
        part = ct.output_indices_.get(name)
        if transformer == "drop" or part is None or part.stop == part.start:
            continue
        idx = _column_indices(columns, position, len(fitted_in))
        sub_names, sub_origins = _step_origins(transformer, [str(fitted_in[i]) for i in idx], [origins[i] for i in idx])
        if len(sub_origins) != part.stop - part.start:
            raise ExplainError(f"cannot map the outputs of transformer {name!r} back to raw input features")
        out_names[part] = sub_names
        out_origins[part] = sub_origins
    if any(o is None for o in out_origins):
        raise ExplainError("cannot map every preprocessed column back to a raw input feature")
    return [str(n) for n in out_names], [str(o) for o in out_origins]


def _column_indices(columns: Any, position: dict[str, int], n: int) -> list[int]:
    """Input column indices of one ``ColumnTransformer`` entry (names, ints or a boolean mask)."""
    if isinstance(columns, (str, int, np.integer)):
        columns = [columns]
    columns = list(columns)
    if columns and all(isinstance(c, (bool, np.bool_)) for c in columns) and len(columns) == n:
        return [i for i, keep in enumerate(columns) if keep]
    return [position[str(c)] if isinstance(c, str) else int(c) for c in columns]


def raw_feature_origins(model: Any) -> tuple[list[str], list[str]]:
    """``(raw input features, the raw feature of each column the estimator step sees)`` of a fitted
    Pipeline (or a bare estimator, whose columns are its own features)."""
    pre, _ = _split(model)
    raw = [str(c) for c in getattr(model, "feature_names_in_", [])]
    if not raw:
        raise ExplainError("the model does not record its input feature names (fit it on a DataFrame)")
    if pre is None:
        return raw, list(raw)
    _, origins = _step_origins(pre, list(raw), list(raw))
    return raw, origins


def _split(model: Any) -> tuple[Any, Any]:
    """``(preprocessing Pipeline or None, final estimator)``."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model[:-1], model.steps[-1][1]
    if isinstance(model, Pipeline):
        return None, model.steps[-1][1]
    return None, model


def _dense(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype="float64")


def sigmoid_calibration(estimator: Any) -> tuple[Any, float, float] | None:
    """``(base estimator, a, b)`` of a binary ``CalibratedClassifierCV`` with one sigmoid calibrator
    (``ensemble=False``, as training builds it): its probability is ``expit(-(a * f + b))`` of the
    base estimator's response ``f`` (``decision_function``, else ``predict_proba[:, 1]``), so its
    log-odds ``-(a * f + b)`` are affine in ``f``. None for any other estimator or calibration."""
    if type(estimator).__name__ != "CalibratedClassifierCV" or getattr(estimator, "method", None) != "sigmoid":
        return None
    fitted = getattr(estimator, "calibrated_classifiers_", [])
    if len(fitted) != 1 or len(estimator.classes_) != 2 or len(fitted[0].calibrators) != 1:
        return None
    calibrator = fitted[0].calibrators[0]
    return fitted[0].estimator, float(calibrator.a_), float(calibrator.b_)


def method_of(model: Any) -> tuple[str, str]:
    """``(method, space)`` the explanations of ``model`` (a fitted Pipeline or estimator) use: see
    the module docstring. Only :data:`LINEAR` and :data:`PERMUTATION_SHAP` need background rows.

    A calibrated classifier (``CalibratedClassifierCV``) with a binary sigmoid calibration is
    explained through its base estimator in calibrated ``log_odds`` (affine in the base's
    response, :func:`sigmoid_calibration`); any other calibration with the permutation explainer
    on the calibrated probability."""
    estimator = _split(model)[1]
    if type(estimator).__name__ == "CalibratedClassifierCV":
        calibrated = sigmoid_calibration(estimator)
        if calibrated is None:
            return PERMUTATION_SHAP, PROBABILITY
        method, space = _family_method(calibrated[0])
        response = LOG_ODDS if hasattr(calibrated[0], "decision_function") else PROBABILITY
        return (PERMUTATION_SHAP, PROBABILITY) if method == PERMUTATION_SHAP or space != response else (method, LOG_ODDS)
    return _family_method(estimator)


def _family_method(estimator: Any) -> tuple[str, str]:
    """``(method, space)`` of an uncalibrated final estimator."""
    name = type(estimator).__name__
    classes = getattr(estimator, "classes_", None) if hasattr(estimator, "predict_proba") else None
    is_classifier = classes is not None and len(classes) > 0
    binary = is_classifier and len(classes) == 2
    if name in _TREE_CLASSES:
        if name in ("HistGradientBoostingRegressor", "GradientBoostingRegressor") and \
                getattr(estimator, "loss", None) not in _IDENTITY_LOSSES:
            return PERMUTATION_SHAP, PREDICTION  # its raw output is on a link scale, not the prediction
        if not is_classifier:
            return TREE_SHAP, PREDICTION
        if name.startswith(("HistGradientBoosting", "GradientBoosting")):
            return TREE_SHAP, LOG_ODDS if binary else LOGIT
        return TREE_SHAP, PROBABILITY
    if name == "LogisticRegression":
        return LINEAR, LOG_ODDS if binary else LOGIT
    if name in _LINEAR_REGRESSORS:
        return LINEAR, PREDICTION
    return PERMUTATION_SHAP, PROBABILITY if is_classifier else PREDICTION


def needs_background(model: Any) -> bool:
    """Whether explaining ``model`` needs background rows (see :func:`method_of`)."""
    return method_of(model)[0] != TREE_SHAP


# ------------------------------------------------------------------------------ explainer
class ModelExplainer:
    """Explains records of one fitted model (built once per loaded version; thread-safe).

    ``background``: raw feature rows (e.g. a sample of the version's monitoring reference) for the
    linear and permutation methods' expectations, at most :data:`MAX_BACKGROUND_ROWS` kept
    (seeded sample). ``positive_class``: the class a binary model's explanations are about
    (default: its last class).
    """

    def __init__(self, model: Any, background: pd.DataFrame | None = None, *, positive_class: Any = None,
                 max_background: int = MAX_BACKGROUND_ROWS, seed: int = 0) -> None:
        """Pick the method for the model's final estimator and prepare it."""
        self.model = model
        self.pre, self.estimator = _split(model)
        self.features, self.origins = raw_feature_origins(model)
        self._group_index = self._groups()
        self.classes: list[Any] = list(getattr(self.estimator, "classes_", [])) \
            if hasattr(self.estimator, "predict_proba") else []
        self.is_classifier = bool(self.classes)
        keys = [str(c) for c in self.classes]
        if self.is_classifier and len(keys) == 2:
            wanted = str(positive_class) if positive_class is not None else keys[-1]
            if wanted not in keys:
                raise ExplainError(f"positive class {positive_class!r} is not among the model's classes {keys}")
            self.positive: str | None = wanted
        else:
            self.positive = None
        self.method, self.space = method_of(model)
        calibrated = sigmoid_calibration(self.estimator) if self.method != PERMUTATION_SHAP else None
        #: The estimator SHAP looks at (a calibrated model's base), and the calibration's (a, b).
        self._explained = calibrated[0] if calibrated else self.estimator
        self._affine = calibrated[1:] if calibrated else None
        self.background_rows = 0
        self._background: np.ndarray | None = None
        if background is not None and len(background) and self.method != TREE_SHAP:  # trees: their own covers
            sample = background if len(background) <= max_background else \
                background.sample(n=max_background, random_state=seed)
            self._background = self._transform(sample)
            self.background_rows = len(sample)
        self._lock = threading.Lock()
        self._explainer = self._build()

    # -- setup
    def _groups(self) -> list[np.ndarray]:
        """Indices of the preprocessed columns of each raw feature, in :attr:`features` order."""
        origins = np.asarray(self.origins)
        return [np.flatnonzero(origins == f) for f in self.features]

    def _transform(self, frame: pd.DataFrame) -> np.ndarray:
        frame = frame[self.features]
        return _dense(self.pre.transform(frame) if self.pre is not None else frame)

    def _build(self) -> Any:
        import shap

        if self.method == TREE_SHAP:
            return shap.TreeExplainer(self._explained, feature_perturbation="tree_path_dependent", model_output="raw")
        if self._background is None:
            raise ExplainError(f"explaining a {type(self.estimator).__name__} needs background rows "
                               "(the version's reference sample)", status_code=409)
        masker = shap.maskers.Independent(self._background, max_samples=len(self._background))
        if self.method == LINEAR:
            return shap.LinearExplainer(self._explained, masker)
        return None  # permutation explainers are built per explained class (see _permutation)

    def describe(self) -> dict[str, Any]:
        """``{"method", "space", "estimator", "calibrated", "features", "background_rows"}``."""
        return {"method": self.method, "space": self.space, "estimator": type(self._explained).__name__,
                "calibrated": type(self.estimator).__name__ == "CalibratedClassifierCV",
                "features": list(self.features), "background_rows": self.background_rows}

    # -- outputs
    def _class_index(self, target: Any) -> int:
        keys = [str(c) for c in self.classes]
        if str(target) not in keys:
            raise ExplainError(f"class {target!r} is not among the model's classes {keys}", field="class")
        return keys.index(str(target))

    def _targets(self, X: np.ndarray, target: Any) -> list[int | None]:
        """The class index each row is explained for (None: regression)."""
        if not self.is_classifier:
            if target is not None:
                raise ExplainError("a regression model has no class to explain", field="class")
            return [None] * len(X)
        if target is not None:
            return [self._class_index(target)] * len(X)
        if self.positive is not None:
            return [self._class_index(self.positive)] * len(X)
        return np.asarray(self.estimator.predict_proba(X)).argmax(axis=1).tolist()  # multi-class: the top class

    def _outputs(self, X: np.ndarray) -> np.ndarray:
        """The model's own output in :attr:`space`, one column per class (one for regression)."""
        est = self.estimator
        if self._affine is not None:  # calibrated log-odds: -(a * response + b), as sklearn computes them
            base = self._explained
            response = base.decision_function(X) if hasattr(base, "decision_function") else base.predict_proba(X)[:, 1]
            a, b = self._affine
            z = -(a * np.asarray(response, dtype="float64") + b)
            return np.column_stack([-z, z])
        if self.space in (LOG_ODDS, LOGIT):
            raw = np.asarray(est.decision_function(X), dtype="float64")
            return np.column_stack([-raw, raw]) if raw.ndim == 1 else raw  # binary: log-odds of classes_[1]
        if self.space == PROBABILITY:
            return np.asarray(est.predict_proba(X), dtype="float64")
        return np.asarray(est.predict(X), dtype="float64").reshape(len(X), 1)

    def _values(self, X: np.ndarray, targets: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(per preprocessed column values, base values)`` of each row for its target."""
        if self.method == PERMUTATION_SHAP:
            return self._permutation(X, targets)
        if self._affine is not None:  # the base's classes_[1] response, mapped to calibrated log-odds
            values, base = self._shap(X, [1] * len(X))
            a, b = self._affine
            sign = np.where(np.asarray(targets) == 1, 1.0, -1.0)
            return (-a * values) * sign[:, None], -(a * base + b) * sign
        return self._shap(X, targets)

    def _shap(self, X: np.ndarray, targets: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """TreeSHAP / linear values of :attr:`_explained` for each row's target column."""
        values = np.asarray(self._explainer.shap_values(X), dtype="float64")
        base = np.atleast_1d(np.asarray(self._explainer.expected_value, dtype="float64"))
        if values.ndim == 2:  # one output: a regressor, or a binary model's classes_[1] margin
            values, base = values[:, :, None], base[None, :]
            if self.is_classifier:  # classes_[0] in a margin space is the negation
                values = np.concatenate([-values, values], axis=2)
                base = np.concatenate([-base, base], axis=1)
        else:
            base = base[None, :]
        cols = [t or 0 for t in targets]
        rows = np.arange(len(X))
        return values[rows, :, cols], base[0, cols]

    def _permutation(self, X: np.ndarray, targets: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        import shap

        values = np.zeros_like(X)
        base = np.zeros(len(X))
        masker = shap.maskers.Independent(self._background, max_samples=len(self._background))
        for k in sorted({t or 0 for t in targets}):
            rows = [i for i, t in enumerate(targets) if (t or 0) == k]

            def f(data: np.ndarray, k: int = k) -> np.ndarray:
                return self._outputs(np.asarray(data, dtype="float64"))[:, k]

            explainer = shap.PermutationExplainer(f, masker, seed=0)
            result = explainer(X[rows], max_evals=max(500, 2 * X.shape[1] + 1), silent=True)
            values[rows] = np.asarray(result.values, dtype="float64")
            base[rows] = np.asarray(result.base_values, dtype="float64").reshape(-1)
        return values, base

    # -- public
    def explain(self, frame: pd.DataFrame, target: Any = None) -> list[Explanation]:
        """Explain each row of ``frame`` (raw features, typed as the model was trained). ``target``:
        the class to explain (default: the positive class of a binary model, the predicted class
        of a multi-class one)."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ExplainError(f"records lack the model's features {missing}", field="records")
        if frame.empty:
            return []
        X = self._transform(frame)
        with self._lock:
            targets = self._targets(X, target)
            values, base = self._values(X, targets)
        outputs = self._outputs(X)
        rows = np.arange(len(X))
        output = outputs[rows, [t or 0 for t in targets]]
        per_feature = np.column_stack([values[:, g].sum(axis=1) for g in self._group_index])
        error = np.abs(base + per_feature.sum(axis=1) - output)
        if error.size and float(error.max()) > ADDITIVITY_TOLERANCE * max(1.0, float(np.abs(output).max())):
            log.warning("explanations of %s off their output by up to %.3g (%s)", type(self.estimator).__name__,
                        float(error.max()), self.method)
        out = []
        for i in range(len(X)):
            order = np.argsort(-np.abs(per_feature[i]), kind="stable")
            out.append(Explanation(
                base_value=float(base[i]), output=float(output[i]), space=self.space,
                target=None if targets[i] is None else str(self.classes[targets[i]]),
                contributions={self.features[j]: float(per_feature[i, j]) for j in order}))
        return out


def explain_frame(model: Any, frame: pd.DataFrame, background: pd.DataFrame | None = None,
                  *, positive_class: Any = None, target: Any = None) -> list[Explanation]:
    """One-off :meth:`ModelExplainer.explain` (build the explainer, explain ``frame``)."""
    return ModelExplainer(model, background, positive_class=positive_class).explain(frame, target)

