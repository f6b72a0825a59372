"""``python -m mixsim.nn`` moved: the network study runs through the ``mixsim`` command.

The layer library holds no study (issue 20). Run the sample-efficiency study with
``mixsim run nn_sample_efficiency --out results/nn_sample_efficiency`` (resumable, parallel), draw
the standard figures with ``mixsim plot DIR``, and the sample-efficiency figure with
``mixsim.plots.plot_sample_efficiency(mixsim.study.load_results(DIR), path=...)``.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Print where the command went (to stderr) and return exit status 2."""
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
