"""One ParaVision reconstruction (``<study>/<E>/pdata/<P>``): parameters, frame layout, geometry, voxels.

Everything about the image comes from ``visu_pars`` (the reconstruction's self-contained
description, ParaVision 5.1 to 360), the acquisition facts from ``method`` and ``acqp``:

* **Voxels**: ``2dseq`` holds ``VisuCoreFrameCount`` frames of ``VisuCoreSize`` values (first
  axis fastest) of ``VisuCoreWordType`` in ``VisuCoreByteOrder``; the value of frame ``f`` is
  ``stored * VisuCoreDataSlope[f] + VisuCoreDataOffs[f]``.
* **Frames**: ``VisuFGOrderDesc`` lists the frame groups ``(len, id, comment, ...)``, the first
  varying fastest (``frame = i0 + len0 * (i1 + len1 * ...)``).  ``FG_SLICE`` becomes the third
  (z) axis, the remaining groups (echoes, repetitions, diffusion experiments) one fourth axis
  in their stored order.
* **Geometry**: ``VisuCorePosition`` (centre of the first voxel, mm) and ``VisuCoreOrientation``
  (rows: directions of the image x, y and slice axes) are in the DICOM patient system LPS
  (x to the subject's left, y posterior, z head).  The affine in RAS+ (NIfTI) is
  ``diag(-1, -1, 1, 1) @ [r0 dx | r1 dy | n dz | p]`` with ``dx, dy = VisuCoreExtent /
  VisuCoreSize``; 2-D slices are sorted along ``n = r0 × r1`` and ``dz`` is their spacing
  (``VisuCoreFrameThickness`` for one slice), exactly as :func:`studylib.io.dicom.dicom_affine`
  does for the scanner's own DICOM export (``ImagePositionPatient`` = ``VisuCorePosition``,
  ``ImageOrientationPatient`` = the first two rows), so both paths give one affine.

:func:`refusal` says why a reconstruction is not an image studylib can import (spectroscopic or
temporal axes, derived maps, several slice packs or orientations, complex frames, an empty or
aborted ``2dseq``); :func:`read_image` refuses the same with :class:`ScanRefused`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ...errors import DataFileError, ScanRefused
from .jcamp import JcampParams, read_jcamp

__all__ = ["ParaVisionScan", "ScanRefused", "FrameGroup", "open_scan", "refusal", "layout", "read_image",
           "BrukerImage", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_WORD = {"_16BIT_SGN_INT": "i2", "_32BIT_SGN_INT": "i4", "_8BIT_UNSGN_INT": "u1", "_32BIT_FLOAT": "f4",
         "_16BIT_UNSGN_INT": "u2"}
#: frame groups whose frames are scanner-computed maps, not acquired images
_DERIVED_GROUPS = ("FG_ISA", "FG_DTI", "FG_CONTRAST_MAP")


@dataclass(frozen=True)
class FrameGroup:
    """One ``VisuFGOrderDesc`` entry: ``length`` frames of ``kind`` (``FG_SLICE``, ``FG_ECHO``...)."""

    length: int
    kind: str
    comment: str


@dataclass
class ParaVisionScan:
    """The parameter files of one reconstruction (no voxel data read)."""

    scan_dir: Path
    reco: int
    visu: JcampParams
    method: JcampParams = field(default_factory=JcampParams)
    acqp: JcampParams = field(default_factory=JcampParams)

    @property
    def number(self) -> int:
        return int(self.scan_dir.name)

    @property
    def label(self) -> str:
        """``E4`` (reconstruction 1) or ``E4/P2``: how messages and listings name the scan."""
        return f"E{self.scan_dir.name}" + (f"/P{self.reco}" if self.reco != 1 else "")

    @property
    def pdata(self) -> Path:
        return self.scan_dir / "pdata" / str(self.reco)

    def get(self, name: str, default=None):
        """A parameter from ``visu_pars``, ``method`` or ``acqp`` (searched in that order)."""
        for p in (self.visu, self.method, self.acqp):
            if name in p:
                return p[name]
        return default

    @property
    def method_name(self) -> str:
        """``Method`` without its ``Bruker:``/``User:`` prefix (``RARE``, ``cestFISP_Pagel5``, ``mic_flash``)."""
        m = self.method.get("Method") or self.acqp.get("ACQ_method") or self.visu.get("VisuAcqSequenceName") or ""
        if isinstance(m, tuple):
            m = m[0] if m else ""
        return str(m).split(":")[-1].strip()

    @property
    def protocol(self) -> str:
        for key in ("VisuAcquisitionProtocol", "ACQ_protocol_name", "ACQ_scan_name"):
            v = self.get(key)
            if isinstance(v, str) and v:
                return v
        return ""

    @property
    def comment(self) -> str:
        v = self.visu.get("VisuSeriesComment")
        return v if isinstance(v, str) else ""

    @property
    def software(self) -> str:
        v = self.visu.get("VisuCreatorVersion") or self.acqp.get("ACQ_sw_version") or ""
        return str(v)

    # ---------------------------------------------------------------- frame layout
    @cached_property
    def core_size(self) -> tuple[int, ...]:
        size = np.atleast_1d(self.visu.get("VisuCoreSize", np.zeros(0)))
        return tuple(int(s) for s in size)

    @cached_property
    def frame_count(self) -> int:
        return int(self.visu.get("VisuCoreFrameCount", 1) or 1)

    @cached_property
    def frame_groups(self) -> list[FrameGroup]:
        desc = self.visu.get("VisuFGOrderDesc")
        if desc is None:
            return []
        if isinstance(desc, tuple):
            desc = [desc]
        return [FrameGroup(int(d[0]), str(d[1]), str(d[2]) if len(d) > 2 else "") for d in desc]

    @cached_property
    def dim_desc(self) -> list[str]:
        d = self.visu.get("VisuCoreDimDesc", [])
        return [d] if isinstance(d, str) else [str(x) for x in d]

    def per_frame(self, name: str, default: float) -> np.ndarray:
        """A per-frame number (``VisuCoreDataSlope``...) broadcast to ``frame_count`` values."""
        v = np.atleast_1d(np.asarray(self.visu.get(name, default), dtype=float)).ravel()
        if v.size == 1:
            return np.full(self.frame_count, float(v[0]))
        if v.size != self.frame_count:
            raise DataFileError(f"{self.pdata / 'visu_pars'}: {name} has {v.size} values for "
                                f"{self.frame_count} frames")
        return v


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFileError(f"{path}: missing {what}")
    return path


def require_scan_folder(scan_dir) -> Path:
    """``scan_dir`` as a Path if it is a folder named by a scan number; DataFileError naming it otherwise."""
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise DataFileError(f"{scan_dir}: ParaVision scan folder not found")
    if not scan_dir.name.isdigit():
        raise DataFileError(f"{scan_dir}: not a ParaVision scan folder (its name must be the scan number, "
                            f"e.g. '<study>/5')")
    return scan_dir


def open_scan(scan_dir, reco: int = 1) -> ParaVisionScan:
    """Read the parameter files of ``scan_dir`` (``<study>/<E>``) and its reconstruction ``reco``.

    Raises
    ------
    DataFileError
        Not a scan folder (name not a number), ``pdata/<reco>/visu_pars`` or ``method``
        missing, or a parameter file that is not JCAMP-DX; the message names the file.
    """
    scan_dir = require_scan_folder(scan_dir)
    pdata = scan_dir / "pdata" / str(reco)
    visu = read_jcamp(_need(pdata / "visu_pars", f"visu_pars of reconstruction {reco} (not reconstructed?)"))
    method = read_jcamp(_need(scan_dir / "method", "method file (not a ParaVision scan folder?)"))
    acqp = read_jcamp(scan_dir / "acqp") if (scan_dir / "acqp").is_file() else JcampParams()
    return ParaVisionScan(scan_dir, reco, visu, method, acqp)


def _orientations(scan: ParaVisionScan) -> np.ndarray:
    o = np.asarray(scan.visu.get("VisuCoreOrientation", np.eye(3).ravel()), dtype=float).reshape(-1, 9)
    return o.reshape(-1, 3, 3)


def _positions(scan: ParaVisionScan) -> np.ndarray:
    return np.asarray(scan.visu.get("VisuCorePosition", np.zeros(3)), dtype=float).reshape(-1, 3)


def _expected_bytes(scan: ParaVisionScan) -> int:
    word = str(scan.visu.get("VisuCoreWordType", "_16BIT_SGN_INT"))
    return int(np.prod(scan.core_size)) * scan.frame_count * np.dtype(_WORD.get(word, "i2")).itemsize


def refusal(scan: ParaVisionScan) -> str | None:
    """Why this reconstruction cannot be imported as an image, or ``None`` (headers and file size only).

    Returns
    -------
    str or None
        One line, e.g. ``"3 slice packs (PVM_NSPacks; a tri-pilot localizer?): import one pack per scan"``.
    """
    v = scan.visu
    desc = scan.dim_desc
    if not desc or any(d != "spatial" for d in desc):
        return (f"not an image: VisuCoreDimDesc is {' '.join(desc) or 'missing'} (spectroscopic/CSI or "
                "temporal axes cannot become NIfTI space)")
    if str(scan.method.get("PVM_EncSpectroscopy", "No")) == "Yes":
        return "spectroscopic encoding (PVM_EncSpectroscopy=Yes): CSI is not imported"
    if len(scan.core_size) not in (2, 3) or min(scan.core_size) < 1:
        return f"VisuCoreSize {scan.core_size}: only 2-D or 3-D frames are imported"
    series = str(v.get("VisuSeriesTypeId", ""))
    derived = [g.kind for g in scan.frame_groups if g.kind in _DERIVED_GROUPS]
    if series.startswith("DERIVED") or derived:
        what = ", ".join(f"{g.kind} <{g.comment}>" for g in scan.frame_groups if g.kind in _DERIVED_GROUPS)
        return (f"derived maps computed by ParaVision ({series or 'derived'}{'; ' + what if what else ''}), "
                "not acquired images")
    if any(g.kind == "FG_COMPLEX" for g in scan.frame_groups):
        return "complex frames (FG_COMPLEX real/imaginary): reconstruct magnitude images to import"
    npacks = int(np.atleast_1d(scan.method.get("PVM_NSPacks", 1))[0])
    spd = v.get("VisuCoreSlicePacksDef")
    if isinstance(spd, tuple) and len(spd) == 2:
        npacks = max(npacks, int(spd[1]))
    orients = _orientations(scan)
    n_orient = len({tuple(np.round(o.ravel(), 4)) for o in orients})
    if npacks > 1 or n_orient > 1:
        return (f"{max(npacks, n_orient)} slice packs / orientations (PVM_NSPacks, VisuCoreOrientation; "
                "a tri-pilot localizer?): not merged into one volume")
    if str(scan.acqp.get("ACQ_completed", "Yes")) == "No":
        return "acquisition not completed (acqp ACQ_completed=No): aborted scan"
    seq = scan.pdata / "2dseq"
    if not seq.is_file():
        return "no 2dseq (scan not reconstructed or aborted)"
    size, need = seq.stat().st_size, _expected_bytes(scan)
    if size == 0:
        return "empty 2dseq (0 bytes; aborted scan)"
    if size != need:
        return (f"2dseq has {size} bytes but visu_pars describes {need} ({scan.frame_count} frames of "
                f"{'x'.join(map(str, scan.core_size))}): truncated or aborted")
    word = str(v.get("VisuCoreWordType", "_16BIT_SGN_INT"))
    if word not in _WORD:
        return f"VisuCoreWordType {word} is not a known 2dseq word type"
    glen = int(np.prod([g.length for g in scan.frame_groups])) if scan.frame_groups else 1
    if glen != scan.frame_count:
        return (f"frame groups {[(g.kind, g.length) for g in scan.frame_groups]} give {glen} frames but "
                f"VisuCoreFrameCount is {scan.frame_count}")
    if len(scan.core_size) == 3 and str(v.get("VisuCoreDiskSliceOrder", "")) == "disk_reverse_slice_order":
        return "3-D frames in disk_reverse_slice_order are not supported"
    slices = [g for g in scan.frame_groups if g.kind == "FG_SLICE"]
    npos = len(_positions(scan))
    nsl = slices[0].length if slices else 1
    if npos not in (1, nsl):
        return f"{npos} VisuCorePosition rows for {nsl} slices (positions varying across non-slice frames)"
    return None


def layout(scan: ParaVisionScan) -> tuple[tuple[int, int, int], int, list[FrameGroup]]:
    """``((x, y, z), n_volumes, volume_groups)`` of the NIfTI the scan becomes, from the headers alone.

    ``z`` is the ``FG_SLICE`` length for 2-D frames (the third size for 3-D frames); ``n_volumes`` the
    product of the other frame groups, listed fastest first in ``volume_groups``.
    """
    size = scan.core_size
    groups = scan.frame_groups
    if len(size) == 3:
        return (size[0], size[1], size[2]), int(np.prod([g.length for g in groups])) if groups else 1, list(groups)
    nsl = next((g.length for g in groups if g.kind == "FG_SLICE"), 1)
    vol = [g for g in groups if g.kind != "FG_SLICE"]
    n = int(np.prod([g.length for g in vol])) if vol else 1
    x, y = (size + (1, 1))[:2]
    return (x, y, nsl), n, vol


@dataclass
class BrukerImage:
    """Voxels and geometry of one reconstruction.

    ``data`` is float64 ``(x, y, z, n)`` (``n`` = 1 for a single volume) after slope/offset;
    ``scaling`` is ``(slope, offset)`` when every frame shares one and the stored words are 16-bit
    integers (``data`` then is exactly ``int16 * slope + offset``), else ``None``;
    ``volume_groups`` names the frame groups along ``n`` (fastest first).
    """

    data: np.ndarray
    affine: np.ndarray
    scaling: tuple[float, float] | None
    stored_dtype: str
    volume_groups: list[FrameGroup]


def _slice_geometry(scan: ParaVisionScan, nsl: int):
    """(order of slices ascending along the normal, spacing mm, normal, first position) for 2-D frames."""
    orient = _orientations(scan)[0]
    normal = np.cross(orient[0], orient[1])
    pos = _positions(scan)
    if len(pos) == 1:
        pos = np.repeat(pos, nsl, axis=0)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    if nsl > 1:
        steps = np.diff(proj[order])
        spacing = float(np.median(steps))
        if spacing <= 0 or np.max(np.abs(steps - spacing)) > 1e-3:
            raise ScanRefused(f"{scan.scan_dir}: {scan.label}: slices are not equally spaced along the normal "
                              f"(VisuCorePosition steps {np.round(steps, 4).tolist()} mm)")
        inplane = pos[order] - pos[order][0] - np.outer(proj[order] - proj[order][0], normal)
        if np.max(np.abs(inplane)) > 1e-3:
            raise ScanRefused(f"{scan.scan_dir}: {scan.label}: slice positions shift in-plane "
                              "(not one stack): not imported")
    else:
        thick = np.atleast_1d(scan.visu.get("VisuCoreFrameThickness", 1.0)).astype(float)
        spacing = float(thick[0])
    return order, spacing, normal, pos[order][0]


def read_image(scan: ParaVisionScan) -> BrukerImage:
    """Read ``2dseq``: scaled voxels ``(x, y, z, n)`` and the RAS affine (see the module notes).

    Raises
    ------
    ScanRefused
        Whatever :func:`refusal` reports, or unevenly spaced slices.
    """
    why = refusal(scan)
    if why:
        raise ScanRefused(f"{scan.pdata / '2dseq'}: {scan.label} not imported: {why}")
    v = scan.visu
    word = str(v.get("VisuCoreWordType", "_16BIT_SGN_INT"))
    order = "<" if str(v.get("VisuCoreByteOrder", "littleEndian")) == "littleEndian" else ">"
    dt = np.dtype(order + _WORD[word])
    raw = np.fromfile(scan.pdata / "2dseq", dtype=dt)
    size = scan.core_size
    nf = scan.frame_count
    frames = raw.reshape((nf,) + tuple(reversed(size)))  # (frame, [z,] y, x): first axis of VisuCoreSize fastest
    slope = scan.per_frame("VisuCoreDataSlope", 1.0)
    offs = scan.per_frame("VisuCoreDataOffs", 0.0)
    shape_b = (nf,) + (1,) * len(size)
    values = frames.astype(np.float64) * slope.reshape(shape_b) + offs.reshape(shape_b)
    uniform = bool(np.all(slope == slope[0]) and np.all(offs == offs[0]))
    scaling = (float(slope[0]), float(offs[0])) if (uniform and dt.kind in "iu" and dt.itemsize <= 2) else None

    groups = scan.frame_groups or [FrameGroup(1, "FG_NONE", "")]
    lens = [g.length for g in groups]
    # frame = i0 + len0 * (i1 + ...): reshape in C order with the LAST group first
    arr = values.reshape(tuple(reversed(lens)) + values.shape[1:])
    garr = list(reversed(groups))
    slice_axis = next((i for i, g in enumerate(garr) if g.kind == "FG_SLICE"), None)
    other = [i for i in range(len(garr)) if i != slice_axis]
    vol_groups = [garr[i] for i in other][::-1]  # fastest first
    nsp = len(size)
    if nsp == 2:
        nsl = garr[slice_axis].length if slice_axis is not None else 1
        perm = ([slice_axis] if slice_axis is not None else []) + other
        arr = np.transpose(arr, perm + [len(garr), len(garr) + 1])  # (slice?, others..., y, x)
        arr = arr.reshape((nsl, -1) + arr.shape[-2:])  # (z, n, y, x); n: last group slowest -> C order
        arr = np.transpose(arr, (3, 2, 0, 1))  # (x, y, z, n)
        sorder, spacing, normal, first = _slice_geometry(scan, nsl)
        arr = arr[:, :, sorder, :]
        orient = _orientations(scan)[0]
        dx, dy = (np.asarray(v["VisuCoreExtent"], dtype=float)[:2] / np.asarray(size[:2], dtype=float))
        cols = [orient[0] * dx, orient[1] * dy, normal * spacing]
    else:
        if slice_axis is not None:
            raise ScanRefused(f"{scan.scan_dir}: {scan.label}: 3-D frames with a slice frame group are not imported")
        arr = arr.reshape((-1,) + arr.shape[len(garr):])  # (n, z, y, x)
        arr = np.transpose(arr, (3, 2, 1, 0))
        orient = _orientations(scan)[0]
        vox = np.asarray(v["VisuCoreExtent"], dtype=float)[:3] / np.asarray(size[:3], dtype=float)
        cols = [orient[0] * vox[0], orient[1] * vox[1], orient[2] * vox[2]]
        first = _positions(scan)[0]
    lps = np.eye(4)
    for j in range(3):
        lps[:3, j] = cols[j]
    lps[:3, 3] = first
    return BrukerImage(np.ascontiguousarray(arr), LPS_TO_RAS @ lps, scaling, dt.str,
                       [g for g in vol_groups if g.kind != "FG_NONE"])
