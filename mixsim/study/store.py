"""The results directory of a study: metadata, its lock, one checksummed file per completed task.

Layout of ``OUT/``::

    study.json          metadata: spec (normalised) and its hash, the TOML text, package versions,
                        git commit, one entry per run (when, where, backend, tasks, fits, failures)
    tasks/*.json        one file per completed task: its units' rows and estimates (fitted parameters,
                        log-likelihood, stationarity, certificate...), then a "#sha256:" footer line
    evals/METRIC/*.json metric rows recomputed from the stored estimates by ``mixsim evaluate``
                        (same format, one file per task file; they replace a task's rows of that metric)
    corrupt/            task files that failed their checksum (kept for inspection; their work is redone)
    results.parquet     the tidy table (results.csv where pyarrow is not installed), same columns
    rates.csv           written by ``mixsim rates``

A *unit* is one (n, replicate, fit) cell of the study, where fit is ``<gate label>_k<fitted k>``
(or ``nn``); a task is a block of units fitted together. Completion is tracked per unit, so a
rerun, whatever its block size or number of jobs, does exactly the missing or failed units.
The tidy table assembled from the task files is :mod:`mixsim.study.results`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterator

from ..version import __version__
from .spec import SpecError, StudySpec

__all__ = [
    "StudyMismatchError",
    "StudyLockedError",
    "CorruptTaskFile",
    "locked",
    "ResultsIndex",
    "prepare_out_dir",
    "read_meta",
    "write_meta",
    "record_run",
    "task_file_name",
    "write_task_file",
    "read_task_file",
    "scan_tasks",
    "scan_evals",
    "now",
    "listing_digest",
    "file_digest",
]

FORMAT = 1
META = "study.json"
TASKS = "tasks"
CORRUPT = "corrupt"
EVALS = "evals"
RESULTS = ("results.parquet", "results.csv")
_FOOTER = "#sha256:"


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
                        "or pass --wait (wait=True in Python) to queue behind it") from None
                time.sleep(poll)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()} since {now()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the flock


# ---------------------------------------------------------------------------------------------
# small file helpers
# ---------------------------------------------------------------------------------------------

def now() -> str:
    """The current UTC time, ISO 8601 to the microsecond."""
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
    out: dict[str, str | None] = {"python": platform.python_version(), "mixsim": __version__}  # this code's own
    for name in ("numpy", "scipy", "torch", "pandas", "joblib", "tqdm", "dask", "distributed", "pyarrow"):
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
    _check_recorded_spec(path, meta)
    return meta


def _check_recorded_spec(path: Path, meta: dict[str, Any]) -> None:
    """The spec recorded in ``study.json`` must hash to its ``spec_hash``: an edit of it (say of
    ``replications``) is detected as a task file's edit is, instead of changing what is planned."""
    try:
        digest = _spec_digest(json.dumps(meta["spec"], sort_keys=True))
    except (KeyError, TypeError, ValueError, SpecError) as exc:
        raise StudyMismatchError(f"{path} is damaged (its 'spec' does not parse: {exc}); use a new --out directory, "
                                 "or --force to delete its results") from exc
    if digest != meta["spec_hash"]:
        raise StudyMismatchError(f"{path} was edited: its 'spec' hashes to {digest[:12]}, not to its spec_hash "
                                 f"{str(meta['spec_hash'])[:12]}, so what it plans is not what was run; restore the file, or "
                                 "rerun the study into a new --out directory (or with --force, which deletes these results)")


@functools.lru_cache(maxsize=32)
def _spec_digest(spec_json: str) -> str:  # cached: resolving an ensemble's truths takes ~0.1 s
    return StudySpec.from_dict(json.loads(spec_json)).hash


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
        "created": now(),
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


def task_file_name(task: dict[str, Any]) -> str:
    """The file name of a task (its n, fit, first and last replicate, and a digest of the replicates)."""
    reps = task["replicates"]
    digest = hashlib.sha256(json.dumps(reps).encode()).hexdigest()[:8]
    return f"n{task['n']:09d}_{task['fit']}_r{reps[0]:05d}-{reps[-1]:05d}_{digest}.json"


def write_task_file(out_dir: str | Path, spec_hash: str, task: dict[str, Any], units: list[dict[str, Any]],
                    folder: str = TASKS) -> Path:
    """Write one completed task atomically; ``units`` are dicts with replicate, failed, rows, traceback.

    The file is a JSON document followed by a footer line ``#sha256:<hex of the document>``, so a
    truncated or altered file is detected on reading.
    """
    payload = {"format": FORMAT, "spec_hash": spec_hash, "task": task, "written": now(), "units": units}
    body = json.dumps(payload, separators=(",", ":")).encode()  # NaN is written as NaN (read back by json)
    path = Path(out_dir) / folder / task_file_name(task)
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


def _payloads(paths: list[Path], spec_hash: str | None) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """Each file with its payload, or None where it is truncated, altered or of another spec hash."""
    for path in paths:
        try:
            payload = read_task_file(path)
            if spec_hash is not None and payload["spec_hash"] != spec_hash:
                raise CorruptTaskFile(f"{path}: written for spec hash {payload['spec_hash'][:12]}, not {spec_hash[:12]}")
        except (CorruptTaskFile, OSError):
            yield path, None
            continue
        yield path, payload


def _units(payload: dict[str, Any]) -> Iterator[tuple[tuple[int, int, str], dict[str, Any]]]:
    """The units of a task file with their keys (n, replicate, fit)."""
    task = payload["task"]
    for unit in payload["units"]:
        yield (int(task["n"]), int(unit["replicate"]), str(task["fit"])), unit


def scan_tasks(out_dir: str | Path, spec_hash: str | None = None, quarantine: bool = True) -> ResultsIndex:
    """Read every task file of a results directory.

    Files that are truncated, fail their checksum, or belong to another spec hash are moved to
    ``corrupt/`` (when ``quarantine``) so that their units are redone.
    """
    out = Path(out_dir)
    index = ResultsIndex()
    chosen: dict[tuple[int, int, str], tuple] = {}
    for path, payload in _payloads(sorted((out / TASKS).glob("*.json")), spec_hash):
        if payload is None:
            index.corrupt.append(path)
            if quarantine:
                (out / CORRUPT).mkdir(exist_ok=True)
                os.replace(path, out / CORRUPT / f"{path.name}.{uuid.uuid4().hex[:6]}")
            continue
        index.files += 1
        for key, unit in _units(payload):
            record = (unit, payload["written"], path.name)
            if key not in chosen or _better(record, chosen[key]):
                chosen[key] = record
    index.units = {key: rec[0] for key, rec in chosen.items()}
    return index


def scan_evals(out_dir: str | Path, spec_hash: str | None = None) -> dict[tuple[int, int, str], list[dict[str, Any]]]:
    """Rows written by ``evaluate`` (``evals/*/*.json``), per unit key; damaged files are skipped
    (``evaluate`` redoes them)."""
    extra: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for _, payload in _payloads(sorted(Path(out_dir).glob(f"{EVALS}/*/*.json")), spec_hash):
        if payload is None:
            continue
        for key, unit in _units(payload):
            extra.setdefault(key, []).extend(unit["rows"])
    return extra


def listing_digest(out: Path) -> str:
    """A digest of the names, sizes and times of the task and eval files (changes when any does)."""
    h = hashlib.sha256()
    for p in sorted((out / TASKS).glob("*.json")) + sorted(out.glob(f"{EVALS}/*/*.json")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()

