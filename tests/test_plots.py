"""Figures drawn from small synthetic result tables whose errors follow known power laws.

Each check compares what is drawn with an independent computation: the legend's slope with
:func:`mixsim.rates.fit_rate` on the same rows, the theory line's slope with
:func:`mixsim.rates.theory_rate`, local slopes with differences of log means.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mixsim._results import COLUMNS  # noqa: E402
from mixsim.losses import GROUPS, group_error_keys  # noqa: E402
from mixsim.plots import (  # noqa: E402
    PlotWarning,
    error_vs_n_data,
    plot_error_vs_n,
    plot_groups,
    plot_local_slopes,
    plot_study,
    plotted_data,
    save_figure,
)
from mixsim.rates import fit_rate, theory_rate  # noqa: E402

SIZES = (500, 1000, 2000, 5000, 10000)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def synthetic(laws: dict[tuple[str, int, str], float], sizes=SIZES, reps: int = 12, seed: int = 0,
              study: str = "syn") -> pd.DataFrame:
    """A results table: metric of (gate, fitted_k) = 2 n^slope times log-normal(0, 0.3) noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for (gate, k, metric), slope in laws.items():
        for n in sizes:
            for r in range(reps):
                rows.append(dict(study=study, n=n, replicate=r, gate=gate, fitted_k=k, metric=metric,
                                 value=2 * n ** slope * rng.lognormal(0, 0.3), seed=r, converged=True, iterations=3,
                                 seconds=0.0, status="converged", grad_norm=0.0, error=""))
    return pd.DataFrame(rows)[list(COLUMNS)]


EXACT = {("softmax", 2, "D1"): -0.5, ("competition", 2, "D1"): -0.45}


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def series_rows(df: pd.DataFrame, gate: str, k: int, metric: str) -> pd.DataFrame:
    return df[(df["gate"] == gate) & (df["fitted_k"] == k) & (df["metric"] == metric)]


# ---------------------------------------------------------------------------------------------
# error vs n
# ---------------------------------------------------------------------------------------------

def test_error_vs_n_has_log_axes_and_labels():
    ax = plot_error_vs_n(synthetic(EXACT), "D1")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "sample size n"
    assert "D1" in ax.get_ylabel() and "mean" in ax.get_ylabel()
    assert "Monte Carlo s.e." in ax.get_legend().get_title().get_text()  # what the bars mean


@pytest.mark.parametrize("average", ["mean", "logmean"])
def test_legend_holds_the_slope_and_interval_of_fit_rate(average):
    df = synthetic(EXACT)
    texts = legend_texts(plot_error_vs_n(df, "D1", average=average))
    for gate in ("softmax", "competition"):
        rows = series_rows(df, gate, 2, "D1")
        rate = fit_rate(rows["n"], rows["value"], average=average, n_boot=0)
        expected = f"{gate} k=2: slope {rate.slope:.2f} [{rate.ci_low:.2f}, {rate.ci_high:.2f}]"
        assert expected in texts, texts


def test_fitted_line_is_the_least_squares_line_over_the_points():
    df = synthetic({("softmax", 2, "D1"): -0.5})
    ax = plot_error_vs_n(df, "D1", theory=False)
    rows = series_rows(df, "softmax", 2, "D1")
    rate = fit_rate(rows["n"], rows["value"], n_boot=0)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 1
    x, y = (np.asarray(v, dtype=float) for v in solid[0].get_data())
    np.testing.assert_allclose(x, [SIZES[0], SIZES[-1]])
    np.testing.assert_allclose(np.log(y), rate.intercept + rate.slope * np.log(x), rtol=1e-12)
    points = plotted_data(ax).query("kind == 'point'")
    np.testing.assert_allclose(points["value"], rate.average, rtol=1e-12)  # the markers sit at the means


def dashed_slopes(ax) -> list[float]:
    out = []
    for line in ax.get_lines():
        if line.get_linestyle() == "--":
            x, y = (np.asarray(v, dtype=float) for v in line.get_data())
            out.append(float(np.log(y[-1] / y[0]) / np.log(x[-1] / x[0])))
    return out


def test_theory_lines_where_theory_rate_has_one():
    laws = {("softmax", 3, "expert_slope_multi_unweighted"): -0.3, ("sigmoid", 3, "expert_slope_multi_unweighted"): -0.3}
    ax = plot_error_vs_n(synthetic(laws), "expert_slope_multi_unweighted", true_k=2)
    exponent, tag = theory_rate("softmax", 3, 2, "expert_slope_multi_unweighted")
    # one dashed line: theory has nothing for the sigmoid gate
    np.testing.assert_allclose(dashed_slopes(ax), [exponent], rtol=1e-12)
    assert f"softmax k=3 theory: $n^{{-1/4}}$ [{tag}]" in legend_texts(ax)


def test_no_theory_line_without_true_k_or_when_turned_off():
    df = synthetic(EXACT)
    assert dashed_slopes(plot_error_vs_n(df, "D1")) == []
    assert dashed_slopes(plot_error_vs_n(df, "D1", true_k=2, theory=False)) == []


@pytest.mark.parametrize("anchor", ["centre", "first"])
def test_theory_line_anchor(anchor):
    df = synthetic({("softmax", 2, "D1"): -0.4})
    data = error_vs_n_data(df, "D1", true_k=2, anchor=anchor)
    th, fit, pts = (data[data["kind"] == k] for k in ("theory", "fit", "point"))
    n, y = th["n"].to_numpy(float), th["value"].to_numpy(float)
    if anchor == "first":
        assert y[0] == pytest.approx(pts["value"].iloc[0], rel=1e-12)
    else:  # through the fitted line's value at the geometric centre of the sizes
        centre = np.exp(np.mean(np.log(SIZES)))
        slope = fit["slope"].iloc[0]
        intercept = np.log(fit["value"].iloc[0]) - slope * np.log(SIZES[0])
        on_theory = y[0] * (centre / n[0]) ** th["exponent"].iloc[0]
        assert on_theory == pytest.approx(np.exp(intercept + slope * np.log(centre)), rel=1e-10)


def test_bands_are_the_monte_carlo_standard_error_or_the_quartiles():
    df = synthetic({("softmax", 2, "D1"): -0.5})
    at = series_rows(df, "softmax", 2, "D1").query("n == 1000")["value"].to_numpy()
    se = error_vs_n_data(df, "D1", band="se").query("kind == 'point' and n == 1000").iloc[0]
    half = at.std(ddof=1) / np.sqrt(at.size)
    assert (se["low"], se["high"]) == pytest.approx((at.mean() - half, at.mean() + half), rel=1e-12)
    q = error_vs_n_data(df, "D1", band="quartiles", average="median").query("kind == 'point' and n == 1000").iloc[0]
    assert (q["low"], q["value"], q["high"]) == pytest.approx(tuple(np.quantile(at, [0.25, 0.5, 0.75])), rel=1e-12)
    with pytest.raises(ValueError, match="quartiles"):
        plot_error_vs_n(df, "D1", band="se", average="median")


def test_nonpositive_values_are_dropped_with_a_warning():
    df = synthetic({("softmax", 2, "D1"): -0.5})
    df.loc[[0, 1], "value"] = [0.0, -1.0]
    with pytest.warns(PlotWarning, match=r"NaN or <= 0 .*: syn softmax k=2 D1 \(2 of 60\)$"):
        ax = plot_error_vs_n(df, "D1")
    kept = df[df["value"] > 0]
    rate = fit_rate(kept["n"], kept["value"], n_boot=0)
    assert any(f"slope {rate.slope:.2f} [{rate.ci_low:.2f}" in t for t in legend_texts(ax))
    points = plotted_data(ax).query("kind == 'point'")
    assert list(points["dropped"]) == [2, 0, 0, 0, 0] and list(points["replicates"]) == [10, 12, 12, 12, 12]


def test_a_series_zero_in_every_replicate_is_left_out_silently():
    df = synthetic({("softmax", 2, "D1"): -0.5, ("softmax", 2, "variance_multi_unweighted"): -0.5})
    df.loc[df["metric"] == "variance_multi_unweighted", "value"] = 0.0  # no multi-atom cells when exact-fitted
    data = error_vs_n_data(df, ["D1", "variance_multi_unweighted"])  # warnings are errors: none expected
    assert set(data["metric"]) == {"D1"}


def test_failed_fits_are_left_out():
    df = synthetic({("softmax", 2, "D1"): -0.5})
    df.loc[[0, 1, 2], ["status", "value"]] = ["error", np.nan]
    df.loc[3, "status"] = "metric_error"
    points = error_vs_n_data(df, "D1").query("kind == 'point'")  # no warning: failures are not values
    assert list(points["replicates"]) == [8, 12, 12, 12, 12] and list(points["dropped"]) == [0] * 5


def test_a_single_n_draws_points_but_no_line():
    df = synthetic({("softmax", 2, "D1"): -0.5}, sizes=(1000,))
    ax = plot_error_vs_n(df, "D1", true_k=2)
    assert [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"] == []
    assert legend_texts(ax)[0] == "softmax k=2: one n, no slope"
    assert set(plotted_data(ax)["kind"]) == {"point"}  # no fitted line, and no theory line of zero length
    local = plot_local_slopes(df, "D1")
    assert local.get_lines() == [] and plotted_data(local).empty


def test_two_sizes_give_a_slope_without_interval():
    ax = plot_error_vs_n(synthetic({("softmax", 2, "D1"): -0.5}, sizes=(1000, 4000)), "D1")
    assert "(two sizes: no interval)" in legend_texts(ax)[0]


def test_by_colours_series_and_keeps_them_apart():
    laws = {("softmax", 3, "D2"): -0.5, ("softmax", 4, "D2"): -0.5, ("competition", 3, "D2"): -0.5}
    ax = plot_error_vs_n(synthetic(laws), "D2", by="gate")
    solid = {ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"}
    assert len(solid) == 2  # one colour per gate; the two softmax k differ by marker
    assert sum("softmax k=4: slope" in t for t in legend_texts(ax)) == 1


# ---------------------------------------------------------------------------------------------
# groups, local slopes
# ---------------------------------------------------------------------------------------------

def group_table(reps: int = 8) -> pd.DataFrame:
    """Over-fitted softmax and competition (k = 3 > k* = 2): multi-cell errors at -1/4, singles at -1/2."""
    laws = {}
    for gate in ("softmax", "competition"):
        for key in group_error_keys(gate):
            laws[(gate, 3, key)] = -0.25 if "_multi_" in key else -0.5
    return synthetic(laws, reps=reps)


def test_plot_groups_one_panel_per_group_with_slopes():
    df = group_table()
    axes = plot_groups(df, true_k=2)
    titles = [ax.get_title() for ax in axes[:5]]
    assert titles[0].startswith("weights") and titles[1].startswith("gate slopes") and titles[4].startswith("variances")
    for ax in axes[:5]:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_ylabel().startswith("unweighted")
    # expert slopes, multi cells: the legend slope is fit_rate's on the multi-cell rows
    rows = series_rows(df, "competition", 3, "expert_slope_multi_unweighted")
    rate = fit_rate(rows["n"], rows["value"], n_boot=0)
    assert f"competition k=3 (multi): slope {rate.slope:.2f} [{rate.ci_low:.2f}, {rate.ci_high:.2f}]" in legend_texts(axes[2])
    # competition has no gate slope: that panel holds softmax only
    assert all(t.startswith("softmax") for t in legend_texts(axes[1]))
    np.testing.assert_allclose(sorted(dashed_slopes(axes[1])), [-1 / 8])
    # one colour per gate across panels
    colours = [{ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"} for ax in (axes[0], axes[1])]
    assert colours[1] <= colours[0]


def test_plot_groups_auto_cells_without_true_k_and_weighted():
    df = group_table(reps=4)
    axes = plot_groups(df, weighting="weighted", cells="auto")
    assert "(multi)" in legend_texts(axes[0])[0] and axes[0].get_ylabel().startswith("weighted")
    assert set(plotted_data(axes[0].figure)["metric"]) == {f"{g}_multi_weighted" for g in GROUPS}


def test_plot_groups_needs_group_errors():
    with pytest.raises(ValueError, match="groups"):
        plot_groups(synthetic(EXACT))


def test_local_slopes_are_differences_of_log_means():
    df = synthetic(EXACT)
    ax = plot_local_slopes(df, "D1", true_k=2)
    assert ax.get_xscale() == "log" and "local slope" in ax.get_ylabel()
    for gate in ("softmax", "competition"):
        rows = series_rows(df, gate, 2, "D1")
        means = rows.groupby("n")["value"].mean()
        expected = np.diff(np.log(means.to_numpy())) / np.diff(np.log(means.index.to_numpy(dtype=float)))
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == f"{gate} k=2"]
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        np.testing.assert_allclose(y, expected, rtol=1e-12)
        np.testing.assert_allclose(x, np.sqrt(np.array(SIZES[:-1]) * np.array(SIZES[1:])), rtol=1e-12)
    flat = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(flat) == 2 and all(np.allclose(ln.get_ydata(), -0.5) for ln in flat)


# ---------------------------------------------------------------------------------------------
# saving, a study's figures
# ---------------------------------------------------------------------------------------------

def test_save_figure_writes_png_pdf_and_the_plotted_numbers(tmp_path):
    df = synthetic(EXACT)
    ax = plot_error_vs_n(df, "D1", true_k=2)
    paths = save_figure(ax.figure, tmp_path / "sub" / "d1")
    assert [p.name for p in paths] == ["d1.png", "d1.pdf", "d1.csv"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    csv = pd.read_csv(paths[2])
    points = csv[(csv["kind"] == "point") & (csv["gate"] == "softmax")]
    means = series_rows(df, "softmax", 2, "D1").groupby("n")["value"].mean()
    np.testing.assert_allclose(points["value"], means.to_numpy(), rtol=1e-12)  # the CSV holds what is drawn
    assert set(csv["kind"]) == {"point", "fit", "theory"}
    fit = csv[(csv["kind"] == "fit") & (csv["gate"] == "softmax")]
    assert re.search(rf"softmax k=2: slope {fit['slope'].iloc[0]:.2f} ", " ".join(legend_texts(ax)))


def test_plot_study_draws_a_results_directory_through_the_cli(tmp_path, capsys):
    import test_study_support as sup
    from mixsim.cli import main
    from mixsim.study import run_study

    out = tmp_path / "res"
    run_study(sup.tiny_spec(metrics=["D1", "D2", "groups"]), out, engine=sup.FAKE, progress=False)
    # `mixsim plot DIR` is plot_study(DIR, DIR/figures): run once, through the command (figures take seconds)
    with pytest.warns(PlotWarning) as record:
        assert main(["plot", str(out)]) == 0
    # the fake fitter moves every gate bias by the same amount, so most weight errors are exactly 0:
    # one warning per group figure, naming every series that lost values
    assert len(record) == 2 and "tiny softmax k=2 weight_single_unweighted (7 of 9)" in str(record[0].message)
    written = [Path(line) for line in capsys.readouterr().out.split()]
    names = {p.name for p in written}
    for stem in ("error_vs_n_D1", "error_vs_n_D2", "local_slopes_D1", "local_slopes_D2", "groups_unweighted",
                 "groups_weighted"):
        assert {f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"} <= names
    assert len(written) == 18 and all(p.parent == out / "figures" and p.stat().st_size > 0 for p in written)
    d1 = pd.read_csv(out / "figures" / "error_vs_n_D1.csv")
    assert (d1.loc[d1["kind"] == "theory", "exponent"] == -0.5).all()  # true k read from the study's metadata
    assert plt.get_fignums() == []  # drawn without pyplot: nothing left open


def test_plot_study_with_nothing_to_plot_warns(tmp_path):
    import test_study_support as sup
    from mixsim.study import run_study

    out = tmp_path / "res"
    run_study(sup.tiny_spec(metrics=["loglik"]), out, engine=sup.FAKE, progress=False)
    with pytest.warns(PlotWarning, match="no finished fits to plot"):
        assert plot_study(out, tmp_path / "figs") == []
