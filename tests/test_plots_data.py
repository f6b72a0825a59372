"""Figure data, then drawing: each data builder of mixsim.plots against an independent computation.

The fitted lines are the rate table's (mixsim.study.rate_table), the claim test's figures are
drawn from mixsim.rates.estimate_rate's estimates, the network figure's slopes are those of a
least-squares line through the plotted geometric means; the drawers draw exactly those numbers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede any pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mixsim import plots  # noqa: E402
from mixsim.losses import GROUPS, group_error_keys  # noqa: E402
from mixsim.rates import compare_rates, estimate_rate  # noqa: E402
from mixsim.study import COLUMNS, rate_table  # noqa: E402

SIZES = (500, 1000, 2000, 5000, 10000)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def table(laws: dict[tuple[str, int, str], float], reps: int = 10, seed: int = 1, truths: int = 1) -> pd.DataFrame:
    """A results table: metric of (gate, fitted_k) = 3 n^slope times log-normal(0, 0.4) noise."""
    rng = np.random.default_rng(seed)
    rows = [dict(study="syn", n=n, replicate=r, gate=gate, fitted_k=k, metric=metric,
                 value=3 * n ** slope * rng.lognormal(0, 0.4), seed=r, converged=True, iterations=3, seconds=0.0,
                 status="converged", grad_norm=0.0, error="", truth=t, estimator="protocol")
            for (gate, k, metric), slope in laws.items() for t in range(truths) for n in SIZES for r in range(reps)]
    return pd.DataFrame(rows)[list(COLUMNS)]


LAWS = {("softmax", 2, "D1"): -0.5, ("competition", 2, "D1"): -0.4}


# ---------------------------------------------------------------------------------------------
# error vs n: the fitted lines are the rate table's
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("average", ["mean", "log", "median"])
def test_fitted_lines_are_the_rate_tables(average):
    df = table(LAWS, truths=2)  # an ensemble: a figure series pools the truths
    band = "quartiles" if average == "median" else "se"
    data = plots.error_vs_n_data(df, "D1", average=average, band=band, true_k=2)
    rates = rate_table(df.drop(columns="truth"), average=average)
    for gate in ("softmax", "competition"):
        fit = data[(data["kind"] == "fit") & (data["gate"] == gate)]
        row = rates[rates["gate"] == gate].iloc[0]
        assert fit["slope"].iloc[0] == row["slope"] and fit["ci_low"].iloc[0] == row["slope_low"]
        assert fit["ci_high"].iloc[0] == row["slope_high"]
        assert list(fit["n"]) == [row["n_min"], row["n_max"]]
        # the line drawn through its two ends has the table's slope (rtol: two logs of rounded values)
        slope = np.diff(np.log(fit["value"].to_numpy(float))) / np.diff(np.log(fit["n"].to_numpy(float)))
        np.testing.assert_allclose(slope, row["slope"], rtol=1e-12)


def test_drawn_line_is_the_data_and_draw_equals_plot():
    df = table(LAWS)
    data = plots.error_vs_n_data(df, "D1", true_k=2)
    ax = plots.draw_error_vs_n(data, Figure().add_subplot())
    pd.testing.assert_frame_equal(plots.plotted_data(ax), data)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    for line, gate in zip(solid, ("softmax", "competition")):
        fit = data[(data["kind"] == "fit") & (data["gate"] == gate)]
        np.testing.assert_array_equal(line.get_ydata(), fit["value"].to_numpy())
    other = plots.plot_error_vs_n(df, "D1", true_k=2, ax=Figure().add_subplot())
    assert [t.get_text() for t in other.get_legend().get_texts()] == [t.get_text() for t in ax.get_legend().get_texts()]
    assert other.get_ylabel() == ax.get_ylabel() == "Voronoi loss D1 (mean)"


def test_log_is_the_canonical_average_and_logmean_its_alias():
    df = table(LAWS)
    log = plots.error_vs_n_data(df, "D1", average="log")
    pd.testing.assert_frame_equal(log, plots.error_vs_n_data(df, "D1", average="logmean"))
    points = log[(log["kind"] == "point") & (log["gate"] == "softmax")]
    rows = df[df["gate"] == "softmax"]
    geometric = rows.groupby("n")["value"].apply(lambda v: np.exp(np.mean(np.log(v))))
    np.testing.assert_allclose(points["value"], geometric.to_numpy(), rtol=1e-12)
    assert plots.canonical_average("logmean") == "log"
    assert "geometric mean" in plots.plot_error_vs_n(df, "D1", average="log").get_ylabel()
    with pytest.raises(ValueError, match="'logmean' is accepted"):
        plots.error_vs_n_data(df, "D1", average="geometric")


def test_local_slopes_data_is_drawn_as_given():
    df = table(LAWS)
    data = plots.local_slopes_data(df, "D1", true_k=2)
    ax = plots.draw_local_slopes(data)
    line = [ln for ln in ax.get_lines() if ln.get_label().startswith("softmax")][0]
    rows = data[data["gate"] == "softmax"]
    np.testing.assert_array_equal(line.get_xdata(), rows["n_mid"].to_numpy())
    np.testing.assert_array_equal(line.get_ydata(), rows["slope"].to_numpy())


def test_drawn_tables_live_on_their_axes_not_in_the_module():
    df = table(LAWS)
    a = plots.plot_error_vs_n(df, "D1", ax=Figure().add_subplot())
    b = plots.plot_error_vs_n(df, "D1", gates="softmax", ax=Figure().add_subplot())
    assert set(plots.plotted_data(a)["gate"]) == {"softmax", "competition"}
    assert set(plots.plotted_data(b)["gate"]) == {"softmax"}
    assert plots.plotted_data(Figure().add_subplot()).empty
    for path in Path(plots.__file__).parent.glob("*.py"):  # no weak (or other) registries of drawn axes
        tree = ast.parse(path.read_text())
        assert not any(isinstance(node, ast.Import | ast.ImportFrom) and "weakref" in ast.dump(node)
                       for node in ast.walk(tree)), path.name


def test_groups_data_is_what_plot_groups_draws(tmp_path):
    laws = {(gate, 3, key): -0.25 if "_multi_" in key else -0.5
            for gate in ("softmax", "competition") for key in group_error_keys(gate)}
    df = table(laws, reps=6)
    data = plots.groups_data(df, true_k=2)
    assert list(data.series["name"]) == ["softmax k=3", "competition k=3"] and set(data.series["cells"]) == {"multi"}
    assert list(dict.fromkeys(data.table["panel"])) == list(GROUPS)
    axes = plots.plot_groups(df, true_k=2)
    pd.testing.assert_frame_equal(plots.plotted_data(axes[0].figure), data.table)
    # each panel's fitted slope is the rate table's slope of its metric
    rates = rate_table(df, average="mean")  # the figures' default average
    fit = data.table[(data.table["kind"] == "fit") & (data.table["panel"] == "variance")
                     & (data.table["gate"] == "softmax")]
    assert fit["slope"].iloc[0] == rates.query("gate == 'softmax' and metric == 'variance_multi_unweighted'")["slope"].iloc[0]
    paths = plots.save_figure(axes[0].figure, tmp_path / "groups", data.table)
    pd.testing.assert_frame_equal(pd.read_csv(paths[2]), data.table.reset_index(drop=True), check_dtype=False)


# ---------------------------------------------------------------------------------------------
# the claim test's figures: drawn from estimate_rate and compare_rates
# ---------------------------------------------------------------------------------------------

def estimates(weighting: str = "share") -> tuple[dict, pd.DataFrame]:
    studies = {"softmax_overfit": -0.25, "competition_overfit": -0.5}
    out, tables = {}, {}
    for study, slope in studies.items():
        gate = study.split("_")[0]
        laws = {(gate, 3, f"{g}_multi_{weighting}"): slope for g in GROUPS if g in {k.split("_multi")[0]
                                                                                   for k in group_error_keys(gate)}}
        tables[study] = table(laws, reps=8, seed=len(study))
        for (_, _, metric), _ in laws.items():
            rows = tables[study][tables[study]["metric"] == metric]
            out[(study, 0, metric)] = estimate_rate(rows["n"], rows["value"], replicate=rows["replicate"], n_boot=200)
    return out, tables


def test_group_rates_data_against_the_estimates():
    est, tables = estimates()
    data = plots.group_rates_data(est, ("softmax_overfit", "competition_overfit"), "share")
    assert list(data.points.columns) == ["group", "gate", "study", "n", "mean_error", "low", "high", "rate"]
    assert "gate_slope" not in set(data.points.loc[data.points["gate"] == "competition", "group"])
    for (study, _, metric), e in est.items():
        group = metric.split("_multi_")[0]
        pts = data.points[(data.points["study"] == study) & (data.points["group"] == group)]
        rows = tables[study][tables[study]["metric"] == metric]
        geometric = rows.groupby("n")["value"].apply(lambda v: np.exp(np.mean(np.log(v))))  # the declared "log"
        np.testing.assert_allclose(pts["mean_error"], geometric.to_numpy(), rtol=1e-12)
        line = data.lines[(data.lines["study"] == study) & (data.lines["group"] == group)]
        slopes = np.diff(np.log(line["value"].to_numpy(float))) / np.diff(np.log(line["n"].to_numpy(float)))
        np.testing.assert_allclose(slopes, e.rate, rtol=1e-9)
        local = data.local[(data.local["study"] == study) & (data.local["group"] == group)]
        np.testing.assert_array_equal(local["slope"], e.local_slopes)
    axes = plots.draw_group_rates(data)
    assert axes.shape == (2, len(GROUPS)) and axes[0, 0].get_xscale() == "log"
    assert axes[0, 1].get_legend().get_texts()[0].get_text().startswith("softmax: ")


def test_forest_data_and_drawing():
    est, tables = estimates()
    rows = []
    for g in ("weight", "variance"):
        metric = f"{g}_multi_share"
        a, b = (t[t["metric"] == metric] for t in (tables["competition_overfit"], tables["softmax_overfit"]))
        c = compare_rates(a["n"], a["value"], b["n"], b["value"], replicate_a=a["replicate"],
                          replicate_b=b["replicate"], n_boot=200)
        rows.append({"comparison": "claim", "truth": 0, "group": g, "difference": c.difference,
                     "difference_low": c.difference_low, "difference_high": c.difference_high, "verdict": c.verdict})
    comp = pd.DataFrame(rows + [{**rows[0], "comparison": "control"}])
    data = plots.forest_data(comp)
    assert len(data) == 2 and set(data["comparison"]) == {"claim"}
    axes = plots.draw_forest(data, titles={"weight": "W", "variance": "V"})
    assert [ax.get_title() for ax in axes] == ["W", "V"]
    for ax, row in zip(axes, data.itertuples()):
        np.testing.assert_array_equal(ax.collections[-1].get_offsets()[:, 0], [row.difference])


# ---------------------------------------------------------------------------------------------
# the network study's figure
# ---------------------------------------------------------------------------------------------

def test_sample_efficiency_slope_is_the_line_through_the_geometric_means():
    rng = np.random.default_rng(3)
    rows = [{"router": r, "n": n, "metric": "excess_mse", "value": float(rng.lognormal(np.log(n ** s), 0.3)),
             "status": "ok"} for r, s in (("token_choice", -0.6), ("expert_choice", -0.3))
            for n in (64, 128, 256, 512) for _ in range(4)]
    df = pd.DataFrame(rows)
    data = plots.sample_efficiency_data(df, level=0.9)
    assert list(data.columns) == [*plots.SUMMARY_COLUMNS, "slope", "metric", "level"]
    pd.testing.assert_frame_equal(data[plots.SUMMARY_COLUMNS], plots.summarise(df, level=0.9))
    for router, grp in data.groupby("router"):
        independent = np.polyfit(np.log10(grp["n"].astype(float)), np.log10(grp["center"]), 1)[0]
        assert grp["slope"].iloc[0] == pytest.approx(independent, rel=1e-12, abs=1e-12)
    ax = plots.draw_sample_efficiency(data)
    texts = {t.get_text() for t in ax.get_legend().get_texts()}
    assert any(t.startswith("token_choice (slope ") for t in texts) and "90% interval" in ax.get_title()
    single = plots.sample_efficiency_data(df[df["n"] == 64])
    assert single["slope"].isna().all()
