"""Provenance of a report: git commit and dirty flag, studylib and package versions, python, machine."""

from __future__ import annotations

import os
import platform
import subprocess

from ..layout import PACKAGE_DIR

__all__ = ["KEY_PACKAGES", "provenance_base"]

REPO_DIR = PACKAGE_DIR.parent

KEY_PACKAGES = ("numpy", "scipy", "pandas", "xarray", "dask", "distributed", "zarr", "statsmodels", "nibabel",
                "matplotlib", "seaborn", "pyarrow", "papermill", "nbconvert", "jupytext", "ipykernel")


def _git_info() -> dict:
    """Commit, dirty flag and branch of the repository studylib runs from (read-only git calls)."""
    info = {"commit": None, "dirty": None, "branch": None}
    if not (REPO_DIR / ".git").exists():
        return info

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()

    try:
        info["commit"] = git("rev-parse", "HEAD")
        info["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
        info["branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def provenance_base() -> dict:
    """The run-independent part of a provenance record: git, versions, python, platform."""
    from importlib import metadata

    from ..cache import code_hash

    pk = {}
    for name in KEY_PACKAGES:
        try:
            pk[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pk[name] = None
    try:
        studylib_version = metadata.version("studylib")
    except metadata.PackageNotFoundError:
        studylib_version = None
    return {"git": _git_info(), "studylib_version": studylib_version, "studylib_code_sha256": code_hash(),
            "packages": pk, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "machine": platform.machine(), "cpus": os.cpu_count()}

