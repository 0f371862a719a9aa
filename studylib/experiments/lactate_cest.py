"""Lactate CEST (LATEST) after pyruvate (DeBrosse et al., Sci Rep 2016): ROI tables of CEST maps,
tumour Z-spectra, the lactate pool of ROI-mean spectra, the calibration of each readout against the
simulated lactate concentration, and the conclusions.

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
           "true_band_change", "true_pool_change", "calibration", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "lactate_cest"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "mtrasym_change": "tumour MTRasym at the lactate offset, post - pre infusion, B0-corrected (paired)",
    "mtrasym_change_uncorrected": "the same without B0 correction (what skipping it does)",
    "band_change": "tumour MTRasym integrated over a band around the lactate offset, post - pre, B0-corrected",
    "pool_change": "tumour lactate pool amplitude post - pre (Lorentzian fit of ROI-mean spectra)",
}

#: the truth column (simulator's ``sessions.csv``) each readout of the session table estimates
TRUTH_OF = {"mtr_0p4": "tumour_mtrasym_0p4_pct", "mtr_band": "tumour_mtrasym_band_pct",
            "lactate_pool_pct": "tumour_lactate_effect_0p4_pct"}
#: units of each readout (the band value is an integral of MTRasym over offset)
UNITS = {"mtr_0p4": "%", "mtr_band": "%·ppm", "lactate_pool_pct": "%"}


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


def true_change(truth: Mapping, key: str = "tumour_mtrasym_0p4_pct_post_minus_pre") -> float:
    """The simulated animals' true tumour change post - pre of ``key`` (default MTRasym(0.4 ppm), %); NaN
    without truth."""
    eff = find_key(truth, key) or {}
    return float(eff.get("sample", np.nan)) if isinstance(eff, Mapping) else float("nan")


def true_band_change(truth: Mapping, band_ppm) -> float:
    """True tumour change of the MTRasym band integral (%·ppm) when the simulator's band is ``band_ppm``; else NaN."""
    eff = find_key(truth, "tumour_mtrasym_band_pct_post_minus_pre") or {}
    if not isinstance(eff, Mapping) or not np.allclose(eff.get("band_ppm", [np.nan] * 2), list(band_ppm)):
        return float("nan")
    return float(eff.get("sample", np.nan))


def true_pool_change(truth_sessions: pd.DataFrame | None, *, pre_day, post_day,
                     column: str = "tumour_lactate_effect_0p4_pct") -> float:
    """Mean over animals of the true tumour change of ``column`` (from the truth's ``sessions.csv``).

    The default is what a lactate pool amplitude claims to be: the physics' lactate effect at its offset,
    ``Z(+0.4 ppm; no lactate) - Z(+0.4 ppm)`` in % of S0 (the simulator's Bloch-McConnell spectra).
    """
    if truth_sessions is None or column not in truth_sessions.columns:
        return float("nan")
    w = truth_sessions.pivot_table(index="animal", columns="day", values=column)
    return float((w[post_day] - w[pre_day]).mean()) if {pre_day, post_day} <= set(w.columns) else float("nan")


def calibration(sessions: pd.DataFrame, truth_sessions: pd.DataFrame | None, *,
                measures=("mtr_0p4", "mtr_band", "lactate_pool_pct"), roi: str = "tumour") -> pd.DataFrame | None:
    """Each readout against the simulated tumour lactate concentration, one row per readout.

    ``y = a + b c`` by ordinary least squares over sessions (``c`` = true ROI-mean lactate, mM; ``y`` in
    ``units``, :data:`UNITS`):
    ``slope_per_mM`` (b), ``intercept``, Pearson ``r``; and ``bias`` = mean of readout - its physics truth
    (:data:`TRUTH_OF`, same units) with ``truth_slope_per_mM``, the slope of that truth on ``c``.

    Returns None without truth (real data) or without the ``tumour_lactate_mM`` column.
    """
    if truth_sessions is None or "tumour_lactate_mM" not in truth_sessions.columns:
        return None
    t = truth_sessions.set_index(["animal", "day"])
    s = sessions[sessions["roi"] == roi].set_index(["animal", "day"])
    rows = []
    for m in measures:
        if m not in s.columns:
            continue
        truth_col = TRUTH_OF.get(m)
        d = pd.DataFrame({"y": s[m], "c": t["tumour_lactate_mM"].reindex(s.index)})
        if truth_col in t.columns:
            d["truth"] = t[truth_col].reindex(s.index)
        d = d.dropna(subset=["y", "c"])
        if len(d) < 3 or d["c"].std() == 0:
            continue
        b, a = np.polyfit(d["c"], d["y"], 1)
        row = dict(measure=m, units=UNITS.get(m, ""), n_sessions=len(d), slope_per_mM=b, intercept=a,
                   r=float(np.corrcoef(d["c"], d["y"])[0, 1]), truth=truth_col or "", bias=np.nan,
                   truth_slope_per_mM=np.nan)
        if "truth" in d and d["truth"].notna().all():
            row["bias"] = float((d["y"] - d["truth"]).mean())
            row["truth_slope_per_mM"] = float(np.polyfit(d["c"], d["truth"], 1)[0])
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def conclusions(paired: Mapping, paired_uncorrected: Mapping, truth: Mapping, *, delta_ppm: float = 0.4,
                band: Mapping | None = None, band_name: str = "", true_band: float = float("nan"),
                pool: Mapping | None = None, true_pool: float = float("nan"), primary: str = "mtrasym_change",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``lactate_cest``.

    Row 1: paired post - pre change of tumour MTRasym(``delta_ppm``), B0-corrected; row 2: the same without
    B0 correction (expected to miss the truth), a sensitivity analysis of row 1 -- the same hypothesis
    analysed another way, so outside the Holm family (:data:`studylib.analysis.conclusions.NOT_TESTED_ROLES`); when ``band`` is given, the change of the MTRasym integral
    over ``band_name`` ppm (%·ppm); when ``pool`` is given, the lactate pool amplitude change of the Lorentzian fit
    (truth: the physics' lactate effect, :func:`true_pool_change`).  ``primary`` names the primary endpoint
    (:data:`ENDPOINTS`), the others are secondary (Holm-adjusted).
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
                     truth=truth_change, units="%", paper=paper, method=paired_uncorrected["method"], alpha=alpha,
                     role="sensitivity"),
    ]))
    if band is not None:
        rows["band_change"] = check_effect(f"tumour MTRasym integral {band_name} ppm post - pre, B0-corrected",
                                           estimate=band["estimate"], ci_low=band["ci_low"], ci_high=band["ci_high"],
                                           p=band["p"], expected_sign=1, truth=true_band, units="%·ppm", paper=paper,
                                           method=band["method"], alpha=alpha)
    if pool is not None:
        rows["pool_change"] = (check_effect("tumour lactate pool amplitude post - pre (Lorentzian fit)",
                                 estimate=pool["estimate"], ci_low=pool["ci_low"], ci_high=pool["ci_high"],
                                 p=pool["p"], expected_sign=1, truth=true_pool, units="%", paper=paper,
                                 method=pool["method"], alpha=alpha))
    return conclusions_table(rows, primary=primary, alpha=alpha)


def _row(table: pd.DataFrame, endpoint: str):
    hit = table[table["endpoint"] == endpoint]
    return hit.iloc[0] if len(hit) else None


def reading(table: pd.DataFrame, paired: Mapping, paired_uncorrected: Mapping,
            calib: pd.DataFrame | None = None) -> str:
    """What the conclusions table says, written from its numbers (nothing decided in advance).

    Parameters
    ----------
    table : :func:`conclusions` (endpoints ``mtrasym_change`` and ``mtrasym_change_uncorrected``).
    paired, paired_uncorrected : the :func:`studylib.stats.paired_change` results behind those rows
        (``per_animal`` with a ``change`` column when available).
    calib : :func:`calibration` (optional): one line per readout with its slope, r and bias.

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
    for r in ([] if calib is None else calib.itertuples()):
        line = (f"{r.measure} vs the simulated tumour lactate ({r.n_sessions} sessions): "
                f"{r.slope_per_mM:+.3g} {r.units}/mM, r = {r.r:.2f}")
        if np.isfinite(r.bias):
            ratio = (f", {r.slope_per_mM / r.truth_slope_per_mM:.2g} times the physics' slope"
                     if r.truth_slope_per_mM else "")
            line += (f"; the physics' {r.truth} rises {r.truth_slope_per_mM:+.3g} {r.units}/mM{ratio}; "
                     f"mean bias against it {r.bias:+.3g} {r.units}")
        lines.append(line + ".")
    return "\n".join(lines)
