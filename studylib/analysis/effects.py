"""Step 5 of the flow: effects with their CIs — mixed models over days, correlations, group tests.

Thin facades over :mod:`studylib.stats` in the spirit of statsmodels' formula API: each takes a
table with one row per animal (or animal x day) and column names, checks them, and returns a
frozen :class:`Estimate` (estimate, CI, p, method and the details of the fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ExperimentError

__all__ = ["Estimate", "longitudinal_effect", "model_diagnostics", "correlation_effect", "partial_regression_effect",
           "regression_slope", "group_difference"]


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


def longitudinal_effect(table: pd.DataFrame, y: str, *, control: str, treated: str, at_day: float | None = None,
                        slope: bool = False, day_model: str = "linear", group_col: str = "group",
                        covariates: Sequence[str] = (), ddf: str = "satterthwaite", log: bool = False,
                        unit: str = "animal", alpha: float = 0.05) -> Estimate:
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

    Fitted by :func:`studylib.stats.mixed_model` with small-sample (Satterthwaite by default) df.

    Parameters
    ----------
    table : one row per animal x day with columns ``unit``, ``day``, ``group_col`` and ``y``.
    control, treated : the two group labels compared (other groups are dropped).
    at_day : the day of the difference (default: the last day).
    covariates : extra fixed-effect terms (e.g. ``"C(model)"``).
    log : analyse ``log(y)`` (tumour volume); effects are then differences of logs.

    Returns
    -------
    dict: ``estimate, ci_low, ci_high, p, df, term, at_day, n_animals, formula, model`` (the fit).
    """
    need = [unit, "day", group_col, y]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(table.columns)}")
    if day_model not in ("linear", "categorical"):
        raise ExperimentError(f"day_model must be 'linear' or 'categorical', got {day_model!r}")
    if slope and day_model != "linear":
        raise ExperimentError("slope=True needs day_model='linear'")
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
    days = sorted(d["day"].unique())
    at_day = float(max(days)) if at_day is None else float(at_day)
    if at_day not in [float(x) for x in days] and day_model == "categorical":
        raise ExperimentError(f"at_day {at_day:g} is not an imaging day {[int(x) for x in days]}")
    d["treated"] = (d[group_col] == treated).astype(float)
    d[unit] = d[unit].astype(str)
    yy = f"Q('{y}')" if not y.isidentifier() else y
    if day_model == "linear":
        d["day_c"] = d["day"].astype(float) - at_day
        rhs = ["treated * day_c"]
        re_formula = "~day_c"
    else:
        rhs = ["treated"]
        for k in days:
            if float(k) == at_day:
                continue
            name = f"d{int(k)}" if k >= 0 else f"d_m{int(-k)}"
            d[name] = (d["day"] == k).astype(float)
            rhs += [name, f"treated:{name}"]
        re_formula = "~1"
    formula = f"{yy} ~ " + " + ".join([*rhs, *covariates])
    fit = _mixed_model()(d, formula, groups=unit, re_formula=re_formula, ddf=ddf, ci=1.0 - alpha)
    term = "treated:day_c" if slope else "treated"
    fx = fit.fixed
    if term not in fx.index:
        raise ExperimentError(f"mixed model has no term '{term}' (terms: {list(fx.index)})")
    row = fx.loc[term]
    method = (f"mixed model {formula}, random {re_formula} per animal, {ddf} df "
              f"{float(row['df']):.1f}")
    return _estimate(estimate=row["estimate"], ci_low=row["ci_low"], ci_high=row["ci_high"], p=row["p"],
                     method=method, df=float(row["df"]), term=term, at_day=at_day,
                n_animals=int(d[unit].nunique()), formula=formula, re_formula=re_formula, day_model=day_model,
                ddf=ddf, model=fit)


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


def regression_slope(data: pd.DataFrame, x: str, y: str, *, x_scale: float = 1.0, alpha: float = 0.05) -> Estimate:
    """OLS slope of ``y`` on ``x * x_scale`` with its t-based CI (one row per animal).

    ``y = a + b x + e``; ``b`` with SE from the residual variance, ``n - 2`` df.
    """
    import statsmodels.api as sm

    d = data[[x, y]].astype(float).dropna()
    if len(d) < 4:
        raise ExperimentError(f"need at least 4 animals with both '{x}' and '{y}' for a regression, got {len(d)}")
    X = sm.add_constant(d[x].to_numpy() * x_scale)
    res = sm.OLS(d[y].to_numpy(), X).fit()
    lo, hi = res.conf_int(alpha)[1]
    return _estimate(estimate=res.params[1], ci_low=lo, ci_high=hi, p=res.pvalues[1], df=float(res.df_resid),
                     n_animals=len(d), method=f"OLS slope, t with {int(res.df_resid)} df, n = {len(d)}")


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

