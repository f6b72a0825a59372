"""Maximum likelihood, found (issue 19): the declared parameter space, init="search", the certificate."""
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import mixsim
from mixsim.fitting.bounds import VarianceBounds, restrict
from mixsim.fitting.engine import run_engine
from mixsim.fitting.layout import Layout
from mixsim.fitting.result import Rows, assemble_results
from mixsim.options import FitOptions

# The reproducer: a competition fit from a wide start diverged and crashed every start.
REPRO_TRUTH = mixsim.MoEParams(
    gate="competition", top_k=None, expert="linear", gate_weight=None, gate_bias=np.array([0.4, 0.0]),
    expert_weight=np.array([[1.5, -2.0], [-1.0, 2.5]]), expert_bias=np.array([0.5, -0.3]), variance=np.array([0.08, 0.12]))
WIDE = mixsim.NearTruthInit(gate_scale=1.0, expert_scale=1.0, variance_scale=0.05,
                            gate_exponent=0, expert_exponent=0, variance_exponent=0)


@pytest.fixture(scope="module")
def repro_data():
    return mixsim.sample(REPRO_TRUTH, 4000, rng=7100)


def _loglik_by_hand(p: mixsim.MoEParams, X: np.ndarray, y: np.ndarray) -> float:
    """Total log-likelihood of a dense softmax-gated linear model, numpy and scipy only."""
    logits = X @ p.gate_weight.T + p.gate_bias  # (n, k)
    log_pi = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    mean = X @ p.expert_weight.T + p.expert_bias
    comp = log_pi + stats.norm.logpdf(y[:, None], loc=mean, scale=np.sqrt(p.variance))
    return float(np.logaddexp.reduce(comp, axis=1).sum())


# -- the declared parameter space ------------------------------------------------------------

def test_the_reproducer_no_longer_crashes(repro_data):
    X, y = repro_data
    res = mixsim.fit(X, y, 3, gate="competition", init="near_truth", truth=REPRO_TRUTH, init_options=WIDE, rng=9003)
    assert np.all(np.isfinite(res.params.variance)) and math.isfinite(res.log_likelihood)
    assert res.search.n_failed == 0 and res.status in ("converged", "stalled", "max_iter")
    # A start whose variance diverges stops on the declared cap (flagged), instead of overflowing.
    capped = mixsim.fit(X, y, 3, gate="competition", init="near_truth", truth=REPRO_TRUTH, init_options=WIDE, rng=9021)
    assert "cap" in capped.bounds_active and capped.variance_bounded
    assert capped.params.variance.max() <= FitOptions().variance_cap * y.var() * (1 + 1e-9)


def test_a_diverged_start_is_dropped_and_counted():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 500, rng=3)
    layout = Layout("softmax", None, "linear", "softplus", 2, 1, True)
    Xs = torch.as_tensor((X - X.mean(0)) / X.std(0))[None].expand(3, -1, -1)
    yt = torch.as_tensor(y)[None].expand(3, -1)
    gen = np.random.default_rng(0)
    starts = [mixsim.fitting.starts.init_auto(layout, Xs[0].numpy(), y, gen) for _ in range(3)]
    bounds = VarianceBounds(torch.full((3,), 1e-6 * y.var()), torch.full((3,), 1e6 * y.var()))
    theta0 = mixsim.fitting.search.pack_starts(layout, starts, bounds, torch.float64, torch.device("cpu"))
    opts = FitOptions()
    out = run_engine(layout, theta0, Xs, yt, bounds, opts)
    best_row = int(torch.argmax(out.f))
    bad = 1 - best_row if best_row < 2 else 0  # a row that is not the best diverges
    f = out.f.clone()
    f[best_row] = float("nan")  # the best row diverges: the fit must return the best of the others
    theta = out.theta.clone()
    theta[best_row, 0] = float("inf")
    broken = dataclasses.replace(out, f=f, theta=theta)
    centre, scale = np.repeat(X.mean(0)[None], 3, 0), np.repeat(X.std(0)[None], 3, 0)
    rows = Rows(np.zeros(3, dtype=int), ["auto"] * 3, "auto", np.array([3]), np.array([0]))
    (res,) = assemble_results(layout, broken, theta0, bounds, rows, len(y), 0.0, opts, False, (centre, scale))
    others = [r for r in range(3) if r != best_row]
    assert res.search.n_failed == 1 and res.search.n_continued == 3
    assert res.log_likelihood == pytest.approx(max(float(out.f[r]) for r in others) * len(y), rel=1e-12)
    assert bad in others
    # Every start diverged: status "failed", the start returned (finite), and a warning.
    all_bad = dataclasses.replace(out, f=torch.full_like(out.f, float("nan")))
    with pytest.warns(mixsim.ConvergenceWarning, match="failed"):
        (res,) = assemble_results(layout, all_bad, theta0, bounds, rows, len(y), 0.0, opts, True, (centre, scale))
    assert res.status == "failed" and not res.converged and res.search.n_failed == 3
    assert np.all(np.isfinite(res.params.variance))


def test_a_declared_bound_prevents_a_collapse(repro_data):
    X, y = repro_data
    kw = dict(gate="competition", init="near_truth", truth=REPRO_TRUTH, init_options=WIDE, rng=9005)
    loose = mixsim.fit(X, y, 3, variance_floor=1e-12, **kw)
    assert loose.params.variance.min() < 1e-8 * y.var()  # collapsed onto a few points ...
    assert loose.log_likelihood > mixsim.fit(X, y, 3, **kw).log_likelihood  # ... gaining likelihood without end
    ratio = mixsim.fit(X, y, 3, variance_floor=1e-12, variance_ratio=100.0, **kw)
    v = ratio.params.variance
    assert v.max() / v.min() <= 100.0 * (1 + 1e-9) and v.min() > 1e-4
    absolute = mixsim.fit(X, y, 3, variance_floor=1e-12, variance_min=0.01, **kw)
    assert absolute.params.variance.min() >= 0.01 * (1 - 1e-12)
    for res in (ratio, absolute):
        assert res.converged and res.stationarity <= 1e-10  # certified on the bounded space (KKT)


def test_a_fit_on_the_ratio_bound_is_a_constrained_maximum():
    # Independent check of the KKT certificate: scipy's SLSQP, started from the fit, maximises the
    # same likelihood under max_j s_j - s_i <= log(ratio) (s: log-variances) and gains nothing.
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 1500, rng=11)
    # The true variances are 0.09 and 0.16 (ratio 1.8): a ratio bound of 1.2 must bind.
    res = mixsim.fit(X, y, 2, init="near_truth", truth=truth, rng=2, variance_ratio=1.2)
    assert "ratio" in res.bounds_active and res.converged
    p = res.params

    def unpack(z):
        return dataclasses.replace(p, gate_weight=np.array([[z[0]], [0.0]]), gate_bias=np.array([z[1], 0.0]),
                                   expert_weight=z[2:4].reshape(2, 1), expert_bias=z[4:6], variance=np.exp(z[6:8]))

    z0 = np.concatenate([p.gate_weight[:1, 0] - p.gate_weight[1, 0], p.gate_bias[:1] - p.gate_bias[1],
                         p.expert_weight[:, 0], p.expert_bias, np.log(p.variance)])
    assert np.ptp(np.log(p.variance)) == pytest.approx(math.log(1.2), rel=1e-9)
    cons = [{"type": "ineq", "fun": lambda z, i=i, j=j: math.log(1.2) - (z[6 + i] - z[6 + j])}
            for i in range(2) for j in range(2) if i != j]
    fun = lambda z: -_loglik_by_hand(unpack(z), X, y) / len(y)  # noqa: E731
    opt = optimize.minimize(fun, z0, method="SLSQP", constraints=cons, options={"maxiter": 200, "ftol": 1e-14})
    assert -opt.fun - (-fun(z0)) <= 1e-7  # nats per sample: no feasible direction pays


def test_the_free_directions_keep_the_ratio_bound():
    # A log-variance on the ratio bound pushed below it moves with the largest one.
    k, c = 3, math.log(10.0)
    theta = torch.tensor([[0.3, -0.2, 1.0, 1.0 - c, 0.5]], dtype=torch.float64)  # P = 5, last k log-variances
    g = torch.tensor([[0.1, 0.2, 0.3, -0.4, 0.1]], dtype=torch.float64)
    bounds = VarianceBounds(torch.tensor([1e-12]), torch.tensor([1e12]), c)
    Z = bounds.free_basis(theta, g, k)
    step = (Z @ torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    s = theta[0, -k:] + step[-k:]
    assert float(s[0] - s[1]) == pytest.approx(c, abs=1e-12)  # the tied pair keeps its ratio exactly
    assert float(step[-1]) != 0.0 and float(step[-3]) != 0.0  # the others move freely
    H = -torch.eye(5, dtype=torch.float64)[None]
    gz, _ = restrict(g, H, Z)
    assert float(gz[0, 2]) == pytest.approx(0.3 - 0.4)  # the tied pair's gradient, summed
    projected = bounds.project(torch.tensor([[0.0, 0.0, 3.0, -5.0, 0.0]], dtype=torch.float64), k)
    assert float(projected[0, -k:].max() - projected[0, -k:].min()) <= c + 1e-12


@pytest.mark.parametrize("bad, match", [
    (dict(variance_ratio=0.5), "variance_ratio"), (dict(variance_cap=1e-7), "variance_cap"),
    (dict(variance_min=-1.0), "variance_min"), (dict(search_keep=0), "search_keep"),
    (dict(search_points=0), "search_points"), (dict(hit_tol=-0.1), "hit_tol"),
])
def test_bad_bounds_and_budgets_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        FitOptions(**bad)
    X, y = mixsim.sample(mixsim.preset("softmax_k2"), 200, rng=0)
    with pytest.raises(ValueError, match=match):
        mixsim.fit(X, y, 2, rng=0, **bad)


# -- the search --------------------------------------------------------------------------------

def test_search_never_returns_less_than_its_protocol_starts():
    truth = mixsim.preset("softmax_k2")
    pairs = [mixsim.sample(truth, 1000, rng=40 + b) for b in range(3)]
    Xs, ys = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    seeds = [5, 6, 7]
    protocol = mixsim.fit_batch(Xs, ys, 3, init="near_truth", truth=truth, n_init=2, rng=seeds)
    search = mixsim.fit_batch(Xs, ys, 3, init="search", truth=truth, n_init=2, rng=seeds)
    for p, s in zip(protocol, search):
        assert s.log_likelihood >= p.log_likelihood - 1e-9
        # the search's protocol starts are the protocol's own (same seeds, same draws first)
        assert s.search.protocol_loglik == pytest.approx(p.log_likelihood, rel=1e-9)
        assert s.search.protocol.excess_loglik == pytest.approx(p.excess_loglik, rel=1e-9)
        assert 1 <= s.search.hits <= s.search.n_continued and s.converged


def test_the_search_finds_the_cell_the_protocol_misses():
    # Planted: the data come from three experts, two of them (slopes +4 and +1) where the two-expert
    # "truth" has one (slope 2.5). The protocol puts the extra atom on true expert 0 (slope -4): the
    # wrong cell. The search places it on every true expert and splits fits with one expert fewer.
    data_truth = mixsim.MoEParams(
        gate="softmax", top_k=None, expert="linear", gate_weight=np.array([[-6.0], [3.0], [0.0]]),
        gate_bias=np.array([3.0, -1.5, 0.0]), expert_weight=np.array([[-4.0], [4.0], [1.0]]),
        expert_bias=np.array([2.0, -3.0, -1.0]), variance=np.array([0.05, 0.05, 0.05]))
    model_truth = mixsim.MoEParams(
        gate="softmax", top_k=None, expert="linear", gate_weight=np.array([[-6.0], [0.0]]),
        gate_bias=np.array([3.0, 0.0]), expert_weight=np.array([[-4.0], [2.5]]),
        expert_bias=np.array([2.0, -2.0]), variance=np.array([0.05, 0.3]))
    X, y = mixsim.sample(data_truth, 3000, rng=0)
    protocol = mixsim.fit(X, y, 3, init="near_truth", truth=model_truth, n_init=2, rng=0)
    search = mixsim.fit(X, y, 3, init="search", truth=model_truth, n_init=2, rng=0)
    assert search.log_likelihood > protocol.log_likelihood + 100  # far above: a different cell
    assert search.search.winner != "protocol" and search.search.protocol_loglik == pytest.approx(protocol.log_likelihood)
    assert np.sum(np.abs(protocol.params.expert_weight[:, 0] + 4) < 1) == 2  # protocol: two atoms at slope -4
    slopes = np.sort(search.params.expert_weight[:, 0])
    np.testing.assert_allclose(slopes, [-4.0, 1.0, 4.0], atol=0.2)  # search: the three true experts


# -- the certificate ---------------------------------------------------------------------------

def test_excess_loglik_matches_an_independent_loglik():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 2000, rng=8)
    res = mixsim.fit(X, y, 2, init="near_truth", truth=truth, rng=1)
    fitted, true = _loglik_by_hand(res.params, X, y), _loglik_by_hand(truth, X, y)
    assert res.log_likelihood == pytest.approx(fitted, rel=1e-10)
    assert res.excess_loglik == pytest.approx(fitted - true, rel=1e-8, abs=1e-8)
    assert res.excess_loglik >= 0  # the MLE beats the truth on its own data (basic inequality)
    assert mixsim.fit(X, y, 2, rng=1).excess_loglik is None  # no truth, no excess


SEARCH_SPEC = """
name = "search_tiny"
root_seed = 3
replications = 2
metrics = ["D2", "loglik"]
[truth]
preset = "softmax_k2"
[grid]
values = [400]
[fit]
gates = ["softmax"]
fitted_k = [3]
init = "search"
n_init = { exact = 1, over = 2 }
max_iter = 300
[fit.options]  # a test: a small search, and the ratio bound searches declare
variance_ratio = 100.0
search_candidates = 6
search_keep = 2
[run]
block_size = 2
"""


def test_the_certificate_is_stored_and_read_back(tmp_path):
    from mixsim.study.store import read_task_file, write_task_file
    spec_path = tmp_path / "search_tiny.toml"
    spec_path.write_text(SEARCH_SPEC)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mixsim.ConvergenceWarning)
        mixsim.run_study(spec_path, out, progress=False)
    est = mixsim.load_estimates(out)
    fits = est[(est["expert"] == 0) & (est["estimator"] == "mle")]
    assert len(fits) == 2 and fits["search_starts"].notna().all() and (fits["search_hits"] >= 1).all()
    # each search unit also reports the reference protocol's optimum as its own estimate (issue 24 item 4)
    protocol = est[(est["expert"] == 0) & (est["estimator"] == "protocol")]
    assert len(protocol) == 2 and protocol["search_starts"].isna().all()
    np.testing.assert_array_equal(protocol["log_likelihood"].to_numpy(), fits["protocol_loglik"].to_numpy())
    assert fits["excess_loglik"].notna().all() and set(fits["search_winner"]) <= set(mixsim.fitting.search.KINDS)
    assert (fits["protocol_loglik"] <= fits["log_likelihood"] + 1e-9).all()
    summary = mixsim.study.certificate_summary(out)
    assert list(summary["estimator"]) == ["mle", "protocol"]
    row = next(summary[summary["estimator"] == "mle"].itertuples())
    assert row.fits == 2 and row.median_hits == fits["search_hits"].median()
    assert row.below_truth == float((fits["excess_loglik"] < 0).mean())
    assert row.on_bound == float(fits["variance_bounded"].astype(bool).mean())
    assert row.protocol_below == float((fits["log_likelihood"] - fits["protocol_loglik"] > 0.01).mean())
    # A task file written before certificates were recorded still loads, with missing values.
    for path in (out / "tasks").glob("*.json"):
        doc = read_task_file(path)
        for unit in doc["units"]:
            for key in ("excess_loglik", "variance_bounded", "bounds_active", "search", "protocol", "estimator"):
                unit.get("estimate", {}).pop(key, None)
        write_task_file(out, doc["spec_hash"], doc["task"], doc["units"])
    old = mixsim.load_estimates(out)
    assert len(old) == len(est[est["estimator"] == "mle"]) and set(old["estimator"]) == {"mle"}
    assert old["search_hits"].isna().all() and old["excess_loglik"].isna().all()
    assert old["variance_bounded"].isna().all()
    assert json.loads((out / "study.json").read_text())["spec"]["fit"]["init"] == "search"


def test_declaring_the_implicit_bound_keeps_the_hash_but_a_budget_does_not():
    spec = mixsim.load_study("smoke")  # declares variance_floor = 1e-6 and variance_cap = 1e6
    bare = spec.with_overrides({"fit.options.variance_floor": 1e-6})
    assert bare.hash == spec.hash
    for change in ({"fit.options.variance_floor": 1e-4}, {"fit.options.variance_ratio": 100.0},
                   {"fit.options.search_candidates": 24}):
        assert spec.with_overrides(change).hash != spec.hash, change


def test_merge_and_split_moves_keep_the_mixture_weights():
    # SMEM moves (fitting/moves.py): a merge adds the two atoms' weights (exp of the intercepts),
    # a split halves one; so a merge-then-split start has the total weight of the fit it came from.
    from mixsim.fitting.moves import merge_atoms, merge_split_moves, split_atom
    gen = np.random.default_rng(0)
    p = {"gate_weight": gen.standard_normal((3, 2)), "gate_bias": np.log([0.2, 0.3, 0.5]),
         "expert_weight": gen.standard_normal((3, 2)), "expert_bias": gen.standard_normal(3), "variance": np.array([0.1, 0.2, 0.4])}
    merged = merge_atoms(p, 0, 2)
    assert merged["variance"].shape == (2,)
    assert np.exp(merged["gate_bias"]).sum() == pytest.approx(1.0)
    assert merged["expert_bias"][0] == pytest.approx((0.2 * p["expert_bias"][0] + 0.5 * p["expert_bias"][2]) / 0.7)
    split = split_atom(merged, 1, 1.0, gen, "variance")
    assert np.exp(split["gate_bias"]).sum() == pytest.approx(1.0)
    assert split["variance"][1] == pytest.approx(0.25 * 0.2) and split["variance"][-1] == pytest.approx(4 * 0.2)
    moves = merge_split_moves(p, 1.0, gen, limit=100)
    assert len(moves) == 3 * 1 * 2  # 3 pairs x 1 other atom x {mean, variance}
    assert all(np.exp(m["gate_bias"]).sum() == pytest.approx(1.0) for m in moves)
