"""The tidy results table of a study: one row per (n, replicate, gate, fitted k, metric).

Assembled from the task files of a results directory (:mod:`mixsim.study.store`) and written
beside them as ``results.parquet`` (``results.csv`` where pyarrow is not installed);
:func:`load_results` reads it back, rebuilding it when the task files changed.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .plan import estimator_of, plan_units
from .spec import StudySpec
from .store import (RESULTS, ResultsIndex, StudyLockedError, file_digest, listing_digest, locked, now,
                    read_meta, scan_evals, scan_tasks, write_meta)

__all__ = ["COLUMNS", "FAILED_STATUSES", "empty_table", "assemble", "collect", "read_table", "load_results", "missing_units",
           "iter_rows"]

#: Columns of the tidy results table, in order, with their dtypes.
COLUMNS: dict[str, str] = {
    "study": "object",
    "n": "int64",
    "replicate": "int64",
    "gate": "object",
    "fitted_k": "int64",
    "metric": "object",
    "value": "float64",
    "seed": "int64",
    "converged": "bool",
    "iterations": "int64",
    "seconds": "float64",
    "status": "object",
    "grad_norm": "float64",
    "error": "object",
    "truth": "int64",  # index of the study's truth (0 unless the study draws several)
    "estimator": "object",  # which estimate of the unit (mixsim.study.plan.ESTIMATORS); "" in a network study
}
#: Row statuses that mark a unit as failed (retried by a rerun).
FAILED_STATUSES = ("error", "metric_error")



def empty_table() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series([], dtype="float64") for c in COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in order with their dtypes (strings as object, missing text as "")."""
    df = df.reindex(columns=list(COLUMNS))
    for col, dtype in COLUMNS.items():
        if dtype == "object":
            df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str).astype(object)
        elif col == "truth":  # files written before studies had several truths
            df[col] = df[col].fillna(0).astype(dtype)
        else:
            df[col] = df[col].astype(dtype)
    return df



def assemble(index: ResultsIndex, extra: dict[tuple[int, int, str], list[dict[str, Any]]] | None = None) -> pd.DataFrame:
    """The tidy table of an index: one row per (n, replicate, gate, fitted k, metric), sorted.

    ``extra`` rows (from :func:`scan_evals`) replace a unit's rows of the same metric, or are added.
    """
    rows: list[dict[str, Any]] = []
    extra = extra or {}
    for key in sorted(index.units):
        unit_rows = index.units[key]["rows"]
        if key in extra:
            redone = {(row["metric"], row.get("estimator", "")) for row in extra[key]}
            unit_rows = [row for row in unit_rows if (row["metric"], row.get("estimator", "")) not in redone] + extra[key]
        for i, row in enumerate(unit_rows):
            rows.append(row | {"_fit": key[2], "_i": i})
    if not rows:
        return empty_table()
    df = pd.DataFrame(rows).sort_values(["n", "replicate", "_fit", "_i"], kind="mergesort")
    return _typed(df.drop(columns=["_fit", "_i"]).reset_index(drop=True))



def _have_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def collect(out_dir: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Assemble the task files into the table and write ``results.parquet`` (or ``.csv``).

    Parameters
    ----------
    out_dir : str or Path
    fmt : {"parquet", "csv"} or None
        None: parquet when pyarrow is importable, else CSV. The other format's file is removed.
    """
    out = Path(out_dir)
    meta = read_meta(out)
    index = scan_tasks(out, meta["spec_hash"])
    df = _named_estimates(assemble(index, scan_evals(out, meta["spec_hash"])), meta)
    fmt = fmt or ("parquet" if _have_pyarrow() else "csv")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv'; got {fmt!r}")
    target = out / f"results.{fmt}"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if fmt == "parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, target)
    for other in RESULTS:
        if other != target.name:
            (out / other).unlink(missing_ok=True)
    meta = read_meta(out)
    meta["collected"] = {"file": target.name, "tasks_digest": listing_digest(out), "rows": len(df), "at": now(),
                         "sha256": file_digest(target), "missing_units": len(missing_units(meta, index))}
    write_meta(out, meta)
    return df


# pandas < 3 parses floats exactly only with float_precision="round_trip"; pandas 3 does by default
# (and deprecates the argument).
_CSV_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def read_table(path: Path) -> pd.DataFrame:
    """A results file (``.parquet`` or ``.csv``) with the columns and dtypes of :data:`COLUMNS`."""
    if path.suffix == ".parquet":
        return _typed(pd.read_parquet(path))
    if path.suffix == ".csv":
        return _typed(pd.read_csv(
            path,
            dtype={c: str for c, t in COLUMNS.items() if t == "object"},
            keep_default_na=False,  # text stays text ("" is no error); float columns read NaN back
            na_values={c: ["", "NaN", "nan"] for c, t in COLUMNS.items() if t == "float64"},
            **_CSV_FLOATS,
        ))
    raise ValueError(f"{path}: expected a .parquet or .csv results file, or a results directory")


def _named_estimates(df: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Rows of task files written before the ``estimator`` column get the estimator of the study's ``fit.init``."""
    blank, name = df["estimator"] == "", estimator_of(meta.get("spec", {}))
    if blank.any() and name:
        df.loc[blank, "estimator"] = name
    return df


def load_results(path: str | Path) -> pd.DataFrame:
    """Load a study's tidy results table.

    Parameters
    ----------
    path : str or Path
        A results directory (``mixsim run --out DIR``), or a ``results.parquet`` / ``results.csv``.
        For a directory, the combined file (``results.parquet``) is used when it is up to date
        with the task files and unaltered (its SHA-256 is recorded in ``study.json``); otherwise
        (a run in progress or killed, an edited or truncated file) the rows are assembled from the
        task files and the combined file is rewritten (when no run holds the directory's lock).
        Corrupt task files are left out with a RuntimeWarning (``mixsim run`` redoes them). A
        table that lacks planned units (never run, a task file deleted) is never presented as
        complete: a RuntimeWarning names the missing units, and the combined file is not
        rewritten without them.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: study, n, replicate, gate, fitted_k, metric, value, seed,
        converged, iterations, seconds, status, grad_norm, error.
    """
    path = Path(path)
    if path.is_file():
        return read_table(path)
    meta = read_meta(path)
    collected = meta.get("collected") or {}
    target = path / str(collected.get("file", ""))
    if (collected and target.is_file() and collected.get("tasks_digest") == listing_digest(path)
            and collected.get("sha256") == file_digest(target)):
        if collected.get("missing_units"):
            _warn_missing(path, missing_units(meta, scan_tasks(path, meta["spec_hash"], quarantine=False)))
        return _named_estimates(read_table(target), meta)
    # The combined file is missing, stale (task files changed), edited or truncated: rebuild it from the
    # task files, and rewrite it when no run holds the directory (a read-only one is left as it is).
    index = scan_tasks(path, meta["spec_hash"], quarantine=False)
    if index.corrupt:
        warnings.warn(
            f"{path}: {len(index.corrupt)} corrupt task file(s) (e.g. {index.corrupt[0].name}) are left out, so their "
            "units are missing from this table; run the study again to redo them", RuntimeWarning, stacklevel=2)
        return _named_estimates(assemble(index, scan_evals(path, meta["spec_hash"])), meta)
    missing = missing_units(meta, index)
    if missing:  # planned units without a task file: say so, and keep the combined file as it is
        _warn_missing(path, missing)
        return _named_estimates(assemble(index, scan_evals(path, meta["spec_hash"])), meta)
    if collected or target.is_file():
        try:
            with locked(path):
                return collect(path)
        except (StudyLockedError, OSError):
            pass
    return _named_estimates(assemble(index, scan_evals(path, meta["spec_hash"])), meta)




def missing_units(meta: dict[str, Any], index: ResultsIndex) -> list[tuple[int, int, str]]:
    """The units (n, replicate, fit) the spec of ``meta`` plans that have no record in ``index``
    (neither complete nor failed: never run, or their task file was deleted or is corrupt)."""
    spec = StudySpec.from_dict(meta["spec"], source=meta.get("spec_source"))
    return sorted(set(plan_units(spec)) - set(index.units))


def _warn_missing(path: Path, missing: list[tuple[int, int, str]]) -> None:
    shown = ", ".join(f"(n={n}, replicate={r}, fit={f})" for n, r, f in missing[:5])
    warnings.warn(
        f"{path}: incomplete: {len(missing)} planned unit(s) have no task file, so their rows are missing from "
        f"this table: {shown}{', ...' if len(missing) > 5 else ''}; run the study again to do them "
        "(the combined results file is not rewritten without them)", RuntimeWarning, stacklevel=3)


def iter_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with plain Python scalars (numpy scalars converted), ready for JSON."""
    out = []
    for row in rows:
        out.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
    return out
