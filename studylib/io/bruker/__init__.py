"""Bruker ParaVision (5.1, 6.0.x, 7, 360) scan folder -> studylib NIfTI + JSON sidecar.

A ParaVision study folder holds numbered scan folders ``<study>/<E>/`` with ``acqp``, ``method``
and reconstructions ``pdata/<P>/2dseq`` + ``visu_pars`` (+ ``reco``).  The parameter files are
parsed by :mod:`.jcamp` (no third-party reader: their parameters are read as ParaVision wrote
them), the voxels, frames and geometry by :mod:`.scan`, and the sidecar keys and the kind come
from :mod:`.mapping`:

* :func:`describe_scan` reads the headers only (for ``studylib import --dry-run``): kind, matrix,
  TE/TR/FA, b-values or saturation offsets, or why the scan is not imported;
* :func:`paravision_scan_to_nifti` writes ``<out_stem>.nii.gz`` + ``.json``, storing the
  scanner's 16-bit words with ``VisuCoreDataSlope`` as ``scl_slope`` when every frame shares one
  slope and offset (no requantisation), else the scaled values re-quantised by
  :func:`studylib.io.nifti.write_nifti`.

The affine is RAS+ from the LPS ``VisuCorePosition``/``VisuCoreOrientation``; the same scan
through Bruker's DICOM export and :func:`studylib.io.dicom.dicom_series_to_nifti` gives the same
affine and values (tested on a real ParaVision 6.0.1 study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import DataFileError
from ..nifti import write_nifti
from .jcamp import JcampParams, format_jcamp, parse_jcamp, read_jcamp
from .mapping import (GAMMA_MHZ_PER_T, REFERENCE_MIN_PPM, check_kind, detect_kind, nucleus, paravision_sidecar,
                      spectrometer_mhz)
from .scan import FrameGroup, ParaVisionScan, ScanRefused, layout, open_scan, read_image, refusal, require_scan_folder

__all__ = ["paravision_scan_to_nifti", "check_paravision_scan", "describe_scan", "ScanDescription",
           "study_scans", "reconstructions", "summarize_sidecar", "is_scan_folder", "is_study_folder",
           "open_scan", "read_image", "refusal", "ScanRefused", "ParaVisionScan", "FrameGroup", "parse_jcamp",
           "read_jcamp", "format_jcamp", "JcampParams", "paravision_sidecar", "detect_kind", "nucleus",
           "spectrometer_mhz", "GAMMA_MHZ_PER_T", "REFERENCE_MIN_PPM"]


def is_scan_folder(path) -> bool:
    """A numbered folder with a ``method`` file or a ``pdata`` folder."""
    p = Path(path)
    return p.is_dir() and p.name.isdigit() and ((p / "method").is_file() or (p / "pdata").is_dir()
                                                 or (p / "acqp").is_file())


def is_study_folder(path) -> bool:
    """A folder holding at least one ParaVision scan folder (or a ``subject`` file)."""
    p = Path(path)
    return p.is_dir() and (any(is_scan_folder(c) for c in p.iterdir()) or (p / "subject").is_file())


def study_scans(study_dir) -> list[Path]:
    """The scan folders of a study, in scan-number order."""
    p = Path(study_dir)
    return sorted((c for c in p.iterdir() if is_scan_folder(c)), key=lambda c: int(c.name))


def reconstructions(scan_dir) -> list[int]:
    """The reconstruction numbers ``P`` of ``pdata/<P>/`` holding a ``visu_pars`` or ``2dseq`` (sorted)."""
    pdata = Path(scan_dir) / "pdata"
    if not pdata.is_dir():
        return []
    return sorted(int(c.name) for c in pdata.iterdir()
                  if c.is_dir() and c.name.isdigit() and ((c / "visu_pars").is_file() or (c / "2dseq").is_file()))


def check_paravision_scan(scan_dir, reco_id: int = 1) -> Path:
    """Check that ``scan_dir`` looks like a ParaVision scan folder with reconstruction ``reco_id``; return it.

    Raises :class:`DataFileError` naming the folder and the missing files (``method``,
    ``pdata/<P>/visu_pars``, ``pdata/<P>/2dseq``; ``acqp`` and ``reco`` are optional).
    """
    scan_dir = require_scan_folder(scan_dir)
    need = ["method", f"pdata/{reco_id}/visu_pars", f"pdata/{reco_id}/2dseq"]
    missing = [n for n in need if not (scan_dir / n).is_file()]
    if missing:
        raise DataFileError(f"{scan_dir}: not a ParaVision scan folder with reconstruction {reco_id}; "
                            f"missing {', '.join(missing)}")
    return scan_dir


@dataclass
class ScanDescription:
    """What one reconstruction would become (headers only).

    ``kind`` is ``None`` and ``reason`` says why when it is not imported.  ``summary`` holds the
    listing's acquisition facts (``TE_ms``, ``TR_ms``, ``FA_deg``, ``b``, ``offsets_ppm``...).
    """

    label: str
    scan_dir: Path
    reco: int
    method: str
    protocol: str
    comment: str
    kind: str | None
    matrix: tuple[int, ...]
    reason: str | None = None
    sidecar: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def summarize_sidecar(side: dict) -> dict:
    """The listing's facts of a sidecar: ``TE_ms``, ``TR_ms``, ``FA_deg``, ``b``, ``offsets_ppm``, ``B0_T``."""
    out = {}
    te = side.get("EchoTime")
    if te is not None:
        out["TE_ms"] = [round(t * 1000, 9) for t in (te if isinstance(te, list) else [te])]
    if "RepetitionTime" in side:
        out["TR_ms"] = round(side["RepetitionTime"] * 1000, 9)
    if "RepetitionTimes" in side:
        out["TR_ms"] = [round(t * 1000, 9) for t in side["RepetitionTimes"]]
    if "FlipAngle" in side:
        out["FA_deg"] = side["FlipAngle"]
    if "bValue" in side:
        out["b"] = side["bValue"]
    if "SaturationOffsets_ppm" in side:
        out["offsets_ppm"] = side["SaturationOffsets_ppm"]
        out["reference_volumes"] = side.get("ReferenceVolumes", [])
    if "MagneticFieldStrength" in side:
        out["B0_T"] = side["MagneticFieldStrength"]
    return out


def describe_scan(scan_dir, reco: int = 1, *, kind: str | None = None) -> ScanDescription:
    """Describe one reconstruction without reading its voxels; never raises for a bad scan.

    Parameters
    ----------
    scan_dir : str or Path
        ``<study>/<E>``.
    reco : int
        Reconstruction number ``P``.
    kind : str, optional
        Manifest kind to use instead of the one recognised from the method.

    Returns
    -------
    ScanDescription
        With ``reason`` (one line) when the scan will not be imported: unreadable or missing
        parameter files, spectroscopic/derived/multi-pack/complex data, empty or truncated 2dseq,
        no kind for the method, or a sidecar that does not describe every volume.
    """
    scan_dir = Path(scan_dir)
    label = f"E{scan_dir.name}" + (f"/P{reco}" if reco != 1 else "")
    try:
        scan = open_scan(scan_dir, reco)
    except DataFileError as err:
        return ScanDescription(label, scan_dir, reco, "?", "", "", None, (), reason=str(err))
    d = ScanDescription(scan.label, scan_dir, reco, scan.method_name, scan.protocol, scan.comment, None, ())
    try:
        why = refusal(scan)
        (x, y, z), n, groups = layout(scan)
        d.matrix = (x, y, z, n) if n > 1 else (x, y, z)
        if why:
            d.reason = why
        k, how = (kind, "--kind") if kind else detect_kind(scan, n, groups)
        if k is None and not why:
            d.reason = how
        if d.reason:  # still list what the headers say (TE, TR, FA, field)
            try:
                d.summary = summarize_sidecar(paravision_sidecar(scan, None, n, groups))
            except DataFileError:
                pass
            return d
        side = paravision_sidecar(scan, k, n, groups)
        check_kind(scan, k, side, n)
        d.kind, d.sidecar, d.summary = k, side, summarize_sidecar(side)
    except DataFileError as err:
        d.reason = str(err)
    return d


def paravision_scan_to_nifti(scan_dir, out_stem, *, reco_id: int = 1, kind: str | None = None,
                             dtype=None) -> tuple[Path, Path]:
    """Convert one ParaVision reconstruction to ``<out_stem>.nii.gz`` + ``<out_stem>.json``.

    Parameters
    ----------
    scan_dir : str or Path
        The scan folder ``<study>/<scan number>``.
    out_stem : str or Path
        Output path without extension.
    reco_id : int
        Reconstruction number (``pdata/<reco_id>``).
    kind : str, optional
        Manifest kind (``MEGRE``, ``MSME``, ``DWI``, ``CEST``...); default: recognised from the
        method (:func:`studylib.io.bruker.mapping.detect_kind`).
    dtype : numpy.int16 or numpy.uint16, optional
        Stored integer type; default that of ``2dseq`` (16-bit) or int16/uint16 by sign.

    Returns
    -------
    (nifti_path, sidecar_path)
        4-D ``(x, y, z, n)`` when the scan has several volumes, else 3-D.

    Raises
    ------
    ScanRefused
        The reconstruction is not an importable image (the message says why and names the scan).
    DataFileError
        Missing or unreadable files, no kind for the method, a sidecar that does not describe
        the volumes.
    """
    scan_dir = check_paravision_scan(scan_dir, reco_id)
    scan = open_scan(scan_dir, reco_id)
    why = refusal(scan)
    if why:
        raise ScanRefused(f"{scan_dir}: {scan.label} not imported: {why}")
    _, n, groups = layout(scan)
    if kind is None:
        kind, how = detect_kind(scan, n, groups)
        if kind is None:
            raise DataFileError(f"{scan_dir / 'method'}: {scan.label}: {how}")
    side = paravision_sidecar(scan, kind, n, groups)
    check_kind(scan, kind, side, n)
    img = read_image(scan)
    data = img.data if img.data.shape[3] > 1 else img.data[..., 0]
    if dtype is None:
        dtype = np.uint16 if img.stored_dtype.endswith("u2") or (data.min() >= 0 and data.max() > 32767
                                                                 and img.scaling is None) else np.int16
    stored = np.dtype(img.stored_dtype)
    fits = stored.kind in "iu" and (stored.itemsize == 1 or stored.kind == np.dtype(dtype).kind)
    scaling = img.scaling if fits else None  # the scanner's words kept exactly, its slope as scl_slope
    out_stem = Path(out_stem)
    nii = write_nifti(out_stem.with_name(out_stem.name + ".nii.gz"), data, img.affine, dtype=dtype,
                      sidecar=side, scaling=scaling)
    return nii, out_stem.with_name(out_stem.name + ".json")
