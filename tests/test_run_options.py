"""``studylib run -p name=value`` (typed from the notebook's parameters cell, checked before anything runs)
and ``studylib status`` (up to date / stale and why / failed / never run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studylib.cli import main
from studylib.errors import WorkbookError
from studylib.layout import notebooks_dir
from studylib.workbook.parameters import parse_assignments, typed_parameters
from studylib.workbook.status import _differences

AMPB = notebooks_dir() / "ampb_ferumoxytol.py"
CEST = notebooks_dir() / "lactate_cest.py"
F19 = notebooks_dir() / "fluorine19_pfc.py"


@pytest.mark.parametrize("given, typed", [
    ({"t2star_method": "loglinear"}, {"t2star_method": "loglinear"}),  # str default: the text
    ({"alpha": "0.01"}, {"alpha": 0.01}),  # float default
    ({"alpha": "1e-2"}, {"alpha": 0.01}),
    ({"effect_day": "7"}, {"effect_day": 7}),  # None default: a literal when it is one ...
    ({"control": "PBS"}, {"control": "PBS"}),  # ... the text otherwise
    ({"control": "'5'"}, {"control": "5"}),
    ({"alpha": 0.02, "effect_day": 3}, {"alpha": 0.02, "effect_day": 3}),  # Python values from the library API
])
def test_parameters_take_the_type_of_their_default(given, typed):
    got = typed_parameters("ampb_ferumoxytol", AMPB, given)
    assert got == typed and all(type(got[k]) is type(v) for k, v in typed.items())


def test_int_bool_and_list_parameters():
    assert typed_parameters("fluorine19_pfc", F19, {"n_perm": "500", "seed": "500.0"}) == {"n_perm": 500, "seed": 500}
    got = typed_parameters("lactate_cest", CEST, {"fit_pools": "false", "band_ppm": "[0.3, 0.5]"})
    assert got == {"fit_pools": False, "band_ppm": [0.3, 0.5]}
    assert typed_parameters("lactate_cest", CEST, {"fit_pools": "1"}) == {"fit_pools": True}


@pytest.mark.parametrize("nb, given, what", [
    (AMPB, {"no_such": "1"}, r"no parameter 'no_such' in ampb_ferumoxytol.py; its parameters are: t2star_method, "),
    (AMPB, {"alpha": "abc"}, r"alpha='abc' is not a number \(default 0.05\)"),
    (AMPB, {"alpha": "True"}, r"alpha='True' is not a number"),
    (F19, {"n_perm": "20.5"}, r"n_perm='20.5' is not a whole number \(default 20000\)"),
    (AMPB, {"t2star_method": 3}, r"t2star_method=3 is not text"),
    (AMPB, {"manifest": "x.csv"}, r"'manifest' is set by studylib run; use --manifest"),
    (AMPB, {"cache_dir": "x"}, r"use --cache"),
    (CEST, {"fit_pools": "maybe"}, r"fit_pools='maybe' is not true or false"),
    (CEST, {"band_ppm": "0.3"}, r"band_ppm='0.3' is not a list"),
])
def test_bad_parameters_are_named_with_the_valid_ones(nb, given, what):
    with pytest.raises(WorkbookError, match=what):
        typed_parameters(nb.stem, nb, given)


@pytest.mark.parametrize("items, what", [(["alpha"], "expected name=value"), (["1x=2"], "expected name=value"),
                                         (["a=1", "a=2"], "given twice")])
def test_parse_assignments_refuses_malformed_items(items, what):
    with pytest.raises(WorkbookError, match=what):
        parse_assignments(items)
    assert parse_assignments(["a=b=c", "x="]) == {"a": "b=c", "x": ""}


def test_status_names_what_changed():
    old = {"format": 1, "notebook": "n1", "parameters": {"alpha": 0.05, "study": "s"}, "manifest_sha256": "m1",
           "files": [["raw/a.nii.gz", "h1"], ["raw/b.nii.gz", "h2"]], "code": "c1",
           "packages": {"numpy": "2.0", "xarray": "2025.1"}, "python": "3.11.7", "kernel": "python3"}
    assert _differences(old, old) == []
    new = {**old, "parameters": {"alpha": 0.01, "study": "s"}, "manifest_sha256": "m2", "code": "c2",
           "files": [["raw/a.nii.gz", "h1x"], ["raw/c.nii.gz", "h3"]], "packages": {"numpy": "2.1", "xarray": "2025.1"}}
    got = _differences(old, new)
    assert "parameters changed: alpha 0.05 -> 0.01" in got
    assert "the manifest changed" in got and "the studylib code changed" in got
    assert "package versions changed: numpy 2.0 -> 2.1" in got
    assert "1 data file(s) changed content (raw/a.nii.gz)" in got
    assert "1 data file(s) added to the manifest (raw/c.nii.gz)" in got
    assert "1 data file(s) no longer listed (raw/b.nii.gz)" in got


@pytest.mark.slow
def test_status_of_reports_that_are_current(ci_reports, capsys):
    args = ["status", "--preset", "ci", "--manifest", str(ci_reports["manifest"]),
            "--reports", str(ci_reports["root"] / "reports"), "--cache", str(ci_reports["root"] / "derived")]
    assert main(args) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in ci_reports["records"]:
        assert f"{name}: up to date" in out
    assert main([*args, "-p", "alpha=0.01", "collagen_adc"]) == 1  # the same reports, other parameters: stale
    assert "collagen_adc: stale" in (o := capsys.readouterr().out) and "alpha None -> 0.01" in o


@pytest.mark.slow
def test_run_with_a_parameter_then_status(ci_study, tmp_path, capsys):
    reports, cache = tmp_path / "reports", tmp_path / "derived"
    common = ["--preset", "ci", "--manifest", str(ci_study), "--reports", str(reports), "--cache", str(cache)]
    assert main(["status", "ampb_ferumoxytol", *common]) == 1
    assert "ampb_ferumoxytol: never run" in capsys.readouterr().out

    assert main(["run", "ampb_ferumoxytol", *common, "-p", "t2star_method=loglinear", "--jobs", "1", "--no-pdf"]) == 0
    rec = json.loads((reports / "ampb_ferumoxytol.json").read_text())
    assert rec["status"] in ("ok", "ok with warnings")
    assert rec["pdf"] == {"printed": False, "note": "not asked for (pdf=False)"}  # --no-pdf, whatever is installed
    assert rec["outputs"]["pdf"] is None and not (reports / "ampb_ferumoxytol.pdf").exists()
    assert rec["parameters"]["t2star_method"] == "loglinear"
    assert rec["parameters_given"] == {"t2star_method": "loglinear"}
    page = (reports / "ampb_ferumoxytol.html").read_text()
    assert "Run with parameters: <code>t2star_method = &quot;loglinear&quot;</code>" in page
    nb = json.loads((reports / "ampb_ferumoxytol.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["t2star_method"] == "loglinear"
    # the fitted maps were computed with that method (their cache entry's parameters say so)
    entries = list(cache.glob("ampb_ferumoxytol/*/*/_entry.json"))
    assert any(json.loads(e.read_text()).get("params", {}).get("method") == "loglinear" for e in entries)
    capsys.readouterr()

    assert main(["status", "ampb_ferumoxytol", *common, "-p", "t2star_method=loglinear"]) == 0
    assert "ampb_ferumoxytol: up to date" in capsys.readouterr().out
    assert main(["status", "ampb_ferumoxytol", *common]) == 1  # `run` without -p would execute it again
    out = capsys.readouterr().out
    assert "ampb_ferumoxytol: stale" in out and "t2star_method 'loglinear' -> None" in out

    before = {str(p.relative_to(reports)): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    assert main(["run", "ampb_ferumoxytol", *common, "-p", "no_such=1"]) == 1
    err = capsys.readouterr().err
    assert "no parameter 'no_such'" in err and "t2star_method" in err and "Traceback" not in err
    assert main(["run", "ampb_ferumoxytol", *common, "-p", "alpha=abc"]) == 1
    assert "alpha='abc' is not a number" in capsys.readouterr().err
    assert {str(p.relative_to(reports)): p.read_bytes() for p in reports.rglob("*") if p.is_file()} == before  # nothing ran


def test_the_studylib_command_reads_notebooks_without_jsonschemas_iri_parsers(tmp_path):
    """The `studylib` command's process imports nbformat (and so jsonschema) without ``rfc3987_syntax`` (0.9 s of
    Earley parsers for ``iri`` formats no notebook schema uses); nbformat still validates; a Python session
    that calls ``main(argv)`` keeps its modules as they are."""
    import subprocess
    import sys

    code = """if True:
        import sys
        import studylib.cli as cli
        if sys.argv[1] == "command":
            sys.argv = ["studylib", "status", "--help"]
            try:
                cli.main()
            except SystemExit:
                pass
        else:
            try:
                cli.main(["status", "--help"])
            except SystemExit:
                pass
        import nbformat
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
        nbformat.validate(nb)
        try:
            nbformat.validate({"cells": "not a list"})
        except nbformat.ValidationError:
            pass
        else:
            raise SystemExit("an invalid notebook passed")
        from jsonschema import FormatChecker
        print(sys.modules.get("rfc3987_syntax", "absent") is None, "iri" in FormatChecker.checkers)
    """
    out = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120,
                                check=True).stdout.splitlines()[-1].split() for mode in ("command", "library")}
    assert out["command"] == ["True", "False"]  # blocked: jsonschema went without iri checks
    assert out["library"] == ["False", "True"]  # untouched (rfc3987_syntax is installed with JupyterLab)
