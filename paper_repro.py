"""Reproduce the reference softmax study and compare softmax with competition gating.

    python paper_repro.py            # quick: every study on a reduced grid, < 10 minutes on 2 cores
    python paper_repro.py --full     # reference scale: n up to 1e5, 40 replications (hours; resumes)
    python paper_repro.py --tiny     # seconds: the whole chain on toy sizes (used by the tests)

Runs the four studies of ``studies/`` (softmax and competition, exact- and over-fitted) through the
study runner, plus a sensitivity study of the over-fitted slopes to the start, then writes figures,
``rates.md`` and ``rates.csv`` to ``figures/<scale>/`` and prints the rate table and a verdict on the
claim. Results go to ``results/paper_<scale>/``; an interrupted run picks up where it stopped.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------------------------
# named defaults
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent
STUDIES = ("softmax_exact", "softmax_overfit", "competition_exact", "competition_overfit")
EXACT = ("softmax_exact", "competition_exact")
OVERFIT = ("softmax_overfit", "competition_overfit")

# Overrides of the shipped specs per scale ("full" keeps the specs as shipped except where noted).
SCALES: dict[str, dict[str, dict]] = {
    "tiny": {
        "exact": {"grid.values": [400, 800, 1600], "replications": 3, "losses.n_mc": 50},
        "overfit": {"grid.values": [600, 1200], "replications": 2, "fit.fitted_k": [3], "fit.n_init": 1,
                    "fit.max_iter": 200, "losses.n_mc": 50},
    },
    "quick": {
        "exact": {"grid.start": 1e3, "grid.stop": 1e5, "grid.num": 8, "replications": 20, "losses.n_mc": 300},
        "overfit": {"grid.start": 1e3, "grid.stop": 5e4, "grid.num": 8, "replications": 20, "fit.fitted_k": [3],
                    "fit.n_init": {"exact": 1, "over": 2}, "losses.n_mc": 300},
    },
    "full": {
        "exact": {},
        # Two near-truth starts instead of the reference's five: with starts this close to the
        # truth the extra starts rarely change the best likelihood, and they cost 2.5x the time.
        "overfit": {"fit.n_init": {"exact": 1, "over": 2}},
    },
}
# Sensitivity of the over-fitted slopes to the start (THEORY.md section 7), fitted k = 3.
STARTS = {
    "shrinking": {},  # the reference protocol: noise sd = scale * n^-exponent
    "fixed": {"fit.near_truth.gate_scale": 0.1, "fit.near_truth.expert_scale": 0.1, "fit.near_truth.variance_scale": 0.02,
              "fit.near_truth.gate_exponent": 0.0, "fit.near_truth.expert_exponent": 0.0,
              "fit.near_truth.variance_exponent": 0.0},
    "auto": {"fit.init": "auto", "fit.n_init": 5, "fit.near_truth": None},  # no truth: clustered least-squares restarts
}
SENSITIVITY = {"tiny": {"replications": 2}, "quick": {"replications": 12, "grid.num": 6}, "full": {"replications": 20}}
GROUP_METRICS = ("weight", "gate_slope", "expert_slope", "expert_intercept", "variance")
# Over-fitted losses have heavy tails (a rare fit with a far-off gate slope in the e^-8 cell
# dominates a mean of D2), so the rate table also gives slopes of the median for these.
ROBUST_METRICS = ("D1", "D2", "hellinger")


def spec_for(study: str, scale: str, extra: dict | None = None, suffix: str = ""):
    """The shipped spec of ``study`` with the scale's overrides (and ``extra``) applied."""
    import tomllib

    from mixsim._study_spec import apply_overrides
    from mixsim.study import StudySpec

    kind = "exact" if study in EXACT else "overfit"
    overrides = dict(SCALES[scale][kind]) | dict(extra or {})
    if suffix:
        overrides["name"] = f"{study}_{suffix}"
    path = ROOT / "studies" / f"{study}.toml"
    doc = tomllib.loads(path.read_text())
    for key in [k for k, v in overrides.items() if v is None]:  # None removes a key
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node.pop(last, None)
    doc = apply_overrides(doc, {k: v for k, v in overrides.items() if v is not None})
    return StudySpec.from_dict(doc, source=str(path), default_name=study)


def run_all(scale: str, out: Path, n_jobs: int) -> dict[str, pd.DataFrame]:
    """Run (or resume) every study; return their result tables by name."""
    from mixsim.study import run_study

    specs = {s: spec_for(s, scale) for s in STUDIES}
    for study in OVERFIT:
        for start, extra in STARTS.items():
            if start != "shrinking":
                extra = {"fit.fitted_k": [3], **SENSITIVITY[scale], **extra}
                specs[f"{study}_{start}"] = spec_for(study, scale, extra, suffix=start)
    tables = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        tables[name] = run_study(spec, out / name, n_jobs=n_jobs, progress=True)
        print(f"  {name:<32} {len(tables[name]):>7} rows  {time.perf_counter() - t0:7.1f} s", flush=True)
    return tables


# ---------------------------------------------------------------------------------------------
# rates, agreement with theory, verdict
# ---------------------------------------------------------------------------------------------

def group_weighting(scale: str) -> str:
    """The group-error weighting the over-fitted specs declare (``[losses] group_weighting``):
    chosen before the run, read here, never picked after looking at the results."""
    chosen = {spec_for(s, scale).losses.get("group_weighting", "unweighted") for s in OVERFIT}
    if len(chosen) != 1:
        raise ValueError(f"the over-fitted specs declare different group weightings: {sorted(chosen)}")
    return chosen.pop()


def rates(tables: dict[str, pd.DataFrame], out: Path, weighting: str) -> pd.DataFrame:
    """One row per (study, gate, fitted k, metric): slope, interval, theory, agreement."""
    from mixsim.study import rate_table

    keep = ("D1", "D2", "hellinger") + tuple(f"{g}_{c}_{weighting}" for g in GROUP_METRICS for c in ("single", "multi"))
    frames = []
    for name in tables:
        present = set(tables[name]["metric"])
        start = next((s for s in STARTS if name.endswith("_" + s)), "shrinking")
        for average, metrics in (("mean", keep), ("median", ROBUST_METRICS)):
            rt = rate_table(out / name, metrics=[m for m in metrics if m in present], average=average)
            rt.insert(1, "start", start)
            frames.append(rt)
    table = pd.concat(frames, ignore_index=True)
    table["agreement"] = [_agreement(r) for r in table.itertuples()]
    return table


def _agreement(row) -> str:
    exp = getattr(row, "theory_exponent", np.nan)
    if exp is None or not np.isfinite(exp):
        return "no theory"
    if not (np.isfinite(row.ci_low) and np.isfinite(row.ci_high)):
        return "too few sizes"
    if row.ci_low <= exp <= row.ci_high:
        return "agrees"
    # Theory's over-fitted exponents are worst-case bounds: faster is consistent with them.
    return "faster than theory" if row.ci_high < exp else "slower than theory"


def convergence_counts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Fits per study and how many did not converge (certified: stationary); none is dropped."""
    rows = []
    for name, df in tables.items():
        fits = df.drop_duplicates(["n", "replicate", "gate", "fitted_k"])
        ok = fits["status"].isin(["converged", "max_iter", "stalled"])
        rows.append({"study": name, "fits": int(ok.sum()), "not_converged": int((ok & ~fits["converged"]).sum()),
                     "failed": int((~ok).sum())})
    return pd.DataFrame(rows)


def write_rates(table: pd.DataFrame, fig_dir: Path, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    cols = ["study", "start", "gate", "fitted_k", "metric", "average", "slope", "ci_low", "ci_high", "n_points", "n_min", "n_max",
            "theory_exponent", "theory_tag", "agreement", "not_converged"]
    cols = [c for c in cols if c in table.columns]
    short = table[cols].copy()
    short.to_csv(fig_dir / "rates.csv", index=False)
    fmt = short.copy()
    for c in ("slope", "ci_low", "ci_high", "theory_exponent"):
        fmt[c] = fmt[c].map(lambda v: "" if v is None or not np.isfinite(v) else f"{v:.3f}")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in fmt.itertuples(index=False)]
    text = ("# Measured convergence rates\n\nSlope of log mean error against log n with its 95% t-interval; "
            "theory exponent and confidence tag from THEORY.md (over-fitted exponents are worst-case bounds). "
            "not_converged: fits in the row that were not certified stationary (kept, never dropped).\n\n")
    if counts is not None:
        text += ("## Fits that did not converge\n\nConverged = at a stationary point (Newton decrement per sample "
                 "<= gtol). Non-converged fits are reported here and kept in the tables.\n\n"
                 "| study | fits | not converged | failed |\n|---|---|---|---|\n"
                 + "".join(f"| {r.study} | {r.fits} | {r.not_converged} | {r.failed} |\n" for r in counts.itertuples())
                 + "\n## Rates\n\n")
    (fig_dir / "rates.md").write_text(text + "\n".join(lines) + "\n")
    return short


def verdict(table: pd.DataFrame, weighting: str) -> str:
    """A plain-language reading of the rate table, saying where the data cannot tell."""
    out = []
    table = table[table["average"] == "mean"]
    main = table[table["start"] == "shrinking"]
    for study, metric in (("softmax_exact", "D1"), ("competition_exact", "D1")):
        r = main[(main["study"] == study) & (main["metric"] == metric)]
        if len(r):
            r = r.iloc[0]
            inside = r.ci_low <= -0.5 <= r.ci_high
            out.append(f"{study}: D1 slope {r.slope:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] "
                       f"{'contains' if inside else 'does NOT contain'} the parametric -1/2.")
    for start in STARTS:
        sub = table[(table["start"] == start) & (table["fitted_k"] == 3)]
        soft = sub[sub["gate"].str.startswith("softmax")].set_index("metric")
        comp = sub[sub["gate"].str.startswith("competition")].set_index("metric")
        faster, slower, unclear = [], [], []
        for metric in sorted(set(soft.index) & set(comp.index)):
            if not metric.endswith(f"multi_{weighting}"):
                continue
            s, c = soft.loc[metric], comp.loc[metric]
            group = metric.replace(f"_multi_{weighting}", "")
            text = f"{group} (softmax {s.slope:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}], competition {c.slope:.2f} [{c.ci_low:.2f}, {c.ci_high:.2f}])"
            (faster if c.ci_high < s.ci_low else slower if c.ci_low > s.ci_high else unclear).append(text)
        if faster or slower or unclear:
            out.append(f"Over-fitted k = 3, {start} start, {weighting} errors in the two-atom cell:")
            out += [f"  competition faster: {t}" for t in faster]
            out += [f"  competition slower: {t}" for t in slower]
            out += [f"  cannot tell (intervals overlap): {t}" for t in unclear]
    out.append("Softmax and competition are fitted to different (each well-specified) truths, so levels are not "
               "comparable; only slopes are. Theory's over-fitted exponents are worst-case bounds, and near-truth "
               "starts whose noise shrinks with n pull estimates toward the truth: compare the start rows above.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

TITLES = {
    "softmax_exact": "Softmax gate, exact fit (k = 2)",
    "softmax_overfit": "Softmax gate, over-fitted (k > 2)",
    "competition_exact": "Competition gate, exact fit (k = 2)",
    "competition_overfit": "Competition gate, over-fitted (k > 2)",
}
LOSS_NAMES = {"D1": "Voronoi loss D1", "D2": "Voronoi loss D2"}
START_COLOURS = {"shrinking": "tab:purple", "fixed": "tab:brown", "auto": "tab:olive"}


def figures(tables: dict[str, pd.DataFrame], rate_tab: pd.DataFrame, fig_dir: Path, weighting: str) -> list[Path]:
    """Draw every figure into ``fig_dir`` (PNG, PDF and the plotted numbers as CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from mixsim import plots

    written = []

    def save(fig, stem, data):
        plots.save_figure(fig, fig_dir / stem, data)
        written.append(fig_dir / f"{stem}.png")

    for study in STUDIES:
        metric = "D1" if study in EXACT else "D2"
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = fig.add_subplot()
        plots.plot_error_vs_n(tables[study], metric, by=("gate", "fitted_k"), true_k=2, ax=ax)
        ax.set_title(f"{TITLES[study]}: {LOSS_NAMES[metric]}")
        save(fig, f"{study}_{metric}", plots.plotted_data(ax))
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        plots.plot_local_slopes(tables[study], metric, by=("gate", "fitted_k"), true_k=2, ax=ax)
        ax.set_title(f"{TITLES[study]}: local slopes of {metric}")
        save(fig, f"{study}_{metric}_local_slopes", plots.plotted_data(ax))

    both = pd.concat([tables[s] for s in OVERFIT], ignore_index=True)
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    plots.plot_groups(both, fitted_k=3, weighting=weighting, true_k=2, fig=fig)
    fig.suptitle(f"Over-fitted k = 3: error of each parameter group ({weighting}), softmax vs competition")
    save(fig, "overfit_groups_softmax_vs_competition", plots.plotted_data(fig))

    allfour = pd.concat([tables[s] for s in STUDIES], ignore_index=True)
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    plots.plot_error_vs_n(allfour, "hellinger", by=["gate", "fitted_k"], theory=False, true_k=2, ax=ax)
    _reference_slope(ax, allfour, "hellinger", -0.5)
    ax.set_title("Expected Hellinger distance to the true conditional density")
    save(fig, "density_hellinger", plots.plotted_data(ax))

    fig = Figure(figsize=(12, 5.8), layout="constrained")
    data = plot_sensitivity(rate_tab, fig, weighting)
    save(fig, "sensitivity_overfit_slopes", data)
    return written


def _reference_slope(ax, table: pd.DataFrame, metric: str, exponent: float) -> None:
    """One grey dashed n^exponent line through the geometric mean of the smallest-n averages."""
    sub = table[(table["metric"] == metric) & (table["value"] > 0)]
    if sub.empty:
        return
    n = np.sort(sub["n"].unique())
    first = sub[sub["n"] == n[0]].groupby(["study", "fitted_k"])["value"].mean()
    y0 = float(np.exp(np.log(first).mean()))
    ax.plot(n, y0 * (n / n[0]) ** exponent, ls="--", color="grey", lw=1,
            label=f"reference slope n^{exponent:g} (theory, all four)")
    ax.legend(fontsize=7)


def plot_sensitivity(rate_tab: pd.DataFrame, fig, weighting: str) -> pd.DataFrame:
    """Over-fitted (k = 3) slopes per parameter group in the two-atom cell, under each start."""
    from mixsim.plots import _GROUP_LABELS

    sub = rate_tab[(rate_tab["average"] == "mean") & (rate_tab["fitted_k"] == 3)
                   & rate_tab["metric"].str.endswith(f"_multi_{weighting}")].copy()
    sub["group"] = sub["metric"].str.replace(f"_multi_{weighting}", "", regex=False)
    gates = [g for g in ("softmax", "competition") if g in set(sub["gate"])]
    axes = fig.subplots(1, max(1, len(gates)), sharey=True, squeeze=False)[0]
    groups = list(GROUP_METRICS)
    for ax, gate in zip(axes, gates):
        rows_gate = sub[sub["gate"] == gate]
        for j, start in enumerate(STARTS):
            rows = rows_gate[rows_gate["start"] == start].set_index("group")
            present = [g for g in groups if g in rows.index]
            r = rows.loc[present]
            xs = [groups.index(g) + (j - 1) * 0.22 for g in present]
            ci = np.isfinite(r["ci_low"]) & np.isfinite(r["ci_high"])
            yerr = np.where(ci, [r["slope"] - r["ci_low"], r["ci_high"] - r["slope"]], 0.0)
            ax.errorbar(xs, r["slope"], yerr=yerr, fmt="o", color=START_COLOURS[start], capsize=3,
                        label=f"{start} start" if ax is axes[0] else None)
        theory = rows_gate.drop_duplicates("group").set_index("group").get("theory_exponent")
        for i, g in enumerate(groups):
            if theory is not None and g in theory.index and np.isfinite(theory[g]):
                ax.hlines(theory[g], i - 0.35, i + 0.35, color="k", lw=2,
                          label="theory (worst case)" if (ax is axes[0] and i == 0) else None)
            if g not in set(rows_gate["group"]):
                ax.text(i, 0.5, "n/a", ha="center", va="center", transform=ax.get_xaxis_transform(), color="grey")
        ax.axhline(-0.5, color="grey", lw=0.8, ls=":", label="parametric n^-1/2" if ax is axes[0] else None)
        ax.set_xticks(range(len(groups)), [_GROUP_LABELS[g] for g in groups], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{gate}, over-fitted k = 3, two-atom cell")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("slope of log mean error vs log n\n(bars: 95% interval where >= 3 sizes)")
    fig.legend(loc="outside lower center", ncols=5, fontsize=8)
    cols = ["gate", "start", "group", "slope", "ci_low", "ci_high"] + (["theory_exponent"] if "theory_exponent" in sub else [])
    return sub[cols]


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="reference scale (hours; resumable)")
    mode.add_argument("--tiny", action="store_true", help="toy sizes, seconds (for tests)")
    ap.add_argument("--out", type=Path, help="results folder (default results/paper_<scale>)")
    ap.add_argument("--figures", type=Path, help="figures folder (default figures/<scale>)")
    ap.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    scale = "full" if args.full else "tiny" if args.tiny else "quick"
    out = args.out or ROOT / "results" / f"paper_{scale}"
    fig_dir = args.figures or ROOT / "figures" / scale
    fig_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"paper_repro: scale {scale}, results in {out}, figures in {fig_dir}, {args.n_jobs} jobs", flush=True)
    tables = run_all(scale, out, args.n_jobs)
    weighting = group_weighting(scale)
    rate_tab = rates(tables, out, weighting)
    counts = convergence_counts(tables)
    short = write_rates(rate_tab, fig_dir, counts)
    written = figures(tables, rate_tab, fig_dir, weighting)
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 20):
        main_rows = short[short["metric"].isin(ROBUST_METRICS) & (short["start"] == "shrinking")]
        print(main_rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nFits that did not converge (certified stationarity), per study:")
    print(counts.to_string(index=False))
    print("\nVerdict\n-------\n" + verdict(rate_tab, weighting))
    print(f"\n{len(written)} figures and rates.md/rates.csv in {fig_dir}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
