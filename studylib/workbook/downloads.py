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
* **the report as PDF** (:class:`PdfPrinter`, one browser per run; :func:`print_pdf` for one page): printed by
  headless Chromium where one is installed (``STUDYLIB_CHROMIUM`` names it, or ``none`` to skip; otherwise
  ``chromium``/``google-chrome`` on the PATH); without one the record notes why there is no PDF; this is not an error.

The runner writes ``reports/<exp>_files/`` together with the report, all or none (``run._write_report``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import html
import json
import os
import select
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from ..errors import RendererGone
from ..recorder import EXPORT_MIME, FILES_ENV

__all__ = ["FILES_ENV", "collect", "downloads_section", "files_folder", "find_chromium", "kernel_arguments",
           "print_pdf", "PdfPrinter", "with_download_links"]

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


class PdfPrinter:
    """One headless Chromium that prints many HTML files to PDF, started on the first print.

    Chromium's ``--print-to-pdf`` starts a browser per file: ~1 CPU-s of start-up on top of ~1.4 CPU-s of
    printing a demo report (measured on the 8 demo reports, all cores: 15.6 CPU-s and 8.9 s with a browser each, 8.9-10.3 CPU-s
    and 5.3-5.7 s in one browser, the PDFs equal but for their creation date).
    This keeps one browser for all of them and prints each page in its own tab with the DevTools protocol
    over ``--remote-debugging-pipe`` (JSON messages ending in NUL on file descriptors 3 and 4;
    ``Page.printToPDF`` with its defaults: US Letter, 1 cm margins, no header or footer, no backgrounds, as
    ``--print-to-pdf --no-pdf-header-footer`` prints).  Prints run one at a time (a lock: a print keeps ~1.7
    cores busy), so threads may share one printer.  A browser that died or timed out is killed and the next
    print starts a new one.  Failures are returned as notes, never raised.  Use as a context manager, or
    call :meth:`close`.

    Reference: Chrome DevTools Protocol, domains Target and Page (https://chromedevtools.github.io/devtools-protocol/).
    """

    def __init__(self, exe: str | None = None, *, timeout_s: float = 120.0):
        self.exe, self.why_not = (exe, "") if exe else find_chromium()
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pid = self._pgid = self._code = self._profile = self._log = None
        self._to = self._from = None
        self._buf, self._events, self._next_id = b"", [], 0

    def __enter__(self) -> PdfPrinter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def print(self, page: Path, pdf: Path) -> str:
        """Print the HTML file ``page`` to ``pdf``; returns "" or why there is no PDF (then nothing is written)."""
        if self.exe is None:
            return self.why_not
        pdf = Path(pdf)
        with self._lock:
            try:
                if self._to is not None and self._exit_code() is not None:
                    self._stop()  # the browser exited since the last print: start a new one
                if self._to is None:
                    self._start()
                uri = Path(page).resolve().as_uri()
                try:
                    data = self._print(uri)
                except RendererGone:  # once more, in a new tab (a renderer can die; the browser is fine)
                    data = self._print(uri)
            except (OSError, TimeoutError, ValueError, KeyError, RuntimeError) as err:
                why = self._failure(err)
                self._stop()
                return why
        tmp = pdf.with_name(f".{pdf.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, pdf)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            return f"the PDF could not be written to {str(pdf)!r} ({err.strerror or err})"
        return ""

    def close(self) -> None:
        """Stop the browser (if one runs) and remove its temporary profile."""
        with self._lock:
            self._stop()

    # -- the browser and the protocol
    def _start(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="studylib-chromium-")
        log = Path(self._profile.name) / "chromium.log"
        # Chromium reads our commands on its fd 3 and writes its replies on its fd 4; posix_spawn's dup2 actions
        # put the pipe ends there (subprocess cannot), after moving them above 9 so that neither is
        # overwritten by the other's dup2
        to_r, to_w = (_above_9(fd) for fd in os.pipe())
        from_r, from_w = (_above_9(fd) for fd in os.pipe())
        argv = [self.exe, *CHROMIUM_ARGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
                "--no-startup-window"]  # no first tab: a page made while it starts can lose its renderer
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                   (os.POSIX_SPAWN_DUP2, 1, 2), (os.POSIX_SPAWN_DUP2, to_r, 3), (os.POSIX_SPAWN_DUP2, from_w, 4)]
        try:
            self._pid = os.posix_spawnp(self.exe, argv, os.environ, file_actions=actions, setsid=True)
            self._pgid = self._pid  # setsid: it leads its own process group (zygotes, renderers, helpers)
        except OSError:
            os.close(to_w)
            os.close(from_r)
            raise
        finally:
            os.close(to_r)  # the browser's ends: its copies are 3 and 4
            os.close(from_w)
        self._to, self._from, self._log = to_w, from_r, log
        self._buf, self._events = b"", []

    def _exit_code(self, wait_s: float = 0.0) -> int | None:
        """The browser's exit code once it has exited (reaped), else None after waiting up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self._pid is not None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its code is unknown
                self._pid, self._code = None, -1
                break
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
                self._pid = None
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self._code

    def _stop(self) -> None:
        for fd in (self._to, self._from):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = None
        if self._pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGTERM)  # our ends of its pipe are closed: it exits
            if self._exit_code(5.0) is None:
                with contextlib.suppress(OSError):
                    os.kill(self._pid, signal.SIGKILL)
                self._exit_code(5.0)
        if self._pgid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._pgid, signal.SIGKILL)  # any process of its group left (also after a crash)
        self._pid = self._pgid = None
        if self._profile is not None:
            with contextlib.suppress(OSError):
                self._profile.cleanup()
            self._profile = None

    def _failure(self, err: Exception) -> str:
        if isinstance(err, TimeoutError):
            return f"Chromium did not print the PDF within {self.timeout_s:.0f} s"
        if self._pid is None and self._to is None:
            return f"Chromium ({self.exe}) could not be started: {getattr(err, 'strerror', None) or err}"
        tail = ""
        with contextlib.suppress(OSError, TypeError):
            lines = self._log.read_bytes().decode("utf-8", "replace").splitlines()
            tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
        code = self._exit_code(0.5)
        state = f"exit code {code}" if code is not None else "still running"
        return f"Chromium ({self.exe}) printed no PDF ({state}): {err} {tail[:200]}".strip()

    def _print(self, uri: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        self._events = []  # those of earlier tabs are of no use (kept, a long-lived printer would pile them up)
        target = self._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        try:
            session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 deadline=deadline)["sessionId"]
            self._call("Inspector.enable", {}, session, deadline=deadline)  # for Inspector.targetCrashed
            self._call("Page.enable", {}, session, deadline=deadline)
            nav = self._call("Page.navigate", {"url": uri}, session, deadline=deadline)
            if nav.get("errorText"):
                raise RuntimeError(f"{uri} could not be opened ({nav['errorText']})")
            self._event("Page.loadEventFired", session, deadline)
            out = self._call("Page.printToPDF", {"displayHeaderFooter": False}, session, deadline=deadline)
        finally:
            if self._exit_code() is None:
                with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
                    self._call("Target.closeTarget", {"targetId": target}, deadline=deadline)
        data = base64.b64decode(out["data"])
        if data[:5] != b"%PDF-":
            raise RuntimeError("the printed data is not a PDF")
        return data

    def _call(self, method: str, params: dict, session: str | None = None, *, deadline: float) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        out = json.dumps(msg).encode() + b"\0"
        while out:
            out = out[os.write(self._to, out):]
        while True:
            reply = self._message(deadline)
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(self._check(reply, session))

    def _event(self, method: str, session: str, deadline: float) -> dict:
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._check(self._message(deadline), session))

    @staticmethod
    def _check(event: dict, session: str | None) -> dict:
        """``event``, unless it says that the page of ``session`` lost its renderer (:class:`RendererGone`)."""
        if session and event.get("method") in ("Inspector.targetCrashed", "Inspector.detached",
                                                "Target.detachedFromTarget") and \
                session in (event.get("sessionId"), event.get("params", {}).get("sessionId")):
            raise RendererGone(event.get("params", {}).get("reason") or event["method"])
        return event

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)


def _above_9(fd: int) -> int:
    """``fd`` moved to a descriptor number of at least 10 (close-on-exec, like :func:`os.pipe`'s)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def print_pdf(page: Path, pdf: Path, *, timeout_s: float = 120.0, printer: PdfPrinter | None = None) -> str:
    """Print the HTML file ``page`` to ``pdf`` with headless Chromium; returns "" or why there is no PDF.

    ``printer``: a running :class:`PdfPrinter` to print with (the runner keeps one for all its reports);
    without one a browser is started for this page and stopped after it.  Chromium runs with a fresh
    profile in a temporary folder, and any failure (none installed, a crash, a timeout) is returned as a
    note, never raised: the report does not depend on it.
    """
    if printer is not None:
        return printer.print(page, pdf)
    with PdfPrinter(timeout_s=timeout_s) as one:
        return one.print(page, pdf)
