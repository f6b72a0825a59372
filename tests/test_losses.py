"""Voronoi losses, group errors and density distances against hand computations, closed forms,
scipy quadrature and an independent loop implementation; invariance properties with hypothesis."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy import integrate
from scipy.stats import norm

import mixsim
from mixsim import losses as L
from mixsim.model import MoEParams
from mixsim.truths import preset

LOG = math.log


def softmax_params(gate_weight, gate_bias, expert_weight, expert_bias, variance, top_k=None):
    return MoEParams(gate="softmax", top_k=top_k, gate_weight=gate_weight, gate_bias=gate_bias, expert="linear",
                     expert_weight=expert_weight, expert_bias=expert_bias, variance=variance)


def competition_params(gate_bias, expert_weight, expert_bias, variance):
    return MoEParams(gate="competition", top_k=None, gate_weight=None, gate_bias=gate_bias, expert="linear",
                     expert_weight=expert_weight, expert_bias=expert_bias, variance=variance)


# truth used by the hand computations: weights (0.25, 0.75) already sum to one, slope centroid 0.5
TRUTH = softmax_params([[2.0], [0.0]], [LOG(0.25), LOG(0.75)], [[1.0], [-1.0]], [0.0, 1.0], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# hand-computed losses
# ---------------------------------------------------------------------------------------------

def test_d1_by_hand_with_slope_shift_and_bias_shift():
    # Fitted weights shifted by t0 = 3 (normalised back to 0.25, 0.75). Slope centroid 0.25 * 2.4 =
    # 0.6, truth's 0.5, so fitted slopes move by -0.1 to (2.3, -0.1): D beta1 = (0.3, 0.1).
    est = softmax_params([[2.4], [0.0]], [LOG(0.25) + 3, LOG(0.75) + 3], [[1.1], [-1.0]], [0.0, 0.8], [1.0, 2.5])
    # D1 = 0.25 (0.3 + 0.1 + 0 + 0) + 0.75 (0.1 + 0 + 0.2 + 0.5) = 0.1 + 0.6
    assert L.voronoi_loss(est, TRUTH) == pytest.approx(0.7, abs=1e-12)
    assert [c.tolist() for c in L.voronoi_cells(est, TRUTH)] == [[0], [1]]


def test_d1_by_hand_with_weight_error():
    # weights (0.5, 0.5): centroid 1.0 -> slopes (1.5, -0.5); D1 = 0.25 + 0.25 + 0.5 * 0.5 + 0.5 * 0.5
    est = softmax_params([[2.0], [0.0]], [0.0, 0.0], [[1.0], [-1.0]], [0.0, 1.0], [1.0, 2.0])
    assert L.voronoi_loss(est, TRUTH) == pytest.approx(1.0, abs=1e-12)
    ge = L.group_errors(est, TRUTH)
    assert ge["weight_single_weighted"] == pytest.approx(0.5)
    assert ge["weight_single_unweighted"] == pytest.approx(0.25 / 0.25 + 0.25 / 0.75)
    assert ge["gate_slope_single_weighted"] == pytest.approx(0.5)
    assert ge["gate_slope_single_unweighted"] == pytest.approx(1.0)


OVER = softmax_params(  # k = 3: atoms 0, 1 share truth atom 0's cell; centroid 0.1*2.3 + 0.15*1.8 = 0.5
    [[2.3], [1.8], [0.0]], [LOG(0.1), LOG(0.15), LOG(0.75)], [[1.2], [0.9], [-1.0]], [0.1, -0.1, 1.0], [1.1, 0.8, 2.0]
)


def test_d2_by_hand_cell_of_two():
    # cell {0, 1}, r = rbar(2) = 4: w (|Db1|^4 + |Da|^2 + |Db|^4 + |Ds2|^2)
    expected = 0.1 * (0.3**4 + 0.2**2 + 0.1**4 + 0.1**2) + 0.15 * (0.2**4 + 0.1**2 + 0.1**4 + 0.2**2)
    assert [c.tolist() for c in L.voronoi_cells(OVER, TRUTH)] == [[0, 1], [2]]
    assert L.voronoi_loss(OVER, TRUTH, kind="D2") == pytest.approx(expected, rel=1e-12)
    ge = L.group_errors(OVER, TRUTH)
    assert ge["gate_slope_multi_weighted"] == pytest.approx(0.1 * 0.3 + 0.15 * 0.2)
    assert ge["gate_slope_multi_unweighted"] == pytest.approx(0.5)
    assert ge["variance_multi_unweighted"] == pytest.approx(0.3)
    assert ge["weight_multi_weighted"] == pytest.approx(0.0, abs=1e-15)
    assert all(v == pytest.approx(0.0, abs=1e-15) for key, v in ge.items() if "_single_" in key)


def test_d2_explicit_exponents_and_per_size_table():
    flat = {"gate_slope": 1, "expert_slope": 1, "expert_intercept": 1, "variance": 1}
    d1_like = 0.1 * (0.3 + 0.2 + 0.1 + 0.1) + 0.15 * (0.2 + 0.1 + 0.1 + 0.2)
    assert L.voronoi_loss(OVER, TRUTH, kind="D2", exponents=flat) == pytest.approx(d1_like)
    assert L.voronoi_loss(OVER, TRUTH, kind="D2", exponents={2: flat}) == pytest.approx(d1_like)
    with pytest.raises(ValueError, match="rbar"):
        L.voronoi_loss(OVER, TRUTH, kind="D2", exponents={3: flat})


def test_d2_refuses_cells_larger_than_three_without_exponents():
    truth = softmax_params([[0.0]], [0.0], [[1.0]], [0.0], [1.0])
    est = softmax_params([[0.1], [0.2], [0.3], [0.4]], [0.0] * 4, [[1.0]] * 4, [0.0, 0.1, 0.2, 0.3], [1.0] * 4)
    with pytest.raises(ValueError, match="exponents"):
        L.voronoi_loss(est, truth, kind="D2")
    assert L.voronoi_loss(est, truth, kind="D2", exponents={"gate_slope": 8, "expert_slope": 4,
                                                            "expert_intercept": 8, "variance": 4}) > 0


def test_empty_cell_is_handled():
    # both fitted atoms sit at truth atom 0; truth atom 1's cell is empty
    est = softmax_params([[2.0], [2.0]], [0.0, 0.0], [[1.0], [1.0]], [0.0, 0.0], [1.0, 1.0])
    assert [c.tolist() for c in L.voronoi_cells(est, TRUTH)] == [[0, 1], []]
    # centroid 2 -> slopes 0.5: weights |1 - 0.25| + |0 - 0.75|, slopes 2 * 0.5 * 1.5
    assert L.voronoi_loss(est, TRUTH) == pytest.approx(3.0)
    ge = L.group_errors(est, TRUTH)
    assert ge["weight_multi_weighted"] == pytest.approx(1.5)
    assert ge["weight_multi_unweighted"] == pytest.approx(0.75 / 0.25 + 0.75 / 0.75)
    assert ge["gate_slope_multi_unweighted"] == pytest.approx(3.0)
    assert all(math.isfinite(v) for v in ge.values())
    assert ge["variance_single_weighted"] == 0.0


def test_competition_by_hand_and_missing_bias():
    truth = competition_params([0.0, 0.0], [[-3.0], [2.5]], [2.0, -0.5], [0.09, 0.16])
    est = competition_params([1.0, 1.0], [[-2.9], [2.5]], [2.0, -0.3], [0.09, 0.26])
    assert L.voronoi_loss(est, truth) == pytest.approx(0.5 * 0.1 + 0.5 * (0.2 + 0.1))
    no_bias = competition_params(None, [[-2.9], [2.5]], [2.0, -0.3], [0.09, 0.26])
    assert L.voronoi_loss(no_bias, truth) == pytest.approx(0.5 * 0.1 + 0.5 * (0.2 + 0.1))
    assert set(L.group_errors(est, truth)) == set(L.group_error_keys("competition"))
    assert not any(key.startswith("gate_slope") for key in L.group_errors(est, truth))


def test_sigmoid_uses_parameters_as_given():
    # no shift symmetry: weights exp(beta0) are not renormalised
    truth = MoEParams(gate="sigmoid", top_k=None, gate_weight=[[1.0], [0.0]], gate_bias=[0.0, 0.0], expert="linear",
                      expert_weight=[[1.0], [-1.0]], expert_bias=[0.0, 1.0], variance=[1.0, 2.0])
    est = truth.replace(gate_bias=[LOG(2.0), 0.0])
    assert L.voronoi_loss(est, truth) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["softmax_k2", "competition_k2", "softmax_k2_d2", "competition_k2_tanh"])
def test_zero_at_truth_positive_elsewhere(name):
    truth = preset(name)
    assert L.voronoi_loss(truth, truth) == 0.0
    assert L.voronoi_loss(truth, truth, kind="D2") == 0.0
    assert all(v == 0.0 for v in L.group_errors(truth, truth).values())
    for field in ("expert_weight", "expert_bias", "variance", "gate_bias", "gate_weight"):
        value = getattr(truth, field)
        if value is None:
            continue
        bumped = np.array(value, dtype=float)
        bumped.flat[0] += 0.01
        assert L.voronoi_loss(truth.replace(**{field: bumped}), truth) > 0, field


def test_weighted_group_errors_add_up_to_d1():
    for est in (OVER, softmax_params([[2.4], [0.1]], [0.3, 1.0], [[1.1], [-1.2]], [0.2, 0.8], [1.3, 2.5])):
        total = sum(v for key, v in L.group_errors(est, TRUTH).items() if key.endswith("_weighted"))
        if est.n_experts == TRUTH.n_experts:
            assert total == pytest.approx(L.voronoi_loss(est, TRUTH), rel=1e-12)
        else:  # D2 with exponent 1 everywhere is D1 summed over all cells
            ones = dict.fromkeys(("gate_slope", "expert_slope", "expert_intercept", "variance"), 1)
            assert total == pytest.approx(L.voronoi_loss(est, TRUTH, kind="D2", exponents=ones), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# an independent implementation (plain loops) and property tests
# ---------------------------------------------------------------------------------------------

def naive_d1(est: MoEParams, truth: MoEParams) -> float:
    """D1 written out with loops, from the definition in the module docstring."""
    def unit(p):
        b = [0.0] * p.n_experts if p.gate_bias is None else list(p.gate_bias)
        z = sum(math.exp(v) for v in b)
        return [math.exp(v) / z for v in b]
    w, ws = unit(est), unit(truth)
    slope = est.gate != "competition"
    shift = [0.0] * est.dim
    if slope:
        for c in range(est.dim):
            shift[c] = sum(ws[j] * truth.gate_weight[j][c] for j in range(truth.n_experts)) - sum(
                w[i] * est.gate_weight[i][c] for i in range(est.n_experts))

    def parts(p, i, s):
        g = [p.gate_weight[i][c] + s[c] for c in range(p.dim)] if slope else []
        return g, list(p.expert_weight[i]), [p.expert_bias[i]], [p.variance[i]]

    total = 0.0
    owner = []
    for i in range(est.n_experts):
        e = sum(parts(est, i, shift), [])
        dists = [math.dist(e, sum(parts(truth, j, [0.0] * est.dim), [])) for j in range(truth.n_experts)]
        owner.append(dists.index(min(dists)))
    for j in range(truth.n_experts):
        members = [i for i in range(est.n_experts) if owner[i] == j]
        total += abs(sum(w[i] for i in members) - ws[j])
        for i in members:
            for a, b in zip(parts(est, i, shift), parts(truth, j, [0.0] * est.dim)):
                total += w[i] * math.dist(a, b)
    return total


finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@st.composite
def model_pairs(draw, max_extra=1):
    gate = draw(st.sampled_from(["softmax", "competition"]))
    d = draw(st.integers(1, 2))
    k_true = draw(st.integers(1, 3))
    k = k_true + draw(st.integers(0, max_extra))

    def model(k):
        arr = lambda *shape: np.array(draw(st.lists(finite, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))).reshape(shape)  # noqa: E731
        var = np.array(draw(st.lists(st.floats(0.1, 3), min_size=k, max_size=k)))
        return MoEParams(gate=gate, top_k=None, gate_weight=None if gate == "competition" else arr(k, d),
                         gate_bias=arr(k), expert="linear", expert_weight=arr(k, d), expert_bias=arr(k), variance=var)
    return model(k), model(k_true)


def clear_margin(est, truth, rel=1e-6):
    """True when every fitted atom is clearly closer to one true atom than to any other
    (near-ties could flip a cell under rounding, which no loss can be invariant to)."""
    a, b = L.aligned_atoms(est, truth)
    dist = np.sort(np.linalg.norm(a.vector()[:, None] - b.vector()[None], axis=-1), axis=1)
    return dist.shape[1] == 1 or bool(np.all(dist[:, 1] - dist[:, 0] > rel * (1 + dist[:, 1])))


def shifted(p: MoEParams, t1, t0) -> MoEParams:
    bias = None if p.gate_bias is None else p.gate_bias + t0
    slope = None if p.gate_weight is None else p.gate_weight + np.asarray(t1)[None, :]
    return p.replace(gate_weight=slope, gate_bias=bias)


def permuted(p: MoEParams, perm) -> MoEParams:
    take = lambda a: None if a is None else np.asarray(a)[perm]  # noqa: E731
    return p.replace(gate_weight=take(p.gate_weight), gate_bias=take(p.gate_bias), expert_weight=take(p.expert_weight),
                     expert_bias=take(p.expert_bias), variance=take(p.variance))


def loss(est, truth):
    """D1 when exact-fitted, else D2 with explicit exponents (random models can put every fitted
    atom into one cell, beyond the sizes the default table knows)."""
    if est.n_experts == truth.n_experts:
        return L.voronoi_loss(est, truth)
    groups = ["expert_slope", "expert_intercept", "variance"] + (["gate_slope"] if est.gate != "competition" else [])
    return L.voronoi_loss(est, truth, kind="D2", exponents={g: 3 for g in groups})


def all_measures(est, truth):
    return [loss(est, truth)] + list(L.group_errors(est, truth).values())


@settings(max_examples=60, deadline=None)
@given(model_pairs(max_extra=0))
def test_d1_matches_independent_loops(pair):
    est, truth = pair
    assume(clear_margin(est, truth))
    assert L.voronoi_loss(est, truth) == pytest.approx(naive_d1(est, truth), rel=1e-10, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(model_pairs(), st.data())
def test_invariant_to_relabelling_and_gate_shift(pair, data):
    est, truth = pair
    assume(clear_margin(est, truth))
    base = all_measures(est, truth)
    perm = data.draw(st.permutations(range(est.n_experts)))
    perm_true = data.draw(st.permutations(range(truth.n_experts)))
    t1 = data.draw(st.lists(st.floats(-5, 5), min_size=est.dim, max_size=est.dim))
    t0, s0 = data.draw(st.floats(-5, 5)), data.draw(st.floats(-5, 5))
    moved = shifted(permuted(est, perm), t1, t0)
    # tolerance: only rounding of the shift (|t| <= 5, parameters <= 3) separates the two
    assert all_measures(moved, truth) == pytest.approx(base, rel=1e-9, abs=1e-11)
    # relabelling and shifting the truth changes nothing either, the cells are relabelled with it
    moved_truth = shifted(permuted(truth, perm_true), [-v for v in t1], s0)
    assert loss(moved, moved_truth) == pytest.approx(base[0], rel=1e-9, abs=1e-11)
    cells = L.voronoi_cells(est, truth)
    moved_cells = L.voronoi_cells(moved, truth)
    # fitted atom i of `moved` is atom perm[i] of `est`
    assert [sorted(np.asarray(perm)[c].tolist()) for c in moved_cells] == [c.tolist() for c in cells]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def test_bad_inputs():
    comp = preset("competition_k2")
    soft = preset("softmax_k2")
    with pytest.raises(ValueError, match="gate"):
        L.voronoi_loss(comp, soft)
    with pytest.raises(ValueError, match="expert"):
        L.voronoi_loss(preset("softmax_k2_tanh"), soft)
    with pytest.raises(ValueError, match="dim"):
        L.group_errors(preset("softmax_k2_d2"), soft)
    with pytest.raises(TypeError, match="est"):
        L.voronoi_cells("not a model", soft)
    with pytest.raises(ValueError, match="kind"):
        L.voronoi_loss(soft, soft, kind="D3")
    with pytest.raises(ValueError, match="k="):
        L.voronoi_loss(OVER, TRUTH, kind="D1")
    with pytest.raises(ValueError, match="k="):
        L.voronoi_loss(softmax_params([[0.0]], [0.0], [[1.0]], [0.0], [1.0]), TRUTH, kind="D2")
    with pytest.raises(ValueError, match="exponents"):
        L.voronoi_loss(soft, soft, kind="D1", exponents={"variance": 1})
    with pytest.raises(ValueError, match="groups"):
        L.voronoi_loss(OVER, TRUTH, kind="D2", exponents={"variance": 2})
    with pytest.raises(ValueError, match="groups"):
        L.voronoi_loss(comp, comp, kind="D2", exponents={"gate_slope": 1, "expert_slope": 2, "expert_intercept": 2, "variance": 2})
    with pytest.raises(TypeError, match="exponents"):
        L.voronoi_loss(OVER, TRUTH, kind="D2", exponents=[4, 2])
    with pytest.raises(ValueError, match="n_mc"):
        L.hellinger(soft, soft, n_mc=0)
    with pytest.raises(ValueError, match="X"):
        L.total_variation(soft, soft, X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dim"):
        L.hellinger(preset("softmax_k2_d2"), soft)


def test_public_names():
    for name in ("voronoi_cells", "voronoi_loss", "group_errors", "hellinger", "total_variation"):
        assert getattr(mixsim, name) is getattr(L, name)


# ---------------------------------------------------------------------------------------------
# density distances
# ---------------------------------------------------------------------------------------------

def gaussian(mu, var):
    """A one-expert model whose conditional density is N(mu, var) at every x."""
    return softmax_params([[0.0]], [0.0], [[0.0]], [mu], [var])


def hellinger_closed(m1, v1, m2, v2):
    s1, s2 = math.sqrt(v1), math.sqrt(v2)
    return math.sqrt(1 - math.sqrt(2 * s1 * s2 / (v1 + v2)) * math.exp(-((m1 - m2) ** 2) / (4 * (v1 + v2))))


def tv_closed(m1, v1, m2, v2):
    """TV between two Gaussians from the (one or two) crossing points and the normal CDFs."""
    s1, s2 = math.sqrt(v1), math.sqrt(v2)
    if v1 == v2:
        return 2 * norm.cdf(abs(m1 - m2) / (2 * s1)) - 1
    a, b = 1 / (2 * v2) - 1 / (2 * v1), m1 / v1 - m2 / v2
    c = m2**2 / (2 * v2) - m1**2 / (2 * v1) + math.log(s2 / s1)
    roots = np.sort(np.roots([a, b, c]).real)
    diff = np.concatenate([[0.0], norm.cdf(roots, m1, s1) - norm.cdf(roots, m2, s2), [0.0]])
    return 0.5 * np.abs(np.diff(diff)).sum()


PAIRS = [(0, 1, 0.001, 1), (0, 1, 1, 1), (0, 1, 0, 1.5), (0, 0.09, 5, 4), (2, 0.01, 2.3, 0.5), (0, 1e-4, 0, 100), (0, 1, 30, 1)]


@pytest.mark.parametrize("m1, v1, m2, v2", PAIRS)
def test_two_gaussians_closed_forms(m1, v1, m2, v2):
    p, q = gaussian(m1, v1), gaussian(m2, v2)
    X = np.array([[0.0], [1.0]])
    assert L.hellinger(p, q, X=X) == pytest.approx(hellinger_closed(m1, v1, m2, v2), abs=1e-6)
    assert L.total_variation(p, q, X=X) == pytest.approx(tv_closed(m1, v1, m2, v2), abs=1e-6)
    assert L.hellinger(p, q, X=X) == pytest.approx(L.hellinger(q, p, X=X), abs=1e-12)


def conditional_pdf(params, x):
    log_w, mean, sd = L.conditional_mixture(params, np.array([[x]]))
    return lambda y: float(np.sum(np.exp(log_w[0]) * norm.pdf(y, mean[0], sd)))


@pytest.mark.parametrize("gate", ["softmax", "topk", "competition"])
def test_mixtures_match_scipy_quad(gate):
    if gate == "competition":
        truth = preset("competition_k2")
        est = truth.replace(expert_bias=[2.2, -0.4], variance=[0.12, 0.16], gate_bias=[0.3, 0.0])
    else:
        truth = preset("softmax_k2")
        if gate == "topk":  # top-1 softmax of three experts against the dense truth
            est = softmax_params([[24.0], [0.0], [3.0]], [-7.5, 0.0, -2.0], [[-19.0], [20.5], [0.0]],
                                 [14.8, -5.1, 3.0], [0.1, 0.15, 1.0], top_k=1)
        else:
            est = truth.replace(expert_bias=[15.3, -5.0], gate_weight=[[24.0], [0.0]], variance=[0.1, 0.2])
    xs = [0.05, 0.33, 0.5, 0.9]
    h, tv = [], []
    for x in xs:
        p, q = conditional_pdf(est, x), conditional_pdf(truth, x)
        _, mean_p, sd_p = L.conditional_mixture(est, np.array([[x]]))
        _, mean_q, sd_q = L.conditional_mixture(truth, np.array([[x]]))
        means = np.concatenate([mean_p[0], mean_q[0]])
        lo, hi = means.min() - 12 * 2, means.max() + 12 * 2
        pts = sorted(means.tolist())
        opts = dict(points=pts, limit=500, epsabs=1e-13, epsrel=1e-11)
        h.append(math.sqrt(0.5 * integrate.quad(lambda y: (math.sqrt(p(y)) - math.sqrt(q(y))) ** 2, lo, hi, **opts)[0]))
        tv.append(0.5 * integrate.quad(lambda y: abs(p(y) - q(y)), lo, hi, **opts)[0])
    X = np.array(xs)[:, None]
    assert L.hellinger(est, truth, X=X) == pytest.approx(np.mean(h), abs=1e-6)
    assert L.total_variation(est, truth, X=X) == pytest.approx(np.mean(tv), abs=1e-6)


@pytest.mark.parametrize("name", ["softmax_k2", "competition_k2_d2", "softmax_k2_tanh"])
def test_distance_to_itself_is_zero(name):
    truth = preset(name)
    assert L.hellinger(truth, truth, n_mc=64) == 0.0
    assert L.total_variation(truth, truth, n_mc=64) == 0.0


def test_density_distance_across_gate_families():
    # only the conditional densities matter, so a competition fit can be compared with a softmax truth
    h = L.hellinger(preset("competition_k2"), preset("softmax_k2"), n_mc=64)
    tv = L.total_variation(preset("competition_k2"), preset("softmax_k2"), n_mc=64)
    assert 0 < h**2 <= tv <= 1


def test_monte_carlo_inputs_are_seeded_and_bounds_hold():
    truth = preset("softmax_k2")
    est = truth.replace(expert_bias=[15.05, -5.02])
    assert L.hellinger(est, truth, n_mc=200) == L.hellinger(est, truth, n_mc=200)
    assert L.hellinger(est, truth, n_mc=200, rng=1) != L.hellinger(est, truth, n_mc=200, rng=2)
    h, tv = L.hellinger(est, truth, n_mc=200), L.total_variation(est, truth, n_mc=200)
    assert 0 < h**2 <= tv <= math.sqrt(2) * h  # standard inequalities (per x, hence on average)
    permuted_est = permuted(est, [1, 0])  # relabelling leaves the density, hence the distances, unchanged
    assert L.hellinger(permuted_est, truth, n_mc=200) == pytest.approx(h, abs=1e-12)
    assert L.total_variation(permuted_est, truth, n_mc=200) == pytest.approx(tv, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# share- and centre-weighted group errors, cell diagnosis
# ---------------------------------------------------------------------------------------------

C_TRUTH = competition_params([LOG(0.25), LOG(0.75)], [[1.0], [-1.0]], [0.0, 1.0], [1.0, 2.0])


def test_share_and_centre_by_hand_with_a_vanishing_atom():
    # Cell 0 holds atom 0 (share 1 - eps, a off by 0.1) and atom 1 (share eps, b off by 2.5: its
    # parameters are unconstrained). Unweighted errors see atom 1's 2.5; share and centre do not.
    eps = 1e-12
    est = competition_params([LOG(0.25 * (1 - eps)), LOG(0.25 * eps), LOG(0.75)],
                             [[1.1], [1.0], [-1.0]], [0.0, -2.5, 1.0], [1.0, 1.0, 2.0])
    assert [c.tolist() for c in L.voronoi_cells(est, C_TRUTH)] == [[0, 1], [2]]
    ge = L.group_errors(est, C_TRUTH)
    assert ge["expert_intercept_multi_unweighted"] == pytest.approx(2.5)
    assert ge["expert_intercept_multi_share"] == pytest.approx(2.5 * eps, rel=1e-3)
    assert ge["expert_intercept_multi_centre"] == pytest.approx(2.5 * eps, rel=1e-3)
    assert ge["expert_slope_multi_share"] == pytest.approx(0.1 * (1 - eps), rel=1e-9)
    assert ge["expert_slope_multi_centre"] == pytest.approx(abs((1 - eps) * 1.1 + eps * 1.0 - 1.0), rel=1e-9)
    assert ge["variance_multi_share"] == pytest.approx(0.0, abs=1e-15)
    assert ge["weight_multi_share"] == pytest.approx(0.0, abs=1e-9)  # cell mass 0.25 is right
    assert all(v == pytest.approx(0.0, abs=1e-12) for key, v in ge.items() if "_single_" in key)
    diag = L.cell_diagnosis(est, C_TRUTH)
    assert diag == {"cell0_atoms": 2.0, "cell0_min_share": pytest.approx(eps, rel=1e-3), "cell1_atoms": 1.0, "cell1_min_share": 1.0}


def test_share_and_centre_differ_for_a_split_cell():
    # Two atoms with half the mass each, intercepts 0.2 above and below the truth: every atom is
    # 0.2 off (share 0.2) but the mass-weighted centre sits on the truth (centre 0).
    est = competition_params([LOG(0.125), LOG(0.125), LOG(0.75)], [[1.0], [1.0], [-1.0]], [0.2, -0.2, 1.0], [1.0, 1.0, 2.0])
    ge = L.group_errors(est, C_TRUTH)
    assert ge["expert_intercept_multi_share"] == pytest.approx(0.2)
    assert ge["expert_intercept_multi_centre"] == pytest.approx(0.0, abs=1e-15)
    assert ge["expert_intercept_multi_unweighted"] == pytest.approx(0.4)
    assert ge["expert_intercept_multi_weighted"] == pytest.approx(0.25 * 0.2)
    assert L.cell_diagnosis(est, C_TRUTH)["cell0_min_share"] == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(model_pairs(), st.data())
def test_centre_never_exceeds_share_and_diagnosis_counts_atoms(pair, data):
    est, truth = pair
    assume(clear_margin(est, truth))
    ge = L.group_errors(est, truth)
    for key, v in ge.items():
        if key.endswith("_centre") and not key.startswith("weight"):
            assert v <= ge[key.replace("_centre", "_share")] * (1 + 1e-12) + 1e-12
    diag = L.cell_diagnosis(est, truth)
    assert sum(v for key, v in diag.items() if key.endswith("_atoms")) == est.n_experts
    assert all(0.0 <= v <= 1.0 for key, v in diag.items() if key.endswith("_min_share"))
