"""mixsim: simulate, fit and measure Gaussian mixtures of experts; a CompeteSMoE layer for PyTorch.

Data flows one way: spec -> truth -> sample -> fit -> losses -> rates -> figures.
The network layer is :mod:`mixsim.nn` (a layer library; the network study in :mod:`mixsim.study` builds on it).
"""
from .gates import GATES, log_gate_weights
from .experts import EXPERTS, expert_mean
from .model import MoEParams, log_density, log_likelihood, sample
from .truths import TruthPrior, list_presets, preset, random_truth
from .matching import gate_distance, matched_truth
from .fitting import ConvergenceWarning, FitOptions, FitResult, NearTruthInit, fit, fit_batch
from .estimator import GaussianMoE, NotFittedError
from .selection import KSelection, select_n_experts
from .losses import cell_diagnosis, group_errors, hellinger, total_variation, voronoi_cells, voronoi_loss
from .rates import compare_rates, estimate_rate, fit_rate, theory_rate
from .study import StudySpec, evaluate, load_estimates, load_results, load_study, run_study

from .version import __version__

__all__ = [
    "GATES", "EXPERTS", "log_gate_weights", "expert_mean",
    "MoEParams", "preset", "list_presets", "random_truth", "TruthPrior", "log_density", "log_likelihood", "sample",
    "matched_truth", "gate_distance",
    "fit", "fit_batch", "FitOptions", "FitResult", "NearTruthInit", "ConvergenceWarning", "GaussianMoE", "select_n_experts",
    "KSelection", "NotFittedError",
    "voronoi_cells", "voronoi_loss", "group_errors", "cell_diagnosis", "hellinger", "total_variation",
    "fit_rate", "theory_rate", "estimate_rate", "compare_rates",
    "StudySpec", "load_study", "run_study", "load_results", "load_estimates", "evaluate",
]
