"""Headless rendering of every figure in studylib.plots (Agg), with non-empty axes and units."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from studylib import plots  # noqa: E402
from studylib.errors import StudyError  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _study(n_animals=4, days=(0, 3, 7), shape=(3, 12, 14), seed=0):
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    groups = np.array(["vehicle", "treated"] * (n_animals // 2))
    dims = ("animal", "day", "z", "y", "x")
    anat = rng.uniform(50, 100, (n_animals, len(days)) + shape)
    r2 = rng.normal(40, 5, anat.shape)
    roi = np.zeros(anat.shape, dtype=np.int16)
    roi[..., 1, 3:8, 4:10] = 1
    roi[..., 2, 4:7, 5:9] = 1
    roi[..., 0, 0:2, 0:3] = 2
    acquired = np.ones((n_animals, len(days)), dtype=bool)
    acquired[-1, -1] = False  # a missing session
    r2[~acquired] = np.nan
    coords = dict(animal=[f"m{i:02d}" for i in range(n_animals)], day=list(days),
                  group=("animal", groups), acquired=(("animal", "day"), acquired))
    ok = rng.uniform(size=anat.shape) > 0.05
    return (xr.DataArray(r2, dims=dims, coords=coords, name="r2star", attrs={"units": "1/s", "long_name": "R2*"}),
            xr.DataArray(anat, dims=dims, coords=coords),
            xr.DataArray(roi, dims=dims, coords=coords),
            xr.DataArray(ok, dims=dims, coords=coords))


def _non_empty(fig):
    assert fig.axes, "figure has no axes"
    drawn = [ax for ax in fig.axes if ax.images or ax.lines or ax.collections or ax.patches]
    assert drawn, "no axes has any artist"
    fig.canvas.draw()
    w, h = fig.get_size_inches() * fig.dpi
    assert w > 0 and h > 0


def test_map_over_anatomy_has_colourbar_with_units():
    r2, anat, roi, _ = _study()
    fig = plots.map_over_anatomy(anat[0, 0, 1], r2[0, 0, 1], mask=roi[0, 0, 1] == 1, title="m00 day 0")
    _non_empty(fig)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any("1/s" in lab and "R2*" in lab for lab in labels), labels
    # the overlay is hidden outside the mask
    over = fig.axes[0].images[1].get_array()
    assert over.mask[0, 0] and not over.mask[4, 5]


def test_representative_maps_grid_and_missing_session():
    r2, anat, roi, _ = _study()
    fig = plots.representative_maps(r2, anat, roi, title="R2*")
    _non_empty(fig)
    # two groups x three days + a colourbar axes
    assert len(fig.axes) == 2 * 3 + 1
    reps = plots.representative_animals(r2["acquired"])
    # 'm03' misses its last session, so 'treated' is represented by m01 (3 days)
    assert reps == {"vehicle": "m00", "treated": "m01"}


def test_representative_maps_shows_not_acquired_panel():
    r2, anat, roi, _ = _study(n_animals=2)
    acq = r2["acquired"].copy()
    acq[:] = True
    acq[1, 2] = False
    r2 = r2.assign_coords(acquired=acq)
    fig = plots.representative_maps(r2, anat, roi)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "not acquired" in texts


def test_fit_quality_maps_reports_failed_fraction():
    r2, anat, roi, ok = _study()
    rmse = r2.copy(data=np.abs(r2.values) * 0.01).assign_attrs(units="a.u.", long_name="RMSE")
    fig = plots.fit_quality_maps(rmse, ok, anat, roi)
    _non_empty(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("% failed" in t for t in titles)


def _table(seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(8):
        g = "treated" if a % 2 else "control"
        for d in (0, 2, 5, 9):
            rows.append(dict(animal=f"a{a}", group=g, day=d, r2star=30 + (2.0 if g == "treated" else 0.5) * d
                             + rng.normal(0, 2)))
    return pd.DataFrame(rows)


def test_spaghetti_lines_per_animal_and_group_band():
    fig = plots.spaghetti(_table(), "r2star", ylabel="tumour R2* (1/s)")
    _non_empty(fig)
    ax = fig.axes[0]
    assert len(ax.lines) >= 8 + 2  # one thin line per animal + one mean line per group
    assert ax.collections, "no CI band"
    assert ax.get_ylabel() == "tumour R2* (1/s)"


def test_correlation_scatter_band_and_r_text():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 0.5, 20)
    df = pd.DataFrame(dict(collagen=x, adc=1.6 - 1.5 * x + rng.normal(0, 0.05, 20),
                           model=np.repeat(["BK-12", "ED-15", "HL-16", "LA-19"], 5)))
    fig = plots.correlation_scatter(df, "collagen", "adc", hue="model", xlabel="collagen I (%)",
                                    ylabel="ADC (µm²/ms)")
    _non_empty(fig)
    txt = fig.axes[0].texts[0].get_text()
    r = float(np.corrcoef(df.collagen, df.adc)[0, 1])
    assert txt.startswith(f"r = {r:.2f}") and "n = 20" in txt


def test_zspectra_and_mtrasym():
    off = np.linspace(-2, 2, 41)
    water = 1 - 0.9 * 0.25 / (0.25 + off**2)
    lact = water - 0.01 * 0.04 / (0.04 + (off - 0.4) ** 2)
    fig = plots.zspectra(off, {"pre": np.stack([water, water]), "post": lact}, highlight_ppm=0.4)
    _non_empty(fig)
    assert len(fig.axes) == 2
    asym_post = np.asarray(fig.axes[1].lines[1].get_ydata())
    xs = np.asarray(fig.axes[1].lines[1].get_xdata())
    # MTRasym of the lactate spectrum peaks near +0.4 ppm and is positive there
    assert abs(xs[np.argmax(asym_post)] - 0.4) <= 0.1 and asym_post.max() > 0.5


def test_effect_vs_truth_marks_truth():
    t = pd.DataFrame(dict(finding=["ΔR2* Amp B − vehicle", "r(ADC, collagen)"], estimate=[5.0, -0.7],
                          ci_low=[2.0, -0.9], ci_high=[8.0, -0.4], truth=[6.0, np.nan], units=["1/s", ""]))
    fig = plots.effect_vs_truth(t)
    _non_empty(fig)
    assert len(fig.axes) == 2
    assert any(line.get_marker() == "x" for line in fig.axes[0].lines)
    assert not any(line.get_marker() == "x" for line in fig.axes[1].lines)


def test_bad_inputs_raise_study_errors():
    r2, anat, roi, ok = _study()
    with pytest.raises(StudyError, match="2-D image"):
        plots.map_over_anatomy(anat[0, 0], r2[0, 0, 1])
    with pytest.raises(StudyError, match="differs from overlay"):
        plots.map_over_anatomy(anat[0, 0, 1, :5], r2[0, 0, 1])
    with pytest.raises(StudyError, match="lacks dims"):
        plots.representative_maps(r2.isel(day=0), anat, roi)
    with pytest.raises(StudyError, match=r"lacks columns \['nope'\]"):
        plots.spaghetti(_table(), "nope")
    with pytest.raises(StudyError, match="at least 3"):
        plots.correlation_scatter(pd.DataFrame(dict(a=[1.0, 2.0], b=[1.0, np.nan])), "a", "b")
    with pytest.raises(StudyError, match="offsets"):
        plots.zspectra([0.0, 1.0, 2.0], {"x": np.ones(4)})


@settings(max_examples=15, deadline=None)
@given(st.floats(-1e3, 1e3, allow_nan=False), st.floats(1e-3, 1e3))
def test_map_limits_cover_constant_and_scaled_maps(offset, scale):
    """Any finite map, constant or not, renders with vmin < vmax and the colourbar spans the data."""
    rng = np.random.default_rng(0)
    img = offset + scale * rng.uniform(size=(6, 7))
    for ov in (img, np.full((6, 7), offset)):
        fig = plots.map_over_anatomy(np.ones((6, 7)), ov, units="ms", label="T2*")
        im = fig.axes[0].images[1]
        lo, hi = im.get_clim()
        assert lo < hi
        plt.close(fig)


def test_time_curves_per_animal_and_mean():
    t = np.arange(0, 300, 4.0)
    aif = xr.DataArray(np.stack([np.exp(-t / 100) * (t > 40) * k for k in (1.0, 1.2, 0.9)]), dims=("animal", "t"),
                       coords=dict(animal=["a", "b", "c"], t=t), attrs={"units": "mM", "long_name": "Cp"})
    fig = plots.time_curves(aif)
    _non_empty(fig)
    assert len(fig.axes[0].lines) == 4 and fig.axes[0].get_ylabel() == "Cp (mM)"
    fig = plots.time_curves(aif.isel(animal=0))
    assert len(fig.axes[0].lines) == 1
    with pytest.raises(StudyError, match="'t' dim"):
        plots.time_curves(aif.rename(t="time"))


def test_axes_named_by_a_column_are_labelled_in_words_with_units():
    """A column name never reaches an axis: spaghetti and correlation_scatter label axes (and legend titles)
    from studylib.conventions.axis_label, the one table of variable labels."""
    from studylib.conventions import VARIABLE_LABELS, axis_label

    fig = plots.spaghetti(_table(), "r2star")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("day", "R2* (1/s)")
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"r2star": rng.normal(40, 5, 12), "prussian_blue_area_pct": rng.uniform(0, 3, 12),
                       "model": np.repeat(["TS1", "99LN"], 6)})
    ax = plots.correlation_scatter(df, "r2star", "prussian_blue_area_pct", hue="model").axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("R2* (1/s)", "Prussian blue area (%)")
    assert ax.get_legend().get_title().get_text() == "tumour model"
    # every histology column the synthetic studies write has words and units, and so has a lab's own one
    for col in ("iba1_cells_per_mm2", "hypoxic_fraction_pct", "lung_metastases_count", "ifp_mmHg"):
        assert col in VARIABLE_LABELS and "_" not in axis_label(col) and axis_label(col).endswith(")")
    assert axis_label("ki67_cells_per_mm2") == "ki67+ cells (1/mm²)"
    assert axis_label("necrosis_area_pct") == "necrosis area (%)"
    # a map without a long_name gets its words from the same table on its colourbar
    r2, anat, roi, _ = _study()
    fig = plots.representative_maps(r2.assign_attrs(long_name=""), anat, roi)
    assert fig.axes[-1].get_ylabel() == "R2* (1/s)"


def test_effect_vs_truth_shades_the_papers_side_of_zero():
    t = pd.DataFrame(dict(finding=["up", "down", "none"], estimate=[5.0, -0.7, 1.0], ci_low=[2.0, -0.9, -1.0],
                          ci_high=[8.0, -0.4, 3.0], truth=[6.0, np.nan, np.nan], units=["1/s", "", "%"],
                          paper_direction=["increase / positive", "decrease / negative", ""]))
    fig = plots.effect_vs_truth(t)
    spans = [[p for p in ax.patches if p.get_alpha() == pytest.approx(0.12)] for ax in fig.axes]
    assert [len(s) for s in spans] == [1, 1, 0]
    (up,), (down,) = spans[0], spans[1]
    assert up.get_x() == pytest.approx(0.0) and up.get_width() > 0  # from zero to the right edge
    lo, hi = fig.axes[1].get_xlim()
    assert up.get_x() + up.get_width() == pytest.approx(fig.axes[0].get_xlim()[1])
    assert down.get_x() == pytest.approx(lo) and down.get_x() + down.get_width() == pytest.approx(0.0)
    for ax in fig.axes:  # zero and the CI are inside every row's own scale
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi
