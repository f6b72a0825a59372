"""The results directory of a study: metadata, one checksummed file per completed task, the tidy table.

Layout of ``OUT/``::

    study.json          metadata: spec (normalised) and its hash, the TOML text, package versions,
                        git commit, one entry per run (when, where, backend, tasks, fits, failures)
    tasks/*.json        one file per completed task: its units' rows and estimates (fitted
                        parameters, log-likelihood, stationarity, ...), then a "#sha256:" footer line
    evals/METRIC/*.json metric rows recomputed from the stored estimates by ``mixsim evaluate``
                        (same format, one file per task file; they replace a task's rows of that metric)
    corrupt/            task files that failed their checksum (kept for inspection; their work is redone)
    results.parquet     the tidy table (results.csv where pyarrow is not installed), same columns
    rates.csv           written by ``mixsim rates``

A *unit* is one (n, replicate, fit) cell of the study, where fit is ``<gate label>_k<fitted k>``
(or ``nn``); a task is a block of units fitted together. Completion is tracked per unit, so a
rerun, whatever its block size or number of jobs, does exactly the missing or failed units.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

__all__ = [
    "COLUMNS",
    "StudyMismatchError",
    "StudyLockedError",
    "locked",
    "ResultsIndex",
    "prepare_out_dir",
    "read_meta",
    "write_meta",
    "write_task_file",
    "read_task_file",
    "scan_tasks",
    "assemble",
    "collect",
    "load_results",
]

FORMAT = 1
META = "study.json"
TASKS = "tasks"
CORRUPT = "corrupt"
EVALS = "evals"
RESULTS = ("results.parquet", "results.csv")
_FOOTER = "#sha256:"

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
}
#: Row statuses that mark a unit as failed (retried by a rerun).
FAILED_STATUSES = ("error", "metric_error")


class StudyMismatchError(RuntimeError):
    """The output directory holds results of a different spec (or of no known spec)."""


class StudyLockedError(RuntimeError):
    """Another run holds the lock of a results directory."""


LOCK = ".lock"


@contextlib.contextmanager
def locked(out_dir: str | Path, wait: bool = False, poll: float = 0.5) -> Iterator[Path]:
    """Hold the lock ``OUT/.lock`` of a results directory (an exclusive ``flock``, released by the
    kernel when the process dies, so a killed run never leaves a stale lock).

    Parameters
    ----------
    out_dir : str or Path
        An existing results directory.
    wait : bool, default False
        Wait for the lock instead of raising :class:`StudyLockedError`.
    """
    import fcntl

    path = Path(out_dir) / LOCK
    fh = open(path, "a+")
    try:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown process"
                    raise StudyLockedError(
                        f"{path} is held by another run ({holder}); wait for it to finish, "
                        "or pass --wait (run_study(..., wait=True)) to queue behind it") from None
                time.sleep(poll)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()} since {_now()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the flock


# ---------------------------------------------------------------------------------------------
# small file helpers
# ---------------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _remove_stale_temporaries(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------

def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("mixsim", "numpy", "scipy", "torch", "pandas", "joblib", "tqdm", "dask", "distributed", "pyarrow"):
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> dict[str, Any]:
    """Commit (and whether the tree had changes) of the checkout holding this package, if any."""
    here = Path(__file__).resolve().parent
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def read_meta(out_dir: str | Path) -> dict[str, Any]:
    """The metadata (``study.json``) of a results directory."""
    path = Path(out_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a study results directory (no {META})")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StudyMismatchError(f"{path} is damaged (not valid JSON: {exc}); use a new --out directory, "
                                 "or --force to delete this directory's results") from exc
    if not isinstance(meta, dict) or "spec_hash" not in meta:
        raise StudyMismatchError(f"{path} is damaged (no spec_hash); use a new --out directory, or --force to delete its results")
    return meta


def write_meta(out_dir: str | Path, meta: dict[str, Any]) -> None:
    _atomic_write(Path(out_dir) / META, json.dumps(meta, indent=2, sort_keys=False).encode())


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            out |= _flatten(value, f"{prefix}.{key}" if prefix else key)
        return out
    return {prefix: doc}


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _wipe(out: Path) -> None:
    """Remove what this package writes in a results directory (nothing else)."""
    for name in (TASKS, CORRUPT, "figures"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (*RESULTS, "rates.csv", META):
        (out / name).unlink(missing_ok=True)


def prepare_out_dir(out_dir: str | Path, spec: Any, force: bool = False, block_size: int | None = None) -> dict[str, Any]:
    """Create or reopen a results directory for ``spec``; return its metadata.

    ``block_size`` (default: the spec's) is recorded when the directory is created. Batched fits
    agree with one-at-a-time fits only to rounding (~1e-11 relative), so a directory keeps one
    block size: reruns use the recorded one and an explicit different one is refused.

    Raises
    ------
    StudyMismatchError
        When the directory holds results of another spec (a different hash) and ``force`` is False.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META
    has_tasks = (out / TASKS).is_dir() and any((out / TASKS).glob("*.json"))
    if meta_path.is_file():
        try:
            meta = read_meta(out)
        except StudyMismatchError:
            if not force:
                raise
            meta = {"spec_hash": None}
        if meta.get("spec_hash") != spec.hash:
            if not force:
                changed = _changed_keys(meta.get("spec", {}), spec.to_dict())
                raise StudyMismatchError(
                    f"{out} holds results of a different spec (study {meta.get('study')!r}, hash "
                    f"{str(meta.get('spec_hash'))[:12]}; this spec: {spec.name!r}, hash {spec.hash[:12]}; "
                    f"changed keys: {', '.join(changed) or 'the resolved truth or the fit defaults'}). "
                    "Results of two specs are never mixed: use a new --out directory, or --force to delete the old results."
                )
            _wipe(out)
        else:
            _remove_stale_temporaries(out / TASKS)  # (the caller holds the directory's lock)
            recorded = meta.get("block_size")
            if recorded is not None and (isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1):
                # written by mixsim <= 0.1, which accepted --block-size -1 and then ran nothing: repair it
                meta["block_size"] = recorded = block_size if block_size is not None else spec.block_size
                write_meta(out, meta)
            if block_size is not None and recorded is not None and block_size != recorded:
                raise StudyMismatchError(
                    f"{out} was run with block_size = {recorded}; a rerun must use the same block size "
                    f"(batched fits agree with other blockings only to rounding), not {block_size}. "
                    "Omit --block-size to resume, or use a new --out directory."
                )
            return meta
    elif has_tasks:
        if not force:
            raise StudyMismatchError(
                f"{out} holds task files but no {META}, so their spec is unknown; "
                "use a new --out directory, or --force to delete them."
            )
        _wipe(out)
    meta = {
        "format": FORMAT,
        "study": spec.name,
        "spec_hash": spec.hash,
        "block_size": block_size if block_size is not None else spec.block_size,
        "spec": spec.to_dict(),
        "spec_source": spec.source,
        "spec_toml": Path(spec.source).read_text() if spec.source and Path(spec.source).is_file() else None,
        "created": _now(),
        "versions": _versions(),
        "git": _git_commit(),
        "runs": [],
    }
    (out / TASKS).mkdir(exist_ok=True)
    write_meta(out, meta)
    return meta


def record_run(out_dir: str | Path, run: dict[str, Any]) -> None:
    """Append one run's summary (and the current versions and commit) to the metadata."""
    meta = read_meta(out_dir)
    meta["runs"].append(run | {"host": platform.node(), "versions": _versions(), "git": _git_commit()})
    write_meta(out_dir, meta)


# ---------------------------------------------------------------------------------------------
# task files
# ---------------------------------------------------------------------------------------------

class CorruptTaskFile(ValueError):
    """A task file that is truncated, fails its checksum, or does not parse."""


def _task_file_name(task: dict[str, Any]) -> str:
    reps = task["replicates"]
    digest = hashlib.sha256(json.dumps(reps).encode()).hexdigest()[:8]
    return f"n{task['n']:09d}_{task['fit']}_r{reps[0]:05d}-{reps[-1]:05d}_{digest}.json"


def write_task_file(out_dir: str | Path, spec_hash: str, task: dict[str, Any], units: list[dict[str, Any]],
                    folder: str = TASKS) -> Path:
    """Write one completed task atomically; ``units`` are dicts with replicate, failed, rows, traceback.

    The file is a JSON document followed by a footer line ``#sha256:<hex of the document>``, so a
    truncated or altered file is detected on reading.
    """
    payload = {"format": FORMAT, "spec_hash": spec_hash, "task": task, "written": _now(), "units": units}
    body = json.dumps(payload, separators=(",", ":")).encode()  # NaN is written as NaN (read back by json)
    path = Path(out_dir) / folder / _task_file_name(task)
    _atomic_write(path, body + f"\n{_FOOTER}{hashlib.sha256(body).hexdigest()}\n".encode())
    return path


def read_task_file(path: str | Path) -> dict[str, Any]:
    """Read and verify one task file; raises :class:`CorruptTaskFile`."""
    raw = Path(path).read_bytes()
    body, sep, footer = raw.rstrip(b"\n").rpartition(b"\n")
    if not sep or not footer.startswith(_FOOTER.encode()):
        raise CorruptTaskFile(f"{path}: no checksum footer (truncated?)")
    if hashlib.sha256(body).hexdigest() != footer[len(_FOOTER):].decode(errors="replace"):
        raise CorruptTaskFile(f"{path}: checksum mismatch")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise CorruptTaskFile(f"{path}: does not parse: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "units" not in payload:
        raise CorruptTaskFile(f"{path}: not a task file of format {FORMAT}")
    return payload


@dataclass
class ResultsIndex:
    """Which units of a study are on disk: the chosen record per unit key (n, replicate, fit)."""

    units: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)
    corrupt: list[Path] = field(default_factory=list)
    files: int = 0

    def complete(self) -> set[tuple[int, int, str]]:
        """Unit keys with a successful record (failed units are retried)."""
        return {key for key, unit in self.units.items() if not unit["failed"]}

    def failed(self) -> set[tuple[int, int, str]]:
        return {key for key, unit in self.units.items() if unit["failed"]}


def _better(new: tuple, old: tuple) -> bool:
    """Precedence of two records of one unit: a success beats a failure, then the later one wins."""
    return (not new[0]["failed"], new[1], new[2]) > (not old[0]["failed"], old[1], old[2])


def scan_tasks(out_dir: str | Path, spec_hash: str | None = None, quarantine: bool = True) -> ResultsIndex:
    """Read every task file of a results directory.

    Files that are truncated, fail their checksum, or belong to another spec hash are moved to
    ``corrupt/`` (when ``quarantine``) so that their units are redone.
    """
    out = Path(out_dir)
    index = ResultsIndex()
    chosen: dict[tuple[int, int, str], tuple] = {}
    for path in sorted((out / TASKS).glob("*.json")):
        try:
            payload = read_task_file(path)
            if spec_hash is not None and payload["spec_hash"] != spec_hash:
                raise CorruptTaskFile(f"{path}: written for spec hash {payload['spec_hash'][:12]}, not {spec_hash[:12]}")
        except (CorruptTaskFile, OSError):
            index.corrupt.append(path)
            if quarantine:
                (out / CORRUPT).mkdir(exist_ok=True)
                os.replace(path, out / CORRUPT / f"{path.name}.{uuid.uuid4().hex[:6]}")
            continue
        index.files += 1
        task = payload["task"]
        for unit in payload["units"]:
            key = (int(task["n"]), int(unit["replicate"]), str(task["fit"]))
            record = (unit, payload["written"], path.name)
            if key not in chosen or _better(record, chosen[key]):
                chosen[key] = record
    index.units = {key: rec[0] for key, rec in chosen.items()}
    return index


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

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


def scan_evals(out_dir: str | Path, spec_hash: str | None = None) -> dict[tuple[int, int, str], list[dict[str, Any]]]:
    """Rows written by ``evaluate`` (``evals/*/*.json``), per unit key; damaged files are skipped
    (``evaluate`` redoes them)."""
    extra: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for path in sorted(Path(out_dir).glob(f"{EVALS}/*/*.json")):
        try:
            payload = read_task_file(path)
        except (CorruptTaskFile, OSError):
            continue
        if spec_hash is not None and payload["spec_hash"] != spec_hash:
            continue
        task = payload["task"]
        for unit in payload["units"]:
            extra.setdefault((int(task["n"]), int(unit["replicate"]), str(task["fit"])), []).extend(unit["rows"])
    return extra


def assemble(index: ResultsIndex, extra: dict[tuple[int, int, str], list[dict[str, Any]]] | None = None) -> pd.DataFrame:
    """The tidy table of an index: one row per (n, replicate, gate, fitted k, metric), sorted.

    ``extra`` rows (from :func:`scan_evals`) replace a unit's rows of the same metric, or are added.
    """
    rows: list[dict[str, Any]] = []
    extra = extra or {}
    for key in sorted(index.units):
        unit_rows = index.units[key]["rows"]
        if key in extra:
            redone = {row["metric"] for row in extra[key]}
            unit_rows = [row for row in unit_rows if row["metric"] not in redone] + extra[key]
        for i, row in enumerate(unit_rows):
            rows.append(row | {"_fit": key[2], "_i": i})
    if not rows:
        return empty_table()
    df = pd.DataFrame(rows).sort_values(["n", "replicate", "_fit", "_i"], kind="mergesort")
    return _typed(df.drop(columns=["_fit", "_i"]).reset_index(drop=True))


def _listing_digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((out / TASKS).glob("*.json")) + sorted(out.glob(f"{EVALS}/*/*.json")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    df = assemble(scan_tasks(out, meta["spec_hash"]), scan_evals(out, meta["spec_hash"]))
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
    meta["collected"] = {"file": target.name, "tasks_digest": _listing_digest(out), "rows": len(df), "at": _now(),
                         "sha256": _file_digest(target)}
    write_meta(out, meta)
    return df


# pandas < 3 parses floats exactly only with float_precision="round_trip"; pandas 3 does by default
# (and deprecates the argument).
_CSV_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def _read_table(path: Path) -> pd.DataFrame:
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
        Corrupt task files are left out with a RuntimeWarning (``mixsim run`` redoes them).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: study, n, replicate, gate, fitted_k, metric, value, seed,
        converged, iterations, seconds, status, grad_norm, error.
    """
    path = Path(path)
    if path.is_file():
        return _read_table(path)
    meta = read_meta(path)
    collected = meta.get("collected") or {}
    target = path / str(collected.get("file", ""))
    if (collected and target.is_file() and collected.get("tasks_digest") == _listing_digest(path)
            and collected.get("sha256") == _file_digest(target)):
        return _read_table(target)
    # The combined file is missing, stale (task files changed), edited or truncated: rebuild it from the
    # task files, and rewrite it when no run holds the directory (a read-only one is left as it is).
    index = scan_tasks(path, meta["spec_hash"], quarantine=False)
    if index.corrupt:
        warnings.warn(
            f"{path}: {len(index.corrupt)} corrupt task file(s) (e.g. {index.corrupt[0].name}) are left out, so their "
            "units are missing from this table; run the study again to redo them", RuntimeWarning, stacklevel=2)
        return assemble(index, scan_evals(path, meta["spec_hash"]))
    if collected or target.is_file():
        try:
            with locked(path):
                return collect(path)
        except (StudyLockedError, OSError):
            pass
    return assemble(index, scan_evals(path, meta["spec_hash"]))


def iter_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with plain Python scalars (numpy scalars converted), ready for JSON."""
    out = []
    for row in rows:
        out.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
    return out
