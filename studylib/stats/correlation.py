"""Bootstrap correlation of two arrays, repeated-measures correlation, regression, group tests, slopes.

Every function works on one value per animal (or per animal x region for
:func:`rm_correlation`): the animal, not the voxel, is the unit of analysis.  The design-aware
correlation of two table columns (pooled / within / between clusters, partial, one method for CI
and p) is :func:`studylib.stats.design_correlation.correlation`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .common import StatsInputError, holm, numeric_column, require_columns

__all__ = ["CorrelationResult", "bootstrap_correlation", "RmCorrResult", "rm_correlation", "RegressionResult",
           "regression", "group_compare", "per_animal_slopes", "slope_ttest"]


# ---------------------------------------------------------------------- correlation
def _pearson_rows(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson r of every row pair (last axis = observations); NaN where a row is constant."""
    xc = xs - xs.mean(axis=-1, keepdims=True)
    yc = ys - ys.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / den
    r[~(den > 1e-300)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _corr_rows(xs, ys, method):
    if method == "spearman":
        xs = stats.rankdata(xs, axis=-1)
        ys = stats.rankdata(ys, axis=-1)
    return _pearson_rows(xs, ys)


def _paired(x, y, what=("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    def as_float(v, name):
        s = pd.Series(v) if not isinstance(v, pd.Series) else v
        if not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)):
            raise StatsInputError(f"{name} is not numeric (dtype {s.dtype})")
        return s.to_numpy(dtype=float)

    x, y = as_float(x, what[0]), as_float(y, what[1])
    if x.shape != y.shape or x.ndim != 1:
        raise StatsInputError(f"{what[0]} and {what[1]} must be 1-D and the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


@dataclass(frozen=True)
class CorrelationResult:
    """A correlation coefficient with its test and bootstrap confidence interval."""

    method: str
    r: float
    p: float
    ci_low: float
    ci_high: float
    n: int
    ci: float
    ci_method: str
    n_boot: int
    n_dropped: int

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_correlation(x, y, *, method: str = "pearson", ci: float = 0.95, n_boot: int = 4999,
                          ci_method: str = "bca", seed: int = 0) -> CorrelationResult:
    """Pearson or Spearman correlation of two arrays with a bootstrap confidence interval.

    .. warning:: ``p`` is scipy's t-test p-value, **not** derived from the bootstrap interval: with
       few pairs the two can disagree (a CI covering 0 beside ``p < alpha``).  For a CI and p from
       one method, and for clustered data, use :func:`studylib.stats.correlation` (Fisher z).
       Kept for :func:`studylib.analysis.effects.correlation_effect` until the notebooks move.

    Parameters
    ----------
    x, y : paired values, one per animal (pairs with a NaN are dropped and counted).
    method : ``"pearson"`` or ``"spearman"``; the p-value is scipy's (t distribution with
        ``n-2`` df for Pearson; for Spearman the same t approximation on the ranks).
    ci_method : ``"bca"`` (default), ``"percentile"`` or ``"fisher"`` (analytic
        ``tanh(atanh r -+ z/sqrt(n-3))``; for Spearman with the Fieller et al. 1957
        variance ``1.06/(n-3)``).
    n_boot : pairs bootstrap resamples (rows of ``(x, y)`` drawn with replacement,
        all resamples computed at once); resamples with a constant variable are discarded.
    seed : seed of the bootstrap generator (``numpy.random.default_rng``).

    Notes
    -----
    BCa (Efron 1987, doi:10.1080/01621459.1987.10478410; DiCiccio & Efron 1996,
    doi:10.1214/ss/1032280214): bias ``z0 = Phi^-1(#{r* < r}/B)`` (ties count half),
    acceleration ``a = sum(m - r_(i))^3 / (6 [sum(m - r_(i))^2]^1.5)`` from the jackknife
    ``r_(i)``, interval = the ``Phi(z0 + (z0 + z_a)/(1 - a(z0 + z_a)))`` quantiles of ``r*``.
    The percentile interval uses the plain ``alpha/2`` quantiles.  With fewer than ~20 pairs
    every bootstrap interval for a correlation is somewhat too narrow (coverage a few
    points below nominal); the Fisher interval is the better choice for small normal samples.
    """
    method = str(method).lower()
    if method not in ("pearson", "spearman"):
        raise StatsInputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    ci_method = str(ci_method).lower()
    if ci_method not in ("bca", "percentile", "fisher"):
        raise StatsInputError(f"ci_method must be 'bca', 'percentile' or 'fisher', got {ci_method!r}")
    if not 0 < ci < 1:
        raise StatsInputError(f"ci must be in (0, 1), got {ci!r}")
    n_all = len(x) if hasattr(x, "__len__") else 0
    x, y = _paired(x, y)
    n = len(x)
    if n < 4:
        raise StatsInputError(f"correlation needs at least 4 complete pairs, got {n}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise StatsInputError(f"{'x' if np.ptp(x) == 0 else 'y'} is constant; a correlation is undefined")
    if method == "pearson":
        r, p = stats.pearsonr(x, y)
    else:
        r, p = stats.spearmanr(x, y)
    r, p = float(r), float(p)
    alpha = 1 - ci
    if ci_method == "fisher":
        se = math.sqrt((1.06 if method == "spearman" else 1.0) / (n - 3)) if n > 3 else np.inf
        z = stats.norm.ppf(1 - alpha / 2)
        zr = math.atanh(min(max(r, -0.999999999), 0.999999999))
        lo, hi = math.tanh(zr - z * se), math.tanh(zr + z * se)
        return CorrelationResult(method, r, p, lo, hi, n, ci, ci_method, 0, n_all - n)
    if n_boot < 100:
        raise StatsInputError(f"n_boot must be at least 100 for a bootstrap interval, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    rb = _corr_rows(x[idx], y[idx], method)
    rb = rb[np.isfinite(rb)]
    if rb.size < 0.5 * n_boot:
        raise StatsInputError(f"only {rb.size} of {n_boot} bootstrap resamples had variation in both variables "
                              f"(n = {n}); too few distinct values for a bootstrap interval")
    if ci_method == "percentile":
        lo, hi = np.quantile(rb, [alpha / 2, 1 - alpha / 2])
        return CorrelationResult(method, r, p, float(lo), float(hi), n, ci, ci_method, int(rb.size), n_all - n)
    prop = (np.sum(rb < r) + 0.5 * np.sum(rb == r)) / rb.size
    prop = min(max(prop, 0.5 / rb.size), 1 - 0.5 / rb.size)
    z0 = stats.norm.ppf(prop)
    keep = np.ones((n, n), dtype=bool)
    np.fill_diagonal(keep, False)
    jidx = np.broadcast_to(np.arange(n), (n, n))[keep].reshape(n, n - 1)
    rj = _corr_rows(x[jidx], y[jidx], method)
    rj = rj[np.isfinite(rj)]
    dm = rj.mean() - rj
    den = 6.0 * (np.sum(dm ** 2)) ** 1.5
    a = float(np.sum(dm ** 3) / den) if den > 0 else 0.0
    zq = stats.norm.ppf([alpha / 2, 1 - alpha / 2])
    adj = stats.norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))
    lo, hi = np.quantile(rb, adj)
    return CorrelationResult(method, r, p, float(lo), float(hi), n, ci, ci_method, int(rb.size), n_all - n)


# ---------------------------------------------------------------------- rmcorr
@dataclass(frozen=True)
class RmCorrResult:
    """Repeated-measures correlation (common within-animal association)."""

    r: float
    slope: float
    df: int
    p: float
    ci_low: float
    ci_high: float
    n_obs: int
    n_subjects: int
    ci: float

    def as_dict(self) -> dict:
        return asdict(self)


def rm_correlation(data: pd.DataFrame, x: str, y: str, subject: str = "animal", *, ci: float = 0.95) -> RmCorrResult:
    """Repeated-measures correlation (Bakdash & Marusich 2017, doi:10.3389/fpsyg.2017.00456).

    For animals contributing several tumours/regions/sessions: the ANCOVA ``y ~ subject + x``
    with one common slope.  Equivalently, the Pearson correlation of the subject-mean-centred
    values: ``r_rm = sum(x~ y~) / sqrt(sum x~^2 sum y~^2)``, ``x~ = x - mean_subject(x)``.
    ``df = N - k - 1`` (``N`` observations, ``k`` animals), ``t = r sqrt(df / (1 - r^2))``.
    CI: Fisher ``tanh(atanh r -+ z / sqrt(df - 1))`` (the ordinary Pearson interval with
    ``n - 3 = df - 1``), as the ``rmcorr`` R package computes it.
    """
    require_columns(data, [x, y, subject], what="rm_correlation")
    xv = numeric_column(data, x, role="x")
    yv = numeric_column(data, y, role="y")
    ok = np.isfinite(xv) & np.isfinite(yv) & data[subject].notna().to_numpy()
    df = pd.DataFrame({"s": data[subject].to_numpy()[ok], "x": xv[ok], "y": yv[ok]})
    k = df.s.nunique()
    N = len(df)
    dof = N - k - 1
    if k < 2 or dof < 2:
        raise StatsInputError(f"rm_correlation needs repeated observations: {N} rows from {k} subjects leave "
                              f"{dof} degrees of freedom (need >= 2)")
    xc = df.x - df.groupby("s").x.transform("mean")
    yc = df.y - df.groupby("s").y.transform("mean")
    sxx, syy, sxy = float((xc * xc).sum()), float((yc * yc).sum()), float((xc * yc).sum())
    if sxx <= 0 or syy <= 0:
        raise StatsInputError(f"'{x if sxx <= 0 else y}' does not vary within any subject; no within-subject "
                              "correlation to estimate")
    r = sxy / math.sqrt(sxx * syy)
    r = min(max(r, -1.0), 1.0)
    t = r * math.sqrt(dof / max(1 - r * r, 1e-300))
    p = float(2 * stats.t.sf(abs(t), dof))
    z = stats.norm.ppf(0.5 + ci / 2)
    zr = math.atanh(min(max(r, -0.999999999), 0.999999999))
    se = 1 / math.sqrt(dof - 1)
    return RmCorrResult(r, sxy / sxx, dof, p, math.tanh(zr - z * se), math.tanh(zr + z * se), N, k, ci)


# ---------------------------------------------------------------------- regression
@dataclass
class RegressionResult:
    """Ordinary least squares ``y = a + b x`` with a confidence band for the line."""

    intercept: float
    slope: float
    intercept_se: float
    slope_se: float
    intercept_ci: tuple
    slope_ci: tuple
    r2: float
    p: float
    df: int
    n: int
    sigma: float
    band: pd.DataFrame

    def predict(self, x) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(x, dtype=float)


def regression(x, y, *, ci: float = 0.95, n_grid: int = 50, x_grid=None) -> RegressionResult:
    """OLS line with t-based CIs and a band (``band``: ``x, fit, ci_low, ci_high, pi_low, pi_high``).

    ``b = Sxy/Sxx``, ``a = ybar - b xbar``, ``s^2 = RSS/(n-2)``; the mean band is
    ``fit -+ t s sqrt(1/n + (x - xbar)^2/Sxx)`` and the prediction band adds 1 under the root
    (any regression text, e.g. Draper & Smith 1998, doi:10.1002/9781118625590, ch. 3).
    """
    x, y = _paired(x, y)
    n = len(x)
    if n < 3:
        raise StatsInputError(f"regression needs at least 3 complete pairs, got {n}")
    xbar, ybar = x.mean(), y.mean()
    sxx = float(((x - xbar) ** 2).sum())
    if sxx == 0:
        raise StatsInputError("x is constant; the regression slope is undefined")
    b = float(((x - xbar) * (y - ybar)).sum() / sxx)
    a = float(ybar - b * xbar)
    resid = y - a - b * x
    dof = n - 2
    s2 = float(resid @ resid) / dof if dof > 0 else np.nan
    se_b = math.sqrt(s2 / sxx)
    se_a = math.sqrt(s2 * (1 / n + xbar ** 2 / sxx))
    tq = stats.t.ppf(0.5 + ci / 2, dof)
    tstat = b / se_b if se_b > 0 else np.inf
    p = float(2 * stats.t.sf(abs(tstat), dof))
    syy = float(((y - ybar) ** 2).sum())
    r2 = 1 - float(resid @ resid) / syy if syy > 0 else np.nan
    xg = np.linspace(x.min(), x.max(), n_grid) if x_grid is None else np.asarray(x_grid, dtype=float)
    fit = a + b * xg
    h = 1 / n + (xg - xbar) ** 2 / sxx
    band = pd.DataFrame({"x": xg, "fit": fit, "ci_low": fit - tq * np.sqrt(s2 * h), "ci_high": fit + tq * np.sqrt(s2 * h),
                         "pi_low": fit - tq * np.sqrt(s2 * (1 + h)), "pi_high": fit + tq * np.sqrt(s2 * (1 + h))})
    return RegressionResult(a, b, se_a, se_b, (a - tq * se_a, a + tq * se_a), (b - tq * se_b, b + tq * se_b),
                            r2, p, dof, n, math.sqrt(s2), band)


# ---------------------------------------------------------------------- group tests
def _two_levels(data, group, levels):
    present = list(pd.unique(data[group].dropna()))
    if levels is None:
        if len(present) != 2:
            raise StatsInputError(f"column '{group}' has {len(present)} levels {present}; pass levels=(control, treated)")
        levels = tuple(sorted(present, key=str))
    if len(levels) != 2:
        raise StatsInputError(f"levels must be two values (control, treated), got {levels!r}")
    for lv in levels:
        if lv not in present:
            raise StatsInputError(f"level {lv!r} is not in column '{group}' (levels {present})")
    return levels


def group_compare(data: pd.DataFrame, biomarkers: Sequence[str], *, group: str = "group", animal: str | None = "animal",
                  levels: tuple | None = None, method: str = "welch", adjust: str | None = "holm",
                  ci: float = 0.95) -> pd.DataFrame:
    """Compare two groups on several biomarkers (one row per animal), Holm-corrected across biomarkers.

    ``method="welch"``: Welch's t test (unequal variances, Welch–Satterthwaite df) with a CI
    of ``mean(treated) - mean(control)``.  ``method="mannwhitney"``: two-sided Mann–Whitney U
    (exact for small samples without ties), effect ``difference`` = Hodges–Lehmann shift
    (median of all treated-minus-control differences), no CI.  ``p_adj``: Holm (1979) over the
    biomarkers of this call.  ``levels=(control, treated)``.
    """
    if isinstance(biomarkers, str):
        biomarkers = [biomarkers]
    require_columns(data, list(biomarkers) + [group] + ([animal] if animal else []), what="group_compare")
    method = str(method).lower().replace("-", "").replace("_", "")
    if method not in ("welch", "mannwhitney"):
        raise StatsInputError(f"method must be 'welch' or 'mannwhitney', got {method!r}")
    if animal:
        dup = data[animal][data[animal].duplicated()].unique()
        if len(dup):
            raise StatsInputError(f"animals {list(dup)[:5]} have several rows; group_compare needs one value per animal "
                                  "(average repeated measures per animal first)")
    a_lv, b_lv = _two_levels(data, group, levels)
    rows = []
    for bm in biomarkers:
        v = numeric_column(data, bm, role="biomarker")
        a = v[(data[group] == a_lv).to_numpy() & np.isfinite(v)]
        b = v[(data[group] == b_lv).to_numpy() & np.isfinite(v)]
        if len(a) < 2 or len(b) < 2:
            raise StatsInputError(f"biomarker '{bm}': need at least 2 animals per group, have {len(a)} ({a_lv!r}) "
                                  f"and {len(b)} ({b_lv!r})")
        row = {"biomarker": bm, "control": a_lv, "treated": b_lv, "n_control": len(a), "n_treated": len(b),
               "mean_control": a.mean(), "mean_treated": b.mean(), "sd_control": a.std(ddof=1),
               "sd_treated": b.std(ddof=1), "median_control": np.median(a), "median_treated": np.median(b)}
        if method == "welch":
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            se = math.sqrt(va + vb)
            dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else np.nan
            diff = b.mean() - a.mean()
            res = stats.ttest_ind(b, a, equal_var=False)
            tq = stats.t.ppf(0.5 + ci / 2, dof) if np.isfinite(dof) else np.nan
            row.update(method="welch", difference=diff, ci_low=diff - tq * se, ci_high=diff + tq * se,
                       statistic=float(res.statistic), df=dof, p=float(res.pvalue))
        else:
            res = stats.mannwhitneyu(b, a, alternative="two-sided")
            hl = float(np.median(np.subtract.outer(b, a)))
            row.update(method="mannwhitney", difference=hl, ci_low=np.nan, ci_high=np.nan,
                       statistic=float(res.statistic), df=np.nan, p=float(res.pvalue))
        rows.append(row)
    out = pd.DataFrame(rows)
    if adjust is not None:
        if str(adjust).lower() != "holm":
            raise StatsInputError(f"adjust must be 'holm' or None, got {adjust!r}")
        out["p_adj"] = holm(out["p"].to_numpy())
    return out


# ---------------------------------------------------------------------- per-animal slopes
def per_animal_slopes(data: pd.DataFrame, outcome: str, *, time: str = "day", animal: str = "animal",
                      group: str | None = "group") -> pd.DataFrame:
    """OLS slope of ``outcome`` on ``time`` per animal (vectorised sums, no per-animal fits).

    ``slope = (n Sxy - Sx Sy) / (n Sxx - Sx^2)``; animals with fewer than two distinct time
    points get NaN.  Columns: ``animal, group, n_points, slope, intercept``.
    """
    cols = [outcome, time, animal] + ([group] if group else [])
    require_columns(data, cols, what="per_animal_slopes")
    yv = numeric_column(data, outcome, role="outcome")
    tv = numeric_column(data, time, role="time")
    ok = np.isfinite(yv) & np.isfinite(tv)
    df = pd.DataFrame({"a": data[animal].to_numpy()[ok], "t": tv[ok], "y": yv[ok]})
    df["tt"], df["ty"] = df.t * df.t, df.t * df.y
    s = df.groupby("a", sort=True).agg(n=("y", "size"), st=("t", "sum"), sy=("y", "sum"), stt=("tt", "sum"),
                                       sty=("ty", "sum"), nt=("t", "nunique"))
    den = s.n * s.stt - s.st ** 2
    slope = np.where(s.nt >= 2, (s.n * s.sty - s.st * s.sy) / den.where(den != 0), np.nan)
    out = pd.DataFrame({animal: s.index, "n_points": s.n.to_numpy(), "slope": slope,
                        "intercept": (s.sy - slope * s.st).to_numpy() / s.n.to_numpy()})
    if group:
        g = data.groupby(animal)[group].first()
        out.insert(1, group, g.reindex(s.index).to_numpy())
    return out.reset_index(drop=True)


def slope_ttest(data: pd.DataFrame, outcome: str, *, time: str = "day", animal: str = "animal", group: str = "group",
                control=None, ci: float = 0.95) -> pd.DataFrame:
    """Per-animal slopes compared between each group and ``control`` by Welch's t test.

    The "summary measures" analysis (Matthews et al. 1990, doi:10.1136/bmj.300.6719.230):
    exact under balanced designs, a cross-check of the mixed model's group x time term.
    Columns: ``group, control, n_control, n_group, mean_slope_control, mean_slope_group,
    difference, se, df, t, p, ci_low, ci_high, excluded`` (animals with < 2 time points).
    """
    sl = per_animal_slopes(data, outcome, time=time, animal=animal, group=group)
    excluded = sl.loc[~np.isfinite(sl.slope), animal].tolist()
    sl = sl[np.isfinite(sl.slope)]
    levels = list(pd.unique(sl[group]))
    if control is None:
        cats = data[group].cat.categories if isinstance(data[group].dtype, pd.CategoricalDtype) else sorted(levels, key=str)
        control = [c for c in cats if c in levels][0]
    if control not in levels:
        raise StatsInputError(f"control {control!r} has no animal with two or more time points in '{group}' "
                              f"(levels {levels})")
    a = sl.slope[sl[group] == control].to_numpy()
    rows = []
    for lv in levels:
        if lv == control:
            continue
        b = sl.slope[sl[group] == lv].to_numpy()
        if len(a) < 2 or len(b) < 2:
            raise StatsInputError(f"slope_ttest needs 2+ animals with slopes per group: {control!r} has {len(a)}, "
                                  f"{lv!r} has {len(b)}")
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        diff = b.mean() - a.mean()
        t = diff / se
        tq = stats.t.ppf(0.5 + ci / 2, dof)
        rows.append({"group": lv, "control": control, "n_control": len(a), "n_group": len(b),
                     "mean_slope_control": a.mean(), "mean_slope_group": b.mean(), "difference": diff, "se": se,
                     "df": dof, "t": t, "p": float(2 * stats.t.sf(abs(t), dof)), "ci_low": diff - tq * se,
                     "ci_high": diff + tq * se, "excluded": ",".join(map(str, excluded))})
    return pd.DataFrame(rows)
