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
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import DataFileError
from .nifti import write_nifti

__all__ = ["dicom_series_to_nifti", "dicom_affine"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def _pixels(ds) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as err:
        raise DataFileError(f"{ds.filename}: cannot decode pixel data ({type(err).__name__}: {err})") from None
    if arr.ndim != 2:
        raise DataFileError(f"{ds.filename}: expected one 2-D frame, got pixel array of shape {arr.shape} "
                            "(multi-frame/colour DICOM is not supported)")
    slope = _f(ds, "RescaleSlope", 1.0)
    inter = _f(ds, "RescaleIntercept", 0.0)
    return arr.astype(np.float64) * slope + inter


def _untile(img: np.ndarray, n: int) -> np.ndarray:
    """Mosaic (R*rows, C*cols) -> (rows, cols, n), tiles row-major."""
    per_side = int(np.ceil(np.sqrt(n)))
    rows, cols = img.shape[0] // per_side, img.shape[1] // per_side
    tiles = img[: rows * per_side, : cols * per_side].reshape(per_side, rows, per_side, cols)
    tiles = tiles.transpose(1, 3, 0, 2).reshape(rows, cols, per_side * per_side)
    return tiles[:, :, :n]


def dicom_series_to_nifti(dicom_dir, out_stem, *, dtype=None) -> tuple[Path, Path]:
    """Convert one DICOM MR series to ``<out_stem>.nii.gz`` + ``<out_stem>.json``.

    Parameters
    ----------
    dicom_dir : str or Path
        Folder of the series' files (non-DICOM files are ignored; one SeriesInstanceUID).
    out_stem : str or Path
        Output path without extension.
    dtype : numpy.int16 or numpy.uint16, optional
        Stored integer type (default int16, uint16 when the values exceed int16).

    Returns
    -------
    (nifti_path, sidecar_path)
        4-D ``(x=column, y=row, z=slice, n)`` when one of TE / b / TI / flip angle varies
        (``n`` sorted ascending) or when several acquisitions of one volume exist
        (dynamics, sorted by AcquisitionNumber, ``FrameTimes`` from AcquisitionTime);
        3-D for a single volume.  The sidecar holds ``EchoTime`` (list when it varies),
        ``RepetitionTime``, ``FlipAngle``, ``InversionTime``, ``MagneticFieldStrength``,
        ``bValue``, ``FrameTimes`` as applicable, plus ``Manufacturer``,
        ``SeriesDescription``, ``SeriesInstanceUID``, ``AcquisitionDimension``.

    Raises
    ------
    DataFileError
        No DICOM files, several series, more than one varying parameter, volumes with
        different slice sets, undecodable pixels.
    """
    import pydicom

    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DataFileError(f"{dicom_dir}: DICOM folder not found")
    dss = []
    for p in sorted(dicom_dir.iterdir()):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(p))
        except Exception:
            continue  # not DICOM (README, DICOMDIR text...)
        if "PixelData" not in ds:
            continue
        dss.append(ds)
    if not dss:
        raise DataFileError(f"{dicom_dir}: no DICOM image files found")
    mods = sorted({str(ds.get("Modality", "")) for ds in dss})
    if mods != ["MR"]:
        raise DataFileError(f"{dicom_dir}: expected MR images, found modality {mods}")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in dss})
    if len(series) > 1:
        raise DataFileError(f"{dicom_dir}: {len(series)} series found ({series}); convert one series per folder")

    recs = []
    for ds in dss:
        csa = _csa(ds)
        recs.append(dict(ds=ds, csa=csa, te=_f(ds, "EchoTime"), ti=_f(ds, "InversionTime"), fa=_f(ds, "FlipAngle"),
                         b=_b_value(ds, csa), acq=int(_f(ds, "AcquisitionNumber", 0) or 0),
                         nm=_n_mosaic(ds, csa)))
    varying = [k for k in ("te", "b", "ti", "fa") if len({r[k] for r in recs}) > 1]
    if len(varying) > 1:
        raise DataFileError(f"{dicom_dir}: more than one acquisition parameter varies ({varying}); "
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
        key = varying[0]
        dim_key = key
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
                raise DataFileError(f"{dicom_dir}: {len(g)} mosaics share {dim_key}={kv}; expected one per volume")
            vol = _untile(_pixels(g[0]["ds"]), g[0]["nm"])  # (rows, cols, n)
            positions = (g[0]["pos"], g[0]["nm"])
        else:
            pos = [r["pos"] for r in g]
            if len(set(np.round(pos, 4))) != len(pos):
                raise DataFileError(f"{dicom_dir}: two slices at the same position for {dim_key}={kv}")
            vol = np.stack([_pixels(r["ds"]) for r in g], axis=-1)
            positions = tuple(np.round(pos, 3))
        if ref_positions is not None and positions != ref_positions:
            raise DataFileError(f"{g[0]['ds'].filename} and {first_recs[0]['ds'].filename}: volumes "
                                f"{dim_key}={kv} and {sorted(groups)[0]} cover different slices")
        ref_positions = positions
        first_recs.append(g[0])
        vols.append(np.transpose(vol, (1, 0, 2)))  # (x=column, y=row, z)
    data = np.stack(vols, axis=-1) if len(vols) > 1 else vols[0]

    first = first_recs[0]
    ds0 = first["ds"]
    if mosaic:
        spacing = _f(ds0, "SpacingBetweenSlices") or _f(ds0, "SliceThickness")
        aff = dicom_affine(ds0, n_mosaic=first["nm"], slice_spacing=spacing, normal=normal)
    else:
        g0 = sorted(groups[sorted(groups)[0]], key=lambda r: r["pos"])
        ds0 = g0[0]["ds"]
        pos = [r["pos"] for r in g0]
        spacing = float(np.median(np.diff(pos))) if len(pos) > 1 else None
        aff = dicom_affine(ds0, slice_spacing=spacing, normal=normal)

    side = {"Manufacturer": str(ds0.get("Manufacturer", "")) or "unknown",
            "SeriesDescription": str(ds0.get("SeriesDescription", "")) or "unknown",
            "SeriesInstanceUID": series[0]}
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
    field = _f(ds0, "MagneticFieldStrength")
    if field:
        side["MagneticFieldStrength"] = field
    if dim_key == "acq" and len(vals) > 1:
        times = [_seconds(r["ds"].get("AcquisitionTime")) for r in first_recs]
        if all(t is not None for t in times):
            side["FrameTimes"] = [round(t - times[0], 6) for t in times]
    side["AcquisitionDimension"] = {"te": "EchoTime", "b": "bValue", "ti": "InversionTime", "fa": "FlipAngle",
                                    "acq": "AcquisitionNumber"}[dim_key] if len(vals) > 1 else "none"

    if dtype is None:
        dtype = np.uint16 if (data.min() >= 0 and data.max() > 32767) else np.int16
    out_stem = Path(out_stem)
    nii = write_nifti(out_stem.with_name(out_stem.name + ".nii.gz"), data, aff, dtype=dtype, sidecar=side)
    return nii, out_stem.with_name(out_stem.name + ".json")
