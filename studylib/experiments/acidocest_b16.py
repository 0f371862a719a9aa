"""acidoCEST in one B16F10 mouse (real scanner data): import, tumour ROI, iopamidol CEST effects, pH.

The pieces of ``notebooks/acidocest_b16.py`` that no other notebook needs:

* the study on disk: :func:`import_scans` re-imports the vendored ParaVision scans (``data/real/
  bruker_pv601_mouse_cest``, scans 3-5) with :func:`studylib.io.importer.import_scans` and checks every file
  is byte-identical to the committed manifest; :func:`scan_rows` selects one scan (and the ROI on its grid)
  for :func:`studylib.load_study` (pre and post injection are two CEST scans of one animal and day);
* the tumour ROI: :func:`draw_tumour_roi` (a seeded, intensity-banded region on the RARE image: the rule
  is :data:`ROI_RULE`), :func:`roi_on_grid` (to the CEST grid by area coverage) and :func:`write_roi_files`;
* the pH calibration: :func:`phantom_effects` and :func:`calibrations` (the Pagel lab's in-vitro iopamidol
  Z-spectra, ``data/real/iopamidol_phantoms``) and :func:`calibration_at` (the study's saturation power);
* the in-vivo effects and pH: :func:`band_effects`, :func:`effect_se`, :func:`ph_map`, :func:`smooth_within`,
  :func:`pixel_table`, :func:`status_counts`, :func:`bootstrap_median`, :func:`conclusions`.

The generic steps (repetition averaging, B0 maps, B0-corrected Z-spectra, band weights, the ratiometric
pH and its calibration line) are :mod:`studylib.fit.cest` and :mod:`studylib.models.cest`.

References
----------
Chen LQ, Howison CM, Jeffery JJ, Robey IF, Kuo PH, Pagel MD. Evaluations of extracellular pH within in vivo
tumors using acidoCEST MRI. Magn Reson Med 2014;72:1408-1417 (the method: iopamidol's two amide CEST
effects at 4.2 and 5.5 ppm, their ratio calibrated against pH).
Longo DL, Dastru W, Digilio G, et al. Iopamidol as a responsive MRI-chemical exchange saturation transfer
contrast agent for pH mapping of kidneys. Magn Reson Med 2011;65:202-211 (ratiometric iopamidol pH).
Jones KM, Randtke EA, Yoshimaru ES, et al. Clinical translation of tumor acidosis measurements with
acidoCEST MRI. Mol Imaging Biol 2017;19:617-625 (doi:10.1007/s11307-016-1029-7; the lab's protocol).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analysis import check_effect, conclusions_table
from ..catalog import citation, experiment
from ..errors import ExperimentError
from ..layout import experiment_manifest, project_root
from ..manifest import read_manifest, sha256_file, write_manifest
from ..models import cest as _cest

__all__ = ["STUDY", "ANIMAL", "GROUP", "DAY", "SCANS", "BANDS_PPM", "ROI_RULE", "REFERENCE_PH", "study_manifest",
           "anatomy_manifest",
           "import_plan", "import_scans", "scan_rows", "grid_affine", "draw_tumour_roi", "roi_on_grid",
           "write_roi_files", "check_roi", "body_mask", "phantom_effects", "calibrations", "calibration_at",
           "band_effects", "band_points", "effect_se", "ph_map", "RATIO_STATUS", "smooth_within", "pixel_table",
           "roi_spectra", "ph_pixels", "sensitivity_table", "pooled_ratio",
           "status_counts", "bootstrap_median", "ENDPOINTS", "conclusions"]

#: the manifest's study name and the catalogue entry (:data:`studylib.catalog.EXPERIMENTS`)
STUDY = "acidocest_b16"
#: manifest ids of the one animal (ParaVision study ``20220316_B16F10Eso_M1``; treatment not recorded)
ANIMAL, GROUP, DAY = "m1", "b16f10", 0
#: ParaVision scans: RARE on the CEST slice (E3), cestFISP before (E4) and after (E5) iopamidol
SCANS = {"anatomy": "E3", "pre": "E4", "post": "E5"}
#: the label files drawn for this study (beside the imported scans), on the anatomy and the CEST grid
ROI_FILES = {"anatomy": "roi_t2w", "cest": "roi_cest"}
#: the anatomy (RARE 128 x 128, 0.3 mm) has its own manifest beside the CEST one (64 x 64, 0.6 mm): a
#: manifest session holds scans and an ROI on one grid (``studylib verify``)
ANATOMY_MANIFEST = "anatomy/data_manifest.csv"
#: which scans are imported into which manifest (relative to the experiment's manifest folder)
IMPORTS = {"data_manifest.csv": (SCANS["pre"], SCANS["post"]), ANATOMY_MANIFEST: (SCANS["anatomy"],)}
#: iopamidol amide bands (ppm, B0-corrected): the CEST effect is the mean over each band
BANDS_PPM = {"4.2": (3.95, 4.45), "5.5": (5.25, 5.75)}
#: pH of normal extracellular fluid / blood plasma, the reference for "acidic" (7.35-7.45)
REFERENCE_PH = 7.4
#: vendored in-vitro iopamidol phantoms (Pagel lab), per saturation power (uT)
PHANTOM_FILES = {3.0: "TableofData_SatP3SatT6002.csv", 4.0: "TableofData_SatP4SatT6002.csv"}
PHANTOM_FOLDER = "data/real/iopamidol_phantoms"
#: pixel outcomes of the pH estimate (:data:`studylib.models.cest.RATIO_STATUS`)
RATIO_STATUS = _cest.RATIO_STATUS

#: the ROI rule's parameters (voxel indices of T2w_E3, NIfTI x, y)
ROI_SEED_XY = (36, 68)
ROI_BAND = (0.75, 1.25)
ROI_OPENINGS = 2
ROI_MIN_COVERAGE = 0.5
ROI_RULE = (
    "Tumour ROI, drawn by a fixed rule on the single-slice RARE image T2w_E3 (the anatomy acquired on the CEST "
    f"slice; 0.3 mm pixels): (1) 3x3 median filter; (2) seed at voxel (x, y) = {ROI_SEED_XY}, scanner RAS "
    "(+8.4, -1.2, +1.9) mm, inside the subcutaneous mass on the flank that bulges out of the body wall and "
    f"spans ~6 mm over the 24-slice RARE E2; (3) keep pixels within {ROI_BAND[0]:g}-{ROI_BAND[1]:g} x the median "
    f"of the 5x5 neighbourhood of the seed; (4) binary opening, 4-connected cross, {ROI_OPENINGS} iterations "
    "(cuts the thin bridges to the body wall); (5) the connected component holding the seed, holes filled. "
    f"On the CEST grid (0.6 mm) a pixel is tumour when >= {100 * ROI_MIN_COVERAGE:g} % of its area (4x4 "
    "sub-samples mapped through both NIfTI affines) lies in that region. The seed is the only manual choice; "
    "no histology confirms the mass.")


def _project(rel: str) -> Path:
    return project_root() / rel


def study_manifest() -> Path:
    """The experiment's committed manifest (:func:`studylib.layout.experiment_manifest`): the CEST scans."""
    return experiment_manifest(STUDY)


def anatomy_manifest(manifest=None) -> Path:
    """The committed manifest of the anatomy (RARE E3 and the ROI drawn on it), beside ``manifest``."""
    return Path(manifest if manifest is not None else study_manifest()).resolve().parent / ANATOMY_MANIFEST


def _source(source=None) -> Path:
    src = Path(source) if source is not None else _project(experiment(STUDY).source)
    if not src.is_dir():
        raise ExperimentError(f"{src}: the vendored ParaVision folder is missing (see its SOURCE.txt)")
    return src


# ---------------------------------------------------------------------------------------- data on disk

def import_plan(source=None) -> pd.DataFrame:
    """Every scan of the vendored ParaVision folder: what ``studylib import --dry-run`` lists."""
    from ..io.importer import plan_import

    return pd.DataFrame([{"scan": p.label, "method": p.method, "protocol": p.comment or p.protocol, "kind": p.kind,
                          "matrix": "x".join(str(m) for m in p.matrix), "not imported because": p.reason or ""}
                         for p in plan_import(_source(source))])


def import_scans(manifest=None, source=None) -> pd.DataFrame:
    """Import the vendored ParaVision scans 3-5 and check them against the committed manifests.

    The scans are imported into scratch folders with :func:`studylib.io.importer.import_scans` exactly as
    the committed manifests were made (``studylib import SRC --scans 4,5 --out <folder> --study
    acidocest_b16 --animal m1 --group b16f10 --day 0``, and ``--scans 3`` into ``anatomy/``); every NIfTI
    and sidecar must be byte-identical (sha256) to its manifest row, and the files missing from the data
    folders are moved into place.  So each run starts from the scanner's own files, and a changed
    importer cannot silently change the data.

    Returns
    -------
    DataFrame: ``manifest, file, kind, sha256`` (first 12 hex), ``identical`` (to the manifest), ``action``.

    Raises
    ------
    ExperimentError
        a file differs from its committed manifest row, or a committed scan row was not produced.
    """
    from ..io.importer import import_scans as _import

    folder = Path(manifest if manifest is not None else study_manifest()).resolve().parent
    rows, problems = [], []
    for rel, scans in IMPORTS.items():
        man = folder / rel
        table = read_manifest(man)
        mine = table[(table["study"] == STUDY) & table["path"].str.contains(r"/(?:T2w|CEST)_E\d+\.")]
        committed = dict(zip(mine["path"], mine["sha256"]))
        with tempfile.TemporaryDirectory(prefix=".studylib-import-", dir=man.parent) as tmp:
            res = _import(_source(source), out=tmp, manifest=Path(tmp) / "data_manifest.csv", study=STUDY,
                          animal=ANIMAL, group=GROUP, day=DAY, scans=",".join(s[1:] for s in scans))
            new = read_manifest(res.manifest)
            for r in new.itertuples(index=False):
                same = committed.get(r.path) == r.sha256
                dest = man.parent / r.path
                action = "differs: not used"
                if same:
                    action = "already present"
                    if not dest.is_file() or sha256_file(dest) != r.sha256:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(Path(tmp) / r.path, dest)
                        action = "imported"
                else:
                    problems.append(f"{rel}: {r.path}: imported sha256 {r.sha256[:12]} but the manifest lists "
                                    f"{str(committed.get(r.path))[:12]}")
                rows.append({"manifest": rel, "file": r.path.rsplit("/", 1)[-1], "kind": r.kind,
                             "sha256": r.sha256[:12], "identical": same, "action": action})
            missing = sorted(set(committed) - set(new["path"]))
            problems += [f"{rel}: {p}: listed but not produced by the import" for p in missing]
    if problems:
        raise ExperimentError("the import of the vendored ParaVision scans no longer reproduces the committed "
                              "manifests (re-import with the commands in data/real/acidocest_b16/README.md and "
                              "review the change):\n" + "\n".join(problems))
    return pd.DataFrame(rows)


def scan_rows(manifest, scan: str) -> pd.DataFrame:
    """The manifest rows of one scan and of the ROI on its grid, for :func:`studylib.load_study`.

    ``load_study`` loads one image per kind, animal and day; pre and post injection are two CEST scans of one
    session, so each is loaded from its own rows.

    Parameters
    ----------
    manifest : path of the CEST manifest (scans ``"E4"``, ``"E5"``) or of the anatomy's (``"E3"``).
    scan : ``"E3"``, ``"E4"`` or ``"E5"`` (ParaVision scan numbers, :data:`SCANS`).

    Returns
    -------
    DataFrame of manifest rows (image, sidecar, ROI rows) with ``attrs["path"]`` = the manifest.
    """
    if scan not in SCANS.values():
        raise ExperimentError(f"scan must be one of {list(SCANS.values())}, got {scan!r}")
    table = read_manifest(manifest)
    keep = table["path"].str.contains(rf"_{scan}\.(?:nii\.gz|json)$") | (table["kind"] == "roi")
    out = table[keep & (table["study"] == STUDY)].reset_index(drop=True)
    if not out["path"].str.contains(rf"_{scan}\.nii\.gz$").any():
        raise ExperimentError(f"{manifest}: no image of scan {scan}")
    out.attrs["path"] = table.attrs["path"]
    return out


def grid_affine(manifest, scan: str) -> np.ndarray:
    """The (4, 4) NIfTI affine of a scan: voxel ``(x, y, z)`` -> scanner RAS coordinates (mm).

    Parameters
    ----------
    manifest : the manifest listing ``scan`` (see :func:`scan_rows`).
    scan : ``"E3"``, ``"E4"`` or ``"E5"``.
    """
    from ..io import read_header

    return np.asarray(read_header(_image(manifest, scan)).affine, dtype=float)


# ---------------------------------------------------------------------------------------- tumour ROI

def draw_tumour_roi(image_yx, *, seed_xy=ROI_SEED_XY, band=ROI_BAND, openings=ROI_OPENINGS) -> np.ndarray:
    """The tumour region of the RARE image by the rule of :data:`ROI_RULE`.

    Parameters
    ----------
    image_yx : 2-D image ``[y, x]`` (signal, a.u.), e.g. the slice of ``T2w_E3``.
    seed_xy : seed voxel ``(x, y)`` inside the tumour.
    band : kept intensities as fractions of the median of the seed's 5 x 5 neighbourhood.
    openings : iterations of the binary opening (4-connected cross).

    Returns
    -------
    ndarray of bool ``[y, x]``.

    Raises
    ------
    ExperimentError
        a non-finite or non-2-D image, or a seed outside the banded, opened region.
    """
    from scipy import ndimage as ndi

    img = np.asarray(image_yx, dtype=float)
    if img.ndim != 2 or not np.isfinite(img).all():
        raise ExperimentError(f"draw_tumour_roi needs a finite 2-D image [y, x], got shape {img.shape}")
    x, y = seed_xy
    smooth = ndi.median_filter(img, size=3)
    ref = float(np.median(smooth[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]))
    inside = (smooth >= band[0] * ref) & (smooth <= band[1] * ref)
    opened = ndi.binary_opening(inside, structure=ndi.generate_binary_structure(2, 1), iterations=openings)
    labels, _ = ndi.label(opened)
    if labels[y, x] == 0:
        raise ExperimentError(f"draw_tumour_roi: the seed (x, y) = {seed_xy} is not inside the banded region")
    return ndi.binary_fill_holes(labels == labels[y, x])


def roi_on_grid(mask_yx, src_affine, dst_affine, dst_shape_yx, *, min_coverage=ROI_MIN_COVERAGE,
                subsamples: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Carry a single-slice mask to another grid of the same slice by area coverage.

    Each destination pixel is sampled at ``subsamples x subsamples`` points, mapped through
    ``inv(src_affine) @ dst_affine`` (both RAS, mm) to the nearest source pixel.

    Parameters
    ----------
    mask_yx : bool ``[y, x]`` on the source grid (one slice).
    src_affine, dst_affine : (4, 4) NIfTI affines (voxel -> RAS mm) of the source and destination grids.
    dst_shape_yx : ``(ny, nx)`` of the destination grid.
    min_coverage : fraction of a destination pixel's area that must lie in the mask.
    subsamples : sub-samples per axis and destination pixel.

    Returns
    -------
    mask : bool ``[y, x]`` on the destination grid, coverage ``>= min_coverage``.
    coverage : float ``[y, x]``, the fraction of each destination pixel inside the source mask.
    """
    src = np.asarray(mask_yx, dtype=bool)
    ny, nx = dst_shape_yx
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    sub = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    cov = np.zeros((ny, nx))
    for di in sub:
        for dj in sub:
            p = m @ np.stack([ii.ravel() + di, jj.ravel() + dj, np.zeros(ii.size), np.ones(ii.size)])
            xi, yi = np.rint(p[0]).astype(int), np.rint(p[1]).astype(int)
            ok = (xi >= 0) & (xi < src.shape[1]) & (yi >= 0) & (yi < src.shape[0])
            hit = np.zeros(ii.size, dtype=bool)
            hit[ok] = src[yi[ok], xi[ok]]
            cov += hit.reshape(ny, nx)
    cov /= subsamples**2
    return cov >= min_coverage, cov


def _image(manifest, scan: str) -> Path:
    rows = scan_rows(manifest, scan)
    return Path(rows.attrs["path"]).resolve().parent / rows[rows["path"].str.contains(rf"_{scan}\.nii\.gz$")][
        "path"].iloc[0]


def _rois(manifest) -> dict:
    """The ROI of the rule on the anatomy and on the CEST grid, from the imported scans."""
    from ..io import read_nifti

    anat_man = anatomy_manifest(manifest)
    anat = np.asarray(read_nifti(_image(anat_man, SCANS["anatomy"])), dtype=float)[0]  # (z, y, x): the slice [y, x]
    cest_yx = read_nifti(_image(manifest, SCANS["pre"])).shape[-2:]
    roi_t2w = draw_tumour_roi(anat)
    roi_cest, cov = roi_on_grid(roi_t2w, grid_affine(anat_man, SCANS["anatomy"]), grid_affine(manifest, SCANS["pre"]),
                                cest_yx)
    return {"anatomy": roi_t2w, "cest": roi_cest, "coverage": cov}


def write_roi_files(manifest=None) -> list[str]:
    """Write the two label NIfTIs (+ sidecars with the rule) beside the imported scans and list them in
    the anatomy and the CEST manifests.

    A one-off (the committed ROI files were written by it; ``data/real/acidocest_b16/README.md``); the
    notebook only checks them with :func:`check_roi`.  Returns the files written (absolute).
    """
    from ..io import write_nifti

    man = Path(manifest if manifest is not None else study_manifest()).resolve()
    rois = _rois(man)
    written = []
    for key, target, scan in (("anatomy", anatomy_manifest(man), SCANS["anatomy"]), ("cest", man, SCANS["pre"])):
        table = read_manifest(target)
        mask = rois[key]
        side = {"Labels": {"1": "tumour"}, "DrawnOn": f"T2w_{SCANS['anatomy']}", "Grid": f"{scan} (this file's grid)",
                "Rule": ROI_RULE, "Software": "studylib.experiments.acidocest_b16.draw_tumour_roi / roi_on_grid",
                "Pixels": int(mask.sum())}
        rel = f"raw/{STUDY}/{ANIMAL}/day{DAY:02d}/{ROI_FILES[key]}.nii.gz"
        write_nifti(target.parent / rel, mask[None].astype(np.int16), grid_affine(target, scan), dtype=np.int16,
                    sidecar=side, design_order=True)
        paths = [rel, rel.replace(".nii.gz", ".json")]
        keep = table[~table["path"].isin(paths)]
        rows = [dict(study=STUDY, animal=ANIMAL, group=GROUP, day=DAY, kind="roi", path=p, sha256="",
                     notes=f"tumour ROI on the grid of {scan} (rule in the sidecar)") for p in paths]
        write_manifest(pd.concat([keep, pd.DataFrame(rows)], ignore_index=True), target)
        written += [str(target.parent / p) for p in paths]
    return written


def check_roi(manifest=None) -> pd.DataFrame:
    """Redraw the ROI by :data:`ROI_RULE` from the imported RARE image and compare with the committed files."""
    from ..io import read_nifti

    man = Path(manifest if manifest is not None else study_manifest()).resolve()
    rois = _rois(man)
    out = []
    for key, target, scan in (("anatomy", anatomy_manifest(man), SCANS["anatomy"]), ("cest", man, SCANS["pre"])):
        rel = f"raw/{STUDY}/{ANIMAL}/day{DAY:02d}/{ROI_FILES[key]}.nii.gz"
        committed = np.asarray(read_nifti(target.parent / rel))[0] > 0
        vs = np.abs(np.diag(grid_affine(target, scan))[:2])
        out.append({"file": rel.rsplit("/", 1)[-1], "grid": scan, "pixels": int(committed.sum()),
                    "area_mm2": round(float(committed.sum() * vs.prod()), 2),
                    "identical_to_rule": bool(np.array_equal(committed, rois[key]))})
    return pd.DataFrame(out)


def body_mask(m0: xr.DataArray, *, fraction: float = 0.2) -> xr.DataArray:
    """The animal, not air: pixels whose unsaturated signal exceeds ``fraction`` of its 99th percentile.

    Parameters
    ----------
    m0 : unsaturated (M0) image, a.u.
    fraction : threshold as a fraction of the 99th percentile.

    Returns
    -------
    bool DataArray named ``body``.
    """
    thr = float(np.nanpercentile(np.asarray(m0), 99)) * fraction
    return (m0 > thr).rename("body")


# ---------------------------------------------------------------------------------------- calibration

def _load_phantoms(folder=None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    folder = Path(folder) if folder is not None else _project(PHANTOM_FOLDER)
    infos, spectra, offsets = [], [], None
    for b1, name in PHANTOM_FILES.items():
        df = pd.read_csv(folder / name)
        off = np.array([float(c) for c in df.columns[6:]])
        sig = df.iloc[:, 6:].to_numpy(float)
        ref = np.isclose(off, 100.0)
        o = off[~ref]
        order = np.argsort(o)
        z = (sig[:, ~ref] / sig[:, ref][:, :1])[:, order]
        offsets = o[order] if offsets is None else offsets
        if not np.allclose(offsets, o[order]):
            raise ExperimentError(f"{folder / name}: offsets differ from {PHANTOM_FILES}")
        infos.append(pd.DataFrame({"b1_uT": b1, "pH": df["pH"], "conc_mM": df["Conc(mM)"],
                                   "t1_s": df["ApproT1(sec)"], "temp_C": df["Temp"], "file": name}))
        spectra.append(z)
    return pd.concat(infos, ignore_index=True), offsets, np.vstack(spectra)


def _band_grid(band) -> np.ndarray:
    return np.linspace(band[0], band[1], 11)


def phantom_effects(folder=None, *, min_conc_mM: float = 40.0, ph_range=(6.0, 7.5)) -> pd.DataFrame:
    """Iopamidol CEST effects (% of S0) at 4.2 and 5.5 ppm of each in-vitro phantom, as in vivo.

    Each phantom's Z-spectrum (signal / signal at 100 ppm) is B0-corrected by its water minimum
    (:func:`studylib.models.cest.b0_shift`); the direct water saturation it would have without the
    agent is a water Lorentzian plus a broad baseline fitted to the points at -3...2.4 and 7.8...10 ppm
    (no iopamidol there); the effect is the mean over each band of :data:`BANDS_PPM` of that reference
    minus the measured spectrum.  In vivo the reference is the pre-injection spectrum instead
    (:func:`band_effects`): both are the agent's saturation transfer on top of the background.

    Returns
    -------
    DataFrame, one row per phantom kept (concentration >= ``min_conc_mM``, pH within ``ph_range``):
    ``b1_uT, pH, conc_mM, t1_s, temp_C, file, b0_ppm, effect_42, effect_55, log_ratio``.
    """
    info, off, z = _load_phantoms(folder)
    keep = (info["conc_mM"] >= min_conc_mM) & info["pH"].between(*ph_range)
    info, z = info[keep].reset_index(drop=True), z[keep.to_numpy()]
    b0, ok, _ = _cest.b0_shift(z, off, method="minimum", search_ppm=2.0)
    if not ok.all():
        raise ExperimentError(f"phantom B0 not found for {int((~ok).sum())} phantom(s)")
    ref_grid = np.concatenate([np.arange(-3.0, 2.41, 0.2), [7.8, 8.5, 9.0, 9.5, 10.0]])
    zref = _cest.shift_zspectrum(z, off, b0, ref_grid)
    pools = (_cest.Pool("water", 0.9, 0.0, 1.5, (0.05, 1.0), (-0.5, 0.5), (0.2, 8.0)),
             _cest.Pool("baseline", 0.05, 0.0, 200.0, (0.0, 0.5), (-1.0, 1.0), (50.0, 2000.0)))
    params, _, fit_ok = _cest.fit_lorentzian_pools(zref, ref_grid, pools)
    if not fit_ok.all():
        raise ExperimentError("the water reference fit failed for some phantoms")
    out = info.assign(b0_ppm=b0)
    for key, band in BANDS_PPM.items():
        q = _band_grid(band)
        ref = _cest.zspectrum(q, params[:, 0::3], params[:, 1::3], params[:, 2::3])
        meas = _cest.shift_zspectrum(z, off, b0, q)
        out[f"effect_{key.replace('.', '')}"] = 100.0 * np.mean(ref - meas, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["log_ratio"] = np.log10(out["effect_42"] / out["effect_55"])
    return out


def calibrations(effects: pd.DataFrame) -> pd.DataFrame:
    """The calibration line ``pH = intercept + slope log10(E_4.2 / E_5.5)`` per saturation power.

    Parameters
    ----------
    effects : :func:`phantom_effects` table.

    Returns
    -------
    DataFrame indexed by ``b1_uT`` (uT): ``intercept`` (pH), ``slope`` (pH per decade), ``r``, ``residual_sd``
    (pH), ``n``, and the calibrated spans ``log_ratio_lo/hi`` and ``ph_lo/hi``
    (:func:`studylib.models.cest.fit_ratiometric_calibration`).
    """
    rows = []
    for b1, g in effects.groupby("b1_uT"):
        c = _cest.fit_ratiometric_calibration(g["pH"], g["effect_42"], g["effect_55"])
        rows.append({"b1_uT": float(b1), **{k: v for k, v in c.items() if not k.endswith("range")},
                     "log_ratio_lo": c["log_ratio_range"][0], "log_ratio_hi": c["log_ratio_range"][1],
                     "ph_lo": c["ph_range"][0], "ph_hi": c["ph_range"][1]})
    return pd.DataFrame(rows).set_index("b1_uT")


def calibration_at(cal: pd.DataFrame, b1_uT: float) -> dict:
    """The calibration at the study's saturation power, interpolated between the measured ones.

    Intercept and slope are interpolated linearly in B1; the line is valid only on the log-ratio (and pH)
    span that every calibration covers (no extrapolation).

    Parameters
    ----------
    cal : :func:`calibrations` table.
    b1_uT : saturation power (uT), within the calibrated powers.

    Returns
    -------
    dict: ``intercept``, ``slope``, ``log_ratio_range``, ``ph_range``, ``b1_uT`` (input of :func:`ph_map`).

    Raises
    ------
    ExperimentError
        ``b1_uT`` outside the calibrated powers.
    """
    b1s = np.asarray(cal.index, dtype=float)
    if not (b1s.min() <= b1_uT <= b1s.max()):
        raise ExperimentError(f"B1 {b1_uT} uT is outside the calibrated powers {b1s.tolist()} uT")
    c = {k: float(np.interp(b1_uT, b1s, cal[k])) for k in ("intercept", "slope")}
    c["log_ratio_range"] = (float(cal["log_ratio_lo"].max()), float(cal["log_ratio_hi"].min()))
    c["ph_range"] = (float(cal["ph_lo"].max()), float(cal["ph_hi"].min()))
    c["b1_uT"] = float(b1_uT)
    return c


# ---------------------------------------------------------------------------------------- in vivo

def band_effects(z_pre: xr.DataArray, z_post: xr.DataArray, *, dim: str = "offset") -> xr.Dataset:
    """Iopamidol CEST effects: band means of the B0-corrected ``Z_pre - Z_post``.

    Parameters
    ----------
    z_pre, z_post : :func:`studylib.corrected_zspectrum` (% of S0) of the pre- and post-injection scans at
        :func:`band_points` (11 points per band of :data:`BANDS_PPM`, the 4.2 ppm band first).
    dim : the offset dimension.

    Returns
    -------
    Dataset: ``effect_42`` and ``effect_55`` (% of S0; positive where the agent saturates water).
    """
    diff = z_pre - z_post
    out = {}
    for i, key in enumerate(BANDS_PPM):
        d = diff.isel({dim: slice(11 * i, 11 * (i + 1))}).mean(dim)
        d.attrs = {"units": "%", "long_name": f"iopamidol CEST effect at {key} ppm (Z pre - Z post)"}
        out[f"effect_{key.replace('.', '')}"] = d
    return xr.Dataset(out)


def band_points() -> np.ndarray:
    """The offsets (ppm) at which :func:`band_effects` needs the corrected spectra."""
    return np.concatenate([_band_grid(b) for b in BANDS_PPM.values()])


def effect_se(offsets_ppm, sem_pre, m0_pre, sem_post, m0_post) -> dict:
    """Standard errors of the two band effects from the per-voxel repetition noise.

    ``SE = 100 ||w|| sqrt((sem_pre / m0_pre)^2 + (sem_post / m0_post)^2)`` with ``w`` the band-mean weights
    on the acquired offsets (:func:`studylib.models.cest.band_mean_weights`; the small B0 shift of the
    weights is ignored, as is the noise of M0, which averages 3-6 frames x repetitions).

    Parameters
    ----------
    offsets_ppm : acquired offsets (ppm, ascending).
    sem_pre, sem_post : per-voxel SEM of the repetition-averaged signal (:func:`studylib.average_repetitions`).
    m0_pre, m0_post : M0 images of the two scans (same units as the SEM).

    Returns
    -------
    dict ``se_42``, ``se_55`` (% of S0).
    """
    noise = 100.0 * np.sqrt((sem_pre / m0_pre) ** 2 + (sem_post / m0_post) ** 2)
    return {f"se_{k.replace('.', '')}": noise * float(np.linalg.norm(_cest.band_mean_weights(offsets_ppm, *b)))
            for k, b in BANDS_PPM.items()}


def ph_map(effects: xr.Dataset, se: Mapping, cal: Mapping, *, k: float = 2.0) -> xr.Dataset:
    """pH per pixel by :func:`studylib.models.cest.ratiometric_ph`.

    Parameters
    ----------
    effects : :func:`band_effects` (% of S0).
    se : :func:`effect_se` (% of S0).
    cal : :func:`calibration_at`.
    k : detection threshold in standard errors.

    Returns
    -------
    Dataset: ``ph`` (pH; NaN without one), ``log_ratio`` (log10 E_4.2/E_5.5), ``status`` (int8,
    :data:`RATIO_STATUS`).
    """
    ph, lr, st = xr.apply_ufunc(
        lambda a, b, sa, sb: _cest.ratiometric_ph(a, b, intercept=cal["intercept"], slope=cal["slope"],
                                                  log_ratio_range=cal["log_ratio_range"], se_a=sa, se_b=sb, k=k),
        effects["effect_42"], effects["effect_55"], se["se_42"], se["se_55"], output_core_dims=[[], [], []],
        dask="parallelized", output_dtypes=[float, float, np.int8])
    ph.attrs = {"units": "pH", "long_name": "extracellular pH (acidoCEST)"}
    lr.attrs = {"units": "1", "long_name": "log10 CEST ratio 4.2 / 5.5 ppm"}
    return xr.Dataset({"ph": ph, "log_ratio": lr, "status": st.astype(np.int8)})



def smooth_within(z: xr.DataArray, mask: xr.DataArray, sigma_px: float) -> tuple[xr.DataArray, xr.DataArray]:
    """Gaussian smoothing in ``(y, x)`` restricted to ``mask`` (normalised convolution): a sensitivity analysis.

    The Pagel lab's analysis code smooths its CEST images (Gaussian, sigma 2 pixels) before fitting; here the
    smoothing stays inside the ROI so no outside tissue leaks in.  Smoothed pixels are correlated: their
    statistics are not used for the estimate.

    Parameters
    ----------
    z : DataArray with ``y``, ``x`` dims (e.g. corrected spectra at the band points).
    mask : bool DataArray over ``y``, ``x`` (the tumour).
    sigma_px : Gaussian SD in pixels (kernel truncated at 3 sigma).

    Returns
    -------
    smoothed : like ``z``, NaN outside the mask's reach.
    factor : the per-pixel reduction of white-noise SD, ``sqrt(sum w^2) / sum w`` (multiply the SEs by it).
    """
    from scipy import ndimage as ndi

    r = int(np.ceil(3 * sigma_px))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    ker = np.outer(g, g)

    def _one(a, m):
        m = m.astype(float)
        den = ndi.convolve(m, ker, mode="constant")
        num = ndi.convolve(np.where(m > 0, a, 0.0), ker, mode="constant")
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def _factor(m):
        m = m.astype(float)
        den = ndi.convolve(m, ker, mode="constant")
        return np.where(den > 0, np.sqrt(ndi.convolve(m, ker**2, mode="constant")) / np.where(den > 0, den, 1), np.nan)

    out = xr.apply_ufunc(_one, z, mask, input_core_dims=[["y", "x"], ["y", "x"]], output_core_dims=[["y", "x"]],
                         vectorize=True).transpose(*z.dims)
    fac = xr.apply_ufunc(_factor, mask, input_core_dims=[["y", "x"]], output_core_dims=[["y", "x"]],
                         vectorize=True).transpose(*mask.dims)
    out.attrs = dict(z.attrs)
    return out, fac


def pixel_table(maps: Mapping[str, xr.DataArray], roi: xr.DataArray, *, label: int = 1) -> pd.DataFrame:
    """One row per ROI pixel: its ``x, y`` and the value of every map.

    Parameters
    ----------
    maps : name -> DataArray on the ROI's grid (computed), e.g. effects, SEs, pH, status.
    roi : label map (one animal, day and slice after squeezing).
    label : ROI label (1 = tumour).
    """
    sel = (roi == label).values.squeeze()
    ys, xs = np.nonzero(sel)
    cols = {"x": xs, "y": ys}
    for name, da in maps.items():
        cols[name] = np.asarray(da.values).squeeze()[sel]
    return pd.DataFrame(cols)


def roi_spectra(z: xr.DataArray, roi: xr.DataArray, *, label: int = 1, dim: str = "offset") -> np.ndarray:
    """The spectra of the ROI pixels as an array ``(n_pixels, n_offsets)`` (input of :func:`studylib.plots.zspectra`).

    Parameters
    ----------
    z : computed spectra with ``dim`` and the ROI's voxel dims.
    roi : label map on the same voxels; ``label``: the ROI label.
    """
    inside = (roi == label).values.reshape(-1)
    arr = z.transpose(..., dim).values.reshape(-1, z.sizes[dim])
    return arr[inside]


def ph_pixels(effects: xr.Dataset, se: Mapping, cal: Mapping, roi: xr.DataArray, *, k: float = 2.0,
              extra: Mapping[str, xr.DataArray] | None = None) -> pd.DataFrame:
    """:func:`ph_map` and :func:`pixel_table` in one: one row per tumour pixel.

    Parameters
    ----------
    effects, se, cal, k : as :func:`ph_map`.
    roi : the tumour label map (label 1).
    extra : more maps to tabulate (e.g. the B0 maps).

    Returns
    -------
    DataFrame: ``x, y, effect_42, effect_55, se_42, se_55`` (% of S0), ``log_ratio``, ``ph``, ``status`` and
    the ``extra`` columns.
    """
    ph = ph_map(effects, se, cal, k=k).compute()
    maps = {"effect_42": effects["effect_42"], "effect_55": effects["effect_55"], "se_42": se["se_42"],
            "se_55": se["se_55"], "log_ratio": ph["log_ratio"], "ph": ph["ph"], "status": ph["status"],
            **(extra or {})}
    return pixel_table({n: m.compute() if hasattr(m, "compute") else m for n, m in maps.items()}, roi)


def status_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Pixels per :data:`RATIO_STATUS` outcome (all four listed, zeros included)."""
    n = table["status"].value_counts()
    return pd.DataFrame({"outcome": list(RATIO_STATUS.values()),
                         "pixels": [int(n.get(k, 0)) for k in RATIO_STATUS]}).set_index("outcome")


def pooled_ratio(pixels: pd.DataFrame, cal: Mapping) -> dict:
    """The ratio of the tumour-mean effects (all analysable pixels pooled) and the pH it maps to, if any.

    A check on the pixel median, which only describes the pixels whose own ratio is measurable: pooling
    averages the noise down without selecting pixels.  ``ph`` is None when the pooled log ratio lies outside
    the calibrated span (``inside`` False) or an effect is not positive.
    """
    e42, e55 = float(pixels["effect_42"].mean()), float(pixels["effect_55"].mean())
    lr = float(np.log10(e42 / e55)) if e42 > 0 and e55 > 0 else float("nan")
    lo, hi = cal["log_ratio_range"]
    inside = bool(np.isfinite(lr) and lo <= lr <= hi)
    return {"effect_42": e42, "effect_55": e55, "log_ratio": lr, "inside": inside,
            "ph": cal["intercept"] + cal["slope"] * lr if inside else None,
            "ph_at_span_end": cal["intercept"] + cal["slope"] * hi}


def sensitivity_table(variants: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per analysis variant (name -> :func:`ph_pixels` table): pixels with a pH, median and IQR (pH), and the
    pixels left out by reason (:data:`RATIO_STATUS`)."""
    rows = []
    for name, t in variants.items():
        ok = t.loc[t["status"] == 0, "ph"]
        rows.append({"variant": name, "pixels with pH": int(ok.size), "median pH": ok.median(),
                     "IQR low": ok.quantile(0.25), "IQR high": ok.quantile(0.75),
                     **{RATIO_STATUS[k]: int((t["status"] == k).sum()) for k in (1, 2, 3)}})
    return pd.DataFrame(rows).set_index("variant")


def bootstrap_median(values, *, statistic=np.median, n_boot: int = 10000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """``statistic`` of ``values`` and its percentile bootstrap CI over the values (pixels).

    Pixels of one tumour are not independent animals: the CI is the within-animal (pixel sampling and
    noise) uncertainty of this one tumour, not the spread between animals (Efron & Tibshirani, An
    Introduction to the Bootstrap, 1993, percentile interval).

    Parameters
    ----------
    values : the per-pixel values (NaN dropped; at least 3 finite).
    statistic : ``numpy`` reduction with an ``axis`` argument (median, mean).
    n_boot, seed : resamples and random seed (reproducible).
    alpha : 1 - confidence level.

    Returns
    -------
    (statistic, ci_low, ci_high) in the values' units.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 3:
        raise ExperimentError(f"a bootstrap CI needs at least 3 finite values, got {v.size}")
    rng = np.random.default_rng(seed)
    boots = statistic(v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(statistic(v)), float(lo), float(hi)


#: the findings of the notebook: key (what ``primary_endpoint`` names) -> what it is
ENDPOINTS = {
    "tumour_ph": "tumour median pHe minus the reference pH of normal extracellular fluid",
    "effect_42": "tumour mean iopamidol CEST effect at 4.2 ppm (the agent reached the tumour)",
    "effect_55": "tumour mean iopamidol CEST effect at 5.5 ppm (the agent reached the tumour)",
}


def conclusions(pixels: pd.DataFrame, *, n_boot: int = 10000, seed: int = 0, primary: str = "tumour_ph",
                alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``acidocest_b16`` (one animal: no group statistics, no simulated truth).

    Row 1: tumour median pH minus :data:`REFERENCE_PH` (acidic if negative, the papers' finding) over the pixels
    with a measured pH; rows 2-3: the tumour mean iopamidol CEST effect at 4.2 and 5.5 ppm over all tumour
    pixels (the agent reached the tumour if positive).  CIs: percentile bootstrap over pixels of this
    tumour (within-animal uncertainty); p is not given (significance = the CI excludes 0, so no Holm
    adjustment: ``p_holm`` is NaN).  ``primary`` names the primary endpoint (:data:`ENDPOINTS`).
    """
    paper = citation(STUDY)
    ok = pixels[pixels["status"] == 0]
    med, lo, hi = bootstrap_median(ok["ph"], n_boot=n_boot, seed=seed, alpha=alpha)
    boot = f"{100 * (1 - alpha):g} % percentile bootstrap over pixels, {n_boot} resamples (within one animal)"
    finding = (f"tumour pHe (median {med:.2f} of the {len(ok)} of {len(pixels)} pixels with a measurable pH) "
               f"- {REFERENCE_PH:g}")
    rows = {"tumour_ph": check_effect(finding,
                         estimate=med - REFERENCE_PH, ci_low=lo - REFERENCE_PH, ci_high=hi - REFERENCE_PH,
                         expected_sign=-1, units="pH", paper=paper, alpha=alpha,
                         method=f"acidoCEST ratio 4.2/5.5 ppm, literature (in-vitro) calibration; {boot}")}
    for key in ("42", "55"):
        m, lo, hi = bootstrap_median(pixels[f"effect_{key}"], statistic=np.mean, n_boot=n_boot, seed=seed, alpha=alpha)
        n = int(np.isfinite(pixels[f"effect_{key}"]).sum())
        rows[f"effect_{key}"] = check_effect(
            f"tumour iopamidol CEST effect at {key[0]}.{key[1]} ppm (mean of {n} pixels)", estimate=m, ci_low=lo,
            ci_high=hi, expected_sign=1, units="% of S0", paper=paper,
            method=f"band mean of Z pre - Z post, B0-corrected; {boot}", alpha=alpha)
    return conclusions_table(rows, primary=primary, alpha=alpha)

