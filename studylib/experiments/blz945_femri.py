"""BLZ945 and endogenous-iron FeMRI (Leftin et al., Sci Rep 2019): the notebook's conclusions.

The treatment effect is adjusted for the day-0 (pre-treatment) R2* by ANCOVA and for the tumour model;
the models get their own effects and a treatment x tumour-model interaction.  Everything else the notebook
does is a generic step of :mod:`studylib.analysis`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..analysis import (adjustment_text, check_effect, conclusions_table, effect_row, group_difference,
                        treatment_rows, true_effect)
from ..catalog import citation
from ..errors import ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "SENSITIVITY", "MODEL_ENDPOINT", "conclusions", "baseline_text", "imputation_text",
           "histology_cells"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "blz945_femri"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is.  The primary is declared
#: before the data are seen: the baseline-adjusted effect, because the design has a pre-treatment (day-0) scan
#: and ANCOVA on it is unbiased under a chance imbalance and more precise than the raw contrast.
ENDPOINTS = {
    "treatment_effect": "tumour R2*, BLZ945 - control on the last day: ANCOVA on the day-0 R2*, adjusted for "
                        "tumour model",
    "treatment_effect_unadjusted": "the same contrast without the day-0 R2* (sensitivity: carries any day-0 "
                                   "imbalance of the groups)",
    "model_interaction": "treatment x tumour model: the BLZ945 - control effect in one model minus in the other "
                         "(ANCOVA)",
    "histology_r": "r(tumour R2*, histology) within a group x tumour model cell, on the last day every group is "
                   "imaged: does R2* track iron within a group?",
    "histology_r_pooled": "the same r pooled over the cells (descriptive: mostly the difference between groups)",
    "treatment_effect_imputed": "the primary effect with the failed-fit voxels' R2* imputed at the echo train's "
                                "bound instead of left out (sensitivity)",
}

#: rows that re-estimate the primary under another assumption (role "sensitivity", not Holm-counted)
SENSITIVITY = ("treatment_effect_unadjusted", "treatment_effect_imputed")

#: the key of the per-model rows (one per tumour model: BLZ945 - control in that model, ANCOVA)
MODEL_ENDPOINT = "effect_{model}"


def _truth_key(treated: str, control: str, level: str = "") -> str:
    return f"tumour_r2star_per_s_{treated}_minus_{control}_last_day" + (f"_{level}" if level else "")


def conclusions(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                hist_col: str = "prussian_blue_area_pct", primary: str = "treatment_effect",
                unadjusted: Mapping | None = None, interaction: Mapping | None = None,
                histology_day: Mapping | None = None, alpha: float = 0.05, imputed: Mapping | None = None,
                imputed_value: float | None = None, true_parts: Mapping | None = None) -> pd.DataFrame:
    """Conclusions of ``blz945_femri`` (:data:`ENDPOINTS`): BLZ945 lowers tumour R2* (fewer iron-laden TAMs).

    Parameters
    ----------
    effect : the model-adjusted treatment effect (:func:`studylib.analysis.longitudinal_effect`; the notebook's
        is baseline-adjusted, ``baseline="ancova"``), row ``treatment_effect``.
    corr : r(tumour R2*, ``hist_col``), row ``histology_r``; ``histology_day`` the ``attrs`` of the animal table
        (the day imaging meets histology).  Clustered (``correlation_effect(..., cluster="cell")``, see
        :func:`histology_cells`), ``histology_r`` is the within-cell r against ``true_parts["within"]``
        (:func:`studylib.analysis.true_correlation_parts`) and the pooled r is the descriptive row
        ``histology_r_pooled``.
    unadjusted : the same contrast without the baseline, row ``treatment_effect_unadjusted`` (role
        ``"sensitivity"``: not Holm-counted).
    imputed : the primary effect (same model) on the tumour table whose failed voxels' R2* were imputed at
        ``imputed_value`` 1/s (:func:`studylib.analysis.roi_tables`, ``impute_failed``), row
        ``treatment_effect_imputed`` (role ``"sensitivity"``), against the same truth as the primary.
    interaction : ``longitudinal_effect(..., by="model")``: one row per model (``effect_<model>``, truth key
        ``..._last_day_<model>``) and the row ``model_interaction`` (second model minus first; its truth the
        difference of the models' true effects).  Its expected sign comes from the pre-treatment data, not from
        the outcome: BLZ945 depletes a fraction of the TAMs, so the model with more TAM iron on the first day
        (the higher mean R2*) should lose more R2*.
    primary : the primary endpoint's key; the other rows are secondary (Holm-adjusted).
    """
    study = STUDY
    rows = treatment_rows(study, effect, corr, truth, biomarker="R2*", variable="r2star", units="1/s",
                          control=control, treated=treated, hist_col=hist_col, effect_sign=-1, corr_sign=+1,
                          note=" (adjusted for tumour model)", histology_day=histology_day, alpha=alpha,
                          true_parts=true_parts)
    hist = {k: rows.pop(k) for k in ("histology_r", "histology_r_pooled") if k in rows}
    if unadjusted is not None:
        if str(unadjusted.get("adjustment", "none")) != "none":
            raise ExperimentError("unadjusted: pass the effect without baseline adjustment (baseline=None)")
        rows["treatment_effect_unadjusted"] = effect_row(
            f"tumour R2* {treated} − {control}, day {unadjusted['at_day']:g} without baseline (sensitivity)",
            unadjusted, expected_sign=-1, truth=true_effect(truth, _truth_key(treated, control),
                                                            day=unadjusted["at_day"]),
            units="1/s", study=study, role="sensitivity", alpha=alpha)
    if imputed is not None:
        if imputed_value is None or not np.isfinite(imputed_value):
            raise ExperimentError("imputed: pass imputed_value, the R2* (1/s) the failed voxels were imputed at")
        if str(imputed.get("adjustment", "none")) != str(effect.get("adjustment", "none")):
            raise ExperimentError(f"imputed: fit it like the primary (adjustment {effect.get('adjustment')!r}, got "
                                  f"{imputed.get('adjustment')!r})")
        row = effect_row(
            f"tumour R2* {treated} − {control}, day {imputed['at_day']:g}, failed voxels at R2* = "
            f"{imputed_value:.0f} 1/s (sensitivity)", imputed, expected_sign=-1,
            truth=true_effect(truth, _truth_key(treated, control), day=imputed["at_day"]), units="1/s", study=study,
            role="sensitivity", alpha=alpha)
        row["method"] = (f"as the primary, on the tumour table with every failed-fit voxel's R2* set to "
                         f"{imputed_value:.4g} 1/s (1000/TE_min: the fastest decay the echo train resolves) instead of "
                         f"left out; {row['method']}")
        rows["treatment_effect_imputed"] = row
    if interaction is not None:
        rows.update(_interaction_rows(interaction, truth, control=control, treated=treated, alpha=alpha))
    rows.update(hist)
    return conclusions_table(rows, primary=primary, alpha=alpha)


def histology_cells(animals: pd.DataFrame, *, group: str = "group", model: str = "model",
                    name: str = "cell") -> pd.DataFrame:
    """``animals`` with a column ``name`` = group x tumour model (``"<group> <model>"``; the group alone without a
    model column): the clusters of the within-group imaging-vs-histology correlation.  The group and model
    means of R2* and iron differ by design (BLZ945 removes iron-laden TAMs; the models start with different
    TAM content), so within a cell is where "does R2* track iron" is not the group difference restated."""
    if group not in animals.columns:
        raise ExperimentError(f"animals lacks column '{group}'; it has {list(animals.columns)}")
    out = animals.copy()
    has_model = model in out.columns and out[model].astype(str).str.len().gt(0).any()
    out[name] = out[group].astype(str) + ((" " + out[model].astype(str)) if has_model else "")
    return out


def imputation_text(primary: Mapping, imputed: Mapping, sessions: pd.DataFrame, *, value: float,
                    group_col: str = "group") -> str:
    """What imputing the failed voxels did, from the numbers: the failed fraction per group on the effect's
    day and the primary effect with and without imputation."""
    from ..analysis.tables import FAILED_FIT_COLUMN

    day = float(primary["at_day"])
    d = sessions[sessions["day"].astype(float) == day]
    frac = ("; ".join(f"{g} {100 * v:.2f} %" for g, v in d.groupby(group_col)[FAILED_FIT_COLUMN].mean().items())
            if FAILED_FIT_COLUMN in d.columns else "not recorded")
    shift = imputed["estimate"] - primary["estimate"]
    return (f"Failed-fit voxels on day {day:g} (mean fraction of the tumour per group): {frac}. With them left out the "
            f"effect is {primary['estimate']:.2f} [{primary['ci_low']:.2f}, {primary['ci_high']:.2f}] 1/s; with "
            f"their R2* imputed at {value:.0f} 1/s (1000/TE_min) it is {imputed['estimate']:.2f} "
            f"[{imputed['ci_low']:.2f}, {imputed['ci_high']:.2f}] 1/s ({shift:+.2f} 1/s). The imputation is an "
            "extreme assumption (every failed voxel decays as fast as the echo train can resolve), so the two "
            "bracket the effect if the failures are the most iron-laden voxels; it is a sensitivity analysis, "
            "not Holm-counted.")


def _interaction_rows(inter: Mapping, truth: Mapping, *, control: str, treated: str, alpha: float) -> dict:
    per, levels, by = inter.get("per_level"), list(inter.get("levels", ())), inter.get("by", "model")
    if not per or len(levels) < 2:
        raise ExperimentError("interaction: pass longitudinal_effect(..., by='model') (per-level effects)")
    day, adj = inter["at_day"], adjustment_text(inter)
    out = {}
    for lvl in levels:
        out[MODEL_ENDPOINT.format(model=lvl)] = effect_row(
            f"tumour R2* {treated} − {control} in {lvl}, day {day:g}{adj}", per[lvl], expected_sign=-1,
            truth=true_effect(truth, _truth_key(treated, control, lvl), day=day), units="1/s", study=STUDY,
            alpha=alpha)
    if len(levels) != 2:  # the joint F test has no signed estimate: the per-model rows carry the finding
        return out
    first = dict(inter.get("first_day_by_level", {}))
    if not all(np.isfinite(first.get(lvl, np.nan)) for lvl in levels):
        raise ExperimentError(f"interaction lacks the first-day mean R2* of {levels} (first_day_by_level)")
    hi = levels[1] if first[levels[1]] > first[levels[0]] else levels[0]
    sign = -1 if hi == levels[1] else +1
    t1 = true_effect(truth, _truth_key(treated, control, levels[1]), day=day)
    t0 = true_effect(truth, _truth_key(treated, control, levels[0]), day=day)
    why = (f"; expected sign from the pre-treatment data: {hi} has the higher first-day R2* "
           f"({', '.join(f'{lvl} {first[lvl]:.1f}' for lvl in levels)} 1/s), so with a proportional TAM depletion it "
           f"should lose more R2* (a hypothesis from the paper's mechanism, not a reported finding)")
    out["model_interaction"] = check_effect(
        f"treatment × {by}: ({treated} − {control}) in {levels[1]} minus in {levels[0]}, day {day:g}{adj}",
        estimate=inter["estimate"], ci_low=inter["ci_low"], ci_high=inter["ci_high"], p=inter["p"],
        expected_sign=sign, truth=t1 - t0, units="1/s", paper=citation(STUDY), method=inter["method"] + why,
        alpha=alpha)
    return out


def baseline_text(sessions: pd.DataFrame, adjusted: Mapping, unadjusted: Mapping, *, control: str, treated: str,
                  y: str = "r2star", by: str | None = "model", alpha: float = 0.05) -> str:
    """The day-0 (pre-treatment) imbalance of the groups and what the baseline adjustment did, from the numbers.

    The day-0 difference (Welch t, :func:`studylib.analysis.group_difference`), overall and per ``by`` level,
    then the unadjusted and the ANCOVA contrast on the effect's day: the unadjusted contrast carries the day-0
    difference times the day-to-day correlation of R2*, the ANCOVA compares animals of equal day-0 R2*.
    """
    bday = adjusted.get("baseline_day")
    if bday is None:
        raise ExperimentError("adjusted: pass the baseline-adjusted effect (baseline='ancova')")
    d0 = sessions[sessions["day"].astype(float) == float(bday)]
    overall = group_difference(d0, y, control=control, treated=treated, alpha=alpha)
    parts = []
    if by and by in d0.columns and d0[by].nunique() > 1:
        for lvl, g in d0.groupby(by):
            e = group_difference(g, y, control=control, treated=treated, alpha=alpha)
            parts.append(f"{lvl} {e.estimate:+.2f} [{e.ci_low:.2f}, {e.ci_high:.2f}]")
    per = f" ({by}: {'; '.join(parts)})" if parts else ""
    ci = f"{100 * (1 - alpha):g} %"
    shift = adjusted["estimate"] - unadjusted["estimate"]
    return (f"On day {bday:g}, before {treated} acts, {treated} − {control} {y} differs by {overall.estimate:+.2f} 1/s "
            f"[{overall.ci_low:.2f}, {overall.ci_high:.2f}] ({ci} CI, Welch p = {overall.p:.2g}){per}. "
            f"The unadjusted day-{unadjusted['at_day']:g} contrast, {unadjusted['estimate']:.2f} "
            f"[{unadjusted['ci_low']:.2f}, {unadjusted['ci_high']:.2f}] 1/s, carries that difference; the ANCOVA on "
            f"the day-{bday:g} value compares animals of equal baseline: {adjusted['estimate']:.2f} "
            f"[{adjusted['ci_low']:.2f}, {adjusted['ci_high']:.2f}] 1/s ({shift:+.2f} 1/s, CI "
            f"{(adjusted['ci_high'] - adjusted['ci_low']) / (unadjusted['ci_high'] - unadjusted['ci_low']):.0%} "
            f"of the unadjusted width). The primary endpoint is the adjusted effect by declaration (the design has a "
            f"pre-treatment scan), not because of these numbers.")
