"""Fitting: recovery, agreement with scipy, batching, determinism, monotonicity, errors, warnings."""
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import mixsim
from mixsim import ConvergenceWarning
from mixsim.fitting.derivatives import grad_hess as _grad_hess, grad_hess_autograd as _grad_hess_autograd, gradient_autograd as _gradient
from mixsim.fitting.em import _em_gradient, _em_stats, _EMData, _EMIndex
from mixsim.fitting.layout import Layout as _Layout, mean_loglik as _mean_loglik
from tests.test_model import _np_log_density



def _theta(layout, params):
    return layout.pack(layout.from_params(params, torch.float64, torch.device("cpu")))


@pytest.mark.parametrize("name", ["softmax_k2", "competition_k2"])
def test_recovers_truth_within_standard_errors(name):
    # Every free parameter within 5 asymptotic standard errors (inverse observed information / n)
    # of the truth at n = 20 000: a 5-sigma band, so a correct fit fails with probability < 1e-5.
    truth = mixsim.preset(name)
    n = 20_000
    X, y = mixsim.sample(truth, n, rng=11)
    res = mixsim.fit(X, y, 2, gate=truth.gate, init="near_truth", truth=truth, rng=0, tol=1e-10)
    assert res.converged and res.status == "converged" and res.grad_norm < 1e-5
    layout = _Layout(truth.gate, None, "linear", "softplus", 2, 1)
    est = _theta(layout, res.params)
    _, H = _grad_hess(layout, est, torch.from_numpy(X)[None], torch.from_numpy(y)[None])
    se = torch.sqrt(torch.diagonal(torch.linalg.inv(-H[0])) / n)
    z = ((est[0] - _theta(layout, truth)[0]) / se).abs()
    assert torch.all(z < 5), z


@pytest.mark.parametrize("name", ["softmax_k2", "competition_k2"])
def test_agrees_with_scipy_optimizer(name):
    # scipy's L-BFGS-B on an independent numpy log-likelihood, from the same near-truth start.
    truth = mixsim.preset(name)
    X, y = mixsim.sample(truth, 20_000, rng=5)
    res = mixsim.fit(X, y, 2, gate=truth.gate, init="near_truth", truth=truth, rng=1, tol=1e-12)
    start = truth.replace(expert_bias=truth.expert_bias + 0.05, variance=truth.variance * 1.1)
    layout = _Layout(truth.gate, None, "linear", "softplus", 2, 1)
    theta0 = _theta(layout, start)[0].numpy()

    def negll(theta):
        p = layout.unpack(torch.from_numpy(theta)[None])
        params = layout.to_params({name: None if v is None else v.numpy() for name, v in p.items()}, 0)
        return -_np_log_density(params, X, y).mean()

    opt = minimize(negll, theta0, method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-10, maxiter=5000))
    ll_scipy = -opt.fun * len(y)
    assert abs(res.log_likelihood - ll_scipy) <= 1e-6 * abs(ll_scipy)
    assert res.log_likelihood >= ll_scipy - 1e-9 * abs(ll_scipy)  # ours is at least as good


@pytest.mark.parametrize("gate, top_k, expert, k, phi, bias", [
    ("softmax", None, "linear", 3, "softplus", True), ("softmax", 2, "linear", 3, "softplus", True),
    ("softmax", None, "tanh", 2, "softplus", True), ("competition", None, "linear", 3, "softplus", True),
    ("competition", 2, "tanh", 3, "softplus", True), ("competition", None, "linear", 2, "identity", False),
    ("competition", None, "tanh", 3, "softplus", False), ("sigmoid", None, "tanh", 2, "softplus", True),
])
def test_local_hessian_equals_autograd_reference(gate, top_k, expert, k, phi, bias):
    # Closed-form per-sample derivatives + feature contraction vs autograd through the parameters.
    layout = _Layout(gate, top_k, expert, phi, k, 2, bias)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(3, 400, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 400, generator=g, dtype=torch.float64)
    theta = 0.5 * torch.randn(3, layout.n_params, generator=g, dtype=torch.float64)
    g1, H1 = _grad_hess(layout, theta, X, y)
    g2, H2 = _grad_hess_autograd(layout, theta, X, y)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H1, H2, rtol=1e-10, atol=1e-12)


def _batch(truth, n, B, seed):
    data = [mixsim.sample(truth, n, rng=seed + b) for b in range(B)]
    return np.stack([d[0] for d in data]), np.stack([d[1] for d in data])


@pytest.mark.parametrize("gate, name, k, method", [
    ("softmax", "softmax_k2", 3, "auto"), ("softmax", "softmax_k2", 2, "em"), ("competition", "competition_k2", 3, "newton"),
])
def test_batched_equals_one_at_a_time(gate, name, k, method):
    truth = mixsim.preset(name)
    Xs, ys = _batch(truth, 800, 4, 100)
    seeds = [7, 8, 9, 10]
    # n = 800 over-fitted: some data sets head for a boundary (a variance on the floor, its weight
    # vanishing) and never converge; batching must not change their path either (no warnings).
    opts = dict(gate=gate, init="near_truth", truth=truth, tol=1e-9, method=method, max_iter=300, warn=False)
    batch = mixsim.fit_batch(Xs, ys, k, rng=seeds, **opts)
    for b in range(4):
        one = mixsim.fit(Xs[b], ys[b], k, rng=seeds[b], **opts)
        assert one.n_iter == batch[b].n_iter and one.status == batch[b].status
        if not one.converged:  # a path to a boundary amplifies rounding: only its course must agree
            continue
        np.testing.assert_allclose(one.params.expert_weight, batch[b].params.expert_weight, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(one.params.variance, batch[b].params.variance, rtol=1e-9, atol=1e-12)
        assert one.log_likelihood == pytest.approx(batch[b].log_likelihood, rel=1e-12)


def test_same_seed_same_numbers_and_auto_restarts():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 1500, rng=3)
    a = mixsim.fit(X, y, 2, n_init=3, rng=42)
    b = mixsim.fit(X, y, 2, n_init=3, rng=42)
    assert a.params == b.params and np.array_equal(a.trace, b.trace)
    # The best of 3 automatic starts finds the truth's basin: compare with the near-truth fit.
    ref = mixsim.fit(X, y, 2, init="near_truth", truth=truth, rng=0)
    assert a.log_likelihood >= ref.log_likelihood - 1e-3


@pytest.mark.parametrize("gate, name, k, method", [
    ("softmax", "softmax_k2", 3, "em"), ("softmax", "softmax_k2", 3, "newton"), ("competition", "competition_k2", 3, "auto"),
    ("topk", "softmax_k2", 3, "auto"),
])
def test_log_likelihood_trace_never_decreases(gate, name, k, method):
    truth = mixsim.preset(name)
    X, y = mixsim.sample(truth, 2000, rng=2)
    kw = dict(top_k=2) if gate == "topk" else {}
    init = dict(init="near_truth", truth=truth) if gate != "topk" else dict(n_init=2)
    res = mixsim.fit(X, y, k, gate=gate, rng=0, tol=1e-10, method=method, max_iter=300, warn=False, **kw, **init)
    assert len(res.trace) >= 2
    assert np.all(np.diff(res.trace) >= 0)
    assert res.trace[-1] * len(y) == pytest.approx(res.log_likelihood, rel=1e-12)


def test_newton_reaches_a_higher_optimum_than_plain_em_overfitted():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 5000, rng=1)
    # Plain EM crawls: after 2000 iterations it is neither stationary nor as high (with 20 000 it
    # is still 0.8 nats below); EM then Newton certifies a stationary point within ~100.
    kw = dict(init="near_truth", truth=truth, rng=0, tol=1e-10, max_iter=2000)
    em = mixsim.fit(X, y, 3, method="em", warn=False, **kw)
    auto = mixsim.fit(X, y, 3, method="auto", **kw)
    assert not em.converged and em.status == "max_iter" and em.stationarity > 1e-10
    assert auto.converged and auto.n_iter < 200 and auto.stationarity <= 1e-10
    assert auto.log_likelihood >= em.log_likelihood + 0.1


def test_convergence_warning_when_not_converged():
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 2000, rng=2)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = mixsim.fit(X, y, 3, init="near_truth", truth=truth, rng=0, tol=1e-14, max_iter=3, method="em")
    assert not res.converged and res.status == "max_iter" and res.n_iter == 3


def test_collapsed_variance_is_floored_and_flagged():
    # Five points exactly on a line: an expert can sit on them with zero variance (unbounded
    # likelihood). The fit must stop at the floor, flag it, and return finite parameters.
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(300, 1))
    y = 1.0 + 2.0 * X[:, 0] + 0.5 * rng.standard_normal(300)
    y[:5] = 4.0 - 3.0 * X[:5, 0]
    start = mixsim.MoEParams(gate="softmax", top_k=None, gate_weight=[[0.0], [0.0]], gate_bias=[-4.0, 0.0], expert="linear",
                             expert_weight=[[-3.0], [2.0]], expert_bias=[4.0, 1.0], variance=[1e-3, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = mixsim.fit(X, y, 2, init="near_truth", truth=start, rng=0, max_iter=500)
    assert res.variance_floored
    assert res.params.variance.min() == pytest.approx(res.variance_floor, rel=1e-6)
    assert np.isfinite(res.log_likelihood) and all(np.all(np.isfinite(getattr(res.params, f)))
                                                    for f in ("gate_weight", "expert_weight", "variance"))


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_experts=0), "n_experts"), (dict(n_experts=2.5), "n_experts"), (dict(gate="nope"), "gate"),
    (dict(gate="softmax", top_k=5), "top_k"), (dict(method="lbfgs"), "method"), (dict(init="random"), "init"),
    (dict(init="near_truth"), "truth"), (dict(tol=0.0), "tol"), (dict(max_iter=0), "max_iter"),
    (dict(n_init=0), "n_init"), (dict(gate="competition", method="em"), "em"),
    (dict(init="near_truth", truth="softmax_k2"), "truth"), (dict(gate_bias=False), "gate_bias"),
])
def test_bad_arguments_are_refused(kwargs, word):
    truth = mixsim.preset("softmax_k2")
    X, y = mixsim.sample(truth, 200, rng=0)
    kwargs = {"n_experts": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=word):
        mixsim.fit(X, y, **kwargs)


def test_bad_data_is_refused():
    X = np.linspace(0, 1, 50)[:, None]
    y = np.sin(X[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        mixsim.fit(np.where(X > 0.5, np.nan, X), y, 2)
    with pytest.raises(ValueError, match="NaN"):
        mixsim.fit(X, np.where(y > 0.5, np.inf, y), 2)
    with pytest.raises(ValueError, match="shape"):
        mixsim.fit(X, y[:-1], 2)
    with pytest.raises(ValueError, match="too small"):
        mixsim.fit(X[:8], y[:8], 2)  # 8 samples, 8 free parameters
    with pytest.raises(ValueError, match="all responses equal"):
        mixsim.fit(X, np.ones(50), 2)
    with pytest.raises(ValueError, match="one seed"):
        mixsim.fit_batch(X[None].repeat(2, 0), y[None].repeat(2, 0), 2, rng=[1, 2, 3])
    with pytest.raises(ValueError, match="match"):
        mixsim.fit(X, y, 2, gate="competition", init="near_truth", truth=mixsim.preset("softmax_k2"))


def test_mean_loglik_matches_model_log_likelihood():
    truth = mixsim.preset("competition_k2_d2")
    X, y = mixsim.sample(truth, 300, rng=1)
    layout = _Layout("competition", None, "linear", "softplus", 2, 2)
    f = _mean_loglik(layout, _theta(layout, truth), torch.from_numpy(X)[None], torch.from_numpy(y)[None])
    assert float(f[0]) * 300 == pytest.approx(mixsim.log_likelihood(truth, X, y), rel=1e-13)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # emitted by torch's own compile stack (torch.jit)
def test_compiled_em_pass_equals_eager():
    # torch.compile of the fused EM pass (tens of seconds to compile): same fits to 1e-10.
    truth = mixsim.preset("softmax_k2")
    Xs, ys = _batch(truth, 3000, 3, 40)
    kw = dict(init="near_truth", truth=truth, rng=[1, 2, 3], tol=1e-9, method="em", max_iter=200, warn=False)
    for top_k in (None, 2):
        eager = mixsim.fit_batch(Xs, ys, 3, top_k=top_k, **kw)
        compiled = mixsim.fit_batch(Xs, ys, 3, top_k=top_k, compile=True, **kw)
        for a, b in zip(eager, compiled):
            assert a.n_iter == b.n_iter
            np.testing.assert_allclose(a.params.expert_weight, b.params.expert_weight, rtol=1e-8, atol=1e-10)
            assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-10)


def test_competition_without_intercepts_needs_a_matching_truth():
    truth = mixsim.preset("competition_k2")
    X, y = mixsim.sample(truth, 500, rng=0)
    with pytest.raises(ValueError, match="intercepts"):
        mixsim.fit(X, y, 2, gate="competition", init="near_truth", truth=truth, gate_bias=False)
    res = mixsim.fit(X, y, 2, gate="competition", init="near_truth", truth=truth.replace(gate_bias=None), gate_bias=False, rng=0)
    assert res.converged and res.params.gate_bias is None


def _random_softmax_params(B, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    gw = r(B, k, d)
    gw[:, -1] = 0.0
    gb = r(B, k)
    gb[:, -1] = 0.0
    return {"gate_weight": gw, "gate_bias": gb, "expert_weight": r(B, k, d), "expert_bias": r(B, k),
            "variance": 0.3 + torch.rand(B, k, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("k, d, top_k", [(1, 1, None), (2, 1, None), (3, 1, None), (3, 2, 2), (4, 2, None)])
def test_em_statistics_equal_a_per_sample_loop(k, d, top_k):
    # Every EM statistic against a plain numpy loop over samples and experts (1e-10 relative).
    B, n = 2, 40
    p = _random_softmax_params(B, k, d, seed=k + d)
    rng = np.random.default_rng(0)
    X, y = rng.uniform(-1, 1, (B, n, d)), rng.normal(size=(B, n))
    layout = _Layout("softmax", top_k, "linear", "softplus", k, d)
    data = _EMData.of(torch.from_numpy(X), torch.from_numpy(y))
    f, moments, grad, hess = _em_stats(layout, p, data, _EMIndex.of(k, d, torch.device("cpu")))
    q, m = d + 1, k - 1
    P = {name: v.numpy() for name, v in p.items()}
    for b in range(B):
        ll, M = 0.0, np.zeros((k, d + 2, d + 2))
        g_ref, H_ref = np.zeros((m, q)), np.zeros((m, q, m, q))
        for i in range(n):
            phi = np.append(X[b, i], 1.0)
            psi = np.append(phi, y[b, i])
            logits = P["gate_weight"][b] @ X[b, i] + P["gate_bias"][b]
            keep = np.argsort(-logits)[: top_k or k]
            gate = np.zeros(k)
            gate[keep] = np.exp(logits[keep] - logits[keep].max()) / np.exp(logits[keep] - logits[keep].max()).sum()
            mu = P["expert_weight"][b] @ X[b, i] + P["expert_bias"][b]
            v = P["variance"][b]
            dens = gate * np.exp(-0.5 * (y[b, i] - mu) ** 2 / v) / np.sqrt(2 * np.pi * v)
            ll += np.log(dens.sum())
            r = dens / dens.sum()
            for j in range(k):
                M[j] += r[j] * np.outer(psi, psi)
            for j in range(m):
                g_ref[j] += (r[j] - gate[j]) * phi
                for l in range(m):
                    H_ref[j, :, l] += gate[j] * ((j == l) - gate[l]) * np.outer(phi, phi)
        np.testing.assert_allclose(float(f[b]), ll / n, rtol=1e-12)
        np.testing.assert_allclose(moments[b].numpy(), M, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad[b].numpy(), g_ref.reshape(-1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hess[b].numpy(), H_ref.reshape(m * q, m * q), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k, d, top_k", [(2, 1, None), (3, 1, None), (3, 2, 2)])
def test_em_gradient_equals_autograd(k, d, top_k):
    # The gradient reported after EM comes from the EM statistics (Fisher's identity); it must be
    # the observed log-likelihood's gradient, here by autograd through the parameters (1e-10).
    B, n = 3, 200
    p = _random_softmax_params(B, k, d, seed=10 + k)
    rng = np.random.default_rng(1)
    X, y = torch.from_numpy(rng.uniform(-1, 1, (B, n, d))), torch.from_numpy(rng.normal(size=(B, n)))
    layout = _Layout("softmax", top_k, "linear", "softplus", k, d)
    _, moments, grad, _ = _em_stats(layout, p, _EMData.of(X, y), _EMIndex.of(k, d, torch.device("cpu")))
    ours = _em_gradient(layout, p, moments, grad)
    ref = _gradient(layout, layout.pack(p), X, y)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)


# ---- the trust-region Newton engine ---------------------------------------------------------

@pytest.mark.parametrize("gate, top_k, expert, bias", [
    ("softmax", None, "linear", True), ("softmax", 2, "tanh", True), ("competition", None, "linear", True),
    ("competition", 2, "tanh", False), ("sigmoid", None, "linear", True),
])
def test_value_and_gradient_equal_autograd(gate, top_k, expert, bias):
    # The one-pass closed-form value and gradient (L-BFGS-B in bench_fit uses them) against the
    # plain log-likelihood and autograd through the parameters (1e-12: rounding only).
    from mixsim.fitting.derivatives import value_and_gradient as _value_and_gradient
    layout = _Layout(gate, top_k, expert, "softplus", 3, 2, bias)
    g = torch.Generator().manual_seed(3)
    X = torch.rand(2, 20_000, 2, generator=g, dtype=torch.float64)  # several chunks
    y = torch.randn(2, 20_000, generator=g, dtype=torch.float64)
    theta = 0.5 * torch.randn(2, layout.n_params, generator=g, dtype=torch.float64)
    f, grad = _value_and_gradient(layout, theta, X, y)
    torch.testing.assert_close(f, _mean_loglik(layout, theta, X, y), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, _gradient(layout, theta, X, y), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("case", ["concave_inside", "concave_boundary", "indefinite", "hard"])
def test_trust_step_solves_the_trust_region_problem(case):
    # maximise c.w - sum(lam w^2)/2 over |w| <= r: checked against the optimality conditions of
    # More and Sorensen ((diag(lam) + mu) w = c, mu >= 0, lam + mu >= 0, mu (r - |w|) = 0) and
    # against SLSQP from many starts (the best of which must not beat the step by more than 1e-9).
    from mixsim.fitting.newton import _trust_step
    rng = np.random.default_rng({"concave_inside": 0, "concave_boundary": 1, "indefinite": 2, "hard": 3}[case])
    P = 6
    lam = np.sort(np.append(rng.uniform(0.1, 2.0, P - 1), 1.0 if case.startswith("concave") else -0.5))  # ascending
    c = rng.normal(size=P) * (0.01 if case == "concave_inside" else 1.0)
    if case == "hard":
        c[0] = 0.0  # no gradient along the most negative curvature
        c[1:] *= 0.01
    r = 0.5
    w, gain, mu = (v[0].numpy() for v in _trust_step(torch.from_numpy(lam)[None], torch.from_numpy(c)[None], torch.tensor([r])))
    model = lambda v: c @ v - 0.5 * (lam * v * v).sum()  # noqa: E731
    assert gain == pytest.approx(model(w), rel=1e-12, abs=1e-15)
    assert np.linalg.norm(w) <= r * (1 + 1e-9)
    assert mu >= 0 and np.all(lam + mu >= -1e-12)
    if mu > 0:
        assert np.linalg.norm(w) == pytest.approx(r, rel=1e-8)
    if case != "hard":
        np.testing.assert_allclose((lam + mu) * w, c, atol=1e-9)
    best = -np.inf
    for start in rng.normal(size=(30, P)):
        start *= 0.9 * r / np.linalg.norm(start)
        opt = minimize(lambda v: -model(v), start, jac=lambda v: -(c - lam * v), method="SLSQP",
                       constraints=[dict(type="ineq", fun=lambda v: r * r - v @ v, jac=lambda v: -2 * v)],
                       options=dict(ftol=1e-14, maxiter=500))
        if r * r - opt.x @ opt.x >= -1e-10:
            best = max(best, -opt.fun)
    assert gain >= best - 1e-9


def test_certified_at_the_returned_point_after_leaps():
    # Competition, over-fitted, n = 1e4: Newton leaps along the valley. The stationarity reported
    # must be the Newton decrement at the returned parameters, recomputed here independently
    # (autograd Hessian, numpy-free of the engine's closed forms): within 1e-3 relative, or both
    # below 1e-16 (rounding).
    from mixsim.fitting.derivatives import grad_hess_autograd as _grad_hess_autograd
    from mixsim.fitting.newton import stationarity
    truth = mixsim.preset("competition_k2")
    X, y = mixsim.sample(truth, 10_000, rng=2)
    res = mixsim.fit(X, y, 3, gate="competition", init="near_truth", truth=truth, rng=3)
    assert res.converged and res.stationarity <= 1e-10
    layout = _Layout("competition", None, "linear", "softplus", 3, 1, True)
    theta = _theta(layout, res.params)
    Xt, yt = torch.from_numpy(X)[None], torch.from_numpy(y)[None]
    g, H = _grad_hess_autograd(layout, theta, Xt, yt)
    from mixsim.fitting.bounds import VarianceBounds
    floor = torch.tensor([res.variance_floor], dtype=torch.float64)
    dec = stationarity(g, H, theta, VarianceBounds(floor, torch.full_like(floor, 1e300)), 3).item()
    assert dec <= 1e-10
    assert dec == pytest.approx(res.stationarity, rel=1e-3) or max(dec, res.stationarity) < 1e-16
