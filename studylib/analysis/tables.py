"""Step 4 of the flow: ROI tables — from maps and label maps to one row per animal and day.

:func:`roi_tables` gives the tidy ROI summary and the per-session table of one ROI;
:func:`animal_table` one row per animal joined to histology; :func:`tumour_volumes`,
:func:`per_tumour_table` and :func:`animal_means` handle animals with several tumours (the
animal stays the unit of analysis).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ExperimentError
from .design import compute_with_progress, voxel_volume_mm3

__all__ = ["roi_tables", "session_table", "animal_table", "tumour_volumes", "per_tumour_table", "animal_means"]

def roi_tables(maps: xr.Dataset, ds: xr.Dataset, *, variables: Sequence[str],
               labels: Mapping[int, str] | None = None, roi: str = "tumour") -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROI summary (tidy, :func:`studylib.roi.summarize`) and the per-session table of ``roi``.

    Returns
    -------
    (summary, sessions): the tidy table of every ROI and variable, and one row per animal x day
    with the ROI mean of each variable and the ROI volume.
    """
    from .. import roi as roimod

    labels = dict(labels or {1: "tumour", 2: "muscle"})
    keep = [v for v in variables if v in maps.data_vars]
    missing = sorted(set(variables) - set(keep))
    if missing:
        raise ExperimentError(f"maps lack variable(s) {missing} (have {list(maps.data_vars)})")
    sub = maps[keep + (["fit_ok"] if "fit_ok" in maps.data_vars else [])]
    summary = roimod.summarize(sub, ds["roi"], labels=labels, voxel_volume_mm3=voxel_volume_mm3(ds))
    if "model" in ds.coords and "model" not in summary.columns:
        models = dict(zip(np.asarray(ds["animal"].values), np.asarray(ds["model"].values)))
        if any(str(m) for m in models.values()):
            summary.insert(summary.columns.get_loc("group") + 1, "model", summary["animal"].map(models))
    sessions = session_table(summary, roi=roi, variables=keep)
    return summary, sessions


def session_table(summary: pd.DataFrame, *, roi: str = "tumour", stat: str = "mean",
                  variables: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide per-session table from a tidy ROI summary: one row per animal x day, one column per map.

    Parameters
    ----------
    summary : tidy DataFrame from :func:`studylib.roi.summarize` (columns ``animal, group, day,
        roi, variable`` and the statistics).
    roi : which ROI's rows to keep (``"tumour"``).
    stat : which statistic becomes the value (``"mean"``, ``"median"``...).
    variables : the maps to keep (default all).

    Returns
    -------
    DataFrame with ``animal, group, day`` (and ``model``/``sex`` when present), one column per
    variable, and the ROI's ``n_voxels`` and ``volume_mm3`` when the summary has them.
    """
    need = ["animal", "group", "day", "roi", "variable", stat]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ExperimentError(f"ROI summary lacks columns {missing}; it has {list(summary.columns)}")
    s = summary[summary["roi"] == roi]
    if "acquired" in s.columns:
        s = s[s["acquired"].astype(bool)]
    if s.empty:
        raise ExperimentError(f"ROI summary has no rows for roi '{roi}' (rois: {sorted(summary['roi'].unique())})")
    if variables is not None:
        absent = sorted(set(variables) - set(s["variable"]))
        if absent:
            raise ExperimentError(f"ROI summary has no variable(s) {absent} (has {sorted(s['variable'].unique())})")
        s = s[s["variable"].isin(variables)]
    keys = ["animal", "group", "day"] + [c for c in ("model", "sex") if c in s.columns]
    wide = s.groupby(keys + ["variable"], sort=False, dropna=False)[stat].first().unstack("variable")
    wide.columns.name = None
    wide = wide.reset_index()
    extra = [c for c in ("n_voxels", "volume_mm3") if c in s.columns]
    if extra:
        first = s.drop_duplicates(keys)[keys + extra]
        wide = wide.merge(first, on=keys, how="left")
    return wide.sort_values(["group", "animal", "day"]).reset_index(drop=True)


def animal_table(sessions: pd.DataFrame, histology: pd.DataFrame | None = None, *, day=None,
                 histology_on: Sequence[str] = ("animal",)) -> pd.DataFrame:
    """One row per animal: the session on ``day`` (default: each animal's last session), joined to histology.

    Raises
    ------
    ExperimentError
        no session on ``day``, or the histology CSV lacks the join columns.
    """
    s = sessions.dropna(subset=[c for c in sessions.columns if c not in ("animal", "group", "day")], how="all")
    if day is None:
        s = s.sort_values("day").groupby("animal", as_index=False).tail(1)
    else:
        s = s[s["day"] == day]
        if s.empty:
            raise ExperimentError(f"no session on day {day}; days present: {sorted(sessions['day'].unique())}")
    s = s.reset_index(drop=True)
    if histology is None:
        return s
    missing = [c for c in histology_on if c not in histology.columns]
    if missing:
        raise ExperimentError(f"histology lacks join column(s) {missing}; it has {list(histology.columns)}")
    h = histology.drop(columns=[c for c in ("group", "model", "sex", "day") if c in histology.columns
                                and c not in histology_on and c in s.columns])
    return s.merge(h, on=list(histology_on), how="inner")


def tumour_volumes(ds: xr.Dataset, labels: Mapping[int, str]) -> pd.DataFrame:
    """Tumour volume per animal x day x ROI label from the label maps: voxel count x voxel volume (mm^3).

    Returns
    -------
    DataFrame: ``animal, group, day, tumour, n_voxels, volume_mm3`` (acquired sessions only).
    """
    vv = voxel_volume_mm3(ds)
    counts = xr.concat([(ds["roi"] == k).sum(("z", "y", "x")) for k in labels], dim="tumour")
    counts = counts.assign_coords(tumour=list(labels.values()))
    counts = compute_with_progress(counts) if hasattr(counts.data, "dask") else counts
    df = counts.to_dataframe(name="n_voxels").reset_index()
    acq = ds["acquired"].to_dataframe(name="acq").reset_index()[["animal", "day", "acq"]]
    df = df.merge(acq, on=["animal", "day"])
    df = df[df["acq"]].drop(columns="acq")
    df["group"] = df["animal"].map(dict(zip(ds["animal"].values, ds["group"].values)))
    df["volume_mm3"] = df["n_voxels"].astype(float) * vv
    return df[["animal", "group", "day", "tumour", "n_voxels", "volume_mm3"]].reset_index(drop=True)


def per_tumour_table(summary: pd.DataFrame, volumes: pd.DataFrame, *, variables: Sequence[str],
                     stat: str = "mean") -> pd.DataFrame:
    """One row per animal x day x tumour: volume and the ROI ``stat`` of each map variable."""
    s = summary[summary["variable"].isin(variables)]
    wide = s.groupby(["animal", "day", "roi", "variable"])[stat].first().unstack("variable").reset_index()
    wide.columns.name = None
    wide = wide.rename(columns={"roi": "tumour"})
    return volumes.merge(wide, on=["animal", "day", "tumour"], how="left")


def animal_means(per_tumour: pd.DataFrame, *, variables: Sequence[str], log_volume: bool = True) -> pd.DataFrame:
    """Average an animal's tumours per session (the animal is the unit of analysis).

    ``log_volume`` adds ``log_volume`` = mean of the tumours' ``log(volume_mm3)`` (its slope over days
    is the mean of the tumours' exponential growth rates) and ``volume_mm3`` = their mean volume.
    """
    d = per_tumour.copy()
    agg = {v: "mean" for v in variables}
    agg["volume_mm3"] = "mean"
    if log_volume:
        if (d["volume_mm3"] <= 0).any():
            bad = d.loc[d["volume_mm3"] <= 0, ["animal", "day", "tumour"]].to_dict("records")[:5]
            raise ExperimentError(f"tumour ROI empty (volume 0) for {bad}: cannot take log volume")
        d["log_volume"] = np.log(d["volume_mm3"])
        agg["log_volume"] = "mean"
    out = d.groupby(["animal", "group", "day"], as_index=False).agg(agg)
    return out.sort_values(["group", "animal", "day"]).reset_index(drop=True)

