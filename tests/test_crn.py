"""Common random numbers (issue 24, item 2): sample(sampling="crn") draws X, the component uniforms
and the noise from three streams, so two matched truths share X and y wherever the same component
is drawn; the default ("sequential") keeps every shipped spec's hash and numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import special

import mixsim
from mixsim.study import SpecError, StudySpec, load_study, replicate_seed, replicate_streams, task_data
from mixsim.study.spec import truth_to_dict

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def oracle(truth, n, seed):
    """What sample(truth, n, seed, sampling="crn") must draw, written from its definition (numpy and
    scipy only): X from the first spawned stream, one uniform per sample from the second (inverse
    CDF of the gate weights), the noise from the third. Returns X, the components z and y."""
    x_rng, z_rng, noise_rng = np.random.default_rng(seed).spawn(3)
    X = x_rng.uniform(size=(n, truth.dim))
    h = X @ truth.expert_weight.T + truth.expert_bias
    if truth.gate == "softmax":
        logits = X @ truth.gate_weight.T + truth.gate_bias
    else:
        logits = np.logaddexp(0.0, h) + truth.gate_bias  # softplus
    cdf = np.cumsum(special.softmax(logits, axis=1), axis=1)
    z = np.minimum((z_rng.uniform(size=n)[:, None] > cdf).sum(axis=1), truth.n_experts - 1)
    y = h[np.arange(n), z] + np.sqrt(truth.variance[z]) * noise_rng.standard_normal(n)
    return X, z, y, cdf


def agreement(cdf_a, cdf_b):
    """P(same component | x) with one shared uniform: the overlap of the two partitions of [0, 1]."""
    low_a, low_b = np.pad(cdf_a[:, :-1], ((0, 0), (1, 0))), np.pad(cdf_b[:, :-1], ((0, 0), (1, 0)))
    return np.clip(np.minimum(cdf_a, cdf_b) - np.maximum(low_a, low_b), 0.0, None).sum(axis=1)


@pytest.mark.parametrize("truth", [mixsim.preset("competition_k2"), mixsim.random_truth("competition", 3, 2, 4)],
                         ids=["reference", "random_k3_d2"])
def test_matched_truths_share_x_and_y_wherever_the_same_component_is_drawn(truth):
    matched = mixsim.matched_truth(truth, "softmax")
    n, seed = 20_000, 7
    Xc, yc = mixsim.sample(truth, n, rng=seed, sampling="crn")
    Xs, ys = mixsim.sample(matched, n, rng=seed, sampling="crn")
    assert np.array_equal(Xc, Xs)
    _, zc, yc_oracle, cdf_c = oracle(truth, n, seed)
    _, zs, ys_oracle, cdf_s = oracle(matched, n, seed)
    np.testing.assert_allclose(yc, yc_oracle, rtol=1e-12, atol=1e-12)  # the draws are the documented ones
    np.testing.assert_allclose(ys, ys_oracle, rtol=1e-12, atol=1e-12)
    same = zc == zs
    assert np.array_equal(yc[same], ys[same])  # bit for bit: same X, same expert, same noise
    assert np.all(yc[~same] != ys[~same])
    # the share of samples on the same component: as the two gates' weights predict (5 standard errors)
    p = agreement(cdf_c, cdf_s).mean()
    assert abs(same.mean() - p) < 5 * np.sqrt(p * (1 - p) / n) and p > 0.9
    # with independent data (the sequential scheme on two seeds) almost nothing would coincide
    assert np.mean(mixsim.sample(truth, n, rng=seed)[1] == mixsim.sample(matched, n, rng=seed + 1)[1]) == 0.0


def test_crn_samples_are_nested_across_sizes_and_differ_from_sequential():
    truth = mixsim.preset("softmax_k2_d2")
    X5, y5 = mixsim.sample(truth, 500, rng=3, sampling="crn")
    X2, y2 = mixsim.sample(truth, 200, rng=3, sampling="crn")
    assert np.array_equal(X5[:200], X2) and np.array_equal(y5[:200], y2)
    Xq, _ = mixsim.sample(truth, 200, rng=3)
    assert not np.array_equal(Xq, X2)
    g = np.random.default_rng(3)  # a Generator: spawning advances it, so a second call draws new data
    assert not np.array_equal(mixsim.sample(truth, 50, g, sampling="crn")[0], mixsim.sample(truth, 50, g, sampling="crn")[0])
    with pytest.raises(ValueError, match="sampling"):
        mixsim.sample(truth, 10, rng=0, sampling="common")


# task_data of shipped specs, recorded with the code before the sampling option (commit 8b7fd0d):
# (spec, n, replicate, truth) -> X[:3, 0], y[:3], sum(y), sum(X)
SEQUENTIAL_NUMBERS = {
    ("smoke", 200, 1, None): ([0.9174896226730839, 0.0926568821931838, 0.06750206098793698],
                              [-3.26600434496135, -3.3408257300254602, -3.0911236495375793], 190.87025627517627, 98.04889048198626),
    ("competition_overfit_ensemble", 1000, 2, 3): ([0.3967020319417637, 0.6183560927039253, 0.4285497977334565],
                                                   [-1.8397629632138852, -3.2014042381423597, -2.8290986149990998],
                                                   -1496.3979024217986, 491.3719476607813),
    ("softmax_overfit_tanh", 500, 0, None): ([0.27462420902343954, 0.7153605656448051, 0.4609797968354702],
                                             [-0.8397798847690449, -0.6567041114946723, 0.13620608752712562],
                                             -260.83326025363215, 247.421325217474),
}


@pytest.mark.parametrize("key", list(SEQUENTIAL_NUMBERS))
def test_the_default_sampling_keeps_the_shipped_numbers(key):
    name, n, replicate, truth = key
    spec = load_study(STUDIES / f"{name}.toml")
    assert spec.sampling == "sequential" and "sampling" not in spec.to_dict()  # hash unchanged (test_study_package)
    X, y = task_data(spec, n, replicate, truth)
    x3, y3, y_sum, x_sum = SEQUENTIAL_NUMBERS[key]
    # 1e-12: the same draws; only the expert means' float64 arithmetic (torch) could round differently elsewhere
    np.testing.assert_allclose(X[:3, 0], x3, rtol=1e-12)
    np.testing.assert_allclose(y[:3], y3, rtol=1e-12)
    assert (y.sum(), X.sum()) == pytest.approx((y_sum, x_sum), rel=1e-12)
    explicit = spec.with_overrides({"sampling": "sequential"})
    assert explicit.hash == spec.hash
    assert all(np.array_equal(u, v) for u, v in zip(task_data(explicit, n, replicate, truth), (X, y)))


def test_a_crn_spec_records_its_sampling_and_draws_through_it():
    spec = load_study(STUDIES / "smoke.toml")
    crn = spec.with_overrides({"sampling": "crn"})
    assert crn.sampling == "crn" and crn.hash != spec.hash
    assert StudySpec.from_dict(crn.to_dict()).hash == crn.hash  # round trip
    seed = replicate_seed(crn.root_seed, 300, 1)
    want = mixsim.sample(crn.truth, 300, rng=np.random.default_rng(replicate_streams(seed).data), sampling="crn")
    assert all(np.array_equal(u, v) for u, v in zip(task_data(crn, 300, 1), want))
    with pytest.raises(SpecError, match="sampling"):
        spec.with_overrides({"sampling": "common"})


def test_two_matched_arms_of_a_crn_study_share_their_inputs():
    comp = mixsim.preset("competition_k2")
    soft = mixsim.matched_truth(comp, "softmax")
    base = load_study(STUDIES / "smoke.toml").with_overrides({"sampling": "crn"}).to_dict()
    arms = []
    for truth in (comp, soft):
        doc = dict(base, truth={k: v for k, v in truth_to_dict(truth).items() if v is not None},
                   metrics=["loglik"], fit=dict(base["fit"], gates=[truth.gate]))
        arms.append(StudySpec.from_dict(doc))
    for n in arms[0].n_values:
        for r in range(arms[0].replications):
            (Xa, ya), (Xb, yb) = task_data(arms[0], n, r), task_data(arms[1], n, r)
            assert np.array_equal(Xa, Xb) and np.mean(ya == yb) > 0.95


def test_a_matched_ensemble_spec_pairs_truth_j_with_truth_j():
    overrides = {"replications": 2, "grid.values": [200, 400]}
    comp = load_study(STUDIES / "competition_overfit_ensemble.toml", overrides | {"sampling": "crn"})
    soft = comp.with_overrides({"truth.match": "softmax", "fit.gates": ["softmax"]})
    assert len(soft.truths) == len(comp.truths) == 9 and soft.hash != comp.hash
    for j, (c, s) in enumerate(zip(comp.truths, soft.truths)):
        assert s == mixsim.matched_truth(c, "softmax", x_dist=comp.x_dist)  # the same experts, the closest softmax gate
        (Xc, yc), (Xs, ys) = task_data(comp, 400, 1, j), task_data(soft, 400, 1, j)
        assert np.array_equal(Xc, Xs) and np.mean(yc == ys) > 0.8, j  # same seeds, same streams
    with pytest.raises(SpecError, match="truth.match"):
        comp.with_overrides({"truth.match": "sigmoid"})
    with pytest.raises(SpecError, match="truth.match"):
        comp.with_overrides({"truth.match": "competition"})  # already competition
