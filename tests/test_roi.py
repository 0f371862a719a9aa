"""Tests of studylib.roi: ROI statistics, volumes and histograms, eager and lazy."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from hypothesis import given, settings
from hypothesis import strategies as st_h

from studylib import roi
from studylib.errors import StudyError

DIMS = ("animal", "day", "z", "y", "x")


def _study(seed=0, A=4, D=3, shape=(3, 12, 12)):
    rng = np.random.default_rng(seed)
    r2 = rng.normal(30, 5, (A, D) + shape).astype("float32")
    adc = rng.normal(0.8, 0.1, (A, D) + shape)
    lab = np.zeros((A, D) + shape, np.int16)
    lab[..., 3:9, 3:9] = 1
    lab[..., 9:11, 3:9] = 2
    ok = rng.random((A, D) + shape) > 0.1
    r2[0, 0, 0, 4, 4] = np.nan                     # a NaN voxel that fit_ok calls fine
    ok[0, 0, 0, 4, 4] = True
    acq = np.ones((A, D), bool)
    acq[A - 1, D - 1] = False
    coords = dict(animal=[f"m{i}" for i in range(A)], day=[0, 7, 14][:D], group=("animal", ["c", "t"] * (A // 2)),
                  acquired=(("animal", "day"), acq))
    ds = xr.Dataset({"r2star_per_s": (DIMS, r2, {"units": "1/s"}), "adc_um2_per_ms": (DIMS, adc, {"units": "um2/ms"}),
                     "fit_ok": (DIMS, ok)}, coords=coords, attrs={"voxel_size_mm": (0.1, 0.2, 1.0)})
    return ds, xr.DataArray(lab, dims=DIMS, coords=coords)


def test_statistics_match_direct_numpy():
    ds, R = _study()
    t = roi.summarize(ds, R, labels={1: "tumour", 2: "muscle"}, thresholds={"r2star_per_s": [35.0]})
    assert len(t) == 4 * 3 * 2 * 2
    row = t[(t.animal == "m0") & (t.day == 0) & (t.roi == "tumour") & (t.variable == "r2star_per_s")].iloc[0]
    inl = R.values[0, 0] == 1
    ok = ds.fit_ok.values[0, 0]
    vals = ds.r2star_per_s.values[0, 0].astype(float)
    use = inl & ok & np.isfinite(vals)
    v = vals[use]
    assert row.n_voxels == inl.sum() and row.n_used == use.sum()
    assert row.n_excluded == (inl & ~ok).sum() and row.n_nonfinite == 1
    np.testing.assert_allclose([row["mean"], row.sd, row["median"], row.p10, row.p90, row["min"], row["max"]],
                               [v.mean(), v.std(ddof=1), np.median(v), np.percentile(v, 10), np.percentile(v, 90),
                                v.min(), v.max()], rtol=1e-12)
    np.testing.assert_allclose(row.frac_above_35, (v > 35).mean())
    np.testing.assert_allclose(row.volume_mm3, inl.sum() * 0.1 * 0.2 * 1.0)
    assert row.group == "c" and row.units == "1/s"
    adc_row = t[(t.variable == "adc_um2_per_ms")].iloc[0]
    assert np.isnan(adc_row.frac_above_35) and adc_row.units == "um2/ms"
    # missing session: rows kept, statistics NaN, flagged
    miss = t[(t.animal == "m3") & (t.day == 14)]
    assert (~miss.acquired).all() and miss["mean"].isna().all() and miss.volume_mm3.isna().all()


class _CountComputes(Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


def test_dask_maps_stay_lazy_and_compute_once():
    ds, R = _study(1)
    eager = roi.summarize(ds, R, labels={1: "tumour"}, thresholds={"adc_um2_per_ms": 0.9})
    lazy_ds, lazy_R = ds.chunk({"animal": 1, "day": 1}), R.chunk({"animal": 1, "day": 1})
    with _CountComputes() as cc, dask.config.set(scheduler="threads"):
        lazy = roi.summarize(lazy_ds, lazy_R, labels={1: "tumour"}, thresholds={"adc_um2_per_ms": 0.9})
    assert cc.n == 1, f"{cc.n} dask computes; expected one pass"
    pd.testing.assert_frame_equal(eager, lazy)
    # spatially chunked input is rechunked per scan, same answer
    odd = ds.chunk({"animal": 2, "day": 1, "y": 5})
    pd.testing.assert_frame_equal(eager, roi.summarize(odd, R.chunk({"y": 7}), labels={1: "tumour"},
                                                       thresholds={"adc_um2_per_ms": 0.9}))


def test_empty_label_warn_raise_ignore():
    ds, R = _study(2)
    R = R.copy()
    R[1, 2] = 0                                  # m1 day 14 has no tumour any more
    with pytest.warns(roi.RoiWarning, match="animal=m1, day=14, roi='tumour'"):
        t = roi.summarize(ds, R)
    row = t[(t.animal == "m1") & (t.day == 14)].iloc[0]
    assert row.n_voxels == 0 and np.isnan(row["mean"]) and row.acquired
    with pytest.raises(roi.RoiError, match="animal=m1, day=14"):
        roi.summarize(ds, R, empty="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roi.summarize(ds, R, empty="ignore")
    # all voxels excluded by fit_ok also counts as "no usable voxels"
    ds2 = ds.copy()
    ds2["fit_ok"] = ds.fit_ok.where(~((ds.animal == "m0") & (ds.day == 0)), False)
    with pytest.warns(roi.RoiWarning, match="all .* voxels excluded"):
        roi.summarize(ds2, _study(2)[1])


def test_missing_session_gives_no_warning():
    ds, R = _study(3)
    R = R.copy()
    R[3, 2] = 0   # not acquired anyway
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = roi.summarize(ds, R)
    assert (~t[(t.animal == "m3") & (t.day == 14)].acquired).all()


def test_volumes_and_histograms():
    ds, R = _study(4)
    v = roi.volumes(R, labels={1: "tumour", 2: "muscle"}, voxel_volume_mm3=0.5)
    assert list(v.columns) == ["animal", "group", "day", "acquired", "roi", "label", "n_voxels", "volume_mm3"]
    tum = v[(v.roi == "tumour") & v.acquired]
    np.testing.assert_allclose(tum.volume_mm3, 3 * 6 * 6 * 0.5)
    edges = np.linspace(0, 60, 13)
    h = roi.histograms(ds.chunk({"animal": 1}), R, variable="r2star_per_s", bins=edges)
    s = roi.summarize(ds, R, variables="r2star_per_s", percentiles=())
    tot = h.groupby(["animal", "day", "roi"], sort=False)["count"].sum().to_numpy()
    np.testing.assert_array_equal(tot, s.n_used.to_numpy())     # every used voxel lands in a bin here
    one = h[(h.animal == "m0") & (h.day == 0)]
    np.testing.assert_allclose(one.fraction.sum(), 1.0)
    h2 = roi.histograms(ds, R, variable="r2star_per_s", bins=8)  # range from the data
    assert h2.bin_low.min() >= np.nanmin(ds.r2star_per_s.values) - 1e-3 and h2["count"].sum() == s.n_used.sum()


@settings(max_examples=15, deadline=None)
@given(seed=st_h.integers(0, 1000), frac_ok=st_h.floats(0.05, 1.0), pcts=st_h.lists(st_h.floats(0, 100), min_size=1,
                                                                                       max_size=4, unique=True))
def test_kernel_invariants(seed, frac_ok, pcts):
    rng = np.random.default_rng(seed)
    vals = rng.normal(size=(3, 2, 50))
    ok = rng.random((3, 50)) < frac_ok
    labs = rng.integers(0, 3, (3, 50))
    thr = np.array([[0.0], [np.nan]])
    out = roi.roi_stats_kernel(vals, ok, labs, [1, 2], sorted(pcts), thr)
    names = roi._stat_names(sorted(pcts), [0.0])
    o = dict(zip(names, np.moveaxis(out, -1, 0)))
    np.testing.assert_array_equal(o["n_used"] + o["n_excluded"] + o["n_nonfinite"], o["n_voxels"])
    has = o["n_used"] > 0
    assert np.all(o["min"][has] <= o["mean"][has] + 1e-12) and np.all(o["mean"][has] <= o["max"][has] + 1e-12)
    P = np.stack([o[f"p{p:g}"] for p in sorted(pcts)], -1)[has]
    assert np.all(np.diff(P, axis=-1) >= -1e-12)
    assert np.all(np.isnan(o["frac_above_0"][..., 1]))            # variable 2 has no threshold
    assert np.all(np.isnan(o["mean"][~has]))


@settings(max_examples=200, deadline=None)
@given(vals=st_h.lists(st_h.floats(-1e6, 1e6, allow_nan=False, width=64), min_size=1, max_size=40),
       dup=st_h.booleans(),
       pcts=st_h.lists(st_h.one_of(st_h.sampled_from([0.0, 50.0, 100.0, 25.0, 75.0]), st_h.floats(0, 100)),
                       max_size=6))
def test_order_stats_are_numpys_to_the_bit(vals, dup, pcts):
    """One partition gives numpy.median / min / max / percentile (type 7) exactly, ties and n = 1, 2 included."""
    g = np.asarray(vals + (vals[: len(vals) // 2] if dup else []), dtype=np.float64)
    pct = np.asarray(pcts, dtype=float)
    out = np.full(pct.size, np.nan)
    med, lo, hi = roi._order_stats(g.copy(), np.true_divide(pct, 100), out)
    assert med == np.median(g) and lo == g.min() and hi == g.max()
    np.testing.assert_array_equal(out, np.percentile(g, pct) if pct.size else out)


@settings(max_examples=60, deadline=None)
@given(dtype=st_h.sampled_from(["int8", "uint8", "int16", "uint16", ">i2", ">u2", "int32", "float32"]),
       seed=st_h.integers(0, 10_000), wanted=st_h.lists(st_h.integers(-300, 70_000), min_size=1, max_size=5))
def test_label_lookup_is_isin(dtype, seed, wanted):
    """The table lookup of 8/16-bit labels is numpy.isin, negative and out-of-range wanted values included."""
    info = np.iinfo(dtype) if dtype != "float32" else None
    rng = np.random.default_rng(seed)
    lo, hi = (info.min, info.max) if info else (-5, 5)
    labels = rng.integers(lo, hi, size=500, endpoint=True).astype(dtype)
    labels[:len(wanted)] = np.clip(wanted, lo, hi)
    w = np.asarray(wanted)
    np.testing.assert_array_equal(roi._in_labels(labels, w), np.isin(labels, w))


def test_label_mask_is_isin_lazy_and_eager():
    """roi.label_mask gives xarray's isin booleans, one lazy task per chunk for a Dask-backed label image."""
    rng = np.random.default_rng(3)
    lab = xr.DataArray(rng.integers(-2, 9, size=(3, 4, 5, 6)).astype("int16"), dims=("animal", "z", "y", "x"),
                       coords={"animal": ["a", "b", "c"]}, attrs={"labels": "1 tumour"})
    for wanted in ([1, 2, 6, 7], {1: "tumour", 5: "background"}, [-1], []):
        ref = lab.isin(list(wanted))
        eager = roi.label_mask(lab, wanted)
        xr.testing.assert_identical(eager, ref)
        lazy = roi.label_mask(lab.chunk({"animal": 1}), wanted)
        assert lazy.chunks == ((1, 1, 1), (4,), (5,), (6,)) and lazy.dtype == bool
        xr.testing.assert_identical(lazy.compute(), eager)
    floats = lab.astype("float32")  # not an 8/16-bit integer image: numpy.isin
    np.testing.assert_array_equal(roi.label_mask(floats, [1, 2]).values, np.isin(floats.values, [1, 2]))


def test_kernel_order_statistics_match_numpy_on_masked_rows():
    """Per label and variable, the kernel's median and percentiles are numpy's on the used voxels, to the bit."""
    rng = np.random.default_rng(3)
    vals = rng.gamma(3.0, 10.0, size=(2, 3, 4000))
    vals[0, 1, ::97] = np.nan
    ok = rng.random((2, 4000)) > 0.2
    labs = rng.integers(0, 4, (2, 4000))
    pcts = [5.0, 10.0, 33.3, 90.0, 100.0]
    out = roi.roi_stats_kernel(vals, ok, labs, [1, 3], pcts, np.full((3, 0), np.nan))
    names = roi._stat_names(pcts, [])
    for i in range(2):
        for li, lab in enumerate([1, 3]):
            for j in range(3):
                v = vals[i, j][(labs[i] == lab) & ok[i] & np.isfinite(vals[i, j])]
                o = dict(zip(names, out[i, li, j]))
                assert o["median"] == np.median(v) and o["min"] == v.min() and o["max"] == v.max()
                np.testing.assert_array_equal([o[f"p{p:g}"] for p in pcts], np.percentile(v, pcts))
                assert o["mean"] == np.sum(v) / v.size


def test_bad_inputs():
    ds, R = _study(5)
    cases = [
        (lambda: roi.summarize(ds, R.values), "DataArray"),
        (lambda: roi.summarize(ds.isel(x=slice(0, 5)), R), "voxels along 'x'"),
        (lambda: roi.summarize(ds, R, variables="t2_ms"), "t2_ms"),
        (lambda: roi.summarize(ds, R, labels={}), "non-empty"),
        (lambda: roi.summarize(ds, R, labels={"tumour": 1}), "not an integer"),
        (lambda: roi.summarize(ds, R, percentiles=(50, 101)), "percentiles"),
        (lambda: roi.summarize(ds, R, thresholds={"t2_ms": 3}), "t2_ms"),
        (lambda: roi.summarize(ds.drop_attrs(), R), "voxel_volume_mm3"),
        (lambda: roi.summarize(ds, R, voxel_volume_mm3=-1), "positive"),
        (lambda: roi.summarize(ds, R, empty="maybe"), "empty"),
        (lambda: roi.summarize(ds, R.astype(bool)), "integer labels"),
        (lambda: roi.histograms(ds, R), "one variable"),
        (lambda: roi.histograms(ds, R, variable="r2star_per_s", bins=[1, 0.5]), "increasing"),
        (lambda: roi.summarize(ds.fit_ok.to_dataset(), R), "no numeric variable"),
    ]
    for fn, match in cases:
        with pytest.raises(roi.RoiError, match=match):
            fn()
    assert issubclass(roi.RoiError, StudyError)
