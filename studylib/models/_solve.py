"""Closed-form small linear solves, vectorised over voxels (2x2, 3x3 symmetric, 2-parameter NNLS) and the
vertex of a parabola through three points: shared by the DCE fitting kernels and the bolus arrival time."""

from __future__ import annotations

import numpy as np

def _solve2(a11, a12, a22, b1, b2):
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        x1 = (a22 * b1 - a12 * b2) / det
        x2 = (a11 * b2 - a12 * b1) / det
    return x1, x2


def _solve3(a11, a12, a13, a22, a23, a33, b1, b2, b3):
    """Symmetric 3x3 systems by Cramer's rule (cofactors), vectorised."""
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        x1 = (c11 * b1 + c12 * b2 + c13 * b3) * inv
        x2 = (c12 * b1 + c22 * b2 + c23 * b3) * inv
        x3 = (c13 * b1 + c23 * b2 + c33 * b3) * inv
    return x1, x2, x3


def _nnls2(g11, g12, g22, b1, b2):
    """min ||y - p1 f1 - p2 f2||^2 with p >= 0 from the Gram entries; returns p1, p2, gain.

    ``gain = 2 p.b - p^T G p`` so that ``SSR = y.y - gain``.  Broadcasts.
    """
    p1, p2 = _solve2(g11, g12, g22, b1, b2)
    ok = (p1 >= 0) & (p2 >= 0) & np.isfinite(p1) & np.isfinite(p2)
    gain = np.where(ok, p1 * b1 + p2 * b2, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = np.maximum(b1, 0.0) / g11  # p2 = 0
        q2 = np.maximum(b2, 0.0) / g22  # p1 = 0
    gq1 = np.where(np.isfinite(q1), q1 * b1, 0.0)
    gq2 = np.where(np.isfinite(q2), q2 * b2, 0.0)
    use1 = ~ok & (gq1 >= gq2)
    use2 = ~ok & ~use1
    p1 = np.where(ok, p1, np.where(use1, np.nan_to_num(q1), 0.0))
    p2 = np.where(ok, p2, np.where(use2, np.nan_to_num(q2), 0.0))
    gain = np.where(ok, gain, np.where(use1, gq1, gq2))
    return p1, p2, gain


def _parabola_vertex(f0, f1, f2):
    """Offset (in steps, within [-1, 1]) of the vertex of the parabola through (-1, f0), (0, f1), (1, f2)."""
    den = f0 - 2.0 * f1 + f2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = 0.5 * (f0 - f2) / den
    off = np.where((den > 0) & np.isfinite(off), off, 0.0)
    return np.clip(off, -1.0, 1.0)

