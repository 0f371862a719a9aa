"""Design-aware correlation (pooled, within-cluster, between-cluster, partial) and partial regression.

Imaging-vs-histology correlations pool tumours from several tumour models or treatment groups whose
means differ; most of a pooled r can then be the difference between clusters.  :func:`correlation`
reports three answers side by side, each with a CI and a p-value from **one** method, so that
``p < 1 - ci`` exactly when the CI excludes 0:

* ``pooled`` -- every row one observation (optionally partial, adjusted for ``adjust``);
* ``within`` -- the common within-cluster correlation (repeated-measures correlation, Bakdash &
  Marusich 2017): x and y residualised on cluster indicators (and ``adjust``);
* ``between`` -- the correlation of the cluster means.

:func:`partial_regression` answers "does x explain y beyond the covariates": OLS with the t test of
the x coefficient and the partial r, whose exact CI is consistent with that same t test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .common import StatsFitWarning, StatsInputError, require_columns

__all__ = ["CorrelationPart", "DesignCorrelation", "correlation", "PartialRegressionResult", "partial_regression",
           "fisher_interval"]

_R_MAX = 1.0 - 1e-12  # |r| is clipped here before atanh so a perfect fit gives a finite z


# ---------------------------------------------------------------------- records
@dataclass(frozen=True)
class CorrelationPart:
    """One correlation (pooled, within- or between-cluster) with its Fisher-z CI and p-value.

    Attributes
    ----------
    level : ``"pooled"``, ``"within"`` or ``"between"``.
    method : ``"pearson"`` or ``"spearman"``.
    r : the (partial) correlation; NaN when the part cannot be estimated (see ``note``).
    ci_low, ci_high : ``tanh(atanh r -+ z_{(1+ci)/2} se)``.
    p : two-sided ``2 Phi(-|atanh r| / se)`` -- the same normal approximation as the CI.
    df : residual degrees of freedom of the t test of r, ``n - 1 - rank(Z)`` with ``Z`` the
        adjusting design including the intercept (``n - 2`` pooled, ``N - k - 1`` within,
        ``k - 2`` between, each minus the number of adjusting parameters).
    n : observations used (clusters for ``between``).
    n_clusters : clusters used (``None`` for an unclustered pooled part).
    n_adjust : adjusting parameters beyond the intercept (``rank(Z) - 1``).
    se_z : standard error of ``atanh r``: ``1/sqrt(df - 1)`` (Pearson) or
        ``sqrt((1 + r^2/2)/(df - 1))`` (Spearman, Bonett & Wright 2000).
    ci : the confidence level.
    note : why a part is NaN, or what was left out (single-observation clusters).
    """

    level: str
    method: str
    r: float
    ci_low: float
    ci_high: float
    p: float
    df: int
    n: int
    n_clusters: int | None
    n_adjust: int
    se_z: float
    ci: float
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DesignCorrelation:
    """Result of :func:`correlation`: ``pooled`` always, ``within`` and ``between`` when ``cluster`` is given."""

    x: str
    y: str
    method: str
    ci: float
    cluster: str | None
    adjust: tuple
    pooled: CorrelationPart
    within: CorrelationPart | None
    between: CorrelationPart | None
    n_dropped: int

    def parts(self) -> tuple:
        """The parts that exist, in the order pooled, within, between."""
        return tuple(p for p in (self.pooled, self.within, self.between) if p is not None)

    def table(self) -> pd.DataFrame:
        """One row per part: ``level, method, r, ci_low, ci_high, p, df, n, n_clusters, n_adjust, se_z, ci, note``."""
        return pd.DataFrame([p.as_dict() for p in self.parts()])


# ---------------------------------------------------------------------- Fisher z
def fisher_interval(r, df, *, ci: float = 0.95, method: str = "pearson"):
    """Fisher-z confidence interval and p-value of a (partial) correlation, one method for both.

    ``z = atanh(r)``, ``se = 1/sqrt(df - 1)`` (Pearson; ``df - 1 = n - 3 - q`` for a partial
    correlation on ``q`` adjusting parameters), or ``se = sqrt((1 + r^2/2)/(df - 1))`` for
    Spearman (Bonett & Wright 2000, Psychometrika 65:23, doi:10.1007/BF02294183), where a perfect
    ``|r_s| = 1`` is transformed as the largest attainable value below 1, ``1 - 12/(m(m^2 - 1))``,
    ``m = df + 2`` (it has probability ``1/m!`` under independence; ``atanh 1`` would give p = 0);
    the CI always contains r;
    ``CI = tanh(z -+ z_{(1+ci)/2} se)``, ``p = 2 Phi(-|z|/se)``.  Hence ``p < 1 - ci`` exactly
    when the CI excludes 0 (Fisher 1921, Metron 1:3).

    Parameters
    ----------
    r : float or array, the correlation(s).
    df : int or array, residual degrees of freedom of the t test of r (``n - 2 - q``); needs ``df >= 2``.
    ci : confidence level in (0, 1).
    method : ``"pearson"`` or ``"spearman"``.

    Returns
    -------
    (ci_low, ci_high, p, se_z), each shaped like ``np.broadcast(r, df)``.

    Examples
    --------
    >>> lo, hi, p, se = fisher_interval(0.5, 18)      # n = 20
    >>> round(float(lo), 3), round(float(hi), 3), round(float(p), 4)
    (0.074, 0.772, 0.0235)
    """
    r = np.asarray(r, dtype=float)
    df = np.asarray(df, dtype=float)
    if np.any(df < 2):
        raise StatsInputError(f"a Fisher-z interval needs df >= 2 (n - 3 - q >= 1), got df = {df.min():g}")
    if method == "spearman":
        # |r_s| = 1 has probability 1/n! under independence, not 0: transform it as the largest attainable
        # |r_s| below 1 (one adjacent swap, sum d^2 = 2) of m = df + 2 ranks, so p stays finite and sane
        m = df + 2.0
        rmax = 1.0 - 12.0 / (m * (m * m - 1.0))
    else:
        rmax = _R_MAX
    rz = np.clip(r, -rmax, rmax)
    zr = np.arctanh(rz)
    se = np.sqrt((1.0 + rz * rz / 2.0 if method == "spearman" else 1.0) / (df - 1.0))
    zc = stats.norm.ppf(0.5 + ci / 2.0)
    p = 2.0 * stats.norm.sf(np.abs(zr) / se)
    lo, hi = np.minimum(np.tanh(zr - zc * se), r), np.maximum(np.tanh(zr + zc * se), r)
    # the same inequality |z|/se > z_c decides both; settle a last-ulp tie in favour of p
    tiny = np.nextafter(0.0, 1.0)
    rej = p < 1.0 - ci
    lo = np.where(rej & (zr > 0), np.maximum(lo, tiny), np.where(rej, lo, np.minimum(lo, 0.0)))
    hi = np.where(rej & (zr < 0), np.minimum(hi, -tiny), np.where(rej, hi, np.maximum(hi, 0.0)))
    return lo, hi, p, se


# ---------------------------------------------------------------------- input handling
def _as_names(cols, what: str) -> tuple:
    if cols is None:
        return ()
    if isinstance(cols, str):
        return (cols,)
    cols = tuple(cols)
    if not all(isinstance(c, str) for c in cols):
        raise StatsInputError(f"{what} must be column names, got {cols!r}")
    return cols


def _numeric(s: pd.Series, col: str, role: str) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)):
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        example = f" (e.g. {bad.iloc[0]!r})" if len(bad) else ""
        raise StatsInputError(f"{role} column '{col}' is not numeric: dtype {s.dtype}{example}")
    v = s.to_numpy(dtype=float)
    if np.isinf(v).any():
        rows = list(s.index[np.isinf(v)][:5])
        raise StatsInputError(f"{role} column '{col}' has {int(np.isinf(v).sum())} infinite value(s) (rows {rows}); "
                              "a missing value must be NaN, an infinite one is an upstream error")
    return v


def _is_categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) \
        or isinstance(s.dtype, pd.CategoricalDtype)


def _frame(data, x: str, y: str, cluster, adjust, what: str):
    """Complete rows of x, y, cluster and the adjusters; numeric adjusters as float, the others as strings."""
    adjust = _as_names(adjust, "adjust")
    if cluster is not None and not isinstance(cluster, str):
        raise StatsInputError(f"cluster must be a column name or None, got {cluster!r}")
    if cluster is not None and cluster in adjust:
        raise StatsInputError(f"cluster column '{cluster}' is also in adjust; the within part already adjusts for it")
    for role, c in (("x", x), ("y", y)):
        if not isinstance(c, str):
            raise StatsInputError(f"{role} must be a column name, got {c!r}")
        if c in adjust or c == cluster:
            raise StatsInputError(f"column '{c}' is both {role} and a cluster/adjusting column")
    require_columns(data, [x, y, *adjust] + ([cluster] if cluster else []), what=what)
    out = {"x": _numeric(data[x], x, "x"), "y": _numeric(data[y], y, "y")}
    ok = np.isfinite(out["x"]) & np.isfinite(out["y"])
    cat = []
    for i, a in enumerate(adjust):
        s = data[a]
        if _is_categorical(s):
            out[f"a{i}"] = s.astype(object).where(s.notna(), None).to_numpy()
            ok &= s.notna().to_numpy()
            cat.append(True)
        else:
            v = _numeric(s, a, "adjust")
            out[f"a{i}"] = v
            ok &= np.isfinite(v)
            cat.append(False)
    if cluster is not None:
        out["c"] = data[cluster].to_numpy()
        ok &= data[cluster].notna().to_numpy()
    df = pd.DataFrame(out)[ok].reset_index(drop=True)
    return df, adjust, cat, int((~ok).sum())


def _rank_within(v: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        return stats.rankdata(v)
    return pd.Series(v).groupby(pd.Series(groups)).rank(method="average").to_numpy()


def _design(df: pd.DataFrame, cat: list, *, spearman: bool, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Adjusting columns (no intercept): numeric as is (ranked for Spearman, within ``groups`` if given),
    categorical as full indicator sets.  Returns the matrix and a mask of its numeric columns."""
    cols, numeric = [], []
    for i, is_cat in enumerate(cat):
        v = df[f"a{i}"].to_numpy()
        if is_cat:
            dm = pd.get_dummies(pd.Series(v).astype(str)).to_numpy(dtype=float)
            cols.append(dm)
            numeric += [False] * dm.shape[1]
        else:
            cols.append((_rank_within(v, groups) if spearman else v.astype(float))[:, None])
            numeric.append(True)
    return (np.hstack(cols) if cols else np.empty((len(df), 0))), np.array(numeric, dtype=bool)


def _partial(x: np.ndarray, y: np.ndarray, Z: np.ndarray):
    """Correlation of the residuals of x and y on ``Z`` (which spans the intercept); ``(r, rank Z, sxx, syy)``."""
    rank = int(np.linalg.matrix_rank(Z))
    beta, *_ = np.linalg.lstsq(Z, np.column_stack([x, y]), rcond=None)
    e = np.column_stack([x, y]) - Z @ beta
    sxx, syy = float(e[:, 0] @ e[:, 0]), float(e[:, 1] @ e[:, 1])
    tiny = 1e-20 * max(float(x @ x), 1e-300), 1e-20 * max(float(y @ y), 1e-300)
    if sxx <= tiny[0] or syy <= tiny[1]:
        return math.nan, rank, sxx, syy
    r = float(e[:, 0] @ e[:, 1]) / math.sqrt(sxx * syy)
    return min(max(r, -1.0), 1.0), rank, sxx, syy


def _part(level, method, ci, x, y, Z, *, n_clusters, what_varies, note=""):
    n = len(x)
    r, rank, sxx, syy = _partial(x, y, Z)
    dof = n - 1 - rank
    nan = dict(level=level, method=method, r=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan,
               df=int(dof), n=n, n_clusters=n_clusters, n_adjust=rank - 1, se_z=math.nan, ci=ci)
    if dof < 2:
        why = (f"{n} {what_varies} leave df = {dof} after {rank} fitted parameter(s); a Fisher-z interval needs "
               "df >= 2")
        return CorrelationPart(**nan, note="; ".join(s for s in (note, why) if s))
    if not np.isfinite(r):
        why = f"'{'x' if sxx <= syy else 'y'}' has no variation left after adjusting ({what_varies})"
        return CorrelationPart(**nan, note="; ".join(s for s in (note, why) if s))
    lo, hi, p, se = fisher_interval(r, dof, ci=ci, method=method)
    return CorrelationPart(level, method, r, float(lo), float(hi), float(p), int(dof), n, n_clusters, rank - 1,
                           float(se), ci, note)


# ---------------------------------------------------------------------- correlation
def correlation(data: pd.DataFrame, x: str, y: str, *, cluster: str | None = None, adjust: Sequence[str] | str = (),
                method: str = "pearson", ci: float = 0.95) -> DesignCorrelation:
    """Design-aware correlation of two columns: pooled, within clusters and between cluster means.

    Each part is the correlation of the residuals of x and y after least-squares projection on
    an adjusting design ``Z`` (always containing the intercept)::

        r = sum(e_x e_y) / sqrt(sum e_x^2 sum e_y^2),   e = (I - Z Z^+) v
        df = n - 1 - rank(Z)

    * ``pooled``: ``Z = [1, adjust]`` over all rows; without ``adjust`` this is Pearson's r,
      ``df = n - 2``; with it the partial correlation, ``df = n - 2 - q``.
    * ``within`` (``cluster`` given): ``Z = [cluster indicators, adjust]``; the repeated-measures
      correlation of Bakdash & Marusich 2017 (Front Psychol 8:456, doi:10.3389/fpsyg.2017.00456),
      i.e. the common slope of the ANCOVA ``y ~ cluster + x``, ``df = N - k - 1 - q``.
    * ``between`` (``cluster`` given): the correlation of the ``k`` cluster means of x and y
      (unweighted, each cluster one point), partial on the cluster means of the adjusting columns
      (dummies become proportions), ``df = k - 2 - q``.

    CI and p of every part come from the Fisher z transform with that part's df
    (see :func:`fisher_interval`): ``se = 1/sqrt(df - 1)``, which is the ``1/sqrt(n - 3)`` of
    the ordinary interval for a simple correlation and the exact-df analogue for partial and
    within-cluster ones (a partial r on q parameters is distributed as a simple r on
    ``n - q`` observations; Anderson 2003, *An Introduction to Multivariate Statistical
    Analysis*, 3rd ed., sec. 4.3).  Therefore ``p < 1 - ci`` exactly when the CI excludes 0.

    Parameters
    ----------
    data : one row per observation (tumour, animal, region ...).
    x, y : numeric column names.
    cluster : column naming the cluster of each row (tumour model, group, animal), or None.
    adjust : adjusting columns: numeric ones enter linearly, the others (strings, categories,
        booleans) as indicator columns; each costs its rank in degrees of freedom.
    method : ``"pearson"`` or ``"spearman"``.  Spearman ranks x, y and the numeric adjusters over
        all rows (pooled), within each cluster (within) or across cluster means (between), then
        proceeds as Pearson with the Bonett-Wright variance ``(1 + r^2/2)/(df - 1)`` of ``atanh r``
        (an approximation, good for ``|rho| < 0.9``).
    ci : confidence level; the test level is ``alpha = 1 - ci``.

    Returns
    -------
    DesignCorrelation with ``pooled``, ``within``, ``between`` (:class:`CorrelationPart`; the last
    two None without ``cluster``) and ``n_dropped`` (rows with NaN in any used column).

    Notes
    -----
    **Fisher-z p and t-test p.**  The t test of r, ``t = r sqrt(df/(1 - r^2))`` with ``df`` t degrees of
    freedom, is exact under normality for every part (a partial or within-cluster r with its own ``df``,
    Anderson 2003, sec. 4.3); the Fisher-z p here is its normal approximation with the same ``df``.  They test
    the same null (rho = 0) but are different numbers (e.g. p 0.0022 vs 0.0028 for r = 0.59, n = 24), so a
    report prints one of them, the one whose CI it prints: here Fisher z for both.  ``scipy.stats.pearsonr``
    (and any "Pearson p" computed on the raw columns) uses ``df = n - 2``, the pooled part's df only: beside a
    within-cluster or partial r (``df = n - k - 1 - q``) it is the wrong test.

    Missing values (NaN/None) drop the row and are counted in ``n_dropped``; an infinite value is an
    error.  A cluster with a single observation keeps its row in ``pooled`` and its mean in
    ``between``; in ``within`` its indicator fits it exactly (residual 0, one df spent), so it is left
    out, which changes neither r nor df, and ``within.note`` says how many were left out.  A part
    whose df is below 2, or where x or y does not vary after adjustment, is returned with NaN
    values, the reason in ``note`` and a :class:`StatsFitWarning`.  ``pooled`` itself must be
    estimable: fewer than 4 complete rows, or a constant x or y, raise :class:`StatsInputError`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> m = np.repeat(np.arange(4.0), 8)                   # 4 tumour models x 8 tumours
    >>> d = pd.DataFrame({"model": m, "x": 2 * m + rng.normal(size=32), "y": 2 * m + rng.normal(size=32)})
    >>> res = correlation(d, "x", "y", cluster="model")
    >>> bool(res.pooled.p < 0.05), res.within.df, res.between.df
    (True, 27, 2)
    """
    method = str(method).lower()
    if method not in ("pearson", "spearman"):
        raise StatsInputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if not (isinstance(ci, (int, float)) and 0 < ci < 1):
        raise StatsInputError(f"ci must be a confidence level in (0, 1), got {ci!r}")
    df, adjust, cat, n_dropped = _frame(data, x, y, cluster, adjust, "correlation")
    n = len(df)
    if n < 4:
        raise StatsInputError(f"correlation of '{x}' and '{y}' needs at least 4 complete rows (Fisher z has "
                              f"se 1/sqrt(n - 3)), got {n}" + (f" ({n_dropped} dropped for missing values)"
                                                               if n_dropped else ""))
    for col, name in (("x", x), ("y", y)):
        if np.ptp(df[col].to_numpy()) == 0:
            raise StatsInputError(f"'{name}' is constant over the {n} complete rows; a correlation is undefined")
    spear = method == "spearman"
    xv, yv = df.x.to_numpy(), df.y.to_numpy()

    # pooled
    Z = np.column_stack([np.ones(n), _design(df, cat, spearman=spear)[0]])
    rx, ry = (stats.rankdata(xv), stats.rankdata(yv)) if spear else (xv, yv)
    pooled = _part("pooled", method, ci, rx, ry, Z, n_clusters=None, what_varies="rows")
    if not np.isfinite(pooled.r):
        raise StatsInputError(f"pooled correlation of '{x}' and '{y}' is not estimable: {pooled.note}")
    within = between = None
    if cluster is not None:
        sizes = df.groupby("c", sort=True).size()
        k = len(sizes)
        # within: clusters of one observation carry no within-cluster information
        single = sizes.index[sizes < 2]
        dw = df[~df.c.isin(single)].reset_index(drop=True)
        note = (f"{len(single)} cluster(s) with a single observation left out of the within part "
                f"({', '.join(map(str, list(single)[:5]))}{', ...' if len(single) > 5 else ''})") if len(single) else ""
        codes = pd.Categorical(dw.c).codes
        kw = int(codes.max()) + 1 if len(dw) else 0
        Zw = np.column_stack([np.eye(kw)[codes] if kw else np.empty((0, 0)),
                              _design(dw, cat, spearman=spear, groups=codes)[0]])
        wx, wy = dw.x.to_numpy(), dw.y.to_numpy()
        if spear:
            wx, wy = _rank_within(wx, codes), _rank_within(wy, codes)
        if kw == 0:
            within = CorrelationPart("within", method, math.nan, math.nan, math.nan, math.nan, 0, 0, 0, 0, math.nan,
                                     ci, note or "no cluster has two observations")
        else:
            within = _part("within", method, ci, wx, wy, Zw, n_clusters=kw,
                           what_varies=f"observations in {kw} clusters", note=note)
        # between: cluster means (dummies averaged to proportions)
        A, numeric = _design(df, cat, spearman=False)
        means = pd.DataFrame(np.column_stack([xv, yv, A])).groupby(df.c.to_numpy(), sort=True).mean().to_numpy()
        bx, by, Ab = means[:, 0], means[:, 1], means[:, 2:]
        if spear:
            bx, by = stats.rankdata(bx), stats.rankdata(by)
            Ab = Ab.copy()
            for j in np.flatnonzero(numeric):  # numeric covariate means ranked, proportions kept
                Ab[:, j] = stats.rankdata(Ab[:, j])
        between = _part("between", method, ci, bx, by, np.column_stack([np.ones(k), Ab]), n_clusters=k,
                        what_varies="cluster means")
        for part in (within, between):
            if not np.isfinite(part.r):
                warnings.warn(StatsFitWarning(f"correlation('{x}', '{y}', cluster='{cluster}'): {part.level} part "
                                              f"not estimable: {part.note}"), stacklevel=2)
    return DesignCorrelation(x, y, method, float(ci), cluster, adjust, pooled, within, between, n_dropped)


# ---------------------------------------------------------------------- partial regression
@dataclass(frozen=True)
class PartialRegressionResult:
    """OLS ``y ~ 1 + x + covariates``: the x coefficient and the partial correlation, one t test for both.

    Attributes
    ----------
    coef, se, t, df, p, ci_low, ci_high : the x coefficient (units of y per unit of x), its
        standard error, ``t = coef/se`` with ``df = n - rank(X)``, the two-sided p and the t CI.
    partial_r, partial_r_ci_low, partial_r_ci_high : ``r = t/sqrt(t^2 + df)`` and its exact
        normal-theory CI, which excludes 0 exactly when ``p < 1 - ci``.
    r2_full, r2_reduced, delta_r2 : R^2 with and without x (``delta_r2 = partial_r^2 (1 - r2_reduced)``).
    coefficients : every coefficient of the full model (``term, coef, se, t, p, ci_low, ci_high``).
    """

    y: str
    x: str
    covariates: tuple
    coef: float
    se: float
    t: float
    df: int
    p: float
    ci_low: float
    ci_high: float
    partial_r: float
    partial_r_ci_low: float
    partial_r_ci_high: float
    r2_full: float
    r2_reduced: float
    delta_r2: float
    n: int
    n_dropped: int
    ci: float
    coefficients: pd.DataFrame

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("coefficients")
        return d


def _r_cdf(r0: float, rho: float, dof: int, w: np.ndarray) -> float:
    """``P(R <= r0 | rho)`` for a sample (partial) correlation whose t test has ``dof`` df.

    Conditional on the regressor, ``T = R sqrt(dof/(1 - R^2))`` is noncentral t with ``dof`` df and
    noncentrality ``rho/sqrt(1 - rho^2) sqrt(W)``, ``W ~ chi^2_{dof+1}``; ``w`` are equal-probability
    nodes of ``W`` (midpoint rule in probability).
    """
    t0 = r0 * math.sqrt(dof / max(1.0 - r0 * r0, 1e-300))
    if rho == 0.0:
        return float(stats.t.cdf(t0, dof))
    nc = rho / math.sqrt(1.0 - rho * rho) * np.sqrt(w)
    v = stats.nct.cdf(t0, dof, nc)
    bad = np.isnan(v)  # scipy underflows to NaN when t0 and nc have opposite signs: the cdf is ~0 or ~1 there
    v[bad] = (t0 > nc[bad]).astype(float)
    return float(np.mean(v))


def _exact_r_interval(r: float, dof: int, ci: float, p: float) -> tuple[float, float]:
    """Exact CI of a (partial) correlation by inverting its normal-theory distribution in rho.

    The bound ``rho_lo`` solves ``P(R <= r | rho_lo) = (1 + ci)/2`` and ``rho_hi`` solves ``= (1 - ci)/2``
    (the CDF decreases in rho).  At ``rho = 0`` this distribution is the t test's, so a bound crosses 0
    exactly when the t test's ``p`` crosses ``1 - ci``; the side of 0 each bound lies on is taken from
    ``p`` itself, so root-finding tolerance can never make CI and p disagree.
    """
    w = stats.chi2.ppf((np.arange(128) + 0.5) / 128, dof + 1)
    lim = 1.0 - 1e-9
    bounds = []
    for target in ((1 + ci) / 2, (1 - ci) / 2):
        def f(rho, target=target):
            return _r_cdf(r, rho, dof, w) - target
        fa, fb = f(-lim), f(lim)
        if fa <= 0:
            bounds.append(-1.0)
        elif fb >= 0:
            bounds.append(1.0)
        else:
            bounds.append(optimize.brentq(f, -lim, lim, xtol=1e-9))
    lo, hi = bounds
    tiny = np.nextafter(0.0, 1.0)
    if p < 1 - ci:                      # the t test rejects: the CI lies on the side of r
        lo, hi = (max(lo, tiny), hi) if r > 0 else (lo, min(hi, -tiny))
    else:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return float(lo), float(hi)


def partial_regression(data: pd.DataFrame, y: str, x: str, covariates: Sequence[str] | str = (), *,
                       ci: float = 0.95) -> PartialRegressionResult:
    """Does ``x`` explain ``y`` beyond ``covariates``?  OLS with the t test of the x coefficient.

    ``y = b0 + b x + sum_j g_j c_j + e`` fitted by least squares (numeric covariates linearly,
    the others as indicator columns).  ``t = b/se(b)`` with ``df = n - rank(X)``; ``p`` and the CI of
    ``b`` from that t distribution.  The partial correlation of x and y given the covariates is
    ``r = t/sqrt(t^2 + df)`` (the same t test); its CI is exact under multivariate normality: a
    partial r on q covariates is distributed as a simple r on ``n - q`` observations (Anderson 2003,
    sec. 4.3), whose CDF ``P(R <= r | rho) = E_W[F_nct(t_r; df, rho sqrt(W/(1 - rho^2)))]``,
    ``W ~ chi^2_{df+1}``, is inverted in rho.  So ``p < 1 - ci`` exactly when both CIs exclude 0.

    Parameters
    ----------
    data : one row per observation.
    y, x : numeric column names (outcome, regressor of interest).
    covariates : the adjusting columns (e.g. ``("mvd", "ifp")`` or ``"tumour_model"``).
    ci : confidence level.

    Returns
    -------
    PartialRegressionResult (rows with a NaN in a used column are dropped and counted).
    """
    if not (isinstance(ci, (int, float)) and 0 < ci < 1):
        raise StatsInputError(f"ci must be a confidence level in (0, 1), got {ci!r}")
    df, covariates, cat, n_dropped = _frame(data, x, y, None, covariates, "partial_regression")
    n = len(df)
    names, cols = ["intercept", x], [np.ones(n), df.x.to_numpy()]
    for i, (c, is_cat) in enumerate(zip(covariates, cat)):
        v = df[f"a{i}"]
        if is_cat:
            dm = pd.get_dummies(v.astype(str), drop_first=True, prefix=c, prefix_sep="=")
            names += list(dm.columns)
            cols += [dm[k].to_numpy(dtype=float) for k in dm.columns]
        else:
            names.append(c)
            cols.append(v.to_numpy(dtype=float))
    X = np.column_stack(cols)
    yv = df.y.to_numpy()
    p_full = X.shape[1]
    if n <= p_full:
        raise StatsInputError(f"partial_regression of '{y}' on '{x}' + {list(covariates)}: {n} complete rows for "
                              f"{p_full} coefficients leave no residual degrees of freedom")
    if np.linalg.matrix_rank(X) < p_full:
        raise StatsInputError(f"the design of '{y}' ~ '{x}' + {list(covariates)} is rank deficient ('{x}' or a "
                              "covariate is a linear combination of the others)")
    if np.ptp(yv) == 0:
        raise StatsInputError(f"'{y}' is constant over the {n} complete rows")
    dof = n - p_full
    XtX_inv = np.linalg.inv(X.T @ X)
    beta = XtX_inv @ X.T @ yv
    resid = yv - X @ beta
    rss = float(resid @ resid)
    s2 = rss / dof
    se = np.sqrt(np.diag(XtX_inv) * s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        tv = beta / se
    pv = 2 * stats.t.sf(np.abs(tv), dof)
    tq = stats.t.ppf(0.5 + ci / 2, dof)
    coefs = pd.DataFrame({"term": names, "coef": beta, "se": se, "t": tv, "p": pv,
                          "ci_low": beta - tq * se, "ci_high": beta + tq * se})
    Xr = np.delete(X, 1, axis=1)
    br, *_ = np.linalg.lstsq(Xr, yv, rcond=None)
    rss_r = float(((yv - Xr @ br) ** 2).sum())
    tss = float(((yv - yv.mean()) ** 2).sum())
    t1 = float(tv[1])
    pr = t1 / math.sqrt(t1 * t1 + dof) if np.isfinite(t1) else math.copysign(1.0, t1)
    lo, hi = _exact_r_interval(min(max(pr, -_R_MAX), _R_MAX), dof, ci, float(pv[1]))
    return PartialRegressionResult(y, x, covariates, float(beta[1]), float(se[1]), t1, int(dof), float(pv[1]),
                                   float(beta[1] - tq * se[1]), float(beta[1] + tq * se[1]), pr, lo, hi,
                                   1 - rss / tss, 1 - rss_r / tss, (rss_r - rss) / tss, n, n_dropped, float(ci), coefs)
