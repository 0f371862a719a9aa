"""The in-kernel recorder: what a notebook hands to the report runner.

A notebook calls :func:`record_headline` and :func:`record_conclusions` (usually through
:func:`studylib.analysis.record`); :class:`studylib.cache.Cache` calls :func:`record_cache_event`
for each lookup.  Under the runner (``studylib run``) the environment variable ``STUDYLIB_RECORD``
names a JSON file the records are written to (atomically, after each call); the records are also
attached to the displayed output as metadata, so they survive in the executed notebook.

Every :class:`studylib.errors.StudyWarning` shown in the kernel (a dropped session, failed voxels,
an empty ROI, a singular model fit, a relaxivity held beyond its table) is recorded too
(:func:`capture_warnings`, installed when this module is imported under the runner), so the report can
list it in its "data warnings" box instead of leaving it in a cell's stderr.

Under the runner every figure and every table the notebook displays is also saved beside the report
(:func:`load_ipython_extension`, loaded by the runner into the kernel at its start): the kernel's display
machinery gets one more formatter, for the mimetype :data:`EXPORT_MIME`, which saves a matplotlib Figure as
``fig-<n>.svg`` and ``fig-<n>.pdf`` (the figure itself, not its PNG) and a pandas DataFrame (or Styler) in full
as ``table-<n>.csv`` into the folder named by ``STUDYLIB_FILES``, and returns ``{"kind", "n", "files"}``, so
the executed notebook says which output each file belongs to.  The runner
(:mod:`studylib.workbook.downloads`) moves them beside the report and links them from it.  Outside the runner
nothing is saved.

This module sits below both :mod:`studylib.cache` and :mod:`studylib.workbook`, so neither imports
the other.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from ._atomic import atomic_write_text
from .errors import StudyWarning, WorkbookError

__all__ = ["RECORD_ENV", "FILES_ENV", "EXPORT_MIME", "load_ipython_extension", "record_headline", "record_conclusions", "record_cache_event", "record_warning",
           "capture_warnings", "jsonable"]

RECORD_ENV = "STUDYLIB_RECORD"

#: the folder the kernel saves the figures and tables it displays to (set by the runner)
FILES_ENV = "STUDYLIB_FILES"

#: the output mimetype naming the files an output was saved as: ``{"kind": "figure"|"table", "n", "files"}``
EXPORT_MIME = "application/vnd.studylib.export+json"

#: a displayed table with more cells than this is not saved as CSV (noted in the record instead)
MAX_TABLE_CELLS = 5_000_000

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
    atomic_write_text(path, json.dumps(_RECORD, indent=1, allow_nan=False))


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


def record_cache_event(experiment: str, name: str, key: str, hit: bool, seconds: float) -> None:
    """Called by :class:`studylib.cache.Cache` for each lookup (counted in the provenance record)."""
    ev = _RECORD.setdefault("cache", {"hits": 0, "misses": 0, "events": []})
    ev["hits" if hit else "misses"] += 1
    ev["events"].append({"experiment": experiment, "name": name, "key": key[:16], "hit": bool(hit),
                         "seconds": round(float(seconds), 3)})
    _flush_record()


#: at most this many distinct warnings are kept (the count of the rest is kept too)
MAX_WARNINGS = 200


def record_warning(message: str, category: str = "DataWarning") -> None:
    """Record one warning for the report's "data warnings" box (duplicates are counted, not repeated).

    Parameters
    ----------
    message : what is wrong and where (plain text; HTML-escaped wherever shown).
    category : the warning class's name (``DataWarning``, ``RoiWarning``, ``StatsFitWarning`` ...).
    """
    text = " ".join(str(message).split())[:1000]
    items = _RECORD.setdefault("warnings", [])
    for w in items:
        if w["message"] == text and w["category"] == category:
            w["count"] += 1
            _flush_record()
            return
    if len(items) >= MAX_WARNINGS:
        _RECORD["warnings_not_listed"] = int(_RECORD.get("warnings_not_listed", 0)) + 1
    else:
        items.append({"category": str(category), "message": text, "count": 1})
    _flush_record()


_HOOKED = False


def capture_warnings() -> None:
    """Record every :class:`~studylib.errors.StudyWarning` that is shown from now on (it is still shown).

    Wraps :func:`warnings.showwarning`, so warnings the warnings filters suppress (``ignore``, or a
    ``catch_warnings(record=True)`` block that handles them) are not recorded.  Idempotent.
    """
    global _HOOKED
    if _HOOKED:
        return
    shown = warnings.showwarning

    def _showwarning(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, StudyWarning):
            record_warning(str(message), category.__name__)
        return shown(message, category, filename, lineno, file, line)

    warnings.showwarning = _showwarning
    _HOOKED = True


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)



# ------------------------------------------------------------------ figures and tables saved beside the report

_EXPORTED = {"figure": 0, "table": 0}


def _files_dir() -> Path | None:
    p = os.environ.get(FILES_ENV)
    return Path(p) if p else None


def _export_failed(what: str, err: BaseException) -> None:
    _RECORD.setdefault("export_failures", []).append(f"{what}: {type(err).__name__}: {err}"[:300])
    _flush_record()


#: the PNG :func:`_export_figure` rendered with the copies' layout, for the PNG formatter of the same display
#: call: ``[(figure, printer, data)]`` or empty (see :func:`_shared_png_printer`)
_SHARED_PNG: list = []


def _shared_png_printer(png_formatter):
    """The inline backend's PNG printer for Figures, if it is IPython's plain ``print_figure(fmt="png")`` with a
    tight box (what ``matplotlib_inline`` registers by default); else None.

    The printer is wrapped once in the PNG formatter (again whenever the inline backend re-registers its own, e.g.
    after ``set_matplotlib_formats``): the wrapper returns the PNG :func:`_export_figure` rendered for the same
    figure in the same display call -- laid out and measured once with the SVG and PDF copies -- and otherwise
    calls the printer itself.  Any other printer (retina, other keywords) keeps rendering its own PNG.
    """
    import functools

    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    if png_formatter is None:
        return None
    try:
        current = png_formatter.lookup_by_type(Figure)
    except KeyError:
        return None
    printer = getattr(current, "_studylib_printer", current)
    if not (isinstance(printer, functools.partial) and printer.func is print_figure and not printer.args
            and printer.keywords.get("fmt") == "png" and printer.keywords.get("bbox_inches", "tight") == "tight"
            and "pad_inches" not in printer.keywords):
        return None
    if current is printer:
        def png(fig):
            shared = _SHARED_PNG.pop() if _SHARED_PNG else None
            if shared is not None and shared[0] is fig and shared[1] is printer and not fig.stale:
                return shared[2]
            return printer(fig)

        png._studylib_printer = printer
        png_formatter.for_type(Figure, png)
    return printer


def _export_figure(fig, png_formatter=None) -> dict | None:
    """Save a displayed matplotlib Figure as ``fig-<n>.svg`` and ``.pdf`` (TrueType fonts in the PDF, so its
    text stays text; no creation date, so the files are reproducible); its PNG is the notebook's own.

    What ``savefig(bbox_inches="tight")`` does for each format -- lay the figure out (its layout engine, e.g.
    constrained), measure the tight box, pad it, draw -- is done once: the SVG, the PDF and, when the inline
    backend's PNG printer is the default one (:func:`_shared_png_printer`), the notebook's PNG are then drawn
    with that box and no layout engine (restored after), so none of them lays the figure out again.
    """
    folder = _files_dir()
    if folder is None:
        return None
    _SHARED_PNG.clear()
    _EXPORTED["figure"] += 1
    stem = f"fig-{_EXPORTED['figure']}"
    try:
        import matplotlib

        printer = _shared_png_printer(png_formatter)
        folder.mkdir(parents=True, exist_ok=True)
        fig.draw_without_rendering()
        bbox = fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
        engine = fig.get_layout_engine()
        # laid out just now: with no engine at all (not the "none" placeholder) and a box given, savefig draws
        # once instead of laying out and drawing without rendering first.  rcParams asking for a layout engine
        # would give the figure a new one whenever savefig restores "no engine": held off meanwhile
        with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            if engine is not None:
                fig.set_layout_engine(None)
            try:
                if printer is not None:
                    try:
                        png = printer.func(fig, **{**printer.keywords, "bbox_inches": bbox})
                        _SHARED_PNG.append((fig, printer, png))
                    except Exception:  # the PNG formatter draws its own
                        pass
                with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": stem}):
                    fig.savefig(folder / f"{stem}.svg", format="svg", bbox_inches=bbox, metadata={"Date": None})
                    fig.savefig(folder / f"{stem}.pdf", format="pdf", bbox_inches=bbox,
                                metadata={"CreationDate": None})
            finally:
                if engine is not None:
                    fig.set_layout_engine(engine)
        if _SHARED_PNG:
            fig.stale = False  # drawn and unchanged; any change before the PNG formatter runs makes it stale
    except Exception as err:  # never let saving a copy break the notebook's own output
        _export_failed(stem, err)
        return None
    return {"kind": "figure", "n": _EXPORTED["figure"], "files": [f"{stem}.svg", f"{stem}.pdf"]}


def _export_table(df) -> dict | None:
    """Save a displayed DataFrame in full (not the truncated view) as ``table-<n>.csv``; the index is kept
    unless it is the default 0, 1, 2, ..."""
    import pandas as pd

    folder = _files_dir()
    if folder is None or not isinstance(df, pd.DataFrame):
        return None
    _EXPORTED["table"] += 1
    n = _EXPORTED["table"]
    try:
        if df.size > MAX_TABLE_CELLS:
            raise WorkbookError(f"{df.shape[0]} x {df.shape[1]} cells is more than {MAX_TABLE_CELLS}")
        folder.mkdir(parents=True, exist_ok=True)
        plain = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
        df.to_csv(folder / f"table-{n}.csv", index=not plain, lineterminator="\n")
    except Exception as err:
        _export_failed(f"table-{n}.csv", err)
        return None
    return {"kind": "table", "n": n, "files": [f"table-{n}.csv"], "shape": [int(df.shape[0]), int(df.shape[1])]}


def _export(obj, png_formatter=None) -> dict | None:
    """The saved files of a displayed object: a matplotlib Figure, a pandas DataFrame or Styler; else None.
    ``png_formatter``: the display's PNG formatter, whose Figure PNG a figure's copies may share (see
    :func:`_export_figure`)."""
    for cls in type(obj).__mro__:
        top = (cls.__module__ or "").split(".")[0]
        if (top, cls.__name__) == ("matplotlib", "Figure"):
            return _export_figure(obj, png_formatter)
        if (top, cls.__name__) == ("pandas", "DataFrame"):
            return _export_table(obj)
        if (top, cls.__name__) == ("pandas", "Styler"):
            return _export_table(getattr(obj, "data", None))
    return None


def load_ipython_extension(ip) -> None:
    """IPython extension (``--ext=studylib.recorder``, given to the kernel by the runner): when
    ``STUDYLIB_FILES`` is set, every displayed Figure, DataFrame and Styler is also saved there (see the
    module docstring); the output gets ``{"kind", "n", "files"}`` under :data:`EXPORT_MIME`."""
    if _files_dir() is None or ip is None or EXPORT_MIME in ip.display_formatter.formatters:
        return
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class _ExportFormatter(BaseFormatter):
        format_type = Unicode(EXPORT_MIME)
        _return_type = dict
        print_method = ObjectName("_repr_studylib_export_")

        def __call__(self, obj):  # by class name: pandas and matplotlib need not be imported, whatever __module__
            return _export(obj, self.parent.formatters.get("image/png"))

    fmt = _ExportFormatter(parent=ip.display_formatter)
    # first of the display's formatters, so a figure's PNG can be drawn with its copies' layout (the PNG
    # formatter, after it, takes that PNG: _shared_png_printer)
    ip.display_formatter.formatters = {EXPORT_MIME: fmt, **ip.display_formatter.formatters}


#: public name of the JSON conversion the runner also uses for parameters
jsonable = _jsonable

if _record_path() is not None:  # under the runner: every studylib warning reaches the report
    capture_warnings()
