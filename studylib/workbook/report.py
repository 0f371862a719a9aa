"""The HTML of a report (nbconvert, folded code, table of contents, provenance header and footer)
and the index page listing every experiment."""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Iterable

from .._atomic import atomic_write_text
from ..catalog import EXPERIMENTS
from ..recorder import _fmt
from .downloads import downloads_section, with_download_links
from .methods import sections_from_record
from .provenance import provenance_base

__all__ = ["REPORT_FORMAT", "forest_svg", "headline_effect", "render_report", "write_index"]

#: version of the report record format (``reports/<experiment>.json``)
REPORT_FORMAT = 1

#: statuses of a run that completed: "ok with warnings" when the notebook raised any
#: :class:`studylib.errors.StudyWarning` (listed in the report's data warnings box)
OK_STATUSES = ("ok", "ok with warnings")


def _data_label(prov: dict) -> str:
    """Header words for the data a report ran on: the preset, or the manifest's file name."""
    if prov.get("preset"):
        return f"preset {prov['preset']}"
    path = (prov.get("manifest") or {}).get("path") or ""
    return f"manifest {Path(path).name}" if path else "data: unknown"


def _status_class(status) -> str:
    return {"ok": "ok", "ok with warnings": "warn"}.get(status, "failed")


def _warnings_html(prov: dict) -> str:
    """The "data warnings" box: every studylib warning the run raised, with its count (empty when none)."""
    items = prov.get("warnings") or []
    if not items:
        return ""
    rows = "".join(f'<li><span class="sl-muted">{_e(w.get("category"))}</span> {_e(w.get("message"))}'
                   + (f' <span class="sl-muted">(&times;{int(w.get("count", 1))})</span>' if w.get("count", 1) > 1 else "")
                   + "</li>" for w in items)
    more = int(prov.get("warnings_not_listed") or 0)
    if more:
        rows += f'<li class="sl-muted">{more} more not listed</li>'
    return (f'<div class="sl-warnings" id="studylib-warnings" role="note"><b>Data warnings ({len(items) + more})</b>'
            f' — the results below were computed, but check these first:<ul>{rows}</ul></div>')

TEMPLATE_DIR = Path(__file__).resolve().parent / "report_template"

def _css() -> str:
    return (TEMPLATE_DIR / "studylib" / "report.css").read_text(encoding="utf-8")


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _short(sha, n=12) -> str:
    return (sha or "")[:n] or "—"


def _provenance_rows(prov: dict) -> list[tuple[str, str]]:
    git = prov.get("git") or {}
    commit = git.get("commit")
    commit_s = f"{commit} ({'dirty' if git.get('dirty') else 'clean'})" if commit else "not a git checkout"
    man = prov.get("manifest") or {}
    pk = prov.get("packages") or {}
    cache = prov.get("cache") or {}
    rows = [
        ("status", prov.get("status")),
        ("started (UTC)", prov.get("started")),
        ("run time", f"{prov.get('run_s', 0):.1f} s"),
        ("git commit", commit_s),
        ("studylib", f"{prov.get('studylib_version')} (code sha256 {_short(prov.get('studylib_code_sha256'))})"),
        ("python", f"{prov.get('python')} on {prov.get('platform')}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)),
        ("manifest", f"{man.get('path')} (sha256 {man.get('sha256')})"),
        ("preset", prov.get("preset") or "none (the data of the manifest above)"),
        ("parameters", json.dumps(prov.get("parameters", {}), sort_keys=True, ensure_ascii=False)),
        ("scheduler", json.dumps(prov.get("scheduler", {}), sort_keys=True)),
        ("cache", f"{cache.get('hits', 0)} hit(s), {cache.get('misses', 0)} miss(es)"),
        ("notebook", f"{(prov.get('notebook') or {}).get('source')} (sha256 "
                     f"{_short((prov.get('notebook') or {}).get('sha256'))})"),
    ]
    return [(k, "" if v is None else str(v)) for k, v in rows]


def _header_html(prov: dict) -> str:
    exp = prov.get("experiment", "")
    status = prov.get("status", "unknown")
    parts = [f'<header class="studylib-header" id="studylib-header">',
             '<div class="sl-nav"><a href="index.html">&larr; all experiments</a>'
             f'<a href="{_e(exp)}.ipynb">executed notebook (.ipynb)</a>'
             f'<a href="{_e(exp)}.json">provenance (.json)</a>'
             + (f'<a href="{_e(prov["outputs"]["pdf"])}">PDF</a>' if (prov.get("outputs") or {}).get("pdf") else "")
             + ('<a href="#figures-and-tables">figures and tables (files)</a>'
                if (prov.get("files") or {}).get("figures") or (prov.get("files") or {}).get("tables") else "")
             + '<a href="#studylib-provenance">provenance</a></div>',
             f'<h1>{_e(prov.get("title") or exp)}</h1>',
             f'<div><span class="sl-status {_status_class(status)}">{_e(status)}</span> '
             f'<span class="sl-muted">{_e(exp)} · {_e(prov.get("after", ""))} · {_e(_data_label(prov))}'
             f' · {prov.get("run_s", 0):.1f} s</span></div>']
    if prov.get("parameters_given"):
        given = ", ".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in prov["parameters_given"].items())
        parts.append(f'<div class="sl-params">Run with parameters: <code>{_e(given)}</code></div>')
    if prov.get("headline"):
        parts.append(f'<p class="sl-headline"><b>Headline:</b> {_e(prov["headline"])}</p>')
    parts.append(_warnings_html(prov))
    if status not in OK_STATUSES:
        err = prov.get("error") or {}
        where = (f'in cell <a href="#papermill-error-cell">In [{_e(err.get("execution_count"))}]</a>'
                 if err.get("execution_count") is not None else "")
        parts.append(f'<div class="sl-banner-failed" role="alert"><b>This run failed</b> {where}: '
                     f'<pre>{_e(err.get("ename"))}: {_e(err.get("evalue"))}</pre></div>')
    parts.append("</header>")
    return "\n".join(parts)


def _footer_html(prov: dict) -> str:
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _provenance_rows(prov))
    return (f'<footer class="studylib-footer" id="studylib-provenance"><h2>Provenance</h2>'
            f"<table>{rows}</table></footer>")


_HEADING = re.compile(r'<h([1-3])\s+id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)


def _toc_html(body: str) -> str:
    items = []
    for level, hid, inner in _HEADING.findall(body):
        inner = re.sub(r'<a class="anchor-link".*?</a>', "", inner, flags=re.S)
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()
        if text:
            items.append((int(level), hid, text))
    if not items:
        return ""
    top = min(lv for lv, _, _ in items)
    lines = ['<nav class="studylib-toc" aria-label="contents"><b>Contents</b><ul>']
    for lv, hid, text in items:
        indent = "&nbsp;&nbsp;" * (lv - top)
        lines.append(f'<li>{indent}<a href="#{_e(html.unescape(hid))}">{_e(text)}</a></li>')
    lines.append('<li><a href="#studylib-provenance">Provenance</a></li></ul></nav>')
    return "\n".join(lines)


def render_report(nb, prov: dict) -> str:
    """HTML of an executed notebook: folded code, embedded figures, styled tables, contents, provenance.

    Parameters
    ----------
    nb : nbformat NotebookNode (executed, possibly partially).
    prov : the provenance record (see :func:`run`); every string from it is HTML-escaped.
    """
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"remove-cell", "remove_cell"}
    c.TagRemovePreprocessor.remove_input_tags = {"remove-input", "remove_input", "hide-input", "hide_input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"remove-output", "remove_output"}
    exporter = HTMLExporter(config=c, template_name="studylib", extra_template_basedirs=[str(TEMPLATE_DIR)])
    exporter.embed_images = True
    exporter.log = _report_log()
    nb = with_download_links(nb)  # a copy, with a download line under each saved figure and table
    nb.metadata["title"] = prov.get("title") or prov.get("experiment") or "report"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb.metadata["title"]}})
    body = body.replace("<!-- studylib:css -->", f'<style type="text/css">\n{_css()}\n</style>', 1)
    body = body.replace("<!-- studylib:header -->", _header_html(prov), 1)
    # methods, ARRIVE 2.0 and animal flow after the notebook body, before the footer (listed in the contents)
    sections = downloads_section(prov) + sections_from_record(prov)
    if "<!-- studylib:sections -->" in body:
        body = body.replace("<!-- studylib:sections -->", sections, 1)
    else:
        body = body.replace("<!-- studylib:footer -->", sections + "\n<!-- studylib:footer -->", 1)
    body = body.replace("<!-- studylib:toc -->", _toc_html(body), 1)
    body = body.replace("<!-- studylib:footer -->", _footer_html(prov), 1)
    return body


class _NoAltTextWarning(logging.Filter):
    """nbconvert adds a generic alt text to matplotlib figures itself; its warning about it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Alternative text is missing" not in record.getMessage()


def _report_log() -> logging.Logger:
    log = logging.getLogger("studylib.workbook.nbconvert")
    if not any(isinstance(f, _NoAltTextWarning) for f in log.filters):
        log.addFilter(_NoAltTextWarning())
    return log


def _status_badge(status: str) -> str:
    return f'<span class="sl-status {_status_class(status)}">{_e(status)}</span>'


#: headline numbers the headline sentence states (:func:`studylib.analysis.conclusions.headline`): not repeated
_HEADLINE_KEYS = ("estimate", "ci_low", "ci_high", "p")


def _stated(value, text: str) -> bool:
    """Whether ``text`` already prints the number ``value`` (to 2, 3 or 4 significant digits)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return any(f"{value:.{k}g}" in text for k in (2, 3, 4))


def _conclusion_rows(rec: dict) -> list[dict]:
    c = rec.get("conclusions") or {}
    cols = c.get("columns") or []
    return [dict(zip(cols, row)) for row in c.get("data") or [] if isinstance(row, list)]


def headline_effect(rec: dict) -> dict | None:
    """The experiment's headline effect from its record's conclusions table: the row whose ``role`` is
    ``primary`` (:data:`studylib.analysis.conclusions.CONCLUSION_COLUMNS`), else the first row; None when
    the run failed or recorded no finite estimate and CI."""
    if rec.get("status") not in OK_STATUSES:
        return None
    rows = _conclusion_rows(rec)
    row = next((r for r in rows if r.get("role") == "primary"), rows[0] if rows else None)
    if row is None:
        return None
    try:
        nums = [float(row[k]) for k in ("estimate", "ci_low", "ci_high")]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in nums) or not nums[1] <= nums[0] <= nums[2]:
        return None
    return {**row, "primary": row.get("role") == "primary"}


def forest_svg(recs: list[dict]) -> tuple[str, list[str]]:
    """Inline SVG of the forest plot of every experiment's headline effect (:func:`headline_effect`), one row
    per experiment on the effect's own scale (:func:`studylib.plots.effect_vs_truth`: CI, zero, the simulated
    truth, the side the paper reports), and the experiments left out; ``("", left out)`` when none has one.

    Effects are not standardised: they are in 1/s, mM, %, 1/day or a correlation r, and dividing by their SE
    would plot test statistics, not effects; each row keeps its units.
    """
    import io

    import matplotlib
    import pandas as pd

    from .. import plots

    rows, left_out = [], []
    for r in recs:
        eff = headline_effect(r)
        if eff is None:
            left_out.append(str(r.get("title") or r.get("experiment")))
            continue
        note = "" if eff["primary"] else " [first finding; no primary endpoint declared]"
        rows.append({**eff, "label": f"{r.get('title') or r.get('experiment')}\n{eff.get('finding', '')}{note}"})
    if not rows:
        return "", left_out
    table = pd.DataFrame(rows)
    for col in ("truth", "units", "paper_direction"):
        if col not in table:
            table[col] = None
    table["truth"] = pd.to_numeric(table["truth"], errors="coerce")
    with matplotlib.rc_context({"svg.hashsalt": "studylib-index", "svg.fonttype": "path"}):
        fig = plots.effect_vs_truth(table, label="label", row_height=0.95, width=7.5)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    summary = "; ".join(f"{r['label']}: {_fmt(r['estimate'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                        for r in rows).replace("\n", ", ")
    svg = svg.replace("<svg", f'<svg role="img" aria-label="{_e("forest plot: " + summary)}"', 1)
    return svg, left_out


def _forest_html(recs: list[dict]) -> str:
    try:
        svg, left_out = forest_svg(recs)
    except Exception as err:  # never lose the index over its figure
        return f'<p class="sl-muted">The forest plot could not be drawn ({_e(type(err).__name__)}: {_e(err)}).</p>'
    if not svg:
        return ""
    missing = (f" Not shown (failed, or no conclusions table): {_e(', '.join(left_out))}." if left_out else "")
    return ('<figure class="sl-forest" id="forest">' + svg + '<figcaption>Headline effect of each experiment '
            "(its primary endpoint) with its 95% CI, each on its own scale and in its own units; grey line: no "
            "effect; red x: the simulated truth (none on real data); green: the side of zero the paper reports."
            f"{missing}</figcaption></figure>")


def _thumbnail(reports: Path, rec: dict) -> str:
    exp = str(rec.get("experiment"))
    files = rec.get("files") or {}
    key = files.get("key_figure")
    fig = next((f for f in files.get("figures") or [] if f.get("n") == key and f.get("png")), None)
    if fig is None or not (reports / fig["png"]).is_file():
        return '<span class="sl-muted">no figure</span>'
    return (f'<a href="{_e(exp)}.html#fig-{int(key)}"><img class="sl-thumb" src="{_e(fig["png"])}" '
            f'alt="{_e("key figure of " + str(rec.get("title") or exp))}"></a>')


def write_index(reports, *, names: Iterable[str] | None = None) -> Path:
    """Write ``reports/index.html`` from the ``<experiment>.json`` records in ``reports``.

    A forest plot of every experiment's headline effect (:func:`forest_svg`, inline SVG), then every
    experiment with a record (registry order, then others alphabetically) with its key figure as a
    thumbnail (``files.key_figure``, see :mod:`.downloads`), status, headline (numbers it states are not
    repeated), run time, provenance and links.  All strings are HTML-escaped.
    """
    reports = Path(reports)
    recs = []
    for p in sorted(reports.glob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("studylib_report") == REPORT_FORMAT:
            recs.append(doc)
    if names is not None:
        keep = set(names)
        recs = [r for r in recs if r.get("experiment") in keep]
    order = {n: i for i, n in enumerate(EXPERIMENTS)}
    recs.sort(key=lambda r: (order.get(r.get("experiment"), len(order)), str(r.get("experiment"))))
    n_ok = sum(r.get("status") == "ok" for r in recs)
    n_warn = sum(r.get("status") == "ok with warnings" for r in recs)
    base = provenance_base() if not recs else recs[0]
    git = base.get("git") or {}
    rows = []
    for r in recs:
        exp = str(r.get("experiment"))
        nums = {k: v for k, v in (r.get("numbers") or {}).items()
                if not (k in _HEADLINE_KEYS and _stated(v, str(r.get("headline") or "")))}
        nums_s = ", ".join(f"{k} = {_fmt(v)}" for k, v in nums.items())
        err = r.get("error") or {}
        head = _e(r.get("headline") or "") or '<span class="sl-muted">no headline recorded</span>'
        n_w = len(r.get("warnings") or []) + int(r.get("warnings_not_listed") or 0)
        if n_w:
            first = (r.get("warnings") or [{}])[0].get("message", "")
            head += (f'<br><a class="sl-warn-link" href="{_e(exp)}.html#studylib-warnings">{n_w} data warning(s)</a>'
                     f' <span class="sl-muted">{_e(first[:160])}{"…" if n_w > 1 or len(first) > 160 else ""}</span>')
        if r.get("status") not in OK_STATUSES:
            head += f'<br><span class="sl-muted">{_e(err.get("ename"))}: {_e(str(err.get("evalue"))[:300])}</span>'
        man = r.get("manifest") or {}
        rgit = r.get("git") or {}
        prov = (f'commit {_e(_short(rgit.get("commit")))}{" (dirty)" if rgit.get("dirty") else ""}<br>'
                f'manifest {_e(_short(man.get("sha256")))}<br>studylib {_e(r.get("studylib_version"))}')
        rows.append(
            "<tr>"
            f'<td class="sl-thumb-cell">{_thumbnail(reports, r)}</td>'
            f'<td class="sl-left"><a href="{_e(exp)}.html"><b>{_e(r.get("title") or exp)}</b></a><br>'
            f'<span class="sl-muted">{_e(exp)} · {_e(r.get("after", ""))}</span></td>'
            f"<td>{_status_badge(str(r.get('status')))}</td>"
            f'<td class="sl-left">{head}' + (f'<br><span class="sl-muted">{_e(nums_s)}</span>' if nums_s else "")
            + "</td>"
            f"<td>{float(r.get('run_s') or 0):.1f} s<br><span class=\"sl-muted\">{_e(r.get('started'))}"
            + (f"<br>unchanged, reused {_e(r.get('reused_at'))}" if r.get("reused_at") else "") + "</span></td>"
            f'<td class="sl-muted">{prov}</td>'
            f'<td><a href="{_e(exp)}.html">report</a><br><a href="{_e(exp)}.ipynb">notebook</a><br>'
            f'<a href="{_e(exp)}.json">provenance</a>'
            + (f'<br><a href="{_e(r["outputs"]["pdf"])}">PDF</a>' if (r.get("outputs") or {}).get("pdf") else "")
            + "</td></tr>")
    if not rows:
        rows.append('<tr><td colspan="7" class="sl-muted">no reports yet: run <code>studylib run</code></td></tr>')
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>studylib workbook: reports</title>
<style type="text/css">
{_css()}
</style>
</head>
<body class="studylib-index">
<main>
<h1>studylib workbook</h1>
<p>{len(recs)} experiment(s): {n_ok} ok, {n_warn} ok with warnings, {len(recs) - n_ok - n_warn} failed.
<span class="sl-muted">Index written {_e(now)} · git {_e(_short(git.get("commit")))}{" (dirty)" if git.get("dirty") else ""}
· studylib {_e(base.get("studylib_version"))} · python {_e(base.get("python"))}</span></p>
{_forest_html(recs)}
<table class="sl-table" id="experiments">
<thead><tr><th>key figure</th><th class="sl-left">experiment</th><th>status</th><th class="sl-left">headline</th><th>run time</th>
<th>provenance</th><th>files</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</main>
</body>
</html>
"""
    out = reports / "index.html"
    atomic_write_text(out, doc)
    return out

