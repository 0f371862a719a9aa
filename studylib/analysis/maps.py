"""Step 3 of the flow: fitted maps of a loaded study — computed with Dask, kept in the experiment's cache.

Each ``fit_*_maps`` wraps one :mod:`studylib.fit` function: it fits the scans inside the ROI labels
(noise SD from the background ROI), shows progress, and stores the maps content-addressed
(:class:`studylib.cache.Cache`; key: the manifest rows read, the parameters, and the source of the fit,
its kernels and the reader, not of figures or notebooks), so a rerun reads them back.  :func:`get_cache` is the experiment's cache.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from .. import layout
from ..conventions import BACKGROUND_LABEL, QUALITY_NAMES
from ..errors import DataWarning, ExperimentError
from ..roi import label_mask
from .design import compute_with_progress

#: the coordinate of fitted maps counting the non-finite background values left out of the noise SD
NONFINITE_BACKGROUND = "background_nonfinite_values"

__all__ = ["get_cache", "quality_variable", "background_mask", "fit_relaxation_maps", "fit_adc_maps",
           "baseline_frames", "default_relaxivity", "DEFAULT_HEMATOCRIT", "fit_dce_maps"]

def get_cache(study: str, manifest, cache_dir=None):
    """The :class:`studylib.cache.Cache` of an experiment.

    Its folder is ``cache_dir`` when given, else :func:`studylib.layout.default_cache_dir` of the
    manifest: ``data/<preset>/derived`` for a preset's own manifest, ``<manifest folder>/derived``
    otherwise.
    """
    from ..cache import Cache

    if cache_dir is None:
        cache_dir = _default_cache_dir(manifest)
    return Cache(study, cache_dir)


def _default_cache_dir(manifest) -> Path:
    m = Path(manifest).expanduser().resolve()
    for preset in ("demo", "ci", "large"):
        if m == layout.default_manifest(preset):
            return layout.default_cache_dir(preset, m)
    return layout.default_cache_dir("demo", m)


def quality_variable(maps: xr.Dataset) -> str:
    """Name of the goodness-of-fit map in a fit result."""
    for n in QUALITY_NAMES:
        if n in maps.data_vars:
            return n
    for n in maps.data_vars:
        if any(w in n.lower() for w in ("rmse", "residual", "quality", "chi")):
            return n
    raise ExperimentError(f"fit result has no goodness-of-fit map (variables: {list(maps.data_vars)})")


def background_mask(ds: xr.Dataset, *, label: int = BACKGROUND_LABEL) -> xr.DataArray:
    """The signal-free background ROI (label 5) used for the Rayleigh noise estimate."""
    bg = ds["roi"] == label
    return bg


def _bare(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its non-index coordinates (group, sex, model, acquired).

    Fits run on the bare arrays and :func:`_with_design` puts the design coordinates back on the
    maps: ``DataArray.chunk`` also chunks non-index coordinates (xarray >= 2025), which an earlier
    version of the shared fit adapter could not handle; this keeps the maps independent of that.
    """
    return ds.reset_coords(drop=True)


def _with_design(maps: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    coords = {c: ds.coords[c] for c in ("group", "sex", "model", "acquired") if c in ds.coords}
    return maps.assign_coords(coords)


def _with_background_count(maps: xr.Dataset, signal: xr.DataArray, bg: xr.DataArray | None) -> xr.Dataset:
    """Put the noise estimate's count of non-finite background values on the maps (lazy; computed with them).

    The fit estimates its noise SD from the background ROI and leaves non-finite values out
    (:func:`studylib.fit.relaxometry.noise_sigma_from_background`); this coordinate,
    :data:`NONFINITE_BACKGROUND` per scan, keeps that count with the cached maps so every run can warn.
    """
    if bg is None:
        return maps
    from ..fit.relaxometry import noise_sigma_from_background

    sigma = noise_sigma_from_background(signal, bg)
    return maps.assign_coords({NONFINITE_BACKGROUND: sigma.coords[NONFINITE_BACKGROUND]})


def _warn_nonfinite_background(maps: xr.Dataset, study: str) -> xr.Dataset:
    """A :class:`studylib.errors.DataWarning` naming every scan whose background had non-finite values."""
    if NONFINITE_BACKGROUND not in maps.coords:
        return maps
    count = maps.coords[NONFINITE_BACKGROUND]
    bad = count.where(count > 0, drop=True) if count.ndim else (count if int(count) > 0 else None)
    if bad is not None and bad.size:
        if bad.ndim:
            scans = ", ".join(f"{k[0]} day {k[1]:g}: {int(v)}" if isinstance(k, tuple) else f"{k}: {int(v)}"
                              for k, v in bad.to_series().dropna().items())
        else:
            scans = f"{int(bad)}"
        warnings.warn(DataWarning(f"{study}: non-finite values in the background ROI were left "
                                  f"out of the noise SD estimate (scan: count): {scans}"), stacklevel=3)
    return maps


def _manifest_of(ds: xr.Dataset):
    m = ds.attrs.get("manifest")
    if m is None:
        raise ExperimentError("dataset attrs lack 'manifest' (load it with studylib.load_study)")
    return m


def fit_relaxation_maps(ds: xr.Dataset, *, method: str = "auto", labels: Sequence[int] = (1, 2, 6, 7),
                        noise_label: int = BACKGROUND_LABEL, cache_dir=None, study: str | None = None) -> xr.Dataset:
    """T2*/R2* maps of every scan inside the ROI labels, fitted with Dask and cached.

    :func:`studylib.fit.relaxometry.t2star` with the noise SD estimated per scan from the background
    ROI (label 5, Rayleigh mean), computed with a progress bar; stored in the experiment's cache (key: the
    manifest rows read, ``method``, ``labels``, the code and package versions), so a rerun
    reads the maps back instead of refitting.

    Returns
    -------
    Dataset (animal, day, z, y, x): ``t2star`` (ms), ``r2star`` (1/s), ``s0``, the fit quality
    and ``fit_ok``, loaded in memory.
    """
    from ..cache import manifest_rows
    from ..fit.relaxometry import t2star

    study = study or ds.attrs.get("study")
    manifest = _manifest_of(ds)

    def compute():
        bare = _bare(ds)
        bg = background_mask(bare, label=noise_label) if noise_label is not None else None
        maps = t2star(bare["signal"], method=method, background=bg, mask=label_mask(bare["roi"], labels))
        maps = _with_background_count(maps, bare["signal"], bg)
        return compute_with_progress(maps, label=f"fitting T2* ({method}) on {int(ds['acquired'].sum())} scans")

    cache = get_cache(study, manifest, cache_dir)
    maps = cache.get_or_compute(
        "t2star_maps", compute, inputs=[manifest_rows(manifest, study=study, kinds=[ds.attrs.get("kind", "MEGRE"),
                                                                                   "roi"])],
        params=dict(method=method, labels=list(labels), noise_label=noise_label),
        code=("studylib.analysis.maps", "studylib.fit.relaxometry", "studylib.io.load"),
        description="T2*/R2* maps (fit.t2star) inside the ROIs")
    return _warn_nonfinite_background(_with_design(maps.load(), ds), study)


def fit_adc_maps(ds: xr.Dataset, *, b_min: float = 200.0, method: str = "auto", labels: Sequence[int] = (1, 2),
                 noise_label: int | None = BACKGROUND_LABEL, cache_dir=None, study: str | None = None) -> xr.Dataset:
    """ADC maps from the b-values ``>= b_min`` (s/mm^2) inside the ROI labels, with Dask and cached.

    Leaving out b < 200 s/mm^2 removes the perfusion (IVIM pseudo-diffusion) contribution, so the ADC
    reflects tissue water diffusion (Le Bihan et al., Radiology 1988;168:497,
    doi:10.1148/radiology.168.2.3393671).  ``method="auto"`` with the background ROI gives the
    noise-floor-corrected fit of :func:`studylib.fit.diffusion.adc`.
    """
    from ..cache import manifest_rows
    from ..fit.diffusion import adc

    study = study or ds.attrs.get("study")
    manifest = _manifest_of(ds)
    b = ds["b"].values
    keep = b[b >= b_min]
    if keep.size < 2:
        raise ExperimentError(f"only {keep.size} b-value(s) >= {b_min} s/mm² in {b.tolist()}; need 2")

    def compute():
        bare = _bare(ds)
        bg = background_mask(bare, label=noise_label) if noise_label is not None else None
        maps = adc(bare["signal"].sel(b=keep), method=method, background=bg, mask=label_mask(bare["roi"], labels))
        maps = _with_background_count(maps, bare["signal"].sel(b=keep), bg)
        return compute_with_progress(maps, label=f"fitting ADC (b = {keep.tolist()}) on {int(ds['acquired'].sum())} scans")

    cache = get_cache(study, manifest, cache_dir)
    maps = cache.get_or_compute("adc_maps", compute, inputs=[manifest_rows(manifest, study=study, kinds=["DWI", "roi"])],
                                params=dict(b=keep.tolist(), method=method, labels=list(labels),
                                            noise_label=noise_label),
                                code=("studylib.analysis.maps", "studylib.fit.diffusion", "studylib.io.load"),
                                description="ADC maps (fit.adc, b >= b_min) inside the ROIs")
    return _warn_nonfinite_background(_with_design(maps.load(), ds), study)


def _attr(ds: xr.Dataset, value, key: str, what: str):
    if value is not None:
        return value
    if key in ds.attrs:
        return ds.attrs[key]
    raise ExperimentError(f"{what}: not given and the sidecars have no common '{key}'; pass it explicitly")


def baseline_frames(dce: xr.Dataset, n_baseline: int | None = None, *, vessel_label: int = 3) -> int:
    """Number of pre-contrast frames.

    ``n_baseline`` when given; else every frame before the sidecars' common ``BolusArrivalTime_s`` when
    they record one; else measured from the data: the earliest bolus arrival (piecewise constant-quadratic
    regression, :func:`studylib.fit.dce.bolus_arrival_time`) of the vessel-ROI mean signal over the scans.
    """
    t = np.asarray(dce["t"].values, dtype=float)
    if n_baseline is None:
        if "BolusArrivalTime_s" in dce.attrs:
            bat = float(dce.attrs["BolusArrivalTime_s"])
        else:
            bat = _measured_arrival_s(dce, vessel_label)
            print(f"bolus arrival measured from the vessel ROI (label {vessel_label}): {bat:.1f} s "
                  f"(pass n_baseline= to set the pre-contrast frames yourself)")
        n_baseline = int(np.sum(t < bat))
    n_baseline = int(n_baseline)
    if not 1 <= n_baseline < t.size:
        raise ExperimentError(f"n_baseline must be between 1 and {t.size - 1} frames, got {n_baseline}")
    return n_baseline


def _measured_arrival_s(dce: xr.Dataset, vessel_label: int) -> float:
    from ..fit.dce import bolus_arrival_time

    vessel = dce["roi"] == vessel_label
    n_vox = vessel.sum(("z", "y", "x"))
    curves = dce["signal"].where(vessel).mean(("z", "y", "x")).where(n_vox > 0)
    if "acquired" in dce.coords:
        curves = curves.where(dce["acquired"])
    bat = compute_with_progress(bolus_arrival_time(curves.reset_coords(drop=True)), label="bolus arrival")
    ok = np.asarray(bat["bat_s"].where(bat["fit_ok"]).values, dtype=float)
    if not np.isfinite(ok).any():
        raise ExperimentError(f"n_baseline: the sidecars give no BolusArrivalTime_s and no scan has a vessel ROI "
                              f"(label {vessel_label}) whose bolus arrival can be measured; pass n_baseline=")
    return float(np.nanmin(ok))


def default_relaxivity(dce: xr.Dataset, r1_per_mM_s: float | None = None) -> float:
    """The agent's r1 (1/(s mM)) for the concentration: given; else the sidecars' ``Relaxivity_per_mM_per_s``;
    else :func:`studylib.models.relaxivity.relaxivity` of the sidecars' ``Agent`` at their field (the nearest
    measured field held beyond the table, with a warning saying so)."""
    import warnings

    from ..models.relaxivity import relaxivity

    if r1_per_mM_s is not None or "Relaxivity_per_mM_per_s" in dce.attrs:
        return float(_attr(dce, r1_per_mM_s, "Relaxivity_per_mM_per_s", "r1_per_mM_s"))
    agent, field = dce.attrs.get("agent"), dce.attrs.get("field_T")
    if agent is None or field is None:
        raise ExperimentError("r1_per_mM_s: not given, and the sidecars name no Agent and MagneticFieldStrength "
                              "to look it up; pass r1_per_mM_s= (1/(s mM))")
    rel = relaxivity(agent, field, kind="r1", beyond_table="hold")
    msg = (f"r1 of {rel.agent} at {rel.field_T:g} T: {rel.value_per_mM_s:g} /(s mM) ({rel.how}"
           f"{'; ' + rel.note if rel.note else ''}; {rel.source.split('.')[0]}); pass r1_per_mM_s= for a measured value")
    print(msg)
    if rel.extrapolated:
        warnings.warn(msg, UserWarning, stacklevel=2)
    return rel.value_per_mM_s


#: haematocrit used when neither the call nor the sidecars give one: mouse whole blood ~0.40-0.45
#: (e.g. Everds, in The Mouse in Biomedical Research, 2nd ed., 2007); pass hematocrit= to change it
DEFAULT_HEMATOCRIT = 0.45


def _motion_corrected(dce: xr.Dataset) -> tuple[xr.Dataset, xr.DataArray]:
    """The DCE scans with motion-displaced frames moved back, and the number moved per scan (printed)."""
    from ..fit.dce import correct_motion

    corrected, shifts = correct_motion(dce["signal"], dce["roi"] != BACKGROUND_LABEL)
    shifts = compute_with_progress(shifts, label="DCE frames checked for bulk motion")
    moved = (shifts["dy"] != 0) | (shifts["dx"] != 0)
    for a in dce["animal"].values:
        for day in dce["day"].values:
            frames = np.nonzero(moved.sel(animal=a, day=day).values)[0]
            if frames.size:
                s = shifts.sel(animal=a, day=day)
                what = ", ".join(f"{int(f)} ({int(s['dy'][f])}, {int(s['dx'][f])})" for f in frames)
                print(f"DCE {a} day {day}: frame(s) {what} displaced by bulk motion (dy, dx voxels): moved back")
    out = dce.copy()
    out["signal"] = corrected
    count = moved.sum("t").astype(int)
    count.attrs = {"long_name": "DCE frames moved back (bulk motion)", "method": shifts.attrs["method"]}
    return out, count


def _vessel_lumen(vessel: xr.DataArray) -> tuple[xr.DataArray, bool]:
    """(lumen, eroded): the vessel mask eroded in-plane by one voxel (4-neighbour cross, each slice), or the
    mask itself (``eroded`` False) when erosion leaves nothing.  ``vessel``: bool over ``z, y, x``."""
    from scipy import ndimage as ndi

    v = vessel.transpose("z", "y", "x")
    cross = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)  # (1, 3, 3): no erosion along z
    core = ndi.binary_erosion(np.asarray(v.values, dtype=bool), structure=cross, border_value=0)
    if not core.any():
        return vessel, False
    return v.copy(data=core).transpose(*vessel.dims), True


def fit_dce_maps(vfa: xr.Dataset, dce: xr.Dataset, *, model: str = "extended_tofts", aif_source: str = "cohort",
                 n_baseline: int | None = None, t1_method: str = "nonlinear", labels: Sequence[int] = (1, 2),
                 vessel_label: int = 3, r1_per_mM_s: float | None = None, hematocrit: float | None = None,
                 b1: xr.Dataset | None = None, motion: str = "correct", aif_voxels: str = "lumen", cache_dir=None,
                 study: str | None = None) -> tuple[xr.Dataset, xr.DataArray]:
    """Pre-contrast T1, concentration, measured AIF and tracer-kinetic maps, with Dask and cached.

    1. T10 from the VFA series (:func:`studylib.fit.relaxometry.t1_vfa`, DESPOT1) in tumour, muscle
       and vessel voxels;
    2. SPGR signal -> concentration, ``C = (R1 - R10) / r1`` (:func:`studylib.fit.dce.signal_to_concentration`,
       baseline = the frames before the bolus arrives);
    3. each animal's AIF from its vessel ROI (label 3), with the blood T10 = median VFA T1 there and the
       haematocrit (:func:`studylib.fit.dce.aif_from_roi`); ``aif_source="cohort"`` fits every animal
       with the mean of those AIFs (less noise when vessel ROIs are a few voxels), ``"animal"`` with
       its own;
    4. :func:`studylib.fit.dce.dce` (``model``) in the ROI ``labels``.

    r1 and haematocrit default to the sidecars' ``Relaxivity_per_mM_per_s`` and ``Hematocrit``, else to
    :func:`default_relaxivity` (the agent's tabulated r1 at the field) and :data:`DEFAULT_HEMATOCRIT`; the
    pre-contrast frames to :func:`baseline_frames`.

    ``b1``: the study's ``B1map`` scans (``load_study(manifest, study, "B1map")``, the relative flip angle
    actual / nominal, background excluded) or None (nominal angles).  With a map the VFA fit
    (:func:`studylib.fit.t1_vfa` ``b1=``), the concentration (:func:`studylib.fit.dce.signal_to_concentration`
    ``b1=``) and each vessel AIF (flip angle x the median B1 in its vessel ROI) use the actual angles: at 7 T
    a flip angle off by a factor b scales the VFA T1 by ~b^2 and Ktrans by ~1/b^2 when left uncorrected.

    ``aif_voxels="lumen"`` (default) measures each AIF (and the blood T10 and B1 it uses) in the voxels fully
    inside the vessel lumen: the vessel ROI eroded in-plane by one voxel (4-neighbour cross, slice by slice)
    where that leaves voxels, else the whole ROI (printed).  A vessel a few voxels across has edge voxels that
    mix blood with tissue (partial volume), which dilutes the AIF peak and inflates Ktrans and vp by about
    1 / (blood fraction); the lumen voxels carry blood only.  ``"all"``: every vessel ROI voxel.

    ``motion="correct"`` (default) first moves back the DCE frames a bulk motion displaced
    (:func:`studylib.fit.dce.correct_motion`: a frame that differs from its neighbours in time and that an
    integer in-plane shift explains; the bolus is not mistaken for it), judged over the body (ROI label not
    background); ``"none"`` leaves the frames as acquired.  The frames moved back are printed and counted in
    ``motion_frames_corrected``.

    Returns
    -------
    (maps, aif): maps (animal, day, z, y, x) with ``ktrans`` (1/min), ``kep``, ``ve``, ``vp``, ``t1``
    (ms), fit quality and ``fit_ok``; ``aif(animal, t)`` the measured plasma AIFs (mM) of the animals
    with a usable vessel ROI (their mean over ``animal`` is the cohort AIF).
    """
    from ..cache import manifest_rows
    from ..fit.dce import aif_from_roi, dce as dce_fit, signal_to_concentration
    from ..fit.relaxometry import t1_vfa

    if aif_source not in ("cohort", "animal"):
        raise ExperimentError(f"aif_source must be 'cohort' or 'animal', got {aif_source!r}")
    if motion not in ("correct", "none"):
        raise ExperimentError(f"motion must be 'correct' or 'none', got {motion!r}")
    if aif_voxels not in ("lumen", "all"):
        raise ExperimentError(f"aif_voxels must be 'lumen' or 'all', got {aif_voxels!r}")
    study = study or dce.attrs.get("study")
    manifest = _manifest_of(dce)
    for c in ("animal", "day"):
        if not np.array_equal(np.asarray(vfa[c].values), np.asarray(dce[c].values)):
            raise ExperimentError(f"VFA and DCE scans differ in '{c}': {vfa[c].values.tolist()} vs "
                                  f"{dce[c].values.tolist()}")
    fa = float(_attr(dce, None, "FlipAngle", "DCE flip angle"))
    tr = float(_attr(dce, None, "tr_ms", "DCE repetition time"))
    r1 = default_relaxivity(dce, r1_per_mM_s)
    if hematocrit is None and "Hematocrit" not in dce.attrs:
        print(f"haematocrit not in the sidecars: {DEFAULT_HEMATOCRIT} (mouse); pass hematocrit= to change it")
        hematocrit = DEFAULT_HEMATOCRIT
    hct = float(_attr(dce, hematocrit, "Hematocrit", "hematocrit"))
    moved = None
    if motion == "correct":
        dce, moved = _motion_corrected(dce)
    nb = baseline_frames(dce, n_baseline, vessel_label=vessel_label)
    if b1 is not None:
        if not isinstance(b1, xr.Dataset) or "signal" not in b1:
            raise ExperimentError(f"b1 must be the loaded B1map scans (load_study(manifest, study, 'B1map')), "
                                  f"got {type(b1).__name__}")
        for c in ("animal", "day"):
            if not np.array_equal(np.asarray(b1[c].values), np.asarray(dce[c].values)):
                raise ExperimentError(f"B1map and DCE scans differ in '{c}': {b1[c].values.tolist()} vs "
                                      f"{dce[c].values.tolist()}")
    params = dict(model=model, aif_source=aif_source, n_baseline=nb, t1_method=t1_method, labels=list(labels),
                  vessel_label=vessel_label, r1=r1, hematocrit=hct, fa=fa, tr=tr, motion=motion, aif_voxels=aif_voxels)
    if b1 is not None:
        params["b1_map"] = True

    def compute():
        v, d = _bare(vfa), _bare(dce)
        b1m = None
        if b1 is not None:  # the measured relative flip angle, in the body where it is a plausible one
            from ..fit.relaxometry import B1_RANGE

            bb = _bare(b1)
            b1m = bb["signal"].where((bb["roi"] != BACKGROUND_LABEL) & (bb["signal"] >= B1_RANGE[0])
                                     & (bb["signal"] <= B1_RANGE[1])).compute()
        t1 = t1_vfa(v["signal"], tr_ms=vfa.attrs.get("tr_ms"), method=t1_method,
                    mask=label_mask(v["roi"], [*labels, vessel_label]), b1=b1m)
        t1 = compute_with_progress(t1, label=f"T1 (VFA, {t1_method}) on {int(vfa['acquired'].sum())} scans")
        vessel = d["roi"] == vessel_label
        aifs, names, whole = [], [], []
        for a in d["animal"].values:
            for day in d["day"].values:
                if not bool(dce["acquired"].sel(animal=a, day=day)):
                    continue
                ves = vessel.sel(animal=a, day=day).compute()
                if int(ves.sum()) == 0:
                    continue
                if aif_voxels == "lumen":
                    ves, eroded = _vessel_lumen(ves)
                    if not eroded:
                        whole.append(f"{a} day {day}")
                t1b = float(t1["t1"].sel(animal=a, day=day).where(ves & t1["fit_ok"].sel(animal=a, day=day))
                            .median(skipna=True))
                if not np.isfinite(t1b):
                    continue
                fa_ves = fa
                if b1m is not None:
                    b1v = float(b1m.sel(animal=a, day=day).where(ves).median(skipna=True))
                    fa_ves = fa * b1v if np.isfinite(b1v) else fa
                aifs.append(aif_from_roi(d["signal"].sel(animal=a, day=day), ves, t10_blood_ms=t1b, fa_deg=fa_ves,
                                         tr_ms=tr, r1_per_mM_s=r1, hematocrit=hct, baseline=nb))
                names.append(str(a))
        if not aifs:
            raise ExperimentError(f"no animal has a usable vessel ROI (label {vessel_label}): cannot measure the AIF")
        if aif_voxels == "lumen":
            print(f"AIF from the vessel lumen (ROI eroded by one voxel in-plane) in {len(aifs) - len(whole)} of "
                  f"{len(aifs)} scans" + (f"; too thin to erode, whole vessel ROI (edge voxels may be partial volume) "
                                          f"in {len(whole)}: {', '.join(whole)}" if whole else ""))
        aif = compute_with_progress(xr.concat(aifs, dim=xr.DataArray(names, dims="animal", name="animal")),
                                    label=f"AIFs from {len(names)} vessel ROIs")
        aif = aif.transpose("animal", "t")
        cohort = aif.mean("animal")
        ct = signal_to_concentration(d["signal"], t10_ms=t1["t1"].where(t1["fit_ok"]), fa_deg=fa, tr_ms=tr,
                                     r1_per_mM_s=r1, baseline=nb, b1=b1m)
        mask = label_mask(d["roi"], labels)
        if aif_source == "cohort":
            maps = dce_fit(ct, cohort.reset_coords(drop=True), model=model, mask=mask)
        else:
            parts = []
            for a in d["animal"].values:
                use = aif.sel(animal=str(a)) if str(a) in names else cohort
                parts.append(dce_fit(ct.sel(animal=[a]), use.reset_coords(drop=True), model=model,
                                     mask=mask.sel(animal=[a])))
            maps = xr.concat(parts, dim="animal")
        maps = compute_with_progress(maps, label=f"fitting {model} on {int(dce['acquired'].sum())} scans")
        maps["t1"] = t1["t1"].where(mask)
        maps["aif"] = aif.rename(animal="aif_animal")
        maps["aif_cohort"] = cohort
        if moved is not None:
            maps["motion_frames_corrected"] = moved
        return maps

    cache = get_cache(study, manifest, cache_dir)
    out = cache.get_or_compute("dce_maps", compute,
                               inputs=[manifest_rows(manifest, study=study,
                                                     kinds=["VFA", "DCE", "roi"] + (["B1map"] if b1 is not None
                                                                                   else []))],
                               params=params,
                               code=("studylib.analysis.maps", "studylib.fit.dce", "studylib.fit.relaxometry",
                                     "studylib.io.load"),
                               description=f"T1, AIFs and {model} maps")
    out = out.load()
    aif = out["aif"].rename(aif_animal="animal")
    aif.attrs = {"units": "mM", "long_name": "plasma AIF (vessel ROI)", "hematocrit": hct,
                 "used": "cohort mean" if aif_source == "cohort" else "each animal's own"}
    maps = _with_design(out.drop_vars(["aif", "aif_cohort", "aif_animal", "t"], errors="ignore"), dce)
    return maps, aif

