"""Linear mixed models with small-sample inference: the formula layer over :mod:`.lmm`.

``mixed_model`` builds the design with patsy (statsmodels' own formula engine, so term names
are statsmodels'), fits it with a bounded L-BFGS-B on lme4's profiled criterion (by default;
the statsmodels ``MixedLM`` optimisers join only on demand or when that optimum is not sound),
keeps the best REML/ML optimum (polished by Newton
steps with analytic derivatives), diagnoses it on the relative scale lme4 uses, and reports
fixed effects with Satterthwaite, Kenward–Roger or z degrees of freedom.
"""

from __future__ import annotations

import itertools
import math
import time as _time
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from . import lmm as core
from .common import StatsFitWarning, StatsInputError, formula_variables, holm, require_columns

__all__ = ["mixed_model", "MixedModelResult", "DEFAULT_OPTIMIZERS", "normalize_ddf"]

#: the full battery (lme4's ``allFit`` in spirit): statsmodels MixedLM's five, then lme4's profiled criterion.
#: The default ``optimizers="auto"`` runs ``profiled`` alone and this battery only when that optimum is not sound.
DEFAULT_OPTIMIZERS = ("lbfgs", "bfgs", "cg", "powell", "nm", "profiled")
AUTO_FIRST = "profiled"
MAX_EDGE_RESTARTS = 2
_SM_METHODS = {"lbfgs", "bfgs", "cg", "powell", "nm", "newton"}
_DDF_ALIASES = {"satterthwaite": "satterthwaite", "satt": "satterthwaite",
                "kenward-roger": "kenward-roger", "kenward_roger": "kenward-roger", "kr": "kenward-roger",
                "z": "z", "wald": "z", "normal": "z", "asymptotic": "z"}


def normalize_ddf(ddf: str) -> str:
    """``'satterthwaite'``, ``'kenward-roger'`` or ``'z'`` from any accepted spelling."""
    key = str(ddf).strip().lower().replace(" ", "-")
    if key not in _DDF_ALIASES:
        raise StatsInputError(f"ddf must be 'satterthwaite', 'kenward-roger' or 'z', got {ddf!r}")
    return _DDF_ALIASES[key]


@dataclass
class _Prepared:
    data: pd.DataFrame
    y: np.ndarray
    X: pd.DataFrame
    Z: pd.DataFrame
    groups: np.ndarray
    design_info: object
    rhs_vars: list
    lhs_vars: list
    n_dropped: int


def _categories(design_info) -> dict[str, tuple]:
    """Variable name -> levels, for every categorical factor of a patsy design."""
    out = {}
    for factor, info in design_info.factor_infos.items():
        if info.type == "categorical":
            code = getattr(factor, "code", str(factor))
            _, vs = formula_variables(f"y ~ {code}", what="factor")
            if len(vs) == 1:
                out[vs[0]] = tuple(info.categories)
    return out


def prepare(data, formula, groups, re_formula) -> _Prepared:
    import patsy

    lhs, rhs = formula_variables(formula, what="formula")
    if not lhs:
        raise StatsInputError(f"formula {formula!r} has no outcome on the left of '~'")
    if not isinstance(groups, str):
        raise StatsInputError(f"groups must be the name of the animal column (a string), got {groups!r}")
    re_vars: list[str] = []
    if re_formula is not None:
        rl, re_vars = formula_variables(re_formula if "~" in re_formula else "~" + re_formula, what="re_formula")
        if rl:
            raise StatsInputError(f"re_formula {re_formula!r} must have no left-hand side, e.g. '~day'")
    require_columns(data, lhs + rhs, what=f"formula {formula!r}")
    require_columns(data, re_vars, what=f"re_formula {re_formula!r}")
    require_columns(data, [groups], what="groups")
    if len(lhs) == 1 and formula.split("~")[0].strip() == lhs[0]:
        s = data[lhs[0]]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            raise StatsInputError(f"outcome column '{lhs[0]}' is not numeric (dtype {s.dtype})")
        if not np.isfinite(s.to_numpy(dtype=float)).any():
            raise StatsInputError(f"outcome column '{lhs[0]}' has no finite values (all NaN/Inf, {len(s)} rows)")
    used = list(dict.fromkeys(lhs + rhs + re_vars + [groups]))
    df = data[used].copy()
    keep = df.notna().all(axis=1)
    n_dropped = int((~keep).sum())
    df = df[keep]
    if len(df) == 0:
        raise StatsInputError(f"no complete rows for formula {formula!r}: every row misses one of {used}")
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # non-finite outcomes are reported below
            ydf, Xdf = patsy.dmatrices(formula, df, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as err:
        raise StatsInputError(f"formula {formula!r} cannot be evaluated on the data: {err}") from None
    if ydf.shape[1] != 1:
        raise StatsInputError(f"formula {formula!r} must have one numeric outcome; its left side gives "
                              f"{list(ydf.columns)} (a non-numeric outcome?)")
    y = ydf.iloc[:, 0].to_numpy(dtype=float)
    bad = ~np.isfinite(y)
    if bad.any():
        rows = df.loc[bad, [groups]].assign(value=y[bad]).head(5).to_dict("records")
        raise StatsInputError(f"outcome of {formula!r} is not finite in {int(bad.sum())} rows, e.g. {rows} "
                              "(log of zero or a negative value?)")
    if re_formula is None or re_formula.replace(" ", "").lstrip("~") in ("1", ""):
        Zdf = pd.DataFrame({"Intercept": np.ones(len(df))}, index=df.index)
    else:
        try:
            Zdf = patsy.dmatrix(re_formula if "~" in re_formula else "~" + re_formula, df,
                                return_type="dataframe", NA_action="raise")
        except patsy.PatsyError as err:
            raise StatsInputError(f"re_formula {re_formula!r} cannot be evaluated: {err}") from None
    g = df[groups].to_numpy()
    k = len(pd.unique(g))
    if k < 2:
        raise StatsInputError(f"groups column '{groups}' has {k} animal(s) after dropping incomplete rows; "
                              "a mixed model needs at least 2")
    n, q = len(df), Zdf.shape[1]
    if n <= k * q:
        raise StatsInputError(f"{n} observations <= {k} animals x {q} random effects ({list(Zdf.columns)}): "
                              f"the random-effects model is not identifiable; use re_formula='~1' or more sessions")
    rank = np.linalg.matrix_rank(Xdf.to_numpy())
    if rank < Xdf.shape[1]:
        raise StatsInputError(f"fixed-effect design of {formula!r} is rank deficient ({rank} < {Xdf.shape[1]} "
                              f"columns {list(Xdf.columns)}): a level with no data or collinear covariates")
    # between-animal factors: each level needs two animals
    cats = _categories(Xdf.design_info)
    for var in cats:
        col = df[var]
        per_animal = df.groupby(groups, sort=False)[var].nunique()
        if (per_animal <= 1).all():
            counts = df.groupby(var, observed=True)[groups].unique()
            for level, animals in counts.items():
                if len(animals) < 2:
                    raise StatsInputError(
                        f"level {level!r} of column '{var}' has only one animal ({animals[0]!r}); a between-animal "
                        f"comparison needs at least 2 animals per group")
        del col
    return _Prepared(df, y, Xdf, Zdf, g, Xdf.design_info, rhs, lhs, n_dropped)


def _sm_candidate(model, method: str, reml: bool):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = model.fit(reml=reml, method=[method])
    msgs = [f"{w.category.__name__}: {w.message}" for w in rec]
    return res, msgs


def _fit_all(prep: _Prepared, reml: bool, optimizers: Sequence[str], theta0=None, note: str = ""):
    # tiny matrices: multi-threaded BLAS only adds contention (10x slower on a loaded machine)
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_all_inner(prep, reml, optimizers, theta0, note)


def _fit_all_inner(prep: _Prepared, reml: bool, optimizers: Sequence[str], theta0=None, note: str = ""):
    design = core.LMMDesign(prep.y, prep.X.to_numpy(), prep.Z.to_numpy(), prep.groups)
    rows, cands = [], []
    sm_model = None
    for opt in optimizers:
        t0 = _time.perf_counter()
        fit, ok, msgs, smres = None, False, [], None
        try:
            if opt == "profiled":
                fit, ok = core.optimize_profiled(design, reml, theta0=theta0)  # None: lme4's identity start
            elif opt in _SM_METHODS:
                if sm_model is None:  # imported only when a statsmodels optimiser runs (~0.5 s for statsmodels.api)
                    from statsmodels.regression.mixed_linear_model import MixedLM

                    sm_model = MixedLM(pd.Series(prep.y, index=prep.X.index, name="y"), prep.X,
                                          groups=prep.groups, exog_re=prep.Z)
                smres, msgs = _sm_candidate(sm_model, opt, reml)
                ok = bool(smres.converged)
                theta = design.theta_from_cov(np.asarray(smres.cov_re), float(smres.scale))
                fit = core.fit_from_theta(design, theta, reml, opt)
            else:
                raise StatsInputError(f"unknown optimizer {opt!r}; choose from {sorted(_SM_METHODS | {'profiled'})}")
        except StatsInputError:
            raise
        except Exception as err:  # an optimiser that crashes is recorded, the others still run
            msgs = msgs + [f"{type(err).__name__}: {err}"]
        dt = _time.perf_counter() - t0
        crit = fit.deviance if fit is not None else np.nan
        rows.append({"optimizer": opt, "criterion": crit, "loglik": -crit / 2, "reported_converged": ok,
                     "seconds": dt, "messages": "; ".join(([note] if note else []) + msgs)})
        if fit is not None:
            cands.append((fit, opt, ok, msgs, smres))
    if not cands:
        raise StatsInputError("every optimiser failed on this model: " +
                              " | ".join(f"{r['optimizer']}: {r['messages']}" for r in rows))
    table = pd.DataFrame(rows)
    lowest = min(c[0].deviance for c in cands)
    # the first optimiser (in the order given) that reached the lowest criterion, to 1e-6
    best = next(c for c in cands if c[0].deviance <= lowest + 1e-6)
    return design, table, best, cands


def _fit_auto(prep: _Prepared, reml: bool):
    """``optimizers="auto"``: lme4's profiled criterion alone, restarted off a false boundary, else the battery.

    Returns what :func:`_fit_all` returns plus the Newton-polished fit and the notes for ``.warnings``.
    """
    design, table, best, cands = _fit_all(prep, reml, [AUTO_FIRST])
    notes: list[str] = []
    with threadpool_limits(limits=1, user_api="blas"):
        fit = core.newton_polish(best[0])
        drop, theta0 = core.boundary_descent(fit)
        for _ in range(MAX_EDGE_RESTARTS):
            if theta0 is None:
                break
            start = {prep.Z.columns[c]: round(float(theta0[t]), 6)
                     for t, (r, c) in enumerate(zip(design.rows, design.cols)) if r == c}
            note = (f"restarted from inside the boundary (lme4's restart_edge): the criterion fell by {drop:.3g} "
                    f"at relative SDs {start}")
            _, t2, b2, c2 = _fit_all(prep, reml, [AUTO_FIRST], theta0=theta0, note=note)
            table = pd.concat([table, t2], ignore_index=True)
            if b2[0].deviance >= fit.deviance:  # the restart did no better: leave the decision to the checks
                break
            f2 = core.newton_polish(b2[0])
            notes.append(f"optimizer {AUTO_FIRST!r} stopped on the boundary at log-likelihood {-fit.deviance / 2:.4f} "
                         f"where the criterion falls inside; {note}, and reached {-f2.deviance / 2:.4f}")
            fit, best, cands = f2, b2, c2
            drop, theta0 = core.boundary_descent(fit)
        sg, pd_ok, singular = fit.scaled_gradient(), fit.hessian_pd(), fit.singular()
        if drop > 0 or not (best[2] and sg < 2e-3 and pd_ok):
            notes = [f"optimizer {AUTO_FIRST!r} alone did not reach a sound optimum (reported converged "
                     f"{bool(best[2])}, scaled gradient {sg:.2g}, Hessian positive definite {bool(pd_ok)}, on the "
                     f"boundary {bool(singular)}, criterion falling inside the boundary by {drop:.3g}); all of "
                     f"{list(DEFAULT_OPTIMIZERS)} were run and the best optimum kept"]
            design, table, best, cands = _fit_all(prep, reml, list(DEFAULT_OPTIMIZERS))
            fit = core.newton_polish(best[0])
    return design, table, best, cands, fit, notes


class MixedModelResult:
    """A fitted linear mixed model (see :func:`mixed_model`).

    Attributes
    ----------
    fixed : DataFrame indexed by statsmodels' term names, columns
        ``estimate, se, ci_low, ci_high, df, p`` for the default ``ddf``.
    random : DataFrame of variance components (lme4's ``VarCorr``): ``group, var1, var2,
        vcov, sdcor, relative`` (``relative`` = variance or covariance / residual variance).
    residual_var, loglik, criterion (= -2 loglik, lme4's REMLcrit/deviance), converged,
    boundary, warnings (list of str), diagnostics (dict), optimizers (DataFrame of every
    optimiser's criterion), statsmodels_result (the best statsmodels fit, or None).
    """

    def __init__(self, *, fit, prep, formula, re_formula, groups, ddf, ci, optimizers, warnings_list,
                 sm_result, time):
        self._fit = fit
        self._prep = prep
        self.formula = formula
        self.re_formula = re_formula
        self.groups = groups
        self.time = time
        self.ddf = ddf
        self.ci = ci
        self.reml = fit.reml
        self.optimizers = optimizers
        self.warnings = warnings_list
        self.statsmodels_result = sm_result
        self.fe_names = list(prep.X.columns)
        self.re_names = list(prep.Z.columns)
        self.n_obs = len(prep.y)
        self.n_groups = fit.design.k
        self._cache: dict = {}
        self.diagnostics = self._diagnose()

    # -- basic quantities ----------------------------------------------------------------
    @property
    def data(self) -> pd.DataFrame:
        """The rows the model was fitted to (incomplete rows dropped)."""
        return self._prep.data

    @property
    def residual_var(self) -> float:
        return float(self._fit.sigma2)

    @property
    def loglik(self) -> float:
        """REML (``reml=True``) or ML log-likelihood, on lme4's scale (``logLik()`` in R)."""
        return -0.5 * float(self._fit.deviance)

    @property
    def criterion(self) -> float:
        return float(self._fit.deviance)

    @property
    def cov_re(self) -> pd.DataFrame:
        return pd.DataFrame(self._fit.G, index=self.re_names, columns=self.re_names)

    @property
    def params(self) -> pd.Series:
        return pd.Series(self._fit.beta, index=self.fe_names)

    @property
    def boundary(self) -> bool:
        return bool(self.diagnostics["singular"])

    @property
    def converged(self) -> bool:
        return bool(self.diagnostics["converged"])

    def _diagnose(self) -> dict:
        f = self._fit
        d = f.design
        L = d.lam(f.theta)
        rel_sd = np.sqrt(np.clip(np.diag(L @ L.T), 0, None))
        G = f.G
        sd = np.sqrt(np.clip(np.diag(G), 0, None))
        corr = {}
        for i, j in itertools.combinations(range(d.q), 2):
            corr[f"{self.re_names[i]}:{self.re_names[j]}"] = float(G[i, j] / (sd[i] * sd[j])) if sd[i] * sd[j] > 0 \
                else float("nan")
        sg = f.scaled_gradient()
        pd_ok = f.hessian_pd()
        return {
            "optimizer": f.optimizer, "criterion": float(f.deviance), "reml": f.reml,
            "singular": f.singular(), "singular_tol": core.SINGULAR_TOL,
            "relative_cholesky_diagonal": {self.re_names[c]: float(f.theta[t])
                                           for t, (r, c) in enumerate(zip(d.rows, d.cols)) if r == c},
            "relative_sd": dict(zip(self.re_names, map(float, rel_sd))),
            "correlation": corr,
            "scaled_gradient": sg, "hessian_positive_definite": pd_ok,
            "converged": bool(sg < 2e-3 and pd_ok),
            "n_obs": self.n_obs, "n_groups": self.n_groups, "rows_dropped": self._prep.n_dropped,
        }

    @property
    def random(self) -> pd.DataFrame:
        f = self._fit
        d = f.design
        G = f.G
        sd = np.sqrt(np.clip(np.diag(G), 0, None))
        rows = []
        for i in range(d.q):
            rows.append({"group": self.groups, "var1": self.re_names[i], "var2": "", "vcov": G[i, i], "sdcor": sd[i],
                         "relative": G[i, i] / f.sigma2})
        for i, j in itertools.combinations(range(d.q), 2):
            c = G[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
            rows.append({"group": self.groups, "var1": self.re_names[i], "var2": self.re_names[j], "vcov": G[i, j],
                         "sdcor": c, "relative": G[i, j] / f.sigma2})
        rows.append({"group": "Residual", "var1": "", "var2": "", "vcov": f.sigma2, "sdcor": math.sqrt(f.sigma2),
                     "relative": 1.0})
        return pd.DataFrame(rows)

    @property
    def random_effects(self) -> pd.DataFrame:
        """Predicted random effects (BLUPs) per animal: ``b_i = Lambda M_i^-1 Lambda' Z_i'(y_i - X_i beta)``."""
        f = self._fit
        d = f.design
        L = d.lam(f.theta)
        M = np.einsum("ji,kjl,lm->kim", L, d.ZtZ, L) + np.eye(d.q)
        ztr = d.Zty - np.einsum("kqp,p->kq", d.ZtX, f.beta)
        u = ztr @ L
        b = np.einsum("ij,kj->ki", L, np.linalg.solve(M, u[:, :, None])[:, :, 0])
        return pd.DataFrame(b, index=pd.Index(d.labels, name=self.groups), columns=self.re_names)

    # -- inference -----------------------------------------------------------------------
    def _method(self, ddf):
        m = normalize_ddf(self.ddf if ddf is None else ddf)
        if m == "kenward-roger" and not self.reml:
            raise StatsInputError("Kenward-Roger needs a REML fit; refit with reml=True or use ddf='satterthwaite'")
        return m

    def _test(self, L, method):
        if method == "satterthwaite":
            return core.satterthwaite(self._fit, L)
        if method == "kenward-roger":
            return core.kenward_roger(self._fit, L, self._cache)
        return core.wald_z(self._fit, L)

    def vcov(self, ddf: str | None = None) -> pd.DataFrame:
        """Covariance of the fixed effects: ``(X'V^-1X)^-1``, or Kenward–Roger's ``Phi_A``."""
        m = self._method(ddf)
        if m == "kenward-roger":
            if "kr" not in self._cache:
                self._cache["kr"] = core.kenward_roger_vcov(self._fit)
            V = self._cache["kr"][0]
        else:
            V = self._fit.Phi
        return pd.DataFrame(V, index=self.fe_names, columns=self.fe_names)

    def _rows(self, L, names, method, ci) -> pd.DataFrame:
        level = self.ci if ci is None else ci
        out = []
        for name, c in zip(names, L):
            r = self._test(c, method)
            q = stats.norm.ppf(0.5 + level / 2) if not np.isfinite(r["df"]) else stats.t.ppf(0.5 + level / 2, r["df"])
            out.append({"term": name, "estimate": r["estimate"], "se": r["se"], "ci_low": r["estimate"] - q * r["se"],
                        "ci_high": r["estimate"] + q * r["se"], "df": r["df"], "t": r["stat"], "p": r["p"]})
        return pd.DataFrame(out).set_index("term")

    def fixed_table(self, ddf: str | None = None, ci: float | None = None) -> pd.DataFrame:
        """Fixed effects with ``estimate, se, ci_low, ci_high, df, p`` by ``ddf`` (default: the model's)."""
        m = self._method(ddf)
        key = ("fixed", m, ci)
        if key not in self._cache:
            tab = self._rows(np.eye(len(self.fe_names)), self.fe_names, m, ci)
            self._cache[key] = tab[["estimate", "se", "ci_low", "ci_high", "df", "p"]]
        return self._cache[key].copy()

    @property
    def fixed(self) -> pd.DataFrame:
        return self.fixed_table()

    def _as_L(self, L) -> tuple[np.ndarray, list]:
        p = len(self.fe_names)
        if isinstance(L, Mapping):
            unknown = [k for k in L if k not in self.fe_names]
            if unknown:
                raise StatsInputError(f"contrast names term(s) {unknown} not in the model; terms are {self.fe_names}")
            row = np.array([float(L.get(t, 0.0)) for t in self.fe_names])
            return row[None, :], [" + ".join(f"{v:g}*{k}" for k, v in L.items())]
        if isinstance(L, pd.DataFrame):
            unknown = [k for k in L.columns if k not in self.fe_names]
            if unknown:
                raise StatsInputError(f"contrast columns {unknown} are not model terms; terms are {self.fe_names}")
            M = L.reindex(columns=self.fe_names, fill_value=0.0).to_numpy(dtype=float)
            return M, [str(i) for i in L.index]
        M = np.atleast_2d(np.asarray(L, dtype=float))
        if M.shape[1] != p:
            raise StatsInputError(f"contrast has {M.shape[1]} columns but the model has {p} fixed effects {self.fe_names}")
        return M, [f"c{i + 1}" for i in range(M.shape[0])]

    def contrast(self, L, *, ddf: str | None = None, joint: bool = False, ci: float | None = None) -> pd.DataFrame:
        """Test linear combinations ``L beta``.

        ``L``: a ``{term: weight}`` dict, a vector or matrix over the fixed effects (rows =
        contrasts), or a DataFrame with term-name columns.  ``joint=False`` gives one t test
        per row (``estimate, se, ci_low, ci_high, df, t, p``); ``joint=True`` one F test
        (``F, num_df, den_df, p``) of all rows together (lmerTest's ``contest(joint=TRUE)``).
        """
        M, names = self._as_L(L)
        m = self._method(ddf)
        if not joint:
            return self._rows(M, names, m, ci)
        r = self._test(M, m)
        if r["kind"] != "F":  # one row: report t^2 as F
            return pd.DataFrame([{"F": r["stat"] ** 2, "num_df": 1, "den_df": r["df"], "p": r["p"]}])
        return pd.DataFrame([{"F": r["stat"], "num_df": r["num_df"], "den_df": r["df"], "p": r["p"]}])

    # -- estimated marginal means --------------------------------------------------------
    def _grid_rows(self, cells: pd.DataFrame) -> np.ndarray:
        """Design rows for the cells; categorical variables absent from ``cells`` are averaged equally."""
        import patsy

        data = self._prep.data
        cats = _categories(self._prep.design_info)
        avg = {v: levels for v, levels in cats.items() if v not in cells.columns}
        num = [v for v in self._prep.rhs_vars if v not in cats and v not in cells.columns]
        rows = []
        for _, cell in cells.iterrows():
            combos = list(itertools.product(*avg.values())) if avg else [()]
            g = pd.DataFrame([dict(zip(avg.keys(), c)) for c in combos]) if avg else pd.DataFrame(index=[0])
            for col, val in cell.items():
                g[col] = val
            for v in num:
                g[v] = float(pd.to_numeric(data[v]).mean())
            for v in cats:
                if isinstance(data[v].dtype, pd.CategoricalDtype):
                    g[v] = pd.Categorical(g[v], categories=data[v].cat.categories)
            (Xg,) = patsy.build_design_matrices([self._prep.design_info], g, return_type="dataframe")
            rows.append(Xg.to_numpy().mean(axis=0))
        return np.vstack(rows)

    def _cells(self, specs, at) -> pd.DataFrame:
        cats = _categories(self._prep.design_info)
        specs = [specs] if isinstance(specs, str) else list(specs)
        at = dict(at or {})
        for v in list(specs) + list(at):
            if v not in self._prep.rhs_vars:
                raise StatsInputError(f"'{v}' is not a variable of the fixed formula {self.formula!r} "
                                      f"(variables: {self._prep.rhs_vars})")
        axes = {}
        for v in specs:
            if v in at:
                axes[v] = list(np.atleast_1d(at[v]))
            elif v in cats:
                axes[v] = list(cats[v])
            else:
                raise StatsInputError(f"numeric variable '{v}' in specs needs values: pass at={{'{v}': [...]}}")
        for v, vals in at.items():
            if v not in axes:
                axes[v] = list(np.atleast_1d(vals))
        for v, vals in axes.items():
            if v in cats:
                bad = [x for x in vals if x not in cats[v]]
                if bad:
                    raise StatsInputError(f"values {bad} are not levels of '{v}'; levels are {list(cats[v])}")
        combos = list(itertools.product(*axes.values()))
        return pd.DataFrame(combos, columns=list(axes))

    def emmeans(self, specs, at: Mapping | None = None, *, ddf: str | None = None,
                ci: float | None = None) -> pd.DataFrame:
        """Estimated marginal means (Searle et al. 1980, doi:10.1080/00031305.1980.10483031).

        One row per combination of the ``specs`` levels and the ``at`` values, e.g.
        ``emmeans("group", at={"day": [0, 7, 14]})``; other categorical variables are averaged
        with equal weights, other numeric ones held at their mean.  Columns: the cell
        variables, ``estimate, se, df, ci_low, ci_high``.
        """
        cells = self._cells(specs, at)
        X = self._grid_rows(cells)
        tab = self._rows(X, list(range(len(X))), self._method(ddf), ci)
        out = pd.concat([cells.reset_index(drop=True), tab.reset_index(drop=True)], axis=1)
        return out[list(cells.columns) + ["estimate", "se", "df", "ci_low", "ci_high"]]

    def treatment_vs_control(self, factor: str = "group", control=None, at: Mapping | None = None, *,
                             ddf: str | None = None, ci: float | None = None, adjust: str | None = None) -> pd.DataFrame:
        """Each level of ``factor`` minus ``control`` (default: the first level), at every ``at`` cell.

        Columns: ``contrast, <at vars>, estimate, se, df, t, p, ci_low, ci_high`` (+ ``p_adj``
        when ``adjust='holm'``, over all rows).  Averaging and holding as in :meth:`emmeans`.
        """
        cats = _categories(self._prep.design_info)
        if factor not in cats:
            raise StatsInputError(f"'{factor}' is not a categorical variable of {self.formula!r}; "
                                  f"categorical variables: {list(cats)}")
        levels = list(cats[factor])
        if control is None:
            control = levels[0]
        if control not in levels:
            raise StatsInputError(f"control {control!r} is not a level of '{factor}'; levels are {levels}")
        at_cells = self._cells([], at) if at else pd.DataFrame(index=[0])
        recs, Ls = [], []
        for _, cell in at_cells.iterrows():
            base = pd.DataFrame([{**cell.to_dict(), factor: control}])
            x0 = self._grid_rows(base)[0]
            for lev in levels:
                if lev == control:
                    continue
                x1 = self._grid_rows(pd.DataFrame([{**cell.to_dict(), factor: lev}]))[0]
                Ls.append(x1 - x0)
                recs.append({"contrast": f"{lev} - {control}", **cell.to_dict()})
        tab = self._rows(np.vstack(Ls), list(range(len(Ls))), self._method(ddf), ci).reset_index(drop=True)
        out = pd.concat([pd.DataFrame(recs), tab], axis=1)
        cols = ["contrast"] + [c for c in at_cells.columns] + ["estimate", "se", "df", "t", "p", "ci_low", "ci_high"]
        out = out[cols]
        if adjust is not None:
            if str(adjust).lower() != "holm":
                raise StatsInputError(f"adjust must be None or 'holm', got {adjust!r}")
            out["p_adj"] = holm(out["p"].to_numpy())
        return out

    def summary(self) -> str:
        d = self.diagnostics
        lines = [f"Linear mixed model ({'REML' if self.reml else 'ML'}), {self.formula}, random ~"
                 f"{self.re_formula.lstrip('~')} | {self.groups}",
                 f"{self.n_obs} observations, {self.n_groups} animals; log-likelihood {self.loglik:.4f}; "
                 f"optimizer {d['optimizer']}; converged {self.converged}; singular {self.boundary}",
                 f"fixed effects ({normalize_ddf(self.ddf)} df):", self.fixed.to_string(),
                 "variance components:", self.random.to_string(index=False)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<MixedModelResult {self.formula!r} | {self.groups}: loglik={self.loglik:.4f}, " \
               f"converged={self.converged}, boundary={self.boundary}>"


def mixed_model(data: pd.DataFrame, formula: str, groups: str = "animal", re_formula: str | None = None, *,
                reml: bool = True, ddf: str = "satterthwaite", time: str = "day",
                optimizers: Sequence[str] | str = "auto", ci: float = 0.95, warn: bool = True,
                ) -> MixedModelResult:
    """Fit a linear mixed model with honest small-sample inference.

    Parameters
    ----------
    data : tidy DataFrame, one row per animal x session (missing sessions simply absent or NaN).
    formula : patsy/statsmodels fixed-effect formula, e.g. ``"log_volume ~ group * day"``.
    groups : column identifying the animal (the unit of analysis).
    re_formula : random-effects formula per animal.  Default ``None``: random intercept and
        slope on ``time`` (``"~day"``) when ``time`` appears in ``formula``, else ``"~1"``.
        A random-intercept-only model of longitudinal data treats between-animal slope
        variation as noise and inflates false positives for group x time effects.
    reml : REML (default) or ML.
    ddf : ``"satterthwaite"`` (default), ``"kenward-roger"`` or ``"z"`` (statsmodels' normal
        reference) for ``.fixed`` and, unless overridden, contrasts.
    optimizers : ``"auto"`` (default) or a sequence tried in turn: statsmodels ``MixedLM.fit``
        methods (``lbfgs, bfgs, cg, powell, nm``) and ``profiled`` (bounded L-BFGS-B on lme4's
        profiled criterion).  The lowest REML/ML criterion wins and is polished with Newton steps on
        analytic derivatives.  ``"auto"`` runs ``profiled`` alone, as lme4 runs one optimiser, and
        keeps its polished optimum when it is sound: the optimiser reported convergence, the scaled
        gradient ``max |H^-1 g|`` is below 2e-3 and ``H`` is positive definite over the free
        parameters (the *converged* diagnosis below), and -- for a boundary (singular) optimum --
        the criterion does not fall when a zero SD is moved inside (lme4's ``restart_edge`` check,
        :func:`studylib.stats.lmm.boundary_descent`).  The free-parameter check alone is not enough
        on the boundary: the criterion is even in a column of ``Lambda`` at ``Lambda_jj = 0``, so
        its derivative there is exactly zero and the bounded gradient optimiser cannot leave a bound
        it overshot to, yet the scaled gradient over the other parameters passes.  Two cases in the
        tests: a balanced ANCOVA (zero intercept SD, REML criterion 127.568 against 127.412 inside)
        and 40 animals x 6 days with days 0-21 (zero slope SD, log-likelihood 11.9 below the
        optimum).  So, as lme4 does, a boundary point where the criterion falls inside restarts the
        optimiser from the lowest probe (at most twice; a row per run in ``.optimizers`` and a note
        in ``.warnings``); a boundary optimum with no descent is accepted as lme4 accepts it (the
        statsmodels optimisers, which work in ``G`` itself, do no better at a boundary).  Only when
        the optimum is still not sound does the whole battery :data:`DEFAULT_OPTIMIZERS` run, the
        best optimum is kept and ``.warnings`` says so.  ``.optimizers`` lists what ran;
        ``.statsmodels_result`` (the best statsmodels fit) is None when no statsmodels optimiser ran.
    ci : confidence level of every interval.
    warn : emit :class:`StatsFitWarning` for singular or non-converged fits (always recorded
        in ``.warnings`` and ``.diagnostics``).

    Returns
    -------
    MixedModelResult

    Notes
    -----
    Model ``y = X beta + Z b + e``, ``b_i ~ N(0, G)``, ``e ~ N(0, sigma^2 I)``;
    REML criterion ``-2 l_R = log|V| + log|X'V^-1X| + r'V^-1 r + (n-p) log 2 pi``.
    Fixed effects are GLS estimates, ``Var = Phi = (X'V^-1X)^-1`` (lme4's ``vcov``).

    *Satterthwaite* (lmerTest; Kuznetsova et al. 2017, doi:10.18637/jss.v082.i13): for a
    contrast ``c``, ``nu = 2 (c'Phi c)^2 / (g' A g)``, ``g = d(c'Phi c)/d phi`` from the
    analytic ``dPhi/dpsi_r = Phi X'V^-1 G_r V^-1 X Phi``, ``A = 2 H^-1`` with ``H`` the
    analytic Hessian of the REML deviance in ``phi = (theta, sigma^2)`` (lme4's relative
    Cholesky parameters and the residual variance).

    *Kenward–Roger* (Kenward & Roger 1997, doi:10.2307/2533558; pbkrtest): adjusted
    covariance ``Phi_A = Phi + 2 Phi [sum W_rs (Q_rs - P_r Phi P_s)] Phi`` with
    ``W`` the inverse expected REML information, and the scaled F / df of their eqs 6–10
    (see :func:`studylib.stats.lmm.kenward_roger`).

    Diagnostics: a fit is *singular* when a diagonal of the relative Cholesky factor
    ``Lambda`` (random-effect SD relative to the residual SD, per unit of its covariate)
    is below 1e-4 (lme4's ``isSingular``); *converged* when ``max |H^-1 g| < 2e-3`` over the
    interior parameters and ``H`` is positive definite there.  statsmodels' own convergence
    and boundary warnings are captured, compared with this diagnosis and either dismissed
    (noted in ``.warnings``) or replaced by a :class:`StatsFitWarning`.
    """
    if not isinstance(data, pd.DataFrame):
        raise StatsInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    method = normalize_ddf(ddf)
    if method == "kenward-roger" and not reml:
        raise StatsInputError("ddf='kenward-roger' needs reml=True (Kenward-Roger is defined for REML fits)")
    if not 0 < ci < 1:
        raise StatsInputError(f"ci must be in (0, 1), got {ci!r}")
    auto = isinstance(optimizers, str) and optimizers == "auto"
    if isinstance(optimizers, str) and not auto:
        optimizers = (optimizers,)
    if not auto and not optimizers:
        raise StatsInputError("optimizers is empty; pass at least one, e.g. ('lbfgs', 'profiled'), or 'auto'")
    if re_formula is None:
        _, rhs = formula_variables(formula, what="formula")
        re_formula = f"~{time}" if (time in rhs) else "~1"
    prep = prepare(data, formula, groups, re_formula)
    if auto:
        design, table, best, cands, fit, wl = _fit_auto(prep, reml)
    else:
        design, table, best, cands = _fit_all(prep, reml, list(optimizers))
        with threadpool_limits(limits=1, user_api="blas"):
            fit = core.newton_polish(best[0])
        wl = []
    polished = best[0].deviance - fit.deviance
    fit.optimizer = best[1] + ("+newton" if polished > 1e-8 else "")
    if prep.n_dropped:
        wl.append(f"{prep.n_dropped} row(s) with a missing value in a model variable were left out")
    res = MixedModelResult(fit=fit, prep=prep, formula=formula, re_formula=re_formula, groups=groups, ddf=method,
                           ci=ci, optimizers=table, warnings_list=wl, sm_result=best[4] if best[4] is not None else
                           next((c[4] for c in sorted(cands, key=lambda c: c[0].deviance) if c[4] is not None), None),
                           time=time)
    d = res.diagnostics
    for fit_c, opt, ok, msgs, _ in cands:
        gap = fit_c.deviance - fit.deviance
        if gap > 0.02:  # 0.01 in log-likelihood
            wl.append(f"optimizer {opt!r} stopped at log-likelihood {-fit_c.deviance / 2:.4f}, "
                      f"{gap / 2:.4f} below the best ({-fit.deviance / 2:.4f}, kept {fit.optimizer!r})")
    sm_msgs = [m for c in cands if c[1] == best[1] for m in c[3]]
    for m in sm_msgs:
        low = m.lower()
        if "boundary" in low or "singular" in low:
            if d["singular"]:
                continue  # replaced by our own boundary message below
            wl.append(f"statsmodels warned ({m.splitlines()[0][:160]}); dismissed: no variance component is on the "
                      f"boundary (smallest relative Cholesky diagonal "
                      f"{min(d['relative_cholesky_diagonal'].values()):.3g} >= {core.SINGULAR_TOL:g})")
        elif "converge" in low or "retrying" in low or "gradient" in low:
            if d["converged"]:
                wl.append(f"statsmodels warned ({m.splitlines()[0][:160]}); dismissed: the kept optimum has scaled "
                          f"gradient {d['scaled_gradient']:.2g} < 2e-3 and a positive-definite Hessian")
        else:
            wl.append(f"statsmodels: {m.splitlines()[0][:200]}")
    loud = []
    if d["singular"]:
        small = [k for k, v in d["relative_cholesky_diagonal"].items() if v < core.SINGULAR_TOL]
        loud.append(f"singular (boundary) fit: the random-effects covariance is rank deficient -- relative Cholesky "
                    f"diagonal of {small} < {core.SINGULAR_TOL:g} (a variance at zero or a correlation at +-1; relative "
                    f"SDs {({k: round(v, 6) for k, v in d['relative_sd'].items()})}, correlations "
                    f"{({k: round(v, 4) for k, v in d['correlation'].items()})}); the data do not support this "
                    "random-effects structure -- consider a simpler re_formula")
    if not d["converged"]:
        loud.append(f"fit did not converge: scaled gradient {d['scaled_gradient']:.3g} (tolerance 2e-3), Hessian "
                    f"{'positive definite' if d['hessian_positive_definite'] else 'NOT positive definite'}")
    wl.extend(loud)
    if warn:
        for msg in loud:
            warnings.warn(f"{formula} | {groups}: {msg}", StatsFitWarning, stacklevel=2)
    return res
