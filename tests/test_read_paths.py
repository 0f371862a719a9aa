"""``read_nifti``'s fast paths (whole-file gunzip with ISA-L or zlib, int16 scaled straight to float32) give
exactly the numbers of nibabel's own reader: ``get_fdata(float64)`` cast to the requested dtype."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from studylib.errors import DataFileError
from studylib.io import nifti
from studylib.io.nifti import read_nifti, to_design_order, write_nifti


def _reference(path, dtype):
    arr = to_design_order(nib.load(str(path)).get_fdata(dtype=np.float64))
    return np.rint(arr).astype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else arr.astype(dtype)


def _same(path, dtype=np.float32):
    got = read_nifti(path, dtype=dtype)
    ref = _reference(path, dtype)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert got.tobytes() == ref.tobytes()
    assert got.flags.writeable and got.flags.c_contiguous
    return got


def _nib_write(path, data, dtype, slope=1.0, inter=0.0, endian="<"):
    hdr = nib.Nifti1Header(endianness=endian)
    hdr.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), np.diag([0.1, 0.1, 0.5, 1.0]), header=hdr)
    img.header.set_slope_inter(slope, inter)
    raw = img.to_bytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)
    return path


RNG = np.random.default_rng(11)
SIGNAL = 300.0 + 700.0 * RNG.random((9, 7, 4, 5))


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_scaled_int16_float32(tmp_path, name):
    _same(write_nifti(tmp_path / name, SIGNAL, np.eye(4)))


def test_intercept_goes_through_nibabel_scaling(tmp_path):
    p = write_nifti(tmp_path / "b.nii.gz", SIGNAL, np.eye(4), scaling=(0.037, 12.5))
    _same(p)
    _same(p, np.float64)


@pytest.mark.parametrize("dtype, slope, inter, endian", [
    (np.uint8, 3.7, 0.0, "<"), (np.int16, 0.0123, 0.0, ">"), (np.uint16, 0.5, 0.0, "<"),
    (np.int32, 0.0123, 0.0, "<"), (np.float32, 1.0, 0.0, "<"), (np.int16, 1.0, -3.0, "<"),
    (np.int16, 0.1, 0.0, "<"),  # 0.1 is not a float32 number: the float64 path
])
def test_stored_types_slopes_and_byte_orders(tmp_path, dtype, slope, inter, endian):
    data = RNG.integers(0, 200, (6, 5, 3, 4)) if np.dtype(dtype).kind in "iu" else SIGNAL[:6, :5, :3]
    p = _nib_write(tmp_path / "c.nii.gz", data, dtype, slope, inter, endian)
    _same(p)
    _same(p, np.float64)


def test_labels_read_exactly(tmp_path):
    lab = RNG.integers(0, 7, (8, 6, 3))
    p = write_nifti(tmp_path / "roi.nii.gz", lab, np.eye(4))
    got = _same(p, np.int16)
    np.testing.assert_array_equal(got, to_design_order(lab))


def test_multi_member_gzip_reads_as_one_stream(tmp_path):
    p = write_nifti(tmp_path / "d.nii.gz", SIGNAL, np.eye(4))
    raw = gzip.decompress(p.read_bytes())
    cut = len(raw) // 3
    p.write_bytes(gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0))
    _same(p)


def test_without_isal_zlib_gives_the_same(tmp_path, monkeypatch):
    p = write_nifti(tmp_path / "e.nii.gz", SIGNAL, np.eye(4))
    fast = read_nifti(p)
    monkeypatch.setattr(nifti, "_inflate", lambda: zlib.decompressobj)
    assert read_nifti(p).tobytes() == fast.tobytes()


def test_gunzip_prefix_stops_at_what_the_header_declares():
    blob = gzip.compress(b"\1" * 1_000_000, mtime=0)
    assert nifti.gunzip_prefix(blob, 1000) == b"\1" * 1000
    assert nifti.gunzip_prefix(blob[: len(blob) // 2], 1_000_000) != b"\1" * 1_000_000  # truncated: short


def test_truncated_voxel_data_is_a_data_file_error(tmp_path):
    p = write_nifti(tmp_path / "f.nii.gz", SIGNAL, np.eye(4))
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * 0.6)])
    with pytest.raises(DataFileError, match="cannot read NIfTI data.*truncated") as ei:
        read_nifti(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("dtype, slope, inter, endian", [
    (np.int16, 0.0123, 0.0, ">"), (np.uint16, 0.5, 0.0, "<"), (np.float32, 1.0, 0.0, "<"), (np.int16, 1.0, -3.0, "<"),
    (np.uint8, 3.7, 0.0, "<"),
])
def test_a_plain_gzip_file_is_read_without_nibabel_load(tmp_path, monkeypatch, dtype, slope, inter, endian):
    """The header of a single-file .nii.gz comes from the bytes read for the voxels (read_header's parser), not
    from a second open by ``nibabel.load``; the numbers stay nibabel's to the bit."""
    data = RNG.integers(0, 200, (6, 5, 3, 4)) if np.dtype(dtype).kind in "iu" else SIGNAL[:6, :5, :3]
    p = _nib_write(tmp_path / "g.nii.gz", data, dtype, slope, inter, endian)
    refs = {dt: _reference(p, dt) for dt in (np.float32, np.float64)}

    def no_load(*args, **kwargs):
        raise AssertionError("nibabel.load called for a plain .nii.gz")

    monkeypatch.setattr(nib, "load", no_load)
    for dt, ref in refs.items():
        assert read_nifti(p, dtype=dt).tobytes() == ref.tobytes()


def test_header_extensions_go_through_nibabel_load(tmp_path, monkeypatch):
    """A file the header parser does not cover (here: a header extension) is read by nibabel.load, same numbers."""
    img = nib.Nifti1Image(RNG.integers(0, 900, (6, 5, 3, 4)).astype(np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"studylib test extension"))
    img.header.set_slope_inter(0.25, 0.0)
    p = tmp_path / "ext.nii.gz"
    p.write_bytes(gzip.compress(img.to_bytes(), mtime=0))
    ref = _reference(p, np.float32)
    calls = []
    real = nib.load
    monkeypatch.setattr(nib, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert read_nifti(p).tobytes() == ref.tobytes()
    assert calls, "a file with header extensions must go through nibabel.load"


def test_negative_stored_values_of_a_magnitude_image_are_refused_on_the_fast_path(tmp_path):
    """Wrap-around (int16 magnitude stored negative) is seen from the stored integers without a float pass."""
    raw = RNG.integers(20000, 32000, (6, 5, 3, 4)).astype(np.int32)
    raw[0, 0, 0, 0] = 40000 - 65536  # a value past 32767 wrapped into int16
    p = _nib_write(tmp_path / "wrap.nii.gz", raw.astype(np.int16), np.int16, 1.0, 0.0)
    with pytest.raises(DataFileError, match="negative"):
        read_nifti(p, magnitude=True)
    assert read_nifti(p).min() < 0  # not a magnitude image: read as stored


def test_header_read_at_load_time_is_reused_only_while_the_file_still_has_it(tmp_path, monkeypatch):
    """``read_nifti(header=read_header(p))`` skips parsing the header while the file's header bytes are those
    read_header saw; a file rewritten since (new scaling) is parsed again: its own numbers, never stale facts."""
    p = write_nifti(tmp_path / "h.nii.gz", SIGNAL, np.eye(4))
    info = nifti.read_header(p)
    assert info.header_bytes and len(info.header_bytes) == 352
    ref = _reference(p, np.float32)

    def no_parse(*args, **kwargs):
        raise AssertionError("header parsed again although it was given and unchanged")

    monkeypatch.setattr(nifti, "_header_facts_fast", no_parse)
    assert read_nifti(p, header=info).tobytes() == ref.tobytes()
    monkeypatch.undo()
    write_nifti(p, 3.0 * SIGNAL, np.eye(4))  # same shape, another scl_slope: the old facts would scale it wrongly
    fresh = read_nifti(p, header=info)
    assert fresh.tobytes() == _reference(p, np.float32).tobytes()
    np.testing.assert_allclose(fresh, 3.0 * ref, rtol=2e-3)
