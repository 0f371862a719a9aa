"""Reports in a real browser: headless Debian Chromium driven by playwright, from disk (file://).

Every page (index.html and each report) loads with no console errors, no page errors and no
failed requests (the reports are offline: no CDN), and every ``<img>`` figure is decoded with a
non-zero natural size: in the index these are the key-figure thumbnails (``<exp>_files/fig-<n>.png``), and
its forest plot (inline SVG, one row per experiment) is drawn with a non-zero size.  Full-page screenshots
are saved beside the reports (``screenshots/``).

* ``test_toy_reports_in_browser``: toy notebooks (an ok one with figures, a failing one).
* ``test_real_notebooks_ci_end_to_end_in_browser`` (slow): runs every experiment notebook that
  exists on the ``ci`` preset (``studylib run --preset ci --reports reports/ci``; the data are
  generated into ``data/ci`` when missing), checks each run succeeded with a headline and
  conclusions, then checks index + reports in Chromium; screenshots in ``reports/ci/screenshots``.

``/usr/bin/chromium`` comes from ``make chromium`` (part of ``make test``).
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from studylib import workbook as wb

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.browser

HEADER = "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n" \
         "#     name: python3\n# ---\n"

TOY_FIGURES = HEADER + textwrap.dedent('''
    # %% [markdown]
    # # Figures <and> tables

    # %% tags=["parameters"]
    manifest = None
    study = "toy_figures"

    # %%
    import matplotlib.pyplot as plt
    import numpy as np, pandas as pd
    from studylib import workbook
    df = pd.DataFrame({"animal": ["<img src=x onerror=alert(1)>", "m2"], "r2star_per_s": [31.2, 45.9]})
    df

    # %% [markdown]
    # ## Two figures

    # %%
    for k in (1, 2):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(np.arange(5) ** k)
        ax.set_title(f"figure {k}")
        plt.show()

    # %%
    workbook.record_headline("toy <b>headline</b>", n=2)
    workbook.record_conclusions(pd.DataFrame({"finding": ["R2* <up>"], "role": ["primary"], "estimate": [5.0],
                                              "ci_low": [2.0], "ci_high": [8.0], "units": ["1/s"], "truth": [6.0],
                                              "paper_direction": ["increase / positive"]}))
    ''')

TOY_BROKEN = HEADER + textwrap.dedent('''
    # %% tags=["parameters"]
    manifest = None
    study = "toy_broken"

    # %%
    raise RuntimeError("the <fit> failed")
    ''')


def check_pages_in_browser(pages: list[Path], screenshot_dir: Path) -> dict[str, dict]:
    """Open each page from disk in headless Chromium; return per page its problems and image sizes."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install it with `make chromium`"
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for page_path in pages:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                problems: list[str] = []
                page.on("console", lambda m, pr=problems: pr.append(f"console {m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda e, pr=problems: pr.append(f"page error: {e}"))
                page.on("requestfailed", lambda r, pr=problems: pr.append(f"request failed: {r.url}"))
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                # every image decoded (or failed) before it is checked: no race with the decoder
                page.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
                images = page.evaluate(
                    "Array.from(document.images).map(i => ({complete: i.complete, w: i.naturalWidth, "
                    "h: i.naturalHeight, alt: i.alt}))")
                forest = page.evaluate(
                    "(() => { const s = document.querySelector('#forest svg'); if (!s) return null; "
                    "const r = s.getBoundingClientRect(); return {w: r.width, h: r.height, "
                    "rows: s.querySelectorAll('g[id^=\"axes_\"]').length}; })()")
                page.screenshot(path=str(screenshot_dir / f"{page_path.stem}.png"), full_page=True)
                results[page_path.name] = {"problems": problems, "images": images,
                                           "title": page.title(), "forest": forest}
                page.close()
        finally:
            browser.close()
    return results


def assert_pages_ok(results: dict[str, dict]) -> None:
    bad = {name: r["problems"] for name, r in results.items() if r["problems"]}
    assert not bad, f"browser problems: {bad}"
    for name, r in results.items():
        for img in r["images"]:
            assert img["complete"] and img["w"] > 0 and img["h"] > 0, f"{name}: figure not rendered: {img}"


def test_toy_reports_in_browser(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("x")
    man = tmp_path / "data_manifest.csv"
    pd.DataFrame([{"study": "toy", "animal": "m1", "group": "g", "day": 0, "kind": "T2w", "path": "raw.txt",
                   "sha256": hashlib.sha256(b"x").hexdigest()}]).to_csv(man, index=False)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "toy_figures.py").write_text(TOY_FIGURES)
    (nbs / "toy_broken.py").write_text(TOY_BROKEN)
    reports = tmp_path / "reports"
    rc = wb.run(["toy_figures", "toy_broken"], preset="ci", reports=reports, manifest=man, notebooks_dir=nbs,
                cache_dir=tmp_path / "derived", progress=False)
    assert rc == 1
    pages = [reports / "index.html", reports / "toy_figures.html", reports / "toy_broken.html"]
    results = check_pages_in_browser(pages, reports / "screenshots")
    assert_pages_ok(results)
    assert len(results["toy_figures.html"]["images"]) == 2  # the two figures; the <img> in the table is text
    assert results["toy_figures.html"]["title"] == "toy_figures"
    # the index: the key figure (the first) as a thumbnail, the forest plot of the one headline effect
    index = results["index.html"]
    assert [i["alt"] for i in index["images"]] == ["key figure of toy_figures"]
    assert index["forest"]["rows"] == 1 and index["forest"]["w"] > 300 and index["forest"]["h"] > 50
    page = (reports / "toy_figures.html").read_text()
    for ext in ("svg", "pdf", "png"):  # each figure downloadable beside the report
        assert all((reports / "toy_figures_files" / f"fig-{n}.{ext}").is_file() for n in (1, 2))
        assert 'href="toy_figures_files/fig-2.%s"' % ext in page
    assert (reports / "toy_figures.pdf").read_bytes()[:5] == b"%PDF-"  # Chromium is installed here
    for page in pages:
        shot = reports / "screenshots" / f"{page.stem}.png"
        assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_real_notebooks_ci_end_to_end_in_browser(ci_reports):
    """The seven real notebooks, executed on the ci study (tests/conftest.py ``ci_reports``), render
    in headless Chromium with their figures and no console or page errors."""
    names = sorted(ci_reports["records"])
    reports = ci_reports["root"] / "reports"
    for n, r in ci_reports["records"].items():
        assert r["manifest"]["sha256"] and r["parameters"]["preset"] == "ci", n
    pages = [reports / "index.html"] + [reports / f"{n}.html" for n in names]
    results = check_pages_in_browser(pages, reports / "screenshots")
    assert_pages_ok(results)
    for n in names:
        assert results[f"{n}.html"]["images"], f"{n}: the report has no figures"
    # the index: every experiment's key figure as a thumbnail and its headline effect as a forest-plot row
    index = results["index.html"]
    assert sorted(i["alt"] for i in index["images"]) == sorted(f"key figure of {ci_reports['records'][n]['title']}"
                                                               for n in names)
    assert index["forest"]["rows"] == len(names) and index["forest"]["w"] > 300 and index["forest"]["h"] > 300
    for n in names:  # every figure as SVG, PDF and PNG and every table as CSV beside the report, and a PDF
        files = ci_reports["records"][n]["files"]
        assert files["figures"] and files["tables"], n
        for entry in files["figures"] + files["tables"]:
            for ext in ("svg", "pdf", "png", "csv"):
                if ext in entry:
                    assert (reports / entry[ext]).stat().st_size > 0, (n, entry)
        assert (reports / f"{n}.pdf").read_bytes()[:5] == b"%PDF-", n


def test_no_report_carries_a_text_progress_bar(ci_reports):
    """Progress stays on the command line: Dask's text bars ("[####    ] | 50% Completed") are written to the
    kernel's own stderr under `studylib run`, never into a notebook's outputs or its HTML."""
    import re

    reports = ci_reports["root"] / "reports"
    bar = re.compile(r"\[#+ *\] \| +\d+% Completed|\d+% Completed \|")
    for n in ci_reports["records"]:
        for suffix in (".html", ".ipynb"):
            text = (reports / f"{n}{suffix}").read_text(encoding="utf-8")
            assert not bar.search(text), f"{n}{suffix} contains a progress bar"
