"""Simulation from a linear mixed model: rejection rates (type I error, power) and sample size.

Each simulated study draws animal effects ``b_i ~ N(0, G)`` and residuals ``N(0, sigma^2)``
on a fixed design (optionally losing sessions at random with per-day probabilities), refits
the analysis model(s) and records the p-value of one fixed-effect term.  Refits use the
same numerical core and inference code as :func:`studylib.stats.mixed_model`, with its
fastest optimiser only (``profiled``: bounded L-BFGS-B with the analytic gradient of lme4's
profiled criterion), so a thousand studies take seconds rather than an hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from . import lmm as core
from .common import StatsInputError, formula_variables, require_columns
from .mixed import MixedModelResult, _categories, normalize_ddf

__all__ = ["SimulationResult", "simulate_rejection", "PowerResult", "power_simulation", "wilson_interval",
           "DesignPower", "fitted_design_power", "t_test_power", "fisher_power"]


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927, doi:10.1080/01621459.1927.10502953)."""
    if n == 0:
        return (np.nan, np.nan)
    z = stats.norm.ppf(0.5 + level / 2)
    ph = k / n
    den = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / den
    h = z * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, c - h), min(1.0, c + h))


@dataclass
class SimulationResult:
    """``table``: one row per analysis (rejection rate with Wilson 95 % CI, failures, singular
    fits, median df); ``pvalues``: replicate x analysis p-values; ``settings``: the inputs."""

    table: pd.DataFrame
    pvalues: pd.DataFrame
    settings: dict = field(default_factory=dict)


def _matrix(formula_rhs: str, design: pd.DataFrame, what: str) -> pd.DataFrame:
    import patsy

    f = formula_rhs if "~" in formula_rhs else "~" + formula_rhs
    if f.replace(" ", "").lstrip("~") in ("1", ""):
        return pd.DataFrame({"Intercept": np.ones(len(design))}, index=design.index)
    try:
        return patsy.dmatrix(f, design, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as err:
        raise StatsInputError(f"{what} {formula_rhs!r} cannot be evaluated on the design: {err}") from None


def simulate_rejection(design: pd.DataFrame, formula: str, *, term: str, fixed: Mapping[str, float], cov_re,
                       residual_var: float, groups: str = "animal", truth_re_formula: str = "~day",
                       analyses: Mapping[str, tuple] | None = None, keep_prob: Mapping | None = None,
                       time: str = "day", n_sim: int = 1000, alpha: float = 0.05, seed: int = 0,
                       progress: bool = True, _bar=None) -> SimulationResult:
    """Rejection rate of ``H0: beta_term = 0`` over simulated studies.

    Parameters
    ----------
    design : one row per animal x session (the outcome column is not needed).
    formula : fixed-effect formula of the truth and of every analysis (its left side is ignored).
    term : the statsmodels/patsy name of the tested coefficient, e.g. ``"group[T.treated]:day"``.
    fixed : true value of every fixed-effect coefficient (by term name).
    cov_re : true random-effect covariance (``q x q``, order of ``truth_re_formula``'s columns).
    residual_var : true residual variance.
    analyses : ``{name: (re_formula, ddf)}``; default ``{"satterthwaite": (truth_re_formula,
        "satterthwaite")}``.  Analyses sharing a ``re_formula`` share one REML fit.
    keep_prob : ``{time value: probability a session is acquired}`` (missing completely at
        random, drawn anew in every study); default: every session of ``design`` kept.
    seed : seed of ``numpy.random.default_rng``; results are reproducible.
    progress : show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    if not isinstance(design, pd.DataFrame) or len(design) == 0:
        raise StatsInputError("design must be a non-empty DataFrame (one row per animal x session)")
    _, rhs_vars = formula_variables(formula, what="formula")
    require_columns(design, rhs_vars + [groups], what=f"formula {formula!r}")
    rhs = "~" + formula.split("~", 1)[1]
    Xdf = _matrix(rhs, design, "formula")
    if term not in Xdf.columns:
        raise StatsInputError(f"term {term!r} is not a coefficient of {formula!r}; coefficients are {list(Xdf.columns)}")
    missing = [c for c in Xdf.columns if c not in fixed]
    if missing:
        raise StatsInputError(f"fixed is missing true values for {missing}")
    beta = np.array([float(fixed[c]) for c in Xdf.columns])
    Zt = _matrix(truth_re_formula, design, "truth_re_formula").to_numpy()
    G = np.atleast_2d(np.asarray(cov_re, dtype=float))
    if G.shape != (Zt.shape[1], Zt.shape[1]):
        raise StatsInputError(f"cov_re must be {Zt.shape[1]}x{Zt.shape[1]} for truth_re_formula "
                              f"{truth_re_formula!r}, got shape {G.shape}")
    w, U = np.linalg.eigh(0.5 * (G + G.T))
    if w.min() < -1e-10 * max(1.0, abs(w).max()):
        raise StatsInputError(f"cov_re is not positive semi-definite (eigenvalues {w.tolist()})")
    Gh = U * np.sqrt(np.clip(w, 0, None))
    if not residual_var > 0:
        raise StatsInputError(f"residual_var must be > 0, got {residual_var!r}")
    if analyses is None:
        analyses = {"satterthwaite": (truth_re_formula, "satterthwaite")}
    an = {name: (re, normalize_ddf(ddf)) for name, (re, ddf) in analyses.items()}
    Zs = {re: _matrix(re, design, "re_formula").to_numpy() for re, _ in an.values()}
    X = Xdf.to_numpy()
    g = design[groups].to_numpy()
    labels, codes = np.unique(g, return_inverse=True)
    k = len(labels)
    n = len(design)
    mu = X @ beta
    c = (Xdf.columns == term).astype(float)
    kp = None
    if keep_prob is not None:
        require_columns(design, [time], what="keep_prob")
        tv = design[time].to_numpy()
        kp = np.array([float(keep_prob.get(t, 1.0)) for t in tv])
    rng = np.random.default_rng(seed)
    pv = {name: np.full(n_sim, np.nan) for name in an}
    dfs = {name: np.full(n_sim, np.nan) for name in an}
    sing = {re: 0 for re in Zs}
    failed = {re: 0 for re in Zs}
    bar = _bar if _bar is not None else tqdm(total=n_sim, desc="simulating studies", disable=not progress)
    with threadpool_limits(limits=1, user_api="blas"):
        for s in range(n_sim):
            b = rng.standard_normal((k, G.shape[0])) @ Gh.T
            y = mu + np.einsum("nq,nq->n", Zt, b[codes]) + np.sqrt(residual_var) * rng.standard_normal(n)
            rows = np.ones(n, dtype=bool) if kp is None else rng.random(n) < kp
            for re, Z in Zs.items():
                try:
                    Xr = X[rows]
                    if np.linalg.matrix_rank(Xr) < X.shape[1] or len(np.unique(codes[rows])) < 2:
                        raise np.linalg.LinAlgError("design lost rank")
                    des = core.LMMDesign(y[rows], Xr, Z[rows], codes[rows])
                    fit, _ = core.optimize_profiled(des, True)
                    if fit is None:
                        raise np.linalg.LinAlgError("no finite criterion")
                    sing[re] += fit.singular()
                    for name, (re2, ddf) in an.items():
                        if re2 != re:
                            continue
                        if ddf == "satterthwaite":
                            r = core.satterthwaite(fit, c)
                        elif ddf == "kenward-roger":
                            r = core.kenward_roger(fit, c)
                        else:
                            r = core.wald_z(fit, c)
                        pv[name][s], dfs[name][s] = r["p"], r["df"]
                except (np.linalg.LinAlgError, ValueError, FloatingPointError):
                    failed[re] += 1
            bar.update(1)
    if _bar is None:
        bar.close()
    rows_out = []
    for name, (re, ddf) in an.items():
        p = pv[name]
        ok = np.isfinite(p)
        rej = int(np.sum(p[ok] < alpha))
        lo, hi = wilson_interval(rej, int(ok.sum()))
        rows_out.append({"analysis": name, "re_formula": re, "ddf": ddf, "rejection_rate": rej / max(int(ok.sum()), 1),
                         "ci_low": lo, "ci_high": hi, "n_sim": int(ok.sum()), "n_failed": failed[re],
                         "n_singular": sing[re], "median_df": float(np.nanmedian(dfs[name])) if ok.any() else np.nan})
    return SimulationResult(pd.DataFrame(rows_out), pd.DataFrame(pv),
                            {"term": term, "alpha": alpha, "seed": seed, "n_sim": n_sim, "formula": formula,
                             "truth_re_formula": truth_re_formula, "n_rows": n, "n_animals": k})


@dataclass
class PowerResult:
    """``table``: ``n_per_group, power, ci_low, ci_high, n_sim, n_failed, n_singular``."""

    table: pd.DataFrame
    term: str
    effect: float
    alpha: float

    def n_for(self, target: float = 0.8) -> int | None:
        """Smallest simulated animals-per-group whose power reaches ``target`` (None if none did)."""
        hit = self.table[self.table.power >= target]
        return None if hit.empty else int(hit.n_per_group.min())


def power_simulation(result: MixedModelResult, term: str, *, n_per_group: Sequence[int] = (4, 6, 8, 10, 12),
                     n_sim: int = 200, alpha: float = 0.05, seed: int = 0, effect: Mapping[str, float] | None = None,
                     group: str = "group", dropout: bool = True, ddf: str | None = None,
                     progress: bool = True) -> PowerResult:
    """Power of the model's test of ``term`` for several animals-per-group, by simulation.

    The truth is the fitted model: its fixed effects (``effect`` overrides some, e.g. to
    a smaller, clinically relevant difference), random-effect covariance and residual
    variance; each arm of ``group`` gets ``n`` new animals scanned on the fitted data's days,
    each session kept with the fraction of animals that had it in the data (``dropout``).
    Every simulated study is analysed like ``result`` (same formula, ``re_formula`` and
    ``ddf``).  Supports formulas whose variables are ``group`` and the time variable only.
    """
    if not isinstance(result, MixedModelResult):
        raise StatsInputError(f"result must be a MixedModelResult from mixed_model, got {type(result).__name__}")
    if term not in result.fe_names:
        raise StatsInputError(f"term {term!r} is not in the model; terms are {result.fe_names}")
    if not result.reml:
        raise StatsInputError("power_simulation simulates REML analyses; fit the model with reml=True")
    _, rhs = formula_variables(result.formula)
    _, re_vars = formula_variables("y " + (result.re_formula if "~" in result.re_formula else "~" + result.re_formula))
    extra = [v for v in rhs + re_vars if v not in (group, result.time)]
    if extra:
        raise StatsInputError(f"power_simulation supports formulas in '{group}' and '{result.time}' only; "
                              f"{result.formula!r} also uses {extra}")
    cats = _categories(result._prep.design_info)
    if group not in cats:
        raise StatsInputError(f"'{group}' is not a categorical variable of {result.formula!r}")
    ns = [int(v) for v in n_per_group]
    if any(v < 2 for v in ns):
        raise StatsInputError(f"n_per_group values must be >= 2 animals, got {ns}")
    data = result.data
    times = np.sort(pd.unique(data[result.time]))
    fixed = dict(zip(result.fe_names, result.params.to_numpy()))
    for k_, v in (effect or {}).items():
        if k_ not in fixed:
            raise StatsInputError(f"effect names {k_!r}, not a term of the model ({result.fe_names})")
        fixed[k_] = float(v)
    keep = None
    if dropout:
        n_an = data[result.groups].nunique()
        keep = {t: data.loc[data[result.time] == t, result.groups].nunique() / n_an for t in times}
    method = normalize_ddf(result.ddf if ddf is None else ddf)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_sim * len(ns), desc="power simulation", disable=not progress)
    rows = []
    for i, n in enumerate(ns):
        recs = [{result.groups: f"{lv}-{a + 1}", group: lv, result.time: t}
                for lv in cats[group] for a in range(n) for t in times]
        des = pd.DataFrame(recs)
        des[group] = pd.Categorical(des[group], categories=list(cats[group]))
        sim = simulate_rejection(des, result.formula, term=term, fixed=fixed, cov_re=result.cov_re.to_numpy(),
                                 residual_var=result.residual_var, groups=result.groups,
                                 truth_re_formula=result.re_formula, analyses={"model": (result.re_formula, method)},
                                 keep_prob=keep, time=result.time, n_sim=n_sim, alpha=alpha,
                                 seed=np.random.SeedSequence([seed, i]).generate_state(1)[0], progress=False, _bar=bar)
        r = sim.table.iloc[0]
        rows.append({"n_per_group": n, "power": r.rejection_rate, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "n_sim": r.n_sim, "n_failed": r.n_failed, "n_singular": r.n_singular})
    bar.close()
    return PowerResult(pd.DataFrame(rows), term, fixed[term], alpha)


@dataclass(frozen=True)
class DesignPower:
    """Power of one fitted design's test of one coefficient for one assumed true value.

    ``power`` with its ``ci_low``/``ci_high`` (Wilson 95 % interval of the Monte Carlo proportion; equal to
    ``power`` when it is computed exactly), ``effect`` the assumed true coefficient, ``alpha``, ``n_sim``
    simulated studies analysed (0 when exact), ``n_failed`` refits that failed, ``method`` in words.
    """

    power: float
    ci_low: float
    ci_high: float
    effect: float
    alpha: float
    n_sim: int
    n_failed: int
    method: str


def t_test_power(effect: float, se: float, df: float, *, alpha: float = 0.05) -> DesignPower:
    """Exact power of the two-sided t test of a linear-model coefficient whose true value is ``effect``.

    ``T = b/se(b)`` is noncentral t with ``df`` degrees of freedom and noncentrality ``delta = effect/se``
    (``se`` the coefficient's standard error at the fitted design and residual variance), so
    ``power = P(T > t_{1-alpha/2}) + P(T < -t_{1-alpha/2})`` (e.g. Cohen 1988, *Statistical Power Analysis for
    the Behavioral Sciences*, ch. 2; scipy's ``nct``).  This is the limit of :func:`fitted_design_power` for an
    ordinary-least-squares model, without Monte Carlo error.
    """
    for name, v in (("effect", effect), ("se", se), ("df", df)):
        if not np.isfinite(v):
            raise StatsInputError(f"t_test_power: {name} must be finite, got {v!r}")
    if se <= 0 or df <= 0:
        raise StatsInputError(f"t_test_power: se and df must be > 0, got se={se!r}, df={df!r}")
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha!r}")
    tc = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / se
    pw = float(stats.nct.sf(tc, df, nc) + stats.nct.cdf(-tc, df, nc))
    return DesignPower(pw, pw, pw, float(effect), float(alpha), 0, 0,
                       f"exact noncentral t (df {df:g}, noncentrality {nc:.3g}) at the fitted design and residual SD")


def fisher_power(rho: float, df: float, *, alpha: float = 0.05, method: str = "pearson") -> DesignPower:
    """Power of the two-sided Fisher-z test of a (partial, within- or between-cluster) correlation whose true value
    is ``rho``, the test :func:`studylib.stats.correlation` reports.

    ``z = atanh(r)`` is approximately normal with mean ``atanh(rho)`` and ``se = 1/sqrt(df - 1)`` (Pearson; the
    Bonett-Wright ``sqrt((1 + rho^2/2)/(df - 1))`` for Spearman), so with ``z_c = Phi^-1(1 - alpha/2)``::

        power = Phi(atanh(rho)/se - z_c) + Phi(-atanh(rho)/se - z_c)

    (Cohen 1988, *Statistical Power Analysis for the Behavioral Sciences*, ch. 3, the Fisher-z approximation;
    ``df`` is the part's residual df, ``n - 2`` for a simple r, ``n - k - 1`` within ``k`` clusters).  At
    ``rho = 0`` it is ``alpha``; no simulation, so ``n_sim = 0`` and the interval is the point.
    """
    for name, v in (("rho", rho), ("df", df)):
        if not np.isfinite(v):
            raise StatsInputError(f"fisher_power: {name} must be finite, got {v!r}")
    if not -1 < rho < 1:
        raise StatsInputError(f"fisher_power: rho must lie in (-1, 1), got {rho!r}")
    if df < 2:
        raise StatsInputError(f"fisher_power: df must be >= 2 (se 1/sqrt(df - 1)), got {df!r}")
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha!r}")
    if method not in ("pearson", "spearman"):
        raise StatsInputError(f"fisher_power: method must be 'pearson' or 'spearman', got {method!r}")
    se = float(np.sqrt((1.0 + rho * rho / 2.0 if method == "spearman" else 1.0) / (df - 1.0)))
    zc = stats.norm.ppf(1 - alpha / 2)
    shift = float(np.arctanh(rho)) / se
    pw = float(stats.norm.cdf(shift - zc) + stats.norm.cdf(-shift - zc))
    return DesignPower(pw, pw, pw, float(rho), float(alpha), 0, 0,
                       f"Fisher-z approximation (df {df:g}, se of atanh r {se:.3g}) for a true r of {rho:.3g}")


def fitted_design_power(result: MixedModelResult, term: str, *, effect: float | None = None, n_sim: int = 300,
                        alpha: float = 0.05, seed: int = 0) -> DesignPower:
    """Power of a fitted mixed model's own design to detect ``term``, by simulating that design.

    The truth is the fitted model (its fixed effects, random-effect covariance and residual variance) with
    the coefficient of ``term`` set to ``effect`` (default: its estimate, giving the *post-hoc* power for
    the observed effect, which is a function of the observed p-value and says nothing the p-value does not;
    Hoenig & Heisey, Am Stat 2001;55:19, doi:10.1198/000313001300339897).  Every simulated study keeps the
    fitted data's rows exactly (animals, sessions, covariate values such as a baseline), draws new animal
    effects and residuals, refits the same formula and random effects and tests ``term`` with the same df
    method (:func:`simulate_rejection`).  Unlike :func:`power_simulation`, any fixed-effect formula works,
    because no new design is built.

    Returns
    -------
    DesignPower (Wilson 95 % interval of the simulated proportion).
    """
    if not isinstance(result, MixedModelResult):
        raise StatsInputError(f"result must be a MixedModelResult from mixed_model, got {type(result).__name__}")
    if term not in result.fe_names:
        raise StatsInputError(f"term {term!r} is not in the model; terms are {result.fe_names}")
    if not (isinstance(n_sim, (int, np.integer)) and n_sim >= 10):
        raise StatsInputError(f"n_sim must be an integer >= 10, got {n_sim!r}")
    fixed = dict(zip(result.fe_names, result.params.to_numpy()))
    if effect is not None:
        if not np.isfinite(effect):
            raise StatsInputError(f"effect must be finite, got {effect!r}")
        fixed[term] = float(effect)
    ddf = normalize_ddf(result.ddf)
    sim = simulate_rejection(result.data, result.formula, term=term, fixed=fixed, cov_re=result.cov_re.to_numpy(),
                             residual_var=result.residual_var, groups=result.groups,
                             truth_re_formula=result.re_formula, analyses={"model": (result.re_formula, ddf)},
                             n_sim=int(n_sim), alpha=alpha, seed=seed, progress=False)
    r = sim.table.iloc[0]
    return DesignPower(float(r.rejection_rate), float(r.ci_low), float(r.ci_high), float(fixed[term]), float(alpha),
                       int(r.n_sim), int(r.n_failed),
                       f"{int(r.n_sim)} simulated studies of the fitted design ({result.n_groups} animals, "
                       f"{result.n_obs} sessions), refitted {result.formula} with random {result.re_formula} per "
                       f"{result.groups}, {ddf} df, seed {seed}")
