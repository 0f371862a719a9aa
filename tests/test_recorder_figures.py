"""The recorder's figure copies and the notebook's own PNG share one layout (``recorder._export_figure``).

Under the runner every displayed figure is saved as SVG + PDF beside the report; the inline backend's PNG of the
same display is drawn in the same pass, with the same tight box, instead of laying the figure out again.  These
tests run the recorder's IPython extension in an in-process shell with the inline backend's own PNG printer
(``select_figure_formats``, what ``matplotlib_inline`` registers), and check that the PNG is what IPython
itself prints, that the copies and the PNG have one box, that the figure keeps its layout engine, and that a
figure changed in between, or a printer that is not the plain one, gets its own PNG.
"""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.pylabtools import print_figure, select_figure_formats
from PIL import Image

from studylib import recorder


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv(recorder.FILES_ENV, str(tmp_path / "files"))
    monkeypatch.setattr(recorder, "_EXPORTED", {"figure": 0, "table": 0})  # numbered per kernel
    ip = InteractiveShell.instance()
    select_figure_formats(ip, {"png"}, bbox_inches="tight")  # what the inline backend registers by default
    recorder.load_ipython_extension(ip)
    yield ip
    plt.close("all")
    InteractiveShell.clear_instance()


def _maps(layout=None):
    fig, axes = plt.subplots(1, 3, figsize=(9, 3), layout=layout)
    rng = np.random.default_rng(0)
    for ax in axes:
        im = ax.imshow(rng.random((24, 24)))
        fig.colorbar(im, ax=ax)
        ax.set_title("R2* (1/s), day 3")
    return fig


def _png_size(data_b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data_b64))).size


def _pdf_page_pt(path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    return float(box.group(1)), float(box.group(2))


def test_the_png_is_the_inline_backends_own_and_the_copies_are_saved(shell, tmp_path):
    fig = _maps()  # no layout engine: the tight box is the same however often it is measured
    expected = print_figure(fig, fmt="png", base64=True, bbox_inches="tight")
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"] == expected  # byte for byte
    assert data[recorder.EXPORT_MIME]["files"] == ["fig-1.svg", "fig-1.pdf"]
    assert (tmp_path / "files" / "fig-1.svg").is_file() and (tmp_path / "files" / "fig-1.pdf").is_file()
    assert fig.get_layout_engine() is None


def test_png_and_copies_have_one_box_and_the_layout_engine_is_kept(shell, tmp_path):
    fig = _maps("constrained")
    engine = fig.get_layout_engine()
    data, _ = shell.display_formatter.format(fig)
    width_px, height_px = _png_size(data["image/png"])
    width_pt, height_pt = _pdf_page_pt(tmp_path / "files" / "fig-1.pdf")
    assert abs(width_px - width_pt / 72 * fig.dpi) <= 1 and abs(height_px - height_pt / 72 * fig.dpi) <= 1
    assert fig.get_layout_engine() is engine  # the same engine object, back in place
    # shown again after a change: laid out again, and wider (a colorbar more)
    fig.colorbar(fig.axes[0].images[0], ax=fig.axes[0])
    again, _ = shell.display_formatter.format(fig)
    assert again[recorder.EXPORT_MIME]["files"] == ["fig-2.svg", "fig-2.pdf"]
    assert _png_size(again["image/png"])[0] > width_px - 1 and fig.get_layout_engine() is engine


def test_a_figure_changed_between_the_copies_and_its_png_gets_a_fresh_png(shell):
    fig = _maps()
    export = shell.display_formatter.formatters[recorder.EXPORT_MIME]
    png = shell.display_formatter.formatters["image/png"]
    assert export(fig)["n"] == 1
    fig.suptitle("added after the copies were drawn " * 3)
    assert png(fig) == print_figure(fig, fmt="png", base64=True, bbox_inches="tight")
    # and a PNG drawn for one figure is never handed to another
    other = _maps()
    export(fig)
    assert png(other) == print_figure(other, fmt="png", base64=True, bbox_inches="tight")


def test_a_printer_that_is_not_the_plain_one_draws_its_own_png(shell, tmp_path):
    fig = _maps()
    width_1x = _png_size(shell.display_formatter.format(fig)[0]["image/png"])[0]
    select_figure_formats(shell, {"retina"}, bbox_inches="tight")  # the user asks for another format
    data, _ = shell.display_formatter.format(fig)
    assert abs(_png_size(data["image/png"])[0] - 2 * width_1x) <= 2  # the retina printer's own, at 2x
    assert data[recorder.EXPORT_MIME]["files"] == ["fig-2.svg", "fig-2.pdf"]
    select_figure_formats(shell, {"png"}, bbox_inches="tight")  # back: wrapped again at the next display
    assert shell.display_formatter.format(fig)[0]["image/png"] == print_figure(fig, fmt="png", base64=True,
                                                                                bbox_inches="tight")


def test_rcparams_asking_for_a_layout_engine_do_not_replace_the_figures(shell, tmp_path):
    with matplotlib.rc_context({"figure.constrained_layout.use": True}):
        fig = _maps()
        engine = fig.get_layout_engine()
        data, _ = shell.display_formatter.format(fig)
        assert fig.get_layout_engine() is engine and data[recorder.EXPORT_MIME]["n"] == 1
        assert "image/png" in data and (tmp_path / "files" / "fig-1.pdf").is_file()
