"""DICOM (pydicom) -> studylib NIfTI + JSON sidecar.

:func:`dicom_series_to_nifti` converts one MR series (single-slice files, or Siemens
mosaics where each file holds a whole volume) with several echo times, b-values,
inversion times, flip angles or dynamics into one 3-D/4-D NIfTI in RAS+ world
coordinates and a sidecar with BIDS keys in SI units (``EchoTime`` (0018,0081) ms -> s,
``RepetitionTime`` (0018,0080) ms -> s, ``InversionTime`` (0018,0082) ms -> s, ``FlipAngle``
(0018,1314) deg, ``MagneticFieldStrength`` (0018,0087) T, ``bValue`` from (0018,9087) or the
Siemens private/CSA ``B_value``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import DataFileError
from .bruker import ScanRefused, describe_scan
from .bruker.scan import LPS_TO_RAS as _LPS_TO_RAS
from .nifti import write_nifti

__all__ = ["dicom_series_to_nifti", "dicom_affine", "find_dicom_series", "describe_dicom_series", "DicomSeries",
           "DicomDescription"]



def _f(ds, name, default=None):
    v = ds.get(name, None)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _csa(ds):
    try:
        with warnings.catch_warnings():  # nibabel.nicom warns on import that its *readers* are experimental
            warnings.simplefilter("ignore", UserWarning)
            from nibabel.nicom import csareader

        return csareader.get_csa_header(ds, "image")
    except Exception:
        return None


def _csa_item(csa, key):
    try:
        items = csa["tags"][key]["items"]
        return items[0] if items else None
    except (KeyError, TypeError, IndexError):
        return None


def _b_value(ds, csa):
    v = _f(ds, "DiffusionBValue")
    if v is not None:
        return v
    priv = ds.get((0x0019, 0x100C))
    if priv is not None and "SIEMENS" in str(ds.get("Manufacturer", "")).upper():
        try:
            return float(priv.value)
        except (TypeError, ValueError):
            pass
    b = _csa_item(csa, "B_value")
    return None if b is None else float(b)


def _n_mosaic(ds, csa):
    if "MOSAIC" not in [str(t).upper() for t in ds.get("ImageType", [])]:
        return 0
    n = _csa_item(csa, "NumberOfImagesInMosaic")
    if n is None:
        priv = ds.get((0x0019, 0x100A))
        n = None if priv is None else priv.value
    if not n:
        raise DataFileError(f"{ds.filename}: mosaic image without NumberOfImagesInMosaic (CSA or (0019,100A))")
    return int(n)


def _seconds(t: str | None):
    if not t:
        return None
    t = str(t).strip()
    try:
        return (datetime.strptime(t.split(".")[0], "%H%M%S") - datetime(1900, 1, 1)).total_seconds() + \
            (float("0." + t.split(".")[1]) if "." in t else 0.0)
    except ValueError:
        return None


def _geometry(ds):
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ps = [float(v) for v in ds.PixelSpacing]
    except (AttributeError, TypeError, ValueError):
        raise DataFileError(f"{ds.filename}: missing ImageOrientationPatient/ImagePositionPatient/PixelSpacing") \
            from None
    row_cos, col_cos = iop[:3], iop[3:]
    return row_cos, col_cos, ipp, ps


def dicom_affine(ds, *, n_mosaic: int = 0, slice_spacing: float | None = None, normal=None) -> np.ndarray:
    """Voxel ``(i=column, j=row, k=slice)`` -> RAS+ mm affine of a DICOM image.

    Notes
    -----
    DICOM patient coordinates are LPS; with row cosine ``r`` (direction of increasing
    column index), column cosine ``c``, pixel spacing ``(Δrow, Δcol)``, slice normal ``n``,
    slice spacing ``Δs`` and position ``p`` of the first voxel,
    ``A_LPS = [r Δcol | c Δrow | n Δs | p]`` and ``A_RAS = diag(-1, -1, 1, 1) A_LPS``
    (DICOM PS3.3 C.7.6.2.1.1).  For a Siemens mosaic, ``p`` is moved from the mosaic's
    corner to the first tile's: ``p += r Δcol (M_c - c)/2 + c Δrow (M_r - r)/2``.
    """
    row_cos, col_cos, ipp, (drow, dcol) = _geometry(ds)
    n = np.cross(row_cos, col_cos) if normal is None else np.asarray(normal, dtype=float)
    ds_ = slice_spacing or _f(ds, "SpacingBetweenSlices") or _f(ds, "SliceThickness") or 1.0
    if n_mosaic:
        per_side = int(np.ceil(np.sqrt(n_mosaic)))
        rows, cols = int(ds.Rows) // per_side, int(ds.Columns) // per_side
        ipp = ipp + row_cos * dcol * (int(ds.Columns) - cols) / 2 + col_cos * drow * (int(ds.Rows) - rows) / 2
    a = np.eye(4)
    a[:3, 0] = row_cos * dcol
    a[:3, 1] = col_cos * drow
    a[:3, 2] = n * ds_
    a[:3, 3] = ipp
    return _LPS_TO_RAS @ a


def _raw_pixels(ds) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as err:
        raise DataFileError(f"{ds.filename}: cannot decode pixel data ({type(err).__name__}: {err})") from None
    if arr.ndim != 2:
        raise DataFileError(f"{ds.filename}: expected one 2-D frame, got pixel array of shape {arr.shape} "
                            "(multi-frame/colour DICOM is not supported)")
    return arr


def _rescale(ds) -> tuple[float, float]:
    return _f(ds, "RescaleSlope", 1.0) or 1.0, _f(ds, "RescaleIntercept", 0.0)


def _pixels(ds) -> np.ndarray:
    slope, inter = _rescale(ds)
    return _raw_pixels(ds).astype(np.float64) * slope + inter


def _untile(img: np.ndarray, n: int) -> np.ndarray:
    """Mosaic (R*rows, C*cols) -> (rows, cols, n), tiles row-major."""
    per_side = int(np.ceil(np.sqrt(n)))
    rows, cols = img.shape[0] // per_side, img.shape[1] // per_side
    tiles = img[: rows * per_side, : cols * per_side].reshape(per_side, rows, per_side, cols)
    tiles = tiles.transpose(1, 3, 0, 2).reshape(rows, cols, per_side * per_side)
    return tiles[:, :, :n]


@dataclass
class DicomSeries:
    """One series found in a folder tree: its UID, SeriesNumber, description and files (sorted)."""

    uid: str
    number: int
    description: str
    files: list[Path]


def _dcm(path: Path, *, pixels: bool):
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception:
        return None  # not DICOM (README, DICOMDIR text...)
    if "PixelData" not in ds and pixels:
        return None
    return ds


def find_dicom_series(folder, *, recursive: bool = True) -> list[DicomSeries]:
    """Group the DICOM image files under ``folder`` by SeriesInstanceUID (sorted by SeriesNumber).

    Only headers are read.  Files that are not DICOM, or DICOM without an image (DICOMDIR,
    reports), are skipped.

    Raises
    ------
    DataFileError
        ``folder`` missing, or no DICOM image file in it.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: DICOM folder not found")
    paths = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    groups: dict[str, DicomSeries] = {}
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:
            continue
        if (0x7FE0, 0x0010) not in ds and "Rows" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID: {p.parent})"
        if uid not in groups:
            number = int(_f(ds, "SeriesNumber", 0) or 0)
            groups[uid] = DicomSeries(uid, number, str(ds.get("SeriesDescription", "")), [])
        groups[uid].files.append(p)
    if not groups:
        raise DataFileError(f"{folder}: no DICOM image files found")
    return sorted(groups.values(), key=lambda s: (s.number, s.uid))


def _read_series(dicom_dir: Path, files) -> list:
    if files is None:
        if not dicom_dir.is_dir():
            raise DataFileError(f"{dicom_dir}: DICOM folder not found")
        files = sorted(p for p in dicom_dir.iterdir() if p.is_file())
    dss = [ds for ds in (_dcm(Path(p), pixels=True) for p in files) if ds is not None]
    if not dss:
        raise DataFileError(f"{dicom_dir}: no DICOM image files found")
    return dss


def _paravision_source(dss):
    """The ParaVision reconstruction a Bruker DICOM export came from: ``(scan_dir, reco)`` or ``None``.

    ParaVision exports ``<study>/<E>/pdata/<P>/dicom/*.dcm`` with SeriesInstanceUID = the
    reconstruction's ``VisuUid``; the link is made only when that UID matches.
    """
    ds0 = dss[0]
    if "BRUKER" not in str(ds0.get("Manufacturer", "")).upper():
        return None
    uid = str(ds0.get("SeriesInstanceUID", ""))
    pdata = Path(ds0.filename).resolve().parent.parent
    visu = pdata / "visu_pars"
    if not (uid and visu.is_file() and pdata.name.isdigit()):
        return None
    try:
        from .bruker import read_jcamp

        if str(read_jcamp(visu).get("VisuUid", "")) != uid:
            return None
    except DataFileError:
        return None
    return pdata.parent.parent, int(pdata.name)


#: ParaVision sidecar keys a Bruker DICOM export lacks (CEST offsets, saturation, diffusion directions)
_FROM_PARAVISION = ("SaturationOffsets_ppm", "SaturationOffsets_Hz", "ReferenceVolumes", "SaturationRepetitions",
                    "SaturationB1_uT", "SaturationTime", "RepetitionTimeExcitation", "RepetitionTimeNote",
                    "DiffusionDirection_RAS", "RepetitionTimes", "Nucleus")


@dataclass
class _Series:
    data: np.ndarray  # (x, y, z[, n]) scaled values
    affine: np.ndarray
    side: dict
    scaling: tuple[float, float] | None
    unsigned: bool
    dim_key: str
    n_volumes: int
    matrix: tuple[int, int, int] = (0, 0, 0)
    kind: str | None = None
    kind_reason: str = ""


def _assemble(dss, source: Path, *, pixels: bool = True) -> _Series:
    mods = sorted({str(ds.get("Modality", "")) for ds in dss})
    if mods != ["MR"]:
        raise DataFileError(f"{source}: expected MR images, found modality {mods}")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in dss})
    if len(series) > 1:
        raise DataFileError(f"{source}: {len(series)} series found ({series}); convert one series per folder")
    iops = {tuple(np.round([float(v) for v in ds.get("ImageOrientationPatient", [])], 4)) for ds in dss}
    if len(iops) > 1:
        raise ScanRefused(f"{source}: one series with {len(iops)} slice orientations (a multi-orientation "
                          "localizer?): not merged into one volume")
    recs = []
    for ds in dss:
        csa = _csa(ds)
        recs.append(dict(ds=ds, csa=csa, te=_f(ds, "EchoTime"), ti=_f(ds, "InversionTime"), fa=_f(ds, "FlipAngle"),
                         b=_b_value(ds, csa), acq=int(_f(ds, "AcquisitionNumber", 0) or 0),
                         nm=_n_mosaic(ds, csa)))
    varying = [k for k in ("te", "b", "ti", "fa") if len({r[k] for r in recs}) > 1]
    if len(varying) > 1:
        raise DataFileError(f"{source}: more than one acquisition parameter varies ({varying}); "
                            "expected one of echo time, b-value, inversion time or flip angle")

    # one record per 2-D slice with its position along the normal
    row_cos, col_cos, _, _ = _geometry(recs[0]["ds"])
    normal = np.cross(row_cos, col_cos)
    mosaic = recs[0]["nm"] > 0
    if mosaic:
        sn = _csa_item(recs[0]["csa"], "SliceNormalVector")
        if sn is not None:
            normal = np.asarray(recs[0]["csa"]["tags"]["SliceNormalVector"]["items"], dtype=float)
    for r in recs:
        r["pos"] = float(np.dot(_geometry(r["ds"])[2], normal))
    if varying:
        key = dim_key = varying[0]
    else:
        dim_key = "acq"
        key = "acq" if (mosaic or len({r["pos"] for r in recs}) < len(recs)) else None
    groups: dict = {}
    for r in recs:
        groups.setdefault(r[key] if key else 0, []).append(r)
    vols, ref_positions, first_recs = [], None, []
    for kv in sorted(groups):
        g = sorted(groups[kv], key=lambda r: r["pos"])
        if mosaic:
            if len(g) != 1:
                raise DataFileError(f"{source}: {len(g)} mosaics share {dim_key}={kv}; expected one per volume")
            vol = _untile(_pixels(g[0]["ds"]), g[0]["nm"]) if pixels else None
            positions = (g[0]["pos"], g[0]["nm"])
        else:
            pos = [r["pos"] for r in g]
            if len(set(np.round(pos, 4))) != len(pos):
                raise DataFileError(f"{source}: two slices at the same position for {dim_key}={kv}")
            vol = np.stack([_pixels(r["ds"]) for r in g], axis=-1) if pixels else None
            positions = tuple(np.round(pos, 3))
        if ref_positions is not None and positions != ref_positions:
            raise DataFileError(f"{g[0]['ds'].filename} and {first_recs[0]['ds'].filename}: volumes "
                                f"{dim_key}={kv} and {sorted(groups)[0]} cover different slices")
        ref_positions = positions
        first_recs.append(g[0])
        if pixels:
            vols.append(np.transpose(vol, (1, 0, 2)))  # (x=column, y=row, z)
    data = (np.stack(vols, axis=-1) if len(vols) > 1 else vols[0]) if pixels else np.zeros((0,))

    ds0 = first_recs[0]["ds"]
    if mosaic:
        spacing = _f(ds0, "SpacingBetweenSlices") or _f(ds0, "SliceThickness")
        aff = dicom_affine(ds0, n_mosaic=first_recs[0]["nm"], slice_spacing=spacing, normal=normal)
    else:
        g0 = sorted(groups[sorted(groups)[0]], key=lambda r: r["pos"])
        ds0 = g0[0]["ds"]
        pos = [r["pos"] for r in g0]
        spacing = float(np.median(np.diff(pos))) if len(pos) > 1 else None
        aff = dicom_affine(ds0, slice_spacing=spacing, normal=normal)

    side = {"Manufacturer": str(ds0.get("Manufacturer", "")) or "unknown",
            "SeriesDescription": str(ds0.get("SeriesDescription", "")) or "unknown",
            "SeriesInstanceUID": series[0]}
    for key_, name in (("SequenceName", "SequenceName"), ("ProtocolName", "ProtocolName")):
        if str(ds0.get(name, "")).strip():
            side[key_] = str(ds0.get(name)).strip()
    vals = sorted(groups)
    if recs[0]["te"] is not None:
        tes = [v / 1000.0 for v in vals] if dim_key == "te" else recs[0]["te"] / 1000.0
        if dim_key == "te" or recs[0]["te"] > 0:
            side["EchoTime"] = tes
    tr = _f(ds0, "RepetitionTime")
    if tr:
        side["RepetitionTime"] = tr / 1000.0
    if dim_key == "fa":
        side["FlipAngle"] = vals
    elif recs[0]["fa"]:
        side["FlipAngle"] = recs[0]["fa"]
    if dim_key == "ti":
        side["InversionTime"] = [v / 1000.0 for v in vals]
    elif recs[0]["ti"] is not None:
        side["InversionTime"] = recs[0]["ti"] / 1000.0
    if dim_key == "b":
        side["bValue"] = vals
    elif recs[0]["b"] is not None:
        side["bValue"] = [recs[0]["b"]]
    field_t = _f(ds0, "MagneticFieldStrength")
    if field_t:
        side["MagneticFieldStrength"] = field_t
    nuc = str(ds0.get("ImagedNucleus", "")).strip()
    if nuc in ("1H", "19F"):
        side["Nucleus"] = nuc
    freq = _f(ds0, "ImagingFrequency")
    if freq:
        side["ImagingFrequency"] = freq
    if dim_key == "acq" and len(vals) > 1:
        times = [_seconds(r["ds"].get("AcquisitionTime")) for r in first_recs]
        if all(t is not None for t in times) and len(set(times)) > 1:  # all equal (Bruker export): no times
            side["FrameTimes"] = [round(t - times[0], 6) for t in times]
    side["AcquisitionDimension"] = {"te": "EchoTime", "b": "bValue", "ti": "InversionTime", "fa": "FlipAngle",
                                    "acq": "AcquisitionNumber"}[dim_key] if len(vals) > 1 else "none"
    # exact storage: integer pixels with one RescaleSlope/Intercept for every file
    scales = {_rescale(r["ds"]) for r in recs}
    scaling = next(iter(scales)) if len(scales) == 1 else None
    unsigned = int(_f(ds0, "PixelRepresentation", 0) or 0) == 0
    if mosaic:
        per_side = int(np.ceil(np.sqrt(first_recs[0]["nm"])))
        matrix = (int(ds0.Columns) // per_side, int(ds0.Rows) // per_side, first_recs[0]["nm"])
    else:
        matrix = (int(ds0.Columns), int(ds0.Rows), len(groups[sorted(groups)[0]]))
    return _Series(data, aff, side, scaling, unsigned, dim_key, len(vals), matrix)


def _link_paravision(ser: _Series, dss, source: Path) -> None:
    """Bruker export: take the kind and the keys DICOM lacks (CEST offsets...) from the ParaVision scan."""
    link = _paravision_source(dss)
    if link is None:
        return
    scan_dir, reco = link
    pv = describe_scan(scan_dir, reco)
    ser.side["ParaVisionScan"] = f"{pv.label} ({scan_dir.name}/pdata/{reco})"
    if pv.kind is None:
        return
    n_pv = pv.matrix[3] if len(pv.matrix) > 3 else 1
    if n_pv != ser.n_volumes:
        return
    for k in _FROM_PARAVISION:
        if k in pv.sidecar and k not in ser.side:
            ser.side[k] = pv.sidecar[k]
    ser.kind, ser.kind_reason = pv.kind, f"ParaVision {pv.label}: method {pv.method}"


def _dicom_kind(ser: _Series, dss) -> tuple[str | None, str]:
    ds0 = dss[0]
    seq = " ".join(str(x) for x in np.atleast_1d(ds0.get("ScanningSequence", ""))).upper()
    name = f"{ds0.get('SequenceName', '')} {ds0.get('ProtocolName', '')}".lower()
    if str(ds0.get("ImagedNucleus", "")).strip().upper() == "19F":
        return "F19", "ImagedNucleus 19F"
    if ser.dim_key == "te":
        spin_echo = "SE" in seq.split() or ("RM" in seq.split() and "GR" not in seq.split())
        return ("MSME" if spin_echo else "MEGRE"), f"echo time varies; ScanningSequence {seq}"
    if ser.dim_key in ("b", "ti", "fa"):
        return {"b": "DWI", "ti": "IR", "fa": "VFA"}[ser.dim_key], f"{ser.side['AcquisitionDimension']} varies"
    if ser.n_volumes > 1:
        if "FrameTimes" in ser.side:
            return "DCE", "repeated acquisitions with AcquisitionTime"
        return None, (f"{ser.n_volumes} acquisitions without frame times or a varying parameter "
                      "(a CEST export needs its ParaVision scan beside it): give --kind")
    if "rare" in name or "tse" in name or "SE" in seq.split():
        return "T2w", f"spin echo ({seq or name.strip()})"
    return None, f"single {seq or 'MR'} image: no studylib kind (give --kind)"


def _finish(ser: _Series, dss, source: Path, kind: str | None) -> str:
    _link_paravision(ser, dss, source)
    if kind is None:
        kind, why = (ser.kind, ser.kind_reason) if ser.kind else _dicom_kind(ser, dss)
        if kind is None:
            raise DataFileError(f"{source}: {why}")
    from .sidecar import acquisition_axis, validate_sidecar

    validate_sidecar(ser.side, source=f"{source} (sidecar)")
    dim, _, _ = acquisition_axis(kind, ser.side, n_volumes=ser.n_volumes, source=f"{source} as {kind}")
    if dim is None and ser.n_volumes > 1:
        raise DataFileError(f"{source}: kind {kind} is one volume but the series has {ser.n_volumes}")
    return kind


@dataclass
class DicomDescription:
    """What one DICOM series would become (headers only); ``reason`` when it is not imported."""

    label: str
    source: Path
    method: str
    protocol: str
    comment: str
    kind: str | None
    matrix: tuple[int, ...]
    reason: str | None = None
    sidecar: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def describe_dicom_series(series: DicomSeries, *, kind: str | None = None) -> DicomDescription:
    """Describe one series for ``studylib import --dry-run`` (headers only; never raises for bad data)."""
    source = series.files[0].parent
    d = DicomDescription(f"S{series.number}", source, "", "", series.description, None, (), files=series.files)
    try:
        dss = [ds for ds in (_dcm(p, pixels=False) for p in series.files) if ds is not None]
        ds0 = dss[0]
        d.method = str(ds0.get("SequenceName", "")) or str(ds0.get("ScanningSequence", ""))
        d.protocol = str(ds0.get("ProtocolName", ""))
        ser = _assemble(dss, source, pixels=False)
        d.matrix = ser.matrix + ((ser.n_volumes,) if ser.n_volumes > 1 else ())
        d.kind = _finish(ser, dss, source, kind)
        d.sidecar = ser.side
    except DataFileError as err:
        d.reason = str(err)
    return d


def dicom_series_to_nifti(dicom_dir, out_stem, *, dtype=None, kind: str | None = None,
                          files=None) -> tuple[Path, Path]:
    """Convert one DICOM MR series to ``<out_stem>.nii.gz`` + ``<out_stem>.json``.

    Parameters
    ----------
    dicom_dir : str or Path
        Folder of the series' files (non-DICOM files are ignored; one SeriesInstanceUID).
    out_stem : str or Path
        Output path without extension.
    dtype : numpy.int16 or numpy.uint16, optional
        Stored integer type (default int16, uint16 when the values exceed int16).
    kind : str, optional
        Manifest kind; when given, the sidecar must describe every volume along its axis.
    files : list of Path, optional
        The series' files (default: every file directly in ``dicom_dir``).

    Returns
    -------
    (nifti_path, sidecar_path)
        4-D ``(x=column, y=row, z=slice, n)`` when one of TE / b / TI / flip angle varies
        (``n`` sorted ascending) or when several acquisitions of one volume exist
        (dynamics, sorted by AcquisitionNumber, ``FrameTimes`` from AcquisitionTime when the
        times differ); 3-D for a single volume.  The sidecar holds ``EchoTime`` (list when it
        varies), ``RepetitionTime``, ``FlipAngle``, ``InversionTime``, ``MagneticFieldStrength``,
        ``bValue``, ``FrameTimes`` as applicable, plus ``Manufacturer``, ``SeriesDescription``,
        ``SeriesInstanceUID``, ``AcquisitionDimension``.  For a ParaVision export
        (``<E>/pdata/<P>/dicom`` whose SeriesInstanceUID is the reconstruction's ``VisuUid``) the
        keys DICOM lacks come from the ParaVision scan (CEST ``SaturationOffsets_ppm``,
        ``ReferenceVolumes``, saturation power and time).  Integer pixels sharing one
        RescaleSlope/Intercept are stored as they are, with that slope as ``scl_slope``.

    Raises
    ------
    DataFileError
        No DICOM files, several series, more than one varying parameter, volumes with
        different slice sets, undecodable pixels, or (with ``kind``) a sidecar without the axis.
    ScanRefused
        Several slice orientations in one series (a localizer): not merged.
    """
    dicom_dir = Path(dicom_dir)
    dss = _read_series(dicom_dir, files)
    ser = _assemble(dss, dicom_dir)
    if kind is not None:
        _finish(ser, dss, dicom_dir, kind)
    else:
        _link_paravision(ser, dss, dicom_dir)
    data = ser.data
    if dtype is None:
        dtype = np.uint16 if (data.min() >= 0 and data.max() > 32767) else np.int16
    scaling = None
    if ser.scaling is not None and all(np.issubdtype(ds.pixel_array.dtype, np.integer) for ds in dss[:1]):
        lo, hi = (0, 65535) if np.dtype(dtype) == np.uint16 else (-32768, 32767)
        raw_lo = (data.min() - ser.scaling[1]) / ser.scaling[0]
        raw_hi = (data.max() - ser.scaling[1]) / ser.scaling[0]
        if lo - 0.5 <= raw_lo and raw_hi <= hi + 0.5:
            scaling = ser.scaling
    out_stem = Path(out_stem)
    nii = write_nifti(out_stem.with_name(out_stem.name + ".nii.gz"), data, ser.affine, dtype=dtype,
                      sidecar=ser.side, scaling=scaling)
    return nii, out_stem.with_name(out_stem.name + ".json")
