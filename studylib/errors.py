"""The one family of exceptions studylib raises for bad input.

Every error subclasses :class:`StudyError`, itself a :class:`ValueError`, so callers
can catch one type.  Messages always name the file (or the argument) and say what
is wrong, e.g. ``"data/raw/m01_d0_megre.json: EchoTime must be a list of numbers
in seconds, got 'abc'"``.
"""

from __future__ import annotations

__all__ = ["StudyError", "ManifestError", "DataFileError", "FitInputError", "ExperimentError", "WorkbookError"]


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
