"""The files beside a report: every figure as PNG, SVG and PDF, every table as CSV, and the report as PDF.

One place decides what is saved and how it is linked:

* **in the kernel** (:func:`studylib.recorder.load_ipython_extension`, which :func:`kernel_arguments` has the
  kernel load at its start): each figure the notebook displays is saved from the Figure itself as
  ``fig-<n>.svg`` and ``fig-<n>.pdf``, each DataFrame (or Styler) in full as ``table-<n>.csv``, into the run's
  work folder, and the output is tagged with the files' names (mimetype
  :data:`~studylib.recorder.EXPORT_MIME`);
* **in the runner** (:func:`collect`): ``fig-<n>.png`` is written from the notebook's own PNG, the tags are
  rewritten to paths relative to the reports folder (``<exp>_files/fig-1.svg``) and listed in the report
  record (``files``); the key figure is the first figure of a cell tagged ``key-figure``, else the first one;
* **in the HTML** (:func:`with_download_links`, :func:`downloads_section`): a "download" line under each figure
  and table and a "Figures and tables" section listing them all; the index shows the key figure's PNG;
* **the report as PDF** (:func:`print_pdf`): printed by headless Chromium where one is installed
  (``STUDYLIB_CHROMIUM`` names it, or ``none`` to skip; otherwise ``chromium``/``google-chrome`` on the PATH);
  without one the record notes why there is no PDF; this is not an error.

The runner writes ``reports/<exp>_files/`` together with the report, all or none (``run._write_report``).
"""

from __future__ import annotations

import base64
import binascii
import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..recorder import EXPORT_MIME, FILES_ENV

__all__ = ["FILES_ENV", "collect", "downloads_section", "files_folder", "find_chromium", "kernel_arguments",
           "print_pdf", "with_download_links"]

#: cell tags marking the figure the index shows as the experiment's thumbnail
KEY_FIGURE_TAGS = ("key-figure", "key_figure")

#: environment variable naming the Chromium used to print PDFs ("none" or empty: do not print)
CHROMIUM_ENV = "STUDYLIB_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--no-pdf-header-footer")


def files_folder(name: str) -> str:
    """``<experiment>_files``: the folder beside the report holding its figures and tables."""
    return f"{name}_files"


def kernel_arguments() -> list[str]:
    """Kernel command-line arguments loading the recorder's IPython extension (saves figures and tables)."""
    return ["--IPKernelApp.extra_extensions=studylib.recorder"]


def _export_tags(nb):
    """``(cell index, cell, output, tag)`` of every output the kernel saved files for, in notebook order."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            tag = (out.get("data") or {}).get(EXPORT_MIME)
            if isinstance(tag, dict) and tag.get("kind") in ("figure", "table"):
                yield i, cell, out, tag


def collect(nb, work_folder: Path, name: str) -> dict:
    """After a run: complete ``work_folder`` (the kernel's saved files) and return the record's ``files``.

    Writes ``fig-<n>.png`` from each tagged figure output's PNG, drops tags whose files the kernel could not
    write, and rewrites each tag (in ``nb``, in place) to paths relative to the reports folder.

    Returns
    -------
    dict ``{"folder", "figures": [{"n", "cell", "png", "svg", "pdf"}], "tables": [{"n", "cell", "csv",
    "shape"}], "key_figure": n or None}``; empty lists when nothing was displayed.
    """
    work_folder = Path(work_folder)
    rel = files_folder(name)
    figures, tables, key = [], [], None
    for i, cell, out, tag in list(_export_tags(nb)):
        files = [f for f in tag.get("files", []) if (work_folder / f).is_file()]
        if len(files) != len(tag.get("files", [])) or not files:
            out["data"].pop(EXPORT_MIME, None)
            continue
        entry = {"n": int(tag["n"]), "cell": i}
        if tag["kind"] == "figure":
            png = out["data"].get("image/png")
            if png:
                try:
                    (work_folder / f"fig-{tag['n']}.png").write_bytes(base64.b64decode(png))
                    files.append(f"fig-{tag['n']}.png")
                except (binascii.Error, ValueError, OSError):
                    pass
            entry.update({Path(f).suffix[1:]: f"{rel}/{f}" for f in files})
            figures.append(entry)
            tags = set(cell.get("metadata", {}).get("tags", []))
            if key is None and tags & set(KEY_FIGURE_TAGS) and "png" in entry:
                key = entry["n"]
        else:
            entry.update({"csv": f"{rel}/{files[0]}", "shape": tag.get("shape")})
            tables.append(entry)
        out["data"][EXPORT_MIME] = {**tag, "files": [f"{rel}/{f}" for f in files]}
    if key is None:
        key = next((f["n"] for f in figures if "png" in f), None)
    return {"folder": rel, "figures": figures, "tables": tables, "key_figure": key}


def _links(entry: dict, kinds: tuple[str, ...]) -> str:
    return " · ".join(f'<a href="{html.escape(entry[k], quote=True)}" download>{k.upper()}</a>'
                      for k in kinds if entry.get(k))


def with_download_links(nb):
    """A copy of ``nb`` (for the HTML) with a small download line under every saved figure and table."""
    import copy

    import nbformat

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.get("outputs"):
            continue
        outs = []
        for out in cell.outputs:
            outs.append(out)
            tag = (out.get("data") or {}).get(EXPORT_MIME)
            if not isinstance(tag, dict) or tag.get("kind") not in ("figure", "table"):
                continue
            files = {Path(f).suffix[1:]: f for f in tag.get("files", [])}
            what = "Figure" if tag["kind"] == "figure" else "Table"
            anchor = f"{'fig' if tag['kind'] == 'figure' else 'table'}-{int(tag['n'])}"
            line = (f'<div class="sl-downloads" id="{anchor}">{what} {int(tag["n"])}: '
                    f'{_links(files, ("svg", "pdf", "png", "csv"))}</div>')
            outs.append(nbformat.v4.new_output("display_data", data={"text/html": line}))
        cell.outputs = outs
    return nb


def downloads_section(prov: dict) -> str:
    """The report section listing every figure and table file (empty when there are none)."""
    files = prov.get("files") or {}
    figs, tabs = files.get("figures") or [], files.get("tables") or []
    pdf = (prov.get("outputs") or {}).get("pdf")
    note = (prov.get("pdf") or {}).get("note")
    if not figs and not tabs and not pdf and not note:
        return ""
    rows = [f'<li><a href="#fig-{int(f["n"])}">Figure {int(f["n"])}</a>: {_links(f, ("svg", "pdf", "png"))}</li>'
            for f in figs]
    rows += [f'<li><a href="#table-{int(t["n"])}">Table {int(t["n"])}</a>'
             + (f' <span class="sl-muted">({int(t["shape"][0])} rows × {int(t["shape"][1])} columns)</span>'
                if t.get("shape") else "") + f": {_links(t, ('csv',))}</li>" for t in tabs]
    head = (f'<p>This report as PDF: <a href="{html.escape(pdf, quote=True)}">{html.escape(pdf)}</a></p>' if pdf
            else f'<p class="sl-muted">No PDF of this report: {html.escape(note or "")}</p>' if note else "")
    return (f'<section class="sl-sections sl-files"><h2 id="figures-and-tables">Figures and tables (files)</h2>'
            f'{head}<p class="sl-muted">Every figure as vector SVG and PDF (and the PNG shown here), every table '
            f'in full as CSV, in <code>{html.escape(files.get("folder") or "")}/</code>.</p>'
            f'<ul>{"".join(rows)}</ul></section>')


def find_chromium() -> tuple[str | None, str]:
    """``(path, "")`` of the headless Chromium that prints PDFs, or ``(None, why not)``."""
    given = os.environ.get(CHROMIUM_ENV)
    if given is not None:
        if given.strip().lower() in ("", "none", "0", "off", "no"):
            return None, f"PDF printing is turned off ({CHROMIUM_ENV}={given!r})"
        path = shutil.which(given)
        return (path, "") if path else (None, f"{CHROMIUM_ENV}={given!r} is not an executable")
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, ("Chromium is not installed (install it, e.g. `make chromium`, or name it in "
                  f"{CHROMIUM_ENV})")


def print_pdf(page: Path, pdf: Path, *, timeout_s: float = 120.0) -> str:
    """Print the HTML file ``page`` to ``pdf`` with headless Chromium; returns "" or why there is no PDF.

    Chromium runs with a fresh profile in a temporary folder (notebooks run in parallel each print their
    own), its output is captured, and any failure (none installed, a crash, a timeout) is returned as a
    note, never raised: the report does not depend on it.
    """
    exe, why = find_chromium()
    if exe is None:
        return why
    pdf = Path(pdf)
    with tempfile.TemporaryDirectory(prefix="studylib-chromium-") as profile:
        cmd = [exe, *CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--print-to-pdf={pdf}",
               Path(page).resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"Chromium did not print the PDF within {timeout_s:.0f} s"
        except OSError as err:
            return f"Chromium ({exe}) could not be started: {err.strerror or err}"
    try:
        ok = pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-"
    except OSError:
        ok = False
    if not ok:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"Chromium ({exe}) wrote no PDF (exit code {proc.returncode}) {tail[0][:200]}".strip()
    return ""
