"""Relaxometry kernels and adapters: truth-based accuracy, properties, Dask, masks, bad input."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

from studylib.errors import FitInputError, StudyError
from studylib.fit.relaxometry import (delta_r2star, iron_concentration, noise_sigma_from_background, t1_ir,
                                      t1_sr, t1_vfa, t2, t2star)
from studylib.models.noise import add_rician_noise, rician_mean
from studylib.models.relaxometry import (_batches, fit_monoexp, inversion_recovery_signal, monoexp_signal, rician_mean_fast,
                                         saturation_recovery_signal, spgr_signal)
from studylib.models.relaxivity import relaxivity

TE = 3.0 * np.arange(1, 17)  # 16 echoes, 3 ms spacing (BLZ945 FeMRI protocol)
S0, SIGMA = 1000.0, 1000.0 / 40  # SNR 40 at S0


def _dro(lo, hi, n, seed):
    rng = np.random.default_rng(seed)
    t2s = rng.uniform(lo, hi, n)
    y = add_rician_noise(monoexp_signal(TE, np.full(n, S0), t2s), SIGMA, rng)
    return t2s, y


def _stats(est, truth):
    e = est / truth - 1
    return np.nanmedian(np.abs(e)), np.nanmedian(e), np.nanpercentile(np.abs(e), 90)


def _da(y, dim="te", x=TE):
    return xr.DataArray(y, dims=("voxel", dim), coords={dim: x})


def test_rician_mean_fast_matches_bessel():
    nu = np.concatenate([np.linspace(0, 20, 2001), np.geomspace(20, 1e5, 200)])
    for s in (0.5, 1.0, 37.0):
        np.testing.assert_allclose(rician_mean_fast(nu * s, s), rician_mean(nu * s, s), atol=4e-5 * s, rtol=0)


def test_t2star_accuracy_dro_5_60ms():
    t2s, y = _dro(5, 60, 40000, 1)
    ds = t2star(_da(y), noise_sigma=SIGMA)
    assert ds.fit_ok.all()
    med, bias, p90 = _stats(ds.t2star.values, t2s)
    assert med <= 0.03 and abs(bias) <= 0.01 and p90 <= 0.10, (med, bias, p90)
    np.testing.assert_allclose(ds.r2star.values, 1000.0 / ds.t2star.values)
    assert ds.t2star.attrs["units"] == "ms" and ds.r2star.attrs["units"] == "1/s"


def test_t2star_short_unbiased_where_plain_fits_are_biased():
    t2s, y = _dro(4, 10, 40000, 2)
    _, bias, _ = _stats(t2star(_da(y), noise_sigma=SIGMA).t2star.values, t2s)
    assert abs(bias) <= 0.02, bias
    # the noise floor pushes plain log-linear and magnitude least squares upward
    _, b_log, _ = _stats(t2star(_da(y), method="loglinear").t2star.values, t2s)
    _, b_nl, _ = _stats(t2star(_da(y), method="nonlinear").t2star.values, t2s)
    assert b_log > 0.10 and b_nl > 0.03, (b_log, b_nl)
    # the exact Rician-expectation least squares agrees with the default
    _, b_ric, _ = _stats(t2star(_da(y[:5000]), method="rician", noise_sigma=SIGMA).t2star.values, t2s[:5000])
    assert abs(b_ric) <= 0.02


def test_t2star_sigma_from_background_and_fitted():
    t2s, y = _dro(4, 40, 6000, 3)
    rng = np.random.default_rng(4)
    bg = add_rician_noise(np.zeros((4000, TE.size)), SIGMA, rng)
    allv = np.concatenate([y, bg])
    mask = np.r_[np.zeros(len(y), bool), np.ones(len(bg), bool)]
    sig = noise_sigma_from_background(_da(allv), mask)
    assert abs(float(sig) / SIGMA - 1) < 0.02
    ds = t2star(_da(allv), background=mask, mask=~mask)
    assert not ds.fit_ok.values[mask].any()
    _, bias, _ = _stats(ds.t2star.values[~mask], t2s)
    assert abs(bias) <= 0.02
    ds_free = t2star(_da(y))  # sigma fitted per voxel
    med, bias, _ = _stats(ds_free.t2star.values, t2s)
    assert ds_free.fit_ok.mean() > 0.99 and med < 0.06 and abs(bias) < 0.03
    assert abs(np.nanmedian(ds_free.noise_sigma.values) / SIGMA - 1) < 0.2


@settings(max_examples=40, deadline=None)
@given(t2_ms=st.floats(2.0, 200.0), s0=st.floats(1e-3, 1e6), method=st.sampled_from(["squared", "nonlinear",
                                                                                        "loglinear"]))
def test_noise_free_recovered_exactly(t2_ms, s0, method):
    y = monoexp_signal(TE, np.array([s0]), np.array([t2_ms]))
    sigma = None if method != "squared" else s0 * 1e-9
    r = fit_monoexp(y, TE, method=method, sigma=sigma, n_iter=12)
    assert r["fit_ok"][0]
    assert abs(1.0 / r["rate"][0] / t2_ms - 1) < 1e-5
    assert abs(r["s0"][0] / s0 - 1) < 1e-5


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e4), seed=st.integers(0, 1000))
def test_scale_invariance_in_s0(scale, seed):
    _, y = _dro(5, 60, 50, seed)
    a = fit_monoexp(y, TE, sigma=SIGMA)
    b = fit_monoexp(y * scale, TE, sigma=SIGMA * scale)
    np.testing.assert_allclose(b["rate"], a["rate"], rtol=1e-7)
    np.testing.assert_allclose(b["s0"], a["s0"] * scale, rtol=1e-7)


@settings(max_examples=200, deadline=None)
@given(n_vox=st.integers(0, 200_000), block=st.integers(1, 50_000))
def test_batches_cover_the_voxels_in_near_equal_parts(n_vox, block):
    """fit_monoexp's batches: contiguous, in order, covering every voxel once, round(n / block) of them (one at
    least), sizes differing by one at most."""
    parts = _batches(n_vox, block)
    starts, stops = [a for a, _ in parts], [b for _, b in parts]
    assert starts == ([0] + stops[:-1] if parts else []) and (stops[-1] if parts else 0) == n_vox
    assert len(parts) == (max(1, round(n_vox / block)) if n_vox else 0)
    sizes = [b - a for a, b in parts]
    assert not sizes or (min(sizes) >= 1 and max(sizes) - min(sizes) <= 1)


@pytest.mark.parametrize("method", ["squared", "rician", "nonlinear", "loglinear"])
def test_fit_does_not_depend_on_the_batch_size(method):
    """Only speed, memory and the last bits depend on ``block``: one batch, equal batches, uneven ones.  (Batches of
    a few voxels round sums differently, and a damped step accepted or not by a rounding-level cost difference then
    moves a fit by up to ~1e-8: not a size fit_monoexp uses.)"""
    _, y = _dro(5, 60, 3001, 11)
    ref = fit_monoexp(y, TE, sigma=SIGMA, method=method, block=3001)
    for block in (1000, 1100, 2999, 4096):
        out = fit_monoexp(y, TE, sigma=SIGMA, method=method, block=block)
        np.testing.assert_array_equal(out["fit_ok"], ref["fit_ok"])
        for k in ("s0", "rate", "rmse"):
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-9, err_msg=f"{method} {k} block {block}")


def test_dask_equals_numpy_leading_dims_and_sigma_map():
    rng = np.random.default_rng(5)
    t2s = rng.uniform(5, 60, (3, 2, 4, 5))
    y = add_rician_noise(monoexp_signal(TE, np.full(t2s.shape, S0), t2s), SIGMA, rng)
    da = xr.DataArray(y, dims=("animal", "day", "y", "x", "te"), coords={"te": TE, "day": [0, 7]})
    ref = t2star(da, noise_sigma=SIGMA)
    assert ref.t2star.dims == ("animal", "day", "y", "x")
    lazy = t2star(da.chunk({"animal": 1, "y": 2}), noise_sigma=SIGMA)
    assert hasattr(lazy.t2star.data, "dask")
    xr.testing.assert_allclose(lazy.compute(), ref, rtol=1e-10)  # BLAS sums may differ in the last ulp
    smap = xr.DataArray(np.full((3, 2), SIGMA), dims=("animal", "day"))
    by_map = t2star(da.chunk({"animal": 1}), noise_sigma=smap).compute()
    np.testing.assert_allclose(by_map.t2star.values, ref.t2star.values, rtol=1e-12)
    # a flat voxel layout gives the same numbers
    flat = t2star(_da(y.reshape(-1, TE.size)), noise_sigma=SIGMA)
    np.testing.assert_allclose(flat.t2star.values, ref.t2star.values.reshape(-1), rtol=1e-12)


def test_mask_and_bad_voxels():
    _, y = _dro(5, 60, 8, 6)
    y[1, 3] = np.nan
    y[2] = 0.0
    y[3] = -5.0
    mask = np.ones(8, bool)
    mask[5] = False
    ds = t2star(_da(y), noise_sigma=SIGMA, mask=mask)
    ok = ds.fit_ok.values
    assert list(ok) == [True, False, False, False, True, False, True, True]
    assert np.isnan(ds.t2star.values[~ok]).all() and np.isfinite(ds.t2star.values[ok]).all()


@pytest.mark.parametrize("coords, msg", [
    ({"te": TE[::-1]}, "not sorted"),
    ({"te": np.r_[TE[:-1], TE[-2]]}, "duplicated"),
    ({"te": TE - 10}, "non-negative"),
    (None, "no 'te' coordinate"),
])
def test_bad_axis(coords, msg):
    y = np.ones((3, TE.size))
    da = xr.DataArray(y, dims=("voxel", "te"), coords=coords)
    with pytest.raises(FitInputError, match=msg):
        t2star(da, noise_sigma=1.0)


def test_bad_inputs():
    y = np.full((3, TE.size), np.nan)
    with pytest.raises(FitInputError, match="all NaN"):
        t2star(_da(y), noise_sigma=1.0)
    with pytest.raises(FitInputError, match="no 'te' dimension"):
        t2star(xr.DataArray(np.ones((3, 16)), dims=("voxel", "b")))
    with pytest.raises(FitInputError, match="mask"):
        t2star(_da(np.ones((3, 16))), mask=np.ones(4, bool), noise_sigma=1.0)
    with pytest.raises(FitInputError, match="noise_sigma"):
        t2star(_da(np.ones((3, 16))), noise_sigma=-1.0)
    with pytest.raises(FitInputError, match="noise_sigma has dims"):
        t2star(_da(np.ones((3, 16))), noise_sigma=xr.DataArray([1.0, 2.0], dims="animal"))
    with pytest.raises(FitInputError, match="method"):
        t2star(_da(np.ones((3, 16))), method="magic")
    with pytest.raises(FitInputError, match="rician"):
        t2star(_da(np.ones((3, 16))), method="rician")
    with pytest.raises(FitInputError, match="background_mask"):
        noise_sigma_from_background(np.ones((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(StudyError):
        t2star(np.ones((3, 16)))


def test_t2_msme_and_drop_first_echo():
    rng = np.random.default_rng(7)
    te = 10.0 * np.arange(1, 13)
    t2v = rng.uniform(30, 80, 3000)
    y = add_rician_noise(monoexp_signal(te, np.full(3000, S0), t2v), S0 / 100, rng)
    y_stim = y.copy()
    y_stim[:, 0] *= 0.85  # first echo lowered as by stimulated-echo pathways
    da = xr.DataArray(y_stim, dims=("voxel", "te"), coords={"te": te})
    med_all, _, _ = _stats(t2(da, noise_sigma=S0 / 100).t2.values, t2v)
    ds = t2(da, noise_sigma=S0 / 100, drop_first_echo=True)
    med, bias, _ = _stats(ds.t2.values, t2v)
    assert med < 0.02 and abs(bias) < 0.01 and med < med_all
    assert ds.r2.attrs["units"] == "1/s"


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
def test_t1_vfa(method):
    rng = np.random.default_rng(8)
    fa = np.array([2.0, 5, 10, 15, 20, 30])
    t1v = rng.uniform(400, 3000, 3000)
    y = spgr_signal(fa, np.full(3000, 5000.0), t1v, 15.0)
    da = xr.DataArray(y, dims=("voxel", "fa"), coords={"fa": fa}, attrs={"tr_ms": 15.0})
    np.testing.assert_allclose(t1_vfa(da, method=method).t1.values, t1v, rtol=1e-6)
    noisy = da.copy(data=add_rician_noise(y, 5.0, rng))
    med, bias, _ = _stats(t1_vfa(noisy, method=method).t1.values, t1v)
    assert med < 0.04 and abs(bias) < 0.02
    with pytest.raises(FitInputError, match="repetition time"):
        t1_vfa(xr.DataArray(y, dims=("voxel", "fa"), coords={"fa": fa}))


def test_t1_ir_and_sr():
    rng = np.random.default_rng(9)
    ti = np.array([50.0, 100, 200, 400, 800, 1600, 3200, 6000])
    t1v = rng.uniform(400, 3000, 3000)
    y = inversion_recovery_signal(ti, np.full(3000, 1000.0), t1v)
    da = xr.DataArray(y, dims=("voxel", "ti"), coords={"ti": ti})
    ds = t1_ir(da)
    np.testing.assert_allclose(ds.t1.values, t1v, rtol=1e-6)
    noisy = t1_ir(da.copy(data=add_rician_noise(y, 10.0, rng)))
    med, bias, _ = _stats(noisy.t1.values, t1v)
    assert noisy.fit_ok.mean() > 0.99 and med < 0.03 and abs(bias) < 0.01
    ysr = saturation_recovery_signal(ti, np.full(3000, 1000.0), t1v)
    np.testing.assert_allclose(t1_sr(da.copy(data=ysr)).t1.values, t1v, rtol=1e-6)


def test_delta_r2star_and_iron():
    r2 = xr.DataArray(np.array([[20.0, 35.0, 26.0], [22.0, np.nan, 30.0]]), dims=("animal", "day"),
                      coords={"day": [-1, 1, 7]}, attrs={"units": "1/s"})
    d = delta_r2star(r2, baseline_day=-1)
    np.testing.assert_allclose(d.values, [[0, 15, 6], [0, np.nan, 8]])
    assert d.attrs["units"] == "1/s"
    fe = iron_concentration(d, field_T=3.0)
    np.testing.assert_allclose(fe.values, d.values / 55.7)
    assert fe.attrs["units"] == "mM" and fe.attrs["relaxivity_how"] == "tabulated"
    assert not fe.attrs["relaxivity_extrapolated"]
    # at a preclinical field the 3 T r2* is held (saturated magnetisation): the maps say so
    fe94 = iron_concentration(d, field_T=9.4)
    np.testing.assert_allclose(fe94.values, d.values / 55.7)
    assert fe94.attrs["relaxivity_extrapolated"] and "held" in fe94.attrs["relaxivity_source"]
    r7, r3 = relaxivity("ferumoxytol", 7.0, kind="r2star"), relaxivity("ferumoxytol", 3.0, kind="r2star")
    assert r7.value_per_mM_s == r3.value_per_mM_s and r7.extrapolated and not r3.extrapolated
    assert relaxivity("ferumoxytol", 1.5, kind="r1").value_per_mM_s == 19.0
    mid = relaxivity("ferumoxytol", 2.0, kind="r2star")  # between the measured fields: interpolated
    assert mid.how == "interpolated" and 55.7 < mid.value_per_mM_s < 64.4
    with pytest.raises(StudyError, match="r1 is tabulated for 1.5-3 T only"):
        relaxivity("ferumoxytol", 9.4, kind="r1")  # r1 falls with field: never extrapolated silently
    assert relaxivity("Feraheme", 9.4, kind="r1", beyond_table="hold").how == "held"
    with pytest.raises(FitInputError, match="baseline_day"):
        delta_r2star(r2, baseline_day=0)
    with pytest.raises(FitInputError, match="'day'"):
        delta_r2star(r2.isel(day=0))
    with pytest.raises(FitInputError, match="field_T"):
        iron_concentration(d)


def test_noise_sigma_ignores_an_inf_background_voxel_and_says_so():
    """One Inf voxel in the background used to make sigma infinite and drop the whole session (issue 16)."""
    rng = np.random.default_rng(0)
    sig = np.abs(rng.normal(0, 10.0, size=(2, 3, 8, 8)) + 1j * rng.normal(0, 10.0, size=(2, 3, 8, 8)))
    da = xr.DataArray(sig, dims=("animal", "te", "y", "x"))
    bg = xr.DataArray(np.ones((8, 8), bool), dims=("y", "x"))
    clean = noise_sigma_from_background(da, bg)
    da2 = da.copy()
    da2[0, 1, 3, 3] = np.inf
    dirty = noise_sigma_from_background(da2, bg)
    assert np.isfinite(dirty.values).all()
    np.testing.assert_allclose(dirty.values[1], clean.values[1])
    np.testing.assert_allclose(dirty.values[0], clean.values[0], rtol=0.02)
    assert dirty["background_nonfinite_values"].values.tolist() == [1, 0]
    np.testing.assert_allclose(clean.values, 10.0, rtol=0.1)  # Rayleigh: sigma of each channel
