"""``studylib export`` (BIDS derivatives) and ``studylib add-roi`` (the ROI round trip) on the ci study.

The ci study is copied once for this module (the ROI round trip edits the manifest); the
ampb_ferumoxytol notebook is run on the copy once, so the export of its maps is checked against
the cache entry the run wrote (same key: a cache hit).
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from studylib.cache import Cache, manifest_rows
from studylib.conventions import MAP_UNITS, ROI_LABELS
from studylib.errors import DataFileError, ExperimentError, StudyError, WorkbookError
from studylib.manifest import read_manifest, resolve_path, write_manifest
from studylib.workbook.export import (EXPORT_MARKER, MAP_STEPS, MAP_SUFFIXES, export_bids, register_roi, session_label,
                                      subject_label)

EXP = "ampb_ferumoxytol"


@pytest.fixture(scope="module")
def study(ci_study, tmp_path_factory) -> dict:
    """A private copy of the ci study with the ampb_ferumoxytol notebook run on it."""
    from studylib import workbook as wb

    root = tmp_path_factory.mktemp("export")
    data = root / "study"
    shutil.copytree(Path(ci_study).parent, data, ignore=shutil.ignore_patterns("derived"))
    manifest = data / Path(ci_study).name
    reports, cache = root / "reports", root / "derived"
    rc = wb.run([EXP], preset="ci", reports=reports, manifest=manifest, cache_dir=cache, progress=False)
    record = json.loads((reports / f"{EXP}.json").read_text())
    assert rc == 0 and record["status"].startswith("ok"), record.get("error")
    return {"root": root, "manifest": manifest, "reports": reports, "cache": cache, "record": record}


@pytest.fixture(scope="module")
def exported(study) -> dict:
    out = study["root"] / "bids_ampb"
    res = export_bids(EXP, out, preset="ci", manifest=study["manifest"], reports=study["reports"])
    return {"out": out, "res": res}


def _images(out: Path) -> list[Path]:
    return sorted(out.glob("sub-*/ses-*/anat/*.nii.gz"))


def _sidecar(nii: Path) -> dict:
    return json.loads(nii.with_name(nii.name[: -len(".nii.gz")] + ".json").read_text())


def _source(nii: Path, manifest: Path) -> Path:
    uri = _sidecar(nii)["Sources"][0]
    assert uri.startswith("bids:raw:")
    return resolve_path(manifest.parent, uri[len("bids:raw:"):])


def test_export_reuses_the_runs_cache_entry(study, exported):
    from studylib._codehash import code_hash_of

    step = exported["res"].steps["t2star_maps"]
    run_keys = [ev["key"] for ev in study["record"]["cache"]["events"] if ev["name"] == "t2star_maps"]
    assert len(run_keys) == 1 and "the run recorded in" in step["params_from"]
    run_entry = next((study["cache"] / EXP / "t2star_maps").glob(f"{run_keys[0]}*"))
    meta = json.loads((run_entry / "_entry.json").read_text())
    assert step["params"] == meta["params"]  # the notebook's parameters, read from its own cache entry
    if code_hash_of(*meta["code_modules"]) != meta["code"]:
        pytest.skip("the fit's source changed between the notebook run and the export (a tree being edited)")
    assert step["cache_key"] == run_entry.name  # the same cached step, the same key: a cache hit


def test_every_map_is_on_its_raw_scans_grid_with_the_cached_values(study, exported):
    out, manifest = exported["out"], study["manifest"]
    key = exported["res"].steps["t2star_maps"]["cache_key"]
    cached = Cache(EXP, study["cache"], verbose=False).load("t2star_maps", key)
    maps = _images(out)
    suffixes = {p.name.split("_")[-1][: -len(".nii.gz")] for p in maps}
    assert suffixes == {"T2starmap", "R2starmap", "S0map", "mask", "dseg"}
    n_sessions = int(cached["t2star"].notnull().any(("z", "y", "x")).sum())
    assert len(exported["res"].sessions) == n_sessions == len(list(out.glob("sub-*/ses-*/anat/*_T2starmap.nii.gz")))
    by_suffix = {v[0]: (k, v[1]) for k, v in MAP_SUFFIXES.items()}
    n_checked = 0
    for nii in maps:
        img = nib.load(nii)
        raw = nib.load(_source(nii, manifest))
        assert np.array_equal(img.affine, raw.affine), nii.name
        assert img.shape == raw.shape[:3], nii.name
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        side = _sidecar(nii)
        animal, day = side["Animal"], side["Day"]
        suffix = nii.name.split("_")[-1][: -len(".nii.gz")]
        if suffix in by_suffix:
            var, units = by_suffix[suffix]
            assert side["Units"] == units
            factor = 1e-3 if (MAP_UNITS[var], units) == ("ms", "s") else 1.0
            want = np.float32(cached[var].sel(animal=animal, day=day).transpose("z", "y", "x").values * factor)
            got = np.asanyarray(img.dataobj)
            assert got.dtype == np.float32
            assert np.array_equal(got, want.T, equal_nan=True), nii.name  # (z, y, x) -> NIfTI (x, y, z)
            assert np.isfinite(got).any()
            n_checked += 1
        elif suffix == "dseg":
            roi_rel = side["Sources"][0][len("bids:raw:"):]
            raw_roi = np.asanyarray(nib.load(resolve_path(manifest.parent, roi_rel)).dataobj)
            assert np.array_equal(np.asanyarray(img.dataobj), raw_roi)
    assert n_checked == 3 * n_sessions
    # T2* in seconds and R2* in 1/s describe the same fit: R2* = 1 / T2* where both are finite
    nii = next(out.glob("sub-*/ses-*/anat/*_T2starmap.nii.gz"))
    t2s = np.asanyarray(nib.load(nii).dataobj).astype(float)
    r2s = np.asanyarray(nib.load(str(nii).replace("T2starmap", "R2starmap")).dataobj).astype(float)
    ok = np.isfinite(t2s) & np.isfinite(r2s) & (t2s > 0)
    assert ok.any() and np.allclose(r2s[ok], 1.0 / t2s[ok], rtol=1e-5)


def test_dataset_description_and_label_meanings(study, exported):
    out = exported["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["Name"] and desc["BIDSVersion"].count(".") == 2
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "studylib" and gen["Version"] and len(gen["CodeSha256"]) == 64
    assert gen["Run"]["fingerprint"] == study["record"]["fingerprint"]
    assert gen["Run"]["manifest_unchanged_since_run"] is True
    assert Path(desc["DatasetLinks"]["raw"][len("file://"):]) == study["manifest"].parent
    lines = (out / "dseg.tsv").read_text().splitlines()
    assert lines[0] == "index\tname"
    table = {int(i): n for i, n in (ln.split("\t") for ln in lines[1:])}
    assert {k: table[k] for k in ROI_LABELS} == ROI_LABELS
    assert (out / EXPORT_MARKER).is_file()
    parts = (out / "participants.tsv").read_text().splitlines()
    assert parts[0].startswith("participant_id\tanimal\tgroup") and len(parts) - 1 == len(
        {p.parts[-4] for p in _images(out)})
    custom = (out / ".bidsignore").read_text().split()
    assert "*_ADCmap.*" in custom and "*_T2starmap.*" not in custom


@pytest.mark.parametrize("experiment, step, suffixes", [
    ("collagen_adc", "adc_maps", {"ADCmap"}),
    ("ktrans_hypoxia", "dce_maps", {"T1map", "Ktransmap", "kepmap", "vemap", "vpmap"}),
])
def test_adc_and_dce_maps_without_a_run(study, tmp_path, experiment, step, suffixes):
    out = tmp_path / "bids"
    cache = tmp_path / "derived"
    res = export_bids(experiment, out, preset="ci", manifest=study["manifest"], reports=tmp_path / "none",
                      cache_dir=cache)
    assert res.steps[step]["params_from"].startswith("the step's defaults")
    cached = Cache(experiment, cache, verbose=False).load(step, res.steps[step]["cache_key"])
    by_suffix = {v[0]: (k, v[1]) for k, v in MAP_SUFFIXES.items()}
    seen = set()
    for nii in _images(out):
        suffix = nii.name.split("_")[-1][: -len(".nii.gz")]
        raw = nib.load(_source(nii, study["manifest"]))
        img = nib.load(nii)
        assert np.array_equal(img.affine, raw.affine) and img.shape == raw.shape[:3]
        if suffix in by_suffix:
            var, units = by_suffix[suffix]
            side = _sidecar(nii)
            assert side["Units"] == units
            factor = 1e-3 if (MAP_UNITS[var], units) == ("ms", "s") else 1.0
            want = np.float32(cached[var].sel(animal=side["Animal"], day=side["Day"]).transpose("z", "y", "x").values
                              * factor)
            assert np.array_equal(np.asanyarray(img.dataobj), want.T, equal_nan=True), nii.name
            seen.add(suffix)
    assert seen == suffixes
    if step == "dce_maps":  # T10 of tissue in seconds (hundreds of ms to a few s), not milliseconds
        t1 = np.concatenate([np.asanyarray(nib.load(p).dataobj).ravel()
                             for p in out.glob("sub-*/ses-*/anat/*_T1map.nii.gz")])
        t1 = t1[np.isfinite(t1)]
        assert t1.size and 0.1 < np.median(t1) < 5.0


def test_bad_inputs(study, tmp_path):
    with pytest.raises(WorkbookError, match="unknown experiment 'no_such'"):
        export_bids("no_such", tmp_path / "a", preset="ci", manifest=study["manifest"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(WorkbookError, match="not empty and not written by studylib export"):
        export_bids(EXP, full, preset="ci", manifest=study["manifest"], reports=study["reports"])
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]
    # a manifest whose ampb_ferumoxytol rows have no MEGRE scans: nothing to fit the maps from
    df = read_manifest(study["manifest"])
    keep = df[~((df["study"] == EXP) & (df["kind"] == "MEGRE"))]
    other = write_manifest(keep, study["manifest"].parent / "no_megre.csv")
    with pytest.raises(ExperimentError, match="no MEGRE images"):
        export_bids(EXP, tmp_path / "b", preset="ci", manifest=other)
    assert not (tmp_path / "b").exists()
    from studylib.cli import main

    assert main(["export", "no_such", "--bids", str(tmp_path / "c"), "--manifest", str(study["manifest"])]) == 1


def test_writes_are_all_or_nothing_and_an_export_may_be_replaced(study, exported, tmp_path, monkeypatch):
    from studylib.workbook import export as ex

    out = tmp_path / "bids"
    monkeypatch.setattr(ex, "_write_top", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        export_bids(EXP, out, preset="ci", manifest=study["manifest"], reports=study["reports"])
    assert not out.exists() and not list(tmp_path.glob(".bids.export-*"))
    monkeypatch.undo()
    first = export_bids(EXP, out, preset="ci", manifest=study["manifest"], reports=study["reports"])
    again = export_bids(EXP, out, preset="ci", manifest=study["manifest"], reports=study["reports"])  # marker: ok
    assert first.files == again.files and (out / "dataset_description.json").is_file()
    assert not list(tmp_path.glob(".bids.export-*"))


def test_roi_round_trip(study, exported, tmp_path):
    """Export the dseg, edit it as in a viewer, register it as the session's ROI, and load_study uses it."""
    from studylib.io.load import load_study

    manifest = study["manifest"]
    out = exported["out"]
    dseg = sorted(out.glob("sub-m02/ses-day0/anat/*_dseg.nii.gz"))[0]
    img = nib.load(dseg)
    lab = np.asanyarray(img.dataobj).copy()
    tumour = lab == 1
    assert tumour.sum() > 4
    xs = np.nonzero(tumour)[0]
    lab[(lab == 1) & (np.arange(lab.shape[0])[:, None, None] <= np.median(xs))] = 0  # erase half the tumour
    edited = tmp_path / "edited.nii.gz"
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), edited)  # a viewer saves uint8 labels

    before = load_study(manifest, EXP, "MEGRE")
    key_before = Cache(EXP, study["cache"], verbose=False).key(
        "t2star_maps", inputs=[manifest_rows(manifest, study=EXP, kinds=["MEGRE", "roi"])], params={}, code=())
    with pytest.raises(StudyError, match="already has an ROI"):
        register_roi(edited, study=EXP, animal="m02", day=0, manifest=manifest)
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])), flipped)
    with pytest.raises(DataFileError, match="different affine"):
        register_roi(flipped, study=EXP, animal="m02", day=0, manifest=manifest, replace=True)
    from studylib.cli import main

    assert main(["add-roi", str(edited), "--study", EXP, "--animal", "m02", "--day", "0", "--manifest", str(manifest),
                 "--replace"]) == 0
    after = load_study(manifest, EXP, "MEGRE")
    got = after["roi"].sel(animal="m02", day=0).values
    assert np.array_equal(got, lab.T.astype(np.int16))  # NIfTI (x, y, z) -> design (z, y, x)
    assert int((got == 1).sum()) < int((before["roi"].sel(animal="m02", day=0).values == 1).sum())
    for a, d in [("m01", 0), ("m02", 7)]:  # other sessions untouched
        assert np.array_equal(after["roi"].sel(animal=a, day=d).values, before["roi"].sel(animal=a, day=d).values)
    rows = read_manifest(manifest)
    sess = rows[(rows["study"] == EXP) & (rows["animal"] == "m02") & (rows["day"] == 0) & (rows["kind"] == "roi")]
    assert len(sess) == 1 and Path(sess["path"].iloc[0]).name.startswith("roi_")
    key_after = Cache(EXP, study["cache"], verbose=False).key(
        "t2star_maps", inputs=[manifest_rows(manifest, study=EXP, kinds=["MEGRE", "roi"])], params={}, code=())
    assert key_after != key_before  # the next run refits with the new ROI


def test_register_roi_with_a_label_table_maps_values_by_meaning(study, tmp_path):
    from studylib.io.load import load_study

    manifest = study["manifest"]
    ds = load_study(manifest, EXP, "MEGRE")
    lab = ds["roi"].sel(animal="m03", day=0).values.T.copy()  # design -> NIfTI order
    aff = nib.load(resolve_path(manifest.parent, "raw/ampb_ferumoxytol/m03/day00/MEGRE.nii.gz")).affine
    swapped = np.where(lab == 1, 2, np.where(lab == 2, 1, lab)).astype(np.int16)  # a lab that calls muscle 1
    f = tmp_path / "mine.nii.gz"
    nib.save(nib.Nifti1Image(swapped, aff), f)
    tsv = tmp_path / "labels.tsv"
    names = {1: "muscle", 2: "Tumor", **{v: ROI_LABELS[v] for v in ROI_LABELS if v > 2}}
    tsv.write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in names.items()))
    res = register_roi(f, study=EXP, animal="m03", day=0, manifest=manifest, labels=tsv, replace=True)
    assert res.new_rows == 2 and res.replaced
    again = load_study(manifest, EXP, "MEGRE")["roi"].sel(animal="m03", day=0).values
    assert np.array_equal(again, lab.T)  # back to the conventional values by meaning
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(swapped), aff), zero)
    with pytest.raises(DataFileError, match="holds no label"):
        register_roi(zero, study=EXP, animal="m03", day=0, manifest=manifest, replace=True)
    with pytest.raises(StudyError, match="no scan of study"):
        register_roi(f, study=EXP, animal="m99", day=0, manifest=manifest)


def test_map_steps_cover_the_catalogued_kinds():
    from studylib.analysis import maps

    for step in MAP_STEPS.values():
        assert set(step.variables) <= set(MAP_SUFFIXES)
        fn = {"t2star_maps": maps.fit_relaxation_maps, "adc_maps": maps.fit_adc_maps, "dce_maps": maps.fit_dce_maps}
        assert f'"{step.name}"' in inspect.getsource(fn[step.name])  # the step's own cache entry name


def test_an_experiment_without_a_map_step_exports_its_roi_labels(study, tmp_path):
    out = tmp_path / "bids"
    res = export_bids("fluorine19_pfc", out, preset="ci", manifest=study["manifest"], reports=tmp_path / "none")
    assert not res.steps and "only the ROI labels" in res.notes[0]
    images = _images(out)
    assert images and all(p.name.endswith("_dseg.nii.gz") for p in images)
    for nii in images:
        img, raw = nib.load(nii), nib.load(_source(nii, study["manifest"]))  # Sources[0]: the ROI file itself
        assert np.array_equal(img.affine, raw.affine) and img.shape == raw.shape[:3]
        assert set(np.unique(np.asanyarray(img.dataobj))) <= {0, *ROI_LABELS}
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_maps_a_notebook_keeps_are_exported_on_their_scans_grid(tiny_study, tmp_path):
    """A map computed in the notebook (here MTRasym of the tiny study's CEST scans) is exported once kept with
    ``sl.keep_maps``: ``MTRasymmap`` (%, custom, in .bidsignore) on the CEST scan's affine, bit for bit."""
    import studylib as sl
    from studylib.errors import ExperimentError

    cache = tmp_path / "derived"
    ds = sl.load_study(tiny_study, "tiny", "CEST")
    res = sl.mtr_asym(ds["signal"].sortby("offset"), ds["m0"], deltas_ppm=(0.4,)).compute()
    maps = res.sel(delta=0.4, drop=True)
    key = sl.keep_maps("tiny", tiny_study, cache, maps=maps, source_kind="CEST", name="cest_maps")
    assert key
    out = tmp_path / "bids"
    result = export_bids("tiny", out, manifest=tiny_study, reports=tmp_path / "none", cache_dir=cache)
    assert "cest_maps" in result.steps
    for animal, day in [("m01", 0), ("m01", 7), ("m02", 0), ("m03", 0), ("m03", 7)]:
        stem = out / f"sub-{subject_label(animal)}" / f"ses-{session_label(day)}" / "anat"
        nii = stem / f"sub-{subject_label(animal)}_ses-{session_label(day)}_MTRasymmap.nii.gz"
        img = nib.load(nii)
        raw = nib.load(tiny_study.parent / f"raw/tiny/{animal}/day{day:02d}/CEST.nii.gz")
        np.testing.assert_array_equal(img.affine, raw.affine)
        want = maps["mtr_asym"].sel(animal=animal, day=day).transpose("z", "y", "x").values.astype(np.float32)
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.transpose(want, (2, 1, 0)))
        assert _sidecar(nii)["Units"] == "%"
    assert "*_MTRasymmap.*" in (out / ".bidsignore").read_text()

    with pytest.raises(ExperimentError, match="not an image kind"):
        sl.keep_maps("tiny", tiny_study, cache, maps=maps, source_kind="CESTX")
    with pytest.raises(ExperimentError, match="scan-grid dims"):
        sl.keep_maps("tiny", tiny_study, cache, maps=maps.isel(z=0), source_kind="CEST")
    with pytest.raises(ExperimentError, match="needs a name"):
        sl.keep_maps("tiny", tiny_study, cache, maps=maps["mtr_asym"].rename(None), source_kind="CEST")


#: the BIDS validator installed by ``make bids-validator`` (part of ``make test``), or $STUDYLIB_BIDS_VALIDATOR
BIDS_VALIDATOR = Path(__file__).resolve().parents[1] / ".tools/bids-validator/node_modules/.bin/bids-validator"
#: derivative-only files: bids-validator 1.x has rules for raw datasets only, so it reports these as not BIDS
DERIVATIVE_ONLY = ("dseg.tsv", "_dseg.nii.gz", "_dseg.json", "_mask.nii.gz", "_mask.json")


def validate_bids(folder: Path) -> tuple[list, list]:
    """(errors, warnings) of the BIDS validator on ``folder``, each ``(key, [file names])``."""
    import os
    import subprocess

    exe = os.environ.get("STUDYLIB_BIDS_VALIDATOR") or str(BIDS_VALIDATOR)
    assert Path(exe).is_file(), f"{exe}: no BIDS validator; `make bids-validator` installs it"
    r = subprocess.run([exe, str(folder), "--json"], capture_output=True, text=True, timeout=300)
    doc = json.loads(r.stdout)
    out = []
    for level in ("errors", "warnings"):
        out.append([(i["key"], sorted(Path(f["file"]["relativePath"]).name for f in i["files"] if f.get("file")))
                    for i in doc["issues"][level]])
    return out[0], out[1]


def test_the_bids_validator_accepts_the_export(exported, tiny_study, tmp_path):
    """bids-validator 1.15 on the exported folder: no error but its raw-only rules refusing the derivative-only
    files (dseg, fit masks), no warning but the missing Authors (a lab fills them; studylib cannot know them).
    The maps with custom suffixes are covered by the folder's .bidsignore."""
    out = exported["out"]
    errors, warnings = validate_bids(out)
    found = dict(errors)
    # 1.x checks a .nii.gz file's *compressed* size against the 348-byte NIfTI header: the ci study's small,
    # mostly-NaN maps compress below that. Each such file must be a complete gzip NIfTI that nibabel reads.
    for name in found.pop("NIFTI_TOO_SMALL", []):
        path = next(out.rglob(name))
        assert path.stat().st_size < 348 and path.read_bytes()[:2] == b"\x1f\x8b", name
        img = nib.load(path)
        assert img.header.sizeof_hdr == 348 and np.asarray(img.dataobj).shape == img.shape, name
    assert list(found) == ["NOT_INCLUDED"], errors
    assert all(name.endswith(DERIVATIVE_ONLY) for name in found["NOT_INCLUDED"]), errors
    warned = dict(warnings)
    # an animal that left the study early has fewer sessions: true of the data, and the validator says so
    for ses in warned.pop("MISSING_SESSION", []):
        subjects = {p.parent.name for p in out.glob(f"sub-*/{ses}")}
        assert subjects and subjects != {p.name for p in out.glob("sub-*")}, ses  # some animals lack it
    assert list(warned) == ["NO_AUTHORS"], warnings
