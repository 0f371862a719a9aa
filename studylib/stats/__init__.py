"""Statistics for preclinical imaging studies: mixed models, growth, correlations, group tests, power.

The animal is the unit of analysis.  Public functions:

* :func:`mixed_model` -- linear mixed model (statsmodels ``MixedLM`` + several optimisers,
  best REML/ML optimum kept) with Satterthwaite (default), Kenward–Roger or z inference,
  singular-fit and convergence diagnostics, contrasts and estimated marginal means.
* :func:`tumour_growth` -- log-volume mixed model, growth rate per group, T/C ratios.
* :func:`correlation` -- design-aware correlation of two columns: ``pooled``, ``within`` clusters
  (repeated-measures correlation) and ``between`` cluster means, partial on ``adjust``; CI and p
  from one method (Fisher z), so p < alpha exactly when the CI excludes 0.
  :func:`partial_regression` -- does x explain y beyond covariates (OLS t test, partial r).
* :func:`bootstrap_correlation` (arrays, bootstrap CI), :func:`rm_correlation`, :func:`regression`.
* :func:`group_compare` (Welch / Mann–Whitney, Holm across biomarkers), :func:`holm`,
  :func:`per_animal_slopes`, :func:`slope_ttest`.
* :func:`jonckheere_terpstra`, :func:`kruskal_pairwise`, :func:`paired_change` -- ordered trend,
  unordered comparison of several groups, paired pre/post change.
* :func:`simulate_rejection`, :func:`power_simulation` -- type I error and power by
  simulation from a (fitted) mixed model; :func:`fitted_design_power`, :func:`t_test_power` and
  :func:`fisher_power` (a correlation's Fisher-z test) -- the power of a fitted design.

Modules: :mod:`.mixed` (over the REML core :mod:`.lmm`), :mod:`.growth`, :mod:`.correlation`,
:mod:`.design_correlation`,
:mod:`.group_tests`, :mod:`.power`, :mod:`.common` (input checks, Holm).

Errors are :class:`StatsInputError` (a :class:`studylib.errors.StudyError`); singular or
non-converged fits give a :class:`StatsFitWarning` and are recorded in the result.
"""

from __future__ import annotations

from .common import StatsFitWarning, StatsInputError, holm, numeric_column, require_columns
from .correlation import (CorrelationResult, RegressionResult, RmCorrResult, bootstrap_correlation, group_compare,
                          per_animal_slopes, regression, rm_correlation, slope_ttest)
from .design_correlation import (CorrelationPart, DesignCorrelation, PartialRegressionResult, correlation,
                                 fisher_interval, partial_regression)
from .group_tests import jonckheere_terpstra, kruskal_pairwise, paired_change
from .growth import GrowthResult, tumour_growth
from .mixed import DEFAULT_OPTIMIZERS, MixedModelResult, mixed_model
from .power import (DesignPower, PowerResult, SimulationResult, fisher_power, fitted_design_power, power_simulation,
                    simulate_rejection, t_test_power, wilson_interval)

__all__ = [
    "StatsInputError", "StatsFitWarning", "mixed_model", "MixedModelResult", "DEFAULT_OPTIMIZERS",
    "tumour_growth", "GrowthResult", "correlation", "DesignCorrelation", "CorrelationPart", "fisher_interval",
    "partial_regression", "PartialRegressionResult", "bootstrap_correlation", "CorrelationResult",
    "rm_correlation", "RmCorrResult",
    "regression", "RegressionResult", "group_compare", "holm", "per_animal_slopes", "slope_ttest",
    "jonckheere_terpstra", "kruskal_pairwise", "paired_change",
    "simulate_rejection", "SimulationResult", "power_simulation", "PowerResult", "wilson_interval",
    "fitted_design_power", "t_test_power", "fisher_power", "DesignPower",
]

_ = (numeric_column, require_columns)  # re-exported for callers that check their own tables
