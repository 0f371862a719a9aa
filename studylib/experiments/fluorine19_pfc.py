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

__all__ = ["STUDY", "ENDPOINTS", "ordered_shift", "fluorine_animal_table", "quality_table", "representative_animals", "true_line_difference",
           "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "fluorine19_pfc"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is.  Each row's CI and p come
#: from one method, so p < alpha exactly when its CI excludes 0.
ENDPOINTS = {
    "tumour_19f_trend": "tumour 19F ordered trend over the lines: Jonckheere-Terpstra, two-sided permutation p, with "
                        "the Hodges-Lehmann-type shift (last minus first line under a linear trend) and its CI from "
                        "inverting the same test",
    "tumour_19f_difference": "tumour 19F, most minus least metastatic line: Welch t difference, CI and p",
    "metastases_difference": "lung metastases, most minus least metastatic line: Welch t difference, CI and p",
    "19f_vs_metastases": "r(tumour 19F, lung metastases) over animals (Fisher-z CI and p)",
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


def tube_weights(truth: Mapping) -> dict:
    """The simulator's noise-free bSSFP weighting of tumour 19F over the tube's, per line ({} without truth).

    Quantifying against the reference tube without a relaxation correction measures the tumour 19F times this
    weighting (the *reference-tube equivalent* 19F): a property of the simulated physics (relaxation, B0, phase
    cycling), written by the simulator, never computed from the fit.
    """
    return dict((find_key(truth, "tumour_over_tube_weight") or {}).get("sample", {}))


def true_line_difference(truth: Mapping, lines: Sequence[str], *, tube_equivalent: bool = False) -> float:
    """The simulated animals' true tumour 19F difference, last line minus first (mM); NaN without truth.

    ``tube_equivalent``: the difference of reference-tube-equivalent 19F (each line's true mean times its
    :func:`tube_weights`), the quantity an uncorrected quantification estimates; NaN when the simulator gives
    no weighting.
    """
    line_truth = (find_key(truth, "tumour_f19_mM_line_means") or {}).get("sample", {})
    if tube_equivalent and line_truth:
        w = tube_weights(truth)
        line_truth = {k: v * w[k] if k in w else np.nan for k, v in line_truth.items()}
    if not line_truth:
        return float("nan")
    return float(line_truth.get(lines[-1], np.nan) - line_truth.get(lines[0], np.nan))


def _pair_slopes(gs: list[np.ndarray], scores: np.ndarray) -> np.ndarray:
    """Every between-group pair's slope ``(b - a) / (s_j - s_i)``, a in group i < j, b in group j."""
    out = []
    for i in range(len(gs)):
        for j in range(i + 1, len(gs)):
            out.append(((gs[j][None, :] - gs[i][:, None]) / (scores[j] - scores[i])).ravel())
    return np.sort(np.concatenate(out))


def _jt_at(gs, scores, delta: float) -> float:
    """The JT statistic of the groups shifted back by ``delta`` per unit score (ties count one half)."""
    tot = 0.0
    for i in range(len(gs)):
        for j in range(i + 1, len(gs)):
            d = (gs[j][None, :] - delta * scores[j]) - (gs[i][:, None] - delta * scores[i])
            tot += float(np.sum(d > 0) + 0.5 * np.sum(d == 0))
    return tot


def ordered_shift(groups: Sequence, *, n_perm: int = 20000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Ordered trend over k groups: the Jonckheere-Terpstra test and the shift it estimates, from one method.

    Model: group ``i`` (in the hypothesised order) is shifted by ``delta s_i``, ``s_i = i / (k - 1)``, so ``delta``
    is the last-minus-first difference under a linear trend.  ``J(delta)`` is the JT statistic of
    ``y - delta s`` (Jonckheere, Biometrika 1954;41:133, doi:10.1093/biomet/41.1-2.133); it counts the
    between-group pairs whose slope ``(b - a)/(s_j - s_i)`` exceeds ``delta``, so it falls with ``delta``.  Under
    ``H0(delta)`` the shifted values are exchangeable and ``J(delta)`` has the permutation distribution of JT for
    these group sizes, whatever ``delta`` (the same ``n_perm`` random label permutations of ``N`` distinct
    values serve every ``delta``).  Hence, from one null distribution:

    * ``p`` = the two-sided permutation p of ``H0: delta = 0``,
      ``(1 + #{|J* - E| >= |J(0) - E|}) / (1 + n_perm)``;
    * the ``1 - alpha`` CI = every ``delta`` whose own two-sided p is ``>= alpha`` (test inversion), an interval
      between two pairwise slopes;
    * the estimate (Hodges-Lehmann type) = the median pairwise slope, where ``J(delta)`` crosses ``E[J]``
      (Hodges & Lehmann, Ann Math Stat 1963;34:598, doi:10.1214/aoms/1177704172; the two-group case is the
      Hodges-Lehmann shift and its Mann-Whitney interval).

    So ``p < alpha`` exactly when the CI excludes 0 (a bound exactly at 0, possible with tied data, is moved to
    the side ``p`` says).  The permutation null is that of distinct values; tied values make it approximate.

    Returns
    -------
    dict ``estimate, ci_low, ci_high, p`` (two-sided), ``statistic`` (J at delta = 0), ``expected`` (E[J]),
    ``n`` (group sizes), ``method``.
    """
    gs = [np.asarray(g, dtype=float).ravel() for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    if len(gs) < 2 or any(g.size == 0 for g in gs):
        raise ExperimentError(f"ordered_shift needs >= 2 groups with finite values, got sizes {[g.size for g in gs]}")
    if not (isinstance(n_perm, (int, np.integer)) and n_perm >= 99):
        raise ExperimentError(f"ordered_shift needs n_perm >= 99 permutations, got {n_perm!r}")
    k = len(gs)
    scores = np.arange(k) / (k - 1)
    n = np.array([g.size for g in gs])
    N = int(n.sum())
    E = (N ** 2 - float(np.sum(n ** 2))) / 4.0
    labels = np.repeat(np.arange(k), n)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.broadcast_to(np.arange(N, dtype=float), (int(n_perm), N)), axis=1)
    null = np.zeros(int(n_perm))
    for i in range(k):
        a = perms[:, labels == i]
        for j in range(i + 1, k):
            b = perms[:, labels == j]
            null += np.sum(b[:, None, :] > a[:, :, None], axis=(1, 2))
    dev = np.sort(np.abs(null - E))

    def p_of(j: float) -> float:
        hits = dev.size - np.searchsorted(dev, abs(j - E) - 1e-9, side="left")
        return float((hits + 1) / (dev.size + 1))

    J0 = _jt_at(gs, scores, 0.0)
    p = p_of(J0)
    w = _pair_slopes(gs, scores)
    M = w.size
    # on (w_m, w_{m+1}) (1-based m; w_0 = -inf, w_{M+1} = +inf) J = M - m: keep the m whose J is accepted
    ok = [m for m in range(M + 1) if p_of(M - m) >= alpha]
    if ok:
        lo = w[ok[0] - 1] if ok[0] >= 1 else -np.inf
        hi = w[ok[-1]] if ok[-1] < M else np.inf
    else:  # no delta accepted (alpha above the largest attainable p): the CI shrinks to the estimate
        lo = hi = float(np.median(w))
    est = float(np.median(w))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ExperimentError(f"ordered_shift: groups of sizes {n.tolist()} are too small for a finite "
                              f"{100 * (1 - alpha):g} % interval (alpha below the smallest attainable p)")
    lo, hi = min(float(lo), est), max(float(hi), est)
    tiny = np.nextafter(0.0, 1.0)
    if p < alpha:  # the test rejects 0: the CI lies on the estimate's side
        lo, hi = (max(lo, tiny), hi) if est > 0 else (lo, min(hi, -tiny))
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return dict(estimate=est, ci_low=lo, ci_high=hi, p=p, statistic=J0, expected=E, n=n.tolist(),
                method=(f"Jonckheere-Terpstra ordered trend, two-sided permutation p ({n_perm} permutations, seed "
                        f"{seed}); Hodges-Lehmann-type shift (median pairwise slope, last minus first line under a "
                        f"linear trend) with its {100 * (1 - alpha):g} % CI by inverting the same test; J = {J0:g} "
                        f"(E = {E:g}), n = {'+'.join(map(str, n.tolist()))}"))


def relaxation_text(truth: Mapping, relaxation: Mapping | None) -> str:
    """What the tumour 19F numbers are: relaxation-corrected, or reference-tube equivalent (and, with simulated
    truth, by how much the tube-equivalent value differs from the true 19F)."""
    if relaxation:
        return ("Tumour 19F is corrected for the bSSFP relaxation weighting of tumour vs tube (T1/T2 given as "
                f"parameters: tube {relaxation['t1_ref_ms']:g}/{relaxation['t2_ref_ms']:g} ms, tissue "
                f"{relaxation['t1_tissue_ms']:g}/{relaxation['t2_tissue_ms']:g} ms; on resonance, one phase cycle).")
    text = ("Tumour 19F is reference-tube equivalent: the tube converts signal to 19F nuclei as if tumour PFC and "
            "tube relaxed alike, which bSSFP does not assume (give the measured T1/T2 of both as parameters for "
            "the correction).")
    w = tube_weights(truth)
    if w:
        text += (" In this simulated study the tumour PFC's weighting relative to the tube is "
                 + ", ".join(f"{k} {v:.2f}" for k, v in sorted(w.items()))
                 + ", so tube-equivalent values read the true 19F that much low; the truth column compares like with "
                   "like (true 19F times that weighting).")
    return text


def conclusions(diff: Mapping, trend: Mapping, metastases: Mapping, corr: Mapping, truth: Mapping, *,
                lines: Sequence[str], primary: str = "tumour_19f_trend", alpha: float = 0.05,
                tube_equivalent: bool = False) -> pd.DataFrame:
    """Conclusions of ``fluorine19_pfc`` (:data:`ENDPOINTS`); every row's CI and p from one method.

    Rows: ``tumour_19f_trend`` the ordered trend of tumour 19F (``trend``: :func:`ordered_shift`, its
    Hodges-Lehmann-type shift with the CI of the inverted Jonckheere-Terpstra test and that test's p);
    ``tumour_19f_difference`` tumour 19F last line minus first (``diff``: Welch t CI and Welch p,
    :func:`studylib.analysis.group_difference`); ``metastases_difference`` the same for lung metastases (no
    truth); ``19f_vs_metastases`` tumour 19F vs lung metastases (Pearson r, Fisher-z CI and p).  Truth: the
    simulated animals' true line means (last minus first, for both 19F rows; with ``tube_equivalent``, the
    reference-tube-equivalent means of an uncorrected quantification, :func:`true_line_difference`) and
    correlation.  ``primary`` names the primary endpoint, the others are secondary (Holm-adjusted).
    """
    for name, r in (("diff", diff), ("trend", trend), ("metastases", metastases), ("corr", corr)):
        missing = [k for k in ("estimate", "ci_low", "ci_high", "p", "method") if k not in r]
        if missing:
            raise ExperimentError(f"{name} lacks {missing}: each row needs an estimate with its CI and the p of the "
                                  "same method (trend: ordered_shift, not jonckheere_terpstra alone)")
    paper = citation(STUDY)
    true_diff = true_line_difference(truth, lines, tube_equivalent=tube_equivalent)
    what = "tumour 19F (tube-equivalent)" if tube_equivalent else "tumour 19F"

    def row(finding, r, *, truth, units):
        return check_effect(finding, estimate=r["estimate"], ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"],
                            expected_sign=1, truth=truth, units=units, paper=paper, method=r["method"], alpha=alpha)
    rows = {
        "tumour_19f_trend": row(f"{what} ordered trend {' < '.join(lines)} ({lines[-1]} - {lines[0]} shift, "
                                "Jonckheere-Terpstra)", trend, truth=true_diff, units="mM"),
        "tumour_19f_difference": row(f"{what} {lines[-1]} - {lines[0]} (Welch)", diff, truth=true_diff,
                                     units="mM"),
        "metastases_difference": row(f"lung metastases {lines[-1]} - {lines[0]} (Welch)", metastases, truth=None,
                                     units="count"),
        "19f_vs_metastases": row("tumour 19F vs lung metastases (r)", corr,
                                 truth=true_correlation(truth, "tumour_f19_mM_vs_lung_metastases_count"), units=""),
    }
    return conclusions_table(rows, primary=primary, alpha=alpha)
