"""The ``mixsim`` command: run, inspect and summarise convergence studies.

::

    mixsim run STUDY.toml --out DIR [--n-jobs N] [--backend loky|threading|sequential|dask]
                                    [--scheduler ADDRESS] [--set key=value ...] [--force] [--wait]
    mixsim status DIR
    mixsim evaluate DIR --metric M [--metric M2 ...] [--force]   (metrics from the stored estimates)
    mixsim rates DIR [--metric M ...] [--min-n N] [--csv FILE]
    mixsim compare DIR_A DIR_B [--metric M ...] [--paired] [--csv FILE]
    mixsim repro [--tiny | --quick | --full] [--out DIR] [--figures DIR]   (the claim test)
    mixsim list
    mixsim plot DIR            (figures; provided by mixsim.plots)
    mixsim --version

``STUDY`` is a TOML file or a study name (``mixsim run smoke``): ``./studies/smoke.toml`` if it
exists, else the study shipped inside the package.
Errors in a spec, a bad argument or an unusable path name the key, argument or path and exit with
status 2, before anything is written. ``mixsim run`` exits with status 3 when the run leaves failed
units (their errors are listed; a rerun retries them), 130 when interrupted (Ctrl-C or SIGTERM:
the workers stop, completed tasks are kept). A run holds ``DIR/.lock``: a second run into the same
directory refuses (naming the lock), or with ``--wait`` waits for the first and then resumes.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import tomllib
import warnings
from pathlib import Path
from importlib.resources.abc import Traversable
from typing import Callable, Sequence

__all__ = ["main", "build_parser", "find_study", "studies_dirs", "EXIT_FAILED_UNITS"]

#: Exit status of ``mixsim run`` when the run leaves failed units (2: refused before anything ran).
EXIT_FAILED_UNITS = 3


# ---------------------------------------------------------------------------------------------
# locating studies
# ---------------------------------------------------------------------------------------------

def studies_dirs() -> list[Path]:
    """Local folders searched for study names before the shipped studies: ``./studies`` if it exists."""
    local = Path.cwd() / "studies"
    return [local] if local.is_dir() else []


def find_study(name: str) -> Path | Traversable:
    """A spec path from a path or a study name (``smoke``): ``./studies/smoke.toml`` first, else the
    shipped one (:func:`mixsim.study.find_study`)."""
    from .study import find_study as find

    return find(name).path


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from .study import load_study, run_study, study_status

    spec = load_study(args.study, overrides=args.set)
    out = Path("results") / spec.name if args.out is None else args.out  # run_study refuses an empty --out
    print(f"mixsim: running study {spec.name!r} into {out} (backend {args.backend}, n_jobs {args.n_jobs})", file=sys.stderr)
    df = run_study(spec, out, n_jobs=args.n_jobs, backend=args.backend, scheduler=args.scheduler,
                   progress=not args.no_progress, force=args.force, block_size=args.block_size, wait=args.wait)
    status = study_status(out)
    print(status.summary())
    print(f"{len(df)} rows in {out}")
    if status.failed:
        print(f"mixsim: {status.failed} unit(s) failed (exit status {EXIT_FAILED_UNITS}); see their errors above, "
              "and run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED_UNITS
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .study import study_status

    status = study_status(args.dir)
    print(status.summary())
    if args.verbose and not status.by_fit.empty:
        print("\ncomplete units per fit (rows) and n (columns):")
        print(status.by_fit.to_string())
    return 0


def _cmd_rates(args: argparse.Namespace) -> int:
    import pandas as pd

    from .study import rate_table, study_status

    status = study_status(args.dir)
    if not status.done:
        print(f"mixsim: warning: study incomplete: {status.complete}/{status.planned} units complete, {status.failed} "
              f"failed, {status.missing} not run; these rates use only the units present", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = rate_table(args.dir, metrics=args.metric, min_n=args.min_n)
    for w in caught:
        print(f"mixsim: warning: {w.message}", file=sys.stderr)
    csv = Path(args.csv) if args.csv else Path(args.dir) / "rates.csv"
    table.to_csv(csv, index=False)
    shown = [c for c in ("truth", "gate", "fitted_k", "metric", "average", "slope", "slope_low", "slope_high", "power_law",
                         "rate", "rate_low", "rate_high", "n_sizes", "theory_exponent", "theory_tag") if c in table]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(table[shown].to_string(index=False) if len(table) else "(no usable rows)")
    print(f"\nwrote {csv}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .study import evaluate

    df = evaluate(args.dir, args.metric, force=args.force, progress=not args.no_progress, wait=args.wait)
    done = df[df["metric"].isin(args.metric) | df["metric"].str.startswith(tuple(f"{m}_" for m in args.metric))]
    print(f"{len(done)} rows of {', '.join(args.metric)} in {args.dir} ({len(df)} rows in all)")
    return 0


def _describe(path: Path | Traversable) -> tuple[str, str]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return "?", f"(unreadable: {exc})"
    lines = str(doc.get("description", "")).strip().splitlines()
    return str(doc.get("kind", "mle")), lines[0] if lines else ""


def _cmd_list(args: argparse.Namespace) -> int:
    from .study import list_studies
    from .truths import list_presets

    print("studies (a local ./studies/NAME.toml wins over a study of the same NAME shipped inside mixsim):")
    for study in list_studies():
        kind, desc = _describe(study.path)
        origin = "local, overrides shipped" if study.overrides_shipped else study.origin
        print(f"  {study.name:28s} [{kind}] {desc}  ({origin}: {study.path})")
    print("\npresets (truths):")
    for name, doc in list_presets().items():
        print(f"  {name:28s} {doc}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .study import comparison_table, verdict_counts

    table = comparison_table(args.dir_a, args.dir_b, metrics=args.metric, label=args.label or "", paired=args.paired)
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)
    shown = ["truth", "estimator", "metric", "rate_a", "rate_b", "difference", "difference_low", "difference_high", "verdict",
             "n_ratio", "ref_ratio"]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(table[shown].to_string(index=False) if len(table) else "(no metric with a rate in both)")
        for estimator, sub in table.groupby("estimator", sort=False):
            print(f"\ntruths per verdict, estimator {estimator or '-'} (a - b; 'faster': a's errors fall faster):")
            print(verdict_counts(sub).to_string(index=False))
    return 0


def _cmd_repro(args: argparse.Namespace) -> int:
    from .repro import run_claim_test

    run_claim_test(args.scale, args.out or Path("results") / f"paper_{args.scale}", args.figures or Path("figures") / args.scale,
                   n_jobs=args.n_jobs)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    # Figures belong to mixsim.plots (issue 5): plot_study(results_dir, figures_dir) -> list of written paths.
    try:
        from .plots import plot_study
    except ImportError as exc:
        print(f"mixsim: error: 'mixsim plot' needs mixsim.plots.plot_study, which is not available ({exc})", file=sys.stderr)
        return 2
    written = plot_study(args.dir, args.figures or Path(args.dir) / "figures")
    for path in written or []:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .study import JOBLIB_BACKENDS

    from .repro import build_parser as repro_options
    from .version import __version__

    parser = argparse.ArgumentParser(prog="mixsim", description="Convergence studies of Gaussian mixtures of experts.")
    parser.add_argument("--version", action="version", version=f"mixsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run (or resume) a study")
    run.add_argument("study", help="a study TOML file, or a study name (./studies first, then the shipped ones)")
    run.add_argument("--out", help="results directory (default: results/<study name>)")
    run.add_argument("--n-jobs", type=int, default=1, help="parallel workers; -1 = all cores (default 1)")
    run.add_argument("--backend", choices=JOBLIB_BACKENDS, default="loky", help="joblib backend (default loky)")
    run.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (with --backend dask)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec key (TOML value), e.g. --set replications=5 --set grid.values=[100,200]")
    run.add_argument("--block-size", type=int, help="replicates fitted together (default: the spec's run.block_size)")
    run.add_argument("--force", action="store_true", help="delete results of a different spec in --out instead of refusing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--wait", action="store_true",
                     help="if another run holds the directory's lock (DIR/.lock), wait for it and then resume, instead of refusing")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="complete / failed / missing units of a results directory")
    status.add_argument("dir")
    status.add_argument("-v", "--verbose", action="store_true", help="also the complete units per fit and n")
    status.set_defaults(func=_cmd_status)

    rates = sub.add_parser("rates", help="rate table (estimate_rate with the declared [rates]) per gate, fitted k and metric")
    rates.add_argument("dir")
    rates.add_argument("--metric", action="append", help="metric(s) to fit (default: all error metrics)")
    rates.add_argument("--min-n", type=int, help="drop smaller sample sizes (choose before looking)")
    rates.add_argument("--csv", help="where to write the table (default DIR/rates.csv)")
    rates.set_defaults(func=_cmd_rates)

    ev = sub.add_parser("evaluate", help="compute metrics from the stored estimates (no refitting); resumable")
    ev.add_argument("dir")
    ev.add_argument("--metric", action="append", required=True, help="metric to compute (repeatable), e.g. --metric cells")
    ev.add_argument("--force", action="store_true", help="recompute metrics already evaluated")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--wait", action="store_true",
                    help="if a run holds the directory's lock (DIR/.lock), wait for it to finish instead of refusing")
    ev.set_defaults(func=_cmd_evaluate)

    cmp = sub.add_parser("compare", help="rate of study A minus rate of study B per truth and metric, with verdicts")
    cmp.add_argument("dir_a")
    cmp.add_argument("dir_b")
    cmp.add_argument("--metric", action="append", help="metric(s) to compare (default: every error metric both have)")
    cmp.add_argument("--label", help="the comparison column's value")
    cmp.add_argument("--paired", action="store_true",
                     help="resample replicate r of both studies together (matched truths sampled with common random numbers)")
    cmp.add_argument("--csv", help="also write the table here")
    cmp.set_defaults(func=_cmd_compare)

    repro = sub.add_parser("repro", help="the claim test (what python paper_repro.py runs), from any folder")
    repro_options(repro)
    repro.set_defaults(func=_cmd_repro)

    lst = sub.add_parser("list", help="studies (local ./studies, then shipped) and preset truths")
    lst.set_defaults(func=_cmd_list)

    plot = sub.add_parser("plot", help="draw a study's figures (mixsim.plots)")
    plot.add_argument("dir")
    plot.add_argument("--figures", help="output folder (default DIR/figures)")
    plot.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixsim`` console script; returns the exit status."""
    from .study import SpecError, StudyLockedError, StudyMismatchError

    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    main_thread = threading.current_thread() is threading.main_thread()  # (signal handlers live there only)
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # `kill PID` stops the workers too
    try:
        return handler(args)
    except (SpecError, StudyMismatchError, StudyLockedError, ValueError, ImportError) as exc:
        print(f"mixsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing, read-only or non-directory path: name it, no traceback
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"mixsim: error: {where}{exc.strerror or exc}" if where else f"mixsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixsim: interrupted; completed tasks are saved, run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the run unwinds, joblib stops its workers, completed tasks stay saved."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
