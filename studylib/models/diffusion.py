"""Diffusion-weighted signal equations (forward models) and fitting kernels.

b-values in s/mm^2; diffusivities in um^2/ms (= 1e-3 mm^2/s), so the exponent is
``b * D * 1e-3``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adc_signal", "ivim_signal"]

#: conversion: b [s/mm^2] * D [um^2/ms] * UM2_PER_MS_TO_MM2_PER_S = dimensionless exponent
UM2_PER_MS_TO_MM2_PER_S = 1e-3


def adc_signal(b_s_per_mm2, s0, adc_um2_per_ms):
    """Mono-exponential diffusion attenuation ``S(b) = S0 exp(-b ADC)``.

    Parameters
    ----------
    b_s_per_mm2 : array_like, shape (n,)
    s0 : array_like, shape (...)
    adc_um2_per_ms : array_like, shape (...)
        Apparent diffusion coefficient in um^2/ms (free water at 37 C ~ 3.0).
    """
    b = np.asarray(b_s_per_mm2, dtype=float)
    s0 = np.asarray(s0, dtype=float)[..., None]
    d = np.asarray(adc_um2_per_ms, dtype=float)[..., None]
    return s0 * np.exp(-b * d * UM2_PER_MS_TO_MM2_PER_S)


def ivim_signal(b_s_per_mm2, s0, d_um2_per_ms, dstar_um2_per_ms, f):
    """Bi-exponential IVIM ``S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D)]``.

    Le Bihan et al., Radiology 1988;168:497 (doi:10.1148/radiology.168.2.3393671).
    """
    b = np.asarray(b_s_per_mm2, dtype=float) * UM2_PER_MS_TO_MM2_PER_S
    s0, d, dstar, f = (np.asarray(v, dtype=float)[..., None] for v in (s0, d_um2_per_ms, dstar_um2_per_ms, f))
    return s0 * (f * np.exp(-b * dstar) + (1.0 - f) * np.exp(-b * d))


# ------------------------------------------------------------------------------------------
# Fitting kernels (fitted axis last).  ADC shares the mono-exponential kernel of relaxometry
# with x = b * 1e-3 (ms/um^2), so the fitted rate is the ADC in um^2/ms.
# ------------------------------------------------------------------------------------------

__all__ += ["fit_adc", "fit_ivim_segmented"]


def fit_adc(y, b_s_per_mm2, *, method="squared", sigma=None, n_iter=None, n_coils=1):
    """ADC in every voxel: ``S(b) = S0 exp(-b ADC)``.

    ``method`` as :func:`studylib.models.relaxometry.fit_monoexp`: ``"loglinear"`` (weights
    ``S^2``), ``"nonlinear"``, ``"squared"`` (noise-corrected ``S^2``, unbiased at low SNR, needs
    or fits sigma), ``"rician"``.  b = 0 is optional (S0 is extrapolated).  ``n_coils``: receive
    channels combined by root-sum-of-squares, noise floor ``E[S^2] = S0^2 e^{-2 b ADC} + 2 L sigma^2``
    (see :func:`~studylib.models.relaxometry.fit_monoexp`).
    Returns dict ``adc`` (um^2/ms), ``s0``, ``rmse``, ``sigma`` (per channel), ``fit_ok``.
    """
    from .relaxometry import fit_monoexp

    x = np.asarray(b_s_per_mm2, dtype=float) * UM2_PER_MS_TO_MM2_PER_S
    r = fit_monoexp(y, x, method=method, sigma=sigma, n_iter=n_iter, n_coils=n_coils)
    return {"adc": r["rate"], "s0": r["s0"], "rmse": r["rmse"], "sigma": r["sigma"], "fit_ok": r["fit_ok"]}


def fit_ivim_segmented(y, b_s_per_mm2, *, b_threshold=200.0, n_iter=15):
    """Segmented IVIM fit (D, then f, then D*), vectorised over voxels.

    1. ``D`` and the intercept ``S_int = S0 (1 - f)`` from a log-linear fit (weights ``S^2``) of the
       b-values ``>= b_threshold``, where the pseudo-diffusion term has decayed.
    2. ``f = 1 - S_int / S(b=0)``.
    3. ``D*`` by damped 1-D Gauss-Newton on all b-values with ``S0, f, D`` fixed:
       ``S = S0 [f exp(-b D*) + (1 - f) exp(-b D)]``, started at ``D* = 10 D``.

    Le Bihan et al., Radiology 1988 (doi:10.1148/radiology.168.2.3393671); segmented approach as
    in Gurney-Champion et al., PLoS One 2018;13:e0194590 (doi:10.1371/journal.pone.0194590).
    Needs b = 0, >= 2 b-values >= ``b_threshold`` and >= 1 in between (checked by the adapter).
    Returns dict ``d``, ``dstar`` (um^2/ms), ``f`` (fraction), ``s0``, ``rmse``, ``fit_ok``.
    """
    from .relaxometry import _BLOCK, _run_blocks, _loglinear_T

    b = np.asarray(b_s_per_mm2, dtype=float)
    xb = b * UM2_PER_MS_TO_MM2_PER_S
    hi = b >= b_threshold
    i0 = int(np.argmin(b))
    xc = xb[:, None]

    def fn(yT):
        n = yT.shape[0]
        yh = yT[hi]
        s_int, d = _loglinear_T(yh, xb[hi], yh * yh)
        s0 = yT[i0]
        f = 1.0 - s_int / s0
        slow = (s_int[None, :]) * np.exp(-xc * d[None, :])
        fast_amp = (s0 * f)[None, :]
        ds = np.maximum(10.0 * d, 1.0)
        lam = np.full_like(ds, 1e-3)
        e = np.exp(-xc * ds[None, :])
        r = yT - slow - fast_amp * e
        cost = (r * r).sum(0)
        for _ in range(n_iter):
            j = -fast_amp * xc * e
            jj, jr = (j * j).sum(0), (j * r).sum(0)
            trial = np.clip(ds + jr / (jj * (1 + lam)), 1e-3, 1e3)
            e_t = np.exp(-xc * trial[None, :])
            r_t = yT - slow - fast_amp * e_t
            c_t = (r_t * r_t).sum(0)
            ok = c_t < cost
            ds = np.where(ok, trial, ds)
            e = np.where(ok[None, :], e_t, e)
            r = np.where(ok[None, :], r_t, r)
            cost = np.where(ok, c_t, cost)
            lam = np.where(ok, lam / 3, lam * 10)
        return d, ds, f, s0, np.sqrt(cost / n)

    out = _run_blocks(y, fn, ("d", "dstar", "f", "s0", "rmse"), _BLOCK)
    ok = (np.isfinite(out["d"]) & (out["d"] > 0) & np.isfinite(out["f"]) & (out["f"] >= 0) & (out["f"] < 1)
          & np.isfinite(out["dstar"]) & (out["s0"] > 0))
    for k in out:
        out[k][~ok] = np.nan
    out["fit_ok"] = ok
    return out
