"""``studylib new``: a lab's own study folder with a generic notebook, run by ``studylib run`` and ``status``.

The generic r2star notebook, run on the ci study's Amp B scans copied into a new study folder, must give
the treatment effect the Amp B notebook gives on the same scans: the same steps, not a second copy.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from studylib import workbook as wb
from studylib.catalog import EXPERIMENTS
from studylib.cli import main
from studylib.manifest import read_manifest, verify_manifest, write_manifest
from studylib.workbook.parameters import declared_parameters
from studylib.workbook.scaffold import BIOMARKERS, DESIGNS, new_study, render_notebook

STUDY = "lab_r2star"


def _post_contrast_sessions(src_manifest: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the sessions whose MEGRE sidecar names a contrast ``Agent`` (and the histology): the Amp B
    design images each animal before and 24 h after ferumoxytol, on separate days."""
    side = rows[(rows["kind"] == "MEGRE") & rows["path"].str.endswith(".json")]
    post = {(a, d) for a, d, p in zip(side["animal"], side["day"], side["path"])
            if json.loads((src_manifest.parent / p).read_text()).get("Agent")}
    keep = [k == "histology" or (a, d) in post for k, a, d in zip(rows["kind"], rows["animal"], rows["day"])]
    return rows[keep]


def _copy_study_rows(src_manifest: Path, src_study: str, folder: Path, study: str, *, post_only=False) -> Path:
    """The rows of ``src_study`` (and their files) copied into ``folder``'s manifest as ``study``."""
    rows = read_manifest(src_manifest)
    rows = rows[rows["study"] == src_study].copy()
    if post_only:
        rows = _post_contrast_sessions(src_manifest, rows)
    assert len(rows) > 0
    for rel in rows["path"]:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_manifest.parent / rel, dest)
    rows["study"] = study
    return write_manifest(rows, folder / "data_manifest.csv")


@pytest.fixture(scope="module")
def lab(ci_study, tmp_path_factory):
    """A study made by ``studylib new`` (r2star), filled with the ci Amp B post-contrast scans and run with
    ``studylib run``."""
    root = tmp_path_factory.mktemp("lab")
    folder = root / STUDY
    assert main(["new", str(folder), "--biomarker", "r2star"]) == 0
    manifest = _copy_study_rows(Path(ci_study), "ampb_ferumoxytol", folder, STUDY, post_only=True)
    assert verify_manifest(manifest) == []
    rc = main(["run", STUDY, "--manifest", str(manifest), "--jobs", "1"])
    return {"root": root, "folder": folder, "manifest": manifest, "rc": rc,
            "record": json.loads((folder / "reports" / f"{STUDY}.json").read_text())}


def _numbers(estimate) -> dict:
    return {k: float(estimate[k]) for k in ("estimate", "ci_low", "ci_high", "p")}


def _same(a: dict, b: dict) -> None:
    for key in ("estimate", "ci_low", "ci_high", "p"):
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (key, a, b)


def test_new_writes_the_study_folder(tmp_path, capsys):
    """The folder holds the empty manifest, animals.csv and study.json in the form the report's methods
    section reads (studylib.workbook.animals), and the notebook."""
    from studylib.workbook.animals import STUDY_FIELDS, read_animals, read_study_info

    folder = tmp_path / "my_study"
    assert main(["new", str(folder), "--biomarker", "adc", "--design", "endpoint"]) == 0
    out = capsys.readouterr().out
    assert "lists no files yet" in out and "studylib import" in out and "studylib run my_study" in out
    assert "randomisation" in out and "blinding" in out  # the study.json fields left to the lab
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "animals.csv", "data_manifest.csv", "notebooks/my_study.py", "study.json"]
    # the manifest is the schema's header, no rows: verify says so until data are imported
    manifest = read_manifest(folder / "data_manifest.csv")
    assert manifest.empty and list(manifest.columns)[:7] == ["study", "animal", "group", "day", "kind", "path",
                                                             "sha256"]
    assert any("no files" in p for p in verify_manifest(folder / "data_manifest.csv"))
    assert read_animals(folder / "animals.csv", manifest, "my_study") == []
    assert (folder / "animals.csv").read_text().split("\n")[0].split(",") == [
        "animal", "group", "sex", "strain", "age_weeks", "weight_g", "randomisation", "excluded_day",
        "exclusion_reason"]
    info, notes = read_study_info(folder / "study.json", "my_study")
    assert notes == [] and set(info) == {"experimental_unit", "primary_endpoint", "outcome_measures"}
    assert set(info) < set(STUDY_FIELDS)
    assert "ADC (µm²/ms)" in info["primary_endpoint"] and "Welch" in info["primary_endpoint"]
    assert json.loads((folder / "study.json").read_text()) == info


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("biomarker", list(BIOMARKERS))
def test_every_generic_notebook_uses_only_the_facade(biomarker, design, tmp_path):
    """Each biomarker's notebook parses, imports only the facade and plots (the architecture rule for
    notebooks), names no paper and no simulated truth, and declares its parameters for ``-p``."""
    text = render_notebook("lab", biomarker, design)
    tree = ast.parse(text)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" if node.module == "studylib" else node.module for a in node.names}
    assert imported == {"studylib", "studylib.plots"}
    assert not re.search(r"\bsl\.(models|fit\.[a-z_]+|_[a-z])", text)
    assert "load_truth" not in text and "true_effect" not in text and "effect_vs_truth" not in text
    assert not any(e.citation in text or e.after in text for e in EXPERIMENTS.values())
    src = tmp_path / "lab.py"
    src.write_text(text)
    declared = declared_parameters(src)
    assert {"manifest", "study", "control", "treated", "effect_day", "expected_sign", "alpha"} <= set(declared)
    assert ("day_model" in declared) == (design == "longitudinal")
    assert ("longitudinal_effect" in text) == (design == "longitudinal")
    assert ("group_difference" in text) == (design == "endpoint")


def test_new_refuses_bad_input(tmp_path, capsys):
    assert main(["new", str(tmp_path / "a"), "--biomarker", "pet"]) == 1
    assert "biomarker 'pet' is not known" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["new", str(tmp_path / "b"), "--biomarker", "t2", "--design", "crossover"]) == 1
    assert "design 'crossover'" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main(["new", str(full), "--biomarker", "r2star"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]
    assert main(["new", str(tmp_path / "c"), "--biomarker", "r2star", "--study", "ampb_ferumoxytol"]) == 1
    assert "catalogued" in capsys.readouterr().err
    assert main(["new", str(tmp_path / "d"), "--biomarker", "r2star", "--study", "no spaces"]) == 1
    assert "not valid" in capsys.readouterr().err
    with pytest.raises(wb.WorkbookError, match="not a folder"):
        (tmp_path / "file").write_text("x")
        new_study(tmp_path / "file", biomarker="r2star")


def test_generic_notebook_runs_on_own_study(lab, ci_study):
    """The report renders, and its treatment effect is the mixed model of the Amp B recipe (T2* fit with
    the noise floor, tumour means per session, categorical days, last day) computed here directly."""
    import studylib as sl

    assert lab["rc"] == 0, lab["record"].get("error")
    rec = lab["record"]
    assert rec["status"] in ("ok", "ok with warnings") and rec["experiment"] == STUDY
    html = (lab["folder"] / "reports" / f"{STUDY}.html").read_text()
    assert rec["headline"] and "agrees with hypothesis" in rec["headline"] or "NOT agree with hypothesis" in \
        rec["headline"]
    assert "paper" not in rec["headline"]
    assert "Longitudinal mixed model" in html and "ROI table" in html
    assert (lab["folder"] / "reports" / "index.html").is_file()
    ds = sl.load_study(lab["manifest"], STUDY, "MEGRE")
    maps = sl.fit_relaxation_maps(ds, method="auto", cache_dir=lab["root"] / "direct", study=STUDY)
    _, sessions = sl.roi_tables(maps, ds, variables=["r2star", "t2star"])
    control, treated = sl.pick_groups(ds)
    direct = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, day_model="categorical")
    _same(rec["numbers"], _numbers(direct))
    c = pd.DataFrame(rec["conclusions"]["data"], columns=rec["conclusions"]["columns"])
    assert c["paper"].eq("").all() and c["truth"].isna().all()
    # the cache is the study's own, beside its manifest
    assert (lab["folder"] / "derived" / STUDY).is_dir()


def test_generic_notebook_gives_the_ampb_notebooks_effect(lab, ci_study):
    """The Amp B notebook, run on the whole study (pre- and post-contrast scans), records as its
    post-contrast R2* finding (``absolute_r2star``) the treatment effect the generic notebook gives on the
    post-contrast scans: the same machinery, not a second copy."""
    out = lab["root"] / "ampb"
    rc = wb.run(["ampb_ferumoxytol"], preset="ci", reports=out / "reports", manifest=ci_study,
                cache_dir=out / "derived", progress=False)
    ref = json.loads((out / "reports" / "ampb_ferumoxytol.json").read_text())
    assert rc == 0, ref.get("error")
    c = pd.DataFrame(ref["conclusions"]["data"], columns=ref["conclusions"]["columns"]).set_index("endpoint")
    _same(lab["record"]["numbers"], {k: float(c.loc["absolute_r2star", k]) for k in ("estimate", "ci_low", "ci_high")}
          | {"p": float(c.loc["absolute_r2star", "p"])})


def test_status_and_a_rerun_find_the_study_folder(lab, capsys):
    m = str(lab["manifest"])
    assert main(["status", "--manifest", m]) == 0
    assert f"{STUDY}: up to date" in capsys.readouterr().out
    assert wb.available(lab["folder"] / "notebooks") == [STUDY]
    # a parameter the notebook declares makes the report stale, naming it; an unknown one is refused
    assert main(["status", STUDY, "--manifest", m, "-p", "alpha=0.01"]) == 1
    assert "alpha" in capsys.readouterr().out
    assert main(["run", STUDY, "--manifest", m, "-p", "no_such=1"]) == 1
    assert "no_such" in capsys.readouterr().err
    # --notebooks and --reports point run/status anywhere
    assert main(["status", STUDY, "--manifest", m, "--notebooks", str(lab["folder"] / "notebooks"),
                 "--reports", str(lab["folder"] / "reports")]) == 0


def test_synth_out_writes_its_manifest_there(tmp_path, capsys):
    """`studylib synth --preset P --out DIR` (no --manifest) writes DIR/data_manifest.csv, not the preset's
    default manifest: neither the project's committed demo manifest nor the preset's own is touched.  The
    rule is the same for every preset (:func:`studylib.synth.generate`); the ci preset writes in seconds,
    the demo in a minute."""
    from studylib.layout import default_manifest
    from studylib.manifest import sha256_file

    defaults = [default_manifest("demo"), default_manifest("ci")]
    before = [sha256_file(m) if m.is_file() else None for m in defaults]
    out = tmp_path / "ci"
    assert main(["synth", "--preset", "ci", "--out", str(out)]) == 0
    assert f"wrote {out / 'data_manifest.csv'}" in capsys.readouterr().out
    assert verify_manifest(out / "data_manifest.csv", check_hashes=False) == []
    assert [sha256_file(m) if m.is_file() else None for m in defaults] == before


@pytest.mark.slow
@pytest.mark.parametrize("biomarker, source, control, treated", [
    ("adc", "collagen_adc", "BK-12", "LA-19"),
    ("ktrans", "ktrans_hypoxia", "BK-12", "LA-19"),
    ("t1", "ktrans_hypoxia", "BK-12", "LA-19"),
    ("f19", "fluorine19_pfc", "67NR", "4T1"),
])
def test_other_generic_notebooks_run_on_ci_scans(biomarker, source, control, treated, ci_study, tmp_path):
    """The endpoint notebooks of the other biomarkers run end to end on the ci scans of a catalogued
    study (single imaging day; two of its groups chosen with -p) and record a treatment effect."""
    name = f"lab_{biomarker}"
    folder = tmp_path / name
    assert main(["new", str(folder), "--biomarker", biomarker, "--design", "endpoint"]) == 0
    m = _copy_study_rows(Path(ci_study), source, folder, name)
    rc = main(["run", name, "--manifest", str(m), "--jobs", "1", "-p", f"control={control}",
               "-p", f"treated={treated}"])
    rec = json.loads((folder / "reports" / f"{name}.json").read_text())
    assert rc == 0 and rec["status"] in ("ok", "ok with warnings"), rec.get("error")
    n = rec["numbers"]
    assert n["ci_low"] <= n["estimate"] <= n["ci_high"] and 0 <= n["p"] <= 1
    assert rec["headline"].startswith(f"tumour {BIOMARKERS[biomarker].variable} {treated} − {control}")
    assert rec["parameters"]["control"] == control
