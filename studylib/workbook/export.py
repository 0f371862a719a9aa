"""``studylib export`` and ``studylib add-roi``: fitted maps out to the viewers labs use, drawn ROIs back in.

:func:`export_bids` writes an experiment's fitted maps and ROI labels as a BIDS-derivatives folder
(NIfTI-1 + JSON sidecars) that FSLeyes, ITK-SNAP or 3D Slicer open over the raw scans::

    DIR/dataset_description.json            DatasetType "derivative", GeneratedBy (studylib version, code
                                            sha256, the run's provenance when there is one), DatasetLinks
    DIR/dseg.tsv                            label value -> meaning (studylib.conventions + the ROI sidecars)
    DIR/participants.tsv (+ .json)          participant_id, animal, group, sex, model (+ column descriptions)
    DIR/README                              what the folder is and where it came from
    DIR/.bidsignore                         the custom suffixes below (not in the BIDS specification)
    DIR/sub-<animal>/ses-day<d>/anat/sub-<animal>_ses-day<d>_<suffix>.nii.gz (+ .json)

Suffixes (map, cache entry, units in the file):

* BIDS parametric maps: ``T2starmap`` (t2star, t2star_maps, s = ms / 1000), ``R2starmap`` (r2star, 1/s),
  ``S0map`` (s0, arbitrary), ``T1map`` (t1 of dce_maps, the VFA T10, s = ms / 1000);
* custom, listed in ``.bidsignore``: ``ADCmap`` (adc, adc_maps, µm²/ms), ``Ktransmap`` and ``kepmap``
  (dce_maps, 1/min), ``vemap`` and ``vpmap`` (dce_maps, fractions);
* ``desc-<fit>fit_mask``: 1 where that fit succeeded (``fit_ok``); ``dseg``: the ROI labels (values of
  :data:`studylib.conventions.ROI_LABELS`, meanings in ``dseg.tsv``).

Maps a notebook computes itself (T2/R2 and T1/R1 of the generic notebooks, MTRasym of a CEST notebook,
19F) are exported once the notebook keeps them with :func:`studylib.analysis.keep_maps` (a cache entry
naming the scan kind they lie on): ``T2map``/``R2map``/``T1map``/``R1map`` (BIDS), ``MTRasymmap`` (%) and
``F19map`` (mM) (custom), any other variable as ``<variable>map`` with its own units (custom).  Every image has exactly the affine (qform = sform, code 1) and matrix of
the raw scan it was fitted from; the sidecar names that scan (``Sources``, a BIDS URI
``bids:raw:<path in the manifest folder>`` with ``raw`` in ``DatasetLinks``) and the ``Units``.
Maps are float32 (NaN outside the fitted ROIs), read back bit for bit as ``float32(cached map)``
(times 1/1000 where ms become s), transposed from the design's ``(z, y, x)`` to NIfTI ``(x, y, z)``.

Which maps: the experiment's map steps (:mod:`studylib.analysis.maps`) for the image kinds the
catalogue (:data:`studylib.catalog.EXPERIMENTS`) -- or, for a lab's own study, the manifest -- lists,
called through the same cached step the notebook calls, with the parameters the last run used (read
from its cache entry via the run record ``reports/<EXP>.json``; else from the latest cache entry of
that step; else the step's defaults).  So after ``studylib run`` export is a cache hit, and after a
new ROI is registered it refits with the run's parameters.  Nothing of a fit is restated here.

The folder is staged beside ``DIR`` and renamed into place (all or nothing); a non-empty ``DIR``
that no earlier export wrote (no ``.studylib-export`` marker) is refused.

:func:`register_roi` (``studylib add-roi``) is the way back: a label NIfTI drawn or edited in a
viewer on the scan's grid (:func:`studylib.io.nifti.check_same_grid`) is copied beside the
session's scan and listed in the manifest as kind ``roi``; the next ``studylib run`` uses it (the
manifest rows are part of every map's cache key and of the run fingerprint).

References: BIDS specification 1.9, "Derivatives" and "Quantitative MRI" (parametric map suffixes
and units), https://bids-specification.readthedocs.io.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes, atomic_write_text
from ..catalog import EXPERIMENTS
from ..conventions import MAP_UNITS, ROI_LABELS
from ..errors import DataFileError, ExperimentError, ManifestError, StudyError, WorkbookError
from ..layout import default_cache_dir, experiment_manifest, reports_dir, resolve_manifest

__all__ = ["EXPORT_MARKER", "BIDS_VERSION", "MAP_SUFFIXES", "MAP_STEPS", "map_suffix", "ExportResult", "export_bids",
           "RoiRegistration", "register_roi", "session_label", "subject_label"]

#: marker file of a folder written by :func:`export_bids` (a later export may replace the folder)
EXPORT_MARKER = ".studylib-export"
BIDS_VERSION = "1.9.0"

#: map variable -> (file suffix, units in the file, BIDS-defined suffix?)
MAP_SUFFIXES: dict[str, tuple[str, str, bool]] = {
    "t2star": ("T2starmap", "s", True), "r2star": ("R2starmap", "1/s", True), "s0": ("S0map", "arbitrary", True),
    "t1": ("T1map", "s", True), "t2": ("T2map", "s", True),
    "adc": ("ADCmap", MAP_UNITS["adc"], False), "ktrans": ("Ktransmap", MAP_UNITS["ktrans"], False),
    "kep": ("kepmap", MAP_UNITS["kep"], False), "ve": ("vemap", MAP_UNITS["ve"], False),
    "vp": ("vpmap", MAP_UNITS["vp"], False), "mtr_asym": ("MTRasymmap", MAP_UNITS["mtr_asym"], False),
    "r2": ("R2map", "1/s", True), "r1": ("R1map", "1/s", True),
    "fluorine_mM": ("F19map", MAP_UNITS["f19_mM"], False), "f19_mM": ("F19map", MAP_UNITS["f19_mM"], False),
}


def map_suffix(var: str, attrs: dict | None = None) -> tuple[str, str, bool]:
    """(file suffix, units in the file, BIDS-defined?) of map variable ``var``.

    A variable :data:`MAP_SUFFIXES` does not know (a notebook's own map kept with
    :func:`studylib.analysis.keep_maps`) gets the custom suffix ``<var without punctuation>map`` and the
    units of its ``units`` attribute (``"n/a"`` without one).

    >>> map_suffix("t2"), map_suffix("cbv_ratio", {"units": "1"})
    (('T2map', 's', True), ('cbvratiomap', '1', False))
    """
    if var in MAP_SUFFIXES:
        return MAP_SUFFIXES[var]
    return re.sub(r"[^A-Za-z0-9]", "", var) + "map", str((attrs or {}).get("units") or "n/a"), False

#: participants.tsv column -> its description (participants.json)
_PARTICIPANT_COLUMNS = {"animal": "the animal's identifier in the study manifest",
                        "group": "treatment group (manifest column group)",
                        "sex": "sex of the animal (F/M; manifest column sex)",
                        "model": "tumour model or cell line (manifest column model)"}

#: (units in studylib, units in the file) -> factor
_UNIT_FACTORS = {("ms", "s"): 1e-3, ("a.u.", "arbitrary"): 1.0}


@dataclass(frozen=True)
class MapStep:
    """A cached map step of :mod:`studylib.analysis.maps` as export sees it.

    ``kinds``: the image kinds it reads (the first is the grid the maps are on, except ``t1`` of the
    DCE step, which is on the VFA scan's); ``variables``: the maps exported; ``fit``: the label of its
    ``fit_ok`` mask (``desc-<fit>fit_mask``).
    """

    name: str
    kinds: tuple[str, ...]
    variables: tuple[str, ...]
    fit: str


#: cache entry name -> step, in export order
MAP_STEPS: dict[str, MapStep] = {s.name: s for s in [
    MapStep("t2star_maps", ("MEGRE",), ("t2star", "r2star", "s0"), "T2star"),
    MapStep("adc_maps", ("DWI",), ("adc",), "ADC"),
    MapStep("dce_maps", ("DCE", "VFA"), ("t1", "ktrans", "kep", "ve", "vp"), "DCE"),
]}


def subject_label(animal: str) -> str:
    """BIDS ``sub-`` label of an animal id: its letters and digits (``m_01`` -> ``m01``).

    >>> subject_label("m01"), subject_label("ctl-3.b")
    ('m01', 'ctl3b')
    """
    lab = re.sub(r"[^A-Za-z0-9]", "", str(animal))
    if not lab:
        raise ExperimentError(f"animal id {animal!r} has no letter or digit for a BIDS subject label")
    return lab


def session_label(day: int) -> str:
    """BIDS ``ses-`` label of a study day: ``day7``; a day before treatment is ``dayneg3`` (BIDS labels are
    alphanumeric).

    >>> session_label(7), session_label(-3)
    ('day7', 'dayneg3')
    """
    d = int(day)
    return f"day{d}" if d >= 0 else f"dayneg{-d}"


@dataclass
class ExportResult:
    """What :func:`export_bids` wrote: the folder, its files (relative), the map steps with where their
    parameters came from, the sessions, and the run record used (or None)."""

    out: Path
    files: list[str]
    steps: dict[str, dict]
    sessions: list[tuple[str, int]]
    record: dict | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- inputs


def _manifest_for(experiment: str, manifest, preset: str) -> Path:
    exp = EXPERIMENTS.get(experiment)
    if manifest is not None:
        m = Path(manifest).expanduser()
        if not m.is_file():
            raise WorkbookError(f"manifest {str(m)!r} not found")
        return m.resolve()
    if exp is not None and exp.data == "real":
        return experiment_manifest(experiment).resolve()
    return resolve_manifest(None, preset)


def _study_rows(experiment: str, mpath: Path):
    from ..manifest import read_manifest

    df = read_manifest(mpath)
    rows = df[df["study"] == experiment]
    if rows.empty:
        if experiment not in EXPERIMENTS:
            raise WorkbookError(f"unknown experiment {experiment!r}: not in the catalogue ({', '.join(EXPERIMENTS)}) "
                                f"and no study of that name in {mpath}")
        raise ManifestError(f"{mpath}: no rows of study {experiment!r} (studies: {sorted(set(df['study']))})")
    return df, rows


def _is_image(p: str) -> bool:
    return p.endswith((".nii.gz", ".nii"))


def _run_record(experiment: str, reports, mpath: Path) -> dict | None:
    """The last run's record ``<reports>/<EXP>.json`` when it ran on this manifest; else None."""
    path = Path(reports if reports is not None else reports_dir()) / f"{experiment}.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        same = Path(rec["manifest"]["path"]).resolve() == mpath
    except (KeyError, TypeError):
        return None
    if not same:
        return None
    rec["_path"] = str(path)
    return rec


def _recorded_entry(cache, name: str, record: dict | None) -> Path | None:
    """The complete cache folder of entry ``name`` that the run record's cache events name (the last one), or None."""
    from ..cache import MARKER

    prefixes = [ev["key"] for ev in ((record or {}).get("cache") or {}).get("events", [])
                if ev.get("name") == name and ev.get("key")]
    for prefix in reversed(prefixes):
        for folder in sorted((cache.dir / name).glob(f"{prefix}*")):
            if ".tmp-" not in folder.name and (folder / MARKER).is_file():
                return folder
    return None


def _entry_params(cache, name: str, record: dict | None) -> tuple[dict | None, str]:
    """Parameters of the step ``name``: from the run record's cache entry, else the latest entry, else None."""
    from ..cache import MARKER

    folder = _recorded_entry(cache, name, record)
    if folder is not None:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return meta.get("params") or {}, f"the run recorded in {record['_path']} (cache key {folder.name[:12]})"
    for e in cache.entries():
        if e.name == name:
            return e.params or {}, f"the latest cache entry {name}/{e.key[:12]}"
    return None, "the step's defaults (no run and no cache entry found)"


def _kept_entries(cache, record: dict | None, present: set, notes: list) -> list[tuple[str, str, str]]:
    """(name, key, source kind) of each map entry a notebook kept (:func:`studylib.analysis.keep_maps`):
    the entry of the recorded run where the run record lists one, else the latest."""
    from ..analysis.keep import KEPT_MAPS_PARAM

    out = []
    for e in cache.entries():
        if not (isinstance(e.params, dict) and KEPT_MAPS_PARAM in e.params):
            continue
        folder = _recorded_entry(cache, e.name, record)
        kind = e.params[KEPT_MAPS_PARAM]
        if kind not in present:
            notes.append(f"kept maps {e.name} are on {kind} scans, which the manifest no longer lists: not exported")
            continue
        out.append((e.name, folder.name if folder is not None else e.key, kind))
    return out


def _fit_step(step: MapStep, mpath: Path, study: str, params: dict | None, cache_dir: Path):
    """The maps of ``step`` through the notebook's own cached step; returns (maps, {kind: loaded dataset})."""
    from ..analysis.maps import fit_adc_maps, fit_dce_maps, fit_relaxation_maps
    from ..io.load import load_study

    p = params or {}
    if step.name == "t2star_maps":
        ds = load_study(mpath, study, "MEGRE")
        kw = {k: (tuple(v) if k == "labels" else v) for k, v in p.items() if k in ("method", "labels", "noise_label")}
        return fit_relaxation_maps(ds, cache_dir=cache_dir, study=study, **kw), {"MEGRE": ds}
    if step.name == "adc_maps":
        ds = load_study(mpath, study, "DWI")
        kw = {k: (tuple(v) if k == "labels" else v) for k, v in p.items() if k in ("method", "labels", "noise_label")}
        if p.get("b"):
            kw["b_min"] = float(min(p["b"]))
        return fit_adc_maps(ds, cache_dir=cache_dir, study=study, **kw), {"DWI": ds}
    if step.name == "dce_maps":
        vfa, dce = load_study(mpath, study, "VFA"), load_study(mpath, study, "DCE")
        names = {"model": "model", "aif_source": "aif_source", "n_baseline": "n_baseline", "t1_method": "t1_method",
                 "labels": "labels", "vessel_label": "vessel_label", "r1": "r1_per_mM_s", "hematocrit": "hematocrit",
                 "aif_voxels": "aif_voxels"}
        kw = {names[k]: (tuple(v) if k == "labels" else v) for k, v in p.items() if k in names}
        if p.get("b1_map"):  # the maps were fitted with the study's B1 map
            kw["b1"] = load_study(mpath, study, "B1map")
        maps, _aif = fit_dce_maps(vfa, dce, cache_dir=cache_dir, study=study, **kw)
        return maps, {"DCE": dce, "VFA": vfa}
    raise ExperimentError(f"no export for map step {step.name!r}")  # pragma: no cover - MAP_STEPS is closed


# ----------------------------------------------------------------------------------------- writing


def _write_float_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray) -> None:
    """A float32 NIfTI-1 (qform = sform = ``affine``, code 1 scanner, mm), gzip ``mtime=0``, atomically."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data_xyz, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _write_json(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise WorkbookError(f"--bids {out}: exists and is not a folder")
    if out.is_dir() and not (out / EXPORT_MARKER).is_file():
        other = sorted(p.name for p in out.iterdir())
        if other:
            raise WorkbookError(f"--bids {out}: not empty and not written by studylib export (holds "
                                f"{', '.join(other[:4])}{', ...' if len(other) > 4 else ''}); refusing to overwrite "
                                f"it: choose an empty or new folder")


def _commit(stage: Path, out: Path) -> None:
    """Put the staged folder in place of ``out`` (absent, empty, or an earlier export) by renames."""
    if not out.exists():
        os.replace(stage, out)
        return
    trash = out.parent / f".{out.name}.export-old-{uuid.uuid4().hex}"
    os.replace(out, trash)
    try:
        os.replace(stage, out)
    except BaseException:
        os.replace(trash, out)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _bids_uri(base: Path, path: Path) -> str:
    return "bids:raw:" + path.resolve().relative_to(base).as_posix()


def _scan_of(rows, animal: str, day: int, kind: str, base: Path) -> Path:
    from ..manifest import resolve_path

    hit = rows[(rows["animal"] == animal) & (rows["day"] == day) & (rows["kind"] == kind)
               & rows["path"].map(_is_image).astype(bool)]
    if hit.empty:  # pragma: no cover - load_study saw this scan
        raise ManifestError(f"no {kind} image of animal {animal!r} day {day} in the manifest")
    return resolve_path(base, hit["path"].iloc[0])


def _provenance(record: dict | None, mpath: Path) -> dict | None:
    if record is None:
        return None
    from ..cache import code_hash
    from ..manifest import sha256_file

    keep = ("experiment", "status", "started", "finished", "fingerprint", "parameters", "git", "studylib_version",
            "studylib_code_sha256", "headline")
    prov = {k: record.get(k) for k in keep if k in record}
    prov["record"] = record["_path"]
    prov["manifest"] = record.get("manifest")
    prov["manifest_unchanged_since_run"] = (record.get("manifest") or {}).get("sha256") == sha256_file(mpath)
    prov["code_unchanged_since_run"] = record.get("studylib_code_sha256") == code_hash()
    return prov


def export_bids(experiment: str, out, *, preset: str = "demo", manifest=None, reports=None,
                cache_dir=None) -> ExportResult:
    """Write experiment ``experiment``'s fitted maps and ROI labels to ``out`` as BIDS derivatives.

    Parameters
    ----------
    experiment : catalogued experiment, or a lab's own study listed in the manifest.
    out : the derivatives folder (created; an earlier export there is replaced; any other non-empty
        folder is refused).
    preset, manifest : the data (as ``studylib run``): ``manifest`` if given, a real-data experiment's own
        manifest, else the preset's default.
    reports : folder of the run records (default :func:`studylib.layout.reports_dir`); the record
        ``<reports>/<experiment>.json`` gives the parameters and cache folder of the last run.
    cache_dir : cache root (default: the last run's, else :func:`studylib.layout.default_cache_dir`).

    Returns
    -------
    ExportResult

    Raises
    ------
    WorkbookError
        Unknown experiment, an unusable or foreign ``out``.
    ExperimentError
        The manifest has no images of the kinds the experiment's maps are fitted from.
    """
    from ..cache import Cache, code_hash
    from ..io.load import load_study
    from ..io.nifti import check_same_grid, read_header, to_design_order, write_nifti

    out = Path(out).expanduser().resolve()
    mpath = _manifest_for(experiment, manifest, preset)
    base = mpath.parent
    df, rows = _study_rows(experiment, mpath)
    exp = EXPERIMENTS.get(experiment)
    present = set(rows["kind"][rows["path"].map(_is_image).astype(bool)])
    kinds = tuple(exp.kinds) if exp is not None else tuple(sorted(present - {"roi"}))
    steps = [s for s in MAP_STEPS.values() if set(s.kinds) <= set(kinds)]
    notes = []
    if exp is not None and steps and not any(set(s.kinds) <= present for s in steps):
        need = " + ".join(steps[0].kinds)
        raise ExperimentError(f"{mpath}: study {experiment!r} has no {need} images to fit its maps from (image kinds "
                              f"in the manifest: {sorted(present) or 'none'})")
    steps = [s for s in steps if set(s.kinds) <= present]
    _check_target(out)
    record = _run_record(experiment, reports, mpath)
    if cache_dir is None:
        run_cache = ((record or {}).get("parameters") or {}).get("cache_dir")
        cache_dir = Path(run_cache) if run_cache else default_cache_dir(preset, mpath)
    cache = Cache(experiment, cache_dir, verbose=False)
    kept = _kept_entries(cache, record, present, notes)
    if not steps and not kept:
        notes.append(f"no cached map step for the kinds {', '.join(kinds) or 'none'} (steps exist for MEGRE, DWI, "
                     "VFA + DCE) and no maps kept by the notebook (analysis.keep_maps): only the ROI labels are "
                     "exported")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.export-tmp-{uuid.uuid4().hex}"
    stage.mkdir()
    files: list[str] = []
    done_steps: dict[str, dict] = {}
    sessions: set[tuple[str, int]] = set()
    labels: dict[int, str] = dict(ROI_LABELS)
    written_dseg: set[tuple[str, int]] = set()
    subjects: dict[str, str] = {}
    try:
        loaded: dict[str, object] = {}
        for step in steps:
            params, source = _entry_params(cache, step.name, record)
            maps, dsets = _fit_step(step, mpath, experiment, params, Path(cache_dir))
            loaded.update(dsets)
            done_steps[step.name] = {"params_from": source, "cache_key": maps.attrs.get("studylib_cache_key"),
                                     "params": params}
            files += _write_step(step, maps, dsets, rows, base, stage, subjects, sessions, read_header,
                                 check_same_grid, to_design_order)
        for name, key, kind in kept:  # maps a notebook computed itself and kept (analysis.keep_maps)
            maps = cache.load(name, key)
            if kind not in loaded:
                loaded[kind] = load_study(mpath, experiment, kind)
            written = {Path(f).name.split("_", 2)[-1].split(".")[0] for f in files}
            clash = [v for v in maps.data_vars if v != "fit_ok" and map_suffix(v, maps[v].attrs)[0] in written]
            if clash:
                notes.append(f"kept maps {name}: {', '.join(clash)} not exported (a map step wrote that suffix)")
            variables = tuple(v for v in maps.data_vars if v != "fit_ok" and v not in clash)
            step = MapStep(name, (kind,), variables, re.sub(r"[^A-Za-z0-9]", "", name.removesuffix("_maps")))
            done_steps[name] = {"params_from": "maps kept by the notebook (studylib.analysis.keep_maps)",
                                "cache_key": key, "params": {"source_kind": kind, "variables": list(variables)},
                                "custom_suffixes": [map_suffix(v, maps[v].attrs)[0] for v in variables
                                                    if not map_suffix(v, maps[v].attrs)[2]]}
            files += _write_step(step, maps, {kind: loaded[kind]}, rows, base, stage, subjects, sessions,
                                 read_header, check_same_grid, to_design_order)
        if not loaded:  # no map step: the ROI files themselves, checked against their sessions' scans
            files += _write_dseg_files(rows, base, stage, subjects, sessions, labels)
        for kind, ds in loaded.items():
            roi_vals = ds["roi"].attrs.get("flag_values", [])
            meanings = ds["roi"].attrs.get("flag_meanings", "").split()
            if len(meanings) == len(roi_vals):  # (a region name with a space cannot be split back)
                labels.update({int(v): str(n) for v, n in zip(roi_vals, meanings)})
            files += _write_dseg(ds, kind, rows, base, stage, subjects, written_dseg, sessions, read_header,
                                 to_design_order, write_nifti)
        if not files:
            raise ExperimentError(f"{mpath}: study {experiment!r}: nothing to export (no fitted maps and no ROI files)")
        files += _write_top(stage, experiment, mpath, df, rows, subjects, labels, record, done_steps, code_hash())
        _check_target(out)  # still ours (or empty) right before the rename
        _commit(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ExportResult(out, sorted(files), done_steps, sorted(sessions), record, notes)


def _session_dir(stage: Path, subjects: dict, animal: str, day: int) -> tuple[Path, str]:
    sub = subject_label(animal)
    if subjects.setdefault(sub, animal) != animal:
        raise ExperimentError(f"animals {subjects[sub]!r} and {animal!r} both become BIDS subject 'sub-{sub}'; "
                              "rename one in the manifest")
    ses = session_label(day)
    return stage / f"sub-{sub}" / f"ses-{ses}" / "anat", f"sub-{sub}_ses-{ses}"


def _acquired(ds):
    for a in ds["animal"].values:
        for d in ds["day"].values:
            if bool(ds["acquired"].sel(animal=a, day=d)):
                yield str(a), int(d)


def _write_step(step, maps, dsets, rows, base, stage, subjects, sessions, read_header, check_same_grid,
                to_design_order) -> list[str]:
    files = []
    grid_ds = dsets[step.kinds[0]]
    for animal, day in _acquired(grid_ds):
        folder, stem = _session_dir(stage, subjects, animal, day)
        scans = {k: _scan_of(rows, animal, day, k, base) for k in step.kinds}
        infos = {k: read_header(p) for k, p in scans.items()}
        for k in step.kinds[1:]:  # e.g. VFA and DCE: T10 and Ktrans must share one grid to be combined
            check_same_grid(infos[k], infos[step.kinds[0]], what=f"{k} scan {scans[k]}",
                            other=f"{step.kinds[0]} scan {scans[step.kinds[0]]}")
        sessions.add((animal, day))
        for var in step.variables:
            if var not in maps.data_vars:
                continue
            kind = "VFA" if (step.name == "dce_maps" and var == "t1") else step.kinds[0]
            suffix, units, bids = map_suffix(var, maps[var].attrs)
            factor = _factor(var, units)
            arr = maps[var].sel(animal=animal, day=day).transpose("z", "y", "x").values
            xyz = to_design_order(np.asarray(arr, dtype=np.float64) * factor)
            info = infos[kind]
            if tuple(xyz.shape) != tuple(info.shape[:3]):
                raise DataFileError(f"{step.name}.{var} of {animal} day {day} has matrix {xyz.shape} (x, y, z) but "
                                    f"its scan {scans[kind]} has {info.shape[:3]}")
            folder.mkdir(parents=True, exist_ok=True)
            nii = folder / f"{stem}_{suffix}.nii.gz"
            _write_float_nifti(nii, xyz, info.affine)
            srcs = [_bids_uri(base, scans[kind])] + [_bids_uri(base, scans[k]) for k in step.kinds if k != kind]
            side = {"Units": units, "Sources": srcs, "Description": maps[var].attrs.get("long_name", var),
                    "StudylibMap": {"variable": var, "cache_entry": step.name, "studylib_units": MAP_UNITS.get(var),
                                    "scale_to_file_units": factor, "bids_suffix": bids,
                                    "cache_key": maps.attrs.get("studylib_cache_key")},
                    "Animal": animal, "Day": day}
            _write_json(nii.with_name(nii.name[:-7] + ".json"), side)
            files += [nii.relative_to(stage).as_posix(), nii.relative_to(stage).as_posix()[:-7] + ".json"]
        if "fit_ok" in maps.data_vars:
            ok = maps["fit_ok"].sel(animal=animal, day=day).transpose("z", "y", "x").values
            nii = folder / f"{stem}_desc-{step.fit}fit_mask.nii.gz"
            _write_float_nifti(nii, to_design_order(np.asarray(ok, dtype=np.float32)), infos[step.kinds[0]].affine)
            _write_json(nii.with_name(nii.name[:-7] + ".json"),
                        {"Type": "fit_ok", "Description": f"1 where the {step.name} fit succeeded (studylib fit_ok)",
                         "Sources": [_bids_uri(base, scans[k]) for k in step.kinds], "Animal": animal, "Day": day})
            files += [nii.relative_to(stage).as_posix(), nii.relative_to(stage).as_posix()[:-7] + ".json"]
    return files


def _factor(var: str, units: str) -> float:
    have = MAP_UNITS.get(var, units)
    if have == units:
        return 1.0
    try:
        return _UNIT_FACTORS[(have, units)]
    except KeyError:  # pragma: no cover - guards the tables above against a change of MAP_UNITS
        raise ExperimentError(f"map {var!r}: no conversion from {have!r} to the file's {units!r}") from None


def _write_dseg(ds, kind, rows, base, stage, subjects, written, sessions, read_header, to_design_order,
                write_nifti) -> list[str]:
    from ..manifest import resolve_path

    files = []
    roi_rows = rows[(rows["kind"] == "roi") & rows["path"].map(_is_image).astype(bool)]
    for animal, day in _acquired(ds):
        if (animal, day) in written:
            continue
        hit = roi_rows[(roi_rows["animal"] == animal) & (roi_rows["day"] == day)]
        if hit.empty:
            continue
        roi_file = resolve_path(base, hit["path"].iloc[0])
        scan = _scan_of(rows, animal, day, kind, base)
        info = read_header(scan)
        lab = ds["roi"].sel(animal=animal, day=day).transpose("z", "y", "x").values
        folder, stem = _session_dir(stage, subjects, animal, day)
        folder.mkdir(parents=True, exist_ok=True)
        nii = folder / f"{stem}_dseg.nii.gz"
        write_nifti(nii, to_design_order(np.asarray(lab, dtype=np.int16)), info.affine, dtype=np.int16,
                    sidecar={"Description": "ROI labels (values and meanings: dseg.tsv at the dataset root)",
                             "Sources": [_bids_uri(base, roi_file), _bids_uri(base, scan)],
                             "Animal": animal, "Day": day})
        written.add((animal, day))
        sessions.add((animal, day))
        files += [nii.relative_to(stage).as_posix(), nii.relative_to(stage).as_posix()[:-7] + ".json"]
    return files


def _write_dseg_files(rows, base, stage, subjects, sessions, labels) -> list[str]:
    """Every ROI file of the study as a dseg, values remapped by its sidecar's meanings (as the loader does)."""
    from ..conventions import label_mapping, relabel
    from ..io.nifti import check_same_grid, read_header, read_nifti, to_design_order, write_nifti
    from ..io.sidecar import read_sidecar
    from ..manifest import resolve_path

    files = []
    listed = set(rows["path"])
    images = rows[rows["path"].map(_is_image).astype(bool)]
    for r in images[images["kind"] == "roi"].itertuples(index=False):
        animal, day = r.animal, int(r.day)
        roi_file = resolve_path(base, r.path)
        scans = images[(images["kind"] != "roi") & (images["animal"] == animal) & (images["day"] == day)]
        if scans.empty:
            continue
        scan = resolve_path(base, scans["path"].iloc[0])
        info = read_header(roi_file)
        for rel in scans["path"]:
            check_same_grid(info, read_header(resolve_path(base, rel)), what=f"ROI {roi_file}", other=f"scan {rel}")
        lab = read_nifti(roi_file, dtype=np.int16)
        lab = lab[0] if lab.ndim == 4 else lab
        side_rel = r.path[: -len(".nii.gz")] if r.path.endswith(".nii.gz") else r.path[: -len(".nii")]
        if side_rel + ".json" in listed:
            side = read_sidecar(resolve_path(base, side_rel + ".json"))
            if "Labels" in side:
                lut, meanings = label_mapping(side["Labels"], source=str(resolve_path(base, side_rel + ".json")))
                lab = relabel(lab, lut=lut) if lut else lab
                labels.update(meanings)
        folder, stem = _session_dir(stage, subjects, animal, day)
        folder.mkdir(parents=True, exist_ok=True)
        nii = folder / f"{stem}_dseg.nii.gz"
        if nii.exists():
            raise ExperimentError(f"{roi_file}: a second ROI file for {animal} day {day}")
        write_nifti(nii, to_design_order(lab), read_header(scan).affine, dtype=np.int16,
                    sidecar={"Description": "ROI labels (values and meanings: dseg.tsv at the dataset root)",
                             "Sources": [_bids_uri(base, roi_file), _bids_uri(base, scan)],
                             "Animal": animal, "Day": day})
        sessions.add((animal, day))
        files += [nii.relative_to(stage).as_posix(), nii.relative_to(stage).as_posix()[:-7] + ".json"]
    return files


def _write_top(stage, experiment, mpath, df, rows, subjects, labels, record, steps, code_sha) -> list[str]:
    from importlib import metadata

    try:
        version = metadata.version("studylib")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without install
        version = "unknown"
    exp = EXPERIMENTS.get(experiment)
    gen = {"Name": "studylib", "Version": version,
           "Description": f"studylib export: fitted maps and ROI labels of experiment {experiment!r}",
           "CodeSha256": code_sha, "Manifest": str(mpath), "MapSteps": steps}
    prov = _provenance(record, mpath)
    if prov is not None:
        gen["Run"] = prov
    desc = {"Name": f"studylib {experiment}" + (f": {exp.title}" if exp else ""), "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": [gen],
            "DatasetLinks": {"raw": mpath.parent.as_uri()},
            "SourceDatasets": [{"URL": mpath.parent.as_uri()}]}
    if exp is not None:
        desc["ReferencesAndLinks"] = [exp.citation]
    _write_json(stage / "dataset_description.json", desc)
    lines = ["index\tname"] + [f"{v}\t{labels[v]}" for v in sorted(labels)]
    atomic_write_text(stage / "dseg.tsv", "\n".join(lines) + "\n")
    animals = rows[rows["animal"] != ""].drop_duplicates("animal").set_index("animal")
    cols = [c for c in ("group", "sex", "model") if c in animals.columns]
    part = ["\t".join(["participant_id", "animal", *cols])]
    for sub, animal in sorted(subjects.items()):
        part.append("\t".join([f"sub-{sub}", animal, *[str(animals.loc[animal, c]) or "n/a" for c in cols]]))
    atomic_write_text(stage / "participants.tsv", "\n".join(part) + "\n")
    _write_json(stage / "participants.json", {c: {"Description": d} for c, d in _PARTICIPANT_COLUMNS.items()
                                              if c == "animal" or c in cols})
    title = f"studylib {experiment}" + (f": {exp.title}" if exp else "")
    atomic_write_text(stage / "README", f"{title}\n\nFitted maps and ROI labels exported by studylib from the study "
                      f"listed in {mpath.name} (BIDS derivatives; dataset_description.json names the run and the code). "
                      "Each map lies on its raw scan's matrix and affine; dseg.tsv gives the label meanings; custom "
                      "map suffixes are listed in .bidsignore.\n")
    custom = sorted({s for s, _u, bids in MAP_SUFFIXES.values() if not bids}
                    | {s for st in steps.values() for s in st.get("custom_suffixes", ())})
    atomic_write_text(stage / ".bidsignore", "".join(f"*_{s}.*\n" for s in custom))
    _write_json(stage / EXPORT_MARKER, {"GeneratedBy": "studylib.export", "experiment": experiment,
                                        "manifest": str(mpath)})
    return ["dataset_description.json", "dseg.tsv", "participants.tsv", "participants.json", "README", ".bidsignore"]


# ----------------------------------------------------------------------------------------- ROI back in


@dataclass
class RoiRegistration:
    """What :func:`register_roi` did: the manifest, the new ROI file (relative), rows added, ROI files
    no longer listed (left on disk), and the label values found in the image."""

    manifest: Path
    path: str
    new_rows: int
    replaced: list[str]
    labels: list[int]


def _read_labels(labels) -> dict[int, str] | None:
    if labels is None or isinstance(labels, dict):
        return None if labels is None else {int(k): str(v) for k, v in labels.items()}
    p = Path(labels)
    try:
        lines = [ln.split("\t") for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"--labels {p}: cannot read ({err})") from None
    head = [h.strip() for h in lines[0]] if lines else []
    if "index" not in head or "name" not in head:
        raise DataFileError(f"--labels {p}: need a tab-separated table with columns 'index' and 'name' (BIDS dseg.tsv)")
    i, n = head.index("index"), head.index("name")
    try:
        return {int(r[i]): r[n].strip() for r in lines[1:]}
    except (ValueError, IndexError):
        raise DataFileError(f"--labels {p}: every row needs an integer index and a name") from None


def register_roi(roi, *, study: str, animal: str, day, manifest=None, preset: str = "demo", labels=None,
                 replace: bool = False) -> RoiRegistration:
    """List a label NIfTI (drawn in a viewer on the scan's grid) in the manifest as the session's ROI.

    Parameters
    ----------
    roi : a ``.nii.gz``/``.nii`` label image, integer values >= 0 (0 = no region), on exactly the grid
        (matrix and affine, :func:`studylib.io.nifti.check_same_grid`) of every scan of the session.
    study, animal, day : the session (as in the manifest).
    manifest, preset : the manifest to add it to (default: the preset's).
    labels : a BIDS ``dseg.tsv`` (columns ``index``, ``name``) or a ``{value: name}`` dict: written as
        the ROI sidecar's ``Labels`` (only values present in the image) so
        :func:`studylib.io.load.load_study` maps them onto :data:`studylib.conventions.ROI_LABELS` by
        meaning.  Default: no sidecar, the values are the conventional ones (an exported ``dseg``).
    replace : unlist the session's current ROI rows (the files stay on disk); without it a session
        that already has an ROI is refused.

    The file is copied unchanged to ``<folder of the session's scan>/roi_<sha256[:12]>.nii[.gz]`` and
    the manifest is rewritten atomically (after the new table validates).  Returns
    :class:`RoiRegistration`.
    """
    import pandas as pd

    from ..io.nifti import check_same_grid, read_header, read_nifti
    from ..manifest import read_manifest, resolve_path, sha256_file, validate_manifest, write_manifest

    roi = Path(roi)
    if not roi.name.endswith((".nii.gz", ".nii")):
        raise DataFileError(f"{roi}: an ROI must be a NIfTI file (.nii.gz or .nii)")
    mpath = resolve_manifest(manifest, preset)
    df = read_manifest(mpath)
    base = mpath.parent
    try:
        day = int(day)
    except (TypeError, ValueError):
        raise StudyError(f"--day must be an integer (days from first treatment), got {day!r}") from None
    sess = df[(df["study"] == study) & (df["animal"] == str(animal)) & (df["day"] == day)]
    scans = sess[(sess["kind"] != "roi") & sess["path"].map(_is_image).astype(bool)]
    if scans.empty:
        known = sorted({(a, int(d)) for a, d in zip(df.loc[df["study"] == study, "animal"],
                                                     df.loc[df["study"] == study, "day"]) if a})
        raise ManifestError(f"{mpath}: no scan of study {study!r}, animal {animal!r}, day {day} to put the ROI on "
                            f"(sessions: {', '.join(f'{a} day {d}' for a, d in known[:12]) or 'none'})")
    info = read_header(roi)
    if len(info.shape) == 4 and info.shape[3] != 1:
        raise DataFileError(f"{roi}: an ROI is one 3-D label volume, this image has {info.shape[3]} volumes")
    for rel in scans["path"]:
        sp = resolve_path(base, rel)
        check_same_grid(info, read_header(sp), what=f"ROI {roi}", other=f"scan {sp}")
    vals = read_nifti(roi, dtype=np.float64)
    if not np.all(np.isfinite(vals)) or not np.array_equal(vals, np.round(vals)) or vals.min() < 0 \
            or vals.max() > 32767:
        raise DataFileError(f"{roi}: ROI values must be whole numbers 0..32767 (labels), got range "
                            f"[{np.nanmin(vals):g}, {np.nanmax(vals):g}]")
    present = sorted(int(v) for v in np.unique(vals) if v != 0)
    if not present:
        raise DataFileError(f"{roi}: the ROI image holds no label (all voxels are 0)")
    meaning = _read_labels(labels)
    old = sess[sess["kind"] == "roi"]
    if len(old) and not replace:
        raise StudyError(f"{mpath}: {study} {animal} day {day} already has an ROI ({', '.join(old['path'])}); pass "
                         "--replace to list the new one instead (the old file stays on disk)")
    sha = sha256_file(roi)
    ext = ".nii.gz" if roi.name.endswith(".nii.gz") else ".nii"
    folder = Path(scans["path"].iloc[0]).parent.as_posix()
    rel = f"{folder}/roi_{sha[:12]}{ext}"
    dest = resolve_path(base, rel)
    first = scans.iloc[0]
    extra = {c: first[c] for c in ("sex", "model") if c in df.columns}
    new = [dict(study=study, animal=str(animal), group=first["group"], day=day, kind="roi", path=rel, sha256=sha,
                notes=f"ROI registered with studylib add-roi from {roi.name}", **extra)]
    side_bytes = None
    if meaning is not None:
        missing = [v for v in present if v not in meaning]
        if missing:
            raise DataFileError(f"--labels: no name for label value(s) {missing} found in {roi}")
        side_bytes = (json.dumps({"Labels": {str(v): meaning[v] for v in present}}, indent=2, sort_keys=True)
                      + "\n").encode("utf-8")
        side_rel = rel[: -len(ext)] + ".json"
        new.append({**new[0], "path": side_rel, "sha256": hashlib.sha256(side_bytes).hexdigest()})
    keep = df.drop(index=old.index) if len(old) else df
    table = validate_manifest(pd.DataFrame(keep.to_dict("records") + new), source=str(mpath))
    written = []
    try:
        if not (dest.is_file() and sha256_file(dest) == sha):
            written.append(atomic_write_bytes(dest, roi.read_bytes()))
        if side_bytes is not None:
            written.append(atomic_write_bytes(resolve_path(base, new[1]["path"]), side_bytes))
        write_manifest(table, mpath)
    except BaseException:
        for w in written:
            w.unlink(missing_ok=True)
        raise
    return RoiRegistration(mpath, rel, len(new), list(old["path"]), present)
