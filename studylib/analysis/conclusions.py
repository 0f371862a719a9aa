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

__all__ = ["CONCLUSION_COLUMNS", "check_effect", "conclusions_table", "disagreements", "summary_lines", "headline",
           "effect_row", "correlation_row", "treatment_and_histology"]

#: Conclusion table columns, in order.
CONCLUSION_COLUMNS = [
    "finding", "paper", "paper_direction", "estimate", "ci_low", "ci_high", "units", "p", "method",
    "significant", "direction_matches_paper", "truth", "ci_covers_truth", "agrees_with_paper",
]


def check_effect(finding: str, *, estimate: float, ci_low: float, ci_high: float, expected_sign: int,
                 p: float | None = None, truth: float | None = None, units: str = "", paper: str = "",
                 method: str = "", alpha: float = 0.05) -> dict[str, Any]:
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
    alpha : significance level.

    Returns
    -------
    dict with the keys of :data:`CONCLUSION_COLUMNS`:

    * ``significant``: ``p < alpha`` (or the CI excludes 0 when ``p`` is None);
    * ``direction_matches_paper``: ``sign(estimate) == expected_sign``;
    * ``ci_covers_truth``: ``ci_low <= truth <= ci_high``, or None without a truth;
    * ``agrees_with_paper``: same direction and significant.

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
    if p is not None and not (_finite(p) and 0.0 <= float(p) <= 1.0):
        raise ExperimentError(f"{finding}: p must be a number in [0, 1], got {p!r}")
    significant = (float(p) < alpha) if p is not None else not (ci_low <= 0.0 <= ci_high)
    direction = bool(np.sign(estimate) == expected_sign)
    has_truth = _finite(truth)
    return dict(
        finding=finding, paper=paper, paper_direction="increase / positive" if expected_sign > 0 else
        "decrease / negative", estimate=estimate, ci_low=ci_low, ci_high=ci_high, units=units,
        p=float(p) if p is not None else float("nan"), method=method, significant=bool(significant),
        direction_matches_paper=direction, truth=float(truth) if has_truth else float("nan"),
        ci_covers_truth=bool(ci_low <= float(truth) <= ci_high) if has_truth else None,
        agrees_with_paper=bool(direction and significant),
    )


def conclusions_table(checks: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per :func:`check_effect` result, columns :data:`CONCLUSION_COLUMNS` in order."""
    if not checks:
        raise ExperimentError("no checks given: a conclusions table needs at least one finding")
    rows = []
    for c in checks:
        missing = [k for k in CONCLUSION_COLUMNS if k not in c]
        if missing:
            raise ExperimentError(f"check '{c.get('finding', '?')}' lacks keys {missing}; build it with check_effect")
        rows.append({k: c[k] for k in CONCLUSION_COLUMNS})
    return pd.DataFrame(rows, columns=CONCLUSION_COLUMNS)


def disagreements(table: pd.DataFrame, *, require_significance: bool = True) -> list[str]:
    """Every way a conclusions table fails the paper or the truth; empty when all findings hold.

    A finding fails when its direction differs from the paper's, when it is not significant
    (``require_significance``), or when its CI misses the simulated truth (rows without a truth
    are not checked against it).  The notebooks print this; the tests assert it is empty.
    """
    out = []
    for _, r in table.iterrows():
        if not r["direction_matches_paper"]:
            out.append(f"{r['finding']}: estimate {r['estimate']:.3g} is not in the paper's direction "
                       f"({r['paper_direction']})")
        if require_significance and not r["significant"]:
            out.append(f"{r['finding']}: not significant (p = {r['p']:.3g})")
        cov = r["ci_covers_truth"]
        if cov is not None and not pd.isna(cov) and not bool(cov):
            out.append(f"{r['finding']}: CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}] misses the simulated truth "
                       f"{r['truth']:.3g}")
    return out


def summary_lines(table: pd.DataFrame) -> str:
    """A short verdict for the notebook: which findings agree with the paper and cover the truth."""
    bad = disagreements(table)
    n = len(table)
    if not bad:
        return (f"All {n} findings agree with the paper (direction, significance) and every 95 % CI covers "
                f"the simulated truth.")
    return f"{len(bad)} issue(s) among {n} findings:\n" + "\n".join(f"- {b}" for b in bad)


def headline(table: pd.DataFrame, row: int = 0) -> str:
    """A one-line summary of a conclusions-table row, for the report index."""
    r = table.iloc[row]
    p = f", p = {r['p']:.2g}" if _finite(r["p"]) else ""
    truth = ""
    if _finite(r["truth"]):
        truth = f"; truth {r['truth']:.3g} {'inside' if r['ci_covers_truth'] else 'OUTSIDE'} CI"
    verdict = "agrees with paper" if r["agrees_with_paper"] else "does NOT agree with paper"
    u = f" {r['units']}" if r["units"] else ""
    return (f"{r['finding']}: {r['estimate']:.3g}{u} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]{p} "
            f"({verdict}{truth})")


def effect_row(finding: str, effect: Mapping, *, expected_sign: int, truth: float, units: str, study: str,
               alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`longitudinal_effect` / :func:`group_difference` result."""
    method = effect.get("method") or (f"mixed model {effect.get('formula', '')}, random {effect.get('re_formula', '')} "
                                      f"per animal, {effect.get('ddf', '')} df {effect.get('df', float('nan')):.1f}")
    return check_effect(finding, estimate=effect["estimate"], ci_low=effect["ci_low"], ci_high=effect["ci_high"],
                        p=effect.get("p"), expected_sign=expected_sign, truth=truth, units=units,
                        paper=citation(study), method=method, alpha=alpha)


def correlation_row(finding: str, corr: Mapping, *, expected_sign: int, truth: float, study: str,
                    alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`correlation_effect` result (r is unitless)."""
    return check_effect(finding, estimate=corr["estimate"], ci_low=corr["ci_low"], ci_high=corr["ci_high"],
                        p=corr.get("p"), expected_sign=expected_sign, truth=truth, units="",
                        paper=citation(study), method=f"{corr['method']}, n = {corr['n']}", alpha=alpha)


def treatment_and_histology(study: str, effect: Mapping, corr: Mapping, truth: Mapping, *, biomarker: str,
                            variable: str, units: str, control: str, treated: str, hist_col: str,
                            effect_sign: int, corr_sign: int, note: str = "", alpha: float = 0.05) -> pd.DataFrame:
    """The two findings of a treatment study with an imaging-vs-histology endpoint, as a conclusions table.

    Row 1: tumour ``biomarker`` treated - control on the effect's ``at_day`` (truth key
    ``tumour_<variable>_per_s_<treated>_minus_<control>_last_day`` when the units are 1/s, else
    ``tumour_<variable>_<treated>_minus_<control>_last_day``); row 2: r(tumour ``biomarker``, ``hist_col``)
    at the endpoint (truth key ``endpoint_tumour_<variable>_vs_<hist_col>``).  ``note`` is appended to
    the first finding (e.g. ``" (adjusted for tumour model)"``).
    """
    day = effect["at_day"]
    unit_key = "_per_s" if units == "1/s" else ""
    rows = [
        effect_row(f"tumour {biomarker} {treated} − {control}, day {day:g}{note}", effect, expected_sign=effect_sign,
                   truth=true_effect(truth, f"tumour_{variable}{unit_key}_{treated}_minus_{control}_last_day",
                                      day=day),
                   units=units, study=study, alpha=alpha),
        correlation_row(f"r(tumour {biomarker}, {hist_col}) at endpoint", corr, expected_sign=corr_sign,
                        truth=true_correlation(truth, f"endpoint_tumour_{variable}_vs_{hist_col}"), study=study,
                        alpha=alpha),
    ]
    return conclusions_table(rows)

