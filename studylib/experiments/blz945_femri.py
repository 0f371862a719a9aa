"""BLZ945 and endogenous-iron FeMRI (Leftin et al., Sci Rep 2019): the notebook's conclusions.

Everything else the notebook does is a generic step of :mod:`studylib.analysis`."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from ..analysis import TREATMENT_ENDPOINTS, treatment_and_histology

__all__ = ["STUDY", "ENDPOINTS", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "blz945_femri"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = dict(TREATMENT_ENDPOINTS)


def conclusions(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                hist_col: str = "prussian_blue_area_pct", primary: str = "treatment_effect",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``blz945_femri``: BLZ945 lowers tumour R2* (fewer iron-laden TAMs; model-adjusted); tumour R2* tracks ``hist_col`` at the endpoint."""
    return treatment_and_histology(STUDY, effect, corr, truth, biomarker="R2*", variable="r2star", units="1/s",
                                   control=control, treated=treated, hist_col=hist_col, effect_sign=-1,
                                   corr_sign=+1, note=" (adjusted for tumour model)", primary=primary,
                                   alpha=alpha)
