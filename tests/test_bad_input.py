"""Bad input, collected in one place.

Every case gives a clear :class:`~studylib.errors.StudyError` naming the file (or the manifest
row), and nothing on disk changes: the whole input tree is hashed before and after
(:func:`unchanged`).  Bad *voxels* are not errors: they give NaN + ``fit_ok=False``.

Cases: truncated/corrupt NIfTI (header, gzip stream, data), huge header dimensions (must
not allocate), wrong sidecar types, NaN/Inf/negative signals, empty masks, duplicated
animals (manifest, scans, histology), checksum mismatches, path escapes (``..``, absolute,
symlinks), unicode and HTML in animal IDs and group names (and the HTML reports escape
them); then Hypothesis fuzzing of the parsers *inside a real study* (tests/test_manifest.py
and tests/test_io.py fuzz them on their own).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_TE_MS, make_tiny_study
from studylib.cli import main as cli_main
from studylib.errors import DataFileError, FitInputError, ManifestError, StudyError
from studylib.fit.relaxometry import t2star
from studylib.io import load_histology, load_study
from studylib.io.nifti import read_header, read_nifti, write_nifti
from studylib.manifest import read_manifest, resolve_path, verify_manifest, write_manifest

SCAN = "raw/tiny/m01/day00/MEGRE.nii.gz"
SIDE = "raw/tiny/m01/day00/MEGRE.json"


# ----------------------------------------------------------------------------------- helpers

def tree_digest(root: Path) -> dict:
    """Every file, folder and symlink below ``root``: content hash, mode, link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st_ = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st_.st_mode)
            else:
                out[rel] = ("file", st_.st_mode, st_.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@contextlib.contextmanager
def unchanged(root: Path):
    """Assert that nothing below ``root`` is created, deleted or modified inside the block."""
    before = tree_digest(root)
    yield
    after = tree_digest(root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def reseal(manifest: Path) -> None:
    """Recompute every sha256 (as if the bad file had been bad when the manifest was written),
    so that the *content* checks, not the checksum, must catch the problem."""
    df = read_manifest(manifest)
    write_manifest(df.drop(columns="sha256"), manifest)


def edit_sidecar(root: Path, rel: str, **changes) -> Path:
    p = root / rel
    doc = json.loads(p.read_text())
    doc.update(changes)
    p.write_text(json.dumps(doc))
    return p


def manifest_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(manifest: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    manifest.write_text(buf.getvalue(), encoding="utf-8")


def load_all(manifest: Path, kind: str = "MEGRE"):
    """What a notebook does first: load lazily, then read every voxel."""
    ds = load_study(manifest, "tiny", kind)
    ds.signal.values  # noqa: B018 - computing reads every file
    ds.roi.values  # noqa: B018
    return ds


@pytest.fixture
def study(tmp_path) -> Path:
    return make_tiny_study(tmp_path / "s")


# ------------------------------------------------------------------ truncated / corrupt NIfTI

def _noise_scan_study(root: Path) -> Path:
    """A one-scan study whose MEGRE is incompressible noise (~130 kB gzip), so a truncated file
    still has a readable header and fails only when the voxel data are read."""
    rng = np.random.default_rng(7)
    te = np.asarray([2.0, 4.0, 6.0, 8.0])
    data = 500.0 + 500.0 * rng.random((32, 32, 8, 4))
    write_nifti(root / "raw/tiny/m01/day00/MEGRE.nii.gz", data, np.diag([0.1, 0.1, 0.5, 1.0]),
                sidecar={"EchoTime": (te / 1000).tolist(), "RepetitionTime": 1.2})
    rows = [dict(study="tiny", animal="m01", group="control", day=0, kind="MEGRE", path=f"raw/tiny/m01/day00/MEGRE{e}")
            for e in (".nii.gz", ".json")]
    return write_manifest(pd.DataFrame(rows), root / "data_manifest.csv")


def _truncate(p: Path, keep: float):
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * keep)])


def _flip_middle_byte(p: Path):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _garbage(p: Path):
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 700, dtype=np.uint8).tobytes())


def _gzipped_garbage(p: Path):
    p.write_bytes(gzip.compress(b"this is not a NIfTI header " * 30, mtime=0))


def _zero_dim(p: Path):
    img = nib.load(str(p))
    hdr = img.header.copy()
    raw = bytearray(hdr.binaryblock)
    raw[46:48] = np.int16(0).tobytes()  # dim[3] = 0 (the z size)
    p.write_bytes(gzip.compress(bytes(raw) + b"\0" * 4 + np.asarray(img.dataobj).tobytes(order="F"), mtime=0))


def _five_d(p: Path):
    img = nib.load(str(p))
    data = np.asarray(img.dataobj)[..., None]
    nib.save(nib.Nifti1Image(data, img.affine), str(p))


@pytest.mark.parametrize("corrupt, where, what", [
    (lambda p: _truncate(p, 0.95), "load", "corrupt or truncated gzip"),
    (lambda p: _truncate(p, 0.2), "load", "corrupt or truncated gzip"),
    (_garbage, "load", "not a readable NIfTI"),
    (_gzipped_garbage, "load", "not a readable NIfTI"),
    (_flip_middle_byte, "any", "NIfTI"),
    (_zero_dim, "load", "3-D or 4-D image|shape"),
    (_five_d, "load", "3-D or 4-D|volumes"),
], ids=["truncated-end", "truncated-header", "garbage", "gzipped-garbage", "flipped-byte", "zero-dim", "5-D"])
def test_corrupt_nifti_names_the_file_and_changes_nothing(study, corrupt, where, what):
    root = study.parent
    corrupt(root / SCAN)
    reseal(study)  # the checksum agrees: only the content checks can catch it
    with unchanged(root):
        with pytest.raises(DataFileError, match=what) as ei:
            ds = load_study(study, "tiny", "MEGRE")
            assert where in ("compute", "any"), "should have failed when loading the header"
            ds.signal.values  # noqa: B018
        assert str(root / SCAN) in str(ei.value)
        problems = verify_manifest(study)
        assert any(p.startswith("row ") and SCAN in p for p in problems), problems
        assert not any("sha256 mismatch" in p for p in problems)


def test_truncated_voxel_data_fails_on_compute_naming_the_file(tmp_path):
    m = _noise_scan_study(tmp_path)
    scan = tmp_path / "raw/tiny/m01/day00/MEGRE.nii.gz"
    _truncate(scan, 0.6)
    reseal(m)
    with unchanged(tmp_path):
        ds = load_study(m, "tiny", "MEGRE")  # the header is intact: lazy loading succeeds
        with pytest.raises(DataFileError, match="cannot read NIfTI data") as ei:
            ds.signal.values  # noqa: B018
        assert str(scan) in str(ei.value)
        assert [p for p in verify_manifest(m) if "corrupt gzip data" in p and "MEGRE.nii.gz" in p]
        assert cli_main(["verify", "--manifest", str(m)]) == 1


def _huge_header(p: Path, shape, *, compress=True):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_zooms((0.1, 0.1, 0.5) + (1.0,) * (len(shape) - 3))
    blob = hdr.binaryblock + b"\0" * 4 + b"\1" * 4096
    p.write_bytes(gzip.compress(blob, mtime=0) if compress else blob)


@pytest.mark.parametrize("compress", [True, False], ids=["nii.gz", "nii"])
def test_huge_header_dimensions_are_refused_without_allocating(tmp_path, compress):
    m = _noise_scan_study(tmp_path)
    scan = tmp_path / "raw/tiny/m01/day00/MEGRE.nii.gz"
    if not compress:  # an uncompressed .nii listed in the manifest instead
        scan.unlink()
        scan = scan.with_name("MEGRE.nii")
        rows = manifest_rows(m)
        rows[1]["path"] = "raw/tiny/m01/day00/MEGRE.nii"
        rows[1]["sha256"] = "0" * 64
        write_rows(m, rows)
    _huge_header(scan, (1000, 1000, 250, 4), compress=compress)  # 10^9 voxels, 2 GB claimed
    reseal(m)
    with unchanged(tmp_path):
        tracemalloc.start()
        try:
            with pytest.raises(DataFileError, match=r"header claims shape \(1000, 1000, 250, 4\)") as ei:
                load_study(m, "tiny", "MEGRE")
            with pytest.raises(DataFileError, match="header claims"):
                read_nifti(scan)  # what a chunk of a lazy study would call
            problems = verify_manifest(m)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert str(scan) in str(ei.value)
    assert any("header claims" in p and scan.name in p for p in problems), problems
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated for a header claiming 2 GB"


def test_read_header_accepts_exactly_full_files_and_refuses_one_byte_short(tmp_path):
    p = tmp_path / "a.nii"
    write_nifti(p, np.arange(60.0).reshape(5, 4, 3), np.eye(4))
    info = read_header(p)
    assert p.stat().st_size == info.vox_offset + info.nbytes
    b = p.read_bytes()
    p.write_bytes(b[:-1])
    with pytest.raises(DataFileError, match="truncated file"):
        read_header(p)


# --------------------------------------------------------------------------------- sidecars

@pytest.mark.parametrize("rel, changes, what", [
    (SIDE, {"EchoTime": "abc"}, "EchoTime must be"),
    (SIDE, {"EchoTime": [2.0, 4.0, 6.0, 8.0]}, "EchoTime must be.*milliseconds"),
    (SIDE, {"EchoTime": [0.002, 0.004, 0.006, 0.008, 0.010]}, "EchoTime|volumes"),
    (SIDE, {"EchoTime": [0.002, True, 0.006, 0.008]}, "EchoTime"),
    (SIDE, {"EchoTime": []}, "EchoTime"),
    (SIDE, {"RepetitionTime": [1.2]}, "RepetitionTime must be"),
    (SIDE, {"FlipAngle": "60"}, "FlipAngle must be"),
    (SIDE, {"MagneticFieldStrength": -9.4}, "MagneticFieldStrength must be"),
    (SIDE, {"NoiseSigma": "10"}, "NoiseSigma must be"),
    (SIDE, {"Agent": 3}, "Agent must be"),
    ("raw/tiny/m01/day00/CEST.json", {"ReferenceVolumes": [0.5]}, "ReferenceVolumes"),
    ("raw/tiny/m01/day00/roi.json", {"Labels": {"one": "tumour"}}, "Labels"),
])
def test_wrong_sidecar_types_name_the_file_and_key(study, rel, changes, what):
    root = study.parent
    bad = edit_sidecar(root, rel, **changes)
    reseal(study)
    kind = "CEST" if "CEST" in rel else "MEGRE"
    with unchanged(root):
        with pytest.raises(DataFileError, match=what) as ei:
            load_study(study, "tiny", kind)
        assert str(bad) in str(ei.value)
        assert any(p.startswith("row ") and (rel in p or str(bad) in p) for p in verify_manifest(study))


@pytest.mark.parametrize("text, what", [
    ('{"EchoTime": NaN}', "NaN"), ('{"EchoTime": [0.002, Infinity]}', "Infinity"), ("[0.002, 0.004]", "object"),
    ('{"EchoTime": [0.002, 0.004', "invalid JSON"), ("\ufeff{}", "invalid JSON|EchoTime|sidecar"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_unparseable_sidecar_names_the_file(study, text, what):
    root = study.parent
    p = root / SIDE
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    reseal(study)
    with unchanged(root):
        with pytest.raises(StudyError, match=what) as ei:
            load_study(study, "tiny", "MEGRE")
        assert str(p) in str(ei.value)


# ---------------------------------------------------------------------- NaN / Inf / negative

def _float_scan(p: Path, data_xyzn: np.ndarray):
    """A float32 NIfTI (as some converters write, NaN/Inf included) replacing a scan."""
    img = nib.Nifti1Image(data_xyzn.astype(np.float32), np.diag([0.1, 0.1, 0.5, 1.0]))
    nib.save(img, str(p))


def test_nan_inf_negative_voxels_are_nan_with_fit_ok_false_not_errors(study):
    root = study.parent
    te = np.asarray(TINY_TE_MS)
    r2s_true = 40.0
    clean = 1000.0 * np.exp(-te / 1000.0 * r2s_true) * np.ones((5, 4, 3, 1))
    data = clean.copy()
    data[0, 0, 0, 1] = np.nan
    data[1, 0, 0, 2] = np.inf
    data[2, 0, 0, 0] = -np.inf
    data[3, 0, 0, :] = -data[3, 0, 0, :]  # a voxel of negative "magnitudes"
    data[4, 0, 0, :] = 0.0  # no signal at all
    _float_scan(root / SCAN, data)
    _float_scan(root / "raw/tiny/m03/day07/MEGRE.nii.gz", np.full((5, 4, 3, 4), np.nan))  # an all-NaN scan
    reseal(study)
    with unchanged(root):
        assert verify_manifest(study) == []  # valid files: the values are the data's business
        ds = load_study(study, "tiny", "MEGRE")
        maps = t2star(ds.signal, method="nonlinear").compute()  # no exception
    m = maps.sel(animal="m01", day=0)
    bad = [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 0, 4)]  # (z, y, x) of the bad voxels
    for z, y, x in bad:
        assert not bool(m.fit_ok[z, y, x]) and np.isnan(float(m.r2star[z, y, x])), (z, y, x)
    ok = np.ones((3, 4, 5), bool)
    for z, y, x in bad:
        ok[z, y, x] = False
    assert m.fit_ok.values[ok].all()
    np.testing.assert_allclose(m.r2star.values[ok], r2s_true, rtol=1e-6)
    assert not maps.fit_ok.sel(animal="m03", day=7).any()  # the all-NaN scan: nothing fitted, no crash
    # an in-memory signal that is entirely NaN is an input error, not a map of NaN
    with pytest.raises(FitInputError, match="all NaN"):
        t2star(ds.signal.sel(animal="m03", day=7).compute())


# ------------------------------------------------------------------------------ empty masks

def test_empty_masks_are_nan_rows_or_clear_errors(study):
    from studylib import roi

    root = study.parent
    write_nifti(root / "raw/tiny/m02/day00/roi.nii.gz", np.zeros((5, 4, 3)), np.diag([0.1, 0.1, 0.5, 1.0]),
                sidecar={"Labels": {"1": "tumour", "2": "muscle"}})
    reseal(study)
    with unchanged(root):
        ds = load_study(study, "tiny", "MEGRE")
        maps = t2star(ds.signal, mask=ds.roi == 1)
        fitted = maps.fit_ok.sel(animal="m02", day=0)
        assert not bool(fitted.any())  # no voxel in the mask: nothing fitted, no error
        with pytest.raises(roi.RoiError, match=r"animal=m02, day=0.*label is empty"):
            roi.summarize(maps[["r2star", "fit_ok"]], ds.roi, labels={1: "tumour"}, empty="raise")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            tab = roi.summarize(maps[["r2star", "fit_ok"]], ds.roi, labels={1: "tumour"})
        assert any("m02" in str(x.message) for x in w)
        row = tab[(tab.animal == "m02") & (tab.day == 0) & (tab.variable == "r2star")].iloc[0]
        assert row.n_voxels == 0 and np.isnan(row["mean"])
        with pytest.raises(FitInputError, match="mask"):
            t2star(ds.signal, mask=np.zeros((2, 2), bool))


# ------------------------------------------------------------------------- duplicated animals

def test_same_animal_in_two_groups_is_a_manifest_error(study):
    rows = manifest_rows(study)
    i = next(i for i, r in enumerate(rows) if r["animal"] == "m01" and r["path"].endswith("CEST.json"))
    rows[i]["group"] = "treated"
    write_rows(study, rows)
    with unchanged(study.parent):
        with pytest.raises(ManifestError,
                           match=r"animal 'm01' of study 'tiny' has group '(control|treated)' but row \d+ says group") as ei:
            load_study(study, "tiny", "MEGRE")
        assert str(study) in str(ei.value) and f"row {i + 1}" in str(ei.value)


def test_two_scans_of_one_animal_and_day_name_both_files(study):
    root = study.parent
    rows = manifest_rows(study)
    src = next(r for r in rows if r["path"] == SCAN)
    for ext in (".nii.gz", ".json"):
        dst = root / f"raw/tiny/m01/day00/MEGRE_repeat{ext}"
        dst.write_bytes((root / SCAN.replace(".nii.gz", ext)).read_bytes())
        rows.append({**src, "path": f"raw/tiny/m01/day00/MEGRE_repeat{ext}"})
    write_rows(study, rows)
    reseal(study)
    with unchanged(root):
        with pytest.raises(DataFileError, match="two MEGRE images for animal 'm01' day 0") as ei:
            load_study(study, "tiny", "MEGRE")
        assert str(root / SCAN) in str(ei.value) and "MEGRE_repeat.nii.gz" in str(ei.value)


@pytest.mark.parametrize("table, what", [
    ("animal,iron_area_pct\nm01,1.5\nm02,4.0\nm01,3.2\n", "2 rows for animal 'm01'"),
    ("animal,group,iron_area_pct\nm01,treated,1.5\nm02,treated,4.0\n", "group 'treated' in the histology CSV but "
                                                                       "'control' in the manifest"),
    ("id,iron_area_pct\nm01,1.5\n", "no 'animal' column"),
    ("animal,iron_area_pct\nm09,1.5\n", "not in the manifest"),
])
def test_duplicated_or_inconsistent_histology_animals(study, table, what):
    root = study.parent
    h = root / "raw/tiny/histology.csv"
    h.write_text(table)
    reseal(study)
    with unchanged(root):
        with pytest.raises(DataFileError, match=what) as ei:
            load_histology(study, "tiny")
        assert "histology" in str(ei.value)
        if "m09" not in table:
            assert str(h) in str(ei.value)


def test_histology_one_row_per_animal_and_region_is_fine(study):
    root = study.parent
    (root / "raw/tiny/histology.csv").write_text("animal,region,iron_area_pct\nm01,left,1.5\nm01,right,2.5\n"
                                                 "m02,left,4.0\n")
    reseal(study)
    h = load_histology(study, "tiny")
    assert h.groupby("animal").size().to_dict() == {"m01": 2, "m02": 1}
    assert h.set_index(["animal", "region"]).loc[("m01", "right"), "group"] == "control"


# -------------------------------------------------------------------------- checksum mismatch

def test_checksum_mismatch_of_a_valid_replacement_scan(study, capsys):
    root = study.parent
    old = hashlib.sha256((root / SCAN).read_bytes()).hexdigest()
    write_nifti(root / SCAN, np.full((5, 4, 3, 4), 321.0), np.diag([0.1, 0.1, 0.5, 1.0]))  # valid, different
    new = hashlib.sha256((root / SCAN).read_bytes()).hexdigest()
    with unchanged(root):
        problems = verify_manifest(study)
        assert problems == [f"row {_row_of(study, SCAN)}: {SCAN}: sha256 mismatch: expected {old} got {new}"]
        assert cli_main(["verify", "--manifest", str(study)]) == 1
        assert SCAN in capsys.readouterr().out


def _row_of(manifest: Path, rel: str) -> int:
    return next(i for i, r in enumerate(manifest_rows(manifest), start=1) if r["path"] == rel)


# ------------------------------------------------------------------------------- path escapes

@pytest.mark.parametrize("path, what", [
    ("../outside/MEGRE.nii.gz", r"escapes the manifest folder \('\.\.'"),
    ("raw/../../outside/MEGRE.nii.gz", r"escapes the manifest folder"),
    ("/etc/passwd", "is absolute"),
    ("~/MEGRE.nii.gz", "is absolute"),
    ("C:/data/MEGRE.nii.gz", "is absolute"),
    ("raw\\tiny\\MEGRE.nii.gz", "backslash"),
    ("raw/link/MEGRE.nii.gz", r"escapes the manifest folder \(resolves to"),
])
def test_path_escapes_are_refused_naming_the_row(study, tmp_path, path, what):
    root = study.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "MEGRE.nii.gz").write_bytes((root / SCAN).read_bytes())
    (root / "raw" / "link").symlink_to(outside, target_is_directory=True)
    rows = manifest_rows(study)
    i = next(i for i, r in enumerate(rows) if r["path"] == SCAN)
    rows[i]["path"] = path
    write_rows(study, rows)
    with unchanged(tmp_path):
        with pytest.raises(ManifestError, match=what) as ei:
            load_study(study, "tiny", "MEGRE")
        assert str(study) in str(ei.value) and f"row {i + 1}" in str(ei.value)
        problems = verify_manifest(study)
        assert any(p.startswith(f"row {i + 1}: ") and ("escapes" in p or "absolute" in p or "backslash" in p)
                   for p in problems), problems


# --------------------------------------------------------------- unicode and HTML in identifiers

@pytest.mark.parametrize("animal", ["<script>alert(1)</script>", "m01&amp;", "мышь1", "m 01", "m01\u200b",
                                    "m01/../x", "\"m01\""])
def test_animal_ids_with_html_or_unicode_are_refused(study, animal):
    rows = manifest_rows(study)
    for r in rows:
        if r["animal"] == "m01":
            r["animal"] = animal
    write_rows(study, rows)
    with unchanged(study.parent):
        with pytest.raises(ManifestError, match="contains characters other than letters") as ei:
            load_study(study, "tiny", "MEGRE")
        assert str(study) in str(ei.value)


HOSTILE_GROUP = "<script>alert('x')</script> & Gruppe β “vehicle”"


def test_html_and_unicode_group_names_survive_and_reports_escape_them(study, tmp_path):
    import nbformat

    from studylib import roi, workbook

    rows = manifest_rows(study)
    for r in rows:
        if r["group"] == "control":
            r["group"] = HOSTILE_GROUP
    write_rows(study, rows)
    with unchanged(study.parent):
        ds = load_study(study, "tiny", "MEGRE")
        assert ds.group.sel(animal="m01").item() == HOSTILE_GROUP  # kept exactly
        tab = roi.summarize(t2star(ds.signal), ds.roi, labels={1: "tumour"}, variables=["r2star"])
    assert set(tab["group"]) == {HOSTILE_GROUP, "treated"}
    # a notebook that printed and displayed the table, rendered into the HTML report
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("tab")
    means = tab.groupby("group")["mean"].mean().to_frame()
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"groups: {sorted(set(tab['group']))}\n"),
        nbformat.v4.new_output("execute_result", data={"text/html": means._repr_html_(),
                                                       "text/plain": repr(means)}, execution_count=1),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Result"), cell]
    prov = {"experiment": "tiny", "title": f"Tiny {HOSTILE_GROUP}", "manifest": {"path": str(study), "sha256": "0" * 64},
            "scheduler": {"scheduler": HOSTILE_GROUP}}
    page = workbook.render_report(nb, prov)
    # and the index, from a record carrying the group name in its headline
    reports = tmp_path / "reports"
    reports.mkdir()
    rec = {"studylib_report": workbook.REPORT_FORMAT, "experiment": "tiny", "status": "ok",
           "title": HOSTILE_GROUP, "headline": f"{HOSTILE_GROUP} had lower R2*", "numbers": {HOSTILE_GROUP: 1.0}}
    (reports / "tiny.json").write_text(json.dumps(rec))
    index = workbook.write_index(reports).read_text(encoding="utf-8")
    for html_text in (page, index):
        assert "<script>alert" not in html_text
        assert "&lt;script&gt;alert(" in html_text
        assert "Gruppe β" in html_text  # unicode kept (UTF-8 page), not mangled


# --------------------------------------------------------------------------------- fuzzing

_SEG = st.sampled_from(["..", ".", "raw", "link", "tiny", "", "~", "C:", "%2e%2e", "\u2025", "．．", "é", " ",
                        "MEGRE.nii.gz", "\x00", "\\", "a" * 40])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_SEG, min_size=1, max_size=6), lead=st.sampled_from(["", "/", "./", "//"]))
def test_resolve_path_never_returns_a_path_outside_the_folder(tmp_path, parts, lead):
    base = tmp_path / "base"
    if not base.exists():
        (base / "raw").mkdir(parents=True)
        (tmp_path / "elsewhere").mkdir()
        (base / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        (base / "raw" / "up").symlink_to("../..", target_is_directory=True)
    rel = lead + "/".join(parts)
    try:
        p = resolve_path(base, rel)
    except ManifestError as err:
        assert repr(rel)[1:-1][:20] in str(err) or "empty" in str(err)
        return
    real_base = os.path.realpath(base)
    assert os.path.commonpath([real_base, os.path.realpath(p)]) == real_base


_CELL = st.one_of(st.text(max_size=12), st.sampled_from([
    "", "<b>x</b>", "m01", "MEGRE", "roi", "histology", "7", "-3", "1e3", "0" * 64, "../x", "/abs", "a,b", 'q"q',
    "line\nbreak", "β", "\u202e", " m01", "raw/tiny/m01/day00/MEGRE.nii.gz", "raw/tiny/m01/day00/MEGRE.json"]))
_COLS = ["study", "animal", "group", "day", "kind", "path", "sha256", "sex"]


@pytest.fixture(scope="module")
def fuzz_study(tmp_path_factory) -> Path:
    return make_tiny_study(tmp_path_factory.mktemp("fuzz") / "s")


@settings(max_examples=60, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(_COLS), _CELL), min_size=1, max_size=3))
def test_fuzzed_manifest_cells_give_a_study_or_a_study_error(fuzz_study, edits):
    """Any edit of a real manifest: load_study returns a Dataset or raises StudyError naming the
    manifest or a file -- never another exception -- and never touches the study's files."""
    rows = manifest_rows(fuzz_study)
    for i, col, val in edits:
        rows[i % len(rows)][col] = val
    with tempfile.TemporaryDirectory() as d:
        m = Path(d) / "data_manifest.csv"
        write_rows(m, rows)
        raw = Path(d) / "raw"
        raw.symlink_to(fuzz_study.parent / "raw", target_is_directory=True)  # the same files, read-only use
        before = tree_digest(fuzz_study.parent)
        try:
            ds = load_study(m, "tiny", "MEGRE")
        except StudyError as err:
            msg = str(err)
            assert str(m) in msg or str(raw) in msg or "tiny" in msg or "kind" in msg, msg
        else:
            assert ds.signal.dims == ("animal", "day", "te", "z", "y", "x")
            assert ds.signal.dtype == np.float32
        problems = verify_manifest(m)
        assert all(isinstance(p, str) for p in problems)
        assert tree_digest(fuzz_study.parent) == before


_JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9)
                           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
                           lambda ch: st.lists(ch, max_size=5) | st.dictionaries(st.text(max_size=4), ch, max_size=3),
                           max_leaves=8)


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["EchoTime", "RepetitionTime", "FlipAngle", "MagneticFieldStrength", "NoiseSigma",
                            "Agent", "ReferenceVolumes", "Other"]),
       value=st.one_of(_JSON_VALUE, st.lists(st.floats(1e-4, 1.0), min_size=4, max_size=4)))
def test_fuzzed_sidecar_values_in_a_real_study(fuzz_study, key, value):
    """One key of one sidecar replaced: load_study succeeds (and then the echo times are those of
    the sidecar) or raises DataFileError naming that sidecar."""
    side = fuzz_study.parent / SIDE
    original = side.read_bytes()
    try:
        doc = json.loads(original)
        doc[key] = value
        side.write_text(json.dumps(doc))
        reseal_copy = fuzz_study.with_name("m_fuzz.csv")
        df = read_manifest(fuzz_study)
        write_manifest(df.drop(columns="sha256"), reseal_copy)
        try:
            ds = load_study(reseal_copy, "tiny", "MEGRE")
        except DataFileError as err:
            assert str(side) in str(err), str(err)
        else:
            if key == "EchoTime":
                # all scans must agree, so a changed EchoTime can only load if it equals the others
                np.testing.assert_allclose(ds.te.values, np.asarray(value) * 1000.0)
            assert ds.signal.dtype == np.float32
    finally:
        side.write_bytes(original)


# ------------------------------------------------------------------ ROI label meanings and grids (issue 16)

def _rewrite_roi(root: Path, rel: str, *, swap: bool = False, affine=None) -> None:
    import nibabel as nib

    from studylib.io.nifti import write_nifti

    p = root / rel
    img = nib.load(p)
    lab = np.asarray(img.dataobj).astype(np.int16)
    if swap:
        lab = np.where(lab == 1, 2, np.where(lab == 2, 1, lab))
    write_nifti(p, lab, img.affine if affine is None else affine)


def test_roi_label_meanings_in_the_sidecar_are_honoured(study):
    """A lab's ROI file with 1 = muscle, 2 = tumour: the loader maps its values by meaning, so the tumour
    table is the tumour's (it used to analyse muscle as tumour, status ok)."""
    root = study.parent
    reference = load_all(study).roi.values.copy()  # lazy arrays re-read their files: keep the values
    rel = "raw/tiny/m01/day07/roi"
    _rewrite_roi(root, rel + ".nii.gz", swap=True)
    edit_sidecar(root, rel + ".json", Labels={"1": "muscle", "2": "Tumor"})
    reseal(study)
    ds = load_all(study)
    np.testing.assert_array_equal(ds.roi.values, reference)
    assert "tumour" in ds.roi.attrs["flag_meanings"] and "muscle" in ds.roi.attrs["flag_meanings"]


def test_two_values_meaning_one_region_or_one_value_two_meanings_are_refused(study):
    root = study.parent
    edit_sidecar(root, "raw/tiny/m01/day07/roi.json", Labels={"1": "tumour", "2": "tumor"})
    reseal(study)
    with pytest.raises(StudyError, match="roi.json: labels '2' and another both mean 'tumour'"):
        load_all(study)
    edit_sidecar(root, "raw/tiny/m01/day07/roi.json", Labels={"1": "tumour", "2": "necrosis"})
    reseal(study)
    with pytest.raises(StudyError, match="label 2 means 'necrosis' here but 'muscle' in .*roi.json: one study, one meaning"):
        load_all(study)


@pytest.mark.parametrize("flip", ["x", "shift"])
def test_roi_with_the_scan_shape_but_another_affine_is_refused(study, flip):
    """Same matrix, mirrored (or shifted) affine: the regions would land on the wrong tissue (issue 16)."""
    import nibabel as nib

    root = study.parent
    rel = "raw/tiny/m03/day07/roi.nii.gz"
    aff = nib.load(root / rel).affine.copy()
    if flip == "x":
        aff[0, 0] *= -1
    else:
        aff[1, 3] += 0.5
    _rewrite_roi(root, rel, affine=aff)
    reseal(study)
    with pytest.raises(StudyError, match=r"roi.nii.gz has the matrix of scan .*MEGRE.nii.gz but a different affine"):
        load_all(study)


# ------------------------------------------------------------------ units and ranges a fit will assume (issue 16)

@pytest.mark.parametrize("kind, sidecar, what", [
    ("VFA", {"FlipAngle": [2, 10, 20], "RepetitionTime": 15}, "RepetitionTime 15 s is implausible .*milliseconds"),
    ("VFA", {"FlipAngle": [2, 10, 20]}, "VFA sidecar has no RepetitionTime"),
    ("VFA", {"FlipAngle": [0.035, 0.17, 0.35], "RepetitionTime": 0.015}, "FlipAngle .* radians"),
    ("DCE", {"FrameTimes": [float(k) for k in range(0, 40)], "RepetitionTime": 0.004, "FlipAngle": 15},
     "FrameTimes span 39 s over 40 frames: minutes"),
    ("DCE", {"FrameTimes": [k * 5000.0 for k in range(60)], "RepetitionTime": 0.004, "FlipAngle": 15},
     "FrameTimes span .* milliseconds"),
    ("DCE", {"FrameTimes": [0.0, 5.0, 4.0], "RepetitionTime": 0.004, "FlipAngle": 15}, "FrameTimes must increase"),
    ("DWI", {"bValue": [0, 5e8, 1e9]}, "s/m² written as s/mm²"),
    ("DWI", {"bValue": [0, 0.5, 1.0]}, "ms/µm²"),
    ("DWI", {"bValue": [800, 800]}, "two distinct b-values"),
    ("MEGRE", {"EchoTime": [0.004]}, "EchoTime has 1 value"),
    ("MEGRE", {"EchoTime": [0.004, 0.002, 0.006]}, "EchoTime must be in increasing"),
    ("MEGRE", {"EchoTime": [0.002, 0.002, 0.004]}, "EchoTime has repeated values"),
    ("IR", {"InversionTime": [0.1, 0.05]}, "InversionTime must be in increasing"),
])
def test_implausible_acquisition_parameters_are_refused_with_the_unit_hint(kind, sidecar, what):
    from studylib.io.sidecar import acquisition_axis

    with pytest.raises(DataFileError, match=what) as err:
        acquisition_axis(kind, sidecar, source="x.json")
    assert str(err.value).startswith("x.json: ")  # the file is named


def test_unsorted_echo_times_fail_verify_and_load_naming_the_sidecar(study):
    root = study.parent
    rel = "raw/tiny/m02/day00/MEGRE.json"
    edit_sidecar(root, rel, EchoTime=[0.004, 0.002, 0.006, 0.008])
    reseal(study)
    problems = verify_manifest(study)
    assert any(rel in p and "EchoTime must be in increasing" in p for p in problems), problems
    with pytest.raises(DataFileError, match="MEGRE.json: EchoTime must be in increasing"):
        load_all(study)


def test_a_study_mixing_field_strengths_is_refused_not_pooled(study):
    root = study.parent
    edit_sidecar(root, "raw/tiny/m02/day00/MEGRE.json", MagneticFieldStrength=7.0)
    reseal(study)
    problems = verify_manifest(study)
    assert any("study tiny: scans at different field strengths: 7 T" in p and "9.4 T" in p for p in problems), problems
    with pytest.raises(DataFileError, match="different field strengths"):
        load_all(study)


def test_interpolated_roi_labels_fail_verify(study):
    """A label map resampled with linear interpolation (1.5 between tumour and muscle) used to be rounded
    silently (168 tumour voxels instead of 124)."""
    import nibabel as nib

    from studylib.io.nifti import write_nifti

    root = study.parent
    p = root / "raw/tiny/m01/day00/roi.nii.gz"
    img = nib.load(p)
    lab = np.asarray(img.dataobj, dtype=float)
    lab[2, 2, 1] = 1.5
    write_nifti(p, lab, img.affine)
    reseal(study)
    problems = verify_manifest(study)
    assert any("m01/day00/roi.nii.gz: ROI labels are not whole numbers" in p for p in problems), problems


def test_verify_refuses_an_roi_on_a_mirrored_grid(study):
    import nibabel as nib

    root = study.parent
    rel = "raw/tiny/m01/day00/roi.nii.gz"
    aff = nib.load(root / rel).affine.copy()
    aff[0, 0] *= -1
    _rewrite_roi(root, rel, affine=aff)
    reseal(study)
    problems = verify_manifest(study)
    assert any(rel in p and "different affine" in p for p in problems), problems


# ------------------------------------------------------------------ int16 wrap-around

def _int16_megre(path: Path, values: np.ndarray, *, wrap: bool) -> None:
    """Stored as a careless export would: int16 of values up to ~40000 (wrap=True casts them, so those
    above 32767 turn negative) or the same values halved (fits int16)."""
    data = values if wrap else values / 2.0
    img = nib.Nifti1Image(data.astype(np.int64).astype(np.int16), np.diag([0.1, 0.1, 0.5, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "fits"])
def test_int16_wrap_around_in_a_magnitude_scan_is_refused_naming_the_file(study, wrap):
    """int16 wrap-around garbage used to be fitted as valid data (fit_ok 100 %)."""
    root = study.parent
    rel = "raw/tiny/m01/day00/MEGRE.nii.gz"
    img = nib.load(root / rel)
    te = np.arange(img.shape[-1])
    bright = 40000.0 * np.exp(-te / 6.0)  # the first echoes exceed 32767
    values = np.broadcast_to(bright, img.shape).copy()
    _int16_megre(root / rel, values, wrap=wrap)
    reseal(study)
    if wrap:
        with pytest.raises(DataFileError, match=r"MEGRE.nii.gz: \d+ voxel value\(s\) are stored as negative int16 "
                                                r"\(down to -\d+\).*wrapped around.*uint16 or float32"):
            load_all(study)
    else:
        ds = load_all(study)
        assert float(ds.signal.sel(animal="m01", day=0).max()) == pytest.approx(20000.0, rel=1e-3)


def test_small_negative_values_and_signed_inversion_recovery_are_not_wrap_around():
    from studylib.io.nifti import wrap_around_problem

    rng = np.random.default_rng(0)
    low = rng.integers(-20, 3000, 1000).astype(np.int16)  # a few small negatives, far below the int16 maximum
    assert wrap_around_problem(low) is None
    full = np.asarray([32000, 31000, -30000, 5], dtype=np.int16)  # full-range data with large negatives
    assert "wrapped around" in wrap_around_problem(full)
    assert wrap_around_problem(np.asarray([60000, 10], dtype=np.uint16)) is None  # unsigned: cannot wrap to < 0
    from studylib.manifest import SIGNED_KINDS

    assert "IR" in SIGNED_KINDS and "MEGRE" not in SIGNED_KINDS


def test_trailing_spaces_in_study_and_animal_are_refused_by_verify_and_load(study):
    """'tiny ' used to pass verify and load, then the cache found 'no manifest rows' for study 'tiny'."""
    from studylib.cache import manifest_rows as cache_rows

    text = study.read_text(encoding="utf-8").splitlines()
    header, body = text[0].split(","), [ln.split(",") for ln in text[1:]]
    spaced = [[c + " " if h in ("study", "animal", "group", "kind") and c else c for h, c in zip(header, row)]
              for row in body]
    study.write_text("\n".join([",".join(header)] + [",".join(r) for r in spaced]) + "\n", encoding="utf-8")
    problems = verify_manifest(study)
    assert any("study 'tiny ' has leading or trailing spaces" in p for p in problems), problems
    assert any("animal 'm01 ' has leading or trailing spaces" in p for p in problems), problems
    with pytest.raises(ManifestError, match="has leading or trailing spaces"):
        load_all(study)
    with pytest.raises(StudyError, match="no manifest rows for study='tiny'.*studylib verify --manifest"):
        cache_rows(study, study="tiny", kinds=["MEGRE"])  # the cache points at verify, which names the spaces
