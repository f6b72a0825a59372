"""GaussianMoE: scikit-learn conventions and agreement with the model's functions."""
import numpy as np
import pytest

import mixsim


@pytest.fixture(scope="module")
def fitted():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 3000, rng=0)
    model = mixsim.GaussianMoE(2, init="near_truth", truth=truth, rng=1)
    return model, model.fit(X, y), X, y


def test_fit_returns_self_and_sets_fitted_attributes(fitted):
    model, returned, X, y = fitted
    assert returned is model
    assert model.converged_ and model.n_iter_ >= 1
    assert model.log_likelihood_ == pytest.approx(mixsim.log_likelihood(model.params_, X, y), rel=1e-12)


def test_predictions_match_closed_forms(fitted):
    model, _, X, y = fitted
    p = model.params_
    logits = X @ p.gate_weight.T + p.gate_bias
    gate = np.exp(logits - logits.max(1, keepdims=True))
    gate /= gate.sum(1, keepdims=True)
    mean = X @ p.expert_weight.T + p.expert_bias
    np.testing.assert_allclose(model.predict_proba(X), gate, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.predict(X), (gate * mean).sum(1), rtol=1e-12, atol=1e-12)
    assert model.score(X, y) == pytest.approx(model.log_likelihood_ / len(y), rel=1e-12)
    k = p.n_free_params
    assert model.bic(X, y) == pytest.approx(-2 * model.log_likelihood_ + k * np.log(len(y)), rel=1e-12)
    assert model.aic(X, y) == pytest.approx(-2 * model.log_likelihood_ + 2 * k, rel=1e-12)


def test_sample_from_fitted_model_is_seeded(fitted):
    model = fitted[0]
    a, b = model.sample(50, rng=3), model.sample(50, rng=3)
    assert np.array_equal(a[1], b[1]) and a[0].shape == (50, 1)


def test_unfitted_model_and_bad_input_are_refused(fitted):
    with pytest.raises(RuntimeError, match="not fitted"):
        mixsim.GaussianMoE(2).predict(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="features"):
        fitted[0].predict(np.zeros((3, 2)))
