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

from typing import Mapping

import numpy as np
import xarray as xr

from ..errors import FitInputError
from ..models import fluorine as _m
from .._checks import positive_number
from ._adapter import Output, apply_kernel

__all__ = ["fluorine_quantify", "fluorine_per_roi"]

_ONE = "_f19_sample"  # the length-1 "fitted" axis: a 19F voxel is one magnitude
_REF_KEYS = ("ReferenceTube_mM", "reference_tube_mM")
_PFC_KEYS = ("ReferenceTubePFC_mM",)  # the tube as mM of PFC molecules (docs/conventions.md)
_NF_KEYS = ("ReferenceTubeFluorinesPerMolecule",)  # 19F per molecule in the excited band
_RELAX_REQUIRED = ("t1_ref_ms", "t2_ref_ms", "t1_tissue_ms", "t2_tissue_ms")


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


def _reference_concentration(ref_mM, ref_pfc_mM, fluorines, attrs, src):
    """The tube's 19F mM and the attrs describing it; the PFC pair is used when given (here or, when no
    19F mM is given anywhere, in the sidecars).  The direct ``ref_mM`` path is the original one."""
    pfc_given = ref_pfc_mM is not None or fluorines is not None
    if pfc_given and ref_mM is not None:
        raise FitInputError(f"{src}: give the reference tube either as ref_mM (19F nuclei, mM) or as ref_pfc_mM "
                            f"with fluorines_per_molecule, not both")
    if not pfc_given:
        if ref_mM is None:
            ref_mM = next((attrs[key] for key in _REF_KEYS if key in attrs), None)
        if ref_mM is not None:
            return positive_number(ref_mM, "ref_mM (reference tube concentration, mM)", where=src), {}
        if not any(key in attrs for key in _PFC_KEYS + _NF_KEYS):
            raise FitInputError(f"{src}: no reference tube concentration: pass ref_mM (or ref_pfc_mM and "
                                f"fluorines_per_molecule), or load data whose sidecars give ReferenceTube_mM")
    if ref_pfc_mM is None:
        ref_pfc_mM = next((attrs[key] for key in _PFC_KEYS if key in attrs), None)
    if fluorines is None:
        fluorines = next((attrs[key] for key in _NF_KEYS if key in attrs), None)
    if ref_pfc_mM is None or fluorines is None:
        missing = "ref_pfc_mM (sidecar ReferenceTubePFC_mM)" if ref_pfc_mM is None else \
            "fluorines_per_molecule (sidecar ReferenceTubeFluorinesPerMolecule)"
        raise FitInputError(f"{src}: the reference tube as PFC concentration also needs {missing}")
    try:
        f_mM = _m.reference_fluorine_mM(ref_pfc_mM, fluorines)
    except FitInputError as err:
        raise FitInputError(f"{src}: {err}") from None
    n = int(float(fluorines))
    return f_mM, {"ref_pfc_mM": float(ref_pfc_mM), "fluorines_per_molecule": n,
                  "_method": [f"; reference tube {float(ref_pfc_mM):g} mM PFC x {n} 19F per molecule in the "
                              f"excited band = {f_mM:g} mM 19F"]}


def _sidecar_ms(attrs, ms_key, s_key):
    """A scalar time in ms from the load_study attrs (``tr_ms``) or a BIDS key in seconds."""
    if attrs.get(ms_key) is not None:
        return attrs[ms_key]
    v = attrs.get(s_key)
    if v is None or np.ndim(v) != 0:
        return None
    try:
        return float(v) * 1000.0
    except (TypeError, ValueError):
        return v  # let the model's check name the bad value


def _bssfp_factor(spec, attrs, src):
    """``w_ref / w_tissue`` from the ``bssfp_relaxation`` mapping (TR, flip, TE default from the sidecars)."""
    if not isinstance(spec, Mapping):
        raise FitInputError(f"{src}: bssfp_relaxation must be a mapping (dict) of t1_ref_ms, t2_ref_ms, "
                            f"t1_tissue_ms, t2_tissue_ms and optionally tr_ms, flip_deg, te_ms; got "
                            f"{type(spec).__name__}")
    unknown = set(spec) - set(_RELAX_REQUIRED) - {"tr_ms", "flip_deg", "te_ms"}
    if unknown:
        raise FitInputError(f"{src}: bssfp_relaxation has unknown keys {sorted(unknown)}; allowed: "
                            f"{list(_RELAX_REQUIRED) + ['tr_ms', 'flip_deg', 'te_ms']}")
    missing = [k_ for k_ in _RELAX_REQUIRED if spec.get(k_) is None]
    if missing:
        raise FitInputError(f"{src}: bssfp_relaxation needs {missing} (measured relaxation times in ms of the "
                            f"reference tube and the tissue 19F; there are no defaults)")
    tr = spec.get("tr_ms", _sidecar_ms(attrs, "tr_ms", "RepetitionTime"))
    flip = spec.get("flip_deg", attrs.get("FlipAngle"))
    te = spec.get("te_ms", _sidecar_ms(attrs, "te_ms", "EchoTime"))
    if tr is None or flip is None:
        raise FitInputError(f"{src}: bssfp_relaxation needs tr_ms and flip_deg (not in the mapping and not a single "
                            f"RepetitionTime / FlipAngle in the sidecars)")
    if np.ndim(flip) != 0:
        raise FitInputError(f"{src}: bssfp_relaxation: flip_deg must be one number, got {flip!r}")
    t = {k_: spec[k_] for k_ in _RELAX_REQUIRED}
    for k_, v in t.items():
        if np.ndim(v) != 0:
            raise FitInputError(f"{src}: bssfp_relaxation: {k_} must be one number (ms), got {v!r}")
    try:
        w_ref = float(_m.bssfp_signal(t["t1_ref_ms"], t["t2_ref_ms"], tr, flip, te_ms=te))
        w_tis = float(_m.bssfp_signal(t["t1_tissue_ms"], t["t2_tissue_ms"], tr, flip, te_ms=te))
    except FitInputError as err:
        raise FitInputError(f"{src}: bssfp_relaxation: {err}") from None
    factor = w_ref / w_tis
    out = {f"bssfp_{k_}": float(v) for k_, v in t.items()}
    out.update(bssfp_tr_ms=float(tr), bssfp_flip_deg=float(flip), bssfp_w_ref=w_ref, bssfp_w_tissue=w_tis,
               relaxation_factor=factor,
               _method=[f"; bSSFP relaxation correction w_ref/w_tissue = {factor:.4g} (TR {float(tr):g} ms, "
                        f"flip {float(flip):g} deg" + (f", TE {float(te):g} ms" if te is not None else ", no TE factor")
                        + "; Scheffler & Lehnhardt, Eur Radiol 2003;13:2409)"])
    if te is not None:
        out["bssfp_te_ms"] = float(te)
    return factor, out


def fluorine_quantify(signal, roi: xr.DataArray | None = None, *, ref_mM: float | None = None,
                      voxel_size_mm=None, sigma=None, ref_signal=None, tube_label: int = 4,
                      background_label: int = 5, mask=None, k: float | None = None,
                      false_positive_rate: float = 0.005, correction: str = "mean",
                      spatial_dims=("z", "y", "x"), ref_pfc_mM: float | None = None,
                      fluorines_per_molecule: int | None = None,
                      bssfp_relaxation: Mapping | None = None) -> xr.Dataset:
    """Fluorine atoms per voxel from a 19F magnitude image and its reference tube.

    Parameters
    ----------
    signal : DataArray ``(..., z, y, x)`` 19F magnitude (``load_study(m, s, "F19").signal``),
        or the ``load_study`` Dataset itself (its ``roi`` and attrs are then used).
    roi : integer label map on the same grid (label ``tube_label`` = reference tube,
        ``background_label`` = signal-free noise region).
    ref_mM : 19F-nucleus concentration of the tube in mM (default: the sidecar key
        ``ReferenceTube_mM`` found in ``signal.attrs``).  Give either this or the PFC pair below.
    ref_pfc_mM, fluorines_per_molecule : the tube as PFC concentration (mM of molecules) and the
        number of 19F per molecule *in the excited band*; ``ref_mM = ref_pfc_mM * fluorines_per_molecule``
        (:func:`studylib.models.fluorine.reference_fluorine_mM`; PFCE: 20,
        :data:`~studylib.models.fluorine.PFC_FLUORINES_PER_MOLECULE`; PFOB: only the fluorines of the
        excited peaks, which depends on the protocol).  Either may come from the sidecar keys
        ``ReferenceTubePFC_mM`` and ``ReferenceTubeFluorinesPerMolecule``; used when either is given
        here, or when neither ``ref_mM`` nor ``ReferenceTube_mM`` is.
    bssfp_relaxation : optional mapping for the bSSFP relaxation-weighting correction when tube and
        tissue 19F relax differently: ``t1_ref_ms``, ``t2_ref_ms``, ``t1_tissue_ms``, ``t2_tissue_ms``
        (required; measure them, there are no defaults) and ``tr_ms``, ``flip_deg``, ``te_ms`` (default
        from the sidecars: ``tr_ms`` / ``RepetitionTime``, ``FlipAngle``, ``EchoTime``; without an echo
        time the ``exp(-TE/T2)`` factor is left out).  Concentrations and atoms are multiplied by
        ``w_ref / w_tissue`` (:func:`studylib.models.fluorine.bssfp_weight_ratio`).
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
    ``reference_signal`` (a.u.); attrs ``k``, ``false_positive_rate``, ``ref_mM`` (the tube's 19F mM),
    ``voxel_volume_mm3``; with the PFC pair also ``ref_pfc_mM``, ``fluorines_per_molecule``; with
    ``bssfp_relaxation`` also ``relaxation_factor`` (``w_ref / w_tissue``), ``bssfp_w_ref``,
    ``bssfp_w_tissue`` and the T1/T2/TR/flip/TE used.

    Notes
    -----
    ``sigma = sqrt(mean_bg(M^2) / 2)`` (Rayleigh), ``S_ref = sqrt(mean_tube(M^2) - 2 sigma^2)``,
    ``n_F = A / S_ref * [F]_ref * V * N_A`` for voxels with ``M > k sigma``, where ``A`` is
    the Rician-corrected amplitude (times ``w_ref / w_tissue`` with ``bssfp_relaxation``, where
    ``w = sin(a)(1 - E1) / (1 - (E1 - E2) cos(a) - E1 E2)``, Scheffler & Lehnhardt, Eur Radiol
    2003;13:2409); the false-positive rate of noise-only voxels is
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
    # concentration of the reference tube (19F nuclei), directly or as PFC x fluorines per molecule
    ref_mM, extra_attrs = _reference_concentration(ref_mM, ref_pfc_mM, fluorines_per_molecule, attrs, src)
    ref_kernel = ref_mM  # the concentration the kernel scales with (unchanged without a correction)
    if bssfp_relaxation is not None:
        factor, relax_attrs = _bssfp_factor(bssfp_relaxation, attrs, src)
        ref_kernel = ref_mM * factor
        extra_attrs["_method"] = extra_attrs.get("_method", []) + relax_attrs.pop("_method")
        extra_attrs.update(relax_attrs)
    method_note = "".join(extra_attrs.pop("_method", []))
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
        kernel_kwargs=dict(ref_mM=ref_kernel, voxel_volume_mm3=vol, k=kk, correction=correction),
        attrs={"method": f"19F reference-tube quantification, detection M > {kk:.3g} sigma "
                         f"(noise-only false-positive rate {fpr:.2%}), Rician correction '{correction}'"
                         + method_note,
               "k": kk, "false_positive_rate": fpr, "ref_mM": ref_mM, "voxel_volume_mm3": vol,
               "reference": "Srinivas et al., Trends Immunol 2010;31:223, doi:10.1016/j.it.2010.03.004",
               **extra_attrs},
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
