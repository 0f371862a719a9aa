"""Steps 1–2 of the flow: start a notebook, verify the manifest, describe the design of a loaded study.

:func:`start` is every notebook's first cell; :func:`require_verified` stops it on any manifest
problem; :func:`pick_groups`, :func:`design_table`, :func:`histology_column` and
:func:`model_covariates` read the design from the loaded data instead of hard-coding it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .. import layout
from ..conventions import is_control_name
from ..errors import ExperimentError, StudyError

__all__ = ["start", "resolve_manifest", "require_verified", "compute_with_progress", "pick_groups", "design_table",
           "anatomy", "voxel_volume_mm3", "histology_column", "model_covariates"]

def start(manifest=None, preset: str = "demo", scheduler=None):
    """The first cell of every experiment notebook: resolve the manifest, choose the scheduler.

    Sets pandas' display precision, resolves ``manifest`` (:func:`resolve_manifest`), starts or
    connects the Dask scheduler (:func:`studylib.compute.get_client`: ``None``/``"threads"``,
    ``"local"`` or an address) and prints both.  Returns ``(manifest_path, client)``; ``client``
    is ``None`` under the threads scheduler.
    """
    from .. import compute, recorder

    if os.environ.get(recorder.RECORD_ENV):  # under the runner: every studylib warning reaches the report
        recorder.capture_warnings()
    pd.set_option("display.precision", 3)
    path = resolve_manifest(manifest, preset)
    client = compute.get_client(scheduler)
    print(f"manifest: {path}\nscheduler: {compute.describe(scheduler)}")
    return path, client


def resolve_manifest(manifest=None, preset: str = "demo") -> Path:
    """The manifest to analyse, absolute: ``manifest`` if given, else the preset's default
    (:func:`studylib.layout.default_manifest`).

    Raises
    ------
    ExperimentError
        the manifest does not exist (with the command that creates it).
    """
    try:
        return layout.resolve_manifest(manifest, preset)
    except StudyError as err:
        raise ExperimentError(str(err)) from None


def require_verified(manifest, study: str | None = None, *, check_hashes: bool = True) -> int:
    """Verify the manifest (schema, path safety, sha256 of every file); raise on any problem.

    With ``study``, only that study's rows (a notebook's inputs): their files hashed, gzip streams
    inflated, headers and sidecars read; the table's schema is checked whole either way
    (:func:`studylib.manifest.verify_manifest`).  Returns the number of rows checked and prints a
    one-line summary.

    Raises
    ------
    ExperimentError
        listing the problems :func:`studylib.manifest.verify_manifest` found (first 20).
    """
    from ..manifest import read_manifest, verify_manifest

    problems = verify_manifest(manifest, check_hashes=check_hashes, study=study)
    if problems:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExperimentError(f"{manifest}: {len(problems)} problem(s):\n" + "\n".join(problems[:20]) + more)
    man = read_manifest(manifest, validate=False)  # just verified, schema included: only the rows are counted
    n = int((man["study"] == study).sum()) if study is not None else len(man)
    what = f"{n} files of study {study}" if study is not None else f"{n} files"
    print(f"{manifest}: OK ({what}, sha256 {'checked' if check_hashes else 'not checked'})")
    return n


def compute_with_progress(obj, *, label: str | None = None):
    """Compute Dask-backed xarray object(s) with a progress display (threads or a distributed client).

    A thin alias of :func:`studylib.compute.progress`, which picks ``distributed.progress`` under a
    client (where dask's ``ProgressBar`` prints nothing) and ``ProgressBar`` otherwise.
    """
    from ..compute import progress

    return progress(obj, label=label, minimum_s=0.0)


def pick_groups(ds: xr.Dataset, control: str | None = None, treated: str | None = None) -> tuple[str, str]:
    """The control and treated group labels: given, or inferred from the ``group`` coordinate.

    The control group is the one whose name contains one of
    :data:`studylib.conventions.CONTROL_WORDS` (vehicle, control, untreated, sham, placebo, saline);
    the treated group is the other one (exactly two groups needed for inference).
    """
    if "group" not in ds.coords:
        raise ExperimentError("dataset has no 'group' coordinate along 'animal'")
    groups = [str(g) for g in pd.unique(np.asarray(ds["group"].values))]
    for name, g in (("control", control), ("treated", treated)):
        if g is not None and g not in groups:
            raise ExperimentError(f"{name} group {g!r} is not in the data (groups: {groups})")
    if control is None:
        cands = [g for g in groups if is_control_name(g) and g != treated]
        if len(cands) != 1:
            raise ExperimentError(f"cannot tell the control group among {groups}; pass control=")
        control = cands[0]
    if treated is None:
        rest = [g for g in groups if g != control]
        if len(rest) != 1:
            raise ExperimentError(f"more than one non-control group {rest}; pass treated=")
        treated = rest[0]
    if control == treated:
        raise ExperimentError(f"control and treated are the same group {control!r}")
    return control, treated


def design_table(ds: xr.Dataset) -> pd.DataFrame:
    """Animals scanned per group (rows) and day (columns), plus the total animals per group."""
    acq = ds["acquired"].to_pandas()
    groups = pd.Series(np.asarray(ds["group"].values), index=acq.index, name="group")
    keys = [groups] + ([pd.Series(np.asarray(ds["model"].values), index=acq.index, name="model")]
                       if "model" in ds.coords else [])
    t = acq.groupby(keys).sum().astype(int)
    t.columns = [f"day {d}" for d in t.columns]
    t["animals"] = acq.groupby(keys).size()
    parts = [f"{k}: {ds.attrs[k]}" for k in ("kind", "field_T", "tr_ms", "agent") if k in ds.attrs]
    dims = [d for d in ds["signal"].dims if d not in ("animal", "day", "z", "y", "x")]
    for d in dims:
        vals = np.asarray(ds[d].values)
        parts.append(f"{d} ({ds[d].attrs.get('units', '')}): {np.round(vals, 3).tolist()}")
    parts.append(f"matrix (z, y, x): {tuple(ds.sizes[d] for d in ('z', 'y', 'x'))}, voxel (x, y, z) mm: "
                 f"{ds.attrs.get('voxel_size_mm')}")
    print("\n".join(parts))
    return t


def anatomy(ds: xr.Dataset) -> xr.DataArray:
    """A background image per scan: the first volume along the acquisition axis (first echo, b0...)."""
    sig = ds["signal"]
    dims = [d for d in sig.dims if d not in ("animal", "day", "z", "y", "x")]
    return sig.isel({d: 0 for d in dims}) if dims else sig


def voxel_volume_mm3(ds: xr.Dataset) -> float:
    vs = ds.attrs.get("voxel_size_mm")
    if vs is None or len(vs) != 3:
        raise ExperimentError(f"dataset attrs lack voxel_size_mm (x, y, z), got {vs!r}")
    return float(np.prod(np.asarray(vs, dtype=float)))


def histology_column(histology: pd.DataFrame, keywords: Sequence[str]) -> str:
    """The first histology column whose name contains one of ``keywords`` (case-insensitive)."""
    for k in keywords:
        for c in histology.columns:
            if k.lower() in c.lower():
                return c
    raise ExperimentError(f"histology has no column matching {list(keywords)} (columns: {list(histology.columns)})")


def model_covariates(table: pd.DataFrame, column: str = "model") -> list[str]:
    """``["C(model)"]`` when the table has more than one tumour model, else ``[]``."""
    if column in table.columns and table[column].nunique() > 1:
        return [f"C({column})"]
    return []

