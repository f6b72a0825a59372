"""random_truth (issue 12): seeds reproduce, separation and visibility hold (checked with an
independent numpy gate and the losses' atoms), both gates and both expert families, the prior is
the documented one, bad input refused by name."""
from __future__ import annotations

import numpy as np
import pytest

import mixsim
from mixsim import losses as L
from mixsim import model as M
from mixsim import truths as T

CASES = [(gate, expert, k, d) for gate in ("softmax", "competition") for expert in ("linear", "tanh")
         for k, d in ((2, 1), (3, 1), (3, 2))]


def numpy_gate(truth, X):
    """Gate weights (n, k) written out in numpy: softmax of beta1 x + beta0, or of softplus(h(x)) + beta0."""
    eta = X @ truth.expert_weight.T + truth.expert_bias
    h = eta if truth.expert == "linear" else np.tanh(eta)
    if truth.gate == "softmax":
        logits = X @ truth.gate_weight.T + truth.gate_bias
    else:
        logits = np.logaddexp(0.0, h) + truth.gate_bias
    logits = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("gate, expert, k, d", CASES)
def test_conditions_hold(gate, expert, k, d):
    delta, floor, mass = 1.0, 0.2, 0.1
    truth = mixsim.random_truth(gate, k, d, 100 + k + d, expert=expert, delta=delta, floor=floor, mass=mass)
    assert isinstance(truth, mixsim.MoEParams) and truth.gate == gate and truth.expert == expert
    assert truth.n_experts == k and truth.dim == d and truth.top_k is None
    # separation, in the metric of the Voronoi cells (mixsim.losses' atom vectors)
    v = L.atoms(truth).vector()
    dist = np.linalg.norm(v[:, None] - v[None], axis=-1)[~np.eye(k, dtype=bool)]
    assert dist.min() >= delta
    # visibility, on 50 000 fresh inputs: each expert's weight >= floor on >= mass of them, up to
    # the Monte Carlo error of the 4000-input check (sd <= 0.005; allow 0.02)
    X = np.random.default_rng(999).uniform(size=(50_000, d))
    share = np.mean(numpy_gate(truth, X) >= floor, axis=0)
    assert np.all(share >= mass - 0.02), share
    # the model's own gate agrees with the numpy one
    assert np.allclose(M.gate_and_mean(truth, X[:500])[0], numpy_gate(truth, X[:500]), atol=1e-12)
    # the last expert's gate is the reference (0), as in the authors' code
    assert truth.gate_bias[-1] == 0.0
    if gate == "softmax":
        assert np.all(truth.gate_weight[-1] == 0.0)
    else:
        assert truth.gate_weight is None


@pytest.mark.parametrize("gate", ["softmax", "competition"])
def test_seeds_reproduce(gate):
    a = mixsim.random_truth(gate, 3, 2, 7)
    assert a == mixsim.random_truth(gate, 3, 2, 7)
    assert a == mixsim.random_truth(gate, 3, 2, np.random.default_rng(7))
    assert a != mixsim.random_truth(gate, 3, 2, 8)
    rng = np.random.default_rng(7)
    first, second = mixsim.random_truth(gate, 3, 2, rng), mixsim.random_truth(gate, 3, 2, rng)
    assert first != second  # one Generator: a stream of different truths


def test_conditions_are_enforced_not_luck():
    # with the conditions off almost every draw is accepted; a strict delta / visibility rejects
    # draws, and what comes back still meets them
    margins = []
    rng = np.random.default_rng(3)
    for _ in range(40):
        t = mixsim.random_truth("softmax", 4, 1, rng, delta=0.0, floor=0.0, mass=1.0)
        margins.append(T.truth_margins(t, np.random.default_rng(0).uniform(size=(4000, 1)), 0.25))
    assert min(m[1].min() for m in margins) < 0.2  # some unconstrained draws have a hidden expert
    strict = mixsim.random_truth("softmax", 4, 1, 3, floor=0.25, mass=0.2, delta=3.0)
    distance, visible = T.truth_margins(strict, np.random.default_rng(5).uniform(size=(50_000, 1)), 0.25)
    assert distance >= 3.0 and visible.min() >= 0.2 - 0.02
    with pytest.raises(ValueError, match="delta"):
        mixsim.random_truth("competition", 3, 1, 0, delta=1e3, max_tries=20)


def test_prior_is_the_documented_one():
    # with both conditions off every draw is accepted, so the parameters follow the prior exactly
    prior = T.TruthPrior(expert_slope_scale=2.0, expert_intercept_scale=0.5, noise_sd=(0.1, 0.3), gate_bias_scale=0.7)
    draws = [mixsim.random_truth("competition", 2, 3, s, delta=0.0, floor=0.0, mass=1.0, prior=prior) for s in range(300)]
    a = np.concatenate([t.expert_weight.ravel() for t in draws])
    b = np.concatenate([t.expert_bias for t in draws])
    sd = np.sqrt(np.concatenate([t.variance for t in draws]))
    bias_diff = np.array([t.gate_bias[0] for t in draws])  # beta0_1 - beta0_2: N(0, 2 * 0.7^2)
    # a sample sd of n normal draws has relative sd 1/sqrt(2n): 1.7% / 2.9% / 4.1% for n = 1800 / 600 / 300;
    # the tolerances are 3-3.5 of those; the mean of 600 U(0.1, 0.3) draws has sd 0.0024
    assert np.std(a) == pytest.approx(2.0, rel=0.06) and np.std(b) == pytest.approx(0.5, rel=0.09)
    assert sd.min() >= 0.1 and sd.max() <= 0.3 and np.mean(sd) == pytest.approx(0.2, abs=0.01)
    assert np.std(bias_diff) == pytest.approx(0.7 * np.sqrt(2), rel=0.13)
    assert T.TRUTH_PRIORS["tanh"].noise_sd[1] <= T.TRUTH_PRIORS["linear"].noise_sd[0]


def test_atom_vectors_are_the_losses_atoms():
    for name in mixsim.list_presets():
        truth = mixsim.preset(name)
        assert np.allclose(M.atom_vectors(truth), L.atoms(truth).vector())


def test_random_truths_can_be_sampled():
    truth = mixsim.random_truth("competition", 3, 2, 1, expert="tanh")
    X, y = mixsim.sample(truth, 200, rng=0)
    assert X.shape == (200, 2) and y.shape == (200,) and np.all(np.isfinite(y))


@pytest.mark.parametrize("args, kwargs, error, name", [
    (("sigmoid", 2, 1, 0), {}, ValueError, "gate"),
    ((3, 2, 1, 0), {}, TypeError, "gate"),
    (("softmax", 0, 1, 0), {}, ValueError, "k"),
    (("softmax", 2.0, 1, 0), {}, TypeError, "k"),
    (("softmax", 2, 0, 0), {}, ValueError, "d"),
    (("softmax", 2, 1, "seed"), {}, TypeError, "rng"),
    (("softmax", 2, 1, 0), {"expert": "relu"}, ValueError, "expert"),
    (("softmax", 2, 1, 0), {"delta": -1.0}, ValueError, "delta"),
    (("softmax", 2, 1, 0), {"floor": 1.0}, ValueError, "floor"),
    (("softmax", 2, 1, 0), {"mass": 0.0}, ValueError, "mass"),
    (("softmax", 2, 1, 0), {"mass": "0.1"}, TypeError, "mass"),
    (("softmax", 2, 2, 0), {"x_dist": "grid"}, ValueError, "x_dist"),
    (("softmax", 2, 1, 0), {"x_dist": "beta"}, ValueError, "x_dist"),
    (("softmax", 2, 1, 0), {"prior": {"noise_sd": (0.1, 0.2)}}, TypeError, "prior"),
    (("competition", 2, 1, 0), {"phi": "relu"}, ValueError, "phi"),
    (("softmax", 2, 1, 0), {"n_check": 0}, ValueError, "n_check"),
    (("softmax", 2, 1, 0), {"max_tries": 0}, ValueError, "max_tries"),
])
def test_bad_input_refused_by_name(args, kwargs, error, name):
    with pytest.raises(error, match=name):
        mixsim.random_truth(*args, **kwargs)


def test_bad_prior_refused_by_name():
    for bad in ((0.5, 0.1), 0.2, (0.1, 0.2, 0.3), (0.0, 0.1), ("a", 0.1)):
        with pytest.raises(ValueError, match="noise_sd"):
            T.TruthPrior(noise_sd=bad)
    with pytest.raises(ValueError, match="gate_slope_scale"):
        T.TruthPrior(gate_slope_scale=-1.0)
