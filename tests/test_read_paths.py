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
