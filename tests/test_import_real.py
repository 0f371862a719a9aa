"""``studylib import`` on real scanner data (../shared/real) and on damaged copies of it.

Expected values are read here from the ParaVision text files with regular expressions, not with
studylib's JCAMP parser, so a parser mistake cannot hide in both the reader and the test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from studylib.cli import main as cli_main
from studylib.errors import DataFileError, StudyError
from studylib.io import bruker, dicom, importer
from studylib.io.bruker import ScanRefused, describe_scan
from studylib.io.importer import import_scans, plan_import
from studylib.manifest import read_manifest, verify_manifest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
PV6 = REAL / "bruker_pv601_mouse_cest"
PV51 = REAL / "bruker_pv51_phantom_flash"
GAMMA_1H = 42.577478  # MHz/T, CODATA 2018

pytestmark = pytest.mark.skipif(not PV6.is_dir(),
                                reason="../shared/real (real scanner data) is not beside the checkout")


# --------------------------------------------------------------------------- independent reading of the text files

def _record(path: Path, name: str) -> str | None:
    """The text of ``##$name=`` (lines joined, ``$$`` comments dropped), or None."""
    text = path.read_text(encoding="latin-1")
    m = re.search(rf"^##\${re.escape(name)}=(.*?)(?=^##)", text, re.M | re.S)
    if m is None:
        return None
    return " ".join(ln for ln in m.group(1).splitlines() if not ln.startswith("$$")).strip()


def _nums(path: Path, name: str) -> list[float]:
    v = _record(path, name)
    assert v is not None, f"{path}: no {name}"
    v = re.sub(r"^\(\s*\d+(\s*,\s*\d+)*\s*\)\s+(?=\S)", "", v)  # drop the "( n )" array dimensions
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", v)]


def _field(path: Path, name: str, i: int) -> float:
    """Field ``i`` of a struct ``(a, b, c, ...)``."""
    return float(_record(path, name).strip("()").split(",")[i])


def _copy(src: Path, dst: Path) -> Path:
    """Writable copy of a (read-only) scan folder."""
    for f in src.rglob("*"):
        if f.is_file():
            t = dst / f.relative_to(src)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, t)
    return dst


def _set(path: Path, name: str, value_block: str | None) -> None:
    """Replace (or with None remove, or add) the record ``##$name=`` in a parameter file, as text."""
    text = path.read_text(encoding="latin-1")
    pat = re.compile(rf"^##\${re.escape(name)}=.*?(?=^##)", re.M | re.S)
    new = "" if value_block is None else f"##${name}={value_block}\n"
    text = pat.sub(lambda m: new, text, count=1) if pat.search(text) else text.replace("##END=", new + "##END=")
    path.write_text(text, encoding="latin-1")


def _ids(**kw):
    return dict(study="acidocest_b16", animal="M1", group="B16F10", day=0) | kw


# --------------------------------------------------------------------------- listing

def test_dry_run_lists_and_refuses_with_reasons(capsys):
    assert cli_main(["import", str(PV6), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = {ln.split()[0]: ln for ln in out if re.match(r"E\d", ln)}
    assert sorted(lines) == ["E1", "E2", "E3", "E4", "E5"]
    assert "NOT IMPORTED" in lines["E1"] and "slice packs" in lines["E1"] and "FLASH" in lines["E1"]
    for e, kind, matrix in (("E2", "T2w", "128x128x24"), ("E3", "T2w", "128x128x1"), ("E4", "CEST", "64x64x1x176"),
                            ("E5", "CEST", "64x64x1x264")):
        assert f" {kind} " in lines[e] and matrix in lines[e] and "NOT IMPORTED" not in lines[e]
    assert "TE 32.52 ms" in lines["E2"] and "TR 2000 ms" in lines["E2"] and "FA 90 deg" in lines["E2"]
    assert "TE 1.335 ms" in lines["E4"] and "TR 2.67 ms" in lines["E4"] and "FA 15 deg" in lines["E4"]
    assert "44 x 4 repetitions, 12 reference" in lines["E4"] and "44 x 6 repetitions, 18 reference" in lines["E5"]
    assert "-100.00" in lines["E4"] and "3.50" in lines["E4"] and "10.00" in lines["E4"]
    assert "nothing written" in out[-1]

    assert cli_main(["import", str(PV51), "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("E100") and "mic_flash" in line and "NOT IMPORTED" in line and "slice packs" in line


def test_pv51_headers_field_from_bf1_and_refusal(tmp_path, capsys):
    scan = PV51 / "100"
    assert _record(scan / "method", "PVM_FrqWork") is None  # PV 5.1: the field must come from BF1
    d = describe_scan(scan)
    assert d.kind is None and "slice packs" in d.reason and d.method == "mic_flash"
    assert d.summary["B0_T"] == pytest.approx(_nums(scan / "acqp", "BF1")[0] / GAMMA_1H, abs=1e-4)
    assert d.summary["TE_ms"] == pytest.approx(_nums(scan / "pdata/1/visu_pars", "VisuAcqEchoTime"), rel=1e-6)
    assert d.summary["TE_ms"] == pytest.approx(_nums(scan / "acqp", "ACQ_echo_time"), rel=1e-6)
    assert d.summary["TR_ms"] == pytest.approx(_nums(scan / "method", "PVM_RepetitionTime")[0])
    assert d.summary["FA_deg"] == pytest.approx(_nums(scan / "acqp", "ACQ_flip_angle")[0])
    assert cli_main(["import", str(PV51), "--out", str(tmp_path / "o")] + _argv()) == 1
    assert "nothing to import" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))


def _argv(**kw):
    ids = _ids(**kw)
    return [x for k, v in ids.items() for x in (f"--{k}", str(v))]


# --------------------------------------------------------------------------- the real PV 6.0.1 study

@pytest.fixture(scope="module")
def pv_import(tmp_path_factory):
    out = tmp_path_factory.mktemp("pv")
    assert cli_main(["import", str(PV6), "--out", str(out)] + _argv()) == 0
    return out


def _sidecar(out: Path, stem: str) -> dict:
    return json.loads((out / "raw/acidocest_b16/M1/day00" / f"{stem}.json").read_text())


def _img(out: Path, stem: str):
    return nib.load(str(out / "raw/acidocest_b16/M1/day00" / f"{stem}.nii.gz"))


def test_imported_manifest_verifies(pv_import, capsys):
    m = pv_import / "data_manifest.csv"
    assert verify_manifest(m) == []
    assert cli_main(["verify", "--manifest", str(m)]) == 0
    df = read_manifest(m)
    assert len(df) == 8 and sorted(set(df["kind"])) == ["CEST", "T2w"]
    assert set(df["path"].str.extract(r"_(E\d)\.")[0]) == {"E2", "E3", "E4", "E5"}
    assert all(df["notes"].str.startswith("ParaVision E"))


@pytest.mark.parametrize("e, stem", [(2, "T2w_E2"), (3, "T2w_E3"), (4, "CEST_E4"), (5, "CEST_E5")])
def test_sidecar_and_voxels_match_the_paravision_files(pv_import, e, stem):
    scan, visu = PV6 / str(e), PV6 / str(e) / "pdata/1/visu_pars"
    sc = _sidecar(pv_import, stem)
    img = _img(pv_import, stem)
    # echo time: VisuAcqEchoTime (= EffectiveTE of RARE), never the echo spacing PVM_EchoTime
    te = _nums(visu, "VisuAcqEchoTime")[0]
    assert sc["EchoTime"] == pytest.approx(te / 1000, rel=1e-9)
    if _record(scan / "method", "EffectiveTE") is not None:
        assert sc["EchoTime"] == pytest.approx(_nums(scan / "method", "EffectiveTE")[0] / 1000)
        assert sc["EchoTime"] != pytest.approx(_nums(scan / "method", "PVM_EchoTime")[0] / 1000)
    assert sc["RepetitionTime"] == pytest.approx(_nums(scan / "method", "PVM_RepetitionTime")[0] / 1000, rel=1e-9)
    assert sc["RepetitionTime"] == pytest.approx(_nums(visu, "VisuAcqRepetitionTime")[0] / 1000, rel=1e-9)
    assert sc["FlipAngle"] == pytest.approx(_field(scan / "method", "ExcPulse1", 2))
    assert sc["FlipAngle"] == pytest.approx(_nums(visu, "VisuAcqFlipAngle")[0])
    assert sc["MagneticFieldStrength"] == pytest.approx(_nums(scan / "method", "PVM_FrqWork")[0] / GAMMA_1H, abs=1e-4)
    assert sc["Nucleus"] == "1H" and sc["ScanNumber"] == e
    # voxels: the scanner's int16 words, VisuCoreDataSlope as scl_slope (one slope for every frame here)
    slope = _nums(visu, "VisuCoreDataSlope")
    assert len(set(slope)) == 1 and _nums(visu, "VisuCoreDataOffs") == [0.0] * len(slope)
    assert float(img.dataobj.slope) == float(np.float32(slope[0])) and float(img.dataobj.inter) == 0.0
    nx, ny = (int(v) for v in _nums(visu, "VisuCoreSize"))
    raw = np.fromfile(scan / "pdata/1/2dseq", dtype="<i2").reshape(-1, ny, nx)
    stored = np.asarray(img.dataobj.get_unscaled())
    stored = stored.reshape(nx, ny, -1)  # (x, y, frames): one slice (E3-E5) or 24 ascending slices (E2)
    np.testing.assert_array_equal(stored, raw.transpose(2, 1, 0))
    np.testing.assert_allclose(img.get_fdata().reshape(nx, ny, -1), raw.transpose(2, 1, 0) * np.float32(slope[0]),
                               rtol=1e-6)
    # geometry: LPS VisuCorePosition/Orientation -> RAS
    pos = np.array(_nums(visu, "VisuCorePosition")).reshape(-1, 3)
    orient = np.array(_nums(visu, "VisuCoreOrientation")).reshape(-1, 3, 3)[0]
    ext = np.array(_nums(visu, "VisuCoreExtent"))
    vox = ext / [nx, ny]
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(img.affine[:3, 0], flip * orient[0] * vox[0], atol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 1], flip * orient[1] * vox[1], atol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 3], flip * pos[np.argmin(pos @ orient[2])], atol=1e-5)
    dz = (pos.max(0) - pos.min(0)) @ orient[2] / (len(pos) - 1) if len(pos) > 1 else _nums(
        visu, "VisuCoreFrameThickness")[0]
    np.testing.assert_allclose(img.affine[:3, 2], flip * orient[2] * dz, atol=1e-6)


@pytest.mark.parametrize("e", [4, 5])
def test_cest_offsets_reference_and_saturation(pv_import, e):
    m = PV6 / str(e) / "method"
    sc = _sidecar(pv_import, f"CEST_E{e}")
    hz = np.array(_nums(m, "PVM_ppgFreqList1"))
    f0 = _nums(m, "PVM_FrqWork")[0]
    reps = int(_nums(m, "Number_CESTrepetitions")[0])
    n = int(_nums(m, "PVM_NRepetitions")[0])
    assert len(hz) == 44 and reps * len(hz) == n and _img(pv_import, f"CEST_E{e}").shape == (64, 64, 1, n)
    np.testing.assert_allclose(sc["SaturationOffsets_ppm"], np.tile(hz / f0, reps), atol=1e-6)
    assert sc["SaturationOffsets_ppm"][:3] == pytest.approx([-100.0] * 3, abs=1e-3)  # -30032 Hz at 300.319 MHz
    m0 = _nums(m, "M0Offset")[0]
    assert sc["ReferenceVolumes"] == [i for i, v in enumerate(np.tile(hz, reps)) if abs(v) == m0]
    assert len(sc["ReferenceVolumes"]) == 3 * reps and sc["SaturationRepetitions"] == reps
    assert sc["SaturationB1_uT"] == pytest.approx(_nums(m, "PVM_MagTransPower")[0])
    assert sc["SaturationTime"] == pytest.approx(_field(m, "PVM_MagTransPulse1", 0) / 1000, rel=1e-9)
    assert sc["RepetitionTimeExcitation"] == sc["RepetitionTime"] and "readout TR" in sc["RepetitionTimeNote"]


def test_cest_scan_loads_with_its_reference_volumes(tmp_path):
    from studylib.io import load_study

    res = import_scans(PV6, out=tmp_path, scans="4", **_ids())
    assert [p.label for p in res.imported] == ["E4"] and res.new_rows == 2
    ds = load_study(tmp_path / "data_manifest.csv", "acidocest_b16", "CEST")
    assert ds.sizes["offset"] == 176 - 12 and "m0" in ds
    assert float(ds["offset"].min()) == pytest.approx(-10.0, abs=1e-3) and ds.attrs["field_T"] == pytest.approx(7.0535)


# --------------------------------------------------------------------------- ParaVision vs Bruker's DICOM export

@pytest.mark.parametrize("e, kind", [(2, "T2w"), (3, "T2w"), (4, "CEST"), (5, "CEST")])
def test_paravision_and_its_dicom_export_agree(tmp_path, e, kind):
    pv = import_scans(PV6, out=tmp_path / "pv", scans=str(e), **_ids())
    dc = import_scans(PV6 / str(e) / "pdata/1/dicom", out=tmp_path / "dcm", **_ids())
    assert [p.kind for p in pv.imported] == [kind] and [p.kind for p in dc.imported] == [kind]
    a = nib.load(str(tmp_path / "pv" / next(f for f in pv.files if f.endswith(".nii.gz"))))
    b = nib.load(str(tmp_path / "dcm" / next(f for f in dc.files if f.endswith(".nii.gz"))))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled()))
    assert float(a.dataobj.slope) == float(b.dataobj.slope)
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    sa = json.loads((tmp_path / "pv" / next(f for f in pv.files if f.endswith(".json"))).read_text())
    sb = json.loads((tmp_path / "dcm" / next(f for f in dc.files if f.endswith(".json"))).read_text())
    for key in ("EchoTime", "RepetitionTime", "FlipAngle", "SeriesInstanceUID"):
        assert sa[key] == pytest.approx(sb[key]) if not isinstance(sa[key], str) else sa[key] == sb[key]
    assert sb["MagneticFieldStrength"] == pytest.approx(sa["MagneticFieldStrength"], abs=1e-3)
    if kind == "CEST":  # the DICOM export has no offsets: they come from the linked ParaVision method
        assert sb["SaturationOffsets_ppm"] == sa["SaturationOffsets_ppm"] and "FrameTimes" not in sb
        assert sb["ReferenceVolumes"] == sa["ReferenceVolumes"]
    assert verify_manifest(tmp_path / "dcm" / "data_manifest.csv") == []


def test_dicom_localizer_with_three_orientations_is_refused(tmp_path):
    src = PV6 / "1/pdata/1/dicom"
    [p] = plan_import(src)
    assert p.kind is None and "3 slice orientations" in p.reason
    with pytest.raises(ScanRefused, match="not merged"):
        dicom.dicom_series_to_nifti(src, tmp_path / "loc")
    with pytest.raises(StudyError, match="slice orientations"):
        import_scans(src, out=tmp_path, **_ids())
    assert not list(tmp_path.rglob("*.nii.gz")) and not (tmp_path / "data_manifest.csv").exists()


def test_dicom_cest_without_its_paravision_scan_has_no_offsets(tmp_path):
    d = _copy(PV6 / "4/pdata/1/dicom", tmp_path / "dicom_only")
    [p] = plan_import(d)
    assert p.kind is None and "give --kind" in p.reason  # no made-up FrameTimes of 0
    [p] = plan_import(d, kind="CEST")
    assert p.kind is None and "SaturationOffsets_ppm" in p.reason


# --------------------------------------------------------------------------- all or nothing, no duplicates

def test_reimport_adds_no_row_and_failure_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "d"
    import_scans(PV6, out=out, scans="3", **_ids())
    m = out / "data_manifest.csv"
    before = m.read_bytes()
    again = import_scans(PV6, out=out, scans="3", **_ids())
    assert again.new_rows == 0 and m.read_bytes() == before
    with pytest.raises(StudyError, match="already in the manifest"):
        import_scans(PV6, out=out, scans="3", **_ids(group="other"))
    real = bruker.paravision_scan_to_nifti

    def flaky(scan_dir, stem, **kw):
        if Path(scan_dir).name == "4":
            raise DataFileError(f"{scan_dir}: simulated failure")
        return real(scan_dir, stem, **kw)

    monkeypatch.setattr(bruker, "paravision_scan_to_nifti", flaky)
    with pytest.raises(DataFileError, match="simulated"):
        import_scans(PV6, out=out, scans="2,4,5", **_ids())
    assert m.read_bytes() == before
    assert sorted(p.name for p in (out / "raw/acidocest_b16/M1/day00").iterdir()) == ["T2w_E3.json", "T2w_E3.nii.gz"]
    assert not [p for p in out.rglob(".studylib-import-*")]
    with pytest.raises(StudyError, match="not inside the manifest"):
        import_scans(PV6, out=tmp_path / "x", manifest=out / "data_manifest.csv", scans="2", **_ids())
    with pytest.raises(StudyError, match="no scan '9'"):
        import_scans(PV6, out=out, scans="9", **_ids())


# --------------------------------------------------------------------------- damaged and altered copies

@pytest.fixture
def scan3(tmp_path):
    return _copy(PV6 / "3", tmp_path / "study" / "3")


def test_truncated_and_empty_2dseq(scan3, tmp_path):
    seq = scan3 / "pdata/1/2dseq"
    seq.write_bytes(seq.read_bytes()[:1000])
    with pytest.raises(StudyError, match=r"E3.*2dseq has 1000 bytes.*truncated or aborted"):
        import_scans(scan3, out=tmp_path / "o", **_ids())
    seq.write_bytes(b"")
    assert "empty 2dseq" in plan_import(scan3)[0].reason
    with pytest.raises(ScanRefused, match="empty 2dseq"):
        bruker.paravision_scan_to_nifti(scan3, tmp_path / "x")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.nii.gz"))
    # in a study, the damaged scan is listed with its reason and the others are imported
    _copy(PV6 / "2", tmp_path / "study" / "2")
    res = import_scans(tmp_path / "study", out=tmp_path / "o", **_ids())
    assert [p.label for p in res.imported] == ["E2"] and [p.label for p in res.refused] == ["E3"]
    assert verify_manifest(tmp_path / "o" / "data_manifest.csv") == []


def test_missing_visu_pars_and_unknown_method(scan3, tmp_path, capsys):
    (scan3 / "pdata/1/visu_pars").unlink()
    with pytest.raises(StudyError, match="visu_pars"):
        import_scans(scan3, out=tmp_path / "o", **_ids())
    assert cli_main(["import", str(scan3), "--out", str(tmp_path / "o")] + _argv()) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "visu_pars" in err and str(scan3) in err
    shutil.copyfile(PV6 / "3/pdata/1/visu_pars", scan3 / "pdata/1/visu_pars")
    _set(scan3 / "method", "Method", "<User:FooBar>")
    with pytest.raises(StudyError, match="unknown method 'FooBar'.*give --kind"):
        import_scans(scan3, out=tmp_path / "o", **_ids())
    res = import_scans(scan3, out=tmp_path / "o", kind="T2w", **_ids())
    assert [p.kind for p in res.imported] == ["T2w"]
    with pytest.raises(StudyError, match="unknown kind"):
        plan_import(scan3, kind="T1rho")


@pytest.mark.parametrize("edit, reason", [
    ({"VisuCoreDimDesc": "( 2 )\nspectroscopic spatial"}, "spectroscopic"),
    ({"PVM_EncSpectroscopy": "Yes"}, "spectroscopic"),
    ({"VisuSeriesTypeId": "( 65 )\n<DERIVED_ISA>"}, "derived maps"),
    ({"VisuFGOrderDesc": "( 1 )\n(1, <FG_DTI>, <DTI>, 0, 0)", "VisuFGOrderDescDim": "1"}, "derived maps"),
    ({"VisuFGOrderDesc": "( 1 )\n(1, <FG_COMPLEX>, <>, 0, 0)", "VisuFGOrderDescDim": "1"}, "complex"),
    ({"PVM_NSPacks": "2"}, "slice packs"),
    ({"ACQ_completed": "No"}, "not completed"),
    ({"PVM_Nucleus1": "( 8 )\n<31P>"}, "31P"),
])
def test_scans_that_are_not_images_are_refused(scan3, tmp_path, edit, reason):
    for name, block in edit.items():
        f = {"PVM": "method", "ACQ": "acqp"}.get(name[:3], "pdata/1/visu_pars")
        _set(scan3 / f, name, block)
    [p] = plan_import(scan3)
    assert p.kind is None and reason in p.reason, p.reason
    with pytest.raises(StudyError, match=reason):
        import_scans(scan3, out=tmp_path / "o", **_ids())


def test_slope_and_offset_are_applied_per_frame(tmp_path):
    s2 = _copy(PV6 / "2", tmp_path / "study" / "2")
    visu = s2 / "pdata/1/visu_pars"
    slope0 = _nums(visu, "VisuCoreDataSlope")[0]
    slopes = [slope0 * (1 + k / 8) for k in range(24)]
    offs = [float(k) for k in range(24)]
    _set(visu, "VisuCoreDataSlope", "( 24 )\n" + " ".join(repr(s) for s in slopes))
    _set(visu, "VisuCoreDataOffs", "( 24 )\n" + " ".join(repr(o) for o in offs))
    nii, side = bruker.paravision_scan_to_nifti(s2, tmp_path / "out" / "T2w")
    img = nib.load(str(nii))
    raw = np.fromfile(s2 / "pdata/1/2dseq", dtype="<i2").reshape(24, 128, 128).transpose(2, 1, 0).astype(float)
    want = raw * np.array(slopes) + np.array(offs)  # frames are the 24 ascending slices
    step = float(img.dataobj.slope)
    assert np.max(np.abs(img.get_fdata() - want)) <= step / 2 * (1 + 1e-6) + 1e-9
    assert step == pytest.approx(np.abs(want).max() / 32000, rel=1e-6)  # re-quantised: slopes differ per frame


def test_epi_echo_time_is_never_the_per_shot_pvm_echotime(scan3, tmp_path):
    m, visu = scan3 / "method", scan3 / "pdata/1/visu_pars"
    _set(m, "Method", "<Bruker:EPI>")
    _set(m, "PVM_EchoTime", "0.42")
    _set(m, "EffectiveTE", None)
    _set(visu, "VisuAcqIsEpiSequence", "Yes")
    _set(visu, "VisuAcqEchoTime", "( 1 )\n25")
    side = plan_import(scan3, kind="T2w")[0].sidecar
    assert side["EchoTime"] == pytest.approx(0.025)
    _set(visu, "VisuAcqEchoTime", None)
    _set(m, "EchoTime", "36")  # PV 5 EPI methods keep the echo time in EchoTime
    assert plan_import(scan3, kind="T2w")[0].sidecar["EchoTime"] == pytest.approx(0.036)
    _set(m, "EchoTime", None)
    assert "EchoTime" not in plan_import(scan3, kind="T2w")[0].sidecar  # rather none than 0.42 ms


def test_importer_source_types(tmp_path):
    assert importer.source_type(PV6) == "paravision-study"
    assert importer.source_type(PV6 / "4") == "paravision-scan"
    assert importer.source_type(PV6 / "4/pdata/1") == "paravision-reco"
    assert importer.source_type(PV6 / "4/pdata/1/dicom") == "dicom"
    with pytest.raises(DataFileError, match="not found"):
        importer.source_type(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="neither a ParaVision"):
        plan_import(tmp_path / "empty")


# --------------------------------------------------------------------------- frame groups -> kinds and axes

def _relabel(scan: Path, group: str, n: int, method: str, extra: dict) -> None:
    """Turn the 24 slices of scan 2 into 24 volumes of one slice in frame group ``group``."""
    visu = scan / "pdata/1/visu_pars"
    pos = _nums(visu, "VisuCorePosition")[:3]
    _set(visu, "VisuFGOrderDesc", f"( 1 )\n({n}, <{group}>, <>, 0, 0)")
    _set(visu, "VisuCorePosition", "( 1, 3 )\n" + " ".join(repr(v) for v in pos))
    _set(visu, "VisuCoreOrientation", "( 1, 9 )\n1 0 0 0 1 0 0 0 1")
    _set(visu, "VisuCoreSlicePacksDef", None)
    _set(scan / "method", "Method", f"<Bruker:{method}>")
    for name, block in extra.items():
        _set(scan / ("pdata/1/visu_pars" if name.startswith("Visu") else "method"), name, block)


_TE = [5.0 + 3 * k for k in range(24)]
_B = [0.0] * 4 + [float(100 * k) for k in range(1, 21)]
_TR = [100.0 * (k + 1) for k in range(24)]


@pytest.mark.parametrize("group, method, extra, kind, key, want", [
    ("FG_ECHO", "MGE", {"VisuAcqEchoTime": "( 24 )\n" + " ".join(map(repr, _TE))}, "MEGRE", "EchoTime",
     [t / 1000 for t in _TE]),
    ("FG_DIFFUSION", "DtiEpi", {"PVM_DwEffBval": "( 24 )\n" + " ".join(map(repr, _B))}, "DWI", "bValue", _B),
    ("FG_CYCLE", "FLASH", {"PVM_NRepetitions": "24", "PVM_ScanTime": "480000", "VisuAcqRepetitionTime": "( 1 )\n4.5"},
     "DCE", "FrameTimes", [20.0 * k for k in range(24)]),  # an 8-min DCE: 24 frames of 20 s, FLASH TR 4.5 ms
    ("FG_CYCLE", "RAREVTR", {"MultiRepTime": "( 24 )\n" + " ".join(map(repr, _TR))}, "VTR", "RepetitionTimes",
     [t / 1000 for t in _TR]),
])
def test_frame_groups_become_the_kinds_axis(tmp_path, group, method, extra, kind, key, want):
    s2 = _copy(PV6 / "2", tmp_path / "study" / "2")
    _relabel(s2, group, 24, method, extra)
    res = import_scans(s2, out=tmp_path / "o", **_ids())
    [p] = res.imported
    assert p.kind == kind and p.matrix == (128, 128, 1, 24)
    side = json.loads((tmp_path / "o" / next(f for f in res.files if f.endswith(".json"))).read_text())
    assert side[key] == pytest.approx(want)
    img = nib.load(str(tmp_path / "o" / next(f for f in res.files if f.endswith(".nii.gz"))))
    raw = np.fromfile(s2 / "pdata/1/2dseq", dtype="<i2").reshape(24, 128, 128)
    np.testing.assert_array_equal(np.asarray(img.dataobj.get_unscaled())[:, :, 0, :], raw.transpose(2, 1, 0))
    assert verify_manifest(tmp_path / "o" / "data_manifest.csv") == []


def test_3d_frame_equals_the_same_slices_as_2d(tmp_path):
    """Scan 2's 24 slices described as one 3-D frame give the same voxels and affine."""
    s2 = _copy(PV6 / "2", tmp_path / "study" / "2")
    visu = s2 / "pdata/1/visu_pars"
    pos = _nums(visu, "VisuCorePosition")[:3]
    for name, block in {"VisuCoreDim": "3", "VisuCoreSize": "( 3 )\n128 128 24", "VisuCoreFrameCount": "1",
                        "VisuCoreExtent": "( 3 )\n38.4 38.4 24", "VisuCoreDimDesc": "( 3 )\nspatial spatial spatial",
                        "VisuFGOrderDesc": None, "VisuFGOrderDescDim": None, "VisuCoreSlicePacksDef": None,
                        "VisuCorePosition": "( 1, 3 )\n" + " ".join(map(repr, pos)),
                        "VisuCoreOrientation": "( 1, 9 )\n1 0 0 0 1 0 0 0 1", "VisuCoreDataSlope": None,
                        "VisuCoreDataOffs": None}.items():
        _set(visu, name, block)
    slope = _nums(PV6 / "2/pdata/1/visu_pars", "VisuCoreDataSlope")[0]
    _set(visu, "VisuCoreDataSlope", f"( 1 )\n{slope!r}")
    _set(visu, "VisuCoreDataOffs", "( 1 )\n0")
    a, _ = bruker.paravision_scan_to_nifti(PV6 / "2", tmp_path / "a")
    b, _ = bruker.paravision_scan_to_nifti(s2, tmp_path / "b")
    A, B = nib.load(str(a)), nib.load(str(b))
    np.testing.assert_allclose(A.affine, B.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(A.dataobj.get_unscaled()), np.asarray(B.dataobj.get_unscaled()))


def test_19f_scan_is_f19_with_its_own_gyromagnetic_ratio(scan3, tmp_path):
    _set(scan3 / "method", "PVM_Nucleus1", "( 8 )\n<19F>")
    _set(scan3 / "method", "PVM_FrqWork", "( 8 )\n282.55 0 0 0 0 0 0 0")
    [p] = plan_import(scan3)
    assert p.kind == "F19" and p.sidecar["Nucleus"] == "19F"
    assert p.sidecar["MagneticFieldStrength"] == pytest.approx(282.55 / 40.0776, abs=1e-4)
