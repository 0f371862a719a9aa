"""``generate()``: write a whole synthetic study (raw files, truth, manifest) deterministically."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .. import layout
from ..catalog import EXPERIMENTS
from ..errors import SynthError
from ..manifest import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from ._common import DEFAULT_SEED, PARTIAL_VOLUME_FACTOR, PRESETS, RATER, Context, Session, StudyPlan, receive_channels
from ._iron import plan_ampb, plan_blz945, plan_ferumoxytol_therapy
from ._molecular import plan_cest, plan_fluorine
from ._perfusion import plan_collagen, plan_ktrans
from ._write import _jsonable, atomic_write_bytes, csv_bytes, json_bytes, write_npz
from .physics.acquisition import (add_coil_noise_rss_zyx, coil_sensitivities, dice, mix_partial_volume,
                                  partial_volume_fractions, rater_labels)
from .physics.perfusion import displace_frames

__all__ = ["SynthError", "STUDIES", "STUDY_KINDS", "MANIFEST_COLUMNS", "generate", "plan"]


#: study id -> planner, in the order they are written
STUDIES = {
    "ampb_ferumoxytol": plan_ampb,
    "blz945_femri": plan_blz945,
    "ferumoxytol_therapy": plan_ferumoxytol_therapy,
    "collagen_adc": plan_collagen,
    "ktrans_hypoxia": plan_ktrans,
    "fluorine19_pfc": plan_fluorine,
    "lactate_cest": plan_cest,
}

#: study id -> the image kinds written per session (besides ``roi``): the catalogue's synthetic experiments
#: (a real-data experiment, ``data="real"``, has no planner: its scans are committed under data/real/)
STUDY_KINDS = {name: e.kinds for name, e in EXPERIMENTS.items() if e.data == "synthetic"}
if list(STUDIES) != list(STUDY_KINDS):  # pragma: no cover - a planner per synthetic experiment, same order
    raise ImportError(f"synth planners {list(STUDIES)} differ from the catalogue's synthetic experiments "
                      f"{list(STUDY_KINDS)}")

MANIFEST_COLUMNS = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]

#: a file ``generate`` leaves in ``out``: the folder holds a synthetic study it may regenerate
SYNTH_MARKER = ".studylib-synth"


def _check_seed(seed) -> int:
    if seed is None:
        return DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_preset(preset) -> str:
    if preset not in PRESETS:
        raise SynthError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return preset


def plan(study: str, preset: str = "ci", seed: int | None = None) -> StudyPlan:
    """The in-memory plan of one study (animals, session generator with noise-free signals, truth)."""
    if study not in STUDIES:
        raise SynthError(f"study must be one of {list(STUDIES)}, got {study!r}")
    return STUDIES[study](Context(PRESETS[_check_preset(preset)], _check_seed(seed), study))


def _to_nifti_order(arr: np.ndarray) -> np.ndarray:
    """(z, y, x[, n]) -> NIfTI (x, y, z[, n])."""
    return np.transpose(arr, (2, 1, 0) + tuple(range(3, arr.ndim)))


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root).as_posix()


#: ROI names the rater keeps exactly: the background (air: the body's outline is the high-contrast air/tissue
#: edge, so no drawn ROI crosses it and the noise ROI stays signal-free), and the vessel and reference tube
#: (a few obvious voxels of a small bright structure).  Every other ROI (tumours, muscle) is outlined.
_PROTECTED = ("vessel", "reference_tube", "background")


def _rater_roles(roi_labels: dict[int, str]) -> tuple[list[int], list[int]]:
    """(labels the rater outlines -- other structures first, tumours last, on top --, labels kept exactly)."""
    drawn = [v for v, n in sorted(roi_labels.items()) if n not in _PROTECTED]
    drawn.sort(key=lambda v: "tumour" in roi_labels[v] or "tumor" in roi_labels[v])
    return drawn, [v for v, n in sorted(roi_labels.items()) if n in _PROTECTED]


def _rater_summary(rows: list[dict]) -> dict:
    """Mean Dice and relative volume error of the drawn ROIs per structure name (over sessions)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["roi"] for r in rows):
        rr = [r for r in rows if r["roi"] == name]
        dv = np.array([r["drawn_voxels"] / r["true_voxels"] - 1.0 for r in rr])
        out[name] = {"dice_mean": float(np.mean([r["dice"] for r in rr])),
                     "dice_min": float(np.min([r["dice"] for r in rr])),
                     "volume_error_mean": float(dv.mean()), "volume_error_rms": float(np.sqrt((dv ** 2).mean())),
                     "sessions": len(rr)}
    return out


def _session_anatomy(s: Session, grid, study: str):
    """The session's anatomy at :data:`PARTIAL_VOLUME_FACTOR` x in-plane (None without ``labels_on``).

    ``labels_on`` must reproduce the session's label map on the study grid (one geometry for both).
    """
    if s.labels_on is None:
        return None
    base = np.asarray(s.labels_on(grid))
    if base.shape != s.roi.shape or not np.array_equal(base, s.roi):
        raise SynthError(f"{study} {s.animal.id} day {s.day}: the session's labels_on(grid) differs from its label "
                         f"map in {int(np.sum(base != s.roi)) if base.shape == s.roi.shape else 'shape'} voxels")
    return np.asarray(s.labels_on(grid.refined(PARTIAL_VOLUME_FACTOR)))


def _pv_maps(s: Session, classes, frac) -> dict[str, np.ndarray]:
    """True area fraction (0-1) of each named structure per voxel: ``pv_fraction_<roi name>``."""
    return {f"pv_fraction_{s.roi_labels[int(c)]}": fc for c, fc in zip(classes, frac) if int(c) in s.roi_labels}


def _clear_background(roi: np.ndarray, s: Session, classes, frac) -> np.ndarray:
    """The drawn noise ROI kept clear of the partial-volume edge: background voxels with any signal-bearing
    sub-voxel (body or tube) become 0 (unlabelled), as a lab draws its noise ROI in air, off the object."""
    bg = [v for v, n in s.roi_labels.items() if n == "background"]
    if not bg:
        return roi
    pure_air = np.zeros(roi.shape, bool)
    for c, fc in zip(classes, frac):
        pure_air |= (int(c) == bg[0]) & (fc == 1.0)
    return np.where((roi == bg[0]) & ~pure_air, 0, roi).astype(roi.dtype)


_PV_DOC = {"method": "each scan rendered from the anatomy drawn at factor x the in-plane resolution (z not refined: "
                     "2-D slices): a voxel's signal is sum_c f_c S_c, f_c the area fraction of tissue class c, S_c "
                     "the noise-free signal of the nearest voxel whose centre is class c (the voxel's own for its "
                     "centre class), mixed before the receive noise; pure voxels unchanged "
                     "(physics.acquisition.mix_partial_volume)",
           "truth": "ROI truths stay the tissue truths over the voxel-centre label map (sessions.csv, maps roi)",
           "noise_roi": "the drawn background ROI keeps only pure-air voxels (no body or tube sub-voxel)"}


def _write_study(pl: StudyPlan, out: Path, root: Path, seed: int, preset: str, noise: bool) -> list[dict]:
    from ..io.nifti import write_nifti
    from ..io.sidecar import sidecar_path
    from ..manifest import sha256_file

    study = pl.study
    grid = pl.grid
    affine = grid.affine()
    ctx = Context(PRESETS[preset], seed, study)
    rows: list[dict] = []
    session_truth: list[dict] = []
    raw = out / "raw" / study
    tdir = out / "truth" / study

    def add(path: Path, a, day, kind, notes=""):
        rows.append(dict(study=study, animal=a.id if a else "", group=a.group if a else "",
                         day="" if day is None else int(day), kind=kind, path=_rel(path, root),
                         sha256=sha256_file(path), sex=(a.sex if a else ""), model=(a.model or "") if a else "",
                         notes=notes))

    coils: dict[int, np.ndarray] = {}  # L -> sensitivities (L, ny, nx): one coil set per study, fixed
    channels: dict[str, int] = {}
    rater_rows: list[dict] = []
    kept: set[str] = set()
    pv_on, pv_kinds = False, set()
    for s in pl.sessions():
        a, d = s.animal, s.day
        folder = raw / a.id / f"day{d:02d}"
        note = a.notes.get(d, "")
        rng = ctx.rng(2, a.index, d)
        anatomy = _session_anatomy(s, grid, study) if noise else None  # partial volume with the realistic acquisition
        pv_on |= anatomy is not None
        fractions = partial_volume_fractions(anatomy, PARTIAL_VOLUME_FACTOR) if anatomy is not None else None
        for scan in s.scans:
            n_ch = receive_channels(study, scan)
            side = dict(scan.sidecar)
            if side.setdefault("ReceiveCoilChannels", n_ch) != n_ch:
                raise SynthError(f"{study} {scan.kind}: sidecar ReceiveCoilChannels {side['ReceiveCoilChannels']!r} "
                                 f"differs from the scan's receive_channels {n_ch}")
            channels[scan.kind] = n_ch
            signal = scan.data
            if anatomy is not None and scan.partial_volume:  # tissue signals add in the voxel, before the noise
                if np.shape(signal)[:3] != grid.shape:
                    raise SynthError(f"{study} {scan.kind}: data of shape {np.shape(signal)} is not on the study grid "
                                     f"{grid.shape} (z, y, x[, n])")
                signal = mix_partial_volume(signal, s.roi, anatomy, PARTIAL_VOLUME_FACTOR, grid.voxel_mm[::-1],
                                            fractions=fractions)[0]
                pv_kinds.add(scan.kind)
            if scan.motion is not None:  # bulk motion of the object during some frames, before the receive noise
                signal = displace_frames(signal, *scan.motion)
            if noise:  # sigma per channel; sensitivities with sum_l |c_l|^2 = 1 keep the planner's signal level
                if n_ch not in coils:
                    coils[n_ch] = coil_sensitivities(grid.shape[1:], n_ch)
                data = add_coil_noise_rss_zyx(signal, scan.sigma, rng, coils[n_ch])
            else:
                data = np.asarray(signal, float)
            img = write_nifti(folder / f"{scan.kind}.nii.gz", _to_nifti_order(data), affine, dtype=np.int16,
                              sidecar=_jsonable(side, 10))
            add(Path(img), a, d, scan.kind, note)
            add(sidecar_path(img), a, d, scan.kind, note)
        drawn_labels, protected = _rater_roles(s.roi_labels)
        kept |= {s.roi_labels[v] for v in protected if (s.roi == v).any()}
        roi = (rater_labels(s.roi, ctx.rng(20, a.index, d), drawn=drawn_labels, protect=protected, **RATER)
               if noise else s.roi)
        if fractions is not None:
            roi = _clear_background(roi, s, *fractions)
        for v in drawn_labels:
            true, dr = s.roi == v, roi == v
            if true.any():
                rater_rows.append(dict(animal=a.id, day=d, roi=s.roi_labels[v], dice=dice(true, dr),
                                       true_voxels=int(true.sum()), drawn_voxels=int(dr.sum())))
        img = write_nifti(folder / "roi.nii.gz", _to_nifti_order(roi), affine, dtype=np.int16,
                          sidecar={"Labels": {str(k): v for k, v in sorted(s.roi_labels.items())},
                                   "GeneratedBy": "studylib.synth"})
        add(Path(img), a, d, "roi", note)
        add(sidecar_path(img), a, d, "roi", note)
        maps = {k: np.asarray(v, dtype=np.float32) for k, v in s.maps.items()}
        if fractions is not None:
            maps.update({k: v.astype(np.float32) for k, v in _pv_maps(s, *fractions).items()})
        maps["roi"] = s.roi  # the true label map; raw/.../roi.nii.gz is the rater's
        write_npz(tdir / "maps" / f"{a.id}_day{d:02d}.npz", maps)
        session_truth.append(dict(animal=a.id, group=a.group, model=a.model or "", sex=a.sex, day=d, **s.truth))

    hpath = raw / "histology.csv"
    atomic_write_bytes(hpath, csv_bytes(pl.histology_rows, pl.histology_columns))
    add(hpath, None, None, "histology")

    cols = list(dict.fromkeys(k for r in session_truth for k in r))
    atomic_write_bytes(tdir / "sessions.csv", csv_bytes(session_truth, cols))
    summary = pl.summarise(session_truth)
    animals = {a.id: {"group": a.group, "sex": a.sex, "model": a.model, "days": a.days, "params": a.params}
               for a in pl.animals}
    truth = {"study": study, "preset": preset, "seed": seed, "noise": bool(noise),
             "grid": {"shape_zyx": list(grid.shape), "voxel_mm_xyz": list(grid.voxel_mm),
                      "fov_mm_xyz": [grid.fov_x_mm, grid.fov_y_mm, grid.fov_z_mm]},
             "design": pl.design, "animals": animals, "sessions": session_truth, **summary,
             "acquisition": {"receive_coil_channels": channels,
                             "noise": ("complex Gaussian noise, SD sigma per channel and per real/imaginary part, "
                                       "on L receive channels with smooth normalised sensitivities "
                                       "(sum_l |c_l|^2 = 1), root-sum-of-squares combined" if noise else "none"),
                             "partial_volume": _PV_DOC | {"factor": PARTIAL_VOLUME_FACTOR, "scans": sorted(pv_kinds)}
                             if pv_on else "none: every voxel holds the signal of its centre's tissue only"},
             "rater": {"method": ("boundary of each outlined ROI moved by a smooth random signed distance, "
                                  "independent per ROI, slice and session (physics.acquisition.rater_labels)"
                                  if noise else "none: raw roi.nii.gz is the true label map"),
                       **RATER, "outlined": sorted({r["roi"] for r in rater_rows}),
                       "kept_exactly": sorted(kept) if noise else [],
                       "by_roi": _rater_summary(rater_rows) if noise else {},
                       "sessions": rater_rows if noise else []},
             "files": {"sessions.csv": "one row per (animal, day): true ROI means (over the true label map)",
                       "maps/<animal>_dayNN.npz": "true parameter maps (z, y, x) float32 + the true roi labels "
                                                  "(raw roi.nii.gz is the simulated rater's)"
                                                  + (" + pv_fraction_<roi>: the true area fraction (0-1) of each "
                                                     "named structure per voxel (partial volume)" if pv_on else "")}}
    atomic_write_bytes(tdir / "truth.json", json_bytes(truth))
    return rows


def generate(preset: str, out=None, seed: int | None = None, manifest=None, *,
             studies: Iterable[str] | None = None, noise: bool = True, force: bool = False) -> Path:
    """Write a synthetic multi-study dataset with known truth and its manifest.

    Parameters
    ----------
    preset : {"demo", "ci", "large"}
        Size: ``ci`` 16 x 16 x 2 voxels, 3 animals per group, at most 3 days (~5 MB);
        ``demo`` 64 x 64 x 6, 3-8 animals per group, all days (~200 MB); ``large``
        128 x 128 x 12 with twice the animals (several GB).
    out : path, optional
        Folder for ``raw/`` and ``truth/`` (default :func:`studylib.layout.preset_data_dir`,
        ``<project>/data/<preset>``).
    seed : int, optional
        Master seed (default :data:`DEFAULT_SEED`).  Every random draw uses
        ``numpy.random.default_rng([seed, crc32(study), stream, ids...])``, so each
        (study, animal, day) has its own deterministic stream.
    manifest : path, optional
        Manifest to write (default: with ``out`` given, ``<out>/data_manifest.csv``; without,
        :func:`studylib.layout.default_manifest` of the preset); it must be in a folder containing
        ``out``, since manifest paths are relative to its folder.
    studies : iterable of str, optional
        Only these studies (default: all seven).
    noise : bool
        ``False`` writes an ideal acquisition (for testing the physics): noise-free signals and the true
        label map as ``roi.nii.gz``.  ``True`` (default): complex noise on each scan's receive channels
        (``ReceiveCoilChannels`` in its sidecar; 4 for the 1H studies, 1 for ``fluorine19_pfc``),
        root-sum-of-squares combined, and ``roi.nii.gz`` drawn by a simulated rater
        (:func:`studylib.synth.physics.acquisition.rater_labels`: tumours and muscle outlined with a smooth
        boundary error of 1 voxel RMS, never into the air; vessel, reference tube and background kept) --
        the true label map stays in ``truth/<study>/maps/*.npz`` (key ``roi``), the rater's Dice and
        volume error in ``truth.json`` (``rater``).  With noise, voxels also carry partial volume: each scan
        is rendered from the session's anatomy at :data:`~studylib.synth._common.PARTIAL_VOLUME_FACTOR` x the
        in-plane resolution, a voxel's noise-free signal being ``sum_c f_c S_c`` over the tissue classes in it
        (:func:`studylib.synth.physics.acquisition.mix_partial_volume`; the true fractions in the maps as
        ``pv_fraction_<roi>``), and the drawn background ROI keeps only pure-air voxels.
    force : bool
        Write into a non-empty ``out`` that is not an earlier synthetic study (no ``.studylib-synth``
        marker), or over a manifest that is not one.  Without it such a target is refused: a lab's own
        study (its manifest, edited sidecars, ROIs) is never overwritten by accident.  The preset's own
        default folder and manifest (no ``out``, no ``manifest``) are studylib's and always rewritten.

    Returns
    -------
    pathlib.Path of the manifest written.

    Notes
    -----
    Files are byte-identical for the same arguments: integer NIfTI with ``scl_slope``,
    gzip ``mtime=0`` (:func:`studylib.io.nifti.write_nifti`), sorted JSON with rounded
    floats, manifest by :func:`studylib.manifest.write_manifest` (sorted rows).
    """
    preset = _check_preset(preset)
    seed = _check_seed(seed)
    own_target = out is None and manifest is None  # the preset's own folder and manifest: studylib's to rewrite
    force = force or own_target
    if manifest is None:  # the preset's default manifest for its default folder, else one inside ``out``
        manifest = layout.default_manifest(preset) if out is None else Path(out) / "data_manifest.csv"
    out = layout.preset_data_dir(preset) if out is None else Path(out)
    manifest = Path(manifest)
    if manifest.suffix.lower() != ".csv":
        raise SynthError(f"manifest {manifest}: must be a .csv path")
    root = manifest.resolve().parent
    out_abs = out.resolve()
    try:
        out_abs.relative_to(root)
    except ValueError:
        raise SynthError(f"out {out}: must be inside the manifest's folder {root} (manifest paths are "
                         f"relative to it and may not contain '..')") from None
    if out_abs.exists() and not out_abs.is_dir():
        raise SynthError(f"out {out}: exists and is not a folder")
    marker = out_abs / SYNTH_MARKER
    if not force and out_abs.is_dir() and not marker.is_file():
        other = sorted(p.name for p in out_abs.iterdir())
        if other:
            raise SynthError(f"out {out}: not empty and not a studylib synthetic study (holds {', '.join(other[:4])}"
                             f"{', ...' if len(other) > 4 else ''}); refusing to overwrite it: choose an empty folder "
                             f"or pass --force")
    if not force and manifest.is_file() and not marker.is_file():
        raise SynthError(f"manifest {manifest}: exists and belongs to no synthetic study written here; refusing to "
                         f"overwrite it: choose another --manifest or pass --force")
    names = list(STUDIES) if studies is None else list(studies)
    bad = [s for s in names if s not in STUDIES]
    if bad or not names:
        raise SynthError(f"studies must be a non-empty subset of {list(STUDIES)}, got {names!r}")
    names = [s for s in STUDIES if s in names]  # canonical order, no duplicates

    rows: list[dict] = []
    for study in names:
        pl = STUDIES[study](Context(PRESETS[preset], seed, study))
        rows += _write_study(pl, out_abs, root, seed, preset, noise)
    rows.sort(key=lambda r: r["path"])
    _write_manifest(rows, manifest)
    atomic_write_bytes(marker, json_bytes({"GeneratedBy": "studylib.synth", "preset": preset, "seed": seed}))
    return manifest.resolve()


def _write_manifest(rows: list[dict], manifest: Path) -> None:
    import pandas as pd

    from ..manifest import write_manifest

    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), manifest)

