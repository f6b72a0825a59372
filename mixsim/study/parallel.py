"""Running a study: its tasks in parallel (joblib: loky, threading, sequential, or Dask), each
finished task written to the results directory by the parent process; resumable.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, parallel_config

from ..checks import check_int
from .results import collect
from .runner import RunnerHooks, plan_tasks, run_task
from .spec import StudySpec, load_study
from .store import locked, now, prepare_out_dir, record_run, scan_tasks, write_task_file
from .threads import torch_threads

__all__ = ["JOBLIB_BACKENDS", "progress_bar", "run_study", "tie_to_parent"]

#: Backends of :func:`run_study` (joblib's, and Dask through joblib).
JOBLIB_BACKENDS = ("loky", "threading", "sequential", "dask")


@contextlib.contextmanager
def _parallel_backend(backend: str, n_jobs: int, scheduler: str | None) -> Iterator[dict[str, Any]]:
    """Keyword arguments for joblib.Parallel; with Dask, a client connected for the duration."""
    if backend not in JOBLIB_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {JOBLIB_BACKENDS}")
    if scheduler is not None and backend != "dask":
        raise ValueError(f"a scheduler address needs backend='dask' (got backend={backend!r})")
    if backend == "sequential":
        yield {"n_jobs": 1, "backend": "sequential"}
        return
    if backend != "dask":
        yield {"n_jobs": n_jobs, "backend": backend}
        return
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("backend 'dask' needs dask[distributed]: pip install 'mixsim[dask]'") from exc
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            stack.enter_context(distributed.Client(scheduler, set_as_default=True))
        else:
            try:
                distributed.get_client()
            except ValueError as exc:
                raise ValueError("backend 'dask' needs a scheduler address (--scheduler tcp://HOST:8786) or a running distributed.Client") from exc
        stack.enter_context(parallel_config(backend="dask"))
        yield {"n_jobs": -1}


def progress_bar(total: int, initial_done: int, name: str, progress: bool) -> Any:
    """A tqdm bar over tasks, shown only when ``progress`` and stderr is a terminal."""
    from tqdm import tqdm  # a terminal bar (tqdm.auto warns in notebooks without ipywidgets; the bar is off there)

    enabled = progress and sys.stderr.isatty()
    return tqdm(total=total, desc=f"{name} ({initial_done} units already done)" if initial_done else name,
                unit="task", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def run_study(
    spec: StudySpec | str | Path,
    out_dir: str | Path,
    n_jobs: int = 1,
    backend: str = "loky",
    scheduler: str | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    block_size: int | None = None,
    engine: RunnerHooks | None = None,
    wait: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a study and return its tidy results table.

    Parameters
    ----------
    spec : StudySpec, or path of a TOML spec
    out_dir : str or Path
        Results directory; created if absent. A rerun into the same directory skips completed
        units and retries failed ones; a directory written by a different spec is refused.
    n_jobs : int, default 1
        joblib workers (-1: all cores). Ignored by the sequential and dask backends.
    backend : {"loky", "threading", "sequential", "dask"}, default "loky"
        "dask" runs the tasks on a Dask cluster through joblib (needs ``mixsim[dask]``).
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``); without it an existing ``distributed.Client`` is used.
    progress : bool, default True
        Show a tqdm bar (only when stderr is a terminal).
    force : bool, default False
        Delete the results of a different spec in ``out_dir`` instead of refusing.
    block_size : int, optional
        Replicates fitted together (default: the spec's ``run.block_size``). Batched and single
        fits agree to rounding only (~1e-11 relative), so a directory keeps the block size it was
        created with: a rerun uses it, and an explicit different one is refused.
    engine : RunnerHooks, optional
        Replacement fit/loss functions (tests, extensions).
    wait : bool, default False
        A run holds the lock ``out_dir/.lock`` while it works. When another run holds it, wait
        for it (then resume: only the units it left are done) instead of raising
        :class:`mixsim.study.StudyLockedError`.

    Every argument is checked before anything is written: a refused run leaves no directory.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`load_results`, also written to ``out_dir/results.parquet`` (or ``.csv``).
    """
    if not isinstance(spec, StudySpec):
        spec = load_study(spec)
    _check_run_args(n_jobs, backend, scheduler, block_size)
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise ValueError(f"out_dir (--out) must be a non-empty directory path; got {out_dir!r}")
    out = Path(out_dir)
    _check_out_dir(out)
    with _parallel_backend(backend, n_jobs, scheduler) as parallel_kwargs:  # a Dask scheduler is reached first
        out.mkdir(parents=True, exist_ok=True)
        with locked(out, wait=wait):
            return _run_locked(spec, out, n_jobs, backend, scheduler, progress, force, block_size, engine, parallel_kwargs)


def _check_run_args(n_jobs: Any, backend: str, scheduler: str | None, block_size: Any) -> None:
    """Refuse bad run arguments before anything is written (ValueError naming the argument)."""
    if backend not in JOBLIB_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {JOBLIB_BACKENDS}")
    if scheduler is not None and backend != "dask":
        raise ValueError(f"a scheduler address (--scheduler) needs backend='dask' (got backend={backend!r})")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs (--n-jobs) must be a non-zero int (-1 = all cores); got {n_jobs!r}")
    if block_size is not None:
        check_int(block_size, "block_size (--block-size)", 1)
    if backend == "dask":
        try:
            import distributed
        except ImportError as exc:
            raise ValueError("backend 'dask' needs dask[distributed]: pip install 'mixsim[dask]'") from exc
        if scheduler is None:
            try:
                distributed.get_client()
            except ValueError as exc:
                raise ValueError("backend 'dask' needs a scheduler address (--scheduler tcp://HOST:8786) "
                                 "or a running distributed.Client") from exc


def _worker_task(parent: int | None, spec: StudySpec, task: Any, engine: RunnerHooks | None) -> tuple:
    """:func:`run_task` in a worker; a child process of the run (``parent``: the run's pid) is first
    tied to it, so that it dies with the run, even when the run is killed with SIGKILL (Linux)."""
    if parent is not None and os.getpid() != parent:
        tie_to_parent(parent)
    return run_task(spec, task, engine)


def tie_to_parent(parent: int) -> None:
    """Ask the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to kill this process when its parent
    dies; exit at once if the parent ``parent`` is already gone. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the worker exits when joblib notices the parent is gone
        return
    if os.getppid() != parent:  # the run died before the signal was armed
        os._exit(1)


def _check_out_dir(out: Path) -> None:
    """The results directory must be (or be creatable as) a writable folder; OSError naming the path."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"--out {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"--out {out}: {parent} is not writable")
            return


def _run_locked(spec: StudySpec, out: Path, n_jobs: int, backend: str, scheduler: str | None, progress: bool,
                force: bool, block_size: int | None, engine: RunnerHooks | None,
                parallel_kwargs: dict[str, Any]) -> pd.DataFrame:
    meta = prepare_out_dir(out, spec, force=force, block_size=block_size)
    index = scan_tasks(out, spec.hash)
    tasks = plan_tasks(spec, index.complete(), meta.get("block_size", spec.block_size))
    started, t0, n_fits, failed_units = now(), time.perf_counter(), 0, 0
    with torch_threads(1):
        if tasks:
            parallel = Parallel(return_as="generator_unordered", **parallel_kwargs)
            with progress_bar(len(tasks), len(index.complete()), spec.name, progress) as bar:
                # loky's workers are children of this process; tie them to it when the main thread (which lives
                # as long as the process) runs the study: the kernel's parent-death signal follows the spawning thread
                main = threading.current_thread() is threading.main_thread()
                parent = os.getpid() if backend == "loky" and main else None
                for task, units, _ in parallel(delayed(_worker_task)(parent, spec, t, engine) for t in tasks):
                    write_task_file(out, spec.hash, task.to_dict(), units)
                    n_fits += len(units)
                    failed_units += sum(u["failed"] for u in units)
                    bar.update(1)
                    if failed_units:
                        bar.set_postfix(failed=failed_units)
    df = collect(out)
    record_run(out, {
        "started": started, "finished": now(), "seconds": round(time.perf_counter() - t0, 3),
        "backend": backend, "n_jobs": n_jobs, "scheduler": scheduler, "tasks": len(tasks), "units": n_fits,
        "failed_units": failed_units, "corrupt_files_redone": len(index.corrupt),
    })
    return df

