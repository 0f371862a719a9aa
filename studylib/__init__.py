"""studylib: a reproducible workbook for preclinical MRI imaging biomarkers of cancer therapy.

The curated top level that notebooks import (``import studylib as sl``).  Everything is loaded
lazily on first use, so ``import studylib`` stays cheap (no xarray/dask/statsmodels/matplotlib
import until a name that needs them is touched)::

    manifest, client = sl.start(None, "demo")     # resolve the manifest, choose the Dask scheduler
    sl.require_verified(manifest)                 # schema, paths, sha256 — stop on any problem
    ds = sl.load_study(manifest, study, "MEGRE")  # lazy (animal, day, te, z, y, x)
    maps = sl.fit_relaxation_maps(ds)             # T2*/R2* inside the ROIs, cached
    summary, sessions = sl.roi_tables(maps, ds, variables=["r2star"])
    effect = sl.longitudinal_effect(sessions, "r2star", control="vehicle", treated="ampb")

The flow and where each step lives: ``docs/architecture.md``.  Subpackages and modules:
``manifest``, ``io``, ``models``, ``fit``, ``roi``, ``stats``, ``analysis``, ``experiments``,
``plots``, ``workbook``, ``synth``, ``cache``, ``compute``, ``catalog``, ``conventions``,
``layout``, ``errors``, ``testing``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DataFileError, ExperimentError, FitInputError, ManifestError, StudyError

__version__ = "0.1.0"

#: lazily imported submodules
_MODULES = ("fit", "models", "io", "manifest", "roi", "stats", "plots", "analysis", "experiments", "synth",
            "cache", "compute", "workbook", "testing", "errors", "catalog", "conventions", "layout")

_ANALYSIS = (
    "start", "resolve_manifest", "require_verified", "compute_with_progress", "pick_groups", "design_table",
    "anatomy", "voxel_volume_mm3", "histology_column", "model_covariates",
    "get_cache", "quality_variable", "background_mask", "fit_relaxation_maps", "fit_adc_maps", "baseline_frames",
    "fit_dce_maps",
    "roi_tables", "session_table", "animal_table", "tumour_volumes", "per_tumour_table", "animal_means",
    "failed_fit_table",
    "Estimate", "longitudinal_effect", "model_diagnostics", "correlation_effect", "regression_slope",
    "group_difference", "partial_regression_effect", "effect_power", "echo_train_bound",
    "CONCLUSION_COLUMNS", "check_effect", "conclusions_table", "disagreements", "summary_lines", "headline",
    "effect_row", "correlation_row", "correlation_levels_text",
    "find_truth", "load_truth", "load_truth_table", "truth_value", "find_key", "true_effect", "true_correlation",
    "true_map_over_roi", "outline_contrast",
    "record", "keep_tables", "keep_maps",
)
_FIT = ("t2star", "t2", "t1_vfa", "t1_ir", "t1_sr", "adc", "ivim", "dce", "cest_b0_map", "mtr_asym",
        "lorentzian_pools", "corrected_zspectrum", "cest_change", "average_repetitions", "median_filter_map",
        "fluorine_quantify", "fluorine_per_roi")

#: lazily imported names: name -> (module, attribute)
_FUNCTIONS = {
    "verify_manifest": ("studylib.manifest", "verify_manifest"),
    "read_manifest": ("studylib.manifest", "read_manifest"),
    "load_study": ("studylib.io", "load_study"),
    "load_histology": ("studylib.io", "load_histology"),
    "generate": ("studylib.synth", "generate"),
    "summarize": ("studylib.roi", "summarize"),
    "tumour_rim_core": ("studylib.roi", "tumour_rim_core"),
    "mixed_model": ("studylib.stats", "mixed_model"),
    "correlation": ("studylib.stats", "correlation"),
    "partial_regression": ("studylib.stats", "partial_regression"),
    "detection_k": ("studylib.models.fluorine", "detection_k"),
    "EXPERIMENTS": ("studylib.catalog", "EXPERIMENTS"),
    "study_info": ("studylib.workbook.animals", "study_info"),
    "smallest_effect_of_interest": ("studylib.workbook.animals", "smallest_effect_of_interest"),
    "ROI_LABELS": ("studylib.conventions", "ROI_LABELS"),
    **{n: ("studylib.analysis", n) for n in _ANALYSIS},
    **{n: ("studylib.fit", n) for n in _FIT},
}

__all__ = [
    "__version__",
    "StudyError",
    "ManifestError",
    "DataFileError",
    "FitInputError",
    "ExperimentError",
    *_MODULES,
    *_FUNCTIONS,
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        mod = importlib.import_module(f"studylib.{name}")
        globals()[name] = mod
        return mod
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        obj = getattr(importlib.import_module(module), attr)
        globals()[name] = obj
        return obj
    raise AttributeError(f"module 'studylib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
