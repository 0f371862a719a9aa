"""Lactate CEST (LATEST) after pyruvate (DeBrosse et al., Sci Rep 2016): ROI tables of CEST maps,
tumour Z-spectra, the lactate pool of ROI-mean spectra, and the conclusions.

The B0 map, MTRasym and pool fits themselves are :mod:`studylib.fit.cest`; the paired test is
:func:`studylib.stats.paired_change`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analysis import check_effect, conclusions_table, find_key
from ..catalog import citation
from ..conventions import TUMOUR_LABEL
from ..errors import ExperimentError
from ..fit.cest import lorentzian_pools

__all__ = ["STUDY", "ENDPOINTS", "reading", "cest_session_table", "roi_mean_spectra", "tumour_pool_table", "true_change",
           "true_pool_change", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "lactate_cest"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "mtrasym_change": "tumour MTRasym at the lactate offset, post - pre infusion, B0-corrected (paired)",
    "mtrasym_change_uncorrected": "the same without B0 correction (what skipping it does)",
    "pool_change": "tumour lactate pool amplitude post - pre (Lorentzian fit of ROI-mean spectra)",
}


def cest_session_table(results: Mapping[str, xr.Dataset | xr.DataArray], roi: xr.DataArray, *,
                       labels: Mapping[int, str] | None = None) -> pd.DataFrame:
    """ROI means per animal x day of several CEST maps, in tidy form.

    ``results`` maps a column name to a DataArray over ``(animal, day, z, y, x)`` (e.g.
    ``{"mtr_0p4": res.mtr_asym.sel(delta=0.4), "b0_ppm": b0.b0_ppm}``); each ROI label
    gives a ``roi`` value.  Voxels with NaN are ignored; a session without any finite
    voxel gives NaN.
    """
    labels = {1: "tumour", 2: "muscle"} if labels is None else labels
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    frames = []
    for lab, name in labels.items():
        inside = roi == lab
        cols = {}
        for col, da in results.items():
            if not isinstance(da, xr.DataArray):
                raise ExperimentError(f"results['{col}'] must be a DataArray, got {type(da).__name__}")
            cols[col] = da.where(inside).mean(space)
        cols["n_voxels"] = inside.sum(space)
        ds = xr.Dataset(cols).compute()
        df = ds.drop_vars([c for c in ds.coords if c not in ds.dims and c not in ("group", "model", "acquired")]) \
            .to_dataframe().reset_index()
        df.insert(0, "roi", name)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    if "acquired" in out.columns:
        out = out[out["acquired"].astype(bool)].drop(columns="acquired")
    return out.reset_index(drop=True)


def roi_mean_spectra(z: xr.DataArray, roi: xr.DataArray, *, label: int = TUMOUR_LABEL, by: str = "day") -> dict:
    """ROI-voxel Z-spectra (``offset`` last) pooled per value of ``by``: ``{"day 0": (n_vox, n_off)}``.

    Voxels with no finite value are dropped (B0-corrected spectra keep NaN at the edge offsets
    that the shift pushes out of the acquired range).

    Input for :func:`studylib.plots.zspectra` (Z as a fraction of S0 there).
    """
    out = {}
    for v in np.atleast_1d(z[by].values):
        zz = z.sel({by: v}).where(roi.sel({by: v}) == label)
        arr = zz.transpose(..., "offset").values.reshape(-1, z.sizes["offset"])
        arr = arr[np.isfinite(arr).any(axis=1)]  # corrected spectra are NaN only at shifted-out edges
        if arr.size:
            out[f"{by} {v}"] = arr
    return out


def tumour_pool_table(z_corrected: xr.DataArray, roi: xr.DataArray, *, offsets_ppm=(-1.6, 1.6),
                      label: int = TUMOUR_LABEL) -> pd.DataFrame:
    """Lactate pool amplitude (% of S0) per scan from the tumour-mean B0-corrected Z-spectrum.

    Per-voxel pool fits are noise-dominated for a 0.7 % pool next to water, so each scan's tumour-mean
    spectrum (Z as a fraction of S0, offsets within ``offsets_ppm`` where no voxel is shifted out) is
    fitted with :func:`studylib.fit.cest.lorentzian_pools` (water, lactate, MT).

    Returns
    -------
    DataFrame: ``roi, animal, day, lactate_pool_pct``.
    """
    zt = z_corrected.where(roi == label).mean(("z", "y", "x")).sel(offset=slice(*offsets_ppm))
    pools = lorentzian_pools(zt, normalized=True)
    tab = pools[["lactate_amplitude", "water_amplitude", "rmse", "fit_ok"]].to_dataframe().reset_index()
    return (tab.rename(columns={"lactate_amplitude": "lactate_pool_pct"})[["animal", "day", "lactate_pool_pct"]]
            .assign(roi="tumour"))


def true_change(truth: Mapping) -> float:
    """The simulated animals' true tumour MTRasym(0.4 ppm) change post - pre (%); NaN without truth."""
    eff = find_key(truth, "tumour_mtrasym_0p4_pct_post_minus_pre") or {}
    return float(eff.get("sample", np.nan)) if isinstance(eff, Mapping) else float("nan")


def true_pool_change(truth_sessions: pd.DataFrame | None, *, pre_day, post_day) -> float:
    """Mean over animals of the true tumour lactate pool change (%), from the truth's ``sessions.csv``."""
    if truth_sessions is None or "tumour_lactate_pool_pct" not in truth_sessions.columns:
        return float("nan")
    w = truth_sessions.pivot_table(index="animal", columns="day", values="tumour_lactate_pool_pct")
    return float((w[post_day] - w[pre_day]).mean()) if {pre_day, post_day} <= set(w.columns) else float("nan")


def conclusions(paired: Mapping, paired_uncorrected: Mapping, truth: Mapping, *, delta_ppm: float = 0.4,
                pool: Mapping | None = None, true_pool: float = float("nan"), primary: str = "mtrasym_change",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``lactate_cest``.

    Row 1: paired post - pre change of tumour MTRasym(``delta_ppm``), B0-corrected; row 2: the same without
    B0 correction (expected to miss the truth); row 3, when ``pool`` is given: the lactate pool amplitude
    change of the Lorentzian fit.  ``primary`` names the primary endpoint (:data:`ENDPOINTS`), the others are
    secondary (Holm-adjusted).
    """
    paper = citation(STUDY)
    truth_change = true_change(truth)
    rows = dict(zip(ENDPOINTS, [
        check_effect(f"tumour MTRasym({delta_ppm:g} ppm) post - pre, B0-corrected", estimate=paired["estimate"],
                     ci_low=paired["ci_low"], ci_high=paired["ci_high"], p=paired["p"], expected_sign=1,
                     truth=truth_change, units="%", paper=paper, method=paired["method"], alpha=alpha),
        check_effect(f"tumour MTRasym({delta_ppm:g} ppm) post - pre, no B0 correction",
                     estimate=paired_uncorrected["estimate"], ci_low=paired_uncorrected["ci_low"],
                     ci_high=paired_uncorrected["ci_high"], p=paired_uncorrected["p"], expected_sign=1,
                     truth=truth_change, units="%", paper=paper, method=paired_uncorrected["method"], alpha=alpha),
    ]))
    if pool is not None:
        rows["pool_change"] = (check_effect("tumour lactate pool amplitude post - pre (Lorentzian fit)",
                                 estimate=pool["estimate"], ci_low=pool["ci_low"], ci_high=pool["ci_high"],
                                 p=pool["p"], expected_sign=1, truth=true_pool, units="%", paper=paper,
                                 method=pool["method"], alpha=alpha))
    return conclusions_table(rows, primary=primary, alpha=alpha)


def _row(table: pd.DataFrame, endpoint: str):
    hit = table[table["endpoint"] == endpoint]
    return hit.iloc[0] if len(hit) else None


def reading(table: pd.DataFrame, paired: Mapping, paired_uncorrected: Mapping) -> str:
    """What the conclusions table says, written from its numbers (nothing decided in advance).

    Parameters
    ----------
    table : :func:`conclusions` (endpoints ``mtrasym_change`` and ``mtrasym_change_uncorrected``).
    paired, paired_uncorrected : the :func:`studylib.stats.paired_change` results behind those rows
        (``per_animal`` with a ``change`` column when available).

    Returns
    -------
    str: one line per row: the change, its CI, how many animals changed in the paper's direction,
    the verdict against the paper and, with a simulated truth, whether the CI covers it.
    """
    lines = []
    for key, res, what in (("mtrasym_change", paired, "with B0 correction"),
                           ("mtrasym_change_uncorrected", paired_uncorrected, "without B0 correction")):
        r = _row(table, key)
        if r is None:
            continue
        per = res.get("per_animal")
        ups = ""
        if isinstance(per, pd.DataFrame) and "change" in per.columns:
            ch = per["change"].dropna()
            ups = f"; {int((ch > 0).sum())} of {len(ch)} animals rose"
        p = f"p = {r['p']:.2g}" + (f", Holm {r['p_holm']:.2g}" if np.isfinite(r["p_holm"]) else "")
        verdict = "agrees with the paper (a rise, significant)" if r["agrees_with_paper"] else (
            "in the paper's direction but not significant" if r["direction_matches_paper"] else
            "not in the paper's direction")
        truth = ""
        if np.isfinite(r["truth"]):
            truth = (f"; the 95 % CI {'covers' if r['ci_covers_truth'] else 'misses'} the simulated change "
                     f"{r['truth']:+.3g} %")
        lines.append(f"Tumour MTRasym post - pre {what} ({r['role']}): {r['estimate']:+.3g} % "
                     f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}], {p}{ups}: {verdict}{truth}.")
    a, b = _row(table, "mtrasym_change"), _row(table, "mtrasym_change_uncorrected")
    if a is not None and b is not None and a["ci_high"] > a["ci_low"]:
        lines.append(f"Skipping B0 correction makes the CI {(b['ci_high'] - b['ci_low']) / (a['ci_high'] - a['ci_low']):.1f}"
                     " times as wide.")
    return "\n".join(lines)
