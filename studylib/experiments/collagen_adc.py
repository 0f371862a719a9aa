"""ADC and collagen I in cervical cancer PDX (Hauge et al.): the notebook's conclusions."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from ..analysis import conclusions_table, correlation_row, effect_row, true_correlation, true_effect

__all__ = ["STUDY", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "collagen_adc"

def conclusions(corr: Mapping, slope: Mapping, truth: Mapping, *, alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``collagen_adc``: r(ADC, collagen I) and the ADC slope per collagen fraction."""
    study = STUDY
    rows = [
        correlation_row("r(tumour ADC, collagen I area %)", corr, expected_sign=-1,
                        truth=true_correlation(truth, "tumour_adc_vs_collagen_i_area_pct"), study=study, alpha=alpha),
        effect_row("tumour ADC slope per collagen I fraction", slope, expected_sign=-1,
                   truth=true_effect(truth, "adc_slope_um2_per_ms_per_collagen_fraction"), units="µm²/ms per fraction",
                   study=study, alpha=alpha),
    ]
    return conclusions_table(rows)

