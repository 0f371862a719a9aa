"""The HTML of a report (nbconvert, folded code, table of contents, provenance header and footer)
and the index page listing every experiment."""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import re
from pathlib import Path
from typing import Iterable

from .._atomic import atomic_write_text
from ..catalog import EXPERIMENTS
from ..recorder import _fmt
from .methods import sections_from_record
from .provenance import provenance_base

__all__ = ["REPORT_FORMAT", "render_report", "write_index"]

#: version of the report record format (``reports/<experiment>.json``)
REPORT_FORMAT = 1

#: statuses of a run that completed: "ok with warnings" when the notebook raised any
#: :class:`studylib.errors.StudyWarning` (listed in the report's data warnings box)
OK_STATUSES = ("ok", "ok with warnings")


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
        ("preset", prov.get("preset")),
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
             f'<a href="{_e(exp)}.json">provenance (.json)</a><a href="#studylib-provenance">provenance</a></div>',
             f'<h1>{_e(prov.get("title") or exp)}</h1>',
             f'<div><span class="sl-status {_status_class(status)}">{_e(status)}</span> '
             f'<span class="sl-muted">{_e(exp)} · {_e(prov.get("after", ""))} · preset {_e(prov.get("preset"))}'
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
    nb = _copy_nb(nb)
    nb.metadata["title"] = prov.get("title") or prov.get("experiment") or "report"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb.metadata["title"]}})
    body = body.replace("<!-- studylib:css -->", f'<style type="text/css">\n{_css()}\n</style>', 1)
    body = body.replace("<!-- studylib:header -->", _header_html(prov), 1)
    # methods, ARRIVE 2.0 and animal flow after the notebook body, before the footer (listed in the contents)
    sections = sections_from_record(prov)
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


def _copy_nb(nb):
    import copy

    return copy.deepcopy(nb)


def _status_badge(status: str) -> str:
    return f'<span class="sl-status {_status_class(status)}">{_e(status)}</span>'


def write_index(reports, *, names: Iterable[str] | None = None) -> Path:
    """Write ``reports/index.html`` from the ``<experiment>.json`` records in ``reports``.

    Every experiment with a record is listed (registry order, then others alphabetically)
    with its status, headline, key numbers, run time, provenance and links.  All strings
    are HTML-escaped.
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
        nums = r.get("numbers") or {}
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
            f'<td class="sl-left"><a href="{_e(exp)}.html"><b>{_e(r.get("title") or exp)}</b></a><br>'
            f'<span class="sl-muted">{_e(exp)} · {_e(r.get("after", ""))}</span></td>'
            f"<td>{_status_badge(str(r.get('status')))}</td>"
            f'<td class="sl-left">{head}' + (f'<br><span class="sl-muted">{_e(nums_s)}</span>' if nums_s else "")
            + "</td>"
            f"<td>{float(r.get('run_s') or 0):.1f} s<br><span class=\"sl-muted\">{_e(r.get('started'))}"
            + (f"<br>unchanged, reused {_e(r.get('reused_at'))}" if r.get("reused_at") else "") + "</span></td>"
            f'<td class="sl-muted">{prov}</td>'
            f'<td><a href="{_e(exp)}.html">report</a><br><a href="{_e(exp)}.ipynb">notebook</a><br>'
            f'<a href="{_e(exp)}.json">provenance</a></td>'
            "</tr>")
    if not rows:
        rows.append('<tr><td colspan="6" class="sl-muted">no reports yet: run <code>studylib run</code></td></tr>')
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
<table class="sl-table" id="experiments">
<thead><tr><th class="sl-left">experiment</th><th>status</th><th class="sl-left">headline</th><th>run time</th>
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

