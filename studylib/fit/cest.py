"""CEST adapters: B0 maps (WASSR), MTR asymmetry, multi-pool Lorentzian fits, change maps.

All adapters take a DataArray with an ``offset`` dimension (ppm, sorted ascending; use
``signal.sortby("offset")`` on data loaded in acquisition order) and any other voxel
dims (``animal, day, z, y, x``...), numpy- or Dask-backed, and return an
:class:`xarray.Dataset` through :func:`studylib.fit.apply_kernel` (lazy for Dask input,
NaN + ``fit_ok=False`` for voxels that cannot be analysed).  The maths lives in
:mod:`studylib.models.cest`.

Typical LATEST use (DeBrosse et al., Sci Rep 2016;6:19517, doi:10.1038/srep19517)::

    cest = load_study(m, "lactate_cest", "CEST")
    wassr = load_study(m, "lactate_cest", "WASSR")
    b0 = cest_b0_map(wassr.signal.sortby("offset"), mask=wassr.roi == 1)
    res = mtr_asym(cest.signal.sortby("offset"), cest.m0, b0_ppm=b0.b0_ppm, deltas_ppm=(0.4,))
    change = cest_change(res.mtr_asym.sel(delta=0.4), pre_day=0, post_day=1)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import FitInputError
from ..models import cest as _m
from ._adapter import Output, _check_voxel_inputs, _chunk_like, apply_kernel

__all__ = ["cest_b0_map", "mtr_asym", "lorentzian_pools", "corrected_zspectrum", "cest_change", "average_repetitions",
           "median_filter_map"]

GAMMA_1H_MHZ_PER_T = 42.577478  # MHz/T: 1 ppm at B0 [T] is 42.577 * B0 Hz


def _offsets(signal, dim, source):
    if not isinstance(signal, xr.DataArray):
        raise FitInputError(f"{source}: expected an xarray.DataArray with an '{dim}' dimension, "
                            f"got {type(signal).__name__}")
    if dim not in signal.dims:
        raise FitInputError(f"{source}: signal has no '{dim}' dimension (saturation offsets, ppm); "
                            f"its dims are {tuple(signal.dims)}")
    if dim not in signal.coords:
        raise FitInputError(f"{source}: signal has an '{dim}' dimension but no '{dim}' coordinate (ppm)")
    return _m.check_offsets(signal[dim].values, what=f"{source}: saturation offsets '{dim}'")


def _split(signal, m0, normalized, source):
    """Resolve (signal, m0) from a DataArray + m0 or a load_study Dataset."""
    if isinstance(signal, xr.Dataset):
        ds = signal
        if "signal" not in ds:
            raise FitInputError(f"{source}: Dataset has no 'signal' variable (variables: {list(ds.data_vars)})")
        signal = ds["signal"]
        if m0 is None and "m0" in ds:
            m0 = ds["m0"]
    if normalized:
        return signal, None
    if m0 is None:
        raise FitInputError(f"{source}: no reference volume: pass m0 (the unsaturated S0 image, "
                            f"load_study(...).m0; listed in the sidecar's ReferenceVolumes) or "
                            f"normalized=True for data already divided by S0")
    if not isinstance(m0, xr.DataArray):
        raise FitInputError(f"{source}: m0 must be an xarray.DataArray, got {type(m0).__name__}")
    return signal, m0


def _voxel_inputs(m0, b0):
    """The per-voxel inputs of the kernels (validated, broadcast and masked by apply_kernel)."""
    return {k: v for k, v in (("m0", m0), ("b0_ppm", b0)) if v is not None}


def _strip(da):
    """Drop non-index coordinates (they are re-attached to the result by :func:`_restore`).

    Works around ``DataArray.chunk`` also chunking non-index coordinates such as
    ``acquired(animal, day)`` of ``load_study`` output, which makes ``.chunksizes``
    inconsistent inside ``apply_kernel`` when a mask is given.
    """
    extra = {c: da.coords[c] for c in da.coords if c not in da.dims}
    return da.drop_vars(list(extra)), extra


def _restore(ds, extra):
    keep = {c: v for c, v in extra.items() if set(v.dims) <= set(ds.dims)}
    return ds.assign_coords(keep) if keep else ds


def _mask_for(mask):
    if mask is None or not isinstance(mask, xr.DataArray):
        return mask
    return mask.drop_vars([c for c in mask.coords if c not in mask.dims], errors="ignore")


def cest_b0_map(signal: xr.DataArray, *, mask=None, method: str = "mscf", search_ppm: float | None = None,
                step_ppm: float | None = None, interp: str = "cubic", min_dip: float = 0.1,
                field_T: float | None = None, dim: str = "offset") -> xr.Dataset:
    """Per-voxel B0 (water frequency) map from WASSR (or CEST) spectra.

    Parameters
    ----------
    signal : DataArray with ``offset`` (ppm, ascending, both sides of water) and voxel dims.
        Normalisation is not needed (the search is scale invariant).
    mask : optional boolean voxel mask (voxels outside: NaN, ``fit_ok=False``).
    method : ``"mscf"`` (maximum-symmetry centre frequency, Kim et al. MRM 2009;61:1441,
        doi:10.1002/mrm.21873) or ``"minimum"`` (spline-interpolated minimum).
    search_ppm, step_ppm, interp, min_dip : see :func:`studylib.models.cest.b0_shift`.
    field_T : main field in T for the ``b0_hz`` map (default ``signal.attrs["field_T"]``).

    Returns
    -------
    Dataset: ``b0_ppm`` (ppm), ``b0_hz`` (Hz, when the field is known), ``dip`` (relative
    depth of the water dip, QC) and ``fit_ok``.
    """
    x = _offsets(signal, dim, "cest_b0_map")
    half = float(min(x[-1], -x[0]))
    if search_ppm is not None and not (0 < float(search_ppm) < half):
        raise FitInputError(f"cest_b0_map: search_ppm={search_ppm!r} must be positive and below the offsets' "
                            f"half-range {half:g} ppm")
    if method not in ("mscf", "minimum"):
        raise FitInputError(f"cest_b0_map: method must be 'mscf' or 'minimum', got {method!r}")
    if interp not in ("cubic", "linear"):
        raise FitInputError(f"cest_b0_map: interp must be 'cubic' or 'linear', got {interp!r}")
    bare, extra = _strip(signal)
    ds = apply_kernel(
        _m.b0_kernel, bare, dim,
        [Output("b0_ppm", "ppm", "water frequency shift (B0 offset)"),
         Output("dip", "1", "relative depth of the water dip"),
         Output("fit_ok", "", "B0 estimate usable", bool)],
        x=x, mask=_mask_for(mask),
        kernel_kwargs=dict(method=method, search_ppm=search_ppm, step_ppm=step_ppm, kind=interp, min_dip=min_dip),
        attrs={"method": f"B0 from Z-spectra: {method} ({interp} interpolation)",
               "reference": "Kim et al., MRM 2009;61:1441, doi:10.1002/mrm.21873"},
    )
    ds = _restore(ds, extra)
    field = field_T if field_T is not None else signal.attrs.get("field_T")
    if field is not None:
        ds["b0_hz"] = ds["b0_ppm"] * (GAMMA_1H_MHZ_PER_T * float(field))
        ds["b0_hz"].attrs = {"units": "Hz", "long_name": f"B0 offset at {float(field):g} T"}
        ds.attrs["field_T"] = float(field)
    return ds


def _check_pairs(x, deltas, bands, source):
    deltas = tuple(float(d) for d in np.atleast_1d(np.asarray(deltas, dtype=float)))
    if not deltas and not bands:
        raise FitInputError(f"{source}: give at least one offset in deltas_ppm or one band in bands_ppm")
    lo_x, hi_x = x[0], x[-1]
    for d in deltas:
        if not (np.isfinite(d) and d > 0):
            raise FitInputError(f"{source}: deltas_ppm must be positive offsets (ppm), got {d!r}")
        if -d < lo_x or d > hi_x:
            raise FitInputError(f"{source}: the +-{d:g} ppm pair is not acquired: offsets span "
                                f"[{lo_x:g}, {hi_x:g}] ppm, MTRasym needs both -{d:g} and +{d:g}")
    clean = []
    for b in bands:
        try:
            lo, hi = (float(v) for v in b)
        except (TypeError, ValueError):
            raise FitInputError(f"{source}: each band must be a (lo, hi) pair in ppm, got {b!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise FitInputError(f"{source}: band {b!r} must satisfy 0 <= lo < hi (ppm)")
        if -hi < lo_x or hi > hi_x:
            raise FitInputError(f"{source}: band ({lo:g}, {hi:g}) ppm needs offsets out to +-{hi:g} ppm but the "
                                f"offsets span [{lo_x:g}, {hi_x:g}] ppm")
        clean.append((lo, hi))
    return deltas, tuple(clean)


def mtr_asym(signal, m0: xr.DataArray | None = None, *, b0_ppm=None, deltas_ppm: Sequence[float] = (0.4,),
             bands_ppm: Sequence[tuple] = (), mask=None, interp: str = "cubic", normalized: bool = False,
             band_points: int = 21, dim: str = "offset", normalisation: str = "s0") -> xr.Dataset:
    """MTR asymmetry ``MTRasym(D) = 100 [S(-D) - S(+D)] / S0`` (% of S0) or ``/ S(-D)``, B0-corrected per voxel.

    Parameters
    ----------
    signal : DataArray (``offset`` in ppm, ascending) of saturated images, or a
        ``load_study`` Dataset (its ``signal`` and ``m0`` are used).
    m0 : unsaturated reference image over the voxel dims (``load_study(...).m0``); required
        unless ``normalized=True`` or ``normalisation="negative_offset"`` (where S0 cancels).
    b0_ppm : per-voxel water shift (``cest_b0_map(...).b0_ppm``), a number, or None for no
        correction.  Voxels with NaN B0 get NaN and ``fit_ok=False``.
    deltas_ppm : offsets ``D > 0`` to report (both ``+-D`` must lie within the acquired range).
    bands_ppm : ``(lo, hi)`` bands whose MTRasym integral (%·ppm) is reported.
    mask : optional boolean voxel mask.
    interp : ``"cubic"`` (default) or ``"linear"`` interpolation along offsets.
    normalisation : what the asymmetry is divided by (:data:`studylib.models.cest.MTR_NORMALISATIONS`):
        ``"s0"`` (default, ``100 [S(-D) - S(+D)] / S0 = 100 [Z(-D) - Z(+D)]``) or ``"negative_offset"``
        (``100 [S(-D) - S(+D)] / S(-D)``, the saturated image on the other side of water as the
        reference).  The second is the first times ``S0 / S(-D)``, so larger near water; compare
        values with a paper only under the paper's normalisation.

    Returns
    -------
    Dataset: ``mtr_asym(..., delta)`` in %, ``mtr_asym_band(..., band)`` in %·ppm (if bands),
    ``fit_ok``.  Coordinates ``delta`` (ppm) and ``band`` (``"lo-hi"``, with ``band_lo``,
    ``band_hi`` in ppm).  Attrs ``normalisation`` (the key) and ``normalisation_formula``; the
    variables' ``long_name`` says "% of S0" or "% of S(-D)".

    Notes
    -----
    ``Z(d) = S(d + dB0) / S0``, interpolated on the acquired grid (see
    :func:`studylib.models.cest.mtr_asym_values`); Zhou et al., Nat Med 2003;9:1085
    (doi:10.1038/nm907); DeBrosse et al., Sci Rep 2016;6:19517 (doi:10.1038/srep19517).
    """
    try:
        _m.check_normalisation(normalisation)
    except FitInputError as err:
        raise FitInputError(f"mtr_asym: {err}") from None
    by_reference = normalisation == "negative_offset"
    no_m0 = by_reference and m0 is None and not (isinstance(signal, xr.Dataset) and "m0" in signal)
    signal, m0 = _split(signal, m0, normalized or no_m0, "mtr_asym")
    x = _offsets(signal, dim, "mtr_asym")
    if interp not in ("cubic", "linear"):
        raise FitInputError(f"mtr_asym: interp must be 'cubic' or 'linear', got {interp!r}")
    deltas, bands = _check_pairs(x, deltas_ppm, tuple(bands_ppm), "mtr_asym")
    bare, extra = _strip(signal)
    outs = [Output(f"mtr_asym_{i}", "%", f"MTRasym at {d:g} ppm") for i, d in enumerate(deltas)]
    outs += [Output(f"mtr_asym_band_{i}", "% ppm", f"MTRasym integral {lo:g}-{hi:g} ppm")
             for i, (lo, hi) in enumerate(bands)]
    outs.append(Output("fit_ok", "", "MTRasym computed", bool))
    res = apply_kernel(
        _m.mtr_asym_kernel, bare, dim, outs, x=x, mask=_mask_for(mask),
        kernel_kwargs=dict(deltas_ppm=deltas, bands_ppm=bands, kind=interp, band_points=band_points,
                           **({"normalisation": normalisation} if by_reference else {})),
        voxel_inputs=_voxel_inputs(m0, b0_ppm),
    )
    of = "S(-D)" if by_reference else "S0"
    ds = xr.Dataset(attrs={
        "method": ("MTRasym = [Z(-D) - Z(+D)] / Z(-D), " if by_reference else "MTRasym = Z(-D) - Z(+D), ")
                  + ("B0-corrected per voxel" if b0_ppm is not None else "no B0 correction")
                  + f", {interp} interpolation",
        "normalisation": normalisation,
        "normalisation_formula": _m.MTR_NORMALISATIONS[normalisation],
        "reference": "Zhou et al., Nat Med 2003;9:1085, doi:10.1038/nm907; DeBrosse et al., Sci Rep 2016;6:19517",
    })
    if deltas:
        da = xr.concat([res[f"mtr_asym_{i}"] for i in range(len(deltas))],
                       dim=pd.Index(np.asarray(deltas), name="delta"))
        ds["mtr_asym"] = da.transpose(*[d for d in da.dims if d != "delta"], "delta")
        ds["mtr_asym"].attrs = {"units": "%", "long_name": f"MTR asymmetry (% of {of})"}
        ds["delta"].attrs = {"units": "ppm", "long_name": "saturation offset from water"}
    if bands:
        da = xr.concat([res[f"mtr_asym_band_{i}"] for i in range(len(bands))],
                       dim=pd.Index(np.asarray([f"{lo:g}-{hi:g}" for lo, hi in bands], dtype=object),
                                    dtype=object, name="band"))
        ds["mtr_asym_band"] = da.transpose(*[d for d in da.dims if d != "band"], "band")
        ds["mtr_asym_band"].attrs = {"units": "% ppm", "long_name": "integral of MTRasym over the band"
                                     + (f" (% of {of})" if by_reference else "")}
        ds = ds.assign_coords(band_lo=("band", [b[0] for b in bands], {"units": "ppm"}),
                              band_hi=("band", [b[1] for b in bands], {"units": "ppm"}))
    ds["fit_ok"] = res["fit_ok"]
    return _restore(ds, extra)


def lorentzian_pools(signal, m0: xr.DataArray | None = None, *, pools: Sequence[_m.Pool] = _m.LATEST_POOLS,
                     b0_ppm=None, mask=None, normalized: bool = False, max_iter: int = 200,
                     dim: str = "offset") -> xr.Dataset:
    """Multi-pool Lorentzian fit of every voxel's Z-spectrum (batched Levenberg-Marquardt).

    Parameters
    ----------
    signal, m0, b0_ppm, mask, normalized : as in :func:`mtr_asym`.  With ``b0_ppm`` the
        model is fitted on the corrected axis, so centres are chemical shifts.
    pools : :class:`studylib.models.cest.Pool` sequence (names must be unique identifiers);
        default :data:`~studylib.models.cest.LATEST_POOLS` (water, lactate 0.4 ppm, MT).

    Returns
    -------
    Dataset: ``<pool>_amplitude`` (% of S0), ``<pool>_center_ppm``, ``<pool>_fwhm_ppm``,
    ``rmse`` (% of S0), ``fit_ok``.

    Notes
    -----
    ``Z(d) = 1 - sum_i A_i (w_i/2)^2 / ((w_i/2)^2 + (d - d_i)^2)``; Zaiss et al., J Magn
    Reson 2011;211:149 (doi:10.1016/j.jmr.2011.05.001).
    """
    signal, m0 = _split(signal, m0, normalized, "lorentzian_pools")
    x = _offsets(signal, dim, "lorentzian_pools")
    pools = tuple(pools)
    if not pools or not all(isinstance(p, _m.Pool) for p in pools):
        raise FitInputError("lorentzian_pools: pools must be a non-empty sequence of studylib.models.cest.Pool")
    names = [p.name for p in pools]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise FitInputError(f"lorentzian_pools: pool names must be unique identifiers, got {names}")
    if x.size < 3 * len(pools):
        raise FitInputError(f"lorentzian_pools: {len(pools)} pools need at least {3 * len(pools)} offsets, "
                            f"got {x.size}")
    for p in pools:
        for what, v, (lo, hi) in (("amplitude", p.amplitude, p.amplitude_bounds),
                                  ("center_ppm", p.center_ppm, p.center_bounds_ppm),
                                  ("fwhm_ppm", p.fwhm_ppm, p.fwhm_bounds_ppm)):
            if not (lo <= v <= hi) or (what == "fwhm_ppm" and lo <= 0):
                raise FitInputError(f"lorentzian_pools: pool {p.name!r} {what} start {v} is outside its bounds "
                                    f"({lo}, {hi}) or the width bound is not positive")
    bare, extra = _strip(signal)
    outs = []
    for p in pools:
        outs += [Output(f"{p.name}_amplitude", "%", f"{p.name} pool amplitude (% of S0)"),
                 Output(f"{p.name}_center_ppm", "ppm", f"{p.name} pool centre"),
                 Output(f"{p.name}_fwhm_ppm", "ppm", f"{p.name} pool FWHM")]
    outs += [Output("rmse", "%", "root-mean-square residual (% of S0)"), Output("fit_ok", "", "fit converged", bool)]
    res = apply_kernel(
        _m.lorentzian_pools_kernel, bare, dim, outs, x=x, mask=_mask_for(mask),
        kernel_kwargs=dict(pools=pools, max_iter=max_iter), voxel_inputs=_voxel_inputs(m0, b0_ppm),
        attrs={"method": "multi-pool Lorentzian, batched Levenberg-Marquardt",
               "pools": ", ".join(names),
               "reference": "Zaiss et al., J Magn Reson 2011;211:149, doi:10.1016/j.jmr.2011.05.001"},
    )
    return _restore(res, extra)


def corrected_zspectrum(signal, m0: xr.DataArray | None = None, *, b0_ppm=None, grid_ppm=None,
                        normalized: bool = False, interp: str = "cubic", dim: str = "offset") -> xr.DataArray:
    """Z-spectra (% of S0) shifted per voxel onto the B0-corrected offset axis.

    ``Z(d) = 100 S(d + dB0) / S0`` on ``grid_ppm`` (default: the acquired offsets); NaN
    where ``d + dB0`` is outside the acquired range.  Lazy for Dask input.  Use it for QC
    (ROI-mean spectra before/after correction).
    """
    signal, m0 = _split(signal, m0, normalized, "corrected_zspectrum")
    x = _offsets(signal, dim, "corrected_zspectrum")
    grid = x if grid_ppm is None else np.asarray(grid_ppm, dtype=float)
    if interp not in ("cubic", "linear"):
        raise FitInputError(f"corrected_zspectrum: interp must be 'cubic' or 'linear', got {interp!r}")
    bare, extra = _strip(signal)
    scalars, arrays = _check_voxel_inputs(bare, _voxel_inputs(m0, 0.0 if b0_ppm is None else b0_ppm), dim, ())
    names = list(arrays)
    fixed = {k: np.asarray(v, dtype=float) for k, v in scalars.items()}
    n = x.size

    def _block(y, *vals):
        lead = y.shape[:-1]
        flat = np.asarray(y, dtype=float).reshape(-1, n)
        v = {**fixed, **dict(zip(names, vals))}
        v = {k: np.broadcast_to(np.asarray(a, dtype=float), lead).reshape(-1) for k, a in v.items()}
        z = _m.z_normalize(flat, v["m0"]) if "m0" in v else flat
        out = _m.shift_zspectrum(z, x, v["b0_ppm"], grid, kind=interp)
        return (100.0 * out).reshape(lead + (grid.size,))

    sig = bare.chunk({dim: -1}) if bare.chunks is not None else bare
    args = [sig] + [_chunk_like(a, sig) for a in arrays.values()]
    out = xr.apply_ufunc(_block, *args, input_core_dims=[[dim]] + [[] for _ in arrays],
                         output_core_dims=[["offset_corr"]], dask="parallelized", output_dtypes=[float],
                         dask_gufunc_kwargs={"output_sizes": {"offset_corr": grid.size}})
    out = out.rename({"offset_corr": dim}).assign_coords({dim: (dim, grid, {"units": "ppm"})})
    out = _restore(out, extra)
    out.attrs = {"units": "%", "long_name": "B0-corrected Z-spectrum (% of S0)"}
    return out


def cest_change(values: xr.DataArray | xr.Dataset, *, pre_day, post_day, dim: str = "day"):
    """Post minus pre change map (e.g. of ``mtr_asym``), same voxel grid per animal.

    Returns ``values.sel(day=post_day) - values.sel(day=pre_day)`` with units kept
    (``"%"`` of S0 for MTRasym, i.e. percentage points); a missing session gives NaN.
    """
    if dim not in values.dims:
        raise FitInputError(f"cest_change: values have no '{dim}' dimension (dims {tuple(values.dims)})")
    days = list(np.asarray(values[dim].values).tolist())
    for name, d in (("pre_day", pre_day), ("post_day", post_day)):
        if d not in days:
            raise FitInputError(f"cest_change: {name}={d!r} is not among the {dim} values {days}")
    out = values.sel({dim: post_day}, drop=True) - values.sel({dim: pre_day}, drop=True)
    if isinstance(values, xr.DataArray):
        out.attrs = {"units": values.attrs.get("units", ""),
                     "long_name": f"change {post_day} minus {pre_day} of {values.attrs.get('long_name', values.name)}"}
        out.name = f"delta_{values.name}" if values.name else None
    return out


def average_repetitions(signal: xr.DataArray, *, dim: str = "offset") -> xr.Dataset:
    """Average the repeated acquisitions of each saturation offset; offsets ascending.

    A CEST scan that loops over its offset list several times (ParaVision ``Number_CESTrepetitions``:
    the sidecar's ``SaturationOffsets_ppm`` repeats, so :func:`studylib.io.load_study` gives an
    ``offset`` axis with repeated values) is averaged here, lazily for Dask input, before B0 maps,
    MTRasym or pool fits (which need each offset once).

    Parameters
    ----------
    signal : DataArray with ``dim`` (ppm) holding every offset the same number of times ``R``, in any
        order, and any voxel dims (``animal, day, z, y, x``...).
    dim : the offset dimension.

    Returns
    -------
    Dataset
        ``signal`` (mean over the repetitions, one value per offset, ascending; units kept) and ``sem``
        (per voxel, the standard error of that mean, pooled over offsets:
        ``sqrt(mean_offsets(var_reps, ddof=1) / R)``; NaN when ``R == 1``), attrs ``repetitions`` = R.
        ``sem`` measures the repetition-to-repetition scatter (thermal noise plus physiological
        fluctuation and drift within the scan), so it is an honest per-voxel noise level of the
        averaged spectrum for detection thresholds.

    Raises
    ------
    FitInputError
        ``dim`` missing, or the offsets are not all repeated the same number of times.
    """
    if not isinstance(signal, xr.DataArray) or dim not in signal.dims or dim not in signal.coords:
        raise FitInputError(f"average_repetitions: expected a DataArray with an '{dim}' dimension and coordinate")
    vals, counts = np.unique(np.asarray(signal[dim].values, dtype=float), return_counts=True)
    if not np.all(np.isfinite(vals)) or counts.min() != counts.max():
        raise FitInputError(f"average_repetitions: every '{dim}' value must occur equally often; counts "
                            f"{dict(zip(vals.tolist(), counts.tolist()))}")
    reps = int(counts[0])
    bare, extra = _strip(signal)
    grouped = bare.groupby(dim)
    mean = grouped.mean(dim).sortby(dim)
    if mean.chunks is not None:  # groupby leaves one chunk per offset; the fits want the spectrum in one chunk
        mean = mean.chunk({dim: -1})
    mean.attrs = dict(signal.attrs)
    if reps > 1:
        sem = np.sqrt(grouped.var(dim, ddof=1).mean(dim) / reps)
    else:
        sem = xr.full_like(mean.isel({dim: 0}, drop=True), np.nan)
    sem.attrs = {"units": signal.attrs.get("units", ""), "long_name": f"standard error of the mean over {reps} "
                 "repetitions, pooled over offsets"}
    mean[dim].attrs = dict(signal[dim].attrs)
    out = xr.Dataset({"signal": mean, "sem": sem}, attrs={"repetitions": reps})
    return _restore(out, extra)


def median_filter_map(values: xr.DataArray, mask: xr.DataArray | None = None, *, size: int = 3) -> xr.DataArray:
    """``size x size`` median filter of a map in ``(y, x)``, ignoring NaN and pixels outside ``mask``.

    For maps that vary smoothly in space but are noisy per pixel, e.g. a B0 map from the water minimum
    of CEST spectra sampled every 0.5 ppm near water.  Each slice and leading index is filtered on its
    own; pixels outside ``mask`` (and pixels whose whole neighbourhood is NaN) are NaN.  Computes the
    input (maps are small).

    Parameters
    ----------
    values : DataArray with ``y`` and ``x`` dims (any leading dims).
    mask : optional boolean DataArray broadcastable to ``values`` (e.g. the body).
    size : odd window width in pixels.

    Returns
    -------
    DataArray like ``values`` (attrs kept, ``long_name`` noting the filter).
    """
    from scipy import ndimage as ndi

    if not isinstance(values, xr.DataArray) or not {"y", "x"} <= set(values.dims):
        raise FitInputError("median_filter_map: values must be a DataArray with 'y' and 'x' dims")
    if int(size) != size or size < 1 or size % 2 == 0:
        raise FitInputError(f"median_filter_map: size must be an odd positive integer, got {size!r}")
    v = values.where(mask) if mask is not None else values

    def _filt(a):
        if not np.isfinite(a).any():
            return np.full(a.shape, np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN
                return ndi.generic_filter(a, np.nanmedian, size=int(size), mode="constant", cval=np.nan)

    out = xr.apply_ufunc(_filt, v.compute(), input_core_dims=[["y", "x"]], output_core_dims=[["y", "x"]],
                         vectorize=True).transpose(*values.dims)
    if mask is not None:
        out = out.where(mask)
    out.attrs = {**values.attrs, "long_name": f"{values.attrs.get('long_name', values.name or 'map')} "
                 f"({size}x{size} median filter)"}
    return out.rename(values.name)
