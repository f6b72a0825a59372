"""GaussianMoE under scikit-learn: clone, Pipeline, cross_val_score, GridSearchCV, pandas input,
NotFittedError, the applicable estimator checks; and select_n_experts."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import mixsim

sklearn = pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return mixsim.sample(mixsim.preset("softmax_k2"), 600, rng=0)


def test_get_params_set_params_and_clone():
    model = mixsim.GaussianMoE(3, gate="competition", n_init=2, random_state=7)
    params = model.get_params()
    assert params["n_experts"] == 3 and params["gate"] == "competition" and params["random_state"] == 7
    assert set(params) == {"n_experts", "gate", "top_k", "expert", "tol", "gtol", "max_iter", "n_init", "init", "rng",
                           "truth", "method", "init_options", "em_warmup", "variance_floor", "gate_bias", "phi", "compile",
                           "random_state", "variance_min", "variance_cap", "variance_ratio", "search_candidates", "search_iter", "search_points",
                           "search_scale", "search_keep", "hit_tol"}
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    assert model.set_params(n_experts=4, tol=1e-5) is model and model.n_experts == 4 and model.tol == 1e-5
    with pytest.raises(ValueError, match="invalid parameter 'n_expert'"):
        model.set_params(n_expert=2)


def test_constructor_stores_arguments_only():
    # No validation in __init__ (scikit-learn's rule): a bad value is refused by fit, naming it.
    model = mixsim.GaussianMoE(n_experts=0, tol=-1)
    assert model.n_experts == 0 and not hasattr(model, "params_")
    with pytest.raises(ValueError, match="n_experts"):
        model.fit(np.linspace(0, 1, 50)[:, None], np.sin(np.arange(50.0)))


def test_random_state_is_an_alias_of_rng(data):
    X, y = data
    a = mixsim.GaussianMoE(2, n_init=2, rng=5).fit(X, y)
    b = mixsim.GaussianMoE(2, n_init=2, random_state=5).fit(X, y)
    assert a.params_ == b.params_  # bitwise: the same seed reaches the fitter
    c = mixsim.GaussianMoE(2, n_init=2, random_state=np.random.RandomState(0)).fit(X, y)  # legacy RandomState
    assert c.converged_
    with pytest.raises(ValueError, match="rng and random_state"):
        mixsim.GaussianMoE(2, rng=1, random_state=2).fit(X, y)


def test_clone_of_a_fitted_model_refits_to_the_same_numbers(data):
    X, y = data
    model = mixsim.GaussianMoE(2, random_state=0).fit(X, y)
    twin = clone(model)
    assert not hasattr(twin, "params_")
    assert twin.fit(X, y).params_ == model.params_


def test_unfitted_model_raises_sklearn_not_fitted_error():
    model = mixsim.GaussianMoE(2)
    for call in (lambda: model.predict(np.zeros((3, 1))), lambda: model.score(np.zeros((3, 1)), np.zeros(3)),
                 lambda: model.predict_proba(np.zeros((3, 1))), lambda: model.bic(np.zeros((3, 1)), np.zeros(3))):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
        with pytest.raises(mixsim.NotFittedError):
            call()


def test_pandas_input_without_warnings_and_feature_names(data):
    X, y = data
    df = pd.DataFrame({"dose": X[:, 0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torch "not writable" warning was the defect
        model = mixsim.GaussianMoE(2, random_state=0).fit(df, pd.Series(y, name="response"))
        pred = model.predict(df)
    assert model.n_features_in_ == 1 and list(model.feature_names_in_) == ["dose"]
    plain = mixsim.GaussianMoE(2, random_state=0).fit(X, y)
    assert plain.params_ == model.params_ and not hasattr(plain, "feature_names_in_")
    np.testing.assert_array_equal(pred, plain.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        model.predict(pd.DataFrame({"age": X[:, 0]}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        model.predict(X)


def test_score_is_mean_held_out_log_likelihood(data):
    X, y = data
    model = mixsim.GaussianMoE(2, random_state=0).fit(X[:400], y[:400])
    p = model.params_
    # independent: scipy's normal density under the closed-form softmax gate
    from scipy.stats import norm

    logits = X[400:] @ p.gate_weight.T + p.gate_bias
    gate = np.exp(logits - logits.max(1, keepdims=True))
    gate /= gate.sum(1, keepdims=True)
    dens = (gate * norm.pdf(y[400:, None], X[400:] @ p.expert_weight.T + p.expert_bias, np.sqrt(p.variance))).sum(1)
    assert model.score(X[400:], y[400:]) == pytest.approx(np.log(dens).mean(), rel=1e-12)


def test_pipeline_with_standard_scaler(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), mixsim.GaussianMoE(2, random_state=0)).fit(X, y)
    Z = StandardScaler().fit_transform(X)
    direct = mixsim.GaussianMoE(2, random_state=0).fit(Z, y)
    np.testing.assert_allclose(pipe.predict(X), direct.predict(Z), rtol=1e-12, atol=1e-12)
    assert pipe.score(X, y) == pytest.approx(direct.score(Z, y), rel=1e-12)


def test_cross_val_score_uses_held_out_likelihood(data):
    X, y = data
    cv = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(mixsim.GaussianMoE(2, random_state=0), X, y, cv=cv)
    by_hand = [mixsim.GaussianMoE(2, random_state=0).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in cv.split(X)]
    np.testing.assert_allclose(scores, by_hand, rtol=1e-12)


def test_grid_search_over_n_experts_prefers_the_true_k(data):
    X, y = data
    search = GridSearchCV(mixsim.GaussianMoE(random_state=0, n_init=2), {"n_experts": [1, 2, 3, 4]},
                          cv=KFold(3, shuffle=True, random_state=0)).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    # One expert cannot fit two regimes: its held-out log-likelihood is far lower (about 2.3 nats/sample
    # here); the truth has two experts and extra ones only fit noise, so k = 2 is chosen.
    assert scores[0] < scores[1] - 1.0
    assert search.best_params_ == {"n_experts": 2}
    assert search.best_estimator_.n_experts == 2 and search.best_estimator_.converged_


# The checks of sklearn.utils.estimator_checks that do not apply, and why (the rest must pass).
EXPECTED_FAILED_CHECKS = {
    "check_fit1d": "mixsim reads a 1-d X as n samples of one feature (documented convenience for d = 1)",
    "check_supervised_y_2d": "y of shape (n, 1) is refused by name (ValueError), not raveled with a warning",
    "check_regressors_no_decision_function": "predict_proba returns the gate weights pi(x), part of mixsim's API",
}


# GaussianMoE keeps scikit-learn optional, so it does not inherit BaseEstimator; the checks warn about that.
_NOT_BASE = ".*does not inherit from `sklearn.base.BaseEstimator`"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_NOT_BASE)
    _checks = parametrize_with_checks([mixsim.GaussianMoE(1, max_iter=200, random_state=0)],
                                      expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)


@_checks
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_BASE)
        check(estimator)


# ---------------------------------------------------------------------------------------------
# select_n_experts
# ---------------------------------------------------------------------------------------------

def test_select_n_experts_by_bic_tabulates_every_candidate(data):
    X, y = data
    sel = mixsim.select_n_experts(X, y, [1, 2, 3], n_init=2)
    table = sel.table
    assert list(table["n_experts"]) == [1, 2, 3] and table["chosen"].sum() == 1
    assert sel.n_experts == 2 and sel.model.n_experts == 2
    for _, row in table.iterrows():  # each BIC agrees with the fitted model's own bic on the same data
        refit = mixsim.GaussianMoE(int(row["n_experts"]), n_init=2, rng=0).fit(X, y)
        assert row["bic"] == pytest.approx(refit.bic(X, y), rel=1e-9)
    assert table.loc[table["chosen"], "bic"].item() == table["bic"].min()


def test_select_n_experts_by_cross_validation(data):
    X, y = data
    sel = mixsim.select_n_experts(X, y, [1, 2], criterion="cv", cv=3)
    assert sel.n_experts == 2 and sel.table["cv_score"].notna().all()
    assert sel.table.loc[sel.table["n_experts"] == 1, "cv_score"].item() < sel.table.loc[sel.table["n_experts"] == 2, "cv_score"].item()
    with pytest.raises(ValueError, match="criterion"):
        mixsim.select_n_experts(X, y, [1, 2], criterion="r2")
    with pytest.raises(ValueError, match="candidates"):
        mixsim.select_n_experts(X, y, [0, 2])
