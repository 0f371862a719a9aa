"""Multi-echo gradient-echo signal from sub-voxel field perturbers (static dephasing, Monte Carlo).

Iron-laden cells are modelled as magnetised spheres (radius ``a``, volume fraction ``zeta``,
volume-susceptibility difference ``dchi`` to the surrounding water, SI) placed independently and
uniformly at random.  Outside a sphere the frequency offset is the dipole field

    dw(r, theta) = dw_s (a / r)^3 (3 cos^2 theta - 1),    dw_s = gamma dchi B0 / 3   [rad/s]

(theta to B0).  The voxel signal of the water outside the spheres, with spins static during the echo
time (static dephasing regime, no diffusion), is the average of the spin phasors

    s(TE) = < exp(-i dw(r) TE) >_r ,     S(TE) = S0 exp(-R2 TE) s(TE).

Theory (Yablonskiy & Haacke, MRM 1994;32:749, doi:10.1002/mrm.1910320610; the same result for the
dilute limit follows from the independent-perturber average
``-ln s = n int_{r>a} (1 - exp(-i dw(r) t)) d^3r``, n = 3 zeta / (4 pi a^3)):

* short TE (``TE << 1/dw_s``), Gaussian: ``-ln s = (2/5) zeta (dw_s TE)^2``, because
  ``<dw^2> = (4/5) zeta dw_s^2`` (the angular mean of ``(3 cos^2 - 1)^2`` is 4/5);
* long TE (``TE >> 1/dw_s``), exponential: ``-ln s = R2' TE - zeta`` with

      R2' = (2 pi / (3 sqrt 3)) zeta dw_s = (2 pi / (9 sqrt 3)) gamma dchi B0 zeta
          = 1.2092 zeta dw_s = 0.40307 zeta gamma dchi B0 ,

  derived here from ``int_0^inf (1 - cos(c/v)) dv = pi |c| / 2`` and
  ``int_{-1}^{1} |3 mu^2 - 1| d mu = 8 / (3 sqrt 3)``; this is Yablonskiy & Haacke's sphere result
  ``R2' = 2 pi zeta dw / (3 sqrt 3)`` with their ``dw = (4 pi / 3) gamma dchi_cgs B0`` (= ``gamma dchi_SI
  B0 / 3``).  Note the constant multiplies ``dw_s = gamma dchi B0 / 3``, not ``gamma dchi B0``: written
  with ``gamma dchi B0`` it is ``2 pi / (9 sqrt 3) = 0.403``.  The two asymptotes touch at
  ``TE = 1.51 / dw_s`` (YH94's crossover ``1.5 / dw``).

The true relaxation rate a mono-exponential fit should find on long-TE echoes is therefore
``R2* = R2 + R2'`` (:func:`true_r2star`).  :func:`static_dephasing_signal` checks the constant by
Monte Carlo: at ``zeta = 0.05`` the late-echo log-slope agrees with ``R2'`` to about 1 % (measured in
``tests/test_independent_physics.py``).

Cost: ``n_spins x n_spheres`` dipole evaluations, computed once per tissue class (a class is one
``(zeta, dchi, B0)``); a voxel's curve is then looked up from its class, never simulated per voxel.

Analytic voxel-wise form (:func:`gre_voxel_signal`).  Doing the ``r`` integral of the
independent-perturber average in closed form (``v = (r/a)^3``, ``int_1^inf (1 - cos(c/v)) dv =
|c| Si(|c|) + cos c - 1``) gives the magnitude of the same signal for any ``(zeta, dw_s)``:

    |s(TE)| = exp(-zeta f_s(dw_s TE)),
    f_s(x) = int_0^1 [ |x P| Si(|x P|) + cos(x P) - 1 ] d mu ,    P = 3 mu^2 - 1 ,

Yablonskiy & Haacke's universal sphere function in the form this derivation gives (their eq. for
spheres, written with ``mu = cos theta``): ``f_s(x) -> (2/5) x^2`` for ``x << 1`` (the Gaussian
regime above) and ``f_s(x) -> 2 pi x / (3 sqrt 3) - 1`` for ``x >> 1`` (the exponential regime,
``R2' = 1.2092 zeta dw_s``).  :func:`static_dephasing_function` tabulates ``f_s`` once (Gauss-Legendre
in ``mu``, 0 <= x <= 200) and interpolates, so a whole image of voxels with their own ``zeta`` and
``dchi`` costs one interpolation per voxel and echo; beyond the table the asymptote is used (its error
there is < 3e-4).  ``tests/test_dephasing_voxelwise.py`` checks it against the Monte Carlo above.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import sici

from ...errors import SynthError

__all__ = ["GAMMA_RAD_PER_S_PER_T", "sphere_frequency", "r2prime_static_dephasing", "gaussian_regime_decay",
           "crossover_time_ms", "static_dephasing_signal", "true_r2star", "gre_class_signals",
           "static_dephasing_function", "zeta_for_r2prime", "gre_voxel_signal"]

#: proton gyromagnetic ratio (rad s^-1 T^-1), CODATA 2018
GAMMA_RAD_PER_S_PER_T = 2.6752218744e8

#: R2' / (zeta dw_s) for randomly placed spheres in the static dephasing regime: 2 pi / (3 sqrt 3)
SPHERE_CONSTANT = 2.0 * np.pi / (3.0 * np.sqrt(3.0))


def _positive(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SynthError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise SynthError(f"{name} must be positive and finite, got {value!r}")
    return v


def _fraction(name, value):
    v = _positive(name, value)
    if v >= 0.5:
        raise SynthError(f"{name} is a volume fraction below 0.5 (dilute perturbers), got {value!r}")
    return v


def _echo_times(te_ms):
    te = np.asarray(te_ms, dtype=float)
    if te.ndim != 1 or te.size == 0 or not np.all(np.isfinite(te)) or np.any(te < 0):
        raise SynthError(f"te_ms must be a 1-D array of finite, non-negative echo times in ms, got {te_ms!r}")
    return te


def sphere_frequency(dchi_ppm, b0_T):
    """Equatorial frequency shift at a sphere's surface, ``dw_s = gamma dchi B0 / 3`` (rad/s).

    Parameters
    ----------
    dchi_ppm : float
        Volume susceptibility difference sphere - water, SI, in ppm (1e-6).
    b0_T : float
        Main field (T).
    """
    return GAMMA_RAD_PER_S_PER_T * _positive("dchi_ppm", dchi_ppm) * 1e-6 * _positive("b0_T", b0_T) / 3.0


def r2prime_static_dephasing(zeta, dchi_ppm, b0_T):
    """Long-TE reversible relaxation rate of randomly placed spheres, ``R2' = 2 pi zeta dw_s / (3 sqrt 3)`` (1/s).

    See the module notes for the derivation; Yablonskiy & Haacke 1994, doi:10.1002/mrm.1910320610.

    >>> round(r2prime_static_dephasing(0.05, 0.5, 7.0), 2)
    18.87
    """
    return float(SPHERE_CONSTANT * _fraction("zeta", zeta) * sphere_frequency(dchi_ppm, b0_T))


def gaussian_regime_decay(te_ms, zeta, dchi_ppm, b0_T):
    """Short-TE limit ``s = exp(-(2/5) zeta (dw_s TE)^2)`` (dimensionless, shape of ``te_ms``)."""
    dw = sphere_frequency(dchi_ppm, b0_T)
    te = np.asarray(te_ms, dtype=float) * 1e-3
    return np.exp(-0.4 * _fraction("zeta", zeta) * (dw * te) ** 2)


def crossover_time_ms(dchi_ppm, b0_T):
    """Echo time (ms) where the Gaussian and the exponential asymptotes touch, ``1.51 / dw_s``.

    Echoes well beyond ~3x this time are in the exponential (long-TE) regime.
    """
    x = 0.5 * SPHERE_CONSTANT / 0.4  # d/dx of 0.4 x^2 equals the long-time slope 1.2092 at x = 1.511
    return 1e3 * x / sphere_frequency(dchi_ppm, b0_T)


def static_dephasing_signal(te_ms, *, zeta, dchi_ppm, b0_T, n_spins=100_000, n_spheres=400, n_configs=8,
                            seed=0, chunk=2048):
    """Monte Carlo voxel signal ``s(TE) = < exp(-i dw(r) TE) >`` of water outside random magnetised spheres.

    Parameters
    ----------
    te_ms : array_like, shape (n_te,)
        Echo times (ms).
    zeta : float
        Nominal sphere volume fraction ``N (4 pi a^3 / 3) / V`` (0 < zeta < 0.5).
    dchi_ppm : float
        Sphere - water volume susceptibility difference (SI ppm).
    b0_T : float
        Main field (T).
    n_spins : int
        Spin positions in total (spread over ``n_configs`` independent sphere configurations).
    n_spheres : int
        Spheres per configuration, in a periodic cube of side ``L = (n_spheres 4 pi a^3 / (3 zeta))^(1/3)``.
    n_configs : int
        Independent random placements (averages the configuration-to-configuration spread).
    seed : int
        Seed of ``numpy.random.default_rng``; the result is a deterministic function of the arguments.
    chunk : int
        Spins per vectorised block (memory ``~ 5 chunk n_spheres`` floats).

    Returns
    -------
    ndarray, complex, shape (n_te,)
        ``s(TE)``, with ``s(0) = 1``.  Spins inside a sphere are excluded (the signal is that of the
        water around the perturbers).

    Notes
    -----
    Each spin sees every sphere at its minimum-image displacement ``d`` (a cube centred on the spin,
    so the truncated dipole sum has zero mean by cubic symmetry); ``dw = dw_s a^3 (3 d_z^2 / |d|^2 - 1)
    / |d|^3`` summed over spheres, B0 along z.  Overlapping spheres are allowed (independent
    placement, the assumption of the theory); the fields superpose linearly.  Monte Carlo error of
    ``|s|`` is about ``1 / sqrt(2 n_spins)`` (0.002 for 1e5 spins).
    """
    te = _echo_times(te_ms)
    zeta = _fraction("zeta", zeta)
    dw_s = sphere_frequency(dchi_ppm, b0_T)
    for name, v in (("n_spins", n_spins), ("n_spheres", n_spheres), ("n_configs", n_configs), ("chunk", chunk)):
        if int(v) != v or v < 1:
            raise SynthError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    side = (n_spheres * 4.0 * np.pi / (3.0 * zeta)) ** (1.0 / 3.0)  # sphere radius a = 1
    per_config = int(np.ceil(n_spins / n_configs))
    freqs = []
    for _ in range(int(n_configs)):  # a handful of configurations; the spins within one are vectorised
        centres = rng.uniform(0.0, side, size=(int(n_spheres), 3))
        spins = rng.uniform(0.0, side, size=(per_config, 3))
        for start in range(0, per_config, int(chunk)):
            p = spins[start:start + int(chunk)]
            d = p[:, None, :] - centres[None, :, :]
            d -= side * np.round(d / side)  # minimum image
            r2 = np.einsum("ijk,ijk->ij", d, d)
            outside = np.all(r2 > 1.0, axis=1)
            f = (3.0 * d[..., 2] ** 2 / r2 - 1.0) / (r2 ** 1.5)
            freqs.append(dw_s * f.sum(axis=1)[outside])
    w = np.concatenate(freqs)
    if w.size < 100:
        raise SynthError(f"only {w.size} spins fell outside the spheres; raise n_spins or lower zeta")
    phase = np.exp(-1j * np.multiply.outer(w, te * 1e-3))
    return phase.mean(axis=0)


def true_r2star(r2_per_s, zeta, dchi_ppm, b0_T):
    """``R2* = R2 + R2'`` (1/s): the rate that defines truth for a mono-exponential fit of long-TE echoes."""
    return _positive("r2_per_s", r2_per_s) + r2prime_static_dephasing(zeta, dchi_ppm, b0_T)


def gre_class_signals(te_ms, classes, *, b0_T, seed=0, n_spins=100_000, n_spheres=400, n_configs=8):
    """Magnitude multi-echo GRE curves, one per tissue class, and their true R2*.

    Parameters
    ----------
    te_ms : array_like (n_te,)
        Echo times (ms).
    classes : sequence of mappings
        One per tissue class with keys ``s0`` (a.u.), ``r2_per_s`` (intrinsic R2, 1/s), ``zeta``
        (perturber volume fraction; 0 for none) and ``dchi_ppm`` (SI ppm; ignored when ``zeta`` is 0).
    b0_T : float
        Main field (T).
    seed : int
        Class ``k`` uses ``seed + k`` for its Monte Carlo.

    Returns
    -------
    signals : ndarray (n_classes, n_te)
        ``S0 exp(-R2 TE) |s(TE)|`` (a.u.).
    r2star : ndarray (n_classes,)
        ``R2 + R2'`` (1/s).

    Render a voxel image by indexing ``signals[label]`` (or through partial-volume fractions,
    :func:`studylib.synth.physics.acquisition.render_partial_volume`).
    """
    te = _echo_times(te_ms)
    out = np.empty((len(classes), te.size))
    r2s = np.empty(len(classes))
    for k, c in enumerate(classes):  # one Monte Carlo per tissue class (a few classes), never per voxel
        try:
            s0, r2, zeta = float(c["s0"]), float(c["r2_per_s"]), float(c.get("zeta", 0.0))
        except (KeyError, TypeError, ValueError) as e:
            raise SynthError(f"classes[{k}] needs numbers s0, r2_per_s, zeta, dchi_ppm: {e}") from None
        decay = np.exp(-_positive(f"classes[{k}].r2_per_s", r2) * te * 1e-3)
        if zeta == 0.0:
            out[k], r2s[k] = s0 * decay, r2
            continue
        s = static_dephasing_signal(te, zeta=zeta, dchi_ppm=c["dchi_ppm"], b0_T=b0_T, n_spins=n_spins,
                                    n_spheres=n_spheres, n_configs=n_configs, seed=seed + k)
        out[k] = s0 * decay * np.abs(s)
        r2s[k] = true_r2star(r2, zeta, c["dchi_ppm"], b0_T)
    return out, r2s


# ------------------------------------------------------------------------------------------ analytic, voxel-wise
#: largest ``x = dw_s TE`` tabulated; beyond it ``f_s`` is its asymptote ``2 pi x / (3 sqrt 3) - 1``
#: (measured error of the asymptote: 5e-4 at x = 100, < 3e-4 beyond 200)
_FS_X_MAX = 200.0


def _fs_quadrature(x: np.ndarray, n_nodes: int) -> np.ndarray:
    """``f_s(x)`` by Gauss-Legendre quadrature in ``mu`` on [0, 1] with ``n_nodes`` nodes (the phase
    ``x P`` spans ``3 x`` rad: a few nodes per radian resolve the oscillation)."""
    u, w = np.polynomial.legendre.leggauss(int(n_nodes))
    mu, w = 0.5 * (u + 1.0), 0.5 * w
    out = np.empty(x.shape)
    for start in range(0, x.size, 256):  # blocks of the table, memory ~ 256 x n_nodes
        c = np.abs(np.multiply.outer(x[start:start + 256], 3.0 * mu ** 2 - 1.0))
        si, _ = sici(c)
        out[start:start + 256] = (c * si + np.cos(c) - 1.0) @ w
    return out


@lru_cache(maxsize=1)
def _fs_table() -> tuple[np.ndarray, np.ndarray]:
    """The tabulated ``(x, f_s(x))``, computed once per process (~0.3 s).

    Steps 0.005 up to x = 10 (200 nodes), 0.05 up to 100 (800 nodes), 0.1 up to 200 (1500 nodes): the
    quadrature agrees with 3000 nodes to 1e-11; linear interpolation errs by ``<= f_s'' h^2 / 8``
    (``f_s'' <= 0.8``: 2.5e-6 below x = 10, < 1e-4 above).
    """
    parts = [(np.arange(0.0, 10.0, 0.005), 200), (np.arange(10.0, 100.0, 0.05), 800),
             (np.arange(100.0, _FS_X_MAX + 0.05, 0.1), 1500)]
    return (np.concatenate([x for x, _ in parts]), np.concatenate([_fs_quadrature(x, n) for x, n in parts]))


def static_dephasing_function(x) -> np.ndarray:
    """Yablonskiy-Haacke universal function of randomly placed magnetised spheres, ``f_s(x)``, ``x = dw_s TE``.

    ``f_s(x) = int_0^1 [|x P| Si(|x P|) + cos(x P) - 1] d mu``, ``P = 3 mu^2 - 1`` (module notes), so that
    ``|s(TE)| = exp(-zeta f_s(dw_s TE))``.  Tabulated once per process and linearly interpolated;
    asymptote beyond ``x = 200``.

    Parameters
    ----------
    x : array_like
        ``dw_s TE`` (dimensionless, >= 0), any shape.

    Returns
    -------
    ndarray, shape of ``x``.

    >>> f = static_dephasing_function([0.01, 100.0])
    >>> round(float(f[0] / (0.4 * 0.01 ** 2)), 3), round(float(f[1] - (2 * np.pi / (3 * np.sqrt(3)) * 100 - 1)), 2)
    (1.0, 0.0)
    """
    x = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise SynthError("x = dw_s * TE must be finite and non-negative")
    tx, tf = _fs_table()
    return np.where(x <= _FS_X_MAX, np.interp(x, tx, tf), SPHERE_CONSTANT * x - 1.0)


def _array(name, value, *, lo=0.0, lo_open=False, hi=None):
    a = np.asarray(value, dtype=float)
    bad = ~np.isfinite(a) | ((a <= lo) if lo_open else (a < lo))
    if hi is not None:
        bad |= a >= hi
    if np.any(bad):
        rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and < {hi:g}" if hi is not None else "")
        raise SynthError(f"{name} must be finite and {rng}; {int(bad.sum())} value(s) are not "
                         f"(e.g. {a[bad].flat[0]!r})")
    return a


def zeta_for_r2prime(r2prime_per_s, dchi_ppm, b0_T) -> np.ndarray:
    """Sphere volume fraction whose long-TE ``R2' = 2 pi zeta dw_s / (3 sqrt 3)`` is ``r2prime_per_s``.

    ``zeta = R2' / (1.2092 dw_s)``, ``dw_s = gamma dchi B0 / 3``; vectorised over ``r2prime_per_s``
    (and ``dchi_ppm``).  Raises :class:`SynthError` where ``zeta`` would reach 0.5 (not dilute).
    """
    r2p = _array("r2prime_per_s", r2prime_per_s)
    dw = GAMMA_RAD_PER_S_PER_T * _array("dchi_ppm", dchi_ppm, lo_open=True) * 1e-6 * _positive("b0_T", b0_T) / 3.0
    zeta = r2p / (SPHERE_CONSTANT * dw)
    _array("zeta (from r2prime_per_s)", zeta, hi=0.5)
    return zeta


def gre_voxel_signal(te_ms, *, s0, r2_per_s, zeta, dchi_ppm, b0_T) -> np.ndarray:
    """Magnitude multi-echo GRE signal of every voxel, ``S0 exp(-R2 TE) exp(-zeta f_s(dw_s TE))``.

    The analytic static-dephasing signal (Yablonskiy & Haacke, MRM 1994;32:749,
    doi:10.1002/mrm.1910320610) of water around randomly placed magnetised spheres, each voxel with its
    own sphere volume fraction and susceptibility difference; :func:`static_dephasing_signal` is the
    Monte Carlo of the same theory.  Its true relaxation rate (what a mono-exponential fit of long-TE
    echoes should find) is ``R2* = R2 + R2'`` (:func:`true_r2star`).

    Parameters
    ----------
    te_ms : array_like (n_te,)
        Echo times (ms).
    s0 : array_like
        Signal at TE = 0 (a.u.), voxel shape (broadcast with the others).
    r2_per_s : array_like
        Intrinsic (mono-exponential) relaxation rate R2 (1/s), > 0.
    zeta : array_like
        Sphere volume fraction, 0 <= zeta < 0.5 (0: no perturbers).
    dchi_ppm : array_like
        Sphere - water volume susceptibility difference (SI ppm), > 0.
    b0_T : float
        Main field (T).

    Returns
    -------
    ndarray, shape ``broadcast(s0, r2_per_s, zeta, dchi_ppm) + (n_te,)`` (a.u.).
    """
    te = _echo_times(te_ms) * 1e-3
    s0 = _array("s0", s0)
    r2 = _array("r2_per_s", r2_per_s, lo_open=True)
    zeta = _array("zeta", zeta, hi=0.5)
    dw = GAMMA_RAD_PER_S_PER_T * _array("dchi_ppm", dchi_ppm, lo_open=True) * 1e-6 * _positive("b0_T", b0_T) / 3.0
    s0, r2, zeta, dw = np.broadcast_arrays(s0, r2, zeta, dw)
    fs = static_dephasing_function(dw[..., None] * te)
    return s0[..., None] * np.exp(-r2[..., None] * te - zeta[..., None] * fs)
