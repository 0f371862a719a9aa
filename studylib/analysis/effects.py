"""Step 5 of the flow: effects with their CIs — mixed models over days, correlations, group tests.

Thin facades over :mod:`studylib.stats` in the spirit of statsmodels' formula API: each takes a
table with one row per animal (or animal x day) and column names, checks them, and returns a
frozen :class:`Estimate` (estimate, CI, p, method and the details of the fit).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DataWarning, ExperimentError

__all__ = ["Estimate", "BASELINE_ADJUSTMENTS", "longitudinal_effect", "model_diagnostics", "correlation_effect",
           "partial_regression_effect", "regression_slope", "group_difference", "effect_power", "POWER_KEYS",
           "primary_correlation_power"]


@dataclass(frozen=True)
class Estimate(Mapping):
    """One estimated effect with its confidence interval: frozen, readable as attributes or keys.

    Attributes
    ----------
    estimate, ci_low, ci_high : the estimate and its (1 - alpha) CI, in the units of the data.
    p : p-value of the test of no effect.
    method : how it was obtained (model, df method, CI method, n).
    details : everything else the step reports (``df``, ``n_animals``, ``at_day``, ``formula``,
        the fitted ``model``...), read-only; ``est["at_day"]`` and ``est.at_day`` both work.
    """

    estimate: float
    ci_low: float
    ci_high: float
    p: float
    method: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def _as_dict(self) -> Estimate:
        return dict(estimate=self.estimate, ci_low=self.ci_low, ci_high=self.ci_high, p=self.p,
                    method=self.method, **self.details)

    def __getitem__(self, key: str) -> Any:
        if key in ("estimate", "ci_low", "ci_high", "p", "method"):
            return getattr(self, key)
        return self.details[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key == "details":
            raise AttributeError(key)
        try:
            return self.details[key]
        except KeyError:
            raise AttributeError(f"Estimate has no {key!r}; it has {list(self._as_dict())}") from None

    def __iter__(self):
        return iter(self._as_dict())

    def __len__(self) -> int:
        return 5 + len(self.details)


def _estimate(**kw) -> Estimate:
    core = {k: kw.pop(k) for k in ("estimate", "ci_low", "ci_high", "p")}
    return Estimate(**{k: float(v) for k, v in core.items()}, method=str(kw.pop("method", "")), details=kw)


def _mixed_model():
    from .. import stats

    return stats.mixed_model


#: the baseline adjustments of :func:`longitudinal_effect`
BASELINE_ADJUSTMENTS = ("none", "ancova")


class _OLSFit:
    """Ordinary least squares with t inference, offering the parts of a
    :class:`studylib.stats.MixedModelResult` an effect reads (``fixed``, ``contrast`` and the fields of
    :func:`model_diagnostics`).

    The ANCOVA of a design with one session after baseline per animal: with one response per animal a
    random intercept is not identifiable and the mixed model is ordinary least squares,
    ``beta = (X'X)^-1 X'y``, ``Var(beta) = s^2 (X'X)^-1``, ``s^2 = RSS / (n - p)``, t tests with
    ``n - p`` df (Seber & Lee 2003, *Linear Regression Analysis*, ch. 3-4).
    """

    def __init__(self, data: pd.DataFrame, formula: str, groups: str, ci: float):
        import patsy
        from scipy import stats as sps

        self._t = sps.t
        self._f = sps.f
        ydf, X = patsy.dmatrices(formula, data, return_type="dataframe", NA_action="raise")
        yv, Xv = ydf.iloc[:, 0].to_numpy(dtype=float), X.to_numpy(dtype=float)
        n, p = Xv.shape
        if np.linalg.matrix_rank(Xv) < p:
            raise ExperimentError(f"design of {formula!r} is rank deficient (columns {list(X.columns)}): a group "
                                  "or level without animals, or collinear covariates")
        if n <= p:
            raise ExperimentError(f"{n} animals for {p} coefficients of {formula!r}: no residual degrees of freedom")
        self._beta = np.linalg.lstsq(Xv, yv, rcond=None)[0]
        resid = yv - Xv @ self._beta
        self.df_resid = n - p
        self._cov = float(resid @ resid) / self.df_resid * np.linalg.inv(Xv.T @ Xv)
        self.fe_names, self.ci, self.formula, self.groups = list(X.columns), ci, formula, groups
        self.n_obs, self.n_groups = n, int(data[groups].nunique())
        self.ddf, self.converged, self.boundary, self.warnings = f"OLS t, {self.df_resid}", True, False, []
        self.fixed = self.contrast(pd.DataFrame(np.eye(p), index=self.fe_names, columns=self.fe_names))

    def contrast(self, L, *, joint: bool = False) -> pd.DataFrame:
        """``L beta`` with t tests (one per row) or, ``joint=True``, one F test of all rows."""
        if isinstance(L, Mapping):
            M, names = np.array([[float(L.get(t, 0.0)) for t in self.fe_names]]), ["contrast"]
        else:
            M, names = L.reindex(columns=self.fe_names, fill_value=0.0).to_numpy(dtype=float), list(L.index)
        est, V = M @ self._beta, M @ self._cov @ M.T
        if joint:
            q = M.shape[0]
            F = float(est @ np.linalg.solve(V, est)) / q
            return pd.DataFrame([{"F": F, "num_df": q, "den_df": self.df_resid,
                                  "p": float(self._f.sf(F, q, self.df_resid))}])
        se = np.sqrt(np.diag(V))
        tq = float(self._t.ppf(0.5 + self.ci / 2.0, self.df_resid))
        return pd.DataFrame({"estimate": est, "se": se, "ci_low": est - tq * se, "ci_high": est + tq * se,
                             "df": float(self.df_resid), "p": 2.0 * self._t.sf(np.abs(est / se), self.df_resid)},
                            index=names)


def _ancova_rows(d: pd.DataFrame, y: str, *, unit: str, baseline_day: float | None) -> tuple[pd.DataFrame, dict]:
    """The response rows of an ANCOVA on the baseline value: the sessions after ``baseline_day`` with the
    animal's baseline ``y`` as ``baseline`` and centred on the analysed animals' mean as ``baseline_c``."""
    days = sorted(float(x) for x in d["day"].unique())
    bday = days[0] if baseline_day is None else float(baseline_day)
    if bday not in days:
        raise ExperimentError(f"baseline_day {bday:g} is not an imaging day {[f'{x:g}' for x in days]}")
    b = d[d["day"].astype(float) == bday]
    dup = sorted(set(b.loc[b[unit].duplicated(), unit]))
    if dup:
        raise ExperimentError(f"animal(s) {dup} have more than one '{y}' on the baseline day {bday:g}")
    base = b.set_index(unit)[y].astype(float)
    post = d[d["day"].astype(float) > bday].copy()
    if post.empty:
        raise ExperimentError(f"no session after the baseline day {bday:g}: nothing to adjust")
    no_base = sorted(set(post[unit]) - set(base.index))
    no_post = sorted(set(base.index) - set(post[unit]))
    if no_base:
        warnings.warn(DataWarning(f"{len(no_base)} animal(s) have no '{y}' on the baseline day {bday:g} and are left "
                                  f"out of the baseline-adjusted (ANCOVA) effect: {', '.join(no_base)}"), stacklevel=3)
    if no_post:
        warnings.warn(DataWarning(f"{len(no_post)} animal(s) have no session after the baseline day {bday:g} and are "
                                  f"left out of the baseline-adjusted (ANCOVA) effect: {', '.join(no_post)}"),
                      stacklevel=3)
    post = post[post[unit].isin(base.index)].copy()
    post["baseline"] = post[unit].map(base)
    centre = float(base.loc[sorted(set(post[unit]))].mean())
    post["baseline_c"] = post["baseline"] - centre
    return post, dict(baseline_day=bday, baseline_mean=centre, no_baseline=tuple(no_base),
                      no_follow_up=tuple(no_post))


def longitudinal_effect(table: pd.DataFrame, y: str, *, control: str, treated: str, at_day: float | None = None,
                        slope: bool = False, day_model: str = "linear", group_col: str = "group",
                        covariates: Sequence[str] = (), baseline: str | None = None,
                        baseline_day: float | None = None, by: str | None = None, ddf: str = "satterthwaite",
                        log: bool = False, unit: str = "animal", alpha: float = 0.05) -> Estimate:
    """Treated-minus-control effect from a longitudinal mixed model (animal = unit of analysis).

    Two models of time, both with ``treated`` = 1 for the treated group:

    * ``day_model="linear"``: ``y ~ treated * day_c + covariates`` with ``day_c = day - at_day`` and
      a random intercept and slope per animal (``re_formula="~day_c"``). The coefficient of ``treated``
      is the difference of the means on ``at_day``; ``treated:day_c`` (``slope=True``) the
      difference of slopes per day (e.g. growth rates of log volume).
    * ``day_model="categorical"``: cell means, no shape imposed on the time course,
      ``y ~ treated + sum_k (d_k + treated:d_k) + covariates`` with an indicator ``d_k`` for every day
      other than ``at_day`` and a random intercept per animal. The coefficient of ``treated`` is the
      difference on ``at_day``. Use it when the response is not linear in time (ferumoxytol uptake
      peaks at 24-48 h then clears; TAM depletion saturates).

    **Baseline adjustment** (``baseline="ancova"``): analysis of covariance on the pre-treatment value.
    The response is ``y`` on the days after ``baseline_day`` only (the baseline day leaves the response),
    and the animal's own baseline ``y_i0``, centred on the analysed animals' mean ``b_i = y_i0 - mean(y_0)``,
    enters as a covariate with a slope per day: categorical
    ``y_ij = ... + beta_b b_i + sum_k gamma_k b_i d_k``, linear ``... + beta_b b_i + gamma b_i day_c``.
    ``treated`` is then the difference on ``at_day`` between animals of equal baseline: a chance
    imbalance of the groups on the baseline day no longer enters the contrast (the unadjusted contrast
    carries ``slope x imbalance``), and the between-animal variance the baseline explains leaves the
    error (Vickers & Altman, BMJ 2001;323:1123, doi:10.1136/bmj.323.7321.1123; EMA guideline on adjustment
    for baseline covariates, EMA/CHMP/295050/2013).  With a single session after baseline per animal the
    random intercept is not identifiable and the model is the classic ANCOVA by ordinary least squares,
    ``y_1 ~ treated + b + covariates``.  Animals without a baseline value (or without a later session) are
    left out with a :class:`studylib.errors.DataWarning` naming them.

    **Interaction** (``by="model"``): one treatment effect per level of ``by`` (indicators
    ``treated_j = treated x [by == level_j]`` replacing ``treated`` in every term, with ``C(by)``), and the
    returned estimate is the treatment x ``by`` interaction: the difference of the two levels' effects
    (the second level in sorted order minus the first), or, with more than two levels, NaN with the joint F
    test of equal effects as ``p``.  ``details["per_level"]`` holds each level's effect.

    Fitted by :func:`studylib.stats.mixed_model` with small-sample (Satterthwaite by default) df.

    Parameters
    ----------
    table : one row per animal x day with columns ``unit``, ``day``, ``group_col`` and ``y``.
    control, treated : the two group labels compared (other groups are dropped).
    at_day : the day of the difference (default: the last day).
    covariates : extra fixed-effect terms (e.g. ``"C(model)"``).
    baseline : ``None``/``"none"`` (no adjustment) or ``"ancova"`` (the baseline value as covariate).
    baseline_day : the pre-treatment day of ``baseline="ancova"`` (default: the first imaging day).
    by : a column whose levels get their own treatment effect (treatment x ``by`` interaction).
    log : analyse ``log(y)`` (tumour volume); effects are then differences of logs.

    Returns
    -------
    Estimate: ``estimate, ci_low, ci_high, p, method`` (in the units of ``y``) and details ``df, term, at_day,
    n_animals, formula, re_formula, day_model, ddf, model`` (the fit), ``adjustment`` (``"none"`` or
    ``"ANCOVA on day <d> <y>"``), with ``baseline="ancova"`` also ``baseline_day, baseline_mean,
    no_baseline`` (animals left out), and with ``by`` also ``by, levels, per_level`` (level -> Estimate),
    ``per_level_table``, ``interaction_F`` (the joint F test: ``F, num_df, den_df, p``) and ``first_day_by_level``
    (each level's mean ``y`` on the first imaging day, before treatment).

    Raises
    ------
    ExperimentError
        a missing column or group, an unknown ``day_model`` or ``baseline``, an ``at_day`` that is not an
        imaging day (categorical) or not after ``baseline_day``, a ``by`` level without both groups.
    """
    need = [unit, "day", group_col, y] + ([by] if by else [])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(table.columns)}")
    if day_model not in ("linear", "categorical"):
        raise ExperimentError(f"day_model must be 'linear' or 'categorical', got {day_model!r}")
    if slope and day_model != "linear":
        raise ExperimentError("slope=True needs day_model='linear'")
    adjustment = "none" if baseline is None else str(baseline).lower()
    if adjustment not in BASELINE_ADJUSTMENTS:
        raise ExperimentError(f"baseline must be None, 'none' or 'ancova', got {baseline!r}")
    d = table[table[group_col].isin([control, treated])].copy()
    for g in (control, treated):
        if not (d[group_col] == g).any():
            raise ExperimentError(f"group '{g}' not in column '{group_col}' "
                                  f"(groups: {sorted(map(str, table[group_col].unique()))})")
    d = d.dropna(subset=[y])
    if log:
        if (d[y] <= 0).any():
            raise ExperimentError(f"log=True needs positive '{y}'")
        d[y] = np.log(d[y].astype(float))
    d[unit] = d[unit].astype(str)
    info: dict[str, Any] = {}
    if by:
        first = d[d["day"] == d["day"].min()]
        info["first_day_by_level"] = MappingProxyType(
            {str(k): float(v) for k, v in first.groupby(first[by].astype(str))[y].mean().items()})
    if adjustment == "ancova":
        d, binfo = _ancova_rows(d, y, unit=unit, baseline_day=baseline_day)
        info.update(binfo)
    days = sorted(d["day"].unique())
    at_day = float(max(days)) if at_day is None else float(at_day)
    if adjustment == "ancova" and at_day <= info["baseline_day"]:
        raise ExperimentError(f"at_day {at_day:g} must come after the baseline day {info['baseline_day']:g}")
    if at_day not in [float(x) for x in days] and day_model == "categorical":
        raise ExperimentError(f"at_day {at_day:g} is not an imaging day {[int(x) for x in days]}")
    d["treated"] = (d[group_col] == treated).astype(float)
    yy = f"Q('{y}')" if not y.isidentifier() else y
    covs = list(covariates)
    if by:
        d[by] = d[by].astype(str)
        levels = sorted(d[by].unique())
        cells = d.groupby(by)[group_col].nunique()
        short = [lvl for lvl in levels if cells[lvl] < 2]
        if len(levels) < 2 or short:
            raise ExperimentError(f"by='{by}' needs at least 2 levels each with both groups; levels {levels}, "
                                  f"without both groups: {short}")
        trt = {lvl: f"treated_{i}" for i, lvl in enumerate(levels)}
        for lvl, name in trt.items():
            d[name] = d["treated"] * (d[by] == lvl)
        covs += [f"C({by})"] if f"C({by})" not in covs else []
    else:
        levels, trt = [], {}
    tnames = list(trt.values()) or ["treated"]
    bterms = ["baseline_c"] if adjustment == "ancova" else []
    if day_model == "linear":
        d["day_c"] = d["day"].astype(float) - at_day
        if tnames == ["treated"] and not bterms:
            rhs = ["treated * day_c"]
        else:
            rhs = ["day_c"] + [t for n in tnames + bterms for t in (n, f"{n}:day_c")]
        re_formula = "~day_c" if d.groupby(unit).size().max() > 2 or not bterms else "~1"
    else:
        rhs = list(tnames) + bterms
        for k in days:
            if float(k) == at_day:
                continue
            name = f"d{int(k)}" if k >= 0 else f"d_m{int(-k)}"
            d[name] = (d["day"] == k).astype(float)
            rhs += [name] + [f"{n}:{name}" for n in tnames + bterms]
        re_formula = "~1"
    formula = f"{yy} ~ " + " + ".join([*rhs, *covs])
    one_row = adjustment == "ancova" and int(d.groupby(unit).size().max()) == 1
    if one_row:
        fit = _OLSFit(d, formula, unit, 1.0 - alpha)
        re_formula, fitted = "none", f"OLS {formula}, t with {fit.df_resid} df (one session after baseline per animal)"
    else:
        fit = _mixed_model()(d, formula, groups=unit, re_formula=re_formula, ddf=ddf, ci=1.0 - alpha)
        fitted = f"mixed model {formula}, random {re_formula} per animal, {ddf} df"
    fx = fit.fixed
    terms = {lvl: (f"{n}:day_c" if slope else n) for lvl, n in (trt.items() or [("", "treated")])}
    for term in terms.values():
        if term not in fx.index:
            raise ExperimentError(f"model has no term '{term}' (terms: {list(fx.index)})")
    n_animals = int(d[unit].nunique())
    if adjustment == "ancova":
        bday = info["baseline_day"]
        post = ", ".join(f"{float(x):g}" for x in days)
        adj = f"ANCOVA on day {bday:g} {y}"
        pre = (f"ANCOVA on the day-{bday:g} value: {y} on days {post} with the animal's day-{bday:g} {y} (centred at "
               f"{info['baseline_mean']:.4g}) as a covariate, baseline day excluded from the response; ")
        info = {**info, "no_baseline": info["no_baseline"] + info.pop("no_follow_up")}
    else:
        adj, pre = "none", ""
    common = dict(at_day=at_day, n_animals=n_animals, formula=formula, re_formula=re_formula, day_model=day_model,
                  ddf=ddf if not one_row else "OLS t", adjustment=adj, model=fit, **info)
    if not by:
        row = fx.loc[terms[""]]
        method = f"{pre}{fitted} {float(row['df']):.1f}" if not one_row else f"{pre}{fitted}"
        return _estimate(estimate=row["estimate"], ci_low=row["ci_low"], ci_high=row["ci_high"], p=row["p"],
                         method=method, df=float(row["df"]), term=terms[""], **common)
    per = {}
    for lvl, term in terms.items():
        r = fx.loc[term]
        n_lvl = int(d.loc[d[by] == lvl, unit].nunique())
        per[lvl] = _estimate(estimate=r["estimate"], ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"],
                             method=f"{pre}{fitted} {float(r['df']):.1f}; term {term} ({by} {lvl}, n = {n_lvl})",
                             df=float(r["df"]), term=term, level=lvl, n_animals=n_lvl, at_day=at_day, adjustment=adj)
    per_table = pd.DataFrame([{by: lvl, "estimate": e.estimate, "ci_low": e.ci_low, "ci_high": e.ci_high, "p": e.p,
                               "df": e.df, "n_animals": e.n_animals} for lvl, e in per.items()])
    ref = terms[levels[0]]
    L = pd.DataFrame([{terms[lvl]: 1.0, ref: -1.0} for lvl in levels[1:]], index=[f"{lvl} - {levels[0]}"
                                                                               for lvl in levels[1:]]).fillna(0.0)
    joint = fit.contrast(L, joint=True).iloc[0]
    F = {k: float(joint[k]) for k in ("F", "num_df", "den_df", "p")}
    what = "difference of slopes" if slope else f"difference on day {at_day:g}"
    if len(levels) == 2:
        c = fit.contrast(L).iloc[0]
        est, lo, hi, p, df = (float(c[k]) for k in ("estimate", "ci_low", "ci_high", "p", "df"))
        itext = f"treatment x {by} interaction: ({treated} - {control} {what}) in {levels[1]} minus in {levels[0]}"
    else:
        est = lo = hi = float("nan")
        p, df = F["p"], F["den_df"]
        itext = f"treatment x {by} interaction: F test of equal {treated} - {control} effects ({what}) in {levels}"
    method = (f"{itext}; {pre}{fitted} {df:.1f}; per {by}: "
              + ", ".join(f"{lvl} {e.estimate:.3g} [{e.ci_low:.3g}, {e.ci_high:.3g}]" for lvl, e in per.items()))
    return _estimate(estimate=est, ci_low=lo, ci_high=hi, p=p, method=method, df=df, term=f"treated x {by}", by=by,
                     levels=tuple(levels), per_level=MappingProxyType(per), per_level_table=per_table,
                     interaction_F=MappingProxyType(F), **common)


def model_diagnostics(effect: Mapping) -> str:
    """One paragraph on the mixed model behind an effect: formula, size, convergence, singularity,
    and any warning other than the optimiser comparison notes."""
    m = effect["model"]
    lines = [f"{effect['formula']}  (random {effect.get('re_formula', '')} per {m.groups}; "
             f"{m.n_obs} observations, {m.n_groups} animals; {m.ddf} df)",
             f"converged: {bool(m.converged)}; singular/boundary fit: {bool(m.boundary)}"]
    lines += [w for w in m.warnings if not w.startswith("optimizer ")]
    return "\n".join(lines)


#: what each part of a design-aware correlation answers, for the method text
_LEVEL_TEXT = {"pooled": "pooled over all rows", "within": "within {cluster} (repeated-measures correlation)",
               "between": "between {cluster} means"}


def correlation_effect(data: pd.DataFrame, x: str, y: str, *, cluster: str | None = None,
                       adjust: Sequence[str] | str = (), level: str | None = None, method: str = "pearson",
                       alpha: float = 0.05) -> Estimate:
    """Design-aware correlation of ``x`` and ``y``: CI and p from one method, via :func:`studylib.stats.correlation`.

    Every part is the correlation of the residuals of x and y on an adjusting design ``Z``,
    ``r = e_x . e_y / (|e_x| |e_y|)``, with its Fisher-z CI ``tanh(atanh r -+ z_{1-alpha/2} se)`` and
    p-value ``2 Phi(-|atanh r| / se)``, ``se = 1/sqrt(df - 1)`` (Pearson), so ``p < alpha`` exactly
    when the CI excludes 0 (Fisher 1921; Bakdash & Marusich 2017, Front Psychol 8:456,
    doi:10.3389/fpsyg.2017.00456 for the within-cluster part):

    * ``pooled``: every row one observation (``df = n - 2 - q``, q adjusting parameters);
    * ``within`` (``cluster`` given): the common correlation inside the clusters, ``Z`` = cluster
      indicators (``df = n - k - 1 - q``): does y track x within a tumour model?
    * ``between`` (``cluster`` given): the correlation of the ``k`` cluster means (``df = k - 2 - q``).

    The t test of r, ``t = r sqrt(df/(1 - r^2))``, tests the same null with the same df (exactly, under
    normality); it is not reported beside the Fisher-z CI, because CI and p must come from one method.  A
    Pearson p with ``df = n - 2`` (``scipy.stats.pearsonr``) is the right df for the pooled part only.

    Parameters
    ----------
    data : one row per animal / tumour.
    x, y : numeric column names.
    cluster : the column naming each row's cluster (tumour model, PDX, group), or None.
    adjust : adjusting columns (partial correlation), e.g. ``"group"``.
    level : the part returned as the estimate: ``"pooled"``, ``"within"`` or ``"between"``; default
        ``"within"`` with a ``cluster``, else ``"pooled"``.
    method : ``"pearson"`` or ``"spearman"``.
    alpha : 1 - confidence level.

    Returns
    -------
    Estimate of the ``level`` part: ``estimate`` (r, unitless), ``ci_low``, ``ci_high``, ``p``, ``method``
    and details ``level, n, df, n_clusters, cluster, adjust``, ``parts`` (level -> :class:`Estimate` of
    every part that exists), ``table`` (one row per part) and ``result``
    (the :class:`studylib.stats.DesignCorrelation`).

    Raises
    ------
    ExperimentError
        a missing column, fewer than 4 complete rows, an unknown ``level``, or a ``level`` that is
        not estimable (e.g. ``between`` with fewer than 4 clusters).
    """
    from .. import stats

    need = [x, y] + ([cluster] if cluster else []) + ([adjust] if isinstance(adjust, str) else list(adjust))
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(data.columns)}")
    n_ok = int(data[[x, y]].astype(float).notna().all(axis=1).sum())
    if n_ok < 4:
        raise ExperimentError(f"need at least 4 animals with both '{x}' and '{y}' for a correlation, got {n_ok}")
    level = level or ("within" if cluster else "pooled")
    if level not in _LEVEL_TEXT or (level != "pooled" and cluster is None):
        raise ExperimentError(f"level must be 'pooled', or 'within'/'between' with a cluster column; got "
                              f"level={level!r}, cluster={cluster!r}")
    res = stats.correlation(data, x, y, cluster=cluster, adjust=adjust, method=method, ci=1.0 - alpha)
    adj = list(res.adjust)
    parts = {}
    for part in res.parts():
        if not np.isfinite(part.r):
            continue
        what = _LEVEL_TEXT[part.level].format(cluster=cluster)
        partial = f" partial on {', '.join(adj)}" if adj else ""
        k = f" in {part.n_clusters} clusters" if part.level == "within" else ""
        unit = "cluster means" if part.level == "between" else "rows"
        m = (f"{part.method} r{partial}, {what}, Fisher-z CI and p (df {part.df}), n = {part.n} {unit}{k}")
        parts[part.level] = _estimate(estimate=part.r, ci_low=part.ci_low, ci_high=part.ci_high, p=part.p, method=m,
                                      level=part.level, n=int(part.n), df=int(part.df), n_clusters=part.n_clusters,
                                      cluster=cluster, adjust=tuple(adj), note=part.note)
    if level not in parts:
        part = getattr(res, level)
        raise ExperimentError(f"the {level} correlation of '{x}' and '{y}' is not estimable: {part.note}")
    chosen = parts[level]
    return _estimate(estimate=chosen.estimate, ci_low=chosen.ci_low, ci_high=chosen.ci_high, p=chosen.p,
                     method=chosen.method, **dict(chosen.details), parts=MappingProxyType(parts), table=res.table(),
                     result=res)


def partial_regression_effect(data: pd.DataFrame, y: str, x: str, covariates: Sequence[str] | str, *,
                              alpha: float = 0.05) -> Estimate:
    """Does ``x`` explain ``y`` beyond ``covariates``?  The partial correlation from one OLS t test.

    ``y = b0 + b x + sum_j g_j c_j + e`` (:func:`studylib.stats.partial_regression`); the estimate is the
    partial correlation ``r = t / sqrt(t^2 + df)`` of x and y given the covariates, ``df = n - rank(X)``,
    with its exact normal-theory CI (which excludes 0 exactly when the t test's ``p < alpha``; Anderson
    2003, *An Introduction to Multivariate Statistical Analysis*, sec. 4.3).

    Returns
    -------
    Estimate: ``estimate`` (partial r), ``ci_low``, ``ci_high``, ``p``, ``method``; details ``coef, coef_ci_low,
    coef_ci_high`` (units of y per unit of x), ``df, n, r2_full, r2_reduced, delta_r2, covariates`` and ``result``.
    """
    from .. import stats

    covs = (covariates,) if isinstance(covariates, str) else tuple(covariates)
    missing = [c for c in (y, x, *covs) if c not in data.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(data.columns)}")
    res = stats.partial_regression(data, y, x, covs, ci=1.0 - alpha)
    method = (f"partial r of {x} and {y} given {', '.join(covs)} (OLS t test, df {res.df}; exact CI), "
              f"n = {res.n}")
    return _estimate(estimate=res.partial_r, ci_low=res.partial_r_ci_low, ci_high=res.partial_r_ci_high, p=res.p,
                     method=method, coef=res.coef, coef_ci_low=res.ci_low, coef_ci_high=res.ci_high, df=int(res.df),
                     n=int(res.n), r2_full=res.r2_full, r2_reduced=res.r2_reduced, delta_r2=res.delta_r2,
                     covariates=covs, result=res)


def regression_slope(data: pd.DataFrame, x: str, y: str, *, x_scale: float = 1.0, covariates: Sequence[str] = (),
                     alpha: float = 0.05) -> Estimate:
    """OLS slope of ``y`` on ``x * x_scale`` with its t-based CI (one row per animal).

    ``y = a + b x + e`` (``n - 2`` df); with ``covariates`` (e.g. the tumour model) ``y = a + b x + sum_j g_j c_j
    + e``, categorical covariates as indicator columns, ``df = n - rank(X)``: with the tumour model among them
    ``b`` is the common slope *within* a model (the ANCOVA slope, the slope of the repeated-measures correlation;
    Bakdash & Marusich 2017), free of the differences between the models' means.  SE from the residual variance
    (:func:`studylib.stats.partial_regression`).  Details ``df, n_animals, covariates`` and ``scope`` (``""``, or
    ``" within <covariates>"`` for a finding's text).
    """
    covs = (covariates,) if isinstance(covariates, str) else tuple(covariates)
    missing = [c for c in (x, y, *covs) if c not in data.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(data.columns)}")
    d = data[[x, y]].astype(float).join(data[list(covs)]).dropna()
    if len(d) < 4:
        raise ExperimentError(f"need at least 4 animals with both '{x}' and '{y}' for a regression, got {len(d)}")
    if not covs:
        import statsmodels.api as sm

        X = sm.add_constant(d[x].to_numpy() * x_scale)
        res = sm.OLS(d[y].to_numpy(), X).fit()
        lo, hi = res.conf_int(alpha)[1]
        return _estimate(estimate=res.params[1], ci_low=lo, ci_high=hi, p=res.pvalues[1], df=float(res.df_resid),
                         n_animals=len(d), covariates=(), scope="",
                         method=f"OLS slope, t with {int(res.df_resid)} df, n = {len(d)}")
    from .. import stats

    res = stats.partial_regression(d.assign(**{x: d[x] * x_scale}), y, x, covs, ci=1.0 - alpha)
    return _estimate(estimate=res.coef, ci_low=res.ci_low, ci_high=res.ci_high, p=res.p, df=float(res.df),
                     n_animals=int(res.n), covariates=covs, scope=f" within {' x '.join(covs)}",
                     method=f"OLS slope adjusted for {', '.join(covs)} (common slope within each level of a "
                            f"categorical covariate), t with {res.df} df, n = {res.n}")


def group_difference(table: pd.DataFrame, y: str, *, control: str, treated: str, group_col: str = "group",
                     alpha: float = 0.05) -> Estimate:
    """Welch two-sample t-test of ``y`` (one row per animal), treated minus control, with its CI.

    ``t = (m_T - m_C) / sqrt(s_T^2/n_T + s_C^2/n_C)`` with Welch-Satterthwaite df
    (Welch, Biometrika 1947;34:28, doi:10.1093/biomet/34.1-2.28).
    """
    from scipy import stats as sps

    for c in (y, group_col):
        if c not in table.columns:
            raise ExperimentError(f"table lacks column '{c}'; it has {list(table.columns)}")
    a = table.loc[table[group_col] == treated, y].astype(float).dropna().to_numpy()
    b = table.loc[table[group_col] == control, y].astype(float).dropna().to_numpy()
    if len(a) < 2 or len(b) < 2:
        raise ExperimentError(f"need at least 2 animals per group for '{y}': {treated} has {len(a)}, "
                              f"{control} has {len(b)}")
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=1 - alpha)
    return _estimate(estimate=a.mean() - b.mean(), ci_low=ci.low, ci_high=ci.high,
                     p=res.pvalue, df=float(res.df), n_animals=len(a) + len(b),
                method=f"Welch t-test, df {float(res.df):.1f}, n = {len(a)} + {len(b)}")



#: the headline numbers :func:`effect_power` results are recorded under (``sl.record(..., **power["numbers"])``),
#: read back by the report's ARRIVE "sample size" item (:mod:`studylib.workbook.animals`)
POWER_KEYS = ("power_observed", "power_observed_ci_low", "power_observed_ci_high", "power_observed_effect",
              "power_sesoi", "power_sesoi_ci_low", "power_sesoi_ci_high", "power_sesoi_effect", "power_alpha",
              "power_n_sim", "power_units", "power_method")


def effect_power(effect: Mapping, *, smallest_effect: float | None = None, n_sim: int = 300, seed: int = 0,
                 units: str = "", alpha: float = 0.05) -> dict:
    """Power of the design behind ``effect`` (a :func:`longitudinal_effect`), from a simulation of its fitted model.

    Two numbers, never a prospective sample-size justification (which must be made before the data):

    * **post-hoc power for the observed effect**: the fitted model, with its own design (the same animals,
      sessions and covariates), simulated ``n_sim`` times with the treatment coefficient equal to the
      estimate, each study refitted and tested like the original
      (:func:`studylib.stats.fitted_design_power`).  It is a monotone function of the observed p (about 0.5
      when p = alpha) and adds no evidence (Hoenig & Heisey, Am Stat 2001;55:19,
      doi:10.1198/000313001300339897); it is reported because ARRIVE asks how sensitive the design was.
    * **power for the smallest effect of interest** (``smallest_effect``, in the effect's units, the sign
      taken from the estimate), when the study declares one: the same simulation with that true effect.

    An effect fitted by ordinary least squares (ANCOVA with one session after baseline) uses the exact
    noncentral-t power (:func:`studylib.stats.t_test_power`) instead of a simulation.  A
    :func:`correlation_effect` (a correlation as the primary endpoint) uses the power of its own Fisher-z test at
    its part's df for a true r equal to the observed one (and to ``smallest_effect``, an r):
    :func:`studylib.stats.fisher_power`.

    Returns
    -------
    dict ``observed`` and ``sesoi`` (:class:`studylib.stats.DesignPower` or None), ``numbers`` (the
    :data:`POWER_KEYS` present, scalars for :func:`studylib.analysis.record`) and ``text`` (one paragraph).
    """
    from .. import stats

    # a correlation_effect result, or one of its parts (an Estimate with a level and a df, no fitted model)
    corr = isinstance(effect, Mapping) and "model" not in effect and effect.get("level") in _LEVEL_TEXT \
        and "df" in effect
    if not corr and (not isinstance(effect, Mapping) or "model" not in effect or "term" not in effect):
        raise ExperimentError("effect_power needs a longitudinal_effect result (with its fitted 'model' and 'term') "
                              "or a correlation_effect result")
    if corr and smallest_effect is not None and not abs(smallest_effect) < 1:
        raise ExperimentError(f"smallest_effect of a correlation must be an r in (-1, 1), got {smallest_effect!r}")
    if effect.get("by"):
        raise ExperimentError("effect_power: pass the single treatment effect, not the interaction (by=...)")
    if smallest_effect is not None and not (np.isfinite(smallest_effect) and smallest_effect != 0):
        raise ExperimentError(f"smallest_effect must be a finite non-zero number, got {smallest_effect!r}")
    model, term = effect.get("model"), effect.get("term")
    sesoi = None if smallest_effect is None else math.copysign(abs(float(smallest_effect)), effect["estimate"])

    def one(value):
        if corr:
            how = "spearman" if str(effect["method"]).lower().startswith("spearman") else "pearson"
            return stats.fisher_power(float(value), float(effect["df"]), alpha=alpha, method=how)
        if isinstance(model, _OLSFit):
            row = model.fixed.loc[term]
            return stats.t_test_power(float(value), float(row["se"]), float(row["df"]), alpha=alpha)
        return stats.fitted_design_power(model, term, effect=float(value), n_sim=n_sim, alpha=alpha, seed=seed)

    obs = one(effect["estimate"])
    low = one(sesoi) if sesoi is not None else None
    nums = {"power_observed": obs.power, "power_observed_ci_low": obs.ci_low, "power_observed_ci_high": obs.ci_high,
            "power_observed_effect": obs.effect, "power_alpha": alpha, "power_n_sim": obs.n_sim,
            "power_units": units, "power_method": obs.method}
    u = f" {units}" if units else ""
    ci = (f" (95 % CI {obs.ci_low:.2f}-{obs.ci_high:.2f} over {obs.n_sim} simulated studies)" if obs.n_sim
          else "")  # computed, not simulated: the method (exact noncentral t, Fisher z) follows
    text = (f"Post-hoc power of this design for the observed effect ({obs.effect:.3g}{u}) at alpha = {alpha:g}: "
            f"{obs.power:.2f}{ci}; {obs.method}. This is a function of the observed p-value, not a prospective "
            "sample-size justification.")
    if low is not None:
        nums.update(power_sesoi=low.power, power_sesoi_ci_low=low.ci_low, power_sesoi_ci_high=low.ci_high,
                    power_sesoi_effect=low.effect)
        text += (f" Power for the declared smallest effect of interest ({low.effect:.3g}{u}): {low.power:.2f}"
                 + (f" ({low.ci_low:.2f}-{low.ci_high:.2f})" if low.n_sim else "") + ".")
    else:
        text += " No smallest effect of interest is declared, so no power for it is given."
    return {"observed": obs, "sesoi": low, "numbers": nums, "text": text}


def primary_correlation_power(corr: Mapping, primary_endpoint: str, *, smallest_effect: float | None = None,
                              alpha: float = 0.05) -> dict:
    """:func:`effect_power` of the correlation part a notebook's primary endpoint reports (ARRIVE item 2).

    ``corr`` is a clustered :func:`correlation_effect` result; the part is the one row ``primary_endpoint`` of
    :func:`studylib.analysis.correlation_part_rows` reports (within, pooled or between).  Returns the
    :func:`effect_power` dict, or ``{"numbers": {}, "text": ...}`` saying why no power was computed (the primary is
    no correlation row, or its part was not estimable).
    """
    from .conclusions import correlation_part

    part = correlation_part(corr, primary_endpoint)
    if part is None:
        return {"numbers": {}, "text": f"No power computed: the primary endpoint {primary_endpoint!r} is not an "
                                       f"estimable correlation part."}
    return effect_power(part, smallest_effect=smallest_effect, alpha=alpha)

