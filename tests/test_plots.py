"""Figures drawn from small synthetic result tables whose errors follow known power laws.

Each check compares what is drawn with an independent computation: the legend's slope with
:func:`mixsim.rates.estimate_rate` on the same rows (the rate table's one rate path), the theory line's slope with
:func:`mixsim.rates.theory_rate`, local slopes with differences of log means.
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mixsim.study import COLUMNS  # noqa: E402
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
from mixsim.rates import estimate_rate, theory_rate  # noqa: E402

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
                                 seconds=0.0, status="converged", grad_norm=0.0, error="", truth=0, estimator="protocol"))
    return pd.DataFrame(rows)[list(COLUMNS)]


EXACT = {("softmax", 2, "D1"): -0.5, ("competition", 2, "D1"): -0.45}


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def series_rows(df: pd.DataFrame, gate: str, k: int, metric: str) -> pd.DataFrame:
    return df[(df["gate"] == gate) & (df["fitted_k"] == k) & (df["metric"] == metric)]


def rate_of(rows: pd.DataFrame, average: str = "mean"):
    """The rate a figure shows for these rows (the figures' default average is the mean)."""
    return estimate_rate(rows["n"], rows["value"], average=average)


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
def test_legend_holds_the_slope_and_interval_of_estimate_rate(average):
    df = synthetic(EXACT)
    texts = legend_texts(plot_error_vs_n(df, "D1", average=average))
    for gate in ("softmax", "competition"):
        rows = series_rows(df, gate, 2, "D1")
        rate = rate_of(rows, average)
        expected = f"{gate} k=2: slope {rate.slope:.2f} [{rate.slope_low:.2f}, {rate.slope_high:.2f}]"
        assert expected in texts, texts


def test_fitted_line_is_the_least_squares_line_over_the_points():
    df = synthetic({("softmax", 2, "D1"): -0.5})
    ax = plot_error_vs_n(df, "D1", theory=False)
    rows = series_rows(df, "softmax", 2, "D1")
    rate = rate_of(rows)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 1
    x, y = (np.asarray(v, dtype=float) for v in solid[0].get_data())
    np.testing.assert_allclose(x, [SIZES[0], SIZES[-1]])
    np.testing.assert_allclose(np.log(y), rate.intercept + rate.slope * np.log(x), rtol=1e-12)
    points = plotted_data(ax).query("kind == 'point'")
    np.testing.assert_allclose(points["value"], rate.average_error, rtol=1e-12)  # the markers sit at the means


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
    assert legend_texts(ax)[-1] == f"theory $n^{{-1/4}}$ [{tag}]"
    (dashed,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert dashed.get_color() == "tab:blue"  # it stands for the softmax series alone: its colour


def test_series_sharing_an_exponent_share_one_theory_line():
    laws = {("softmax", 2, "D1"): -0.5, ("competition", 2, "D1"): -0.45, ("softmax", 3, "D1"): -0.3}
    df = synthetic(laws)
    ax = plot_error_vs_n(df, "D1", by=("gate", "fitted_k"), true_k=2)
    tags = {gate: theory_rate(gate, 2, 2, "D1")[1] for gate in ("softmax", "competition")}
    e3, tag3 = theory_rate("softmax", 3, 2, "D1")
    assert e3 != -0.5
    # one line for the two exact-fitted series (-1/2), one for the over-fitted one
    np.testing.assert_allclose(sorted(dashed_slopes(ax)), sorted([-0.5, e3]), rtol=1e-12)
    theory = [t for t in legend_texts(ax) if t.startswith("theory")]
    assert theory == [f"theory $n^{{-1/2}}$ [{', '.join(sorted(tags.values()))}]",
                      f"theory $n^{{{Fraction(e3).limit_denominator(24)}}}$ [{tag3}]"]
    colours = {round(s, 9): ln.get_color() for s, ln in zip(dashed_slopes(ax), [
        ln for ln in ax.get_lines() if ln.get_linestyle() == "--"])}
    assert colours[-0.5] == "0.35" and colours[round(e3, 9)] == "tab:blue"  # shared by gates: grey
    # the table holds the drawn line for each series: the two -1/2 series have the same ends
    th = plotted_data(ax).query("kind == 'theory' and exponent == -0.5")
    assert len(th) == 4 and th.groupby("n")["value"].nunique().eq(1).all()
    # through the geometric mean of the two series' own lines (each through its fitted centre)
    own = [error_vs_n_data(df, "D1", gates=g, fitted_k=2, true_k=2).query("kind == 'theory'") for g in tags]
    log_c = np.mean([np.log(o["value"].iloc[0]) + 0.5 * np.log(o["n"].iloc[0]) for o in own])
    np.testing.assert_allclose(np.log(th["value"]), log_c - 0.5 * np.log(th["n"].astype(float)), rtol=1e-12)


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
    rate = rate_of(kept)
    assert any(f"slope {rate.slope:.2f} [{rate.slope_low:.2f}" in t for t in legend_texts(ax))
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


def test_two_sizes_give_a_slope_with_its_bootstrap_interval():
    df = synthetic({("softmax", 2, "D1"): -0.5}, sizes=(1000, 4000))
    rate = rate_of(series_rows(df, "softmax", 2, "D1"))
    assert f"slope {rate.slope:.2f} [{rate.slope_low:.2f}, {rate.slope_high:.2f}]" in legend_texts(plot_error_vs_n(df, "D1"))[0]


def test_by_colours_series_and_keeps_them_apart():
    laws = {("softmax", 3, "D2"): -0.5, ("softmax", 4, "D2"): -0.5, ("competition", 3, "D2"): -0.5}
    ax = plot_error_vs_n(synthetic(laws), "D2", by="gate")
    solid = {ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"}
    assert solid == {"tab:blue", "tab:orange"}  # one colour per gate; the two softmax k differ by marker
    assert sum("softmax k=4: slope" in t for t in legend_texts(ax)) == 1
    markers = [ln.get_marker() for ln in ax.get_lines() if ln.get_marker() in ("o", "s", "^", "D", "v", "P")]
    assert len(markers) == 3 and len(set(markers)) == 2  # k=3 and k=4 (the two k=3 series differ by colour)


def test_gate_colours_are_fixed_and_labels_read_gate_then_k():
    # competition alone is still orange, sigmoid green; labels put the gate first whatever the order of by
    laws = {("competition", 3, "D2"): -0.5, ("sigmoid", 3, "D2"): -0.5}
    ax = plot_error_vs_n(synthetic(laws), "D2", by=["fitted_k", "gate"])
    assert [t.split(":")[0] for t in legend_texts(ax)] == ["competition k=3", "sigmoid k=3"]
    assert {ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"} == {"tab:orange", "tab:green"}
    # the study joins a label only where gate and k do not tell series apart
    df = pd.concat([synthetic({("softmax", 3, "D2"): -0.5}, study="auto"),
                    synthetic({("softmax", 3, "D2"): -0.4}, study="fixed"),
                    synthetic({("competition", 3, "D2"): -0.5}, study="auto")])
    labels = [t.split(":")[0] for t in legend_texts(plot_error_vs_n(df, "D2", by=("gate", "fitted_k")))]
    assert labels == ["softmax k=3, auto", "softmax k=3, fixed", "competition k=3"]


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


def slope_box(ax) -> list[str]:
    """The lines of a group panel's slope box."""
    (box,) = [t for t in ax.texts if t.get_gid() == "slopes"]
    return box.get_text().split("\n")


def test_plot_groups_one_panel_per_group_with_slopes():
    df = group_table()
    axes = plot_groups(df, true_k=2)
    titles = [ax.get_title() for ax in axes[:5]]
    assert titles[0].startswith("weights") and titles[1].startswith("gate slopes") and titles[4].startswith("variances")
    for ax in axes[:5]:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_ylabel().startswith("unweighted")
    # expert slopes, multi cells: the panel's box holds estimate_rate's slope on the multi-cell rows, and theory's
    rows = series_rows(df, "competition", 3, "expert_slope_multi_unweighted")
    rate = rate_of(rows)
    exponent, tag = theory_rate("competition", 3, 2, "expert_slope_multi_unweighted")
    assert exponent == -0.25
    assert (f"competition k=3: slope {rate.slope:.2f} [{rate.slope_low:.2f}, {rate.slope_high:.2f}]; theory -1/4 [{tag}]"
            in slope_box(axes[2]))
    # competition has no gate slope: that panel holds softmax only, and says so
    assert set(plotted_data(axes[1])["gate"]) == {"softmax"}
    np.testing.assert_allclose(sorted(dashed_slopes(axes[1])), [-1 / 8])
    # one colour per gate across panels: softmax blue, competition orange
    colours = [{ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() == "-"} for ax in (axes[0], axes[1])]
    assert colours == [{"tab:blue", "tab:orange"}, {"tab:blue"}]


def test_plot_groups_has_one_figure_legend_and_no_panel_legends():
    df = group_table(reps=4)
    axes = plot_groups(df, true_k=2)
    fig = axes[0].figure
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "softmax k=3 (multi)", "competition k=3 (multi)",
        "theory's rate (dashed; exponent and [tag] in each panel's box)"]
    # under the panels (placed by constrained layout): below every panel's tick labels and x label
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    top = legend.get_window_extent(renderer).y1
    assert all(top < ax.get_tightbbox(renderer).y0 for ax in axes[:5])
    assert legend.get_window_extent(renderer).x0 >= 0 and legend.get_window_extent(renderer).x1 <= fig.bbox.x1
    # every group panel has its box: one line per series of the figure
    for ax in axes[:5]:
        lines = slope_box(ax)
        assert len(lines) == 2 and lines[0].startswith("softmax k=3: ") and lines[1].startswith("competition k=3: ")
    # and the box sits above the data: the y limit was raised past every point and bar
    for ax in axes[:5]:
        drawn = plotted_data(ax)
        assert np.log(ax.get_ylim()[1]) > np.log(np.nanmax(drawn[["value", "high"]].to_numpy(float))) + 0.1
    notes = axes[5].texts[0].get_text()
    assert "[A] primary source" in notes and "[B] secondary sources" in notes and "[C] reconstruction" in notes
    assert "[A/C]" in notes


def test_plot_groups_names_a_gate_without_errors_of_a_group():
    axes = plot_groups(group_table(reps=4), true_k=2)
    box = slope_box(axes[1])
    assert box[1] == "competition k=3: no gate slopes"
    assert box[0].startswith("softmax k=3: slope ")
    assert all("no " not in line for ax in (axes[0], *axes[2:5]) for line in slope_box(ax))


def test_plot_groups_auto_cells_without_true_k_and_weighted():
    df = group_table(reps=4)
    axes = plot_groups(df, weighting="weighted", cells="auto")
    labels = [t.get_text() for t in axes[0].figure.legends[0].get_texts()]
    assert labels == ["softmax k=3 (multi)", "competition k=3 (multi)"]  # no theory lines without the true k
    assert axes[0].get_ylabel().startswith("weighted")
    assert set(plotted_data(axes[0].figure)["metric"]) == {f"{g}_multi_weighted" for g in GROUPS}


def test_plot_groups_needs_group_errors():
    with pytest.raises(ValueError, match="groups"):
        plot_groups(synthetic(EXACT))


def test_local_slopes_are_differences_of_log_means():
    df = synthetic(EXACT)
    ax = plot_local_slopes(df, "D1", true_k=2)
    assert ax.get_xscale() == "log" and "local slope" in ax.get_ylabel()
    assert ax.get_xlabel() == "sample size n (midpoint of neighbouring sizes)"
    assert "geometric midpoint" in ax.get_legend().get_title().get_text()
    for gate in ("softmax", "competition"):
        rows = series_rows(df, gate, 2, "D1")
        means = rows.groupby("n")["value"].mean()
        expected = np.diff(np.log(means.to_numpy())) / np.diff(np.log(means.index.to_numpy(dtype=float)))
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == f"{gate} k=2"]
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        np.testing.assert_allclose(y, expected, rtol=1e-12)
        np.testing.assert_allclose(x, np.sqrt(np.array(SIZES[:-1]) * np.array(SIZES[1:])), rtol=1e-12)
    # both gates' theory says -1/2: one line for the two, with both tags
    (flat,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_allclose(flat.get_ydata(), -0.5)
    tags = sorted(theory_rate(gate, 2, 2, "D1")[1] for gate in ("softmax", "competition"))
    assert flat.get_label() == f"theory $n^{{-1/2}}$ [{', '.join(tags)}]"
    assert legend_texts(ax) == ["softmax k=2", "competition k=2", flat.get_label()]


# ---------------------------------------------------------------------------------------------
# ticks
# ---------------------------------------------------------------------------------------------

def drawn_labels(ticklabels) -> list[str]:
    return [t.get_text() for t in ticklabels if t.get_text()]


def test_a_narrow_y_range_gets_plain_labels():
    # 2 n^-0.2 over 500..10000 spans 0.32..0.59: well under a decade
    ax = plot_error_vs_n(synthetic({("softmax", 2, "D1"): -0.2}, reps=40), "D1")
    ax.figure.canvas.draw()
    lo, hi = ax.get_ylim()
    assert np.log10(hi / lo) < 1
    labels = drawn_labels(ax.get_yticklabels())
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(labels) >= 2 and labels == [f"{t:g}" for t in ticks]  # "0.4", not "4x10^-1"
    assert drawn_labels(ax.get_yticklabels(minor=True)) == []
    # a wide range keeps powers of ten
    ax = plot_error_vs_n(synthetic({("softmax", 2, "D1"): -1.5}), "D1")
    ax.figure.canvas.draw()
    assert all(t.startswith("$\\mathdefault{10^{") for t in drawn_labels(ax.get_yticklabels()))


def test_few_sizes_get_a_tick_on_each_size():
    ax = plot_error_vs_n(synthetic(EXACT), "D1")
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    np.testing.assert_allclose([t for t in ax.get_xticks() if lo <= t <= hi], SIZES)
    assert drawn_labels(ax.get_xticklabels()) == ["500", "1,000", "2,000", "5,000", "10,000"]
    assert drawn_labels(ax.get_xticklabels(minor=True)) == []
    # the local slopes' axis marks the sizes too (the slopes sit between them)
    local = plot_local_slopes(synthetic(EXACT), "D1")
    local.figure.canvas.draw()
    assert drawn_labels(local.get_xticklabels()) == ["500", "1,000", "2,000", "5,000", "10,000"]


@pytest.mark.parametrize("width", [3.5, 7.0])
def test_the_legend_sits_below_the_x_labels(width):
    sizes = (1000, 1763, 3107, 5477, 9655, 17019, 30000)
    fig, ax = plt.subplots(figsize=(width, 4.5), layout="constrained")
    plot_error_vs_n(synthetic(EXACT, sizes=sizes, reps=4), "D1", true_k=2, ax=ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rotated = {t.get_rotation() for t in ax.get_xticklabels() if t.get_text()}
    assert rotated == ({35.0} if width < 5 else {0.0})  # crowded labels turn, others stay level
    assert ax.get_legend().get_window_extent(renderer).y1 < ax.xaxis.get_tightbbox(renderer).y0


def test_many_sizes_or_a_single_size_never_leave_one_labelled_tick():
    many = tuple(int(v) for v in np.geomspace(1000, 30000, 12).round())
    ax = plot_error_vs_n(synthetic({("softmax", 2, "D1"): -0.5}, sizes=many, reps=3), "D1")
    ax.figure.canvas.draw()
    labels = drawn_labels(ax.get_xticklabels())
    assert labels == ["1,000", "2,000", "5,000", "10,000", "20,000"]  # round values between the sizes
    ax = plot_error_vs_n(synthetic({("softmax", 2, "D1"): -0.5}, sizes=(1763,)), "D1")
    ax.figure.canvas.draw()
    labels = drawn_labels(ax.get_xticklabels())
    assert "1,763" in labels and len(labels) >= 2


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
    assert len(record) == 4 and "tiny softmax k=2 weight_single_unweighted (7 of 9)" in str(record[0].message)
    written = [Path(line) for line in capsys.readouterr().out.split()]
    names = {p.name for p in written}
    for stem in ("error_vs_n_D1", "error_vs_n_D2", "local_slopes_D1", "local_slopes_D2", "groups_unweighted",
                 "groups_weighted", "groups_share", "groups_centre"):
        assert {f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"} <= names
    assert len(written) == 24 and all(p.parent == out / "figures" and p.stat().st_size > 0 for p in written)
    d1 = pd.read_csv(out / "figures" / "error_vs_n_D1.csv")
    assert (d1.loc[d1["kind"] == "theory", "exponent"] == -0.5).all()  # true k read from the study's metadata
    # the figure's line is the rate table's, with the average the study declared (log)
    from mixsim.study import rate_table
    row = rate_table(out, metrics=["D1"]).iloc[0]
    assert row["average"] == "log"
    fit = d1[d1["kind"] == "fit"]
    assert fit["slope"].iloc[0] == pytest.approx(row["slope"], rel=1e-12)
    assert fit["ci_low"].iloc[0] == pytest.approx(row["slope_low"], rel=1e-12)
    assert plt.get_fignums() == []  # drawn without pyplot: nothing left open


def test_plot_study_with_nothing_to_plot_warns(tmp_path):
    import test_study_support as sup
    from mixsim.study import run_study

    out = tmp_path / "res"
    run_study(sup.tiny_spec(metrics=["loglik"]), out, engine=sup.FAKE, progress=False)
    with pytest.warns(PlotWarning, match="no finished fits to plot"):
        assert plot_study(out, tmp_path / "figs") == []
