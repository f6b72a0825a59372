"""Convergence studies as data: a spec, a seeded, parallel, resumable runner, tidy results, rate tables.

Read the modules in the order the data flows:

* :mod:`~mixsim.study.spec` - :class:`StudySpec`, :func:`load_study` (TOML, ``--set`` overrides);
  schema only (parsing in ``spec_parse``, ``spec_fields``, ``spec_truths``; network options in
  ``nn_options``); imports neither the fitter nor :mod:`mixsim.nn`;
* :mod:`~mixsim.study.seeds` - a replicate's seed and its random streams;
* :mod:`~mixsim.study.metrics` - the one registry of metrics, each a function of a :class:`MetricContext`;
* :mod:`~mixsim.study.runner` - tasks, a replicate's data set (:func:`task_data`), and one task run (fit, then measure; or a network task:
  :mod:`~mixsim.study.nn_task`, :func:`run_nn_task`, built on :mod:`mixsim.nn`'s public layers);
* :mod:`~mixsim.study.parallel` - :func:`run_study`: the tasks through joblib or Dask, resumable;
* :mod:`~mixsim.study.store` - the results directory (metadata, lock, checksummed task files);
* :mod:`~mixsim.study.results` - the tidy table, :func:`load_results`;
* :mod:`~mixsim.study.estimates` - every fit's estimate (:func:`load_estimates`), metrics
  recomputed from them (:func:`evaluate`);
* :mod:`~mixsim.study.status` and :mod:`~mixsim.study.tables` - :func:`study_status`,
  :func:`rate_table` (convergence rates per gate, fitted k and metric: the one rate path);
* :mod:`~mixsim.study.compare` - :func:`comparison_table` and :func:`verdict_counts` (two studies' rates compared);
* :mod:`~mixsim.study.verdict` - the claim test's verdict rule (:data:`RULE`, declared before the run),
  :func:`pair_outcomes` and :func:`estimator_sensitivity`;
* :mod:`~mixsim.study.claim` and :mod:`~mixsim.study.claim_report` - the claim test's studies and tables;
* :mod:`~mixsim.study.catalog` - study specs by name: a local ``./studies`` folder, then those shipped in the package.

Maximum-likelihood (``kind = "mle"``) and network (``kind = "nn"``) studies run through the same
runner; :func:`run_nn_experiment` runs a network study from Python and returns the task's table.

Example
-------
>>> spec = load_study("studies/smoke.toml", overrides=["replications=2"])   # doctest: +SKIP
>>> df = run_study(spec, "results/smoke", n_jobs=2)                         # doctest: +SKIP
>>> rate_table(df)                                                          # doctest: +SKIP
"""
from .spec import FitSpec, GateSpec, SpecError, StudySpec, apply_overrides, load_study, parse_override, truth_to_dict
from .spec_parse import parse_grid
from .nn_options import NN_METRICS, check_nn_options
from .seeds import replicate_seed, replicate_streams
from .metrics import METRICS, MLE_METRICS, REGISTRY, Metric, MetricContext, compute_metrics, metric_applies
from .threads import torch_threads
from .nn_task import make_teacher, run_nn_task, train_regressor
from .runner import RunnerHooks, Task, fit_label, plan_tasks, plan_units, run_task, task_data
from .parallel import JOBLIB_BACKENDS, run_study
from .nn_experiment import EXPERIMENT_COLUMNS, run_nn_experiment
from .store import StudyLockedError, StudyMismatchError, read_meta, scan_tasks
from .results import COLUMNS, FAILED_STATUSES, collect, load_results
from .certificates import CERTIFICATE_SUMMARY_COLUMNS, certificate_markdown, certificate_summary
from .estimates import ESTIMATE_COLUMNS, estimate_params, estimate_records, evaluate, load_estimates
from .status import StudyStatus, study_status
from .tables import (RATE_EXCLUDED_METRICS, RateContext, as_table, has_rate, local_rate_table, estimators_held, main_estimator, one_estimator,
                     rate_context, rate_table, series_rate, theory)
from .plan import ESTIMATOR_OF_INIT, ESTIMATORS
from .catalog import StudyFile, find_study, list_studies
from .compare import COMPARISON_COLUMNS, comparison_table, verdict_counts
from .verdict import RULE, estimator_sensitivity, pair_outcomes
from .claim import CLAIM_STUDIES, ClaimTables, claim_tables
from .claim_report import write_claim_tables

__all__ = [
    "StudySpec", "GateSpec", "FitSpec", "SpecError", "METRICS", "load_study", "apply_overrides",
    "run_study", "load_results", "load_estimates", "estimate_params", "evaluate", "collect", "Task", "COLUMNS", "StudyMismatchError",
    "replicate_seed", "replicate_streams", "task_data", "plan_units", "plan_tasks", "run_task",
    "StudyStatus", "study_status", "rate_table", "local_rate_table", "RATE_EXCLUDED_METRICS",
    "FAILED_STATUSES", "as_table", "theory", "RateContext", "rate_context",
    # added by the package (issue 13)
    "parse_override", "parse_grid", "truth_to_dict", "MLE_METRICS", "NN_METRICS", "REGISTRY", "Metric", "MetricContext",
    "metric_applies", "compute_metrics", "check_nn_options", "RunnerHooks", "JOBLIB_BACKENDS", "fit_label", "torch_threads",
    "StudyLockedError", "read_meta", "scan_tasks", "ESTIMATE_COLUMNS",
    # issue 19: the certificates of a study's fits
    "certificate_summary", "certificate_markdown", "CERTIFICATE_SUMMARY_COLUMNS",
    # added by issues 20 and 21
    "has_rate", "series_rate", "StudyFile", "find_study", "list_studies", "COMPARISON_COLUMNS", "comparison_table",
    "verdict_counts", "CLAIM_STUDIES", "ClaimTables", "claim_tables", "write_claim_tables",
    # issue 24: a unit's estimates (a search reports its best and the reference protocol's optimum);
    # the claim test v3's verdict rule and tables
    "ESTIMATORS", "ESTIMATOR_OF_INIT", "estimators_held", "main_estimator", "one_estimator", "estimate_records",
    "RULE", "pair_outcomes", "estimator_sensitivity",
    # the network study's task, moved here from mixsim.nn (issue 20)
    "run_nn_task", "make_teacher", "train_regressor", "run_nn_experiment", "EXPERIMENT_COLUMNS",
]

# Earlier names, kept for a while: each warns and names its replacement.
_DEPRECATED = {
    "Engine": ("RunnerHooks", "mixsim.fitting.engine is the fitting engine, another thing"),
    "BACKENDS": ("JOBLIB_BACKENDS", "mixsim.nn.BACKENDS are dispatch kernels, another thing"),
}


def __getattr__(name: str):
    if name in _DEPRECATED:
        import warnings

        new, why = _DEPRECATED[name]
        warnings.warn(f"mixsim.study.{name} is deprecated; use mixsim.study.{new} ({why})", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'mixsim.study' has no attribute {name!r}")
