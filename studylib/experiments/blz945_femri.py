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

__all__ = ["STUDY", "ENDPOINTS", "MODEL_ENDPOINT", "conclusions", "baseline_text"]

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
    "histology_r": "r(tumour R2*, histology) on the last day every group is imaged",
}

#: the key of the per-model rows (one per tumour model: BLZ945 - control in that model, ANCOVA)
MODEL_ENDPOINT = "effect_{model}"


def _truth_key(treated: str, control: str, level: str = "") -> str:
    return f"tumour_r2star_per_s_{treated}_minus_{control}_last_day" + (f"_{level}" if level else "")


def conclusions(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                hist_col: str = "prussian_blue_area_pct", primary: str = "treatment_effect",
                unadjusted: Mapping | None = None, interaction: Mapping | None = None,
                histology_day: Mapping | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``blz945_femri`` (:data:`ENDPOINTS`): BLZ945 lowers tumour R2* (fewer iron-laden TAMs).

    Parameters
    ----------
    effect : the model-adjusted treatment effect (:func:`studylib.analysis.longitudinal_effect`; the notebook's
        is baseline-adjusted, ``baseline="ancova"``), row ``treatment_effect``.
    corr : r(tumour R2*, ``hist_col``), row ``histology_r``; ``histology_day`` the ``attrs`` of the animal table
        (the day imaging meets histology).
    unadjusted : the same contrast without the baseline, row ``treatment_effect_unadjusted`` (sensitivity).
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
                          note=" (adjusted for tumour model)", histology_day=histology_day, alpha=alpha)
    hist = rows.pop("histology_r")
    if unadjusted is not None:
        if str(unadjusted.get("adjustment", "none")) != "none":
            raise ExperimentError("unadjusted: pass the effect without baseline adjustment (baseline=None)")
        rows["treatment_effect_unadjusted"] = effect_row(
            f"tumour R2* {treated} − {control}, day {unadjusted['at_day']:g} without baseline (sensitivity)",
            unadjusted, expected_sign=-1, truth=true_effect(truth, _truth_key(treated, control),
                                                            day=unadjusted["at_day"]),
            units="1/s", study=study, alpha=alpha)
    if interaction is not None:
        rows.update(_interaction_rows(interaction, truth, control=control, treated=treated, alpha=alpha))
    rows["histology_r"] = hist
    return conclusions_table(rows, primary=primary, alpha=alpha)


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
