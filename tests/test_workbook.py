"""studylib.workbook: the notebook runner, reports, provenance, index, rerun from cache, failures.

Runs small toy notebooks (written into a tmp folder and passed with ``notebooks_dir``) through the
real runner (papermill + the ``python3`` kernel + nbconvert).  The real experiment notebooks run
end to end on the ``ci`` preset in ``tests/test_browser.py`` (which then checks them in Chromium).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings, strategies as st

from studylib import workbook as wb
from studylib.cache import CacheError
from studylib.compute import SchedulerError
from studylib.errors import StudyError

# the cached "fit" of the toy notebook lasts HEAVY_FACTOR x the overhead of a run (kernel start, imports,
# reading the cache, the figure), within [HEAVY_MIN_S, HEAVY_MAX_S]: a rerun must take < 20 % of its first run
HEAVY_FACTOR, HEAVY_MIN_S, HEAVY_MAX_S = 6.0, 6.0, 60.0
EVIL = "<script>alert('x')</script> & \"q\""

NB_HEADER = textwrap.dedent("""\
    # ---
    # jupyter:
    #   kernelspec:
    #     display_name: Python 3
    #     language: python
    #     name: python3
    # ---
    """)

TOY_OK = NB_HEADER + textwrap.dedent('''
    # %% [markdown]
    # # Toy experiment: R2* & iron
    # A question about <iron>.

    # %% tags=["parameters"]
    manifest = None
    study = "toy_ok"
    preset = "demo"
    cache_dir = None
    scheduler = None
    heavy_s = 0.0
    scale = 1.0

    # %% [markdown]
    # ## Fit the maps (cached)

    # %%
    import time
    import numpy as np, pandas as pd, xarray as xr
    import matplotlib.pyplot as plt
    from studylib import compute, workbook
    from studylib.cache import Cache, manifest_rows

    compute.get_client(scheduler)
    cache = Cache(study, cache_dir)
    rows = manifest_rows(manifest, study="toy")

    def heavy_fit():
        time.sleep(heavy_s)
        r2 = np.arange(12.0).reshape(2, 1, 2, 3) * scale
        return xr.Dataset({"r2star": (("animal", "day", "y", "x"), r2, {"units": "1/s"})},
                          coords={"animal": ["m<01>", "m02"], "day": [0], "group": ("animal", ["ctl", "Amp B"])})

    maps = cache.get_or_compute("r2star_maps", heavy_fit, inputs=[rows], params={"scale": scale, "heavy_s": heavy_s},
                                description="toy R2* maps")
    table = cache.get_or_compute("roi_table", lambda: maps.r2star.mean(["y", "x"]).to_dataframe()
                                 .reset_index(), inputs=[maps])
    table

    # %% [markdown]
    # ## Figure

    # %%
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(table["animal"], table["r2star"])
    ax.set_ylabel("R2* (1/s)")
    plt.show()

    # %% [markdown]
    # ## Conclusions

    # %%
    lazy_total = compute.progress(maps.r2star.sum())
    workbook.record_headline("R2* rose with Amp B " + __EVIL__, effect_per_s=float(lazy_total), p=0.01,
                             missing=float("nan"))
    workbook.record_conclusions(pd.DataFrame({"finding": ["R2* up <b>"], "agrees": [True]}))
    ''').replace("__EVIL__", repr(EVIL))

TOY_FAIL = NB_HEADER + textwrap.dedent('''
    # %% [markdown]
    # # A notebook that fails

    # %% tags=["parameters"]
    manifest = None
    study = "toy_fail"

    # %%
    print("before the failure")

    # %%
    raise ValueError("bad <voxel> & co")

    # %%
    print("never reached")
    ''')

TOY_SLOW = NB_HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_slow"
    cache_dir = None
    marker = None
    slow = True

    # %%
    import os, time
    from pathlib import Path
    import dask.array as da, numpy as np, xarray as xr
    from studylib.cache import Cache, manifest_rows

    def chunk(block):
        if block.size and slow:
            Path(marker).write_text(str(os.getpid()))  # the kernel's pid: the test kills it too
            time.sleep(0.4)
        return block

    arr = da.ones((24, 1, 4, 4), chunks=(1, 1, 4, 4)).map_blocks(chunk, dtype=float, meta=np.array((), float))
    ds = xr.Dataset({"v": (("animal", "day", "y", "x"), arr)}, coords={"animal": [f"m{i}" for i in range(24)]})
    out = Cache(study, cache_dir).get_or_compute("maps", lambda: ds, inputs=[manifest_rows(manifest)])
    assert float(out.v.sum()) == 24 * 16
    ''')


TOY_WARN = NB_HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_warn"

    # %%
    import warnings
    from studylib import workbook
    from studylib.errors import DataWarning, RoiWarning

    warnings.warn("m01 day 3: 12 % of tumour voxels failed <b>", DataWarning)
    for day in (0, 0, 7):  # the same warning twice is counted, not repeated
        warnings.warn_explicit(f"m02 day {day}: tumour label empty", RoiWarning, "roi.py", 1)
    warnings.warn("a plain user warning is not a data warning", UserWarning)
    with warnings.catch_warnings(record=True):  # handled by the code: not a data warning either
        warnings.simplefilter("always")
        warnings.warn("handled inside", DataWarning)
    workbook.record_headline("done")
    ''')


@pytest.fixture(autouse=True)
def _no_pdf_by_default(monkeypatch):
    """Printing a report as PDF (headless Chromium, ~2 s a report) is tested once, in
    ``test_figures_and_tables_beside_the_report_linked_and_a_pdf``; the other runs here skip it."""
    monkeypatch.setenv("STUDYLIB_CHROMIUM", "none")


TOY_FILES = NB_HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_files"
    figures = True

    # %%
    import matplotlib.pyplot as plt
    import numpy as np, pandas as pd
    from studylib import workbook
    long = pd.DataFrame({"animal": [f"m{i:03d}" for i in range(150)], "r2star": np.arange(150) * 0.5})
    long  # 150 rows: the HTML shows a truncated view, the CSV has them all

    # %%
    if figures:
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [1, 3, 2])
        plt.show()

    # %% tags=["key-figure"]
    if figures:
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.bar(["a", "b"], [2, 5])
        ax.set_ylabel("R2* (1/s)")

    # %%
    workbook.record_headline("toy: 5 1/s [2, 8]", estimate=5.0, ci_low=2.0, ci_high=8.0, n_animals=4)
    conclusions = pd.DataFrame({
        "finding": ["R2* treated - control", "r(R2*, iron)"], "endpoint": ["r2star", "iron"],
        "role": ["secondary", "primary"], "paper_direction": ["increase / positive", "decrease / negative"],
        "estimate": [5.0, -0.61], "ci_low": [2.0, -0.9], "ci_high": [8.0, -0.2], "units": ["1/s", ""],
        "truth": [6.0, None]})
    workbook.record_conclusions(conclusions)
    conclusions.style.format(precision=2)  # a Styler is saved as its data
    ''')


def make_toy_study(root: Path, notebooks: dict[str, str], animal: str = "m<01>") -> dict:
    """A one-file study + manifest and a notebooks folder with the given toy notebooks."""
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "data" / "toy" / "raw" / "scan.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("not really a scan\n")
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    man = root / "data_manifest.csv"
    pd.DataFrame([{"study": "toy", "animal": animal, "group": EVIL, "day": 0, "kind": "T2w",
                   "path": "data/toy/raw/scan.txt", "sha256": sha}]).to_csv(man, index=False)
    nbs = root / "notebooks"
    nbs.mkdir(exist_ok=True)
    for name, text in notebooks.items():
        (nbs / f"{name}.py").write_text(text)
    return {"root": root, "manifest": man, "notebooks": nbs, "cache": root / "data" / "ci" / "derived",
            "reports": root / "reports"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """toy_ok + toy_fail; then toy_ok with a heavy cached step (a miss) and again with nothing changed.

    The heavy step's duration is set from the measured overhead of a run (kernel start, imports,
    cache reads, figure), so that it dominates the first run on a loaded machine too.
    """
    env = make_toy_study(tmp_path_factory.mktemp("wb"), {"toy_ok": TOY_OK, "toy_fail": TOY_FAIL})
    kw = dict(preset="ci", reports=env["reports"], manifest=env["manifest"], notebooks_dir=env["notebooks"],
              cache_dir=env["cache"], progress=False, pdf=False)  # PDFs: test_figures_and_tables_beside_...
    rc1 = wb.run(["toy_ok", "toy_fail"], **kw)
    first = {n: json.loads((env["reports"] / f"{n}.json").read_text()) for n in ("toy_ok", "toy_fail")}
    overhead_s = first["toy_ok"]["run_s"]
    heavy_s = min(HEAVY_MAX_S, max(HEAVY_MIN_S, HEAVY_FACTOR * overhead_s))
    kw["parameters"] = {"heavy_s": heavy_s}
    rc2 = wb.run(["toy_ok"], **kw)
    heavy = json.loads((env["reports"] / "toy_ok.json").read_text())
    rc3 = wb.run(["toy_ok"], force=True, **kw)  # executed again: every cached step is a hit
    second = json.loads((env["reports"] / "toy_ok.json").read_text())
    t0 = time.perf_counter()
    rc4 = wb.run(["toy_ok"], **kw)  # nothing changed since a successful run: not even executed
    reuse_wall_s = time.perf_counter() - t0
    reused = json.loads((env["reports"] / "toy_ok.json").read_text())
    return {**env, "rc1": rc1, "rc2": rc2, "rc3": rc3, "rc4": rc4, "first": first, "heavy": heavy,
            "second": second, "reused": reused, "reuse_wall_s": reuse_wall_s, "heavy_s": heavy_s, "kw": kw}


# ---------------------------------------------------------------------------- the runner end to end

@pytest.mark.slow
def test_failing_notebook_gets_failed_report_others_still_run_exit_nonzero(runs):
    assert runs["rc1"] == 1 and runs["rc2"] == 0 and runs["rc3"] == 0 and runs["rc4"] == 0
    ok, bad = runs["first"]["toy_ok"], runs["first"]["toy_fail"]
    assert ok["status"] == "ok" and ok["error"] is None
    assert bad["status"] == "failed"
    assert bad["error"]["ename"] == "ValueError" and bad["error"]["evalue"] == "bad <voxel> & co"
    nb = nbformat.read(runs["reports"] / "toy_fail.ipynb", as_version=4)
    assert nb.cells[bad["error"]["cell_index"]].source.startswith("raise ValueError")
    assert bad["error"]["execution_count"] == nb.cells[bad["error"]["cell_index"]].execution_count
    page = (runs["reports"] / "toy_fail.html").read_text()
    assert "This run failed" in page and "bad &lt;voxel&gt; &amp; co" in page and "bad <voxel>" not in page
    assert re.search(r'<details class="studylib-code" open[ =">]', page)  # the failing cell's code is shown
    assert "raise" in page and "Traceback" in page and "before the failure" in page
    assert 'id="papermill-error-cell"' in page
    assert nb.metadata["studylib"]["status"] == "failed"
    assert not any(o.get("text", "").startswith("never reached") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


@pytest.mark.slow
def test_provenance_json_and_notebook_metadata(runs):
    rec = runs["second"]
    man = runs["manifest"]
    assert rec["manifest"]["sha256"] == hashlib.sha256(man.read_bytes()).hexdigest()
    assert rec["manifest"]["path"] == str(man.resolve())
    assert rec["packages"]["numpy"] == np.__version__ and rec["packages"]["xarray"] == xr.__version__
    assert rec["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert re.fullmatch(r"[0-9a-f]{64}", rec["studylib_code_sha256"])
    if (wb.REPO_DIR / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", rec["git"]["commit"]) and isinstance(rec["git"]["dirty"], bool)
    p = rec["parameters"]
    assert p["study"] == "toy_ok" and p["preset"] == "ci" and p["heavy_s"] == runs["heavy_s"]
    assert p["cache_dir"] == str(runs["cache"].resolve()) and p["scheduler"] == "threads"
    assert "reports_dir" not in p  # not declared by the notebook, so not injected
    assert rec["headline"] == "R2* rose with Amp B " + EVIL
    assert rec["numbers"] == {"effect_per_s": 66.0, "p": 0.01, "missing": None}
    assert rec["conclusions"] == {"columns": ["finding", "agrees"], "data": [["R2* up <b>", True]]}
    assert rec["run_s"] > 0 and rec["status"] == "ok" and rec["started"] <= rec["finished"]
    nb = nbformat.read(runs["reports"] / "toy_ok.ipynb", as_version=4)
    assert nb.metadata["studylib"] == rec
    assert nb.metadata["papermill"]["parameters"]["heavy_s"] == runs["heavy_s"]
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_html_report_folded_code_figures_tables_toc_footer_escaped(runs):
    page = (runs["reports"] / "toy_ok.html").read_text()
    assert "<script src=" not in page and "cdnjs" not in page  # offline: no CDN scripts
    assert page.count('<details class="studylib-code">') >= 4  # code folded by default
    assert re.search(r'<img[^>]+src="data:image/png;base64,', page)  # figure embedded
    assert 'class="dataframe' in page and "table.dataframe" in page  # pandas table, styled
    toc = re.search(r'<nav class="studylib-toc".*?</nav>', page, re.S).group(0)
    assert "Fit the maps (cached)" in toc and "Figure" in toc and "Conclusions" in toc
    assert 'id="studylib-provenance"' in page and runs["second"]["manifest"]["sha256"] in page
    # user-provided strings are escaped everywhere (headline, animal IDs, group names)
    assert "<script>alert" not in page
    assert html.escape("R2* rose with Amp B " + EVIL) in page
    assert "m&lt;01&gt;" in page


@pytest.mark.slow
def test_index_lists_every_experiment_with_status_and_escapes(runs):
    page = (runs["reports"] / "index.html").read_text()
    assert "<script" not in page
    for name in ("toy_ok", "toy_fail"):  # toy_fail was not rerun but is still listed
        assert f'href="{name}.html"' in page and f'href="{name}.json"' in page and f'href="{name}.ipynb"' in page
    assert 'sl-status failed">failed' in page and 'sl-status ok">ok' in page
    assert html.escape(EVIL) in page and "ValueError: bad &lt;voxel&gt; &amp; co" in page
    assert "1 ok, 0 ok with warnings, 1 failed" in page
    assert runs["second"]["git"]["commit"] is None or runs["second"]["git"]["commit"][:12] in page


@pytest.mark.slow
def test_figures_and_tables_beside_the_report_linked_and_a_pdf(tmp_path, monkeypatch):
    """Every displayed figure is saved as SVG + PDF (from the figure) + PNG (the notebook's own), every
    displayed table in full as CSV, in reports/<exp>_files/, each linked from the report; the report is printed
    as PDF where Chromium is installed (else the record says why); a rerun leaves no stale file."""
    import base64

    from studylib.workbook.downloads import find_chromium

    monkeypatch.delenv("STUDYLIB_CHROMIUM")
    env = make_toy_study(tmp_path, {"toy_files": TOY_FILES})
    kw = dict(preset="ci", reports=env["reports"], manifest=env["manifest"], notebooks_dir=env["notebooks"],
              cache_dir=env["cache"], progress=False)
    assert wb.run(["toy_files"], **kw) == 0
    reports, files = env["reports"], env["reports"] / "toy_files_files"
    rec = json.loads((reports / "toy_files.json").read_text())
    page = (reports / "toy_files.html").read_text()
    assert sorted(p.name for p in files.iterdir()) == [f"fig-{n}.{e}" for n in (1, 2) for e in ("pdf", "png", "svg")] \
        + ["table-1.csv", "table-2.csv"]
    nb = nbformat.read(reports / "toy_files.ipynb", as_version=4)
    pngs = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if "image/png" in o.get("data", {})]
    assert pngs == [(files / f"fig-{n}.png").read_bytes() for n in (1, 2)]  # the notebook's own PNG
    for n in (1, 2):
        svg = (files / f"fig-{n}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
        assert (files / f"fig-{n}.pdf").read_bytes()[:5] == b"%PDF-"
        for ext in ("svg", "pdf", "png"):
            assert f'href="toy_files_files/fig-{n}.{ext}"' in page
        assert f'id="fig-{n}"' in page
    long = pd.read_csv(files / "table-1.csv")  # in full, though the HTML shows a truncated view
    assert list(long.columns) == ["animal", "r2star"] and len(long) == 150 and long["r2star"].iloc[-1] == 74.5
    assert "m075" in set(long["animal"]) and "m075" not in page
    styled = pd.read_csv(files / "table-2.csv")
    assert list(styled["finding"]) == ["R2* treated - control", "r(R2*, iron)"] and styled["estimate"][1] == -0.61
    assert 'href="toy_files_files/table-1.csv"' in page and 'href="toy_files_files/table-2.csv"' in page
    assert 'id="figures-and-tables"' in page and ">Figures and tables (files)<" in page
    assert rec["files"]["key_figure"] == 2  # the figure of the cell tagged key-figure
    assert [(f["n"], f["svg"]) for f in rec["files"]["figures"]] == [(1, "toy_files_files/fig-1.svg"),
                                                                     (2, "toy_files_files/fig-2.svg")]
    assert [t["shape"] for t in rec["files"]["tables"]] == [[150, 2], [2, 9]]
    exe, why = find_chromium()
    if exe:
        assert (reports / "toy_files.pdf").read_bytes()[:5] == b"%PDF-" and rec["outputs"]["pdf"] == "toy_files.pdf"
        assert rec["pdf"] == {"printed": True, "note": ""} and 'href="toy_files.pdf"' in page
    else:
        assert not (reports / "toy_files.pdf").exists() and rec["outputs"]["pdf"] is None
        assert rec["pdf"]["note"] == why and html.escape(why) in page
    # the index: the key figure as a thumbnail, the primary endpoint (not the first row) in the forest plot
    index = (reports / "index.html").read_text()
    assert 'src="toy_files_files/fig-2.png"' in index and 'href="toy_files.html#fig-2"' in index
    forest = re.search(r'<figure class="sl-forest" id="forest">.*?</figure>', index, re.S).group(0)
    assert "r(R2*, iron): -0.61 [-0.9, -0.2]" in forest and "treated - control" not in forest
    assert "n_animals = 4" in index and "estimate = 5" not in index  # the headline states the estimate
    # rerun without figures and without a PDF: nothing stale stays beside the report, nothing half-written
    monkeypatch.setenv("STUDYLIB_CHROMIUM", "none")
    assert wb.run(["toy_files"], parameters={"figures": "false"}, **kw) == 0
    assert sorted(p.name for p in files.iterdir()) == ["table-1.csv", "table-2.csv"]
    rec = json.loads((reports / "toy_files.json").read_text())
    assert rec["outputs"]["pdf"] is None and "turned off" in rec["pdf"]["note"]
    assert not (reports / "toy_files.pdf").exists() and not list(reports.glob(".*"))
    assert "no figure" in (reports / "index.html").read_text()


def test_a_report_folder_that_cannot_be_written_changes_nothing(tmp_path, monkeypatch):
    """The files beside a report are staged with it: a copy failing midway leaves the previous report, its
    folder and no temporary file."""
    run_mod = wb.run_module

    reports, src = tmp_path / "reports", tmp_path / "work"
    reports.mkdir()
    src.mkdir()
    for name in ("fig-1.svg", "fig-1.pdf", "table-1.csv"):
        (src / name).write_text(f"new {name}")
    run_mod._write_report(reports, {"x.html": "old page"}, {"x_files": src})
    before = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    (src / "fig-1.svg").write_text("newer")
    copy, calls = run_mod.shutil.copyfile, []

    def failing_copy(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return copy(a, b)

    monkeypatch.setattr(run_mod.shutil, "copyfile", failing_copy)
    with pytest.raises(wb.WorkbookError, match=r"x_files/fig-1.svg: cannot write the report \(No space left"):
        run_mod._write_report(reports, {"x.html": "new page"}, {"x_files": src})
    after = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in reports.iterdir()) == ["x.html", "x_files"]
    monkeypatch.setattr(run_mod.shutil, "copyfile", copy)
    run_mod._write_report(reports, {"x.html": "page without files"}, {"x_files": None})
    assert sorted(p.name for p in reports.iterdir()) == ["x.html"]


def test_index_forest_plot_of_primary_endpoints_and_thumbnails(tmp_path):
    """One forest-plot row per experiment, its primary endpoint (else its first finding), on its own scale;
    failed runs listed as not shown; the key figure's PNG as a thumbnail when it exists."""
    cols = ["finding", "endpoint", "role", "paper_direction", "estimate", "ci_low", "ci_high", "units", "truth"]
    recs = {
        "ampb_ferumoxytol": [["R2* Amp B - vehicle", "r2star", "primary", "increase / positive", 10.3, 5.4, 15.2,
                              "1/s", 9.4], ["r(R2*, Iba1)", "r", "secondary", "increase / positive", 0.8, 0.6, 0.9,
                                            "", None]],
        "collagen_adc": [["r(ADC, collagen)", "r", "", "decrease / negative", -0.95, -0.97, -0.91, "", None]],
    }
    for name, rows in recs.items():
        rec = _fake_record(name, f"{name} headline 10.3")
        rec.update(conclusions={"columns": cols, "data": rows}, numbers={"estimate": 10.3, "n_animals": 12},
                   files={"key_figure": 1, "figures": [{"n": 1, "png": f"{name}_files/fig-1.png"}]})
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    (tmp_path / "lactate_cest.json").write_text(json.dumps(_fake_record("lactate_cest", "broke", "failed")))
    (tmp_path / "ampb_ferumoxytol_files").mkdir()
    (tmp_path / "ampb_ferumoxytol_files" / "fig-1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    page = wb.write_index(tmp_path).read_text()
    forest = re.search(r'<figure class="sl-forest" id="forest">(.*?)</figure>', page, re.S).group(1)
    label = html.unescape(re.search(r'aria-label="([^"]*)"', forest).group(1))
    assert "R2* Amp B - vehicle: 10.3 [5.4, 15.2]" in label and "Iba1" not in label  # the primary, not a secondary
    assert "r(ADC, collagen) [first finding; no primary endpoint declared]: -0.95 [-0.97, -0.91]" in label
    assert len(re.findall(r'<g id="axes_\d+"', forest)) == 2  # one row per experiment with an effect
    assert "Not shown (failed, or no conclusions table): lactate_cest" in forest
    assert page.count('src="ampb_ferumoxytol_files/fig-1.png"') == 1
    assert "collagen_adc_files" not in page  # its PNG is missing: no broken image
    assert "estimate = 10.3" not in page and "n_animals = 12" in page  # the headline states the estimate


@pytest.mark.slow
def test_rerun_with_nothing_changed_reads_the_cache_and_is_fast(runs):
    first, heavy, second = runs["first"]["toy_ok"], runs["heavy"], runs["second"]
    assert first["cache"]["misses"] == 2 and first["cache"]["hits"] == 0
    assert heavy["cache"]["misses"] == 2 and heavy["cache"]["hits"] == 0  # heavy_s is a parameter of the maps
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] == 2
    assert [e["name"] for e in second["cache"]["events"]] == ["r2star_maps", "roi_table"]
    assert heavy["run_s"] > runs["heavy_s"]
    # the heavy step was read, not recomputed: its lookup took no compute time (speed itself is measured in
    # benchmarks/, not asserted here: a loaded CI machine makes wall-clock ratios flaky)
    assert all(e["hit"] and e["seconds"] == 0.0 for e in second["cache"]["events"]), second["cache"]
    assert second["headline"] == heavy["headline"] == first["headline"]


@pytest.mark.slow
def test_unchanged_successful_run_is_reused_without_executing(runs):
    second, reused = runs["second"], runs["reused"]
    assert reused["reused_at"] >= second["finished"] and reused["reuse_count"] == 1
    assert {k: v for k, v in reused.items() if k not in ("reused_at", "reuse_count")} == second
    nb = nbformat.read(runs["reports"] / "toy_ok.ipynb", as_version=4)
    assert nb.metadata["studylib"]["started"] == second["started"]  # the executed notebook is kept
    assert "reused" in (runs["reports"] / "index.html").read_text()


@pytest.mark.slow
def test_studylib_warnings_reach_the_report_box_index_and_status(tmp_path):
    env = make_toy_study(tmp_path, {"toy_warn": TOY_WARN, "toy_ok": TOY_OK})
    rc = wb.run(["toy_warn"], preset="ci", reports=env["reports"], manifest=env["manifest"],
                notebooks_dir=env["notebooks"], cache_dir=env["cache"], progress=False)
    assert rc == 0  # completed: warnings are not failures
    rec = json.loads((env["reports"] / "toy_warn.json").read_text())
    assert rec["status"] == "ok with warnings"
    got = {(w["category"], w["message"], w["count"]) for w in rec["warnings"]}
    assert got == {("DataWarning", "m01 day 3: 12 % of tumour voxels failed <b>", 1),
                   ("RoiWarning", "m02 day 0: tumour label empty", 2),
                   ("RoiWarning", "m02 day 7: tumour label empty", 1)}
    page = (env["reports"] / "toy_warn.html").read_text()
    box = re.search(r'<div class="sl-warnings" id="studylib-warnings".*?</div>', page, re.S).group(0)
    assert "Data warnings (3)" in box and "failed &lt;b&gt;" in box and "(&times;2)" in box
    assert "plain user warning" not in box and "handled inside" not in box
    assert 'class="sl-status warn">ok with warnings<' in page
    index = (env["reports"] / "index.html").read_text()
    assert "1 ok with warnings" in index and 'href="toy_warn.html#studylib-warnings">3 data warning(s)' in index
    # a run with warnings is still reused when nothing changed
    assert wb.run(["toy_warn"], preset="ci", reports=env["reports"], manifest=env["manifest"],
                  notebooks_dir=env["notebooks"], cache_dir=env["cache"], progress=False) == 0
    assert json.loads((env["reports"] / "toy_warn.json").read_text()).get("reused_at")


def test_run_fingerprint_tracks_what_a_run_depends_on(tmp_path):
    env = make_toy_study(tmp_path, {"toy_ok": TOY_OK})
    src, man = env["notebooks"] / "toy_ok.py", env["manifest"]
    base = {"studylib_code_sha256": "c", "packages": {"numpy": "2"}, "python": "3.11.7"}
    fp = wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")
    assert fp == wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")
    assert fp != wb.run_fingerprint(src, {"scale": 2}, man, base, "python3")
    assert fp != wb.run_fingerprint(src, {"scale": 1}, man, dict(base, studylib_code_sha256="d"), "python3")
    assert fp != wb.run_fingerprint(src, {"scale": 1}, man, dict(base, packages={"numpy": "3"}), "python3")
    raw = tmp_path / "data" / "toy" / "raw" / "scan.txt"
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, content unchanged: still reusable
    assert fp == wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")
    # one byte changed, size and modification time kept (bit rot, cp -p of another file): not reusable
    data = bytearray(raw.read_bytes())
    data[0] ^= 0x01
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert raw.stat().st_size == st.st_size
    assert fp != wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")
    fp2 = wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")
    src.write_text(src.read_text() + "\n# %%\nprint(1)\n")  # the notebook edited
    assert fp2 != wb.run_fingerprint(src, {"scale": 1}, man, base, "python3")


@pytest.mark.slow
def test_changing_a_parameter_recomputes_only_its_dependents(runs, tmp_path):
    kw = dict(runs["kw"], reports=tmp_path / "rep", parameters={"scale": 2.0})
    assert wb.run(["toy_ok"], **kw) == 0
    rec = json.loads((tmp_path / "rep" / "toy_ok.json").read_text())
    assert rec["cache"]["misses"] == 2  # the maps (parameter) and the table computed from them
    assert rec["numbers"]["effect_per_s"] == 132.0


@pytest.mark.slow
def test_show_and_load_intermediate(runs, capsys, monkeypatch):
    assert wb.show("toy_ok", preset="ci", cache_dir=runs["cache"]) == 0
    out = capsys.readouterr().out
    assert "r2star_maps" in out and "roi_table" in out and "zarr" in out and "parquet" in out
    assert "toy R2* maps" in out and "load_intermediate" in out
    maps = wb.load_intermediate("toy_ok", "r2star_maps", preset="ci", cache_dir=runs["cache"])
    assert isinstance(maps, xr.Dataset) and maps.r2star.attrs["units"] == "1/s"
    assert list(maps.animal.values) == ["m<01>", "m02"]
    table = wb.load_intermediate("toy_ok", "roi_table", preset="ci", cache_dir=runs["cache"])
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    with pytest.raises(CacheError, match="available: .*r2star_maps"):
        wb.load_intermediate("toy_ok", "nope", preset="ci", cache_dir=runs["cache"])
    # the CLI uses the default cache folder data/<preset>/derived under the project folder
    from studylib.cli import main

    monkeypatch.setenv("STUDYLIB_PROJECT", str(runs["root"]))
    assert main(["show", "toy_ok", "--preset", "ci"]) == 0
    assert "r2star_maps" in capsys.readouterr().out
    assert main(["show", "no_such_experiment", "--preset", "ci"]) == 1
    assert "unknown experiment" in capsys.readouterr().err


def test_show_registered_experiment_without_cache(tmp_path, capsys):
    assert wb.show("collagen_adc", preset="ci", cache_dir=tmp_path) == 0
    assert "no cached intermediates" in capsys.readouterr().out


# ---------------------------------------------------------------------------- killed mid-write

@pytest.mark.slow
def test_run_killed_mid_cache_write_leaves_nothing_partial_and_rerun_completes(tmp_path):
    env = make_toy_study(tmp_path, {"toy_slow": TOY_SLOW})
    marker = tmp_path / "kernel.pid"
    code = textwrap.dedent(f"""
        from studylib import workbook
        workbook.run(["toy_slow"], preset="ci", reports={str(env['reports'])!r}, manifest={str(env['manifest'])!r},
                     notebooks_dir={str(env['notebooks'])!r}, cache_dir={str(env['cache'])!r},
                     parameters={{"marker": {str(marker)!r}}}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kernel_pid = None
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text().strip()):
            assert proc.poll() is None, "runner ended before the notebook started writing"
            assert time.monotonic() < deadline, "the notebook never started writing its cache entry"
            time.sleep(0.05)
        kernel_pid = int(marker.read_text())
        time.sleep(0.8)
        os.kill(proc.pid, signal.SIGKILL)  # the runner ...
        os.kill(kernel_pid, signal.SIGKILL)  # ... and its kernel, mid-write
    finally:
        proc.wait(timeout=30)
    parent = env["cache"] / "toy_slow" / "maps"
    assert parent.is_dir() and all(".tmp-" in p.name for p in parent.iterdir())  # only the partial write
    with pytest.raises(CacheError):
        wb.load_intermediate("toy_slow", "maps", preset="ci", cache_dir=env["cache"])
    assert not (env["reports"] / "toy_slow.html").exists() and not (env["reports"] / "toy_slow.json").exists()
    import tempfile

    left_run = list(Path(tempfile.gettempdir()).glob(f"studylib-run-p{proc.pid}@*"))
    assert len(left_run) == 1  # the killed run's work folder is left behind ...
    partial = list(parent.iterdir())

    rc = wb.run(["toy_slow"], preset="ci", reports=env["reports"], manifest=env["manifest"],
                notebooks_dir=env["notebooks"], cache_dir=env["cache"],
                parameters={"marker": str(marker), "slow": False}, progress=False)
    assert rc == 0
    rec = json.loads((env["reports"] / "toy_slow.json").read_text())
    assert rec["status"] == "ok" and rec["cache"]["misses"] == 1
    assert float(wb.load_intermediate("toy_slow", "maps", preset="ci", cache_dir=env["cache"]).v.sum()) == 384
    # ... and the next run removed it and the killed writer's partial cache entry
    assert not left_run[0].exists() and not any(p.exists() for p in partial)
    assert [p.name for p in parent.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.slow
def test_a_report_that_cannot_be_written_is_one_line_and_leaves_the_previous_report(tmp_path):
    """The write fails for real (the kernel's file-size limit, RLIMIT_FSIZE: EFBIG, as a full disk gives
    ENOSPC): one line naming the file, exit 1, the previous report untouched, no temporary file left."""
    env = make_toy_study(tmp_path, {"toy_warn": TOY_WARN})
    args = ["run", "toy_warn", "--preset", "ci", "--reports", str(env["reports"]), "--manifest", str(env["manifest"]),
            "--cache", str(env["cache"])]
    code = textwrap.dedent("""
        import resource, signal, sys
        from studylib.cli import main
        limit = int(sys.argv[1])
        if limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        sys.exit(main(sys.argv[2:]))
    """)
    envvars = {**os.environ, "STUDYLIB_PROJECT": str(env["root"])}
    first = subprocess.run([sys.executable, "-c", code, "0", *args], cwd=tmp_path, env=envvars,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {str(p.relative_to(env["reports"])): p.read_bytes() for p in env["reports"].rglob("*") if p.is_file()}
    small, big = (env["reports"] / "toy_warn.ipynb").stat().st_size, (env["reports"] / "toy_warn.html").stat().st_size
    assert small < big
    limit = (small + big) // 2  # the notebook fits, the HTML does not
    failed = subprocess.run([sys.executable, "-c", code, str(limit), *args, "--force"], cwd=tmp_path, env=envvars,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert failed.stderr.count("error:") == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"error: {env['reports'] / 'toy_warn.html'}: cannot write the report (File too large)" in failed.stderr
    after = {str(p.relative_to(env["reports"])): p.read_bytes() for p in env["reports"].rglob("*") if p.is_file()}
    assert after == before  # nothing changed: no partial report, no temporary file


@pytest.mark.slow
def test_parallel_jobs_give_the_reports_of_a_serial_run(tmp_path):
    notebooks = {f"toy_{i}": TOY_WARN.replace('study = "toy_warn"', f'study = "toy_{i}"') for i in range(3)}
    env = make_toy_study(tmp_path, notebooks)
    kw = dict(preset="ci", manifest=env["manifest"], notebooks_dir=env["notebooks"], cache_dir=env["cache"],
              progress=False)
    assert wb.run(sorted(notebooks), reports=tmp_path / "serial", jobs=1, **kw) == 0
    assert wb.run(sorted(notebooks), reports=tmp_path / "parallel", jobs=3, **kw) == 0
    for name in notebooks:
        a = json.loads((tmp_path / "serial" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "parallel" / f"{name}.json").read_text())
        assert a["status"] == b["status"] == "ok with warnings"
        assert a["warnings"] == b["warnings"] and a["headline"] == b["headline"]  # each kernel its own record
        assert {k: v for k, v in a["parameters"].items() if k != "reports_dir"} == \
            {k: v for k, v in b["parameters"].items() if k != "reports_dir"}
    with pytest.raises(StudyError, match="jobs must be a whole number"):
        wb.run(sorted(notebooks), reports=tmp_path / "x", jobs=0, **kw)


@pytest.mark.slow
def test_parallel_jobs_start_the_next_kernel_while_a_report_is_written(tmp_path, monkeypatch):
    """jobs=2, three notebooks: the third kernel starts when the first kernel ends, not after its report is written."""
    import importlib
    import threading
    import time

    run_mod = importlib.import_module("studylib.workbook.run")  # the module (the package exports its run())
    notebooks = {f"toy_{i}": TOY_WARN.replace('study = "toy_warn"', f'study = "toy_{i}"') for i in range(3)}
    env = make_toy_study(tmp_path, notebooks)
    events: list = []
    lock = threading.Lock()
    real_execute, real_finish = run_mod._execute, run_mod._finish_one

    def execute(name, *a, **k):
        with lock:
            events.append(("start", name, time.monotonic()))
        return real_execute(name, *a, **k)

    def finish(name, **k):
        time.sleep(4.0)  # a slow report (a big HTML, a PDF)
        out = real_finish(name, **k)
        with lock:
            events.append(("written", name, time.monotonic()))
        return out

    monkeypatch.setattr(run_mod, "_execute", execute)
    monkeypatch.setattr(run_mod, "_finish_one", finish)
    assert wb.run(sorted(notebooks), preset="ci", manifest=env["manifest"], notebooks_dir=env["notebooks"],
                  cache_dir=env["cache"], reports=tmp_path / "reports", jobs=2, progress=False) == 0
    starts = sorted(t for kind, _, t in events if kind == "start")
    written = sorted(t for kind, _, t in events if kind == "written")
    assert len(starts) == len(written) == 3
    assert starts[2] < written[0]  # the third kernel ran before any report was written (each takes 4 s here)
    for name in notebooks:
        assert json.loads((tmp_path / "reports" / f"{name}.json").read_text())["status"] == "ok with warnings"


TOY_SLOW_EXIT = NB_HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_slow_exit"

    # %%
    import atexit
    import os
    import time

    def _slow_exit():  # a kernel whose own clean-up takes a while (closing files, a cluster) before it exits
        time.sleep(1.5)
        with open(os.environ["TOY_EXIT_MARKER"], "w") as f:
            f.write(f"{os.getpid()} {time.time()}")

    atexit.register(_slow_exit)
    ''')


def test_a_kernel_exits_in_the_background_cleanly_and_the_run_waits_for_it(tmp_path, monkeypatch):
    """The runner asks a finished notebook's kernel to shut down and goes on (report, next notebook) while the
    kernel exits; the kernel still exits cleanly (its atexit clean-up runs to the end), and the run returns only
    after it has exited and been reaped."""
    import importlib

    run_mod = importlib.import_module("studylib.workbook.run")
    marker = tmp_path / "exited"
    monkeypatch.setenv("TOY_EXIT_MARKER", str(marker))
    env = make_toy_study(tmp_path, {"toy_slow_exit": TOY_SLOW_EXIT})
    returned = []
    real_execute = run_mod._execute

    def execute(name, *a, **k):
        out = real_execute(name, *a, **k)
        returned.append(time.time())
        return out

    monkeypatch.setattr(run_mod, "_execute", execute)
    assert wb.run(["toy_slow_exit"], preset="ci", manifest=env["manifest"], notebooks_dir=env["notebooks"],
                  cache_dir=env["cache"], reports=env["reports"], progress=False, jobs=1) == 0
    assert marker.is_file()  # the clean-up finished before run() returned
    pid, exited_at = marker.read_text().split()
    assert returned and returned[0] < float(exited_at) - 1.0  # the runner went on while the kernel exited
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped (a zombie keeps its /proc entry)
    assert json.loads((env["reports"] / "toy_slow_exit.json").read_text())["status"] == "ok"


def test_a_kernel_that_does_not_exit_after_its_shutdown_request_is_killed():
    """KernelReaper waits its time (half of jupyter_client's shutdown_wait_time in the runner), then kills the
    kernel's process group and reaps it; close() returns once every kernel handed to it is gone."""
    from studylib.workbook.kernels import KernelReaper

    stubborn = subprocess.Popen(["sleep", "60"], start_new_session=True)
    polite = subprocess.Popen(["sleep", "0.2"], start_new_session=True)
    t0 = time.monotonic()
    with KernelReaper() as reaper:
        reaper.reap(stubborn, os.getpgid(stubborn.pid), 0.5)
        reaper.reap(polite, os.getpgid(polite.pid), 5.0)
    assert time.monotonic() - t0 < 5.0
    assert stubborn.returncode == -signal.SIGKILL and polite.returncode == 0


TOY_DIES = NB_HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_dies"

    # %%
    print("first cell ran")

    # %%
    print("second cell ran")

    # %%
    import os
    os._exit(9)  # the kernel dies (as when the system kills it for memory)

    # %%
    print("never runs")
    ''')


def test_a_dead_kernel_leaves_the_outputs_before_it_and_saves_are_throttled(tmp_path, monkeypatch):
    """Saves of a running notebook are throttled (SAVE_EVERY_S), yet the closing save after a kernel died still
    writes every output before it into the failed report's notebook."""
    import importlib

    import papermill.iorw as iorw

    run_mod = importlib.import_module("studylib.workbook.run")
    writes = []
    real_write = iorw.write_ipynb

    def counting(nb, path, *a, **k):
        writes.append(str(path))
        return real_write(nb, path, *a, **k)

    monkeypatch.setattr("papermill.engines.write_ipynb", counting)
    env = make_toy_study(tmp_path, {"toy_dies": TOY_DIES})
    code = wb.run(["toy_dies"], preset="ci", manifest=env["manifest"], notebooks_dir=env["notebooks"],
                  cache_dir=env["cache"], reports=env["reports"], progress=False, jobs=1)
    assert code == 1
    rec = json.loads((env["reports"] / "toy_dies.json").read_text())
    assert rec["status"] == "failed" and "Dead" in (rec["error"] or {}).get("ename", "") + str(rec["error"])
    nb = nbformat.read(env["reports"] / "toy_dies.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "first cell ran" in text and "second cell ran" in text and "never runs" not in text
    # papermill alone writes before and after each of the 5 cells; throttled: the closing save (and at most one
    # more per SAVE_EVERY_S of the run)
    assert 1 <= len(writes) <= 2, writes
    assert run_mod.SAVE_EVERY_S >= 5


def test_cache_folder_from_the_environment_or_the_command_line(tmp_path, monkeypatch, capsys):
    from studylib.cli import main
    from studylib.layout import default_cache_dir

    monkeypatch.delenv("STUDYLIB_CACHE", raising=False)
    man = tmp_path / "study" / "data_manifest.csv"
    assert default_cache_dir("ci", man) == (tmp_path / "study" / "derived").resolve()
    monkeypatch.setenv("STUDYLIB_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir("ci", man) == (tmp_path / "elsewhere").resolve()
    assert default_cache_dir("demo") == (tmp_path / "elsewhere").resolve()
    # show --manifest/--cache finds what run wrote there
    from studylib.cache import Cache

    Cache("collagen_adc", tmp_path / "c2", verbose=False).get_or_compute("t", lambda: {"a": 1}, kind="json")
    assert main(["show", "collagen_adc", "--preset", "ci", "--manifest", str(man), "--cache", str(tmp_path / "c2")]) == 0
    assert "1 cached intermediate" in capsys.readouterr().out


# ---------------------------------------------------------------------------- bad input (no kernel)

def test_bad_experiment_names_and_missing_notebooks(tmp_path):
    env = make_toy_study(tmp_path, {"toy_ok": TOY_OK})
    kw = dict(preset="ci", reports=tmp_path / "r", manifest=env["manifest"], notebooks_dir=env["notebooks"])
    with pytest.raises(wb.WorkbookError, match="unknown experiment 'nope'"):
        wb.run(["nope"], **kw)
    with pytest.raises(wb.WorkbookError, match=r"notebook .*collagen_adc.py does not exist"):
        wb.run(["collagen_adc"], **kw)
    with pytest.raises(wb.WorkbookError, match="not valid"):
        wb.run(["../etc/passwd"], **kw)
    with pytest.raises(wb.WorkbookError, match="no experiment notebooks found"):
        wb.run(None, **kw)  # toy_ok is not a registered experiment, so the default list is empty
    with pytest.raises(wb.WorkbookError, match="is not a folder"):
        wb.run(["toy_ok"], **dict(kw, notebooks_dir=tmp_path / "missing"))
    assert not (tmp_path / "r" / "index.html").exists()


def test_bad_manifest_preset_and_scheduler(tmp_path):
    env = make_toy_study(tmp_path, {"toy_ok": TOY_OK})
    kw = dict(preset="ci", reports=tmp_path / "r", notebooks_dir=env["notebooks"])
    with pytest.raises(wb.WorkbookError, match="not found"):
        wb.run(["toy_ok"], manifest=tmp_path / "missing.csv", **kw)
    (tmp_path / "data" / "toy" / "raw" / "scan.txt").unlink()
    with pytest.raises(wb.WorkbookError, match=r"1 file\(s\) listed in the manifest are missing"):
        wb.run(["toy_ok"], manifest=env["manifest"], **kw)
    with pytest.raises(wb.WorkbookError, match="preset"):
        wb.run(["toy_ok"], manifest=env["manifest"], **dict(kw, preset="../x"))
    with pytest.raises(SchedulerError, match="unknown scheduler"):
        wb.run(["toy_ok"], manifest=env["manifest"], scheduler="quantum", **kw)
    assert all(isinstance(e, type) and issubclass(e, StudyError) for e in (wb.WorkbookError, SchedulerError))


def test_missing_preset_data_is_generated_once(tmp_path, monkeypatch):
    calls = []

    def fake_generate(preset, out=None, seed=None, manifest=None):
        calls.append(preset)
        f = tmp_path / "data" / preset / "raw" / "x.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
        m = tmp_path / "data" / preset / "data_manifest.csv"
        m.write_text(f"study,animal,group,day,kind,path,sha256\ntoy,a,g,0,T2w,raw/x.txt,"
                     f"{hashlib.sha256(b'x').hexdigest()}\n")
        return m

    monkeypatch.setitem(sys.modules, "studylib.synth", types.SimpleNamespace(generate=fake_generate))
    monkeypatch.setenv("STUDYLIB_PROJECT", str(tmp_path))  # defaults hang off the project folder
    m = wb._ensure_data("ci", None)
    assert calls == ["ci"] and m == (tmp_path / "data" / "ci" / "data_manifest.csv").resolve()
    assert wb._ensure_data("ci", None) == m and calls == ["ci"]  # present: not regenerated
    (tmp_path / "data" / "ci" / "raw" / "x.txt").unlink()  # a listed file went missing: regenerate
    wb._ensure_data("ci", None)
    assert calls == ["ci", "ci"]


def test_default_locations(monkeypatch, tmp_path):
    """Every default hangs off one anchor, the project folder, whatever the working folder is."""
    root = wb.REPO_DIR
    assert wb.default_manifest("demo") == root / "data_manifest.csv"
    assert wb.default_manifest("ci") == root / "data/ci/data_manifest.csv"
    assert wb.default_cache_dir("ci") == root / "data/ci/derived"
    assert wb.default_cache_dir("demo", manifest=root / "data_manifest.csv") == root / "data/demo/derived"
    assert wb.default_cache_dir("demo", manifest="/elsewhere/study/m.csv") == Path("/elsewhere/study/derived")
    monkeypatch.chdir(tmp_path)
    assert wb.default_manifest("demo") == root / "data_manifest.csv"
    monkeypatch.setenv("STUDYLIB_PROJECT", str(tmp_path))
    assert wb.default_cache_dir("ci") == tmp_path / "data/ci/derived"
    assert set(wb.EXPERIMENTS) == {"ampb_ferumoxytol", "blz945_femri", "ferumoxytol_therapy", "collagen_adc",
                                   "ktrans_hypoxia", "fluorine19_pfc", "lactate_cest", "acidocest_b16"}


# ---------------------------------------------------------------------------- the recording protocol

def test_record_headline_and_conclusions_write_the_record_file(tmp_path, monkeypatch):
    path = tmp_path / "rec.json"
    monkeypatch.setenv(wb.RECORD_ENV, str(path))
    from studylib import recorder

    monkeypatch.setattr(recorder, "_RECORD", {})
    out = wb.record_headline("  ADC fell <3> ", estimate=np.float32(-0.5), n=np.int64(12), p=None)
    assert out == {"headline": "ADC fell <3>", "numbers": {"estimate": -0.5, "n": 12, "p": None}}
    df = pd.DataFrame({"r": [-0.7]}, index=pd.Index(["collagen"], name="finding"))
    assert wb.record_conclusions(df) is df
    rec = json.loads(path.read_text())
    assert rec["headline"] == "ADC fell <3>" and rec["conclusions"] == {"columns": ["finding", "r"],
                                                                       "data": [["collagen", -0.7]]}


@pytest.mark.parametrize("call, msg", [
    (lambda: wb.record_headline(""), "non-empty string"),
    (lambda: wb.record_headline(3), "non-empty string"),
    (lambda: wb.record_headline("x", ci=[1, 2]), "must be a scalar"),
    (lambda: wb.record_conclusions({"a": 1}), "expected a pandas DataFrame"),
])
def test_record_bad_input(call, msg, monkeypatch):
    monkeypatch.delenv(wb.RECORD_ENV, raising=False)
    with pytest.raises(wb.WorkbookError, match=msg):
        call()


def _fake_record(name, headline, status="ok", animal="m1"):
    return {"studylib_report": wb.REPORT_FORMAT, "experiment": name, "title": name, "status": status,
            "headline": headline, "numbers": {"n_" + animal: 1.0}, "run_s": 1.0, "started": "2026-01-01",
            "error": None if status == "ok" else {"ename": "E", "evalue": headline},
            "git": {"commit": "a" * 40, "dirty": False}, "manifest": {"sha256": "b" * 64}}


def _tags_and_text(page: str):
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.text = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)

    p = P()
    p.feed(page.split("<tbody>")[1].split("</tbody>")[0])
    return p.tags, "".join(p.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=40), st.sampled_from(["ok", "failed"]), st.text(min_size=1, max_size=10))
def test_index_escapes_any_user_string(tmp_path, text, status, animal):
    """Whatever the headline/animal strings, the page's tag structure is the same and the text reads back."""
    (tmp_path / "x.json").write_text(json.dumps(_fake_record("lactate_cest", "x", status, "y")))
    ref_tags, _ = _tags_and_text(wb.write_index(tmp_path).read_bytes().decode())
    (tmp_path / "x.json").write_text(json.dumps(_fake_record("lactate_cest", text, status, animal)))
    page = wb.write_index(tmp_path).read_bytes().decode()  # bytes: keep any '\r' as written
    tags, shown = _tags_and_text(page)
    assert tags == ref_tags  # nothing from the user strings became markup
    assert text in shown
    assert html.escape(text) in page


def test_toc_built_from_headings():
    body = ('<h1 id="Title-&lt;x&gt;">Title &lt;x&gt;<a class="anchor-link" href="#Title">¶</a></h1>'
            '<h2 id="Part-1">Part 1</h2><h4 id="deep">deep</h4>')
    toc = wb.report._toc_html(body)
    assert 'href="#Title-&lt;x&gt;">Title &lt;x&gt;</a>' in toc and 'href="#Part-1"' in toc and "deep" not in toc
    assert wb.report._toc_html("<p>no headings</p>") == ""
