"""Diffusion-weighted signal with non-Gaussian (kurtosis) tissue diffusion and a perfusion compartment.

The ADC fit of the library (:mod:`studylib.models.diffusion`) inverts ``S0 exp(-b ADC)`` on b >= 200 s/mm^2.
Real tissue water is not a Gaussian diffuser: membranes and fibres make the displacement distribution
peaked (positive excess kurtosis), so ``ln S`` bends upwards with b.  This module computes the signal of

* a tissue compartment by the diffusional kurtosis expansion (Jensen et al., MRM 2005;53:1432,
  doi:10.1002/mrm.20508), to second order in b::

      ln S_t(b) = -b D + b^2 D^2 K / 6

* a pseudo-diffusion (capillary perfusion) compartment of fraction ``f`` decaying with ``D*``
  (intravoxel incoherent motion, Le Bihan et al., Radiology 1988;168:497, doi:10.1148/radiology.168.2.3393671),

giving the trace-weighted signal::

    S(b) = S0 [ f exp(-b D*) + (1 - f) exp(-b D + b^2 D^2 K / 6) ]

Units: b in s/mm^2, D and D* in um^2/ms (= 1e-3 mm^2/s), so every exponent carries ``b D 1e-3``;
K (apparent kurtosis) and f are dimensionless.

Where the expansion holds.  ``d ln S_t / db = -D (1 - b D K / 3)``: the truncated series stops decaying at
``b D K = 3`` (in these units ``b [s/mm^2] D [um^2/ms] 1e-3 K``) and rises beyond -- unphysical, since the
true signal of any diffusing spin population decays monotonically.  :func:`dki_ivim_signal` refuses
b-values with ``b D K`` above ``max_bdk`` (default :data:`MAX_BDK` = 2: the local decay rate is then still
>= D / 3; a margin below the turning point, chosen here).  For the tumours of the collagen study
(demo preset: D <= 1.3 um^2/ms, K <= 0.95, so b D K <= 1.0 at b = 1000 s/mm^2) that allows b up to
~1600 s/mm^2 at the extremes and ~3300 s/mm^2 at typical values (D 0.8, K 0.75); the study's b <= 1000 s/mm^2
is well inside it.  :func:`max_valid_b` gives the bound.

The apparent ADC a mono-exponential fit reports is *not* D: :func:`loglinear_adc` is the exact
(unweighted) least-squares slope of ``-ln S`` on b over given b-values, a property of the noise-free signal.
With the perfusion term gone (b >= 200 s/mm^2, D* >> D) it is ``D - (D^2 K / 6) c`` with
``c = cov(b^2, b) / var(b)`` of the b-values (1.206 ms/um^2 for b = 200, 400, 700, 1000 s/mm^2).

This module is independent of the fit side: it imports nothing from ``studylib.models`` or ``studylib.fit``.
"""

from __future__ import annotations

import numpy as np

from ...errors import SynthError

__all__ = ["B_D_SCALE", "MAX_BDK", "dki_ivim_signal", "kurtosis_signal", "loglinear_adc", "max_valid_b"]

#: b [s/mm^2] x D [um^2/ms] x B_D_SCALE = the dimensionless exponent (1 um^2/ms = 1e-3 mm^2/s)
B_D_SCALE = 1e-3

#: default upper bound on b D K (dimensionless) where the kurtosis expansion is used: the local decay rate
#: -d ln S / db = D (1 - b D K / 3) stays >= D / 3 (the truncated series turns upwards at b D K = 3)
MAX_BDK = 2.0


def _as_float(name: str, value) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(a)):
        raise SynthError(f"{name} must be finite; got non-finite values")
    return a


def _b_values(b_s_per_mm2) -> np.ndarray:
    b = _as_float("b_s_per_mm2", b_s_per_mm2)
    if b.ndim != 1 or b.size == 0:
        raise SynthError(f"b_s_per_mm2 must be a non-empty 1-D array of b-values, got shape {b.shape}")
    if np.any(b < 0):
        raise SynthError(f"b_s_per_mm2 must be non-negative (s/mm^2), got min {b.min()}")
    return b


def max_valid_b(d_um2_per_ms, kurtosis, *, max_bdk: float = MAX_BDK) -> np.ndarray:
    """Largest b (s/mm^2) at which the kurtosis expansion is used: ``b_max = max_bdk / (D K 1e-3)``.

    Parameters
    ----------
    d_um2_per_ms : array_like, shape (...)
        Diffusion coefficient D of the kurtosis model, um^2/ms.
    kurtosis : array_like, shape (...)
        Apparent kurtosis K (dimensionless, >= 0).
    max_bdk : float
        Bound on ``b D K``; 3 is the turning point of the truncated series (the signal would rise beyond it).

    Returns
    -------
    ndarray, shape (...): b_max in s/mm^2 (``inf`` where D K = 0: the Gaussian limit holds at every b).
    """
    dk = _as_float("d_um2_per_ms", d_um2_per_ms) * _as_float("kurtosis", kurtosis) * B_D_SCALE
    with np.errstate(divide="ignore"):
        return np.where(dk > 0, max_bdk / np.where(dk > 0, dk, 1.0), np.inf)


def kurtosis_signal(b_s_per_mm2, d_um2_per_ms, kurtosis, *, max_bdk: float = MAX_BDK) -> np.ndarray:
    """Normalised tissue signal of the diffusional kurtosis expansion ``exp(-b D + b^2 D^2 K / 6)``.

    Jensen et al., MRM 2005;53:1432 (doi:10.1002/mrm.20508).

    Parameters
    ----------
    b_s_per_mm2 : array_like, shape (n,)
        b-values, s/mm^2 (>= 0).
    d_um2_per_ms : array_like, shape (...)
        D, um^2/ms (>= 0).
    kurtosis : array_like, shape (...)
        Apparent kurtosis K (>= 0; tissues with restricting membranes have K > 0).
    max_bdk : float
        Refuse any ``b D K`` above this (module docstring; at most 3, where the series turns upwards).

    Returns
    -------
    ndarray, shape (..., n)

    Raises
    ------
    SynthError
        Negative b, D or K; ``max_bdk`` not in (0, 3]; or a b-value beyond the expansion's range.
    """
    b = _b_values(b_s_per_mm2)
    d = _as_float("d_um2_per_ms", d_um2_per_ms)
    k = _as_float("kurtosis", kurtosis)
    if np.any(d < 0):
        raise SynthError(f"d_um2_per_ms must be >= 0, got min {d.min()}")
    if np.any(k < 0):
        raise SynthError(f"kurtosis must be >= 0 (negative excess kurtosis is not modelled), got min {k.min()}")
    if not 0 < max_bdk <= 3.0:
        raise SynthError(f"max_bdk must be in (0, 3] (the expansion turns upwards at b D K = 3), got {max_bdk}")
    bdk = b.max() * B_D_SCALE * np.max(d * k) if d.size and k.size else 0.0
    if bdk > max_bdk:
        raise SynthError(f"b_s_per_mm2 up to {b.max():g} s/mm^2 is beyond the kurtosis expansion's range: b D K = "
                         f"{bdk:.3g} > max_bdk = {max_bdk:g} (D up to {d.max():g} um^2/ms, K up to {k.max():g}); "
                         f"the truncated series would flatten and rise -- lower the b-values")
    x = b * B_D_SCALE  # ms/um^2
    dd, kk = d[..., None], k[..., None]
    return np.exp(-x * dd + x * x * dd * dd * kk / 6.0)


def dki_ivim_signal(b_s_per_mm2, s0, d_um2_per_ms, kurtosis, f, dstar_um2_per_ms, *,
                    max_bdk: float = MAX_BDK) -> np.ndarray:
    """Trace-weighted DWI signal of a kurtosis tissue compartment plus a pseudo-diffusion compartment.

    ``S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D + b^2 D^2 K / 6)]``
    (Jensen et al., MRM 2005;53:1432; Le Bihan et al., Radiology 1988;168:497).

    Parameters
    ----------
    b_s_per_mm2 : array_like, shape (n,)
        b-values, s/mm^2.
    s0 : array_like, shape (...)
        Signal at b = 0 (a.u., >= 0).
    d_um2_per_ms : array_like, shape (...)
        Tissue diffusion coefficient D, um^2/ms.
    kurtosis : array_like, shape (...)
        Tissue apparent kurtosis K.
    f : array_like, shape (...)
        Perfusion (pseudo-diffusion) signal fraction, 0 <= f <= 1.
    dstar_um2_per_ms : array_like, shape (...)
        Pseudo-diffusion coefficient D*, um^2/ms (> 0).
    max_bdk : float
        Validity bound of the kurtosis expansion (:func:`kurtosis_signal`).

    Returns
    -------
    ndarray, shape (..., n): the signal in the units of ``s0``.

    Examples
    --------
    >>> s = dki_ivim_signal([0, 1000], 1.0, 1.0, 0.0, 0.0, 20.0)
    >>> bool(np.isclose(s[1], np.exp(-1.0)))
    True
    """
    b = _b_values(b_s_per_mm2)
    s0 = _as_float("s0", s0)
    f = _as_float("f", f)
    dstar = _as_float("dstar_um2_per_ms", dstar_um2_per_ms)
    if np.any(s0 < 0):
        raise SynthError(f"s0 must be >= 0, got min {s0.min()}")
    if np.any((f < 0) | (f > 1)):
        raise SynthError(f"f must be in [0, 1], got range [{f.min()}, {f.max()}]")
    if np.any(dstar <= 0):
        raise SynthError(f"dstar_um2_per_ms must be > 0, got min {dstar.min()}")
    tissue = kurtosis_signal(b, d_um2_per_ms, kurtosis, max_bdk=max_bdk)
    fast = np.exp(-b * B_D_SCALE * dstar[..., None])
    return s0[..., None] * (f[..., None] * fast + (1.0 - f[..., None]) * tissue)


def loglinear_adc(signal, b_s_per_mm2) -> np.ndarray:
    """Apparent ADC of a noise-free signal: the exact least-squares slope of ``-ln S`` on b (um^2/ms).

    ``ADC = sum_i (b_i - b_mean) (-ln S_i) / sum_i (b_i - b_mean)^2`` with b in ms/um^2 (b [s/mm^2] x 1e-3);
    unweighted, over exactly the b-values given -- what a mono-exponential fit of those b-values reports on
    noise-free data with equal weights.  A property of the signal, not of any fitting code.

    Parameters
    ----------
    signal : array_like, shape (..., n)
        Positive signal at the b-values (the b axis last).
    b_s_per_mm2 : array_like, shape (n,)
        At least two distinct b-values, s/mm^2.

    Returns
    -------
    ndarray, shape (...): the apparent ADC, um^2/ms.
    """
    b = _b_values(b_s_per_mm2) * B_D_SCALE
    s = _as_float("signal", signal)
    if s.shape[-1:] != b.shape:
        raise SynthError(f"signal's last axis ({s.shape[-1:]}) must match the {b.size} b-values")
    if np.unique(b).size < 2:
        raise SynthError("b_s_per_mm2 needs at least two distinct b-values for a slope")
    if np.any(s <= 0):
        raise SynthError("signal must be > 0 for its logarithm (noise-free signal expected)")
    bc = b - b.mean()
    return (-np.log(s) * bc).sum(-1) / (bc * bc).sum()
