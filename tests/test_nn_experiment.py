"""The network study (mixsim.study.nn_task, moved out of mixsim.nn by issue 20): the run_nn_task
contract, seeding, the table, the figure, the spec; the layer library says where the old names went."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixsim.nn as mnn
import mixsim.study as study
import mixsim.study.nn_task as exp
from mixsim.plots import plot_sample_efficiency

TINY = {"n_experts": 4, "d": 8, "d_hidden": 8, "teacher_hidden": 8, "steps": 6, "batch_size": 32, "n_test": 128}
SPEC = Path(__file__).resolve().parents[1] / "studies" / "nn_sample_efficiency.toml"


def test_run_nn_task_contract():
    records = study.run_nn_task(TINY, 50, 3)
    assert len(records) == len(mnn.ROUTERS) * len(study.NN_METRICS)
    for rec in records:
        assert set(rec) == {"router", "metric", "value", "seconds", "status", "iterations"}
        assert rec["router"] in mnn.ROUTERS and rec["metric"] in study.NN_METRICS
        assert isinstance(rec["value"], float) and math.isfinite(rec["value"]) and rec["value"] > 0
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0
        assert rec["status"] == "ok" and rec["iterations"] == TINY["steps"]


def test_same_seed_same_numbers_and_paired_routers():
    a = study.run_nn_task({**TINY, "routers": ["token_choice", "competition"]}, 40, 11)
    b = study.run_nn_task({**TINY, "routers": ["competition"]}, 40, 11)  # a router's result does not depend on the others
    c = study.run_nn_task({**TINY, "routers": ["competition"]}, 40, 12)
    value = lambda recs, r: [x["value"] for x in recs if x["router"] == r]  # noqa: E731
    assert value(a, "competition") == value(b, "competition")
    assert value(b, "competition") != value(c, "competition")


def test_epochs_option_sets_the_steps():
    rec = study.run_nn_task({**TINY, "routers": ["token_choice"], "epochs": 2}, 70, 0)  # 3 batches of 32 per epoch
    assert rec[0]["iterations"] == 6


def test_a_failing_router_is_recorded_and_the_others_run(monkeypatch):
    real = exp.train_regressor

    def flaky(router, *args, **kwargs):
        if router == "usmoe":
            raise RuntimeError("boom")
        return real(router, *args, **kwargs)

    monkeypatch.setattr(exp, "train_regressor", flaky)
    records = study.run_nn_task({**TINY, "routers": ["token_choice", "usmoe"]}, 30, 0)
    bad = [r for r in records if r["router"] == "usmoe"]
    assert all(r["status"] == "error: RuntimeError: boom" and math.isnan(r["value"]) for r in bad)
    assert all(r["status"] == "ok" for r in records if r["router"] == "token_choice")


@pytest.mark.parametrize("options,key", [
    ({"stepz": 3}, "stepz"),
    ({"routers": ["softmax"]}, "routers"),
    ({"routers": "token_choice"}, "routers"),
    ({"lr": -1.0}, "lr"),
    ({"d": 0}, "'d'"),
    ({"teacher_router": "x"}, "teacher_router"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        study.run_nn_task({**TINY, **options}, 10, 0)


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="n_train"):
        study.run_nn_task(TINY, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        study.run_nn_task(TINY, 10, -1)
    with pytest.raises(TypeError, match="options"):
        study.run_nn_task(["d", 8], 10, 0)


def test_run_experiment_table_and_figure(tmp_path):
    opts = {**TINY, "routers": ["token_choice", "expert_choice"]}
    df = study.run_nn_experiment(opts, [16, 64], replications=2, seed=1)
    assert list(df.columns) == ["n", "replicate", "seed", "router", "metric", "value", "seconds", "status", "iterations"]
    assert len(df) == 2 * 2 * 2 * len(study.NN_METRICS)
    assert df.groupby(["n", "replicate"])["seed"].nunique().eq(1).all()  # one seed per task, shared by routers
    assert df["seed"].iloc[0] == study.replicate_seed(1, 16, 0)
    path = tmp_path / "figs" / "fig.png"
    ax = plot_sample_efficiency(df, path=path)
    assert path.stat().st_size > 1000
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert {t.get_text().split(" ")[0] for t in ax.get_legend().get_texts()} == {"token_choice", "expert_choice"}


def test_figure_on_given_axes_and_errors():
    from matplotlib.figure import Figure

    rows = [{"router": r, "n": n, "metric": "excess_mse", "value": v * 100 / n, "status": "ok"}
            for r in ("a", "b") for n in (100, 1000) for v in (1.0, 2.0)]
    df = pd.DataFrame(rows)
    ax = Figure().add_subplot()
    assert plot_sample_efficiency(df, ax=ax) is ax
    summary = exp_summary(df)
    assert np.allclose(summary["center"], [np.sqrt(2), np.sqrt(2) / 10] * 2)
    runner_style = df.rename(columns={"router": "gate"})  # the study runner's column name
    assert np.allclose(exp_summary(runner_style)["center"], summary["center"])
    with pytest.raises(ValueError, match="no successful rows"):
        plot_sample_efficiency(df, metric="test_mse")


def exp_summary(df):
    from mixsim.plots import summarise

    return summarise(df, "excess_mse")


def test_study_spec_is_valid():
    import tomllib

    spec = tomllib.loads(SPEC.read_text())
    assert spec["kind"] == "nn" and spec["replications"] >= 2
    study.check_nn_options(spec["nn"])  # every option is known and valid
    assert list(study.parse_grid(spec["grid"])) == [128, 362, 1024, 2896, 8192]
    loaded = study.load_study(SPEC)
    assert loaded.kind == "nn" and loaded.nn["n_experts"] == 4


def test_old_layer_names_say_where_they_went():
    for old, new in [("run_nn_task", "mixsim.study.run_nn_task"), ("run_experiment", "mixsim.study.run_nn_experiment"),
                     ("plot_sample_efficiency", "mixsim.plots.plot_sample_efficiency"),
                     ("DEFAULT_OPTIONS", "mixsim.study.nn_options.DEFAULT_OPTIONS")]:
        with pytest.raises(AttributeError, match=new.replace(".", r"\.")):
            getattr(mnn, old)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        mnn.nonsense  # noqa: B018
    assert not hasattr(mnn, "run_nn_task")


def test_python_m_mixsim_nn_points_to_the_mixsim_command(capsys):
    from mixsim.nn.__main__ import main

    assert main([]) == 2
    assert "mixsim run nn_sample_efficiency" in capsys.readouterr().err


@pytest.mark.slow
def test_error_falls_with_n():
    # A small version of the study: with 16x more data, every router's held-out excess error
    # falls (geometric mean over 3 seeds). Minutes on one core.
    opts = {"routers": list(mnn.ROUTERS), "steps": 1000}
    df = study.run_nn_experiment(opts, [128, 2048], replications=3, seed=0)
    ex = df[df["metric"] == "excess_mse"].assign(lv=lambda d: np.log10(d["value"]))
    means = ex.groupby(["router", "n"])["lv"].mean().unstack()
    assert (means[2048] < means[128] - 0.3).all()  # at least a factor 2
