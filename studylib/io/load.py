"""``load_study``: one kind of scan of one study as a lazy, Dask-backed xarray Dataset.

Only the manifest, NIfTI headers and JSON sidecars are read when loading; voxel data is
read by nibabel when the Dataset is computed, one Dask chunk per scan.  See
``docs/conventions.md`` for the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import conventions
from ..compute import one_layer, paused_gc
from ..errors import DataFileError, ManifestError, StudyError
from ..manifest import AXIS_KINDS, IMAGE_KINDS, SIGNED_KINDS, manifest_sha256, read_manifest, resolve_path
from .nifti import NiftiInfo, check_same_grid, read_header, read_nifti_lazy, read_nifti_pair_lazy
from .sidecar import AXES, acquisition_axis, read_sidecar

__all__ = ["load_study", "load_histology", "open_manifest", "check_same_grid", "ROI_LABELS"]

#: Default ROI label names (docs/conventions.md); their one home is :mod:`studylib.conventions`.
ROI_LABELS = conventions.ROI_LABELS

# sidecar keys handled explicitly (never copied into attrs); the kind's own axis key is added
_SKIP_KEYS = {"ReferenceVolumes", "Labels"}


def _is_image(p: str) -> bool:
    return p.endswith(".nii.gz") or p.endswith(".nii")


def _stem(p: str) -> str:
    for ext in (".nii.gz", ".nii", ".json"):
        if p.endswith(ext):
            return p[: -len(ext)]
    return p


def open_manifest(manifest, study: str | None = None) -> tuple[pd.DataFrame, Path]:
    """Read a manifest and check cheaply that the listed paths are safe and exist.

    ``manifest`` is a path or a DataFrame from :func:`studylib.manifest.read_manifest`
    (which remembers its path in ``attrs["path"]``).  The schema of every row is
    validated; path safety (symlinks included) and existence are checked for the rows of
    ``study`` (all rows if ``None``).  Hashes are not checked (``studylib verify`` does).
    Returns ``(table, manifest_path)``.
    """
    df, path, _ = _open_manifest(manifest, study)
    return df, path


def _open_manifest(manifest, study: str | None) -> tuple[pd.DataFrame, Path, dict[str, Path]]:
    """:func:`open_manifest`, and the checked path of every row it looked at (``path`` entry -> Path)."""
    if isinstance(manifest, pd.DataFrame):
        if "path" not in manifest.attrs:
            raise ManifestError("manifest DataFrame has no attrs['path']; pass the manifest file path "
                                "or a table from studylib.manifest.read_manifest")
        path = Path(manifest.attrs["path"])
        df = manifest
    elif isinstance(manifest, (str, Path)):
        path = Path(manifest)
        df = read_manifest(path)
    else:
        raise ManifestError(f"manifest must be a path or a DataFrame, got {type(manifest).__name__}")
    problems = []
    resolved: dict[str, Path] = {}
    for i, (st, rel) in enumerate(zip(df["study"], df["path"]), start=1):
        if study is not None and st != study:
            continue
        try:
            p = resolve_path(path.parent, rel)
        except ManifestError as err:
            problems.append(f"{path}: row {i}: {err}")
            continue
        if not p.is_file():
            problems.append(f"{path}: row {i}: {rel}: missing file")
        resolved[rel] = p
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ManifestError("\n".join(problems[:10]) + more)
    return df, path, resolved


def _jsonable(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float, str)):
        return True
    return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _common_sidecar_attrs(sidecars: list[dict], skip: set) -> dict:
    if not sidecars:
        return {}
    out = {}
    for k, v in sidecars[0].items():
        if k in skip or not _jsonable(v):
            continue
        if all(k in s and json.dumps(s[k], sort_keys=True) == json.dumps(v, sort_keys=True) for s in sidecars[1:]):
            out[k] = v
    return out


@paused_gc()  # ~10^5 small objects built, all kept: no full collections walking the process meanwhile
def load_study(manifest, study: str, kind: str, *, chunks="scan", roi_with_scan: bool = False) -> xr.Dataset:
    """Load one kind of scan of one study as a lazy xarray Dataset.

    Parameters
    ----------
    manifest : str, Path or DataFrame
        ``data_manifest.csv`` (validated: schema, path safety, existence; not hashes).
    study : str
        Experiment id (``study`` column).
    kind : str
        ``MEGRE, MSME, VFA, IR, VTR, DWI, DCE, CEST, WASSR, F19, T2w``.
    chunks : ``"scan"`` or dict
        ``"scan"`` (default): one Dask chunk per scan.  A dict is passed to
        :meth:`xarray.Dataset.chunk` afterwards.
    roi_with_scan : bool
        Read each scan and its ROI label map in one task (default False: one task per file).  For a
        pass that needs both per scan (fit inside the labels, ROI statistics) on a distributed
        cluster: every task of a scan then runs where its data is, and no scan-sized array moves
        between workers.  The price: computing only ``roi`` (volumes) also decompresses the scans.

    Returns
    -------
    xarray.Dataset
        * ``signal(animal, day, <dim>, z, y, x)`` float32 (no ``<dim>`` for F19/T2w), Dask;
          ``<dim>`` = ``te`` (ms), ``fa`` (deg), ``ti`` (ms), ``tr`` (ms, VTR), ``b`` (s/mm²), ``t`` (s),
          ``offset`` (ppm) in acquisition order;
        * ``roi(animal, day, z, y, x)`` int16 labels (0 where no ROI file or no scan);
        * ``m0(animal, day, z, y, x)`` float32, mean of the CEST/WASSR reference volumes;
        * coordinates ``animal``, ``day`` (units ``day``), ``group``/``sex``/``model``
          along ``animal``, ``acquired(animal, day)`` bool;
        * ``attrs``: ``study, kind, voxel_size_mm`` (x, y, z), ``field_T``, ``tr_ms``,
          ``agent``, ``noise_sigma`` (when the sidecars give them), ``manifest``,
          ``manifest_sha256``, ``files`` (number of scans) and every other sidecar field
          common to all scans; copied onto ``signal.attrs`` too (fits see only the
          DataArray).  A ``NoiseSigma`` that differs between scans becomes a coordinate
          ``noise_sigma(animal, day)``.

        Every animal of the study appears; days are those on which any animal had this
        kind; a missing session is NaN with ``acquired=False`` and roi 0.

    Raises
    ------
    ManifestError
        Invalid manifest, unknown study/kind, no such scans, a scan without its sidecar row.
    DataFileError
        Unreadable header/sidecar, or two scans disagree in matrix size, voxel size or
        acquisition values (te/b/t/fa/ti/offset): the message names both files.  An ROI
        whose grid differs from its scan's also raises, naming both.
    """
    import dask.array as da

    df, mpath, checked = _open_manifest(manifest, study)
    base = mpath.parent

    def resolved(rel: str) -> Path:  # a listed path was checked just now; an unlisted one (a sidecar) is here
        return checked[rel] if rel in checked else resolve_path(base, rel)

    if kind not in IMAGE_KINDS or kind == "roi":
        raise ManifestError(f"kind {kind!r} cannot be loaded with load_study; "
                            f"choose one of {[k for k in IMAGE_KINDS if k != 'roi']}")
    studies = sorted(set(df["study"]))
    if study not in studies:
        raise ManifestError(f"{mpath}: study {study!r} is not in the manifest (studies: {studies})")
    sdf = df[df["study"] == study]
    rows = sdf[(sdf["kind"] == kind) & sdf["path"].map(_is_image)]
    if rows.empty:
        kinds = sorted(set(sdf["kind"]))
        raise ManifestError(f"{mpath}: study {study!r} has no {kind} images (kinds: {kinds})")
    listed = set(sdf["path"])
    adf = sdf[sdf["animal"] != ""]
    animals = sorted(set(adf["animal"]))
    days = sorted(int(d) for d in set(rows["day"]))

    # ---- headers and sidecars of every scan
    scans: dict[tuple[str, int], dict] = {}
    for r in rows.itertuples(index=False):
        key = (r.animal, int(r.day))
        if key in scans:
            raise DataFileError(f"{base / scans[key]['rel']} and {base / r.path}: two {kind} images for animal "
                                f"{r.animal!r} day {int(r.day)} of study {study!r}")
        p = resolved(r.path)
        info = read_header(p)
        side_rel = _stem(r.path) + ".json"
        sc = {}
        side_path = resolved(side_rel)
        if side_rel in listed:
            sc = read_sidecar(side_path)
        elif kind in AXIS_KINDS:
            raise ManifestError(f"{mpath}: {r.path} has no JSON sidecar row ({side_rel}) in the manifest; "
                                f"{kind} needs it for the acquisition axis")
        dim, vals, aattrs = acquisition_axis(kind, sc, n_volumes=info.n_volumes, source=str(side_path))
        if dim is None and info.n_volumes > 1:
            raise DataFileError(f"{p}: {kind} image has {info.n_volumes} volumes; expected one 3-D volume")
        scans[key] = dict(rel=r.path, path=p, info=info, sidecar=sc, side=side_path, dim=dim, vals=vals,
                          attrs=aattrs, sha=r.sha256)

    # ---- consistency across scans
    ref = next(iter(scans.values()))
    rinfo: NiftiInfo = ref["info"]
    for s in scans.values():
        info = s["info"]
        if info.shape[:3] != rinfo.shape[:3]:
            raise DataFileError(f"{s['path']} has matrix {info.shape[:3]} (x, y, z) but {ref['path']} has "
                                f"{rinfo.shape[:3]}: all {kind} scans of study {study!r} must share one matrix size")
        if not np.allclose(info.voxel_size_mm, rinfo.voxel_size_mm, rtol=1e-4, atol=0):
            raise DataFileError(f"{s['path']} has voxel size {info.voxel_size_mm} mm but {ref['path']} has "
                                f"{rinfo.voxel_size_mm} mm")
        if s["vals"].shape != ref["vals"].shape or not np.allclose(s["vals"], ref["vals"], rtol=1e-6, atol=1e-9):
            what = ref["dim"] or "volumes"
            raise DataFileError(f"{s['side']} gives {what} {s['vals'].tolist()} but {ref['side']} gives "
                                f"{ref['vals'].tolist()}: all {kind} scans of study {study!r} must share them")
        if info.n_volumes != rinfo.n_volumes:
            raise DataFileError(f"{s['path']} has {info.n_volumes} volumes but {ref['path']} has {rinfo.n_volumes}")
        if s["attrs"].get("reference_volumes") != ref["attrs"].get("reference_volumes"):
            raise DataFileError(f"{s['side']} has ReferenceVolumes {s['attrs'].get('reference_volumes')} but "
                                f"{ref['side']} has {ref['attrs'].get('reference_volumes')}")
    dim = ref["dim"]
    nx, ny, nz = rinfo.shape[:3]
    spatial = (nz, ny, nx)
    n = len(ref["vals"]) if dim else 0
    sat = ref["attrs"].get("volumes")
    refvols = ref["attrs"].get("reference_volumes") or []

    # ---- ROIs
    rois: dict[tuple[str, int], dict] = {}
    roi_rows = sdf[(sdf["kind"] == "roi") & sdf["path"].map(_is_image)]
    labels: dict[int, str] = {}  # the meanings the ROI sidecars give (conventional values)
    label_source: dict[int, tuple[str, str]] = {}
    for r in roi_rows.itertuples(index=False):
        key = (r.animal, int(r.day))
        if key not in scans:
            continue
        if key in rois:
            raise DataFileError(f"{rois[key]['path']} and {base / r.path}: two ROI images for animal "
                                f"{r.animal!r} day {int(r.day)} of study {study!r}")
        p = resolved(r.path)
        info = read_header(p)
        scan = scans[key]
        if info.shape[:3] != scan["info"].shape[:3] or (len(info.shape) == 4 and info.shape[3] != 1):
            raise DataFileError(f"ROI {p} has shape {info.shape} but scan {scan['path']} has matrix "
                                f"{scan['info'].shape[:3]} (x, y, z): the ROI must be on the scan's grid")
        check_same_grid(info, scan["info"], what=f"ROI {p}", other=f"scan {scan['path']}")
        lut: dict[int, int] = {}
        side_rel = _stem(r.path) + ".json"
        if side_rel in listed:
            side_p = resolved(side_rel)
            rs = read_sidecar(side_p)
            if "Labels" in rs:
                lut, meanings = conventions.label_mapping(rs["Labels"], source=str(side_p))
                for v, name in meanings.items():
                    if label_source.get(v, (name,))[0] != name:
                        raise DataFileError(f"{side_p}: label {v} means {name!r} here but "
                                            f"{label_source[v][0]!r} in {label_source[v][1]}: one study, one meaning")
                    label_source[v] = (name, str(side_p))
                    labels[v] = name
        rois[key] = dict(path=p, sha=r.sha256, lut=lut, info=info)

    labels = labels or dict(ROI_LABELS)  # no ROI sidecar says: the conventions

    # ---- lazy arrays, one chunk per scan
    sig_shape = ((n,) if dim else ()) + spatial
    nan_sig = da.full(sig_shape, np.nan, dtype=np.float32, chunks=sig_shape)
    nan_m0 = da.full(spatial, np.nan, dtype=np.float32, chunks=spatial)
    zero_roi = da.zeros(spatial, dtype=np.int16, chunks=spatial)
    sig_rows, m0_rows, roi_rows_arr, acquired = [], [], [], np.zeros((len(animals), len(days)), dtype=bool)
    magnitude = kind not in SIGNED_KINDS  # stored integers that wrapped around are refused on read
    for ia, a in enumerate(animals):
        srow, mrow, rrow = [], [], []
        for iday, d in enumerate(days):
            s = scans.get((a, d))
            if s is None:
                srow.append(nan_sig)
                mrow.append(nan_m0)
                rrow.append(zero_roi)
                continue
            acquired[ia, iday] = True
            info = s["info"]
            r = rois.get((a, d))
            if r is not None and roi_with_scan:  # one task reads both: no scan-sized transfer between workers
                arr, roi = read_nifti_pair_lazy(s["path"], info.design_shape, np.float32, r["path"], r["info"].design_shape,
                                                np.int16, token=(s["sha"], r["sha"]), magnitude=magnitude,
                                                headers=(info, r["info"]))
            else:
                arr = read_nifti_lazy(s["path"], info.design_shape, np.float32, token=s["sha"], magnitude=magnitude,
                                      header=info)
                if r is not None:
                    roi = read_nifti_lazy(r["path"], r["info"].design_shape, np.int16, token=r["sha"], header=r["info"])
            if len(info.shape) == 3 and dim:
                arr = arr[None]
            elif len(info.shape) == 4 and not dim:
                arr = arr[0]
            if sat is not None:
                full = arr
                arr = full[np.asarray(sat, dtype=int)] if len(sat) != full.shape[0] else full
                if refvols:
                    mrow.append(full[np.asarray(refvols, dtype=int)].mean(axis=0).astype(np.float32))
                else:
                    mrow.append(nan_m0)
            else:
                mrow.append(nan_m0)
            srow.append(arr)
            if r is not None:
                roi = roi[0] if len(r["info"].shape) == 4 else roi
                if r["lut"]:  # the file's label values -> the conventional ones, by their meaning
                    roi = roi.map_blocks(conventions.relabel, lut=r["lut"], dtype=np.int16)
                rrow.append(roi)
            else:
                rrow.append(zero_roi)
        sig_rows.append(da.stack(srow))
        m0_rows.append(da.stack(mrow))
        roi_rows_arr.append(da.stack(rrow))
    # one graph layer per variable instead of ~1250 (a read, an array and a stack layer per scan): every later
    # graph operation of a study (xarray arithmetic, optimisation, the per-scan fusion) walks the layers
    signal = one_layer(da.stack(sig_rows))
    roi_arr = one_layer(da.stack(roi_rows_arr))

    sig_dims = ("animal", "day") + ((dim,) if dim else ()) + ("z", "y", "x")
    coords = {
        "animal": ("animal", np.asarray(animals, dtype=object)),
        "day": ("day", np.asarray(days, dtype=np.int64), {"units": "day",
                                                          "long_name": "days from first treatment"}),
    }
    if dim:
        coords[dim] = (dim, np.asarray(ref["vals"], dtype=np.float64),
                       {"units": ref["attrs"]["units"], "long_name": ref["attrs"]["long_name"]})
    first = adf.drop_duplicates("animal").set_index("animal")
    for c in ("group", "sex", "model"):
        if c in first.columns:
            coords[c] = ("animal", np.asarray([first.loc[a, c] for a in animals], dtype=object))
    coords["acquired"] = (("animal", "day"), acquired, {"long_name": "scan of this kind was acquired"})

    ds = xr.Dataset(coords=coords)
    ds["signal"] = xr.DataArray(signal, dims=sig_dims,
                                attrs={"long_name": f"{kind} signal", "units": "a.u."})
    ds["roi"] = xr.DataArray(roi_arr, dims=("animal", "day", "z", "y", "x"),
                             attrs={"long_name": "ROI labels (values as in studylib.conventions, remapped by the "
                                                 "meanings in each ROI sidecar)",
                                    "flag_values": sorted(labels),
                                    "flag_meanings": " ".join(labels[k] for k in sorted(labels))})
    if sat is not None and refvols:
        ds["m0"] = xr.DataArray(one_layer(da.stack(m0_rows)), dims=("animal", "day", "z", "y", "x"),
                                attrs={"long_name": "unsaturated reference signal (mean of ReferenceVolumes)",
                                       "units": "a.u.", "reference_volumes": list(refvols)})

    sidecars = [s["sidecar"] for s in scans.values()]
    fields = {round(float(s["sidecar"]["MagneticFieldStrength"]), 1): s["path"] for s in scans.values()
              if "MagneticFieldStrength" in s["sidecar"]}
    if len(fields) > 1:
        raise DataFileError(f"study {study!r} {kind}: scans at different field strengths ("
                            + ", ".join(f"{f:g} T: {p}" for f, p in sorted(fields.items()))
                            + "): relaxation and relaxivity depend on the field; analyse them as separate studies")
    skip = _SKIP_KEYS | ({AXES[kind][1]} if kind in AXES else set())
    common = _common_sidecar_attrs(sidecars, skip)
    attrs = {"study": study, "kind": kind,
             "voxel_size_mm": [round(float(v), 6) for v in rinfo.voxel_size_mm],
             "manifest": str(mpath), "manifest_sha256": manifest_sha256(mpath),
             "files": len(scans)}
    if "MagneticFieldStrength" in common:
        attrs["field_T"] = float(common["MagneticFieldStrength"])
    if "RepetitionTime" in common:
        attrs["tr_ms"] = float(common["RepetitionTime"]) * 1000.0
    if "Agent" in common:
        attrs["agent"] = common["Agent"]
    if "NoiseSigma" in common:
        attrs["noise_sigma"] = float(common["NoiseSigma"])
    elif any("NoiseSigma" in sc for sc in sidecars):
        sig_noise = np.full((len(animals), len(days)), np.nan)
        for (a, d), sc_ in scans.items():
            if "NoiseSigma" in sc_["sidecar"]:
                sig_noise[animals.index(a), days.index(d)] = float(sc_["sidecar"]["NoiseSigma"])
        ds = ds.assign_coords(noise_sigma=(("animal", "day"), sig_noise,
                                           {"units": "a.u.", "long_name": "noise SD per channel (sidecar NoiseSigma)"}))
    for k, v in common.items():
        if k not in ("MagneticFieldStrength", "RepetitionTime", "Agent", "NoiseSigma"):
            attrs.setdefault(k, v)
    ds.attrs.update(attrs)
    # fits receive the DataArray: give it the acquisition facts too (field_T, tr_ms, voxel_size_mm, ...)
    ds["signal"].attrs.update({k: v for k, v in attrs.items() if k not in ("units", "long_name")})
    ds["roi"].attrs["voxel_size_mm"] = attrs["voxel_size_mm"]  # ROI volumes from the label map alone
    if chunks == "scan" or chunks is None:
        return ds
    if isinstance(chunks, dict):
        return ds.chunk(chunks)
    raise StudyError(f"chunks must be 'scan' or a dict of dim -> chunk size, got {chunks!r}")


def load_histology(manifest, study: str) -> pd.DataFrame:
    """Histology endpoints of one study as a table.

    Reads every ``kind=histology`` CSV of ``study`` (concatenated), adds ``study`` and,
    where the CSV has an ``animal`` column but no ``group``/``sex``/``model``, those from
    the manifest.

    Raises
    ------
    ManifestError
        No histology rows for the study.
    DataFileError
        A CSV cannot be parsed or has no ``animal`` column.
    """
    df, mpath = open_manifest(manifest, study)
    sdf = df[df["study"] == study]
    if sdf.empty:
        raise ManifestError(f"{mpath}: study {study!r} is not in the manifest (studies: {sorted(set(df['study']))})")
    hrows = sdf[sdf["kind"] == "histology"]
    if hrows.empty:
        raise ManifestError(f"{mpath}: study {study!r} has no histology rows")
    tables = []
    for rel in hrows["path"]:
        p = resolve_path(mpath.parent, rel)
        try:
            t = pd.read_csv(p)
        except Exception as err:
            raise DataFileError(f"{p}: cannot read histology CSV ({type(err).__name__}: {err})") from None
        if "animal" not in t.columns:
            raise DataFileError(f"{p}: histology CSV has no 'animal' column (columns: {list(t.columns)})")
        t["animal"] = t["animal"].astype(str)
        _check_histology_rows(t, p)
        tables.append(t)
    out = pd.concat(tables, ignore_index=True)
    known = sdf[sdf["animal"] != ""].drop_duplicates("animal").set_index("animal")
    unknown = sorted(set(out["animal"]) - set(known.index))
    if unknown:
        raise DataFileError(f"histology of study {study!r} lists animals not in the manifest: {unknown[:10]}")
    for c in ("group", "sex", "model"):
        if c in known.columns and c in out.columns:
            _check_histology_design(out, known, c, hrows, mpath)
        if c in known.columns and c not in out.columns:
            out[c] = out["animal"].map(known[c])
    if "study" not in out.columns:
        out.insert(0, "study", study)
    return out


#: columns that, with ``animal``, identify one histology row (one row per animal [and day/region])
_HISTOLOGY_KEYS = ("day", "endpoint_day", "region", "side", "tumour", "lesion", "sample")


def _check_histology_rows(t: pd.DataFrame, path) -> None:
    """One row per animal (and day/region/...): a duplicated animal is an error, naming the file."""
    keys = ["animal"] + [c for c in _HISTOLOGY_KEYS if c in t.columns]
    dup = t[t.duplicated(subset=keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        what = ", ".join(f"{k} {first[k]!r}" for k in keys)
        raise DataFileError(f"{path}: histology CSV has {int(dup.duplicated(subset=keys).sum()) + 1} rows for "
                            f"{what}; expected one row per {' x '.join(keys)} (duplicated animal?)")


def _check_histology_design(out: pd.DataFrame, known: pd.DataFrame, col: str, hrows, mpath) -> None:
    """A histology ``group``/``sex``/``model`` column must agree with the manifest for every animal."""
    vals = out[col].where(out[col].notna(), "").astype(str).str.strip()
    ref = out["animal"].map(known[col]).fillna("").astype(str)
    bad = (vals != "") & (ref != "") & (vals != ref)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        files = ", ".join(str(resolve_path(mpath.parent, r)) for r in hrows["path"])
        raise DataFileError(f"{files}: animal {out['animal'].iloc[i]!r} has {col} {vals.iloc[i]!r} in the histology "
                            f"CSV but {ref.iloc[i]!r} in the manifest {mpath}")
