"""Multi-spin-echo (CPMG) trains by the extended phase graph, and inversion recovery with imperfect inversion.

The library's T2 fit (:func:`studylib.fit.t2`) is mono-exponential: ``S(TE) = S0 exp(-TE / T2)``.  A real
multi-spin-echo train is not: with refocusing pulses of flip angle ``alpha < 180 deg`` (B1 error, slice
profile) part of the magnetisation is stored along z and returns as stimulated echoes, so the first echo
is low, the second high, and the train decays more slowly than ``exp(-TE / T2)`` (Hennig 1988; Lebel &
Wilman, MRM 2010;64:1005, doi:10.1002/mrm.22487).  This module computes that train with the extended
phase graph (EPG; Weigel, JMRI 2015;41:266, doi:10.1002/jmri.24619), its own code: configuration states
``F+_k, F-_k, Z_k`` per voxel, vectorised over voxels (axis 0), for each echo

1. relaxation and dephasing over ``TE/2`` (``F *= E2``, ``Z_k *= E1``, ``Z_0 += 1 - E1``; ``F+_k -> F+_{k+1}``,
   ``F-_k -> F-_{k-1}``, ``F+_0 = conj(F-_0)``),
2. the refocusing rotation ``T(alpha, phi = 0)`` (Weigel 2015, eq. 15) about the axis of the excited
   magnetisation (the CPMG condition),
3. relaxation and dephasing over ``TE/2``; the echo is ``|F+_0|``.

With ``alpha = 180 deg`` it reduces to ``exp(-n TE / T2)`` exactly (a test).

:func:`inversion_recovery` is the longitudinal magnetisation after an inversion of efficiency ``eff``
(``eff = 1`` perfect) in a sequence repeated every ``TR`` with full saturation by the readout:
``M(TI) = M0 [1 - (1 + eff) exp(-TI/T1) + exp(-TR/T1)]`` (magnitude ``|M|`` as a scanner reconstructs it).
"""

from __future__ import annotations

import numpy as np

from ...errors import SynthError

__all__ = ["cpmg_train", "inversion_recovery"]


def _positive_array(name, value):
    a = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise SynthError(f"{name} must be finite and > 0")
    return a


def _rotation(alpha_rad, phi_rad):
    """Weigel 2015 eq. 15: the EPG rotation matrix, shape ``(n, 3, 3)`` for ``n`` flip angles."""
    a = np.asarray(alpha_rad, dtype=float)
    c2, s2, sa, ca = np.cos(a / 2) ** 2, np.sin(a / 2) ** 2, np.sin(a), np.cos(a)
    e = np.exp(1j * phi_rad)
    t = np.empty(a.shape + (3, 3), dtype=complex)
    t[..., 0, 0], t[..., 0, 1], t[..., 0, 2] = c2, e ** 2 * s2, -1j * e * sa
    t[..., 1, 0], t[..., 1, 1], t[..., 1, 2] = np.conj(e) ** 2 * s2, c2, 1j * np.conj(e) * sa
    t[..., 2, 0], t[..., 2, 1], t[..., 2, 2] = -0.5j * np.conj(e) * sa, 0.5j * e * sa, ca
    return t


def _relax_dephase(fp, fm, z, e1, e2):
    fp *= e2[:, None]
    fm *= e2[:, None]
    z *= e1[:, None]
    z[:, 0] += 1.0 - e1
    fp[:, 1:] = fp[:, :-1].copy()
    fm[:, :-1] = fm[:, 1:].copy()
    fm[:, -1] = 0.0
    fp[:, 0] = np.conj(fm[:, 0])


def cpmg_train(n_echoes, echo_spacing_ms, t2_ms, t1_ms, *, refocus_deg=180.0, m0=1.0):
    """Echo amplitudes of a CPMG multi-spin-echo train by the extended phase graph.

    Parameters
    ----------
    n_echoes : number of echoes (>= 1).
    echo_spacing_ms : echo spacing ``TE`` (ms); echo ``n`` is at ``n TE``.
    t2_ms, t1_ms : relaxation times (ms), arrays broadcast to the voxel shape.
    refocus_deg : refocusing flip angle (deg) per voxel (nominal 180 times a relative B1), broadcast.
    m0 : equilibrium magnetisation, broadcast (the 90 deg excitation is taken as exact).

    Returns
    -------
    ndarray, shape ``voxel shape + (n_echoes,)``: echo magnitudes ``|F+_0|`` times ``m0``.

    References
    ----------
    Weigel M. Extended phase graphs: dephasing, RF pulses, and echoes -- pure and simple. JMRI
    2015;41:266-295.  Hennig J. Multiecho imaging sequences with low refocusing flip angles. JMR 1988;78:397.
    """
    n = int(n_echoes)
    if n < 1:
        raise SynthError("n_echoes must be >= 1")
    tau = float(_positive_array("echo_spacing_ms", echo_spacing_ms)) / 2.0
    t2, t1, fa, m = np.broadcast_arrays(_positive_array("t2_ms", t2_ms), _positive_array("t1_ms", t1_ms),
                                        _positive_array("refocus_deg", refocus_deg), np.asarray(m0, float))
    shape = t2.shape
    t2, t1, fa = t2.ravel(), t1.ravel(), np.deg2rad(fa.ravel())
    nv, ns = t2.size, 2 * n + 2
    e1, e2 = np.exp(-tau / t1), np.exp(-tau / t2)
    fp = np.zeros((nv, ns), complex)
    fm = np.zeros((nv, ns), complex)
    z = np.zeros((nv, ns), complex)
    fp[:, 0] = fm[:, 0] = 1.0  # after the 90 deg excitation: transverse magnetisation of phase 0 (along x)
    rot = _rotation(fa, 0.0)  # refocusing about the axis of the excited magnetisation: the CPMG condition
    echoes = np.empty((nv, n))
    for k in range(n):  # echoes are sequential in time; every voxel is advanced at once
        _relax_dephase(fp, fm, z, e1, e2)
        state = np.stack([fp, fm, z], axis=1)  # (nv, 3, ns)
        state = np.einsum("vij,vjs->vis", rot, state)
        fp, fm, z = state[:, 0].copy(), state[:, 1].copy(), state[:, 2].copy()
        _relax_dephase(fp, fm, z, e1, e2)
        echoes[:, k] = np.abs(fp[:, 0])
    return echoes.reshape(shape + (n,)) * m[..., None]


def inversion_recovery(ti_ms, t1_ms, *, tr_ms, efficiency=1.0, m0=1.0, magnitude=True):
    """Inversion recovery ``M0 [1 - (1 + eff) exp(-TI/T1) + exp(-TR/T1)]`` at each inversion time.

    Parameters
    ----------
    ti_ms : inversion times (ms), 1-D.
    t1_ms : T1 (ms), any shape.
    tr_ms : repetition time (ms): the recovery before the next inversion (the readout saturates).
    efficiency : inversion efficiency (1 = perfect 180 deg), broadcast with ``t1_ms``.
    m0 : equilibrium magnetisation, broadcast.
    magnitude : return ``|M|`` (a magnitude reconstruction) instead of the signed value.

    Returns
    -------
    ndarray, shape ``t1_ms.shape + (len(ti_ms),)``.
    """
    ti = _positive_array("ti_ms", ti_ms).ravel()
    t1 = _positive_array("t1_ms", t1_ms)[..., None]
    eff = np.asarray(efficiency, float)[..., None]
    m = np.asarray(m0, float)[..., None] * (1.0 - (1.0 + eff) * np.exp(-ti / t1) + np.exp(-float(tr_ms) / t1))
    return np.abs(m) if magnitude else m
