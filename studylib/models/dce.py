"""DCE-MRI: arterial input functions and tracer-kinetic forward models.

Times are in seconds, Ktrans/kep in 1/min, concentrations in mM, volume fractions
dimensionless.  Fitting kernels follow in this module (fitted axis last).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PARKER_2006",
    "MCGRATH_2009_MODEL_B",
    "parker_aif",
    "mcgrath_mouse_aif",
    "blood_to_plasma",
    "exp_convolve",
    "tofts_ct",
    "extended_tofts_ct",
    "patlak_ct",
]

#: Parker et al., MRM 2006;56:993 (doi:10.1002/mrm.21066), Table 1; times in minutes, Cb in mM.
PARKER_2006 = dict(A1=0.809, sigma1=0.0563, T1=0.17046, A2=0.330, sigma2=0.132, T2=0.365,
                   alpha=1.050, beta=0.1685, s=38.078, tau=0.483)

#: McGrath et al., MRM 2009;61:1173 (doi:10.1002/mrm.21959), Table 1 model B (mouse):
#: linear rise to t0, then bi-exponential decay.  A in mM, K in 1/s, t0 in s.
MCGRATH_2009_MODEL_B = dict(A1=3.4, K1=0.045, A2=1.81, K2=0.0015, t0=7.0)


def parker_aif(t_s, delay_s=0.0, params=PARKER_2006):
    """Parker population AIF (whole blood, mM).

    ``Cb(t) = sum_n A_n / (sigma_n sqrt(2 pi)) exp(-(t - T_n)^2 / (2 sigma_n^2))
    + alpha exp(-beta t) / (1 + exp(-s (t - tau)))`` with t in minutes.
    A delay shifts the curve later; samples before the delay are 0 (OSIPI convention).
    """
    t_s = np.asarray(t_s, dtype=float)
    tm = (t_s - delay_s) / 60.0
    p = params
    cb = (p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-((tm - p["T1"]) ** 2) / (2 * p["sigma1"] ** 2))
          + p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-((tm - p["T2"]) ** 2) / (2 * p["sigma2"] ** 2))
          + p["alpha"] * np.exp(-p["beta"] * tm) / (1.0 + np.exp(-p["s"] * (tm - p["tau"]))))
    if delay_s:
        cb = np.where(t_s < delay_s, 0.0, cb)
    return cb


def mcgrath_mouse_aif(t_s, delay_s=0.0, params=MCGRATH_2009_MODEL_B):
    """McGrath et al. 2009 mouse AIF, model B (whole blood, mM).

    ``Cb = (A1 + A2) t / t0`` for ``0 <= t < t0`` and
    ``Cb = A1 exp(-K1 (t - t0)) + A2 exp(-K2 (t - t0))`` for ``t >= t0``, with t in s
    measured from ``delay_s``; 0 before the delay.
    """
    p = params
    t = np.asarray(t_s, dtype=float) - delay_s
    rise = (p["A1"] + p["A2"]) * t / p["t0"]
    decay = p["A1"] * np.exp(-p["K1"] * (t - p["t0"])) + p["A2"] * np.exp(-p["K2"] * (t - p["t0"]))
    return np.where(t < 0, 0.0, np.where(t < p["t0"], rise, decay))


def blood_to_plasma(cb, hematocrit=0.45):
    """Plasma concentration ``Cp = Cb / (1 - Hct)`` (the agent stays out of red cells)."""
    if not 0.0 <= hematocrit < 1.0:
        raise ValueError(f"hematocrit must be in [0, 1), got {hematocrit}")
    return np.asarray(cb, dtype=float) / (1.0 - hematocrit)


def exp_convolve(t_s, cp, k_per_s):
    """``E(t) = integral_0^t cp(u) exp(-k (t - u)) du`` for piecewise-linear ``cp``.

    Exact for ``cp`` linear between samples (any, also non-uniform, sampling), by the
    recursion of e.g. Flouri et al., MRM 2016;76:998 (doi:10.1002/mrm.25991):
    ``E_i = E_{i-1} x + c_{i-1} a + (c_i - c_{i-1}) (a - b / dt)`` with
    ``x = exp(-k dt)``, ``a = (1 - x) / k``, ``b = (1 - x (1 + k dt)) / k^2``; the
    limits for ``k -> 0`` (``a = dt``, ``b = dt^2 / 2``) are used where ``k dt`` is tiny.

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
    t = np.asarray(t_s, dtype=float)
    cp = np.asarray(cp, dtype=float)
    k = np.asarray(k_per_s, dtype=float)[..., None]
    dt = np.diff(t)  # (n-1,)
    kdt = k * dt  # (..., n-1)
    small = np.abs(kdt) < 1e-6
    ksafe = np.where(small, 1.0, k)
    x = np.exp(-kdt)
    a = np.where(small, dt * (1 - kdt / 2), -np.expm1(-kdt) / ksafe)
    b = np.where(small, dt**2 * (0.5 - kdt / 3), (1.0 - x * (1.0 + kdt)) / ksafe**2)
    c0 = cp[..., :-1]
    dc = np.diff(cp, axis=-1)
    inc = c0 * a + dc * (a - b / dt)  # (..., n-1)
    shape = np.broadcast_shapes(inc.shape[:-1], x.shape[:-1]) + (t.size,)
    out = np.zeros(shape)
    x = np.broadcast_to(x, shape[:-1] + (t.size - 1,))
    inc = np.broadcast_to(inc, shape[:-1] + (t.size - 1,))
    acc = np.zeros(shape[:-1])
    for i in range(t.size - 1):
        acc = acc * x[..., i] + inc[..., i]
        out[..., i + 1] = acc
    return out


def tofts_ct(t_s, cp, ktrans_per_min, ve):
    """Standard Tofts ``Ct(t) = Ktrans integral Cp(u) exp(-kep (t - u)) du``, ``kep = Ktrans / ve``.

    Tofts et al., JMRI 1999;10:223 (doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S).
    """
    return extended_tofts_ct(t_s, cp, ktrans_per_min, ve, 0.0)


def extended_tofts_ct(t_s, cp, ktrans_per_min, ve, vp):
    """Extended Tofts ``Ct = vp Cp + Ktrans integral Cp(u) exp(-kep (t - u)) du``.

    Parameters
    ----------
    t_s : (n,) frame times in s.  cp : (n,) plasma concentration in mM.
    ktrans_per_min, ve, vp : arrays of the voxel shape (...).

    Returns
    -------
    ndarray (..., n): tissue concentration in mM.
    """
    ktrans = np.asarray(ktrans_per_min, dtype=float) / 60.0
    ve = np.asarray(ve, dtype=float)
    vp = np.asarray(vp, dtype=float)
    kep = np.divide(ktrans, ve, out=np.zeros(np.broadcast(ktrans, ve).shape), where=ve > 0)
    conv = exp_convolve(t_s, cp, kep)
    return vp[..., None] * np.asarray(cp, dtype=float) + ktrans[..., None] * conv


def patlak_ct(t_s, cp, ktrans_per_min, vp):
    """Patlak ``Ct = vp Cp + Ktrans integral_0^t Cp`` (Ktrans is OSIPI's PS here).

    Patlak et al., J Cereb Blood Flow Metab 1983;3:1 (doi:10.1038/jcbfm.1983.1).
    """
    ktrans = np.asarray(ktrans_per_min, dtype=float) / 60.0
    vp = np.asarray(vp, dtype=float)
    integral = exp_convolve(t_s, cp, np.zeros(()))  # k = 0: trapezoidal integral
    return vp[..., None] * np.asarray(cp, dtype=float) + ktrans[..., None] * integral
