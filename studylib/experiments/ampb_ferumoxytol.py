"""Amp B and ferumoxytol in glioma (Yang et al., Neuro-Oncology 2017): the notebook's conclusions and its pre-/post-
contrast pairing, ΔR2* = R2*(post) − R2*(pre) per session.

Each imaging day ``d`` has a pre-contrast MEGRE (the day before, just before the i.v. ferumoxytol: no ``Agent`` in
its sidecar) and the post-contrast MEGRE 24 h after the injection (``Agent`` ferumoxytol).  Both are ordinary
``MEGRE`` scans of the manifest on their own days; :func:`contrast_phases` reads which is which from the sidecars
and :func:`delta_table` pairs them.  Everything else the notebook does is a generic step of
:mod:`studylib.analysis`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..analysis import (POOLED_HISTOLOGY_ENDPOINT, TREATMENT_ENDPOINTS, conclusions_table, effect_row,
                        group_difference, treatment_rows, true_effect)
from ..errors import ExperimentError
from ..io.sidecar import read_sidecar
from ..manifest import read_manifest, resolve_path

__all__ = ["STUDY", "ENDPOINTS", "SENSITIVITY", "conclusions", "contrast_phases", "delta_table", "delta_text",
           "imputation_text", "true_post_sessions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "ampb_ferumoxytol"

#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
#: (``histology_r`` is the within-group r when the correlation is clustered by group, the pooled r then the
#: descriptive ``histology_r_pooled``; ``treatment_effect_imputed`` the primary with failed fits imputed)
ENDPOINTS = dict(TREATMENT_ENDPOINTS, absolute_r2star="post-contrast tumour R2* (native + accumulated iron), "
                                                      "treated - control on the effect's day",
                 **POOLED_HISTOLOGY_ENDPOINT,
                 treatment_effect_imputed="the ΔR2* effect with the failed-fit voxels' R2* (pre- and post-contrast) "
                                          "imputed at the echo train's bound instead of left out (sensitivity)")

#: rows that re-estimate the primary under another assumption (role "sensitivity", not Holm-counted)
SENSITIVITY = ("treatment_effect_imputed",)


def contrast_phases(manifest, study: str = STUDY, kind: str = "MEGRE") -> pd.DataFrame:
    """Which ``kind`` scan of each animal and day was taken before and which after the contrast agent.

    A scan is post-contrast when its sidecar names an ``Agent``, pre-contrast otherwise (BIDS: the agent of a
    contrast-enhanced acquisition); ``ContrastTiming`` is carried along for the record.

    Parameters
    ----------
    manifest : path of ``data_manifest.csv``.
    study, kind : the manifest's study and image kind.

    Returns
    -------
    DataFrame ``animal, group, day, phase`` (``"pre"``/``"post"``), ``agent``, ``timing``, sorted by animal and day.

    Raises
    ------
    ExperimentError
        no ``kind`` scan with a sidecar for ``study`` in the manifest.
    """
    df = read_manifest(manifest)
    base = Path(manifest).resolve().parent
    rows = df[(df["study"] == study) & (df["kind"] == kind) & df["path"].str.endswith(".json")]
    if rows.empty:
        raise ExperimentError(f"{manifest}: study {study!r} has no {kind} sidecars to tell pre- from post-contrast")
    out = []
    for r in rows.itertuples(index=False):
        sc = read_sidecar(resolve_path(base, r.path))
        agent = sc.get("Agent") or ""
        out.append(dict(animal=r.animal, group=r.group, day=int(r.day), phase="post" if agent else "pre",
                        agent=agent, timing=sc.get("ContrastTiming", "")))
    return pd.DataFrame(out).sort_values(["animal", "day"], kind="mergesort").reset_index(drop=True)


def delta_table(sessions: pd.DataFrame, phases: pd.DataFrame, *, y: str = "r2star",
                max_gap_days: float = 2.0) -> pd.DataFrame:
    """The post-contrast sessions, each with its own pre-contrast value and ``delta_<y> = y(post) - y(pre)``.

    A post-contrast session of an animal is paired with that animal's latest pre-contrast session before it,
    at most ``max_gap_days`` earlier and after the animal's previous post-contrast session (so a pre scan is
    never paired across an injection).  Unpaired post sessions keep ``delta_<y>`` NaN (the mixed model then
    leaves them out).

    Parameters
    ----------
    sessions : one row per animal x day (:func:`studylib.analysis.roi_tables`), columns ``animal, day, y``.
    phases : :func:`contrast_phases`.
    y : the variable.

    Returns
    -------
    DataFrame: the post-contrast rows of ``sessions`` (``day`` = the post-contrast day) with ``<y>_pre``,
    ``pre_day`` and ``delta_<y>``.
    """
    for name, t, cols in (("sessions", sessions, ("animal", "day", y)), ("phases", phases, ("animal", "day", "phase"))):
        miss = [c for c in cols if c not in t.columns]
        if miss:
            raise ExperimentError(f"{name} table lacks columns {miss}; it has {list(t.columns)}")
    ph = phases[["animal", "day", "phase"]].copy()
    ph["day"] = ph["day"].astype(float)
    s = sessions.copy()
    s["day"] = s["day"].astype(float)
    s = s.merge(ph, on=["animal", "day"], how="left", validate="one_to_one")
    if s["phase"].isna().any():
        bad = s.loc[s["phase"].isna(), ["animal", "day"]].to_records(index=False).tolist()
        raise ExperimentError(f"sessions without a scan in the phases table: {bad[:5]}")
    post, pre = s[s["phase"] == "post"].copy(), s[s["phase"] == "pre"]
    pre_val, pre_day = np.full(len(post), np.nan), np.full(len(post), np.nan)
    for i, (animal, day) in enumerate(zip(post["animal"], post["day"])):
        earlier_post = post[(post["animal"] == animal) & (post["day"] < day)]["day"]
        after = earlier_post.max() if len(earlier_post) else -np.inf
        cand = pre[(pre["animal"] == animal) & (pre["day"] < day) & (pre["day"] > after)
                   & (pre["day"] >= day - max_gap_days)]
        if len(cand):
            last = cand.loc[cand["day"].idxmax()]
            pre_val[i], pre_day[i] = last[y], last["day"]
    post[f"{y}_pre"] = pre_val
    post["pre_day"] = pre_day
    post[f"delta_{y}"] = post[y] - post[f"{y}_pre"]
    return post.drop(columns="phase").reset_index(drop=True)


def delta_text(delta: pd.DataFrame, effect: Mapping, absolute: Mapping, *, control: str, treated: str,
               y: str = "r2star", alpha: float = 0.05) -> str:
    """What the pre-contrast scans add, computed from the data.

    ``delta`` is :func:`delta_table`, ``effect`` the treated - control contrast of ``delta_<y>`` and ``absolute``
    that of the post-contrast ``y`` (:func:`studylib.analysis.longitudinal_effect`).  Says how many sessions are
    paired, how far pre-contrast ``y`` rises from the first to the last day (iron of earlier doses left in the
    tissue, plus any native change), the two contrasts and their CI widths.
    """
    dy = f"delta_{y}"
    for c in ("animal", "group", "day", y, f"{y}_pre", dy):
        if c not in delta.columns:
            raise ExperimentError(f"delta table lacks column '{c}'; it has {list(delta.columns)}")
    paired = delta.dropna(subset=[dy])
    n_post, n_pair = int(delta[y].notna().sum()), len(paired)
    first, last = float(paired["day"].min()), float(paired["day"].max())
    pre_first = paired[paired["day"] == first].groupby("group")[f"{y}_pre"].mean()
    pre_last = paired[paired["day"] == last].groupby("group")[f"{y}_pre"].mean()
    rise = "; ".join(f"{g} {pre_first.get(g, np.nan):.1f} → {pre_last.get(g, np.nan):.1f} 1/s"
                     for g in (control, treated))
    d_pre = group_difference(paired[paired["day"] == last], f"{y}_pre", control=control, treated=treated, alpha=alpha)
    ci = f"{100 * (1 - alpha):g} %"
    w = (effect["ci_high"] - effect["ci_low"]) / (absolute["ci_high"] - absolute["ci_low"])
    return (f"{n_pair} of {n_post} post-contrast sessions have their pre-contrast scan (the day before, just before "
            f"the injection); Δ{y} = post − pre removes each animal's native {y} from the contrast. Pre-contrast "
            f"tumour {y} before the first and the last paired post-contrast day (mean per group): {rise} — iron of "
            f"earlier doses left in the tissue, so a post-contrast {y} mixes all doses given so far. Before the last "
            f"dose {treated} − {control} already differs by {d_pre.estimate:+.2f} [{d_pre.ci_low:.2f}, "
            f"{d_pre.ci_high:.2f}] 1/s ({ci} CI, Welch p = {d_pre.p:.2g}). On day {effect['at_day']:g}, Δ{y} "
            f"{treated} − {control} = {effect['estimate']:.2f} [{effect['ci_low']:.2f}, {effect['ci_high']:.2f}] 1/s "
            f"(the last dose's iron), the post-contrast {y} alone {absolute['estimate']:.2f} "
            f"[{absolute['ci_low']:.2f}, {absolute['ci_high']:.2f}] 1/s (native + every dose); the Δ{y} CI is "
            f"{w:.0%} of the other's width.")


def true_post_sessions(truth_sessions: pd.DataFrame, *, day: float) -> pd.DataFrame:
    """The simulator's post-contrast sessions on ``day`` (its ``sessions.csv``,
    :func:`studylib.analysis.load_truth_table`): one row per animal with the true ``tumour_delta_r2star_per_s``, for
    :func:`studylib.analysis.true_correlation_parts` on the day imaging meets histology."""
    miss = [c for c in ("animal", "day", "contrast") if c not in truth_sessions.columns]
    if miss:
        raise ExperimentError(f"truth sessions table lacks columns {miss}; it has {list(truth_sessions.columns)}")
    if day is None or not np.isfinite(float(day)):
        raise ExperimentError(f"day must be a number (the animal table's common day), got {day!r}")
    on = (truth_sessions["contrast"].astype(str) == "post") & (truth_sessions["day"].astype(float) == float(day))
    return truth_sessions.loc[on].reset_index(drop=True)


def imputation_text(primary: Mapping, imputed: Mapping, delta: pd.DataFrame, summary: pd.DataFrame, *,
                    value: float, y: str = "r2star", roi: str = "tumour", group_col: str = "group") -> str:
    """What imputing the failed voxels did to the ΔR2* effect, from the numbers.

    The failed-fit fraction of ``roi`` per group (``n_excluded / n_voxels`` of the ``y`` rows of ``summary``, the
    ROI summary of :func:`studylib.analysis.roi_tables` without imputation, pooled over the group's scans) for the
    post-contrast scans on the effect's day and for the pre-contrast scans they are paired with (``pre_day`` of
    ``delta``, :func:`delta_table`), then the effect with the failed voxels left out (``primary``) and imputed at
    ``value`` 1/s (``imputed``).
    """
    for name, t, cols in (("delta", delta, ("animal", "day", "pre_day")),
                          ("summary", summary, ("animal", group_col, "day", "roi", "variable", "n_excluded",
                                                "n_voxels"))):
        miss = [c for c in cols if c not in t.columns]
        if miss:
            raise ExperimentError(f"{name} table lacks columns {miss}; it has {list(t.columns)}")
    day = float(primary["at_day"])
    on = delta[(delta["day"].astype(float) == day) & delta["pre_day"].notna()]
    s = summary[(summary["roi"] == roi) & (summary["variable"] == y)].copy()
    s["day"] = s["day"].astype(float)

    def frac(pairs: pd.DataFrame) -> str:
        m = pairs[["animal", "day"]].merge(s, on=["animal", "day"], how="inner")
        if m.empty:
            return "not recorded"
        g = m.groupby(group_col)[["n_excluded", "n_voxels"]].sum()
        return "; ".join(f"{k} {100 * r.n_excluded / r.n_voxels:.2f} %" for k, r in g.iterrows() if r.n_voxels > 0)

    post = frac(on[["animal", "day"]])
    pre = frac(on[["animal", "pre_day"]].rename(columns={"pre_day": "day"}))
    shift = imputed["estimate"] - primary["estimate"]
    n_failed = int(s["n_excluded"].sum())
    none = (f" No {roi} voxel failed in any scan, so the imputation changes nothing." if n_failed == 0 else "")
    return (f"Failed-fit voxels of the {roi} (fraction per group): post-contrast scans of day {day:g} {post}; their "
            f"pre-contrast scans {pre}. With them left out the ΔR2* effect is {primary['estimate']:.2f} "
            f"[{primary['ci_low']:.2f}, {primary['ci_high']:.2f}] 1/s; with their R2* imputed at {value:.0f} 1/s "
            f"(1000/TE_min) in every scan it is {imputed['estimate']:.2f} [{imputed['ci_low']:.2f}, "
            f"{imputed['ci_high']:.2f}] 1/s ({shift:+.2f} 1/s). The imputation is an extreme assumption (every failed "
            "voxel decays as fast as the echo train can resolve), so the two bracket the effect if the failures are "
            "the most iron-laden voxels; it is a sensitivity analysis, not Holm-counted." + none)


def conclusions(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                hist_col: str = "iba1_cells_per_mm2", primary: str = "treatment_effect",
                histology_day: Mapping | None = None, alpha: float = 0.05, variable: str = "r2star",
                absolute: Mapping | None = None, true_parts: Mapping | None = None, imputed: Mapping | None = None,
                imputed_value: float | None = None) -> pd.DataFrame:
    """Conclusions of ``ampb_ferumoxytol``: Amp B raises the tumour iron signal (more iron-laden macrophages); the
    signal tracks ``hist_col`` on the day of ``histology_day`` (the animal table's ``attrs``; None: each animal's
    last day).

    ``variable`` is what ``effect`` and ``corr`` measure: ``"delta_r2star"`` (ΔR2* = post − pre-contrast, truth
    keys ``tumour_delta_r2star_per_s_<treated>_minus_<control>_last_day`` and
    ``endpoint_tumour_delta_r2star_vs_<hist_col>``) or ``"r2star"`` (post-contrast R2*).  ``absolute``, the
    treated - control contrast of post-contrast R2*, adds the secondary row ``absolute_r2star`` (truth key
    ``tumour_r2star_per_s_<treated>_minus_<control>_last_day``).

    A clustered ``corr`` (``correlation_effect(..., cluster="group")``) makes ``histology_r`` the within-group r,
    against ``true_parts["within"]`` (:func:`studylib.analysis.true_correlation_parts` of the simulated animals'
    true values; NaN without), and adds the pooled r as the descriptive row ``histology_r_pooled``
    (:func:`studylib.analysis.treatment_rows`).  ``imputed``: the same model as ``effect`` on the table whose
    failed voxels' R2* were imputed at ``imputed_value`` 1/s (:func:`studylib.analysis.roi_tables`,
    ``impute_failed``), row ``treatment_effect_imputed`` (role ``"sensitivity"``), against the primary's truth.
    """
    if variable not in ("r2star", "delta_r2star"):
        raise ExperimentError(f"variable must be 'r2star' or 'delta_r2star', got {variable!r}")
    biomarker = "ΔR2* (post − pre-contrast)" if variable == "delta_r2star" else "R2*"
    rows = treatment_rows(STUDY, effect, corr, truth, biomarker=biomarker, variable=variable, units="1/s",
                          control=control, treated=treated, hist_col=hist_col, effect_sign=+1, corr_sign=+1,
                          histology_day=histology_day, alpha=alpha, true_parts=true_parts)
    if absolute is not None:
        day = absolute["at_day"]
        rows["absolute_r2star"] = effect_row(
            f"tumour R2* post-contrast (native + all doses' iron) {treated} − {control}, day {day:g}", absolute,
            expected_sign=+1, truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_last_day",
                                                day=day),
            units="1/s", study=STUDY, alpha=alpha)
    if imputed is not None:
        if imputed_value is None or not np.isfinite(imputed_value):
            raise ExperimentError("imputed: pass imputed_value, the R2* (1/s) the failed voxels were imputed at")
        if str(imputed.get("adjustment", "none")) != str(effect.get("adjustment", "none")) or \
                float(imputed["at_day"]) != float(effect["at_day"]):
            raise ExperimentError(f"imputed: fit it like the primary (day {effect['at_day']:g}, adjustment "
                                  f"{effect.get('adjustment', 'none')!r}; got day {imputed['at_day']:g}, "
                                  f"{imputed.get('adjustment', 'none')!r})")
        key = f"tumour_{variable}_per_s_{treated}_minus_{control}_last_day"
        row = effect_row(f"tumour {biomarker} {treated} − {control}, day {imputed['at_day']:g}, failed voxels at "
                         f"R2* = {imputed_value:.0f} 1/s (sensitivity)", imputed, expected_sign=+1,
                         truth=true_effect(truth, key, day=imputed["at_day"]), units="1/s", study=STUDY,
                         role="sensitivity", alpha=alpha)
        row["method"] = (f"as the primary, on the tumour table with every failed-fit voxel's R2* (pre- and "
                         f"post-contrast scans) set to {imputed_value:.4g} 1/s (1000/TE_min: the fastest decay the "
                         f"echo train resolves) instead of left out; {row['method']}")
        rows["treatment_effect_imputed"] = row
    if primary not in rows:
        raise ExperimentError(f"primary endpoint {primary!r} is not a finding here; the findings are {list(rows)}")
    return conclusions_table(rows, primary=primary, alpha=alpha)
