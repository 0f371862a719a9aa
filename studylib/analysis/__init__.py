"""The steps every experiment notebook calls, one module per step of the flow.

=========================  ====================================================================
:mod:`.design`             start a notebook, verify the manifest, read the design of a study
:mod:`.maps`               fitted maps (Dask, cached) from the :mod:`studylib.fit` functions
:mod:`.tables`             ROI tables: one row per animal x day, per animal, per tumour
:mod:`.effects`            treatment effects and correlations with CIs (frozen :class:`Estimate`)
:mod:`.conclusions`        each finding against the paper and the simulated truth
:mod:`.truth`              the simulated truth of a synthetic study (none on real data)
:mod:`.keep`               hand headline, conclusions and tables to the report and the cache
=========================  ====================================================================

Everything public here is also reachable from the :mod:`studylib` facade (``sl.fit_relaxation_maps``).
"""

from __future__ import annotations

from .conclusions import (CONCLUSION_COLUMNS, NOT_TESTED_ROLES, POOLED_HISTOLOGY_ENDPOINT, ROLES, TREATMENT_ENDPOINTS, adjustment_text, check_effect, conclusions_table,
                          CORRELATION_ENDPOINT_PARTS, correlation_levels_text, correlation_part, correlation_part_rows,
                          correlation_row, disagreements, effect_row,
                          headline, histology_day_text, summary_lines, treatment_and_histology, treatment_rows)
from .design import (anatomy, compute_with_progress, design_table, histology_column, model_covariates,
                     pick_groups, require_verified, resolve_manifest, start, voxel_volume_mm3)
from .effects import (POWER_KEYS, Estimate, correlation_effect, effect_power, group_difference, longitudinal_effect,
                      primary_correlation_power,
                      model_diagnostics, partial_regression_effect, regression_slope)
from .keep import keep_maps, keep_tables, record
from .maps import (background_mask, baseline_frames, fit_adc_maps, fit_dce_maps, fit_relaxation_maps, get_cache,
                   quality_variable)
from .tables import (animal_means, animal_table, common_day, echo_train_bound, failed_fit_table, per_tumour_table,
                     roi_tables, session_table, tumour_volumes)
from .truth import (find_key, find_truth, load_truth, load_truth_table, true_correlation, true_correlation_parts,
                    outline_contrast, true_effect, true_map_over_roi, truth_value)

__all__ = [
    "CONCLUSION_COLUMNS", "check_effect", "conclusions_table", "correlation_row", "disagreements", "effect_row",
    "headline", "summary_lines", "treatment_and_histology", "TREATMENT_ENDPOINTS", "correlation_levels_text",
    "correlation_part_rows", "correlation_part", "CORRELATION_ENDPOINT_PARTS",
    "treatment_rows", "adjustment_text", "histology_day_text", "ROLES", "NOT_TESTED_ROLES",
    "POOLED_HISTOLOGY_ENDPOINT",
    "anatomy", "compute_with_progress", "design_table", "histology_column", "model_covariates", "pick_groups",
    "require_verified", "resolve_manifest", "start", "voxel_volume_mm3",
    "Estimate", "correlation_effect", "group_difference", "longitudinal_effect", "model_diagnostics",
    "partial_regression_effect", "regression_slope", "effect_power", "POWER_KEYS", "primary_correlation_power",
    "keep_maps", "keep_tables", "record",
    "background_mask", "baseline_frames", "fit_adc_maps", "fit_dce_maps", "fit_relaxation_maps", "get_cache",
    "quality_variable",
    "animal_means", "animal_table", "common_day", "failed_fit_table", "per_tumour_table", "roi_tables",
    "session_table",
    "tumour_volumes", "echo_train_bound",
    "find_key", "find_truth", "load_truth", "load_truth_table", "true_correlation", "true_correlation_parts",
    "true_effect", "true_map_over_roi", "outline_contrast", "truth_value",
]
