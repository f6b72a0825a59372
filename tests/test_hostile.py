"""Nothing lost, nothing silent (issue 22): one test per numbered reproducer of the hostile pass,
each written as the reproducer with the behaviour now promised.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mixsim
import mixsim.nn as mnn
from mixsim.cli import EXIT_FAILED_UNITS, main
from mixsim.rates import compare_rates, estimate_rate, fit_rate
from mixsim.study import load_results, load_study, run_study, study_status
from mixsim.study.store import StudyLockedError, StudyMismatchError, locked

ROOT = Path(__file__).resolve().parent.parent
TRUTH = mixsim.preset("softmax_k2")
X, Y = mixsim.sample(TRUTH, 200, rng=0)
ROUTERS = ("token_choice", "expert_choice", "usmoe", "competition")


def _smoke(**over):
    """The smoke study, smaller (one n, fitted k = 2 only): 1 fit per unit, seconds."""
    sets = ["grid.values=[300]", "fit.fitted_k=[2]", "replications=2", "metrics=['D1','loglik']", "run.block_size=1"]
    return load_study(ROOT / "studies" / "smoke.toml", overrides=sets + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "D"
    run_study(_smoke(), out, progress=False, backend="sequential")
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ---------------------------------------------------------------------------------------------
# Data loss
# ---------------------------------------------------------------------------------------------

def test_1_a_deleted_task_file_is_named_and_the_combined_file_keeps_its_rows(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "D")
    full = load_results(out)
    combined = (out / "results.parquet").read_bytes()
    victim = sorted((out / "tasks").glob("*.json"))[0]
    victim.unlink()
    with pytest.warns(RuntimeWarning, match=r"incomplete: 1 planned unit\(s\) have no task file.*n=300, replicate=0"):
        partial = load_results(out)
    assert len(partial) < len(full)
    assert (out / "results.parquet").read_bytes() == combined  # not rewritten without the rows
    with pytest.warns(RuntimeWarning, match="incomplete"):  # and said again on the next read
        load_results(out)
    assert main(["rates", str(out), "--csv", str(tmp_path / "r.csv")]) == 0
    assert "study incomplete: 1/2 units complete, 0 failed, 1 not run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Silent garbage
# ---------------------------------------------------------------------------------------------

REFERENCE = mixsim.fit(X, Y, 2, rng=1)


@pytest.mark.parametrize("c", [1e-155, 1e-100, 1e-30, 1e30, 1e100, 1e150])
def test_2_y_at_extreme_scales_is_fitted_in_its_own_units(c):
    res = mixsim.fit(X, Y * c, 2, rng=1)
    ref = REFERENCE.params
    assert res.status == "converged" and res.converged
    # total log-likelihood in the units of y: log p(c y) = log p(y) - log c per sample
    assert res.log_likelihood == pytest.approx(REFERENCE.log_likelihood - len(Y) * np.log(c), rel=1e-12, abs=1e-8)
    # rounding of the rescaled data only (c is not a power of two): ~1e-12 relative
    np.testing.assert_allclose(res.params.expert_weight / c, ref.expert_weight, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.params.expert_bias / c, ref.expert_bias, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.params.variance / c**2, ref.variance, rtol=1e-8)
    np.testing.assert_allclose(res.params.gate_weight, ref.gate_weight, rtol=1e-7, atol=1e-7)


def test_2_a_batch_mixing_scales_rescales_each_data_set_alone():
    Xs, ys = np.stack([X, X]), np.stack([Y, Y * 1e-155])
    plain, tiny = mixsim.fit_batch(Xs, ys, 2, rng=[1, 1], n_init=2)
    assert plain.converged and tiny.converged
    assert tiny.log_likelihood == pytest.approx(plain.log_likelihood - len(Y) * np.log(1e-155), rel=1e-12)
    np.testing.assert_allclose(tiny.params.variance / 1e-310, plain.params.variance, rtol=1e-8)  # subnormal: ~1e-13


def test_2_y_too_small_for_float64_is_refused_by_name_and_no_fit_says_converged_with_nan():
    with pytest.raises(ValueError, match=r"ys: values too small .*rescale y"):
        mixsim.fit(X, Y * 1e-165, 2, rng=1)
    with pytest.raises(ValueError, match=r"ys: .*'tanh' experts"):
        mixsim.fit(X, Y * 1e-100, 2, rng=1, expert="tanh")
    from mixsim.fitting.result import refuse_non_finite  # the check every FitResult passes through
    bad = refuse_non_finite(dataclasses.replace(REFERENCE, log_likelihood=float("nan")))
    assert bad.status == "non_finite" and not bad.converged
    assert refuse_non_finite(REFERENCE) is REFERENCE


@pytest.mark.parametrize("c", [1e-170, 1e-200, 1e-300, 1e100])
def test_3_x_at_extreme_scales_is_not_read_as_constant(c):
    res = mixsim.fit(X * c, Y, 2, rng=1)
    assert res.converged
    assert res.log_likelihood == pytest.approx(REFERENCE.log_likelihood, rel=1e-10)
    np.testing.assert_allclose(res.params.gate_weight * c, REFERENCE.params.gate_weight, rtol=1e-7, atol=1e-7)
    model, ref = mixsim.GaussianMoE(2, rng=1).fit(X * c, Y), mixsim.GaussianMoE(2, rng=1).fit(X, Y)
    assert model.score(X * c, Y) == pytest.approx(ref.score(X, Y), rel=1e-10)


@pytest.mark.parametrize("router", ROUTERS)
def test_4_empty_and_all_padding_batches_give_zero_aux_losses_and_outputs(router):
    layer = mnn.CompeteSMoE(16, 32, 4, 2) if router == "competition" else mnn.MoE(16, 32, 4, 2, router=router)
    torch.manual_seed(0)
    for x, mask in ((torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)), (torch.randn(0, 16), None)):
        out, aux = layer(x, mask=mask)
        assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
        assert all(float(v.detach()) == 0.0 for v in aux.losses.values()), aux.losses
        assert float(aux.total().detach()) == 0.0


@pytest.mark.parametrize("router", ROUTERS)
def test_5_a_nan_token_gives_a_nan_output_for_that_token_only_with_every_router(router):
    layer = mnn.MoE(16, 32, 4, 2, router=router, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    x[2, 3] = float("nan")
    with torch.no_grad():
        out, _ = layer.eval()(x)
    assert torch.isnan(out[2]).all()  # passed through, as token choice does: never a silent 0
    assert torch.isfinite(out[[0, 1, 3, 4, 5]]).all()


def test_6_an_edited_study_json_is_detected(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "D")
    meta = json.loads((out / "study.json").read_text())
    meta["spec"]["replications"] = 6
    (out / "study.json").write_text(json.dumps(meta))
    with pytest.raises(StudyMismatchError, match=r"study.json was edited: its 'spec' hashes to"):
        study_status(out)
    with pytest.raises(StudyMismatchError, match="was edited"):
        load_results(out)
    assert main(["status", str(out)]) == 2
    assert "was edited" in capsys.readouterr().err


def test_7_the_mean_of_errors_near_the_float64_maximum_does_not_overflow():
    rng = np.random.default_rng(0)
    n = np.repeat([100, 200, 400, 800], 5)
    errors = n**-0.5 * rng.uniform(0.5, 1.0, n.size)
    huge = 1.7e308 * errors / errors.max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning either
        for average in ("mean", "median", "log"):
            a, b = estimate_rate(n, huge, average=average), estimate_rate(n, errors, average=average)
            assert np.isfinite(a.slope) and a.slope == pytest.approx(b.slope, abs=1e-9)  # scale-free
            assert a.note == b.note
        assert fit_rate(n, huge, average="mean").slope == pytest.approx(fit_rate(n, errors, average="mean").slope, abs=1e-9)


def test_8_fit_rate_gives_no_interval_from_single_replicates():
    rate = fit_rate([100, 1000], [0.1, 0.03])
    assert rate.slope == pytest.approx(np.log(0.3) / np.log(10))
    assert np.isnan(rate.boot_low) and np.isnan(rate.boot_high)  # not a zero-width interval
    assert np.isnan(rate.ci_low)


SPEC_HUGE = """
name = "huge"
root_seed = 1
replications = 2
x_dist = "uniform"
metrics = ["D1", "loglik"]
[truth]
preset = "softmax_k2"
gate_weight = [[1e308], [0.0]]
[grid]
values = [300]
[fit]
gates = ["softmax"]
fitted_k = [2]
init = "near_truth"
max_iter = 100
"""


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # inside the D1 loss, by design here
def test_9_an_infinite_metric_is_a_named_failure_and_the_run_exits_non_zero(tmp_path, capsys):
    spec = tmp_path / "huge.toml"
    spec.write_text(SPEC_HUGE)
    assert main(["run", str(spec), "--out", str(tmp_path / "D"), "--no-progress", "--backend", "sequential"]) == EXIT_FAILED_UNITS
    df = load_results(tmp_path / "D")
    d1 = df[df.metric == "D1"]
    assert (d1.status == "metric_error").all() and d1.error.str.contains("D1 = inf: not finite").all()
    assert study_status(tmp_path / "D").failed == 2
    assert (df[df.metric == "loglik"].status == "converged").all()  # the finite rows stay as they are


def non_finite_fit_batch(*args, **kwargs):
    """The real fitter, its results made non-finite as an overflowing fit's would be."""
    from mixsim.fitting.result import refuse_non_finite
    return [refuse_non_finite(dataclasses.replace(r, log_likelihood=float("nan"))) for r in mixsim.fit_batch(*args, **kwargs)]


def test_9_a_fit_with_a_non_finite_likelihood_is_never_a_converged_row(tmp_path):
    df = run_study(_smoke(), tmp_path / "D", progress=False, backend="sequential",
                   engine=mixsim.study.RunnerHooks(fit_batch=non_finite_fit_batch))
    assert not df.converged.any() and (df.error != "").all()
    d1, loglik = df[df.metric == "D1"], df[df.metric == "loglik"]
    assert (d1.status == "non_finite").all() and d1.error.str.contains("log-likelihood or estimate is not finite").all()
    assert (loglik.status == "metric_error").all() and loglik.error.str.contains("loglik = nan: not finite").all()


def test_10_aux_total_checks_the_weights_values():
    _, aux = mnn.MoE(16, 32, 4, 2)(torch.randn(5, 16))
    for bad in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match=r"weights\['balance'\] must be a finite number"):
            aux.total({"balance": bad})
    assert torch.isfinite(aux.total({"balance": np.float32(0.5), "z_loss": 1}))


# ---------------------------------------------------------------------------------------------
# Errors that name the input
# ---------------------------------------------------------------------------------------------

def test_11_cv_larger_than_the_sample_is_named():
    with pytest.raises(ValueError, match=r"cv must be an int between 2 and the number of samples \(20\); got 50"):
        mixsim.select_n_experts(X[:20], Y[:20], [1], criterion="cv", cv=50)


def test_12_an_unavailable_device_is_named():
    with pytest.raises(ValueError, match=r"device: 'tpu' is not a torch device"):
        mixsim.fit(X, Y, 2, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device: 'cuda' is not available"):
            mnn.MoE(16, 32, 4, 2, device="cuda")
    with pytest.raises(TypeError, match="device must be a str"):
        mnn.MoE(16, 32, 4, 2, device=3)


def test_13_a_ragged_x_is_named():
    with pytest.raises(ValueError, match=r"X must be a rectangular array of numbers"):
        mixsim.fit([[1.0], [2.0, 3.0]], [1, 2], 2)


def test_14_a_bad_schedule_step_in_a_checkpoint_is_named():
    layer = mnn.MoE(16, 32, 4, 2)
    state = layer.state_dict()
    state["_extra_state"] = {"schedule_step": "seven"}
    with pytest.raises(ValueError, match=r"extra state 'schedule_step' must be an int"):
        layer.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Promises contradicted, smaller
# ---------------------------------------------------------------------------------------------

def test_15_numpy_scalars_work_where_python_ones_do():
    rng = np.random.default_rng(0)
    n = np.repeat([100, 200, 400], 6)
    errors = n**-0.5 * rng.uniform(0.5, 1.5, n.size)
    assert estimate_rate(n, errors, level=np.float32(0.9)).slope == estimate_rate(n, errors, level=float(np.float32(0.9))).slope
    assert fit_rate(n, errors, level=np.float64(0.9), n_boot=0).level == 0.9
    cmp = compare_rates(n, errors, n, errors * 1.1, paired=np.bool_(True), n_boot=200)
    assert cmp.paired is True


def test_16_dask_without_a_scheduler_is_refused_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "D"
    assert main(["run", "smoke", "--out", str(out), "--backend", "dask"]) == 2
    assert "needs a scheduler address" in capsys.readouterr().err
    assert not out.exists()
    import dask
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # an address nothing listens on
        assert main(["run", "smoke", "--out", str(out), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "tcp://127.0.0.1:1" in capsys.readouterr().err
    assert not out.exists()


def test_17_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "smoke", "--out", ""]) == 2
    assert "out_dir (--out) must be a non-empty directory path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_18_run_exits_non_zero_when_every_unit_failed(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_HUGE.replace("1e308", "6e307").replace('"uniform"', '"normal"'))  # sampling overflows
    assert main(["run", str(spec), "--out", str(tmp_path / "D"), "--no-progress", "--backend", "sequential"]) == 3
    err = capsys.readouterr().err
    assert "2 unit(s) failed (exit status 3)" in err
    assert study_status(tmp_path / "D").failed == 2


def test_19_evaluate_has_the_wait_it_suggests(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "D")
    with locked(out):
        with pytest.raises(StudyLockedError, match="--wait"):
            mixsim.study.evaluate(out, ["D1"], progress=False)
        assert main(["evaluate", str(out), "--metric", "D1", "--no-progress"]) == 2
        assert "--wait" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--metric", "D1", "--no-progress", "--wait"]) == 0


def test_20_an_old_state_dict_without_extra_state_loads_strictly():
    layer = mnn.CompeteSMoE(16, 32, 4, 2)
    state = layer.state_dict()
    del state["_extra_state"]
    fresh = mnn.CompeteSMoE(16, 32, 4, 2)
    fresh.load_state_dict(state)  # strict by default
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    nested = torch.nn.Sequential(mnn.MoE(16, 32, 4, 2))
    old = {k: v for k, v in nested.state_dict().items() if not k.endswith("_extra_state")}
    nested.load_state_dict(old)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the kernel's parent-death signal is Linux's")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_21_killing_a_two_worker_run_stops_its_workers(tmp_path, how):
    cmd = [sys.executable, "-m", "mixsim.cli", "run", "smoke", "--out", str(tmp_path / "D"), "--n-jobs", "2",
           "--no-progress", "--set", "grid.values=[3000,4000]", "--set", "replications=6"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 60
    while len(_children(run.pid)) < 2 or not (tmp_path / "D" / "tasks").is_dir():
        assert time.time() < deadline and run.poll() is None, "the run did not start its workers"
        time.sleep(0.2)
    time.sleep(2.0)  # the workers are fitting
    workers = _children(run.pid)
    os.kill(run.pid, how)
    run.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived the run"
