"""The one xarray/dask adapter every fit uses.

A kernel is a pure numpy function ``kernel(y, x, **kwargs) -> dict[name, ndarray]`` with
``y`` of shape ``(n_voxels, n)`` (the fitted axis last), ``x`` the fitted-axis coordinate
of shape ``(n,)``, returning arrays of shape ``(n_voxels,)``.  It must return a boolean
``"fit_ok"`` and put NaN (never raise) where a voxel cannot be fitted.  Per-voxel auxiliary
inputs (a noise map, a reference image, a B0 map...) reach the kernel as keyword arguments of
shape ``(n_voxels,)`` through ``apply_kernel(..., voxel_inputs={name: DataArray})``, flattened
and masked exactly like the rows of ``y``.

:func:`apply_kernel` validates the coordinate and the inputs, flattens any leading dims,
applies the mask, calls the kernel through :func:`xarray.apply_ufunc` with
``dask="parallelized"`` (one task per input chunk, lazily for Dask input), and returns an
:class:`xarray.Dataset` with units in ``attrs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import xarray as xr

from ..compute import apply_blocks
from ..errors import FitInputError

__all__ = ["Output", "apply_kernel", "check_axis"]


@dataclass(frozen=True)
class Output:
    """One output map of a kernel: its name, dtype, and attrs (units, long_name)."""

    name: str
    units: str = ""
    long_name: str = ""
    dtype: type = np.float64


#: fitted-axis dim -> (the unit the kernels take, {other unit spelling: factor to it})
AXIS_UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "te": ("ms", {"ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}),
    "ti": ("ms", {"ms": 1.0, "s": 1e3}),
    "tr": ("ms", {"ms": 1.0, "s": 1e3}),
    "b": ("s/mm^2", {"s/mm^2": 1.0, "s/mm²": 1.0, "s mm-2": 1.0, "s/mm2": 1.0, "ms/um^2": 1e3, "ms/µm²": 1e3,
                     "ms/µm^2": 1e3, "s/m^2": 1e-6, "s/m²": 1e-6}),
    "fa": ("deg", {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "°": 1.0, "rad": 180.0 / np.pi, "radian": 180.0 / np.pi,
                   "radians": 180.0 / np.pi}),
    "t": ("s", {"s": 1.0, "ms": 1e-3, "min": 60.0}),
    "offset": ("ppm", {"ppm": 1.0}),
}


def _unit_factor(units, dim: str, what: str, where: str) -> float:
    """The factor taking the coordinate's ``units`` attribute to the unit the kernels take (1 when absent)."""
    if units is None or dim not in AXIS_UNITS or str(units).strip() == "":
        return 1.0
    want, table = AXIS_UNITS[dim]
    key = str(units).strip()
    if key not in table:
        raise FitInputError(f"{where}{what} ('{dim}') have units {units!r}, which the fit cannot convert to "
                            f"{want!r} (known: {sorted(table)})")
    return table[key]


def check_axis(signal: xr.DataArray, dim: str, *, what: str, allow_zero: bool = True, min_points: int = 2,
               source: str | None = None) -> np.ndarray:
    """Validate the fitted-axis coordinate: present, finite, non-negative, strictly increasing.

    Returns the coordinate as float64 in the unit the kernels take (:data:`AXIS_UNITS`: te/ti/tr in ms,
    b in s/mm², fa in degrees, t in s, offset in ppm): a coordinate whose ``units`` attribute says another
    known unit (``te`` in ``"s"``) is converted, an unknown unit is an error.  ``source`` names the file or
    variable for messages.
    """
    where = f"{source}: " if source else ""
    if not isinstance(signal, xr.DataArray):
        raise FitInputError(f"{where}expected an xarray.DataArray with a '{dim}' dimension, got {type(signal).__name__}")
    if dim not in signal.dims:
        raise FitInputError(f"{where}signal has no '{dim}' dimension ({what}); its dims are {tuple(signal.dims)}")
    if dim not in signal.coords:
        raise FitInputError(f"{where}signal has a '{dim}' dimension but no '{dim}' coordinate giving the {what}")
    try:
        x = np.asarray(signal[dim].values, dtype=float)
    except (TypeError, ValueError) as err:
        raise FitInputError(f"{where}{what} ('{dim}') are not numbers: {err}") from None
    x = x * _unit_factor(signal[dim].attrs.get("units"), dim, what, where)
    if x.size < min_points:
        raise FitInputError(f"{where}need at least {min_points} {what} ('{dim}'), got {x.size}")
    if not np.all(np.isfinite(x)):
        raise FitInputError(f"{where}{what} ('{dim}') contain NaN or Inf: {x.tolist()}")
    if np.any(x < 0) or (not allow_zero and np.any(x == 0)):
        raise FitInputError(f"{where}{what} ('{dim}') must be {'non-negative' if allow_zero else 'positive'}: {x.tolist()}")
    d = np.diff(x)
    if np.any(d == 0):
        raise FitInputError(f"{where}{what} ('{dim}') are duplicated: {x.tolist()}")
    if np.any(d < 0):
        raise FitInputError(f"{where}{what} ('{dim}') are not sorted ascending: {x.tolist()}; "
                            f"sort with signal.sortby('{dim}')")
    return x


def _check_mask(signal: xr.DataArray, mask, dim: str) -> xr.DataArray | None:
    if mask is None:
        return None
    if not isinstance(mask, xr.DataArray):
        mask = np.asarray(mask)
        spatial = [d for d in signal.dims if d != dim]
        if mask.ndim != len(spatial) or mask.shape != tuple(signal.sizes[d] for d in spatial):
            raise FitInputError(f"mask of shape {mask.shape} does not match the signal's voxel shape "
                                f"{tuple(signal.sizes[d] for d in spatial)} (dims {spatial})")
        mask = xr.DataArray(mask, dims=spatial)
    extra = set(mask.dims) - set(signal.dims)
    if extra or dim in mask.dims:
        raise FitInputError(f"mask dims {tuple(mask.dims)} must be a subset of the signal's voxel dims "
                            f"{tuple(d for d in signal.dims if d != dim)}")
    for d in mask.dims:
        if mask.sizes[d] != signal.sizes[d]:
            raise FitInputError(f"mask has {mask.sizes[d]} along '{d}' but the signal has {signal.sizes[d]}")
    return mask.astype(bool)


def _check_voxel_inputs(signal: xr.DataArray, voxel_inputs, dim: str, reserved) -> tuple[dict, dict]:
    """Split ``voxel_inputs`` into scalars (passed as they are) and bare voxel DataArrays.

    A DataArray must have a subset of the signal's voxel dims with the same sizes (and the same
    labels where both carry an index coordinate); an ndarray must have the full voxel shape.
    Non-index coordinates are dropped (the result takes its coordinates from the signal).
    """
    scalars, arrays = {}, {}
    spatial = [d for d in signal.dims if d != dim]
    for name, v in dict(voxel_inputs or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"voxel_inputs keys must be identifiers (kernel keyword names), got {name!r}")
        if name in reserved:
            raise ValueError(f"voxel input {name!r} clashes with a kernel argument of the same name")
        if isinstance(v, xr.Dataset):
            raise FitInputError(f"{name} must be a number or an xarray.DataArray over the signal's voxel dims "
                                f"{tuple(spatial)}, got a Dataset (pick one variable)")
        if not isinstance(v, xr.DataArray):
            if isinstance(v, (bool, int, float, np.number)) or (isinstance(v, np.ndarray) and v.ndim == 0):
                scalars[name] = v.item() if isinstance(v, np.ndarray) else v
                continue
            if not isinstance(v, np.ndarray):
                raise FitInputError(f"{name} must be a number or an xarray.DataArray over the signal's voxel "
                                    f"dims {tuple(spatial)}, got {type(v).__name__}")
            if v.shape != tuple(signal.sizes[d] for d in spatial):
                raise FitInputError(f"{name} of shape {v.shape} does not match the signal's voxel shape "
                                    f"{tuple(signal.sizes[d] for d in spatial)} (dims {tuple(spatial)}); "
                                    f"pass a DataArray to broadcast over some of them")
            v = xr.DataArray(v, dims=spatial)
        if not (np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.bool_)):
            raise FitInputError(f"{name} must be numeric, got dtype {v.dtype}")
        if dim in v.dims:
            raise FitInputError(f"{name} must not have the '{dim}' dimension (the fitted axis; "
                                f"its dims are {tuple(v.dims)})")
        extra = [d for d in v.dims if d not in signal.dims]
        if extra:
            raise FitInputError(f"{name} has dims {extra} that are not voxel dims of the signal {tuple(spatial)}")
        for d in v.dims:
            if v.sizes[d] != signal.sizes[d]:
                raise FitInputError(f"{name} has {v.sizes[d]} along '{d}' but the signal has {signal.sizes[d]}")
            if d in v.indexes and d in signal.indexes and not v.indexes[d].equals(signal.indexes[d]):
                raise FitInputError(f"{name}'s '{d}' labels {list(v.indexes[d])[:6]} differ from the signal's "
                                    f"{list(signal.indexes[d])[:6]}; align it first ({name}.reindex_like(signal))")
        if v.ndim == 0 and v.chunks is None:
            scalars[name] = v.values.item()
            continue
        arrays[name] = xr.DataArray(v.data, dims=v.dims)
    return scalars, arrays


def _chunk_like(v: xr.DataArray, sig: xr.DataArray) -> xr.DataArray:
    """Chunk a voxel input like the signal along its dims (one block if the signal is numpy-backed)."""
    if sig.chunks is not None:
        # the signal's own chunks (sig.chunksizes also looks at dask-backed non-index coords)
        return v.chunk({d: sig.data.chunks[sig.get_axis_num(d)] for d in v.dims})
    if v.chunks is not None:
        return v.chunk({d: -1 for d in v.dims})  # numpy signal = one block: a lazy input comes in one too
    return v


def _matvec_layout(x, w, ax):
    """``(lead, rep, vox)`` when ``sum(|x| * w)`` over the axes ``ax`` is a matrix-vector product, else None.

    That is when ``x`` is C-contiguous (its signs are checked by the caller), the reduced axes are
    the trailing ones, and the (compressed) mask ``w`` is constant (length 1) along the leading reduced
    axes (e.g. the echoes) and has no leading non-reduced extent: then ``x`` viewed as
    ``(lead, rep, vox)`` times the mask as a ``vox`` vector gives the sum.
    """
    nd = x.ndim
    k = len(ax)
    if not x.flags.c_contiguous or k == 0 or tuple(sorted(ax)) != tuple(range(nd - k, nd)) or w.ndim != nd:
        return None
    if any(w.shape[i] != 1 for i in range(nd - k)):
        return None
    red = list(range(nd - k, nd))
    nb = 0  # leading reduced axes along which the mask is constant
    while nb < k and w.shape[red[nb]] == 1:
        nb += 1
    if any(w.shape[i] != x.shape[i] for i in red[nb:]):
        return None
    lead = int(np.prod(x.shape[:nd - k], dtype=np.int64))
    rep = int(np.prod([x.shape[i] for i in red[:nb]], dtype=np.int64))
    vox = int(np.prod([x.shape[i] for i in red[nb:]], dtype=np.int64))
    return lead, rep, vox


def _masked_sum_matvec(x, w, ax, keepdims, dt):
    """``sum(x * w)`` over ``ax`` as one matrix-vector product per chunk (:func:`_matvec_layout`).

    For a magnitude chunk (every value >= 0, so ``|x| = x``) of one scan, ``(echo, voxel) @ mask`` reads
    the chunk once and writes nothing of its size: about a third of the work of ``abs``, a masked copy and a
    sum.  The products are summed in ``x``'s precision by einsum's SIMD loop (several partial sums),
    then over the repeated axis in float64; relative rounding ~1e-6, far below the estimate's own
    statistical error (~1e-3 for 10^6 background samples).  None (the caller's path) when the layout does
    not fit, a value is negative, or the result is not finite (a NaN/Inf anywhere in the chunk).
    """
    shape = _matvec_layout(x, w, ax)
    if shape is None or x.dtype.kind != "f":
        return None
    lead, rep, vox = shape
    with np.errstate(invalid="ignore"):
        if not x.size or not x.min() >= 0:  # negative, or NaN (min is NaN): the general path
            return None
    wv = np.ascontiguousarray(w, dtype=x.dtype).reshape(vox)
    with np.errstate(invalid="ignore", over="ignore"):      # Inf * 0: a NaN total, then the caller's path
        # einsum's own loop, not BLAS: a multi-threaded BLAS call inside each of Dask's threads oversubscribes
        # the cores (measured: 30 % more CPU for the whole pass)
        part = np.einsum("ij,j->i", x.reshape(lead * rep, vox), wv)   # (lead * rep,)
    total = part.reshape(lead, rep).sum(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(total)):
        return None
    out_shape = tuple(1 if i in ax else n for i, n in enumerate(x.shape))
    total = total.astype(dt).reshape(out_shape)
    return total if keepdims else total.reshape(tuple(n for i, n in enumerate(x.shape) if i not in ax))


def _abs_mean_chunk_finite(x, weights, axis, keepdims, dtype):
    """:func:`_abs_mean_chunk` for a chunk without NaN/Inf, in one or two passes over it instead of six; None otherwise.

    A non-negative chunk of one scan with its mask constant over the echoes is summed as one matrix-vector
    product (:func:`_masked_sum_matvec`; equal to the general path to float rounding).  Otherwise
    ``|x| * mask`` is the array :func:`_abs_mean_chunk` sums when every value is finite (``v * 1 = v``,
    ``v * 0 = +0`` for ``v = |x| >= 0``), summed by the same call, so ``total`` has the same bits; a NaN or
    Inf anywhere makes either sum non-finite (``NaN * 0`` is NaN), and then the general path runs.  ``n`` is
    the mask's count along ``axis``, counted on the mask without its broadcast (stride-0) axes and scaled by
    their length: the exact integer that the float sum of the ones gives while every partial sum is exact
    (below ``2**(nmant + 1)``; above, the general path runs).
    """
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        return None
    # Dask's reduction calls the chunk without a dtype: the count is then numpy's integer sum of the booleans
    dt = np.dtype(dtype) if dtype is not None else np.sum(np.ones(1, dtype=bool)).dtype
    ax = tuple(range(x.ndim)) if axis is None else tuple(i % x.ndim for i in np.atleast_1d(axis).tolist())
    if weights is None:
        w = np.ones((1,) * x.ndim, dtype=bool)
        factor = int(np.prod([x.shape[i] for i in ax], dtype=np.int64))
    elif np.asarray(weights).dtype != bool:
        return None
    else:
        w = np.broadcast_to(weights, x.shape)
        flat = tuple(i for i in range(w.ndim) if w.strides[i] == 0 and w.shape[i] > 1)  # broadcast axes
        factor = int(np.prod([w.shape[i] for i in flat if i in ax], dtype=np.int64))
        w = w[tuple(slice(0, 1) if i in flat else slice(None) for i in range(w.ndim))]
    # the sum's dtype: the one asked for, else numpy's default for x (what np.sum(|x|) returns)
    sum_dt = np.dtype(dtype) if dtype is not None else np.sum(np.zeros(1, dtype=x.dtype)).dtype
    total = _masked_sum_matvec(x, w, ax, keepdims, sum_dt) if weights is not None and sum_dt.kind == "f" else None
    if total is None:
        a = np.abs(x)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf/overflow: seen in `total`, then the general path
            if weights is not None:
                np.multiply(a, w.astype(a.dtype), out=a)  # the mask once per voxel, broadcast over the echoes
            total = np.sum(a, axis=axis, dtype=dtype, keepdims=keepdims)
    if not np.all(np.isfinite(total)):
        return None
    count = np.count_nonzero(w, axis=ax, keepdims=True) * factor
    if dt.kind == "f" and count.max(initial=0) >= 2 ** (np.finfo(dt).nmant + 1):
        return None
    n = np.broadcast_to(count, tuple(1 if i in ax else k for i, k in enumerate(x.shape))).astype(dt)
    return {"n": n if keepdims else n.reshape(total.shape), "total": total}


def _abs_mean_chunk(x, weights=None, axis=None, keepdims=True, dtype=None, computing_meta=False, **kwargs):
    """Per-chunk part of :func:`masked_abs_mean`: ``{"n": count, "total": sum}`` of ``|x|`` where finite and masked.

    The dictionary of :func:`dask.array.reductions.mean_chunk` with ``nansum``/``nannumel`` applied to
    ``where(mask & isfinite(|x|), |x|, NaN)``: NaN replaced by 0 is what ``nansum`` sums, so writing the
    zeros straight into ``|x|`` gives the same array (same layout, same order of summation), without the
    NaN-filled copy and the ``isnan`` passes.
    """
    if computing_meta:
        return x
    fast = _abs_mean_chunk_finite(x, weights, axis, keepdims, dtype)
    if fast is not None:
        return fast
    a = np.abs(x)
    keep = np.isfinite(a)
    if weights is not None:
        keep &= weights
    np.copyto(a, a.dtype.type(0), where=~keep)
    return {"n": np.sum(keep, axis=axis, dtype=dtype, keepdims=keepdims),
            "total": np.sum(a, axis=axis, dtype=dtype, keepdims=keepdims)}


def masked_abs_mean(signal: xr.DataArray, mask: xr.DataArray, dims) -> xr.DataArray | None:
    """Mean of ``|signal|`` over ``dims`` where ``mask`` is True and the value finite, one task per chunk.

    ``mean = sum(|S|[mask & finite]) / count(mask & finite)``, per remaining index (e.g. one value per
    ``animal, day`` for a ``(animal, day, te, z, y, x)`` signal and ``dims = (te, z, y, x)``).  The same
    numbers, to the bit, as ``abs(signal).where(mask & isfinite(abs(signal))).mean(dims, skipna=True)``
    (Dask's ``nanmean``: per-chunk sums in the mean's dtype, then the same tree aggregation), but each
    chunk of the signal is read once by one task instead of by a chain of full-size NaN-filled copies.

    Returns ``None`` (the caller then takes the general xarray path) unless ``signal`` is Dask-backed
    floating point, ``mask`` and ``dims`` are on the signal's dims, and every index the two share is equal
    (no alignment to do).
    """
    if signal.chunks is None or not np.issubdtype(signal.dtype, np.floating):
        return None
    dims = [dims] if isinstance(dims, str) else list(dims)
    if not set(mask.dims) <= set(signal.dims) or not set(dims) <= set(signal.dims) or not dims:
        return None
    for d in mask.dims:
        if (d in mask.indexes) != (d in signal.indexes):
            return None
        if d in mask.indexes and not mask.indexes[d].equals(signal.indexes[d]):
            return None
    from functools import partial

    import dask.array as da
    from dask.array import chunk as dchunk
    from dask.array.reductions import mean_agg, mean_combine, nannumel

    axes = tuple(signal.get_axis_num(d) for d in dims)
    m = mask.transpose(*[d for d in signal.dims if d in mask.dims]).data
    m = m[tuple(slice(None) if d in mask.dims else None for d in signal.dims)]
    dtype = np.mean(np.ones(1, dtype=signal.dtype)).dtype
    data = da.reduction(signal.data, _abs_mean_chunk, mean_agg, axis=axes, keepdims=False, dtype=dtype,
                        weights=m, concatenate=False, name="background-mean",
                        combine=partial(mean_combine, sum=dchunk.nansum, numel=nannumel))
    out_dims = [d for d in signal.dims if d not in dims]
    coords = {k: c for k, c in signal.coords.items() if set(c.dims) <= set(out_dims)}
    coords.update({k: c for k, c in mask.coords.items() if k not in coords and set(c.dims) <= set(out_dims)})
    return xr.DataArray(data, dims=out_dims, coords=coords)


def _gather_rows(y: np.ndarray, sel: np.ndarray, every: bool, idx: np.ndarray | None = None, *,
                 voxels_contiguous: bool = False) -> np.ndarray:
    """The voxels ``sel`` of a block ``y`` (fitted axis last) as float64 rows ``(n_sel, n)``.

    ``idx``: ``np.flatnonzero(sel)``, when the caller has it.

    A block that :func:`studylib.compute.apply_blocks` hands over is a transposed view of the stored scan
    (fitted axis first in memory): the selected voxels are then gathered one contiguous image at a time
    (``n`` gathers of ``n_sel`` values) and only those widened to float64, never a copy of the whole block.
    The rows are the same values in the same order as widening the whole block first.  ``voxels_contiguous``:
    those rows as the transposed view of an ``(n, n_sel)`` array (each sample's voxels contiguous in memory), for a
    kernel that works in that layout (:func:`studylib.models.relaxometry.fit_monoexp` transposes to it first: a
    transposing float64 copy costs ~0.2 ms for a scan's 16k tumour voxels, 12 echoes).
    """
    n = y.shape[-1]
    if every:
        return np.asarray(y, dtype=np.float64).reshape(-1, n)
    first = np.moveaxis(y, -1, 0)
    if first.flags.c_contiguous:
        idx = np.flatnonzero(sel) if idx is None else idx
        picked = np.take(first.reshape(n, -1), idx, axis=1)  # (n, n_sel); take: half the time of [:, idx]
        return picked.astype(np.float64).T if voxels_contiguous else picked.T.astype(np.float64, order="C")
    return y[sel.reshape(y.shape[:-1])].astype(np.float64)


class _KernelBlock:
    """One block through the kernel: the masked voxels gathered as rows, the outputs scattered back to full maps.

    ``(y, [mask], *voxel_inputs) -> tuple of maps`` with ``y`` of shape ``lead + (n,)``.  A module-level class,
    not a closure, so a distributed scheduler pickles it by reference (:class:`studylib.compute._UnwrapBlocks`).
    A kernel with the attribute ``voxels_contiguous = True`` gets its rows in that layout (:func:`_gather_rows`).
    """

    __slots__ = ("kernel", "outputs", "x", "kw", "vnames", "has_mask")

    def __init__(self, kernel, outputs, x, kw, vnames, has_mask):
        self.kernel, self.outputs, self.x, self.kw = kernel, outputs, x, kw
        self.vnames, self.has_mask = vnames, has_mask

    def __call__(self, y, *extra):
        lead = y.shape[:-1]
        n_vox = int(np.prod(lead, dtype=np.int64))
        m = extra[0] if self.has_mask else None
        sel = np.ones(n_vox, dtype=bool) if m is None else np.broadcast_to(m, lead).reshape(-1).astype(bool)
        every = bool(sel.all())
        # the masked voxels' positions, found once: gathering and scattering by index reads the mask once, not
        # once per output map (a boolean-mask assignment scans all of it: ~55 us per map of a 128x128x20 scan)
        idx = None if every else np.flatnonzero(sel)
        some = every or idx.size > 0
        res = {}
        if some:
            vkw = {}
            for name, v in zip(self.vnames, extra[int(self.has_mask):]):
                v = np.broadcast_to(np.asarray(v), lead).reshape(-1)
                vkw[name] = np.ascontiguousarray(v) if every else v[idx]
            rows = _gather_rows(np.asarray(y), sel, every, idx,
                                voxels_contiguous=getattr(self.kernel, "voxels_contiguous", False))
            res = self.kernel(rows, self.x, **self.kw, **vkw)
        outs = []
        for o in self.outputs:
            if o.dtype is bool or o.dtype is np.bool_:
                full = np.zeros(n_vox, dtype=bool)
            else:
                full = np.full(n_vox, np.nan, dtype=o.dtype)
            if some:
                full[slice(None) if every else idx] = res[o.name]
            outs.append(full.reshape(lead))
        return tuple(outs)


def apply_kernel(
    kernel: Callable[..., Mapping[str, np.ndarray]],
    signal: xr.DataArray,
    dim: str,
    outputs: list[Output],
    *,
    x: np.ndarray | None = None,
    mask=None,
    kernel_kwargs: Mapping | None = None,
    attrs: Mapping | None = None,
    voxel_inputs: Mapping[str, xr.DataArray | float] | None = None,
) -> xr.Dataset:
    """Apply a voxelwise fitting kernel over every voxel of ``signal`` along ``dim``.

    Parameters
    ----------
    kernel : callable ``(y[n_vox, n], x[n], **kernel_kwargs) -> {name: array[n_vox]}``.
    signal : DataArray with ``dim`` and any other (voxel) dims, numpy- or Dask-backed.
    dim : fitted dimension name (``te``, ``b``, ``t``, ``fa``, ``offset``...).
    outputs : the maps the kernel returns, in order; must include ``fit_ok`` (bool).
    x : the validated coordinate (default: ``signal[dim]`` as float).
    mask : optional boolean DataArray (or array of the voxel shape); voxels outside are NaN
        with ``fit_ok=False`` and are not passed to the kernel.
    kernel_kwargs : extra keyword arguments for the kernel (numpy arrays, scalars), the same for
        every voxel.
    attrs : attrs of the returned Dataset (method, references...).
    voxel_inputs : per-voxel auxiliary inputs ``{name: DataArray or number}`` (a noise-sigma map,
        an m0 image, a B0 map...).  A DataArray's dims must be a subset of the signal's voxel
        dims, with the same sizes (a per-``animal`` value, a per-``(animal, day)`` value, a full
        map...); it is broadcast over the other voxel dims, chunked like the signal for Dask
        input, flattened and masked exactly like the rows of ``y``, and handed to the kernel as
        the keyword ``name`` of shape ``(n_vox,)`` (its own dtype; NaN is passed through, the
        kernel decides).  Numbers (and 0-d numpy DataArrays) are passed as they are.  An ndarray
        must have the full voxel shape.  A mismatch raises :class:`FitInputError` naming the input.

    Returns
    -------
    Dataset with one variable per output, dims = the signal's dims without ``dim``.
    Dask input gives Dask output (nothing computed).
    """
    if x is None:
        x = np.asarray(signal[dim].values, dtype=float)
    names = [o.name for o in outputs]
    if "fit_ok" not in names:
        raise ValueError("kernel outputs must include 'fit_ok'")
    if not np.issubdtype(signal.dtype, np.number):
        raise FitInputError(f"signal must be numeric, got dtype {signal.dtype}")
    if np.iscomplexobj(signal.dtype.type(0)):
        raise FitInputError("signal is complex; fit magnitude images (abs) instead")
    if signal.chunks is None:
        vals = np.asarray(signal.values)
        if vals.size and not np.any(np.isfinite(vals)):
            raise FitInputError(f"signal is all NaN/Inf (dims {tuple(signal.dims)}); nothing to fit")
    mask_da = _check_mask(signal, mask, dim)
    kw = dict(kernel_kwargs or {})
    scalars, vin = _check_voxel_inputs(signal, voxel_inputs, dim, set(kw) | {"x", "y"})
    kw.update(scalars)
    vnames = list(vin)
    has_mask = mask_da is not None

    _block = _KernelBlock(kernel, tuple(outputs), x, kw, tuple(vnames), has_mask)
    if signal.chunks is not None:  # Dask: each block handed to the kernel as stored (apply_blocks aligns the inputs)
        sig = signal.chunk({dim: -1})
        dask_args = [sig] + ([mask_da] if mask_da is not None else []) + list(vin.values())
        results = apply_blocks(_block, *dask_args, core_dims=[[dim]] + [[] for _ in dask_args[1:]],
                               out_dtypes=[o.dtype for o in outputs], name="fit-" + getattr(kernel, "__name__", "kernel"))
        return _dataset(outputs, results, attrs)
    args = [signal] + ([mask_da] if mask_da is not None else []) + [_chunk_like(v, signal) for v in vin.values()]
    core = [[dim]] + [[] for _ in args[1:]]
    results = xr.apply_ufunc(
        _block,
        *args,
        input_core_dims=core,
        output_core_dims=[[] for _ in outputs],
        dask="parallelized",
        output_dtypes=[o.dtype for o in outputs],
        vectorize=False,
    )
    if not isinstance(results, tuple):
        results = (results,)
    return _dataset(outputs, results, attrs)


def _dataset(outputs, results, attrs) -> xr.Dataset:
    """The kernel's output maps as a Dataset, each with its units and long name."""
    ds = xr.Dataset()
    for o, r in zip(outputs, results):
        r.attrs = {k: v for k, v in (("units", o.units), ("long_name", o.long_name)) if v}
        ds[o.name] = r
    ds.attrs.update(attrs or {})
    return ds
