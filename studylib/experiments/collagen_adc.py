"""ADC and collagen I in cervical cancer PDX (Hauge et al.): the notebook's endpoints and conclusions.

The paper's question is whether ADC tracks the collagen I fraction **within** a tumour model (the
tumours of one PDX model differ in stroma; does diffusion MRI see it?), so the primary endpoint is the
within-model (repeated-measures) correlation; the pooled correlation over all tumours and the
correlation of the model means are secondary (:func:`studylib.analysis.correlation_effect`).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from ..analysis import conclusions_table, correlation_part_rows, effect_row, true_correlation, true_effect

__all__ = ["STUDY", "ENDPOINTS", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "collagen_adc"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "within_model_r": "r(tumour ADC, collagen I area %) within PDX model (repeated-measures correlation)",
    "pooled_r": "r(tumour ADC, collagen I area %) pooled over all tumours",
    "between_model_r": "r(tumour ADC, collagen I area %) of the PDX model means",
    "slope": "tumour ADC slope per collagen I fraction (OLS; with the model as covariate, the common slope within "
             "a model)",
}


def conclusions(corr: Mapping, slope: Mapping, truth: Mapping, *, true_parts: Mapping | None = None,
                primary: str = "within_model_r", alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``collagen_adc`` (endpoints :data:`ENDPOINTS`).

    Parameters
    ----------
    corr : :func:`studylib.analysis.correlation_effect` of ADC and collagen with ``cluster`` = the PDX
        model (its ``parts``: pooled, within, between).
    slope : :func:`studylib.analysis.regression_slope` of ADC on the collagen fraction (``covariates=[cluster]``:
        within a model, like the primary; without: pooled over all tumours, which the finding then says).
    truth : the simulated truth (``{}`` on real data).
    true_parts : :func:`studylib.analysis.true_correlation_parts` of the simulated animals' true ADC and
        collagen (within and between truths); None: NaN.
    primary : the primary endpoint's key; the others are secondary (Holm-adjusted).
    """
    rows = correlation_part_rows("r(tumour ADC, collagen I area %)", corr, expected_sign=-1,
                                 pooled_truth=true_correlation(truth, "tumour_adc_vs_collagen_i_area_pct"),
                                 true_parts=true_parts, study=STUDY, alpha=alpha)
    rows["slope"] = effect_row(f"tumour ADC slope per collagen I fraction{slope.get('scope', '')}", slope,
                               expected_sign=-1,
                               truth=true_effect(truth, "adc_slope_um2_per_ms_per_collagen_fraction"),
                               units="µm²/ms per fraction", study=STUDY, alpha=alpha)
    return conclusions_table(rows, primary=primary, alpha=alpha)
