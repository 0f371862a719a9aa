"""Numerical core of the linear mixed model used by :mod:`studylib.stats`.

Pure numpy/scipy, no formulas and no pandas: the model is

.. math::  y = X\\beta + Zb + \\varepsilon,\\quad b_i \\sim N(0, G),\\quad \\varepsilon \\sim N(0, \\sigma^2 I)

with one grouping factor (the animal), so ``V = Var(y)`` is block diagonal,
``V_i = Z_i G Z_i' + \\sigma^2 I``.  Three parametrisations of the variance are used:

* ``theta`` (lme4's): the column-major lower triangle of the *relative* Cholesky factor
  ``Lambda`` with ``G = sigma^2 Lambda Lambda'``.  The REML (or ML) deviance profiled over
  ``beta`` and ``sigma^2`` is optimised in ``theta`` with bounds ``Lambda_jj >= 0``.
* ``phi = (theta, s)`` with ``s = sigma^2``: the (non-profiled) deviance's parameters, in
  which the covariance of the variance parameters for Satterthwaite's method is taken
  (as lmerTest does, Kuznetsova et al. 2017, doi:10.18637/jss.v082.i13).
* ``psi`` (linear): the unique elements of ``G`` (same order as ``theta``) then ``sigma^2``,
  so that ``V = sum_r psi_r G_r`` with known matrices ``G_r``.  Analytic derivatives and
  Kenward–Roger (which pbkrtest defines in this linear parametrisation) use it.

All block operations are batched over animals (``numpy`` stacked linear algebra); nothing
loops over observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

LOG2PI = math.log(2.0 * math.pi)
SINGULAR_TOL = 1e-4  # lme4's isSingular() tolerance on the relative Cholesky diagonal


def _inv_logdet(M: np.ndarray):
    """Inverse and summed log-determinant of a stack ``(k, q, q)`` of SPD matrices (None if not SPD).

    Closed forms for q = 1 and 2 (the usual random intercept / intercept + slope): numpy's
    batched LAPACK calls cost more in overhead than the arithmetic on such tiny blocks.
    """
    q = M.shape[-1]
    if q == 1:
        d = M[:, 0, 0]
        if np.any(d <= 0):
            return None
        return (1.0 / d)[:, None, None], float(np.log(d).sum())
    if q == 2:
        a, b, d = M[:, 0, 0], M[:, 0, 1], M[:, 1, 1]
        det = a * d - b * b
        if np.any(a <= 0) or np.any(det <= 0):
            return None
        inv = np.empty_like(M)
        inv[:, 0, 0] = d / det
        inv[:, 1, 1] = a / det
        inv[:, 0, 1] = inv[:, 1, 0] = -b / det
        return inv, float(np.log(det).sum())
    try:
        C = np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        return None
    return np.linalg.inv(M), float(2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum())


def lower_index(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the column-major lower triangle of a ``q x q`` matrix (lme4's theta order)."""
    i, j = np.triu_indices(q)
    return j, i


class LMMDesign:
    """Data and design of a one-factor linear mixed model, sorted into per-group blocks.

    Parameters
    ----------
    y : (n,) response.
    X : (n, p) fixed-effect design (full column rank).
    Z : (n, q) random-effect design of each observation's own group.
    groups : (n,) group labels (any hashable values).
    """

    def __init__(self, y, X, Z, groups):
        y = np.asarray(y, dtype=float)
        X = np.asarray(X, dtype=float)
        Z = np.asarray(Z, dtype=float)
        groups = np.asarray(groups)
        labels, codes = np.unique(groups, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        self.order = order
        self.y, self.X, self.Z, self.codes = y[order], X[order], Z[order], codes[order]
        self.labels = labels
        self.n, self.p = self.X.shape
        self.q = self.Z.shape[1]
        self.k = len(labels)
        self.nt = self.q * (self.q + 1) // 2
        self.m = self.nt + 1
        self.rows, self.cols = lower_index(self.q)
        self.counts = np.bincount(self.codes, minlength=self.k)
        self._crossproducts()
        starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.buckets = []
        for nb in np.unique(self.counts):
            ks = np.flatnonzero(self.counts == nb)
            idx = starts[ks][:, None] + np.arange(nb)[None, :]
            self.buckets.append((ks, idx))

    def _crossproducts(self):
        k, q, p = self.k, self.q, self.p
        self.ZtZ = np.zeros((k, q, q))
        np.add.at(self.ZtZ, self.codes, self.Z[:, :, None] * self.Z[:, None, :])
        self.ZtX = np.zeros((k, q, p))
        np.add.at(self.ZtX, self.codes, self.Z[:, :, None] * self.X[:, None, :])
        self.Zty = np.zeros((k, q))
        np.add.at(self.Zty, self.codes, self.Z * self.y[:, None])
        self.XtX = self.X.T @ self.X
        self.Xty = self.X.T @ self.y
        self.yty = float(self.y @ self.y)
        self._ZtXy = np.concatenate([self.ZtX, self.Zty[:, :, None]], axis=2)
        self._eye_q = np.eye(q)
        self._Ctot = np.block([[self.XtX, self.Xty[:, None]], [self.Xty[None, :], np.array([[self.yty]])]])

    def with_y(self, y_sorted: np.ndarray) -> "LMMDesign":
        """A shallow copy with a new response (already in this design's sorted order)."""
        new = object.__new__(LMMDesign)
        new.__dict__.update(self.__dict__)
        new.y = np.asarray(y_sorted, dtype=float)
        new.Zty = np.zeros((self.k, self.q))
        np.add.at(new.Zty, self.codes, self.Z * new.y[:, None])
        new.Xty = self.X.T @ new.y
        new.yty = float(new.y @ new.y)
        new._ZtXy = np.concatenate([self.ZtX, new.Zty[:, :, None]], axis=2)
        new._Ctot = np.block([[self.XtX, new.Xty[:, None]], [new.Xty[None, :], np.array([[new.yty]])]])
        return new

    # ------------------------------------------------------------------ parametrisations
    def lam(self, theta) -> np.ndarray:
        L = np.zeros((self.q, self.q))
        L[self.rows, self.cols] = theta
        return L

    def theta_bounds(self):
        return [(0.0, None) if r == c else (None, None) for r, c in zip(self.rows, self.cols)]

    def theta_from_cov(self, G, s2) -> np.ndarray:
        """lme4's theta for an (absolute) covariance ``G`` and residual variance ``s2``."""
        R = np.asarray(G, dtype=float) / s2
        R = 0.5 * (R + R.T)
        try:
            L = np.linalg.cholesky(R)
        except np.linalg.LinAlgError:
            w, U = np.linalg.eigh(R)
            w = np.clip(w, 0, None)
            # QR of the symmetric square root gives a lower-triangular factor
            Rt = (U * np.sqrt(w)) @ U.T
            qq, rr = np.linalg.qr(Rt)
            L = rr.T
        sgn = np.sign(np.diag(L))
        sgn[sgn == 0] = 1
        L = L * sgn[None, :]
        return L[self.rows, self.cols].copy()

    def psi_from(self, G, s2) -> np.ndarray:
        G = np.asarray(G, dtype=float)
        return np.r_[G[self.rows, self.cols], s2]

    def jac_psi_phi(self, theta, s2):
        """``J[k, l] = d psi_k / d phi_l`` and the second derivatives ``D2[k, l, l']``."""
        q, nt, m = self.q, self.nt, self.m
        L = self.lam(theta)
        J = np.zeros((m, m))
        D2 = np.zeros((m, m, m))
        LLt = L @ L.T
        J[:nt, nt] = LLt[self.rows, self.cols]
        J[nt, nt] = 1.0
        for t, (x, y) in enumerate(zip(self.rows, self.cols)):
            dM = np.zeros((q, q))
            dM[x, :] += L[:, y]
            dM[:, x] += L[:, y]
            J[:nt, t] = s2 * dM[self.rows, self.cols]
            D2[:nt, t, nt] = D2[:nt, nt, t] = dM[self.rows, self.cols]
            for u, (x2, y2) in enumerate(zip(self.rows, self.cols)):
                if y2 != y:
                    continue
                d2 = np.zeros((q, q))
                d2[x, x2] += 1.0
                d2[x2, x] += 1.0
                D2[:nt, t, u] = s2 * d2[self.rows, self.cols]
        return J, D2

    # ------------------------------------------------------------------ criterion
    def profiled(self, theta, reml: bool = True, grad: bool = False):
        """Profiled deviance and the implied ``beta``, ``sigma^2`` (and, optionally, its gradient in theta).

        REML: ``d(theta) = log|V*| + log|X'V*^-1 X| + (n-p)(1 + log(2 pi sigma^2))``,
        ``sigma^2 = r'V*^-1 r / (n-p)``; ML: ``log|V*| + n(1 + log(2 pi sigma^2))``,
        ``sigma^2 = r'V*^-1 r / n`` (Bates et al. 2015, doi:10.18637/jss.v067.i01, eqs 34, 41),
        with ``V* = I + Z Lambda Lambda' Z'``.

        Gradient: with ``M_i = I + Lambda'Z_i'Z_i Lambda``, ``C_i = Z_i'[X y]``,
        ``U_i = M_i^-1 Lambda' C_i``, ``T = [X y]'V*^-1[X y]``, ``w = T^-1 e_y``,
        ``pwrss = 1/w_y`` and ``Omega = -T^-1 - (n-p-1) pwrss w w'`` (ML: ``-n pwrss w w'``),
        ``dd/dLambda = sum_i 2 Z_i'Z_i Lambda M_i^-1 + 2 C_i Omega U_i' - 2 Z_i'Z_i Lambda U_i Omega U_i'``.
        """
        fail = (np.inf, None, None, None) if grad else (np.inf, None, None)
        L = self.lam(theta)
        p, n = self.p, self.n
        M = L.T @ self.ZtZ @ L
        M += self._eye_q
        inv_logdet = _inv_logdet(M)
        if inv_logdet is None:
            return fail
        Minv, logdetM = inv_logdet
        rhs = L.T @ self._ZtXy
        U = Minv @ rhs
        T = self._Ctot - np.einsum("kqa,kqb->ab", rhs, U)
        XVX, XVy, yVy = T[:p, :p], T[:p, p], T[p, p]
        try:
            cX = np.linalg.cholesky(XVX)
        except np.linalg.LinAlgError:
            return fail
        beta = np.linalg.solve(XVX, XVy)
        pwrss = yVy - XVy @ beta
        if not np.isfinite(pwrss) or pwrss <= 0:
            return fail
        logdetX = 2.0 * np.log(np.diagonal(cX)).sum()
        if reml:
            dfr = n - p
            s2 = pwrss / dfr
            dev = logdetM + logdetX + dfr * (1.0 + LOG2PI + math.log(s2))
        else:
            s2 = pwrss / n
            dev = logdetM + n * (1.0 + LOG2PI + math.log(s2))
        if not grad:
            return float(dev), beta, float(s2)
        w = np.append(-beta, 1.0) / pwrss             # T^-1 e_y
        if reml:
            Omega = -np.linalg.inv(T) - (n - p - 1) * pwrss * np.outer(w, w)
        else:
            Omega = -n * pwrss * np.outer(w, w)
        ZL = self.ZtZ @ L
        gL = 2.0 * (ZL @ Minv) + 2.0 * (self._ZtXy @ Omega @ U.transpose(0, 2, 1)) \
            - 2.0 * (ZL @ U @ Omega @ U.transpose(0, 2, 1))
        g = gL.sum(axis=0)[self.rows, self.cols]
        return float(dev), beta, float(s2), g

    def deviance(self, theta, s2, reml: bool = True) -> float:
        """Non-profiled deviance (-2 log-likelihood, REML or ML) at ``(theta, sigma^2)``."""
        if not s2 > 0:
            return np.inf
        L = self.lam(theta)
        p, n = self.p, self.n
        M = L.T @ self.ZtZ @ L + self._eye_q
        il = _inv_logdet(M)
        if il is None:
            return np.inf
        Minv, logdet = il
        rhs = L.T @ self._ZtXy
        T = self._Ctot - np.einsum("kqa,kqb->ab", rhs, Minv @ rhs)
        try:
            cX = np.linalg.cholesky(T[:p, :p])
        except np.linalg.LinAlgError:
            return np.inf
        beta = np.linalg.solve(T[:p, :p], T[:p, p])
        pwrss = T[p, p] - T[:p, p] @ beta
        logdetX = 2.0 * np.log(np.diagonal(cX)).sum()
        if reml:
            return float(logdet + n * math.log(s2) + logdetX - p * math.log(s2) + (n - p) * LOG2PI + pwrss / s2)
        return float(logdet + n * math.log(s2) + n * LOG2PI + pwrss / s2)

    # ------------------------------------------------------------------ derivatives
    def derivatives(self, G, s2, reml: bool = True) -> dict:
        """Analytic derivatives of the deviance in the linear parametrisation ``psi``.

        With ``W = V^-1``, ``Phi = (X'WX)^-1``, ``P = W - WX Phi X'W``, ``r = Py`` and
        ``G_r = dV/dpsi_r`` (``Z E_r Z'`` for an element of ``G``, ``I`` for ``sigma^2``):

        * REML gradient ``d dev / d psi_r = tr(P G_r) - r'G_r r`` (ML: ``tr(W G_r) - r'G_r r``);
        * observed Hessian ``-tr(P G_r P G_s) + 2 r'G_r P G_s r`` (ML, profiled over beta:
          ``-tr(W G_r W G_s) + 2 r'G_r P G_s r``);
        * expected information (REML) ``I_rs = tr(P G_r P G_s) / 2``;
        * ``K_r = X'W G_r W X`` (so ``dPhi/dpsi_r = Phi K_r Phi``) and
          ``Q_rs = X'W G_r W G_s W X`` for Kenward–Roger.

        ``tr(P G_r P G_s) = tr(W G_r W G_s) - 2 tr(Phi Q_rs) + tr(Phi K_r Phi K_s)``.
        """
        G = np.asarray(G, dtype=float)
        p, q, m, nt = self.p, self.q, self.m, self.nt
        Es = []
        for r, c in zip(self.rows, self.cols):
            E = np.zeros((q, q))
            E[r, c] = E[c, r] = 1.0
            Es.append(E)
        XWX = np.zeros((p, p))
        XWy = np.zeros(p)
        cache = []
        for ks, idx in self.buckets:
            Xs, Zs, ys = self.X[idx], self.Z[idx], self.y[idx]
            nb = idx.shape[1]
            V = np.einsum("kai,ij,kbj->kab", Zs, G, Zs) + s2 * np.eye(nb)
            W = np.linalg.inv(V)
            WX = W @ Xs
            XWX += np.einsum("kai,kaj->ij", Xs, WX)
            XWy += np.einsum("kai,ka->i", WX, ys)
            cache.append((Xs, Zs, ys, W, WX))
        XWX = 0.5 * (XWX + XWX.T)
        Phi = np.linalg.inv(XWX)
        Phi = 0.5 * (Phi + Phi.T)
        beta = Phi @ XWy
        T1 = np.zeros((m, m))
        K = np.zeros((m, p, p))
        Q = np.zeros((m, m, p, p))
        trWG = np.zeros(m)
        rGr = np.zeros(m)
        sWs = np.zeros((m, m))
        XWs = np.zeros((m, p))
        for Xs, Zs, ys, W, WX in cache:
            nb = Xs.shape[1]
            res = ys - Xs @ beta
            rv = np.einsum("kab,kb->ka", W, res)
            Gm = [np.einsum("kai,ij,kbj->kab", Zs, E, Zs) for E in Es] + [np.broadcast_to(np.eye(nb), W.shape)]
            M = [W @ g for g in Gm]                     # W G_r
            N = [g @ WX for g in Gm]                    # G_r W X
            S = [np.einsum("kab,kb->ka", g, rv) for g in Gm]  # G_r r
            WN = [W @ nn for nn in N]
            WS = [np.einsum("kab,kb->ka", W, s) for s in S]
            for a in range(m):
                trWG[a] += np.einsum("kaa->", M[a])
                K[a] += np.einsum("kai,kaj->ij", WX, N[a])
                rGr[a] += np.einsum("ka,ka->", rv, S[a])
                XWs[a] += np.einsum("kai,ka->i", Xs, WS[a])
                for b in range(a, m):
                    T1[a, b] += np.einsum("kab,kba->", M[a], M[b])
                    Q[a, b] += np.einsum("kai,kaj->ij", N[a], WN[b])
                    sWs[a, b] += np.einsum("ka,ka->", S[a], WS[b])
        for a in range(m):
            for b in range(a):
                T1[a, b] = T1[b, a]
                Q[a, b] = Q[b, a].T
                sWs[a, b] = sWs[b, a]
        PK = np.einsum("ij,ajk->aik", Phi, K)           # Phi K_r
        trPhiK = np.einsum("aii->a", PK)
        trPhiQ = np.einsum("ij,abji->ab", Phi, Q)
        trPKPK = np.einsum("aij,bji->ab", PK, PK)
        trPGPG = T1 - 2.0 * trPhiQ + trPKPK
        rGPGr = sWs - np.einsum("ai,ij,bj->ab", XWs, Phi, XWs)
        if reml:
            grad = (trWG - trPhiK) - rGr
            hess = -trPGPG + 2.0 * rGPGr
        else:
            grad = trWG - rGr
            hess = -T1 + 2.0 * rGPGr
        return {"beta": beta, "Phi": Phi, "grad": grad, "hess": 0.5 * (hess + hess.T),
                "info_expected": 0.5 * trPGPG, "K": K, "Q": Q}


# ---------------------------------------------------------------------- fitting state
@dataclass
class LMMFit:
    """A fitted model at ``theta`` (relative Cholesky) with everything inference needs."""

    design: LMMDesign
    reml: bool
    theta: np.ndarray
    beta: np.ndarray
    sigma2: float
    deviance: float
    optimizer: str = ""
    _d: dict | None = field(default=None, repr=False)

    @property
    def G(self) -> np.ndarray:
        L = self.design.lam(self.theta)
        return self.sigma2 * (L @ L.T)

    @property
    def derivs(self) -> dict:
        if self._d is None:
            self._d = self.design.derivatives(self.G, self.sigma2, self.reml)
        return self._d

    @property
    def Phi(self) -> np.ndarray:
        """``(X'V^-1X)^-1``: the covariance of the GLS estimate (lme4's ``vcov``)."""
        return self.derivs["Phi"]

    def boundary_mask(self, tol: float = SINGULAR_TOL) -> np.ndarray:
        """theta entries that sit on the boundary: diagonal ``Lambda_jj < tol`` (lme4's isSingular)."""
        d = self.design
        on = np.zeros(d.nt, dtype=bool)
        for t, (r, c) in enumerate(zip(d.rows, d.cols)):
            if r == c and self.theta[t] < tol:
                on[t] = True
        return on

    def singular(self, tol: float = SINGULAR_TOL) -> bool:
        return bool(self.boundary_mask(tol).any())

    def phi_hessian(self) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian of the deviance in ``phi = (theta, sigma^2)`` by the chain rule.

        ``H_phi = J' H_psi J + sum_k g_psi,k d2 psi_k / dphi dphi'``; the second term is what
        keeps the Hessian right on the boundary, where ``g_psi != 0``.
        """
        J, D2 = self.design.jac_psi_phi(self.theta, self.sigma2)
        g = self.derivs["grad"]
        H = J.T @ self.derivs["hess"] @ J + np.einsum("k,kab->ab", g, D2)
        return J.T @ g, 0.5 * (H + H.T), J

    def vcov_phi(self) -> tuple[np.ndarray, np.ndarray]:
        """``A = 2 H_phi^+`` (covariance of the variance parameters) and ``J = dpsi/dphi``.

        A (pseudo-)inverse over the directions in which the deviance is curved; flat
        directions (redundant parameters of a singular fit) do not change ``Phi`` and so do
        not enter Satterthwaite's denominator.  The threshold is applied to ``D H D`` with
        ``D = diag(|H_ll|^-1/2)``, so that it does not depend on the units of the outcome.
        """
        _, H, J = self.phi_hessian()
        # equilibrate first: theta is unitless, sigma^2 in squared outcome units, so a threshold on the raw
        # eigenvalues would depend on the outcome's units (a rescaled y once dropped a curved direction)
        dg = np.abs(np.diag(H))
        D = 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0))
        w, U = np.linalg.eigh(D[:, None] * H * D[None, :])
        tol = max(abs(w).max(), 1e-300) * 1e-10
        winv = np.where(w > tol, 1.0 / np.where(w > tol, w, 1.0), 0.0)
        return 2.0 * D[:, None] * ((U * winv) @ U.T) * D[None, :], J

    def scaled_gradient(self) -> float:
        """Max ``|H^-1 g|`` over the interior ``phi`` (lme4's convergence check, tol 2e-3)."""
        g, H, _ = self.phi_hessian()
        free = np.r_[~self.boundary_mask(), True]
        Hf = H[np.ix_(free, free)]
        try:
            return float(np.max(np.abs(np.linalg.solve(Hf, g[free]))))
        except np.linalg.LinAlgError:
            return float("inf")

    def hessian_pd(self) -> bool:
        _, H, _ = self.phi_hessian()
        free = np.r_[~self.boundary_mask(), True]
        w = np.linalg.eigvalsh(H[np.ix_(free, free)])
        return bool(w.min() > 1e-8 * max(abs(w).max(), 1e-300))


def fit_from_theta(design: LMMDesign, theta, reml: bool, optimizer: str = "") -> LMMFit | None:
    dev, beta, s2 = design.profiled(np.asarray(theta, float), reml)
    if not np.isfinite(dev):
        return None
    return LMMFit(design, reml, np.asarray(theta, float).copy(), beta, s2, dev, optimizer)


def optimize_profiled(design: LMMDesign, reml: bool, theta0=None, maxiter: int = 500) -> tuple[LMMFit | None, bool]:
    """Bounded L-BFGS-B on the profiled deviance (lme4's criterion), from ``theta0`` (default: identity)."""
    if theta0 is None:
        theta0 = np.where(design.rows == design.cols, 1.0, 0.0)
    def fun(t):
        r = design.profiled(t, reml, grad=True)
        if r[1] is None:
            return 1e300, np.zeros_like(t)
        return r[0], r[3]

    res = optimize.minimize(fun, np.asarray(theta0, float), jac=True, method="L-BFGS-B",
                            bounds=design.theta_bounds(), options={"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-6})
    return fit_from_theta(design, res.x, reml, "profiled"), bool(res.success)


EDGE_STEPS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # inward probes of a boundary Lambda_jj (relative SD per unit)


def boundary_descent(fit: LMMFit, steps=EDGE_STEPS, rtol: float = 1e-9):
    """Does the profiled deviance fall when a zero random-effect SD is moved into the interior?

    lme4's ``restart_edge`` check (``optimizeLmer``, Bates et al. 2015, doi:10.18637/jss.v067.i01):
    for every diagonal ``Lambda_jj`` on its bound (below :data:`SINGULAR_TOL`) the profiled
    deviance is evaluated at ``Lambda_jj = h`` for each ``h`` in ``steps`` (lme4: one step of 1e-5).
    The deviance is even in a column of ``Lambda`` at ``Lambda_jj = 0``, so its derivative there
    is exactly zero and a gradient optimiser cannot leave the bound: only values tell a true
    boundary minimum from a saddle.  A ladder of steps (relative SDs from 1e-4 to 1) sees a
    descent that one tiny step would lose in rounding.  With ``Lambda_jj = 0`` the sign of the rest
    of column ``j`` is arbitrary (the column's sign does not change ``Lambda Lambda'``) but it fixes
    the sign of the correlation the probe opens, so both signs are probed: an optimiser stopped with
    two zero diagonals and a negative off-diagonal cannot otherwise reach a correlation of +1.

    Returns
    -------
    (drop, theta) : the largest fall of the deviance over the probes (0.0 when none falls by more
        than ``rtol * max(1, |deviance|)``, or the fit is not on the boundary) and the ``theta``
        of that probe (None when none falls), a start for a restart.
    """
    d = fit.design
    on = np.flatnonzero(fit.boundary_mask())
    best, where = 0.0, None
    tol = rtol * max(1.0, abs(fit.deviance))
    for t in on:
        below = (d.cols == d.cols[t]) & (d.rows > d.rows[t])   # the rest of column j of Lambda
        for sign in (1.0, -1.0):
            for h in steps:
                th = fit.theta.copy()
                th[below] *= sign
                th[t] = h
                dev = d.profiled(th, fit.reml)[0]
                if np.isfinite(dev) and fit.deviance - dev > max(best, tol):
                    best, where = fit.deviance - dev, th
    return best, where


def newton_polish(fit: LMMFit, max_iter: int = 20) -> LMMFit:
    """Newton steps in ``phi`` on the interior parameters; each step must lower the deviance."""
    d = fit.design
    cur = fit
    for _ in range(max_iter):
        g, H, _ = cur.phi_hessian()
        free = np.r_[~cur.boundary_mask(), True]
        Hf, gf = H[np.ix_(free, free)], g[free]
        try:
            w = np.linalg.eigvalsh(Hf)
            if w.min() <= 0:
                break
            step = -np.linalg.solve(Hf, gf)
        except np.linalg.LinAlgError:
            break
        if np.max(np.abs(step / np.maximum(np.abs(np.r_[cur.theta, cur.sigma2][free]), 1e-3))) < 1e-10:
            break
        phi0 = np.r_[cur.theta, cur.sigma2]
        dev0 = d.deviance(cur.theta, cur.sigma2, cur.reml)
        lam = 1.0
        accepted = None
        for _h in range(12):
            phi = phi0.copy()
            phi[free] += lam * step
            th, s2 = phi[:-1], phi[-1]
            diag_ok = all(th[t] >= 0 for t, (r, c) in enumerate(zip(d.rows, d.cols)) if r == c)
            if s2 > 0 and diag_ok:
                dv = d.deviance(th, s2, cur.reml)
                if dv <= dev0 + 1e-12 * abs(dev0):
                    accepted = (th, s2)
                    break
            lam *= 0.5
        if accepted is None:
            break
        new = fit_from_theta(d, accepted[0], cur.reml, cur.optimizer)
        if new is None or new.deviance > cur.deviance + 1e-10 * abs(cur.deviance):
            break
        done = abs(cur.deviance - new.deviance) < 1e-11 * max(1.0, abs(new.deviance))
        cur = new
        if done:
            break
    return cur


# ---------------------------------------------------------------------- inference
def satterthwaite(fit: LMMFit, L) -> dict:
    """Satterthwaite test of ``L beta = 0``.

    One row ``c``: ``v = c'Phi c``, ``grad_k = d v / d phi_k = J' (c'Phi K_r Phi c)_r``,
    ``nu = 2 v^2 / (grad' A grad)`` with ``A = 2 H_phi^-1`` (Satterthwaite 1946,
    doi:10.2307/3002019; Kuznetsova et al. 2017, doi:10.18637/jss.v082.i13, eq. 4);
    ``t = c'beta / sqrt(v)``.  Several rows: lmerTest's F test -- eigen-decompose
    ``L Phi L' = P D P'``, one ``nu_m`` per independent contrast ``P_m' L``,
    ``F = sum t_m^2 / q`` on ``(q, 2E/(E-q))`` df with ``E = sum nu_m/(nu_m - 2)``.
    """
    L = np.atleast_2d(np.asarray(L, float))
    Phi, K = fit.Phi, fit.derivs["K"]
    A, J = fit.vcov_phi()

    def one(c):
        v = float(c @ Phi @ c)
        pc = Phi @ c
        gpsi = np.einsum("i,aij,j->a", pc, K, pc)
        gphi = J.T @ gpsi
        den = float(gphi @ A @ gphi)
        nu = 2.0 * v * v / den if den > 0 else np.inf
        return v, nu

    beta = fit.beta
    if L.shape[0] == 1:
        v, nu = one(L[0])
        est = float(L[0] @ beta)
        t = est / math.sqrt(v)
        return {"estimate": est, "se": math.sqrt(v), "df": nu, "stat": t, "p": 2 * stats.t.sf(abs(t), nu),
                "kind": "t", "num_df": 1}
    VL = L @ Phi @ L.T
    d, P = np.linalg.eigh(VL)
    d, P = d[::-1], P[:, ::-1]
    pos = d > max(1e-8 * d[0], 0)
    q = int(pos.sum())
    PtL = (P.T @ L)[:q]
    t2 = (PtL @ beta) ** 2 / d[:q]
    F = float(t2.sum() / q)
    nus = np.array([one(row)[1] for row in PtL])
    if q == 1:
        ddf = float(nus[0])
    elif np.all(np.abs(np.diff(nus)) < 1e-8):
        ddf = float(nus.mean())
    elif np.any(nus <= 2):
        ddf = 2.0
    else:
        E = float(np.sum(nus / (nus - 2)))
        ddf = 2 * E / (E - q)
    return {"estimate": L @ beta, "se": np.sqrt(np.diag(VL)), "df": ddf, "stat": F,
            "p": float(stats.f.sf(F, q, ddf)), "kind": "F", "num_df": q}


def kenward_roger_vcov(fit: LMMFit) -> tuple[np.ndarray, np.ndarray]:
    """Kenward–Roger adjusted covariance of ``beta`` and ``W`` (inverse expected information).

    ``Phi_A = Phi + 2 Phi [ sum_rs W_rs (Q_rs - P_r Phi P_s) ] Phi`` with ``P_r = -K_r`` and
    ``W = I_E^-1``, ``I_E,rs = tr(P G_r P G_s)/2`` (Kenward & Roger 1997,
    doi:10.2307/2533558, eqs 2-3; the ``R_rs`` term vanishes because ``V`` is linear in
    ``psi``, as in pbkrtest, Halekoh & Højsgaard 2014, doi:10.18637/jss.v059.i09).
    """
    if not fit.reml:
        raise ValueError("Kenward-Roger needs a REML fit")
    d = fit.derivs
    Phi, K, Q = d["Phi"], d["K"], d["Q"]
    IE = d["info_expected"]
    w = np.linalg.eigvalsh(IE)
    W = np.linalg.inv(IE) if abs(w).min() > 1e-10 * abs(w).max() else np.linalg.pinv(IE)
    KPK = np.einsum("aij,jk,bkl->abil", K, Phi, K)
    U = np.einsum("ab,abij->ij", W, Q - KPK)
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    return 0.5 * (PhiA + PhiA.T), W


def kenward_roger(fit: LMMFit, L, _cache: dict | None = None) -> dict:
    """Kenward–Roger test of ``L beta = 0`` (pbkrtest's ``KRmodcomp``/``Lb_ddf``).

    With ``Theta = L'(L Phi L')^-1 L``, ``u_r = Theta Phi P_r Phi``:
    ``A1 = sum_rs W_rs tr(u_r) tr(u_s)``, ``A2 = sum_rs W_rs tr(u_r u_s)``,
    ``B = (A1 + 6 A2)/(2q)``, ``g = ((q+1)A1 - (q+4)A2)/((q+2)A2)``,
    ``c1 = g/(3q+2(1-g))``, ``c2 = (q-g)/(3q+2(1-g))``, ``c3 = (q+2-g)/(3q+2(1-g))``,
    ``rho = [(1-A2/q)/(1-c2 B)]^2 (1+c1 B)/(q(1-c3 B))``, denominator df
    ``m = 4 + (q+2)/(q rho - 1)``, scale ``lambda = m (1-A2/q)/(m-2)``,
    ``F = lambda (L beta)'(L Phi_A L')^-1 (L beta)/q ~ F(q, m)``.  For one row ``lambda = 1``,
    ``m = 2/A2`` and the t statistic uses ``se = sqrt(c'Phi_A c)``.
    """
    L = np.atleast_2d(np.asarray(L, float))
    if _cache is not None and "kr" in _cache:
        PhiA, W = _cache["kr"]
    else:
        PhiA, W = kenward_roger_vcov(fit)
        if _cache is not None:
            _cache["kr"] = (PhiA, W)
    Phi, K = fit.Phi, fit.derivs["K"]
    q = int(np.linalg.matrix_rank(L))
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ij,jk,akl,lm->aim", Theta, Phi, -K, Phi)
    tr = np.einsum("aii->a", u)
    A1 = float(tr @ W @ tr)
    A2 = float(np.einsum("ab,aij,bji->", W, u, u))
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0 = 1 + c1 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    V1, V2 = 1 - c2 * B, 1 - c3 * B
    ratio = (1 - A2 / q) / V1 if V1 != 0 else 0.0
    rho = ratio ** 2 * V0 / V2 / q
    ddf = 4 + (q + 2) / (q * rho - 1)
    beta = fit.beta
    if L.shape[0] == 1:
        c = L[0]
        est = float(c @ beta)
        se = math.sqrt(float(c @ PhiA @ c))
        t = est / se
        return {"estimate": est, "se": se, "df": float(ddf), "stat": t, "p": 2 * stats.t.sf(abs(t), ddf),
                "kind": "t", "num_df": 1}
    scale = 1.0 if abs(ddf - 4) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
    Lb = L @ beta
    Fu = float(Lb @ np.linalg.solve(L @ PhiA @ L.T, Lb)) / q
    F = scale * Fu
    return {"estimate": Lb, "se": np.sqrt(np.diag(L @ PhiA @ L.T)), "df": float(ddf), "stat": F,
            "p": float(stats.f.sf(F, q, ddf)), "kind": "F", "num_df": q, "F_scaling": scale}


def wald_z(fit: LMMFit, L) -> dict:
    """Asymptotic Wald test with ``Phi`` (what statsmodels reports): z, or chi-square / q as F(q, inf)."""
    L = np.atleast_2d(np.asarray(L, float))
    Phi, beta = fit.Phi, fit.beta
    if L.shape[0] == 1:
        c = L[0]
        est = float(c @ beta)
        se = math.sqrt(float(c @ Phi @ c))
        z = est / se
        return {"estimate": est, "se": se, "df": np.inf, "stat": z, "p": 2 * stats.norm.sf(abs(z)),
                "kind": "z", "num_df": 1}
    q = int(np.linalg.matrix_rank(L))
    Lb = L @ beta
    chi2 = float(Lb @ np.linalg.solve(L @ Phi @ L.T, Lb))
    return {"estimate": Lb, "se": np.sqrt(np.diag(L @ Phi @ L.T)), "df": np.inf, "stat": chi2 / q,
            "p": float(stats.chi2.sf(chi2, q)), "kind": "F", "num_df": q}
