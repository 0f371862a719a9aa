"""The shared fit adapter :func:`studylib.fit.apply_kernel`: dims, Dask laziness, masks, voxel inputs.

The kernels here are trivial (row mean, echo of a voxel input) so that every expected value
is computed independently with plain xarray (``signal.mean(dim)``, ``broadcast_like``).
"""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from studylib.errors import FitInputError, StudyError
from studylib.fit import Output, apply_kernel

DIMS5 = ("animal", "day", "z", "y", "x")
SHAPE5 = (3, 2, 2, 4, 5)
T = np.array([0.0, 1.0, 2.5, 4.0])

OUT_MEAN = [Output("avg", "a.u.", "row mean"), Output("fit_ok", "", "fitted", bool)]


def _mean_kernel(y, x):
    m = y.mean(axis=1)
    ok = np.isfinite(m)
    return {"avg": np.where(ok, m, np.nan), "fit_ok": ok}


def _signal(shape=SHAPE5, dims=DIMS5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    data = rng.uniform(1.0, 10.0, shape + (T.size,)).astype(dtype)
    return xr.DataArray(data, dims=dims + ("t",), coords={"t": T, "animal": [f"m{i}" for i in range(shape[0])]}
                        if "animal" in dims else {"t": T})


def _vin_kernel(y, x, *, a, b=0.0):
    """Returns the voxel inputs as they reach the kernel, plus the row mean scaled by them."""
    n = y.shape[0]
    a = np.asarray(a, dtype=float)
    assert a.shape in ((n,), ()), a.shape  # (n_vox,) arrays, or a scalar kept a scalar
    b_arr = np.asarray(b, dtype=float)
    assert b_arr.shape in ((n,), ())
    return {"a": np.broadcast_to(a, (n,)).copy(), "b": np.broadcast_to(b_arr, (n,)).copy(),
            "scaled": y.mean(axis=1) * a + b_arr, "a_is_scalar": np.full(n, a.ndim == 0),
            "fit_ok": np.ones(n, bool)}


OUT_VIN = [Output("a"), Output("b"), Output("scaled"), Output("a_is_scalar", dtype=bool),
           Output("fit_ok", dtype=bool)]


# ----------------------------------------------------------------------------- numpy vs Dask, laziness


def test_numpy_and_dask_give_the_same_maps_with_units_and_bool_fit_ok():
    sig = _signal()
    ref = apply_kernel(_mean_kernel, sig, "t", OUT_MEAN, attrs={"fit": "mean"})
    assert ref.avg.dims == DIMS5 and ref.avg.attrs["units"] == "a.u." and ref.attrs["fit"] == "mean"
    np.testing.assert_allclose(ref.avg.values, sig.values.mean(-1), rtol=1e-15)
    lazy = apply_kernel(_mean_kernel, sig.chunk({"animal": 1, "y": 3, "t": 2}), "t", OUT_MEAN, attrs={"fit": "mean"})
    assert isinstance(lazy.avg.data, dsa.Array) and isinstance(lazy.fit_ok.data, dsa.Array)
    assert lazy.fit_ok.dtype == bool and ref.fit_ok.dtype == bool
    out = lazy.compute()
    xr.testing.assert_identical(out, ref)
    assert out.fit_ok.dtype == bool and out.fit_ok.values.all()


def _exploding(shape, chunks):
    """A Dask array whose every block raises when computed."""

    def boom(block_info=None):
        raise RuntimeError("the adapter computed the input")

    return dsa.map_blocks(boom, chunks=chunks, dtype=float, meta=np.empty((0,) * len(shape)))


def test_dask_input_stays_lazy_nothing_is_computed():
    shape = (2, 3, 4, T.size)
    data = _exploding(shape, ((1, 1), (3,), (2, 2), (T.size,)))
    sig = xr.DataArray(data, dims=("animal", "y", "x", "t"), coords={"t": T})
    sigma = xr.DataArray(_exploding((2,), ((1, 1),)), dims="animal")
    calls = []

    def counting(y, x, *, a):
        calls.append(y.shape)
        return {"m": y.mean(1) * a, "fit_ok": np.ones(len(y), bool)}

    mask = xr.DataArray(np.ones((3, 4), bool), dims=("y", "x"))
    ds = apply_kernel(counting, sig, "t", [Output("m"), Output("fit_ok", dtype=bool)], mask=mask,
                      voxel_inputs={"a": sigma})
    assert isinstance(ds.m.data, dsa.Array) and ds.m.shape == (2, 3, 4)
    assert calls == []  # the kernel never ran
    with pytest.raises(RuntimeError, match="computed the input"):
        ds.m.compute(scheduler="synchronous")  # ... and computing does touch the (exploding) input


def test_kernel_runs_once_per_chunk_lazily():
    sig = _signal(shape=(4, 6), dims=("animal", "voxel")).chunk({"animal": 2, "voxel": 3})
    calls = []

    def counting(y, x):
        calls.append(y.shape[0])
        return _mean_kernel(y, x)

    ds = apply_kernel(counting, sig, "t", OUT_MEAN)
    assert calls == []
    with dask.config.set(scheduler="synchronous"):
        ds.compute()
    assert sorted(calls) == [6, 6, 6, 6]  # 2 x 2 blocks of 2 x 3 voxels


# ----------------------------------------------------------------------------- dims


@pytest.mark.parametrize("dims,shape", [(("voxel",), (17,)), (DIMS5, SHAPE5), (("y", "x"), (3, 4))])
def test_any_leading_dims_and_fitted_axis_position(dims, shape):
    sig = _signal(shape=shape, dims=dims)
    ds = apply_kernel(_mean_kernel, sig, "t", OUT_MEAN)
    assert ds.avg.dims == dims and ds.avg.shape == shape
    xr.testing.assert_allclose(ds.avg, sig.mean("t"), rtol=1e-14)
    # the fitted axis need not be last
    moved = sig.transpose("t", *dims)
    xr.testing.assert_allclose(apply_kernel(_mean_kernel, moved, "t", OUT_MEAN).avg, sig.mean("t"), rtol=1e-14)


def test_float32_and_integer_signals_are_fitted_in_float64():
    sig = _signal(shape=(5,), dims=("voxel",))
    for s in (sig.astype(np.float32), (sig * 100).astype(np.int32)):
        ds = apply_kernel(_mean_kernel, s, "t", OUT_MEAN)
        assert ds.avg.dtype == np.float64
        np.testing.assert_allclose(ds.avg.values, s.values.astype(np.float64).mean(-1), rtol=1e-15)


# ----------------------------------------------------------------------------- mask


def test_mask_voxels_outside_are_nan_and_never_reach_the_kernel():
    sig = _signal()
    rng = np.random.default_rng(2)
    mask = xr.DataArray(rng.random(SHAPE5[2:]) > 0.4, dims=("z", "y", "x"))  # broadcast over animal, day
    seen = []

    def kernel(y, x):
        seen.append(y.copy())
        return _mean_kernel(y, x)

    ds = apply_kernel(kernel, sig, "t", OUT_MEAN, mask=mask)
    full = mask.broadcast_like(ds.avg).transpose(*DIMS5).values
    assert ds.fit_ok.dtype == bool
    np.testing.assert_array_equal(ds.fit_ok.values, full)
    assert np.isnan(ds.avg.values[~full]).all()
    np.testing.assert_allclose(ds.avg.values[full], sig.values.mean(-1)[full], rtol=1e-15)
    assert sum(len(s) for s in seen) == full.sum()  # only the masked-in rows were passed
    # numpy mask of the full voxel shape, Dask signal and Dask mask: same result
    ds2 = apply_kernel(_mean_kernel, sig.chunk({"day": 1, "x": 2}), "t", OUT_MEAN, mask=full)
    xr.testing.assert_identical(ds2.compute(), ds)
    ds3 = apply_kernel(_mean_kernel, sig.chunk({"day": 1}), "t", OUT_MEAN, mask=mask.chunk({"y": 1}))
    xr.testing.assert_identical(ds3.compute(), ds)


@pytest.mark.parametrize("contiguous", [False, True])
def test_kernel_layout_choice_same_rows_and_same_maps(contiguous):
    """A kernel marked ``voxels_contiguous`` gets the same rows (values, order) as an (n, n_vox) array's transposed
    view, on Dask scan blocks stored echo-first (as apply_blocks hands them over); the maps equal numpy input's."""
    sig = _signal()
    rng = np.random.default_rng(4)
    mask = xr.DataArray(rng.random(SHAPE5[2:]) > 0.5, dims=("z", "y", "x"))
    seen = []

    def kernel(y, x):
        seen.append((y.copy(), y.flags.f_contiguous and not y.flags.c_contiguous))
        return _mean_kernel(y, x)

    kernel.voxels_contiguous = contiguous
    ref = apply_kernel(_mean_kernel, sig, "t", OUT_MEAN, mask=mask)
    # the signal stored echo-first (one chunk per scan, t outermost in memory): the gather path of a real scan
    stored = sig.transpose("animal", "day", "t", "z", "y", "x")
    stored = stored.copy(data=np.ascontiguousarray(stored.values)).chunk({"animal": 1, "day": 1})
    lazy = apply_kernel(kernel, stored.transpose(*DIMS5, "t"), "t", OUT_MEAN, mask=mask).compute()
    xr.testing.assert_identical(lazy, ref)
    m = mask.transpose("z", "y", "x").values
    expected = [sig.values[a, d][m] for a in range(SHAPE5[0]) for d in range(SHAPE5[1])]  # voxels in C order
    assert len(seen) == len(expected)  # one kernel call per scan, in whatever order the threads ran them
    for y, _ in seen:
        assert sum(np.array_equal(y, e) for e in expected) == 1
    assert all(f == contiguous for _, f in seen)


def test_all_false_mask_gives_all_nan_without_calling_the_kernel():
    def never(y, x):
        raise AssertionError("kernel called with an empty selection")

    ds = apply_kernel(never, _signal(shape=(4,), dims=("voxel",)), "t", OUT_MEAN, mask=np.zeros(4, bool))
    assert not ds.fit_ok.values.any() and np.isnan(ds.avg.values).all() and ds.fit_ok.dtype == bool


def test_bad_masks_raise():
    sig = _signal(shape=(3, 4), dims=("y", "x"))
    with pytest.raises(FitInputError, match="mask of shape"):
        apply_kernel(_mean_kernel, sig, "t", OUT_MEAN, mask=np.ones((4, 3), bool))
    with pytest.raises(FitInputError, match="mask dims"):
        apply_kernel(_mean_kernel, sig, "t", OUT_MEAN, mask=xr.DataArray(np.ones(2, bool), dims="animal"))
    with pytest.raises(FitInputError, match="mask has 2 along 'x'"):
        apply_kernel(_mean_kernel, sig, "t", OUT_MEAN, mask=xr.DataArray(np.ones(2, bool), dims="x"))


# ----------------------------------------------------------------------------- voxel inputs


def _expected(sig, v):
    """``v`` broadcast to the signal's voxel dims, as a numpy array in the signal's dim order."""
    ref = sig.isel(t=0, drop=True)
    if not isinstance(v, xr.DataArray):
        return np.full(ref.shape, float(v))
    return xr.DataArray(np.asarray(v.values, float), dims=v.dims).broadcast_like(ref).transpose(*ref.dims).values


def test_voxel_inputs_scalar_per_animal_and_full_map_numpy_and_dask():
    sig = _signal()
    rng = np.random.default_rng(4)
    per_animal = xr.DataArray(rng.uniform(1, 2, 3), dims="animal", coords={"animal": sig.animal.values})
    per_scan = xr.DataArray(rng.uniform(1, 2, (2, 3)), dims=("day", "animal"))  # other order, no coords
    full = xr.DataArray(rng.uniform(1, 2, SHAPE5), dims=DIMS5)
    mask = xr.DataArray(rng.random(SHAPE5[2:]) > 0.3, dims=("z", "y", "x"))
    inside = mask.broadcast_like(sig.isel(t=0, drop=True)).transpose(*DIMS5).values
    for a in (2.5, np.float32(2.5), xr.DataArray(2.5), per_animal, per_scan, full, full.values):
        for b in (0.0, per_scan):
            ref = apply_kernel(_vin_kernel, sig, "t", OUT_VIN, mask=mask, voxel_inputs={"a": a, "b": b})
            ea = _expected(sig, a if not isinstance(a, np.ndarray) else full)
            eb = _expected(sig, b)
            np.testing.assert_array_equal(ref.a.values[inside], ea[inside])
            np.testing.assert_array_equal(ref.b.values[inside], eb[inside])
            np.testing.assert_allclose(ref.scaled.values[inside], (sig.values.mean(-1) * ea + eb)[inside], rtol=1e-14)
            assert np.isnan(ref.a.values[~inside]).all() and not ref.fit_ok.values[~inside].any()
            scalar = not isinstance(a, (xr.DataArray, np.ndarray)) or (isinstance(a, xr.DataArray) and a.ndim == 0)
            assert ref.a_is_scalar.values[inside].all() == scalar
            # Dask signal (and Dask inputs): same numbers, lazily
            a_dk = a.chunk() if isinstance(a, xr.DataArray) and a.ndim else a
            lazy = apply_kernel(_vin_kernel, sig.chunk({"animal": 2, "y": 3}), "t", OUT_VIN,
                                mask=mask.chunk({"x": 2}), voxel_inputs={"a": a_dk, "b": b})
            assert isinstance(lazy.scaled.data, dsa.Array)
            xr.testing.assert_identical(lazy.compute(), ref)


def test_dask_voxel_input_with_numpy_signal_is_lazy_and_equal():
    sig = _signal(shape=(3, 4), dims=("animal", "x"))
    a = xr.DataArray(np.arange(1.0, 4.0), dims="animal", coords={"animal": sig.animal.values})
    ref = apply_kernel(_vin_kernel, sig, "t", OUT_VIN, voxel_inputs={"a": a})
    lazy = apply_kernel(_vin_kernel, sig, "t", OUT_VIN, voxel_inputs={"a": a.chunk({"animal": 1})})
    assert isinstance(lazy.a.data, dsa.Array)
    xr.testing.assert_identical(lazy.compute(), ref)


def test_voxel_input_nan_is_passed_to_the_kernel():
    sig = _signal(shape=(2, 3), dims=("animal", "x"))
    a = xr.DataArray([1.0, np.nan], dims="animal")
    ds = apply_kernel(_vin_kernel, sig, "t", OUT_VIN, voxel_inputs={"a": a})
    assert np.isnan(ds.scaled.values[1]).all() and np.isfinite(ds.scaled.values[0]).all()


def test_non_index_coords_chunked_differently_do_not_break_the_dask_path():
    """load_study output carries Dask-backed coords (acquired(animal, day)); voxel inputs too."""
    sig = _signal()
    acq = ("animal", "day"), dsa.ones((3, 2), chunks=(3, 2), dtype=bool)
    grp = ("animal", np.array(["a", "b", "b"], dtype=object))
    s = sig.assign_coords(acquired=acq, group=grp).chunk({"animal": 1, "day": 1})
    a = xr.DataArray(np.arange(1.0, 4.0), dims="animal", coords={"animal": sig.animal.values}).assign_coords(
        acquired=("animal", dsa.ones(3, chunks=3, dtype=bool)))
    mask = xr.DataArray(np.ones(SHAPE5, bool), dims=DIMS5).assign_coords(acquired=acq).chunk({"animal": 1})
    ds = apply_kernel(_vin_kernel, s, "t", OUT_VIN, mask=mask, voxel_inputs={"a": a}).compute()
    np.testing.assert_allclose(ds.a.values, _expected(sig, a))
    assert "group" in ds.coords


@pytest.mark.parametrize("value,msg", [
    (xr.DataArray(np.ones(2), dims="animal"), r"noise_sigma has 2 along 'animal' but the signal has 3"),
    (xr.DataArray(np.ones(4), dims="slice"), r"noise_sigma has dims \['slice'\] that are not voxel dims"),
    (xr.DataArray(np.ones(T.size), dims="t"), r"noise_sigma must not have the 't' dimension"),
    (xr.DataArray(np.ones(3), dims="animal", coords={"animal": ["x1", "x2", "x3"]}), r"noise_sigma's 'animal' labels"),
    (np.ones((3, 2)), r"noise_sigma of shape \(3, 2\) does not match the signal's voxel shape"),
    ("abc", r"noise_sigma must be a number or an xarray.DataArray"),
    (xr.DataArray(np.array(["a", "b", "c"]), dims="animal"), r"noise_sigma must be numeric"),
    (xr.Dataset({"s": 1.0}), r"noise_sigma must be a number or an xarray.DataArray"),
])
def test_mismatched_voxel_inputs_raise_naming_the_input(value, msg):
    sig = _signal()
    with pytest.raises(FitInputError, match=msg):
        apply_kernel(_vin_kernel, sig, "t", OUT_VIN, voxel_inputs={"a": 1.0, "noise_sigma": value})
    with pytest.raises(StudyError):  # the one family of input errors, also for Dask input
        apply_kernel(_vin_kernel, sig.chunk({"animal": 1}), "t", OUT_VIN, voxel_inputs={"a": 1.0, "noise_sigma": value})


def test_voxel_input_names_must_not_clash_with_kernel_arguments():
    sig = _signal(shape=(3,), dims=("voxel",))
    with pytest.raises(ValueError, match="clashes"):
        apply_kernel(_vin_kernel, sig, "t", OUT_VIN, kernel_kwargs={"a": 1.0}, voxel_inputs={"a": 2.0})
    with pytest.raises(ValueError, match="clashes"):
        apply_kernel(_vin_kernel, sig, "t", OUT_VIN, voxel_inputs={"a": 1.0, "x": 2.0})


# ----------------------------------------------------------------------------- bad signals


def test_all_nan_and_complex_and_non_numeric_signals_raise():
    sig = _signal(shape=(2, 3), dims=("y", "x"))
    with pytest.raises(FitInputError, match="all NaN"):
        apply_kernel(_mean_kernel, sig * np.nan, "t", OUT_MEAN)
    with pytest.raises(FitInputError, match="all NaN"):  # the voxel inputs do not hide an empty signal
        apply_kernel(_vin_kernel, sig * np.nan, "t", OUT_VIN, voxel_inputs={"a": xr.DataArray(np.ones(3), dims="x")})
    with pytest.raises(FitInputError, match="complex"):
        apply_kernel(_mean_kernel, sig.astype(np.complex128), "t", OUT_MEAN)
    with pytest.raises(FitInputError, match="numeric"):
        apply_kernel(_mean_kernel, sig.astype(str), "t", OUT_MEAN)
    with pytest.raises(ValueError, match="fit_ok"):
        apply_kernel(_mean_kernel, sig, "t", [Output("avg")])


def test_partly_nan_voxels_are_nan_with_fit_ok_false():
    sig = _signal(shape=(2, 3), dims=("y", "x")).copy()
    sig[0, 1, 2] = np.nan
    ds = apply_kernel(_mean_kernel, sig, "t", OUT_MEAN)
    assert np.isnan(ds.avg.values[0, 1]) and not ds.fit_ok.values[0, 1]
    assert ds.fit_ok.values.sum() == 5


# ----------------------------------------------------------------------------- property


@st.composite
def _shapes_and_chunks(draw):
    nd = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 5), min_size=nd, max_size=nd))
    n = draw(st.integers(1, 5))
    pos = draw(st.integers(0, nd))  # where the fitted axis sits
    chunks = [draw(st.integers(1, s)) for s in sizes] + [draw(st.integers(1, n))]
    use_dask = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return sizes, n, pos, chunks, use_dask, seed


@settings(max_examples=40, deadline=None)
@given(_shapes_and_chunks())
def test_row_mean_kernel_equals_signal_mean(case):
    sizes, n, pos, chunks, use_dask, seed = case
    rng = np.random.default_rng(seed)
    vdims = [f"d{i}" for i in range(len(sizes))]
    dims = vdims[:pos] + ["t"] + vdims[pos:]
    shape = sizes[:pos] + [n] + sizes[pos:]
    data = rng.normal(0, 100, shape)
    sig = xr.DataArray(data, dims=dims, coords={"t": np.arange(float(n))})
    if use_dask:
        sig = sig.chunk(dict(zip(vdims + ["t"], chunks)))
    ds = apply_kernel(_mean_kernel, sig, "t", OUT_MEAN)
    assert isinstance(ds.avg.data, dsa.Array) == use_dask
    out = ds.compute()
    assert out.avg.dims == tuple(vdims) and out.fit_ok.dtype == bool and out.fit_ok.values.all()
    xr.testing.assert_allclose(out.avg, sig.mean("t").compute().transpose(*vdims), rtol=1e-12, atol=1e-12)


def test_axis_units_are_honoured_or_refused():
    """te with units "s" used to be fitted as if in ms (issue 16): a known unit is converted, an unknown one
    is an error naming it."""
    from studylib.fit import t2star
    from studylib.testing import synthetic_megre

    sig, truth = synthetic_megre((4, 4), t2star_ms=25.0, snr=None, te_ms=[2, 5, 10, 20], seed=0)
    ref = t2star(sig, method="loglinear")
    in_s = sig.assign_coords(te=("te", sig["te"].values / 1000.0, {"units": "s"}))
    np.testing.assert_allclose(t2star(in_s, method="loglinear")["t2star"], ref["t2star"], rtol=1e-12)
    furlongs = sig.assign_coords(te=("te", sig["te"].values, {"units": "fortnights"}))
    with pytest.raises(FitInputError, match="units 'fortnights'.*cannot convert to 'ms'"):
        t2star(furlongs)
