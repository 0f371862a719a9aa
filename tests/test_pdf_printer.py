"""The report PDFs: one headless Chromium prints every report of a run (:class:`studylib.workbook.downloads.PdfPrinter`).

* it prints what ``chromium --print-to-pdf --no-pdf-header-footer`` prints (same bytes but the creation date);
* one browser serves many pages and several threads, and stops when the printer closes;
* a tab that loses its renderer is noticed at once (and :meth:`PdfPrinter.print` retries once in a new tab);
  a browser that exits, one that never answers, one that cannot start: a note, never an exception, and the
  printer works again after it;
* ``studylib run`` starts one browser for all its reports.

``/usr/bin/chromium`` comes from ``make chromium`` (part of ``make test``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from studylib.errors import RendererGone
from studylib.workbook import downloads
from studylib.workbook.downloads import CHROMIUM_ARGS, PdfPrinter, find_chromium, print_pdf

# a 2x1 PNG, and a page long enough for two sheets
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAEElEQVR4nGP4z8DAwMDAAAAF/gH/jZcJ1AAAAABJRU5ErkJggg==")


def _page(folder: Path, name: str, paragraphs: int = 120) -> Path:
    body = "".join(f"<p>Paragraph {i}: R2* of tumour {i} is {30 + i % 17} 1/s.</p>" for i in range(paragraphs))
    img = f'<img alt="map" src="data:image/png;base64,{base64.b64encode(PNG).decode()}" width="200">'
    page = folder / f"{name}.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title></head>"
                    f"<body><h1>{name}</h1>{img}{body}</body></html>", encoding="utf-8")
    return page


def _pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b(?!s)", pdf))


def _without_dates(pdf: bytes) -> bytes:
    return re.sub(rb"/(CreationDate|ModDate) \(D:[^)]*\)", b"", pdf)


def _chromium() -> str:
    exe, why = find_chromium()
    assert exe, f"these tests print with Chromium: {why}"
    return exe


def _processes():
    """``(pid, command line)`` of every process (a zygote's children rewrite theirs as one string)."""
    for pid in os.listdir("/proc"):
        try:
            yield int(pid), Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue


def _browsers() -> set[int]:
    """Pids of running browser processes (not their renderers or helpers)."""
    return {pid for pid, cmd in _processes()
            if b"--remote-debugging-pipe" in cmd.split(b"\0") and b"--type=" not in cmd}


def _renderers(pgid: int) -> list[int]:
    """Pids of the renderer processes of the browser whose process group is ``pgid``."""
    out = []
    for pid, cmd in _processes():
        with contextlib.suppress(OSError):
            if b"--type=renderer" in cmd and os.getpgid(pid) == pgid:
                out.append(pid)
    return out


def test_prints_what_print_to_pdf_prints(tmp_path, monkeypatch):
    exe = _chromium()
    monkeypatch.delenv(downloads.CHROMIUM_ENV, raising=False)
    page = _page(tmp_path, "report")
    cli = tmp_path / "cli.pdf"
    subprocess.run([exe, *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}", f"--print-to-pdf={cli}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    assert print_pdf(page, tmp_path / "one.pdf") == ""  # a browser for this page only
    with PdfPrinter() as printer:
        assert printer.print(page, tmp_path / "kept.pdf") == ""
    reference = cli.read_bytes()
    assert _pages(reference) >= 2
    for pdf in ("one.pdf", "kept.pdf"):
        assert _without_dates((tmp_path / pdf).read_bytes()) == _without_dates(reference), pdf
    assert not list(tmp_path.glob(".*.tmp"))


def test_one_browser_many_pages_and_threads(tmp_path):
    _chromium()
    before = _browsers()
    pages = [_page(tmp_path, f"report{i}", paragraphs=20 + 40 * i) for i in range(4)]
    with PdfPrinter() as printer:
        assert printer.print(pages[0], tmp_path / "report0.pdf") == ""
        started = _browsers() - before
        assert len(started) == 1
        notes = {}
        threads = [threading.Thread(target=lambda p=p: notes.update({p.stem: printer.print(p, p.with_suffix(".pdf"))}))
                   for p in pages[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert notes == {p.stem: "" for p in pages[1:]}
        assert _browsers() - before == started  # the same browser printed them all
    counts = [_pages(p.with_suffix(".pdf").read_bytes()) for p in pages]
    assert counts == sorted(counts) and counts[-1] > counts[0]  # each page its own PDF
    assert not (_browsers() & started)  # closed with the printer


def test_a_lost_renderer_is_noticed_at_once_and_the_browser_prints_again(tmp_path):
    _chromium()
    page = _page(tmp_path, "report")
    with PdfPrinter(timeout_s=60) as printer:
        assert printer.print(page, tmp_path / "a.pdf") == ""
        deadline = time.monotonic() + 60
        target = printer._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        session = printer._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                deadline=deadline)["sessionId"]
        printer._call("Inspector.enable", {}, session, deadline=deadline)  # as PdfPrinter._print does
        printer._call("Page.navigate", {"url": page.as_uri()}, session, deadline=deadline)
        for _ in range(100):  # its renderer
            renderers = _renderers(os.getpgid(printer._pid))
            if renderers:
                break
            time.sleep(0.05)
        assert renderers
        t0 = time.monotonic()
        for pid in renderers:  # the tab's renderer is killed (as by the OOM killer)
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RendererGone):
            printer._call("Runtime.evaluate", {"expression": "1 + 1"}, session, deadline=deadline)
        assert time.monotonic() - t0 < 30  # noticed from the browser's event, not after the timeout
        assert printer.print(page, tmp_path / "b.pdf") == ""  # a new tab of the same browser
        assert _without_dates((tmp_path / "b.pdf").read_bytes()) == _without_dates((tmp_path / "a.pdf").read_bytes())


def test_a_browser_that_exits_or_never_answers_gives_a_note(tmp_path):
    page = _page(tmp_path, "report", paragraphs=2)
    with PdfPrinter("/bin/false") as printer:
        note = printer.print(page, tmp_path / "x.pdf")
    assert note.startswith("Chromium (/bin/false) printed no PDF (exit code 1)"), note
    silent = tmp_path / "silent-browser"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    with PdfPrinter(str(silent), timeout_s=1.0) as printer:
        t0 = time.monotonic()
        assert printer.print(page, tmp_path / "x.pdf") == "Chromium did not print the PDF within 1 s"
        assert time.monotonic() - t0 < 10  # killed, not waited for
        assert printer._pid is None and printer._profile is None
    with PdfPrinter(str(tmp_path / "no-such-browser")) as printer:
        assert "could not be started" in printer.print(page, tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()
    with PdfPrinter(_chromium()) as printer:  # a browser that died between prints: the next print starts another
        assert printer.print(page, tmp_path / "x.pdf") == ""
        first = printer._pid
        os.kill(first, signal.SIGKILL)
        time.sleep(0.5)
        assert printer.print(page, tmp_path / "y.pdf") == ""
        assert printer._pid not in (None, first)


def test_studylib_run_starts_one_browser_for_all_reports(tmp_path, monkeypatch):
    from studylib import workbook as wb
    from test_workbook import TOY_OK, make_toy_study

    _chromium()
    monkeypatch.delenv(downloads.CHROMIUM_ENV, raising=False)
    starts = []
    start = PdfPrinter._start
    monkeypatch.setattr(PdfPrinter, "_start", lambda self: (starts.append(1), start(self))[1])
    env = make_toy_study(tmp_path, {"toy_a": TOY_OK.replace("toy_ok", "toy_a"), "toy_b": TOY_OK.replace("toy_ok", "toy_b")})
    assert wb.run(["toy_a", "toy_b"], preset="ci", reports=env["reports"], manifest=env["manifest"],
                  notebooks_dir=env["notebooks"], cache_dir=env["cache"], progress=False, jobs=2) == 0
    for name in ("toy_a", "toy_b"):
        assert (env["reports"] / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert len(starts) == 1
