"""Relaxometry fit adapters: T2*/R2*, T2, T1 (VFA, IR, SR), Delta R2*, iron concentration.

Each adapter validates its fitted-axis coordinate (:func:`check_axis`), then runs a numpy kernel
of :mod:`studylib.models.relaxometry` through :func:`apply_kernel` (numpy or Dask, any leading
dims, optional mask; Dask input stays lazy).

Noise level for the low-SNR-unbiased fits (``method="auto"``/``"squared"``/``"rician"``), first
available of:

1. ``noise_sigma``: a number, or a DataArray broadcastable to the voxel dims (e.g. one value per
   ``animal, day`` from :func:`noise_sigma_from_background`);
2. ``background``: a boolean mask of signal-free voxels (e.g. ``roi == 5``); sigma per scan from
   the Rayleigh mean, ``sigma = mean|S| / sqrt(pi/2)``, pooled over the spatial dims and echoes
   (for ``n_coils = L`` root-sum-of-squares channels the central-chi mean of
   :func:`noise_sigma_from_background` instead);
3. ``signal.attrs["noise_sigma"]`` (the sidecar's ``NoiseSigma``, if the loader put it there);
4. otherwise it is estimated per voxel by fitting the offset ``2 sigma^2`` of the squared signal as
   a third parameter (slower and less accurate for T2* longer than the echo train: prefer 1-2).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import FitInputError
from ..models import noise as _noise
from ..models import relaxometry as _rx
from .._checks import positive_number
from ._adapter import Output, _check_voxel_inputs, apply_kernel, check_axis

__all__ = ["t2star", "t2", "t1_vfa", "t1_ir", "t1_sr", "delta_r2star", "iron_concentration",
           "noise_sigma_from_background"]

_METHODS = ("auto",) + _rx.MONOEXP_METHODS
_SPATIAL = ("x", "y", "z", "voxel")
_AXES = ("te", "b", "fa", "ti", "t", "offset")


def noise_sigma_from_background(signal_or_image, background_mask, *, dims=None, n_coils=1):
    """Noise SD per channel from signal-free background voxels (Rayleigh statistics).

    In the background the magnitude is Rayleigh distributed with mean ``sigma sqrt(pi/2)``, so
    ``sigma = mean(|S|[background]) / sqrt(pi/2)`` (Gudbjartsson & Patz, MRM 1995;34:910,
    doi:10.1002/mrm.1910340618).  With ``n_coils = L > 1`` receive channels combined by
    root-sum-of-squares the background is central chi with 2L degrees of freedom and
    ``sigma = mean / (sqrt(pi/2) (2L-1)!! / (2^(L-1) (L-1)!))``
    (:func:`studylib.models.noise.chi_background_mean_factor`; Aja-Fernandez et al., Magn Reson
    Imaging 2009, doi:10.1016/j.mri.2009.05.025): the Rayleigh formula would over-estimate sigma
    2.19x for L = 4.  ``n_coils`` is a whole number >= 1; ``sigma`` is per channel either way.

    Parameters
    ----------
    signal_or_image : DataArray or ndarray
        Magnitude data.  For a DataArray the mean is pooled over ``dims`` (default: the spatial
        dims ``x, y, z, voxel`` and the acquisition axes ``te, b, fa, ti, t, offset`` present), so
        ``(animal, day, te, z, y, x)`` gives one sigma per ``(animal, day)``.  For an ndarray
        everything is pooled into one number.
    background_mask : DataArray or ndarray of bool
        True in background voxels; broadcast against the signal (a DataArray mask by dim name,
        an ndarray mask must match the image shape or its leading dims).

    Returns
    -------
    DataArray (``units`` as the signal, ``long_name`` "noise SD") or float.  Non-finite background
    values (a corrupt voxel, an Inf) are left out; the DataArray says how many per channel in the
    coordinate ``background_nonfinite_values``.
    """
    n_coils = _n_coils(n_coils)
    if n_coils != 1:  # the Rayleigh estimate below, rescaled by sqrt(pi/2) / f_L
        return _coil_sigma(noise_sigma_from_background(signal_or_image, background_mask, dims=dims), n_coils)
    if isinstance(signal_or_image, xr.DataArray):
        sig = signal_or_image
        mask = background_mask
        if not isinstance(mask, xr.DataArray):
            m = np.asarray(mask)
            spatial = [d for d in sig.dims if d not in _AXES]
            if m.shape != tuple(sig.sizes[d] for d in spatial):
                raise FitInputError(f"background_mask of shape {m.shape} does not match the signal's voxel "
                                    f"shape {tuple(sig.sizes[d] for d in spatial)} (dims {spatial})")
            mask = xr.DataArray(m, dims=spatial)
        extra = set(mask.dims) - set(sig.dims)
        if extra:
            raise FitInputError(f"background_mask has dims {sorted(extra)} that the signal lacks")
        for d in mask.dims:
            if mask.sizes[d] != sig.sizes[d]:
                raise FitInputError(f"background_mask has {mask.sizes[d]} along '{d}', the signal {sig.sizes[d]}")
        mask = mask.astype(bool)
        if dims is None:
            dims = [d for d in sig.dims if d in _SPATIAL or d in _AXES]
        mag = abs(sig)
        finite = np.isfinite(mag)
        from ._adapter import masked_abs_mean

        fused = masked_abs_mean(sig, mask, dims)  # None unless Dask-backed float data on aligned dims
        if fused is not None:
            # one task per chunk reads |S| once (no NaN-filled copy of the scan); the same float32 sums in the
            # same order as the masked nanmean below, so the same bits
            out = fused / np.sqrt(np.pi / 2.0)
        else:
            vals = mag.where(mask & finite)  # an Inf/NaN voxel in the background is left out, not averaged in
            out = vals.mean(dim=dims, skipna=True) / np.sqrt(np.pi / 2.0)
        if out.chunks is None and out.size and not np.any(np.isfinite(out.values)):
            raise FitInputError("background_mask selects no finite signal; cannot estimate the noise SD")
        left_out = (mask & ~finite).sum(dim=[d for d in dims if d in (mask & ~finite).dims])
        out.attrs = {"units": sig.attrs.get("units", ""), "long_name": "noise SD per channel (Rayleigh background)"}
        out = out.rename("noise_sigma")
        return out.assign_coords(background_nonfinite_values=left_out.rename(None).assign_attrs(
            long_name="non-finite background values left out of the noise estimate"))
    img = np.abs(np.asarray(signal_or_image, dtype=float))
    m = np.asarray(background_mask, dtype=bool)
    if m.shape != img.shape:
        if img.shape[:m.ndim] != m.shape:
            raise FitInputError(f"background_mask of shape {m.shape} matches neither the image shape "
                                f"{img.shape} nor its leading dims")
        m = np.broadcast_to(m.reshape(m.shape + (1,) * (img.ndim - m.ndim)), img.shape)
    v = img[m]
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise FitInputError("background_mask selects no finite signal; cannot estimate the noise SD")
    return float(v.mean() / np.sqrt(np.pi / 2.0))


def _n_coils(n_coils, signal=None):
    """The number of receive channels: ``n_coils``, else the sidecar's ``ReceiveCoilChannels`` (via
    ``signal.attrs``), else 1; a whole number >= 1 or :class:`FitInputError`."""
    name = "n_coils"
    if n_coils is None:
        n_coils = getattr(signal, "attrs", {}).get("ReceiveCoilChannels", 1)
        name = "n_coils (sidecar ReceiveCoilChannels)"
    return _noise.check_n_coils(n_coils, name, error=FitInputError)


def _coil_sigma(rayleigh, n_coils):
    """A Rayleigh background sigma (float or DataArray) rescaled to ``n_coils`` RSS channels."""
    out = rayleigh * (np.sqrt(np.pi / 2.0) / _noise.chi_background_mean_factor(n_coils))
    if isinstance(out, xr.DataArray):
        out.attrs = {**rayleigh.attrs, "n_coils": n_coils,
                     "long_name": f"noise SD per channel (non-central chi background, {n_coils} channels RSS)"}
    return out


def _monoexp_kernel(y, x, *, method, sigma=None, names, drop_first=False, n_coils=1):
    if drop_first:
        y, x = y[:, 1:], x[1:]
    r = _rx.fit_monoexp(y, x, method=method, sigma=sigma, n_coils=n_coils)
    out = {names["rate"]: r["rate"], "s0": r["s0"], "rmse": r["rmse"], "noise_sigma": r["sigma"],
           "fit_ok": r["fit_ok"]}
    if "inverse" in names:
        with np.errstate(divide="ignore"):
            out[names["inverse"]] = 1.0 / r["rate"]
    if "rate_per_s" in names:
        out[names["rate_per_s"]] = 1000.0 * r["rate"]
    return out


_monoexp_kernel.voxels_contiguous = True  # fit_monoexp works on (n, n_vox): the adapter hands over rows in that layout


def _resolve_sigma(signal, noise_sigma, background, dim, n_coils=1):
    if noise_sigma is None and background is not None:
        noise_sigma = noise_sigma_from_background(signal, background, n_coils=n_coils)
    if noise_sigma is None and "noise_sigma" in signal.attrs:
        noise_sigma = signal.attrs["noise_sigma"]
    if noise_sigma is None:
        return None, None
    if isinstance(noise_sigma, xr.DataArray):
        _check_voxel_inputs(signal, {"noise_sigma": noise_sigma}, dim, ())  # dims, sizes, labels
        if noise_sigma.ndim == 0:
            noise_sigma = float(noise_sigma)
        else:
            return None, noise_sigma
    return positive_number(noise_sigma, "noise_sigma (a number or DataArray)"), None


def _monoexp_fit(signal, dim, what, method, noise_sigma, background, mask, names, outputs, attrs,
                 x_scale=1.0, drop_first=False, min_points=2, n_coils=None):
    if method not in _METHODS:
        raise FitInputError(f"method must be one of {_METHODS}, got {method!r}")
    x = check_axis(signal, dim, what=what, min_points=min_points + int(drop_first)) * x_scale
    n_coils = _n_coils(n_coils, signal)
    m = "squared" if method == "auto" else method
    if m == "rician" and n_coils != 1:
        raise FitInputError(f"method='rician' models one receive channel (Rician noise); with n_coils={n_coils} "
                            "use method='squared' (the non-central chi noise floor 2 L sigma^2)")
    sig_f, sig_da = _resolve_sigma(signal, noise_sigma, background, dim, n_coils)
    have_sigma = sig_f is not None or sig_da is not None
    if m == "rician" and not have_sigma:
        raise FitInputError("method='rician' needs noise_sigma, a background mask or signal.attrs['noise_sigma']")
    if m in ("loglinear", "nonlinear"):
        sig_f, sig_da = None, None
    kw = {"method": m, "names": names, "drop_first": drop_first}
    if n_coils != 1:
        kw["n_coils"] = n_coils
    sigma_in = sig_da if sig_da is not None else sig_f
    vin = None if sigma_in is None else {"sigma": sigma_in}
    a = dict(attrs)
    a["method"] = m
    a["noise_sigma"] = ("per-voxel fitted" if (m in ("squared",) and not have_sigma)
                        else ("map" if sig_da is not None else (sig_f if sig_f is not None else "not used")))
    a["n_coils"] = n_coils
    return apply_kernel(_monoexp_kernel, signal, dim, outputs, x=x, mask=mask, kernel_kwargs=kw, attrs=a,
                        voxel_inputs=vin)


def t2star(signal, *, method="auto", noise_sigma=None, background=None, mask=None, n_coils=None):
    """T2*/R2* maps from multi-gradient-echo magnitude data (``te`` dim, ms).

    Parameters
    ----------
    signal : DataArray with a ``te`` dimension and coordinate (ms), any other dims, numpy or Dask.
    method : {"auto", "squared", "rician", "nonlinear", "loglinear"}
        ``"auto"`` = ``"squared"``: noise-corrected squared magnitude, ``E[S^2] = S0^2 e^{-2 TE R2*}
        + 2 sigma^2`` (exact for Rician noise, hence unbiased at low SNR; Miller & Joseph 1993,
        doi:10.1016/0730-725X(93)90225-3).  See :func:`studylib.models.relaxometry.fit_monoexp`.
    noise_sigma, background : the noise level (see the module notes for the order of precedence).
    mask : optional boolean mask over the voxel dims.
    n_coils : int, optional
        Receive channels ``L`` combined by root-sum-of-squares (default: the sidecar's
        ``ReceiveCoilChannels`` in ``signal.attrs``, else 1).  The noise is then non-central chi
        with 2L degrees of freedom: the squared model becomes ``E[S^2] = S0^2 e^{-2 TE R2*} +
        2 L sigma^2`` and a ``background`` sigma uses the L-channel estimator
        (:func:`noise_sigma_from_background`).  ``noise_sigma`` is per channel either way.
        ``method="rician"`` needs ``L = 1``.  ``n_coils=1`` is exactly the single-channel fit.

    Returns
    -------
    Dataset: ``t2star`` (ms), ``r2star`` (1/s) = 1000 / T2*, ``s0`` (a.u.), ``rmse`` (a.u.,
    goodness of fit), ``noise_sigma`` (a.u., per channel; used or fitted), ``fit_ok`` (bool);
    attrs ``method``, ``noise_sigma``, ``n_coils``.
    """
    outputs = [Output("t2star", "ms", "T2* (transverse relaxation time, gradient echo)"),
               Output("r2star", "1/s", "R2* = 1/T2*"), Output("s0", "a.u.", "signal at TE = 0"),
               Output("rmse", "a.u.", "root mean square residual"),
               Output("noise_sigma", "a.u.", "noise SD per channel used by the fit"),
               Output("fit_ok", "", "voxel fitted", bool)]
    names = {"rate": "_rate", "inverse": "t2star", "rate_per_s": "r2star"}
    return _monoexp_fit(signal, "te", "echo times (ms)", method, noise_sigma, background, mask, names,
                        outputs, {"fit": "t2star", "model": "S0 exp(-TE/T2*)"}, n_coils=n_coils)


def t2(signal, *, method="auto", noise_sigma=None, background=None, mask=None, drop_first_echo=False,
       n_coils=None):
    """T2/R2 maps from multi-spin-echo magnitude data (``te`` dim, ms), mono-exponential.

    Stimulated echoes from imperfect refocusing (B1 error, slice profile) make the echo train
    non-exponential (Lebel & Wilman, MRM 2010;64:1005, doi:10.1002/mrm.22487); modelling them
    (EPG fitting) is out of scope.  ``drop_first_echo=True`` discards the first echo, the one most
    affected, the common practical remedy.  Other arguments as :func:`t2star`.

    Returns Dataset ``t2`` (ms), ``r2`` (1/s), ``s0``, ``rmse``, ``noise_sigma``, ``fit_ok``.
    """
    outputs = [Output("t2", "ms", "T2 (spin-echo transverse relaxation time)"), Output("r2", "1/s", "R2 = 1/T2"),
               Output("s0", "a.u.", "signal at TE = 0"), Output("rmse", "a.u.", "root mean square residual"),
               Output("noise_sigma", "a.u.", "noise SD per channel used by the fit"),
               Output("fit_ok", "", "voxel fitted", bool)]
    names = {"rate": "_rate", "inverse": "t2", "rate_per_s": "r2"}
    return _monoexp_fit(signal, "te", "echo times (ms)", method, noise_sigma, background, mask, names,
                        outputs, {"fit": "t2", "model": "S0 exp(-TE/T2)", "drop_first_echo": int(drop_first_echo)},
                        drop_first=drop_first_echo, n_coils=n_coils)


def _t1_outputs(extra=()):
    return ([Output("t1", "ms", "T1 (longitudinal relaxation time)"), Output("r1", "1/s", "R1 = 1/T1"),
             Output("m0", "a.u.", "equilibrium signal")] + list(extra)
            + [Output("rmse", "a.u.", "root mean square residual"), Output("fit_ok", "", "voxel fitted", bool)])


def _with_r1(r):
    r["r1"] = 1000.0 / r["t1"]
    return r


def _vfa_kernel(y, x, *, tr_ms, method, b1=None):
    return _with_r1(_rx.fit_vfa(y, x, tr_ms=tr_ms, method=method, b1=b1))


#: plausible relative flip angles (actual / nominal); outside, the map is in other units or wrong
B1_RANGE = (0.3, 2.0)


def _check_b1(b1):
    """Validate a relative flip-angle map: numbers, no Inf, positive, within :data:`B1_RANGE` (NaN allowed:
    that voxel is not fitted).  Computes a Dask-backed map (one value per voxel, small)."""
    if isinstance(b1, xr.Dataset) or not isinstance(b1, (xr.DataArray, np.ndarray, int, float, np.number)) \
            or isinstance(b1, (bool, np.bool_)):
        raise FitInputError(f"b1 must be a relative flip-angle map (DataArray over the voxel dims) or a number, "
                            f"got {type(b1).__name__}")
    vals = b1.values if isinstance(b1, xr.DataArray) else np.asarray(b1)
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        raise FitInputError(f"b1 must be real numbers (actual / nominal flip angle), got dtype {vals.dtype}")
    vals = vals.astype(float)
    fin = vals[np.isfinite(vals)]
    if np.isinf(vals).any() or fin.size == 0:
        raise FitInputError("b1 must be finite (NaN only where a voxel is not to be fitted); "
                            f"it has {int(np.isinf(vals).sum())} Inf and {fin.size} finite values")
    lo, hi = float(fin.min()), float(fin.max())
    if lo <= 0:
        raise FitInputError(f"b1 must be positive (relative flip angle, actual / nominal), got minimum {lo:g}")
    if lo < B1_RANGE[0] or hi > B1_RANGE[1]:
        raise FitInputError(f"b1 ranges {lo:g}-{hi:g}, outside the plausible {B1_RANGE[0]}-{B1_RANGE[1]} of a "
                            "relative flip angle (actual / nominal): a map in percent or in degrees?")
    return b1


def t1_vfa(signal, *, tr_ms=None, method="linear", mask=None, b1=None):
    """T1 from variable flip angle SPGR (``fa`` dim, degrees): DESPOT1 linear or nonlinear.

    ``tr_ms`` defaults to ``signal.attrs["tr_ms"]``.  See :func:`studylib.models.relaxometry.fit_vfa`.
    ``b1``: relative flip-angle map (actual / nominal, e.g. from an AFI or double-angle scan), a
    DataArray over (a subset of) the signal's voxel dims, on the same grid, or one number; each
    voxel is fitted with its actual angles ``b1 * fa``.  Values must be positive and within
    :data:`B1_RANGE` (NaN: voxel not fitted).  Without it the nominal angles are used, and a flip
    angle off by a factor ``b`` gives ``T1 ~ b^2 T1_true`` (0.72x for ``b = 0.85``).
    Returns Dataset ``t1`` (ms), ``r1`` (1/s), ``m0``, ``rmse``, ``fit_ok``.
    """
    fa = check_axis(signal, "fa", what="flip angles (deg)", allow_zero=False)
    if np.any(fa >= 180):
        raise FitInputError(f"flip angles ('fa') must be below 180 degrees: {fa.tolist()}")
    if method not in ("linear", "nonlinear"):
        raise FitInputError(f"method must be 'linear' or 'nonlinear', got {method!r}")
    tr = tr_ms if tr_ms is not None else signal.attrs.get("tr_ms")
    if tr is None:
        raise FitInputError("t1_vfa needs the repetition time: pass tr_ms= or set signal.attrs['tr_ms']")
    tr = positive_number(tr, "tr_ms (ms)")
    vin = None if b1 is None else {"b1": _check_b1(b1)}
    return apply_kernel(_vfa_kernel, signal, "fa", _t1_outputs(), x=fa, mask=mask,
                        kernel_kwargs={"tr_ms": tr, "method": method}, voxel_inputs=vin,
                        attrs={"fit": "t1_vfa", "method": method, "tr_ms": tr,
                               "b1_correction": "nominal flip angles" if b1 is None else "relative flip-angle map"})


def _ir_kernel(y, x, *, magnitude):
    return _with_r1(_rx.fit_inversion_recovery(y, x, magnitude=magnitude))


def t1_ir(signal, *, magnitude=True, mask=None):
    """T1 from inversion recovery (``ti`` dim, ms), 3-parameter ``|M0 (1 - k e^{-TI/T1})|``.

    Returns Dataset ``t1`` (ms), ``r1`` (1/s), ``m0``, ``efficiency`` (k, 2 = perfect inversion),
    ``rmse``, ``fit_ok``.
    """
    ti = check_axis(signal, "ti", what="inversion times (ms)", min_points=3)
    return apply_kernel(_ir_kernel, signal, "ti", _t1_outputs([Output("efficiency", "", "inversion efficiency k")]),
                        x=ti, mask=mask, kernel_kwargs={"magnitude": bool(magnitude)},
                        attrs={"fit": "t1_ir", "magnitude": int(bool(magnitude))})


def _sr_kernel(y, x):
    return _with_r1(_rx.fit_saturation_recovery(y, x))


def t1_sr(signal, *, dim="ti", mask=None):
    """T1 from saturation recovery ``M0 (1 - e^{-t/T1})`` along ``dim`` (recovery times, ms)."""
    t = check_axis(signal, dim, what="recovery times (ms)", allow_zero=False)
    return apply_kernel(_sr_kernel, signal, dim, _t1_outputs(), x=t, mask=mask, attrs={"fit": "t1_sr"})


def delta_r2star(r2star, *, baseline_day=0, dim="day"):
    """Change of R2* from a baseline session: ``Delta R2*(day) = R2*(day) - R2*(baseline_day)``.

    ``r2star`` is a DataArray with a ``day`` dim (or a Dataset holding ``r2star``), e.g. the output
    of :func:`t2star` on a study.  Returns a DataArray in 1/s (NaN where either session is missing).
    """
    if isinstance(r2star, xr.Dataset):
        if "r2star" not in r2star:
            raise FitInputError(f"delta_r2star: the Dataset has no 'r2star' variable ({list(r2star.data_vars)})")
        r2star = r2star["r2star"]
    if not isinstance(r2star, xr.DataArray):
        raise FitInputError(f"delta_r2star: expected a DataArray with a '{dim}' dim, got {type(r2star).__name__}")
    if dim not in r2star.dims:
        raise FitInputError(f"delta_r2star: r2star has no '{dim}' dimension (dims {tuple(r2star.dims)})")
    days = r2star[dim].values if dim in r2star.coords else np.arange(r2star.sizes[dim])
    if baseline_day not in list(days):
        raise FitInputError(f"delta_r2star: baseline_day={baseline_day!r} is not among the '{dim}' values {list(days)}")
    base = r2star.sel({dim: baseline_day}, drop=True)
    out = r2star - base
    out.attrs = {"units": "1/s", "long_name": f"Delta R2* relative to {dim} {baseline_day}",
                 "baseline_day": baseline_day}
    return out.rename("delta_r2star")


def iron_concentration(delta_r2star, *, field_T=None, agent="ferumoxytol", medium="plasma",
                       relaxivity_per_mM_per_s=None):
    """Iron concentration ``[Fe] (mM) = Delta R2* (1/s) / r2* (1/(s mM))``.

    ``r2*`` is looked up in :mod:`studylib.models.relaxivity` at ``field_T`` (default:
    ``delta_r2star.attrs["field_T"]``), unless ``relaxivity_per_mM_per_s`` is given.  Assumes the
    linear (fast-exchange/static-dephasing) regime of the in-vitro measurement; intracellular
    clustering changes r2* in tissue, so treat the result as an iron-equivalent concentration.  How the
    relaxivity was obtained (tabulated / extrapolated above 3 T, its source) is kept in the attrs.
    """
    from ..models.relaxivity import relaxivity

    if not isinstance(delta_r2star, (xr.DataArray, np.ndarray, float, int)):
        raise FitInputError(f"iron_concentration: expected a DataArray of Delta R2* (1/s), got {type(delta_r2star).__name__}")
    rel = None
    if relaxivity_per_mM_per_s is None:
        if field_T is None and isinstance(delta_r2star, xr.DataArray):
            field_T = delta_r2star.attrs.get("field_T")
        if field_T is None:
            raise FitInputError("iron_concentration needs field_T (tesla) or relaxivity_per_mM_per_s")
        rel = relaxivity(agent, field_T, kind="r2star", medium=medium)
        r = rel.value_per_mM_s
    else:
        r = positive_number(relaxivity_per_mM_per_s, "relaxivity_per_mM_per_s (1/(s mM))")
    out = delta_r2star / r
    if isinstance(out, xr.DataArray):
        out.attrs = {"units": "mM", "long_name": f"{agent} iron concentration (Delta R2* / r2*)",
                     "relaxivity_per_mM_per_s": r, "field_T": field_T if field_T is not None else "n/a",
                     "relaxivity_how": rel.how if rel is not None else "given",
                     "relaxivity_extrapolated": bool(rel is not None and rel.extrapolated),
                     "relaxivity_source": (rel.source + (f" ({rel.note})" if rel.note else "")) if rel else "given"}
        out = out.rename("iron_mM")
    return out
