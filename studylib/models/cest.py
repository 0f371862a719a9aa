"""CEST: Z-spectrum forward model (Lorentzian pools) and analysis kernels.

Offsets in ppm relative to water (positive = downfield), the offset axis last.
Z = S(offset) / S0 as a fraction; MTRasym reported in % of S0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lorentzian", "zspectrum"]


def lorentzian(offset_ppm, amplitude, center_ppm, fwhm_ppm):
    """``L(d) = A (w/2)^2 / ((w/2)^2 + (d - d0)^2)`` (last axis = offset)."""
    d = np.asarray(offset_ppm, dtype=float)
    a, c, w = (np.asarray(v, dtype=float)[..., None] for v in (amplitude, center_ppm, fwhm_ppm))
    hw2 = (w / 2.0) ** 2
    return a * hw2 / (hw2 + (d - c) ** 2)


def zspectrum(offset_ppm, amplitudes, centers_ppm, fwhms_ppm, b0_shift_ppm=0.0):
    """Multi-pool Lorentzian Z-spectrum ``Z(d) = 1 - sum_i L_i(d - dB0)``.

    Zaiss et al., J Magn Reson 2011;211:149 (doi:10.1016/j.jmr.2011.05.001).
    A B0 inhomogeneity ``dB0`` (ppm) shifts the whole spectrum: every pool centre moves
    to ``d_i + dB0``.

    Parameters
    ----------
    offset_ppm : (n,) saturation offsets in ppm.
    amplitudes, centers_ppm, fwhms_ppm : arrays of shape (..., n_pools)
        Pool parameters per voxel (the pool axis last); water is the pool at 0 ppm.
    b0_shift_ppm : array of the voxel shape (...), default 0.

    Returns
    -------
    ndarray (..., n): Z as a fraction of S0.
    """
    amplitudes = np.asarray(amplitudes, dtype=float)
    centers = np.asarray(centers_ppm, dtype=float) + np.asarray(b0_shift_ppm, dtype=float)[..., None]
    fwhms = np.asarray(fwhms_ppm, dtype=float)
    d = np.asarray(offset_ppm, dtype=float)
    hw2 = (fwhms[..., None] / 2.0) ** 2  # (..., pools, 1)
    pools = amplitudes[..., None] * hw2 / (hw2 + (d - centers[..., None]) ** 2)
    return 1.0 - pools.sum(axis=-2)
