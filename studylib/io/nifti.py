"""NIfTI-1 images as scanners store them, written byte-reproducibly and read lazily.

* :func:`write_nifti` stores float data as integers with ``scl_slope``/``scl_inter``
  chosen deterministically from the data, gzip-compressed with ``mtime=0`` so the same
  input gives the same bytes on every run, plus a JSON sidecar (sorted keys, ``\\n``);
  both written atomically (temporary file + ``os.replace``).
* :func:`read_header` reads shape, voxel size, affine and scaling without the data.
* :func:`read_nifti_lazy` returns a Dask array that reads the file only on compute,
  transposed from nibabel's ``(x, y, z[, n])`` to the design's ``(n, z, y, x)``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes
from ..errors import DataFileError
from .sidecar import sidecar_path, validate_sidecar

__all__ = ["wrap_around_problem", "check_same_grid", "write_nifti", "read_header", "read_nifti_lazy", "read_nifti",
           "NiftiInfo", "to_design_order", "GunzipCounter"]

_INT_RANGE = {np.dtype(np.int16): (-32768, 32767, 32000.0), np.dtype(np.uint16): (0, 65535, 64000.0)}


def _choose_scaling(data: np.ndarray, dtype: np.dtype) -> tuple[float, float]:
    """(slope, inter) such that ``data ≈ int * slope + inter``.

    Integer-valued data that fits the dtype is stored exactly (slope 1, inter 0).
    Otherwise inter = 0 and slope = max|data| / 32000 (int16) or max / 64000 (uint16),
    rounded to float32 (the header's precision) so the choice is reproducible.
    """
    lo, hi, full = _INT_RANGE[dtype]
    if data.size == 0:
        return 1.0, 0.0
    dmin, dmax = float(np.min(data)), float(np.max(data))
    if np.all(data == np.round(data)) and dmin >= lo and dmax <= hi:
        return 1.0, 0.0
    amax = max(abs(dmin), abs(dmax))
    if amax == 0:
        return 1.0, 0.0
    slope = float(np.float32(amax / full))
    if slope == 0.0:  # subnormal data
        slope = float(np.finfo(np.float32).tiny)
    return slope, 0.0


def to_design_order(arr: np.ndarray) -> np.ndarray:
    """nibabel order ``(x, y, z[, n])`` -> design order ``([n,] z, y, x)``."""
    return np.transpose(arr, tuple(range(arr.ndim))[::-1])


def write_nifti(path, data_float, affine, *, dtype=np.int16, sidecar: dict | None = None,
                design_order: bool = False, xyz_units: str = "mm",
                scaling: tuple[float, float] | None = None) -> Path:
    """Write a scanner-style NIfTI-1 (integer data + scaling), byte-reproducibly.

    Parameters
    ----------
    path : str or Path
        Output ``.nii.gz`` (or ``.nii`` for an uncompressed file).
    data_float : array_like, shape (x, y, z[, n]) or, with ``design_order=True``, ([n,] z, y, x)
        Image values (finite).  Integer-valued data within the dtype's range (labels) is
        stored exactly with slope 1.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine of the ``(x, y, z)`` voxel axes; its column norms are
        the voxel size in mm.
    dtype : numpy.int16 or numpy.uint16
        Stored integer type.
    sidecar : dict, optional
        Written to the same stem with ``.json`` (validated, sorted keys, 2-space indent,
        trailing ``\\n``).
    design_order : bool
        ``data_float`` is in the design's order ``([n,] z, y, x)`` and is transposed.
    scaling : (slope, inter), optional
        Store ``round((v - inter) / slope)`` with this slope and intercept instead of choosing
        them: for data that already are scanner integers times the scanner's slope (ParaVision
        ``VisuCoreDataSlope``, DICOM ``RescaleSlope``), so the stored words are the scanner's own.
        The header keeps ``slope`` as float32.

    Returns
    -------
    Path
        The image path.

    Notes
    -----
    Stored value ``i = round((v - inter) / slope)``; readers return ``i * slope + inter``.
    ``inter = 0`` and ``slope = max|v| / 32000`` (int16; ``max / 64000`` for uint16),
    rounded to float32, so the quantisation error is at most ``slope / 2`` per voxel and the
    choice depends only on the data.  Gzip uses ``mtime=0`` and no file name, so equal data
    gives equal bytes (the manifest's sha256 is reproducible).  NIfTI-1: Cox et al. 2004,
    https://nifti.nimh.nih.gov/nifti-1.
    """
    import nibabel as nib

    path = Path(path)
    dt = np.dtype(dtype)
    if dt not in _INT_RANGE:
        raise DataFileError(f"{path}: dtype must be int16 or uint16, got {dt}")
    data = np.asarray(data_float)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool) or np.iscomplexobj(data):
        raise DataFileError(f"{path}: data must be real numbers, got dtype {data.dtype}")
    data = data.astype(np.float64)
    if design_order:
        data = to_design_order(data)
    if data.ndim not in (3, 4):
        raise DataFileError(f"{path}: data must be 3-D (x, y, z) or 4-D (x, y, z, n), got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise DataFileError(f"{path}: data contain NaN or Inf ({int(np.sum(~np.isfinite(data)))} values)")
    lo, hi, _ = _INT_RANGE[dt]
    if dt == np.dtype(np.uint16) and data.size and data.min() < 0:
        raise DataFileError(f"{path}: uint16 cannot store negative values (min {data.min():g}); use int16")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise DataFileError(f"{path}: affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataFileError(f"{path}: affine is singular")
    if sidecar is not None:
        validate_sidecar(sidecar, source=f"{sidecar_path(path)} (sidecar argument)")
    if scaling is None:
        slope, inter = _choose_scaling(data, dt)
    else:
        slope, inter = (float(v) for v in scaling)
        if not (np.isfinite(slope) and np.isfinite(inter) and slope > 0):
            raise DataFileError(f"{path}: scaling must be a finite positive slope and a finite intercept, "
                                f"got {scaling}")
        if data.size and ((data.min() - inter) / slope < lo - 0.5 or (data.max() - inter) / slope > hi + 0.5):
            raise DataFileError(f"{path}: data range [{data.min():g}, {data.max():g}] does not fit {dt} with "
                                f"slope {slope:g} and intercept {inter:g}")
    ints = np.clip(np.rint((data - inter) / slope), lo, hi).astype(dt)

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dt)
    img = nib.Nifti1Image(ints, aff, header=hdr)
    img.header.set_slope_inter(slope, inter)
    img.header.set_xyzt_units(xyz_units, "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    raw = img.to_bytes()
    name = path.name
    if name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    elif not name.endswith(".nii"):
        raise DataFileError(f"{path}: image file name must end with .nii.gz or .nii")
    if sidecar is not None:
        text = json.dumps(sidecar, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        atomic_write_bytes(sidecar_path(path), text.encode("utf-8"))
    atomic_write_bytes(path, raw)
    return path


@dataclass(frozen=True)
class NiftiInfo:
    """Header facts of a NIfTI image (no voxel data read).

    ``shape`` is nibabel's ``(x, y, z[, n])``; ``design_shape`` is ``([n,] z, y, x)``;
    ``voxel_size_mm`` is ``(x, y, z)``.
    """

    path: str
    shape: tuple[int, ...]
    voxel_size_mm: tuple[float, float, float]
    affine: np.ndarray
    dtype: str
    slope: float
    inter: float
    vox_offset: int
    nbytes: int
    #: the header as stored (decompressed), with the 4 extension-flag bytes after it, when the fast parser
    #: read it (:func:`_header_facts_fast`); :func:`read_nifti` reuses these facts for a file whose header
    #: bytes are still these
    header_bytes: bytes | None = None

    @property
    def design_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[::-1])

    @property
    def n_volumes(self) -> int:
        return int(self.shape[3]) if len(self.shape) > 3 else 1


def read_header(path) -> NiftiInfo:
    """Read a NIfTI-1/2 header: shape, voxel size (mm), affine, dtype, scaling.

    Only the start of the file is read.  A single-file ``.nii`` / ``.nii.gz`` with the NIfTI-1 or
    NIfTI-2 magic and no header extensions is parsed straight from its first bytes (for gzip, the first
    8 kB of the decompressed stream) by nibabel's own header class (:func:`_header_facts_fast`); anything
    else, and any file that parse does not accept, goes through ``nibabel.load``
    (:func:`_header_facts_nibabel`), whose checks and error messages are the reference.  Both give the
    same numbers: the affine is nibabel's ``get_best_affine`` (sform if its code is set, else qform, else
    the base affine from the zooms), ``slope``/``inter`` those of nibabel's array proxy (a zero or
    non-finite ``scl_slope`` means no scaling: 1 and 0), ``vox_offset`` where nibabel reads the voxels.

    Raises
    ------
    DataFileError
        Missing file, not a NIfTI-1/2 file, corrupt gzip, a 5-D+ image, zero-sized dims, or dims
        claiming more data than the file can hold.

    References
    ----------
    NIfTI-1: Cox et al. 2004, https://nifti.nimh.nih.gov/nifti-1 (348-byte header, magic ``n+1``);
    NIfTI-2: https://nifti.nimh.nih.gov/nifti-2 (540-byte header, magic ``n+2``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: NIfTI file not found")
    facts = _header_facts_fast(path)
    if facts is None:
        facts = _header_facts_nibabel(path) + (None,)
    shape, zooms, affine, dtype, slope, inter, vox_offset, header_bytes = facts
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise DataFileError(f"{path}: expected a 3-D or 4-D image, header says shape {shape}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    _check_data_fits(path, shape, dtype, vox_offset, nbytes)
    return NiftiInfo(str(path), shape, zooms, affine, str(dtype),
                     slope, inter, vox_offset, nbytes, header_bytes)


def _header_facts_nibabel(path: Path):
    """``(shape, zooms, affine, dtype, slope, inter, vox_offset)`` through ``nibabel.load`` (the reference).

    Raises the :class:`DataFileError` that :func:`read_header` reports for a file nibabel cannot read.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        hdr = img.header
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
        affine = np.asarray(img.affine, dtype=float)
        dtype = np.dtype(hdr.get_data_dtype())
        slope = float(getattr(img.dataobj, "slope", 1.0))
        inter = float(getattr(img.dataobj, "inter", 0.0))
        # where nibabel really reads the voxels (a header vox_offset of 0 means 352 for a .nii file)
        vox_offset = int(getattr(img.dataobj, "offset", None) or hdr["vox_offset"])
    except FileNotFoundError:
        raise DataFileError(f"{path}: NIfTI file not found") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path}: cannot read NIfTI header (corrupt or truncated file: {err})") from None
    except Exception as err:  # nibabel raises ImageFileError, HeaderDataError, ValueError...
        bad_gz = _gzip_problem(path)
        if bad_gz:
            raise DataFileError(f"{path}: cannot read NIfTI header: {bad_gz}") from None
        raise DataFileError(f"{path}: not a readable NIfTI-1 image ({type(err).__name__}: {err})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataFileError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return shape, zooms, affine, dtype, slope, inter, vox_offset


#: bytes nibabel sniffs from the start of an image to tell its type (``FileBasedImage.path_maybe_image``)
_SNIFF = 1024
#: decompressed bytes nibabel's gzip reader (``io.BufferedReader`` over ``gzip.GzipFile``) inflates to read
#: a header: the fast path inflates at least as much, so a stream nibabel finds corrupt there fails it too
_GZ_OUT = 8192
#: compressed bytes read for that (scanner data compress < 2:1 after the header); a file whose first 16 kB
#: do not inflate to ``_GZ_OUT`` goes to nibabel
_GZ_IN = 1 << 14
_MAGIC_1 = b"n+1\x00"            # NIfTI-1 single file, bytes 344-347
_MAGIC_2 = b"n+2\x00\r\n\x1a\n"  # NIfTI-2 single file, bytes 4-11


def _gunzip_head(data: bytes, need: int) -> bytes:
    """The first ``need`` bytes of the gzip stream ``data`` (members followed), with zlib, as nibabel's reader.

    :func:`gunzip_prefix` with zlib's decoder -- the one :mod:`gzip`, and so nibabel, uses, so a stream is
    corrupt for both or neither -- which stops at ``need`` bytes of output (ISA-L's inflates all the input
    it is given first).  Shorter output: the stream ended or was cut; a corrupt one raises ``zlib.error``.
    """
    return gunzip_prefix(data, need, decompressobj=zlib.decompressobj)


def _header_facts_fast(path: Path, start: bytes | None = None):
    """:func:`_header_facts_nibabel`'s tuple and the header's bytes, from the first bytes of the file, or None.

    Replays what ``nibabel.load`` does for a single-file ``.nii``/``.nii.gz``, without its image object,
    file-type search over every format and gzip file machinery: the type decision on the first 1024
    bytes (``Nifti1Header.may_contain_header``, then CIFTI-2, then ``Nifti2Header``), the header parsed
    and checked by the same class's ``from_fileobj`` (endianness, ``check_fix``), and the facts taken
    from the same header methods nibabel's image and array proxy use.  Returns None -- never raises --
    for anything it does not cover: another suffix, no single-file magic, a CIFTI-2 intent, header
    extensions, a gzip stream not inflating cleanly to 8 kB (or, if shorter, not a complete valid
    stream), or any exception, so those files keep nibabel's exact behaviour and error messages.
    ``start``: the file's bytes from its beginning (at least its first 16 kB, or all of it), when the caller
    has read them already.
    """
    name = path.name
    gz = name.endswith(".nii.gz")
    if not (gz or name.endswith(".nii")):
        return None
    try:
        from nibabel.cifti2.cifti2 import Cifti2Header
        from nibabel.nifti1 import Nifti1Header
        from nibabel.nifti2 import Nifti2Header

        if start is None:
            with open(path, "rb") as fh:
                raw = fh.read(_GZ_IN if gz else _SNIFF)
        else:
            raw = start[:_GZ_IN if gz else _SNIFF]
        if gz:
            head = _gunzip_head(raw, _GZ_OUT)
            if len(head) < _GZ_OUT:
                if len(raw) == _GZ_IN:
                    return None  # more compressed input needed: rare, leave it to nibabel
                head = gzip.decompress(raw)  # a short file: must be one complete, valid gzip stream
        else:
            head = raw
        sniff = head[:_SNIFF]
        if len(sniff) >= Nifti1Header.sizeof_hdr and Nifti1Header.may_contain_header(sniff):
            klass, magic = Nifti1Header, head[344:348]
            ok = magic == _MAGIC_1
        elif len(sniff) >= Nifti2Header.sizeof_hdr and not Cifti2Header.may_contain_header(sniff) \
                and Nifti2Header.may_contain_header(sniff):
            klass, magic = Nifti2Header, head[4:12]
            ok = magic == _MAGIC_2
        else:
            return None
        ext = head[klass.sizeof_hdr:klass.sizeof_hdr + 4]
        if not ok or (len(ext) == 4 and ext[:1] != b"\x00"):
            return None  # pair magic in a single file, or extensions: nibabel's reader
        import io

        hdr = klass.from_fileobj(io.BytesIO(head))
        shape = tuple(int(s) for s in hdr.get_data_shape())
        zooms = tuple(float(z) for z in hdr.get_zooms()[:3])
        affine = np.asarray(hdr.get_best_affine(), dtype=float)
        dtype = np.dtype(hdr.get_data_dtype())
        slope, inter = hdr.get_slope_inter()  # (None, None) for a zero or non-finite slope
        slope = float(1.0 if slope is None else slope)
        inter = float(0.0 if inter is None else inter)
        vox_offset = int(hdr.get_data_offset() or 0)
    except Exception:
        return None
    return shape, zooms, affine, dtype, slope, inter, vox_offset, bytes(head[:klass.sizeof_hdr + 4])


#: deflate cannot expand data by more than 1032:1 (zlib technical details), so a gzip file of
#: ``n`` bytes holds at most about ``1032 n`` bytes
_DEFLATE_MAX_RATIO = 1032


def _human(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)  # pragma: no cover


def _check_data_fits(path: Path, shape, dtype, vox_offset: int, nbytes: int) -> None:
    """Refuse a header whose dims claim more data than the file can hold -- before anything allocates.

    A corrupt or hostile header (e.g. 1000 x 1000 x 1000 voxels in a 1 kB file) would otherwise make
    the reader allocate the claimed size (gigabytes) only to find the data missing.  Uncompressed
    files are checked exactly against their size; gzip files against the deflate bound.
    """
    size = path.stat().st_size
    need = int(vox_offset) + int(nbytes)
    claim = f"header claims shape {tuple(shape)} of {np.dtype(dtype)} = {_human(nbytes)} of voxel data"
    if path.name.endswith(".gz"):
        if need > _DEFLATE_MAX_RATIO * size + 1024:
            raise DataFileError(f"{path}: {claim}, but a {_human(size)} gzip file decompresses to at most "
                                f"{_human(_DEFLATE_MAX_RATIO * size)}: corrupt header dims or truncated file")
    elif size < need:
        raise DataFileError(f"{path}: {claim} from byte {vox_offset}, but the file has only {_human(size)}: "
                            "truncated file or corrupt header dims")


def _gzip_problem(path: Path) -> str | None:
    """For a gzip file whose header nibabel could not read: say what is wrong with the gzip stream."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
        with gzip.open(path, "rb") as fh:  # error path only: look at up to 64 MB of the stream
            for _ in range(64):
                if not fh.read(1 << 20):
                    break
    except (OSError, EOFError, zlib.error) as err:
        return f"corrupt or truncated gzip data ({err or type(err).__name__})"
    return None


def _inflate():
    """``decompressobj`` of ISA-L (``isal``, a drop-in for :mod:`zlib`, ~1.6-2x faster) if installed, else zlib's."""
    try:
        from isal import isal_zlib

        return isal_zlib.decompressobj
    except ImportError:  # pragma: no cover - isal is a dependency, but zlib gives the same bytes
        return zlib.decompressobj


class GunzipCounter:
    """Inflate a gzip stream fed block by block and keep only its decompressed length.

    Checks what ``gzip.open(path).read()`` checks, in one pass that a caller can share with hashing the
    same blocks: every member's header, deflate data, CRC-32 and length (ISIZE); members are followed and
    zero padding after the last one is allowed.  ISA-L (:func:`_inflate`) when installed.  Input goes to
    the decoder ``max_in`` bytes at a time and the output is discarded, so memory stays bounded (deflate
    expands at most ~1032:1: 64 kB in, < 68 MB out) whatever the stream holds.  After :meth:`finish`,
    ``problem`` is None or what is wrong, and ``size`` the decompressed length.
    """

    def __init__(self, *, decompressobj=None, max_in: int = 1 << 16):
        self._new = decompressobj or _inflate()
        self._max_in = int(max_in)
        self._d = None  # the current member's decompressor; None between members
        self.size = 0
        self.problem: str | None = None

    def feed(self, block: bytes) -> None:
        view = memoryview(block)
        for i in range(0, len(view), self._max_in):
            self._feed(view[i:i + self._max_in])

    def _feed(self, data) -> None:
        while len(data) and self.problem is None:
            if self._d is None:
                data = bytes(data).lstrip(b"\0")  # padding after a member (gzip.open allows it)
                if not data:
                    return
                self._d = self._new(wbits=31)
            try:
                self.size += len(self._d.decompress(data))
            except Exception as err:  # zlib.error or ISA-L's IsalError: bad header, data or checksum
                self.problem = f"corrupt gzip data ({err or type(err).__name__})"
                return
            if not self._d.eof:
                return
            data, self._d = self._d.unused_data, None  # the next member, padding or trailing garbage

    def finish(self) -> "GunzipCounter":
        if self.problem is None and self._d is not None:
            self.problem = "corrupt gzip data (Compressed file ended before the end-of-stream marker was reached)"
        return self


def gunzip_prefix(data: bytes, need: int, *, decompressobj=None) -> bytes:
    """The first ``need`` bytes of the gzip stream ``data``, decompressed in one call.

    What :class:`gzip.GzipFile` ``.read(need)`` gives (nibabel's reader): members are followed (a
    multi-member file reads as their concatenation) and nothing past ``need`` is decompressed, so a
    stream never allocates more than ``need`` bytes of output whatever it holds.  Shorter output means
    a truncated stream; a corrupt one raises (``zlib.error`` or ISA-L's ``IsalError``).
    """
    decompressobj = decompressobj or _inflate()  # ISA-L's unless a decoder is given (e.g. zlib's)
    out, have = [], 0
    while have < need and data:
        d = decompressobj(wbits=31)
        chunk = d.decompress(data, need - have)
        out.append(chunk)
        have += len(chunk)
        if not d.eof:
            break
        data = d.unused_data
    return b"".join(out)


#: integer storage whose product with a float32 slope is exact in float64 (at most 16 bits)
_SMALL_INTS = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16)}


def _scaled(proxy, dtype: np.dtype, unscaled=None) -> np.ndarray:
    """``proxy`` read and scaled as nibabel's ``get_fdata(float64)`` then cast to ``dtype``, to the bit.

    Fast paths that give the same numbers: labels stored exactly as integers (slope 1, intercept 0) are
    cast directly; 8/16-bit integers times a float32 slope with intercept 0 are scaled in float32 (the
    product is exact in float64, so rounding it once to float32 is what the float32 multiply does).
    Anything else goes through nibabel's float64 scaling.  ``unscaled``: the stored integers, when the
    caller has them already (default ``proxy.get_unscaled()``).  Always a new, writeable array.
    """
    raw_dt = np.dtype(proxy.dtype)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if raw_dt.kind in "iu" and slope == 1.0 and inter == 0.0 and np.issubdtype(dtype, np.integer) \
            and np.can_cast(raw_dt, dtype, "safe"):
        return (proxy.get_unscaled() if unscaled is None else unscaled).astype(dtype)
    if (raw_dt in _SMALL_INTS or raw_dt.newbyteorder("=") in _SMALL_INTS) and dtype == np.float32 \
            and inter == 0.0 and np.isfinite(slope) and float(np.float32(slope)) == slope:
        out = (proxy.get_unscaled() if unscaled is None else unscaled).astype(np.float32)
        if slope != 1.0:
            out *= np.float32(slope)
        return out
    arr = np.asarray(np.asanyarray(proxy, dtype=np.float64))  # exactly what get_fdata(dtype=float64) computes
    if np.issubdtype(dtype, np.integer):
        return np.rint(arr).astype(dtype)
    return arr.astype(dtype)


def wrap_around_problem(stored: np.ndarray) -> str | None:
    """Why the signed integers ``stored`` of a *magnitude* image look wrapped around, or None.

    A magnitude is never negative.  Negative stored values in a file whose values also reach the upper
    half of the type's range (>= 2**14 for int16) are what an export gives when values above the type's
    maximum (32767) are cast to it: they wrap around to negative numbers (65535 -> -1).  A few small
    negative values in an image that stays far below the maximum are left to the fits (excluded there
    as non-physical and counted), since no wrap-around can produce them.
    """
    if stored.dtype.kind != "i" or stored.size == 0:
        return None
    lo = int(stored.min())
    if lo >= 0:
        return None
    hi, top = int(stored.max()), int(np.iinfo(stored.dtype).max)
    half = (top + 1) // 2
    if hi < half and lo > -half:
        return None
    n_neg = int(np.count_nonzero(stored < 0))
    return (f"{n_neg} voxel value(s) are stored as negative {stored.dtype.name} (down to {lo}) in a magnitude image "
            f"whose stored values reach {hi}: values above {top} wrapped around to negative numbers when the file "
            f"was written; export it again as uint16 or float32, or with a scale factor (scl_slope)")


def _known_facts(data: bytes, header: NiftiInfo | None):
    """``header``'s facts (as :func:`_header_facts_fast` gives them) if the gzip bytes ``data`` still start with
    the header it was read from (byte for byte), else None."""
    hb = getattr(header, "header_bytes", None)
    if not hb or _gunzip_head(data[:_GZ_IN], len(hb)) != hb:
        return None
    return (tuple(header.shape), tuple(header.voxel_size_mm), header.affine, np.dtype(header.dtype),
            float(header.slope), float(header.inter), int(header.vox_offset), hb)


def read_nifti(path, *, dtype=np.float32, expect_shape: tuple[int, ...] | None = None,
               magnitude: bool = False, header: NiftiInfo | None = None) -> np.ndarray:
    """Read a NIfTI image now, scaled (``int * slope + inter``), in design order ``([n,] z, y, x)``.

    Integer ``dtype`` (labels) returns the rounded scaled values.  Raises
    :class:`DataFileError` if the file is missing/corrupt or its design-order shape is not
    ``expect_shape``, and for a ``magnitude`` image whose stored signed integers wrapped around
    (:func:`wrap_around_problem`).

    The numbers are those of nibabel's ``get_fdata(dtype=float64)`` cast to ``dtype``.  A gzip file is
    read in one piece and decompressed in one call (ISA-L when ``isal`` is installed) up to the size
    its header declares; a plain single-file ``.nii.gz`` has its header parsed from those bytes as
    :func:`read_header` does (:func:`_header_facts_fast`: nibabel's header class, the same facts as
    ``nibabel.load``, which reads anything else), or taken from ``header`` (the :class:`NiftiInfo` that
    :func:`read_header` gave when the study was loaded) when the file's header bytes are still those it
    parsed; 16-bit scanner integers are scaled straight to float32 (no float64 copy of the scan) when that
    gives the same bits.
    """
    import io

    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy

    path = Path(path)
    dt = np.dtype(dtype)
    try:
        data = path.read_bytes() if path.name.endswith(".nii.gz") else None
        # a plain single-file .nii.gz: its header parsed from the bytes just read, as read_header does (the
        # same facts as nibabel's image and array proxy); anything else, or any doubt, through nibabel.load
        facts = known = None if data is None else _known_facts(data, header)
        if data is not None and facts is None:
            facts = _header_facts_fast(path, data)
        if facts is not None and len(facts[0]) in (3, 4):
            shape, _zooms, _affine, dt_file, slope, inter, offset, _hb = facts
            proxy = None  # made from the decompressed bytes below (NIfTI voxels are stored x fastest: "F")
        else:
            img = nib.load(str(path))
            shape, dt_file = tuple(img.shape), np.dtype(img.header.get_data_dtype())
            offset = int(getattr(img.dataobj, "offset", None) or img.header["vox_offset"])
            proxy = img.dataobj
            slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        nbytes = int(np.prod(shape, dtype=object)) * dt_file.itemsize
        # a header claiming more data than the file can hold must fail before anything allocates it (a header
        # read_header checked already is not checked again: a file cut since then inflates to less, not more)
        if known is None:
            _check_data_fits(path, shape, dt_file, offset, nbytes)
        if data is not None and (proxy is None or (type(proxy) is ArrayProxy and int(proxy.offset) == offset
                                                   and proxy.order == "F")):
            try:
                raw = gunzip_prefix(data, offset + nbytes)
            except Exception as err:  # zlib.error, IsalError, OSError
                raise DataFileError(f"{path}: cannot read NIfTI data (corrupt or truncated gzip data: "
                                    f"{err or type(err).__name__})") from None
            if len(raw) < offset + nbytes:
                raise DataFileError(f"{path}: cannot read NIfTI data (corrupt or truncated gzip data: the stream "
                                    f"ends after {len(raw)} of {offset + nbytes} bytes)")
            # the stored integers as a view of the decompressed bytes (what nibabel's reader makes of them)
            unscaled = np.ndarray(tuple(shape), dtype=dt_file, buffer=raw, offset=offset, order="F")
            proxy = ArrayProxy(io.BytesIO(raw), (tuple(shape), dt_file, offset, slope, inter), order="F", mmap=False)
        else:
            unscaled = None
        arr = _scaled(proxy, dt, unscaled)
        # a negative value in a magnitude image: negative stored integers (slope > 0, no intercept)
        negative = (bool(unscaled.size) and bool(unscaled.min() < 0)) if unscaled is not None \
            else bool((arr < 0).any())
        if magnitude and dt_file.kind == "i" and (float(proxy.inter) != 0.0 or float(proxy.slope) <= 0.0
                                                 or negative):
            problem = wrap_around_problem(np.asarray(unscaled if unscaled is not None else proxy.get_unscaled()))
            if problem:
                raise DataFileError(f"{path}: {problem}")
    except DataFileError:
        raise
    except FileNotFoundError:
        raise DataFileError(f"{path}: NIfTI file not found (deleted after load_study?)") from None
    except Exception as err:
        raise DataFileError(f"{path}: cannot read NIfTI data ({type(err).__name__}: {err})") from None
    arr = to_design_order(arr)
    if expect_shape is not None and tuple(arr.shape) != tuple(expect_shape):
        raise DataFileError(f"{path}: image has shape {arr.shape} (n, z, y, x) but {tuple(expect_shape)} "
                            "was expected from its header when the study was loaded (file changed?)")
    return arr


def read_nifti_lazy(path, shape, dtype=np.float32, *, token: str | None = None, magnitude: bool = False,
                    header: NiftiInfo | None = None):
    """A Dask array of a NIfTI image in design order, read with nibabel only on compute.

    Parameters
    ----------
    path : str or Path
    shape : tuple of int
        Expected design-order shape ``([n,] z, y, x)`` (from :func:`read_header`).
    dtype : numpy dtype
        Output dtype (float32 for signal, int16 for labels).
    token : str, optional
        Content token (e.g. the file's sha256) making the Dask key content-addressed.
    magnitude : bool
        A magnitude image: stored integers that wrapped around are an error (:func:`read_nifti`).
    header : NiftiInfo, optional
        The file's header as :func:`read_header` read it: not parsed again while its bytes are unchanged.

    Returns
    -------
    dask.array.Array
        One chunk, shape ``shape``; computing it reads the file (errors then raise
        :class:`DataFileError`).
    """
    import dask
    from dask._task_spec import Task

    shape = tuple(int(s) for s in shape)
    name = "read-nifti-" + dask.base.tokenize(str(path), shape, str(np.dtype(dtype)), token, magnitude)
    key = (name + "-arr",) + (0,) * len(shape)
    read = Task(key, _read_one, str(path), np.dtype(dtype), shape, magnitude, header)
    return _one_chunk(name + "-arr", {key: read}, shape, dtype)


def _read_one(path, dtype, shape, magnitude, header):
    return read_nifti(path, dtype=dtype, expect_shape=shape, magnitude=magnitude, header=header)


def _one_chunk(name: str, dsk: dict, shape, dtype):
    """The one-chunk Dask array ``name`` of the graph ``dsk`` (its block key ``(name, 0, ...)``).  Written out
    directly: ``dask.delayed`` walked every argument of a read (a :class:`NiftiInfo`, field by field) looking for
    Dask collections, and ``from_delayed`` added two graph layers per file."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=tuple((int(n),) for n in shape), dtype=np.dtype(dtype))


def check_same_grid(a: NiftiInfo, b: NiftiInfo, *, what: str, other: str, tol_mm: float = 1e-3) -> None:
    """``a`` and ``b`` share the voxel grid: same matrix and the same affine within ``tol_mm``.

    A label map with the scan's shape but a mirrored, flipped or shifted affine would put every region
    on the wrong tissue; it is refused.
    """
    if tuple(a.shape[:3]) != tuple(b.shape[:3]):
        raise DataFileError(f"{what} has matrix {a.shape[:3]} but {other} has {b.shape[:3]} (x, y, z): not the "
                            f"same grid")
    diff = float(np.max(np.abs(np.asarray(a.affine, float) - np.asarray(b.affine, float))))
    if not diff <= tol_mm:
        raise DataFileError(f"{what} has the matrix of {other} but a different affine (largest difference "
                            f"{diff:.4g} mm): mirrored, flipped or shifted? It must be on the scan's grid")
