"""Ferumoxytol as tumour therapy (Zanganeh et al., Nat Nanotechnol 2016): two tumours per mouse,
the uptake day, and the conclusions."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import pandas as pd

from ..analysis import adjustment_text, common_day, conclusions_table, effect_row, true_effect
from ..errors import DataWarning, ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "TUMOUR_LABELS", "uptake_day", "histology_on_common_day", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ferumoxytol_therapy"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "growth_rate": "tumour growth rate (log volume per day), ferumoxytol - control",
    "r2star_uptake": "tumour R2* 24-48 h after ferumoxytol, ferumoxytol - control (ANCOVA on the pre-contrast day 0)",
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


def conclusions(growth: Mapping, r2: Mapping, cd80: Mapping, cd206: Mapping, truth: Mapping, *,
                control: str, treated: str, primary: str = "growth_rate", histology_day: Mapping | None = None,
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ferumoxytol_therapy``: growth rate, tumour R2* at 24-48 h, CD80 and CD206
    (:data:`ENDPOINTS`); ``primary`` names the primary endpoint, the others are secondary (Holm-adjusted).
    ``histology_day``: the ``attrs`` of :func:`histology_on_common_day` (the day of the CD80/CD206 rows, said in
    their finding and method), or None (each animal's endpoint)."""
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
    rows = dict(zip(ENDPOINTS, [
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
    return conclusions_table(rows, primary=primary, alpha=alpha)

