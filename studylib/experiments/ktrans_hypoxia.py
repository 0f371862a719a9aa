"""DCE-MRI Ktrans and hypoxia (Hauge et al., J Transl Med 2017): context correlations and conclusions."""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..analysis import conclusions_table, correlation_effect, correlation_row, effect_row, true_correlation, true_effect

__all__ = ["STUDY", "other_correlations", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ktrans_hypoxia"

def other_correlations(animals: pd.DataFrame, x: str, histology: pd.DataFrame, *, exclude: Sequence[str] = (),
                       n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Correlation of ``x`` with every other numeric histology endpoint (e.g. MVD, IFP), bootstrap CIs.

    Returns
    -------
    DataFrame: ``endpoint, r, ci_low, ci_high, p, n`` (p not corrected; these are context, not findings).
    """
    skip = {"animal", "group", "model", "sex", "study", "day", "endpoint_day", "region", *exclude}
    cols = [c for c in histology.columns if c not in skip and pd.api.types.is_numeric_dtype(histology[c])]
    rows = []
    for c in cols:
        if c not in animals.columns:
            continue
        r = correlation_effect(animals, x, c, n_boot=n_boot, seed=seed, alpha=alpha)
        rows.append(dict(endpoint=c, r=r["estimate"], ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"], n=r["n"]))
    return pd.DataFrame(rows, columns=["endpoint", "r", "ci_low", "ci_high", "p", "n"])


def conclusions(corr: Mapping, slope: Mapping, truth: Mapping, *, hist_col: str = "hypoxic_fraction_pct",
                       alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ktrans_hypoxia``: r(Ktrans, hypoxic fraction) and the Ktrans slope per fraction."""
    study = STUDY
    rows = [
        correlation_row(f"r(tumour Ktrans, {hist_col})", corr, expected_sign=-1,
                        truth=true_correlation(truth, f"tumour_ktrans_vs_{hist_col}"), study=study, alpha=alpha),
        effect_row("tumour Ktrans slope per hypoxic fraction", slope, expected_sign=-1,
                   truth=true_effect(truth, "ktrans_slope_per_min_per_hypoxic_fraction"), units="1/min per fraction",
                   study=study, alpha=alpha),
    ]
    return conclusions_table(rows)

