"""Step 6 of the flow: the conclusions table — each finding against the paper and the simulated truth.

:func:`check_effect` turns one estimate (with its CI and p) into a row; :func:`conclusions_table`
stacks rows; :func:`disagreements`, :func:`summary_lines` and :func:`headline` read a table back.
:func:`effect_row` and :func:`correlation_row` build rows from :mod:`studylib.analysis.effects`
results.  Truth is optional: on real data the ``truth`` column is NaN and ``ci_covers_truth`` None.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..catalog import citation
from ..errors import ExperimentError
from .truth import _finite, true_correlation, true_effect

__all__ = ["CONCLUSION_COLUMNS", "ROLES", "NOT_TESTED_ROLES", "check_effect", "conclusions_table", "disagreements",
           "summary_lines", "headline", "effect_row", "correlation_row", "treatment_and_histology", "treatment_rows", "TREATMENT_ENDPOINTS",
           "correlation_levels_text", "adjustment_text", "histology_day_text", "POOLED_HISTOLOGY_ENDPOINT",
           "CORRELATION_ENDPOINT_PARTS", "correlation_part"]

#: Conclusion table columns, in order.
#: ``endpoint`` is the row's key (what a notebook's ``primary_endpoint`` names), ``role`` one of :data:`ROLES`,
#: ``p_holm`` the Holm-adjusted p across the secondary findings (NaN for every other role).
CONCLUSION_COLUMNS = [
    "finding", "endpoint", "role", "paper", "paper_direction", "estimate", "ci_low", "ci_high", "units", "p",
    "p_holm", "method", "significant", "direction_matches_paper", "truth", "ci_covers_truth", "agrees_with_paper",
]


#: the roles of a conclusions row.  ``primary``: the one declared confirmatory finding, tested at alpha;
#: ``secondary``: the other findings, Holm-adjusted among themselves; ``sensitivity``: the primary effect
#: re-estimated under another assumption (no baseline adjustment, failed fits imputed at the fit's bound), and
#: ``descriptive``: a number shown for context (a pooled r beside the within-group one) -- neither is a new
#: hypothesis, so neither enters the Holm family nor :func:`disagreements`; their ``p`` is shown unadjusted.
ROLES = ("primary", "secondary", "sensitivity", "descriptive")

#: the roles kept out of the Holm family and out of :func:`disagreements`
NOT_TESTED_ROLES = ("sensitivity", "descriptive")


def check_effect(finding: str, *, estimate: float, ci_low: float, ci_high: float, expected_sign: int,
                 p: float | None = None, truth: float | None = None, units: str = "", paper: str = "",
                 method: str = "", endpoint: str = "", role: str = "", alpha: float = 0.05) -> dict[str, Any]:
    """Compare one estimated effect with the paper's finding and with the simulated truth.

    Parameters
    ----------
    finding : what was estimated, e.g. ``"tumour R2* Amp B - vehicle, day 7"``.
    estimate, ci_low, ci_high : the estimate and its (1 - alpha) confidence interval, in ``units``.
    expected_sign : +1 or -1, the direction the paper reports (e.g. -1 for an inverse correlation).
    p : the p-value of the test of no effect; without it, significance is read from the CI
        (the CI excludes 0).
    truth : the simulated true effect in the same units (NaN/None when unknown, e.g. real data).
    paper : citation of the paper the finding comes from.
    method : how the estimate was obtained (model, df method, CI method).
    endpoint : the row's key in its notebook (e.g. ``"within_model_r"``); :func:`conclusions_table`
        sets it from the keys of a mapping of rows.
    role : ``""`` (decided by :func:`conclusions_table`: primary or secondary), ``"sensitivity"`` or
        ``"descriptive"`` (:data:`ROLES`; kept out of the Holm family).
    alpha : significance level.

    Returns
    -------
    dict with the keys of :data:`CONCLUSION_COLUMNS`:

    * ``significant``: ``p < alpha`` (or the CI excludes 0 when ``p`` is None);
    * ``direction_matches_paper``: ``sign(estimate) == expected_sign``;
    * ``ci_covers_truth``: ``ci_low <= truth <= ci_high``, or None without a truth;
    * ``agrees_with_paper``: same direction and significant;
    * ``role`` (``""``) and ``p_holm`` (NaN) until :func:`conclusions_table` marks the primary endpoint.

    Raises
    ------
    ExperimentError
        non-finite estimate or CI, ``ci_low > ci_high``, an estimate outside its CI, or an
        ``expected_sign`` other than +1/-1.
    """
    for name, v in (("estimate", estimate), ("ci_low", ci_low), ("ci_high", ci_high)):
        if not _finite(v):
            raise ExperimentError(f"{finding}: {name} must be a finite number, got {v!r}")
    estimate, ci_low, ci_high = float(estimate), float(ci_low), float(ci_high)
    if ci_low > ci_high:
        raise ExperimentError(f"{finding}: ci_low {ci_low} is above ci_high {ci_high}")
    tol = 1e-9 * max(1.0, abs(estimate))
    if not (ci_low - tol <= estimate <= ci_high + tol):
        raise ExperimentError(f"{finding}: estimate {estimate} lies outside its CI [{ci_low}, {ci_high}]")
    if expected_sign not in (1, -1):
        raise ExperimentError(f"{finding}: expected_sign must be +1 or -1, got {expected_sign!r}")
    if role not in ("",) + NOT_TESTED_ROLES:
        raise ExperimentError(f"{finding}: role must be '', 'sensitivity' or 'descriptive', got {role!r} (primary "
                              "and secondary are set by conclusions_table)")
    if p is not None and not (_finite(p) and 0.0 <= float(p) <= 1.0):
        raise ExperimentError(f"{finding}: p must be a number in [0, 1], got {p!r}")
    significant = (float(p) < alpha) if p is not None else not (ci_low <= 0.0 <= ci_high)
    direction = bool(np.sign(estimate) == expected_sign)
    has_truth = _finite(truth)
    return dict(
        finding=finding, endpoint=str(endpoint), role=role, paper=paper,
        paper_direction="increase / positive" if expected_sign > 0 else "decrease / negative", estimate=estimate,
        ci_low=ci_low, ci_high=ci_high, units=units, p=float(p) if p is not None else float("nan"),
        p_holm=float("nan"), method=method, significant=bool(significant),
        direction_matches_paper=direction, truth=float(truth) if has_truth else float("nan"),
        ci_covers_truth=bool(ci_low <= float(truth) <= ci_high) if has_truth else None,
        agrees_with_paper=bool(direction and significant),
    )


def conclusions_table(checks: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]], *,
                      primary: str | int | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """The conclusions table: one row per :func:`check_effect` result, the primary endpoint first.

    One finding is the declared **primary** endpoint, tested at ``alpha`` as it stands; every other
    finding is **secondary**, and its p-value is Holm-adjusted across the secondary findings
    (``p_holm``; Holm 1979, Scand J Stat 6:65, which controls the family-wise error rate under any
    dependence, :func:`studylib.stats.holm`).  A secondary row is ``significant`` when
    ``p_holm < alpha`` (rows without a p-value keep their CI-based verdict), and ``agrees_with_paper``
    is recomputed from it.  Rows built with ``role="sensitivity"`` or ``"descriptive"``
    (:data:`NOT_TESTED_ROLES`) keep that role, come last, stay out of the Holm family (``p_holm`` NaN) and
    keep their unadjusted verdict: they re-estimate or describe, they test no new hypothesis.

    Parameters
    ----------
    checks : :func:`check_effect` results, a sequence or a mapping ``endpoint key -> row`` (the keys
        become the ``endpoint`` column).
    primary : the primary endpoint: its ``endpoint`` key, its ``finding`` text or its position;
        default the first row.
    alpha : the significance level the rows were checked at.

    Returns
    -------
    DataFrame with columns :data:`CONCLUSION_COLUMNS`, the primary row first, the others in order.

    Raises
    ------
    ExperimentError
        no checks, a row lacking columns, or a ``primary`` that names no row.
    """
    if not checks:
        raise ExperimentError("no checks given: a conclusions table needs at least one finding")
    items = list(checks.items()) if isinstance(checks, Mapping) else [(None, c) for c in checks]
    rows = []
    for key, c in items:
        c = dict(c)
        if key is not None:
            c["endpoint"] = str(key)
        c.setdefault("endpoint", "")
        c.setdefault("role", "")
        c.setdefault("p_holm", float("nan"))
        missing = [k for k in CONCLUSION_COLUMNS if k not in c]
        if missing:
            raise ExperimentError(f"check '{c.get('finding', '?')}' lacks keys {missing}; build it with check_effect")
        rows.append({k: c[k] for k in CONCLUSION_COLUMNS})
    if primary is None:
        first = 0
    elif isinstance(primary, (int, np.integer)) and not isinstance(primary, bool):
        if not 0 <= int(primary) < len(rows):
            raise ExperimentError(f"primary endpoint index {primary} is outside the {len(rows)} findings")
        first = int(primary)
    else:
        hits = [i for i, r in enumerate(rows) if primary in (r["endpoint"], r["finding"])]
        if len(hits) != 1:
            keys = [r["endpoint"] or r["finding"] for r in rows]
            raise ExperimentError(f"primary endpoint {primary!r} names {'no' if not hits else 'more than one'} "
                                  f"finding; the endpoints are {keys}")
        first = hits[0]
    if rows[first]["role"] in NOT_TESTED_ROLES:
        raise ExperimentError(f"primary endpoint {primary!r} is a {rows[first]['role']} row; the primary must be a "
                              "finding of its own")
    tested = [r for i, r in enumerate(rows) if i != first and r["role"] not in NOT_TESTED_ROLES]
    other = [r for i, r in enumerate(rows) if i != first and r["role"] in NOT_TESTED_ROLES]
    rows = [rows[first]] + tested + other
    table = pd.DataFrame(rows, columns=CONCLUSION_COLUMNS)
    table["role"] = ["primary"] + ["secondary"] * len(tested) + [r["role"] for r in other]
    table["p_holm"] = np.nan
    if tested:
        from ..stats import holm

        sec = table.index[1:1 + len(tested)]
        table.loc[sec, "p_holm"] = holm(table.loc[sec, "p"].to_numpy(dtype=float))
        has_p = table["p_holm"].notna() & (table["role"] == "secondary")
        table.loc[has_p, "significant"] = table.loc[has_p, "p_holm"] < alpha
        table["significant"] = table["significant"].astype(bool)
        table["agrees_with_paper"] = table["significant"] & table["direction_matches_paper"].astype(bool)
    return table


def disagreements(table: pd.DataFrame, *, require_significance: bool = True) -> list[str]:
    """Every way a conclusions table fails the paper or the truth; empty when all findings hold.

    A finding fails when its direction differs from the paper's, when it is not significant
    (``require_significance``), or when its CI misses the simulated truth (rows without a truth
    are not checked against it).  The notebooks print this; the tests assert it is empty.
    """
    out = []
    for _, r in table.iterrows():
        if r.get("role", "") in NOT_TESTED_ROLES:  # a sensitivity or descriptive row tests nothing new
            continue
        if not r["direction_matches_paper"]:
            out.append(f"{r['finding']}: estimate {r['estimate']:.3g} is not in the paper's direction "
                       f"({r['paper_direction']})")
        if require_significance and not r["significant"]:
            if _finite(r["p"]):
                holm = f", Holm-adjusted {r['p_holm']:.3g}" if _finite(r.get("p_holm")) else ""
                why = f"p = {r['p']:.3g}{holm}"
            else:  # a row without a p-value (e.g. a bootstrap CI): its verdict is the CI's
                why = f"its CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}] includes 0; no p-value"
            out.append(f"{r['finding']}: not significant ({why})")
        cov = r["ci_covers_truth"]
        if cov is not None and not pd.isna(cov) and not bool(cov):
            out.append(f"{r['finding']}: CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}] misses the simulated truth "
                       f"{r['truth']:.3g}")
    return out


def summary_lines(table: pd.DataFrame) -> str:
    """The verdict for the notebook, computed from the table: the primary endpoint first, then how many
    secondary findings agree with the paper after Holm adjustment, then every issue."""
    bad = disagreements(table)
    roles = table["role"] if "role" in table.columns else pd.Series([""] * len(table), index=table.index)
    extra = table[roles.isin(NOT_TESTED_ROLES)]
    table = table[~roles.isin(NOT_TESTED_ROLES)]
    n = len(table)
    lines = [f"Primary endpoint: {headline(table)}."]
    if n > 1:
        sec = table.iloc[1:]
        n_holm = int(pd.to_numeric(sec["p_holm"], errors="coerce").notna().sum()) if "p_holm" in sec else 0
        if n_holm == len(sec):
            how = "Holm-adjusted across the secondary findings"
        elif n_holm == 0:  # rows without a p-value (a bootstrap CI): nothing to adjust, the CI decides
            how = "significance from each CI at the unadjusted level: these rows have no p-value to Holm-adjust"
        else:
            how = (f"Holm-adjusted across the {n_holm} secondary findings with a p-value; the {len(sec) - n_holm} "
                   "without one are judged by their unadjusted CI")
        lines.append(f"Secondary findings: {int(sec['agrees_with_paper'].sum())} of {n - 1} agree with the paper "
                     f"(direction and significance, {how}).")
    for i in range(len(extra)):
        lines.append(f"{str(extra['role'].iloc[i]).capitalize()} (not Holm-counted, not a finding of its own): "
                     f"{headline(extra, i)}.")
    if not bad:
        truth = table["ci_covers_truth"].dropna()
        cover = (" and every 95 % CI covers the simulated truth" if len(truth) and truth.astype(bool).all()
                 else "")
        lines.append(f"All {n} findings agree with the paper (direction, significance){cover}.")
    else:
        lines.append(f"{len(bad)} issue(s) among {n} findings:\n" + "\n".join(f"- {b}" for b in bad))
    return "\n".join(lines)


def headline(table: pd.DataFrame, row: int = 0, *, against: str = "paper") -> str:
    """A one-line summary of a conclusions-table row, for the report index.

    ``against`` names what the expected direction comes from: ``"paper"`` for a replication, e.g.
    ``"hypothesis"`` for a lab's own study (``studylib new``).
    """
    r = table.iloc[row]
    p = f", p = {r['p']:.2g}" if _finite(r["p"]) else ""
    truth = ""
    if _finite(r["truth"]):
        truth = f"; truth {r['truth']:.3g} {'inside' if r['ci_covers_truth'] else 'OUTSIDE'} CI"
    verdict = f"agrees with {against}" if r["agrees_with_paper"] else f"does NOT agree with {against}"
    if _finite(r.get("p_holm")):
        p += f" (Holm {r['p_holm']:.2g})"
    u = f" {r['units']}" if r["units"] else ""
    return (f"{r['finding']}: {r['estimate']:.3g}{u} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]{p} "
            f"({verdict}{truth})")


def effect_row(finding: str, effect: Mapping, *, expected_sign: int, truth: float, units: str, study: str,
               endpoint: str = "", role: str = "", alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`longitudinal_effect` / :func:`group_difference` result."""
    method = effect.get("method") or (f"mixed model {effect.get('formula', '')}, random {effect.get('re_formula', '')} "
                                      f"per animal, {effect.get('ddf', '')} df {effect.get('df', float('nan')):.1f}")
    return check_effect(finding, estimate=effect["estimate"], ci_low=effect["ci_low"], ci_high=effect["ci_high"],
                        p=effect.get("p"), expected_sign=expected_sign, truth=truth, units=units,
                        paper=citation(study), method=method, endpoint=endpoint, role=role, alpha=alpha)


def correlation_row(finding: str, corr: Mapping, *, expected_sign: int, truth: float, study: str,
                    endpoint: str = "", role: str = "", alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`correlation_effect` (or :func:`partial_regression_effect`) result:
    r is unitless, and its method text (Fisher-z or exact CI, the df, n) goes in the ``method`` column."""
    method = corr["method"] if "n = " in corr["method"] else f"{corr['method']}, n = {corr['n']}"
    return check_effect(finding, estimate=corr["estimate"], ci_low=corr["ci_low"], ci_high=corr["ci_high"],
                        p=corr.get("p"), expected_sign=expected_sign, truth=truth, units="",
                        paper=citation(study), method=method, endpoint=endpoint, role=role, alpha=alpha)


#: the rows of :func:`correlation_part_rows` -> the part of a :func:`correlation_effect` result each reports
CORRELATION_ENDPOINT_PARTS = {"within_model_r": "within", "pooled_r": "pooled", "between_model_r": "between"}


def correlation_part(corr: Mapping, endpoint: str) -> Mapping | None:
    """The part (an Estimate with ``level``, ``df``) of a clustered :func:`correlation_effect` result that the row
    ``endpoint`` of :func:`correlation_part_rows` reports, e.g. for :func:`studylib.analysis.effect_power` of the
    primary endpoint; None when ``endpoint`` is no correlation row or its part was not estimable."""
    level = CORRELATION_ENDPOINT_PARTS.get(endpoint)
    return dict(corr.get("parts") or {}).get(level) if level else None


def correlation_part_rows(label: str, corr: Mapping, *, expected_sign: int, pooled_truth: float,
                          true_parts: Mapping | None, study: str, alpha: float = 0.05) -> dict:
    """Rows ``within_model_r`` (when clustered), ``pooled_r`` and ``between_model_r`` (when clustered) of a
    clustered :func:`correlation_effect` result ``corr`` (its ``parts``, ``cluster``), each a
    :func:`correlation_row` named ``"<label> within <cluster>"`` / ``pooled`` / ``between <cluster> means``
    against the truth of that part (``true_parts``: ``within``/``between``; ``pooled_truth`` for pooled)."""
    parts, tp, nan = corr["parts"], dict(true_parts or {}), float("nan")
    cluster = corr.get("cluster") or "model"
    texts = {"within": (f"{label} within {cluster}", tp.get("within", nan)),
             "pooled": (f"{label} pooled", pooled_truth),
             "between": (f"{label} between {cluster} means", tp.get("between", nan))}
    named = {key: (part, *texts[part]) for key, part in CORRELATION_ENDPOINT_PARTS.items()}
    return {key: correlation_row(finding, parts[part], expected_sign=expected_sign, truth=truth, study=study,
                                 alpha=alpha)
            for key, (part, finding, truth) in named.items() if part in parts}


#: the endpoint keys of :func:`treatment_and_histology`
TREATMENT_ENDPOINTS = {"treatment_effect": "tumour biomarker, treated - control on the effect's day",
                       "histology_r": "r(tumour biomarker, histology) on the common day (or each animal's last day); "
                                      "within groups when the correlation is clustered"}

#: the extra row of :func:`treatment_rows` when its correlation is clustered (role ``"descriptive"``)
POOLED_HISTOLOGY_ENDPOINT = {"histology_r_pooled": "r(tumour biomarker, histology) pooled over the groups "
                                                   "(descriptive: it mostly restates the group difference)"}


def adjustment_text(effect: Mapping, note: str = "") -> str:
    """``" (ANCOVA on day 0; <note>)"`` for a baseline-adjusted :func:`longitudinal_effect`, ``" (<note>)"``
    without adjustment, ``""`` without either: the adjustments an effect used, for a finding's text."""
    adj = str(effect.get("adjustment", "none") or "none")
    day = effect.get("baseline_day")
    quals = [] if adj == "none" else [f"ANCOVA on day {day:g}" if _finite(day) else adj]
    quals += [note.strip(" ()")] if note.strip(" ()") else []
    return f" ({'; '.join(quals)})" if quals else ""


def histology_day_text(animals_attrs: Mapping | None) -> tuple[str, str]:
    """(finding suffix, method sentence) for the day imaging is compared with histology, from the
    ``attrs`` of :func:`studylib.analysis.animal_table` (``day``, ``day_rule``, ``left_out``)."""
    attrs = dict(animals_attrs or {})
    day, rule, left = attrs.get("day"), attrs.get("day_rule", "last"), tuple(attrs.get("left_out", ()))
    if day is None or rule == "last":
        return " at endpoint", ("; imaging on each animal's last imaging day (animals that left early are compared at "
                                "an earlier time)")
    why = "the last imaging day every group shares" if rule == "common" else "a fixed day"
    gone = (f"; left out, not imaged that day: {', '.join(left)}" if left else "; no animal left out")
    return f" on day {day:g}", f"; imaging on day {day:g}, {why}, for every analysed animal{gone}"


def _histology_rows(study: str, corr: Mapping, truth: Mapping, *, biomarker: str, variable: str, hist_col: str,
                    corr_sign: int, histology_day: Mapping | None, true_parts: Mapping | None,
                    alpha: float) -> dict[str, dict]:
    """``histology_r`` (and ``histology_r_pooled``) of :func:`treatment_rows`."""
    hsuffix, hmethod = histology_day_text(histology_day)
    pooled_truth = true_correlation(truth, f"endpoint_tumour_{variable}_vs_{hist_col}")
    parts = corr.get("parts") if isinstance(corr, Mapping) and "parts" in corr else None
    within = dict(parts).get("within") if parts else None
    if within is None or corr.get("level") != "within":
        hist = correlation_row(f"r(tumour {biomarker}, {hist_col}){hsuffix}", corr, expected_sign=corr_sign,
                               truth=pooled_truth, study=study, alpha=alpha)
        hist["method"] += hmethod + ("; pooled over the groups: it mixes the group difference with the tracking "
                                     "within a group" if not parts or corr.get("level") == "pooled" else "")
        return {"histology_r": hist}
    cluster = corr.get("cluster") or "group"
    tp = dict(true_parts or {})
    hist = correlation_row(f"r(tumour {biomarker}, {hist_col}) within {cluster}{hsuffix}", within,
                           expected_sign=corr_sign, truth=tp.get("within", float("nan")), study=study, alpha=alpha)
    hist["method"] += (f"{hmethod}; answers whether tumour {biomarker} tracks {hist_col} within a {cluster} "
                       f"(each animal compared with the others of its {cluster})")
    pooled = correlation_row(f"r(tumour {biomarker}, {hist_col}) pooled over {cluster}s{hsuffix}",
                             parts["pooled"], expected_sign=corr_sign, truth=tp.get("pooled", pooled_truth),
                             study=study, role="descriptive", alpha=alpha)
    pooled["method"] += (f"{hmethod}; descriptive: pooled over the {cluster}s it mostly restates the difference "
                         f"between {cluster} means, it does not answer whether {biomarker} tracks {hist_col} within "
                         f"a {cluster}")
    return {"histology_r": hist, "histology_r_pooled": pooled}


def treatment_rows(study: str, effect: Mapping, corr: Mapping, truth: Mapping, *, biomarker: str,
                   variable: str, units: str, control: str, treated: str, hist_col: str,
                   effect_sign: int, corr_sign: int, note: str = "", histology_day: Mapping | None = None,
                   alpha: float = 0.05, true_parts: Mapping | None = None) -> dict[str, dict]:
    """The rows ``treatment_effect`` and ``histology_r`` of :func:`treatment_and_histology` (before the
    table marks the primary), for a notebook that adds rows of its own.

    With a clustered ``corr`` (:func:`studylib.analysis.correlation_effect` with ``cluster=``, level
    ``"within"``), ``histology_r`` is the within-cluster r (does the biomarker track histology within a
    group?) against ``true_parts["within"]`` (:func:`studylib.analysis.true_correlation_parts`), and the pooled r
    becomes the row ``histology_r_pooled``, role ``"descriptive"`` (not Holm-counted), against
    ``true_parts["pooled"]`` or the truth's ``endpoint_tumour_<variable>_vs_<hist_col>``.  An unclustered
    ``corr`` gives the single pooled ``histology_r`` row as before, its method saying it is pooled.
    """
    day = effect["at_day"]
    unit_key = "_per_s" if units == "1/s" else ""
    hrows = _histology_rows(study, corr, truth, biomarker=biomarker, variable=variable, hist_col=hist_col,
                            corr_sign=corr_sign, histology_day=histology_day, true_parts=true_parts, alpha=alpha)
    return {
        "treatment_effect": effect_row(
            f"tumour {biomarker} {treated} − {control}, day {day:g}{adjustment_text(effect, note)}", effect,
            expected_sign=effect_sign,
            truth=true_effect(truth, f"tumour_{variable}{unit_key}_{treated}_minus_{control}_last_day", day=day),
            units=units, study=study, alpha=alpha),
        **hrows,
    }


def treatment_and_histology(study: str, effect: Mapping, corr: Mapping, truth: Mapping, *, biomarker: str,
                            variable: str, units: str, control: str, treated: str, hist_col: str,
                            effect_sign: int, corr_sign: int, note: str = "", primary: str = "treatment_effect",
                            histology_day: Mapping | None = None, alpha: float = 0.05,
                            true_parts: Mapping | None = None) -> pd.DataFrame:
    """The two findings of a treatment study with an imaging-vs-histology endpoint, as a conclusions table.

    Endpoint ``treatment_effect``: tumour ``biomarker`` treated - control on the effect's ``at_day`` (truth key
    ``tumour_<variable>_per_s_<treated>_minus_<control>_last_day`` when the units are 1/s, else
    ``tumour_<variable>_<treated>_minus_<control>_last_day``); a baseline-adjusted effect says so in its finding
    (:func:`adjustment_text`).  Endpoint ``histology_r``: r(tumour ``biomarker``, ``hist_col``) (truth key
    ``endpoint_tumour_<variable>_vs_<hist_col>``) on the day of ``histology_day`` (the ``attrs`` of
    :func:`studylib.analysis.animal_table`: with ``day="common"`` the last day every group is imaged, said in the
    finding and the method with the animals left out; None: each animal's last day, "at endpoint").  ``note`` is
    appended to the first finding (e.g. ``" (adjusted for tumour model)"``); ``primary`` names the primary
    endpoint (:data:`TREATMENT_ENDPOINTS`), the other is secondary.  A clustered ``corr`` (``cluster="group"``)
    makes ``histology_r`` the within-group r and adds the pooled one as the descriptive row
    ``histology_r_pooled`` (:func:`treatment_rows`, ``true_parts``).
    """
    rows = treatment_rows(study, effect, corr, truth, biomarker=biomarker, variable=variable, units=units,
                          control=control, treated=treated, hist_col=hist_col, effect_sign=effect_sign,
                          corr_sign=corr_sign, note=note, histology_day=histology_day, alpha=alpha,
                          true_parts=true_parts)
    return conclusions_table(rows, primary=primary, alpha=alpha)


def _r_text(e: Mapping) -> str:
    return f"r = {e['estimate']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}], p = {e['p']:.2g} (df {e['df']})"


def correlation_levels_text(corr: Mapping, *, x: str, y: str, cluster: str, alpha: float = 0.05) -> str:
    """Which correlation answers "does ``x`` track ``y`` within a ``cluster``?", written from the numbers.

    Reads the ``parts`` of a :func:`correlation_effect` result with a cluster: the **within**-cluster
    correlation answers the question (every tumour compared with the others of its own model), the
    **pooled** one adds the differences between cluster means, and the **between** one rests on the
    ``k`` cluster means alone (``df = k - 2``).  Every verdict is computed: "tracks" when the within
    part's ``p < alpha``, its sign, and whether the pooled ``|r|`` exceeds the within one's CI.

    Returns
    -------
    str, a short paragraph for the notebook and the report.
    """
    parts = corr.get("parts") if isinstance(corr, Mapping) else None
    if not parts or "pooled" not in parts:
        raise ExperimentError("correlation_levels_text needs a correlation_effect result (with 'parts')")
    pooled, within, between = parts["pooled"], parts.get("within"), parts.get("between")
    out = []
    if within is None:
        out.append(f"The within-{cluster} correlation of {x} and {y} is not estimable ({corr.get('note', '')}); "
                   f"the pooled one cannot answer whether {x} tracks {y} within a {cluster}.")
    else:
        sign = "inversely " if within["estimate"] < 0 else ""
        verdict = (f"{x} {sign}tracks {y} within a {cluster}" if within["p"] < alpha else
                   f"no evidence (alpha = {alpha:g}) that {x} tracks {y} within a {cluster}")
        out.append(f"The paper's question, does {x} track {y} within a {cluster}, is answered by the within-{cluster} "
                   f"correlation ({within['n']} tumours in {within['n_clusters']} {cluster}s): {_r_text(within)}: "
                   f"{verdict}.")
        lo, hi, r = within["ci_low"], within["ci_high"], pooled["estimate"]
        weakest = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))  # |r| over the CI spans [weakest, strongest]
        if abs(r) > max(abs(lo), abs(hi)):
            rel = f"stronger than any value in the within-{cluster} CI"
        elif abs(r) < weakest:
            rel = f"weaker than any value in the within-{cluster} CI"
        elif lo <= r <= hi:
            rel = f"inside the within-{cluster} CI"
        else:
            rel = f"of opposite sign to the within-{cluster} CI, of a strength inside its range"
        out.append(f"The pooled correlation treats all {pooled['n']} tumours as independent and adds the differences "
                   f"between {cluster} means: {_r_text(pooled)}, {rel}.")
    if between is not None:
        sig = "significant" if between["p"] < alpha else "not significant"
        out.append(f"The between-{cluster} correlation of the {between['n']} {cluster} means, {_r_text(between)}, is "
                   f"{sig}; with {between['n']} points it describes the {cluster}s, not the tumours.")
    return "\n".join(out)
