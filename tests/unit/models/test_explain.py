"""Per-prediction explanations (airloop.models.explain) of real fitted pipelines of every estimator
family training builds (``airloop.training.search.build_model``): binary (claims_fraud),
multi-class (ticket_triage) and regression (claims_fraud predicting ``premium_monthly``).

Additivity: ``base_value + sum(contributions) == output`` within 1e-6, where ``output`` is the
model's own answer in the explanation's space (log-odds, logit, probability or prediction).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit, softmax

from airloop.core.pipeline import load_pipeline_config
from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day, generate_ticket_day
from airloop.models.explain import (
    LINEAR,
    LOG_ODDS,
    LOGIT,
    PERMUTATION_SHAP,
    PREDICTION,
    PROBABILITY,
    TREE_SHAP,
    ExplainError,
    ModelExplainer,
    raw_feature_origins,
)
from airloop.training.search import build_model

SMALL = {"random_forest": {"n_estimators": 25, "max_depth": 8}, "extra_trees": {"n_estimators": 20, "max_depth": 8},
         "hist_gradient_boosting": {"max_iter": 40}, "logistic_regression": {"C": 1.0}, "ridge": {}}


@pytest.fixture(scope="module")
def claims_frame() -> pd.DataFrame:
    return pd.concat([generate_day(date(2026, 1, 5)), generate_day(date(2026, 3, 10))], ignore_index=True)


@pytest.fixture(scope="module")
def tickets(settings):
    config = load_pipeline_config("ticket_triage", settings)
    frame = pd.concat([generate_ticket_day(date(2026, 1, 5)), generate_ticket_day(date(2026, 1, 6))],
                      ignore_index=True)
    return config, frame


@pytest.fixture(scope="module")
def regression_config(settings, claims_config):
    """claims_fraud as a regression pipeline (target ``premium_monthly``)."""
    raw = yaml.safe_load((settings.pipelines_dir / "claims_fraud.yaml").read_text())
    raw.update(name="claims_premium", task="regression", target="premium_monthly")
    raw.pop("classes")
    raw["features"].pop("premium_monthly")
    raw["training"]["metric"] = "neg_root_mean_squared_error"
    raw["training"]["search_space"] = {"ridge": {"alpha": {"type": "float", "low": 0.1, "high": 10.0}}}
    raw["training"].pop("decision", None)
    raw["training"].pop("calibration", None)
    raw["promotion"]["thresholds"] = {"r2": -100.0}
    for env in raw["promotion"]["environments"]:
        env.pop("thresholds", None)
    return type(claims_config).model_validate(raw)


def fitted(config, frame, family):
    X, y = features_and_target(config, frame)
    return build_model(config, family, SMALL[family]).fit(X, y), X


def assert_additive(explanations, expected_output) -> None:
    for e, want in zip(explanations, expected_output, strict=True):
        assert e.base_value + sum(e.contributions.values()) == pytest.approx(e.output, abs=1e-6)
        assert e.output == pytest.approx(want, abs=1e-9)


# ------------------------------------------------------------------------------ additivity
@pytest.mark.parametrize(("family", "method", "space"), [
    ("logistic_regression", LINEAR, LOG_ODDS),
    ("random_forest", TREE_SHAP, PROBABILITY),
    ("extra_trees", TREE_SHAP, PROBABILITY),
    ("hist_gradient_boosting", TREE_SHAP, LOG_ODDS),
])
def test_binary_explanations_add_up_to_the_positive_class_output(claims_config, claims_frame, family, method, space):
    model, X = fitted(claims_config, claims_frame, family)
    explainer = ModelExplainer(model, X.sample(80, random_state=1), positive_class=claims_config.classes[-1])
    assert (explainer.method, explainer.space) == (method, space)
    rows = X.tail(40)
    explanations = explainer.explain(rows)
    proba = model.predict_proba(rows)[:, list(model.classes_).index(1)]
    logit = np.log(proba) - np.log1p(-proba)
    assert_additive(explanations, proba if space == PROBABILITY else logit)
    assert {e.target for e in explanations} == {"1"}
    # one contribution per raw input feature, sorted by magnitude
    for e in explanations:
        assert sorted(e.contributions) == sorted(claims_config.features)
        sizes = [abs(v) for v in e.contributions.values()]
        assert sizes == sorted(sizes, reverse=True)
        assert e.top(3) == list(e.contributions.items())[:3]
    # the other class of a binary model: the same explanation, negated in a margin space
    if space == LOG_ODDS:
        other = explainer.explain(rows.head(5), target=0)
        for a, b in zip(other, explanations[:5], strict=True):
            assert a.output == pytest.approx(-b.output) and a.base_value == pytest.approx(-b.base_value)
            assert a.target == "0"
            assert a.base_value + sum(a.contributions.values()) == pytest.approx(a.output, abs=1e-6)


@pytest.mark.parametrize(("family", "space"), [
    ("logistic_regression", LOGIT), ("random_forest", PROBABILITY), ("hist_gradient_boosting", LOGIT),
])
def test_multiclass_explanations_explain_the_predicted_class(tickets, family, space):
    config, frame = tickets
    model, X = fitted(config, frame, family)
    explainer = ModelExplainer(model, X.sample(80, random_state=1))
    assert explainer.space == space
    rows = X.tail(30)
    explanations = explainer.explain(rows)
    predicted = model.predict(rows)
    assert [e.target for e in explanations] == [str(p) for p in predicted]
    est = model[-1]
    pre = model[:-1].transform(rows)
    columns = [list(est.classes_).index(p) for p in predicted]
    scores = est.predict_proba(pre) if space == PROBABILITY else est.decision_function(pre)
    assert_additive(explanations, scores[np.arange(len(rows)), columns])
    if space == LOGIT:  # the softmax of the logits is the served probability
        np.testing.assert_allclose(softmax(scores, axis=1), model.predict_proba(rows), atol=1e-9)
    # a named class is explained for every record
    named = explainer.explain(rows.head(4), target="billing")
    assert {e.target for e in named} == {"billing"}
    k = list(est.classes_).index("billing")
    assert_additive(named, scores[:4, k])
    with pytest.raises(ExplainError, match="not among the model's classes"):
        explainer.explain(rows.head(1), target="nope")


@pytest.mark.parametrize(("family", "method"), [
    ("ridge", LINEAR), ("random_forest", TREE_SHAP), ("extra_trees", TREE_SHAP), ("hist_gradient_boosting", TREE_SHAP),
])
def test_regression_explanations_add_up_to_the_prediction(regression_config, claims_frame, family, method):
    model, X = fitted(regression_config, claims_frame, family)
    explainer = ModelExplainer(model, X.sample(80, random_state=1))
    assert (explainer.method, explainer.space) == (method, PREDICTION)
    rows = X.tail(30)
    explanations = explainer.explain(rows)
    assert_additive(explanations, model.predict(rows))
    assert {e.target for e in explanations} == {None}
    with pytest.raises(ExplainError, match="no class"):
        explainer.explain(rows.head(1), target=1)


def test_other_estimators_fall_back_to_the_permutation_explainer(claims_config, claims_frame):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    X, y = features_and_target(claims_config, claims_frame)
    base = build_model(claims_config, "logistic_regression", {})
    model = Pipeline([("pre", base.named_steps["pre"]), ("model", KNeighborsClassifier(15))]).fit(X, y)
    explainer = ModelExplainer(model, X.sample(40, random_state=2), positive_class=1)
    assert (explainer.method, explainer.space) == (PERMUTATION_SHAP, PROBABILITY)
    rows = X.tail(3)
    explanations = explainer.explain(rows)
    assert_additive(explanations, model.predict_proba(rows)[:, 1])
    with pytest.raises(ExplainError, match="needs background rows") as err:
        ModelExplainer(model, None)
    assert err.value.status_code == 409


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_sigmoid_calibrated_models_are_explained_in_calibrated_log_odds(claims_config, claims_frame, family):
    """As ``training.calibration: sigmoid`` builds them: the served (calibrated) probability is the
    ``expit`` of the explained output."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import KFold

    X, y = features_and_target(claims_config, claims_frame)
    model = build_model(claims_config, family, SMALL[family])
    model.set_params(model=CalibratedClassifierCV(model.named_steps["model"], method="sigmoid", cv=KFold(3),
                                                  ensemble=False)).fit(X, y)
    explainer = ModelExplainer(model, X.sample(60, random_state=4), positive_class=1)
    assert explainer.space == LOG_ODDS and explainer.describe()["calibrated"]
    assert explainer.method == (LINEAR if family == "logistic_regression" else TREE_SHAP)
    rows = X.tail(25)
    explanations = explainer.explain(rows)
    for e, p in zip(explanations, model.predict_proba(rows)[:, 1], strict=True):
        assert e.base_value + sum(e.contributions.values()) == pytest.approx(e.output, abs=1e-6)
        assert expit(e.output) == pytest.approx(p, abs=1e-9)
    negative = explainer.explain(rows.head(3), target=0)
    for n, e in zip(negative, explanations[:3], strict=True):
        assert n.output == pytest.approx(-e.output) and n.contributions == pytest.approx(
            {k: -v for k, v in e.contributions.items()})


def test_isotonic_calibration_uses_the_permutation_explainer(claims_config, claims_frame):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import KFold

    X, y = features_and_target(claims_config, claims_frame)
    model = build_model(claims_config, "hist_gradient_boosting", SMALL["hist_gradient_boosting"])
    model.set_params(model=CalibratedClassifierCV(model.named_steps["model"], method="isotonic", cv=KFold(3),
                                                  ensemble=False)).fit(X, y)
    explainer = ModelExplainer(model, X.sample(30, random_state=5), positive_class=1)
    assert (explainer.method, explainer.space) == (PERMUTATION_SHAP, PROBABILITY)
    rows = X.tail(3)
    assert_additive(explainer.explain(rows), model.predict_proba(rows)[:, 1])


# ------------------------------------------------------------------ linear: exact by hand
def test_linear_contributions_are_coef_times_distance_to_the_background_mean(claims_config, claims_frame):
    model, X = fitted(claims_config, claims_frame, "logistic_regression")
    background = X.sample(60, random_state=3)
    explainer = ModelExplainer(model, background)
    rows = X.head(10)
    pre, est = model[:-1], model[-1]
    features, origins = raw_feature_origins(model)
    Xp, mean = pre.transform(rows), pre.transform(background).mean(axis=0)
    terms = est.coef_[0] * (Xp - mean)
    for i, e in enumerate(explainer.explain(rows)):
        by_hand = {f: terms[i, [j for j, o in enumerate(origins) if o == f]].sum() for f in features}
        assert e.contributions == pytest.approx(by_hand, abs=1e-12)
        assert e.base_value == pytest.approx(est.intercept_[0] + est.coef_[0] @ mean, abs=1e-12)
        assert expit(e.output) == pytest.approx(model.predict_proba(rows.iloc[[i]])[0, 1], abs=1e-12)


# ---------------------------------------------------------------------- feature mapping
def test_preprocessed_columns_map_back_to_their_raw_features(claims_config, claims_frame):
    model, _ = fitted(claims_config, claims_frame, "random_forest")
    features, origins = raw_feature_origins(model)
    assert features == list(claims_config.features)
    names = list(model[:-1].get_feature_names_out())
    assert len(origins) == len(names)
    for name, origin in zip(names, origins, strict=True):
        if origin in claims_config.numeric_features:
            assert name == f"num__{origin}"
        else:
            assert name.split("__", 1)[1].startswith(f"{origin}_")
    encoder = model.named_steps["pre"].named_transformers_["cat"].named_steps["onehot"]
    for category, learned in zip(claims_config.categorical_features, encoder.categories_, strict=True):  # one column per learned value
        assert origins.count(category) == len(learned) >= len(claims_config.features[category].values)


def test_capped_categories_keep_their_infrequent_column(claims_config, claims_frame):
    """A category capped below its vocabulary (``max_categories``) gets an infrequent column: still
    its own feature's."""
    raw = claims_config.model_dump(mode="json")
    raw["features"]["incident_type"]["max_categories"] = 2
    config = type(claims_config).model_validate(raw)
    model, X = fitted(config, claims_frame, "logistic_regression")
    _, origins = raw_feature_origins(model)
    assert origins.count("incident_type") == 3  # two kept + "infrequent"
    explanations = ModelExplainer(model, X.sample(50, random_state=0)).explain(X.head(5))
    assert_additive(explanations, model[-1].decision_function(model[:-1].transform(X.head(5))))


def test_preprocessing_that_mixes_features_cannot_be_mapped(claims_config, claims_frame):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    X, y = features_and_target(claims_config, claims_frame)
    numeric = ["customer_age", "prior_claims"]
    model = Pipeline([("pre", ColumnTransformer([("poly", PolynomialFeatures(2), numeric)])),
                      ("model", LogisticRegression())]).fit(X[numeric], y)
    with pytest.raises(ExplainError, match="PolynomialFeatures"):
        ModelExplainer(model, X[numeric].head(20))


def test_records_must_carry_every_feature(claims_config, claims_frame):
    model, X = fitted(claims_config, claims_frame, "hist_gradient_boosting")
    explainer = ModelExplainer(model, None)  # tree SHAP needs no background
    assert explainer.describe()["background_rows"] == 0
    with pytest.raises(ExplainError, match="region") as err:
        explainer.explain(X.head(2).drop(columns=["region"]))
    assert err.value.field == "records"
    assert explainer.explain(X.head(0)) == []
