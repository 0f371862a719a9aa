"""Where things live on disk by default: one anchor for every default path.

All defaults hang off the *project folder*: ``$STUDYLIB_PROJECT`` when set, otherwise the folder
holding the ``studylib/`` package (the repository, in a source checkout).  Nothing depends on the
current working folder or on where simulated truth happens to be:

===========================  ===============================================================
default manifest             ``<project>/data_manifest.csv`` (demo), ``<project>/data/<preset>/data_manifest.csv``
real-data experiment         ``<project>/<its catalogue manifest>`` (``data/real/<name>/data_manifest.csv``)
data folder of a preset      ``<project>/data/<preset>`` (``raw/``, ``truth/`` written by ``studylib synth``)
derived cache                ``$STUDYLIB_CACHE`` when set (read-only data, a faster disk); otherwise
                             ``<project>/data/<preset>/derived`` for a preset's own manifest,
                             ``<manifest folder>/derived`` for any other manifest
reports                      ``<project>/reports``
notebooks                    ``<project>/notebooks``
===========================  ===============================================================

A manifest given explicitly is used as given; its relative paths resolve inside its own folder
(:mod:`studylib.manifest`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import StudyError

__all__ = ["PACKAGE_DIR", "project_root", "check_preset", "default_manifest", "preset_data_dir",
           "default_cache_dir", "resolve_manifest", "reports_dir", "notebooks_dir", "PROJECT_ENV",
           "experiment_manifest", "CACHE_ENV"]

PACKAGE_DIR = Path(__file__).resolve().parent
#: environment variable that moves the project folder (default: the folder holding studylib/)
PROJECT_ENV = "STUDYLIB_PROJECT"
#: environment variable that moves the derived cache (default: beside the data, see :func:`default_cache_dir`)
CACHE_ENV = "STUDYLIB_CACHE"
_PRESET = re.compile(r"^[A-Za-z0-9_-]+$")


def project_root() -> Path:
    """The project folder: ``$STUDYLIB_PROJECT`` or the folder holding the ``studylib`` package."""
    env = os.environ.get(PROJECT_ENV)
    return Path(env).expanduser().resolve() if env else PACKAGE_DIR.parent


def check_preset(preset) -> str:
    """``preset`` if it is a simple name (``demo``, ``ci``, ``large``, a lab's own); StudyError otherwise."""
    if not isinstance(preset, str) or not _PRESET.match(preset):
        raise StudyError(f"preset must be a simple name like 'demo' or 'ci', got {preset!r}")
    return preset


def preset_data_dir(preset: str = "demo") -> Path:
    """``<project>/data/<preset>``: where ``studylib synth --preset P`` writes ``raw/`` and ``truth/``."""
    return project_root() / "data" / check_preset(preset)


def default_manifest(preset: str = "demo") -> Path:
    """``<project>/data_manifest.csv`` for ``demo`` (committed), ``<project>/data/<preset>/data_manifest.csv`` otherwise."""
    if check_preset(preset) == "demo":
        return project_root() / "data_manifest.csv"
    return preset_data_dir(preset) / "data_manifest.csv"


def experiment_manifest(name: str) -> Path:
    """The committed manifest of a real-data experiment (catalogue ``data="real"``): ``<project>/<its manifest>``.

    Raises
    ------
    StudyError
        ``name`` is not catalogued or is a synthetic experiment (whose data come from a preset).
    """
    from .catalog import experiment

    exp = experiment(name)
    if exp.data != "real":
        raise StudyError(f"experiment {name!r} has synthetic data: its manifest is a preset's (default_manifest)")
    return project_root() / exp.manifest


def resolve_manifest(manifest=None, preset: str = "demo", *, must_exist: bool = True) -> Path:
    """The manifest to use, absolute: ``manifest`` if given, else the preset's default.

    Raises
    ------
    StudyError
        ``must_exist`` and no file there (the message names the command that creates it).
    """
    path = Path(manifest).expanduser().resolve() if manifest is not None else default_manifest(preset)
    if must_exist and not path.is_file():
        raise StudyError(f"{path}: manifest not found; create the study with `studylib synth --preset {preset}` "
                         f"or pass manifest=")
    return path


def default_cache_dir(preset: str = "demo", manifest=None) -> Path:
    """Where intermediate results are cached.

    ``$STUDYLIB_CACHE`` when set (one folder for every study: entries are keyed by their inputs' content,
    so studies never collide); else ``<project>/data/<preset>/derived`` when ``manifest`` is None or is the
    preset's default manifest, and ``<manifest folder>/derived`` for any other manifest.  ``studylib run``
    and ``studylib show`` take ``--cache DIR`` to choose it per command (for data on a read-only share).
    """
    check_preset(preset)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if manifest is None or Path(manifest).expanduser().resolve() == default_manifest(preset):
        return preset_data_dir(preset) / "derived"
    return Path(manifest).expanduser().resolve().parent / "derived"


def reports_dir() -> Path:
    """``<project>/reports``."""
    return project_root() / "reports"


def notebooks_dir() -> Path:
    """``<project>/notebooks``: one notebook per experiment."""
    return project_root() / "notebooks"
