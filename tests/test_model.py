"""Model: parameter validation, log-density against scipy, sampling against the model, gradients."""
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp, softmax

import mixsim
from mixsim.model import MoEParams, log_terms


def _np_log_density(p: MoEParams, X, y):
    """Independent numpy/scipy log-density (dense gates only)."""
    eta = X @ p.expert_weight.T + p.expert_bias
    mean = np.tanh(eta) if p.expert == "tanh" else eta
    if p.gate == "competition":
        s = np.logaddexp(0, mean) + (0 if p.gate_bias is None else p.gate_bias)
        log_gate = np.log(softmax(s, axis=1))
    elif p.gate == "softmax":
        log_gate = np.log(softmax(X @ p.gate_weight.T + p.gate_bias, axis=1))
    else:
        sig = 1 / (1 + np.exp(-(X @ p.gate_weight.T + p.gate_bias)))
        log_gate = np.log(sig / sig.sum(1, keepdims=True))
    return logsumexp(log_gate + stats.norm.logpdf(y[:, None], mean, np.sqrt(p.variance)), axis=1)


@pytest.mark.parametrize("name", sorted(mixsim.list_presets()))
def test_log_density_matches_scipy(name):
    p = mixsim.preset(name)
    X, y = mixsim.sample(p, 500, rng=1)
    np.testing.assert_allclose(mixsim.log_density(p, X, y), _np_log_density(p, X, y), rtol=1e-12, atol=1e-12)
    assert mixsim.log_likelihood(p, X, y) == pytest.approx(_np_log_density(p, X, y).sum(), rel=1e-12)


def test_sigmoid_log_density_matches_scipy():
    p = mixsim.preset("softmax_k2_d2").replace(gate="sigmoid")
    X, y = mixsim.sample(p, 300, rng=2)
    np.testing.assert_allclose(mixsim.log_density(p, X, y), _np_log_density(p, X, y), rtol=1e-12, atol=1e-12)


GRAD_CASES = [
    ("softmax", None, "linear"), ("softmax", 2, "linear"), ("competition", None, "linear"),
    ("competition", 2, "tanh"), ("sigmoid", None, "tanh"), ("sigmoid", 2, "linear"),
]


@pytest.mark.parametrize("gate, top_k, expert", GRAD_CASES)
def test_loglik_gradients_match_finite_differences(gate, top_k, expert):
    g = torch.Generator().manual_seed(0)
    k, d, n = 3, 2, 40
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    gw = None if gate == "competition" else torch.randn(k, d, generator=g, dtype=torch.float64).requires_grad_()
    tensors = [torch.randn(k, generator=g, dtype=torch.float64).requires_grad_(),
               torch.randn(k, d, generator=g, dtype=torch.float64).requires_grad_(),
               torch.randn(k, generator=g, dtype=torch.float64).requires_grad_(),
               (0.2 + torch.rand(k, generator=g, dtype=torch.float64)).requires_grad_()]

    def loglik(gb, ew, eb, var, *maybe_gw):
        terms = log_terms(gate, expert, x, y, gate_weight=maybe_gw[0] if maybe_gw else None, gate_bias=gb,
                          expert_weight=ew, expert_bias=eb, variance=var, top_k=top_k)
        return torch.logsumexp(terms, -1).sum()

    inputs = tuple(tensors) + ((gw,) if gw is not None else ())
    assert torch.autograd.gradcheck(loglik, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_sampling_matches_conditional_moments():
    # Within bins of x, the mean of y must match the average model mean E[y|x] and the mean squared
    # deviation the average model variance, up to Monte Carlo error (5 standard errors).
    p = mixsim.preset("competition_k2")
    X, y = mixsim.sample(p, 200_000, rng=7)
    model = mixsim.GaussianMoE(2)
    model.params_ = p
    gate = model.predict_proba(X)
    t = p.tensors()
    mean = (X @ p.expert_weight.T + p.expert_bias)
    m1 = (gate * mean).sum(1)
    m2 = (gate * (mean**2 + p.variance)).sum(1)
    var = m2 - m1**2
    bins = np.digitize(X[:, 0], np.linspace(0, 1, 11)[1:-1])
    for b in range(10):
        sel = bins == b
        resid = y[sel] - m1[sel]
        se = np.sqrt(var[sel].sum()) / sel.sum()
        assert abs(resid.mean()) < 5 * se
        fourth = (gate[sel] * (3 * p.variance**2 + 6 * p.variance * (mean[sel] - m1[sel, None]) ** 2
                               + (mean[sel] - m1[sel, None]) ** 4)).sum(1)
        se2 = np.sqrt((fourth - var[sel] ** 2).sum()) / sel.sum()
        assert abs((resid**2).mean() - var[sel].mean()) < 5 * se2
    assert t["variance"].dtype == torch.float64


def test_component_frequencies_match_gate():
    # With well separated experts (softmax_k2: means 40 sd apart at x=1) assign each y to the nearer mean.
    p = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(p, 100_000, rng=3, x_dist="grid")
    mean = X @ p.expert_weight.T + p.expert_bias
    far = np.abs(mean[:, 0] - mean[:, 1]) > 8  # keep x where the experts are > 20 sd apart
    z = np.abs(y[:, None] - mean).argmin(1)
    gate = 1 / (1 + np.exp(-(25 * X[:, 0] - 8)))
    expected = gate[far].sum()
    sd = np.sqrt((gate[far] * (1 - gate[far])).sum())
    assert abs((z[far] == 0).sum() - expected) < 5 * sd


def test_same_seed_same_sample():
    p = mixsim.preset("softmax_k2_d2")
    a, b = mixsim.sample(p, 50, rng=4), mixsim.sample(p, 50, rng=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_params_are_immutable_and_validated():
    p = mixsim.preset("softmax_k2")
    with pytest.raises(Exception):
        p.variance[0] = 1.0
    with pytest.raises(Exception):
        p.gate = "sigmoid"
    base = dict(gate="softmax", top_k=None, gate_weight=[[1.0], [0.0]], gate_bias=[0.0, 0.0], expert="linear",
                expert_weight=[[1.0], [2.0]], expert_bias=[0.0, 1.0], variance=[1.0, 1.0])
    bad = [
        (dict(variance=[1.0, 0.0]), "variance"), (dict(variance=[1.0, np.nan]), "variance"),
        (dict(gate="nope"), "gate"), (dict(expert="cubic"), "expert"), (dict(expert_bias=[0.0]), "expert_bias"),
        (dict(gate_weight=[[1.0, 2.0], [0.0, 0.0]]), "gate_weight"), (dict(top_k=3), "top_k"),
        (dict(gate="competition"), "gate_weight"), (dict(gate_weight=None), "gate_weight"),
    ]
    for change, word in bad:
        with pytest.raises(ValueError, match=word):
            MoEParams(**{**base, **change})
    assert MoEParams(**base).n_experts == 2 and MoEParams(**base).dim == 1


@pytest.mark.parametrize("X, y, word", [
    (np.ones((5, 2)), np.ones(4), "same number"), (np.ones((5, 1, 1)), np.ones(5), "X must"),
    (np.full((5, 1), np.nan), np.ones(5), "NaN"), (np.ones((5, 1)), np.array([1, 2, np.inf, 4, 5.0]), "NaN or inf"),
    (np.ones((5, 3)), np.ones(5), "features"),
])
def test_log_likelihood_rejects_bad_data(X, y, word):
    with pytest.raises(ValueError, match=word):
        mixsim.log_likelihood(mixsim.preset("softmax_k2"), X, y)


def test_sample_rejects_bad_arguments():
    p = mixsim.preset("softmax_k2_d2")
    with pytest.raises(ValueError, match="x_dist"):
        mixsim.sample(p, 10, x_dist="cauchy")
    with pytest.raises(ValueError, match="grid"):
        mixsim.sample(p, 10, x_dist="grid")
    with pytest.raises(ValueError, match="n must"):
        mixsim.sample(p, 0)
    with pytest.raises(ValueError, match="preset"):
        mixsim.preset("nope")
