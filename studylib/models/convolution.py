"""Convolution of a piecewise-linear input with an exponential, exact, and its derivative by the rate.

``(cp * e^{-k t})(t_i)`` on an arbitrary (non-uniform) time grid, by a recursion over segments that is
exact for a piecewise-linear ``cp`` (no discretisation error from the frame spacing); the derivative
with respect to ``k`` gives the analytic Jacobians of the tracer-kinetic fits.  Times in seconds,
rates in 1/s, the fitted axis last, no xarray.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exp_convolve", "exp_convolve_and_derivative"]


def _moments(dt, k, pmax):
    """``M_p = int_0^dt s^p exp(-k s) ds`` for p = 0..pmax (list of arrays shaped like k).

    Closed form ``p! / k^(p+1) [1 - e^{-z} sum_{j<=p} z^j / j!]`` (``z = k dt``) where
    ``z >= 0.5``; the series ``dt^(p+1) sum_m (-z)^m / (m! (m + p + 1))`` (14 terms,
    truncation < 1e-13) below, avoiding cancellation.  ``dM_p/dk = -M_{p+1}``.
    """
    k = np.asarray(k, dtype=float)
    z = k * dt
    small = z < 0.5
    zs = np.where(small, z, 0.0)
    ks = np.where(small, 1.0, k)
    x = np.exp(-z)
    out = []
    fact = 1.0
    poly = np.zeros_like(z)
    term = np.ones_like(z)
    for p in range(pmax + 1):
        if p > 0:
            fact *= p
            term = term * z / p
        poly = poly + term
        closed = fact / ks ** (p + 1) * (1.0 - x * poly)
        ser = np.zeros_like(z)
        c = np.ones_like(z)
        for mm in range(14):
            if mm > 0:
                c = c * (-zs) / mm
            ser = ser + c / (mm + p + 1)
        out.append(np.where(small, dt ** (p + 1) * ser, closed))
    return out


def _seg_weights(dt, k, deriv=False):
    """Segment weights for ``cp`` linear on a segment of length ``dt`` and rate ``k``.

    Returns ``x = exp(-k dt)``, ``w0, w1`` such that the segment contributes
    ``c_{i-1} w0 + c_i w1`` with ``w0 = M1 / dt``, ``w1 = M0 - M1 / dt``
    (``M_p = int_0^dt s^p e^{-k s} ds``, see :func:`_moments`); with ``deriv`` also
    ``dx/dk = -dt x`` and the k-derivatives ``w0' = -M2 / dt``, ``w1' = -M1 + M2 / dt``.
    """
    k = np.asarray(k, dtype=float)
    x = np.exp(-k * dt)
    mom = _moments(dt, k, 2 if deriv else 1)
    w0 = mom[1] / dt
    w1 = mom[0] - w0
    if not deriv:
        return x, w0, w1
    dw0 = -mom[2] / dt
    dw1 = -mom[1] - dw0
    return x, w0, w1, -dt * x, dw0, dw1


def _conv_tables(t, cp, kg):
    """E, dE/dk and d2E/dk2 for shared inputs ``cp`` (n,) or (D, n) and rates ``kg`` (G,).

    Returns three arrays of shape (G, n) (or (D, G, n)).  Differentiating the recursion
    ``E_i = x E_{i-1} + c_{i-1} w0 + c_i w1`` twice:
    ``E'_i = x' E_{i-1} + x E'_{i-1} + c_{i-1} w0' + c_i w1'`` and
    ``E''_i = x'' E_{i-1} + 2 x' E'_{i-1} + x E''_{i-1} + c_{i-1} w0'' + c_i w1''`` with
    ``x' = -dt x``, ``x'' = dt^2 x``, ``w0'' = M3 / dt``, ``w1'' = M2 - M3 / dt``.
    """
    cp = np.asarray(cp, dtype=float)
    single = cp.ndim == 1
    cp2 = cp[None, :] if single else cp
    n = t.size
    D, G = cp2.shape[0], kg.size
    e = np.zeros((n, D, G))
    d1 = np.zeros((n, D, G))
    d2 = np.zeros((n, D, G))
    cache = {}
    for i in range(1, n):
        dt = t[i] - t[i - 1]
        wts = cache.get(dt)
        if wts is None:
            x = np.exp(-kg * dt)
            m0, m1, m2, m3 = _moments(dt, kg, 3)
            wts = (x, m1 / dt, m0 - m1 / dt, -m2 / dt, -m1 + m2 / dt, m3 / dt, m2 - m3 / dt)
            if len(cache) < 64:
                cache[dt] = wts
        x, w0, w1, w0d, w1d, w0dd, w1dd = wts
        c0, c1 = cp2[:, i - 1, None], cp2[:, i, None]
        d2[i] = dt * dt * x * e[i - 1] - 2 * dt * x * d1[i - 1] + x * d2[i - 1] + c0 * w0dd + c1 * w1dd
        d1[i] = -dt * x * e[i - 1] + x * d1[i - 1] + c0 * w0d + c1 * w1d
        e[i] = x * e[i - 1] + c0 * w0 + c1 * w1
    out = [np.ascontiguousarray(np.moveaxis(a, 0, -1)) for a in (e, d1, d2)]
    return tuple(a[0] for a in out) if single else tuple(out)


def _recursion(t, cp, k, deriv=False):
    """Core recursion, time-major: ``k`` (m,), ``cp`` (n,) or (m, n).  Returns (m, n) arrays."""
    n = t.size
    m = k.size
    dt = np.diff(t)
    shared = cp.ndim == 1
    cpt = cp if shared else np.ascontiguousarray(cp.T)  # (n, m)
    out = np.empty((n, m))
    out[0] = 0.0
    dout = None
    if deriv:
        dout = np.empty((n, m))
        dout[0] = 0.0
    uniform = n > 1 and np.allclose(dt, dt[0], rtol=1e-9, atol=0)
    cache = {}
    acc = np.zeros(m)
    dacc = np.zeros(m) if deriv else None
    for i in range(1, n):
        key = dt[0] if uniform else dt[i - 1]
        wts = cache.get(key)
        if wts is None:
            wts = _seg_weights(float(key), k, deriv)
            if uniform or len(cache) < 8:
                cache[key] = wts
        c0 = cpt[i - 1]
        c1 = cpt[i]
        if deriv:
            x, w0, w1, dx, dw0, dw1 = wts
            # derivative first (uses the previous acc)
            dacc *= x
            dacc += dx * acc
            dacc += c0 * dw0
            dacc += c1 * dw1
            dout[i] = dacc
        else:
            x, w0, w1 = wts
        acc *= x
        acc += c0 * w0
        acc += c1 * w1
        out[i] = acc
    return out, dout


def exp_convolve(t_s, cp, k_per_s):
    """``E(t) = integral_0^t cp(u) exp(-k (t - u)) du`` for piecewise-linear ``cp``.

    Exact for ``cp`` linear between samples (any, also non-uniform, sampling), by the
    recursion of e.g. Flouri et al., MRM 2016;76:998 (doi:10.1002/mrm.25991):
    ``E_i = E_{i-1} x + c_{i-1} a + (c_i - c_{i-1}) (a - b / dt)`` with
    ``x = exp(-k dt)``, ``a = (1 - x) / k``, ``b = (1 - x (1 + k dt)) / k^2``; series
    limits are used where ``k dt`` is tiny (``k = 0`` gives the trapezoidal integral).

    Parameters
    ----------
    t_s : array_like, shape (n,)
        Sample times in s (increasing).
    cp : array_like, shape (n,) or (..., n)
        Input concentration at the sample times.
    k_per_s : array_like, shape (...)
        Rate constant(s) in 1/s; leading shape broadcast with ``cp``'s.

    Returns
    -------
    ndarray, shape (..., n), in concentration x seconds.
    """
    e, _ = _conv_dispatch(t_s, cp, k_per_s, deriv=False)
    return e


def exp_convolve_and_derivative(t_s, cp, k_per_s):
    """:func:`exp_convolve` and its derivative ``dE/dk`` (same shapes; units conc x s^2).

    ``dE/dk = -integral_0^t cp(u) (t - u) exp(-k (t - u)) du``, computed by differentiating
    the recursion term by term (exact for piecewise-linear ``cp``).
    """
    return _conv_dispatch(t_s, cp, k_per_s, deriv=True)


def _conv_dispatch(t_s, cp, k_per_s, deriv):
    t = np.asarray(t_s, dtype=float)
    cp = np.asarray(cp, dtype=float)
    k = np.asarray(k_per_s, dtype=float)
    lead = np.broadcast_shapes(k.shape, cp.shape[:-1])
    kf = np.broadcast_to(k, lead).reshape(-1)
    if cp.ndim == 1:
        cpf = cp
    else:
        cpf = np.broadcast_to(cp, lead + (t.size,)).reshape(-1, t.size)
    e, de = _recursion(t, cpf, np.ascontiguousarray(kf), deriv)
    e = e.T.reshape(lead + (t.size,))
    if de is not None:
        de = de.T.reshape(lead + (t.size,))
    return e, de


def _cumtrapz(t, y):
    """Cumulative trapezoidal integral along the last axis, starting at 0."""
    dt = np.diff(t)
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * dt
    out = np.zeros(y.shape)
    np.cumsum(inc, axis=-1, out=out[..., 1:])
    return out
