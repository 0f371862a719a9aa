"""DCE-MRI Ktrans and hypoxia (Hauge et al., J Transl Med 2017): endpoints, context correlations, conclusions.

The paper's question is whether Ktrans tracks the hypoxic fraction within a tumour model and whether
this is explained by microvessel density (MVD) or interstitial fluid pressure (IFP).  The primary
endpoint is the within-model correlation; the pooled and between-model correlations, the partial
regression "Ktrans beyond MVD and IFP" (:func:`studylib.analysis.partial_regression_effect`) and the
slope are secondary.

Analysis parameters the data do not give (issue 14): the sidecars carry acquisition parameters only, so
the bolus arrival is measured in the vessel ROI, r1 is the agent's tabulated value at the field and the
haematocrit is the mouse default.  :func:`hematocrit_sensitivity` shows, from the fitted numbers alone,
how Ktrans, ve and vp move with the haematocrit; :func:`recovery_vs_truth` (simulated data only) measures
the bias of the fitted values against the truth.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..analysis import (conclusions_table, correlation_effect, correlation_part_rows, correlation_row, effect_row,
                        true_correlation, true_effect)
from ..errors import ExperimentError

__all__ = ["STUDY", "ENDPOINTS", "other_correlations", "conclusions", "KINETIC_TRUTH", "hematocrit_sensitivity",
           "hematocrit_text", "recovery_vs_truth", "recovery_text"]

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
    tp = dict(true_parts or {})
    nan = float("nan")
    rows = correlation_part_rows(f"r(tumour Ktrans, {hist_col})", corr, expected_sign=-1,
                                 pooled_truth=true_correlation(truth, f"tumour_ktrans_vs_{hist_col}"),
                                 true_parts=tp, study=STUDY, alpha=alpha)
    if beyond is not None:
        covs = " and ".join(beyond.get("covariates", ()))
        rows["beyond_mvd_ifp"] = correlation_row(f"partial r(tumour Ktrans, {hist_col}) beyond {covs}", beyond,
                                                 expected_sign=-1, truth=tp.get("partial", nan), study=STUDY,
                                                 alpha=alpha)
    rows["slope"] = effect_row("tumour Ktrans slope per hypoxic fraction", slope, expected_sign=-1,
                               truth=true_effect(truth, "ktrans_slope_per_min_per_hypoxic_fraction"),
                               units="1/min per fraction", study=STUDY, alpha=alpha)
    return conclusions_table(rows, primary=primary, alpha=alpha)


#: fitted tumour variable -> its column in the simulated truth's ``sessions.csv``
KINETIC_TRUTH = {"ktrans": "tumour_ktrans_per_min", "ve": "tumour_ve", "vp": "tumour_vp"}


def _fraction(x, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ExperimentError(f"{what} must be a haematocrit between 0 and 1, got {x!r}") from None
    if not 0.0 < v < 1.0:
        raise ExperimentError(f"{what} must be a haematocrit between 0 and 1, got {x!r}")
    return v


def hematocrit_sensitivity(animals: pd.DataFrame, *, assumed: float, hematocrits: Sequence[float],
                           variables: Sequence[str] = ("ktrans", "ve", "vp"),
                           slope: Mapping | None = None) -> pd.DataFrame:
    """How the tracer-kinetic estimates move with the haematocrit the AIF conversion assumes.

    The vessel ROI gives whole-blood concentration; the plasma AIF is ``Cp = Cb / (1 - Hct)``.  In the
    Tofts, extended Tofts and Patlak models, ``Ct(t) = vp Cp(t) + Ktrans int_0^t Cp(u) exp(-kep (t - u)) du``,
    so scaling ``Cp`` by a constant ``c`` scales the least-squares Ktrans and vp by ``1/c`` and leaves
    kep unchanged (ve = Ktrans / kep scales by ``1/c`` too).  Fitting with haematocrit ``h`` instead of the
    ``assumed`` one therefore multiplies Ktrans, ve and vp (and the Ktrans slope with its CI) by

        scale(h) = (1 - h) / (1 - assumed),

    exactly while the fit stays inside its parameter bounds; kep and every correlation are unchanged.
    Computed from the fitted numbers only (no truth); on the demo study refitting at 0.42 instead of 0.45
    changed the slope by the predicted factor to 5 digits.  Model: Tofts et al., JMRI 1999;10:223.

    Parameters
    ----------
    animals : one row per tumour with the fitted ``variables`` (e.g. :func:`studylib.analysis.animal_table`).
    assumed : the haematocrit the fit used (fraction, e.g. ``aif.attrs["hematocrit"]``).
    hematocrits : the alternatives to show (fractions in (0, 1)); the assumed one is always included.
    slope : optional :func:`studylib.analysis.regression_slope` result (``estimate, ci_low, ci_high``).

    Returns
    -------
    DataFrame, one row per haematocrit (ascending): ``hematocrit, assumed, scale, change_pct``, the cohort
    mean of each variable (``mean_<v>``) and, with ``slope``, ``slope, slope_ci_low, slope_ci_high``.
    """
    hct = _fraction(assumed, "assumed")
    hs = sorted({round(_fraction(h, "hematocrits"), 6) for h in hematocrits} | {round(hct, 6)})
    missing = [v for v in variables if v not in animals.columns]
    if missing:
        raise ExperimentError(f"animals lacks the fitted variable(s) {missing}; it has {list(animals.columns)}")
    means = {v: float(pd.to_numeric(animals[v], errors="coerce").mean()) for v in variables}
    rows = []
    for h in hs:
        scale = (1.0 - h) / (1.0 - hct)
        row = {"hematocrit": h, "assumed": bool(math.isclose(h, hct, abs_tol=1e-6)), "scale": scale,
               "change_pct": 100.0 * (scale - 1.0)}
        row.update({f"mean_{v}": scale * m for v, m in means.items()})
        if slope is not None:
            row.update(slope=scale * float(slope["estimate"]), slope_ci_low=scale * float(slope["ci_low"]),
                       slope_ci_high=scale * float(slope["ci_high"]))
        rows.append(row)
    return pd.DataFrame(rows)


def hematocrit_text(table: pd.DataFrame, *, source: str = "") -> str:
    """One paragraph for the report, computed from :func:`hematocrit_sensitivity`'s table."""
    a = table[table["assumed"]].iloc[0]
    lo, hi = table.iloc[0], table.iloc[-1]
    where = f" ({source})" if source else ""
    txt = (f"Haematocrit: the plasma AIF assumes Hct = {a['hematocrit']:.2f}{where}; the images do not give it. "
           f"Had the animals' haematocrit been {lo['hematocrit']:.2f} to {hi['hematocrit']:.2f}, Ktrans, ve and vp "
           f"would be {lo['change_pct']:+.1f} % to {hi['change_pct']:+.1f} % different")
    if "mean_ktrans" in table:
        txt += f" (cohort mean Ktrans {lo['mean_ktrans']:.3f} to {hi['mean_ktrans']:.3f} /min, " \
               f"{a['mean_ktrans']:.3f} as fitted)"
    if "slope" in table:
        txt += f"; the Ktrans slope {lo['slope']:.3f} to {hi['slope']:.3f} /min per fraction " \
               f"({a['slope']:.3f} as fitted)"
    return txt + (". kep and every correlation do not depend on it; r1 cancels from Ktrans, ve and vp with a "
                  "measured AIF (tissue and vessel concentrations share it).")


def recovery_vs_truth(animals: pd.DataFrame, truth_sessions: pd.DataFrame | None, *,
                      variables: Mapping[str, str] = KINETIC_TRUTH, assumed_hematocrit: float | None = None,
                      simulated_hematocrit: float | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Bias of the fitted tumour means against the simulated truth (synthetic data only).

    Per variable, over the tumours in both tables (joined on ``animal``): the geometric mean of
    ``fitted / true`` with its (1 - alpha) t interval on the log ratios, as a bias in %; beside it the bias
    the haematocrit assumption alone predicts, ``(1 - assumed) / (1 - simulated) - 1`` (see
    :func:`hematocrit_sensitivity`; exact, so it divides out), and the remainder
    ``(1 + bias) / (1 + haematocrit bias) - 1`` with its interval: what the fit itself adds (noise in the
    AIF and T1, the measured bolus arrival, the model).

    Returns
    -------
    DataFrame ``variable, n, bias_pct, ci_low_pct, ci_high_pct, hematocrit_bias_pct, residual_pct,
    residual_ci_low_pct, residual_ci_high_pct`` (empty without truth: real data; residuals NaN without
    both haematocrits).
    """
    from scipy import stats as st

    cols = ["variable", "n", "bias_pct", "ci_low_pct", "ci_high_pct", "hematocrit_bias_pct", "residual_pct",
            "residual_ci_low_pct", "residual_ci_high_pct"]
    if truth_sessions is None or truth_sessions.empty:
        return pd.DataFrame(columns=cols)
    expected = float("nan")
    if assumed_hematocrit is not None and simulated_hematocrit is not None:
        expected = 100.0 * ((1.0 - _fraction(assumed_hematocrit, "assumed_hematocrit"))
                            / (1.0 - _fraction(simulated_hematocrit, "simulated_hematocrit")) - 1.0)
    t = truth_sessions.assign(animal=truth_sessions["animal"].astype(str))
    a = animals.assign(animal=animals["animal"].astype(str))
    rows = []
    for v, tv in variables.items():
        if v not in a.columns or tv not in t.columns:
            raise ExperimentError(f"recovery_vs_truth: '{v}' or truth column '{tv}' missing")
        j = a[["animal", v]].merge(t[["animal", tv]], on="animal")
        ratio = pd.to_numeric(j[v], errors="coerce") / pd.to_numeric(j[tv], errors="coerce")
        lr = np.log(ratio[(ratio > 0) & np.isfinite(ratio)].to_numpy(dtype=float))
        n = lr.size
        if n < 2:
            rows.append(dict(variable=v, n=n, hematocrit_bias_pct=expected))
            continue
        m, se = lr.mean(), lr.std(ddof=1) / math.sqrt(n)
        q = st.t.ppf(1 - alpha / 2, n - 1)
        pct = [100 * (math.exp(x) - 1) for x in (m, m - q * se, m + q * se)]
        res = [100 * ((1 + x / 100) / (1 + expected / 100) - 1) for x in pct]
        rows.append(dict(variable=v, n=n, bias_pct=pct[0], ci_low_pct=pct[1], ci_high_pct=pct[2],
                         hematocrit_bias_pct=expected, residual_pct=res[0], residual_ci_low_pct=res[1],
                         residual_ci_high_pct=res[2]))
    return pd.DataFrame(rows, columns=cols)


def recovery_text(table: pd.DataFrame, *, assumed: float, simulated: float | None) -> str:
    """The truth comparison in words, computed from :func:`recovery_vs_truth`'s table."""
    if table.empty:
        return "No simulated truth: the fitted values cannot be compared with a truth (real data)."
    parts = [f"{r.variable} {r.bias_pct:+.1f} % [{r.ci_low_pct:+.1f}, {r.ci_high_pct:+.1f}]"
             for r in table.itertuples()]
    txt = f"Fitted tumour means against the simulated truth (geometric-mean bias, 95 % CI): {'; '.join(parts)}."
    if simulated is not None:
        exp = table["hematocrit_bias_pct"].iloc[0]
        rest = [f"{r.variable} {r.residual_pct:+.1f} % [{r.residual_ci_low_pct:+.1f}, {r.residual_ci_high_pct:+.1f}]"
                for r in table.itertuples()]
        txt += (f" The simulation used Hct {simulated:.2f}, the analysis {assumed:.2f}: that alone gives "
                f"{exp:+.1f} % to all three (and to the Ktrans slope; the correlations are unchanged); the rest is "
                f"the fit's own bias: {'; '.join(rest)}.")
    return txt
