"""Relaxometry signal equations (forward models) and fitting kernels.

All kernels take the fitted axis last.  Times are in milliseconds, rates in 1/s,
angles in degrees, unless a name says otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "monoexp_signal",
    "spgr_signal",
    "inversion_recovery_signal",
    "saturation_recovery_signal",
]


def monoexp_signal(te_ms, s0, t2_ms):
    """Mono-exponential transverse decay ``S(TE) = S0 exp(-TE / T2)``.

    Used for T2* (multi-gradient-echo) and T2 (multi-spin-echo).

    Parameters
    ----------
    te_ms : array_like, shape (n,)
        Echo times in ms.
    s0 : array_like, shape (...)
        Signal at TE = 0 (a.u.).
    t2_ms : array_like, shape (...)
        T2 or T2* in ms (``R2 [1/s] = 1000 / T2 [ms]``).

    Returns
    -------
    ndarray, shape (..., n)
    """
    te_ms = np.asarray(te_ms, dtype=float)
    s0 = np.asarray(s0, dtype=float)[..., None]
    t2_ms = np.asarray(t2_ms, dtype=float)[..., None]
    return s0 * np.exp(-te_ms / t2_ms)


def spgr_signal(fa_deg, m0, t1_ms, tr_ms):
    """Steady-state spoiled gradient echo (SPGR/FLASH) signal.

    ``S = M0 sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR / T1)``
    (Ernst & Anderson 1966; Deoni et al., MRM 2003;49:515, doi:10.1002/mrm.10407).
    T2* decay at the echo time is folded into ``M0``.

    Parameters
    ----------
    fa_deg : array_like, shape (n,)
        Flip angles in degrees (last axis of the result).
    m0 : array_like, shape (...)
        Equilibrium magnetisation times receive gain (a.u.).
    t1_ms : array_like, shape (...)
        Longitudinal relaxation time in ms.
    tr_ms : float
        Repetition time in ms.
    """
    alpha = np.deg2rad(np.asarray(fa_deg, dtype=float))
    m0 = np.asarray(m0, dtype=float)[..., None]
    e1 = np.exp(-float(tr_ms) / np.asarray(t1_ms, dtype=float))[..., None]
    return m0 * np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1)


def inversion_recovery_signal(ti_ms, m0, t1_ms, efficiency=2.0, magnitude=True):
    """Inversion recovery ``S(TI) = M0 (1 - k exp(-TI / T1))`` with long TR.

    ``k = 2`` for a perfect inversion (Barral et al., MRM 2010;64:1057,
    doi:10.1002/mrm.22497).  ``magnitude=True`` returns ``|S|`` as magnitude images do.
    """
    ti_ms = np.asarray(ti_ms, dtype=float)
    m0 = np.asarray(m0, dtype=float)[..., None]
    t1_ms = np.asarray(t1_ms, dtype=float)[..., None]
    k = np.asarray(efficiency, dtype=float)[..., None] if np.ndim(efficiency) else efficiency
    s = m0 * (1.0 - k * np.exp(-ti_ms / t1_ms))
    return np.abs(s) if magnitude else s


def saturation_recovery_signal(trec_ms, m0, t1_ms):
    """Saturation recovery ``S(t) = M0 (1 - exp(-t / T1))``."""
    trec_ms = np.asarray(trec_ms, dtype=float)
    m0 = np.asarray(m0, dtype=float)[..., None]
    t1_ms = np.asarray(t1_ms, dtype=float)[..., None]
    return m0 * (1.0 - np.exp(-trec_ms / t1_ms))


# ---------------------------------------------------------------------------------------------
# Fitting kernels.  Everything below works on numpy arrays ``y[n_vox, n]`` (fitted axis last)
# and processes voxels in blocks, transposed to ``(n, block)`` so that sums over the fitted
# axis are fast reductions over contiguous rows.  No Python loop over voxels.
# ---------------------------------------------------------------------------------------------

__all__ += [
    "rician_mean_fast",
    "fit_monoexp",
    "fit_vfa",
    "fit_inversion_recovery",
    "fit_saturation_recovery",
    "MONOEXP_METHODS",
]

#: methods of :func:`fit_monoexp`
MONOEXP_METHODS = ("squared", "rician", "nonlinear", "loglinear")

_BLOCK = 4096
_BLOCK_SAMPLES = 122880  # fit_monoexp: ~samples per batch (T2*, 12 echoes: 10-15k voxels ~4 % faster than 6.8k, 60k slower)


def _batches(n_vox: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``max(1, round(n_vox / block))`` batches differing in size by one at most (about
    ``[3/4, 3/2] * block`` once ``n_vox >= block``): 15,084 voxels with ``block`` 10,240 are one batch, not
    10,240 + 4,844 (a small last batch costs the numpy calls of a full one, ~0.2 ms for T2*)."""
    k = max(1, int(round(n_vox / max(block, 1)))) if n_vox else 0
    return [(i * n_vox // k, (i + 1) * n_vox // k) for i in range(k)]


# Rational approximation of the Rician expectation:  E|S| = sigma * g(t), t = nu / sigma,
# g(t)^2 = t^2 + h(t^2),  h(u) = 1 + (pi/2 - 1) P(u) / Q(u),
# P = 1 + a1 u + a2 u^2,  Q = 1 + b1 u + b2 u^2 + b3 u^3.
# h(0) = pi/2 (the noise floor sigma*sqrt(pi/2)), h(inf) = 1 (E -> sqrt(nu^2 + sigma^2)).
# Fitted once against the exact Bessel form (studylib.models.noise.rician_mean) on t in [0, 1e4]:
# max |error| of g is 3.1e-5 (in units of sigma), max relative error 2.3e-5.
_HC = np.pi / 2.0 - 1.0
_A1, _A2 = 0.03063796, 0.01002471
_B1, _B2, _B3 = 0.4080389, 0.07339857, 0.0104453


def _rician_g(u):
    """Return ``g^2 = u + h(u)`` and ``h'(u)`` of the rational Rician approximation (u = t^2)."""
    p = 1.0 + u * (_A1 + _A2 * u)
    q = 1.0 + u * (_B1 + u * (_B2 + _B3 * u))
    dp = _A1 + 2.0 * _A2 * u
    dq = _B1 + u * (2.0 * _B2 + 3.0 * _B3 * u)
    iq = 1.0 / q
    g2 = u + 1.0 + _HC * p * iq
    dh = _HC * (dp * q - p * dq) * iq * iq
    return g2, dh


def rician_mean_fast(nu, sigma):
    """Expected magnitude of a Rician variable, fast rational approximation.

    ``E|S| = sigma * g(nu / sigma)`` with ``g(t)^2 = t^2 + h(t^2)`` and ``h`` a (2, 3) rational
    function matching ``h(0) = pi/2`` and ``h(inf) = 1``; absolute error below ``3.2e-5 sigma`` for
    every ``nu >= 0`` against the exact Laguerre/Bessel form
    (:func:`studylib.models.noise.rician_mean`; Gudbjartsson & Patz, MRM 1995;34:910,
    doi:10.1002/mrm.1910340618).  About 10x faster than the Bessel form.

    Parameters
    ----------
    nu : array_like
        True (noise-free) amplitude, >= 0.
    sigma : array_like
        Noise standard deviation per channel, > 0 (broadcast against ``nu``).
    """
    nu = np.asarray(nu, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    t = nu / sigma
    g2, _ = _rician_g(t * t)
    return sigma * np.sqrt(g2)


def _loglinear_T(yT, x, w, positive=False):
    """Weighted LSQ of ``ln y = a - R x`` along axis 0 of ``yT (n, nb)``; returns (s0, R).

    ``positive=True`` promises ``yT > 0`` everywhere (skips the clip to 1e-300).
    """
    lny = np.log(yT if positive else np.maximum(yT, 1e-300))
    sw = w.sum(axis=0)
    sx = x @ w
    sxx = (x * x) @ w
    wl = w * lny
    sy = wl.sum(axis=0)
    sxy = x @ wl
    det = sw * sxx - sx * sx
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = -(sw * sxy - sx * sy) / det
        a = (sxx * sy - sx * sxy) / det
        return np.exp(a), rate


def _solve_normal(A, g, lam):
    """Solve ``(A + lam diag(A)) d = g`` per voxel; A is a p x p nested list of (nb,) arrays."""
    p = len(g)
    if p == 2:
        a00 = A[0][0] * (1.0 + lam)
        a11 = A[1][1] * (1.0 + lam)
        a01 = A[0][1]
        det = a00 * a11 - a01 * a01
        with np.errstate(divide="ignore", invalid="ignore"):
            idet = 1.0 / det
        return [(a11 * g[0] - a01 * g[1]) * idet, (a00 * g[1] - a01 * g[0]) * idet]
    M = np.empty((g[0].shape[0], p, p))
    for i in range(p):
        for j in range(p):
            M[:, i, j] = A[i][j] * ((1.0 + lam) if i == j else 1.0)
    rhs = np.stack(g, axis=-1)
    bad = ~np.isfinite(M).all(axis=(1, 2)) | ~np.isfinite(rhs).all(axis=1)
    M[bad] = np.eye(p)
    rhs[bad] = 0.0
    det = np.linalg.det(M)
    sing = ~(np.abs(det) > 1e-300)
    M[sing] = np.eye(p)
    rhs[sing] = 0.0
    d = np.linalg.solve(M, rhs[..., None])[..., 0]
    d[bad | sing] = np.nan
    return [d[:, i] for i in range(p)]


def _lm(yT, theta, evaluate, n_iter, lower=None, upper=None, lam0=1e-3):
    """Batched Levenberg-Marquardt over voxels (columns of ``yT``), fixed number of iterations.

    ``evaluate(theta) -> (model, [J_0, ..., J_{p-1}])`` with arrays of shape ``(n, nb)``.
    Each iteration evaluates one trial point per voxel; a voxel accepts its step when the
    sum of squared residuals decreases (then ``lambda /= 3``), else keeps its parameters and
    multiplies its own damping by 10 (Marquardt 1963, doi:10.1137/0111030).
    Returns ``(theta, cost)``.
    """
    p = len(theta)
    theta = [np.array(t, dtype=float) for t in theta]
    model, J = evaluate(theta)
    r = yT - model
    cost = np.einsum("ij,ij->j", r, r)
    A = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i, p):
            A[i][j] = np.einsum("ij,ij->j", J[i], J[j])
            A[j][i] = A[i][j]
    g = [np.einsum("ij,ij->j", J[i], r) for i in range(p)]
    lam = np.full(yT.shape[1], lam0)
    for it in range(n_iter):
        d = _solve_normal(A, g, lam)
        trial = []
        for i in range(p):
            t = theta[i] + d[i]
            if lower is not None and lower[i] is not None:
                t = np.maximum(t, lower[i])
            if upper is not None and upper[i] is not None:
                t = np.minimum(t, upper[i])
            trial.append(t)
        model, J = evaluate(trial)
        r = yT - model
        c_t = np.einsum("ij,ij->j", r, r)
        ok = c_t < cost  # False for NaN
        theta = [np.where(ok, trial[i], theta[i]) for i in range(p)]
        cost = np.where(ok, c_t, cost)
        lam = np.where(ok, lam * (1.0 / 3.0), lam * 10.0)
        if it == n_iter - 1:
            break
        for i in range(p):
            for j in range(i, p):
                A[i][j] = np.where(ok, np.einsum("ij,ij->j", J[i], J[j]), A[i][j])
                A[j][i] = A[i][j]
            g[i] = np.where(ok, np.einsum("ij,ij->j", J[i], r), g[i])
    return theta, cost


def _exp_plan(x):
    """How :func:`_exp_T` evaluates ``exp(-x R)`` for a sorted axis ``x``: the step ``h`` and the
    integer gaps ``k`` (``x[i] - x[i-1] = k[i] h``) when every gap is a small multiple of one step,
    else None.  Evenly spaced echoes (any ``x[0]``) have ``k = 1``; b = 0, 200, 400, 700, 1000 has
    ``h = 100`` (times the scale) and ``k = 2, 2, 3, 3``.  Gaps must match to 1e-12 (1e-9 for an
    evenly spaced axis, as before), so the error of ``exp`` stays at the ulp level.
    """
    x = np.asarray(x, dtype=float)
    if x.shape[0] < 3:
        return None
    d = np.diff(x)
    if not np.all(d > 0):
        return None
    if np.allclose(d, d[0], rtol=1e-9, atol=0.0):  # evenly spaced (as before: tolerance 1e-9)
        return float(x[1] - x[0]), np.ones(d.size, dtype=int)
    dmin = float(d.min())
    for m in range(1, 9):
        h = dmin / m
        k = np.round(d / h)
        if k.max() <= 32 and np.all(np.abs(d - k * h) <= 1e-12 * d):
            return h, k.astype(int)
    return None


def _exp_T(x, rate, plan=False):
    """``exp(-x[:, None] * rate[None, :])``, shape ``(n, nb)``, for an axis ``x`` and rates ``rate``.

    When the gaps of ``x`` are small integer multiples ``k`` of one step ``h`` (evenly spaced
    echoes; the usual b-value lists), only ``exp(-x[0] R)`` and ``q = exp(-h R)`` are evaluated and
    each row is the previous one times ``q^k`` (one multiply per row and a few for the powers):
    exponentials dominate the cost of the fits.  Relative error ~ (sum of k) ulp.
    ``plan`` is :func:`_exp_plan` of ``x`` (computed when False; pass it in loops).
    """
    n = x.shape[0]
    if plan is False:
        plan = _exp_plan(x)
    if plan is None:
        out = np.multiply.outer(-x, rate)
        return np.exp(out, out=out)
    h, ks = plan
    out = np.empty((n, rate.shape[0]))
    if x[0] == 0:
        out[0] = 1.0
    else:
        np.exp(-x[0] * rate, out=out[0])
    powers = {1: np.exp(-h * rate)}
    for i in range(1, n):  # loop over echoes / b-values (<= tens), not voxels
        np.multiply(out[i - 1], _power(powers, int(ks[i - 1])), out=out[i])
    return out


def _power(powers, k):
    """``q^k`` by repeated squaring, memoised in ``powers`` (``powers[1] = q``)."""
    if k not in powers:
        half = _power(powers, k // 2)
        p = half * half
        if k % 2:
            p *= powers[1]
        powers[k] = p
    return powers[k]


def _squared_block(yT, x, sigma, n_iter, trunc, plan=False):
    """Noise-corrected squared-magnitude fit, known sigma, variable projection (see fit_monoexp).

    Written for speed (it is the default T2*/ADC fit): every pass over the ``(n, nb)`` arrays is
    in place where possible, and the iteration carries only what the next step needs.
    """
    n, nb = yT.shape
    y2 = yT * yT
    s2 = sigma * sigma
    yc = y2 - 2.0 * s2
    # start: log-linear on the noise-corrected power z = S^2 - 2 sigma^2 (E z = nu^2), weights ~ z,
    # samples with z < trunc^2 sigma^2 left out (the first two always kept)
    z = np.maximum(yc, 1e-300)
    w = np.where(yc > (trunc * trunc) * s2, z, 0.0)
    w[:2] = y2[:2]
    x2 = 2.0 * x
    plan = _exp_plan(x2) if plan is False else (None if plan is None else (2.0 * plan[0], plan[1]))
    a0, rate = _loglinear_T(z, x2, w, positive=True)
    del z, w
    bad0 = ~(np.isfinite(a0) & np.isfinite(rate) & (a0 > 0))
    a0 = np.where(bad0, y2[0], a0)
    rate = np.where(bad0 | ~np.isfinite(rate), 1.0 / max(x[-1], 1e-9), np.maximum(rate, 1e-9))
    # fixed weights 1 / Var(S^2) ~ 1 / (nu^2 + sigma^2) from the start values
    W = _exp_T(x2, rate, plan)
    W *= a0
    W += s2
    np.reciprocal(W, out=W)
    Wyc = np.multiply(W, yc, out=y2)  # y2 is not needed any more
    X3 = np.stack([np.ones_like(x2), x2, x2 * x2])

    def fgh(r):
        # reduced cost f(R) = sum W yc^2 - a^2 / b with a = sum W yc e, b = sum W e^2, e = exp(-2 R x);
        # returns f, f', f'' and q = a / b (the projected amplitude S0^2)
        e = _exp_T(x2, r, plan)
        p = Wyc * e
        e *= e
        e *= W
        a0_, a1, a2 = np.einsum("ik,kj->ij", X3, p)
        b0, b1, b2 = np.einsum("ik,kj->ij", X3, e)
        # with a' = -a1, a'' = a2, b' = -2 b1, b'' = 4 b2 (derivatives in R) and q = a0 / b0:
        # f = -a0 q,  f' = 2 q (a1 - q b1),  f'' = 2 (2 q^2 b2 - q a2 - (a1 - 2 q b1)^2 / b0)
        ib = 1.0 / b0
        q = a0_ * ib
        f = a0_ * q
        np.negative(f, out=f)
        t = q * b1
        fp = a1 - t
        fp *= q
        fp *= 2.0
        t *= 2.0
        np.subtract(a1, t, out=t)
        t *= t
        t *= ib
        fpp = q * b2
        fpp *= 2.0
        fpp -= a2
        fpp *= q
        fpp -= t
        fpp *= 2.0
        return f, fp, fpp, q

    f, fp, fpp, amp = fgh(rate)
    lam = np.full(nb, 1e-3)
    for it in range(n_iter):
        trial = np.maximum(rate - fp / (np.abs(fpp) * (1.0 + lam)), 1e-9)
        f_t, fp_t, fpp_t, q_t = fgh(trial)
        ok = f_t < f
        np.copyto(rate, trial, where=ok)
        np.copyto(amp, q_t, where=ok)
        np.copyto(f, f_t, where=ok)
        if it == n_iter - 1:
            break  # the derivatives and the damping are only needed for another step
        np.copyto(fp, fp_t, where=ok)
        np.copyto(fpp, fpp_t, where=ok)
        lam *= np.where(ok, 1.0 / 3.0, 10.0)
    cost = np.maximum(np.einsum("ij,ij->j", Wyc, yc) + f, 0.0)  # sum W (S^2 - model)^2
    return np.sqrt(amp), rate, cost


def _squared_free_block(yT, x, n_iter, trunc):
    """Squared-magnitude fit with the noise offset ``c = 2 sigma^2`` fitted per voxel (LM, 3 params)."""
    n, nb = yT.shape
    y2 = yT * yT
    s0, rate = _loglinear_T(yT, x, y2)
    bad0 = ~(np.isfinite(s0) & np.isfinite(rate) & (s0 > 0))
    s0 = np.where(bad0, yT[0], s0)
    rate = np.where(bad0, 1.0 / max(x[-1], 1e-9), np.maximum(rate, 1e-9))
    m0 = s0[None, :] * _exp_T(x, rate)
    res_rms = np.sqrt(np.mean((yT - m0) ** 2, axis=0) * n / max(n - 2, 1))
    floor = yT[-3:].mean(axis=0) / np.sqrt(np.pi / 2.0)
    sig0 = np.maximum(np.minimum(res_rms, floor), 1e-6 * s0)
    x2 = 2.0 * x
    W = 1.0 / (_exp_T(x2, rate) * (s0 * s0) + sig0 * sig0)
    sw = np.sqrt(W)
    xm = -x2[:, None]

    def evaluate(th):
        e = _exp_T(x2, th[1])
        ae = e * th[0]
        return (ae + th[2]) * sw, [e * sw, ae * xm * sw, sw]
    th, cost = _lm(y2 * sw, [s0 * s0, rate, 2.0 * sig0 * sig0], evaluate, n_iter, lower=[0.0, 1e-9, 0.0])
    return np.sqrt(th[0]), th[1], np.sqrt(th[2] / 2.0), cost


def _rician_block(yT, x, sigma, n_iter, trunc):
    """Least squares of |S| against the Rician expectation, known sigma (LM, analytic Jacobian)."""
    y2 = yT * yT
    s_row = sigma[None, :]
    w = np.where(yT > trunc * s_row, y2, 0.0)
    w[:2] = y2[:2]
    s0, rate = _loglinear_T(yT, x, w)
    bad0 = ~(np.isfinite(s0) & np.isfinite(rate) & (s0 > 0))
    s0 = np.where(bad0, yT[0], s0)
    rate = np.where(bad0, 1.0 / max(x[-1], 1e-9), np.maximum(rate, 1e-9))
    is_row = 1.0 / s_row
    xc = x[:, None]

    def evaluate(th):
        e = _exp_T(x, th[1])
        nu = e * th[0]
        t = nu * is_row
        g2, dh = _rician_g(t * t)
        gg = np.sqrt(g2)
        gp = t * (1.0 + dh) / gg
        return s_row * gg, [gp * e, -(gp * nu) * xc]
    th, _ = _lm(yT, [s0, rate], evaluate, n_iter, lower=[0.0, 1e-9])
    return th[0], th[1]


def _nonlinear_block(yT, x, n_iter):
    y2 = yT * yT
    s0, rate = _loglinear_T(yT, x, y2)
    bad0 = ~(np.isfinite(s0) & np.isfinite(rate) & (s0 > 0))
    s0 = np.where(bad0, yT[0], s0)
    rate = np.where(bad0, 1.0 / max(x[-1], 1e-9), np.maximum(rate, 1e-9))
    xc = x[:, None]

    def evaluate(th):
        e = _exp_T(x, th[1])
        m = e * th[0]
        return m, [e, -m * xc]
    th, _ = _lm(yT, [s0, rate], evaluate, n_iter, lower=[0.0, 1e-9])
    return th[0], th[1]


def fit_monoexp(y, x, *, method="squared", sigma=None, n_iter=None, trunc=2.0, gof=True, block=None, n_coils=1):
    """Fit ``S(x) = S0 exp(-R x)`` in every voxel (T2*, T2 and ADC share this kernel).

    Parameters
    ----------
    y : ndarray, shape (n_vox, n)
        Magnitude signal, fitted axis last.  A voxel with any NaN/Inf, or fewer than two
        positive samples, is not fitted (NaN, ``fit_ok=False``).
    x : ndarray, shape (n,)
        Sorted, distinct abscissa (echo time in ms, or ``b * 1e-3`` in ms/um^2).
    method : {"squared", "rician", "nonlinear", "loglinear"}
        ``"squared"`` (default; unbiased at low SNR): the noise-corrected squared magnitude.
        For Rician data ``E[S^2] = nu^2 + 2 sigma^2`` *exactly*, so fitting
        ``S^2 ~ S0^2 exp(-2 R x) + 2 sigma^2`` is an unbiased estimating equation at any SNR
        (Miller & Joseph, MRI 1993;11:1051, doi:10.1016/0730-725X(93)90225-3; the NCEXP model
        of Raya et al., NMR Biomed 2010;23:387, doi:10.1002/nbm.1476).  Weights
        ``1 / Var(S^2) ~ 1 / (nu^2 + sigma^2)`` are fixed from the start values; ``S0^2`` enters
        linearly and is projected out (variable projection, Golub & Pereyra 1973,
        doi:10.1137/0710036), leaving a damped 1-D Newton iteration on ``R`` whose sums over the
        fitted axis are one small matrix product per iteration.  With ``sigma=None`` the offset
        ``2 sigma^2`` is fitted per voxel as a third parameter (Levenberg-Marquardt; slower and
        noisier, prefer a background estimate of sigma).
        ``"rician"``: least squares of ``|S|`` against the Rician expectation
        ``E|S| = sigma g(S0 e^{-Rx} / sigma)`` (Gudbjartsson & Patz 1995,
        doi:10.1002/mrm.1910340618), with :func:`rician_mean_fast` and its analytic derivative;
        needs ``sigma``; ~4x slower than ``"squared"`` for the same accuracy.
        ``"nonlinear"``: least squares on ``|S| ~ S0 exp(-R x)`` (Levenberg-Marquardt); biased
        (R too low) when late samples sit on the noise floor.
        ``"loglinear"``: linear fit of ``ln S`` weighted by ``S^2`` (the variance of ``ln S`` is
        ``sigma^2 / S^2``; Veraart et al., NeuroImage 2013;81:335,
        doi:10.1016/j.neuroimage.2013.05.028).  Closed form and fastest; strongly biased by the
        noise floor.
        Start values for every iterative method: weighted log-linear, ignoring samples below
        ``trunc * sigma`` when sigma is known.
    sigma : None, float or ndarray (n_vox,)
        Noise standard deviation per channel (same units as ``y``).
    n_iter : int, optional
        Iterations (default 3 for ``squared`` with sigma, 8 otherwise).
    gof : bool
        Compute ``rmse`` (free for ``squared``; one more pass over the data otherwise).
    block : int, optional
        Voxels per internal batch (default ~120,000 samples: 10,240 voxels for 12 echoes, 24,576 for 5
        b-values, at least 4096), split into ``round(n_vox / block)`` equal batches.  Only speed, memory and
        the last bits of a few voxels (rounding by position; ~1e-10 relative) depend on it.
    n_coils : int
        Receive channels ``L`` combined by root-sum-of-squares (non-central chi noise, 2L degrees of
        freedom).  ``E[S^2] = S0^2 e^{-2Rx} + 2 L sigma^2`` and ``Var(S^2) = 4 sigma^2 (nu^2 + L
        sigma^2)`` hold exactly, so ``"squared"`` is the same fit with ``sigma`` replaced by
        ``sqrt(L) sigma`` (weights included; Constantinides et al., MRM 1997;38:852,
        doi:10.1002/mrm.1910380524); with sigma fitted, the fitted offset is ``2 L sigma^2``.
        ``"rician"`` models one channel only (``L = 1``).  ``sigma`` stays the SD per channel.

    Returns
    -------
    dict with ``s0``, ``rate`` (1/[x]), ``sigma`` (given, fitted, or NaN), ``rmse`` (root mean
    square residual in units of ``y``: of ``|S| - E|S|`` for ``rician``/``nonlinear``/``loglinear``;
    for ``squared`` the noise-weighted ``sqrt(mean(W (S^2 - m)^2) / 4)``, which tends to
    ``|S| - sqrt(m)`` at high SNR and is ~sigma for a good fit) and ``fit_ok``, each
    ``(n_vox,)``.  Non-physical fits (``R <= 0``, ``S0 <= 0``, non-finite) are NaN with
    ``fit_ok=False``.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != x.shape[0]:
        raise ValueError(f"y must be (n_vox, {x.shape[0]}), got {y.shape}")
    if method not in MONOEXP_METHODS:
        raise ValueError(f"method must be one of {MONOEXP_METHODS}, got {method!r}")
    nv, n = y.shape
    if sigma is not None:
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (nv,))
    elif method == "rician":
        raise ValueError("method='rician' needs sigma")
    if n_coils != 1:
        from .noise import check_n_coils
        n_coils = check_n_coils(n_coils)
    if n_coils != 1 and method == "rician":
        raise ValueError(f"method='rician' models one receive channel; use method='squared' for n_coils={n_coils}")
    coil = np.sqrt(float(n_coils)) if n_coils != 1 else None  # sigma -> sqrt(L) sigma in the squared model
    if n_iter is None:
        n_iter = 3 if (method == "squared" and sigma is not None) else 8
    if block is None:
        block = max(_BLOCK, _BLOCK_SAMPLES // max(n, 1))
    s0 = np.full(nv, np.nan)
    rate = np.full(nv, np.nan)
    sig_out = np.full(nv, np.nan)
    rmse = np.full(nv, np.nan)
    plan = _exp_plan(x)
    for start, stop in _batches(nv, block):
        # the fitted axis first (voxels contiguous: every operation below is a pass over rows)
        yT = np.ascontiguousarray(y[start:stop].T)
        good = np.isfinite(yT).all(axis=0) & ((yT > 0).sum(axis=0) >= 2)
        sb = None if sigma is None else np.ascontiguousarray(sigma[start:stop])
        if sb is not None:
            good &= np.isfinite(sb) & (sb > 0)
        if good.all():
            sel = slice(start, start + yT.shape[1])
        elif good.any():
            sel = start + np.flatnonzero(good)
            yT = np.ascontiguousarray(yT[:, good])
            sb = None if sb is None else sb[good]
        else:
            continue
        sg = sb
        wcost = None
        with np.errstate(all="ignore"):
            if method == "loglinear":
                a, r = _loglinear_T(yT, x, yT * yT)
            elif method == "nonlinear":
                a, r = _nonlinear_block(yT, x, n_iter)
            elif method == "rician":
                a, r = _rician_block(yT, x, sb, n_iter, trunc)
            elif sb is None:
                a, r, sg, wcost = _squared_free_block(yT, x, n_iter, trunc)
                sg = sg if coil is None else sg / coil
            else:
                a, r, wcost = _squared_block(yT, x, sb if coil is None else sb * coil, n_iter, trunc, plan)
            if gof and wcost is not None:
                # W (S^2 - m)^2 / 4 ~ (S - sqrt(m))^2: a noise-weighted residual in signal units
                rmse[sel] = np.sqrt(wcost / (4.0 * n))
            elif gof:
                nu = _exp_T(x, np.where(np.isfinite(r), r, 0.0), plan)
                nu *= a
                if sg is None or method in ("loglinear", "nonlinear"):
                    m = nu
                else:
                    sr = sg[None, :]
                    nu /= sr
                    nu *= nu
                    m = np.sqrt(_rician_g(nu)[0]) * sr
                m -= yT
                m *= m
                rmse[sel] = np.sqrt(m.mean(axis=0))
        s0[sel] = a
        rate[sel] = r
        if sg is not None:
            sig_out[sel] = sg
    fit_ok = np.isfinite(s0) & np.isfinite(rate) & (s0 > 0) & (rate > 0)
    if gof:
        fit_ok &= np.isfinite(rmse)
    for arr in (s0, rate, rmse):
        arr[~fit_ok] = np.nan
    return {"s0": s0, "rate": rate, "sigma": sig_out, "rmse": rmse, "fit_ok": fit_ok}


def _run_blocks(y, fn, names, block=_BLOCK, extra=()):
    """Apply ``fn(yT (n, nb), *extra_block) -> tuple of (nb,) arrays`` block-wise over finite voxels.

    ``extra``: per-voxel arrays ``(n_vox,)`` (e.g. a B1 map) handed to ``fn`` for the same voxels; a
    voxel whose extra value is not finite is not fitted either."""
    y = np.asarray(y, dtype=np.float64)
    nv = y.shape[0]
    out = {k: np.full(nv, np.nan) for k in names}
    ok = np.isfinite(y).all(axis=1)
    for e in extra:
        ok &= np.isfinite(e)
    idx = np.flatnonzero(ok)
    for start in range(0, idx.size, block):
        sel = idx[start:start + block]
        yT = np.ascontiguousarray(y[sel].T)
        with np.errstate(all="ignore"):
            res = fn(yT, *(e[sel] for e in extra))
        for k, v in zip(names, res):
            out[k][sel] = v
    return out


def fit_vfa(y, fa_deg, *, tr_ms, method="linear", n_iter=6, block=_BLOCK, b1=None):
    """T1 from variable-flip-angle spoiled gradient echo (DESPOT1).

    ``S(a) = M0 sin a (1 - E1) / (1 - cos a E1)``, ``E1 = exp(-TR / T1)``.
    ``"linear"``: ``S / sin a = E1 S / tan a + M0 (1 - E1)``, a straight line whose slope is E1
    (Deoni et al., MRM 2003;49:515, doi:10.1002/mrm.10407), closed form for all voxels.
    ``"nonlinear"``: Levenberg-Marquardt on ``(M0, T1)`` with analytic derivatives, started from
    the linear fit.  Flip angles are nominal unless ``b1`` is given: then voxel ``v`` uses the
    actual angles ``a = b1[v] * a_nominal`` in both methods (``b1``: relative flip angle, actual /
    nominal).  Uncorrected, the fit returns ``T1_app ~ b1^2 T1`` for small angles (``S ~ M0 b a /
    (1 + b^2 a^2 T1 / (2 TR))``): 0.72 T1 for ``b1 = 0.85``.

    Parameters
    ----------
    y : ndarray (n_vox, n)
    fa_deg : ndarray (n,)
        Flip angles in degrees (>= 2 distinct).
    tr_ms : float
        Repetition time in ms.
    b1 : ndarray (n_vox,), optional
        Relative flip angle (actual / nominal) per voxel; a voxel with a non-finite value is not fitted.

    Returns
    -------
    dict ``t1`` (ms), ``m0``, ``rmse``, ``fit_ok``.
    """
    a = np.deg2rad(np.asarray(fa_deg, dtype=float))
    sa, ca, ta = np.sin(a), np.cos(a), np.tan(a)
    tr = float(tr_ms)

    def fn(yT, *rel):
        if rel:  # per-voxel actual angles (n, nb)
            av = a[:, None] * rel[0][None, :]
            S, C, T = np.sin(av), np.cos(av), np.tan(av)
        else:
            S, C, T = sa[:, None], ca[:, None], ta[:, None]
        Y = yT / S
        X = yT / T
        n = yT.shape[0]
        sx, sy = X.sum(0), Y.sum(0)
        sxx, sxy = (X * X).sum(0), (X * Y).sum(0)
        e1 = (n * sxy - sx * sy) / (n * sxx - sx * sx)
        m0 = (sy - e1 * sx) / n / (1.0 - e1)
        t1 = -tr / np.log(e1)
        if method == "nonlinear":
            good = np.isfinite(t1) & (t1 > 0) & np.isfinite(m0)
            t1 = np.where(good, t1, 1000.0)
            m0 = np.where(good, m0, yT.max(0) / 0.1)
            sac, cac = S, C

            def evaluate(th):
                e = np.exp(-tr / th[1])[None, :]
                den = 1.0 / (1.0 - cac * e)
                base = sac * (1.0 - e) * den
                ds_de = th[0][None, :] * sac * (cac - 1.0) * den * den
                return th[0][None, :] * base, [base, ds_de * e * tr / (th[1] * th[1])[None, :]]
            th, cost = _lm(yT, [m0, t1], evaluate, n_iter, lower=[0.0, 1e-3])
            m0, t1 = th
            rmse = np.sqrt(cost / n)
        else:
            model = m0[None, :] * S * (1 - e1[None, :]) / (1 - C * e1[None, :])
            rmse = np.sqrt(((yT - model) ** 2).mean(0))
        return t1, m0, rmse

    extra = () if b1 is None else (np.broadcast_to(np.asarray(b1, dtype=float), (np.shape(y)[0],)),)
    out = _run_blocks(y, fn, ("t1", "m0", "rmse"), block, extra)
    ok = np.isfinite(out["t1"]) & (out["t1"] > 0) & np.isfinite(out["m0"]) & (out["m0"] > 0) & np.isfinite(out["rmse"])
    for k in out:
        out[k][~ok] = np.nan
    out["fit_ok"] = ok
    return out


def fit_inversion_recovery(y, ti_ms, *, magnitude=True, n_iter=25, block=_BLOCK):
    """T1 from inversion recovery, ``S = M0 (1 - k exp(-TI / T1))`` (``k`` ~ 2, fitted).

    Three-parameter fit (M0, k, T1) by batched Levenberg-Marquardt with analytic derivatives.
    ``magnitude=False`` fits phase-corrected (signed) data directly.  Magnitude data ``|S|`` are fitted
    by *polarity restoration* (Barral et al., MRM 2010;64:1057, doi:10.1002/mrm.22497): the signal
    changes sign once, between the samples around the smallest ``|S|``; both candidate sign patterns
    (the smallest sample negative, or positive) are restored, the signed model is fitted to each, started
    at ``T1 = TI_null / ln 2`` from that pattern's zero crossing, ``k = 2``, ``M0 = max |S|``, and the
    pattern with the smaller residual is kept.  (Fitting ``|model|`` through the absolute value instead
    puts the model's null on the sampled minimum and converges to T1 too short by ~40 % in white and
    grey matter when the minimum sample is near the true null.)
    Returns dict ``t1`` (ms), ``m0``, ``efficiency`` (k), ``rmse``, ``fit_ok``.
    """
    ti = np.asarray(ti_ms, dtype=float)
    tic = ti[:, None]
    lo_t1, hi_t1 = ti[0] / 5 + 1e-3, ti[-1] * 5

    def evaluate(th):
        e = np.exp(-tic / th[2][None, :])
        s = th[0][None, :] * (1.0 - th[1][None, :] * e)
        j0 = 1.0 - th[1][None, :] * e
        j1 = -th[0][None, :] * e
        j2 = -th[0][None, :] * th[1][None, :] * e * tic / (th[2] * th[2])[None, :]
        return s, [j0, j1, j2]

    def signed_fit(ys, t1_start, m0):
        k = np.full_like(m0, 2.0)
        t1 = np.clip(t1_start, lo_t1, hi_t1)
        return _lm(ys, [m0, k, t1], evaluate, n_iter, lower=[0.0, 0.0, 1e-3], upper=[None, 2.5, None])

    def fn(yT):
        n = yT.shape[0]
        ay = np.abs(yT)
        m0 = ay.max(axis=0)
        if not magnitude:
            i_null = np.argmin(ay, axis=0)
            th, cost = signed_fit(yT, ti[i_null] / np.log(2.0), m0)
            return th[2], th[0], th[1], np.sqrt(cost / n)
        i_null = np.argmin(ay, axis=0)
        idx = np.arange(n)[:, None]
        best = None
        for first_positive in (i_null, i_null + 1):  # the smallest sample positive, or still negative
            ys = np.where(idx < first_positive[None, :], -ay, ay)
            lo = ti[np.clip(first_positive - 1, 0, n - 1)]
            hi = ti[np.clip(first_positive, 0, n - 1)]
            t_null = np.where(first_positive == 0, ti[0] / 2, np.where(first_positive >= n, ti[-1] * 1.5,
                                                                        0.5 * (lo + hi)))
            th, cost = signed_fit(ys, t_null / np.log(2.0), m0)
            if best is None:
                best = (th, cost)
            else:
                better = cost < best[1]
                best = ([np.where(better, a, b) for a, b in zip(th, best[0])], np.where(better, cost, best[1]))
        th, cost = best
        return th[2], th[0], th[1], np.sqrt(cost / n)

    out = _run_blocks(y, fn, ("t1", "m0", "efficiency", "rmse"), block)
    ok = np.isfinite(out["t1"]) & (out["t1"] > 0) & (out["m0"] > 0) & np.isfinite(out["rmse"])
    for k in out:
        out[k][~ok] = np.nan
    out["fit_ok"] = ok
    return out


def fit_saturation_recovery(y, trec_ms, *, n_iter=12, block=_BLOCK):
    """T1 from saturation recovery ``S = M0 (1 - exp(-t / T1))`` (batched Levenberg-Marquardt).

    Started from ``M0 = 1.05 max S`` and the signal-weighted mean of ``-t / ln(1 - S/M0)``.
    Returns dict ``t1`` (ms), ``m0``, ``rmse``, ``fit_ok``.
    """
    t = np.asarray(trec_ms, dtype=float)
    tc = t[:, None]

    def fn(yT):
        n = yT.shape[0]
        m0 = 1.05 * yT.max(axis=0)
        frac = np.clip(yT / m0[None, :], 1e-6, 1 - 1e-6)
        est = -tc / np.log1p(-frac)
        w = frac * (1 - frac)
        t1 = (w * est).sum(0) / w.sum(0)

        def evaluate(th):
            e = np.exp(-tc / th[1][None, :])
            return th[0][None, :] * (1 - e), [1 - e, -th[0][None, :] * e * tc / (th[1] * th[1])[None, :]]
        th, cost = _lm(yT, [m0, t1], evaluate, n_iter, lower=[0.0, 1e-3])
        return th[1], th[0], np.sqrt(cost / n)

    out = _run_blocks(y, fn, ("t1", "m0", "rmse"), block)
    ok = np.isfinite(out["t1"]) & (out["t1"] > 0) & (out["m0"] > 0) & np.isfinite(out["rmse"])
    for k in out:
        out[k][~ok] = np.nan
    out["fit_ok"] = ok
    return out
