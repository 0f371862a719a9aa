"""CEST: B0 (WASSR) correction, MTRasym, multi-pool Lorentzian fits, adapters.

Truth comes from the forward model :func:`studylib.models.cest.zspectrum`: LATEST-like
spectra at 9.4 T (direct water saturation, lactate -OH at 0.4 ppm, a broad asymmetric MT
background), shifted by known B0 offsets.
"""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from studylib.errors import FitInputError, StudyError
from studylib.fit.cest import cest_b0_map, cest_change, corrected_zspectrum, lorentzian_pools, mtr_asym
from studylib.models import cest as mc
from studylib.models.noise import add_rician_noise

OFFSETS = np.round(np.arange(-1.5, 1.5001, 0.1), 4)  # CEST offsets (ppm), 31 points
WASSR = np.round(np.arange(-1.0, 1.0001, 0.05), 4)  # WASSR offsets (ppm), 41 points
# amplitude (fraction), centre (ppm), FWHM (ppm): water, lactate, MT
POOLS = np.array([[0.85, 0.0, 0.9], [0.03, 0.4, 0.35], [0.10, -1.0, 12.0]])
WASSR_POOL = np.array([[0.8, 0.0, 0.35]])  # low B1: narrow, symmetric direct saturation


def _spectra(offsets, pools, b0):
    b0 = np.asarray(b0, dtype=float)
    p = np.broadcast_to(pools, b0.shape + pools.shape)
    return mc.zspectrum(offsets, p[..., 0], p[..., 1], p[..., 2], b0)


def _truth_mtr(delta=0.4):
    z = _spectra(OFFSETS, POOLS, np.zeros(1))
    return 100.0 * (np.interp(-delta, OFFSETS, z[0]) - np.interp(delta, OFFSETS, z[0]))


def _exact_truth(delta=0.4):
    d = np.array([-delta, delta])
    z = _spectra(d, POOLS, np.zeros(1))[0]
    return 100.0 * (z[0] - z[1])


# ----------------------------------------------------------------------------- the must-show test


def test_b0_correction_recovers_mtrasym_at_0p4_under_0p3ppm_offsets():
    """Under +-0.3 ppm B0 offsets, WASSR-corrected MTRasym(0.4 ppm) is within 0.5 pp of truth,
    the uncorrected value is far off (tens of pp)."""
    truth = _exact_truth(0.4)
    assert 2.0 < truth < 6.0  # lactate + MT asymmetry: a few % as in LATEST
    b0 = np.array([-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3])
    z = _spectra(OFFSETS, POOLS, b0)
    w = _spectra(WASSR, WASSR_POOL, b0)
    b0_est, ok, _ = mc.b0_shift(w, WASSR)
    assert ok.all()
    np.testing.assert_allclose(b0_est, b0, atol=1e-3)
    corrected, _ = mc.mtr_asym_values(z, OFFSETS, b0_ppm=b0_est, deltas_ppm=(0.4,))
    raw, _ = mc.mtr_asym_values(z, OFFSETS, deltas_ppm=(0.4,))
    assert np.all(np.abs(corrected[:, 0] - truth) < 0.5)
    off = np.abs(raw[:, 0] - truth)
    assert np.all(off[np.abs(b0) >= 0.1] > 5.0)  # uncorrected: wrong by > 5 pp
    assert np.all(off[np.abs(b0) >= 0.3] > 20.0)


def test_b0_correction_noisy_roi_through_adapters():
    """Noisy images (SNR 300 on S0, WASSR SNR 100), random B0 in +-0.3 ppm per voxel:
    the ROI-mean corrected MTRasym(0.4) is within 0.5 pp; uncorrected is off."""
    rng = np.random.default_rng(7)
    shape = (2, 1, 12, 12)  # animal, z, y, x
    yy = np.linspace(-0.3, 0.3, 12)
    b0 = np.broadcast_to(yy[:, None] * 1.0, (12, 12)) + 0.0 * yy[None, :]
    b0 = np.broadcast_to(b0, shape)  # a B0 gradient across y from -0.3 to +0.3 ppm
    s0 = 1000.0
    z = _spectra(OFFSETS, POOLS, b0) * s0
    w = _spectra(WASSR, WASSR_POOL, b0) * s0
    z = add_rician_noise(z, s0 / 300.0, rng)
    w = add_rician_noise(w, s0 / 100.0, rng)
    m0 = add_rician_noise(np.full(shape, s0), s0 / 300.0, rng)
    dims = ("animal", "z", "y", "x")
    sig = xr.DataArray(np.moveaxis(z, -1, 1), dims=("animal", "offset") + dims[1:], coords={"offset": OFFSETS})
    wsig = xr.DataArray(np.moveaxis(w, -1, 1), dims=("animal", "offset") + dims[1:], coords={"offset": WASSR},
                        attrs={"field_T": 9.4})
    m0 = xr.DataArray(m0, dims=dims)
    b0map = cest_b0_map(wsig)
    assert bool(b0map.fit_ok.all())
    err = np.abs(b0map.b0_ppm.values - b0)
    assert np.median(err) < 0.01
    np.testing.assert_allclose(b0map.b0_hz.values, b0map.b0_ppm.values * 42.577478 * 9.4)
    assert b0map.b0_hz.attrs["units"] == "Hz"
    corr = mtr_asym(sig, m0, b0_ppm=b0map.b0_ppm, deltas_ppm=(0.4,))
    raw = mtr_asym(sig, m0, deltas_ppm=(0.4,))
    truth = _exact_truth(0.4)
    c = corr.mtr_asym.sel(delta=0.4)
    assert abs(float(c.mean()) - truth) < 0.5
    # uncorrected: the voxels with |B0| >= 0.2 ppm are off by far more than 0.5 pp on average
    far = np.abs(b0) >= 0.2
    assert float(np.abs(raw.mtr_asym.sel(delta=0.4).values[far] - truth).mean()) > 10.0
    assert float(np.abs(c.values[far] - truth).mean()) < float(np.abs(raw.mtr_asym.sel(delta=0.4).values[far]
                                                                        - truth).mean()) / 10


def test_minimum_method_on_cest_is_biased_by_lactate_but_wassr_is_not():
    """Documented limitation: the Z-spectrum minimum is pulled towards the 0.4 ppm pool."""
    offs = np.round(np.arange(-1.5, 1.5001, 0.05), 4)
    z = _spectra(offs, POOLS[:2], np.zeros(1))  # water + lactate only
    est, ok, _ = mc.b0_shift(z, offs, method="minimum")
    assert ok.all() and est[0] > 1e-3  # pulled towards lactate (positive)
    w = _spectra(WASSR, WASSR_POOL, np.zeros(1))
    for method in ("mscf", "minimum"):
        e, ok, _ = mc.b0_shift(w, WASSR, method=method)
        assert ok.all() and abs(e[0]) < 1e-4


# ----------------------------------------------------------------------------- B0 / MTRasym properties


@settings(max_examples=25, deadline=None)
@given(b0=st.floats(-0.4, 0.4), fwhm=st.floats(0.25, 1.2), amp=st.floats(0.4, 0.95),
       method=st.sampled_from(["mscf", "minimum"]))
def test_b0_shift_recovers_any_shift_of_a_symmetric_line(b0, fwhm, amp, method):
    w = _spectra(WASSR, np.array([[amp, 0.0, fwhm]]), np.array([b0]))
    est, ok, dip = mc.b0_shift(w * 537.0, WASSR, method=method)
    assert ok[0]
    assert abs(est[0] - b0) < 2e-3
    assert 0.3 < dip[0] <= 1.0


@settings(max_examples=25, deadline=None)
@given(b0=st.floats(-0.3, 0.3), fwhm=st.floats(0.4, 1.5), delta=st.floats(0.1, 0.8))
def test_symmetric_spectrum_has_zero_mtrasym_once_corrected(b0, fwhm, delta):
    z = _spectra(OFFSETS, np.array([[0.9, 0.0, fwhm]]), np.array([b0]))
    corrected, _ = mc.mtr_asym_values(z, OFFSETS, b0_ppm=np.array([b0]), deltas_ppm=(delta,))
    assert abs(corrected[0, 0]) < 0.5


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e4), b0=st.floats(-0.3, 0.3))
def test_mtrasym_is_invariant_to_receiver_scale(scale, b0):
    z = _spectra(OFFSETS, POOLS, np.array([b0]))
    y1 = np.concatenate([z * 1000.0, [[1000.0, b0]]], axis=1)
    y2 = np.concatenate([z * 1000.0 * scale, [[1000.0 * scale, b0]]], axis=1)
    kw = dict(offsets_ppm=OFFSETS, deltas_ppm=(0.4, 1.0), bands_ppm=((0.2, 0.6),), has_b0=True)
    r1 = mc.mtr_asym_kernel(y1, None, **kw)
    r2 = mc.mtr_asym_kernel(y2, None, **kw)
    for k in r1:
        np.testing.assert_allclose(r1[k], r2[k], rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(b0=st.floats(-0.3, 0.3))
def test_shift_zspectrum_round_trip_and_nan_outside(b0):
    z = _spectra(OFFSETS, POOLS, np.array([b0]))
    corr = mc.shift_zspectrum(z, OFFSETS, np.array([b0]))
    ref = _spectra(OFFSETS, POOLS, np.zeros(1))
    inside = np.isfinite(corr[0])
    assert np.all(np.abs(OFFSETS[~inside] + b0) > 1.5 - 1e-9)  # only points pushed off the grid are NaN
    np.testing.assert_allclose(corr[0, inside], ref[0, inside], atol=5e-3)


def test_band_integral_matches_point_values():
    z = _spectra(OFFSETS, POOLS, np.zeros(3))
    pts, band = mc.mtr_asym_values(z, OFFSETS, deltas_ppm=np.linspace(0.2, 0.6, 201), bands_ppm=[(0.2, 0.6)],
                                   band_points=201)
    np.testing.assert_allclose(band[:, 0], np.trapezoid(pts, np.linspace(0.2, 0.6, 201), axis=1), rtol=1e-6)
    assert np.all(band[:, 0] > 0)


def test_linear_interpolation_option_is_less_accurate_but_works():
    b0 = np.array([0.13, -0.27])
    z = _spectra(OFFSETS, POOLS, b0)
    cub, _ = mc.mtr_asym_values(z, OFFSETS, b0_ppm=b0, kind="cubic")
    lin, _ = mc.mtr_asym_values(z, OFFSETS, b0_ppm=b0, kind="linear")
    truth = _exact_truth()
    assert np.all(np.abs(cub[:, 0] - truth) < np.abs(lin[:, 0] - truth) + 1e-12)
    assert np.all(np.isfinite(lin))


# ----------------------------------------------------------------------------- Lorentzian pools


def test_lorentzian_pools_recover_lactate_and_water():
    rng = np.random.default_rng(3)
    b0 = rng.uniform(-0.3, 0.3, 200)
    offs = np.round(np.arange(-4.0, 4.0001, 0.1), 4)
    z = _spectra(offs, POOLS, b0) + rng.normal(0, 0.002, (200, offs.size))
    params, rmse, ok = mc.fit_lorentzian_pools(z, offs, mc.LATEST_POOLS, b0_ppm=b0)
    assert ok.mean() > 0.97
    med = np.nanmedian(params, axis=0)
    assert abs(med[0] - 0.85) < 0.02 and abs(med[1]) < 0.01 and abs(med[2] - 0.9) < 0.05
    assert abs(med[3] - 0.03) < 0.005 and abs(med[4] - 0.4) < 0.03
    assert np.nanmedian(rmse) < 0.0025
    # adapter, without B0 map: the water centre absorbs the shift
    da = xr.DataArray(z[:40], dims=("vox", "offset"), coords={"offset": offs})
    res = lorentzian_pools(da, normalized=True, pools=mc.LATEST_POOLS[:2] + (mc.LATEST_POOLS[2],))
    assert res.water_amplitude.attrs["units"] == "%"
    ok = res.fit_ok.values
    np.testing.assert_allclose(res.water_center_ppm.values[ok], b0[:40][ok], atol=0.02)


def test_lorentzian_pools_bad_voxels_are_nan():
    z = _spectra(OFFSETS, POOLS[:2], np.zeros(3))
    z[1, 4] = np.nan
    params, rmse, ok = mc.fit_lorentzian_pools(z, OFFSETS, mc.LATEST_POOLS[:2])
    assert ok.tolist() == [True, False, True]
    assert np.all(np.isnan(params[1])) and np.isnan(rmse[1])


# ----------------------------------------------------------------------------- adapters: dims, mask, dask


def _study(seed=0, shape=(2, 2, 1, 6, 5)):
    rng = np.random.default_rng(seed)
    b0 = rng.uniform(-0.3, 0.3, shape)
    z = _spectra(OFFSETS, POOLS, b0) * 800.0
    w = _spectra(WASSR, WASSR_POOL, b0) * 800.0
    dims = ("animal", "day", "z", "y", "x")
    coords = {"animal": ["m1", "m2"], "day": [0, 1]}
    sig = xr.DataArray(np.moveaxis(z, -1, 2).astype(np.float32), dims=dims[:2] + ("offset",) + dims[2:],
                       coords={**coords, "offset": OFFSETS})
    wsig = xr.DataArray(np.moveaxis(w, -1, 2), dims=sig.dims, coords={**coords, "offset": WASSR})
    m0 = xr.DataArray(np.full(shape, 800.0, dtype=np.float32), dims=dims, coords=coords)
    return sig, wsig, m0, b0


def test_dask_equals_numpy_and_is_lazy():
    sig, wsig, m0, _ = _study()
    mask = xr.DataArray(np.random.default_rng(1).random(m0.shape) > 0.3, dims=m0.dims)
    b_np = cest_b0_map(wsig, mask=mask)
    r_np = mtr_asym(sig, m0, b0_ppm=b_np.b0_ppm, deltas_ppm=(0.4, 1.0), bands_ppm=[(0.2, 0.6)], mask=mask)
    c = {"animal": 1, "day": 1}
    b_dk = cest_b0_map(wsig.chunk(c), mask=mask.chunk(c))
    r_dk = mtr_asym(sig.chunk(c), m0.chunk(c), b0_ppm=b_dk.b0_ppm, deltas_ppm=(0.4, 1.0), bands_ppm=[(0.2, 0.6)],
                    mask=mask.chunk(c))
    assert isinstance(r_dk.mtr_asym.data, dsa.Array) and isinstance(b_dk.b0_ppm.data, dsa.Array)
    xr.testing.assert_allclose(b_dk.compute(), b_np)
    xr.testing.assert_allclose(r_dk.compute(), r_np)
    # outside the mask: NaN and fit_ok False
    assert not r_np.fit_ok.values[~mask.values].any()
    assert np.all(np.isnan(r_np.mtr_asym.values[~mask.values]))
    assert r_np.fit_ok.values[mask.values].all()
    lp_np = lorentzian_pools(sig, m0, b0_ppm=b_np.b0_ppm, pools=mc.LATEST_POOLS[:2], mask=mask)
    lp_dk = lorentzian_pools(sig.chunk(c), m0.chunk(c), b0_ppm=b_dk.b0_ppm, pools=mc.LATEST_POOLS[:2],
                             mask=mask.chunk(c))
    assert isinstance(lp_dk.lactate_amplitude.data, dsa.Array)
    xr.testing.assert_allclose(lp_dk.compute(), lp_np)


def test_any_leading_dims_and_dataset_input():
    sig, wsig, m0, b0 = _study()
    ds = xr.Dataset({"signal": sig, "m0": m0})
    r = mtr_asym(ds, b0_ppm=xr.DataArray(b0, dims=m0.dims, coords=m0.coords))
    assert r.mtr_asym.dims == ("animal", "day", "z", "y", "x", "delta")
    assert r.mtr_asym.attrs["units"] == "%" and r.delta.attrs["units"] == "ppm"
    assert np.all(np.abs(r.mtr_asym.values - _exact_truth()) < 0.5)
    vals = np.moveaxis(sig.values, 2, -1).reshape(-1, OFFSETS.size)
    flat = xr.DataArray(vals, dims=("vox", "offset"), coords={"offset": OFFSETS})
    r1 = mtr_asym(flat / 800.0, normalized=True, b0_ppm=xr.DataArray(b0.reshape(-1), dims="vox"))
    np.testing.assert_allclose(r1.mtr_asym.values[:, 0], r.mtr_asym.values.reshape(-1), atol=1e-4)


def test_missing_session_and_nan_voxels_give_fit_ok_false():
    sig, wsig, m0, b0 = _study()
    sig = sig.copy()
    wsig = wsig.copy()
    sig[1, 1] = np.nan  # animal m2 missed day 1
    wsig[1, 1] = np.nan
    m0 = m0.copy()
    m0[0, 0, 0, 0, 0] = 0.0  # unusable S0 in one voxel
    b = cest_b0_map(wsig)
    assert not b.fit_ok.values[1, 1].any() and b.fit_ok.values[0].all()
    r = mtr_asym(sig, m0, b0_ppm=b.b0_ppm)
    assert not r.fit_ok.values[1, 1].any()
    assert not r.fit_ok.values[0, 0, 0, 0, 0]
    assert np.isnan(r.mtr_asym.values[0, 0, 0, 0, 0]).all()
    assert r.fit_ok.values.sum() == r.fit_ok.size - r.fit_ok.values[1, 1].size - 1


def test_b0_out_of_search_range_is_not_ok():
    w = _spectra(WASSR, WASSR_POOL, np.array([0.0, 0.8]))
    est, ok, _ = mc.b0_shift(w, WASSR, search_ppm=0.4)
    assert ok.tolist() == [True, False] and np.isnan(est[1])
    flat = _spectra(WASSR, np.array([[0.0, 0.0, 1.0]]), np.zeros(1))  # no dip at all
    _, ok, _ = mc.b0_shift(flat + 1.0, WASSR)
    assert not ok[0]


def test_corrected_zspectrum_and_change_map():
    sig, wsig, m0, b0 = _study()
    b0da = xr.DataArray(b0, dims=m0.dims, coords=m0.coords)
    cz = corrected_zspectrum(sig, m0, b0_ppm=b0da)
    assert cz.dims[-1] == "offset" and cz.attrs["units"] == "%"
    ref = 100 * _spectra(OFFSETS, POOLS, np.zeros(1))[0]
    at = cz.sel(offset=0.4).values
    np.testing.assert_allclose(at, ref[np.isclose(OFFSETS, 0.4)][0], atol=0.3)
    czd = corrected_zspectrum(sig.chunk({"animal": 1}), m0.chunk({"animal": 1}), b0_ppm=b0da)
    assert isinstance(czd.data, dsa.Array)
    xr.testing.assert_allclose(czd.compute(), cz)
    r = mtr_asym(sig, m0, b0_ppm=b0da)
    ch = cest_change(r.mtr_asym.sel(delta=0.4), pre_day=0, post_day=1)
    assert ch.dims == ("animal", "z", "y", "x") and ch.attrs["units"] == "%"
    np.testing.assert_allclose(ch.values, r.mtr_asym.sel(delta=0.4, day=1).values
                               - r.mtr_asym.sel(delta=0.4, day=0).values)
    with pytest.raises(FitInputError, match="post_day=5"):
        cest_change(r.mtr_asym, pre_day=0, post_day=5)


# ----------------------------------------------------------------------------- bad input


def test_bad_offsets_raise_clear_errors():
    sig, wsig, m0, _ = _study()
    shuffled = sig.isel(offset=np.r_[1, 0, 2:OFFSETS.size])
    with pytest.raises(FitInputError, match="not sorted ascending.*sortby"):
        mtr_asym(shuffled, m0)
    dup = sig.assign_coords(offset=np.r_[OFFSETS[:-1], OFFSETS[-2]]).isel(offset=np.r_[0:OFFSETS.size])
    with pytest.raises(FitInputError, match="duplicated"):
        cest_b0_map(dup.sortby("offset"))
    pos = sig.sel(offset=sig.offset >= 0)
    with pytest.raises(FitInputError, match="both sides of water"):
        mtr_asym(pos, m0)
    with pytest.raises(FitInputError, match=r"\+-2 ppm pair is not acquired"):
        mtr_asym(sig, m0, deltas_ppm=(0.4, 2.0))
    with pytest.raises(FitInputError, match="band"):
        mtr_asym(sig, m0, bands_ppm=[(0.6, 0.2)])
    with pytest.raises(FitInputError, match="band"):
        mtr_asym(sig, m0, bands_ppm=[(0.5, 3.0)])
    with pytest.raises(FitInputError, match="positive"):
        mtr_asym(sig, m0, deltas_ppm=(-0.4,))
    with pytest.raises(FitInputError, match="no 'offset' dimension"):
        mtr_asym(sig.rename(offset="ppm"), m0)
    with pytest.raises(FitInputError, match="no 'offset' coordinate"):
        cest_b0_map(sig.drop_vars("offset"))
    with pytest.raises(FitInputError, match="NaN or Inf"):
        cest_b0_map(sig.assign_coords(offset=np.r_[OFFSETS[:-1], np.nan]))


def test_missing_reference_and_other_bad_arguments():
    sig, wsig, m0, b0 = _study()
    with pytest.raises(FitInputError, match="no reference volume"):
        mtr_asym(sig)
    with pytest.raises(FitInputError, match="no reference volume"):
        lorentzian_pools(xr.Dataset({"signal": sig}))
    with pytest.raises(FitInputError, match="m0 has 2 along 'day'|m0 has"):
        mtr_asym(sig, m0.isel(day=[0, 0, 1]))
    with pytest.raises(FitInputError, match="b0_ppm must not have the 'offset'"):
        mtr_asym(sig, m0, b0_ppm=sig)
    with pytest.raises(FitInputError, match="interp"):
        mtr_asym(sig, m0, interp="quadratic")
    with pytest.raises(FitInputError, match="method"):
        cest_b0_map(wsig, method="fft")
    with pytest.raises(FitInputError, match="search_ppm"):
        cest_b0_map(wsig, search_ppm=5.0)
    with pytest.raises(FitInputError, match="pool names"):
        lorentzian_pools(sig, m0, pools=(mc.Pool("water", 0.8, 0, 1), mc.Pool("water", 0.1, 0.4, 0.3)))
    with pytest.raises(FitInputError, match="outside its bounds"):
        lorentzian_pools(sig, m0, pools=(mc.Pool("water", 2.0, 0, 1),))
    with pytest.raises(FitInputError, match="DataArray"):
        mtr_asym(np.zeros((3, 4)), m0)
    with pytest.raises(StudyError, match="mask"):
        mtr_asym(sig, m0, mask=np.ones((2, 2)))
    with pytest.raises(FitInputError, match="at least 3"):
        mc.check_offsets([0.0, 1.0])


def test_load_study_like_coords_with_mask_and_dask():
    """Non-index coords (acquired, group) survive, and do not break the masked Dask path."""
    sig, wsig, m0, b0 = _study()
    extra = {"group": ("animal", np.array(["pyruvate", "pyruvate"], dtype=object)),
             "acquired": (("animal", "day"), np.ones((2, 2), bool))}
    sig, wsig, m0 = (v.assign_coords(extra).chunk({"animal": 1, "day": 1}) for v in (sig, wsig, m0))
    mask = (m0 > 0)
    b = cest_b0_map(wsig, mask=mask)
    r = mtr_asym(sig, m0, b0_ppm=b.b0_ppm, mask=mask)
    lp = lorentzian_pools(sig, m0, b0_ppm=b.b0_ppm, mask=mask, pools=mc.LATEST_POOLS[:2])
    for ds in (b, r, lp):
        assert "acquired" in ds.coords and "group" in ds.coords
    r = r.compute()
    assert r.fit_ok.all() and np.all(np.abs(r.mtr_asym.values - _exact_truth()) < 0.5)


def test_end_to_end_on_ci_study(ci_study):
    """load_study -> WASSR B0 map -> MTRasym: tumour means match the simulator's truth."""
    import pandas as pd

    from studylib.io import load_study

    c = load_study(ci_study, "lactate_cest", "CEST")
    w = load_study(ci_study, "lactate_cest", "WASSR")
    tumour = c.roi == 1
    b0 = cest_b0_map(w.signal.sortby("offset"), mask=tumour)
    r = mtr_asym(c.signal.sortby("offset"), c.m0, b0_ppm=b0.b0_ppm, mask=tumour).compute()
    raw = mtr_asym(c.signal.sortby("offset"), c.m0, mask=tumour).compute()
    est = r.mtr_asym.sel(delta=0.4).where(tumour).mean(("z", "y", "x")).to_series()
    est_raw = raw.mtr_asym.sel(delta=0.4).where(tumour).mean(("z", "y", "x")).to_series()
    truth = pd.read_csv(ci_study.parent / "truth" / "lactate_cest" / "sessions.csv").set_index(["animal", "day"])
    t = truth["tumour_mtrasym_0p4_pct"].reindex(est.index)
    assert np.all(np.abs(est - t) < 0.5)
    assert np.abs(est_raw - t).max() > 2.0  # the simulated B0 (+-0.3 ppm) spoils uncorrected values


# ----------------------------------------------------------------------------- MTRasym normalisation


def _own_z(d, b0=0.0):
    """``Z(d) = 1 - sum_i A_i (w_i/2)^2 / ((w_i/2)^2 + (d - b0 - c_i)^2)`` written out here (not the kernel's
    :func:`zspectrum`), for the normalisation tests."""
    x = np.asarray(d, dtype=float) - np.asarray(b0, dtype=float)
    z = np.ones_like(x)
    for a, c, w in POOLS:
        z = z - a * (w / 2) ** 2 / ((w / 2) ** 2 + (x - c) ** 2)
    return z


def test_mtrasym_normalisations_differ_by_s0_over_s_minus_delta():
    rng = np.random.default_rng(3)
    s0 = rng.uniform(400.0, 1600.0, 12)
    sig = xr.DataArray(s0[:, None] * _own_z(OFFSETS[None, :]), dims=("v", "offset"), coords={"offset": OFFSETS})
    m0 = xr.DataArray(s0, dims=("v",))
    by_s0 = mtr_asym(sig, m0, deltas_ppm=(0.4, 0.8))
    by_ref = mtr_asym(sig, m0, deltas_ppm=(0.4, 0.8), normalisation="negative_offset")
    for d in (0.4, 0.8):
        s_minus = s0 * _own_z(-d)  # S(-D): +-0.4 and +-0.8 ppm are acquired offsets, no interpolation error
        s_plus = s0 * _own_z(d)
        np.testing.assert_allclose(by_s0.mtr_asym.sel(delta=d).values, 100 * (s_minus - s_plus) / s0, rtol=1e-9)
        np.testing.assert_allclose(by_ref.mtr_asym.sel(delta=d).values, 100 * (s_minus - s_plus) / s_minus, rtol=1e-9)
        # the expected factor between the two: S0 / S(-D) = 1 / Z(-D) (2.35 at 0.4 ppm, near water)
        ratio = by_ref.mtr_asym.sel(delta=d).values / by_s0.mtr_asym.sel(delta=d).values
        np.testing.assert_allclose(ratio, s0 / s_minus, rtol=1e-9)
    assert 1 / _own_z(-0.4) > 2  # the two normalisations differ a lot near water (factor 2.35 here)
    # the attrs say which normalisation was used
    assert by_s0.attrs["normalisation"] == "s0" and by_ref.attrs["normalisation"] == "negative_offset"
    assert by_s0.attrs["normalisation_formula"] == "MTRasym(D) = 100 [S(-D) - S(+D)] / S0"
    assert by_ref.attrs["normalisation_formula"] == "MTRasym(D) = 100 [S(-D) - S(+D)] / S(-D)"
    assert by_s0.mtr_asym.attrs["long_name"].endswith("(% of S0)")
    assert by_ref.mtr_asym.attrs["long_name"].endswith("(% of S(-D))")
    # the default is S0, bit for bit
    default = mtr_asym(sig, m0, deltas_ppm=(0.4, 0.8))
    np.testing.assert_array_equal(default.mtr_asym.values, by_s0.mtr_asym.values)
    # S0 cancels in the S(-D) normalisation: no m0 needed, same numbers
    no_m0 = mtr_asym(sig, deltas_ppm=(0.4, 0.8), normalisation="negative_offset")
    np.testing.assert_allclose(no_m0.mtr_asym.values, by_ref.mtr_asym.values, rtol=1e-12)
    with pytest.raises(FitInputError, match="no reference volume"):
        mtr_asym(sig, deltas_ppm=(0.4,))  # ... but the S0 normalisation does need it


def test_mtrasym_normalisation_with_b0_shift_and_bands():
    """With a per-voxel B0 shift the S(-D) of the ratio is the corrected one, Z(-D + dB0) of the measured
    spectrum; bands carry the normalisation too."""
    b0 = np.linspace(-0.25, 0.25, 9)
    s0 = np.full(b0.shape, 1000.0)
    dense = np.round(np.arange(-1.5, 1.5001, 0.05), 4)
    sig = xr.DataArray(s0[:, None] * _own_z(dense[None, :], b0[:, None]), dims=("v", "offset"),
                       coords={"offset": dense})
    m0 = xr.DataArray(s0, dims=("v",))
    b0_da = xr.DataArray(b0, dims=("v",))
    kw = dict(b0_ppm=b0_da, deltas_ppm=(0.4,), bands_ppm=[(0.2, 0.6)])
    by_s0 = mtr_asym(sig, m0, **kw)
    by_ref = mtr_asym(sig, m0, normalisation="negative_offset", **kw)
    ratio = by_ref.mtr_asym.sel(delta=0.4).values / by_s0.mtr_asym.sel(delta=0.4).values
    np.testing.assert_allclose(ratio, 1 / _own_z(-0.4), rtol=2e-3)  # corrected S(-D)/S0 = Z(-0.4) of the truth
    exact = 100 * (_own_z(-0.4) - _own_z(0.4)) / _own_z(-0.4)
    np.testing.assert_allclose(by_ref.mtr_asym.sel(delta=0.4).values, exact, rtol=5e-3)
    grid = np.linspace(0.2, 0.6, 401)
    band_exact = np.trapezoid(100 * (_own_z(-grid) - _own_z(grid)) / _own_z(-grid), grid)
    np.testing.assert_allclose(by_ref.mtr_asym_band.values[:, 0], band_exact, rtol=1e-2)
    assert "S(-D)" in by_ref.mtr_asym_band.attrs["long_name"]
    assert bool(by_ref.fit_ok.all())


def test_mtrasym_normalisation_bad_values_and_kernel_guards():
    sig = xr.DataArray(_own_z(OFFSETS)[None, :] * 100.0, dims=("v", "offset"), coords={"offset": OFFSETS})
    for bad in ("S0", "s(-d)", None, "m0"):
        with pytest.raises(FitInputError, match="normalisation must be one of"):
            mtr_asym(sig, xr.DataArray([100.0], dims=("v",)), normalisation=bad)
    # a non-positive S(-D) has no reference: NaN and not ok (the S0 path is unaffected)
    z = np.vstack([_own_z(OFFSETS), _own_z(OFFSETS)])
    z[1, OFFSETS == -0.4] = 0.0
    out = mc.mtr_asym_kernel(z, OFFSETS, deltas_ppm=(0.4,), kind="linear", normalisation="negative_offset")
    assert np.isfinite(out["mtr_asym_0"][0]) and np.isnan(out["mtr_asym_0"][1])
    assert out["fit_ok"].tolist() == [True, False]
