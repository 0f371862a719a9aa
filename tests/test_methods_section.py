"""Report sections built from the data and the run: methods, ARRIVE 2.0 Essential 10, animal flow
(studylib.workbook.methods / studylib.workbook.animals).  No kernel except the one end-to-end check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studylib.catalog import EXPERIMENTS
from studylib.errors import DataFileError
from studylib.io.sidecar import read_sidecar
from studylib.layout import experiment_manifest
from studylib.manifest import read_manifest
from studylib.workbook.methods import (SECTION_IDS, build_report_sections, record_sections, sections_from_record,
                                       sections_html)

NOT_REPORTED = '<span class="sl-not-reported">not reported</span>'


def _arrive(sections, number):
    return next(it for it in sections["arrive"] if it["number"] == number)


def test_blz945_methods_name_echoes_te_and_field_from_the_sidecars(ci_study):
    rows = read_manifest(ci_study)
    cars = [read_sidecar(ci_study.parent / p) for p in rows.loc[(rows["study"] == "blz945_femri")
                                                                  & (rows["kind"] == "MEGRE")
                                                                  & rows["path"].str.endswith(".json"), "path"]]
    assert cars
    n_echoes = {len(c["EchoTime"]) for c in cars}
    fields = {c["MagneticFieldStrength"] for c in cars}
    assert len(n_echoes) == 1 and len(fields) == 1  # the ci study has one protocol
    te = [t * 1000 for c in cars for t in c["EchoTime"]]
    n, field = n_echoes.pop(), fields.pop()
    s = build_report_sections(ci_study, "blz945_femri", {})
    text = s["methods"]["text"]
    assert f"MEGRE (" in text and f": {n} echoes, TE {min(te):.4g}–{max(te):.4g} ms" in text
    assert f"at {field:.3g} T" in text
    megre = next(a for a in s["methods"]["acquisition"] if a["kind"] == "MEGRE")
    assert megre["axis"]["n"] == [n] and megre["axis"]["min"] == pytest.approx(min(te))
    assert megre["axis"]["max"] == pytest.approx(max(te)) and megre["field_T"] == [field]
    assert megre["n_scans"] == len(cars)
    assert EXPERIMENTS["blz945_femri"].citation in " ".join(s["methods"]["references"])


def test_every_catalogued_experiment_gets_the_three_sections(ci_study):
    for name, exp in EXPERIMENTS.items():
        manifest = experiment_manifest(name) if exp.data == "real" else ci_study
        rows = read_manifest(manifest)
        rows = rows[rows["study"] == name]
        s = build_report_sections(manifest, name, {"parameters": {"alpha": 0.05}})
        heads = [p["heading"] for p in s["methods"]["paragraphs"]]
        assert any(h.startswith("Image acquisition") for h in heads), name
        assert s["methods"]["acquisition"], name
        kinds = {a["kind"] for a in s["methods"]["acquisition"]}
        assert kinds == set(rows.loc[~rows["kind"].isin(["roi", "histology"]), "kind"]), name
        assert len(s["arrive"]) == 10
        enrolled = s["flow"]["table"][0]
        assert enrolled["stage"] == "enrolled"
        assert enrolled["counts"]["total"] == rows.loc[rows["animal"] != "", "animal"].nunique(), name
        page = sections_html(s)
        for sid in SECTION_IDS.values():
            assert f'id="{sid}"' in page, (name, sid)


def test_arrive_items_without_data_say_not_reported(ci_study):
    s = build_report_sections(ci_study, "ampb_ferumoxytol", {})
    for number in (4, 5):  # randomisation, blinding: no study.json, no animals.csv
        item = _arrive(s, number)
        assert not item["reported"] and all(e["value"] is None for e in item["entries"])
    assert _arrive(s, 2)["reported"]  # group sizes come from the manifest
    page = sections_html(s)
    rows = page.split('<tr><td>')
    for number in (4, 5):
        row = next(r for r in rows if r.startswith(f"{number}</td>"))
        assert NOT_REPORTED in row
    assert ".sl-not-reported" in (Path(__file__).resolve().parents[1] / "studylib" / "workbook" / "report_template"
                                  / "studylib" / "report.css").read_text()


def test_animals_csv_exclusion_shows_in_the_flow(tiny_study):
    # without animals.csv: m02 has no day-7 scan and no recorded reason
    s = build_report_sections(tiny_study, "tiny", {})
    ex = {e["animal"]: e for e in s["flow"]["exclusions"]}
    assert ex["m02"]["reason"] == "no scan after day 0, reason not recorded" and ex["m02"]["source"] == "manifest"
    (tiny_study.parent / "animals.csv").write_text(
        "animal,group,sex,age_weeks,excluded_day,exclusion_reason\n"
        "m02,treated,F,8,7,humane endpoint (weight loss > 20%)\n"
        "m04,control,F,8,,tumour did not grow (never scanned)\n", encoding="utf-8")
    s = build_report_sections(tiny_study, "tiny", {})
    ex = {e["animal"]: e for e in s["flow"]["exclusions"]}
    assert ex["m02"] == {"animal": "m02", "group": "treated", "day": 7, "reason": "humane endpoint (weight loss > 20%)",
                         "source": "animals.csv"}
    assert ex["m04"]["reason"] == "tumour did not grow (never scanned)"
    table = {r["stage"]: r["counts"] for r in s["flow"]["table"]}
    assert table["enrolled"] == {"control": 2, "treated": 2, "total": 4}
    assert table["left the study or excluded"]["total"] == 2
    assert table["analysed (≥ 1 scan loaded by the notebook)"]["total"] == 3
    assert table["scanned on day 7"] == {"control": 1, "treated": 1, "total": 2}
    page = sections_html(s)
    assert "humane endpoint (weight loss &gt; 20%)" in page and "<svg" in page
    assert "8–8 weeks" in json.dumps(_arrive(s, 8)["entries"], ensure_ascii=False)


def test_study_json_fills_arrive_items(tiny_study):
    (tiny_study.parent / "study.json").write_text(json.dumps(
        {"randomisation": "block randomisation by cage (random numbers)", "blinding": "ROIs drawn blinded to group",
         "outcome_measures": ["tumour R2*", "CEST"]}), encoding="utf-8")
    s = build_report_sections(tiny_study, "tiny", {})
    rnd = _arrive(s, 4)["entries"][0]
    assert rnd["value"] == "block randomisation by cage (random numbers)" and rnd["source"] == "study.json"
    assert _arrive(s, 5)["reported"]
    assert _arrive(s, 6)["entries"][0]["value"] == "tumour R2*; CEST"
    assert not _arrive(s, 2)["entries"][1]["value"]  # sample-size rationale still not reported


@pytest.mark.parametrize("text, words", [
    ("animal,group\nm01,control\nm99,treated\n", ["unknown animal 'm99'"]),
    ("animal,cage_colour\nm01,red\n", ["unknown column(s) 'cage_colour'"]),
    ("animal,sex\nm01,X\n", ["sex must be F or M"]),
    ("animal,group\nm01,treated\n", ["'m01' has group 'treated'", "'control'"]),
    ("animal,excluded_day\nm01,seven\n", ["excluded_day must be an integer"]),
])
def test_bad_animals_csv_is_an_error_naming_the_file(tiny_study, text, words):
    path = tiny_study.parent / "animals.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        build_report_sections(tiny_study, "tiny", {})
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("doc, words", [
    ({"blinding": "yes", "favourite_colour": "red"}, ["unknown field(s) 'favourite_colour'"]),
    ({"blinding": 3}, ["blinding must be a non-empty string"]),
    ({"studies": {"other": {"blinding": "yes"}}}, ["unknown study 'other'"]),
])
def test_bad_study_json_is_an_error_naming_the_file(tiny_study, doc, words):
    path = tiny_study.parent / "study.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        build_report_sections(tiny_study, "tiny", {})
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_a_bad_file_becomes_a_warning_of_the_run_not_a_failure(tiny_study):
    (tiny_study.parent / "animals.csv").write_text("animal\nm77\n", encoding="utf-8")
    prov = {"status": "ok", "warnings": []}
    record_sections(prov, tiny_study, "tiny")
    assert "animals.csv" in prov["report_sections_error"] and prov["status"] == "ok with warnings"
    assert "m77" in prov["warnings"][0]["message"]
    page = sections_from_record(prov)
    assert all(f'id="{sid}"' in page for sid in SECTION_IDS.values()) and "Not built" in page


def test_editing_animals_csv_changes_the_run_inputs(tiny_study):
    from studylib.workbook.run import _files_signature

    before = _files_signature(tiny_study, "tiny")
    (tiny_study.parent / "animals.csv").write_text("animal,sex\nm01,F\n", encoding="utf-8")
    after = _files_signature(tiny_study, "tiny")
    assert before != after and [p for p, _ in after if p == "animals.csv"]


def test_statistics_and_fits_come_from_the_run_record(ci_study):
    prov = {"conclusions": {"columns": ["finding", "estimate", "ci_low", "ci_high", "p", "method", "role"],
                            "data": [["tumour R2* difference", -3.0, -5.0, -1.0, 0.01,
                                      "mixed model y ~ group * day, random ~1 per animal, satterthwaite df 12.3",
                                      "primary"]]},
            "packages": {"numpy": "9.9.9"}, "studylib_version": "0.0.test"}
    s = build_report_sections(ci_study, "blz945_femri", prov)
    stats = next(p["text"] for p in s["methods"]["paragraphs"] if p["heading"].startswith("Statistical"))
    assert "satterthwaite df 12.3" in stats
    assert any("Satterthwaite" in r for r in s["methods"]["references"])
    assert "numpy 9.9.9" in s["methods"]["text"] and "studylib 0.0.test" in s["methods"]["text"]
    assert _arrive(s, 6)["entries"][2]["value"] == "tumour R2* difference"  # the run's primary endpoint
    assert "-3 [-5, -1], p = 0.01" in _arrive(s, 10)["entries"][0]["value"]


@pytest.mark.slow
def test_a_real_report_contains_the_three_sections(ci_study, tmp_path):
    from studylib import workbook as wb

    reports = tmp_path / "reports"
    rc = wb.run(["collagen_adc"], preset="ci", reports=reports, manifest=ci_study, cache_dir=tmp_path / "derived",
                progress=False)
    rec = json.loads((reports / "collagen_adc.json").read_text())
    assert rc == 0, rec.get("error")
    page = (reports / "collagen_adc.html").read_text()
    for sid in SECTION_IDS.values():
        assert f'id="{sid}"' in page and f'href="#{sid}"' in page  # in the body and the contents
    assert page.index('id="studylib-methods"') < page.index('id="studylib-provenance"')
    assert "report_sections_error" not in rec
    dwi = next(a for a in rec["methods"]["acquisition"] if a["kind"] == "DWI")
    assert dwi["axis"]["key"] == "bValue" and "b-values" in dwi["text"]
    fit = next(p["text"] for p in rec["methods"]["paragraphs"] if p["heading"].startswith("Parameter maps"))
    assert "ADC" in fit and "background ROI" in fit  # from the cached map's own record
    assert len(rec["arrive"]) == 10 and rec["animal_flow"]["table"][0]["stage"] == "enrolled"
