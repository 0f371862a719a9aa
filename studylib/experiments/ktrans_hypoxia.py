"""DCE-MRI Ktrans and hypoxia (Hauge et al., J Transl Med 2017): endpoints, context correlations, conclusions.

The paper's question is whether Ktrans tracks the hypoxic fraction within a tumour model and whether
this is explained by microvessel density (MVD) or interstitial fluid pressure (IFP).  The primary
endpoint is the within-model correlation; the pooled and between-model correlations, the partial
regression "Ktrans beyond MVD and IFP" (:func:`studylib.analysis.partial_regression_effect`) and the
slope are secondary.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..analysis import (conclusions_table, correlation_effect, correlation_row, effect_row, true_correlation,
                        true_effect)

__all__ = ["STUDY", "ENDPOINTS", "other_correlations", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ktrans_hypoxia"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "within_model_r": "r(tumour Ktrans, hypoxic fraction) within PDX model (repeated-measures correlation)",
    "pooled_r": "r(tumour Ktrans, hypoxic fraction) pooled over all tumours",
    "between_model_r": "r(tumour Ktrans, hypoxic fraction) of the PDX model means",
    "beyond_mvd_ifp": "partial r(Ktrans, hypoxic fraction) given MVD and IFP (OLS t test)",
    "slope": "tumour Ktrans slope per hypoxic fraction (OLS over all tumours)",
}


def other_correlations(animals: pd.DataFrame, x: str, histology: pd.DataFrame, *, exclude: Sequence[str] = (),
                       cluster: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Correlation of ``x`` with every other numeric histology endpoint (e.g. MVD, IFP): pooled and, with a
    ``cluster``, within and between clusters (Fisher-z CIs and p, :func:`studylib.analysis.correlation_effect`).

    Returns
    -------
    DataFrame: ``endpoint, level, r, ci_low, ci_high, p, df, n`` (p not corrected; these are context, not findings).
    """
    skip = {"animal", "group", "model", "sex", "study", "day", "endpoint_day", "region", *exclude}
    cols = [c for c in histology.columns if c not in skip and pd.api.types.is_numeric_dtype(histology[c])]
    rows = []
    for c in cols:
        if c not in animals.columns:
            continue
        r = correlation_effect(animals, x, c, cluster=cluster, alpha=alpha)
        for level, e in r["parts"].items():
            rows.append(dict(endpoint=c, level=level, r=e["estimate"], ci_low=e["ci_low"], ci_high=e["ci_high"],
                             p=e["p"], df=e["df"], n=e["n"]))
    return pd.DataFrame(rows, columns=["endpoint", "level", "r", "ci_low", "ci_high", "p", "df", "n"])


def conclusions(corr: Mapping, slope: Mapping, truth: Mapping, *, beyond: Mapping | None = None,
                true_parts: Mapping | None = None, hist_col: str = "hypoxic_fraction_pct",
                primary: str = "within_model_r", alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ktrans_hypoxia`` (endpoints :data:`ENDPOINTS`).

    Parameters
    ----------
    corr : :func:`studylib.analysis.correlation_effect` of Ktrans and ``hist_col`` with ``cluster`` = the PDX model.
    slope : :func:`studylib.analysis.regression_slope` of Ktrans on the hypoxic fraction.
    truth : the simulated truth (``{}`` on real data).
    beyond : :func:`studylib.analysis.partial_regression_effect` of ``hist_col`` on Ktrans given MVD and IFP;
        None: no such row.
    true_parts : :func:`studylib.analysis.true_correlation_parts` of the simulated animals (``within``,
        ``between``, ``partial``); None: NaN.
    primary : the primary endpoint's key; the others are secondary (Holm-adjusted).
    """
    parts = corr["parts"]
    tp = dict(true_parts or {})
    nan = float("nan")
    label = f"r(tumour Ktrans, {hist_col})"
    cluster = corr.get("cluster") or "model"
    rows = {}
    if "within" in parts:
        rows["within_model_r"] = correlation_row(f"{label} within {cluster}", parts["within"], expected_sign=-1,
                                                 truth=tp.get("within", nan), study=STUDY, alpha=alpha)
    rows["pooled_r"] = correlation_row(f"{label} pooled", parts["pooled"], expected_sign=-1,
                                       truth=true_correlation(truth, f"tumour_ktrans_vs_{hist_col}"), study=STUDY,
                                       alpha=alpha)
    if "between" in parts:
        rows["between_model_r"] = correlation_row(f"{label} between {cluster} means", parts["between"],
                                                  expected_sign=-1, truth=tp.get("between", nan), study=STUDY,
                                                  alpha=alpha)
    if beyond is not None:
        covs = " and ".join(beyond.get("covariates", ()))
        rows["beyond_mvd_ifp"] = correlation_row(f"partial r(tumour Ktrans, {hist_col}) beyond {covs}", beyond,
                                                 expected_sign=-1, truth=tp.get("partial", nan), study=STUDY,
                                                 alpha=alpha)
    rows["slope"] = effect_row("tumour Ktrans slope per hypoxic fraction", slope, expected_sign=-1,
                               truth=true_effect(truth, "ktrans_slope_per_min_per_hypoxic_fraction"),
                               units="1/min per fraction", study=STUDY, alpha=alpha)
    return conclusions_table(rows, primary=primary, alpha=alpha)
