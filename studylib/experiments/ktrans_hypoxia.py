"""DCE-MRI Ktrans and hypoxia (Hauge et al., J Transl Med 2017): endpoints, context correlations, conclusions.

The paper's question is whether Ktrans tracks the hypoxic fraction within a tumour model and whether
this is explained by microvessel density (MVD) or interstitial fluid pressure (IFP).  The primary
endpoint is the within-model correlation; the pooled and between-model correlations, the partial
regression "Ktrans beyond MVD and IFP" within a model (:func:`studylib.analysis.partial_regression_effect`
with MVD, IFP and the model as covariates) and the slope are secondary.  The same partial correlation
without the model, pooled over the models, is a descriptive row: like the pooled r, it mostly restates the
differences between the models' means.

Analysis parameters the data do not give (issue 14): the sidecars carry acquisition parameters only, so
the bolus arrival is measured in the vessel ROI, r1 is the agent's tabulated value at the field and the
haematocrit is the mouse default.  The flip angle is corrected with the study's B1 map when it has one
(:func:`b1_scans`, :func:`b1_table`: what leaving it uncorrected would do); each animal's AIF is measured in
its vessel ROI (:func:`aif_table`) and :func:`aif_choice_table` refits the tumour curves with the animal's own,
the cohort-mean and a population AIF.  :func:`hematocrit_sensitivity` shows, from the fitted numbers alone,
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
from ..fit.relaxometry import B1_RANGE

__all__ = ["STUDY", "ENDPOINTS", "DESCRIPTIVE_ENDPOINTS", "other_correlations", "conclusions", "beyond_text",
           "KINETIC_TRUTH", "hematocrit_sensitivity", "hematocrit_text", "recovery_vs_truth", "recovery_text", "b1_scans", "b1_table",
           "b1_text", "aif_table", "aif_text", "aif_choice_table", "aif_choice_summary"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ktrans_hypoxia"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "within_model_r": "r(tumour Ktrans, hypoxic fraction) within PDX model (repeated-measures correlation)",
    "pooled_r": "r(tumour Ktrans, hypoxic fraction) pooled over all tumours",
    "between_model_r": "r(tumour Ktrans, hypoxic fraction) of the PDX model means",
    "beyond_mvd_ifp": "partial r(Ktrans, hypoxic fraction) given MVD, IFP and the tumour model (OLS t test): "
                      "beyond MVD and IFP within a model",
    "slope": "tumour Ktrans slope per hypoxic fraction (OLS; with the model as covariate, the common slope within "
             "a model)",
}


#: the descriptive row of :func:`conclusions` (given ``beyond_pooled``): shown, not a finding, not Holm-counted
DESCRIPTIVE_ENDPOINTS = {
    "beyond_mvd_ifp_pooled": "partial r(Ktrans, hypoxic fraction) given MVD and IFP, pooled over the models: "
                             "it mixes the differences between model means in",
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
                beyond_pooled: Mapping | None = None, true_parts: Mapping | None = None,
                hist_col: str = "hypoxic_fraction_pct", primary: str = "within_model_r",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ktrans_hypoxia`` (endpoints :data:`ENDPOINTS`).

    Parameters
    ----------
    corr : :func:`studylib.analysis.correlation_effect` of Ktrans and ``hist_col`` with ``cluster`` = the PDX model.
    slope : :func:`studylib.analysis.regression_slope` of Ktrans on the hypoxic fraction (``covariates=[cluster]``:
        within a model, like the primary; without: pooled over all tumours).
    truth : the simulated truth (``{}`` on real data).
    beyond : :func:`studylib.analysis.partial_regression_effect` of ``hist_col`` on Ktrans given MVD, IFP and
        the tumour model (the model among its covariates makes it a within-model answer, like the primary);
        None: no such row.
    beyond_pooled : the same without the model among the covariates: the row ``beyond_mvd_ifp_pooled``
        (:data:`DESCRIPTIVE_ENDPOINTS`), role ``"descriptive"`` (not Holm-counted); None: no such row.
    true_parts : :func:`studylib.analysis.true_correlation_parts` of the simulated animals (``within``,
        ``between``, ``partial`` with the covariates of ``beyond``, ``partial_pooled`` with those of
        ``beyond_pooled``); None: NaN.
    primary : the primary endpoint's key; the others are secondary (Holm-adjusted).
    """
    tp = dict(true_parts or {})
    nan = float("nan")
    rows = correlation_part_rows(f"r(tumour Ktrans, {hist_col})", corr, expected_sign=-1,
                                 pooled_truth=true_correlation(truth, f"tumour_ktrans_vs_{hist_col}"),
                                 true_parts=tp, study=STUDY, alpha=alpha)
    cluster = corr.get("cluster") or "model"
    if beyond is not None:
        covs = [c for c in beyond.get("covariates", ()) if c != cluster]
        within = cluster in beyond.get("covariates", ())
        where = f" within {cluster}" if within else f" pooled over {cluster}s"
        rows["beyond_mvd_ifp"] = correlation_row(f"partial r(tumour Ktrans, {hist_col}) beyond {' and '.join(covs)}"
                                                 f"{where}", beyond, expected_sign=-1, truth=tp.get("partial", nan),
                                                 study=STUDY, alpha=alpha)
    if beyond_pooled is not None:
        covs = " and ".join(beyond_pooled.get("covariates", ()))
        row = correlation_row(f"partial r(tumour Ktrans, {hist_col}) beyond {covs} pooled over {cluster}s",
                              beyond_pooled, expected_sign=-1, truth=tp.get("partial_pooled", nan), study=STUDY,
                              role="descriptive", alpha=alpha)
        row["method"] += (f"; descriptive: without the {cluster} among the covariates it mixes the differences "
                          f"between {cluster} means with the tracking within a {cluster}")
        rows["beyond_mvd_ifp_pooled"] = row
    rows["slope"] = effect_row(f"tumour Ktrans slope per hypoxic fraction{slope.get('scope', '')}", slope,
                               expected_sign=-1,
                               truth=true_effect(truth, "ktrans_slope_per_min_per_hypoxic_fraction"),
                               units="1/min per fraction", study=STUDY, alpha=alpha)
    return conclusions_table(rows, primary=primary, alpha=alpha)


def beyond_text(beyond: Mapping, beyond_pooled: Mapping | None = None, *, hist_col: str, cluster: str = "model",
                alpha: float = 0.05) -> str:
    """Does Ktrans explain ``hist_col`` beyond the covariates?  A paragraph written from the numbers.

    ``beyond`` is the :func:`studylib.analysis.partial_regression_effect` of ``hist_col`` on Ktrans given MVD, IFP
    and ``cluster`` (the within-model answer), ``beyond_pooled`` the same without ``cluster``.  The verdict is
    computed: "explains ... beyond" when ``p < alpha``; the pooled one is said to mix the differences between
    ``cluster`` means in.
    """
    def one(e):
        return (f"partial r = {e['estimate']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}], p = {e['p']:.2g} "
                f"(df {e['df']}, n = {e['n']}); Ktrans adds {100 * e['delta_r2']:.1f} % of the variance of "
                f"{hist_col} (R² {e['r2_reduced']:.2f} → {e['r2_full']:.2f})")

    covs = [c for c in beyond.get("covariates", ()) if c != cluster]
    within = cluster in beyond.get("covariates", ())
    where = f"within a {cluster}" if within else f"pooled over the {cluster}s"
    verdict = (f"Ktrans explains {hist_col} beyond {' and '.join(covs)} {where}" if beyond["p"] < alpha else
               f"no evidence (alpha = {alpha:g}) that Ktrans explains {hist_col} beyond {' and '.join(covs)} {where}")
    out = [f"Ktrans beyond {' and '.join(covs)}, {where} ({' + '.join(['Ktrans', *beyond.get('covariates', ())])}): "
           f"{one(beyond)}: {verdict}."]
    if beyond_pooled is not None:
        out.append(f"Without the {cluster} among the covariates (descriptive, pooled over the {cluster}s, which adds "
                   f"the differences between {cluster} means): {one(beyond_pooled)}.")
    return "\n".join(out)


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


# --------------------------------------------------------------------------------------------- B1
def b1_scans(manifest, study: str = STUDY):
    """The study's ``B1map`` scans (relative flip angle, actual / nominal) loaded lazily, or None (with a note)
    when the manifest lists none: the fit then uses the nominal flip angles."""
    from ..io import load_study
    from ..manifest import read_manifest

    rows = read_manifest(manifest)
    if not ((rows["study"] == study) & (rows["kind"] == "B1map")).any():
        print(f"no B1map scans for '{study}': T1 and concentrations use the nominal flip angles")
        return None
    return load_study(manifest, study, "B1map")


def b1_table(b1, *, label: int = 1) -> pd.DataFrame:
    """Per scan, the median relative flip angle ``b`` (actual / nominal) in the ROI ``label`` and what leaving it
    uncorrected would do: VFA T1 x ``b^2`` and Ktrans, ve, vp x ``1/b^2`` (small-angle, short-TR SPGR: the
    apparent T1 of DESPOT1 is ``b^2 T1`` and the concentration scales as ``1/b^2``; checked against the exact
    SPGR physics in ``tests/test_independent_physics.py``: T1 x0.721, Ktrans +38.6 % at b = 0.85).

    Returns DataFrame ``animal, day, b1_median, b1_p05, b1_p95, t1_factor_uncorrected, ktrans_bias_uncorrected_pct``.
    """
    cols = ["animal", "day", "b1_median", "b1_p05", "b1_p95", "t1_factor_uncorrected", "ktrans_bias_uncorrected_pct"]
    if b1 is None:
        return pd.DataFrame(columns=cols)
    sig, roi = b1["signal"], b1["roi"]
    rows = []
    for a in b1["animal"].values:
        for d in b1["day"].values:
            if "acquired" in b1.coords and not bool(b1["acquired"].sel(animal=a, day=d)):
                continue
            v = np.asarray(sig.sel(animal=a, day=d).where(roi.sel(animal=a, day=d) == label).values, float)
            v = v[np.isfinite(v) & (v >= B1_RANGE[0]) & (v <= B1_RANGE[1])]  # a plausible relative flip angle
            if v.size == 0:
                continue
            med = float(np.median(v))
            rows.append(dict(animal=str(a), day=int(d), b1_median=med, b1_p05=float(np.percentile(v, 5)),
                             b1_p95=float(np.percentile(v, 95)), t1_factor_uncorrected=med ** 2,
                             ktrans_bias_uncorrected_pct=100.0 * (med ** -2 - 1.0)))
    return pd.DataFrame(rows, columns=cols)


def b1_text(table: pd.DataFrame) -> str:
    """The B1 correction in words, from :func:`b1_table`."""
    if table.empty:
        return ("No B1 map: T1 and Ktrans assume the nominal flip angles; at 7 T a flip angle off by a factor b "
                "scales the VFA T1 by about b^2 and Ktrans, ve, vp by about 1/b^2.")
    b = table["b1_median"]
    k = table["ktrans_bias_uncorrected_pct"]
    return (f"B1 map: the tumours' median relative flip angle ranges {b.min():.2f} to {b.max():.2f} over "
            f"{len(table)} scans; uncorrected, T1 would be x{b.min() ** 2:.2f} to x{b.max() ** 2:.2f} and Ktrans "
            f"{k.min():+.0f} % to {k.max():+.0f} % off (median {k.median():+.0f} %), differently in every animal. "
            "The fit uses the map (VFA T1 and the dynamic flip angle).")


# --------------------------------------------------------------------------------------------- AIF
def aif_table(aif, truth: Mapping | None = None) -> pd.DataFrame:
    """Each animal's measured plasma AIF: bolus arrival (piecewise constant-quadratic regression,
    :func:`studylib.fit.dce.bolus_arrival_time`, Cheong et al. 2003) and peak (the largest frame), and, with a
    simulated ``truth``, their errors against the continuous-time AIF the simulation used (``truth["aif"]``):
    the arrival error (s), the peak error against the true continuous peak and against the true plasma
    concentration at the frames (what 4 s sampling can show at best).  The measured peak carries the assumed
    haematocrit: ``(1 - Hct_true) / (1 - Hct_assumed)``.

    Returns DataFrame ``animal, arrival_s, peak_mM`` (+ ``true_arrival_s, arrival_error_s, true_peak_mM,
    peak_error_pct, true_peak_at_frames_mM, peak_error_at_frames_pct`` with truth).
    """
    from ..fit.dce import bolus_arrival_time

    if not hasattr(aif, "dims") or "animal" not in aif.dims or "t" not in aif.dims:
        raise ExperimentError(f"aif must be the measured AIFs over (animal, t), got {getattr(aif, 'dims', aif)!r}")
    bat = bolus_arrival_time(aif.transpose("animal", "t"))
    arr = np.asarray(bat["bat_s"].where(bat["fit_ok"]).values, float)
    peak = np.asarray(aif.max("t").values, float)
    out = pd.DataFrame({"animal": [str(a) for a in aif["animal"].values], "arrival_s": arr, "peak_mM": peak})
    animals = ((truth or {}).get("aif") or {}).get("animals") or {}
    if animals:
        true = pd.DataFrame([dict(animal=str(k), true_arrival_s=v["arrival_s"], true_peak_mM=v["peak_plasma_mM"],
                                  true_peak_at_frames_mM=v["peak_plasma_at_frames_mM"]) for k, v in animals.items()])
        out = out.merge(true, on="animal", how="left")
        out["arrival_error_s"] = out["arrival_s"] - out["true_arrival_s"]
        out["peak_error_pct"] = 100.0 * (out["peak_mM"] / out["true_peak_mM"] - 1.0)
        out["peak_error_at_frames_pct"] = 100.0 * (out["peak_mM"] / out["true_peak_at_frames_mM"] - 1.0)
    return out


def aif_text(table: pd.DataFrame, *, assumed_hematocrit: float | None = None,
             simulated_hematocrit: float | None = None) -> str:
    """The measured AIFs in words (and their errors against the simulated AIFs when known)."""
    txt = (f"Measured AIFs ({len(table)} animals): bolus arrival {table['arrival_s'].min():.1f} to "
           f"{table['arrival_s'].max():.1f} s, plasma peak {table['peak_mM'].min():.2f} to "
           f"{table['peak_mM'].max():.2f} mM (CV {100 * table['peak_mM'].std() / table['peak_mM'].mean():.0f} % "
           "between animals).")
    if "arrival_error_s" in table:
        e = table["arrival_error_s"].dropna()
        txt += (f" Against the simulated AIFs: arrival error median {e.median():+.1f} s (range {e.min():+.1f} to "
                f"{e.max():+.1f}); peak error median {table['peak_error_pct'].median():+.1f} % (range "
                f"{table['peak_error_pct'].min():+.0f} to {table['peak_error_pct'].max():+.0f} %) against the "
                f"continuous peak, {table['peak_error_at_frames_pct'].median():+.1f} % against the true "
                "concentration at the frames")
        if assumed_hematocrit is not None and simulated_hematocrit is not None:
            h = 100.0 * ((1 - simulated_hematocrit) / (1 - assumed_hematocrit) - 1)
            txt += f"; the haematocrit assumption alone gives {h:+.1f} %"
        txt += "."
    return txt


def aif_choice_table(dce, maps, aif, *, n_baseline: int | None = None, r1_per_mM_s: float | None = None, b1=None,
                     label: int = 1, population: str = "mcgrath_rat", model: str = "extended_tofts") -> pd.DataFrame:
    """Tumour kinetics of each scan refitted with three AIFs: the animal's own measured AIF, the cohort mean of
    the measured AIFs, and a population AIF (``population``, :func:`studylib.fit.dce.population_aif`, on a 0.5 s
    grid, shifted to the animal's measured arrival, plasma with the same haematocrit).

    The tumour curve is the ROI-mean signal, converted with the ROI-median T1 of ``maps`` and the ROI-median
    flip-angle factor of ``b1`` (one curve per scan, so the three AIFs are compared on the same data; the
    voxel-wise maps of the notebook use ``aif_source`` only).  McGrath et al. 2009 (``mcgrath_rat``) is a rat
    AIF: no published mouse population AIF is in the library.

    ``n_baseline`` and ``r1_per_mM_s`` as :func:`studylib.analysis.fit_dce_maps` (None: the same defaults).

    Returns DataFrame ``animal, day, aif, ktrans, ve, vp, fit_ok`` (one row per scan and AIF).
    """
    import xarray as xr

    from ..analysis.maps import baseline_frames, default_relaxivity
    from ..fit.dce import bolus_arrival_time, dce as dce_fit, population_aif, signal_to_concentration

    n_baseline = baseline_frames(dce, n_baseline)
    r1_per_mM_s = default_relaxivity(dce, r1_per_mM_s)

    t = np.asarray(dce["t"].values, float)
    fa, tr = float(dce.attrs["FlipAngle"]), float(dce.attrs["tr_ms"])
    hct = float(aif.attrs.get("hematocrit", 0.45))
    tumour = dce["roi"] == label
    bat = bolus_arrival_time(aif.transpose("animal", "t"))
    arrival = dict(zip([str(a) for a in aif["animal"].values], np.asarray(bat["bat_s"].values, float)))
    cohort = aif.mean("animal").reset_coords(drop=True)
    tf = np.arange(0.0, t[-1] + 0.25, 0.5)
    rows = []
    for a in dce["animal"].values:
        for d in dce["day"].values:
            if "acquired" in dce.coords and not bool(dce["acquired"].sel(animal=a, day=d)):
                continue
            m = tumour.sel(animal=a, day=d).compute()
            if not bool(m.any()):
                continue
            sig = dce["signal"].sel(animal=a, day=d).where(m).mean(("z", "y", "x")).compute()
            t10 = float(np.nanmedian(np.asarray(maps["t1"].sel(animal=a, day=d).where(m).values, float)))
            bf = 1.0
            if b1 is not None:
                bv = np.asarray(b1["signal"].sel(animal=a, day=d).where(m).values, float)
                bv = bv[np.isfinite(bv) & (bv >= B1_RANGE[0]) & (bv <= B1_RANGE[1])]
                bf = float(np.median(bv)) if bv.size else 1.0
            ct = signal_to_concentration(sig.expand_dims(voxel=[0]), t10_ms=t10, fa_deg=fa * bf, tr_ms=tr,
                                         r1_per_mM_s=r1_per_mM_s, baseline=n_baseline)
            own = aif.sel(animal=str(a)).reset_coords(drop=True) if str(a) in arrival else cohort
            delay = arrival.get(str(a), np.nanmedian(list(arrival.values())))
            pop = population_aif(tf, population, delay_s=float(delay), hematocrit=hct)
            for name, cp in (("animal", own), ("cohort", cohort), ("population", pop)):
                res = dce_fit(ct, xr.DataArray(np.asarray(cp.values, float), dims="t",
                                               coords={"t": np.asarray(cp["t"].values, float)}), model=model)
                rows.append(dict(animal=str(a), day=int(d), aif=name,
                                 **{k: float(res[k].values[0]) if k in res else float("nan")
                                    for k in ("ktrans", "ve", "vp")}, fit_ok=bool(res["fit_ok"].values[0])))
    return pd.DataFrame(rows, columns=["animal", "day", "aif", "ktrans", "ve", "vp", "fit_ok"])


def aif_choice_summary(table: pd.DataFrame, histology: pd.DataFrame, hist_col: str,
                       truth_sessions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per AIF choice: the pooled correlation of tumour Ktrans with ``hist_col`` and, with the simulated truth,
    the median bias of Ktrans (%) and the SD of ``log(fitted / true)`` (%, the scatter the AIF choice adds).

    Returns DataFrame ``aif, n, r_pooled, ktrans_median_bias_pct, ktrans_log_sd_pct`` (bias NaN without truth).
    """
    h = histology.assign(animal=histology["animal"].astype(str))[["animal", hist_col]]
    tr = None
    if truth_sessions is not None and not truth_sessions.empty:
        tr = truth_sessions.assign(animal=truth_sessions["animal"].astype(str))[["animal", "tumour_ktrans_per_min"]]
    rows = []
    for name, g in table[table["fit_ok"]].groupby("aif", sort=False):
        j = g.merge(h, on="animal")
        r = float(np.corrcoef(j["ktrans"], j[hist_col])[0, 1]) if len(j) >= 3 else float("nan")
        bias = sd = float("nan")
        if tr is not None:
            k = g.merge(tr, on="animal")
            lr = np.log(k["ktrans"] / k["tumour_ktrans_per_min"])
            lr = lr[np.isfinite(lr)]
            if lr.size >= 2:
                bias, sd = 100 * (math.exp(float(np.median(lr))) - 1), 100 * float(np.std(lr, ddof=1))
        rows.append(dict(aif=name, n=len(g), r_pooled=r, ktrans_median_bias_pct=bias, ktrans_log_sd_pct=sd))
    return pd.DataFrame(rows, columns=["aif", "n", "r_pooled", "ktrans_median_bias_pct", "ktrans_log_sd_pct"])
