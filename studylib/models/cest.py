"""CEST: Z-spectrum forward model (Lorentzian pools) and analysis kernels.

Offsets in ppm relative to water (positive = downfield), the offset axis last.
Z = S(offset) / S0 as a fraction; MTRasym reported in % of S0 by default, or in % of S(-D)
(``normalisation="negative_offset"``, :data:`MTR_NORMALISATIONS`).
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


# ---------------------------------------------------------------------------
# Analysis kernels (pure numpy, offset axis last, vectorised across voxels)
# ---------------------------------------------------------------------------
#
# Interpolation along the offset axis uses one *shared* offset grid for all voxels,
# so the spline through each voxel's Z-spectrum is a fixed linear operator applied to
# the data: coefficients ``c_k = z @ C_k.T`` with ``C_k`` built once from the identity
# matrix.  Evaluating every voxel at its own (B0-shifted) points is then a gather
# (``searchsorted`` + ``take_along_axis``); no Python loop over voxels anywhere.

from dataclasses import dataclass  # noqa: E402

__all__ += [
    "Pool",
    "LATEST_POOLS",
    "z_normalize",
    "check_offsets",
    "interp_coefficients",
    "interp_eval",
    "shift_zspectrum",
    "b0_shift",
    "b0_kernel",
    "MTR_NORMALISATIONS",
    "check_normalisation",
    "mtr_asym_values",
    "mtr_asym_kernel",
    "fit_lorentzian_pools",
    "lorentzian_pools_kernel",
]

_BLOCK = 2048  # voxels per internal batch: bounds temporary memory to a few tens of MB

#: the two MTR asymmetry normalisations: name -> formula.  ``"s0"`` (default) divides the difference by the
#: unsaturated reference S0 (Zhou et al., Nat Med 2003;9:1085); ``"negative_offset"`` by the saturated
#: signal on the opposite side of water, S(-D), the reference image of the asymmetry.  With Z = S/S0 the
#: two differ by the factor ``S0 / S(-D) = 1 / Z(-D)``: the second is larger wherever Z(-D) < 1, most
#: near water, where direct saturation lowers S(-D).
MTR_NORMALISATIONS = {
    "s0": "MTRasym(D) = 100 [S(-D) - S(+D)] / S0",
    "negative_offset": "MTRasym(D) = 100 [S(-D) - S(+D)] / S(-D)",
}


def check_normalisation(normalisation):
    """``normalisation`` if it is a key of :data:`MTR_NORMALISATIONS`, else :class:`FitInputError` naming both."""
    if normalisation not in MTR_NORMALISATIONS:
        from ..errors import FitInputError

        raise FitInputError(f"normalisation must be one of {sorted(MTR_NORMALISATIONS)} "
                            f"(MTRasym divided by S0 or by S(-D)), got {normalisation!r}")
    return normalisation


def check_offsets(offset_ppm, *, what="saturation offsets", min_points=3, need_both_sides=True):
    """Validate a CEST offset axis (ppm): finite, strictly increasing, no duplicates.

    Returns the offsets as float64.  Raises :class:`studylib.errors.FitInputError`
    naming the problem (unsorted, duplicated, too few, one-sided).
    """
    from ..errors import FitInputError

    try:
        x = np.asarray(offset_ppm, dtype=float).reshape(-1)
    except (TypeError, ValueError) as err:
        raise FitInputError(f"{what} (ppm) are not numbers: {err}") from None
    if x.size < min_points:
        raise FitInputError(f"need at least {min_points} {what} (ppm), got {x.size}: {x.tolist()}")
    if not np.all(np.isfinite(x)):
        raise FitInputError(f"{what} (ppm) contain NaN or Inf: {x.tolist()}")
    d = np.diff(x)
    if np.any(d == 0):
        dup = sorted(set(x[1:][d == 0].tolist()))
        raise FitInputError(f"{what} (ppm) are duplicated at {dup}; average repeated offsets first")
    if np.any(d < 0):
        raise FitInputError(f"{what} (ppm) are not sorted ascending: {x.tolist()}; sort with signal.sortby('offset')")
    if need_both_sides and not (x[0] < 0.0 < x[-1]):
        raise FitInputError(f"{what} (ppm) must cover both sides of water (negative and positive offsets), "
                            f"got [{x[0]:g}, {x[-1]:g}]")
    return x


def z_normalize(signal, s0):
    """Z-spectrum ``Z(d) = S(d) / S0`` (fraction of the unsaturated signal).

    Parameters
    ----------
    signal : array (..., n) saturated signal (a.u.), offset axis last.
    s0 : array (...) unsaturated reference signal (same units).

    Returns
    -------
    ndarray (..., n); NaN where ``S0`` is not a finite positive number.

    Notes
    -----
    van Zijl & Yadav, MRM 2011;65:927 (doi:10.1002/mrm.22761).
    """
    signal = np.asarray(signal, dtype=float)
    s0 = np.asarray(s0, dtype=float)
    good = np.isfinite(s0) & (s0 > 0)
    s0 = np.where(good, s0, np.nan)
    return signal / s0[..., None]


def _operator(x, kind):
    """Coefficient operators ``C`` (4, n-1, n) so that ``coef_k = z @ C[k].T`` (piecewise cubic)."""
    n = x.size
    if kind == "cubic" and n >= 4:
        from scipy.interpolate import CubicSpline

        return CubicSpline(x, np.eye(n), axis=0).c  # (4, n-1, n): not-a-knot cubic spline
    if kind not in ("cubic", "linear"):
        from ..errors import FitInputError

        raise FitInputError(f"interp must be 'cubic' or 'linear', got {kind!r}")
    eye = np.eye(n)
    h = np.diff(x)[:, None]
    c = np.zeros((4, n - 1, n))
    c[2] = (eye[1:] - eye[:-1]) / h
    c[3] = eye[:-1]
    return c


def interp_coefficients(z, offset_ppm, kind="cubic"):
    """Piecewise-cubic coefficients of every voxel's spectrum on the shared offset grid.

    Parameters
    ----------
    z : (n_vox, n) spectra, offset axis last (NaN stays confined to its voxel).
    offset_ppm : (n,) strictly increasing offsets.
    kind : ``"cubic"`` (not-a-knot cubic spline) or ``"linear"``.

    Returns
    -------
    ndarray (4, n_vox, n-1): on interval ``i`` the value at ``q`` is
    ``((c0 t + c1) t + c2) t + c3`` with ``t = q - x_i``.
    """
    x = np.asarray(offset_ppm, dtype=float)
    op = _operator(x, kind)
    z = np.asarray(z, dtype=float)
    return np.einsum("vn,kin->kvi", z, op, optimize=True)


def interp_eval(coef, offset_ppm, q):
    """Evaluate per-voxel piecewise cubics at per-voxel points ``q`` (n_vox, m); NaN outside the grid."""
    x = np.asarray(offset_ppm, dtype=float)
    q = np.asarray(q, dtype=float)
    n = x.size
    qq = np.where(np.isfinite(q), q, x[0])
    idx = np.clip(np.searchsorted(x, qq, side="right") - 1, 0, n - 2)
    t = qq - x[idx]
    c = [np.take_along_axis(coef[k], idx, axis=1) for k in range(4)]
    val = ((c[0] * t + c[1]) * t + c[2]) * t + c[3]
    tol = 1e-9 * max(1.0, float(np.abs(x).max()))
    outside = ~np.isfinite(q) | (q < x[0] - tol) | (q > x[-1] + tol)
    return np.where(outside, np.nan, val)


def _shared_matrix(x, q, kind):
    """Matrix ``B`` (m, n) so that ``z @ B.T`` evaluates the interpolant at shared points ``q``."""
    op = _operator(x, kind)
    n = x.size
    idx = np.clip(np.searchsorted(x, q, side="right") - 1, 0, n - 2)
    t = (q - x[idx])[:, None]
    return ((op[0][idx] * t + op[1][idx]) * t + op[2][idx]) * t + op[3][idx]


def shift_zspectrum(z, offset_ppm, b0_ppm, grid_ppm=None, *, kind="cubic"):
    """Put each voxel's Z-spectrum on the B0-corrected offset axis.

    ``Z_corr(d) = Z_meas(d + dB0)`` evaluated by interpolation on the shared acquired grid.

    Parameters
    ----------
    z : (n_vox, n) measured Z-spectra (fraction), offset axis last.
    offset_ppm : (n,) acquired offsets, strictly increasing.
    b0_ppm : (n_vox,) water frequency shift per voxel (ppm), e.g. from :func:`b0_shift`.
    grid_ppm : (m,) offsets of the corrected spectrum (default: ``offset_ppm``).
    kind : ``"cubic"`` or ``"linear"`` interpolation.

    Returns
    -------
    ndarray (n_vox, m); NaN where ``d + dB0`` falls outside the acquired range.
    """
    x = np.asarray(offset_ppm, dtype=float)
    grid = x if grid_ppm is None else np.asarray(grid_ppm, dtype=float)
    z = np.atleast_2d(np.asarray(z, dtype=float))
    b0 = np.asarray(b0_ppm, dtype=float).reshape(-1)
    coef = interp_coefficients(z, x, kind)
    return interp_eval(coef, x, grid[None, :] + b0[:, None])


def _parabola_vertex(cm, c0, cp, h):
    """Offset of the vertex of the parabola through (-h, cm), (0, c0), (h, cp); 0 when degenerate."""
    den = cm - 2.0 * c0 + cp
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 0.5 * h * (cm - cp) / den
    return np.where((den > 0) & np.isfinite(d), np.clip(d, -h, h), 0.0)


def b0_shift(z, offset_ppm, *, method="mscf", search_ppm=None, step_ppm=None, kind="cubic", min_dip=0.1):
    """Per-voxel water-frequency (B0) shift from a WASSR or CEST Z-spectrum.

    Parameters
    ----------
    z : (n_vox, n) spectra (any scale; normalisation is not needed), offset axis last.
    offset_ppm : (n,) strictly increasing offsets covering both sides of water.
    method : ``"mscf"`` (maximum-symmetry centre frequency, default) or ``"minimum"``.
    search_ppm : half-width of the shift search (default ``min(1, R/2)`` with ``R`` the
        smaller half-range of the offsets).
    step_ppm : coarse search step (default ``min(0.02, spacing/4)``), refined sub-step.
    kind : interpolation along offsets, ``"cubic"`` (default) or ``"linear"``.
    min_dip : a voxel whose interpolated minimum is not at least ``min_dip`` (fraction)
        below its largest sample has no usable water dip: NaN, ``fit_ok=False``.

    Returns
    -------
    b0_ppm : (n_vox,) shift of the water line in ppm (``dB0``; NaN where not found).
    fit_ok : (n_vox,) bool.
    dip : (n_vox,) relative depth of the water dip (QC).

    Notes
    -----
    *MSCF* (Kim et al., MRM 2009;61:1441, doi:10.1002/mrm.21873, the WASSR paper): the
    shift ``s`` minimises ``C(s) = mean_k [Z(s + D_k) - Z(s - D_k)]^2`` over symmetric
    pairs ``D_k``; the spectra are interpolated with a cubic spline on the shared grid
    (a matrix product for all voxels), ``C`` is evaluated on a coarse grid of ``s``, then
    refined twice by parabolic interpolation of ``C`` at per-voxel points (step/4,
    step/16).  *minimum*: the minimum of the spline-interpolated spectrum, refined the
    same way.  On WASSR data (low B1, direct water saturation only) both are unbiased;
    on a CEST spectrum a pool near water (lactate at 0.4 ppm) pulls the minimum towards
    itself, so use WASSR for LATEST.  A minimum at the edge of the search window means
    the shift is out of range: NaN with ``fit_ok=False``.
    """
    from ..errors import FitInputError

    x = check_offsets(offset_ppm)
    z = np.atleast_2d(np.asarray(z, dtype=float))
    if z.shape[-1] != x.size:
        raise FitInputError(f"spectra have {z.shape[-1]} offsets but offset_ppm has {x.size}")
    if method not in ("mscf", "minimum"):
        raise FitInputError(f"method must be 'mscf' or 'minimum', got {method!r}")
    half = float(min(x[-1], -x[0]))
    search = min(1.0, half / 2.0) if search_ppm is None else float(search_ppm)
    if not (0 < search < half):
        raise FitInputError(f"search_ppm={search:g} must be positive and below the offsets' half-range {half:g} ppm")
    spacing = float(np.median(np.diff(x)))
    h = min(0.02, spacing / 4.0) if step_ppm is None else float(step_ppm)
    if not h > 0:
        raise FitInputError(f"step_ppm must be positive, got {step_ppm!r}")
    shifts = np.arange(-np.floor(search / h), np.floor(search / h) + 1) * h
    if method == "mscf":
        dmax = half - search
        nk = max(8, int(np.ceil(2 * dmax / spacing)) + 1)
        deltas = np.linspace(dmax / nk, dmax, nk)
        qp = (shifts[:, None] + deltas[None, :]).ravel()
        qm = (shifts[:, None] - deltas[None, :]).ravel()
        bdiff = _shared_matrix(x, qp, kind) - _shared_matrix(x, qm, kind)  # (J*K, n)
    else:
        bmin = _shared_matrix(x, shifts, kind)  # (J, n)
    nv = z.shape[0]
    b0 = np.full(nv, np.nan)
    dip = np.full(nv, np.nan)
    ok = np.zeros(nv, dtype=bool)
    for s in range(0, nv, _BLOCK):
        zb = z[s:s + _BLOCK]
        finite = np.all(np.isfinite(zb), axis=1)
        zf = np.where(finite[:, None], zb, 0.0)
        scale = np.max(np.abs(zf), axis=1)
        scale = np.where(scale > 0, scale, 1.0)
        zf = zf / scale[:, None]
        if method == "mscf":
            cost = ((zf @ bdiff.T) ** 2).reshape(zb.shape[0], shifts.size, -1).mean(axis=2)
        else:
            cost = zf @ bmin.T
        j = np.argmin(cost, axis=1)
        interior = (j > 0) & (j < shifts.size - 1)
        jj = np.clip(j, 1, shifts.size - 2)
        r = np.arange(zb.shape[0])
        est = shifts[jj] + _parabola_vertex(cost[r, jj - 1], cost[r, jj], cost[r, jj + 1], h)
        coef = interp_coefficients(zf, x, kind)
        hh = h
        for _ in range(2):  # per-voxel refinement, step/4 then step/16
            hh = hh / 4.0
            pts = est[:, None] + np.array([-hh, 0.0, hh])[None, :]
            if method == "mscf":
                qp = (pts[:, :, None] + deltas[None, None, :]).reshape(zb.shape[0], -1)
                qm = (pts[:, :, None] - deltas[None, None, :]).reshape(zb.shape[0], -1)
                c3 = ((interp_eval(coef, x, qp) - interp_eval(coef, x, qm)) ** 2).reshape(zb.shape[0], 3, -1).mean(2)
            else:
                c3 = interp_eval(coef, x, pts)
            step = _parabola_vertex(c3[:, 0], c3[:, 1], c3[:, 2], 2 * hh)
            est = est + np.where(np.all(np.isfinite(c3), axis=1), step, 0.0)
        zmin = interp_eval(coef, x, est[:, None])[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            dp = 1.0 - zmin / np.max(zf, axis=1)
        good = finite & interior & np.isfinite(est) & (dp >= min_dip)
        b0[s:s + _BLOCK] = np.where(good, est, np.nan)
        dip[s:s + _BLOCK] = np.where(finite, dp, np.nan)
        ok[s:s + _BLOCK] = good
    return b0, ok, dip


def b0_kernel(y, x, *, method="mscf", search_ppm=None, step_ppm=None, kind="cubic", min_dip=0.1):
    """Adapter kernel for :func:`b0_shift`: ``y`` (n_vox, n) spectra, ``x`` offsets (ppm).

    Returns ``{"b0_ppm", "dip", "fit_ok"}`` arrays of shape (n_vox,).
    """
    b0, ok, dip = b0_shift(y, x, method=method, search_ppm=search_ppm, step_ppm=step_ppm, kind=kind,
                           min_dip=min_dip)
    return {"b0_ppm": b0, "dip": dip, "fit_ok": ok}


def mtr_asym_values(z, offset_ppm, *, b0_ppm=None, deltas_ppm=(0.4,), bands_ppm=(), kind="cubic",
                    band_points=21, normalisation="s0"):
    """MTR asymmetry at chosen offsets and integrated over bands, B0-corrected per voxel.

    Parameters
    ----------
    z : (n_vox, n) Z-spectra as fractions of S0 (see :func:`z_normalize`).
    offset_ppm : (n,) acquired offsets, strictly increasing.
    b0_ppm : (n_vox,) water shift per voxel (ppm) or None (no correction).
    deltas_ppm : positive offsets ``D`` at which to report ``MTRasym(D)``.
    bands_ppm : sequence of ``(lo, hi)`` positive bands (ppm) to integrate.
    kind : interpolation, ``"cubic"`` or ``"linear"``.
    band_points : samples per band for the trapezoidal integral.
    normalisation : ``"s0"`` (default) or ``"negative_offset"`` (:data:`MTR_NORMALISATIONS`).

    Returns
    -------
    mtr : (n_vox, n_deltas) MTRasym in % of S0 (or of S(-D)).
    band : (n_vox, n_bands) integral of MTRasym over each band in %·ppm.

    Notes
    -----
    ``MTRasym(D) = 100 [Z(-D) - Z(+D)]`` (``"s0"``), or ``100 [Z(-D) - Z(+D)] / Z(-D)``
    ``= 100 [S(-D) - S(+D)] / S(-D)`` (``"negative_offset"``, independent of S0), with the corrected spectrum
    ``Z(d) = Z_meas(d + dB0)`` interpolated on the acquired grid (Zhou et al., Nat Med
    2003;9:1085, doi:10.1038/nm907; LATEST: DeBrosse et al., Sci Rep 2016;6:19517,
    doi:10.1038/srep19517).  A point that falls outside the acquired range gives NaN.
    The band value is ``int_lo^hi MTRasym(d) dd`` (trapezoid rule); divide by
    ``hi - lo`` for the band mean in %.
    """
    by_reference = check_normalisation(normalisation) == "negative_offset"
    x = np.asarray(offset_ppm, dtype=float)
    z = np.atleast_2d(np.asarray(z, dtype=float))
    nv = z.shape[0]
    b0 = np.zeros(nv) if b0_ppm is None else np.asarray(b0_ppm, dtype=float).reshape(-1)
    deltas = np.asarray(deltas_ppm, dtype=float).reshape(-1)
    band_grids = [np.linspace(lo, hi, band_points) for lo, hi in bands_ppm]
    pts = np.concatenate([deltas] + band_grids) if band_grids else deltas
    mtr = np.full((nv, deltas.size), np.nan)
    band = np.full((nv, len(band_grids)), np.nan)
    for s in range(0, nv, _BLOCK):
        zb = z[s:s + _BLOCK]
        bb = b0[s:s + _BLOCK, None]
        coef = interp_coefficients(zb, x, kind)
        zp = interp_eval(coef, x, pts[None, :] + bb)
        zm = interp_eval(coef, x, -pts[None, :] + bb)
        if by_reference:
            with np.errstate(divide="ignore", invalid="ignore"):
                asym = 100.0 * (zm - zp) / np.where(zm > 0, zm, np.nan)  # S(-D) <= 0: no reference, NaN
        else:
            asym = 100.0 * (zm - zp)
        mtr[s:s + _BLOCK] = asym[:, :deltas.size]
        o = deltas.size
        for i, g in enumerate(band_grids):
            seg = asym[:, o:o + g.size]
            band[s:s + _BLOCK, i] = np.sum(0.5 * (seg[:, 1:] + seg[:, :-1]) * np.diff(g), axis=1)
            o += g.size
    return mtr, band


def _z_and_b0(y, m0, b0_ppm):
    """Z-spectra ``(n_vox, n)`` (divided by ``m0`` unless None) and the B0 shifts ``(n_vox,)`` or None."""
    z = np.asarray(y, dtype=float)
    nv = z.shape[0]
    if m0 is not None:
        z = z_normalize(z, np.broadcast_to(np.asarray(m0, dtype=float), (nv,)))
    b0 = None if b0_ppm is None else np.broadcast_to(np.asarray(b0_ppm, dtype=float), (nv,))
    return z, b0


def mtr_asym_kernel(y, x, *, m0=None, b0_ppm=None, deltas_ppm=(0.4,), bands_ppm=(), kind="cubic", band_points=21,
                    offsets_ppm=None, has_s0=True, has_b0=False, normalisation="s0"):
    """Adapter kernel for :func:`mtr_asym_values`: ``MTRasym(D) = 100 [Z(-D) - Z(+D)]`` (or divided by Z(-D)).

    Parameters
    ----------
    y : (n_vox, n) saturated signal at the offsets ``x`` (ppm); Z-spectra when ``m0`` is None.
    x : (n,) acquired offsets (ppm), strictly increasing.
    m0 : (n_vox,) unsaturated reference S0 per voxel (or one number), or None for ``y``
        already normalised; ``Z = y / m0`` (:func:`z_normalize`).
    b0_ppm : (n_vox,) per-voxel water shift in ppm (or one number), or None (no correction).
    deltas_ppm, bands_ppm, kind, band_points, normalisation : as :func:`mtr_asym_values`.
    offsets_ppm, has_s0, has_b0 : the packed-column form, kept for direct callers: with
        ``offsets_ppm`` given, ``x`` is ignored and the columns of ``y`` are
        ``[S(offsets_ppm)..., S0 if has_s0, dB0 if has_b0]``.

    Returns
    -------
    dict of (n_vox,) arrays: ``mtr_asym_<i>`` (%), ``mtr_asym_band_<i>`` (%·ppm) and ``fit_ok``
    (False where the spectrum, S0 or B0 is not finite or a point falls outside the acquired range).
    """
    if offsets_ppm is not None:
        x = np.asarray(offsets_ppm, dtype=float)
        y = np.asarray(y, dtype=float)
        n = x.size
        if has_s0:
            m0 = y[:, n]
        if has_b0:
            b0_ppm = y[:, n + int(bool(has_s0))]
        y = y[:, :n]
    off = np.asarray(x, dtype=float)
    z, b0 = _z_and_b0(y, m0, b0_ppm)
    mtr, band = mtr_asym_values(z, off, b0_ppm=b0, deltas_ppm=deltas_ppm, bands_ppm=bands_ppm, kind=kind,
                                band_points=band_points, normalisation=normalisation)
    ok = np.all(np.isfinite(z), axis=1) & np.all(np.isfinite(mtr), axis=1) & np.all(np.isfinite(band), axis=1)
    if b0 is not None:
        ok &= np.isfinite(b0)
    out = {f"mtr_asym_{i}": np.where(ok, mtr[:, i], np.nan) for i in range(mtr.shape[1])}
    out.update({f"mtr_asym_band_{i}": np.where(ok, band[:, i], np.nan) for i in range(band.shape[1])})
    out["fit_ok"] = ok
    return out


# ---------------------------------------------------------------------------
# Multi-pool Lorentzian fitting: batched Levenberg-Marquardt across voxels
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """One Lorentzian pool: initial value and bounds of amplitude (fraction), centre and FWHM (ppm)."""

    name: str
    amplitude: float
    center_ppm: float
    fwhm_ppm: float
    amplitude_bounds: tuple = (0.0, 1.0)
    center_bounds_ppm: tuple = (-1.0, 1.0)
    fwhm_bounds_ppm: tuple = (0.05, 10.0)


#: Pools for LATEST at 9.4 T with offsets within about +-1..5 ppm: direct water saturation,
#: lactate -OH at 0.4 ppm (DeBrosse et al. 2016) and a broad semi-solid MT background.
#: Start values are typical, the bounds generous; pass your own for other protocols.
LATEST_POOLS = (
    Pool("water", 0.8, 0.0, 1.0, (0.05, 1.0), (-1.0, 1.0), (0.1, 8.0)),
    Pool("lactate", 0.02, 0.4, 0.4, (0.0, 0.3), (0.25, 0.6), (0.1, 1.5)),
    Pool("mt", 0.1, -1.0, 20.0, (0.0, 0.6), (-5.0, 0.0), (5.0, 100.0)),
)


def _pool_model(p, d):
    """Z and Jacobian dZ/dp for parameters p (n_vox, 3P) [A, c, w per pool] at offsets d (n_vox, n)."""
    nv, n = d.shape
    npool = p.shape[1] // 3
    a = p[:, 0::3][:, :, None]
    c = p[:, 1::3][:, :, None]
    w = p[:, 2::3][:, :, None]
    hw = w / 2.0
    hw2 = hw**2
    u = d[:, None, :] - c
    den = hw2 + u**2
    shape = hw2 / den
    z = 1.0 - np.sum(a * shape, axis=1)
    jac = np.empty((nv, n, 3 * npool))
    jac[:, :, 0::3] = -np.swapaxes(shape, 1, 2)
    jac[:, :, 1::3] = -np.swapaxes(a * hw2 * 2.0 * u / den**2, 1, 2)
    jac[:, :, 2::3] = -np.swapaxes(a * hw * u**2 / den**2, 1, 2)
    return z, jac


def fit_lorentzian_pools(z, offset_ppm, pools=LATEST_POOLS, *, b0_ppm=None, max_iter=200, tol=1e-7):
    """Fit ``Z(d) = 1 - sum_i L_i(d)`` (see :func:`zspectrum`) to every voxel at once.

    Parameters
    ----------
    z : (n_vox, n) Z-spectra (fraction of S0).
    offset_ppm : (n,) offsets in ppm.
    pools : sequence of :class:`Pool` (start values and bounds).
    b0_ppm : optional (n_vox,) per-voxel water shift; the model is then fitted on the
        corrected axis ``d - dB0`` so pool centres are chemical shifts.  Without it, let
        the water pool's centre absorb B0 (its bounds must allow it).
    max_iter : Levenberg-Marquardt iterations (all voxels step together).
    tol : relative SSE change under which a voxel counts as converged.

    Returns
    -------
    params : (n_vox, 3 * n_pools) ``[A, centre_ppm, fwhm_ppm]`` per pool, NaN where failed.
    rmse : (n_vox,) root-mean-square residual (fraction of S0).
    fit_ok : (n_vox,) bool.

    Notes
    -----
    Batched, bound-constrained Levenberg-Marquardt (Marquardt, J Soc Ind Appl Math
    1963;11:431, doi:10.1137/0111030): every voxel has its own damping ``lambda``; the
    normal equations ``(J^T J + lambda diag(J^T J)) dp = J^T r`` are solved for all voxels
    with one stacked :func:`numpy.linalg.solve`; steps are projected onto the bounds and
    accepted only if they lower that voxel's SSE.  Multi-pool model after Zaiss et al.,
    J Magn Reson 2011;211:149 (doi:10.1016/j.jmr.2011.05.001).
    """
    x = np.asarray(offset_ppm, dtype=float)
    z = np.atleast_2d(np.asarray(z, dtype=float))
    nv, n = z.shape
    pools = tuple(pools)
    lo = np.array([b for p in pools for b in (p.amplitude_bounds[0], p.center_bounds_ppm[0], p.fwhm_bounds_ppm[0])])
    hi = np.array([b for p in pools for b in (p.amplitude_bounds[1], p.center_bounds_ppm[1], p.fwhm_bounds_ppm[1])])
    p0 = np.array([v for p in pools for v in (p.amplitude, p.center_ppm, p.fwhm_ppm)])
    npar = p0.size
    params = np.full((nv, npar), np.nan)
    rmse = np.full(nv, np.nan)
    ok = np.zeros(nv, dtype=bool)
    b0 = np.zeros(nv) if b0_ppm is None else np.asarray(b0_ppm, dtype=float).reshape(-1)
    eye = np.eye(npar)
    for s in range(0, nv, _BLOCK):
        zb = z[s:s + _BLOCK]
        bb = b0[s:s + _BLOCK]
        m = zb.shape[0]
        valid = np.all(np.isfinite(zb), axis=1) & np.isfinite(bb)
        zf = np.where(valid[:, None], zb, 1.0)
        d = x[None, :] - np.where(valid, bb, 0.0)[:, None]
        p = np.broadcast_to(np.clip(p0, lo, hi), (m, npar)).copy()
        # data-driven start for the first (water) pool: depth and position of the minimum
        jmin = np.argmin(zf, axis=1)
        p[:, 0] = np.clip(1.0 - zf[np.arange(m), jmin], lo[0], hi[0])
        p[:, 1] = np.clip(d[np.arange(m), jmin], lo[1], hi[1])
        model, jac = _pool_model(p, d)
        r = zf - model
        sse = np.sum(r**2, axis=1)
        lam = np.full(m, 1e-3)
        active = valid.copy()
        for _ in range(max_iter):
            if not active.any():
                break
            a_idx = np.nonzero(active)[0]
            ja = jac[a_idx]
            jat = np.swapaxes(ja, 1, 2)
            jtj = jat @ ja
            jtr = (jat @ r[a_idx][:, :, None])[:, :, 0]
            diag = np.einsum("vpp->vp", jtj)
            lhs = jtj + (lam[a_idx, None] * np.maximum(diag, 1e-12))[:, :, None] * eye
            try:
                step = np.linalg.solve(lhs, jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.stack([np.linalg.lstsq(L, g, rcond=None)[0] for L, g in zip(lhs, jtr)])  # singular only
            trial = np.clip(p[a_idx] + step, lo, hi)
            t_model, t_jac = _pool_model(trial, d[a_idx])
            t_r = zf[a_idx] - t_model
            t_sse = np.sum(t_r**2, axis=1)
            better = np.isfinite(t_sse) & (t_sse < sse[a_idx])
            gain = np.where(better, (sse[a_idx] - t_sse) / np.maximum(sse[a_idx], 1e-300), 0.0)
            acc = a_idx[better]
            p[acc] = trial[better]
            jac[acc] = t_jac[better]
            r[acc] = t_r[better]
            sse[acc] = t_sse[better]
            lam[acc] = np.maximum(lam[acc] / 3.0, 1e-9)
            rej = a_idx[~better]
            lam[rej] = lam[rej] * 4.0
            done = (better & (gain < tol)) | (~better & (lam[a_idx] > 1e7))
            active[a_idx[done]] = False
        good = valid & np.all(np.isfinite(p), axis=1) & np.isfinite(sse)
        params[s:s + _BLOCK] = np.where(good[:, None], p, np.nan)
        rmse[s:s + _BLOCK] = np.where(good, np.sqrt(sse / n), np.nan)
        ok[s:s + _BLOCK] = good
    return params, rmse, ok


def lorentzian_pools_kernel(y, x, *, m0=None, b0_ppm=None, pools=LATEST_POOLS, max_iter=200):
    """Adapter kernel for :func:`fit_lorentzian_pools`.

    ``y`` (n_vox, n) saturated signal at the offsets ``x`` (ppm), ``m0`` and ``b0_ppm`` per voxel
    (or numbers, or None) as in :func:`mtr_asym_kernel`.
    Returns ``<pool>_amplitude`` (% of S0), ``<pool>_center_ppm``, ``<pool>_fwhm_ppm``,
    ``rmse`` (% of S0) and ``fit_ok``.
    """
    off = np.asarray(x, dtype=float)
    z, b0 = _z_and_b0(y, m0, b0_ppm)
    params, rmse, ok = fit_lorentzian_pools(z, off, pools, b0_ppm=b0, max_iter=max_iter)
    out = {}
    for i, p in enumerate(pools):
        out[f"{p.name}_amplitude"] = 100.0 * params[:, 3 * i]
        out[f"{p.name}_center_ppm"] = params[:, 3 * i + 1]
        out[f"{p.name}_fwhm_ppm"] = params[:, 3 * i + 2]
    out["rmse"] = 100.0 * rmse
    out["fit_ok"] = ok
    return out


# ---------------------------------------------------------------------------
# Ratiometric pH: two CEST pools of one agent (e.g. iopamidol's amides at 4.2 and 5.5 ppm)
# ---------------------------------------------------------------------------

__all__ += ["band_mean_weights", "RATIO_STATUS", "ratiometric_ph", "fit_ratiometric_calibration"]

#: status codes of :func:`ratiometric_ph` (pixel counts in a report use these words)
RATIO_STATUS = {0: "pH measured", 1: "not analysable (no B0 or spectrum)", 2: "agent too weak",
                3: "ratio outside the calibrated range"}


def band_mean_weights(offset_ppm, lo_ppm, hi_ppm, *, points=11, kind="cubic"):
    """Weights ``w`` so that ``z @ w`` is the mean of the interpolated spectrum over ``[lo, hi]`` ppm.

    The band mean is a fixed linear combination of the acquired points (the spline is linear in the
    data), so the noise of a band-averaged CEST effect is ``sigma * ||w||`` for independent noise of
    SD ``sigma`` on each acquired point.

    Parameters
    ----------
    offset_ppm : (n,) acquired offsets (ppm), strictly increasing.
    lo_ppm, hi_ppm : the band (ppm), inside the acquired range.
    points : samples of the band for the mean.
    kind : ``"cubic"`` (not-a-knot spline, as :func:`shift_zspectrum`) or ``"linear"``.

    Returns
    -------
    ndarray (n,) weights summing to 1.

    >>> w = band_mean_weights([0.0, 1.0, 2.0, 3.0], 1.0, 2.0, kind="linear", points=3)
    >>> w.round(3).tolist()
    [0.0, 0.5, 0.5, 0.0]
    """
    from ..errors import FitInputError

    x = check_offsets(offset_ppm, what="offsets", min_points=2, need_both_sides=False)
    lo, hi = float(lo_ppm), float(hi_ppm)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi and x[0] <= lo and hi <= x[-1]):
        raise FitInputError(f"band [{lo_ppm}, {hi_ppm}] ppm must be ordered and inside the offsets "
                            f"[{x[0]:g}, {x[-1]:g}] ppm")
    q = np.linspace(lo, hi, int(points))
    return _shared_matrix(x, q, kind).mean(axis=0)


def ratiometric_ph(effect_a, effect_b, *, intercept, slope, log_ratio_range, se_a=None, se_b=None, k=2.0):
    """pH from the ratio of two CEST effects of one agent, with the pixels that carry no pH flagged.

    ``pH = intercept + slope * log10(E_a / E_b)`` (a calibration line, e.g. from
    :func:`fit_ratiometric_calibration`), used only inside the calibrated ``log_ratio_range``.

    Parameters
    ----------
    effect_a, effect_b : arrays (same shape) of the two CEST effects (any common unit, e.g. % of S0),
        e.g. iopamidol at 4.2 and 5.5 ppm (Longo et al., MRM 2011;65:202; Chen et al., MRM 2014;72:1408).
    intercept, slope : calibration line (pH, pH per decade of the ratio).
    log_ratio_range : ``(lo, hi)`` of ``log10(E_a / E_b)`` covered by the calibration; outside it the
        pH would be an extrapolation.
    se_a, se_b : standard errors of the effects (same units, broadcastable); with them a pixel needs
        ``max(E_a / se_a, E_b / se_b) >= k`` (the agent is detected in at least one pool at ``k`` SE),
        otherwise it is "agent too weak".  Without them every finite pixel counts as detected.
    k : detection threshold in standard errors (2 = one-sided ~98 % for Gaussian noise).

    Returns
    -------
    ph : ndarray, NaN where no pH is given.
    log_ratio : ndarray ``log10(E_a / E_b)`` (NaN unless both effects are positive).
    status : int8 ndarray, keys of :data:`RATIO_STATUS`: 0 pH measured, 1 not finite, 2 agent too
        weak, 3 ratio outside the calibrated range (a non-positive effect included).

    >>> ph, lr, st = ratiometric_ph([2.0, 0.1, 4.0], [1.0, 0.1, 0.1], intercept=6.6, slope=1.4,
    ...                             log_ratio_range=(-0.2, 0.5), se_a=0.5, se_b=0.5)
    >>> ph.round(3).tolist()[0], st.tolist()
    (7.021, [0, 2, 3])
    """
    from ..errors import FitInputError

    a, b = np.broadcast_arrays(np.asarray(effect_a, dtype=float), np.asarray(effect_b, dtype=float))
    lo, hi = (float(v) for v in log_ratio_range)
    if not (np.isfinite(intercept) and np.isfinite(slope) and lo < hi):
        raise FitInputError(f"calibration needs a finite intercept and slope and lo < hi, got {intercept}, "
                            f"{slope}, ({lo}, {hi})")
    if not k > 0:
        raise FitInputError(f"k must be positive, got {k!r}")
    finite = np.isfinite(a) & np.isfinite(b)
    if se_a is not None or se_b is not None:
        sa = np.asarray(se_a if se_a is not None else np.inf, dtype=float)
        sb = np.asarray(se_b if se_b is not None else np.inf, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            za = np.where(sa > 0, a / sa, np.nan)
            zb = np.where(sb > 0, b / sb, np.nan)
        detected = np.fmax(za, zb) >= k
        finite = finite & (np.isfinite(za) | np.isfinite(zb))
    else:
        detected = np.ones(a.shape, dtype=bool)
    pos = (a > 0) & (b > 0)
    lr = np.full(a.shape, np.nan)
    lr[pos] = np.log10(a[pos] / b[pos])
    inside = np.isfinite(lr) & (lr >= lo) & (lr <= hi)
    status = np.where(~finite, 1, np.where(~detected, 2, np.where(~inside, 3, 0))).astype(np.int8)
    ph = np.where(status == 0, intercept + slope * np.where(np.isfinite(lr), lr, 0.0), np.nan)
    return ph, lr, status


def fit_ratiometric_calibration(ph, effect_a, effect_b):
    """Least-squares calibration line ``pH = intercept + slope * log10(E_a / E_b)``.

    Parameters
    ----------
    ph : (n,) reference pH of each calibration sample (e.g. phantoms measured with an electrode).
    effect_a, effect_b : (n,) the two CEST effects of each sample (positive).

    Returns
    -------
    dict: ``intercept`` (pH), ``slope`` (pH per decade), ``r`` (Pearson), ``residual_sd`` (pH, n - 2
    degrees of freedom), ``n``, ``log_ratio_range`` and ``ph_range`` (the calibrated span: use the line
    only inside it).

    Notes
    -----
    The base-catalysed exchange of the two amide protons of iopamidol makes their CEST effects depend
    differently on pH, so their ratio cancels the agent concentration (Longo et al., MRM 2011;65:202;
    Chen et al., MRM 2014;72:1408); over pH ~6.2-7.4 the log ratio is close to linear in pH.
    """
    from ..errors import FitInputError

    p = np.asarray(ph, dtype=float).reshape(-1)
    a = np.asarray(effect_a, dtype=float).reshape(-1)
    b = np.asarray(effect_b, dtype=float).reshape(-1)
    if not (p.size == a.size == b.size):
        raise FitInputError(f"ph, effect_a and effect_b must have the same length, got {p.size}, {a.size}, {b.size}")
    ok = np.isfinite(p) & np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    if ok.sum() < 3:
        raise FitInputError(f"need at least 3 samples with finite pH and positive effects, got {int(ok.sum())}")
    lr = np.log10(a[ok] / b[ok])
    slope, intercept = np.polyfit(lr, p[ok], 1)
    res = p[ok] - (intercept + slope * lr)
    return {"intercept": float(intercept), "slope": float(slope), "r": float(np.corrcoef(lr, p[ok])[0, 1]),
            "residual_sd": float(np.sqrt(np.sum(res**2) / (ok.sum() - 2))), "n": int(ok.sum()),
            "log_ratio_range": (float(lr.min()), float(lr.max())), "ph_range": (float(p[ok].min()), float(p[ok].max()))}
