"""Hostile input (issue 15): every reproducer of the hostile-input pass, refused by name.

One table for the Python API (exception type + a message naming the argument), one for the CLI
(exit status 2, a message naming the argument / key / path, and no directory left behind when a
run is refused); then the reproducers whose fix is a value, not an error (numerical extremes,
numpy scalar types), the results directory (damaged metadata, --force, load_results) and the lock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixsim
import test_study_support as sup
from mixsim.study.results import read_table as _read_table
from mixsim.study.store import StudyLockedError, locked
from mixsim.cli import main
from mixsim.study import load_results, run_study

ROOT = Path(__file__).resolve().parent.parent
TRUTH = mixsim.preset("softmax_k2")
X, Y = mixsim.sample(TRUTH, 200, rng=0)
HUGE_GATE = TRUTH.replace(gate_weight=[[1e308], [0.0]], gate_bias=[1e308, 0.0])  # logits overflow to inf
HUGE_MEAN = TRUTH.replace(expert_weight=[[1e308], [1e308]], expert_bias=[1e308, 1e308])  # means overflow


def _fitted_model():
    return mixsim.GaussianMoE(2, rng=0).fit(X, Y)


# (id, call, exception type, pattern the message must contain: the argument's name)
API_CASES = [
    # 7. numerical extremes: errors name the argument, not an internal variance
    ("fit y*1e200", lambda: mixsim.fit(X, Y * 1e200, 2, rng=0), ValueError, r"too large.*rescale y"),
    ("variance_floor nan", lambda: mixsim.fit(X, Y, 2, rng=0, variance_floor=float("nan")), ValueError, "variance_floor"),
    ("sample gate overflow", lambda: mixsim.sample(HUGE_GATE, 50, rng=0), ValueError, "gate_weight / gate_bias"),
    ("sample mean overflow", lambda: mixsim.sample(HUGE_MEAN, 50, rng=0), ValueError, "expert_weight / expert_bias"),
    # 8. obscure crashes
    ("X of shape (n, 0)", lambda: mixsim.fit(np.zeros((50, 0)), Y[:50], 2), ValueError, r"X has 0 feature"),
    ("fit_batch B = 0", lambda: mixsim.fit_batch(np.zeros((0, 50, 1)), np.zeros((0, 50)), 2), ValueError, "at least one data set"),
    ("fit_batch n = 0", lambda: mixsim.fit_batch(np.zeros((1, 0, 1)), np.zeros((1, 0)), 2), ValueError, "one sample"),
    ("predict(0.5)", lambda: _fitted_model().predict(0.5), ValueError, r"X must have shape.*scalar"),
    ("bic(X, 1.0)", lambda: _fitted_model().bic(X, 1.0), ValueError, r"y must have shape"),
    ("sample({}, 5)", lambda: mixsim.sample({}, 5), TypeError, "params must be a MoEParams"),
    ("sample rng=-1", lambda: mixsim.sample(TRUTH, 5, rng=-1), ValueError, r"rng must be a seed >= 0"),
    ("fit rng=-1", lambda: mixsim.fit(X, Y, 2, rng=-1), ValueError, r"rng.*>= 0"),
    ("fit_batch rng=-1", lambda: mixsim.fit_batch(X[None], Y[None], 2, rng=-1), ValueError, r"rng must be a seed >= 0"),
    ("n = 1", lambda: mixsim.fit(X[:1], Y[:1], 2), ValueError, r"n_samples=1 is too small"),
    # 9. inconsistent acceptance
    ("tol inf", lambda: mixsim.fit(X, Y, 2, tol=float("inf")), ValueError, r"tol must be a finite number"),
    ("variance_floor < 0", lambda: mixsim.fit(X, Y, 2, variance_floor=-1e-3), ValueError, "variance_floor"),
    ("variance_floor 'abc'", lambda: mixsim.fit(X, Y, 2, variance_floor="abc"), ValueError, "variance_floor"),
    ("em_warmup < 0", lambda: mixsim.fit(X, Y, 2, em_warmup=-1), ValueError, "em_warmup"),
    ("unknown metric", lambda: mixsim.study.rate_table(pd.DataFrame({"study": ["s"], "gate": ["g"], "fitted_k": [2],
     "metric": ["D1"], "n": [100], "value": [0.1], "status": ["ok"], "converged": [True]}), metrics=["bogus"]),
     ValueError, r"unknown metric.*bogus"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_input_by_name(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


SMALL = ["--no-progress", "--set", "replications=1", "--set", "grid.values=[300]", "--set", "fit.fitted_k=[2]",
         "--set", 'metrics=["loglik"]']


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a directory")
    return tmp / "afile"


# (id, argv builder from a tmp folder -> (argv, path that must not exist afterwards or None), pattern in stderr)
CLI_CASES = [
    # 1. block size
    ("--block-size -1", lambda t: (["run", "smoke", "--out", str(t / "o"), "--block-size", "-1"], t / "o"), "--block-size"),
    ("--block-size 0", lambda t: (["run", "smoke", "--out", str(t / "o"), "--block-size", "0"], t / "o"), "--block-size"),
    # 3. output-directory problems
    ("--out is a file", lambda t: (["run", "smoke", "--out", str(_file(t))], None), "afile"),
    ("--out below a file", lambda t: (["run", "smoke", "--out", str(_file(t) / "sub")], _file(t) / "sub"), "afile"),
    ("rates --csv missing folder", lambda t: (["rates", str(t / "done"), "--csv", str(t / "nowhere" / "r.csv")], t / "nowhere"), "nowhere"),
    # 4. bad spec values refused before running
    ("fit.method=bogus", lambda t: (["run", "smoke", "--out", str(t / "o"), "--set", "fit.method=bogus"], t / "o"), "fit.method"),
    ("grid.values=[5,10]", lambda t: (["run", "smoke", "--out", str(t / "o"), "--set", "grid.values=[5,10]"], t / "o"), "grid"),
    ("variance_floor='abc'", lambda t: (["run", "smoke", "--out", str(t / "o"), "--set", 'fit.options.variance_floor="abc"'], t / "o"),
     "fit.options.variance_floor"),
    # 9. refused only after writing, before
    ("--n-jobs 0", lambda t: (["run", "smoke", "--out", str(t / "o"), "--n-jobs", "0"], t / "o"), "--n-jobs"),
    ("--scheduler without dask", lambda t: (["run", "smoke", "--out", str(t / "o"), "--scheduler", "tcp://x:1"], t / "o"), "--scheduler"),
    ("rates --metric bogus", lambda t: (["rates", str(t / "done"), "--metric", "bogus"], None), "bogus"),
]


@pytest.fixture(scope="module")
def done_dir(tmp_path_factory):
    """A small finished results directory (for the rates cases)."""
    out = tmp_path_factory.mktemp("done") / "done"
    assert main(["run", "smoke", "--out", str(out), "--no-progress", "--set", "replications=1", "--set", "grid.values=[300, 400]",
                 "--set", "fit.fitted_k=[2]", "--set", 'metrics=["D1", "loglik"]']) == 0
    return out


@pytest.mark.parametrize("build, pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input_with_exit_2(tmp_path, capsys, done_dir, build, pattern):
    os.symlink(done_dir, tmp_path / "done")
    argv, must_not_exist = build(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mixsim: error:" in err and pattern in err.split("mixsim: error:", 1)[1] and "Traceback" not in err
    if must_not_exist is not None:
        assert not must_not_exist.exists(), f"a refused run left {must_not_exist} behind"


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write in: a chmod 555 folder, or /sys for root (which ignores permissions)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no read-only location to try")
        yield Path("/sys/kernel")
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("command", ["run", "rates", "plot"])
def test_read_only_locations_exit_2_naming_the_path(capsys, done_dir, read_only, command):
    target = read_only / "mixsim_test_output"
    argv = {"run": ["run", "smoke", "--out", str(target), *SMALL], "rates": ["rates", str(done_dir), "--csv", str(target)],
            "plot": ["plot", str(done_dir), "--figures", str(target)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mixsim: error:" in err and str(read_only) in err and "Traceback" not in err
    assert not target.exists()


def test_a_directory_with_a_bad_recorded_block_size_is_repaired(tmp_path):
    out = tmp_path / "o"
    spec = sup.tiny_spec()
    full = run_study(spec, tmp_path / "ref", engine=sup.FAKE, progress=False)
    run_study(spec, out, engine=sup.FAKE, progress=False)
    meta = json.loads((out / "study.json").read_text())
    meta["block_size"] = -1  # what `--block-size -1` used to save; every rerun then did nothing
    (out / "study.json").write_text(json.dumps(meta))
    for p in sorted((out / "tasks").glob("*.json"))[:2]:
        p.unlink()
    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert json.loads((out / "study.json").read_text())["block_size"] == spec.block_size
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(full), check_exact=True)


def test_block_size_is_checked_by_run_study_too(tmp_path):
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="block_size"):
            run_study(sup.tiny_spec(), tmp_path / "o", block_size=bad, engine=sup.FAKE, progress=False)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# 6. damaged study.json; --force
# ---------------------------------------------------------------------------------------------

def test_damaged_metadata_is_named_and_force_recovers(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "smoke", "--out", str(out), *SMALL]) == 0
    (out / "study.json").write_text('{"format": 1, "study": "smo')  # truncated
    (out / "figures").mkdir()
    (out / "figures" / "old.png").write_bytes(b"old")
    capsys.readouterr()
    assert main(["run", "smoke", "--out", str(out), *SMALL]) == 2
    assert "study.json is damaged" in capsys.readouterr().err
    assert main(["status", str(out)]) == 2
    assert main(["run", "smoke", "--out", str(out), *SMALL, "--force"]) == 0
    assert not (out / "figures").exists()  # --force removes what the old results had drawn
    assert len(load_results(out)) == 1


# ---------------------------------------------------------------------------------------------
# 5. load_results checks the combined file against the task files
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "out"
    reference = run_study(sup.tiny_spec(), out, engine=sup.FAKE, progress=False)
    return out, reference


def test_edited_combined_file_is_rebuilt_from_the_tasks(finished):
    out, reference = finished
    edited = reference.copy()
    edited.loc[0, "value"] = 123.0
    edited.to_parquet(out / "results.parquet", index=False)
    pd.testing.assert_frame_equal(load_results(out), reference)
    pd.testing.assert_frame_equal(_read_table(out / "results.parquet"), reference)  # rewritten


def test_truncated_combined_file_is_rebuilt_from_the_tasks(finished):
    out, reference = finished
    raw = (out / "results.parquet").read_bytes()
    (out / "results.parquet").write_bytes(raw[: len(raw) // 2])
    pd.testing.assert_frame_equal(load_results(out), reference)
    pd.testing.assert_frame_equal(_read_table(out / "results.parquet"), reference)  # rewritten


def test_corrupt_task_files_are_reported_not_silently_dropped(finished):
    out, reference = finished
    victims = sorted((out / "tasks").glob("*.json"))[:2]
    for v in victims:
        v.write_bytes(v.read_bytes()[:50])
    with pytest.warns(RuntimeWarning, match="2 corrupt task file"):
        df = load_results(out)
    assert len(df) < len(reference)


# ---------------------------------------------------------------------------------------------
# 7. numerical extremes with a value as the answer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distance", [mixsim.hellinger, mixsim.total_variation])
def test_distances_on_a_large_common_offset_equal_the_unshifted_ones(distance):
    # Intercepts 16 apart on a common 1e17 offset (16 is the float spacing there); the distance is
    # translation invariant, so it must equal that of the same models without the offset.
    off = 1e17
    a = TRUTH.replace(expert_bias=TRUTH.expert_bias + off)
    b = TRUTH.replace(expert_bias=TRUTH.expert_bias + off + 16.0)
    a0, b0 = (TRUTH.replace(expert_bias=m.expert_bias - off) for m in (a, b))  # exact: Sterbenz
    value, reference = distance(a, b, n_mc=64), distance(a0, b0, n_mc=64)
    assert 0.5 < reference < 1.0
    assert value == pytest.approx(reference, abs=1e-9)  # quadrature accuracy is ~1e-11


@pytest.mark.parametrize("distance", [mixsim.hellinger, mixsim.total_variation])
def test_distances_at_huge_inputs_are_numbers_not_nan(distance):
    far = TRUTH.replace(expert_bias=TRUTH.expert_bias + [0.0, 1e3])
    value = distance(TRUTH, far, X=np.full((4, 1), 1e200))
    assert np.isfinite(value) and 0.0 <= value <= 1.0


def test_distances_with_a_component_narrower_than_the_float_spacing():
    # Expert 1 of `spiky` has variance 1e-300 (a spike at its mean), expert 0 equals the truth's, so
    # p - q = pi_1 (spike - N_1) and TV(x) = pi_1(x), the gate weight of expert 1 (closed form); the
    # spike adds nothing to int sqrt(p q), so hellinger^2 = 1 - int sqrt(pi_0 N_0 (pi_0 N_0 + pi_1 N_1)),
    # computed here by scipy's adaptive quadrature.
    spiky = TRUTH.replace(variance=[TRUTH.variance[0], 1e-300])
    X_eval = np.linspace(0.0, 1.0, 41)[:, None]
    logits = X_eval @ TRUTH.gate_weight.T + TRUTH.gate_bias
    pi1 = np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))
    assert mixsim.total_variation(spiky, TRUTH, X=X_eval) == pytest.approx(pi1.mean(), abs=1e-9)
    from scipy.integrate import quad
    from scipy.stats import norm

    def h_oracle(x, w1):
        m0, m1 = TRUTH.expert_weight[:, 0] * x + TRUTH.expert_bias
        s0, s1 = np.sqrt(TRUTH.variance)
        f = lambda y: np.sqrt((1 - w1) * norm.pdf(y, m0, s0) * ((1 - w1) * norm.pdf(y, m0, s0) + w1 * norm.pdf(y, m1, s1)))  # noqa: E731
        bc = quad(f, m0 - 12 * s0, m0 + 12 * s0, epsabs=1e-13, epsrel=1e-13, limit=200)[0]
        return np.sqrt(max(1.0 - bc, 0.0))

    X_few = X_eval[::8]
    expected = np.mean([h_oracle(x, w) for x, w in zip(X_few[:, 0], pi1[::8])])
    assert mixsim.hellinger(spiky, TRUTH, X=X_few) == pytest.approx(expected, abs=1e-7)
    wild = TRUTH.replace(variance=[1e300, 1e-300])  # nothing in common with the truth: both distances 1
    assert mixsim.hellinger(TRUTH, wild, n_mc=8) == pytest.approx(1.0, abs=1e-9)
    assert mixsim.total_variation(TRUTH, wild, n_mc=8) == pytest.approx(1.0, abs=1e-9)
    assert mixsim.hellinger(wild, wild, n_mc=8) == 0.0


def test_group_errors_with_an_underflowing_true_weight():
    g = TRUTH.replace(gate_bias=[-800.0, 0.0])  # exp(-800) underflows to 0
    same = mixsim.group_errors(g, g)
    assert all(v == 0.0 for v in same.values()), same  # was NaN (0 / 0)
    shifted = mixsim.group_errors(g.replace(gate_bias=[-800.0 + np.log(2.0), 0.0]), g)
    # relative weight error of cell 0: S / w* - 1 = 2 - 1 (up to the renormalisation by ~1 + e^-800)
    assert shifted["weight_single_unweighted"] == pytest.approx(1.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# 9. numpy scalar types accepted wherever Python ones are
# ---------------------------------------------------------------------------------------------

def test_numpy_scalars_are_accepted_like_python_ones():
    a = mixsim.fit(X, Y, np.int64(2), gate="softmax", top_k=np.int64(1), rng=np.int64(3), tol=np.float32(1e-5),
                   max_iter=np.int64(300), variance_floor=np.float64(1e-6), em_warmup=np.int64(10), n_init=np.int64(1))
    b = mixsim.fit(X, Y, 2, gate="softmax", top_k=1, rng=3, tol=float(np.float32(1e-5)), max_iter=300,
                   variance_floor=1e-6, em_warmup=10)
    assert a.params == b.params and a.params.top_k == 1 and type(a.params.top_k) is int


# ---------------------------------------------------------------------------------------------
# 2. the lock on a results directory
# ---------------------------------------------------------------------------------------------

def test_a_second_run_refuses_naming_the_lock(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with locked(out):  # another run holds the directory
        with pytest.raises(StudyLockedError, match=r"\.lock is held by another run \(pid"):
            run_study(sup.tiny_spec(), out, engine=sup.FAKE, progress=False)
        assert main(["run", "smoke", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert ".lock" in err and "--wait" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused runs


def test_wait_queues_behind_the_lock_holder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    holder = threading.Event()

    def hold():
        with locked(out):
            holder.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    holder.wait()
    t0 = time.monotonic()
    df = run_study(sup.tiny_spec(), out, engine=sup.FAKE, progress=False, wait=True)
    assert time.monotonic() - t0 > 1.0 and len(df) > 0
    t.join()


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mixsim.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


CONCURRENT = ["--no-progress", "--set", "replications=2", "--set", "grid.values=[300, 400]", "--set", "fit.fitted_k=[2]",
              "--set", 'metrics=["D1", "loglik"]', "--backend", "sequential"]


def test_two_concurrent_cli_runs_into_one_directory(tmp_path):
    """Documented behaviour: with --wait the second run waits for the first and then finds nothing
    left to do; without it, it refuses (exit 2, naming the lock) while the first holds the lock. Either
    way the table is complete and equal to a single run's."""
    shared, single = tmp_path / "shared", tmp_path / "single"
    first, second = _cli("run", "smoke", "--out", str(shared), *CONCURRENT, "--wait"), _cli(
        "run", "smoke", "--out", str(shared), *CONCURRENT, "--wait")
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert main(["run", "smoke", "--out", str(single), *CONCURRENT]) == 0
    cols = [c for c in load_results(single).columns if c != "seconds"]
    pd.testing.assert_frame_equal(load_results(shared)[cols], load_results(single)[cols], check_exact=True)
    runs = json.loads((shared / "study.json").read_text())["runs"]
    assert sorted(r["tasks"] for r in runs) == [0, 2]  # one run did the work, the other found it done
