"""studylib: a reproducible workbook for preclinical MRI imaging biomarkers of cancer therapy.

The curated top level that notebooks import (``import studylib as sl``).  Everything is loaded
lazily on first use, so ``import studylib`` stays cheap (no xarray/dask/statsmodels/matplotlib
import until a name that needs them is touched)::

    sl.verify_manifest(path)              # -> list of problems (empty when the manifest is sound)
    ds = sl.load_study(manifest, study, "MEGRE")
    maps = sl.fit.t2star(ds.signal, mask=ds.roi > 0)
    table = sl.roi.summarize(maps, ds.roi, labels={1: "tumour"})
    fit = sl.stats.mixed_model(table, "r2star ~ group * day", groups="animal")

Subpackages and modules: ``fit``, ``models``, ``io``, ``manifest``, ``roi``, ``stats``, ``plots``,
``experiments``, ``synth``, ``cache``, ``compute``, ``workbook``, ``errors``, ``testing``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DataFileError, FitInputError, ManifestError, StudyError

__version__ = "0.1.0"

#: lazily imported submodules
_MODULES = ("fit", "models", "io", "manifest", "roi", "stats", "plots", "experiments", "synth", "cache",
            "compute", "workbook", "testing", "errors")

#: lazily imported functions: name -> (module, attribute)
_FUNCTIONS = {
    "verify_manifest": ("studylib.manifest", "verify_manifest"),
    "read_manifest": ("studylib.manifest", "read_manifest"),
    "load_study": ("studylib.io", "load_study"),
    "load_histology": ("studylib.io", "load_histology"),
    "generate": ("studylib.synth", "generate"),
    "summarize": ("studylib.roi", "summarize"),
    "mixed_model": ("studylib.stats", "mixed_model"),
    "check_effect": ("studylib.experiments", "check_effect"),
    "conclusions_table": ("studylib.experiments", "conclusions_table"),
    "load_truth": ("studylib.experiments", "load_truth"),
}

__all__ = [
    "__version__",
    "StudyError",
    "ManifestError",
    "DataFileError",
    "FitInputError",
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
