"""Run the experiment notebooks into HTML reports, with provenance and cached intermediates.

``studylib run`` (:func:`run`) executes every ``notebooks/<experiment>.py`` (jupytext percent
format) with papermill and writes, per experiment,

* ``reports/<experiment>.ipynb``: the executed notebook; its ``metadata["studylib"]`` holds
  the provenance record,
* ``reports/<experiment>.html``: nbconvert HTML (code folded in ``<details>``, figures
  embedded, styled tables, a table of contents, a header with status and headline, a
  provenance footer; offline: no CDN scripts),
* ``reports/<experiment>.json``: the provenance record (git commit + dirty flag, studylib
  and package versions, python, manifest sha256, parameters, run time, status, error,
  headline, conclusions, cache hits/misses),

then ``reports/index.html`` listing every experiment.  A notebook that fails still gets a
report showing the failing cell and its error; the index marks it failed, the other
notebooks still run, and :func:`run` returns a non-zero exit code.

A notebook whose last run succeeded and whose inputs (notebook source, parameters, manifest
and the files it lists, studylib code, package versions) are unchanged is not executed again
(``--force`` overrides); inside an executed notebook, :class:`studylib.cache.Cache` skips
every unchanged computation.

Notebook side protocol: a notebook calls :func:`record_headline` and
:func:`record_conclusions`; under the runner (environment variable ``STUDYLIB_RECORD``
names a JSON file) the records are written there; they are also attached to the
displayed output as metadata, so they survive in the executed notebook.

Intermediate results live in :class:`studylib.cache.Cache` under
``data/<preset>/derived/<experiment>/`` (or ``<manifest folder>/derived`` for a user
manifest): :func:`show` lists them and :func:`load_intermediate` opens them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import html
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from ._atomic import atomic_write_text
from .errors import StudyError
from .manifest import sha256_file

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "WorkbookError",
    "available",
    "default_cache_dir",
    "default_manifest",
    "load_intermediate",
    "provenance_base",
    "record_conclusions",
    "record_headline",
    "render_report",
    "run",
    "run_fingerprint",
    "show",
    "write_index",
]

RECORD_ENV = "STUDYLIB_RECORD"
REPORT_FORMAT = 1
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
TEMPLATE_DIR = PACKAGE_DIR / "report_template"
KEY_PACKAGES = ("numpy", "scipy", "pandas", "xarray", "dask", "distributed", "zarr", "statsmodels", "nibabel",
                "matplotlib", "seaborn", "pyarrow", "papermill", "nbconvert", "jupytext", "ipykernel")


class WorkbookError(StudyError):
    """An experiment, notebook, manifest or reports folder given to the runner is not usable."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of the workbook: its notebook name, a title, and the paper it follows."""

    name: str
    title: str
    biomarker: str
    after: str


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("ampb_ferumoxytol", "Amphotericin B and ferumoxytol in glioma",
               "ferumoxytol ΔR2*/T2*, Amp B vs vehicle", "Yang et al., Neuro-Oncology 2017"),
    Experiment("blz945_femri", "BLZ945 and endogenous-iron FeMRI",
               "endogenous-iron R2* (MGE, 16 echoes), BLZ945 vs control", "Leftin et al., Sci Rep 2019"),
    Experiment("ferumoxytol_therapy", "Ferumoxytol as tumour therapy",
               "tumour growth and T2* after ferumoxytol vs control", "Zanganeh et al., Nat Nanotechnol 2016"),
    Experiment("collagen_adc", "ADC and collagen I in cervical cancer PDX",
               "ADC (b 200–1000) vs collagen I fraction", "Hauge et al., cervical cancer PDX"),
    Experiment("ktrans_hypoxia", "DCE-MRI Ktrans and hypoxia",
               "Ktrans (Tofts / extended Tofts) vs hypoxic fraction", "Hauge et al., J Transl Med 2017"),
    Experiment("fluorine19_pfc", "19F perfluorocarbon imaging of macrophages",
               "19F PFC signal vs metastatic potential (67NR/168FARN/4T1)", "Makela et al., MRM 2018"),
    Experiment("lactate_cest", "Lactate CEST (LATEST) after pyruvate",
               "MTRasym at 0.4 ppm, pre vs post pyruvate", "DeBrosse et al., Sci Rep 2016"),
]}


# =============================================================================================
# notebook side: recording the headline and conclusions


_RECORD: dict[str, Any] = {}


def _record_path() -> Path | None:
    p = os.environ.get(RECORD_ENV)
    return Path(p) if p else None


def _jsonable(v):
    """Numbers/strings/None for JSON; NaN/Inf become None, numpy scalars become Python."""
    try:
        import numpy as np

        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            return [_jsonable(x) for x in v.tolist()]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (_dt.date, _dt.datetime)):
        return v.isoformat()
    return str(v)


def _flush_record() -> None:
    path = _record_path()
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(_RECORD, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _display(html_text: str, meta: dict) -> None:
    """Show HTML in a notebook (with studylib metadata on the output); print outside IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # pragma: no cover
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(HTML(html_text), metadata={"studylib": meta})
    else:
        print(re.sub(r"<[^>]+>", "", html_text))


def record_headline(text: str, **numbers) -> dict:
    """Record the experiment's headline result (shown in the report header and the index).

    Parameters
    ----------
    text : one sentence, e.g. ``"R2* fell 38 % with BLZ945 (p = 0.004)"``; plain text (it is
        HTML-escaped wherever shown).
    **numbers : the key numbers behind it, e.g. ``effect_per_s=-12.1, ci_low=-18.0, p=0.004``
        (numbers, strings or None; NaN is stored as null).

    Returns
    -------
    dict with ``headline`` and ``numbers`` (as recorded).
    """
    if not isinstance(text, str) or not text.strip():
        raise WorkbookError(f"record_headline: text must be a non-empty string, got {text!r}")
    nums = {}
    for k, v in numbers.items():
        j = _jsonable(v)
        if not (j is None or isinstance(j, (bool, int, float, str))):
            raise WorkbookError(f"record_headline: number {k!r} must be a scalar (number/string), got "
                                f"{type(v).__name__}")
        nums[k] = j
    _RECORD["headline"] = text.strip()
    _RECORD["numbers"] = nums
    _flush_record()
    parts = ", ".join(f"{html.escape(k)} = {html.escape(_fmt(v))}" for k, v in nums.items())
    _display(f'<div class="sl-record"><b>Headline:</b> {html.escape(text.strip())}'
             + (f'<br><span style="font-size:0.9em">{parts}</span>' if parts else "") + "</div>",
             {"headline": text.strip(), "numbers": nums})
    return {"headline": _RECORD["headline"], "numbers": nums}


def record_conclusions(df):
    """Record the conclusions table (result vs the paper's finding); returns ``df`` for display.

    Parameters
    ----------
    df : pandas.DataFrame, one row per finding (e.g. columns ``finding, paper, estimate, ci_low,
        ci_high, p, direction_matches``); stored in the provenance JSON as ``{"columns": [...],
        "data": [[...], ...]}``.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise WorkbookError(f"record_conclusions: expected a pandas DataFrame, got {type(df).__name__}")
    flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    _RECORD["conclusions"] = {"columns": [str(c) for c in flat.columns],
                              "data": [[_jsonable(v) for v in row] for row in flat.itertuples(index=False)]}
    _flush_record()
    return df


def _record_cache_event(experiment: str, name: str, key: str, hit: bool, seconds: float) -> None:
    """Called by :class:`studylib.cache.Cache` for each lookup (counted in the provenance record)."""
    ev = _RECORD.setdefault("cache", {"hits": 0, "misses": 0, "events": []})
    ev["hits" if hit else "misses"] += 1
    ev["events"].append({"experiment": experiment, "name": name, "key": key[:16], "hit": bool(hit),
                         "seconds": round(float(seconds), 3)})
    _flush_record()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


# =============================================================================================
# locations


def _notebooks_dir(notebooks_dir=None) -> Path:
    if notebooks_dir is not None:
        p = Path(notebooks_dir)
        if not p.is_dir():
            raise WorkbookError(f"notebooks_dir {str(p)!r} is not a folder")
        return p
    for cand in (REPO_DIR / "notebooks", Path.cwd() / "notebooks"):
        if cand.is_dir():
            return cand
    return REPO_DIR / "notebooks"


def _notebook_file(name: str, nbdir: Path) -> Path | None:
    for ext in (".py", ".ipynb"):
        p = nbdir / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def available(notebooks_dir=None) -> list[str]:
    """The registered experiments whose notebook exists (``notebooks/<name>.py`` or ``.ipynb``)."""
    nbdir = _notebooks_dir(notebooks_dir)
    return [n for n in EXPERIMENTS if _notebook_file(n, nbdir) is not None]


def default_manifest(preset: str = "demo") -> Path:
    """``./data_manifest.csv`` for ``demo``, ``data/<preset>/data_manifest.csv`` otherwise (see docs/conventions.md)."""
    _check_preset(preset)
    return Path("data_manifest.csv") if preset == "demo" else Path("data") / preset / "data_manifest.csv"


def default_cache_dir(preset: str = "demo", manifest=None) -> Path:
    """Where intermediates are cached: ``data/<preset>/derived``, or ``<manifest folder>/derived``
    for a manifest other than the preset's default."""
    _check_preset(preset)
    if manifest is None or Path(manifest).resolve() == default_manifest(preset).resolve():
        return Path("data") / preset / "derived"
    return Path(manifest).resolve().parent / "derived"


def _check_preset(preset) -> None:
    if not isinstance(preset, str) or not re.match(r"^[A-Za-z0-9_-]+$", preset):
        raise WorkbookError(f"preset must be a simple name like 'demo' or 'ci', got {preset!r}")


def _manifest_missing_files(manifest: Path) -> list[str]:
    import csv

    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise WorkbookError(f"{manifest}: cannot read the manifest ({err})") from None
    if rows and "path" not in rows[0]:
        raise WorkbookError(f"{manifest}: manifest has no 'path' column")
    base = manifest.parent
    return [r["path"] for r in rows if r.get("path") and not (base / r["path"]).is_file()]


def _ensure_data(preset: str, manifest) -> Path:
    """The manifest to use (absolute); generates the preset's synthetic study when it is missing."""
    if manifest is not None:
        m = Path(manifest)
        if not m.is_file():
            raise WorkbookError(f"manifest {str(m)!r} not found")
        missing = _manifest_missing_files(m)
        if missing:
            raise WorkbookError(f"{m}: {len(missing)} file(s) listed in the manifest are missing, e.g. "
                                f"{missing[0]!r}")
        return m.resolve()
    m = default_manifest(preset)
    if not m.is_file() or _manifest_missing_files(m):
        try:
            from .synth import generate
        except ImportError as err:
            raise WorkbookError(f"{m}: the {preset!r} study is missing and studylib.synth cannot generate it "
                                f"({err})") from None
        print(f"generating the {preset!r} study (studylib.synth.generate) ...", file=sys.stderr, flush=True)
        out = generate(preset)
        m = Path(out) if out is not None else m
        if not m.is_file():
            raise WorkbookError(f"{m}: studylib.synth.generate({preset!r}) did not write the manifest")
    return m.resolve()


# =============================================================================================
# provenance




def _git_info() -> dict:
    """Commit, dirty flag and branch of the repository studylib runs from (read-only git calls)."""
    info = {"commit": None, "dirty": None, "branch": None}
    if not (REPO_DIR / ".git").exists():
        return info

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()

    try:
        info["commit"] = git("rev-parse", "HEAD")
        info["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
        info["branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def provenance_base() -> dict:
    """The run-independent part of a provenance record: git, versions, python, platform."""
    from importlib import metadata

    from .cache import code_hash

    pk = {}
    for name in KEY_PACKAGES:
        try:
            pk[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pk[name] = None
    try:
        studylib_version = metadata.version("studylib")
    except metadata.PackageNotFoundError:
        studylib_version = None
    return {"git": _git_info(), "studylib_version": studylib_version, "studylib_code_sha256": code_hash(),
            "packages": pk, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "machine": platform.machine(), "cpus": os.cpu_count()}


# =============================================================================================
# notebook preparation and execution


def _load_notebook(src: Path):
    import jupytext
    import nbformat

    try:
        nb = jupytext.read(src) if src.suffix == ".py" else nbformat.read(src, as_version=4)
    except Exception as err:
        raise WorkbookError(f"{src}: cannot read the notebook ({type(err).__name__}: {err})") from None
    ks = nb.metadata.get("kernelspec") or {}
    if not ks.get("name"):
        # a text notebook without a kernelspec makes papermill fail with "No language found"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def _error_from_notebook(nb) -> dict | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return {"ename": out.get("ename"), "evalue": out.get("evalue"), "cell_index": i,
                        "execution_count": cell.get("execution_count")}
    return None


def _records_from_outputs(nb) -> dict:
    """Fallback: headline/conclusions recorded as output metadata (when the record file is missing)."""
    rec = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            meta = (out.get("metadata") or {}).get("studylib") or {}
            if "headline" in meta:
                rec["headline"] = meta["headline"]
                rec["numbers"] = meta.get("numbers", {})
    return rec


def _execute(name: str, src: Path, workdir: Path, out_nb: Path, parameters: tuple[dict, dict], *, cwd: Path,
             kernel_name: str, timeout_s, progress: bool) -> tuple[str, dict | None, dict]:
    """Execute one notebook with papermill; returns (status, error, records)."""
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = _load_notebook(src)
    inp = workdir / f"{name}.input.ipynb"
    nbformat.write(nb, inp)
    parameters = _select_parameters(inp, parameters)
    record = workdir / f"{name}.record.json"
    env_overrides = {RECORD_ENV: str(record), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                     "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    saved = {k: os.environ.get(k) for k in env_overrides}
    status, error = "ok", None
    try:
        os.environ.update(env_overrides)
        pm.execute_notebook(str(inp), str(out_nb), parameters=parameters, kernel_name=kernel_name,
                            progress_bar=({"desc": name, "leave": False, "position": 1, "file": sys.stderr}
                                          if progress else False),
                            request_save_on_cell_execute=True, cwd=str(cwd), log_output=False,
                            execution_timeout=timeout_s)
    except PapermillExecutionError as err:
        status = "failed"
        error = {"ename": err.ename, "evalue": err.evalue, "cell_index": err.cell_index,
                 "execution_count": err.exec_count, "type": "cell"}
    except Exception as err:  # kernel died, timeout, kernel not found, bad parameters ...
        status = "failed"
        error = {"ename": type(err).__name__, "evalue": str(err)[:2000], "cell_index": None,
                 "execution_count": None, "type": "runner"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not out_nb.is_file():  # nothing executed (e.g. no kernel): report on the unexecuted notebook
        nbformat.write(nb, out_nb)
    records = {}
    if record.is_file():
        with contextlib.suppress(ValueError, OSError):
            records = json.loads(record.read_text(encoding="utf-8"))
    if "headline" not in records:
        with contextlib.suppress(Exception):
            records.update(_records_from_outputs(nbformat.read(out_nb, as_version=4)))
    if status == "failed" and error:
        # papermill's cell_index counts cells before it inserted its error banners: take the saved notebook's
        with contextlib.suppress(Exception):
            found = _error_from_notebook(nbformat.read(out_nb, as_version=4))
            if found:
                error.update({k: v for k, v in found.items() if v is not None and k != "ename"
                              and k != "evalue"} if error.get("type") == "cell" else
                             {k: v for k, v in found.items() if v is not None})
    records["parameters"] = parameters
    return status, error, records


def _select_parameters(inp: Path, parameters: dict) -> dict:
    """The runner's standard parameters the notebook declares, plus every user-given one.

    A notebook without a ``parameters`` cell gets them all (papermill injects them at the top).
    """
    import papermill as pm

    standard, user = parameters
    try:
        declared = pm.inspect_notebook(str(inp))
    except Exception:  # pragma: no cover - unparsable parameters cell: papermill will complain itself
        declared = {}
    chosen = {k: v for k, v in standard.items() if not declared or k in declared}
    chosen.update(user)
    return chosen


# =============================================================================================
# HTML


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
             f'<div><span class="sl-status {"ok" if status == "ok" else "failed"}">{_e(status)}</span> '
             f'<span class="sl-muted">{_e(exp)} · {_e(prov.get("after", ""))} · preset {_e(prov.get("preset"))}'
             f' · {prov.get("run_s", 0):.1f} s</span></div>']
    if prov.get("headline"):
        parts.append(f'<p class="sl-headline"><b>Headline:</b> {_e(prov["headline"])}</p>')
    if status != "ok":
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
    return f'<span class="sl-status {"ok" if status == "ok" else "failed"}">{_e(status)}</span>'


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
    base = provenance_base() if not recs else recs[0]
    git = base.get("git") or {}
    rows = []
    for r in recs:
        exp = str(r.get("experiment"))
        nums = r.get("numbers") or {}
        nums_s = ", ".join(f"{k} = {_fmt(v)}" for k, v in nums.items())
        err = r.get("error") or {}
        head = _e(r.get("headline") or "") or '<span class="sl-muted">no headline recorded</span>'
        if r.get("status") != "ok":
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
<p>{len(recs)} experiment(s): {n_ok} ok, {len(recs) - n_ok} failed.
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




# =============================================================================================
# the runner


def _resolve_experiments(experiments, nbdir: Path) -> list[str]:
    if experiments is None or (isinstance(experiments, (list, tuple)) and len(experiments) == 0):
        names = available(nbdir)
        if not names:
            raise WorkbookError(f"{nbdir}: no experiment notebooks found (expected e.g. "
                                f"{nbdir / 'ampb_ferumoxytol.py'})")
        return names
    if isinstance(experiments, str):
        experiments = [experiments]
    names = []
    for n in experiments:
        if not isinstance(n, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", n):
            raise WorkbookError(f"experiment name {n!r} is not valid")
        if _notebook_file(n, nbdir) is None:
            if n in EXPERIMENTS:
                raise WorkbookError(f"experiment {n!r}: notebook {nbdir / (n + '.py')} does not exist (yet)")
            raise WorkbookError(f"unknown experiment {n!r}; known: {', '.join(EXPERIMENTS)}")
        if n not in names:
            names.append(n)
    return names


def run(experiments: list[str] | None = None, preset: str = "demo", reports="reports", scheduler=None,
        manifest=None, *, notebooks_dir=None, cache_dir=None, parameters: dict | None = None,
        timeout_s: float | None = None, progress: bool = True, kernel_name: str = "python3",
        force: bool = False) -> int:
    """Execute experiment notebooks into reports; return the exit code (0 all ok, 1 any failed).

    Parameters
    ----------
    experiments : names (default: every registered experiment whose notebook exists).
    preset : synthetic study preset (``demo``, ``ci``, ``large``); its data is generated when
        the default manifest or any file it lists is missing.
    reports : output folder for ``<exp>.ipynb/.html/.json`` and ``index.html``.
    scheduler : ``None``/``"threads"``, ``"local"`` (one LocalCluster shared by all notebooks) or a
        scheduler address; passed to each notebook as the ``scheduler`` parameter.
    manifest : a data manifest to use instead of the preset's (must exist with all its files).
    notebooks_dir : folder of the notebooks (default ``notebooks/`` of the repository).
    cache_dir : cache root (default :func:`default_cache_dir`).
    parameters : extra papermill parameters for every notebook (override the defaults).
    timeout_s : per-cell execution timeout (None: no limit).
    progress : tqdm progress over experiments and cells (stderr).
    kernel_name : Jupyter kernel (the Makefile installs ``python3`` into the venv).
    force : execute even notebooks whose previous successful report is still current.

    Notes
    -----
    A notebook whose last run succeeded is not executed again when nothing it depends on has
    changed: its *run fingerprint* (sha256 of the notebook source, the parameters, the manifest's
    sha256, size and mtime of every file the manifest lists, the studylib code hash, the python and
    package versions and the kernel) equals the one stored in ``reports/<exp>.json``.  The report is
    then kept and its record gets ``reused_at``; ``force=True`` (``studylib run --force``) executes
    anyway, and then the intermediate-result cache still skips unchanged computations inside it.

    Each notebook gets the parameters ``manifest``, ``study`` (= experiment), ``preset``,
    ``cache_dir``, ``scheduler`` and ``reports_dir`` (absolute paths), and runs with the
    current folder as working directory.
    """
    from tqdm.auto import tqdm

    from . import compute

    _check_preset(preset)
    nbdir = _notebooks_dir(notebooks_dir)
    names = _resolve_experiments(experiments, nbdir)
    choice = compute.resolve_scheduler(scheduler)
    reports = Path(reports)
    try:
        reports.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkbookError(f"reports folder {str(reports)!r} cannot be created ({err})") from None
    man = _ensure_data(preset, manifest)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir(preset, manifest)
    cache_root = cache_root.resolve()
    base = provenance_base()
    man_sha = sha256_file(man)
    cwd = Path.cwd()
    failed = 0
    with compute.scheduler_context(choice) if choice == "local" else contextlib.nullcontext() as client:
        sched_param = client.scheduler.address if client is not None else choice
        sched_desc = {"choice": choice, "address": sched_param if client is not None or "://" in choice else None}
        bar = tqdm(names, desc="experiments", unit="notebook", position=0, file=sys.stderr, disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            ok = _run_one(name, nbdir=nbdir, reports=reports, preset=preset, manifest=man, manifest_sha=man_sha,
                          cache_root=cache_root, scheduler=sched_param, sched_desc=sched_desc,
                          parameters=parameters, base=base, cwd=cwd, timeout_s=timeout_s, progress=progress,
                          kernel_name=kernel_name, force=force)
            failed += not ok
        bar.close()
    index = write_index(reports)
    print(f"{len(names) - failed}/{len(names)} notebook(s) ok; index: {index}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _files_signature(manifest: Path) -> list:
    """(path, size, mtime_ns) of every file the manifest lists: a cheap check that none was touched."""
    import csv

    base = manifest.parent
    out = []
    with open(manifest, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            p = row.get("path")
            if not p:
                continue
            try:
                st = (base / p).stat()
                out.append([p, st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([p, None, None])
    return sorted(out)


def run_fingerprint(src: Path, parameters: dict, manifest: Path, base: dict, kernel_name: str) -> str:
    """sha256 of everything a notebook run depends on (see :func:`run`, Notes)."""
    doc = {"format": REPORT_FORMAT, "notebook": sha256_file(src), "parameters": _jsonable(parameters),
           "manifest_sha256": sha256_file(manifest), "files": _files_signature(manifest),
           "code": base.get("studylib_code_sha256"), "packages": base.get("packages"),
           "python": base.get("python"), "kernel": kernel_name}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _reuse(name: str, reports: Path, fingerprint: str) -> dict | None:
    """The previous record when its run succeeded with the same fingerprint and its files exist."""
    rec_path = reports / f"{name}.json"
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("fingerprint") == fingerprint
            and (reports / f"{name}.html").is_file() and (reports / f"{name}.ipynb").is_file()):
        return None
    rec["reused_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rec["reuse_count"] = int(rec.get("reuse_count", 0)) + 1
    atomic_write_text(rec_path, json.dumps(rec, indent=1, ensure_ascii=False, allow_nan=False))
    return rec


def _run_one(name, *, nbdir, reports, preset, manifest, manifest_sha, cache_root, scheduler, sched_desc,
             parameters, base, cwd, timeout_s, progress, kernel_name, force=False) -> bool:
    import nbformat
    from tqdm.auto import tqdm

    src = _notebook_file(name, nbdir)
    exp = EXPERIMENTS.get(name)
    standard = {"manifest": str(manifest), "study": name, "preset": preset, "cache_dir": str(cache_root),
                "scheduler": scheduler, "reports_dir": str(reports.resolve())}
    # the scheduler is left out: results do not depend on it (a LocalCluster's address changes every run)
    fingerprint = run_fingerprint(src, {**{k: v for k, v in standard.items() if k != "scheduler"},
                                        **(parameters or {})}, manifest, base, kernel_name)
    if not force:
        prev = _reuse(name, reports, fingerprint)
        if prev is not None:
            tqdm.write(f"{name}: unchanged since {prev.get('started')}: report reused (--force to rerun)",
                       file=sys.stderr)
            return True
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"studylib-run-{name}-") as tmp:
        work = Path(tmp)
        out_nb = work / f"{name}.ipynb"
        status, error, records = _execute(name, src, work, out_nb, (standard, dict(parameters or {})), cwd=cwd, kernel_name=kernel_name,
                                          timeout_s=timeout_s, progress=progress)
        run_s = time.perf_counter() - t0
        try:
            src_rel = src.resolve().relative_to(REPO_DIR).as_posix()
        except ValueError:
            src_rel = str(src)
        prov = {
            "studylib_report": REPORT_FORMAT,
            "experiment": name,
            "title": exp.title if exp else name,
            "after": exp.after if exp else "",
            "biomarker": exp.biomarker if exp else "",
            "status": status,
            "error": error,
            "headline": records.get("headline"),
            "numbers": records.get("numbers", {}),
            "conclusions": records.get("conclusions"),
            "cache": records.get("cache", {"hits": 0, "misses": 0, "events": []}),
            "started": started.isoformat(timespec="seconds"),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_s": round(run_s, 3),
            "preset": preset,
            "parameters": _jsonable(records.get("parameters", {})),
            "manifest": {"path": str(manifest), "sha256": manifest_sha},
            "scheduler": sched_desc,
            "notebook": {"source": src_rel, "sha256": sha256_file(src)},
            "outputs": {"ipynb": f"{name}.ipynb", "html": f"{name}.html", "json": f"{name}.json"},
            "fingerprint": fingerprint,
            **base,
        }
        nb = nbformat.read(out_nb, as_version=4)
        nb.metadata["studylib"] = prov
        try:
            page = render_report(nb, prov)
        except Exception as err:  # never lose the run because the HTML could not be rendered
            prov["render_error"] = f"{type(err).__name__}: {err}"
            page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(name)}</title></head><body>"
                    f"{_header_html(prov)}<p>HTML rendering failed: {_e(prov['render_error'])}</p>"
                    f"{_footer_html(prov)}</body></html>")
        tmp_nb = reports / f".{name}.ipynb.tmp-{uuid.uuid4().hex}"
        nbformat.write(nb, tmp_nb)
        os.replace(tmp_nb, reports / f"{name}.ipynb")
        atomic_write_text(reports / f"{name}.html", page)
        atomic_write_text(reports / f"{name}.json", json.dumps(prov, indent=1, ensure_ascii=False, allow_nan=False))
    msg = f"{name}: {status} in {run_s:.1f} s"
    if error:
        msg += f" ({error.get('ename')}: {str(error.get('evalue'))[:200]})"
    if records.get("headline"):
        msg += f" | {records['headline']}"
    tqdm.write(msg, file=sys.stderr)
    return status == "ok"


# =============================================================================================
# inspecting cached intermediates


def _cache_for(experiment: str, preset: str, cache_dir, manifest):
    from .cache import Cache

    if not isinstance(experiment, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", experiment):
        raise WorkbookError(f"experiment name {experiment!r} is not valid")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(preset, manifest)
    if experiment not in EXPERIMENTS and not (root / experiment).is_dir():
        raise WorkbookError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    return Cache(experiment, root, verbose=False)


def load_intermediate(experiment: str, name: str, preset: str = "demo", *, cache_dir=None, manifest=None,
                      key: str | None = None):
    """Open a cached intermediate result of an experiment (the latest computed, or a given key).

    Returns an xarray Dataset/DataArray (lazy, from zarr), a pandas DataFrame/Series or JSON values.

    Raises
    ------
    studylib.cache.CacheError
        When there is no such entry, listing the ones that exist.
    """
    return _cache_for(experiment, preset, cache_dir, manifest).load(name, key)


def show(experiment: str, preset: str = "demo", *, cache_dir=None, manifest=None, file=None) -> int:
    """Print an experiment's cached intermediates (name, kind, size, key, when, inputs); return 0."""
    out = file or sys.stdout
    cache = _cache_for(experiment, preset, cache_dir, manifest)
    entries = cache.entries()
    if not entries:
        print(f"{experiment}: no cached intermediates under {cache.dir} "
              f"(run `studylib run {experiment} --preset {preset}` first)", file=out)
        return 0
    print(f"{experiment}: {len(entries)} cached intermediate(s) under {cache.dir}", file=out)
    w = max(len(e.name) for e in entries)
    print(f"  {'name':<{w}}  {'kind':<7}  {'size':>9}  {'compute':>8}  {'key':<12}  created", file=out)
    for e in entries:
        print(f"  {e.name:<{w}}  {e.kind:<7}  {_size(e.nbytes):>9}  {e.compute_s:>7.1f}s  {e.key[:12]}  "
              f"{e.created}", file=out)
        if e.description:
            print(f"  {'':<{w}}  {e.description}", file=out)
        if e.inputs:
            print(f"  {'':<{w}}  inputs: {', '.join(e.inputs)}", file=out)
        if e.params:
            print(f"  {'':<{w}}  params: {json.dumps(e.params, sort_keys=True)}", file=out)
    print(f"\nopen one with: studylib.workbook.load_intermediate({experiment!r}, {entries[0].name!r}, "
          f"preset={preset!r})", file=out)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
