"""The report runner: execute the experiment notebooks into HTML reports with provenance.

==================  ===================================================================
:mod:`.run`         papermill execution, reuse of unchanged runs, ``studylib run``
:mod:`.provenance`  git, package versions, python and machine of a run
:mod:`.report`      the HTML of a report and the index page
:mod:`.inspect`     ``studylib show`` and :func:`load_intermediate`: cached intermediates
:mod:`.parameters`  ``studylib run -p name=value``: checked and typed against the notebook
:mod:`.status`      ``studylib status``: up to date / stale (why) / failed / never run
:mod:`.export`      ``studylib export`` (BIDS derivatives) and ``studylib add-roi``
:mod:`.methods`     each report's methods section, ARRIVE 2.0 Essential 10, animal flow (:mod:`.animals`)
:mod:`.downloads`   figures (SVG/PDF/PNG) and tables (CSV) beside each report
:mod:`.scaffold`    ``studylib new``: a lab's own study folder and generic notebook
==================  ===================================================================

The notebook side (:func:`record_headline`, :func:`record_conclusions`) is :mod:`studylib.recorder`;
the experiment list is :data:`studylib.catalog.EXPERIMENTS`; default paths are :mod:`studylib.layout`.
"""

from __future__ import annotations

from ..catalog import EXPERIMENTS, Experiment
from ..errors import WorkbookError
from ..layout import default_cache_dir, default_manifest, project_root
from ..recorder import RECORD_ENV, record_conclusions, record_headline
from .inspect import load_intermediate, show
from .provenance import KEY_PACKAGES, provenance_base
from .report import REPORT_FORMAT, render_report, write_index
from . import run as run_module
from .run import _ensure_data, available, run, run_fingerprint
from .status import status

#: the project folder (the repository in a source checkout): see :func:`studylib.layout.project_root`
REPO_DIR = project_root()

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "WorkbookError",
    "available",
    "default_cache_dir",
    "default_manifest",
    "load_intermediate",
    "provenance_base",
    "record_conclusions",
    "record_headline",
    "render_report",
    "run",
    "run_fingerprint",
    "show",
    "status",
    "write_index",
    "RECORD_ENV",
    "REPORT_FORMAT",
    "KEY_PACKAGES",
]

_ = _ensure_data  # used by tests (missing preset data is generated once)
