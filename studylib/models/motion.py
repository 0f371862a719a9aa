"""Bulk-motion frames in a dynamic series: detect them against their neighbours in time, move them back.

A mouse that moves for the duration of one frame of a DCE series (a gasp, a twitch) gives a frame whose
whole image is displaced; every edge in it (the body against air, the tumour against muscle, the vessel)
then differs from the frames before and after.  Contrast uptake changes the signal smoothly in time and
only where the agent goes, so the frame-to-neighbours residual separates the two::

    ref_t = (S_{t-1} + S_{t+1}) / 2            (one neighbour at the ends)
    e_t   = sqrt( mean_v (S_t(v) - ref_t(v))^2 )  over the judged voxels v
    z_t   = (e_t - median_t e) / (1.4826 MAD_t e)

A frame with ``z_t > z_threshold`` is examined: it counts as moved, and is moved back, when an integer
in-plane shift ``(dy, dx)`` (``|dy|, |dx| <= max_shift``) leaves less than ``explained`` of its residual or
removes a residual ``sqrt(e_t^2 - e_t(dy, dx)^2)`` of at least ``min_removed`` x the median frame residual -- the
bolus passes the z test too, but no shift
explains an uptake, while a displacement during the bolus still leaves its uptake residual behind.  This is the rigid
re-alignment of single frames that DCE pipelines apply before kinetic fitting; the residual-outlier idea is
the same as in outlier-frame rejection.

Pure numpy, one scan at a time, frames on the last axis: ``series (z, y, x, n)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import FitInputError

__all__ = ["MOTION_Z_THRESHOLD", "MOTION_EXPLAINED", "MOTION_MIN_REMOVED", "RESIDUAL_FLOOR", "frame_residuals", "shift_frame", "correct_motion_frames"]

#: residual scale floor, as a fraction of the RMS signal: far below the noise of an image (SNR ~ 30 -> 0.03) and
#: far above the int16 quantisation of a noise-free one
RESIDUAL_FLOOR = 2e-3
#: robust z above which a frame is examined for motion (the bolus also exceeds it; the shift test decides)
MOTION_Z_THRESHOLD = 8.0
#: a shift explains a frame when it leaves less than this fraction of the frame's residual ...
MOTION_EXPLAINED = 0.5
#: ... or removes a residual sqrt(e0^2 - e_shift^2) of at least this many times the series' median frame residual
#: (the noise level of a frame-to-neighbours difference): a displacement during the bolus leaves the uptake behind
MOTION_MIN_REMOVED = 2.0


def _check_series(series) -> np.ndarray:
    s = np.asarray(series, dtype=float)
    if s.ndim != 4 or s.shape[-1] < 3:
        raise FitInputError(f"series must be (z, y, x, n) with n >= 3 frames, got shape {s.shape}")
    return s


def _check_mask(s: np.ndarray, mask) -> np.ndarray:
    m = np.ones(s.shape[:3], bool) if mask is None else np.asarray(mask, bool)
    if m.shape != s.shape[:3] or not m.any():
        raise FitInputError(f"mask must be a non-empty boolean (z, y, x) of shape {s.shape[:3]}, got {m.shape}")
    return m


def _references(s: np.ndarray) -> np.ndarray:
    """Neighbour mean of every frame (one neighbour at the ends), shape of ``s``."""
    ref = np.empty_like(s)
    ref[..., 1:-1] = 0.5 * (s[..., :-2] + s[..., 2:])
    ref[..., 0] = s[..., 1]
    ref[..., -1] = s[..., -2]
    return ref


def frame_residuals(series, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """RMS residual of each frame against its neighbours' mean, and its robust z over the frames.

    Parameters
    ----------
    series : ndarray ``(z, y, x, n)`` one dynamic series (finite).
    mask : bool ``(z, y, x)`` voxels to judge (default: all).

    Returns
    -------
    (e, z): ``e (n,)`` in signal units, ``z (n,)`` = (e - median e) / max(1.4826 MAD e, floor), with the floor
    :data:`RESIDUAL_FLOOR` x the RMS signal over the mask: a noise-free (or quantisation-limited) series has a
    MAD near 0, and without a floor every smooth change in it would be an outlier.
    """
    s = _check_series(series)
    m = _check_mask(s, mask)
    e, z, _ = _judge(s[m])
    return e, z


def _judge(sm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(e, z, floor)`` of the judged voxels ``sm (voxels, n)``: each frame's RMS residual against its
    neighbours' mean, its robust z, and the floor of the z scale (:func:`frame_residuals`)."""
    d = sm - _references(sm)
    e = np.sqrt(np.mean(d * d, axis=0))
    floor = _floor_of(sm)
    return e, _robust_z(e, floor), floor


def _robust_z(e: np.ndarray, floor: float) -> np.ndarray:
    med = np.median(e)
    return (e - med) / max(1.4826 * np.median(np.abs(e - med)), floor)


def _floor_of(sm: np.ndarray) -> float:
    """The smallest residual scale worth judging: :data:`RESIDUAL_FLOOR` x the RMS signal of ``sm (voxels, n)``."""
    level = float(np.sqrt(np.mean(sm ** 2)))
    return RESIDUAL_FLOOR * level if level > 0 else 1.0


def _clean_reference(s: np.ndarray, clean: np.ndarray, t: int) -> np.ndarray:
    """Frame ``t`` interpolated linearly in time from the nearest frames in ``clean`` on each side (one side at
    the ends): the reference a suspect frame is judged against, free of the other suspect frames.  ``s``: any
    array with frames on its last axis (the judged voxels, ``(voxels, n)``)."""
    left, right = clean[clean < t], clean[clean > t]
    if left.size and right.size:
        lo, hi = int(left[-1]), int(right[0])
        w = (t - lo) / (hi - lo)
        return (1.0 - w) * s[..., lo] + w * s[..., hi]
    if left.size or right.size:
        return s[..., int(left[-1] if left.size else right[0])]
    return _references(s)[..., t]


def shift_frame(image, dy: int, dx: int) -> np.ndarray:
    """``image (z, y, x)`` moved by ``(dy, dx)`` whole voxels in-plane; entering voxels repeat the edge."""
    im = np.asarray(image)
    ny, nx = im.shape[-2:]
    yi = np.clip(np.arange(ny) - int(dy), 0, ny - 1)
    xi = np.clip(np.arange(nx) - int(dx), 0, nx - 1)
    return im[..., yi, :][..., xi]


def correct_motion_frames(series, mask=None, *, z_threshold: float = MOTION_Z_THRESHOLD, max_shift: int = 2,
                          explained: float = MOTION_EXPLAINED, min_removed: float = MOTION_MIN_REMOVED):
    """Detect frames displaced by bulk motion and move them back (integer in-plane re-alignment).

    A frame is corrected when both hold: its residual against its neighbours is an outlier (robust
    ``z > z_threshold``), and some in-plane shift ``(dy, dx) != 0`` leaves less than ``explained`` of that
    residual or removes from it ``sqrt(e^2 - e_shifted^2) >= min_removed`` x the median frame residual.
    The second test is what tells motion from the bolus: the arrival of contrast makes a frame differ
    from its neighbours as much as motion does (robust z of 40-130 on the ci study's vessel and tumour),
    but no shift of the image explains an uptake, while a shift undoes a displacement (a moved frame's
    residual falls to the noise, or to its uptake residual during the bolus).  Suspect frames are taken
    in order of decreasing z (interior frames before the two end frames, whose one neighbour may be the
    moved one), each judged against a reference interpolated in time from the nearest frames that are
    not outliers (so two moved frames side by side do not hide each other); the residuals are recomputed
    after each correction.  Non-rigid or through-plane motion is not corrected.

    Parameters
    ----------
    series : ndarray ``(z, y, x, n)`` one dynamic series; a series with a non-finite value (a scan not
        acquired) is returned unchanged with nothing flagged.
    mask : bool ``(z, y, x)`` voxels judged (default all; the body, not air, is the useful choice).
    z_threshold : robust z above which a frame is examined (:data:`MOTION_Z_THRESHOLD`).
    max_shift : largest displacement searched, voxels.
    explained : residual fraction (shifted / unshifted) below which a shift explains the frame.
    min_removed : or the residual a shift removes, in median frame residuals (:data:`MOTION_MIN_REMOVED`).

    Returns
    -------
    (corrected, dy, dx, z): the series ``(z, y, x, n)`` with moved frames moved back; ``dy, dx (n,)`` the
    displacement found (and undone) per frame, 0 elsewhere; ``z (n,)`` each frame's robust z before
    correction.
    """
    s = _check_series(series)
    n = s.shape[-1]
    dy, dx = np.zeros(n), np.zeros(n)
    if not np.isfinite(s).all():
        return s, dy, dx, np.full(n, np.nan)
    if not (np.isfinite(z_threshold) and z_threshold > 0) or int(max_shift) != max_shift or max_shift < 1 \
            or not (np.isfinite(min_removed) and min_removed > 0) or not 0 < explained < 1:
        raise FitInputError(f"z_threshold must be positive, max_shift a positive integer, explained in (0, 1) and "
                            f"min_removed positive, got {z_threshold!r}, {max_shift!r}, {explained!r}, "
                            f"{min_removed!r}")
    m = _check_mask(s, mask)
    out = s.copy()
    sm = out[m]  # (voxels, n): the judged voxels of ``out``, kept in step with it (a moved-back frame's column)
    z0 = None
    shifts = [(a, b) for a in range(-max_shift, max_shift + 1) for b in range(-max_shift, max_shift + 1)
              if (a, b) != (0, 0)]
    corrected: set[int] = set()
    frames = np.arange(n)
    # shift_frame(out[..., t], -a, -b)[m] read straight from ``out`` at the judged voxels: the same values in the
    # same order (so the same costs, bit for bit) without moving the whole frame twice for each of the shifts
    zi, yi, xi = np.nonzero(m)
    ny, nx = m.shape[1:]
    flat_rows = {a: (zi * ny + np.clip(yi + a, 0, ny - 1)) * nx for a in range(-max_shift, max_shift + 1)}
    flat_cols = {b: np.clip(xi + b, 0, nx - 1) for b in range(-max_shift, max_shift + 1)}
    by_voxel = out.reshape(-1, n)  # a view of ``out``: (z*y*x, n)
    for _ in range(n):  # at most one correction per frame
        e, z, floor = _judge(sm)
        z0 = z if z0 is None else z0  # the first pass judges the series as given
        noise = max(float(np.median(e)), floor)
        outliers = set(np.nonzero(z > z_threshold)[0].tolist()) - corrected
        clean = frames[~np.isin(frames, list(outliers))]
        found = False
        # interior frames first: an end frame has one neighbour, so beside a moved frame a shift "explains" it too
        for t in sorted(outliers, key=lambda t: (t in (0, n - 1), -z[t])):
            ref = _clean_reference(sm, clean, t)
            e_t = np.sqrt(np.mean((sm[:, t] - ref) ** 2))
            cost = np.array([np.sqrt(np.mean((by_voxel[flat_rows[a] + flat_cols[b], t] - ref) ** 2))
                             for a, b in shifts])
            k = int(np.argmin(cost))
            if cost[k] < explained * e_t or e_t ** 2 - cost[k] ** 2 >= (min_removed * noise) ** 2:
                a, b = shifts[k]
                out[..., t] = shift_frame(out[..., t], -a, -b)
                sm[:, t] = out[..., t][m]
                dy[t], dx[t] = a, b
                corrected.add(t)
                found = True
                break
        if not found:
            break
    return out, dy, dx, z0
