"""Ferumoxytol as tumour therapy (Zanganeh et al., Nat Nanotechnol 2016): two tumours per mouse,
the uptake day, and the conclusions."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..analysis import adjustment_text, common_day, conclusions_table, effect_row, true_effect
from ..errors import DataWarning, ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "SENSITIVITY", "MODEL_UNITS", "TUMOUR_LABELS", "uptake_day", "histology_on_common_day",
           "conclusions", "imputation_text"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ferumoxytol_therapy"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "growth_rate": "tumour growth rate (log volume per day), ferumoxytol - control",
    "r2star_uptake": "tumour R2* 24-48 h after ferumoxytol, ferumoxytol - control (ANCOVA on the pre-contrast day 0)",
    "cd80": "CD80+ (M1) % of F4/80+ macrophages, ferumoxytol - control",
    "cd206": "CD206+ (M2) % of F4/80+ macrophages, ferumoxytol - control",
    "r2star_uptake_imputed": "the R2* uptake effect with the failed-fit voxels' R2* imputed at the echo train's bound "
                             "instead of left out (sensitivity)",
}

#: rows that re-estimate a finding under another assumption (role "sensitivity", not Holm-counted)
SENSITIVITY = ("r2star_uptake_imputed",)

#: the endpoints estimated by a fitted mixed model (whose design :func:`studylib.analysis.effect_power` can
#: simulate) -> their units; CD80 and CD206 are Welch t contrasts of one value per animal
MODEL_UNITS = {"growth_rate": "1/day", "r2star_uptake": "1/s"}

#: ROI label -> tumour: each mouse carries two tumours (the animal is the unit of analysis)
TUMOUR_LABELS = {1: "tumour_left", 6: "tumour_right"}


def uptake_day(days: Sequence, preferred: Sequence[int] = (1, 2)) -> int:
    """The imaging day 24-48 h after ferumoxytol (day 1 or 2); else the first day after day 0."""
    days = sorted(int(d) for d in days)
    for p in preferred:
        if p in days:
            return p
    later = [d for d in days if d > 0]
    if not later:
        raise ExperimentError(f"no imaging day after ferumoxytol (days: {days})")
    return later[0]


def histology_on_common_day(histology: pd.DataFrame, *, day_col: str = "endpoint_day",
                            group_col: str = "group") -> pd.DataFrame:
    """The histology rows taken on the last endpoint day every group shares (:func:`studylib.analysis.common_day`).

    An animal that reached a humane endpoint early was sampled earlier; comparing its histology with the others'
    compares the groups at different times.  Its rows are left out with a :class:`studylib.errors.DataWarning`
    naming it and its day.  ``attrs`` of the result: ``day``, ``day_rule`` (``"common"``), ``left_out``.
    """
    day = common_day(histology, group_col=group_col, day_col=day_col)
    on = pd.to_numeric(histology[day_col], errors="coerce") == day
    gone = histology.loc[~on].groupby("animal")[day_col].first()
    if len(gone):
        warnings.warn(DataWarning(f"{len(gone)} animal(s) have histology from another day than day {day:g}, the last "
                                  f"endpoint day every group shares, and are left out of the histology comparison: "
                                  + ", ".join(f"{a} ({day_col} {d})" for a, d in gone.items())), stacklevel=2)
    out = histology.loc[on].reset_index(drop=True)
    out.attrs.update(day=day, day_rule="common", left_out=tuple(gone.index))
    return out


def imputation_text(r2: Mapping, imputed: Mapping, summary: pd.DataFrame, *, value: float,
                    labels: Mapping[int, str] = TUMOUR_LABELS, y: str = "r2star", group_col: str = "group") -> str:
    """What imputing the failed voxels did to the R2* uptake effect, from the numbers.

    The failed-fit fraction of both tumours per group (``n_excluded / n_voxels`` of the ``y`` rows of ``summary``,
    the ROI summary of :func:`studylib.analysis.roi_tables` without imputation, pooled over the group's tumours) on
    the effect's day and, for a baseline-adjusted effect, on its baseline day; then the effect with the failed
    voxels left out (``r2``) and imputed at ``value`` 1/s (``imputed``).
    """
    miss = [c for c in ("animal", group_col, "day", "roi", "variable", "n_excluded", "n_voxels")
            if c not in summary.columns]
    if miss:
        raise ExperimentError(f"summary table lacks columns {miss}; it has {list(summary.columns)}")
    s = summary[summary["roi"].isin(list(labels.values())) & (summary["variable"] == y)]
    days = [float(r2["at_day"])] + ([float(r2["baseline_day"])] if r2.get("baseline_day") is not None else [])
    parts = []
    for d in days:
        g = s[s["day"].astype(float) == d].groupby(group_col)[["n_excluded", "n_voxels"]].sum()
        frac = "; ".join(f"{k} {100 * r.n_excluded / r.n_voxels:.2f} %" for k, r in g.iterrows() if r.n_voxels > 0)
        parts.append(f"day {d:g} {frac or 'not recorded'}")
    shift = imputed["estimate"] - r2["estimate"]
    none = (" No tumour voxel failed on any day, so the imputation changes nothing." if int(s["n_excluded"].sum()) == 0
            else "")
    return (f"Failed-fit voxels of both tumours (fraction per group): {'; '.join(parts)}. With them left out the R2* "
            f"effect is {r2['estimate']:.2f} [{r2['ci_low']:.2f}, {r2['ci_high']:.2f}] 1/s; with their R2* imputed "
            f"at {value:.0f} 1/s (1000/TE_min) it is {imputed['estimate']:.2f} [{imputed['ci_low']:.2f}, "
            f"{imputed['ci_high']:.2f}] 1/s ({shift:+.2f} 1/s). The imputation is an extreme assumption (every "
            "failed voxel decays as fast as the echo train can resolve), so the two bracket the effect if the "
            "failures are the most iron-laden voxels; it is a sensitivity analysis, not Holm-counted." + none)


def conclusions(growth: Mapping, r2: Mapping, cd80: Mapping, cd206: Mapping, truth: Mapping, *,
                control: str, treated: str, primary: str = "growth_rate", histology_day: Mapping | None = None,
                alpha: float = 0.05, imputed: Mapping | None = None,
                imputed_value: float | None = None) -> pd.DataFrame:
    """Conclusions of ``ferumoxytol_therapy``: growth rate, tumour R2* at 24-48 h, CD80 and CD206
    (:data:`ENDPOINTS`); ``primary`` names the primary endpoint, the others are secondary (Holm-adjusted).
    ``histology_day``: the ``attrs`` of :func:`histology_on_common_day` (the day of the CD80/CD206 rows, said in
    their finding and method), or None (each animal's endpoint).  ``imputed``: the R2* model of ``r2`` refitted
    on the animal table whose failed voxels' R2* were imputed at ``imputed_value`` 1/s
    (:func:`studylib.analysis.roi_tables`, ``impute_failed``), row ``r2star_uptake_imputed`` (role
    ``"sensitivity"``, not Holm-counted), against the same truth as ``r2star_uptake``."""
    study = STUDY
    day = r2["at_day"]
    hd = dict(histology_day or {})
    if hd.get("day") is not None:
        left = ", ".join(hd.get("left_out", ())) or "none"
        hsuffix = f", day {hd['day']:g}"
        hmethod = (f"; histology on day {hd['day']:g}, the last endpoint day every group shares, for every analysed "
                   f"animal; left out, sampled on another day: {left}")
    else:
        hsuffix, hmethod = "", "; histology at each animal's endpoint"
    rows = dict(zip([k for k in ENDPOINTS if k not in SENSITIVITY], [
        effect_row(f"tumour growth rate (log volume) {treated} − {control}", growth, expected_sign=-1,
                   truth=true_effect(truth, f"log_volume_growth_per_day_{treated}_minus_{control}"),
                   units="1/day", study=study, alpha=alpha),
        effect_row(f"tumour R2* {treated} − {control}, day {day:g}{adjustment_text(r2, 'T2* shortening')}", r2,
                   expected_sign=+1,
                   truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_day1", day=day),
                   units="1/s", study=study, alpha=alpha),
        effect_row(f"CD80+ (M1) % of F4/80+ {treated} − {control}{hsuffix}", cd80, expected_sign=+1,
                   truth=true_effect(truth, f"cd80_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
        effect_row(f"CD206+ (M2) % of F4/80+ {treated} − {control}{hsuffix}", cd206, expected_sign=-1,
                   truth=true_effect(truth, f"cd206_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
    ]))
    for key in ("cd80", "cd206"):
        rows[key]["method"] += hmethod
    if imputed is not None:
        if imputed_value is None or not np.isfinite(imputed_value):
            raise ExperimentError("imputed: pass imputed_value, the R2* (1/s) the failed voxels were imputed at")
        if str(imputed.get("adjustment", "none")) != str(r2.get("adjustment", "none")) or \
                float(imputed["at_day"]) != float(day):
            raise ExperimentError(f"imputed: fit it like the R2* effect (day {day:g}, adjustment "
                                  f"{r2.get('adjustment', 'none')!r}; got day {imputed['at_day']:g}, "
                                  f"{imputed.get('adjustment', 'none')!r})")
        adj = adjustment_text(imputed, "T2* shortening")
        row = effect_row(f"tumour R2* {treated} − {control}, day {day:g}{adj}, "
                         f"failed voxels at R2* = {imputed_value:.0f} 1/s (sensitivity)", imputed, expected_sign=+1,
                         truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_day1", day=day),
                         units="1/s", study=study, role="sensitivity", alpha=alpha)
        row["method"] = (f"as the R2* uptake row, on the tumour tables with every failed-fit voxel's R2* (both "
                         f"tumours, every day) set to {imputed_value:.4g} 1/s (1000/TE_min: the fastest decay the "
                         f"echo train resolves) instead of left out; {row['method']}")
        rows["r2star_uptake_imputed"] = row
    table = conclusions_table(rows, primary=primary, alpha=alpha)
    if imputed is not None:
        _same_verdict_as_uptake(table, alpha=alpha)
    return table


def _same_verdict_as_uptake(table: pd.DataFrame, *, alpha: float) -> None:
    """Judge ``r2star_uptake_imputed`` by the rule of the row it re-estimates (in place).

    A sensitivity row keeps its unadjusted verdict (:func:`studylib.analysis.conclusions_table`), which is the
    rule of the primary.  When ``r2star_uptake`` is a secondary finding its verdict is Holm-adjusted, so the
    imputed row is judged by the Holm-adjusted p it would have in that row's place (its p instead of the
    uptake's, the rest of the family unchanged); ``p_holm`` stays NaN (it is not a member of the family)."""
    from ..stats import holm

    idx = table.index[table["endpoint"] == "r2star_uptake_imputed"][0]
    parent = table.index[table["endpoint"] == "r2star_uptake"][0]
    if table.at[parent, "role"] != "secondary" or not np.isfinite(table.at[idx, "p"]):
        return
    fam = table.index[table["role"] == "secondary"]
    p = table.loc[fam, "p"].to_numpy(dtype=float, copy=True)
    p[list(fam).index(parent)] = table.at[idx, "p"]
    adj = float(holm(p)[list(fam).index(parent)])
    table.at[idx, "significant"] = adj < alpha
    table.at[idx, "agrees_with_paper"] = bool(table.at[idx, "direction_matches_paper"] and adj < alpha)
    table.at[idx, "method"] += (f"; judged like the R2* uptake row it re-estimates: Holm-adjusted p {adj:.3g} in that "
                                "row's place in the secondary family")

