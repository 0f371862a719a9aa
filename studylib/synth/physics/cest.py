"""CEST Z-spectra from the Bloch-McConnell equations (water, one exchanging solute pool, a semisolid MT pool).

Continuous-wave saturation at offset ``dw`` (rad/s from water) with amplitude ``w1 = gamma B1``
along x of the rotating frame.  State ``M = (Mxa, Mya, Mza, Mxb, Myb, Mzb, Mzc)`` (water a, solute b,
semisolid c; ``M0a = 1``, ``M0b = fb``, ``M0c = fc``), ``D_i = dw - delta_i``::

    dMx_i/dt = -R2i Mx_i - D_i My_i                      + exchange
    dMy_i/dt =  D_i Mx_i - R2i My_i - w1 Mz_i            + exchange
    dMz_i/dt =  w1 My_i  - R1i (Mz_i - M0_i)             + exchange     (i = a, b)
    dMzc/dt  = -Rrf,c(D_c) Mzc - R1c (Mzc - M0c)         + exchange
    exchange: dM_a += -k_ab M_a + k_ba M_b,   k_ab = fb k_b, k_ba = k_b  (same for c, z only)

(McConnell, J Chem Phys 1958;28:430; the semisolid pool as a saturable longitudinal pool,
``Rrf,c = pi w1^2 g(D_c)`` after Henkelman et al., MRM 1993;29:759, doi:10.1002/mrm.1910290607).
``dM/dt = A M + b`` is linear: the steady state is ``M_ss = -A^{-1} b`` (:func:`zspectrum`, one batched
``numpy.linalg.solve`` over all offsets) and after a finite saturation ``t`` from equilibrium
``M(t) = M_ss + exp(A t) (M(0) - M_ss)`` (batched eigen-decomposition).  ``Z = Mza / M0a``.

Semisolid lineshape ``g`` (s): Lorentzian ``(T2c/pi) / (1 + (D T2c)^2)`` or super-Lorentzian
``int_0^1 sqrt(2/pi) T2c / |3u^2 - 1| exp(-2 (D T2c / (3u^2 - 1))^2) du`` (Morrison & Henkelman,
MRM 1995;33:475, doi:10.1002/mrm.1910330404), integrated on a grid refined towards the magic angle;
it diverges (logarithmically) only at ``D = 0``, so ``|D|`` is floored at ``min_offset_hz``.

Analytical comparison (:func:`zspectrum_r1rho`): the eigenvalue approximation of Zaiss & Bachert
(NMR Biomed 2013;26:507, doi:10.1002/nbm.2887; arXiv:1203.2067) for water + one solute pool,
``Z_ss = cos^2(theta) R1a / R1rho``, ``R1rho = Reff + Rex``, ``Reff = R1a cos^2 + R2a sin^2``,
``theta = atan(w1 / D_a)`` and the large-shift exchange term ::

    Rex = fb kb w1^2 / (w1^2 + kb (kb + R2b)) * (G/2)^2 / ((G/2)^2 + D_b^2),
    G = 2 sqrt((kb + R2b) / kb * w1^2 + (kb + R2b)^2),

with ``Z(t) = (cos^2 theta - Z_ss) exp(-R1rho t) + Z_ss`` for a finite saturation.

Lookup table (:func:`zspectrum_table`, :class:`ZSpectrumTable`): for images, Z is computed once on a
fine offset grid at Chebyshev nodes of the solute concentration and evaluated per voxel by a cubic
spline in offset and the Chebyshev series in concentration; a uniform field shift ``dB0`` moves every
pool together, so ``Z(x; c, dB0) = Z(x - dB0; c, 0)`` exactly and B0 is applied by shifting the axis.

Default pools (:data:`LACTATE_PRESET`, :data:`AMIDE_PRESET`): water T1/T2 2.0 s / 40 ms at 9.4 T,
semisolid fc 0.10, kc 30 /s, T2c 10 us, centred at -2.5 ppm, solute T2 50 ms; lactate -OH at
+0.4 ppm with kb 500 /s (one exchangeable proton per molecule); amide at +3.5 ppm with kb 30 /s.
These values are chosen to be plausible for tumour tissue at 9.4 T; they are not fitted to a paper
(no lactate -OH exchange rate was found in the search corpus).  Solute fraction from concentration:
``fb = n_H [solute] / (2 * 55.5 M)`` (water protons 111 M; :func:`solute_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...errors import SynthError

__all__ = ["CestTissue", "LACTATE_PRESET", "AMIDE_PRESET", "GAMMA_HZ_PER_T", "solute_fraction",
           "semisolid_lineshape", "zspectrum", "zspectrum_r1rho", "ZSpectrumTable", "zspectrum_table"]

GAMMA_HZ_PER_T = 42.577478518e6  # proton gamma / 2 pi (Hz/T), CODATA 2018
WATER_PROTON_MOLAR = 2 * 55.5  # mol/L of water protons (pure water)


@dataclass(frozen=True)
class CestTissue:
    """Pool parameters (times in s, rates in 1/s, shifts in ppm relative to water).

    ``solute_mM`` and ``solute_protons`` give ``fb`` (:func:`solute_fraction`); ``fc = 0`` removes
    the semisolid pool; ``lineshape`` is ``"superlorentzian"`` or ``"lorentzian"``.
    """

    t1a_s: float = 2.0
    t2a_s: float = 0.040
    solute_ppm: float = 0.4
    solute_mM: float = 10.0
    solute_protons: int = 1
    kb_per_s: float = 500.0
    t1b_s: float = 1.0
    t2b_s: float = 0.050
    fc: float = 0.10
    kc_per_s: float = 30.0
    t1c_s: float = 1.0
    t2c_s: float = 10e-6
    semisolid_ppm: float = -2.5
    lineshape: str = "superlorentzian"


#: chosen tumour-like tissue at 9.4 T with lactate (-OH, +0.4 ppm)
LACTATE_PRESET = CestTissue()
#: the same tissue with an amide pool (+3.5 ppm, slow exchange) instead
AMIDE_PRESET = replace(LACTATE_PRESET, solute_ppm=3.5, solute_mM=72.0, kb_per_s=30.0, t2b_s=0.010)


def solute_fraction(concentration_mM, protons=1):
    """Relative proton pool size ``fb = n_H [solute] / 111 M`` (water protons), dimensionless."""
    c = np.asarray(concentration_mM, dtype=float)
    if np.any(~np.isfinite(c) | (c < 0)):
        raise SynthError(f"concentration_mM must be finite and >= 0, got {concentration_mM!r}")
    return protons * c * 1e-3 / WATER_PROTON_MOLAR


def _offsets(offsets_ppm):
    x = np.asarray(offsets_ppm, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise SynthError("offsets_ppm must be a 1-D array of finite offsets (ppm)")
    return x


def semisolid_lineshape(d_rad_s, t2c_s, kind="superlorentzian", *, min_offset_hz=20.0):
    """Absorption lineshape ``g(D)`` (s) of the semisolid pool at offsets ``D`` (rad/s from its centre).

    ``"lorentzian"``: ``(T2c / pi) / (1 + (D T2c)^2)``.  ``"superlorentzian"``: the powder average
    over orientations ``u = cos(theta)`` (Morrison & Henkelman 1995), by the trapezoid rule on a grid
    geometrically refined towards the magic angle (2 x 400 points from 1e-9 to the ends), with ``|D|``
    floored at ``2 pi min_offset_hz``.  Vectorised over ``D``.
    """
    d = np.abs(np.asarray(d_rad_s, dtype=float))
    if kind == "lorentzian":
        return (t2c_s / np.pi) / (1.0 + (d * t2c_s) ** 2)
    if kind != "superlorentzian":
        raise SynthError(f"lineshape must be 'superlorentzian' or 'lorentzian', got {kind!r}")
    d = np.maximum(d, 2 * np.pi * min_offset_hz)
    u0 = 1.0 / np.sqrt(3.0)
    lo = u0 - np.geomspace(1e-9, u0, 400)[::-1]
    hi = u0 + np.geomspace(1e-9, 1.0 - u0, 400)
    u = np.concatenate([[0.0], lo[1:], [u0], hi])
    u = np.unique(u)
    w = np.abs(3 * u * u - 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        f = np.sqrt(2 / np.pi) * t2c_s / w * np.exp(-2.0 * (d[..., None] * t2c_s / w) ** 2)
    f = np.where(w > 0, f, 0.0)
    return np.trapezoid(f, u, axis=-1)


def _rates(tissue, b0_T):
    t = tissue
    for name in ("t1a_s", "t2a_s", "kb_per_s", "t1b_s", "t2b_s", "t1c_s", "t2c_s", "kc_per_s"):
        v = getattr(t, name)
        if not (np.isfinite(v) and v > 0):
            raise SynthError(f"CestTissue.{name} must be positive, got {v!r}")
    if not (0 <= t.fc < 1):
        raise SynthError(f"CestTissue.fc must be in [0, 1), got {t.fc!r}")
    if not b0_T > 0:
        raise SynthError(f"b0_T must be positive (T), got {b0_T!r}")
    return float(solute_fraction(t.solute_mM, t.solute_protons)), 2 * np.pi * GAMMA_HZ_PER_T * b0_T * 1e-6  # rad/s per ppm


def zspectrum(offsets_ppm, tissue=LACTATE_PRESET, *, b0_T=9.4, b1_uT=0.8, t_sat_s=None, b0_shift_ppm=0.0):
    """Z-spectrum ``Mza / M0a`` from the Bloch-McConnell equations (continuous-wave saturation).

    Parameters
    ----------
    offsets_ppm : array_like (n,)
        Saturation offsets (ppm from the nominal water frequency).
    tissue : CestTissue
    b0_T : float
        Main field (T); 1 ppm = 42.577 b0_T Hz.
    b1_uT : float
        Saturation amplitude (uT); ``w1 = 2 pi 42.577 Hz/uT * B1``.
    t_sat_s : float or None
        Saturation time from equilibrium (s); None for the steady state.
    b0_shift_ppm : float
        Water frequency offset (a field inhomogeneity shifts every pool).

    Returns
    -------
    ndarray (n,): Z as a fraction of M0 (1 = no saturation).
    """
    x = _offsets(offsets_ppm)
    t = tissue
    fb, ppm = _rates(t, b0_T)
    if not b1_uT > 0:
        raise SynthError(f"b1_uT must be positive, got {b1_uT!r}")
    w1 = 2 * np.pi * GAMMA_HZ_PER_T * b1_uT * 1e-6
    dw = (x - b0_shift_ppm) * ppm
    da, db, dc = dw, dw - t.solute_ppm * ppm, dw - t.semisolid_ppm * ppm
    kab, kba = fb * t.kb_per_s, t.kb_per_s
    kac, kca = t.fc * t.kc_per_s, t.kc_per_s
    r1a, r2a, r1b, r2b, r1c = 1 / t.t1a_s, 1 / t.t2a_s, 1 / t.t1b_s, 1 / t.t2b_s, 1 / t.t1c_s
    rrf = np.pi * w1 ** 2 * semisolid_lineshape(dc, t.t2c_s, t.lineshape) if t.fc > 0 else np.zeros_like(dw)
    n = x.size
    A = np.zeros((n, 7, 7))
    # water
    A[:, 0, 0] = A[:, 1, 1] = -r2a - kab
    A[:, 0, 1], A[:, 1, 0] = -da, da
    A[:, 1, 2], A[:, 2, 1] = -w1, w1
    A[:, 2, 2] = -r1a - kab - kac
    # solute
    A[:, 3, 3] = A[:, 4, 4] = -r2b - kba
    A[:, 3, 4], A[:, 4, 3] = -db, db
    A[:, 4, 5], A[:, 5, 4] = -w1, w1
    A[:, 5, 5] = -r1b - kba
    # exchange water <-> solute
    for i in range(3):
        A[:, i, 3 + i] = kba
        A[:, 3 + i, i] = kab
    # semisolid (longitudinal only)
    A[:, 6, 6] = -r1c - kca - rrf
    A[:, 2, 6], A[:, 6, 2] = kca, kac
    b = np.zeros((n, 7))
    b[:, 2], b[:, 5], b[:, 6] = r1a, r1b * fb, r1c * t.fc
    m_ss = -np.linalg.solve(A, b[..., None])[..., 0]
    if t_sat_s is None:
        return m_ss[:, 2]
    if not t_sat_s > 0:
        raise SynthError(f"t_sat_s must be positive (s) or None for steady state, got {t_sat_s!r}")
    m0 = np.zeros(7)
    m0[2], m0[5], m0[6] = 1.0, fb, t.fc
    lam, vec = np.linalg.eig(A)
    coef = np.linalg.solve(vec, (m0 - m_ss)[..., None].astype(complex))[..., 0]
    m_t = m_ss + np.einsum("nij,nj->ni", vec, np.exp(lam * t_sat_s) * coef).real
    return m_t[:, 2]


def zspectrum_r1rho(offsets_ppm, tissue=LACTATE_PRESET, *, b0_T=9.4, b1_uT=0.8, t_sat_s=None):
    """Analytical Z-spectrum of water + one solute pool (no semisolid pool), Zaiss & Bachert 2013.

    ``Z = cos^2(theta) R1a / (Reff + Rex)`` at steady state (module notes for ``Rex``); for a finite
    ``t_sat_s``: ``Z(t) = (cos^2 theta - Z_ss) exp(-R1rho t) + Z_ss``.  Returns Z (fraction), shape (n,).
    """
    x = _offsets(offsets_ppm)
    t = tissue
    fb, ppm = _rates(t, b0_T)
    w1 = 2 * np.pi * GAMMA_HZ_PER_T * b1_uT * 1e-6
    da = x * ppm
    db = da - t.solute_ppm * ppm
    theta = np.arctan2(w1, da)
    c2, s2 = np.cos(theta) ** 2, np.sin(theta) ** 2
    r1a, r2a, r2b, kb = 1 / t.t1a_s, 1 / t.t2a_s, 1 / t.t2b_s, t.kb_per_s
    reff = r1a * c2 + r2a * s2
    half = np.sqrt((kb + r2b) / kb * w1 ** 2 + (kb + r2b) ** 2)
    rex = fb * kb * w1 ** 2 / (w1 ** 2 + kb * (kb + r2b)) * half ** 2 / (half ** 2 + db ** 2)
    r1rho = reff + rex
    z_ss = c2 * r1a / r1rho
    if t_sat_s is None:
        return z_ss
    return (c2 - z_ss) * np.exp(-r1rho * t_sat_s) + z_ss


# ----------------------------------------------------------------------------------------- lookup table
@dataclass(frozen=True)
class ZSpectrumTable:
    """Bloch-McConnell Z on a fine offset grid x Chebyshev series in solute concentration.

    Built by :func:`zspectrum_table`; call it to evaluate.  ``spline`` holds the cubic-spline
    coefficients in offset of each Chebyshev coefficient in concentration, shape
    ``(4, n_grid - 1, n_cheb)`` (highest power first, ``scipy.interpolate.CubicSpline.c`` layout);
    ``reference`` the Chebyshev coefficients of ``Z`` at ``reference_ppm`` (the far-off-resonant
    reference scan, not shifted by B0: the spectrum is flat there).
    """

    grid_ppm: np.ndarray
    spline: np.ndarray
    concentration_mM: tuple
    reference_ppm: float
    reference: np.ndarray
    tissue: CestTissue
    b1_uT: float
    t_sat_s: float | None

    def _cheb(self, concentration_mM, shape):
        lo, hi = self.concentration_mM
        c = np.broadcast_to(np.asarray(concentration_mM, dtype=float), shape)
        if not np.all(np.isfinite(c)):
            raise SynthError("concentration_mM must be finite")
        tol = 1e-9 * max(1.0, hi)
        if np.any(c < lo - tol) or np.any(c > hi + tol):
            raise SynthError(f"concentration_mM spans [{c.min():.4g}, {c.max():.4g}] mM, outside the table's "
                             f"[{lo:.4g}, {hi:.4g}] mM: build the table over the whole range")
        n = self.reference.size
        u = np.zeros(shape) if hi == lo else (2.0 * c - (lo + hi)) / (hi - lo)
        return np.polynomial.chebyshev.chebvander(u, n - 1)  # (..., n)

    def __call__(self, offsets_ppm, concentration_mM, b0_shift_ppm=0.0, *, block=4096):
        """``Z(offsets - dB0; c)``, shape ``broadcast(c, dB0).shape + (n_offsets,)``.

        Parameters
        ----------
        offsets_ppm : array_like (n,), nominal saturation offsets (ppm).
        concentration_mM : array_like (...), solute concentration per voxel (mM) within the table's range.
        b0_shift_ppm : array_like (...), water frequency offset per voxel (ppm).
        block : voxels per internal batch (bounds temporary memory).
        """
        x = _offsets(offsets_ppm)
        c = np.asarray(concentration_mM, dtype=float)
        b = np.asarray(b0_shift_ppm, dtype=float)
        shape = np.broadcast_shapes(c.shape, b.shape)
        if not np.all(np.isfinite(b)):
            raise SynthError("b0_shift_ppm must be finite")
        cheb = self._cheb(c, shape).reshape(-1, self.reference.size)
        shift = np.broadcast_to(b, shape).reshape(-1)
        g = self.grid_ppm
        h = g[1] - g[0]
        lo_q, hi_q = (x.min() - shift.max(), x.max() - shift.min()) if shift.size else (x.min(), x.max())
        if lo_q < g[0] - 1e-9 or hi_q > g[-1] + 1e-9:
            raise SynthError(f"offsets - b0 shift span [{lo_q:.3f}, {hi_q:.3f}] ppm, outside the table's "
                             f"[{g[0]:.3f}, {g[-1]:.3f}] ppm")
        m = self.reference.size
        rows = self.spline.transpose(1, 0, 2).reshape(g.size - 1, 4 * m)  # per grid cell: (t^3, t^2, t, 1) x cheb
        out = np.empty((shift.size, x.size))
        for s in range(0, shift.size, block):  # batches of voxels, not a voxel loop
            q = x[None, :] - shift[s:s + block, None]
            i = np.clip(np.floor((q - g[0]) / h).astype(int), 0, g.size - 2)
            t = q - g[i]
            powers = np.stack([t ** 3, t ** 2, t, np.ones_like(t)], -1)  # (nb, n, 4)
            w = (powers[..., :, None] * cheb[s:s + block, None, None, :]).reshape(t.shape + (4 * m,))
            out[s:s + block] = np.einsum("vnk,vnk->vn", rows[i], w)
        return out.reshape(shape + (x.size,))

    def reference_z(self, concentration_mM):
        """Z of the reference scan at ``reference_ppm``, shape of ``concentration_mM``."""
        c = np.asarray(concentration_mM, dtype=float)
        return self._cheb(c, c.shape) @ self.reference


def zspectrum_table(tissue=LACTATE_PRESET, *, concentration_mM=(0.0, 40.0), grid_ppm=(-3.0, 3.0),
                    step_ppm=0.01, n_concentration=6, reference_ppm=300.0, b0_T=9.4, b1_uT=0.8, t_sat_s=None):
    """Tabulate :func:`zspectrum` for evaluation on images (:class:`ZSpectrumTable`).

    ``Z(x; c) ~= sum_m a_m(x) T_m(u)``, ``u = (2c - lo - hi) / (hi - lo)``, with ``a_m`` interpolated from the
    Bloch-McConnell solution at the ``n_concentration`` Chebyshev-Gauss-Lobatto nodes in ``[lo, hi]`` (one
    ``zspectrum`` call per node, steady state or ``t_sat_s`` from equilibrium) and a not-a-knot cubic spline in
    offset on a uniform grid of ``step_ppm``.  A field shift is applied by shifting the axis (module notes).

    Parameters
    ----------
    tissue : CestTissue (its ``solute_mM`` is replaced by the nodes).
    concentration_mM : (lo, hi) solute concentration range (mM); ``lo == hi`` gives a table in offset only.
    grid_ppm : (lo, hi) offset range of the table (ppm); must hold every ``offset - dB0`` queried.
    step_ppm : grid spacing (ppm).
    n_concentration : Chebyshev nodes (degree + 1), >= 2 unless ``lo == hi``.
    reference_ppm : offset of the reference (S0) scan (ppm), tabulated in concentration only.
    b0_T, b1_uT, t_sat_s : as :func:`zspectrum`.

    Returns
    -------
    ZSpectrumTable.  Accuracy against direct :func:`zspectrum`: ``tests/test_synth_cest_physics.py``.

    References
    ----------
    Chebyshev interpolation at Lobatto nodes: Trefethen, Approximation Theory and Approximation Practice
    (SIAM 2013), ch. 2-3.
    """
    from scipy.interpolate import CubicSpline

    lo, hi = (float(v) for v in concentration_mM)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
        raise SynthError(f"concentration_mM must be (lo, hi) with 0 <= lo <= hi, got {concentration_mM!r}")
    g0, g1 = (float(v) for v in grid_ppm)
    if not (np.isfinite(g0) and np.isfinite(g1) and g1 > g0 and step_ppm > 0 and (g1 - g0) / step_ppm >= 4):
        raise SynthError(f"grid_ppm {grid_ppm!r} / step_ppm {step_ppm!r}: need lo < hi and >= 4 steps")
    n = 1 if hi == lo else int(n_concentration)
    if n < 1 or (hi > lo and n < 2):
        raise SynthError(f"n_concentration must be >= 2 for a concentration range, got {n_concentration!r}")
    grid = np.linspace(g0, g1, int(round((g1 - g0) / step_ppm)) + 1)
    nodes = np.array([lo]) if n == 1 else lo + (hi - lo) * (1 - np.cos(np.pi * np.arange(n) / (n - 1))) / 2
    offs = np.concatenate([grid, [reference_ppm]])
    z = np.stack([zspectrum(offs, replace(tissue, solute_mM=float(c)), b0_T=b0_T, b1_uT=b1_uT, t_sat_s=t_sat_s)
                  for c in nodes], -1)  # (n_grid + 1, n)
    u = np.zeros(1) if n == 1 else (2 * nodes - (lo + hi)) / (hi - lo)
    coef = np.linalg.solve(np.polynomial.chebyshev.chebvander(u, n - 1), z.T).T  # (n_grid + 1, n)
    spline = CubicSpline(grid, coef[:-1], axis=0).c
    return ZSpectrumTable(grid, spline, (lo, hi), float(reference_ppm), coef[-1], tissue, float(b1_uT),
                          None if t_sat_s is None else float(t_sat_s))
