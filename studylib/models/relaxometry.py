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
