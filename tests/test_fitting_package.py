"""The fitting package: one FitOptions behind fit / fit_batch / GaussianMoE, its public names, the
free-parameter count the study spec uses, and the model / truths split."""
import dataclasses
import importlib
import inspect

import numpy as np
import pytest

import mixsim
import mixsim.fitting as fitting
from mixsim.fitting.engine import EngineState
from mixsim.fitting.layout import Layout
from mixsim.model import n_free_params
from mixsim.options import FitOptions


@pytest.fixture(scope="module")
def data():
    return mixsim.sample(mixsim.preset("softmax_k2"), 300, rng=0)


def _same(a, b):
    """Two FitResults with bitwise equal numbers (seconds aside)."""
    return (a.params == b.params and a.log_likelihood == b.log_likelihood and a.n_iter == b.n_iter
            and np.array_equal(a.trace, b.trace) and a.status == b.status and a.stationarity == b.stationarity)


def test_no_module_is_shadowed_by_a_function():
    assert mixsim.fit is fitting.fit and mixsim.fit_batch is fitting.fit_batch
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mixsim.fit")
    for name in ("fit", "fit_batch", "FitResult", "FitOptions", "NearTruthInit", "ConvergenceWarning", "METHODS"):
        assert hasattr(fitting, name), name
    assert fitting.NearTruthInit is mixsim.NearTruthInit and fitting.ConvergenceWarning is mixsim.ConvergenceWarning


def test_option_keywords_are_the_fit_options_and_default_to_not_given():
    # fit_batch has one keyword per FitOptions field, each defaulting to the "not given" sentinel:
    # the defaults are written once, in FitOptions (issue 20).
    params = inspect.signature(mixsim.fit_batch).parameters
    for f in dataclasses.fields(FitOptions):
        assert params[f.name].default is fitting.DEFAULT, f.name
    assert params["options"].default is None


def test_an_explicit_keyword_wins_even_at_the_default_value(data):
    # issue 20: fit_batch(..., options=FitOptions(tol=1e-6), tol=1e-8) fits at 1e-8, not 1e-6.
    X, y = data
    Xs, ys = X[None], y[None]
    a = mixsim.fit_batch(Xs, ys, 3, rng=[4], options=FitOptions(tol=1e-6, gtol=1e-4), tol=1e-8, gtol=1e-10)[0]
    b = mixsim.fit_batch(Xs, ys, 3, rng=[4], tol=1e-8, gtol=1e-10)[0]
    c = mixsim.fit_batch(Xs, ys, 3, rng=[4], tol=1e-6, gtol=1e-4)[0]
    assert _same(a, b) and a.stationarity <= 1e-10
    assert not _same(a, c)  # the loose fit stops elsewhere: the test can tell them apart


def test_options_object_gives_the_same_fit_as_keywords(data):
    X, y = data
    kw = dict(n_init=2, tol=1e-7, max_iter=200, em_warmup=5, variance_floor=1e-4)
    a = mixsim.fit(X, y, 2, rng=3, **kw)
    b = mixsim.fit(X, y, 2, rng=3, options=FitOptions(**kw))
    assert _same(a, b) and b.variance_floor == a.variance_floor


def test_keywords_override_the_options_object(data):
    X, y = data
    a = mixsim.fit(X, y, 2, rng=3, method="newton", max_iter=200)
    b = mixsim.fit(X, y, 2, rng=3, options=FitOptions(method="em", max_iter=200), method="newton")
    assert _same(a, b) and b.method == "newton"


def test_bad_options_are_refused_by_name(data):
    X, y = data
    with pytest.raises(TypeError, match="options"):
        mixsim.fit(X, y, 2, options={"tol": 1e-6})
    with pytest.raises(ValueError, match="tol"):
        mixsim.fit(X, y, 2, options=FitOptions(), tol=-1.0)
    with pytest.raises(ValueError, match="method='em'"):
        mixsim.fit(X, y, 2, gate="competition", options=FitOptions(method="em"))


def test_gaussian_moe_passes_every_fit_option(data):
    X, y = data
    names = set(mixsim.GaussianMoE().get_params())
    assert set(FitOptions.names()) <= names
    model = mixsim.GaussianMoE(2, rng=1, variance_floor=1e-3, em_warmup=3, max_iter=300).fit(X, y)
    ref = mixsim.fit(X, y, 2, rng=1, variance_floor=1e-3, em_warmup=3, max_iter=300)
    assert _same(model.result_, ref)
    with pytest.raises(ValueError, match="phi"):
        mixsim.GaussianMoE(2, gate="competition", phi="relu").fit(X, y)
    with pytest.raises(ValueError, match="gate_bias"):
        mixsim.GaussianMoE(2, gate_bias=False).fit(X, y)


@pytest.mark.parametrize("gate, top_k, bias", [("softmax", None, True), ("topk", 2, True), ("sigmoid", None, True),
                                               ("competition", None, True), ("competition", None, False)])
@pytest.mark.parametrize("k, d", [(1, 1), (3, 2)])
def test_n_free_params_counts_what_the_fitter_fits(gate, top_k, bias, k, d):
    if top_k is not None and top_k > k:
        top_k = k
    name, canon_k = mixsim.gates.canonical_gate(gate, top_k, k)
    layout = Layout(name, canon_k, "linear", "softplus", k, d, bias)
    assert n_free_params(gate, top_k, "linear", k, d, bias) == layout.n_params
    truth = mixsim.random_truth("softmax", k, d, 0) if name == "softmax" else None
    if truth is not None:
        assert truth.n_free_params == n_free_params("softmax", None, "linear", k, d)


def test_n_free_params_refuses_bad_input():
    with pytest.raises(ValueError, match="k"):
        n_free_params("softmax", None, "linear", 0, 1)
    with pytest.raises(ValueError, match="gate"):
        n_free_params("nope", None, "linear", 2, 1)
    with pytest.raises(ValueError, match="expert"):
        n_free_params("softmax", None, "relu", 2, 1)


def test_engine_state_is_typed():
    fields = {f.name for f in dataclasses.fields(EngineState)}
    assert {"done", "converged", "stalled", "n_iter", "f", "last_change", "stationarity", "grad", "trace"} <= fields


def test_the_truth_names_have_one_home():
    """Issue 20: the presets and random truths live in mixsim.truths (and the package), not also in model."""
    import mixsim.model as M
    import mixsim.truths as T
    for name in ("preset", "list_presets", "random_truth", "RANDOM_TRUTH_GATES", "TruthPrior", "TRUTH_PRIORS",
                 "truth_margins"):
        assert not hasattr(M, name), name
        assert name in T.__all__
    for name in ("preset", "list_presets", "random_truth", "TruthPrior"):
        assert getattr(mixsim, name) is getattr(T, name)
    for name in M.__all__:
        assert hasattr(M, name), name
