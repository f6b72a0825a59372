"""The ``mixsim`` command: the smoke study end to end in a subprocess, and named errors for bad specs."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixsim.cli import find_study, main
from mixsim.study import load_results, study_status

ROOT = Path(__file__).resolve().parent.parent


def mixsim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixsim.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_smoke_study_end_to_end_under_a_minute(tmp_path, capsys):
    out = tmp_path / "smoke"
    t0 = time.perf_counter()
    run = mixsim("run", "smoke", "--out", str(out), "--n-jobs", "1")
    elapsed = time.perf_counter() - t0
    assert run.returncode == 0, run.stderr
    assert elapsed < 60, f"smoke study took {elapsed:.1f} s"
    assert "8/8 complete" in run.stdout
    df = load_results(out)
    assert set(df["metric"]) >= {"D1", "D2", "hellinger", "tv", "loglik", "weight_single_weighted"}
    assert (df["status"] == "converged").all(), df[df["status"] != "converged"][["n", "fitted_k", "status", "error"]]

    assert main(["status", str(out), "-v"]) == 0  # (in-process from here on: a subprocess costs seconds of imports)
    assert "8/8 complete, 0 failed" in capsys.readouterr().out
    assert main(["run", "smoke", "--out", str(out), "--no-progress"]) == 0  # nothing left to do
    assert "8/8 complete" in capsys.readouterr().out

    pytest.importorskip("mixsim.rates")
    rates = mixsim("rates", str(out))
    assert rates.returncode == 0, rates.stderr
    assert (out / "rates.csv").is_file() and "D1" in rates.stdout


def test_run_with_overrides_and_status_in_process(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", str(ROOT / "studies" / "smoke.toml"), "--out", str(out), "--no-progress",
                 "--set", "replications=1", "--set", "grid.values=[300]", "--set", "fit.fitted_k=[2]",
                 "--set", 'metrics=["D1", "loglik"]', "--backend", "sequential"])
    assert code == 0, capsys.readouterr().err
    assert study_status(out).planned == 1
    assert set(load_results(out)["metric"]) == {"D1", "loglik"}


@pytest.mark.parametrize("override, key", [
    ("replicatons=3", "replicatons"),
    ("replications=many", "replications"),
    ("grid.values=[]", "grid.values"),
    ("fit.gates=[\"softmaxx\"]", "fit.gates[0].name"),
])
def test_bad_spec_exits_2_naming_the_key(tmp_path, capsys, override, key):
    code = main(["run", "smoke", "--out", str(tmp_path / "o"), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mixsim: error:") and key in err


def test_bad_spec_file_through_the_console(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nreplications = 2\n[truth]\npreset = "softmax_k2"\n[grid]\nvalues = []\n'
                   '[fit]\ngates = ["softmax"]\nfitted_k = [2]\n')
    run = mixsim("run", str(bad), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "grid.values is empty" in run.stderr
    assert "Traceback" not in run.stderr


def test_mismatched_directory_exits_2_with_advice(tmp_path, capsys):
    out = str(tmp_path / "o")
    args = ["run", "smoke", "--out", out, "--no-progress", "--set", "replications=1", "--set", "grid.values=[300]",
            "--set", "fit.fitted_k=[2]", "--set", 'metrics=["loglik"]']
    assert main(args) == 0
    assert main(args + ["--set", "fit.tol=1e-7"]) == 2
    err = capsys.readouterr().err
    assert "fit.tol" in err and "--force" in err and "--out" in err


def test_list_shows_studies_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("smoke", "softmax_exact", "softmax_overfit", "competition_exact", "competition_overfit", "softmax_k2", "competition_k2"):
        assert name in out


def test_unknown_study_name(capsys):
    assert main(["run", "no_such_study"]) == 2
    assert "no study file 'no_such_study'" in capsys.readouterr().err


def test_find_study_by_name_or_path():
    assert find_study("smoke") == ROOT / "studies" / "smoke.toml" or find_study("smoke").name == "smoke.toml"
    assert find_study(str(ROOT / "studies" / "smoke.toml")).is_file()


def test_status_of_a_non_results_directory(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "not a study results directory" in capsys.readouterr().err


def test_plot_command_calls_plot_study_with_dir_figures(tmp_path, capsys, monkeypatch):
    plots = pytest.importorskip("mixsim.plots")  # drawing itself is tested with mixsim.plots
    calls = []

    def fake_plot_study(results_dir, out_dir=None):
        calls.append((Path(results_dir), Path(out_dir)))
        return [Path(out_dir) / "error_vs_n_D1.png"]

    monkeypatch.setattr(plots, "plot_study", fake_plot_study)
    assert main(["plot", str(tmp_path)]) == 0
    assert calls == [(tmp_path, tmp_path / "figures")]
    assert capsys.readouterr().out.strip() == str(tmp_path / "figures" / "error_vs_n_D1.png")
    assert main(["plot", str(tmp_path), "--figures", str(tmp_path / "f")]) == 0
    assert calls[-1][1] == tmp_path / "f"
