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
