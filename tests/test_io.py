"""NIfTI writer/reader, sidecars, lazy load_study, load_histology, DICOM and ParaVision converters."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import TINY_OFFSETS_PPM, TINY_SHAPE_XYZ, TINY_TE_MS
from studylib.errors import DataFileError, ManifestError, StudyError
from studylib.io import (acquisition_axis, load_histology, load_study, read_header, read_nifti_lazy, read_sidecar,
                         write_nifti)
from studylib.io.bruker import check_paravision_scan, paravision_scan_to_nifti
from studylib.io.dicom import dicom_series_to_nifti
from studylib.cli import main as cli_main
from studylib.manifest import manifest_sha256, read_manifest, sha256_file, verify_manifest

NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def _rehash(manifest: Path, rel: str) -> None:
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    h = rows[0]
    for r in rows[1:]:
        if r[h.index("path")] == rel:
            r[h.index("sha256")] = sha256_file(manifest.parent / rel)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    manifest.write_text(buf.getvalue(), encoding="utf-8")


def _nib_design(path) -> np.ndarray:
    """Independent reference: nibabel's get_fdata transposed (x, y, z[, n]) -> ([n,] z, y, x)."""
    a = nib.load(str(path)).get_fdata()
    return a.transpose(3, 2, 1, 0) if a.ndim == 4 else a.transpose(2, 1, 0)


# --------------------------------------------------------------------------- write_nifti / read_header

def test_write_nifti_stores_scaled_integers_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    data = 1000 * rng.random((6, 5, 4, 3)) + 0.5
    aff = np.diag([0.1, 0.12, 0.5, 1.0])
    aff[:3, 3] = [-1, 2, 3]
    side = {"EchoTime": [0.002, 0.004, 0.006], "RepetitionTime": 1.2, "Zeta": 1, "Alpha": "x"}
    p1 = write_nifti(tmp_path / "a" / "img.nii.gz", data, aff, sidecar=side)
    p2 = write_nifti(tmp_path / "b" / "img.nii.gz", data, aff, sidecar=side)
    assert p1.read_bytes() == p2.read_bytes()  # byte-identical on every run
    assert p1.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    img = nib.load(str(p1))
    assert img.get_data_dtype() == np.int16
    slope = float(img.dataobj.slope)
    assert slope == pytest.approx(data.max() / 32000, rel=1e-6) and float(img.dataobj.inter) == 0.0
    assert np.max(np.abs(img.get_fdata() - data)) <= slope / 2 + 1e-9
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    text = (tmp_path / "a" / "img.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and list(json.loads(text)) == sorted(side)
    info = read_header(p1)
    assert info.shape == (6, 5, 4, 3) and info.design_shape == (3, 4, 5, 6) and info.n_volumes == 3
    np.testing.assert_allclose(info.voxel_size_mm, (0.1, 0.12, 0.5), rtol=1e-6)
    assert info.slope == pytest.approx(slope) and info.dtype == "int16"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["img.json", "img.nii.gz"]  # no temp files


def test_write_nifti_labels_exact_and_design_order(tmp_path):
    labels = np.zeros((3, 4, 5))  # design order (z, y, x)
    labels[1, 2, 3] = 7
    labels[0, 0, 0] = 1
    p = write_nifti(tmp_path / "roi.nii.gz", labels, np.eye(4), design_order=True)
    img = nib.load(str(p))
    assert img.shape == (5, 4, 3) and float(img.dataobj.slope) == 1.0
    np.testing.assert_array_equal(_nib_design(p), labels)
    u = write_nifti(tmp_path / "u.nii", 60000.0 * np.ones((2, 2, 2)), np.eye(4), dtype=np.uint16)
    assert nib.load(str(u)).get_data_dtype() == np.uint16 and float(nib.load(str(u)).dataobj.slope) == 1.0
    np.testing.assert_array_equal(nib.load(str(u)).get_fdata(), 60000.0)


@pytest.mark.parametrize("kwargs, what", [
    (dict(data_float=np.full((2, 2, 2), np.nan)), "NaN"),
    (dict(data_float=-np.ones((2, 2, 2)), dtype=np.uint16), "negative"),
    (dict(data_float=np.ones((2, 2))), "3-D"),
    (dict(data_float=np.ones((2, 2, 2)), dtype=np.float32), "int16 or uint16"),
    (dict(data_float=np.ones((2, 2, 2)), affine=np.zeros((4, 4))), "singular"),
    (dict(data_float=np.ones((2, 2, 2)), affine=np.eye(3)), "4x4"),
    (dict(data_float=np.ones((2, 2, 2)), sidecar={"EchoTime": "abc"}), "EchoTime"),
    (dict(data_float=np.array([["a"]])), "real numbers"),
])
def test_write_nifti_bad_input(tmp_path, kwargs, what):
    kw = dict(affine=np.eye(4))
    kw.update(kwargs)
    with pytest.raises(DataFileError, match=what) as err:
        write_nifti(tmp_path / "x.nii.gz", kw.pop("data_float"), kw.pop("affine"), **kw)
    assert "x." in str(err.value)
    assert not (tmp_path / "x.nii.gz").exists()


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=4),
                  elements=st.floats(-1e4, 1e4, allow_nan=False)))
def test_write_nifti_quantisation_error_is_at_most_half_a_step(data):
    with tempfile.TemporaryDirectory() as d:
        p = write_nifti(Path(d) / "q.nii.gz", data, np.eye(4))
        img = nib.load(str(p))
        back = img.get_fdata()
        slope = float(img.dataobj.slope)
        assert back.shape == data.shape
        assert np.max(np.abs(back - data), initial=0) <= slope / 2 * (1 + 1e-6) + 1e-12
        assert read_header(p).design_shape == data.shape[::-1]


def test_read_nifti_lazy_reads_on_compute_and_checks_shape(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    p = write_nifti(tmp_path / "a.nii.gz", data, np.eye(4))
    lazy = read_nifti_lazy(p, (5, 4, 3, 2), np.float32)
    assert lazy.shape == (5, 4, 3, 2) and lazy.dtype == np.float32 and lazy.npartitions == 1
    np.testing.assert_array_equal(lazy.compute(), data.transpose(3, 2, 1, 0))
    wrong = read_nifti_lazy(p, (5, 4, 3, 3), np.float32)  # nothing read yet: no error
    with pytest.raises(DataFileError, match="file changed"):
        wrong.compute()


@pytest.mark.parametrize("content, what", [
    (None, "not found"),
    (b"\x1f\x8b\x08\x00garbage", "NIfTI"),
    (gzip.compress(b"\x00" * 400, mtime=0), "NIfTI"),
])
def test_read_header_bad_files(tmp_path, content, what):
    p = tmp_path / "bad.nii.gz"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataFileError, match=what) as err:
        read_header(p)
    assert str(p) in str(err.value)


# --------------------------------------------------------------------------- sidecars

def test_read_sidecar_and_acquisition_axes(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"EchoTime": [0.002, 0.004], "RepetitionTime": 1.2, "FlipAngle": 60,
                             "MagneticFieldStrength": 9.4, "Custom": {"a": 1}}), encoding="utf-8")
    sc = read_sidecar(p)
    assert sc["Custom"] == {"a": 1}
    dim, vals, attrs = acquisition_axis("MEGRE", sc, n_volumes=2)
    assert dim == "te" and vals.tolist() == [2.0, 4.0] and attrs["units"] == "ms"
    assert acquisition_axis("VFA", {"FlipAngle": [2, 10, 20], "RepetitionTime": 0.015})[1].tolist() == [2, 10, 20]
    assert acquisition_axis("IR", {"InversionTime": [0.1, 1.5]})[1].tolist() == [100.0, 1500.0]
    assert acquisition_axis("DWI", {"bValue": [0, 500]})[0:2][0] == "b"
    assert acquisition_axis("DCE", {"FrameTimes": [-10, 0, 5], "RepetitionTime": 0.004,
                                    "FlipAngle": 15})[1].tolist() == [-10, 0, 5]
    assert acquisition_axis("T2w", {})[0] is None
    # CEST: offsets per volume (reference entries dropped) or per saturated volume
    d1, v1, a1 = acquisition_axis("CEST", {"SaturationOffsets_ppm": [300, -1, 0, 1], "ReferenceVolumes": [0]},
                                  n_volumes=4)
    d2, v2, a2 = acquisition_axis("CEST", {"SaturationOffsets_ppm": [-1, 0, 1], "ReferenceVolumes": [0]},
                                  n_volumes=4)
    assert d1 == d2 == "offset" and v1.tolist() == v2.tolist() == [-1, 0, 1]
    assert a1["volumes"] == a2["volumes"] == [1, 2, 3] and a1["reference_volumes"] == [0]
    with pytest.raises(DataFileError, match="has 2 value"):
        acquisition_axis("MEGRE", sc, n_volumes=3, source="s.json")
    with pytest.raises(DataFileError, match="no bValue"):
        acquisition_axis("DWI", sc, source="s.json")
    with pytest.raises(DataFileError, match="out of range"):
        acquisition_axis("CEST", {"SaturationOffsets_ppm": [1, 2], "ReferenceVolumes": [5]}, n_volumes=2)


@pytest.mark.parametrize("text, what", [
    ('{"EchoTime": [0.002,', "invalid JSON at line 1"),
    ("[1, 2]", "must be a JSON object"),
    ('{"EchoTime": NaN}', "invalid JSON"),
    ('{"EchoTime": "abc"}', "EchoTime must be"),
    ('{"EchoTime": [0.002, -0.004]}', "EchoTime must be"),
    ('{"EchoTime": [2, 4]}', "milliseconds"),
    ('{"EchoTime": []}', "EchoTime must be"),
    ('{"RepetitionTime": [1.2]}', "RepetitionTime must be a positive number"),
    ('{"RepetitionTime": true}', "RepetitionTime must be"),
    ('{"FlipAngle": 400}', "FlipAngle must be"),
    ('{"bValue": [0, -5]}', "bValue must be"),
    ('{"FrameTimes": 3}', "FrameTimes must be a non-empty list"),
    ('{"SaturationOffsets_ppm": ["a"]}', "SaturationOffsets_ppm must be"),
    ('{"ReferenceVolumes": [0.5]}', "ReferenceVolumes must be"),
    ('{"ReferenceVolumes": [-1]}', "ReferenceVolumes must be"),
    ('{"MagneticFieldStrength": "9.4T"}', "MagneticFieldStrength must be"),
    ('{"Hematocrit": 45}', "Hematocrit must be"),
    ('{"Nucleus": "13C"}', "Nucleus must be"),
    ('{"Labels": {"one": "tumour"}}', "Labels must"),
    ('{"Agent": ""}', "Agent must be"),
])
def test_read_sidecar_bad(tmp_path, text, what):
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError, match=what) as err:
        read_sidecar(p)
    assert str(err.value).startswith(str(p))


def test_read_sidecar_missing_and_binary(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        read_sidecar(tmp_path / "none.json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataFileError, match="not UTF-8"):
        read_sidecar(tmp_path / "b.json")


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                     allow_infinity=False) | st.text(max_size=5), lambda ch: st.lists(ch, max_size=4) |
                     st.dictionaries(st.text(max_size=5), ch, max_size=4), max_leaves=10)
_KEYS = st.sampled_from(["EchoTime", "RepetitionTime", "FlipAngle", "bValue", "FrameTimes", "ReferenceVolumes",
                         "SaturationOffsets_ppm", "MagneticFieldStrength", "Labels", "Nucleus", "Other"])


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.dictionaries(_KEYS, _JSON, max_size=4), _JSON, st.binary(max_size=40)))
def test_sidecar_parser_never_raises_anything_but_data_file_error(obj):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.json"
        p.write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
        try:
            out = read_sidecar(p)
        except DataFileError as err:
            assert str(p) in str(err)
        else:
            assert isinstance(out, dict) and out == obj


@settings(max_examples=100, deadline=None)
@given(te=st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=16, unique=True), tr=st.floats(1e-3, 100.0),
       fa=st.floats(0.1, 180.0), b=st.lists(st.floats(0, 5000), min_size=1, max_size=8),
       field=st.floats(0.1, 30.0))
def test_valid_sidecars_round_trip(te, tr, fa, b, field):
    sc = {"EchoTime": te, "RepetitionTime": tr, "FlipAngle": fa, "bValue": b, "MagneticFieldStrength": field}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.json"
        p.write_text(json.dumps(sc), encoding="utf-8")
        back = read_sidecar(p)
    assert back == sc
    if len(te) >= 2 and te == sorted(te):
        dim, vals, _ = acquisition_axis("MEGRE", back, n_volumes=len(te))
        np.testing.assert_allclose(vals, np.asarray(te) * 1000.0)
    else:  # one echo, or not in acquisition order: what a T2* fit cannot mean is refused by name
        with pytest.raises(DataFileError, match="EchoTime (has 1 value|must be in increasing)"):
            acquisition_axis("MEGRE", back, n_volumes=len(te))


# --------------------------------------------------------------------------- load_study

def test_load_study_megre_values_coords_and_missing_sessions(tiny_study):
    ds = load_study(tiny_study, "tiny", "MEGRE")
    base = tiny_study.parent
    assert ds.signal.dims == ("animal", "day", "te", "z", "y", "x")
    assert ds.signal.dtype == np.float32 and ds.roi.dtype == np.int16
    assert ds["te"].values.tolist() == TINY_TE_MS and ds["te"].attrs["units"] == "ms"
    assert ds["day"].values.tolist() == [0, 7] and ds["day"].attrs["units"] == "day"
    assert ds["animal"].values.tolist() == ["m01", "m02", "m03"]
    assert ds["group"].values.tolist() == ["control", "treated", "treated"]
    assert ds["sex"].values.tolist() == ["F", "F", "M"]
    assert ds["acquired"].values.tolist() == [[True, True], [True, False], [True, True]]
    nx, ny, nz = TINY_SHAPE_XYZ
    assert ds.signal.shape == (3, 2, 4, nz, ny, nx)
    # one Dask chunk per scan
    assert ds.signal.data.chunksize == (1, 1, 4, nz, ny, nx) and ds.signal.data.npartitions == 6
    assert ds.attrs["study"] == "tiny" and ds.attrs["kind"] == "MEGRE"
    assert ds.attrs["field_T"] == 9.4 and ds.attrs["tr_ms"] == pytest.approx(1200.0)
    assert ds.attrs["agent"] == "ferumoxytol" and ds.attrs["FlipAngle"] == 60
    np.testing.assert_allclose(ds.attrs["voxel_size_mm"], [0.1, 0.1, 0.5])
    assert ds.attrs["manifest_sha256"] == manifest_sha256(tiny_study)
    assert ds.signal.attrs["field_T"] == 9.4 and ds.signal.attrs["voxel_size_mm"] == ds.attrs["voxel_size_mm"]
    # NoiseSigma differs between scans -> a per-scan coordinate (NaN where not acquired)
    np.testing.assert_array_equal(ds["noise_sigma"].values, [[10, 10], [10, np.nan], [10, 12]])
    assert "noise_sigma" not in ds.attrs
    sig = ds.signal.values
    roi = ds.roi.values
    for ia, a in enumerate(["m01", "m02", "m03"]):
        for iday, d in enumerate([0, 7]):
            if not ds.acquired.values[ia, iday]:
                assert np.isnan(sig[ia, iday]).all() and (roi[ia, iday] == 0).all()
                continue
            ref = _nib_design(base / f"raw/tiny/{a}/day{d:02d}/MEGRE.nii.gz")
            np.testing.assert_allclose(sig[ia, iday], ref, rtol=1e-6)
            np.testing.assert_array_equal(roi[ia, iday], _nib_design(base / f"raw/tiny/{a}/day{d:02d}/roi.nii.gz"))
    assert ds.roi.attrs["flag_meanings"].split() == ["tumour", "muscle"]
    # the loaded study is a valid fit input: the adapter's axis check accepts it
    from studylib.fit import check_axis

    assert check_axis(ds.signal, "te", what="echo times").tolist() == TINY_TE_MS


def test_load_study_is_lazy_counting_reads(tiny_study, monkeypatch):
    import studylib.io.nifti as nifti_mod

    calls = []
    real = nifti_mod.read_nifti  # what every chunk of a lazy study calls to read its file

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(nifti_mod, "read_nifti", counting)
    ds = load_study(tiny_study, "tiny", "MEGRE")
    assert calls == []  # headers and sidecars only
    ds.signal.sel(animal="m01", day=0).compute()
    assert len(calls) == 1  # exactly the one scan asked for
    ds.signal.values
    assert len(calls) == 1 + 5


def test_load_study_is_lazy_delete_then_compute_fails(tiny_study):
    ds = load_study(tiny_study, "tiny", "MEGRE")
    victim = tiny_study.parent / "raw/tiny/m03/day07/MEGRE.nii.gz"
    victim.unlink()
    np.testing.assert_array_equal(ds.acquired.values, [[True, True], [True, False], [True, True]])
    assert np.isfinite(ds.signal.sel(animal="m01").values).all()  # other scans still read
    with pytest.raises(DataFileError, match=str(victim)):
        ds.signal.sel(animal="m03", day=7).compute()


def test_load_study_cest_m0_and_offsets(tiny_study):
    ds = load_study(tiny_study, "tiny", "CEST")
    assert ds["offset"].values.tolist() == TINY_OFFSETS_PPM and ds["offset"].attrs["units"] == "ppm"
    assert ds.signal.dims[2] == "offset" and "m0" in ds
    ref = _nib_design(tiny_study.parent / "raw/tiny/m03/day07/CEST.nii.gz")
    np.testing.assert_allclose(ds.signal.sel(animal="m03", day=7).values, ref[1:], rtol=1e-6)
    np.testing.assert_allclose(ds.m0.sel(animal="m03", day=7).values, ref[0], rtol=1e-6)
    assert np.isnan(ds.m0.sel(animal="m02", day=7).values).all()
    assert ds.attrs["SaturationB1_uT"] == 2.0 and ds.attrs["tr_ms"] == pytest.approx(5000.0)


def test_load_study_rechunk_option(tiny_study):
    ds = load_study(tiny_study, "tiny", "MEGRE", chunks={"animal": -1})
    assert ds.signal.data.chunksize[0] == 3
    with pytest.raises(StudyError, match="chunks"):
        load_study(tiny_study, "tiny", "MEGRE", chunks="auto")


def _rewrite_megre(manifest: Path, animal: str, day: int, *, te_s=None, shape=None):
    folder = manifest.parent / f"raw/tiny/{animal}/day{day:02d}"
    old = read_sidecar(folder / "MEGRE.json")
    if te_s is not None:
        old["EchoTime"] = te_s
    data = np.ones(shape if shape is not None else TINY_SHAPE_XYZ + (len(old["EchoTime"]),))
    write_nifti(folder / "MEGRE.nii.gz", data, np.diag([0.1, 0.1, 0.5, 1]), sidecar=old)
    rel = f"raw/tiny/{animal}/day{day:02d}/MEGRE"
    _rehash(manifest, rel + ".nii.gz")
    _rehash(manifest, rel + ".json")
    return folder


def test_mismatched_echo_times_name_both_files(tiny_study):
    folder = _rewrite_megre(tiny_study, "m03", 7, te_s=[0.002, 0.004, 0.006, 0.010])
    with pytest.raises(DataFileError) as err:
        load_study(tiny_study, "tiny", "MEGRE")
    msg = str(err.value)
    assert str(folder / "MEGRE.json") in msg and "raw/tiny/m01/day00/MEGRE.json" in msg and "te" in msg


def test_mismatched_matrix_names_both_files(tiny_study):
    folder = _rewrite_megre(tiny_study, "m02", 0, shape=(6, 4, 3, 4))
    with pytest.raises(DataFileError) as err:
        load_study(tiny_study, "tiny", "MEGRE")
    msg = str(err.value)
    assert str(folder / "MEGRE.nii.gz") in msg and "raw/tiny/m01/day00/MEGRE.nii.gz" in msg and "matrix" in msg


def test_roi_on_another_grid_names_both_files(tiny_study):
    folder = tiny_study.parent / "raw/tiny/m01/day07"
    write_nifti(folder / "roi.nii.gz", np.zeros((5, 4, 2)), np.eye(4))
    _rehash(tiny_study, "raw/tiny/m01/day07/roi.nii.gz")
    with pytest.raises(DataFileError) as err:
        load_study(tiny_study, "tiny", "MEGRE")
    assert str(folder / "roi.nii.gz") in str(err.value) and str(folder / "MEGRE.nii.gz") in str(err.value)


def test_load_study_bad_requests(tiny_study, tmp_path):
    with pytest.raises(ManifestError, match="study 'nope' is not in the manifest"):
        load_study(tiny_study, "nope", "MEGRE")
    with pytest.raises(ManifestError, match="has no DWI images"):
        load_study(tiny_study, "tiny", "DWI")
    with pytest.raises(ManifestError, match="kind 'roi' cannot be loaded"):
        load_study(tiny_study, "tiny", "roi")
    with pytest.raises(ManifestError, match="not found"):
        load_study(tmp_path / "none.csv", "tiny", "MEGRE")
    # cheap verification on load: a missing file is caught before anything is built
    (tiny_study.parent / "raw/tiny/m02/day00/CEST.nii.gz").unlink()
    with pytest.raises(ManifestError, match="raw/tiny/m02/day00/CEST.nii.gz: missing file"):
        load_study(tiny_study, "tiny", "MEGRE")


def test_load_study_accepts_read_manifest_table(tiny_study):
    ds = load_study(read_manifest(tiny_study), "tiny", "MEGRE")
    assert ds.attrs["manifest"] == str(tiny_study)


def test_load_histology(tiny_study):
    h = load_histology(tiny_study, "tiny")
    assert h["animal"].tolist() == ["m01", "m02", "m03"]
    assert h["group"].tolist() == ["control", "treated", "treated"]
    assert h["iron_area_pct"].tolist() == [1.5, 4.0, 3.2] and (h["study"] == "tiny").all()
    with pytest.raises(ManifestError, match="not in the manifest"):
        load_histology(tiny_study, "other")


# --------------------------------------------------------------------------- DICOM

def test_dicom_single_slice_header_and_pixels(tmp_path):
    src = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
    (tmp_path / "dcm").mkdir()
    shutil.copy(src, tmp_path / "dcm" / "MR_small.dcm")
    (tmp_path / "dcm" / "README.txt").write_text("not dicom")
    nii, side = dicom_series_to_nifti(tmp_path / "dcm", tmp_path / "out" / "T2w")
    ds = pydicom.dcmread(str(src))
    sc = read_sidecar(side)
    assert sc["EchoTime"] == pytest.approx(float(ds.EchoTime) / 1000)  # (0018,0081) ms -> s
    assert sc["RepetitionTime"] == pytest.approx(float(ds.RepetitionTime) / 1000)
    assert sc["FlipAngle"] == pytest.approx(float(ds.FlipAngle))
    img = nib.load(str(nii))
    assert img.shape == (int(ds.Columns), int(ds.Rows), 1)
    np.testing.assert_array_equal(img.get_fdata()[:, :, 0], ds.pixel_array.T.astype(float))
    np.testing.assert_allclose(img.header.get_zooms()[:2], [float(v) for v in ds.PixelSpacing[::-1]], rtol=1e-6)
    # world position of voxel (0, 0, 0) = ImagePositionPatient, LPS -> RAS
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(img.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-4)


def test_dicom_siemens_multi_b_mosaic(tmp_path):
    d = tmp_path / "dwi"
    d.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        (d / name[:-3]).write_bytes(gzip.decompress((NIBABEL_DATA / name).read_bytes()))
    nii, side = dicom_series_to_nifti(d, tmp_path / "out" / "DWI")
    sc = read_sidecar(side)
    assert sc["bValue"] == [0.0, 1000.0] and sc["EchoTime"] == pytest.approx(0.093)
    assert sc["RepetitionTime"] == pytest.approx(6.6) and sc["MagneticFieldStrength"] == 3.0
    assert acquisition_axis("DWI", sc, n_volumes=2)[1].tolist() == [0.0, 1000.0]
    img = nib.load(str(nii))
    assert img.shape == (128, 128, 48, 2)
    data = img.get_fdata()
    for vol, name in enumerate(("siemens_dwi_0.dcm", "siemens_dwi_1000.dcm")):
        mosaic = pydicom.dcmread(str(d / name)).pixel_array  # 896 x 896 = 7 x 7 tiles of 128 x 128
        for k in (0, 9, 47):
            tr, tc = divmod(k, 7)
            tile = mosaic[tr * 128:(tr + 1) * 128, tc * 128:(tc + 1) * 128]
            np.testing.assert_array_equal(data[:, :, k, vol], tile.T)
    # geometry agrees with nibabel's own Siemens mosaic reader (rows/columns swapped, LPS -> RAS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

        w = dicomwrappers.wrapper_from_data(pydicom.dcmread(str(d / "siemens_dwi_0.dcm")))
    ref = (np.diag([-1, -1, 1, 1]) @ w.affine)[:, [1, 0, 2, 3]]
    np.testing.assert_allclose(img.affine, ref, atol=1e-3)


def test_dicom_bad_input(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        dicom_series_to_nifti(tmp_path / "none", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("hello")
    with pytest.raises(DataFileError, match="no DICOM image files"):
        dicom_series_to_nifti(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "ct").mkdir()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), tmp_path / "ct" / "a.dcm")
    with pytest.raises(DataFileError, match="expected MR images"):
        dicom_series_to_nifti(tmp_path / "ct", tmp_path / "o")


# --------------------------------------------------------------------------- ParaVision

def test_paravision_rejects_non_paravision_folders(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        paravision_scan_to_nifti(tmp_path / "study" / "5", tmp_path / "o")
    (tmp_path / "study" / "notanumber").mkdir(parents=True)
    with pytest.raises(DataFileError, match="scan number"):
        paravision_scan_to_nifti(tmp_path / "study" / "notanumber", tmp_path / "o")
    scan = tmp_path / "study" / "5"
    scan.mkdir()
    (scan / "acqp").write_text("##TITLE=Parameter List\n")
    with pytest.raises(DataFileError) as err:
        check_paravision_scan(scan)
    assert str(scan) in str(err.value) and "method" in str(err.value) and "pdata/1/2dseq" in str(err.value)
    assert not list(tmp_path.glob("o*"))


# --------------------------------------------------------------------------- integration with the synthetic ci study

def test_ci_study_verifies_and_every_kind_loads(ci_study, capsys):
    assert verify_manifest(ci_study) == []
    assert cli_main(["verify", "--manifest", str(ci_study)]) == 0
    df = read_manifest(ci_study)
    combos = sorted({(s, k) for s, k in zip(df["study"], df["kind"]) if k not in ("roi", "histology")})
    assert len(combos) >= 7
    axis = {"MEGRE": "te", "MSME": "te", "VFA": "fa", "IR": "ti", "DWI": "b", "DCE": "t", "CEST": "offset",
            "WASSR": "offset"}
    for study, kind in combos:
        ds = load_study(ci_study, study, kind)
        rows = df[(df["study"] == study) & (df["kind"] == kind) & df["path"].str.endswith(".nii.gz")]
        dims = ("animal", "day") + ((axis[kind],) if kind in axis else ()) + ("z", "y", "x")
        assert ds.signal.dims == dims, (study, kind)
        assert int(ds.acquired.sum()) == len(rows) == ds.attrs["files"]
        assert ds.attrs["study"] == study and ds.attrs["kind"] == kind and ds.attrs["field_T"] > 0
        r = rows.iloc[-1]
        got = ds.signal.sel(animal=r["animal"], day=int(r["day"])).values
        ref = _nib_design(ci_study.parent / r["path"])
        if kind in ("CEST", "WASSR") and "m0" in ds:
            sat = [i for i in range(ref.shape[0]) if i not in ds.m0.attrs["reference_volumes"]]
            ref = ref[sat]
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=f"{study} {kind}")
        missing = ~ds.acquired.values
        if missing.any():
            ia, iday = np.argwhere(missing)[0]
            assert np.isnan(ds.signal.isel(animal=ia, day=iday).values).all()
            assert (ds.roi.isel(animal=ia, day=iday).values == 0).all()
    for study in sorted(set(df["study"])):
        h = load_histology(ci_study, study)
        assert len(h) and set(h["animal"]) <= set(df["animal"])
