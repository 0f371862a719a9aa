"""DCE-MRI adapters: signal -> concentration, AIFs, bolus arrival, Tofts / extended Tofts / Patlak.

All adapters take xarray DataArrays with a ``t`` dimension (frame times in s) and any other
(voxel) dims, numpy- or Dask-backed; the fits run the numpy kernels of
:mod:`studylib.models.dce` through :func:`studylib.fit.apply_kernel` (lazy for Dask, a
mask, NaN + ``fit_ok=False`` per voxel that cannot be fitted).

Typical chain::

    t10 = fit.t1_vfa(vfa, method="nonlinear").t1                    # relaxometry, ms
    ct = fit.signal_to_concentration(dce, t10_ms=t10, fa_deg=15, tr_ms=4,
                                     r1_per_mM_s=relaxivity("gadoterate", 4.7).r1_per_mM_s, baseline=5)
    aif = fit.aif_from_roi(dce, roi == 3, t10_blood_ms=2100, ...)    # or population_aif(...)
    maps = fit.dce(ct, aif, model="extended_tofts")

AIF time grid: ``fit.dce`` takes the AIF on the frame times of ``ct`` or on a finer grid that
contains every frame time (then the convolution runs on the fine grid: with coarse frames the
piecewise-linear AIF through the frames misses the bolus peak, biasing Ktrans by ~1 % at 5 s
frames for the McGrath rat AIF; a population AIF evaluated every 0.25-0.5 s avoids that).  Any other
grid raises and names :func:`resample_aif`, which resamples explicitly (linear interpolation).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from ..errors import FitInputError
from ..models import dce as _m
from .._checks import positive_number
from ._adapter import Output, apply_kernel, check_axis

__all__ = ["dce", "signal_to_concentration", "aif_from_roi", "population_aif", "resample_aif",
           "bolus_arrival_time", "correct_motion"]

_REFS = {
    "tofts": "Tofts et al., JMRI 1999;10:223",
    "extended_tofts": "Tofts et al., JMRI 1999;10:223 (with vp)",
    "patlak": "Patlak et al., JCBFM 1983;3:1, doi:10.1038/jcbfm.1983.1",
}


def _times(da, *, what, source, min_points=2):
    return check_axis(da, "t", what=what, min_points=min_points, source=source)


def _positive(name, value):
    return positive_number(value, name)


def _aif_values(aif, t, *, source="aif", allow_finer=True):
    """Validate the AIF; return ``(values, t_aif or None)``: None when it is on the frame times,
    its own times when it is on a finer grid containing every frame time."""
    if not isinstance(aif, xr.DataArray):
        raise FitInputError(f"{source}: expected an xarray.DataArray over 't' (plasma concentration, mM), "
                            f"got {type(aif).__name__}; build one with population_aif() or aif_from_roi()")
    if aif.dims != ("t",):
        raise FitInputError(f"{source}: must be 1-D over 't', got dims {aif.dims}")
    ta = _times(aif, what="AIF times (s)", source=source)
    tol = 1e-6 * max(1.0, float(np.abs(t).max()))
    same = ta.size == t.size and np.allclose(ta, t, rtol=0, atol=tol)
    if not same:
        j = np.clip(np.searchsorted(ta, t - tol), 0, ta.size - 1)
        finer = ta.size > t.size and np.all(np.abs(ta[j] - t) <= tol)
        if not finer:
            raise FitInputError(
                f"{source}: the AIF is on a different time grid ({ta.size} times, {ta[0]:g}-{ta[-1]:g} s) than the "
                f"tissue curves ({t.size} times, {t[0]:g}-{t[-1]:g} s) and its grid does not contain every frame "
                "time; resample it explicitly with studylib.fit.resample_aif(aif, ct['t']) (linear interpolation)")
        if not allow_finer:
            raise FitInputError(f"{source}: an AIF on a finer grid than the frames needs method='nonlinear' for "
                                "the Tofts models; or resample it with studylib.fit.resample_aif(aif, ct['t'])")
    vals = np.asarray(aif.values, dtype=float)
    if not np.all(np.isfinite(vals)):
        raise FitInputError(f"{source}: AIF contains NaN/Inf at t = {ta[~np.isfinite(vals)].tolist()} s")
    if not np.any(vals > 0):
        raise FitInputError(f"{source}: AIF is never positive; is it a concentration in mM?")
    return vals, (None if same else ta)


def _dce_kernel(y, x, **kw):
    return _m.dce_kernel(y, x, **kw)


def dce(ct, aif, model="extended_tofts", method="auto", *, mask=None, delay=False, delay_range_s=(0.0, 10.0),
        delay_step_s=None, kep_range_per_min=(1e-3, 60.0), ktrans_max_per_min=5.0, n_grid=48):
    """Tracer-kinetic maps from tissue concentration curves.

    Parameters
    ----------
    ct : DataArray
        Tissue concentration (mM) with a ``t`` dim (frame times in s, increasing, >= 0) and any
        voxel dims.
    aif : DataArray
        Plasma AIF (mM) over ``t``: on the frame times, or (nonlinear fits, Patlak) on a finer
        grid containing every frame time, e.g. a population AIF every 0.5 s; the convolution
        is then computed on that grid and sampled at the frames, so a bolus peak between
        frames is not lost.  Any other grid raises; see :func:`resample_aif`.
    model : {"tofts", "extended_tofts", "patlak"}
    method : {"auto", "linear", "nonlinear"}
        ``linear``: Murase's linear least squares (Patlak: its exact linear fit).
        ``nonlinear``: least squares of the model itself (variable projection over a shared
        ``kep`` grid, exact to ~1e-5, bounded: Ktrans in [0, ktrans_max], kep in
        ``kep_range_per_min``, ve <= 1, vp in [0, 1]).  ``auto``: nonlinear for the Tofts
        models, linear (exact) for Patlak.
    mask : optional boolean DataArray over the voxel dims.
    delay : bool
        Also fit an arterial delay (s) in ``delay_range_s`` (grid step ``delay_step_s``,
        default half the smallest frame interval or the finer AIF step, >= 0.1 s), refined by a
        parabola, then a Levenberg-Marquardt polish of the other parameters at that delay.
        Slower (one fit per delay step).

    Returns
    -------
    Dataset with ``ktrans`` (1/min; Patlak's is OSIPI's PS), ``kep`` (1/min), ``ve``, ``vp``
    (as the model has them), ``delay_s`` (if fitted), ``rmse_mM``, ``r2`` and ``fit_ok``.

    Notes
    -----
    Extended Tofts ``Ct = vp Cp + Ktrans int_0^t Cp(u) exp(-kep (t - u)) du``, ``ve = Ktrans/kep``;
    see :func:`studylib.models.dce.dce_kernel` for the numerics and references.
    """
    if model not in _m.DCE_MODELS:
        raise FitInputError(f"model must be one of {sorted(_m.DCE_MODELS)}, got {model!r}")
    if method not in ("auto", "linear", "nonlinear"):
        raise FitInputError(f"method must be 'auto', 'linear' or 'nonlinear', got {method!r}")
    meth = method
    if method == "auto" or model == "patlak":
        meth = "linear" if model == "patlak" else "nonlinear"
    if delay and meth == "linear" and model != "patlak":
        raise FitInputError("delay=True needs method='nonlinear' (or 'auto') for the Tofts models")
    t = _times(ct, what="frame times (s)", source="ct", min_points=4)
    cp, t_aif = _aif_values(aif, t, allow_finer=not (meth == "linear" and model != "patlak"))
    lo, hi = (float(v) for v in kep_range_per_min)
    if not (0 < lo < hi):
        raise FitInputError(f"kep_range_per_min must be (low, high) with 0 < low < high, got {kep_range_per_min}")
    dl, dh = (float(v) for v in delay_range_s)
    if delay and not dl < dh:
        raise FitInputError(f"delay_range_s must be (low, high) with low < high, got {delay_range_s}")
    if delay_step_s is not None:
        _positive("delay_step_s", delay_step_s)
    if int(n_grid) < 8:
        raise FitInputError(f"n_grid must be at least 8, got {n_grid}")
    names = _m.DCE_MODELS[model]
    units = {"ktrans": ("1/min", "volume transfer constant Ktrans" + (" (PS)" if model == "patlak" else "")),
             "kep": ("1/min", "rate constant kep = Ktrans/ve"),
             "ve": ("1", "extravascular extracellular volume fraction"),
             "vp": ("1", "plasma volume fraction")}
    outputs = [Output(n, *units[n]) for n in names]
    if delay:
        outputs.append(Output("delay_s", "s", "arterial delay (AIF shift)"))
    outputs += [Output("rmse_mM", "mM", "root mean square residual"),
                Output("r2", "1", "coefficient of determination"),
                Output("fit_ok", "", "voxel fitted", bool)]
    kw = dict(cp=cp, t_aif_s=t_aif, model=model, method=meth, delay=bool(delay), delay_range_s=(dl, dh),
              delay_step_s=delay_step_s, kep_range_per_min=(lo, hi), n_grid=int(n_grid),
              ktrans_max_per_min=_positive("ktrans_max_per_min", ktrans_max_per_min))
    return apply_kernel(_dce_kernel, ct, "t", outputs, x=t, mask=mask, kernel_kwargs=kw,
                        attrs={"fit": "dce", "model": model, "method": meth, "delay_fitted": int(bool(delay)),
                               "reference": _REFS[model]})


def _baseline_slice(baseline, n, source):
    if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
        sl = slice(0, int(baseline))
    elif isinstance(baseline, slice):
        sl = baseline
    elif isinstance(baseline, tuple) and len(baseline) == 2:
        sl = slice(int(baseline[0]), int(baseline[1]))
    else:
        raise FitInputError(f"{source}: baseline must be a number of frames, a (start, stop) pair or a slice, "
                            f"got {baseline!r}")
    idx = np.arange(n)[sl]
    if idx.size < 1:
        raise FitInputError(f"{source}: baseline {baseline!r} selects no frame out of {n}")
    if idx.size == n:
        raise FitInputError(f"{source}: baseline {baseline!r} selects every frame; nothing is post-contrast")
    return sl


def signal_to_concentration(signal, *, t10_ms, fa_deg, tr_ms, r1_per_mM_s, baseline, b1=None):
    """Contrast-agent concentration (mM) from SPGR DCE signal.

    Parameters
    ----------
    signal : DataArray with ``t`` (s) and voxel dims (magnitude signal).
    t10_ms : float or DataArray over (a subset of) the voxel dims
        Pre-contrast T1 in ms, e.g. ``fit.t1_vfa(...).t1``.
    fa_deg, tr_ms : flip angle (deg) and repetition time (ms) of the dynamic series.
    r1_per_mM_s : relaxivity (1/(mM s)), e.g. ``studylib.models.relaxivity.relaxivity(agent, field).value_per_mM_s``.
    baseline : int, (start, stop) or slice
        Pre-contrast frames whose mean is the baseline signal: ``5`` = frames 0-4;
        ``(1, 5)`` = frames 1-4 (skipping a first frame before steady state, as OSIPI's
        reference conversion does).
    b1 : None, float or DataArray over (a subset of) the voxel dims
        Relative flip angle (actual / nominal, e.g. from a B1 map): the conversion uses
        ``fa_deg * b1`` per voxel.  ``None`` = 1 (the nominal angle).  Use the same map as the
        VFA T10 fit (:func:`studylib.fit.t1_vfa` ``b1=``): a 10 % B1 error left in both biases T10 by
        ~20 % and the concentration with it.

    Returns
    -------
    DataArray (mM), same dims; NaN where the signal is incompatible with SPGR (E1 outside (0, 1)).

    Notes
    -----
    ``M0 sin(a) = S_base (1 - cos(a) E10)/(1 - E10)``; ``E1 = (M0 sin a - S)/(M0 sin a - S cos a)``;
    ``R1 = -ln(E1)/TR``; ``C = (R1 - 1000/T10)/r1``.  See
    :func:`studylib.models.dce.spgr_r1_from_signal`.
    """
    t = _times(signal, what="frame times (s)", source="signal")
    fa = _positive("fa_deg", fa_deg)
    if fa >= 180:
        raise FitInputError(f"fa_deg must be below 180 degrees, got {fa_deg!r}")
    tr = _positive("tr_ms", tr_ms)
    r1 = _positive("r1_per_mM_s", r1_per_mM_s)
    sl = _baseline_slice(baseline, t.size, "signal_to_concentration")
    if isinstance(t10_ms, xr.DataArray):
        if "t" in t10_ms.dims:
            raise FitInputError("t10_ms must not have a 't' dimension (it is the pre-contrast T1 map)")
        extra = set(t10_ms.dims) - set(signal.dims)
        if extra:
            raise FitInputError(f"t10_ms has dims {sorted(extra)} that the signal does not have")
        t10 = t10_ms
    else:
        t10 = _positive("t10_ms", t10_ms)
    if b1 is None:
        b1v = 1.0
    elif isinstance(b1, xr.DataArray):
        extra = set(b1.dims) - (set(signal.dims) - {"t"})
        if extra:
            raise FitInputError(f"b1 has dims {sorted(extra)} that the signal's voxels do not have")
        b1v = b1
        if b1.chunks is None and not np.all(np.isfinite(b1.values) & (b1.values > 0) | np.isnan(b1.values)):
            raise FitInputError("b1 (relative flip angle) must be > 0 where finite")
    else:
        b1v = _positive("b1", b1)
    s_base = signal.isel(t=sl).mean("t")
    sig = signal.chunk({"t": -1}) if signal.chunks is not None else signal

    def _conv(s, sb, t10v, b1x):
        return _m.spgr_concentration(s, sb, fa * np.asarray(b1x, dtype=float), tr, t10v, r1)

    out = xr.apply_ufunc(_conv, sig, s_base, t10, b1v, input_core_dims=[["t"], [], [], []],
                         output_core_dims=[["t"]], dask="parallelized", output_dtypes=[float])
    out = out.transpose(*signal.dims)
    out.attrs = {"units": "mM", "long_name": "contrast agent concentration", "fa_deg": fa, "tr_ms": tr,
                 "r1_per_mM_s": r1, "b1": "map" if isinstance(b1, xr.DataArray) else float(b1v)}
    out["t"] = signal["t"]
    return out.rename("concentration")


def aif_from_roi(signal, roi, *, t10_blood_ms, fa_deg, tr_ms, r1_per_mM_s, hematocrit, baseline, label=None):
    """Measured plasma AIF from a vessel ROI of the DCE signal.

    The signal is averaged over the ROI voxels first (averaging before the nonlinear
    signal -> R1 conversion keeps noise from biasing it), converted to blood concentration with
    the blood T10, and divided by ``1 - hematocrit`` (plasma; the agent stays out of red cells).

    Parameters
    ----------
    signal : DataArray with ``t`` and voxel dims.
    roi : DataArray (bool mask, or integer labels with ``label``) over a subset of the voxel
        dims; the dims of ``roi`` are averaged over.
    t10_blood_ms : pre-contrast blood T1 (ms) at the field.
    hematocrit : large-vessel haematocrit in [0, 1).
    fa_deg, tr_ms, r1_per_mM_s, baseline : as :func:`signal_to_concentration`.

    Returns
    -------
    DataArray plasma concentration (mM) over ``t`` (and any dims of ``signal`` not in ``roi``).
    """
    _times(signal, what="frame times (s)", source="signal")
    if not isinstance(roi, xr.DataArray):
        raise FitInputError(f"roi must be an xarray.DataArray over voxel dims, got {type(roi).__name__}")
    if "t" in roi.dims or set(roi.dims) - set(signal.dims):
        raise FitInputError(f"roi dims {roi.dims} must be a subset of the signal's voxel dims "
                            f"{tuple(d for d in signal.dims if d != 't')}")
    sel = roi == label if label is not None else roi.astype(bool)
    n_vox = int(sel.sum())
    if n_vox == 0:
        raise FitInputError(f"roi selects no voxel{'' if label is None else f' with label {label}'}; "
                            "cannot measure an AIF")
    try:
        hct = float(hematocrit)
    except (TypeError, ValueError):
        raise FitInputError(f"hematocrit must be a number in [0, 1), got {hematocrit!r}") from None
    if not 0.0 <= hct < 1.0:
        raise FitInputError(f"hematocrit must be in [0, 1), got {hematocrit!r}")
    mean_sig = signal.where(sel).mean(dim=list(roi.dims))
    cb = signal_to_concentration(mean_sig, t10_ms=t10_blood_ms, fa_deg=fa_deg, tr_ms=tr_ms,
                                 r1_per_mM_s=r1_per_mM_s, baseline=baseline)
    cp = cb / (1.0 - hct)
    cp.attrs = {"units": "mM", "long_name": "plasma AIF (vessel ROI)", "hematocrit": hct, "n_voxels": n_vox,
                "t10_blood_ms": float(t10_blood_ms)}
    return cp.rename("aif")


def population_aif(t_s, kind="parker", *, delay_s=0.0, hematocrit=0.45):
    """Population AIF as plasma concentration (mM) on the given times.

    ``kind="parker"``: Parker et al. 2006 (human, doi:10.1002/mrm.21066); ``"mcgrath_rat"``:
    McGrath et al. 2009 model B (tumour-bearing rats, doi:10.1002/mrm.21959); ``"mcgrath_mouse"``
    is a deprecated name of the same rat curve (a :class:`DeprecationWarning`).  No mouse
    population AIF is offered (see :mod:`studylib.models.aif`).  Both are whole-blood curves,
    divided by ``1 - hematocrit``.  ``delay_s`` shifts the bolus (0 before it).
    ``t_s`` is an array of times in s or a DataArray with a ``t`` coordinate.
    """
    if isinstance(t_s, xr.DataArray):
        t = _times(t_s, what="times (s)", source="t_s") if "t" in t_s.dims else np.asarray(t_s.values, float)
    else:
        t = np.asarray(t_s, dtype=float)
    if t.ndim != 1 or t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0) or np.any(t < 0):
        raise FitInputError("t_s must be 1-D, finite, non-negative and strictly increasing times in s")
    fns = {"parker": _m.parker_aif, "mcgrath_rat": _m.mcgrath_rat_aif}
    if kind == "mcgrath_mouse":  # the old, wrong name: same curve
        warnings.warn("population_aif kind 'mcgrath_mouse' is the McGrath et al. 2009 RAT AIF: use 'mcgrath_rat'",
                      DeprecationWarning, stacklevel=2)
        fns[kind] = _m.mcgrath_rat_aif
    if kind not in fns:
        raise FitInputError(f"kind must be one of {sorted(fns)}, got {kind!r}")
    try:
        cp = _m.blood_to_plasma(fns[kind](t, delay_s=float(delay_s)), float(hematocrit))
    except ValueError as err:
        raise FitInputError(str(err)) from None
    return xr.DataArray(cp, dims=("t",), coords={"t": ("t", t, {"units": "s"})}, name="aif",
                        attrs={"units": "mM", "long_name": f"{kind} population AIF (plasma)",
                               "hematocrit": float(hematocrit), "delay_s": float(delay_s)})


def resample_aif(aif, t_new, *, delay_s=0.0):
    """Resample an AIF to new frame times by linear interpolation (optionally delayed).

    ``aif_new(t) = aif(t - delay_s)``, linear between samples, the first value held before the
    first sample and the last after the last (the AIF's piecewise-linear form, which the
    convolution in :func:`dce` treats exactly).  Resampling a finely sampled AIF to coarser
    frames keeps only its values at the frames: a peak between frames is lost, which biases
    the fitted parameters; acquire the AIF at the frames, or, for population AIFs, evaluate the
    formula at the frame times (:func:`population_aif`).

    ``t_new`` is an array of times (s) or a DataArray with a ``t`` coordinate (e.g. ``ct['t']``).
    """
    if not isinstance(aif, xr.DataArray) or aif.dims != ("t",):
        raise FitInputError("aif must be a 1-D xarray.DataArray over 't'")
    ta = _times(aif, what="AIF times (s)", source="aif")
    tn = np.asarray(t_new.values if isinstance(t_new, xr.DataArray) else t_new, dtype=float)
    if tn.ndim != 1 or tn.size < 2 or not np.all(np.isfinite(tn)) or np.any(np.diff(tn) <= 0):
        raise FitInputError("t_new must be 1-D, finite and strictly increasing times in s")
    vals = _m.resample_curve(ta, np.asarray(aif.values, float), tn, delay_s=float(delay_s))
    return xr.DataArray(vals, dims=("t",), coords={"t": ("t", tn, {"units": "s"})}, name=aif.name,
                        attrs={**aif.attrs, "resampled": "linear", "delay_s": float(delay_s)})


def _bat_kernel(y, x, **kw):
    return _m.bolus_arrival_kernel(y, x, **kw)


def bolus_arrival_time(curves, *, mask=None, substeps=10):
    """Bolus arrival time (s) of each curve (AIF, signal or concentration) along ``t``.

    Piecewise-continuous regression (flat baseline, then quadratic up to the curve's maximum),
    the best break point on a grid of ``substeps`` per frame interval; after Cheong et al.,
    Phys Med Biol 2003;48:N83 (doi:10.1088/0031-9155/48/5/403).  Use the AIF's and a tissue
    curve's arrival times to set a starting delay, or compare them with ``dce(..., delay=True)``.

    Returns Dataset ``bat_s`` (s) and ``fit_ok``.
    """
    t = _times(curves, what="frame times (s)", source="curves", min_points=4)
    if int(substeps) < 1:
        raise FitInputError(f"substeps must be >= 1, got {substeps}")
    outputs = [Output("bat_s", "s", "bolus arrival time"), Output("fit_ok", "", "voxel fitted", bool)]
    return apply_kernel(_bat_kernel, curves, "t", outputs, x=t, mask=mask,
                        kernel_kwargs={"substeps": int(substeps)},
                        attrs={"fit": "bolus_arrival_time", "method": "piecewise constant-quadratic regression"})


def correct_motion(signal: xr.DataArray, mask: xr.DataArray | None = None, **kw) -> tuple[xr.DataArray, xr.Dataset]:
    """Frames displaced by bulk motion, detected and moved back, scan by scan (lazy for Dask).

    The numpy kernel :func:`studylib.models.motion.correct_motion_frames` (frame-to-neighbours residual,
    robust z, and an integer in-plane shift that explains it) runs on each scan's whole series.

    Parameters
    ----------
    signal : DataArray with dims ``t, z, y, x`` (and any leading dims, e.g. ``animal, day``); one chunk per
        scan along ``t, z, y, x``.
    mask : bool DataArray over ``z, y, x`` (and the leading dims): the voxels judged -- the body, not air.
    **kw : passed to the kernel (``z_threshold``, ``max_shift``, ``explained``, ``min_removed``).

    Returns
    -------
    (corrected, motion): ``corrected`` like ``signal``; ``motion`` a Dataset over the leading dims and ``t`` with
    ``dy``, ``dx`` (voxels, the displacement undone; 0 where none) and ``z`` (each frame's robust residual z).
    """
    from ..models.motion import correct_motion_frames

    if not isinstance(signal, xr.DataArray) or not {"t", "z", "y", "x"} <= set(signal.dims):
        raise FitInputError(f"correct_motion: signal must be a DataArray with dims t, z, y, x, got "
                            f"{getattr(signal, 'dims', type(signal).__name__)}")
    if mask is None:
        mask = xr.ones_like(signal.isel(t=0), dtype=bool)
    core = ["t", "z", "y", "x"]
    if signal.chunks is not None:
        signal = signal.chunk({d: -1 for d in core})

    def kernel(series, m):  # one scan: (t, z, y, x) -> the kernel's (z, y, x, t)
        out, dy, dx, z = correct_motion_frames(np.moveaxis(series, 0, -1), m, **kw)
        return np.moveaxis(out, -1, 0).astype(series.dtype), dy, dx, z

    corrected, dy, dx, z = xr.apply_ufunc(
        kernel, signal, mask.astype(bool), input_core_dims=[core, ["z", "y", "x"]],
        output_core_dims=[core, ["t"], ["t"], ["t"]], vectorize=True, dask="parallelized",
        output_dtypes=[signal.dtype, float, float, float])
    corrected = corrected.transpose(*signal.dims)
    corrected.attrs = dict(signal.attrs)
    motion = xr.Dataset({"dy": dy, "dx": dx, "z": z})
    motion.attrs["method"] = ("frames whose residual against their neighbours is an outlier (robust z) and which an "
                              "integer in-plane shift explains, moved back by that shift "
                              "(studylib.models.motion.correct_motion_frames)")
    return corrected, motion
