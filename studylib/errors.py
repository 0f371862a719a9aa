"""The one family of exceptions studylib raises for bad input, and its warnings: all defined here.

Every error subclasses :class:`StudyError`, itself a :class:`ValueError`, so callers
can catch one type; each module re-exports the ones it raises (``studylib.roi.RoiError``).  Messages always name the file (or the argument) and say what
is wrong, e.g. ``"data/raw/m01_d0_megre.json: EchoTime must be a list of numbers
in seconds, got 'abc'"``.
"""

from __future__ import annotations

__all__ = [
    "StudyError",
    "ManifestError",
    "DataFileError",
    "FitInputError",
    "ExperimentError",
    "WorkbookError",
    "CacheError",
    "SchedulerError",
    "StatsInputError",
    "StudyWarning",
    "DataWarning",
    "StatsFitWarning",
    "RoiError",
    "RoiWarning",
    "PlotInputError",
    "RelaxivityError",
    "SynthError",
    "LargeStudyError",
    "ScanRefused",
    "RendererGone",
]


class StudyError(ValueError):
    """Base class of every studylib input error."""


class ManifestError(StudyError):
    """The data manifest (schema, paths, checksums) is not valid."""


class DataFileError(StudyError):
    """A raw file (NIfTI, JSON sidecar, CSV, DICOM, ParaVision) cannot be read or is inconsistent."""


class FitInputError(StudyError):
    """Arguments to a fit are not usable (unsorted echo times, mismatched shapes, all-NaN, ...)."""


class ExperimentError(StudyError):
    """An analysis step got unusable input (missing columns, groups, days, truth keys...)."""


class WorkbookError(StudyError):
    """An experiment, notebook, manifest or reports folder given to the runner is not usable."""


class CacheError(StudyError):
    """A cache entry cannot be keyed, written or read (bad name, unhashable input, missing entry...)."""


class SchedulerError(StudyError):
    """The requested Dask scheduler is not a known name/address, or cannot be reached."""


class StatsInputError(StudyError):
    """Data or arguments given to a statistics function are not usable (missing column, one animal, ...)."""


class StudyWarning(UserWarning):
    """Base class of every studylib warning.  Under ``studylib run`` each one is recorded and listed in the
    report's "data warnings" box, and the report's status becomes "ok with warnings"."""


class DataWarning(StudyWarning):
    """The data were analysed but something in them needs a look: dropped sessions, excluded or failed
    voxels, values held beyond a table.  The message names the scan or session and the count."""


class StatsFitWarning(StudyWarning):
    """A model fit is singular (on the boundary) or did not converge; the result says which and how."""


class RoiError(StudyError):
    """ROI masks or maps are not usable (mismatched grids, empty labels when asked to raise, ...)."""


class RoiWarning(DataWarning):
    """An ROI label is empty (or fully excluded) in an acquired scan; its statistics are NaN."""


class PlotInputError(StudyError):
    """Arguments to a plotting function are not usable (missing dims/columns, empty data)."""


class RelaxivityError(StudyError):
    """An agent, medium, kind or field for which no relaxivity is tabulated."""


class SynthError(StudyError):
    """Arguments to the study synthesiser are not usable (unknown preset/study, bad seed or paths)."""


class LargeStudyError(StudyError):
    """Bad arguments to :func:`lazy_study`."""


class ScanRefused(DataFileError):
    """A scanner folder that is readable but not an image studylib imports (the message says why)."""


class RendererGone(RuntimeError):
    """The tab a report was being printed in lost its Chromium renderer process (raised and handled inside
    :class:`studylib.workbook.downloads.PdfPrinter`, which prints again once in a new tab, then notes it)."""
