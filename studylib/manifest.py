"""The data manifest: schema, validation, path safety and sha256 verification.

``data_manifest.csv`` lists one row per raw file (see ``docs/conventions.md``)::

    study,animal,group,day,kind,path,sha256[,sex,model,notes]

* :func:`read_manifest` parses and validates the schema and raises :class:`ManifestError`
  listing every problem found;
* :func:`verify_manifest` never raises for bad data: it returns one line per problem
  (``row N: <path>: <what is wrong>``), checking schema, path safety, file existence,
  sha256 and cheaply opening every NIfTI header and JSON sidecar;
* :func:`write_manifest` writes a manifest deterministically (sorted rows, ``\\n`` line
  endings, atomic replace) so a regenerated study has a byte-identical manifest.

Paths are relative POSIX paths inside the manifest's folder; :func:`resolve_path` refuses
absolute paths, backslashes, ``..`` components and symlinks that lead out of the folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ._atomic import atomic_write_bytes
from .errors import DataFileError, ManifestError, StudyError

__all__ = [
    "KINDS", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "IMAGE_KINDS", "AXIS_KINDS", "SIGNED_KINDS",
    "read_manifest", "validate_manifest", "resolve_path", "sha256_file", "manifest_sha256",
    "verify_manifest", "write_manifest",
]

#: Known values of the ``kind`` column.
KINDS: tuple[str, ...] = ("MEGRE", "MSME", "VFA", "IR", "VTR", "DWI", "DCE", "CEST", "WASSR", "F19", "T2w",
                          "B1map", "roi", "histology")
#: Kinds stored as NIfTI images (everything except ``histology``).
IMAGE_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "histology")
#: Kinds whose images carry an acquisition axis described by the sidecar.
AXIS_KINDS: tuple[str, ...] = ("MEGRE", "MSME", "VFA", "IR", "VTR", "DWI", "DCE", "CEST", "WASSR")
#: kinds whose images may hold signed values (a phase-corrected, real-valued inversion recovery); every
#: other image kind is a magnitude, never negative (its stored integers are checked for wrap-around)
SIGNED_KINDS: tuple[str, ...] = ("IR",)
REQUIRED_COLUMNS: tuple[str, ...] = ("study", "animal", "group", "day", "kind", "path", "sha256")
OPTIONAL_COLUMNS: tuple[str, ...] = ("sex", "model", "notes")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_DAY_RE = re.compile(r"^[+-]?\d+$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_BLOCK = 1 << 20


# --------------------------------------------------------------------------- paths and hashes

def _check_rel(rel) -> PurePosixPath:
    """Lexical path-safety checks of a manifest ``path`` entry (no filesystem access)."""
    if not isinstance(rel, str) or not rel.strip():
        raise ManifestError("path is empty")
    if rel != rel.strip():
        raise ManifestError(f"path {rel!r} has leading or trailing whitespace")
    if "\\" in rel:
        raise ManifestError(f"path {rel!r} contains a backslash; use '/' (relative POSIX paths only)")
    if "\x00" in rel:
        raise ManifestError(f"path {rel!r} contains a NUL byte")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or rel.startswith("~"):
        raise ManifestError(f"path {rel!r} is absolute; paths must be relative to the manifest folder")
    p = PurePosixPath(rel)
    if any(part == ".." for part in p.parts):
        raise ManifestError(f"path {rel!r} escapes the manifest folder ('..' is not allowed)")
    return p


def resolve_path(manifest_dir, rel: str, *, plain_dirs: set | None = None) -> Path:
    """Resolve a manifest ``path`` entry to a file path inside ``manifest_dir``.

    Parameters
    ----------
    manifest_dir : str or Path
        Folder of the manifest; every listed file must live below it.
    rel : str
        The ``path`` column value: a relative POSIX path.
    plain_dirs : set, optional
        For a caller resolving many rows at once: the folders below ``manifest_dir`` already found not to be
        symlinks in this pass (read and filled here), so rows sharing a folder ``lstat`` it once.

    Returns
    -------
    Path
        ``manifest_dir / rel`` (not resolved further, so messages show the listed path).

    Raises
    ------
    ManifestError
        If ``rel`` is empty, absolute, contains a backslash or a ``..`` component, or
        resolves (through symlinks) to a location outside ``manifest_dir``.  The file
        itself need not exist.

    Notes
    -----
    The symlink check resolves both paths with ``os.path.realpath`` only when a component of
    ``rel`` below ``manifest_dir`` is a symlink (:func:`_has_symlink_below`); otherwise the target
    is inside the folder by construction.  Nothing is cached between calls, except in ``plain_dirs``.
    """
    p = _check_rel(rel)
    base = Path(manifest_dir)
    target = base.joinpath(*p.parts)
    if not _has_symlink_below(str(base), p.parts, plain_dirs):
        return target  # base/rel with no '..' and no symlink below base: inside base, whatever base is
    real_base = os.path.realpath(base)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_base, real_target]) != real_base:
        raise ManifestError(f"path {rel!r} escapes the manifest folder (resolves to {real_target})")
    return target


def _has_symlink_below(base: str, parts: tuple[str, ...], plain_dirs: set | None = None) -> bool:
    """Whether any existing component of ``base/parts[0]/parts[1]/...`` below ``base`` is a symlink.

    One ``lstat`` per component of the manifest entry (a few microseconds each, no Python path walk), in
    place of ``os.path.realpath`` of the manifest folder and of the target for every entry (a Python
    ``lstat`` walk of every component of both, ~40 us each; 3000 calls for a 231-scan study).  Without a
    symlink below ``base``, ``realpath(target)`` is ``realpath(base)`` joined with ``parts`` (no ``..``:
    :func:`_check_rel`), inside the folder wherever the folder itself resolves to, so the escape check
    needs neither realpath and nothing is cached (a symlink changed while the process runs is seen by
    the next call).  A component that cannot be ``lstat``-ed (missing, not a folder, no permission) is
    not a link, as for ``realpath``, and neither is anything below it.  With a symlink, the caller does
    the full check.  ``plain_dirs`` (see :func:`resolve_path`): folders known not to be links, skipped, and
    every folder found not to be one added.
    """
    cur = base
    last = len(parts) - 1
    for i, part in enumerate(parts):
        cur = cur + "/" + part
        if plain_dirs is not None and i < last and cur in plain_dirs:
            continue
        try:
            mode = os.lstat(cur).st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode):
            return True
        if plain_dirs is not None and i < last and stat.S_ISDIR(mode):
            plain_dirs.add(cur)
    return False


def sha256_file(path) -> str:
    """Lowercase hex sha256 of a file's bytes, read in 1 MiB blocks."""
    return _digest(path)[0]


def _digest(path, *, gunzip: bool = False) -> tuple[str, int | None, str | None]:
    """One read of a file: (sha256 hex, decompressed size, problem of its gzip stream or None).

    With ``gunzip`` the same 1 MiB blocks are also inflated (:class:`studylib.io.nifti.GunzipCounter`: CRC-32
    and length of every member checked, output discarded), so a ``.nii.gz`` is read from disk once, not twice;
    without, size and problem are None.

    Raises
    ------
    DataFileError
        the file cannot be read.
    """
    h = hashlib.sha256()
    inflate = None
    if gunzip:
        from .io.nifti import GunzipCounter

        inflate = GunzipCounter()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
                if inflate is not None:
                    inflate.feed(block)
    except OSError as err:
        raise DataFileError(f"{path}: cannot read: {err.strerror or err}") from None
    if inflate is None:
        return h.hexdigest(), None, None
    inflate.finish()
    return h.hexdigest(), inflate.size, inflate.problem


def manifest_sha256(path) -> str:
    """sha256 of the manifest file itself (recorded in every loaded Dataset's attrs)."""
    return sha256_file(path)


# --------------------------------------------------------------------------- schema

def _read_csv_text(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: manifest is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read manifest: {err.strerror or err}") from None
    if "\x00" in text:
        raise ManifestError(f"{path}: manifest contains NUL bytes (binary file?)")
    if not text.strip():
        raise ManifestError(f"{path}: manifest is empty (no header line)")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as err:
        raise ManifestError(f"{path}: not a valid CSV file: {err}") from None
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    # drop fully blank trailing lines
    while body and all(not c.strip() for c in body[-1]):
        body.pop()
    for i, r in enumerate(body, start=1):
        if len(r) != len(header):
            raise ManifestError(f"{path}: row {i}: has {len(r)} fields but the header has {len(header)}")
    return pd.DataFrame(body, columns=header, dtype=object) if body else pd.DataFrame(columns=header, dtype=object)



def _id_problem(column: str, value: str) -> str:
    """Why ``value`` is not a valid study or animal identifier (a stray space is named as such)."""
    if value != value.strip():
        return (f"{column} {value!r} has leading or trailing spaces (the same {column} without them would be a "
                f"different one); remove them")
    return f"{column} {value!r} contains characters other than letters, digits, '_', '.', '+', '-'"

def _schema_problems(df: pd.DataFrame) -> tuple[list[str], dict[int, list[str]]]:
    """Schema problems: (table-level problems, {row index (0-based): [problems]})."""
    table: list[str] = []
    rows: dict[int, list[str]] = {}
    cols = list(df.columns)
    dup_cols = sorted({c for c in cols if cols.count(c) > 1})
    if dup_cols:
        table.append(f"duplicate column(s) {dup_cols}")
        return table, rows
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        table.append(f"missing required column(s) {missing}; the header is {cols}")
    unknown = [c for c in cols if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        table.append(f"unknown column(s) {unknown}; allowed: {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    if missing:
        return table, rows

    def add(i, msg):
        rows.setdefault(i, []).append(msg)

    seen_rows: dict[tuple, int] = {}
    seen_paths: dict[str, int] = {}
    animal_attrs: dict[tuple, tuple[int, dict]] = {}
    # the columns as Python lists, rows zipped from them (iterating the frame's rows goes through pandas' string
    # arrays one element at a time: three quarters of the check's time on a study's manifest)
    for i, row in enumerate(zip(*(df[c].tolist() for c in cols))):
        vals = {c: ("" if v is None else v if isinstance(v, str) else str(v)) for c, v in zip(cols, row)}
        kind = vals["kind"].strip()
        if kind not in KINDS:
            add(i, f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if not vals["study"].strip():
            add(i, "study is empty")
        elif not _ID_RE.match(vals["study"]):
            add(i, _id_problem("study", vals["study"]))
        day = vals["day"].strip()
        if kind == "histology":
            if day and not _DAY_RE.match(day):
                add(i, f"day {day!r} is not an integer")
        else:
            if not day:
                add(i, "day is empty (only histology rows may leave it empty)")
            elif not _DAY_RE.match(day):
                add(i, f"day {day!r} is not an integer")
            if not vals["animal"].strip():
                add(i, "animal is empty (only histology rows may leave it empty)")
        if vals["animal"] and not _ID_RE.match(vals["animal"]):
            add(i, _id_problem("animal", vals["animal"]))
        sha = vals["sha256"]
        if not _SHA_RE.match(sha):
            add(i, f"sha256 {sha!r} is not 64 lowercase hex digits")
        try:
            _check_rel(vals["path"])
        except ManifestError as err:
            add(i, str(err))
        key = tuple(vals[c] for c in df.columns)
        if key in seen_rows:
            add(i, f"duplicate row (same as row {seen_rows[key] + 1})")
        else:
            seen_rows[key] = i
            p = vals["path"]
            if p in seen_paths:
                add(i, f"duplicate path {p!r} (also in row {seen_paths[p] + 1})")
            else:
                seen_paths[p] = i
        if vals["animal"]:
            a = (vals["study"], vals["animal"])
            attrs = {c: vals[c] for c in ("group", "sex", "model") if c in vals}
            if a in animal_attrs:
                j, prev = animal_attrs[a]
                diff = [c for c in attrs if attrs[c] != prev[c]]
                if diff:
                    add(i, f"animal {vals['animal']!r} of study {vals['study']!r} has "
                           + ", ".join(f"{c} {attrs[c]!r}" for c in diff)
                           + f" but row {j + 1} says " + ", ".join(f"{c} {prev[c]!r}" for c in diff))
            else:
                animal_attrs[a] = (i, attrs)
    return table, rows


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        out[c] = out[c].astype(str).str.strip() if c not in ("notes",) else out[c].astype(str)
    out["day"] = pd.array([int(d) if d else pd.NA for d in out["day"]], dtype="Int64")
    order = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in out.columns]
    return out[order].reset_index(drop=True)


def _cell(v) -> str:
    """A DataFrame cell as manifest text: None/NaN/NA -> '', integral floats (days) -> '7'."""
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, str):
        return v
    try:
        if pd.isna(v):
            return ""
    except (TypeError, ValueError):
        pass
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def validate_manifest(df: pd.DataFrame, *, source="manifest") -> pd.DataFrame:
    """Validate a manifest table (strings) and return it typed (``day`` as nullable Int64).

    Raises :class:`ManifestError` listing every problem (``row N: ...``).
    """
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    sdf = df.copy()
    for c in sdf.columns:
        sdf[c] = [_cell(v) for v in sdf[c]]
    table, rows = _schema_problems(sdf)
    probs = [f"{source}: {t}" for t in table]
    for i in sorted(rows):
        p = sdf["path"].iloc[i] if "path" in sdf.columns else ""
        probs += [f"{source}: row {i + 1} ({p}): {m}" for m in rows[i]]
    if probs:
        more = f"\n... and {len(probs) - 20} more" if len(probs) > 20 else ""
        raise ManifestError("\n".join(probs[:20]) + more)
    return _typed(sdf)


def read_manifest(path, *, validate: bool = True) -> pd.DataFrame:
    """Read and validate ``data_manifest.csv``: the one reader of the manifest CSV.

    Parameters
    ----------
    path : str or Path
        The manifest CSV (UTF-8, BOM allowed, any line endings, RFC 4180 quoting).
    validate : bool
        ``False`` returns the parsed table as text without the schema checks (for tools that only
        list paths, e.g. the runner checking which files exist); the file must still be a
        readable CSV with a consistent number of fields.

    Returns
    -------
    pandas.DataFrame
        Columns ``study, animal, group, day, kind, path, sha256`` (+ any of ``sex, model,
        notes`` present), strings except ``day`` (nullable ``Int64``; ``<NA>`` only for
        histology rows).  ``df.attrs["path"]`` holds the manifest path.

    Raises
    ------
    ManifestError
        The file is missing, not CSV, lacks a required column, or any row is invalid:
        unknown kind, non-integer day, bad sha256, unsafe path, duplicate row or path,
        inconsistent group/sex/model of one animal.  The message lists every problem.
    """
    df = _read_csv_text(path)
    if not validate:
        df.attrs["path"] = str(path)
        return df
    out = validate_manifest(df, source=str(path))
    out.attrs["path"] = str(path)
    return out


# --------------------------------------------------------------------------- verify

class _Reads:
    """What one verify pass has read: each NIfTI header and JSON sidecar once, however many checks ask."""

    def __init__(self):
        self._headers: dict[Path, object] = {}
        self._sidecars: dict[Path, dict] = {}

    def header(self, p: Path):
        from .io.nifti import read_header

        if p not in self._headers:
            self._headers[p] = read_header(p)  # a StudyError is not kept: asked again, it is raised again
        return self._headers[p]

    def sidecar(self, p: Path) -> dict:
        from .io.sidecar import read_sidecar

        if p not in self._sidecars:
            self._sidecars[p] = read_sidecar(p)
        return self._sidecars[p]


def _check_content(p: Path, kind: str, reads: _Reads, gunzipped_size: int | None = None) -> list[str]:
    """Cheap content checks of one listed file; returns problems (never raises).  A gzip stream's own
    integrity is :func:`_digest`'s; ``gunzipped_size``, the length it inflated to, when it did."""
    name = p.name.lower()
    probs: list[str] = []
    try:
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            info = reads.header(p)
            size = p.stat().st_size if name.endswith(".nii") else gunzipped_size
            if size is not None and size < info.vox_offset + info.nbytes:
                probs.append(f"truncated NIfTI: header needs {info.vox_offset + info.nbytes} bytes, the data has "
                             f"{size}")
        elif name.endswith(".json"):
            reads.sidecar(p)
        elif name.endswith(".csv"):
            with open(p, "r", encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh, strict=True))
            if not rows or not any(c.strip() for c in rows[0]):
                probs.append("CSV file has no header line")
            else:
                n = len(rows[0])
                bad = [i for i, r in enumerate(rows[1:], start=2) if r and len(r) != n]
                if bad:
                    probs.append(f"CSV line {bad[0]} has a different number of fields than the header ({n})")
    except StudyError as err:
        msg = str(err)
        # read_header / read_sidecar prefix the file name: drop it, the caller adds it
        sp = str(p) + ": "
        probs.append(msg[len(sp):] if msg.startswith(sp) else msg)
    except UnicodeDecodeError as err:
        probs.append(f"not UTF-8 text ({err.reason})")
    except csv.Error as err:
        probs.append(f"not a valid CSV file: {err}")
    except OSError as err:
        probs.append(f"cannot read: {err.strerror or err}")
    except Exception as err:  # pragma: no cover - last line of defence: verify never tracebacks
        probs.append(f"cannot be read: {type(err).__name__}: {err}")
    return probs


def _check_axis(image: Path, base: Path, side_rel: str, kind: str, reads: _Reads) -> list[str]:
    """The sidecar's acquisition axis (EchoTime, bValue, ...) must match the image's volumes.

    A sidecar that cannot be read is reported on its own row, not again here.
    """
    from .io.sidecar import acquisition_axis

    try:
        side = resolve_path(base, side_rel)
        sc = reads.sidecar(side)
        info = reads.header(image)
    except StudyError:
        return []
    try:
        acquisition_axis(kind, sc, n_volumes=info.n_volumes, source=str(side))
    except StudyError as err:
        return [str(err)]
    return []


def _stem(path: str) -> str:
    for ext in (".nii.gz", ".nii", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def verify_manifest(path, check_hashes: bool = True, *, study: str | None = None) -> list[str]:
    """Check a manifest and the files it lists; return one line per problem (empty if OK).

    Parameters
    ----------
    path : str or Path
        The manifest CSV.
    check_hashes : bool
        Compare each file's sha256 with the manifest and fully decompress gzip files (one read of every
        byte does both).  ``False`` checks schema, paths, existence and headers only.
    study : str, optional
        Check only the rows of this study (a notebook's inputs; the table's own schema is still checked
        whole, row numbers stay the manifest's).  A study the manifest does not list is one problem.

    Returns
    -------
    list of str
        Lines like ``"row 3: raw/s/m01/day00/MEGRE.nii.gz: sha256 mismatch: expected ab.. got cd.."``.
        Never raises for bad data: a missing or unreadable manifest is one problem line.
    """
    path = Path(path)
    try:
        df = _read_csv_text(path)
    except ManifestError as err:
        return [str(err)]
    sdf = df.copy()
    for c in sdf.columns:
        sdf[c] = ["" if v is None else str(v) for v in sdf[c]]
    table, rows = _schema_problems(sdf)
    problems = [f"{path}: {t}" for t in table]
    if "path" not in sdf.columns:
        return problems
    if study is not None:
        studies = list(sdf["study"]) if "study" in sdf.columns else []
        selected = [i for i, s in enumerate(studies) if s == study]
        if not selected:
            return problems + [f"{path}: lists no files of study {study!r} (it lists {sorted(set(studies))})"]
    else:
        selected = range(len(sdf))
    base = path.parent
    paths = list(sdf["path"])
    kinds = list(sdf["kind"]) if "kind" in sdf.columns else [""] * len(sdf)
    shas = list(sdf["sha256"]) if "sha256" in sdf.columns else [""] * len(sdf)
    listed = set(paths)
    reads = _Reads()
    for i in selected:
        rel = paths[i]
        row_probs = list(rows.get(i, []))
        fname = rel if rel else "<empty path>"
        p = None
        if not any(m.startswith(("path ",)) for m in row_probs):
            try:
                p = resolve_path(base, rel)
            except ManifestError as err:
                row_probs.append(str(err))
        if p is not None:
            if not p.exists():
                row_probs.append("missing file" + (" (broken symlink)" if p.is_symlink() else ""))
            elif not p.is_file():
                row_probs.append("not a regular file")
            else:
                bad_hash, size, stream = False, None, None
                if check_hashes:
                    try:
                        got, size, stream = _digest(p, gunzip=p.name.lower().endswith(".gz"))
                    except DataFileError as err:
                        got = None
                        row_probs.append(str(err))
                    if got is not None and _SHA_RE.match(shas[i]) and got != shas[i]:
                        bad_hash = True
                        row_probs.append(f"sha256 mismatch: expected {shas[i]} got {got}")
                content = [] if bad_hash else [stream] if stream else _check_content(p, kinds[i], reads, size)
                row_probs += content
                k = kinds[i]
                if k in AXIS_KINDS and rel.endswith((".nii", ".nii.gz")) and _stem(rel) + ".json" not in listed:
                    row_probs.append(f"no JSON sidecar row ({_stem(rel)}.json) for this {k} image")
                elif k in AXIS_KINDS and rel.endswith((".nii", ".nii.gz")) and not bad_hash and not content:
                    row_probs += _check_axis(p, base, _stem(rel) + ".json", k, reads)
        problems += [f"row {i + 1}: {fname}: {m}" for m in row_probs]
    if not problems and len(sdf) == 0:
        problems.append(f"{path}: the manifest lists no files (a header only)")
    if not problems:
        problems += _study_checks(sdf.iloc[list(selected)], base, reads)
    return problems


def _study_checks(sdf: pd.DataFrame, base: Path, reads: _Reads) -> list[str]:
    """Checks across rows: each ROI on its session's scan grid with integer labels, one field per study.

    ``sdf``: the manifest rows checked, as strings, indexed by their 0-based row in the manifest."""
    from .io.nifti import check_same_grid, read_nifti

    probs: list[str] = []
    if not {"study", "animal", "day", "kind"} <= set(sdf.columns):
        return probs
    sessions: dict[tuple, dict[str, list]] = {}
    field_of_study: dict[str, dict[float, str]] = {}
    for i, study, animal, day, kind, rel in zip(sdf.index, sdf["study"], sdf["animal"], sdf["day"], sdf["kind"],
                                                sdf["path"]):
        if rel.endswith((".nii", ".nii.gz")):
            s = sessions.setdefault((study, animal, day), {"roi": [], "scan": []})
            s["roi" if kind == "roi" else "scan"].append((i, rel))
        elif rel.endswith(".json") and kind != "roi":
            try:
                b0 = reads.sidecar(resolve_path(base, rel)).get("MagneticFieldStrength")
            except StudyError:
                continue
            if b0 is not None:
                field_of_study.setdefault(study, {}).setdefault(round(float(b0), 1), rel)
    for s in sessions.values():
        for i, rel in s["roi"]:
            try:
                roi_p = resolve_path(base, rel)
                info = reads.header(roi_p)
                data = np.asarray(read_nifti(roi_p))
                if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
                    probs.append(f"row {i + 1}: {rel}: ROI labels are not whole numbers (an interpolated or "
                                 f"resampled label map?): re-save it with nearest-neighbour labels")
                for _, scan in s["scan"]:
                    check_same_grid(info, reads.header(resolve_path(base, scan)), what=rel, other=f"scan {scan}")
            except StudyError as err:
                probs.append(f"row {i + 1}: {err}")
    for study, fields in field_of_study.items():
        if len(fields) > 1:
            shown = ", ".join(f"{f:g} T ({rel})" for f, rel in sorted(fields.items()))
            probs.append(f"study {study}: scans at different field strengths: {shown}; relaxation rates and "
                         f"relaxivities differ with field: analyse them as separate studies")
    return probs


# --------------------------------------------------------------------------- write

def write_manifest(df: pd.DataFrame, path) -> Path:
    """Write a manifest deterministically and atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``study, animal, group, day, kind, path`` and optionally ``sha256``,
        ``sex``, ``model``, ``notes``.  If ``sha256`` is absent (or empty for a row) it is
        computed from the file ``path`` relative to the manifest's folder.
    path : str or Path
        Where to write the CSV.

    Returns
    -------
    Path
        ``path``.  Rows are sorted by (study, animal, day, kind, path), columns in the
        canonical order, ``\\n`` line endings, UTF-8; written to a temporary file in the
        same folder and renamed into place.

    Raises
    ------
    ManifestError
        If the table does not validate (same rules as :func:`read_manifest`).
    """
    path = Path(path)
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"write_manifest: expected a pandas DataFrame, got {type(df).__name__}")
    df = df.copy()
    if "sha256" not in df.columns:
        df["sha256"] = ""
    fill = []
    for rel, sha in zip(df["path"], df["sha256"]):
        if sha is None or (not isinstance(sha, str) and pd.isna(sha)) or sha == "":
            fill.append(sha256_file(resolve_path(path.parent, str(rel))))
        else:
            fill.append(sha)
    df["sha256"] = fill
    typed = validate_manifest(df, source=f"write_manifest({path})")
    dayk = typed["day"].astype("Float64").fillna(-1e18).astype(float)
    typed = typed.assign(_d=dayk).sort_values(["study", "animal", "_d", "kind", "path"], kind="mergesort")
    typed = typed.drop(columns="_d")
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(typed.columns))
    for r in typed.itertuples(index=False):
        w.writerow(["" if (v is pd.NA or v is None) else str(v) for v in r])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"), fsync=True)
    return path
