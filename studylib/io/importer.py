"""``studylib import``: scanner data (ParaVision or DICOM) -> NIfTI + sidecars + manifest rows.

A source is a ParaVision study folder (``<study>/<E>/...``; PV 5.1, 6.0.x, 7, 360), one scan
folder (``<study>/<E>``), one reconstruction (``<study>/<E>/pdata/<P>``) or a folder of DICOM
files (searched recursively, one scan per SeriesInstanceUID).  :func:`plan_import` lists every
scan with the kind it would get or the reason it is not imported; :func:`import_scans` converts
the importable ones into ``OUT/raw/<study>/<animal>/day<NN>/<kind>_<scan>.nii.gz`` + ``.json`` and
appends one row per file (with sha256) to the manifest.

All or nothing: every file is first written to a staging folder beside the manifest, the new
manifest is validated, and only then are the files renamed into place and the manifest
replaced atomically; a failure at any step removes what was staged (and undoes renames
already made), so the manifest and the data folder are left as they were.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import DataFileError, StudyError
from ..manifest import IMAGE_KINDS, read_manifest, sha256_file, validate_manifest, write_manifest
from . import bruker, dicom

__all__ = ["PlannedScan", "ImportResult", "plan_import", "format_plan", "import_scans", "source_type"]

_ID_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class PlannedScan:
    """One scan of the source: what it is and what it would become.

    ``selector`` is how ``--scans`` names it (``"4"``, ``"4/2"`` for reconstruction 2, or a DICOM
    SeriesNumber); ``reason`` is set (one line) when it is not imported.
    """

    source: str
    label: str
    selector: str
    method: str
    protocol: str
    comment: str
    kind: str | None
    matrix: tuple[int, ...]
    reason: str | None
    sidecar: dict = field(default_factory=dict)
    convert: Callable | None = None
    summary: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return f"{self.kind}_{self.label.replace('/', '')}"


@dataclass
class ImportResult:
    """What :func:`import_scans` did: ``plan`` (every scan), ``imported`` / ``refused`` scans,
    ``files`` written (relative to the manifest folder), ``manifest`` path, ``new_rows``."""

    plan: list[PlannedScan]
    imported: list[PlannedScan]
    refused: list[PlannedScan]
    files: list[str]
    manifest: Path | None
    new_rows: int


def source_type(src) -> str:
    """``"paravision-study"``, ``"paravision-scan"``, ``"paravision-reco"`` or ``"dicom"``.

    Raises :class:`DataFileError` when ``src`` does not exist.
    """
    src = Path(src)
    if not src.exists():
        raise DataFileError(f"{src}: import source not found")
    if not src.is_dir():
        raise DataFileError(f"{src}: import source must be a folder (a ParaVision study or scan, or DICOM files)")
    if (src / "visu_pars").is_file() and src.parent.name == "pdata" and src.name.isdigit():
        return "paravision-reco"
    if bruker.is_scan_folder(src) and ((src / "method").is_file() or (src / "acqp").is_file()):
        return "paravision-scan"
    if bruker.is_study_folder(src):
        return "paravision-study"
    return "dicom"


def _pv_item(scan_dir: Path, reco: int, kind: str | None) -> PlannedScan:
    d = bruker.describe_scan(scan_dir, reco, kind=kind)
    sel = scan_dir.name + (f"/{reco}" if reco != 1 else "")

    def convert(stem, _s=scan_dir, _r=reco, _k=d.kind):
        return bruker.paravision_scan_to_nifti(_s, stem, reco_id=_r, kind=_k)

    return PlannedScan("ParaVision", d.label, sel, d.method, d.protocol, d.comment, d.kind, d.matrix, d.reason,
                       d.sidecar, convert if d.kind else None, d.summary)


def _dicom_item(series: dicom.DicomSeries, kind: str | None) -> PlannedScan:
    d = dicom.describe_dicom_series(series, kind=kind)

    def convert(stem, _s=series, _k=d.kind):
        return dicom.dicom_series_to_nifti(_s.files[0].parent, stem, kind=_k, files=_s.files)

    return PlannedScan("DICOM", d.label, str(series.number), d.method, d.protocol, d.comment, d.kind, d.matrix,
                       d.reason, d.sidecar, convert if d.kind else None, bruker.summarize_sidecar(d.sidecar))


def plan_import(src, *, kind: str | None = None) -> list[PlannedScan]:
    """Every scan of ``src`` with its kind, or the reason it will not be imported (headers only).

    Parameters
    ----------
    src : str or Path
        ParaVision study, scan or reconstruction folder, or a DICOM folder.
    kind : str, optional
        Manifest kind for every scan instead of the one recognised from the method.

    Returns
    -------
    list of PlannedScan
        ParaVision: one per reconstruction (``pdata/<P>``) of every scan, in scan order;
        DICOM: one per series, in SeriesNumber order.

    Raises
    ------
    StudyError
        Unknown ``kind``; :class:`DataFileError` when ``src`` is missing or holds no scan.
    """
    if kind is not None and (kind not in IMAGE_KINDS or kind == "roi"):
        raise StudyError(f"--kind {kind!r}: unknown kind (known: {', '.join(k for k in IMAGE_KINDS if k != 'roi')})")
    src = Path(src)
    st = source_type(src)
    if st == "paravision-reco":
        return [_pv_item(src.parent.parent, int(src.name), kind)]
    if st == "paravision-scan":
        recos = bruker.reconstructions(src) or [1]
        return [_pv_item(src, r, kind) for r in recos]
    if st == "paravision-study":
        items = []
        for scan_dir in bruker.study_scans(src):
            for r in bruker.reconstructions(scan_dir) or [1]:
                items.append(_pv_item(scan_dir, r, kind))
        if not items:
            raise DataFileError(f"{src}: ParaVision study folder without scan folders")
        return items
    try:
        series = dicom.find_dicom_series(src)
    except DataFileError:
        raise DataFileError(f"{src}: neither a ParaVision study/scan folder (numbered scan folders with method, "
                            "acqp, pdata/<P>/visu_pars) nor a folder of DICOM files") from None
    items = [_dicom_item(s, kind) for s in series]
    seen: dict[str, int] = {}
    for it in items:  # two series may share a SeriesNumber: keep labels (and file names) unique
        seen[it.label] = seen.get(it.label, 0) + 1
        if seen[it.label] > 1:
            it.label, it.selector = f"{it.label}-{seen[it.label]}", f"{it.selector}-{seen[it.label]}"
    return items


def _fmt_num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def format_plan(plan: list[PlannedScan]) -> list[str]:
    """One line per scan: label, method, protocol (comment), kind, matrix, TE/TR/FA, b or offsets; or the reason."""
    lines = []
    for p in plan:
        s = p.summary
        facts = []
        if "TE_ms" in s:
            facts.append("TE " + "/".join(_fmt_num(t) for t in s["TE_ms"]) + " ms")
        if "TR_ms" in s:
            tr = s["TR_ms"]
            facts.append("TR " + ("/".join(_fmt_num(t) for t in tr) if isinstance(tr, list) else _fmt_num(tr)) + " ms")
        if "FA_deg" in s:
            facts.append(f"FA {_fmt_num(s['FA_deg'])} deg")
        if "B0_T" in s:
            facts.append(f"B0 {_fmt_num(s['B0_T'])} T")
        if "b" in s:
            facts.append("b " + ",".join(_fmt_num(b) for b in s["b"]) + " s/mm2")
        if "offsets_ppm" in s:
            off = s["offsets_ppm"]
            reps = p.sidecar.get("SaturationRepetitions", 1) or 1
            cycle = off[: len(off) // reps]
            facts.append(f"offsets ({len(cycle)} x {reps} repetitions, {len(s['reference_volumes'])} reference "
                         f"volumes) ppm: " + " ".join(f"{o:.2f}" for o in cycle))
        matrix = "x".join(str(m) for m in p.matrix) or "?"
        what = f"{p.method} | {p.protocol}" + (f" ({p.comment})" if p.comment and p.comment != p.protocol else "")
        head = f"{p.label:<8} {what:<60} {p.kind or '-':<6} {matrix:<14}"
        tail = "  ".join(facts)
        if p.reason:
            tail = (tail + "  " if tail else "") + f"NOT IMPORTED: {p.reason}"
        lines.append(f"{head} {tail}".rstrip())
    return lines


def _select(plan: list[PlannedScan], scans, src) -> list[PlannedScan]:
    if scans is None:
        return plan
    want = [str(w).strip() for w in (scans.split(",") if isinstance(scans, str) else scans) if str(w).strip()]
    out = []
    for w in want:
        norm = re.sub(r"^[ESes]", "", w).replace("/P", "/").replace("/p", "/")
        hits = [p for p in plan if p.selector == norm or p.label.lower() == w.lower()]
        if not hits:
            raise StudyError(f"{src}: no scan {w!r} (scans: {', '.join(p.selector for p in plan)})")
        out += [h for h in hits if h not in out]
    return out


def _check_ids(**ids) -> None:
    for name, v in ids.items():
        if v is None or str(v).strip() == "":
            raise StudyError(f"--{name} is required to import (only --dry-run works without it)")
        if name != "group" and not _ID_RE.match(str(v)):
            raise StudyError(f"--{name} {v!r}: use letters, digits, '_', '.', '+', '-' only")


def import_scans(src, *, out=None, manifest=None, study=None, animal=None, group=None, day=None, scans=None,
                 kind: str | None = None, dry_run: bool = False) -> ImportResult:
    """Import the scans of ``src`` into NIfTI + sidecars and manifest rows, all or nothing.

    Parameters
    ----------
    src : str or Path
        ParaVision study/scan/reconstruction folder or DICOM folder.
    out : str or Path
        Data folder; files go to ``out/raw/<study>/<animal>/day<NN>/<kind>_<scan>.nii.gz`` (+ ``.json``).
    manifest : str or Path, optional
        Manifest to append to (created when missing); default ``out/data_manifest.csv``.  ``out``
        must lie inside the manifest's folder (manifest paths are relative to it).
    study, animal, group : str
        Manifest columns of every row.
    day : int
        Days from first treatment (may be negative).
    scans : str or list, optional
        ``"4,5"`` (scan numbers; ``"4/2"`` for reconstruction 2; DICOM SeriesNumbers).  A selected
        scan that cannot be imported is an error; without ``scans`` such scans are listed and skipped.
    kind : str, optional
        Kind for every imported scan instead of the recognised one.
    dry_run : bool
        Only plan (nothing read beyond headers, nothing written); ids and ``out`` are not needed.

    Returns
    -------
    ImportResult

    Raises
    ------
    StudyError
        Missing or invalid arguments, a selected scan that is refused, nothing importable, a file or
        manifest row that already exists with other content.  :class:`DataFileError` /
        :class:`ManifestError` (subclasses) name the file.  Nothing is written when anything fails.
    """
    src = Path(src)
    plan = plan_import(src, kind=kind)
    chosen = _select(plan, scans, src)
    refused = [p for p in chosen if p.kind is None]
    todo = [p for p in chosen if p.kind is not None]
    explicit = scans is not None or (source_type(src) != "paravision-study" and len(plan) == 1)
    if dry_run:
        return ImportResult(plan, todo, refused, [], None, 0)
    if explicit and refused:
        raise StudyError("; ".join(f"{p.source} {p.label} in {src}: not imported: {p.reason}" for p in refused))
    if not todo:
        raise StudyError(f"{src}: nothing to import ({len(refused)} scan(s), none importable; see --dry-run)")
    _check_ids(study=study, animal=animal, group=group)
    if out is None:
        raise StudyError("--out is required to import (only --dry-run works without it)")
    try:
        day = int(day)
    except (TypeError, ValueError):
        raise StudyError(f"--day must be an integer (days from first treatment), got {day!r}") from None
    out = Path(out)
    mpath = Path(manifest) if manifest is not None else out / "data_manifest.csv"
    base = mpath.resolve().parent
    folder = out.resolve() / "raw" / study / animal / f"day{day:02d}"
    try:
        rel_dir = folder.relative_to(base)
    except ValueError:
        raise StudyError(f"--out {out} is not inside the manifest's folder {base}: manifest paths are relative "
                         "to it; put the manifest at or above the data folder") from None
    existing = read_manifest(mpath) if mpath.exists() else None
    return _stage_and_commit(plan, todo, refused, existing, mpath, base, rel_dir,
                             dict(study=study, animal=animal, group=group, day=day))


def _new_rows(todo, staged, existing, ids, rel_dir) -> list[dict]:
    rows = []
    extra = {}
    if existing is not None:
        same = existing[(existing["study"] == ids["study"]) & (existing["animal"] == ids["animal"])]
        for c in ("sex", "model"):
            if c in existing.columns and len(same):
                extra[c] = str(same[c].iloc[0])
    for p in todo:
        note = f"{p.source} {p.label}: {p.protocol or p.method}" + (f" ({p.comment})" if p.comment else "")
        for f in staged[p.label]:
            rows.append(dict(study=ids["study"], animal=ids["animal"], group=ids["group"], day=ids["day"],
                             kind=p.kind, path=(rel_dir / f.name).as_posix(), sha256=sha256_file(f),
                             notes=note, **extra))
    return rows


def _stage_and_commit(plan, todo, refused, existing, mpath: Path, base: Path, rel_dir: Path, ids) -> ImportResult:
    base.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".studylib-import-", dir=base))
    moved: list[Path] = []
    try:
        staged: dict[str, list[Path]] = {}
        for p in todo:
            nii, side = p.convert(stage / p.stem)
            staged[p.label] = [nii, side]
        rows = _new_rows(todo, staged, existing, ids, rel_dir)
        keep, add = _merge(rows, existing, base)
        table = pd.DataFrame(([] if existing is None else existing.to_dict("records")) + add)
        validate_manifest(table, source=str(mpath))  # every row, before anything is moved
        for p in todo:
            for f in staged[p.label]:
                dest = base / rel_dir / f.name
                if (rel_dir / f.name).as_posix() in keep:
                    continue  # already there, byte-identical and listed
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    continue  # byte-identical unlisted file (checked by _merge): adopt it
                os.replace(f, dest)
                moved.append(dest)
        if add:
            write_manifest(table, mpath)
    except BaseException:
        for m in moved:
            try:
                m.unlink()
            except OSError:
                pass
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    files = [r["path"] for r in rows]
    return ImportResult(plan, todo, refused, files, mpath, len(add))


def _merge(rows: list[dict], existing, base: Path) -> tuple[set[str], list[dict]]:
    """(paths already listed identically, rows to add); refuse a path listed or on disk with other content."""
    listed = {} if existing is None else {r["path"]: r for r in existing.to_dict("records")}
    keep, add = set(), []
    for r in rows:
        old = listed.get(r["path"])
        dest = base / r["path"]
        if old is not None:
            same = all(str(old.get(c, "")) == str(r[c]) for c in ("study", "animal", "group", "kind", "sha256")) \
                and int(old["day"]) == int(r["day"])
            if not same or not dest.is_file() or sha256_file(dest) != r["sha256"]:
                raise StudyError(f"{dest}: already in the manifest with other content or ids (study, animal, "
                                 "group, day, kind, sha256); remove the row and file first or import elsewhere")
            keep.add(r["path"])
            continue
        if dest.exists() and (not dest.is_file() or sha256_file(dest) != r["sha256"]):
            raise StudyError(f"{dest}: exists with other content but is not in the manifest; move it away first")
        add.append(r)
    return keep, add
