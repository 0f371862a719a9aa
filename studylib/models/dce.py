"""DCE-MRI: arterial input functions, tracer-kinetic forward models and fitting kernels.

Times are in seconds, Ktrans/kep in 1/min at the interface (1/s inside the numerics),
concentrations in mM, volume fractions dimensionless, T1 in ms, R1 in 1/s.  Every
kernel takes the fitted axis last: ``y`` of shape ``(n_voxels, n)``.  No xarray here.

Contents
--------
* population AIFs, blood -> plasma, resampling and the bolus arrival time are
  :mod:`studylib.models.aif`; the exact convolution with an exponential is
  :mod:`studylib.models.convolution` (both re-exported here);
* forward models: standard Tofts, extended Tofts, Patlak;
* fitting kernels for all three (:func:`dce_kernel`): Murase linear least squares and a
  vectorised nonlinear least-squares fit (variable projection over a shared ``kep`` grid,
  then batched Levenberg-Marquardt with analytic recursive Jacobians and projected
  bounds), optionally with a fitted arterial delay;
* SPGR signal -> R1 -> concentration (the pre-contrast T1 map comes from the relaxometry
  VFA fit, :func:`studylib.models.relaxometry.fit_vfa`).
"""

from __future__ import annotations

import numpy as np

from .aif import (MCGRATH_2009_MODEL_B, PARKER_2006, blood_to_plasma, bolus_arrival_kernel, mcgrath_mouse_aif,
                  mcgrath_rat_aif, parker_aif, resample_curve)
from ._solve import _nnls2, _parabola_vertex, _solve2, _solve3
from .convolution import _conv_tables, _cumtrapz, _seg_weights, exp_convolve, exp_convolve_and_derivative

__all__ = [
    "PARKER_2006",
    "MCGRATH_2009_MODEL_B",
    "parker_aif",
    "mcgrath_rat_aif",
    "mcgrath_mouse_aif",
    "blood_to_plasma",
    "resample_curve",
    "exp_convolve",
    "exp_convolve_and_derivative",
    "tofts_ct",
    "extended_tofts_ct",
    "patlak_ct",
    "DCE_MODELS",
    "dce_kernel",
    "spgr_r1_from_signal",
    "spgr_concentration",
    "bolus_arrival_kernel",
]

#: Parameters each model returns, in order (1/min for rates).
DCE_MODELS = {
    "tofts": ("ktrans", "kep", "ve"),
    "extended_tofts": ("ktrans", "kep", "ve", "vp"),
    "patlak": ("ktrans", "vp"),
}


# --------------------------------------------------------------------------------------
# Forward models
# --------------------------------------------------------------------------------------

def tofts_ct(t_s, cp, ktrans_per_min, ve):
    """Standard Tofts ``Ct(t) = Ktrans integral Cp(u) exp(-kep (t - u)) du``, ``kep = Ktrans / ve``.

    Tofts et al., JMRI 1999;10:223 (doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S).
    """
    return extended_tofts_ct(t_s, cp, ktrans_per_min, ve, 0.0)


def extended_tofts_ct(t_s, cp, ktrans_per_min, ve, vp):
    """Extended Tofts ``Ct = vp Cp + Ktrans integral Cp(u) exp(-kep (t - u)) du``.

    Parameters
    ----------
    t_s : (n,) frame times in s.  cp : (n,) plasma concentration in mM.
    ktrans_per_min, ve, vp : arrays of the voxel shape (...).

    Returns
    -------
    ndarray (..., n): tissue concentration in mM.
    """
    ktrans = np.asarray(ktrans_per_min, dtype=float) / 60.0
    ve = np.asarray(ve, dtype=float)
    vp = np.asarray(vp, dtype=float)
    kep = np.divide(ktrans, ve, out=np.zeros(np.broadcast(ktrans, ve).shape), where=ve > 0)
    conv = exp_convolve(t_s, cp, kep)
    return vp[..., None] * np.asarray(cp, dtype=float) + ktrans[..., None] * conv


def patlak_ct(t_s, cp, ktrans_per_min, vp):
    """Patlak ``Ct = vp Cp + Ktrans integral_0^t Cp`` (Ktrans is OSIPI's PS here).

    Patlak et al., J Cereb Blood Flow Metab 1983;3:1 (doi:10.1038/jcbfm.1983.1).
    """
    ktrans = np.asarray(ktrans_per_min, dtype=float) / 60.0
    vp = np.asarray(vp, dtype=float)
    integral = _cumtrapz(np.asarray(t_s, dtype=float), np.asarray(cp, dtype=float))
    return vp[..., None] * np.asarray(cp, dtype=float) + ktrans[..., None] * integral


# --------------------------------------------------------------------------------------
# DCE fitting kernel
# --------------------------------------------------------------------------------------

def _delay_grid(t, delay_range_s, delay_step_s, tf=None):
    lo, hi = float(delay_range_s[0]), float(delay_range_s[1])
    if delay_step_s is None:  # half the smallest frame interval, or the AIF's finer step; >= 0.1 s
        step = float(np.min(np.diff(t))) / 2.0
        if tf is not None and tf.size > t.size:
            step = min(step, float(np.min(np.diff(tf))))
        delay_step_s = max(step, 0.1)
    n = int(np.floor((hi - lo) / delay_step_s + 1e-9)) + 1
    return lo + delay_step_s * np.arange(n)


def _patlak_fit(y, icps, cps):
    """Patlak for each candidate AIF ``cps[d]`` (D, n) with integrals ``icps``: best index by SSR."""
    yy = np.einsum("ij,ij->i", y, y)
    g11 = np.einsum("dn,dn->d", icps, icps)
    g12 = np.einsum("dn,dn->d", icps, cps)
    g22 = np.einsum("dn,dn->d", cps, cps)
    b1 = y @ icps.T  # (m, D)
    b2 = y @ cps.T
    k, v, gain = _nnls2(g11, g12, g22, b1, b2)
    ssr = yy[:, None] - gain
    j = np.argmin(ssr, axis=1)
    rows = np.arange(y.shape[0])
    return k[rows, j], v[rows, j], ssr, j


def dce_kernel(y, t_s, *, cp, t_aif_s=None, model="extended_tofts", method="nonlinear", delay=False,
               delay_range_s=(0.0, 10.0), delay_step_s=None, kep_range_per_min=(1e-3, 60.0),
               n_grid=48, n_iter=4, ktrans_max_per_min=5.0, block=8192):
    """Fit Tofts / extended Tofts / Patlak to tissue curves (vectorised over voxels).

    Parameters
    ----------
    y : ndarray (n_vox, n)
        Tissue concentration in mM.
    t_s : ndarray (n,)
        Frame times in s (increasing, validated by the adapter).
    cp : ndarray (n,) or (n_aif,)
        Plasma AIF in mM on the frame times, or on ``t_aif_s``.
    t_aif_s : ndarray (n_aif,), optional
        A finer time grid of the AIF that contains every frame time (e.g. a population AIF
        evaluated every 0.25 s).  The convolution is then computed on this grid and sampled
        at the frames, so an AIF peak between frames is not lost (temporal-resolution
        effect of coarse frames); not available with ``method="linear"`` for the Tofts models.
    model : {"tofts", "extended_tofts", "patlak"}
    method : {"linear", "nonlinear"}
        ``linear``: Murase's linear least squares (Patlak: its exact linear LSQ).
        ``nonlinear``: least squares of the model itself by variable projection: for a
        fixed ``kep`` the model is linear in (Ktrans, vp), solved in closed form with
        Ktrans, vp >= 0; the reduced sum of squares is scanned on a log ``kep`` grid shared
        by all voxels (one matrix product), which brackets the global minimum, then located
        by regula falsi on quintic-Hermite-interpolated projections (see
        :func:`_varpro_block`) and finished by an exact recursion at the final ``kep``.
        Bounds: ``Ktrans in [0, ktrans_max]``, ``kep in kep_range``, ``ve <= 1``,
        ``vp in [0, 1]``.  Noise-free recovery error ~1e-4 (relative) with the default grid.
    delay : bool
        Also fit an arterial delay ``d`` (AIF ``cp(t - d)``): the fit above is profiled over a
        delay grid on ``delay_range_s`` (step ``delay_step_s``, default half the smallest frame
        interval or the finer AIF grid step, >= 0.1 s), the delay refined by a parabola
        through the profiled sums of squares, and the parameters polished at that delay by
        ``n_iter`` batched Levenberg-Marquardt steps with analytic recursive Jacobians
        (``[E, Ktrans dE/dkep, Cp]``) and projected bounds.
    n_grid, n_iter, kep_range_per_min, ktrans_max_per_min : fit controls.
    block : voxels processed together (memory/cache control; not a per-voxel loop).

    Returns
    -------
    dict of (n_vox,) arrays: ``ktrans`` (1/min), ``kep`` (1/min), ``ve``, ``vp`` (as the
    model has them), ``delay_s`` (when fitted), ``rmse_mM``, ``r2``, ``fit_ok`` (bool).

    Notes
    -----
    Extended Tofts: ``Ct(t) = vp Cp(t) + Ktrans int_0^t Cp(u) exp(-kep (t-u)) du``,
    ``ve = Ktrans / kep`` (Tofts et al., JMRI 1999;10:223,
    doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S); the convolution is
    exact for a piecewise-linear Cp (Flouri et al., MRM 2016;76:998, doi:10.1002/mrm.25991).
    Linear method: Murase, MRM 2004;51:858, doi:10.1002/mrm.20022.  Variable projection:
    Golub & Pereyra, Inverse Problems 2003;19:R1, doi:10.1088/0266-5611/19/2/201.
    """
    if model not in DCE_MODELS:
        raise ValueError(f"model must be one of {sorted(DCE_MODELS)}, got {model!r}")
    if method not in ("linear", "nonlinear"):
        raise ValueError(f"method must be 'linear' or 'nonlinear', got {method!r}")
    if delay and method == "linear" and model != "patlak":
        raise ValueError("fitting a delay needs method='nonlinear' for the Tofts models")
    y = np.asarray(y, dtype=float)
    t = np.asarray(t_s, dtype=float)
    cp = np.asarray(cp, dtype=float)
    if t_aif_s is None:
        tf, fidx = t, np.arange(t.size)
    else:
        tf = np.asarray(t_aif_s, dtype=float)
        fidx = np.clip(np.searchsorted(tf, t), 0, tf.size - 1)
        near = np.abs(tf[np.clip(fidx - 1, 0, tf.size - 1)] - t) < np.abs(tf[fidx] - t)
        fidx = np.where(near, fidx - 1, fidx)
        if not np.allclose(tf[fidx], t, rtol=0, atol=1e-6 * max(1.0, float(np.abs(t).max()))):
            raise ValueError("t_aif_s must contain every frame time")
        if method == "linear" and model != "patlak" and tf.size != t.size:
            raise ValueError("a finer AIF grid needs method='nonlinear' for the Tofts models")
    if cp.shape != tf.shape:
        raise ValueError(f"cp has shape {cp.shape}, expected {tf.shape}")
    nv = y.shape[0]
    names = DCE_MODELS[model] + (("delay_s",) if delay else ()) + ("rmse_mM", "r2")
    out = {k: np.full(nv, np.nan) for k in names}
    out["fit_ok"] = np.zeros(nv, dtype=bool)
    good = np.all(np.isfinite(y), axis=1)
    idx = np.flatnonzero(good)
    opts = dict(model=model, method=method, delay=delay, delay_range_s=delay_range_s,
                delay_step_s=delay_step_s, kep_range=(kep_range_per_min[0] / 60.0, kep_range_per_min[1] / 60.0),
                n_grid=n_grid, n_iter=n_iter, kmax=ktrans_max_per_min / 60.0, tf=tf, fidx=fidx)
    shared = _shared_tables(t, cp, opts)
    if delay and tf.size > t.size:  # per-voxel fine-grid curves in the delay polish: smaller blocks
        block = max(256, int(block * t.size / tf.size))
    for s in range(0, idx.size, block):
        sel = idx[s:s + block]
        res = _fit_block(y[sel], t, cp, shared, opts)
        for k_, v_ in res.items():
            out[k_][sel] = v_
    return out


def _varpro_tables(t, cp, o, conv=None):
    """Shared tables for :func:`_varpro_block`: E and its u = ln(kep) derivatives on the grid."""
    kg = np.geomspace(o["kep_range"][0], o["kep_range"][1], o["n_grid"])
    e, e1, e2 = _conv_tables(t, cp, kg) if conv is None else conv
    eu = kg[:, None] * e1
    euu = eu + kg[:, None] ** 2 * e2
    return dict(
        kgrid=kg,
        ED=np.concatenate([e, eu, euu], axis=0),  # (3G, n): one matrix product per block
        EE=np.einsum("gn,gn->g", e, e),
        EC=e @ cp,
        CC=float(cp @ cp),
        EEd=(2.0 * np.einsum("gn,gn->g", e, eu), 2.0 * (np.einsum("gn,gn->g", eu, eu) + np.einsum("gn,gn->g", e, euu))),
        ECd=(eu @ cp, euu @ cp),
    )


def _shared_tables(t, cp, o):
    """Quantities shared by all voxels: the candidate (delayed) AIFs and their kep tables."""
    tab = {}
    tf, fi = o["tf"], o["fidx"]  # AIF grid (= frames unless a finer AIF is given) and frame indices in it
    if o["delay"]:
        delays = _delay_grid(t, o["delay_range_s"], o["delay_step_s"], tf)
        cps_f = resample_curve(tf, cp, tf, delay_s=delays)  # (D, n_aif)
    else:
        delays = np.zeros(1)
        cps_f = cp[None, :]
    tab["delays"], tab["cps"] = delays, cps_f[:, fi]
    tab["icps"] = _cumtrapz(tf, cps_f)[:, fi]  # exact integral of the piecewise-linear AIF at the frames
    if o["model"] != "patlak" and o["method"] == "nonlinear":
        kg = np.geomspace(o["kep_range"][0], o["kep_range"][1], o["n_grid"])
        e, e1, e2 = (a[..., fi] for a in _conv_tables(tf, cps_f, kg))  # all candidate delays in one pass
        tab["vp_tabs"] = [_varpro_tables(t, c, o, conv=(e[d], e1[d], e2[d])) for d, c in enumerate(tab["cps"])]
    if o["model"] != "patlak" and o["method"] == "linear":
        # trapezoid cumulative-integral operator: int_0^{t_i} y = (y @ L)_i
        n = t.size
        dt = np.diff(t)
        L = np.zeros((n, n))
        for i in range(1, n):
            L[:, i] = L[:, i - 1]
            L[i - 1, i] += 0.5 * dt[i - 1]
            L[i, i] += 0.5 * dt[i - 1]
        icp = _cumtrapz(t, cp)
        tab["lin"] = dict(icp=icp, L_icp=L @ icp, L_cp=L @ cp)
    return tab


def _fit_block(y, t, cp, tab, o):
    model, m, n = o["model"], y.shape[0], t.size
    yy = np.einsum("ij,ij->i", y, y)
    rows = np.arange(m)
    delays = tab["delays"]
    D = delays.size
    step = delays[1] - delays[0] if D > 1 else 0.0
    res = {}

    if model == "patlak":
        cpm = np.broadcast_to(tab["cps"][0], (m, n))
        icp = np.broadcast_to(tab["icps"][0], (m, n))
        if o["delay"]:
            k, v, ssr, j = _patlak_fit(y, tab["icps"], tab["cps"])
            off = _parabola_vertex(ssr[rows, np.clip(j - 1, 0, D - 1)], ssr[rows, j],
                                   ssr[rows, np.clip(j + 1, 0, D - 1)])
            off = np.where((j == 0) | (j == D - 1), 0.0, off)
            d = delays[j] + off * step
            cp_vf = resample_curve(o["tf"], cp, o["tf"], delay_s=d)
            cpm = cp_vf[:, o["fidx"]]
            icp = _cumtrapz(o["tf"], cp_vf)[:, o["fidx"]]
            res["delay_s"] = d
        g11 = np.einsum("ij,ij->i", icp, icp)
        g12 = np.einsum("ij,ij->i", icp, cpm)
        g22 = np.einsum("ij,ij->i", cpm, cpm)
        b1 = np.einsum("ij,ij->i", y, icp)
        b2 = np.einsum("ij,ij->i", y, cpm)
        k, v, gain = _nnls2(g11, g12, g22, b1, b2)
        fit = k[:, None] * icp + v[:, None] * cpm
        res.update(ktrans=k * 60.0, vp=v)
        return _finish(res, y, fit, yy)

    ext = model == "extended_tofts"
    if o["method"] == "linear":
        return _linear_block(y, yy, t, tab["cps"][0], tab["lin"], o, ext)
    if not o["delay"]:
        return _varpro_block(y, yy, t, tab["cps"][0], tab["vp_tabs"][0], o, ext)

    # ---- delay: profile the variable-projection fit over the delay grid, refine, polish by LM
    fits = [_varpro_block(y, yy, t, c, tb, o, ext, exact=False) for c, tb in zip(tab["cps"], tab["vp_tabs"])]
    ssr = np.stack([np.where(f["fit_ok"], f["rmse_mM"] ** 2 * n, np.inf) for f in fits], axis=1)  # (m, D)
    j = np.argmin(ssr, axis=1)
    f0, f1, f2 = ssr[rows, np.clip(j - 1, 0, D - 1)], ssr[rows, j], ssr[rows, np.clip(j + 1, 0, D - 1)]
    off = _parabola_vertex(np.where(np.isfinite(f0), f0, f1), f1, np.where(np.isfinite(f2), f2, f1))
    off = np.where((j == 0) | (j == D - 1), 0.0, off)
    d = delays[j] + off * step
    pick = lambda name: np.stack([f[name] for f in fits], axis=1)[rows, j]  # noqa: E731
    k = np.nan_to_num(pick("ktrans")) / 60.0
    kep = np.nan_to_num(pick("kep"), nan=1.0) / 60.0
    v = np.nan_to_num(pick("vp")) if ext else np.zeros(m)
    cp_vf = resample_curve(o["tf"], cp, o["tf"], delay_s=d)  # (m, n_aif)
    cp_v = cp_vf[:, o["fidx"]]
    k, kep, v = _lm(y, o["tf"], cp_vf, k, kep, v, ext, o)
    e = exp_convolve(o["tf"], cp_vf, kep)[:, o["fidx"]]
    if ext:  # exact re-solve of the linear parameters at the final kep
        k, v, _ = _nnls2(np.einsum("ij,ij->i", e, e), np.einsum("ij,ij->i", e, cp_v),
                         np.einsum("ij,ij->i", cp_v, cp_v), np.einsum("ij,ij->i", y, e),
                         np.einsum("ij,ij->i", y, cp_v))
    else:
        k = np.maximum(np.einsum("ij,ij->i", y, e), 0.0) / np.einsum("ij,ij->i", e, e)
    k = np.minimum(k, np.minimum(o["kmax"], kep))  # Ktrans bound and ve <= 1
    fit = k[:, None] * e + (v[:, None] * cp_v if ext else 0.0)
    res.update(ktrans=k * 60.0, kep=kep * 60.0, ve=k / kep, delay_s=d)
    if ext:
        res["vp"] = v
    return _finish(res, y, fit, yy)


def _tm_conv_stats(yT, t, cp, k):
    """Per-voxel ``y.E``, ``E.E``, ``E.cp`` for ``E = exp_convolve(t, cp, k)`` without storing E.

    ``yT`` is time-major (n, m); the recursion runs over time on contiguous voxel vectors.
    """
    n, m = yT.shape
    dt = np.diff(t)
    uniform = n > 1 and np.allclose(dt, dt[0], rtol=1e-9, atol=0)
    acc = np.zeros(m)
    ye = np.zeros(m)
    ee = np.zeros(m)
    ec = np.zeros(m)
    tmp = np.empty(m)
    cache = {}
    for i in range(1, n):
        key = dt[0] if uniform else dt[i - 1]
        wts = cache.get(key)
        if wts is None:
            wts = _seg_weights(float(key), k)
            if uniform or len(cache) < 8:
                cache[key] = wts
        x, w0, w1 = wts
        acc *= x
        np.multiply(w0, cp[i - 1], out=tmp)
        acc += tmp
        np.multiply(w1, cp[i], out=tmp)
        acc += tmp
        np.multiply(acc, yT[i], out=tmp)
        ye += tmp
        np.multiply(acc, acc, out=tmp)
        ee += tmp
        np.multiply(acc, cp[i], out=tmp)
        ec += tmp
    return ye, ee, ec


def _linear_block(y, yy, t, cp, lin, o, ext):
    """Murase linear least squares, with the model's own sum of squares for the fit quality.

    ``Ct(t) = (Ktrans + kep vp) int Cp - kep int Ct + vp Cp`` (Murase, MRM 2004;51:858,
    doi:10.1002/mrm.20022); the standard Tofts model drops the last column.  Products
    with the shared columns are matrix-vector products (``int Ct . w = y . (L w)`` for the
    trapezoid operator L); the quadratic terms ``int Ct . int Ct`` and ``int Ct . Ct`` run
    over time on contiguous voxel vectors.
    """
    m, n = y.shape
    yT = np.ascontiguousarray(y.T)
    dt = np.diff(t)
    icp = lin["icp"]
    ict = np.zeros(m)
    s_ii = np.zeros(m)
    s_iy = np.zeros(m)
    tmp = np.empty(m)
    for i in range(1, n):
        np.add(yT[i - 1], yT[i], out=tmp)
        tmp *= 0.5 * dt[i - 1]
        ict += tmp
        np.multiply(ict, ict, out=tmp)
        s_ii += tmp
        np.multiply(ict, yT[i], out=tmp)
        s_iy += tmp
    b_icp = y @ icp
    b_cp = y @ cp
    s_ip = y @ lin["L_icp"]  # int Ct . int Cp
    s_ic = y @ lin["L_cp"]  # int Ct . Cp
    if ext:
        kp, kep, v = _solve3(icp @ icp, -s_ip, icp @ cp, s_ii, -s_ic, cp @ cp, b_icp, -s_iy, b_cp)
        k = kp - kep * v
    else:
        k, kep = _solve2(icp @ icp, -s_ip, s_ii, b_icp, -s_iy)
        v = np.zeros(m)
    lo, hi = o["kep_range"]
    kep = np.clip(np.nan_to_num(kep, nan=lo), lo, hi)
    k = np.clip(k, 0.0, np.minimum(o["kmax"], kep))
    v = np.clip(v, 0.0, 1.0)
    ye, ee, ec = _tm_conv_stats(yT, t, cp, kep)
    ssr = yy - 2 * k * ye + k * k * ee
    if ext:
        ssr = ssr - 2 * v * b_cp + 2 * k * v * ec + v * v * float(cp @ cp)
    ssr = np.maximum(ssr, 0.0)
    res = dict(ktrans=k * 60.0, kep=kep * 60.0, ve=k / kep)
    if ext:
        res["vp"] = v
    return _finish_ssr(res, y, yy, ssr)


def _finish_ssr(res, y, yy, ssr):
    m, n = y.shape
    res["rmse_mM"] = np.sqrt(ssr / n)
    sst = yy - y.sum(axis=1) ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        res["r2"] = np.where(sst > 0, 1.0 - ssr / sst, np.nan)
    ok = np.ones(m, dtype=bool)
    for k_, v_ in res.items():
        if k_ != "r2":
            ok &= np.isfinite(v_)
    for k_ in list(res):
        res[k_] = np.where(ok, res[k_], np.nan)
    res["fit_ok"] = ok
    return res


def _hermite5_basis(s, h):
    """Quintic Hermite basis at ``s = (u - u0) / h`` in [0, 1] (values and d/du), see :func:`_hermite5`."""
    s2 = s * s
    s3 = s2 * s
    s4 = s3 * s
    s5 = s4 * s
    h0 = 1 - 10 * s3 + 15 * s4 - 6 * s5
    h1 = s - 6 * s3 + 8 * s4 - 3 * s5
    h2 = 0.5 * s2 - 1.5 * s3 + 1.5 * s4 - 0.5 * s5
    g1 = -4 * s3 + 7 * s4 - 3 * s5
    g2 = 0.5 * s3 - s4 + 0.5 * s5
    dh0 = -30 * s2 + 60 * s3 - 30 * s4  # d/ds; dg0 = -dh0
    dh1 = 1 - 18 * s2 + 32 * s3 - 15 * s4
    dh2 = s - 4.5 * s2 + 6 * s3 - 2.5 * s4
    dg1 = -12 * s2 + 28 * s3 - 15 * s4
    dg2 = 1.5 * s2 - 4 * s3 + 2.5 * s4
    return (1 - h0, h * h1, h * g1, h * h * h2, h * h * g2,
            -dh0 / h, dh1, dg1, h * dh2, h * dg2)


def _hermite5(basis, f0, f1, d0, d1, dd0, dd1):
    """Quintic Hermite interpolation from values f, first d and second dd derivatives (in u)
    at both ends of an interval; returns the value and its u-derivative."""
    w, a1, b1, a2, b2, dw, da1, db1, da2, db2 = basis
    df = f1 - f0
    val = f0 + w * df + a1 * d0 + b1 * d1 + a2 * dd0 + b2 * dd1
    der = dw * df + da1 * d0 + db1 * d1 + da2 * dd0 + db2 * dd1
    return val, der


def _varpro_block(y, yy, t, cp, tab, o, ext, tol_u=1e-8, max_iter=30, exact=True):
    """Nonlinear least squares by variable projection with Hermite-interpolated projections.

    For a fixed ``kep`` the model is linear in (Ktrans, vp), so the sum of squares reduced
    over them, ``SSR(kep) = y.y - gain(kep)``, depends on ``kep`` only through
    ``b1 = y.E(kep)``, ``b2 = y.Cp``, ``E.E``, ``E.Cp`` and ``Cp.Cp``.  ``E`` and its
    first two derivatives in ``u = ln(kep)`` are tabulated on a log grid shared by all
    voxels, so ``b1`` and its derivatives at every node come from one matrix product;
    between nodes the projections are quintic-Hermite interpolated (error O(h^6), h the
    log step).  The best node (unconstrained optimum, feasibility checked) and the sign
    of ``d gain / du`` there select the grid interval holding the maximum; the root of
    ``d gain / du = 2 Ktrans b1' - Ktrans^2 (E.E)' - 2 Ktrans vp (E.Cp)'`` (envelope
    theorem, valid with the bounds Ktrans, vp >= 0 active or not) is then found by the
    Illinois variant of regula falsi.  When the AIF is on the frame grid, one recursion over
    time at the final ``kep`` then gives the exact projections, so Ktrans, vp and the residual
    carry no interpolation error (with a finer AIF grid the interpolated ones are used).
    """
    m = y.shape[0]
    rows = np.arange(m)
    kg = tab["kgrid"]
    G = kg.size
    ug = np.log(kg)
    h = ug[1] - ug[0]
    bd = y @ tab["ED"].T  # (m, 3G)
    b1g, d1g, dd1g = bd[:, :G], bd[:, G:2 * G], bd[:, 2 * G:]
    EE, EC, CC = tab["EE"], tab["EC"], tab["CC"]
    (dEE, ddEE), (dEC, ddEC) = tab["EEd"], tab["ECd"]
    if ext:
        b2 = y @ cp
        det = EE * CC - EC * EC
        al, be, ga = CC / det, -2.0 * EC / det, EE / det
        b2c = b2[:, None]
        gain = b1g * (al * b1g + be * b2c) + ga * (b2 * b2)[:, None]
        # unconstrained Ktrans >= 0  <=>  b1 >= (EC/CC) b2 ;  vp >= 0  <=>  b1 <= (EE/EC) b2
        feas = (b1g >= (EC / CC) * b2c) & (b1g <= (EE / EC) * b2c)
        gain = np.where(feas, gain, -np.inf)
        j = np.argmax(gain, axis=1)
        bad = ~np.isfinite(gain[rows, j])
        if bad.any():  # unconstrained optimum infeasible at every node: bounded solve at every node
            _, _, gb = _nnls2(EE, EC, CC, b1g[bad], b2[bad, None])
            j[bad] = np.argmax(gb, axis=1)
    else:
        b2 = np.zeros(m)
        j = np.argmax(np.maximum(b1g, 0.0) ** 2 / EE, axis=1)

    def at_node(i):
        """d gain / du at grid node i (per voxel)."""
        b1, d1 = b1g[rows, i], d1g[rows, i]
        k, v, _ = _nnls2(EE[i], EC[i], CC, b1, b2) if ext else (np.maximum(b1, 0) / EE[i], 0.0, None)
        return 2 * k * d1 - k * k * dEE[i] - 2 * k * v * dEC[i]

    # choose the interval [i0, i0 + 1] holding the maximum from the derivative signs at nodes
    gj = at_node(j)
    i0 = np.where(gj > 0, j, j - 1)
    for _ in range(2):  # step once more if the sign does not change across the interval
        i0 = np.clip(i0, 0, G - 2)
        ga_ = at_node(i0)
        gb_ = at_node(i0 + 1)
        i0 = np.where((ga_ > 0) & (gb_ > 0), i0 + 1, np.where((ga_ <= 0) & (gb_ <= 0), i0 - 1, i0))
    i0 = np.clip(i0, 0, G - 2)
    i1 = i0 + 1
    ga_ = at_node(i0)
    gb_ = at_node(i1)
    nd = [(b1g[rows, i0], b1g[rows, i1], d1g[rows, i0], d1g[rows, i1], dd1g[rows, i0], dd1g[rows, i1]),
          (EE[i0], EE[i1], dEE[i0], dEE[i1], ddEE[i0], ddEE[i1]),
          (EC[i0], EC[i1], dEC[i0], dEC[i1], ddEC[i0], ddEC[i1])]

    def evaluate(sv):
        basis = _hermite5_basis(sv, h)
        (b1, b1d), (ee, eed), (ec, ecd) = (_hermite5(basis, *q) for q in nd)
        if ext:
            k, v, g = _nnls2(ee, ec, CC, b1, b2)
        else:
            k = np.maximum(b1, 0.0) / ee
            v = np.zeros_like(k)
            g = k * b1
        dg = 2 * k * b1d - k * k * eed - 2 * k * v * ecd
        return k, v, g, dg, b1, ee, ec

    # Illinois regula falsi on dg(s) = 0 for s in [0, 1]; no sign change -> better end
    change = (ga_ > 0) & (gb_ < 0)
    sa, sb = np.zeros(m), np.ones(m)
    fa, fb = np.where(change, ga_, 1.0), np.where(change, gb_, -1.0)
    side = np.zeros(m, dtype=np.int8)
    sv = np.where(ga_ <= 0, 0.0, 1.0)  # fallback for no sign change: the end with dg pointing outward
    sc_old = np.full(m, -1.0)
    for _ in range(max_iter):
        sc = np.where(change, (sa * fb - sb * fa) / (fb - fa), sv)
        if np.max(np.abs(sc - sc_old)) * h < tol_u:
            break
        sc_old = sc
        _, _, _, fc, *_ = evaluate(sc)
        pos = fc > 0
        # Illinois: halve the retained end's value when the same side is kept twice
        fb = np.where(change & pos & (side == 1), fb * 0.5, fb)
        fa = np.where(change & ~pos & (side == -1), fa * 0.5, fa)
        sa = np.where(change & pos, sc, sa)
        fa = np.where(change & pos, fc, fa)
        sb = np.where(change & ~pos, sc, sb)
        fb = np.where(change & ~pos, fc, fb)
        side = np.where(pos, 1, -1).astype(np.int8)
    sfin = np.where(change, (sa * fb - sb * fa) / (fb - fa), sv)
    sfin = np.clip(np.nan_to_num(sfin, nan=0.5), 0.0, 1.0)
    kep = np.exp(ug[i0] + sfin * h)
    if exact and o["tf"].size == t.size:
        # exact projections at the final kep (one recursion over time): Ktrans, vp and the sum
        # of squares carry no interpolation error
        b1, ee, ec = _tm_conv_stats(np.ascontiguousarray(y.T), t, cp, kep)
        if ext:
            k, v, g = _nnls2(ee, ec, CC, b1, b2)
        else:
            k = np.maximum(b1, 0.0) / ee
            v = np.zeros_like(k)
            g = k * b1
    else:  # interpolated projections (AIF on a finer grid; delay profile, where the LM polish follows)
        k, v, g, _, b1, ee, ec = evaluate(sfin)
    kmax = np.minimum(o["kmax"], kep)  # Ktrans bound and ve <= 1
    clip = k > kmax
    if clip.any():
        k = np.where(clip, kmax, k)
        if ext:
            v = np.where(clip, np.maximum((b2 - k * ec) / CC, 0.0), v)
        g = 2 * (k * b1 + v * b2) - (k * k * ee + 2 * k * v * ec + v * v * CC)
    ssr = np.maximum(yy - g, 0.0)
    res = dict(ktrans=k * 60.0, kep=kep * 60.0, ve=k / kep)
    if ext:
        res["vp"] = v
    return _finish_ssr(res, y, yy, ssr)


def _finish(res, y, fit, yy):
    r = y - fit
    return _finish_ssr(res, y, yy, np.einsum("ij,ij->i", r, r))


def _lm(y, tf, cp_vf, k, kep, v, ext, o):
    """Batched Levenberg-Marquardt on (Ktrans, kep[, vp]) in 1/s with projected bounds.

    Model ``f = K E(kep) + vp cp`` at the frames (``E`` computed on the AIF grid ``tf`` with
    per-voxel AIFs ``cp_vf``, sampled at ``o["fidx"]``); Jacobian ``[E, K dE/dkep, cp]`` from
    the recursion.
    Marquardt scaling (``lambda diag(J^T J)``); a step is accepted voxel by voxel when it
    lowers the sum of squares, else lambda grows tenfold.
    """
    lo, hi = o["kep_range"]
    kmax = o["kmax"]
    m, n = y.shape
    fi = o["fidx"]
    cpm = np.broadcast_to(cp_vf[..., fi], (m, n))
    lam = np.full(m, 1e-3)

    def evaluate(k, kep, v):
        e, de = exp_convolve_and_derivative(tf, cp_vf, kep)
        e, de = e[:, fi], de[:, fi]
        f = k[:, None] * e
        if ext:
            f = f + v[:, None] * cpm
        r = y - f
        return e, de, r, np.einsum("ij,ij->i", r, r)

    e, de, r, ssr = evaluate(k, kep, v)
    for _ in range(o["n_iter"]):
        jk = e
        jq = k[:, None] * de
        a11 = np.einsum("ij,ij->i", jk, jk)
        a12 = np.einsum("ij,ij->i", jk, jq)
        a22 = np.einsum("ij,ij->i", jq, jq)
        g1 = np.einsum("ij,ij->i", jk, r)
        g2 = np.einsum("ij,ij->i", jq, r)
        s = 1.0 + lam
        if ext:
            a13 = np.einsum("ij,ij->i", jk, cpm)
            a23 = np.einsum("ij,ij->i", jq, cpm)
            a33 = np.einsum("ij,ij->i", cpm, cpm)
            g3 = np.einsum("ij,ij->i", cpm, r)
            dk, dq, dv = _solve3(a11 * s, a12, a13, a22 * s, a23, a33 * s, g1, g2, g3)
        else:
            dk, dq = _solve2(a11 * s, a12, a22 * s, g1, g2)
            dv = 0.0
        kep_n = np.clip(kep + np.nan_to_num(dq), lo, hi)
        k_n = np.clip(k + np.nan_to_num(dk), 0.0, np.minimum(kmax, kep_n))
        v_n = np.clip(v + np.nan_to_num(dv), 0.0, 1.0) if ext else v
        e_n, de_n, r_n, ssr_n = evaluate(k_n, kep_n, v_n)
        acc = ssr_n < ssr
        lam = np.where(acc, lam * 0.1, lam * 10.0)
        k = np.where(acc, k_n, k)
        kep = np.where(acc, kep_n, kep)
        if ext:
            v = np.where(acc, v_n, v)
        a = acc[:, None]
        e = np.where(a, e_n, e)
        de = np.where(a, de_n, de)
        r = np.where(a, r_n, r)
        ssr = np.where(acc, ssr_n, ssr)
    return k, kep, v


# --------------------------------------------------------------------------------------
# Signal -> R1 -> concentration (SPGR)
# --------------------------------------------------------------------------------------

def spgr_r1_from_signal(s, s_baseline, fa_deg, tr_ms, t10_ms):
    """R1 (1/s) of an SPGR signal, given the pre-contrast signal and T10.

    Parameters
    ----------
    s : array_like (..., n)
        Signal over time (any units).
    s_baseline : array_like (...)
        Pre-contrast signal (mean of the baseline frames), same units.
    fa_deg : float or array_like (...)
        Flip angle in degrees: the nominal one, or per voxel the actual one (nominal x relative B1).
    tr_ms : float
        Repetition time in ms.
    t10_ms : array_like (...)
        Pre-contrast T1 in ms.

    Returns
    -------
    ndarray (..., n)
        R1 in 1/s; NaN where the signal is not compatible with SPGR (``E1`` outside (0, 1)).

    Notes
    -----
    ``S = M0 sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR R1)``.  With
    ``A = M0 sin(a) = S_base (1 - cos(a) E10) / (1 - E10)``:
    ``E1 = (A - S) / (A - S cos(a))`` and ``R1 = -ln(E1) / TR``.
    Deoni et al., MRM 2003;49:515 (doi:10.1002/mrm.10407); Schabel & Parker,
    Phys Med Biol 2008;53:2345 (doi:10.1088/0031-9155/53/9/010).
    """
    s = np.asarray(s, dtype=float)
    sb = np.asarray(s_baseline, dtype=float)[..., None]
    t10 = np.asarray(t10_ms, dtype=float)[..., None]
    a = np.deg2rad(np.asarray(fa_deg, dtype=float))
    a = a[..., None] if a.ndim else a
    tr_s = float(tr_ms) / 1000.0
    e10 = np.exp(-tr_ms / t10)
    amp = sb * (1.0 - np.cos(a) * e10) / (1.0 - e10)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = (amp - s) / (amp - s * np.cos(a))
        r1 = -np.log(e1) / tr_s
    return np.where((e1 > 0) & (e1 < 1), r1, np.nan)


def spgr_concentration(s, s_baseline, fa_deg, tr_ms, t10_ms, r1_per_mM_s):
    """Contrast-agent concentration (mM) from SPGR signal: ``C = (R1 - R10) / r1``.

    Parameters as :func:`spgr_r1_from_signal`; ``r1_per_mM_s`` is the agent's relaxivity
    in 1/(mM s) (see :mod:`studylib.models.relaxivity`).  Fast-exchange, linear relaxivity
    model: ``R1 = R10 + r1 C`` (e.g. Tofts, JMRI 1997;7:91, doi:10.1002/jmri.1880070113).
    """
    r1 = spgr_r1_from_signal(s, s_baseline, fa_deg, tr_ms, t10_ms)
    r10 = 1000.0 / np.asarray(t10_ms, dtype=float)[..., None]
    return (r1 - r10) / float(r1_per_mM_s)


