"""Ferumoxytol as tumour therapy (Zanganeh et al., Nat Nanotechnol 2016): two tumours per mouse,
the uptake day, and the conclusions."""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..analysis import conclusions_table, effect_row, true_effect
from ..errors import ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "TUMOUR_LABELS", "uptake_day", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ferumoxytol_therapy"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "growth_rate": "tumour growth rate (log volume per day), ferumoxytol - control",
    "r2star_uptake": "tumour R2* 24-48 h after ferumoxytol, ferumoxytol - control",
    "cd80": "CD80+ (M1) % of F4/80+ macrophages, ferumoxytol - control",
    "cd206": "CD206+ (M2) % of F4/80+ macrophages, ferumoxytol - control",
}

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


def conclusions(growth: Mapping, r2: Mapping, cd80: Mapping, cd206: Mapping, truth: Mapping, *,
                control: str, treated: str, primary: str = "growth_rate", alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ferumoxytol_therapy``: growth rate, tumour R2* at 24-48 h, CD80 and CD206
    (:data:`ENDPOINTS`); ``primary`` names the primary endpoint, the others are secondary (Holm-adjusted)."""
    study = STUDY
    day = r2["at_day"]
    rows = dict(zip(ENDPOINTS, [
        effect_row(f"tumour growth rate (log volume) {treated} − {control}", growth, expected_sign=-1,
                   truth=true_effect(truth, f"log_volume_growth_per_day_{treated}_minus_{control}"),
                   units="1/day", study=study, alpha=alpha),
        effect_row(f"tumour R2* {treated} − {control}, day {day:g} (T2* shortening)", r2, expected_sign=+1,
                   truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_day1", day=day),
                   units="1/s", study=study, alpha=alpha),
        effect_row(f"CD80+ (M1) % of F4/80+ {treated} − {control}", cd80, expected_sign=+1,
                   truth=true_effect(truth, f"cd80_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
        effect_row(f"CD206+ (M2) % of F4/80+ {treated} − {control}", cd206, expected_sign=-1,
                   truth=true_effect(truth, f"cd206_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
    ]))
    return conclusions_table(rows, primary=primary, alpha=alpha)

