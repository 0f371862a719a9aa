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
from ..compute import paused_gc
from ..errors import DataFileError, ManifestError, StudyError
from ..manifest import AXIS_KINDS, IMAGE_KINDS, SIGNED_KINDS, manifest_sha256, read_manifest, resolve_path
from . import nifti as _nifti
from .nifti import NiftiInfo, check_same_grid, read_header
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
    plain_dirs: set = set()  # folders of this manifest found not to be symlinks: lstat-ed once in this call
    for i, (st, rel) in enumerate(zip(df["study"].tolist(), df["path"].tolist()), start=1):
        if study is not None and st != study:
            continue
        try:
            p = resolve_path(path.parent, rel, plain_dirs=plain_dirs)
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
    expand = "add" if len(rinfo.shape) == 3 and dim else ("drop" if len(rinfo.shape) == 4 and not dim else None)
    volumes = None if sat is None or len(sat) == rinfo.n_volumes else tuple(int(v) for v in sat)
    want_m0 = bool(sat is not None and refvols)
    graphs, acquired = _study_graph(
        animals, days, scans, rois, kind=kind, spatial=spatial, n=n if dim else None, expand=expand, volumes=volumes,
        refvols=tuple(int(v) for v in refvols) if want_m0 else None, roi_with_scan=roi_with_scan)

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
    ds["signal"] = xr.DataArray(graphs["signal"], dims=sig_dims,
                                attrs={"long_name": f"{kind} signal", "units": "a.u."})
    ds["roi"] = xr.DataArray(graphs["roi"], dims=("animal", "day", "z", "y", "x"),
                             attrs={"long_name": "ROI labels (values as in studylib.conventions, remapped by the "
                                                 "meanings in each ROI sidecar)",
                                    "flag_values": sorted(labels),
                                    "flag_meanings": " ".join(labels[k] for k in sorted(labels))})
    if want_m0:
        ds["m0"] = xr.DataArray(graphs["m0"], dims=("animal", "day", "z", "y", "x"),
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


def _read_scan(path, shape, magnitude, header, expand, volumes, refvols):
    """One scan as ``load_study`` holds it: ``(signal, m0)``, each with leading ``(animal, day)`` axes of 1.

    ``expand``: ``"add"`` an acquisition axis to a 3-D file of an axis kind, ``"drop"`` the 1-long volume axis
    of a 4-D file of a kind without one, or None; ``volumes``: the saturated volumes kept (None: all);
    ``refvols``: the reference volumes whose mean is ``m0`` (None: no ``m0``, returned as None).
    """
    full = _nifti.read_nifti(path, dtype=np.float32, expect_shape=shape, magnitude=magnitude, header=header)
    if expand == "add":
        full = full[None]
    elif expand == "drop":
        full = full[0]
    signal = full if volumes is None else full[np.asarray(volumes)]
    m0 = None if refvols is None else full[np.asarray(refvols)].mean(axis=0).astype(np.float32)[None, None]
    return signal[None, None], m0


def _read_roi(path, shape, header, lut):
    """One ROI label map (int16, design order, a 4-D file's single volume) with its labels made conventional
    (``lut``: the file's values -> :mod:`studylib.conventions`' by meaning), with leading ``(animal, day)`` axes."""
    roi = _nifti.read_nifti(path, dtype=np.int16, expect_shape=shape, header=header)
    if roi.ndim == 4:
        roi = roi[0]
    if lut:
        roi = conventions.relabel(roi, lut=lut)
    return roi[None, None]


def _read_scan_and_roi(scan_args, roi_args):
    """A scan and its ROI read by one task: ``(signal, m0, roi)`` (``load_study(roi_with_scan=True)``)."""
    return _read_scan(*scan_args) + (_read_roi(*roi_args),)


def _study_graph(animals, days, scans, rois, *, kind, spatial, n, expand, volumes, refvols, roi_with_scan):
    """The lazy ``signal``, ``roi`` (and ``m0`` when ``refvols``) of a study: one chunk per scan, one graph layer each.

    Every chunk is a task of the layer itself -- the read of its scan (a getitem of the read's tuple), or an
    alias of one shared fill (NaN signal, zero labels) where the scan or its ROI is missing -- with no Dask
    array per file and no stacking layers: graph operations later in a pass (xarray arithmetic, optimisation,
    :func:`studylib.roi`'s per-scan fusion) walk one layer per variable and three to four tasks per scan.
    The names are tokens of the files (paths, manifest hashes) and of how they are read.
    Returns ``({"signal": ..., "roi": ..., "m0": ...}, acquired)`` with ``acquired`` (animal, day) bool.
    """
    from operator import getitem

    import dask
    import dask.array as da
    from dask._task_spec import Alias, Task, TaskRef
    from dask.highlevelgraph import HighLevelGraph

    magnitude = kind not in SIGNED_KINDS  # stored integers that wrapped around are refused on read
    sig_shape = (() if n is None else (n,)) + spatial
    spec = [(a, d, str(s["path"]), s["sha"], None if (a, d) not in rois else
             (str(rois[(a, d)]["path"]), rois[(a, d)]["sha"], sorted(rois[(a, d)]["lut"].items())))
            for (a, d), s in sorted(scans.items())]
    name = "read-nifti-" + dask.base.tokenize(spec, kind, sig_shape, expand, volumes, refvols, roi_with_scan, magnitude)
    names = {"signal": f"{name}-signal", "roi": f"{name}-roi", "m0": f"{name}-m0"}
    fill = {"signal": Task(f"{name}-nan-signal", np.full, (1, 1) + sig_shape, np.nan, np.float32),
            "m0": Task(f"{name}-nan-m0", np.full, (1, 1) + spatial, np.nan, np.float32),
            "roi": Task(f"{name}-zero-roi", np.zeros, (1, 1) + spatial, np.int16)}
    variables = ("signal", "roi", "m0") if refvols is not None else ("signal", "roi")
    layers: dict[str, dict] = {v: {} for v in variables}
    acquired = np.zeros((len(animals), len(days)), dtype=bool)
    zeros = (0,) * len(spatial)
    for ia, a in enumerate(animals):
        for iday, d in enumerate(days):
            key = {v: (names[v], ia, iday) + ((0,) if v == "signal" and n is not None else ()) + zeros
                   for v in variables}
            s = scans.get((a, d))
            r = rois.get((a, d)) if s is not None else None
            if s is not None:
                acquired[ia, iday] = True
                info = s["info"]
                scan_args = (str(s["path"]), info.design_shape, magnitude, info, expand, volumes, refvols)
                if r is not None:
                    roi_args = (str(r["path"]), r["info"].design_shape, r["info"], r["lut"])
                if r is not None and roi_with_scan:  # one task reads both: no scan-sized transfer between workers
                    read = Task((f"{name}-pair", ia, iday), _read_scan_and_roi, scan_args, roi_args)
                    parts = {"signal": 0, "m0": 1, "roi": 2}
                else:
                    read = Task((f"{name}-scan", ia, iday), _read_scan, *scan_args)
                    parts = {"signal": 0, "m0": 1}
                    if r is not None:
                        layers["roi"][key["roi"]] = Task(key["roi"], _read_roi, *roi_args)
                for v, i in parts.items():
                    if v in layers:
                        layers[v][read.key] = read
                        layers[v][key[v]] = Task(key[v], getitem, TaskRef(read.key), i)
            for v in variables:
                if key[v] not in layers[v]:  # no scan, or no ROI: the variable's one shared fill
                    layers[v][key[v]] = Alias(key[v], fill[v].key)
                    layers[v][fill[v].key] = fill[v]
    out = {}
    for v in variables:
        shape = (len(animals), len(days)) + (sig_shape if v == "signal" else spatial)
        graph = HighLevelGraph.from_collections(names[v], layers[v], dependencies=())
        out[v] = da.Array(graph, names[v], chunks=((1,) * len(animals), (1,) * len(days)) + tuple((k,) for k in shape[2:]),
                          dtype=np.int16 if v == "roi" else np.float32)
    return out, acquired


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
