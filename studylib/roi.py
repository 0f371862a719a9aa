"""ROI statistics: per animal x day x ROI label x map, as tidy pandas tables.

Pure numpy kernels at the bottom (:func:`roi_stats_kernel`, :func:`roi_hist_kernel`: voxels on
the last axis, any leading axes, no xarray) and thin xarray/dask adapters above
(:func:`summarize`, :func:`histograms`, :func:`volumes`).  Dask-backed maps stay lazy until
one ``compute`` of the whole (small) result: every scan is reduced in its own task, never
one task per animal or per label; and when the maps are lazy, each scan's whole chain (read, noise
estimate, fit, reduction) runs as that one task (:func:`_fuse_blocks`), the maps never held in full.

Voxel-count columns: ``n_voxels`` (voxels carrying the label, what the volume counts),
``n_used`` (voxels entering the statistics: ``fit_ok`` and finite), ``n_excluded``
(label voxels with ``fit_ok=False``), ``n_nonfinite`` (``fit_ok`` voxels whose value is
NaN/Inf).  Units: ``volume_mm3`` carries its unit in the name; the map statistics
(``mean, sd, median, p10, ...``) are in the map's unit, given per row in the ``units``
column (from the variable's ``attrs["units"]``), because one tidy table holds maps of
different units; ``frac_above_<thr>`` is a fraction (0-1) of ``n_used``.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .compute import active_client, apply_blocks, fused_task, paused_gc
from .errors import RoiError, RoiWarning

__all__ = ["RoiError", "RoiWarning", "summarize", "histograms", "volumes", "roi_stats_kernel", "roi_hist_kernel",
           "DEFAULT_LABELS", "tumour_rim_core", "label_mask"]

#: ROI label values of the data contract (docs/conventions.md)
DEFAULT_LABELS = {1: "tumour"}
_ID_DIMS = ("animal", "day")


# ---------------------------------------------------------------------- numpy kernels
def _stat_names(percentiles, thr_values) -> list[str]:
    return (["n_voxels", "n_used", "n_excluded", "n_nonfinite", "mean", "sd", "median", "min", "max"]
            + [f"p{p:g}" for p in percentiles] + [f"frac_above_{t:g}" for t in thr_values])


def roi_stats_kernel(values: np.ndarray, fit_ok: np.ndarray, labels_map: np.ndarray, label_values: Sequence[int],
                     percentiles: Sequence[float], thresholds: np.ndarray) -> np.ndarray:
    """Statistics of every variable inside every label.

    Parameters
    ----------
    values : (..., n_var, n_vox) map values, or a list of ``n_var`` arrays (..., n_vox) (not stacked).
    fit_ok : (..., n_vox) bool; False voxels are excluded (counted in ``n_excluded``).
    labels_map : (..., n_vox) integer (or float with NaN) label image.
    label_values : the labels to summarise.
    percentiles : in [0, 100].
    thresholds : (n_var, n_thr) thresholds (NaN where a variable has none); the fraction of
        used voxels with ``value > threshold``.

    Returns
    -------
    (..., n_label, n_var, n_stat) float array in the order of :func:`_stat_names`
    (``sd`` with ``ddof=1``; NaN statistics where no voxel is used).

    Notes
    -----
    With ``U`` the used voxels of a row (label, ``fit_ok``, finite) and ``n = |U|``:
    ``mean = sum_U v / n`` and ``sd = sqrt(sum_U (v - mean)^2 / (n - 1))`` (two passes, numpy's pairwise
    sums over the gathered values: the numbers of :func:`numpy.nanmean` / :func:`numpy.nanstd` of the
    NaN-masked row, to rounding); the median, percentiles (linear interpolation, Hyndman & Fan 1996 type 7),
    min, max and threshold fractions are taken from the gathered values of ``U``.  The voxels of the
    requested labels are found in one pass over the label image and only those are read afterwards: a
    tumour of a few thousand voxels in a scan of a few hundred thousand costs the tumour, not the scan.
    """
    if isinstance(values, (list, tuple)):  # one (..., n_vox) array per variable: no stacked copy of the maps
        per_var = [np.asarray(v) for v in values]
    else:
        values = np.asarray(values)
        per_var = [values[..., j, :] for j in range(values.shape[-2])]
    fit_ok = np.asarray(fit_ok, dtype=bool)
    labels_map = np.asarray(labels_map)
    lead = np.broadcast_shapes(*(v.shape[:-1] for v in per_var))
    nv, n = len(per_var), per_var[0].shape[-1]
    pct = np.asarray(list(percentiles), dtype=float)
    qv = np.true_divide(pct, 100)  # as numpy.percentile
    thr = np.asarray(thresholds, dtype=float).reshape(nv, -1)
    nthr = thr.shape[1]
    nl = len(label_values)
    flat_v = [np.broadcast_to(v, lead + (n,)).reshape(-1, n) for v in per_var]   # per variable: rows = lead
    rows = flat_v[0].shape[0] * nv                                   # output rows = (lead..., variable)
    ok_any = np.broadcast_to(fit_ok, lead + (n,)).reshape(-1, n)     # one row per lead index
    flat_l = np.broadcast_to(labels_map, lead + (n,)).reshape(-1, n)
    out = np.full((rows, nl, 9 + pct.size + nthr), np.nan)
    wanted = np.asarray(list(label_values))
    for i in range(flat_l.shape[0]):
        inside = np.flatnonzero(_in_labels(flat_l[i], wanted))       # voxels of any requested label
        sub_l = flat_l[i][inside]
        sub_ok = ok_any[i][inside]
        sub_v = np.stack([fv[i][inside] for fv in flat_v]).astype(np.float64, copy=False)   # (nv, n_inside)
        finite = np.isfinite(sub_v)
        for li, lab in enumerate(label_values):
            inl = sub_l == lab
            n_vox = np.count_nonzero(inl)
            inok = inl & sub_ok
            n_ok = np.count_nonzero(inok)
            for j in range(nv):
                o = out[i * nv + j, li]
                use = np.flatnonzero(inok & finite[j])
                nuse = use.size
                o[:4] = (n_vox, nuse, n_vox - n_ok, n_ok - nuse)
                if nuse == 0:
                    continue
                g = sub_v[j, use]
                avg = np.sum(g) / nuse
                o[4] = avg
                if nuse > 1:
                    d = g - avg
                    o[5] = np.sqrt(np.sum(d * d) / (nuse - 1))
                o[6], o[7], o[8] = _order_stats(g, qv, o[9:9 + pct.size])  # g is reordered (sums taken)
                if nthr:
                    t = thr[j]
                    frac = (g[:, None] > t[None, :]).sum(0) / nuse
                    o[9 + pct.size:] = np.where(np.isfinite(t), frac, np.nan)
    return np.moveaxis(out.reshape(lead + (nv, nl, out.shape[-1])), -2, -3).copy()


def _in_labels(labels: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``numpy.isin(labels, wanted)``; for 8- and 16-bit integer labels by one lookup per voxel in a table of the
    dtype's whole range (a label image is int16 or uint8: 0.1-0.25 ms for 330k voxels, ``isin`` 0.5-3 ms)."""
    if labels.dtype.kind in "iu" and labels.dtype.itemsize <= 2 and wanted.dtype.kind in "iu":
        raw = labels.view(np.dtype(f"u{labels.dtype.itemsize}"))     # two's complement: -1 -> 65535
        table = np.zeros(1 << (8 * labels.dtype.itemsize), dtype=bool)
        w = wanted[(wanted >= np.iinfo(labels.dtype).min) & (wanted <= np.iinfo(labels.dtype).max)]
        table[w.astype(labels.dtype).view(raw.dtype)] = True
        return table.take(raw)
    return np.isin(labels, wanted)


def label_mask(roi: xr.DataArray, labels) -> xr.DataArray:
    """True where a voxel of the label image ``roi`` carries one of ``labels``: ``roi.isin(labels)``, the same booleans.

    Lazy (one task per chunk) when ``roi`` is Dask-backed.  An 8- or 16-bit label image is looked up in a table of
    its dtype's range (:func:`_in_labels`: ~0.15 ms for a 128 x 128 x 20 scan where ``isin`` takes ~0.6 ms); any other
    dtype goes through :func:`numpy.isin`.  Name, dims, coordinates and attributes are the ROI's, as ``isin`` keeps them.
    """
    wanted = np.asarray(labels if isinstance(labels, np.ndarray) else list(labels)).ravel()
    if roi.chunks is None:
        data = _in_labels(np.asarray(roi.data), wanted)
    else:
        data = roi.data.map_blocks(_in_labels, wanted, dtype=bool, token="label-mask")
    return roi.copy(data=data)


def _order_stats(g: np.ndarray, qv: np.ndarray, out_pct: np.ndarray) -> tuple[float, float, float]:
    """Median, minimum and maximum of ``g``, and its quantiles ``qv`` written into ``out_pct``: one partition.

    ``g`` : 1-D float64, finite, at least one value; partitioned in place.  ``qv`` : quantiles in [0, 1].

    The numbers of :func:`numpy.median`, ``min``, ``max`` and :func:`numpy.percentile` (``method="linear"``,
    Hyndman & Fan type 7) to the bit, from a single :meth:`numpy.ndarray.partition` at every order statistic
    they read, instead of one partition per call and numpy's per-call bookkeeping (~40 us each: the ROI
    statistics of a scan make a few dozen such calls).  Type 7: virtual index ``v = (n - 1) q``, ``i = floor(v)``,
    ``t = v - i``, value ``a + (b - a) t`` with ``a, b`` the ``i``-th and ``(i+1)``-th order statistics (both the
    maximum where ``v >= n - 1``), taken as ``b - (b - a)(1 - t)`` where ``t >= 0.5`` (numpy's ``_lerp``); the
    median of an even count is ``(a + b) / 2`` of the two middle order statistics.  Reference: Hyndman & Fan
    (1996), Sample quantiles in statistical packages, Am. Stat. 50(4):361-365.
    """
    n = g.size
    last = n - 1
    virt = last * qv
    lo = np.floor(virt)
    top = virt >= last  # numpy takes the maximum there (index -1)
    lo_i = np.where(top, last, lo).astype(np.intp)
    hi_i = np.where(top, last, lo + 1).astype(np.intp)
    half = n // 2
    kth = np.unique(np.concatenate(([0, last, half, max(half - 1, 0)], lo_i, hi_i)))
    g.partition(kth)
    med = g[half] if n % 2 else (g[half - 1] + g[half]) / 2.0
    if qv.size:
        a, b = g[lo_i], g[hi_i]
        gamma = virt - np.where(top, -1.0, lo)
        diff = b - a
        res = a + diff * gamma
        np.subtract(b, diff * (1 - gamma), out=res, where=gamma >= 0.5)
        out_pct[:] = res
    return med, g[0], g[last]


def roi_hist_kernel(values: np.ndarray, fit_ok: np.ndarray, labels_map: np.ndarray, label_values: Sequence[int],
                    edges: np.ndarray) -> np.ndarray:
    """Histogram counts of one variable inside every label.

    ``values``, ``fit_ok``, ``labels_map``: (..., n_vox); ``edges``: (n_bins + 1,) increasing.
    Bins are half-open ``[e_i, e_i+1)`` except the last, which includes its right edge
    (numpy's convention); values outside the edges are not counted.
    Returns (..., n_label, n_bins) counts as float.
    """
    values = np.asarray(values, dtype=np.float64)
    lead = values.shape[:-1]
    nl_, nb = len(label_values), len(edges) - 1
    flat_v = values.reshape(-1, values.shape[-1])
    flat_ok = np.asarray(fit_ok, dtype=bool).reshape(flat_v.shape) & np.isfinite(flat_v)
    flat_l = np.asarray(labels_map).reshape(flat_v.shape)
    b = np.searchsorted(edges, flat_v, side="right") - 1
    b = np.where(flat_v == edges[-1], nb - 1, b)
    inrange = (b >= 0) & (b < nb)
    out = np.zeros((flat_v.shape[0], nl_, nb))
    rows = np.broadcast_to(np.arange(flat_v.shape[0])[:, None], flat_v.shape)
    for li, lab in enumerate(label_values):
        sel = flat_ok & inrange & (flat_l == lab)
        idx = rows[sel] * nb + b[sel]
        out[:, li, :] = np.bincount(idx, minlength=flat_v.shape[0] * nb).reshape(flat_v.shape[0], nb)
    return out.reshape(lead + (nl_, nb))


# ---------------------------------------------------------------------- xarray adapters
def _as_dataset(maps) -> xr.Dataset:
    if isinstance(maps, xr.DataArray):
        return maps.to_dataset(name=maps.name if maps.name is not None else "value")
    if isinstance(maps, xr.Dataset):
        return maps
    raise RoiError(f"maps must be an xarray Dataset or DataArray, got {type(maps).__name__}")


def _check_labels(labels) -> dict[int, str]:
    if not isinstance(labels, Mapping) or not labels:
        raise RoiError(f"labels must be a non-empty mapping {{label value: name}}, e.g. {{1: 'tumour'}}, got {labels!r}")
    out = {}
    for k, v in labels.items():
        try:
            ki = int(k)
        except (TypeError, ValueError):
            raise RoiError(f"label value {k!r} is not an integer") from None
        if ki != k and not (isinstance(k, str) and str(ki) == k):
            raise RoiError(f"label value {k!r} is not an integer")
        out[ki] = str(v)
    return out


def _layout(ds: xr.Dataset, roi: xr.DataArray, variables):
    if not isinstance(roi, xr.DataArray):
        raise RoiError(f"roi must be an xarray DataArray of integer labels, got {type(roi).__name__}")
    id_dims = [d for d in _ID_DIMS if d in roi.dims]
    spatial = [d for d in roi.dims if d not in _ID_DIMS]
    if not spatial:
        raise RoiError(f"roi has no spatial dims (dims {roi.dims}); expected e.g. ('animal', 'day', 'z', 'y', 'x')")
    if not (np.issubdtype(roi.dtype, np.integer) or np.issubdtype(roi.dtype, np.floating)):
        raise RoiError(f"roi must hold integer labels, got dtype {roi.dtype}")
    allowed = set(id_dims) | set(spatial)
    if variables is None:
        variables = [v for v, da in ds.data_vars.items()
                     if v != "fit_ok" and np.issubdtype(da.dtype, np.number) and not np.issubdtype(da.dtype, np.bool_)
                     and set(da.dims) <= allowed and set(spatial) <= set(da.dims)]
        if not variables:
            raise RoiError(f"maps have no numeric variable on the roi grid {tuple(roi.dims)}; "
                           f"variables: {{{', '.join(f'{k}: {v.dims}' for k, v in ds.data_vars.items())}}}")
    else:
        variables = [variables] if isinstance(variables, str) else list(variables)
        for v in variables:
            if v not in ds.data_vars:
                raise RoiError(f"variable {v!r} is not in maps (variables {list(ds.data_vars)})")
            da = ds[v]
            if not np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_):
                raise RoiError(f"variable {v!r} is not numeric (dtype {da.dtype})")
            if not set(da.dims) <= allowed or not set(spatial) <= set(da.dims):
                raise RoiError(f"variable {v!r} has dims {da.dims}; it must be on the roi grid {tuple(roi.dims)}")
    for d in spatial:
        for v in variables:
            if ds[v].sizes[d] != roi.sizes[d]:
                raise RoiError(f"variable {v!r} has {ds[v].sizes[d]} voxels along '{d}' but roi has {roi.sizes[d]}")
    return id_dims, spatial, variables


def _voxel_volume(ds, roi, voxel_volume_mm3) -> float:
    if voxel_volume_mm3 is not None:
        vv = float(voxel_volume_mm3)
        if not (np.isfinite(vv) and vv > 0):
            raise RoiError(f"voxel_volume_mm3 must be a positive number, got {voxel_volume_mm3!r}")
        return vv
    for src in (ds.attrs, roi.attrs):
        if "voxel_size_mm" in src:
            vs = np.asarray(src["voxel_size_mm"], dtype=float)
            if vs.size == 3 and np.all(vs > 0):
                return float(np.prod(vs))
    raise RoiError("voxel volume unknown: pass voxel_volume_mm3 or give maps/roi attrs['voxel_size_mm'] = (x, y, z)")


def _stack(ds, roi, variables, id_dims, spatial):
    """([(*id, *spatial) values per variable], (*id, *spatial) fit_ok, roi) -- aligned, spatial in one chunk.

    The variables stay separate arrays (the kernel stacks each block in numpy): a concatenation along a new
    ``variable`` dim would add stack, concatenate and rechunk tasks per scan and break the fusion of the
    read, fit and statistics of one scan into one task chain.
    """
    order = id_dims + spatial
    vals = [ds[v].astype("float64").broadcast_like(roi).transpose(*order) for v in variables]
    if "fit_ok" in ds.data_vars:
        ok = ds["fit_ok"].astype(bool).broadcast_like(roi).transpose(*order)
    else:
        ok = xr.ones_like(roi, dtype=bool).transpose(*order)
    lab = roi.transpose(*order)
    if any(a.chunks is not None for a in (*vals, ok, lab)):
        sp = {d: -1 for d in spatial}
        vals = [v.chunk(sp) for v in vals]
        ok = ok.chunk(sp)
        lab = lab.chunk(sp)
    return vals, ok, lab


def _meta(ds, roi, id_dims):
    """The (possibly lazy) ``group`` and ``acquired`` coordinates, to compute with the result."""
    group = acq = None
    for src in (ds, roi):
        if group is None and "group" in src.coords and "animal" in id_dims and src["group"].dims == ("animal",):
            group = src["group"]
        if acq is None and "acquired" in src.coords and set(src["acquired"].dims) <= set(id_dims):
            acq = src["acquired"]
    return group, acq


class _StatsBlock:
    """:func:`roi_stats_kernel` on one block: ``(*maps, fit_ok, labels)``, each ``(..., *spatial)``, flattened.

    A module-level class, not a closure, so a distributed scheduler pickles it by reference
    (:class:`studylib.compute._UnwrapBlocks`).  ``as_tuple``: return ``(result,)`` (``apply_blocks``'s outputs).
    """

    __slots__ = ("n_spatial", "label_values", "pct", "thr", "as_tuple")

    def __init__(self, n_spatial, label_values, pct, thr, as_tuple=False):
        self.n_spatial, self.label_values, self.pct, self.thr = n_spatial, label_values, pct, thr
        self.as_tuple = as_tuple

    def _flat(self, a):  # (..., *spatial) -> (..., n_vox); a copy only where the block is not contiguous
        return a.reshape(a.shape[:a.ndim - self.n_spatial] + (-1,))

    def __call__(self, *arrays):
        *vs, f, lm = arrays
        out = roi_stats_kernel([self._flat(v) for v in vs], self._flat(f), self._flat(lm), self.label_values,
                               self.pct, self.thr)
        return (out,) if self.as_tuple else out


#: ``dask.config`` key: False turns off :func:`_fuse_blocks` (one task per scan) -- for profiling by task kind
FUSE_CONFIG = "studylib.fuse_blocks"


#: independent inputs a one-scan block of the statistics starts from: the scan and its ROI file
_ROOTS_PER_SCAN = 2


def _fuse_blocks(arr, *, max_roots: int = _ROOTS_PER_SCAN):
    """``arr`` with each output block's own ancestry fused into one Dask task (non-Dask input returned as is).

    A block of the ROI statistics of a study loaded one chunk per scan depends on one scan: its read, the
    background noise SD, the masked fit, the map selections and the reduction form a chain of about 25 small
    tasks that no other block needs.  Run as 25 tasks they cost the scheduler more than the work of the
    smaller ones (about 2.5 ms per task on a distributed cluster), and the scan's data may move between
    workers; fused, each scan is one task, read, fitted and reduced where it runs.  The tasks are those only
    this block depends on (found by walking the optimised graph up from every output key); tasks that several
    blocks share (the NaN fill of the missing scans, constants) stay separate and become inputs of the fused
    ones.  The same functions run in a dependency order on the same inputs (:func:`studylib.compute.fused_task`,
    intermediates freed as soon as used), so the numbers are the same bits.

    A block whose own tasks start from more than ``max_roots`` independent inputs (several scans in one
    chunk; a scan and its ROI file are two) is left unfused, so its inputs can still be read in parallel.
    Under a distributed client :func:`_compute_all` may first put two scans in each block
    (:func:`_scans_per_task`) and raise ``max_roots`` to match: their chains then run one after the other.
    ``dask.config.set({FUSE_CONFIG: False})`` turns the fusion off.  Under a distributed client each fused
    task's body travels as bytes pickled once (``fused_task(packed=True)``).
    """
    import dask

    if not hasattr(arr, "__dask_graph__") or not dask.config.get(FUSE_CONFIG, True):
        return arr
    from dask.core import flatten

    keys = list(flatten(arr.__dask_keys__()))
    if len(keys) < 2:
        return arr
    with paused_gc():
        return _fuse_graph(arr, keys, max_roots)


def _fuse_graph(arr, keys, max_roots):
    """The body of :func:`_fuse_blocks` for the output ``keys`` of ``arr``."""
    import dask
    import dask.array as da
    from dask._task_spec import convert_legacy_graph
    from dask.highlevelgraph import HighLevelGraph

    packed = active_client() is not None
    # Dask's own optimisation without its linear fusion (``optimization.fuse.active``): the chains it would
    # fuse are each inside one scan's ancestry, fused here whole (a third of the optimisation's time)
    with dask.config.set({"optimization.fuse.active": False}):
        dsk = convert_legacy_graph(dict(arr.__dask_optimize__(arr.__dask_graph__(), keys)))
    shared = object()
    owner: dict = {}
    for out in keys:  # owner[k]: the one output whose ancestry holds k, or `shared`
        todo = [out]
        while todo:
            k = todo.pop()
            prev = owner.get(k)
            if prev is shared or (prev is not None and prev == out):
                continue
            owner[k] = out if prev is None else shared
            todo.extend(dsk[k].dependencies)
    groups: dict = {out: [] for out in keys}
    new = {}
    for k, o in owner.items():
        if o is shared:
            new[k] = dsk[k]
        else:
            groups[o].append(k)
    for out, members in groups.items():
        inside = set(members)
        roots = sum(1 for k in members if not (dsk[k].dependencies & inside))
        if len(members) > 1 and roots <= max_roots:
            new[out] = fused_task(dsk, members, out, packed=packed)
        else:
            new.update({k: dsk[k] for k in members})
    graph = HighLevelGraph.from_collections(arr.name, new, dependencies=())
    return da.Array(graph, arr.name, arr.chunks, meta=arr._meta)


#: ``dask.config`` key: scans per fused task, ``"auto"`` (default, see :func:`_scans_per_task`) or an int >= 1
SCANS_PER_TASK_CONFIG = "studylib.scans_per_task"


def _scans_per_task(n_scans: int, client) -> int:
    """How many scans one fused task of the statistics pass runs (:data:`SCANS_PER_TASK_CONFIG`).

    ``"auto"``: 2 under a distributed client when the study has at least 16 scans per worker thread, else 1.
    A distributed task costs CPU outside the task itself -- the scheduler's transitions and messages, the
    worker's event loop receiving, starting and reporting it: ~2 ms each in the scheduler and in the worker
    per task, measured on the 1x end-to-end study (240 scans, ~40 ms of work each), on the cores the tasks
    run on when the workers fill the machine.  Two scans per task halve that; with at least 16 scans per
    thread every thread still gets 8 tasks or more, so the wait for the last one stays short.  The threaded
    scheduler costs ~0.1 ms per task: one scan per task.
    """
    import dask

    setting = dask.config.get(SCANS_PER_TASK_CONFIG, "auto")
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise RoiError(f"dask config {SCANS_PER_TASK_CONFIG!r} must be 'auto' or an integer >= 1, "
                           f"got {setting!r}")
        return setting
    if client is None:
        return 1
    threads = sum(client.nthreads().values()) or 1
    return 2 if n_scans >= 16 * threads else 1


def _coarsen_scans(res: xr.DataArray, id_dims, k: int) -> tuple[xr.DataArray, int]:
    """``res`` with ``k`` scans per block along its last id dim of length >= 2, and the fusion's root limit.

    Only where every block holds one scan (one chunk per scan along the id dims); otherwise ``res`` as is.
    A block of ``k`` scans starts from ``k`` times :data:`_ROOTS_PER_SCAN` independent reads.
    """
    along = [d for d in id_dims if res.sizes[d] >= 2]
    chunks = dict(zip(res.dims, res.data.chunks))  # the data's own (coordinates may be chunked otherwise)
    if k < 2 or not along or any(c != 1 for d in id_dims for c in chunks[d]):
        return res, _ROOTS_PER_SCAN
    return res.copy(data=res.data.rechunk({res.dims.index(along[-1]): k})), k * _ROOTS_PER_SCAN


def _compute_all(res, ds, roi, id_dims):
    """One dask pass for the statistics and the coordinates they are labelled with (one task per scan, or per
    :func:`_scans_per_task` scans under a distributed client)."""
    import dask

    group, acq = _meta(ds, roi, id_dims)
    if res.chunks is not None:
        n_scans = int(np.prod([res.sizes[d] for d in id_dims])) if id_dims else 1
        res, max_roots = _coarsen_scans(res, id_dims, _scans_per_task(n_scans, active_client()))
        res = res.copy(data=_fuse_blocks(res.data, max_roots=max_roots))
    res, group, acq = dask.compute(res, group, acq)
    return res, group, acq


def _coord_frame(res: xr.DataArray, group, acq, id_dims) -> pd.DataFrame:
    """Rows for every id combination with group and acquired columns."""
    idx = pd.MultiIndex.from_product([res[d].values for d in id_dims], names=id_dims) if id_dims else None
    base = pd.DataFrame(index=idx).reset_index() if idx is not None else pd.DataFrame(index=[0])
    if "animal" in base:
        gmap = dict(zip(group["animal"].values, group.values)) if group is not None else None
        base.insert(1, "group", base["animal"].map(gmap) if gmap else None)
    if acq is not None:
        target = res.isel({d: 0 for d in res.dims if d not in id_dims}, drop=True)
        acq = acq.broadcast_like(target)
        base["acquired"] = np.asarray(acq.transpose(*id_dims).values, dtype=bool).reshape(-1)
    else:
        base["acquired"] = True
    return base


def _report_empty(tab: pd.DataFrame, id_dims, empty: str):
    if empty == "ignore":
        return
    sel = tab[tab["acquired"] & (tab["n_used"] == 0)].drop_duplicates(subset=id_dims + ["roi"])
    if sel.empty:
        return
    items = []
    for _, r in sel.head(10).iterrows():
        where = ", ".join(f"{d}={r[d]}" for d in id_dims)
        why = "label is empty" if r["n_voxels"] == 0 else f"all {int(r['n_voxels'])} voxels excluded (fit_ok/NaN)"
        items.append(f"{where}, roi={r['roi']!r} (label {r['label']}): {why}")
    more = f" and {len(sel) - 10} more" if len(sel) > 10 else ""
    msg = "no usable voxels in " + "; ".join(items) + more
    if empty == "raise":
        raise RoiError(msg)
    warnings.warn(msg + " -- their statistics are NaN", RoiWarning, stacklevel=3)


def summarize(maps, roi: xr.DataArray, *, labels: Mapping = DEFAULT_LABELS, voxel_volume_mm3: float | None = None,
              percentiles: Sequence[float] = (10, 25, 50, 75, 90), thresholds: Mapping | None = None,
              variables=None, empty: str = "warn") -> pd.DataFrame:
    """Tidy ROI statistics of quantitative maps: one row per animal x day x ROI label x map.

    Parameters
    ----------
    maps : Dataset of maps (e.g. a fit output with ``r2star_per_s`` and ``fit_ok``) or one
        DataArray, on the roi grid, numpy- or Dask-backed.  ``fit_ok`` (bool), when present,
        excludes voxels from the statistics (they still count in ``n_voxels``/volume).
    roi : integer label image, dims e.g. ``(animal, day, z, y, x)``; dims other than
        ``animal``/``day`` are spatial.
    labels : ``{label value: name}`` to summarise, default ``{1: "tumour"}``.
    voxel_volume_mm3 : default: product of ``attrs["voxel_size_mm"]`` of maps or roi.
    percentiles : in [0, 100]; columns ``p10, p25, ...``.
    thresholds : ``{variable: threshold or [thresholds]}`` -> columns ``frac_above_<thr>``
        (fraction of used voxels with value > thr; NaN for variables without that threshold).
    variables : maps to summarise (default: every numeric variable on the roi grid).
    empty : what an acquired scan whose label has no usable voxel gives: ``"warn"``
        (default: a row with ``n_used = 0`` and NaN statistics plus one :class:`RoiWarning`
        naming every animal/day/label), ``"raise"`` (:class:`RoiError`) or ``"ignore"``.
        A tumour can regress to nothing, and rim/core labels can be absent, so a missing
        label is data, not a crash; the warning keeps it from passing silently.

    Returns
    -------
    DataFrame with columns ``animal, group, day, acquired, roi, label, variable, units,
    n_voxels, volume_mm3, n_used, n_excluded, n_nonfinite, mean, sd, median, min, max,
    p.., frac_above_..`` (``animal``/``day`` only when roi has those dims).  Sessions with
    ``acquired=False`` (missing) keep their rows, with zero counts, NaN volume and
    statistics, and no warning.
    """
    ds = _as_dataset(maps)
    labs = _check_labels(labels)
    if empty not in ("warn", "raise", "ignore"):
        raise RoiError(f"empty must be 'warn', 'raise' or 'ignore', got {empty!r}")
    pct = [float(p) for p in percentiles]
    if any(not 0 <= p <= 100 for p in pct):
        raise RoiError(f"percentiles must be within [0, 100], got {list(percentiles)}")
    id_dims, spatial, variables = _layout(ds, roi, variables)
    vv = _voxel_volume(ds, roi, voxel_volume_mm3)
    thresholds = dict(thresholds or {})
    for v in thresholds:
        if v not in variables:
            raise RoiError(f"thresholds names {v!r}, which is not a summarised variable ({variables})")
    thr_values = sorted({float(t) for ts in thresholds.values() for t in np.atleast_1d(ts)})
    thr = np.full((len(variables), len(thr_values)), np.nan)
    for i, v in enumerate(variables):
        for t in np.atleast_1d(thresholds.get(v, [])):
            thr[i, thr_values.index(float(t))] = float(t)
    names = _stat_names(pct, thr_values)
    vals, ok, lab = _stack(ds, roi, variables, id_dims, spatial)
    label_values = list(labs)

    out_sizes = {"label": len(label_values), "variable": len(variables), "stat": len(names)}
    if any(a.chunks is not None for a in (*vals, ok, lab)):
        # blocks handed over as stored (no concatenated copy of every map per scan)
        res, = apply_blocks(_StatsBlock(len(spatial), label_values, pct, thr, as_tuple=True), *vals, ok, lab,
                            core_dims=[spatial] * (len(vals) + 2), out_core=[tuple(out_sizes.items())],
                            out_dtypes=[np.float64], name="roi-stats")
    else:
        res = xr.apply_ufunc(_StatsBlock(len(spatial), label_values, pct, thr), *vals, ok, lab,
                             input_core_dims=[spatial] * (len(vals) + 2),
                             output_core_dims=[["label", "variable", "stat"]])
    res = res.assign_coords(label=label_values, stat=names, variable=variables).transpose(*id_dims, "label",
                                                                                        "variable", "stat")
    res, group, acq = _compute_all(res, ds, roi, id_dims)   # one pass over all scans
    arr = res.values.reshape(-1, len(names))
    base = _coord_frame(res, group, acq, id_dims)
    n_id = len(base)
    rep = len(label_values) * len(variables)
    tab = base.loc[base.index.repeat(rep)].reset_index(drop=True)
    tab["roi"] = np.tile(np.repeat([labs[lv] for lv in label_values], len(variables)), n_id)
    tab["label"] = np.tile(np.repeat(label_values, len(variables)), n_id)
    tab["variable"] = np.tile(variables, n_id * len(label_values))
    units = {v: str(ds[v].attrs.get("units", "")) for v in variables}
    tab["units"] = tab["variable"].map(units)
    stats_df = pd.DataFrame(arr, columns=names)
    tab = pd.concat([tab, stats_df], axis=1)
    tab.insert(tab.columns.get_loc("n_voxels") + 1, "volume_mm3", tab["n_voxels"] * vv)
    missing = ~tab["acquired"].to_numpy()
    if missing.any():
        tab.loc[missing, [c for c in names if c not in ("n_voxels", "n_used", "n_excluded", "n_nonfinite")]] = np.nan
        tab.loc[missing, "volume_mm3"] = np.nan
        tab.loc[missing, ["n_voxels", "n_used", "n_excluded", "n_nonfinite"]] = 0
    for c in ("n_voxels", "n_used", "n_excluded", "n_nonfinite"):
        tab[c] = tab[c].astype(np.int64)
    _report_empty(tab, id_dims, empty)
    return tab


def volumes(roi: xr.DataArray, *, labels: Mapping = DEFAULT_LABELS, voxel_volume_mm3: float | None = None,
            empty: str = "warn") -> pd.DataFrame:
    """ROI volumes per animal x day x label: ``animal, group, day, acquired, roi, label, n_voxels, volume_mm3``.

    The input of :func:`studylib.stats.tumour_growth`.  Missing sessions (``acquired=False``)
    have NaN volume; empty labels in acquired scans are handled as in :func:`summarize`.
    """
    if not isinstance(roi, xr.DataArray):
        raise RoiError(f"roi must be an xarray DataArray of integer labels, got {type(roi).__name__}")
    dummy = xr.zeros_like(roi, dtype=np.float32).rename("_volume")
    tab = summarize(dummy.to_dataset(), roi, labels=labels, voxel_volume_mm3=voxel_volume_mm3, percentiles=(),
                    empty=empty)
    cols = [c for c in ("animal", "group", "day", "acquired", "roi", "label", "n_voxels", "volume_mm3") if c in tab]
    return tab[cols]


def histograms(maps, roi: xr.DataArray, *, variable: str | None = None, bins=50, range: tuple | None = None,
               labels: Mapping = DEFAULT_LABELS) -> pd.DataFrame:
    """Per animal x day x label histogram of one map, tidy: ``..., bin_low, bin_high, count, fraction``.

    ``bins``: an int (with ``range=(lo, hi)``; without ``range`` the label voxels' min/max are
    computed first -- a second pass over lazy data) or explicit increasing edges, shared by
    every row so histograms are comparable.  Excludes ``fit_ok=False`` and non-finite voxels
    like :func:`summarize`; ``fraction`` = count / used voxels of that row.
    """
    ds = _as_dataset(maps)
    labs = _check_labels(labels)
    id_dims, spatial, variables = _layout(ds, roi, variable)
    if len(variables) != 1:
        raise RoiError(f"histograms takes one variable; maps have {variables} -- pass variable=")
    var = variables[0]
    if np.ndim(bins) == 0:
        nb = int(bins)
        if nb < 1:
            raise RoiError(f"bins must be >= 1, got {bins!r}")
        if range is None:
            tab = summarize(ds, roi, labels=labs, variables=[var], percentiles=(), voxel_volume_mm3=1.0, empty="ignore")
            lo, hi = float(np.nanmin(tab["min"])), float(np.nanmax(tab["max"]))
            if not np.isfinite(lo):
                raise RoiError(f"no usable voxel of {var!r} in labels {list(labs)}; cannot choose a histogram range")
            if hi == lo:
                hi = lo + 1.0
        else:
            lo, hi = map(float, range)
        edges = np.linspace(lo, hi, nb + 1)
    else:
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise RoiError(f"bins edges must be finite and strictly increasing, got {edges.tolist()}")
    (vals,), ok, lab = _stack(ds, roi, [var], id_dims, spatial)
    label_values = list(labs)

    def kern(v, f, lm):
        nvox = int(np.prod(v.shape[len(v.shape) - len(spatial):]))
        rs = lambda a: a.reshape(a.shape[:-len(spatial)] + (nvox,))  # noqa: E731
        return roi_hist_kernel(rs(v), rs(f), rs(lm), label_values, edges)

    res = xr.apply_ufunc(kern, vals, ok, lab, input_core_dims=[spatial, spatial, spatial],
                         output_core_dims=[["label", "bin"]], dask="parallelized", output_dtypes=[np.float64],
                         dask_gufunc_kwargs={"output_sizes": {"label": len(label_values), "bin": len(edges) - 1}})
    res = res.assign_coords(label=label_values).transpose(*id_dims, "label", "bin")
    res, group, acq = _compute_all(res, ds, roi, id_dims)
    base = _coord_frame(res, group, acq, id_dims)
    nb = len(edges) - 1
    rep = len(label_values) * nb
    tab = base.loc[base.index.repeat(rep)].reset_index(drop=True)
    tab["roi"] = np.tile(np.repeat([labs[lv] for lv in label_values], nb), len(base))
    tab["label"] = np.tile(np.repeat(label_values, nb), len(base))
    tab["variable"] = var
    tab["units"] = str(ds[var].attrs.get("units", ""))
    tab["bin_low"] = np.tile(edges[:-1], len(base) * len(label_values))
    tab["bin_high"] = np.tile(edges[1:], len(base) * len(label_values))
    counts = res.values.reshape(-1)
    tab["count"] = counts.astype(np.int64)
    tot = counts.reshape(-1, nb).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tab["fraction"] = (counts.reshape(-1, nb) / tot[:, None]).reshape(-1)
    tab.loc[~tab["acquired"].to_numpy(), ["count", "fraction"]] = [0, np.nan]
    return tab


def tumour_rim_core(roi: xr.DataArray, *, label: int = 1, rim_fraction: float = 0.2,
                    voxel_size_mm=None) -> tuple[xr.DataArray, xr.DataArray]:
    """Split each scan's tumour into a rim (outer ``rim_fraction`` of its depth) and a core.

    Depth is the Euclidean distance (mm, anisotropic voxels honoured) from the tumour's
    boundary (:func:`scipy.ndimage.distance_transform_edt`); the rim is every tumour voxel
    with depth <= ``rim_fraction`` x the scan's maximum depth (at least the boundary layer).
    One call per scan (animal x day), never per voxel.
    """
    from scipy import ndimage

    if not 0 < rim_fraction < 1:
        raise RoiError(f"rim_fraction must be in (0, 1), got {rim_fraction!r}")
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    vs = voxel_size_mm if voxel_size_mm is not None else (1.0, 1.0, 1.0)
    sampling = {"x": float(vs[0]), "y": float(vs[1]), "z": float(vs[2])}
    r = roi.transpose(..., *space)
    vals = np.asarray(r.values)
    lead = vals.shape[:-len(space)]
    rim = np.zeros(vals.shape, bool)
    flat = vals.reshape((-1,) + vals.shape[-len(space):])
    out = rim.reshape(flat.shape)
    for i in range(flat.shape[0]):
        t = flat[i] == label
        if not t.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(t, 1), sampling=[sampling[d] for d in space])
        depth = depth[tuple(slice(1, -1) for _ in space)]
        cut = max(rim_fraction * depth[t].max(), min(sampling.values()))
        out[i] = t & (depth <= cut)
    rim = out.reshape(lead + vals.shape[-len(space):])
    rim_da = xr.DataArray(rim, dims=r.dims, coords=r.coords)
    core_da = (r == label) & ~rim_da
    return rim_da.transpose(*roi.dims), core_da.transpose(*roi.dims)

