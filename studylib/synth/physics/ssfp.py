"""Balanced SSFP (bSSFP / TrueFISP) steady state from the Bloch equations in matrix form, off-resonance and
phase cycling included; the 19F signal of a perfluorocarbon (PFC) with several lines and an excitation band.

The library's 19F relaxation correction (:func:`studylib.models.fluorine.bssfp_signal`) is the closed form of
the on-resonance, single-acquisition steady state.  This module computes the steady state itself, its own
code, for any off-resonance and RF phase increment, so that data made with it test that correction against
physics it does not share (banding, phase-cycle combination, lines outside the excited band).

Per repetition (instantaneous pulse about x, then free precession and relaxation for ``TR``):

``M+_{n+1} = Rx(a) [ Rz(theta) D(TR) M+_n + (0, 0, M0 (1 - E1)) ]``,  ``D = diag(E2, E2, E1)``,

with ``E1 = exp(-TR/T1)``, ``E2 = exp(-TR/T2)`` and the precession per TR in the frame of the RF phase
``theta = 2 pi df TR - dphi``: ``df`` the off-resonance (Hz) and ``dphi`` the RF phase increment per TR
(``pi`` for the usual alternating +-a, plus ``2 pi k / N`` for phase cycle ``k`` of ``N``).  The steady state
is the fixed point ``M+ = (I - A)^-1 b`` with ``A = Rx(a) Rz(theta) D`` and ``b = Rx(a) (0, 0, M0 (1 - E1))``
(Freeman & Hill, J Magn Reson 1971;4:366; Hargreaves et al., MRM 2001;46:149, doi:10.1002/mrm.1170), solved
as a batch of 3 x 3 systems (vectorised over voxels / classes).  The echo at ``TE`` is the transverse part
after free precession for ``TE``: ``m(TE) = (Mx + i My) exp(-TE/T2) exp(i 2 pi df TE)``.

On resonance with ``dphi = pi`` it equals the closed form ``M0 sin(a) (1 - E1) / (1 - (E1 - E2) cos(a)
- E1 E2)`` (times ``exp(-TE/T2)`` at the echo; Scheffler & Lehnhardt, Eur Radiol 2003;13:2409,
doi:10.1007/s00330-003-1957-x) -- a test checks it.  Units: ms, degrees, Hz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import SynthError

__all__ = ["bssfp_steady_state", "bssfp_echo", "phase_cycled_bssfp", "PFCLine", "PFCCompound", "PFCE",
           "excited_fluorines", "pfc_bssfp_signal"]

_COMBINE = ("mean", "rss", "complex")


def _positive(name, value):
    a = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise SynthError(f"{name} must be finite and > 0, got {np.ravel(a)[:4].tolist()}")
    return a


def _flip(flip_deg):
    a = np.asarray(flip_deg, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 180):
        raise SynthError(f"flip_deg must be in [0, 180] degrees, got {np.ravel(a)[:4].tolist()}")
    return a


def bssfp_steady_state(t1_ms, t2_ms, tr_ms, flip_deg, *, off_resonance_hz=0.0, rf_increment_deg=180.0, m0=1.0):
    """Steady-state magnetisation just after the pulse, ``M+ = (I - A)^-1 b``, all arguments broadcast.

    Parameters
    ----------
    t1_ms, t2_ms : relaxation times (ms), > 0.
    tr_ms : repetition time (ms), > 0.
    flip_deg : flip angle (degrees) in [0, 180].
    off_resonance_hz : off-resonance ``df`` (Hz: B0 shift and chemical shift from the transmitter).
    rf_increment_deg : RF phase increment per TR (degrees); 180 is the usual alternating +-a bSSFP.
    m0 : equilibrium magnetisation.

    Returns
    -------
    ndarray, shape ``broadcast + (3,)``: ``(Mx, My, Mz)`` just after the pulse, in the frame of that pulse's
    RF phase, units of ``m0``.
    """
    t1 = _positive("t1_ms (T1, ms)", t1_ms)
    t2 = _positive("t2_ms (T2, ms)", t2_ms)
    tr = _positive("tr_ms (repetition time, ms)", tr_ms)
    a = np.deg2rad(_flip(flip_deg))
    df = np.asarray(off_resonance_hz, dtype=float)
    dphi = np.deg2rad(np.asarray(rf_increment_deg, dtype=float))
    m0 = np.asarray(m0, dtype=float)
    if not (np.all(np.isfinite(df)) and np.all(np.isfinite(dphi)) and np.all(np.isfinite(m0))):
        raise SynthError("off_resonance_hz, rf_increment_deg and m0 must be finite")
    t1, t2, tr, a, df, dphi, m0 = np.broadcast_arrays(t1, t2, tr, a, df, dphi, m0)
    e1, e2 = np.exp(-tr / t1), np.exp(-tr / t2)
    th = 2.0 * np.pi * df * tr * 1e-3 - dphi
    ca, sa, ct, st = np.cos(a), np.sin(a), np.cos(th), np.sin(th)
    # A = Rx(a) Rz(theta) D ; Rx(a) = [[1,0,0],[0,ca,sa],[0,-sa,ca]], Rz = [[ct,-st,0],[st,ct,0],[0,0,1]]
    A = np.zeros(t1.shape + (3, 3))
    A[..., 0, 0], A[..., 0, 1] = ct * e2, -st * e2
    A[..., 1, 0], A[..., 1, 1], A[..., 1, 2] = ca * st * e2, ca * ct * e2, sa * e1
    A[..., 2, 0], A[..., 2, 1], A[..., 2, 2] = -sa * st * e2, -sa * ct * e2, ca * e1
    b = np.zeros(t1.shape + (3,))
    b[..., 1] = sa * m0 * (1.0 - e1)
    b[..., 2] = ca * m0 * (1.0 - e1)
    return np.linalg.solve(np.eye(3) - A, b[..., None])[..., 0]


def bssfp_echo(t1_ms, t2_ms, tr_ms, flip_deg, *, te_ms=None, off_resonance_hz=0.0, rf_increment_deg=180.0, m0=1.0):
    """Complex transverse magnetisation at the echo time, ``(Mx + i My) exp(-TE/T2) exp(i 2 pi df TE)``.

    ``te_ms`` defaults to ``TR/2`` (the balanced echo); must lie in ``[0, TR]``.  Other arguments as
    :func:`bssfp_steady_state`.  Returns a complex ndarray of the broadcast shape (units of ``m0``).
    """
    tr = _positive("tr_ms (repetition time, ms)", tr_ms)
    te = tr / 2.0 if te_ms is None else np.asarray(te_ms, dtype=float)
    if not np.all(np.isfinite(te)) or np.any(te < 0) or np.any(te > tr):
        raise SynthError(f"te_ms (echo time) must be in [0, TR] ms, got {np.ravel(te)[:4].tolist()}")
    m = bssfp_steady_state(t1_ms, t2_ms, tr, flip_deg, off_resonance_hz=off_resonance_hz,
                           rf_increment_deg=rf_increment_deg, m0=m0)
    t2 = np.asarray(t2_ms, dtype=float)
    df = np.asarray(off_resonance_hz, dtype=float)
    return (m[..., 0] + 1j * m[..., 1]) * np.exp(-te / t2) * np.exp(2j * np.pi * df * te * 1e-3)


def phase_cycled_bssfp(t1_ms, t2_ms, tr_ms, flip_deg, *, n_cycles=1, combine="mean", te_ms=None,
                       off_resonance_hz=0.0, m0=1.0):
    """Magnitude image of ``n_cycles`` phase-cycled bSSFP acquisitions, combined.

    Cycle ``k`` (0..N-1) has the RF phase increment ``180 + 360 k / N`` degrees, which shifts the banding
    profile by ``k / (N TR)`` in frequency.  ``combine``: ``"mean"`` of the magnitudes (default),
    ``"rss"`` ``sqrt(mean |m_k|^2)``, or ``"complex"`` ``|mean m_k|`` (Bangerter et al., MRM 2004;51:1038,
    compare such combinations).  ``n_cycles = 1`` is the plain alternating +-a acquisition.

    Returns
    -------
    ndarray (broadcast shape, float): the combined magnitude, units of ``m0``.
    """
    n = int(n_cycles)
    if n != n_cycles or n < 1:
        raise SynthError(f"n_cycles must be a whole number >= 1, got {n_cycles!r}")
    if combine not in _COMBINE:
        raise SynthError(f"combine must be one of {_COMBINE}, got {combine!r}")
    inc = 180.0 + 360.0 * np.arange(n) / n
    shape = np.broadcast_shapes(np.shape(t1_ms), np.shape(t2_ms), np.shape(flip_deg), np.shape(off_resonance_hz),
                                np.shape(m0))
    k = inc.reshape((n,) + (1,) * len(shape))
    m = bssfp_echo(t1_ms, t2_ms, tr_ms, flip_deg, te_ms=te_ms, off_resonance_hz=off_resonance_hz,
                   rf_increment_deg=k, m0=m0)
    if combine == "mean":
        return np.abs(m).mean(axis=0)
    if combine == "rss":
        return np.sqrt((np.abs(m) ** 2).mean(axis=0))
    return np.abs(m.mean(axis=0))


# --------------------------------------------------------------------------------------------- PFC compounds
@dataclass(frozen=True)
class PFCLine:
    """One 19F resonance of a compound: chemical shift (ppm, relative to the compound's main line) and the
    number of fluorines per molecule resonating there."""

    shift_ppm: float
    fluorines: int


@dataclass(frozen=True)
class PFCCompound:
    """A perfluorocarbon as its 19F lines (:class:`PFCLine`)."""

    name: str
    lines: tuple

    @property
    def fluorines_per_molecule(self) -> int:
        return int(sum(line.fluorines for line in self.lines))


#: perfluoro-15-crown-5 ether, C10F20O5: 20 magnetically equivalent fluorines, one line (Schweighardt &
#: Rubertone, US patent 5,196,348, 1993).
PFCE = PFCCompound("PFCE", (PFCLine(0.0, 20),))

GAMMA_19F_MHZ_PER_T = 40.078  # 19F gyromagnetic ratio / 2 pi (MHz/T)


def _line_offsets_hz(compound, field_t, transmit_ppm):
    return np.array([(line.shift_ppm - transmit_ppm) * GAMMA_19F_MHZ_PER_T * float(field_t)
                     for line in compound.lines])


def excited_fluorines(compound: PFCCompound, *, field_t, excitation_bandwidth_hz, transmit_ppm=0.0) -> int:
    """Fluorines per molecule whose line lies within the excitation band (a rectangular band of full width
    ``excitation_bandwidth_hz`` centred on the transmitter at ``transmit_ppm``; lines outside get no flip).

    >>> excited_fluorines(PFCE, field_t=9.4, excitation_bandwidth_hz=2000.0)
    20
    """
    bw = float(_positive("excitation_bandwidth_hz", excitation_bandwidth_hz))
    off = _line_offsets_hz(compound, _positive("field_t", field_t), float(transmit_ppm))
    return int(sum(line.fluorines for line, o in zip(compound.lines, off) if abs(o) <= bw / 2))


def pfc_bssfp_signal(pfc_mM, compound: PFCCompound, *, t1_ms, t2_ms, tr_ms, flip_deg, field_t,
                     excitation_bandwidth_hz, transmit_ppm=0.0, b0_ppm=0.0, n_cycles=1, combine="mean",
                     te_ms=None):
    """19F bSSFP magnitude per unit receiver gain: ``sum over excited lines of [PFC] n_F,line w(df_line)``.

    ``[PFC]`` (mM of molecules, any shape) times each line's fluorines is that line's M0 (mM of 19F nuclei);
    its off-resonance is ``df = (shift - transmit_ppm + b0_ppm) gamma B0`` (``b0_ppm`` the B0 shift, same
    shape as ``pfc_mM`` or a number); lines outside the excitation band (:func:`excited_fluorines`) give
    nothing.  ``w`` is :func:`phase_cycled_bssfp` (``n_cycles``, ``combine``) with the compound's T1/T2 in
    that environment (numbers or arrays broadcast to ``pfc_mM``).  The magnitudes of lines are added (lines
    many bands apart are resolved in frequency; their images add in magnitude -- the chemical-shift
    displacement in the readout is ignored).

    Returns
    -------
    ndarray, shape of ``pfc_mM``: signal in mM of 19F nuclei x relaxation weighting.
    """
    c = np.asarray(pfc_mM, dtype=float)
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise SynthError("pfc_mM must be finite and >= 0")
    bw = float(_positive("excitation_bandwidth_hz", excitation_bandwidth_hz))
    f = float(_positive("field_t", field_t))
    off = _line_offsets_hz(compound, f, float(transmit_ppm))
    b0_hz = np.asarray(b0_ppm, dtype=float) * GAMMA_19F_MHZ_PER_T * f
    out = np.zeros(np.broadcast_shapes(c.shape, b0_hz.shape))
    for line, o in zip(compound.lines, off):
        if abs(o) > bw / 2:
            continue
        w = phase_cycled_bssfp(t1_ms, t2_ms, tr_ms, flip_deg, n_cycles=n_cycles, combine=combine, te_ms=te_ms,
                               off_resonance_hz=o + b0_hz)
        out = out + c * line.fluorines * w
    return out
