"""Amp B and ferumoxytol in glioma (Yang et al., Neuro-Oncology 2017): the notebook's conclusions, and what
comparing post-contrast R2* without a pre-contrast scan implies.

Everything else the notebook does is a generic step of :mod:`studylib.analysis`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..analysis import TREATMENT_ENDPOINTS, group_difference, treatment_and_histology
from ..errors import ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "conclusions", "precontrast_text"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ampb_ferumoxytol"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = dict(TREATMENT_ENDPOINTS)


def conclusions(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                hist_col: str = "iba1_cells_per_mm2", primary: str = "treatment_effect",
                histology_day: Mapping | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ampb_ferumoxytol``: Amp B raises tumour R2* (more iron-laden macrophages); tumour R2* tracks
    ``hist_col`` on the day of ``histology_day`` (the animal table's ``attrs``; None: each animal's last day)."""
    return treatment_and_histology(STUDY, effect, corr, truth, biomarker="R2*", variable="r2star", units="1/s",
                                   control=control, treated=treated, hist_col=hist_col, effect_sign=+1,
                                   corr_sign=+1, note="", primary=primary, histology_day=histology_day, alpha=alpha)


def precontrast_text(attrs: Mapping, sessions: pd.DataFrame, effect: Mapping, adjusted: Mapping | None = None, *,
                     control: str, treated: str, y: str = "r2star", alpha: float = 0.05) -> str:
    """What comparing R2* without a pre-contrast scan implies, computed from the data.

    With a contrast agent in every session, tumour ``R2* = R2*_native + dR2*``, ``dR2* ~ r2* [Fe]``
    (Daldrup-Link, Radiology 2017;284:616, doi:10.1148/radiol.2017162759): the treated - control contrast is a
    difference of total R2*, an iron difference only when native R2* does not differ between the groups, and
    the between-animal spread of native R2* stays in the error.  A pre-contrast scan per session would give
    ``dR2* = R2*_post - R2*_pre`` per animal.

    Parameters
    ----------
    attrs : the loaded study's attributes (``ds.attrs``: ``agent``, ``ContrastTiming``), from the sidecars.
    sessions : one row per animal x day (``animal, group, day, y``).
    effect : the unadjusted treated - control effect (:func:`studylib.analysis.longitudinal_effect`).
    adjusted : the same contrast with ``baseline="ancova"`` on the first (already post-contrast) day, or None.

    Returns
    -------
    str: the scans, the day-0 group difference and within-group SD (Welch, pooled SD), the effect, and what
    a pre-contrast scan would change.
    """
    for c in ("animal", "group", "day", y):
        if c not in sessions.columns:
            raise ExperimentError(f"sessions table lacks column '{c}'; it has {list(sessions.columns)}")
    agent = attrs.get("agent")
    timing = attrs.get("ContrastTiming")
    n = int(sessions[y].notna().sum())
    if not agent:
        return (f"The sidecars name no contrast agent: the {n} sessions measure native {y}, and the contrast is not "
                "a ferumoxytol (iron uptake) measurement.")
    d0 = float(sessions["day"].min())
    first = sessions[(sessions["day"] == d0) & sessions["group"].isin([control, treated])].dropna(subset=[y])
    diff0 = group_difference(first, y, control=control, treated=treated, alpha=alpha)
    sd = first.groupby("group")[y].agg(["var", "count"])
    pooled_sd = float(np.sqrt(((sd["count"] - 1) * sd["var"]).sum() / (sd["count"] - 1).sum()))
    when = f" ({timing})" if timing else ""
    ci = f"{100 * (1 - alpha):g} %"
    out = [f"R2* is compared without a pre-contrast baseline: all {n} tumour sessions were acquired after {agent}{when}"
           f" and none before it, so tumour R2* = native R2* + ΔR2*({agent}), and the {treated} − {control} contrast "
           f"on day {effect['at_day']:g}, {effect['estimate']:.2f} [{effect['ci_low']:.2f}, {effect['ci_high']:.2f}] 1/s, "
           f"is a difference of total R2*.",
           f"It measures iron only if native tumour R2* (haemorrhage, oedema, endogenous iron) does not differ between "
           f"the groups: randomisation makes that true on average, but these data cannot check it.",
           f"The spread of native R2* between animals stays in the error: on day {d0:g}, the first scan (already after "
           f"{agent}), tumour R2* has a within-group SD of {pooled_sd:.2f} 1/s and {treated} − {control} differs by "
           f"{diff0.estimate:+.2f} [{diff0.ci_low:.2f}, {diff0.ci_high:.2f}] 1/s ({ci} CI, Welch p = {diff0.p:.2g}); "
           f"that SD bounds the native part a per-animal ΔR2* (a pre-contrast scan each session) would remove."]
    if adjusted is not None and str(adjusted.get("adjustment", "none")) != "none":
        w = (adjusted["ci_high"] - adjusted["ci_low"]) / (effect["ci_high"] - effect["ci_low"])
        out.append(f"The closest adjustment the design allows, ANCOVA on the day-{adjusted['baseline_day']:g} value "
                   f"(native R2* plus the iron before treatment), gives {adjusted['estimate']:.2f} "
                   f"[{adjusted['ci_low']:.2f}, {adjusted['ci_high']:.2f}] 1/s (CI {w:.0%} of the unadjusted width; a "
                   "sensitivity analysis, not the declared primary).")
    return " ".join(out)
