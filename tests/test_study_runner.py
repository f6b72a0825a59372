"""The study runner: same tables whatever the parallelism, resumable after SIGKILL, corrupt files redone,
failures recorded, specs never mixed. Most tests use the fast fake fitter of test_study_support; the
parallel-equality tests use the real fitter on the smoke study."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import test_study_support as sup
from mixsim.study import COLUMNS, read_meta
from mixsim.study import (
    RunnerHooks,
    StudyMismatchError,
    load_results,
    load_study,
    plan_tasks,
    plan_units,
    replicate_seed,
    run_study,
    study_status,
)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "studies" / "smoke.toml"


@pytest.fixture
def counter(tmp_path, monkeypatch):
    path = tmp_path / "fits.count"
    monkeypatch.setenv(sup.COUNTER_ENV, str(path))
    return path


def task_files(out: Path) -> list[Path]:
    return sorted((out / "tasks").glob("*.json"))


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def test_table_has_the_tidy_columns_and_one_row_per_metric(tmp_path, counter):
    spec = sup.tiny_spec()
    df = run_study(spec, tmp_path / "out", engine=sup.FAKE, progress=False)
    assert list(df.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in df.dtypes.items()} == COLUMNS
    assert not df.duplicated(["n", "replicate", "gate", "fitted_k", "metric"]).any()
    assert sup.fits_counted(counter) == len(plan_units(spec))
    per_fit = df.groupby("fitted_k")["metric"].unique()
    assert "D1" in per_fit[2] and "D2" not in per_fit[2]  # D1 exact-fitted only ...
    assert "D2" in per_fit[3] and "D1" not in per_fit[3]  # ... D2 over-fitted only
    assert len(df.groupby(["n", "replicate", "fitted_k"])) == len(plan_units(spec))
    for (n, r), group in df.groupby(["n", "replicate"]):
        assert (group["seed"] == replicate_seed(spec.root_seed, n, r)).all()
    assert (df["study"] == "tiny").all() and (df["status"] == "converged").all()


def test_gates_at_one_replicate_see_the_same_data(tmp_path, monkeypatch):
    seen = []

    def spy(Xs, ys, k, **kw):
        seen.append((kw["gate"], kw["top_k"], k, ys.copy()))
        return sup.fake_fit_batch(Xs, ys, k, **kw)

    spec = sup.tiny_spec(**{"fit.gates": ["softmax", {"name": "topk", "top_k": 1}], "grid.values": [200]})
    run_study(spec, tmp_path / "out", engine=RunnerHooks(fit_batch=spy), backend="sequential", progress=False)
    assert len(seen) == 2 * 2 * 2  # gates x fitted k x blocks
    firsts = [ys for gate, top_k, k, ys in seen if ys.shape[0] == 2]
    for ys in firsts[1:]:
        np.testing.assert_array_equal(ys, firsts[0])


def test_metadata_records_spec_versions_commit_and_runs(tmp_path):
    out = tmp_path / "out"
    run_study(load_study(SMOKE).with_overrides({"replications": 1, "grid.values": [300]}), out,
              engine=sup.FAKE, progress=False)
    meta = read_meta(out)
    assert meta["spec"]["name"] == "smoke" and len(meta["spec_hash"]) == 64
    assert "name = \"smoke\"" in meta["spec_toml"]
    assert {"python", "numpy", "torch", "pandas", "joblib"} <= set(meta["versions"])
    assert "commit" in meta["git"]
    assert meta["runs"][-1]["tasks"] == 2 and meta["runs"][-1]["failed_units"] == 0


def test_csv_and_parquet_give_the_same_table(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    spec = sup.tiny_spec()
    a = run_study(spec, tmp_path / "a", engine=sup.FAKE, progress=False)
    assert (tmp_path / "a" / "results.parquet").is_file()
    monkeypatch.setattr("mixsim.study.results._have_pyarrow", lambda: False)
    b = run_study(spec, tmp_path / "b", engine=sup.FAKE, progress=False)
    assert (tmp_path / "b" / "results.csv").is_file() and not (tmp_path / "b" / "results.parquet").exists()
    for df in (a, b, load_results(tmp_path / "a" / "results.parquet"), load_results(tmp_path / "b" / "results.csv")):
        pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(a), check_exact=True)


def test_torch_threads_restored(tmp_path):
    import torch

    before = torch.get_num_threads()
    run_study(sup.tiny_spec(), tmp_path / "out", engine=sup.FAKE, progress=False)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------------
# identical tables whatever the parallelism (the real fitter)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_reference(tmp_path_factory):
    spec = load_study(SMOKE)
    return spec, run_study(spec, tmp_path_factory.mktemp("ref") / "out", n_jobs=1, progress=False)


@pytest.mark.parametrize("n_jobs, backend", [(2, "loky"), (2, "threading"), (1, "sequential")])
def test_same_table_with_any_n_jobs_and_backend(tmp_path, smoke_reference, n_jobs, backend):
    spec, ref = smoke_reference
    df = run_study(spec, tmp_path / "out", n_jobs=n_jobs, backend=backend, progress=False)
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(ref), check_exact=True)


def test_same_table_on_a_dask_cluster(tmp_path, smoke_reference):
    distributed = pytest.importorskip("distributed")
    spec, ref = smoke_reference
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        df = run_study(spec, tmp_path / "out", backend="dask", scheduler=cluster.scheduler_address, progress=False)
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(ref), check_exact=True)


def test_dask_backend_without_a_scheduler_says_what_to_do(tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(ValueError, match="scheduler"):
        run_study(sup.tiny_spec(), tmp_path / "out", backend="dask", engine=sup.FAKE, progress=False)


def test_block_size_is_kept_by_a_directory(tmp_path):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    run_study(spec, out, block_size=3, engine=sup.FAKE, progress=False)
    assert all(len(json.loads(p.read_text().rsplit("\n#", 1)[0])["task"]["replicates"]) == 3 for p in task_files(out))
    run_study(spec, out, engine=sup.FAKE, progress=False)  # resumes with the recorded size
    with pytest.raises(StudyMismatchError, match="block_size = 3"):
        run_study(spec, out, block_size=2, engine=sup.FAKE, progress=False)


# ---------------------------------------------------------------------------------------------
# resuming
# ---------------------------------------------------------------------------------------------

KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import test_study_support as sup
from mixsim.study import run_study
run_study(sup.tiny_spec(), {out!r}, n_jobs=1, backend="sequential", engine=sup.FAKE, progress=False)
"""


def test_sigkill_then_rerun_gives_the_uninterrupted_table(tmp_path, counter, monkeypatch):
    spec = sup.tiny_spec()
    reference = run_study(spec, tmp_path / "reference", engine=sup.FAKE, progress=False)
    counter.unlink()
    out = tmp_path / "killed"
    env = os.environ | {sup.SLEEP_ENV: "0.25"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out))], env=env)
    try:
        deadline = time.time() + 60
        while len(task_files(out)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = task_files(out)
    total_tasks = len(plan_tasks(spec))
    assert 3 <= len(done_before) < total_tasks, "the run should have been killed mid-way"
    mtimes = {p: p.stat().st_mtime_ns for p in done_before}
    units_done = sum(len(json.loads(p.read_text().rsplit("\n#", 1)[0])["units"]) for p in done_before)
    fitted_before_kill = sup.fits_counted(counter)
    counter.unlink()

    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert sup.fits_counted(counter) == len(plan_units(spec)) - units_done  # completed units not recomputed
    assert fitted_before_kill >= units_done  # (the killed task may have fitted without being written)
    assert {p: p.stat().st_mtime_ns for p in done_before} == mtimes  # and their files untouched
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(reference), check_exact=True)
    assert study_status(out).done


def test_rerun_of_a_complete_study_fits_nothing(tmp_path, counter):
    spec = sup.tiny_spec()
    a = run_study(spec, tmp_path / "out", engine=sup.FAKE, progress=False)
    counter.unlink()
    b = run_study(spec, tmp_path / "out", engine=sup.FAKE, progress=False)
    assert sup.fits_counted(counter) == 0
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_task_file_is_detected_and_redone(tmp_path, counter, damage):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    reference = run_study(spec, out, engine=sup.FAKE, progress=False)
    victim = task_files(out)[1]
    n_units = len(json.loads(victim.read_text().rsplit("\n#", 1)[0])["units"])
    raw = victim.read_bytes()
    victim.write_bytes({
        "truncate": raw[: len(raw) // 2],
        "flip": raw.replace(b'"value":', b'"value":1', 1),
        "empty": b"",
        "garbage": b"\x00\xff" * 10,
    }[damage])
    with pytest.warns(RuntimeWarning, match="1 corrupt task file"):  # no longer silently short ...
        assert len(load_results(out)) < len(reference)  # a damaged directory no longer reads as complete ...
    counter.unlink()
    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert sup.fits_counted(counter) == n_units  # ... and only the damaged task is redone
    assert len(list((out / "corrupt").iterdir())) == 1
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(reference), check_exact=True)


def test_stale_temporary_files_are_ignored_and_removed(tmp_path):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    ref = run_study(spec, out, engine=sup.FAKE, progress=False)
    stale = out / "tasks" / ".n000000200_softmax_k2_r0-1.json.tmp-99999-abcd"
    stale.write_text("{half a fi")
    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert not stale.exists()
    pd.testing.assert_frame_equal(df, ref)


# ---------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------

def test_failing_fit_is_recorded_the_study_goes_on_and_a_rerun_retries(tmp_path, counter, monkeypatch):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    monkeypatch.setenv(sup.FAIL_ENV, "300")
    df = run_study(spec, out, engine=sup.FAKE, progress=False)
    failed = df[df["status"] == "error"]
    assert len(failed) and set(failed["n"]) == {300}
    assert failed["error"].str.startswith("FloatingPointError: fake divergence").all()
    assert failed["value"].isna().all() and (failed["iterations"] == -1).all()
    assert {"weight_single_weighted", "D2", "loglik"} <= set(failed["metric"])  # the groups keys are expanded
    ok = df[df["status"] != "error"]
    assert len(ok.groupby(["n", "replicate", "fitted_k"])) + len(failed.groupby(["n", "replicate", "fitted_k"])) == len(plan_units(spec))
    n_failed_units = len(failed.groupby(["n", "replicate", "fitted_k"]))
    status = study_status(out)
    assert status.failed == n_failed_units and "fake divergence" in status.summary()

    monkeypatch.delenv(sup.FAIL_ENV)
    counter.unlink()
    df2 = run_study(spec, out, engine=sup.FAKE, progress=False)
    assert sup.fits_counted(counter) == n_failed_units
    assert not (df2["status"] == "error").any()
    assert not df2.duplicated(["n", "replicate", "gate", "fitted_k", "metric"]).any()
    assert len(df2) == len(run_study(spec, tmp_path / "clean", engine=sup.FAKE, progress=False))


def test_failing_metric_is_recorded_and_others_kept(tmp_path):
    engine = RunnerHooks(fit_batch=sup.fake_fit_batch, voronoi_loss=sup.failing_voronoi_loss)
    df = run_study(sup.tiny_spec(), tmp_path / "out", engine=engine, progress=False)
    bad = df[df["status"] == "metric_error"]
    assert set(bad["metric"]) == {"D1", "D2"} and bad["error"].str.contains("loss refused").all()
    assert df[df["metric"] == "loglik"]["value"].notna().all()


# ---------------------------------------------------------------------------------------------
# never mix specs
# ---------------------------------------------------------------------------------------------

def test_changed_spec_is_refused_with_a_clear_error_and_force_replaces(tmp_path, counter):
    spec = sup.tiny_spec()
    out = tmp_path / "out"
    run_study(spec, out, engine=sup.FAKE, progress=False)
    changed = spec.with_overrides({"fit.tol": 1e-9})
    with pytest.raises(StudyMismatchError, match=r"fit\.tol.*new --out.*--force"):
        run_study(changed, out, engine=sup.FAKE, progress=False)
    df = run_study(changed, out, engine=sup.FAKE, progress=False, force=True)
    assert read_meta(out)["spec_hash"] == changed.hash
    assert len(df) == len(run_study(changed, tmp_path / "fresh", engine=sup.FAKE, progress=False))


def test_description_change_is_no_mismatch(tmp_path):
    spec = sup.tiny_spec()
    run_study(spec, tmp_path / "out", engine=sup.FAKE, progress=False)
    run_study(spec.with_overrides({"description": "reworded"}), tmp_path / "out", engine=sup.FAKE, progress=False)


def test_task_files_without_metadata_are_refused(tmp_path):
    out = tmp_path / "out"
    run_study(sup.tiny_spec(), out, engine=sup.FAKE, progress=False)
    (out / "study.json").unlink()
    with pytest.raises(StudyMismatchError, match="no study.json"):
        run_study(sup.tiny_spec(), out, engine=sup.FAKE, progress=False)


# ---------------------------------------------------------------------------------------------
# network studies run through the same runner
# ---------------------------------------------------------------------------------------------

def test_nn_study_rows(tmp_path, counter):
    from mixsim.study import StudySpec

    spec = StudySpec.from_dict({"name": "nn_tiny", "kind": "nn", "replications": 2, "grid": {"values": [64, 128]},
                                "nn": {"n_experts": 4, "epochs": 1}})
    df = run_study(spec, tmp_path / "out", engine=RunnerHooks(nn_task=sup.fake_nn_task), progress=False)
    assert sup.fits_counted(counter) == 4  # one task per (n, replicate)
    assert set(df["gate"]) == {"softmax", "competition"} and (df["fitted_k"] == 4).all()
    assert len(df) == 2 * 2 * 2
    threads = run_study(spec, tmp_path / "threads", n_jobs=2, backend="threading", engine=RunnerHooks(nn_task=sup.fake_nn_task), progress=False)
    pd.testing.assert_frame_equal(sup.without_timing(df), sup.without_timing(threads))


def test_nn_error_text_becomes_status_error(tmp_path, monkeypatch):
    from mixsim.study import StudySpec

    monkeypatch.setenv(sup.FAIL_ENV, "128")
    spec = StudySpec.from_dict({"name": "nn_tiny", "kind": "nn", "replications": 1, "grid": {"values": [64, 128]},
                                "nn": {"n_experts": 4}})
    df = run_study(spec, tmp_path / "out", engine=RunnerHooks(nn_task=sup.fake_nn_task), progress=False)
    bad = df[df["status"] == "error"]
    assert list(bad["n"]) == [128] and list(bad["error"]) == ["RuntimeError: loss is NaN"]
    assert study_status(tmp_path / "out").failed == 1


# ---------------------------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------------------------

def test_torch_threads_is_one_inside_tasks_and_restored_by_the_last_thread_out():
    import threading

    import torch

    from mixsim.study import torch_threads

    before = torch.get_num_threads()
    inside, release = [], threading.Event()

    def task():
        with torch_threads(1):
            release.wait(5)
            inside.append(torch.get_num_threads())

    with torch_threads(1):
        workers = [threading.Thread(target=task) for _ in range(2)]
        for w in workers:
            w.start()
    # the outer block has ended, but the two tasks still run: the count must stay 1 for them
    release.set()
    for w in workers:
        w.join()
    assert inside == [1, 1]
    assert torch.get_num_threads() == before


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from mixsim.study.parallel import progress_bar as _progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with _progress_bar(3, 0, "x", progress=True) as bar:
        assert not bar.disable
    with _progress_bar(3, 0, "x", progress=False) as bar:
        assert bar.disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with _progress_bar(3, 0, "x", progress=True) as bar:
        assert bar.disable
