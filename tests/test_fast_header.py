"""The fast NIfTI header path of ``read_header`` and the realpath-free ``resolve_path`` (issue 17).

``read_header`` parses the first bytes of a single-file ``.nii``/``.nii.gz`` with nibabel's header class
instead of ``nibabel.load``; ``resolve_path`` checks for symlinks below the manifest folder with one
``lstat`` per component instead of two ``realpath`` walks.  The oracle for both is the code they replace:
``read_header`` with the fast path switched off (``nibabel.load``), and the old two-realpath check.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from studylib.errors import DataFileError, ManifestError
from studylib.io import nifti
from studylib.io.nifti import read_header, write_nifti
from studylib.manifest import _check_rel, resolve_path

_FUNCTION_SCOPED = [HealthCheck.function_scoped_fixture, HealthCheck.large_base_example]


# ------------------------------------------------------------------------------ helpers

def _outcome(path, *, fast: bool):
    """``read_header(path)`` as comparable plain values, or ``("error", message)``; ``fast=False``: nibabel.load."""
    saved = nifti._header_facts_fast
    if not fast:
        nifti._header_facts_fast = lambda p: None
    try:
        info = read_header(path)
    except DataFileError as err:
        return ("error", str(err))
    finally:
        nifti._header_facts_fast = saved
    return (info.path, info.shape, info.voxel_size_mm, info.affine.tobytes(), info.affine.shape, info.dtype,
            struct.pack("<d", info.slope), struct.pack("<d", info.inter), info.vox_offset, info.nbytes)


def _nifti_bytes(klass, shape, dtype, *, zooms, qform, qcode, sform, scode, slope, inter, big_endian, vox_pad,
                 vox_zero, data_seed=0):
    """A single-file NIfTI-1/2 image built with nibabel's header class, fields set as given."""
    hdr = klass()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms(zooms)
    hdr.set_qform(qform, code=qcode)
    hdr.set_sform(sform, code=scode)
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    if big_endian:
        hdr = hdr.as_byteswapped(">")
    offset = klass.single_vox_offset + vox_pad
    hdr["vox_offset"] = 0 if vox_zero else offset
    rng = np.random.default_rng(data_seed)
    data = rng.integers(0, 200, size=shape).astype(hdr.get_data_dtype())
    return hdr.binaryblock + b"\0" * (offset - klass.sizeof_hdr) + data.tobytes(order="F")


_DTYPES = st.sampled_from([np.int16, np.float32, np.uint8])
_SHAPES = st.one_of(st.tuples(*[st.integers(1, 6)] * 3), st.tuples(*[st.integers(1, 5)] * 4))
_SLOPES = st.sampled_from([1.0, 0.0, np.nan, np.inf, 0.5, -2.0, 1e-3, 37.25])
_INTERS = st.sampled_from([0.0, np.nan, 3.5, -10.0, np.inf])
_CODES = st.integers(0, 4)


@st.composite
def _affines(draw):
    """Rotation x (diagonally dominant scale-and-shear, so never singular), plus a translation."""
    ax, ay, az = draw(st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    diag = np.array(draw(st.lists(st.floats(0.5, 3.0), min_size=3, max_size=3)))
    signs = np.array(draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=3, max_size=3)))
    shear = np.array(draw(st.lists(st.floats(-0.2, 0.2), min_size=9, max_size=9))).reshape(3, 3)
    np.fill_diagonal(shear, 0.0)
    aff = np.eye(4)
    aff[:3, :3] = rot @ (np.diag(diag * signs) + shear)
    aff[:3, 3] = draw(st.lists(st.floats(-100, 100, allow_nan=False), min_size=3, max_size=3))
    return aff


@st.composite
def _images(draw):
    shape = draw(_SHAPES)
    return dict(
        klass=draw(st.sampled_from([nib.Nifti1Header, nib.Nifti2Header])),
        shape=shape,
        dtype=draw(_DTYPES),
        zooms=tuple(draw(st.lists(st.floats(0.01, 5.0), min_size=len(shape), max_size=len(shape)))),
        qform=draw(_affines()), qcode=draw(_CODES), sform=draw(_affines()), scode=draw(_CODES),
        slope=draw(_SLOPES), inter=draw(_INTERS), big_endian=draw(st.booleans()),
        vox_pad=draw(st.sampled_from([0, 16])), vox_zero=draw(st.booleans()),
    )


# ------------------------------------------------------------------------------ read_header

@settings(max_examples=300, deadline=None, suppress_health_check=_FUNCTION_SCOPED)
@given(image=_images(), suffix=st.sampled_from([".nii", ".nii.gz"]))
def test_fast_header_equals_nibabel_load(tmp_path, image, suffix):
    """Random NIfTI-1/2 files: the fast path takes every file nibabel reads, with exactly nibabel's facts.

    sform/qform codes 0-4 with independent random affines (the best affine is sform if coded, else qform,
    else the base affine), zero/NaN/Inf slopes (no scaling: 1, 0), NaN/Inf intercepts (nibabel refuses them
    next to a valid slope), big-endian headers, vox_offset 0 (nibabel: 352 or 544) or past the header.
    """
    raw = _nifti_bytes(**image)
    p = tmp_path / f"img{suffix}"
    p.write_bytes(gzip.compress(raw, mtime=0) if suffix == ".nii.gz" else raw)
    reference = _outcome(p, fast=False)
    assert _outcome(p, fast=True) == reference
    facts = nifti._header_facts_fast(p)
    event("nibabel refuses" if reference[0] == "error" else "read")
    if reference[0] == "error":  # nibabel refuses it (e.g. a NaN intercept with a valid slope)
        assert facts is None or "claims" in reference[1]  # refusals after the header: same tuple, same check
    else:
        assert facts is not None, "the fast path must take every plain single-file NIfTI nibabel reads"
        img = nib.load(p)
        np.testing.assert_array_equal(facts[2], img.affine)
        assert facts[4] == float(img.dataobj.slope) and facts[5] == float(img.dataobj.inter)
        assert facts[6] == img.dataobj.offset


@settings(max_examples=200, deadline=None, suppress_health_check=_FUNCTION_SCOPED)
@given(image=_images(), suffix=st.sampled_from([".nii", ".nii.gz"]), data=st.data())
def test_damaged_files_give_the_same_result_or_error_message(tmp_path, image, suffix, data):
    """Truncated files, flipped bytes (header or gzip stream): the same facts or the same error message."""
    raw = _nifti_bytes(**image)
    blob = bytearray(gzip.compress(raw, mtime=0) if suffix == ".nii.gz" else raw)
    how = data.draw(st.sampled_from(["truncate", "flip"]))
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:
        i = data.draw(st.integers(0, min(len(blob), 700) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    p = tmp_path / f"img{suffix}"
    p.write_bytes(bytes(blob))
    reference = _outcome(p, fast=False)
    event(f"{how}: " + ("refused" if reference[0] == "error" else "read") + ", fast path "
          + ("declined" if nifti._header_facts_fast(p) is None else "parsed"))
    assert _outcome(p, fast=True) == reference


def _scanner_like(tmp_path: Path, name: str, shape=(64, 64, 8, 6)) -> Path:
    rng = np.random.default_rng(3)
    aff = np.array([[0.2, 0.01, 0, -6.4], [0, 0.19, 0.02, -6.0], [0, 0, 0.5, -2.0], [0, 0, 0, 1]])
    return write_nifti(tmp_path / name, rng.gamma(3.0, 100.0, size=shape), aff)


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_a_normal_file_never_calls_nibabel_load(tmp_path, monkeypatch, name):
    p = _scanner_like(tmp_path, name)
    reference = _outcome(p, fast=False)

    def no_load(*args, **kwargs):
        raise AssertionError("nibabel.load called: the fast header path was not taken")

    monkeypatch.setattr(nib, "load", no_load)
    assert _outcome(p, fast=True) == reference
    info = read_header(p)
    assert info.shape == (64, 64, 8, 6) and info.dtype == "int16" and info.slope > 0


def test_large_gzip_files_inflate_only_a_prefix(tmp_path):
    """A stream longer than 16 kB (noise: ~1:1) and one that compresses 1000:1 (zeros) both take the fast path."""
    noise = _scanner_like(tmp_path, "noise.nii.gz", shape=(96, 96, 12, 4))
    zeros = write_nifti(tmp_path / "zeros.nii.gz", np.zeros((128, 128, 40)), np.eye(4))
    for p in (noise, zeros):
        assert p.stat().st_size > nifti._GZ_IN or p is zeros
        assert nifti._header_facts_fast(p) is not None
        assert _outcome(p, fast=True) == _outcome(p, fast=False)


def test_corrupt_gzip_data_just_after_the_header_fails_as_before(tmp_path):
    """Damage within the first 8 kB of the stream: nibabel's gzip reader sees it; so does the fast path."""
    p = _scanner_like(tmp_path, "scan.nii.gz")
    blob = bytearray(p.read_bytes())
    for i in range(60, 3000, 97):  # deflate data after the gzip header
        damaged = bytearray(blob)
        damaged[i] ^= 0x55
        p.write_bytes(bytes(damaged))
        assert _outcome(p, fast=True) == _outcome(p, fast=False)


def test_nan_and_zero_scaling_as_nibabel(tmp_path):
    """What the fast path must copy: NaN or 0 slope -> (1, 0) whatever the intercept; NaN intercept with a
    valid slope -> nibabel refuses the file (HeaderDataError), so read_header does too."""
    base = dict(klass=nib.Nifti1Header, shape=(3, 4, 5), dtype=np.int16, zooms=(1.0, 1.0, 1.0), qform=np.eye(4),
                qcode=1, sform=np.eye(4), scode=1, big_endian=False, vox_pad=0, vox_zero=False)
    for slope, inter, want in [(np.nan, np.nan, (1.0, 0.0)), (0.0, 5.0, (1.0, 0.0)), (2.5, -1.0, (2.5, -1.0)),
                               (2.5, np.nan, None)]:
        p = tmp_path / "s.nii.gz"
        p.write_bytes(gzip.compress(_nifti_bytes(**base, slope=slope, inter=inter), mtime=0))
        if want is None:
            with pytest.raises(DataFileError, match="Valid slope but invalid intercept"):
                read_header(p)
            assert nifti._header_facts_fast(p) is None
        else:
            info = read_header(p)
            assert (info.slope, info.inter) == want
            img = nib.load(p)
            assert (float(img.dataobj.slope), float(img.dataobj.inter)) == want


def _with_extension(tmp_path) -> Path:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment\0\0\0\0\0\0\0"))
    p = tmp_path / "ext.nii.gz"
    nib.save(img, p)
    return p


def _pair(tmp_path) -> Path:
    p = tmp_path / "pair.img"
    nib.save(nib.Nifti1Pair(np.zeros((4, 4, 4), np.int16), np.eye(4)), p)
    return p


def _cifti_intent(tmp_path) -> Path:
    img = nib.Nifti2Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_intent(3000)
    p = tmp_path / "cifti.nii"
    nib.save(img, p)
    return p


def _pair_magic(tmp_path) -> Path:
    raw = bytearray(_scanner_like(tmp_path, "x.nii").read_bytes())
    raw[344:348] = b"ni1\0"
    p = tmp_path / "magic.nii"
    p.write_bytes(bytes(raw))
    return p


def _upper_suffix(tmp_path) -> Path:
    p = _scanner_like(tmp_path, "x.nii.gz")
    return p.rename(tmp_path / "SCAN.NII.GZ")


@pytest.mark.parametrize("make", [_with_extension, _pair, _cifti_intent, _pair_magic, _upper_suffix])
def test_unusual_files_go_to_nibabel(tmp_path, make):
    """Extensions, .hdr/.img pairs, a CIFTI intent, pair magic in a .nii, another suffix: nibabel decides."""
    p = make(tmp_path)
    assert nifti._header_facts_fast(p) is None
    assert _outcome(p, fast=True) == _outcome(p, fast=False)


@pytest.mark.parametrize("content", [None, b"", b"\x1f\x8b\x08\x00garbage", gzip.compress(b"\0" * 400, mtime=0),
                                     b"\0" * 400, gzip.compress(b"x" * 100_000, mtime=0)])
def test_bad_files_keep_their_error_messages(tmp_path, content):
    for name in ("bad.nii.gz", "bad.nii"):
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        out = _outcome(p, fast=True)
        assert out[0] == "error" and str(p) in out[1]
        assert out == _outcome(p, fast=False)
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ resolve_path

def _resolve_reference(manifest_dir, rel: str) -> Path:
    """The check ``resolve_path`` had before: realpath of the folder and of the target, every call."""
    p = _check_rel(rel)
    base = Path(manifest_dir)
    target = base.joinpath(*p.parts)
    real_base = os.path.realpath(base)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_base, real_target]) != real_base:
        raise ManifestError(f"path {rel!r} escapes the manifest folder (resolves to {real_target})")
    return target


def _tree(tmp_path: Path) -> Path:
    """A manifest folder reached through a symlink, with links inside, outside, up, dangling and looping."""
    real = tmp_path / "real"
    (real / "raw" / "a").mkdir(parents=True)
    (real / "raw" / "a" / "f.nii.gz").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.nii.gz").write_bytes(b"y")
    (real / "raw" / "in").symlink_to(real / "raw" / "a", target_is_directory=True)
    (real / "raw" / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (real / "raw" / "up").symlink_to("..", target_is_directory=True)
    (real / "raw" / "upup").symlink_to("../..", target_is_directory=True)
    (real / "raw" / "dangling").symlink_to(tmp_path / "nowhere")
    (real / "raw" / "loop").symlink_to(real / "raw" / "loop")
    (real / "raw" / "a" / "file_link.nii.gz").symlink_to(real / "raw" / "a" / "f.nii.gz")
    (real / "raw" / "a" / "out_file.nii.gz").symlink_to(tmp_path / "outside" / "f.nii.gz")
    (tmp_path / "study").symlink_to(real, target_is_directory=True)
    return tmp_path / "study"


_PARTS = st.sampled_from(["raw", "a", "in", "out", "up", "upup", "dangling", "loop", "f.nii.gz", "file_link.nii.gz",
                          "out_file.nii.gz", "missing", "."])


def _decided_both_ways(folder, rel: str, **kw) -> tuple[tuple, tuple]:
    """(resolve_path's outcome, the realpath reference's outcome): ``("ok", path)`` or ``("error", message)``."""
    out = []
    for resolve in (lambda: resolve_path(folder, rel, **kw), lambda: _resolve_reference(folder, rel)):
        try:
            out.append(("ok", resolve()))
        except ManifestError as err:
            out.append(("error", str(err)))
    return out[0], out[1]


@settings(max_examples=300, deadline=None, suppress_health_check=_FUNCTION_SCOPED)
@given(parts=st.lists(_PARTS, min_size=1, max_size=5), via_link=st.booleans())
def test_resolve_path_decides_as_the_realpath_check(tmp_path, parts, via_link):
    base = tmp_path / "study"
    if not base.exists():
        _tree(tmp_path)
    folder = base if via_link else tmp_path / "real"
    got, want = _decided_both_ways(folder, "/".join(parts))
    assert got == want


@settings(max_examples=150, deadline=None, suppress_health_check=_FUNCTION_SCOPED)
@given(rows=st.lists(st.lists(_PARTS, min_size=1, max_size=5), min_size=1, max_size=12), via_link=st.booleans())
def test_resolve_path_with_shared_plain_dirs_decides_each_row_as_the_realpath_check(tmp_path, rows, via_link):
    """A manifest's rows resolved in one pass sharing ``plain_dirs`` (as ``load_study`` does): every row decided as
    the reference decides it alone, whatever the rows before it put in the set."""
    base = tmp_path / "study"
    if not base.exists():
        _tree(tmp_path)
    folder = base if via_link else tmp_path / "real"
    plain: set = set()
    for parts in rows:
        got, want = _decided_both_ways(folder, "/".join(parts), plain_dirs=plain)
        assert got == want
    assert all(not os.path.islink(d) and os.path.isdir(d) for d in plain)


def test_resolve_path_skips_realpath_without_symlinks_and_sees_a_changed_link(tmp_path, monkeypatch):
    base = _tree(tmp_path)
    calls = []
    real_realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: calls.append(p) or real_realpath(p, *a, **k))
    assert resolve_path(base, "raw/a/f.nii.gz") == base / "raw" / "a" / "f.nii.gz"
    assert resolve_path(base, "raw/a/not_yet/there.nii.gz").name == "there.nii.gz"
    assert calls == []  # the folder itself being a symlink does not matter
    assert resolve_path(base, "raw/in/f.nii.gz").read_bytes() == b"x"
    assert len(calls) == 2
    # nothing cached: a link re-pointed out of the folder is refused on the next call
    link = tmp_path / "real" / "raw" / "in"
    link.unlink()
    link.symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(ManifestError, match="escapes the manifest folder"):
        resolve_path(base, "raw/in/f.nii.gz")
    # and a folder swapped for a link below the manifest folder too
    (tmp_path / "real" / "raw" / "a" / "file_link.nii.gz").unlink()
    (tmp_path / "real" / "raw" / "a" / "out_file.nii.gz").unlink()
    (tmp_path / "real" / "raw" / "a" / "f.nii.gz").unlink()
    (tmp_path / "real" / "raw" / "a").rmdir()
    (tmp_path / "real" / "raw" / "a").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(ManifestError, match="escapes the manifest folder"):
        resolve_path(base, "raw/a/f.nii.gz")


def test_resolve_path_parts_are_those_of_the_posix_path():
    """The lstat walk uses the same components as the returned path ('.' and '//' collapse, no '..')."""
    assert PurePosixPath("raw//a/./f.nii.gz").parts == ("raw", "a", "f.nii.gz")
    assert resolve_path("/nonexistent/base", "raw//a/./f.nii.gz") == Path("/nonexistent/base/raw/a/f.nii.gz")


# ----------------------------------------------------------------- the one-read gzip check of verify_manifest

def _python_gunzip(blob: bytes) -> tuple[int | None, bool]:
    """The oracle: what ``gzip.open(...).read()`` (the check verify_manifest made before) says."""
    try:
        with gzip.open(io.BytesIO(blob), "rb") as fh:
            return len(fh.read()), True
    except (OSError, EOFError, gzip.zlib.error):
        return None, False


@st.composite
def _gzip_blobs(draw):
    members = draw(st.lists(st.binary(max_size=3000).map(lambda b: b * draw(st.integers(1, 40))), min_size=1,
                            max_size=3))
    parts = [gzip.compress(m, compresslevel=draw(st.integers(1, 9)), mtime=0) for m in members]
    flg = {sum(map(len, parts[:k])) + 3 for k in range(len(parts))}  # each member's FLG byte
    blob = b"".join(parts) + b"\0" * draw(st.integers(0, 3))  # padding gzip.open allows
    damage = draw(st.sampled_from(["none", "truncate", "flip", "append"]))
    if damage == "truncate":
        blob = blob[:draw(st.integers(0, len(blob) - 1))]
    elif damage == "flip":
        i = draw(st.integers(0, len(blob) - 1))
        # not FLG's reserved bits 5-7, which gzip.open ignores and RFC 1952 2.3.1 says must be an error
        # (ISA-L ignores them too, zlib refuses them: test_a_reserved_gzip_flag_is_read_as_the_loader_reads_it)
        bit = draw(st.integers(0, 4 if i in flg else 7))
        blob = blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]
    elif damage == "append":
        blob += draw(st.binary(min_size=1, max_size=20))
    event(damage)
    return blob


@settings(max_examples=400, deadline=None)
@given(_gzip_blobs(), st.integers(1, 5000), st.integers(1, 1 << 12))
def test_gunzip_counter_decides_as_python_gzip(blob, block, max_in):
    """Fed in blocks of any size, inflating any number of bytes at a time, the counter gives gzip.open's length,
    and a problem exactly when gzip.open fails (truncated, flipped bit, trailing bytes, CRC, ISIZE)."""
    want_size, want_ok = _python_gunzip(blob)
    for decoder in (None, gzip.zlib.decompressobj):  # ISA-L (the default) and zlib
        c = nifti.GunzipCounter(decompressobj=decoder, max_in=max_in)
        for i in range(0, len(blob), block):
            c.feed(blob[i:i + block])
        c.finish()
        assert (c.problem is None) == want_ok, (c.problem, want_ok)
        if want_ok:
            assert c.size == want_size
        else:
            assert c.problem.startswith("corrupt gzip data (")


def test_a_reserved_gzip_flag_is_read_as_the_loader_reads_it():
    """FLG's reserved bits (RFC 1952 2.3.1): gzip.open and ISA-L (the default decoder, the loader's too:
    :func:`studylib.io.nifti.gunzip_prefix`) ignore them, so verify passes what the loader reads; zlib's
    decoder (the fallback without ``isal``) refuses them."""
    blob = bytearray(gzip.compress(b"abc" * 100, mtime=0))
    blob[3] |= 0x20
    assert len(gzip.decompress(bytes(blob))) == len(nifti.gunzip_prefix(bytes(blob), 10 ** 6)) == 300
    isal = nifti.GunzipCounter()
    isal.feed(bytes(blob))
    assert isal.finish().problem is None and isal.size == 300
    zl = nifti.GunzipCounter(decompressobj=gzip.zlib.decompressobj)
    zl.feed(bytes(blob))
    assert zl.finish().problem == "corrupt gzip data (Error -3 while decompressing data: unknown header flags set)"
