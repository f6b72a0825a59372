"""Matched truths and the gate distance (issue 24, item 1): a competition gate a softmax gate can
represent is recovered exactly, the distance agrees with an independent Monte Carlo KL, and a match
is a minimum of the distance (checked by perturbation and by scipy's optimiser)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special

import mixsim
from mixsim.model import MoEParams


def competition_identity(seed: int, k: int = 3, d: int = 2) -> MoEParams:
    """A competition truth with phi = identity and linear experts: its logits a_i . x + b_i + beta0_i are affine."""
    rng = np.random.default_rng(seed)
    return MoEParams(gate="competition", top_k=None, gate_weight=None, gate_bias=rng.normal(size=k), expert="linear",
                     expert_weight=rng.normal(0, 3, size=(k, d)), expert_bias=rng.normal(size=k),
                     variance=rng.uniform(0.05, 0.2, size=k), phi="identity")


def weights(truth: MoEParams, X: np.ndarray) -> np.ndarray:
    """Gate weights (n, k) from the formulas (THEORY.md section 1), written with scipy, not mixsim."""
    if truth.gate == "softmax":
        return special.softmax(X @ truth.gate_weight.T + truth.gate_bias, axis=1)
    h = X @ truth.expert_weight.T + truth.expert_bias
    h = np.tanh(h) if truth.expert == "tanh" else h
    score = h if truth.phi == "identity" else np.logaddexp(0.0, h)  # softplus
    return special.softmax(score + truth.gate_bias, axis=1)


def mc_kl(a: MoEParams, b: MoEParams, X: np.ndarray) -> np.ndarray:
    """KL(pi_a(x) || pi_b(x)) per input, by scipy's rel_entr."""
    return special.rel_entr(weights(a, X), weights(b, X)).sum(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_softmax_gate_is_recovered_from_a_competition_gate_it_can_represent(seed):
    truth = competition_identity(seed)
    matched = mixsim.matched_truth(truth, "softmax")
    a, b, beta0 = truth.expert_weight, truth.expert_bias, truth.gate_bias
    # softmax is shift-invariant: the last expert's gate is 0 in the match
    np.testing.assert_allclose(matched.gate_weight, a - a[-1], atol=1e-8)
    np.testing.assert_allclose(matched.gate_bias, (b + beta0) - (b[-1] + beta0[-1]), atol=1e-8)
    assert matched.gate == "softmax" and matched.top_k is None and matched.expert == truth.expert
    for name in ("expert_weight", "expert_bias", "variance"):  # the same experts, exactly
        assert np.array_equal(getattr(matched, name), getattr(truth, name)), name
    assert 0.0 <= mixsim.gate_distance(truth, matched) < 1e-12
    # and back: the competition intercepts of the softmax gate (only beta0 is free, up to the shift)
    back = mixsim.matched_truth(matched, "competition", phi="identity")
    np.testing.assert_allclose(back.gate_bias, beta0 - beta0[-1], atol=1e-7)
    assert back.gate_weight is None and mixsim.gate_distance(matched, back) < 1e-12


@pytest.mark.parametrize("name, d", [("competition_k2", 1), ("competition_k2_d2", 2), ("competition_k2_tanh", 1)])
def test_gate_distance_matches_an_independent_monte_carlo_kl(name, d):
    truth = mixsim.preset(name)
    matched = mixsim.matched_truth(truth, "softmax")
    X = np.random.default_rng(123).uniform(size=(50_000, d))
    kl = mc_kl(truth, matched, X)
    # the same inputs: the same number up to rounding (float64 on both sides)
    assert mixsim.gate_distance(truth, matched, X) == pytest.approx(kl.mean(), rel=1e-9, abs=1e-15)
    # its own Monte Carlo inputs (seed 0, 20000 draws) against the test's: within 5 standard errors of both
    own = mixsim.gate_distance(truth, matched)
    sd_own = np.sqrt(kl.var() / mixsim.matching.N_MC_MATCH + kl.var() / kl.size)
    assert abs(own - kl.mean()) < 5 * sd_own
    assert own > 0  # a softplus (or tanh) competition gate is not a softmax gate
    # the other direction is another number (KL is not symmetric)
    assert mixsim.gate_distance(matched, truth, X) == pytest.approx(mc_kl(matched, truth, X).mean(), rel=1e-9)


def test_the_reference_competition_truth_matches_closely():
    # THEORY.md section 9's probe: expected KL 5.8e-5, weights within 0.01 everywhere on [0, 1]
    truth = mixsim.preset("competition_k2")
    matched = mixsim.matched_truth(truth, "softmax")
    grid = np.linspace(0, 1, 1001)[:, None]
    assert np.abs(weights(truth, grid) - weights(matched, grid)).max() < 0.01
    assert mixsim.gate_distance(truth, matched) == pytest.approx(5.8e-5, rel=0.05)


@pytest.mark.parametrize("gate, target", [("competition", "softmax"), ("softmax", "competition")])
def test_a_match_is_a_minimum_of_the_distance(gate, target):
    truth = mixsim.random_truth(gate, 3, 2, 5)
    X = np.random.default_rng(9).uniform(size=(4000, 2))
    matched = mixsim.matched_truth(truth, target, X)
    best = mixsim.gate_distance(truth, matched, X)
    free = [("gate_bias", (i,)) for i in range(2)] + ([("gate_weight", (i, j)) for i in range(2) for j in range(2)]
                                                      if target == "softmax" else [])
    for field, index in free:  # every free parameter nudged either way: the distance grows
        for step in (-1e-3, 1e-3):
            value = getattr(matched, field).copy()
            value[index] += step
            assert mixsim.gate_distance(truth, matched.replace(**{field: value}), X) > best, (field, index, step)
    if target == "competition":  # an independent optimiser on the intercepts agrees
        def objective(beta0):
            return mc_kl(truth, matched.replace(gate_bias=np.append(beta0, 0.0)), X).mean()
        res = optimize.minimize(objective, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-14})
        np.testing.assert_allclose(matched.gate_bias[:2], res.x, atol=1e-4)


def test_matching_is_deterministic_and_follows_the_input_distribution():
    truth = mixsim.preset("competition_k2_d2")
    one, two = mixsim.matched_truth(truth, "softmax"), mixsim.matched_truth(truth, "softmax")
    assert one == two
    normal = mixsim.matched_truth(truth, "softmax", x_dist="normal")
    assert not np.allclose(normal.gate_weight, one.gate_weight, atol=1e-3)
    X = mixsim.model.sample_x(mixsim.matching.N_MC_MATCH, 2, "normal", 0)
    assert mixsim.matched_truth(truth, "softmax", X) == normal  # x_dist draws what sample_x draws
    assert mixsim.gate_distance(truth, normal, x_dist="normal") == mixsim.gate_distance(truth, normal, X)


def test_gate_distance_ignores_a_common_shift_and_is_zero_on_itself():
    truth = mixsim.preset("softmax_k2_d2")
    shifted = truth.replace(gate_weight=truth.gate_weight + [1.0, -2.0], gate_bias=truth.gate_bias + 3.0)
    assert mixsim.gate_distance(truth, shifted) == pytest.approx(0.0, abs=1e-12)
    assert mixsim.gate_distance(truth, truth) == 0.0


def test_matching_refuses_what_it_cannot_do():
    comp, soft = mixsim.preset("competition_k2"), mixsim.preset("softmax_k2")
    with pytest.raises(ValueError, match="gate"):
        mixsim.matched_truth(comp, "competition")
    with pytest.raises(ValueError, match="gate"):
        mixsim.matched_truth(comp, "sigmoid")
    sig = soft.replace(gate="sigmoid")
    with pytest.raises(ValueError, match="truth"):
        mixsim.matched_truth(sig, "softmax")
    with pytest.raises(TypeError, match="truth"):
        mixsim.matched_truth("competition_k2", "softmax")
    with pytest.raises(ValueError, match="top_k"):  # one-hot weights: the closest softmax gate is at infinity
        mixsim.matched_truth(mixsim.random_truth("competition", 3, 1, 2).replace(top_k=1), "softmax")
    # softmax_k2's steep gate is far from any competition gate with its experts: refused on request
    with pytest.raises(ValueError, match="max_distance"):
        mixsim.matched_truth(soft, "competition", max_distance=0.1)
    assert mixsim.matched_truth(comp, "softmax", max_distance=1e-3).gate == "softmax"
    with pytest.raises(ValueError, match="same number of experts"):
        mixsim.gate_distance(comp, mixsim.preset("competition_k2_d2"))
    with pytest.raises(ValueError, match="X must"):
        mixsim.gate_distance(comp, soft, X=np.ones((5, 2)))
    with pytest.raises(ValueError, match="x_dist"):
        mixsim.gate_distance(comp, soft, x_dist="cauchy")


def test_the_matched_gates_figure_draws_both_gates(tmp_path):
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    from mixsim.plots import MATCHED_COLUMNS, matched_gates_data, plot_matched_gates, plotted_data, save_figure

    truth = mixsim.preset("competition_k2")
    matched = mixsim.matched_truth(truth, "softmax")
    data = matched_gates_data(truth, matched, num=11)
    assert list(data.columns) == MATCHED_COLUMNS and len(data) == 2 * 2 * 11
    grid = np.linspace(0, 1, 11)[:, None]
    for index, params in enumerate((truth, matched)):  # the weights drawn are the scipy formulas'
        rows = data[data["truth"] == index].sort_values(["x", "expert"])
        np.testing.assert_allclose(rows["weight"].to_numpy().reshape(11, 2), weights(params, grid), atol=1e-12)
    assert data["distance"].unique().tolist() == [mixsim.gate_distance(truth, matched)]
    ax = plot_matched_gates(truth, matched, num=11)
    assert len(ax.lines) == 4 and "expected KL" in ax.get_title()
    assert plotted_data(ax).equals(data)
    paths = save_figure(ax.figure, tmp_path / "matched", data)
    assert all(p.exists() for p in paths)
    plt.close("all")
    with pytest.raises(ValueError, match="d = 2"):
        matched_gates_data(mixsim.preset("competition_k2_d2"), mixsim.preset("softmax_k2_d2"))


def test_a_match_stopped_short_warns(monkeypatch):
    from mixsim import matching

    solve = matching._soft_logistic
    monkeypatch.setattr(matching, "_soft_logistic", lambda *args: solve(*args, max_iter=1))  # one Newton step only
    with pytest.warns(RuntimeWarning, match="stopped short"):
        loose = mixsim.matched_truth(mixsim.preset("competition_k2"), "softmax")
    monkeypatch.undo()
    tight = mixsim.matched_truth(mixsim.preset("competition_k2"), "softmax")
    truth = mixsim.preset("competition_k2")
    assert mixsim.gate_distance(truth, loose) > mixsim.gate_distance(truth, tight)
