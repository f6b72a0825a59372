"""mixsim: simulate, fit and measure Gaussian mixtures of experts; a CompeteSMoE layer for PyTorch.

Data flows one way: spec -> truth -> sample -> fit -> losses -> rates -> figures.
"""
from .gates import GATES, log_gate_weights
from .experts import EXPERTS, expert_mean
from .model import MoEParams, list_presets, log_density, log_likelihood, preset, sample
from .fit import ConvergenceWarning, FitResult, NearTruthInit, fit, fit_batch
from .estimator import GaussianMoE

__version__ = "0.1.0"

__all__ = [
    "GATES", "EXPERTS", "log_gate_weights", "expert_mean",
    "MoEParams", "preset", "list_presets", "log_density", "log_likelihood", "sample",
    "fit", "fit_batch", "FitResult", "NearTruthInit", "ConvergenceWarning", "GaussianMoE",
]

# Optional modules, added by later parts of the toolkit, are re-exported when present.
try:  # pragma: no cover - exercised once those modules exist
    from .losses import group_errors, hellinger, total_variation, voronoi_cells, voronoi_loss  # noqa: F401
    __all__ += ["voronoi_cells", "voronoi_loss", "group_errors", "hellinger", "total_variation"]
except ImportError:
    pass
try:  # pragma: no cover
    from .rates import fit_rate, theory_rate  # noqa: F401
    __all__ += ["fit_rate", "theory_rate"]
except ImportError:
    pass
try:  # pragma: no cover
    from .study import StudySpec, load_results, load_study, run_study  # noqa: F401
    __all__ += ["StudySpec", "load_study", "run_study", "load_results"]
except ImportError:
    pass
