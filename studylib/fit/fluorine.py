"""19F adapters: voxelwise fluorine quantification and per-ROI totals.

A 19F image has no fitted axis; what each voxel needs besides its magnitude is two
numbers of its scan: the noise SD ``sigma`` (from a background ROI, Rayleigh statistics)
and the reference tube's bias-free signal ``S_ref``.  :func:`fluorine_quantify` computes
both per scan (lazily) and runs :func:`studylib.models.fluorine.fluorine_quantify_kernel`
through the shared :func:`studylib.fit.apply_kernel`, with ``sigma`` and ``S_ref`` as its
per-voxel inputs (``voxel_inputs``, broadcast from one value per scan).
:func:`fluorine_per_roi` sums atoms over a label (tumour, rim, metastasis...) and converts
to an apparent macrophage number.

Method after Makela et al., MRM 2018;80:1138 and Srinivas et al., Trends Immunol
2010;31:223 (doi:10.1016/j.it.2010.03.004).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import FitInputError
from ..models import fluorine as _m
from .._checks import positive_number
from ._adapter import Output, apply_kernel

__all__ = ["fluorine_quantify", "fluorine_per_roi"]

_ONE = "_f19_sample"  # the length-1 "fitted" axis: a 19F voxel is one magnitude
_REF_KEYS = ("ReferenceTube_mM", "reference_tube_mM")


def _spatial(signal, spatial_dims):
    dims = tuple(d for d in spatial_dims if d in signal.dims)
    if not dims:
        raise FitInputError(f"fluorine_quantify: signal has none of the spatial dims {tuple(spatial_dims)} "
                            f"(dims {tuple(signal.dims)})")
    return dims


def _check_roi(roi, signal, source):
    if not isinstance(roi, xr.DataArray):
        raise FitInputError(f"{source}: roi must be an xarray.DataArray of integer labels, got {type(roi).__name__}")
    if not np.issubdtype(roi.dtype, np.integer):
        raise FitInputError(f"{source}: roi must hold integer labels, got dtype {roi.dtype}")
    extra = set(roi.dims) - set(signal.dims)
    if extra:
        raise FitInputError(f"{source}: roi has dims {sorted(extra)} that the signal lacks (signal dims "
                            f"{tuple(signal.dims)})")
    for d in roi.dims:
        if roi.sizes[d] != signal.sizes[d]:
            raise FitInputError(f"{source}: roi has {roi.sizes[d]} along '{d}' but the signal has {signal.sizes[d]}")
    return roi.drop_vars([c for c in roi.coords if c not in roi.dims], errors="ignore")


def _require_label(roi, label, what, source):
    """For numpy-backed ROIs check the label exists (Dask ROIs: missing label -> NaN per scan)."""
    if roi.chunks is None and not bool((roi == label).any()):
        raise FitInputError(f"{source}: the roi has no {what} voxels (label {label}); "
                            f"found labels {sorted(int(v) for v in np.unique(roi.values) if v)}")


def fluorine_quantify(signal, roi: xr.DataArray | None = None, *, ref_mM: float | None = None,
                      voxel_size_mm=None, sigma=None, ref_signal=None, tube_label: int = 4,
                      background_label: int = 5, mask=None, k: float | None = None,
                      false_positive_rate: float = 0.005, correction: str = "mean",
                      spatial_dims=("z", "y", "x")) -> xr.Dataset:
    """Fluorine atoms per voxel from a 19F magnitude image and its reference tube.

    Parameters
    ----------
    signal : DataArray ``(..., z, y, x)`` 19F magnitude (``load_study(m, s, "F19").signal``),
        or the ``load_study`` Dataset itself (its ``roi`` and attrs are then used).
    roi : integer label map on the same grid (label ``tube_label`` = reference tube,
        ``background_label`` = signal-free noise region).
    ref_mM : 19F-nucleus concentration of the tube in mM (default: the sidecar key
        ``ReferenceTube_mM`` found in ``signal.attrs``).
    voxel_size_mm : (dx, dy, dz) in mm (default ``signal.attrs["voxel_size_mm"]``).
    sigma, ref_signal : per-scan overrides (DataArrays over the non-spatial dims, or numbers)
        of the noise SD and the tube signal; by default estimated from the ROIs.
    mask : optional boolean voxel mask (outside: NaN, ``fit_ok=False``).
    k, false_positive_rate : detection threshold ``M > k sigma``; ``k`` defaults to
        :func:`studylib.models.fluorine.detection_k` of ``false_positive_rate`` (0.5 %).
    correction : Rician bias correction, ``"mean"`` (default) or ``"power"``.

    Returns
    -------
    Dataset: ``fluorine_atoms`` (atoms per voxel, 0 where not detected),
    ``fluorine_atoms_all`` (no threshold; see below), ``fluorine_mM``
    (19F mM), ``snr``, ``detected`` (bool), ``fit_ok``; per scan ``noise_sigma`` and
    ``reference_signal`` (a.u.); attrs ``k``, ``false_positive_rate``, ``ref_mM``,
    ``voxel_volume_mm3``.

    Notes
    -----
    ``sigma = sqrt(mean_bg(M^2) / 2)`` (Rayleigh), ``S_ref = sqrt(mean_tube(M^2) - 2 sigma^2)``,
    ``n_F = A / S_ref * [F]_ref * V * N_A`` for voxels with ``M > k sigma``, where ``A`` is
    the Rician-corrected amplitude; the false-positive rate of noise-only voxels is
    ``exp(-k^2/2)`` (Gudbjartsson & Patz, MRM 1995;34:910, doi:10.1002/mrm.1910340618).

    The threshold makes detection maps specific, but a total over detected voxels misses
    diffuse uptake below ``k sigma`` (a tumour at voxel SNR ~1 is mostly undetected).
    ``fluorine_atoms_all`` sums every voxel's Rician-corrected amplitude instead: close
    to unbiased for an ROI that truly holds 19F, but a noise-only ROI still adds about
    ``0.6 sigma`` per voxel (raw magnitudes: 1.25 sigma), so use it for totals of ROIs
    known to be labelled.
    """
    src = "fluorine_quantify"
    attrs = {}
    if isinstance(signal, xr.Dataset):
        ds = signal
        if "signal" not in ds:
            raise FitInputError(f"{src}: Dataset has no 'signal' variable (variables: {list(ds.data_vars)})")
        attrs = dict(ds.attrs)
        if roi is None and "roi" in ds:
            roi = ds["roi"]
        signal = ds["signal"]
    if not isinstance(signal, xr.DataArray):
        raise FitInputError(f"{src}: signal must be an xarray.DataArray, got {type(signal).__name__}")
    attrs = {**attrs, **signal.attrs}
    if not np.issubdtype(signal.dtype, np.number) or np.issubdtype(signal.dtype, np.complexfloating):
        raise FitInputError(f"{src}: signal must be real magnitude values, got dtype {signal.dtype}")
    space = _spatial(signal, spatial_dims)
    # concentration of the reference tube
    if ref_mM is None:
        for key in _REF_KEYS:
            if key in attrs:
                ref_mM = attrs[key]
                break
        else:
            raise FitInputError(f"{src}: no reference tube concentration: pass ref_mM or load data whose "
                                f"sidecars give ReferenceTube_mM")
    ref_mM = positive_number(ref_mM, "ref_mM (reference tube concentration, mM)", where=src)
    # voxel volume
    vs = voxel_size_mm if voxel_size_mm is not None else attrs.get("voxel_size_mm")
    if vs is None:
        raise FitInputError(f"{src}: voxel size unknown: pass voxel_size_mm=(dx, dy, dz) in mm")
    vs = np.asarray(vs, dtype=float).reshape(-1)
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise FitInputError(f"{src}: voxel_size_mm must be three positive sizes in mm, got {vs.tolist()}")
    vol = float(np.prod(vs))
    kk = _m.detection_k(false_positive_rate) if k is None else float(k)
    if not (np.isfinite(kk) and kk > 0):
        raise FitInputError(f"{src}: k must be a positive multiple of sigma, got {k!r}")
    fpr = float(_m.false_positive_rate(kk))
    if correction not in ("mean", "power"):
        raise FitInputError(f"{src}: correction must be 'mean' or 'power', got {correction!r}")

    # non-index coordinates (acquired, group...) are dropped for the computation and put back
    # at the end: DataArray.chunk would chunk them too, which breaks apply_kernel's mask path
    extra = {c: signal.coords[c] for c in signal.coords if c not in signal.dims}
    sig = signal.drop_vars(list(extra)).astype(float)
    if roi is not None:
        roi = roi.drop_vars([c for c in roi.coords if c not in roi.dims], errors="ignore")
    if (sigma is None or ref_signal is None):
        if roi is None:
            raise FitInputError(f"{src}: need a roi with a reference tube (label {tube_label}) and a background "
                                f"region (label {background_label}), or explicit sigma and ref_signal")
        roi = _check_roi(roi, signal, src)
    if sigma is None:
        _require_label(roi, background_label, "background (noise)", src)
        n_bg = (roi == background_label).sum(space)
        ms = (sig**2).where(roi == background_label).sum(space) / n_bg.where(n_bg > 0)
        sigma = np.sqrt(ms / 2.0)
    if ref_signal is None:
        _require_label(roi, tube_label, "reference tube", src)
        n_t = (roi == tube_label).sum(space)
        mt = (sig**2).where(roi == tube_label).sum(space) / n_t.where(n_t > 0)
        a2 = mt - 2.0 * sigma**2
        ref_signal = np.sqrt(a2.where(a2 > 0))
    vin = {"sigma": sigma, "ref_signal": ref_signal}  # one value per scan (or voxel), or numbers
    if isinstance(mask, xr.DataArray):
        mask = mask.drop_vars([c for c in mask.coords if c not in mask.dims], errors="ignore")
    out = apply_kernel(
        _m.fluorine_quantify_kernel, sig.expand_dims(_ONE, axis=-1), _ONE,
        [Output("fluorine_atoms", "atoms", "19F atoms per voxel (0 where not detected)"),
         Output("fluorine_atoms_all", "atoms", "19F atoms per voxel, Rician-corrected, no detection threshold"),
         Output("fluorine_mM", "mM", "19F nuclei concentration (0 where not detected)"),
         Output("snr", "1", "magnitude / noise sigma"),
         Output("detected", "", f"above {kk:.3g} sigma", bool),
         Output("fit_ok", "", "quantifiable (finite signal, sigma and reference)", bool)],
        x=np.zeros(1), mask=mask, voxel_inputs=vin,
        kernel_kwargs=dict(ref_mM=ref_mM, voxel_volume_mm3=vol, k=kk, correction=correction),
        attrs={"method": f"19F reference-tube quantification, detection M > {kk:.3g} sigma "
                         f"(noise-only false-positive rate {fpr:.2%}), Rician correction '{correction}'",
               "k": kk, "false_positive_rate": fpr, "ref_mM": ref_mM, "voxel_volume_mm3": vol,
               "reference": "Srinivas et al., Trends Immunol 2010;31:223, doi:10.1016/j.it.2010.03.004"},
    )
    keep = {c: v for c, v in extra.items() if set(v.dims) <= set(out.dims)}
    out = out.assign_coords(keep)
    if isinstance(sigma, xr.DataArray):
        out["noise_sigma"] = sigma.assign_attrs(units="a.u.", long_name="noise SD per channel (Rayleigh, background)")
    if isinstance(ref_signal, xr.DataArray):
        out["reference_signal"] = ref_signal.assign_attrs(units="a.u.",
                                                          long_name="bias-free reference tube signal")
    return out


def fluorine_per_roi(quant: xr.Dataset, roi: xr.DataArray, *, label: int = 1,
                     f_atoms_per_cell: float = _m.F_ATOMS_PER_MACROPHAGE,
                     spatial_dims=("z", "y", "x")) -> xr.Dataset:
    """Per-scan totals of :func:`fluorine_quantify` over one ROI label.

    Returns
    -------
    Dataset over the non-spatial dims (``animal, day``...): ``fluorine_atoms_total``
    (atoms, detected voxels), ``apparent_macrophages`` (``total / f_atoms_per_cell``, see
    :data:`studylib.models.fluorine.F_ATOMS_PER_MACROPHAGE`), the same without the
    detection threshold (``fluorine_atoms_total_all``, ``apparent_macrophages_all``), ``n_voxels``,
    ``n_detected``, ``detected_fraction``, ``mean_fluorine_mM`` (over detected voxels)
    and ``roi_volume_mm3``.  A scan with no quantifiable voxel in the ROI gives NaN.
    """
    src = "fluorine_per_roi"
    if not isinstance(quant, xr.Dataset) or "fluorine_atoms" not in quant:
        raise FitInputError(f"{src}: quant must be the Dataset returned by fluorine_quantify")
    roi = _check_roi(roi, quant["fluorine_atoms"], src)
    space = tuple(d for d in spatial_dims if d in quant["fluorine_atoms"].dims)
    fc = float(f_atoms_per_cell)
    if not (np.isfinite(fc) and fc > 0):
        raise FitInputError(f"{src}: f_atoms_per_cell must be a positive number, got {f_atoms_per_cell!r}")
    _require_label(roi, label, f"label-{label}", src)
    inside = roi == label
    ok = quant["fit_ok"] & inside
    n_ok = ok.sum(space)
    det = quant["detected"] & inside
    total = quant["fluorine_atoms"].where(ok).sum(space, min_count=1)
    total_all = quant["fluorine_atoms_all"].where(ok).sum(space, min_count=1) if "fluorine_atoms_all" in quant else None
    n_det = det.sum(space)
    out = xr.Dataset()
    out["fluorine_atoms_total"] = total.where(n_ok > 0).assign_attrs(units="atoms",
                                                                     long_name=f"19F atoms in label {label}")
    out["apparent_macrophages"] = (total / fc).where(n_ok > 0).assign_attrs(
        units="cells", long_name=f"apparent macrophage number at {fc:.3g} F atoms/cell")
    if total_all is not None:
        out["fluorine_atoms_total_all"] = total_all.where(n_ok > 0).assign_attrs(
            units="atoms", long_name=f"19F atoms in label {label}, all voxels (no threshold)")
        out["apparent_macrophages_all"] = (total_all / fc).where(n_ok > 0).assign_attrs(
            units="cells", long_name=f"apparent macrophages (no threshold) at {fc:.3g} F atoms/cell")
    out["n_voxels"] = inside.sum(space).assign_attrs(units="voxels")
    out["n_detected"] = n_det.assign_attrs(units="voxels")
    out["detected_fraction"] = (n_det / n_ok.where(n_ok > 0)).assign_attrs(units="1")
    out["mean_fluorine_mM"] = quant["fluorine_mM"].where(det).mean(space).assign_attrs(units="mM")
    vol = quant.attrs.get("voxel_volume_mm3")
    if vol is not None:
        out["roi_volume_mm3"] = (inside.sum(space) * float(vol)).assign_attrs(units="mm3")
    out.attrs = {"label": int(label), "f_atoms_per_cell": fc, **{k: v for k, v in quant.attrs.items()
                                                                 if k in ("k", "false_positive_rate", "ref_mM")}}
    return out
