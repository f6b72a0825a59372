"""Torch's thread count inside a study task (and a network task), set and restored safely."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

__all__ = ["torch_threads"]

_LOCK = threading.Lock()
_STATE = {"depth": 0, "saved": None}  # process-wide: tasks may run in several threads at once


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)``.

    The first caller in a process saves the old setting and the last one out restores it, so
    concurrent tasks (threading backend, multi-threaded Dask workers) never switch the count under
    each other. A nested call asking for another count (a network task's ``threads`` option inside
    a study task) sets it, and restores the enclosing count when it leaves.
    """
    with _LOCK:
        outermost = _STATE["depth"] == 0
        previous = torch.get_num_threads()
        if outermost:
            _STATE["saved"] = previous
        if previous != n:
            torch.set_num_threads(n)
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                if torch.get_num_threads() != _STATE["saved"]:
                    torch.set_num_threads(_STATE["saved"])
            elif not outermost and previous != n and torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
