"""Step 4 of the flow: ROI tables — from maps and label maps to one row per animal and day.

:func:`roi_tables` gives the tidy ROI summary and the per-session table of one ROI;
:func:`animal_table` one row per animal joined to histology; :func:`tumour_volumes`,
:func:`per_tumour_table` and :func:`animal_means` handle animals with several tumours (the
animal stays the unit of analysis).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataWarning, ExperimentError
from ..roi import label_mask
from .design import compute_with_progress, voxel_volume_mm3

__all__ = ["roi_tables", "session_table", "animal_table", "common_day", "failed_fit_table", "tumour_volumes",
           "per_tumour_table", "animal_means", "FAILED_FIT_COLUMN", "echo_train_bound"]

#: the per-session column of the fraction of ROI voxels whose fit failed (``fit_ok`` False)
FAILED_FIT_COLUMN = "fit_failed_fraction"

_FAILED_VAR = "_fit_failed"  # the 0/1 failed-fit indicator tabulated beside imputed maps


def echo_train_bound(ds: xr.Dataset, variable: str = "r2star") -> float:
    """The fastest decay a multi-echo train can resolve: ``R2* = 1000 / TE_min`` (1/s), ``T2* = TE_min`` (ms).

    The T2* fit (:func:`studylib.models.relaxometry.fit_monoexp`) bounds the rate only from below
    (``R > 1e-9`` 1/ms) and has no upper bound: a voxel fails (``fit_ok`` False: ``R <= 0``, ``S0 <= 0`` or a
    non-finite result) rather than being clipped.  The bound of the *measurement* is the first echo: a voxel
    with ``T2* < TE_min`` has lost more than 1 - 1/e of its signal before the first sample, so the data
    cannot tell its R2* from any larger value.  Imputing failed voxels there (:func:`roi_tables`,
    ``impute_failed``) is the sensitivity analysis for "the failed voxels were the most iron-laden": it
    pushes their R2* as far up as the echo train supports.

    Parameters
    ----------
    ds : the loaded multi-echo study, with a ``te`` coordinate in ms.
    variable : ``"r2star"`` (returns 1000 / TE_min, 1/s) or ``"t2star"`` (returns TE_min, ms).
    """
    if "te" not in ds.coords:
        raise ExperimentError(f"echo_train_bound needs the study's 'te' coordinate (ms); it has {list(ds.coords)}")
    te = np.asarray(ds["te"].values, dtype=float)
    te = te[np.isfinite(te) & (te > 0)]
    if te.size == 0:
        raise ExperimentError("echo_train_bound: the 'te' coordinate has no positive echo time")
    if variable == "r2star":
        return float(1000.0 / te.min())
    if variable == "t2star":
        return float(te.min())
    raise ExperimentError(f"echo_train_bound: variable must be 'r2star' or 't2star', got {variable!r}")


def _impute_failed(sub: xr.Dataset, ds: xr.Dataset, impute: Mapping[str, float], labels) -> xr.Dataset:
    """``sub`` with every failed voxel of an acquired scan inside ``labels`` set to ``impute[variable]`` and
    counted as fitted, plus the 0/1 indicator :data:`_FAILED_VAR` of the failed voxels (its ROI mean is the
    failed fraction the original ``fit_ok`` gives)."""
    if "fit_ok" not in sub.data_vars:
        raise ExperimentError("impute_failed needs the maps' 'fit_ok' (which voxels failed); the maps have none")
    bad = {k: v for k, v in impute.items() if k not in sub.data_vars or not np.isfinite(float(v))}
    if bad:
        raise ExperimentError(f"impute_failed: {bad} names a variable not tabulated ({list(sub.data_vars)}) or a "
                              "non-finite value")
    ok = sub["fit_ok"].astype(bool)
    fill = ~ok & label_mask(ds["roi"], labels)
    if "acquired" in ds.coords or "acquired" in ds.data_vars:
        fill = fill & ds["acquired"].astype(bool)
    out = sub.copy()
    for v, value in impute.items():
        out[v] = sub[v].where(~fill, float(value))
        out[v].attrs = dict(sub[v].attrs, imputed=f"failed voxels set to {float(value):g}")
    out[_FAILED_VAR] = fill.astype(float)
    out["fit_ok"] = ok | fill
    return out

def roi_tables(maps: xr.Dataset, ds: xr.Dataset, *, variables: Sequence[str],
               labels: Mapping[int, str] | None = None, roi: str = "tumour",
               max_failed_difference: float = 0.05,
               impute_failed: Mapping[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROI summary (tidy, :func:`studylib.roi.summarize`) and the per-session table of ``roi``.

    Voxels whose fit failed (``fit_ok`` False) are left out of the ROI statistics; the most extreme
    voxels fail first (the most iron-laden, shortest T2*), so a failed fraction that differs between
    groups biases their comparison.  The per-session table carries that fraction
    (:data:`FAILED_FIT_COLUMN`) and a :class:`studylib.errors.DataWarning` names every day on which the
    groups' mean failed fractions differ by more than ``max_failed_difference`` (see
    :func:`failed_fit_table`).

    Parameters
    ----------
    maps, ds : the fitted maps and the loaded study (ROI labels).
    variables : the maps to tabulate.
    labels : ``{label: name}`` of the ROIs summarised (default tumour and muscle).
    roi : the ROI of the per-session table.
    max_failed_difference : largest tolerated difference (fraction, 0-1) of the mean failed-fit fraction
        between groups on one day before a warning.
    impute_failed : ``{variable: value}``: the sensitivity analysis of the failed voxels.  Instead of
        leaving them out, every failed voxel (``fit_ok`` False) of an acquired scan inside the ROIs gets
        ``value`` for that variable (e.g. ``{"r2star": echo_train_bound(ds)}``: the failed voxels as the
        fastest decay the echo train resolves) and enters the statistics; the other variables are not
        tabulated for those voxels' sake (list only the imputed ones).  :data:`FAILED_FIT_COLUMN` stays the
        fraction of voxels that failed, and ``sessions.attrs["imputed"]`` records the values.  Voxels not
        fitted because their data were not finite are imputed too (the maps do not tell them apart).

    Returns
    -------
    (summary, sessions): the tidy table of every ROI and variable, and one row per animal x day
    with the ROI mean of each variable, the ROI volume and the failed-fit fraction.
    """
    if not (isinstance(max_failed_difference, (int, float)) and 0 <= max_failed_difference <= 1):
        raise ExperimentError(f"max_failed_difference must be a fraction in [0, 1], got {max_failed_difference!r}")
    from .. import roi as roimod

    labels = dict(labels or {1: "tumour", 2: "muscle"})
    keep = [v for v in variables if v in maps.data_vars]
    missing = sorted(set(variables) - set(keep))
    if missing:
        raise ExperimentError(f"maps lack variable(s) {missing} (have {list(maps.data_vars)})")
    sub = maps[keep + (["fit_ok"] if "fit_ok" in maps.data_vars else [])]
    if impute_failed:
        sub = _impute_failed(sub, ds, dict(impute_failed), labels)
    summary = roimod.summarize(sub, ds["roi"], labels=labels, voxel_volume_mm3=voxel_volume_mm3(ds))
    if "model" in ds.coords and "model" not in summary.columns:
        models = dict(zip(np.asarray(ds["animal"].values), np.asarray(ds["model"].values)))
        if any(str(m) for m in models.values()):
            summary.insert(summary.columns.get_loc("group") + 1, "model", summary["animal"].map(models))
    if impute_failed:
        sessions = session_table(summary, roi=roi, variables=keep + [_FAILED_VAR])
        sessions[FAILED_FIT_COLUMN] = sessions.pop(_FAILED_VAR)
        summary = summary[summary["variable"] != _FAILED_VAR].reset_index(drop=True)
        sessions.attrs["imputed"] = {k: float(v) for k, v in dict(impute_failed).items()}
        return summary, sessions
    sessions = session_table(summary, roi=roi, variables=keep)
    if FAILED_FIT_COLUMN in sessions.columns:
        failed_fit_table(sessions, max_difference=max_failed_difference, roi=roi)
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
    variable, the ROI's ``n_voxels`` and ``volume_mm3`` when the summary has them, and
    :data:`FAILED_FIT_COLUMN` (``n_excluded / n_voxels``: ROI voxels whose fit failed) when it has
    ``n_excluded``.
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
    extra = [c for c in ("n_voxels", "volume_mm3", "n_excluded") if c in s.columns]
    if extra:
        # every map of a fit shares its fit_ok, so n_excluded is the same on each variable's row: take the largest
        first = s.groupby(keys, sort=False, dropna=False)[extra].max().reset_index()
        wide = wide.merge(first, on=keys, how="left")
    if "n_excluded" in wide.columns:
        n = wide["n_voxels"].astype(float) if "n_voxels" in wide.columns else np.nan
        wide[FAILED_FIT_COLUMN] = wide["n_excluded"].astype(float) / n.where(n > 0)
        wide = wide.drop(columns="n_excluded")
    return wide.sort_values(["group", "animal", "day"]).reset_index(drop=True)


def failed_fit_table(sessions: pd.DataFrame, *, max_difference: float | None = 0.05, group_col: str = "group",
                     roi: str = "tumour") -> pd.DataFrame:
    """The failed-fit fraction per group and day, and a warning when the groups differ.

    Parameters
    ----------
    sessions : one row per animal x day with :data:`FAILED_FIT_COLUMN` (:func:`roi_tables`).
    max_difference : largest tolerated difference (fraction, 0-1) between the groups' mean failed
        fractions on one day; above it a :class:`studylib.errors.DataWarning` names the day, the groups
        and their fractions.  None: no warning.
    group_col : the column of the groups compared.
    roi : the ROI's name, for the message.

    Returns
    -------
    DataFrame, one row per group x day: ``group, day, sessions, mean_failed_fraction,
    max_failed_fraction`` (fractions 0-1 of the ROI voxels).
    """
    for c in (group_col, "day", FAILED_FIT_COLUMN):
        if c not in sessions.columns:
            raise ExperimentError(f"sessions table lacks column '{c}'; it has {list(sessions.columns)}")
    g = sessions.groupby([group_col, "day"], sort=True)[FAILED_FIT_COLUMN]
    out = pd.DataFrame({"sessions": g.count(), "mean_failed_fraction": g.mean(),
                        "max_failed_fraction": g.max()}).reset_index()
    if max_difference is None:
        return out
    for day, d in out.dropna(subset=["mean_failed_fraction"]).groupby("day", sort=True):
        if len(d) < 2:
            continue
        hi, lo = d.loc[d["mean_failed_fraction"].idxmax()], d.loc[d["mean_failed_fraction"].idxmin()]
        diff = float(hi["mean_failed_fraction"] - lo["mean_failed_fraction"])
        if diff > max_difference:
            warnings.warn(DataWarning(
                f"{roi} fits failed in {100 * hi['mean_failed_fraction']:.1f} % of the voxels in group "
                f"'{hi[group_col]}' but {100 * lo['mean_failed_fraction']:.1f} % in group '{lo[group_col]}' on day "
                f"{day:g} (difference {100 * diff:.1f} points > {100 * max_difference:g}): failed voxels are left out "
                "of the ROI means, so the groups are compared on different voxels"), stacklevel=2)
    return out


def common_day(sessions: pd.DataFrame, *, group_col: str = "group", day_col: str = "day") -> float:
    """The last imaging day on which every group still has an animal: the common day of a comparison.

    Animals that leave early (a humane endpoint) have an earlier last day; comparing each animal's last
    session would compare the groups at different times.  On this day every group is observed, and the
    animals it lacks are the ones that left before it.

    ``day_col`` names the day column (e.g. a histology table's ``endpoint_day``).

    Raises
    ------
    ExperimentError
        the table lacks ``day_col`` or ``group_col``, or no day has every group.
    """
    for c in (day_col, group_col):
        if c not in sessions.columns:
            raise ExperimentError(f"table lacks column '{c}'; it has {list(sessions.columns)}")
    groups = set(sessions[group_col].dropna())
    per_day = sessions.groupby(day_col)[group_col].agg(lambda g: set(g.dropna()))
    shared = [float(d) for d, gs in per_day.items() if gs >= groups]
    if not shared:
        raise ExperimentError(f"no imaging day has every group {sorted(map(str, groups))}: "
                              f"{ {float(d): sorted(map(str, gs)) for d, gs in per_day.items()} }")
    return max(shared)


def animal_table(sessions: pd.DataFrame, histology: pd.DataFrame | None = None, *, day=None,
                 histology_on: Sequence[str] = ("animal",), group_col: str = "group") -> pd.DataFrame:
    """One row per animal: the session on ``day``, joined to histology.

    ``day``:

    * ``"common"``: the last day on which every group is imaged (:func:`common_day`), so that every
      analysed animal is compared at the same time; animals not imaged that day (they left earlier)
      are left out with a :class:`studylib.errors.DataWarning` naming them and their last day;
    * a number: that day, animals without it left out the same way;
    * None: each animal's last session (animals that left early are then compared at an earlier time).

    Sessions whose every value is NaN (an acquired scan whose ROI had no usable voxel) and animals
    without a histology row are left out, each with a :class:`studylib.errors.DataWarning` naming them;
    so is a histology row taken on another day (``endpoint_day`` or ``day``) than the imaging ``day``.

    Returns
    -------
    DataFrame, one row per animal; ``attrs`` records ``day`` (the day, or None for each animal's last),
    ``day_rule`` (``"common"``, ``"given"`` or ``"last"``) and ``left_out`` (animals without that day).

    Raises
    ------
    ExperimentError
        no session on ``day``, or the histology CSV lacks the join columns.
    """
    values = [c for c in sessions.columns if c not in ("animal", "group", "day")]
    empty = sessions[values].isna().all(axis=1) if values else pd.Series(False, index=sessions.index)
    if empty.any():
        gone = ", ".join(f"{r.animal} day {r.day:g}" for r in sessions[empty].itertuples())
        warnings.warn(DataWarning(f"{int(empty.sum())} acquired session(s) have no value of {values} and are left out "
                                  f"of the animal table: {gone}"), stacklevel=2)
    s = sessions[~empty]
    left_out: tuple[str, ...] = ()
    if day is None:
        rule = "last"
        s = s.sort_values("day").groupby("animal", as_index=False).tail(1)
    else:
        rule = "common" if isinstance(day, str) and day == "common" else "given"
        if isinstance(day, str) and day != "common":
            raise ExperimentError(f"day must be None, 'common' or an imaging day, got {day!r}")
        day = common_day(s, group_col=group_col) if rule == "common" else float(day)
        on = s[s["day"].astype(float) == day]
        if on.empty:
            raise ExperimentError(f"no session on day {day:g}; days present: {sorted(sessions['day'].unique())}")
        last = s.groupby("animal")["day"].max()
        left_out = tuple(sorted(set(last.index) - set(on["animal"])))
        if left_out:
            why = "the last day every group is imaged" if rule == "common" else "the day of the comparison"
            names = ", ".join(f"{a} (last imaged day {last[a]:g})" for a in left_out)
            warnings.warn(DataWarning(f"{len(left_out)} animal(s) have no session on day {day:g}, {why}, and are "
                                      f"left out of the animal table: {names}"), stacklevel=2)
        s = on
    s = s.reset_index(drop=True)
    attrs = {"day": None if rule == "last" else float(day), "day_rule": rule, "left_out": left_out}
    if histology is None:
        s.attrs.update(attrs)
        return s
    missing = [c for c in histology_on if c not in histology.columns]
    if missing:
        raise ExperimentError(f"histology lacks join column(s) {missing}; it has {list(histology.columns)}")
    h = histology.drop(columns=[c for c in ("group", "model", "sex", "day") if c in histology.columns
                                and c not in histology_on and c in s.columns])
    out = s.merge(h, on=list(histology_on), how="inner")
    lost = s.merge(h[list(histology_on)].drop_duplicates(), on=list(histology_on), how="left", indicator=True)
    lost = lost[lost["_merge"] == "left_only"]
    if len(lost):
        names = ", ".join(f"{r.animal} (day {r.day:g})" for r in lost.itertuples())
        warnings.warn(DataWarning(f"{len(lost)} imaged animal(s) have no histology row and are left out of the "
                                  f"imaging-vs-histology table: {names}"), stacklevel=2)
    hday = next((c for c in ("endpoint_day", "day") if c in histology.columns and c not in histology_on), None)
    if rule != "last" and hday is not None and hday in out.columns:
        other = out[pd.to_numeric(out[hday], errors="coerce") != float(day)]
        if len(other):
            names = ", ".join(f"{r.animal} ({hday} {getattr(r, hday)})" for r in other.itertuples())
            warnings.warn(DataWarning(f"{len(other)} animal(s) imaged on day {day:g} have histology from another day: "
                                      f"{names}"), stacklevel=2)
    out.attrs.update(attrs)
    return out


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

