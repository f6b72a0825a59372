"""What a results directory holds against what its spec plans: :func:`study_status`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .runner import plan_units
from .spec import StudySpec
from .store import read_meta, scan_tasks

__all__ = ["StudyStatus", "study_status"]


@dataclass
class StudyStatus:
    """What a results directory holds, against what its spec plans."""

    name: str
    spec_hash: str
    planned: int
    complete: int
    failed: int
    corrupt: int
    by_fit: pd.DataFrame = field(repr=False)  # complete units per (fit, n)
    runs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list, repr=False)

    @property
    def missing(self) -> int:
        return self.planned - self.complete - self.failed

    @property
    def done(self) -> bool:
        return self.complete == self.planned

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"study {self.name!r} (spec {self.spec_hash[:12]})",
            f"units: {self.complete}/{self.planned} complete, {self.failed} failed, {self.missing} not run"
            + (f"; {self.corrupt} corrupt task file(s) found (their units will be redone)" if self.corrupt else ""),
        ]
        if self.runs:
            last = self.runs[-1]
            lines.append(f"runs: {len(self.runs)}; last finished {last.get('finished')} ({last.get('backend')}, "
                         f"{last.get('tasks')} tasks, {last.get('seconds')} s)")
        if self.errors:
            lines.append("first errors:")
            lines.extend(f"  {e}" for e in self.errors[:5])
        return "\n".join(lines)


def study_status(out_dir: str | Path) -> StudyStatus:
    """Count complete, failed and missing units of a results directory (reads, never writes)."""
    meta = read_meta(out_dir)
    spec = StudySpec.from_dict(meta["spec"], source=meta.get("spec_source"))
    index = scan_tasks(out_dir, meta["spec_hash"], quarantine=False)
    planned = set(plan_units(spec))
    complete = index.complete() & planned
    failed = index.failed() & planned
    counts = pd.DataFrame(sorted(complete), columns=["n", "replicate", "fit"])
    by_fit = counts.groupby(["fit", "n"]).size().unstack(fill_value=0) if len(counts) else pd.DataFrame()
    errors = sorted({row["error"] for key in failed for row in index.units[key]["rows"] if row.get("error")})
    return StudyStatus(spec.name, meta["spec_hash"], len(planned), len(complete), len(failed), len(index.corrupt),
                       by_fit, meta.get("runs", []), errors)
