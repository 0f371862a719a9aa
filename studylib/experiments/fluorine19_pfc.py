"""19F perfluorocarbon imaging of macrophages (Makela et al., MRM 2018): the per-animal 19F table,
the scanner QC table, and the conclusions.

The generic steps (verify, load, quantify, group tests, correlation) are :mod:`studylib.analysis`,
:mod:`studylib.fit.fluorine` and :mod:`studylib.stats`; this module holds what only this notebook needs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .. import roi as roi_mod
from ..analysis import check_effect, conclusions_table, find_key, true_correlation
from ..catalog import citation
from ..conventions import BACKGROUND_LABEL, TUMOUR_LABEL
from ..errors import ExperimentError
from ..fit.fluorine import fluorine_per_roi
from ..models.fluorine import AVOGADRO, F_ATOMS_PER_MACROPHAGE

__all__ = ["STUDY", "ENDPOINTS", "fluorine_animal_table", "quality_table", "representative_animals", "true_line_difference",
           "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "fluorine19_pfc"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "tumour_19f_trend": "tumour 19F, most minus least metastatic line (ordered Jonckheere-Terpstra trend)",
    "metastases_trend": "lung metastases, most minus least metastatic line (ordered trend)",
    "19f_vs_metastases": "r(tumour 19F, lung metastases) over animals",
}


def _mM_from_atoms(atoms, n_vox, vol_mm3):
    return atoms / (n_vox * vol_mm3 * 1e-9 * AVOGADRO)


def fluorine_animal_table(quant: xr.Dataset, roi: xr.DataArray, *, label: int = TUMOUR_LABEL, rim_fraction: float = 0.2,
                          voxel_size_mm=None, histology: pd.DataFrame | None = None,
                          f_atoms_per_cell: float | None = None) -> pd.DataFrame:
    """One row per animal (and day) of tumour 19F from :func:`studylib.fit.fluorine.fluorine_quantify`.

    Columns: ``animal, day, group, model`` (when present), ``f19_atoms`` (all voxels,
    Rician-corrected), ``f19_atoms_detected`` (voxels above the threshold), ``f19_mM``
    (tumour-mean 19F, mM, from ``f19_atoms``), ``f19_mM_rim``, ``f19_mM_core``,
    ``rim_over_core``, ``detected_fraction``, ``apparent_macrophages`` (from ``f19_atoms``),
    ``tumour_volume_mm3``, plus the histology columns merged on ``animal``.
    """
    fc = F_ATOMS_PER_MACROPHAGE if f_atoms_per_cell is None else float(f_atoms_per_cell)
    vol = float(quant.attrs["voxel_volume_mm3"])
    tot = fluorine_per_roi(quant, roi, label=label, f_atoms_per_cell=fc)
    rim, core = roi_mod.tumour_rim_core(roi, label=label, rim_fraction=rim_fraction, voxel_size_mm=voxel_size_mm)
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    atoms = quant["fluorine_atoms_all"].where(quant["fit_ok"])
    n_rim, n_core = rim.sum(space), core.sum(space)
    rim_mM = _mM_from_atoms(atoms.where(rim).sum(space), n_rim.where(n_rim > 0), vol)
    core_mM = _mM_from_atoms(atoms.where(core).sum(space), n_core.where(n_core > 0), vol)
    t = xr.Dataset({
        "f19_atoms": tot["fluorine_atoms_total_all"], "f19_atoms_detected": tot["fluorine_atoms_total"],
        "f19_mM": _mM_from_atoms(tot["fluorine_atoms_total_all"], tot["n_voxels"].where(tot["n_voxels"] > 0), vol),
        "f19_mM_rim": rim_mM, "f19_mM_core": core_mM,
        "detected_fraction": tot["detected_fraction"], "apparent_macrophages": tot["apparent_macrophages_all"],
        "tumour_volume_mm3": tot["n_voxels"] * vol,
    }).compute()
    df = t.drop_vars([c for c in t.coords if c not in t.dims and c not in ("group", "model", "sex")]) \
        .to_dataframe().reset_index()
    df["rim_over_core"] = df["f19_mM_rim"] / df["f19_mM_core"]
    if "acquired" in quant.coords:
        acq = quant["acquired"].to_series().rename("acquired").reset_index()
        df = df.merge(acq, on=[c for c in ("animal", "day") if c in acq.columns])
        df = df[df["acquired"]].drop(columns="acquired")
    df = df.dropna(subset=["f19_atoms"])
    if histology is not None and "animal" in histology.columns:
        extra = [c for c in histology.columns if c not in df.columns or c == "animal"]
        df = df.merge(histology[extra], on="animal", how="left")
    return df.reset_index(drop=True)


def quality_table(quant: xr.Dataset, roi: xr.DataArray, *, day=None) -> pd.DataFrame:
    """Per animal on one day (default the first): noise sigma, reference-tube signal and SNR, and the
    measured false-positive rate of the detection threshold in the background ROI (no 19F there).

    Parameters
    ----------
    quant : the result of :func:`studylib.fit.fluorine.fluorine_quantify` (``noise_sigma``,
        ``reference_signal``, ``detected``) over ``(animal, day[, z, y, x])``.
    roi : the label map, ``(animal, day, z, y, x)``.
    """
    sel = {"day": quant["day"].values[0] if day is None else day}
    bg = roi == BACKGROUND_LABEL
    n_bg = bg.sum(("z", "y", "x"))
    if int(n_bg.sel(sel).min()) == 0:
        raise ExperimentError("a scan has no background ROI (label 5): the false-positive rate cannot be measured")
    qc = pd.DataFrame({"noise_sigma": quant["noise_sigma"].sel(sel).to_series(),
                       "reference_signal": quant["reference_signal"].sel(sel).to_series()})
    qc["reference_SNR"] = qc["reference_signal"] / qc["noise_sigma"]
    qc["background_false_positive_rate"] = (quant["detected"].where(bg).sum(("z", "y", "x")) / n_bg).sel(sel) \
        .to_series()
    return qc


def representative_animals(animals: pd.DataFrame, lines: Sequence[str], *, column: str = "f19_mM",
                           group: str = "model") -> dict[str, str]:
    """Per tumour line, the animal whose ``column`` is closest to its line's median (for figures)."""
    rep = {}
    for line in lines:
        sub = animals[animals[group] == line]
        if len(sub):
            rep[line] = sub.iloc[(sub[column] - sub[column].median()).abs().argsort().iloc[0]]["animal"]
    return rep


def true_line_difference(truth: Mapping, lines: Sequence[str]) -> float:
    """The simulated animals' true tumour 19F difference, last line minus first (mM); NaN without truth."""
    line_truth = (find_key(truth, "tumour_f19_mM_line_means") or {}).get("sample", {})
    if not line_truth:
        return float("nan")
    return float(line_truth.get(lines[-1], np.nan) - line_truth.get(lines[0], np.nan))


def conclusions(diff: Mapping, trend: Mapping, metastases: Mapping, metastases_trend: Mapping, corr: Mapping,
                truth: Mapping, *, lines: Sequence[str], primary: str = "tumour_19f_trend",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``fluorine19_pfc``.

    Row 1: tumour 19F, last line minus first (mM; Welch CI of ``diff``), with the p-value of the ordered
    (Jonckheere-Terpstra) test ``trend``; row 2: the same for lung metastases; row 3: tumour 19F vs lung
    metastases (Pearson r, Fisher-z CI and p).  Truth: the simulated animals' true line means and correlation.
    ``primary`` names the primary endpoint (:data:`ENDPOINTS`), the others are secondary (Holm-adjusted).
    """
    paper = citation(STUDY)
    rows = dict(zip(ENDPOINTS, [
        check_effect(f"tumour 19F {lines[-1]} - {lines[0]} (ordered trend {' < '.join(lines)})",
                     estimate=diff["estimate"], ci_low=diff["ci_low"], ci_high=diff["ci_high"], p=trend["p"],
                     expected_sign=1, truth=true_line_difference(truth, lines), units="mM", paper=paper,
                     method=f"Welch CI; p: {trend['method']}", alpha=alpha),
        check_effect(f"lung metastases {lines[-1]} - {lines[0]} (ordered trend)",
                     estimate=metastases["estimate"], ci_low=metastases["ci_low"], ci_high=metastases["ci_high"],
                     p=metastases_trend["p"], expected_sign=1, truth=None, units="count", paper=paper,
                     method=f"Welch CI; p: {metastases_trend['method']}", alpha=alpha),
        check_effect("tumour 19F vs lung metastases (r)", estimate=corr["estimate"], ci_low=corr["ci_low"],
                     ci_high=corr["ci_high"], p=corr["p"], expected_sign=1,
                     truth=true_correlation(truth, "tumour_f19_mM_vs_lung_metastases_count"), units="",
                     paper=paper, method=corr["method"], alpha=alpha),
    ]))
    return conclusions_table(rows, primary=primary, alpha=alpha)
