"""Arterial input functions: population AIFs (Parker 2006 human, McGrath 2009 rat), whole blood ->
plasma, resampling a curve onto frame times, and the bolus arrival time of a curve.

No mouse population AIF is offered: the McGrath 2009 curve was measured in rats (it used to be called
``mcgrath_mouse_aif``, a name kept as a deprecated alias), and a published mouse curve (e.g. Loveless
et al., MRM 2012;67:226, doi:10.1002/mrm.22988, 7 T) is only added with its published parameters.

Times in seconds, concentrations in mM, the fitted axis last, no xarray.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._solve import _solve3

__all__ = ["PARKER_2006", "MCGRATH_2009_MODEL_B", "parker_aif", "mcgrath_rat_aif", "mcgrath_mouse_aif",
           "blood_to_plasma", "resample_curve", "bolus_arrival_kernel"]

#: Parker et al., MRM 2006;56:993 (doi:10.1002/mrm.21066), Table 1; times in minutes, Cb in mM.
PARKER_2006 = dict(A1=0.809, sigma1=0.0563, T1=0.17046, A2=0.330, sigma2=0.132, T2=0.365,
                   alpha=1.050, beta=0.1685, s=38.078, tau=0.483)

#: McGrath et al., "Comparison of model-based arterial input functions for dynamic contrast-enhanced
#: MRI in tumor bearing rats", MRM 2009;61:1173 (doi:10.1002/mrm.21959), model B (RAT, not mouse):
#: linear rise to t0, then bi-exponential decay.  A in mM, K in 1/s, t0 in s.  The OSIPI
#: DCE-DSC-MRI code collection's "preclinical AIF" (tests/test_osipi.py checks against it).
MCGRATH_2009_MODEL_B = dict(A1=3.4, K1=0.045, A2=1.81, K2=0.0015, t0=7.0)


def parker_aif(t_s, delay_s=0.0, params=PARKER_2006):
    """Parker population AIF (whole blood, mM).

    Parameters
    ----------
    t_s : array_like
        Times in s.
    delay_s : float
        Bolus arrival delay in s; samples before it are 0 (OSIPI convention).
    params : dict
        Parker et al. Table 1 parameters (times in minutes).

    Returns
    -------
    ndarray
        Blood concentration in mM, shape of ``t_s``.

    Notes
    -----
    ``Cb(t) = sum_n A_n / (sigma_n sqrt(2 pi)) exp(-(t - T_n)^2 / (2 sigma_n^2))
    + alpha exp(-beta t) / (1 + exp(-s (t - tau)))`` with t in minutes measured from the
    delay.  Parker et al., MRM 2006;56:993, doi:10.1002/mrm.21066.
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


def mcgrath_rat_aif(t_s, delay_s=0.0, params=MCGRATH_2009_MODEL_B):
    """McGrath et al. 2009 rat AIF, model B (whole blood, mM).

    A population curve of tumour-bearing rats (Gd-DTPA).  Used for mice it is an assumption: mouse
    blood volume, cardiac output and renal clearance differ (faster wash-out), so say so when you do.

    Parameters
    ----------
    t_s : array_like
        Times in s.
    delay_s : float
        Bolus arrival delay in s; 0 before it.
    params : dict
        ``A1, A2`` (mM), ``K1, K2`` (1/s), ``t0`` (s).

    Returns
    -------
    ndarray
        Blood concentration in mM.

    Notes
    -----
    ``Cb = (A1 + A2) t / t0`` for ``0 <= t < t0`` and
    ``Cb = A1 exp(-K1 (t - t0)) + A2 exp(-K2 (t - t0))`` for ``t >= t0``, with t in s
    measured from ``delay_s``.  McGrath et al., MRM 2009;61:1173, doi:10.1002/mrm.21959.
    """
    return _mcgrath(t_s, delay_s, params)


def mcgrath_mouse_aif(t_s, delay_s=0.0, params=MCGRATH_2009_MODEL_B):
    """Deprecated alias of :func:`mcgrath_rat_aif` (the McGrath 2009 curve was measured in rats).

    Same values; emits a :class:`DeprecationWarning`.
    """
    warnings.warn("mcgrath_mouse_aif is the McGrath et al. 2009 RAT AIF: call mcgrath_rat_aif (same values)",
                  DeprecationWarning, stacklevel=2)
    return _mcgrath(t_s, delay_s, params)


def _mcgrath(t_s, delay_s, params):
    p = params
    t = np.asarray(t_s, dtype=float) - delay_s
    rise = (p["A1"] + p["A2"]) * t / p["t0"]
    decay = p["A1"] * np.exp(-p["K1"] * (t - p["t0"])) + p["A2"] * np.exp(-p["K2"] * (t - p["t0"]))
    return np.where(t < 0, 0.0, np.where(t < p["t0"], rise, decay))


def blood_to_plasma(cb, hematocrit=0.45):
    """Plasma concentration ``Cp = Cb / (1 - Hct)`` (the agent stays out of red cells).

    Parameters
    ----------
    cb : array_like
        Whole-blood concentration (mM).
    hematocrit : float
        Large-vessel haematocrit, in [0, 1).
    """
    if not 0.0 <= hematocrit < 1.0:
        raise ValueError(f"hematocrit must be in [0, 1), got {hematocrit}")
    return np.asarray(cb, dtype=float) / (1.0 - hematocrit)


def resample_curve(t_from_s, c, t_to_s, delay_s=0.0):
    """Linearly resample a curve (last axis) to new times, optionally delayed.

    ``c_new(t) = c(t - delay)`` by linear interpolation of the samples; before the first
    sample the first (baseline) value is held, after the last sample the last value is
    held.  This is the interpolation the convolution of
    :func:`exp_convolve` assumes (piecewise-linear input), so resampling then fitting is
    consistent.

    Parameters
    ----------
    t_from_s : (m,) increasing times of the samples in s.
    c : (..., m) values.
    t_to_s : (n,) new times in s.
    delay_s : float or array (...) of delays in s (positive = later).

    Returns
    -------
    ndarray (..., n)
    """
    tf = np.asarray(t_from_s, dtype=float)
    c = np.asarray(c, dtype=float)
    tt = np.asarray(t_to_s, dtype=float)
    d = np.asarray(delay_s, dtype=float)
    if c.ndim == 1 and d.ndim == 0:
        return np.interp(tt - float(d), tf, c)
    q = tt - d[..., None]
    shape = np.broadcast_shapes(q.shape, c.shape[:-1] + (tt.size,))
    q = np.broadcast_to(q, shape)
    cb = np.broadcast_to(c, shape[:-1] + (tf.size,))
    qc = np.clip(q, tf[0], tf[-1])
    idx = np.clip(np.searchsorted(tf, qc, side="right") - 1, 0, tf.size - 2)
    t0 = tf[idx]
    c0 = np.take_along_axis(cb, idx, axis=-1)
    c1 = np.take_along_axis(cb, idx + 1, axis=-1)
    w = (qc - t0) / (tf[idx + 1] - t0)
    return c0 + w * (c1 - c0)


def bolus_arrival_kernel(y, t_s, *, substeps=10):
    """Bolus arrival time by piecewise-continuous regression (constant then quadratic).

    For every candidate arrival time ``tau`` on a grid (``substeps`` per frame interval)
    the curve up to its maximum is fitted by least squares with
    ``y = b`` for ``t < tau`` and ``y = b + a1 (t - tau) + a2 (t - tau)^2`` after;
    the ``tau`` with the smallest sum of squares is returned.  Vectorised over voxels and
    candidates (one matrix product per design column pair).

    Returns
    -------
    dict: ``bat_s`` (s), ``fit_ok``.

    Notes
    -----
    After Cheong, Koh & Hou, Phys Med Biol 2003;48:N83 (doi:10.1088/0031-9155/48/5/403),
    linear-quadratic model, with a flat (constant) baseline.
    """
    y = np.asarray(y, dtype=float)
    t = np.asarray(t_s, dtype=float)
    m, n = y.shape
    out = {"bat_s": np.full(m, np.nan), "fit_ok": np.zeros(m, dtype=bool)}
    good = np.all(np.isfinite(y), axis=1)
    yg = y[good]
    if yg.shape[0] == 0:
        return out
    ip = np.argmax(yg, axis=1)
    w = (np.arange(n)[None, :] <= ip[:, None]).astype(float)  # fit window up to the peak
    taus = np.concatenate([np.linspace(t[i], t[i + 1], substeps, endpoint=False) for i in range(n - 1)] + [t[-1:]])
    u = np.maximum(t[None, :] - taus[:, None], 0.0)  # (T, n)
    cols = [np.ones_like(u), u, u * u]
    # Gram entries per voxel & candidate: sum_t w * ci * cj
    A = {}
    for i in range(3):
        for j in range(i, 3):
            A[i, j] = w @ (cols[i] * cols[j]).T  # (m, T)
    wy = w * yg
    b = [wy @ c.T for c in cols]
    x1, x2, x3 = _solve3(A[0, 0], A[0, 1], A[0, 2], A[1, 1], A[1, 2], A[2, 2], b[0], b[1], b[2])
    yy = np.einsum("ij,ij->i", wy, yg)
    ssr = yy[:, None] - (x1 * b[0] + x2 * b[1] + x3 * b[2])
    # a candidate needs >= 1 baseline frame, >= 2 frames after it in the window, rising fit
    nb = w @ (u == 0).T
    na = w @ (u > 0).T
    up = np.maximum(t[ip][:, None] - taus[None, :], 0.0)  # (m, T) time from tau to the peak
    with np.errstate(invalid="ignore"):
        rise = x2 * up + x3 * up * up
    valid = (nb >= 1) & (na >= 2) & np.isfinite(ssr) & (rise > 0)
    ssr = np.where(valid, ssr, np.inf)
    j = np.argmin(ssr, axis=1)
    ok = np.isfinite(ssr[np.arange(yg.shape[0]), j])
    bat = np.where(ok, taus[j], np.nan)
    out["bat_s"][good] = bat
    out["fit_ok"][good] = ok
    return out
