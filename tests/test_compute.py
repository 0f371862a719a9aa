"""studylib.compute: scheduler choice, progress under threads and under distributed.

The LocalCluster tests start real worker processes (2 × 1 thread); each takes a few seconds.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

from studylib import compute
from studylib.compute import SchedulerError
from studylib.errors import StudyError


def _t2star_like(n_animals=4, seed=0):
    """A Dask-backed multi-echo signal and a log-linear R2* fit of it (a fit-shaped computation)."""
    rng = np.random.default_rng(seed)
    te = np.array([3.0, 6.0, 9.0, 12.0])
    r2 = rng.uniform(20, 60, size=(n_animals, 2, 6, 6))
    sig = 1000 * np.exp(-te / 1000 * r2[..., None]) * (1 + 0.001 * rng.standard_normal(r2.shape + (4,)))
    arr = xr.DataArray(da.from_array(sig, chunks=(1, 1, 6, 6, 4)), dims=("animal", "day", "y", "x", "te"),
                       coords={"te": te})
    logs = np.log(arr)
    x = arr.te - arr.te.mean()
    slope = ((logs - logs.mean("te")) * x).sum("te") / (x ** 2).sum()
    return (-slope * 1000).rename("r2star"), r2


# ------------------------------------------------------------------------------- resolve_scheduler

@pytest.mark.parametrize("value, expected", [
    (None, "threads"), ("threads", "threads"), ("THREADS", "threads"), ("", "threads"), ("sync", "sync"),
    ("local", "local"), ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"), ("scheduler.example:8786",
                                                                       "tcp://scheduler.example:8786"),
    ("tls://h:1", "tls://h:1"),
])
def test_resolve_scheduler_known_values(value, expected, monkeypatch):
    monkeypatch.delenv(compute.SCHEDULER_ENV, raising=False)
    assert compute.resolve_scheduler(value) == expected


def test_resolve_scheduler_reads_env_and_argument_wins(monkeypatch):
    monkeypatch.setenv(compute.SCHEDULER_ENV, "tcp://1.2.3.4:8786")
    assert compute.resolve_scheduler(None) == "tcp://1.2.3.4:8786"
    assert compute.resolve_scheduler("threads") == "threads"


@pytest.mark.parametrize("bad", ["gpu-cluster", "tcp//x", "http://x:1 2", "lokal"])
def test_resolve_scheduler_rejects_unknown_names(bad, monkeypatch):
    monkeypatch.delenv(compute.SCHEDULER_ENV, raising=False)
    with pytest.raises(SchedulerError, match="unknown scheduler"):
        compute.resolve_scheduler(bad)


def test_resolve_scheduler_bad_env_names_the_variable(monkeypatch):
    monkeypatch.setenv(compute.SCHEDULER_ENV, "nonsense")
    with pytest.raises(StudyError, match=r"\$STUDYLIB_SCHEDULER"):
        compute.resolve_scheduler(None)


def test_resolve_scheduler_rejects_non_strings():
    with pytest.raises(SchedulerError, match="got 3"):
        compute.resolve_scheduler(3)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=30))
def test_resolve_scheduler_total(text):
    """Any string either resolves to one of the four forms or raises SchedulerError, never anything else."""
    try:
        out = compute.resolve_scheduler(text)
    except SchedulerError as err:
        assert "scheduler" in str(err)
    else:
        assert out in ("threads", "sync", "local") or "://" in out


# --------------------------------------------------------------------------------- threads / progress

def test_progress_threads_computes_and_shows_bar(capsys):
    r2star, truth = _t2star_like()
    with compute.scheduler_context("threads") as client:
        assert client is None and compute.active_client() is None
        out = compute.progress(r2star, minimum_s=0.0, label="fitting R2*")
    assert isinstance(out, xr.DataArray) and out.chunks is None
    np.testing.assert_allclose(out.values, truth, atol=1.0)  # 1/s; noise 0.1 %
    printed = capsys.readouterr().out
    assert "fitting R2*" in printed and "100% Completed" in printed


def test_progress_passes_through_non_dask_and_keeps_containers():
    arr = np.arange(3.0)
    assert compute.progress(arr) is arr
    lazy = da.arange(4, chunks=2).sum()
    out = compute.progress([lazy, 5, xr.DataArray(da.ones(3, chunks=1))], minimum_s=10)
    assert isinstance(out, list) and out[0] == 6 and out[1] == 5 and float(out[2].sum()) == 3.0
    tup = compute.progress((lazy,), minimum_s=10)
    assert isinstance(tup, tuple) and tup == (6,)


def test_get_client_threads_returns_none_and_sets_config():
    try:
        assert compute.get_client("sync") is None
        assert dask.config.get("scheduler") == "sync"
        assert compute.get_client("threads") is None
        assert dask.config.get("scheduler") == "threads"
        assert compute.describe()["scheduler"] == "threads"
    finally:
        compute.shutdown()


def test_unreachable_address_gives_scheduler_error():
    with pytest.raises(SchedulerError, match="cannot connect"):
        compute.get_client("tcp://127.0.0.1:9", timeout_s=1)


# --------------------------------------------------------------------------------- distributed

@pytest.mark.slow
def test_local_cluster_equals_threads_bit_for_bit(capsys):
    """--scheduler local gives exactly the threaded result; distributed.progress shows the bar."""
    r2star, _ = _t2star_like(n_animals=6, seed=3)
    with compute.scheduler_context("threads"):
        ref = compute.progress(r2star)
    with compute.scheduler_context("local", n_workers=2) as client:
        assert client is not None and compute.active_client() is client
        info = compute.describe()
        assert info["scheduler"] == "distributed" and info["n_workers"] == 2
        out = compute.progress(r2star, label="fitting on the cluster")
    printed = capsys.readouterr().out
    assert "dashboard: http" in printed
    assert "100% Completed" in printed
    np.testing.assert_array_equal(out.values, ref.values)
    assert compute.active_client() is None  # closed and the previous config restored


@pytest.mark.slow
def test_get_client_local_is_reused_and_shut_down(capsys):
    try:
        c1 = compute.get_client("local", n_workers=1)
        c2 = compute.get_client("local", n_workers=1)
        assert c1 is c2 and c1.status == "running"
        assert compute.active_client() is c1
        assert int(c1.submit(lambda x: x + 1, 41).result()) == 42
        assert "dashboard" in capsys.readouterr().out
        # every worker imported, as it started, what deserialising and reading the first scan task needs
        have = c1.run(lambda: sorted(m for m in ("dask.array", "nibabel", "studylib.io.nifti")
                                     if m in __import__("sys").modules))
        assert list(have.values()) == [["dask.array", "nibabel", "studylib.io.nifti"]]
        # the workers' statistical profiler is off unless asked for (its 10 ms stack sampling costs CPU)
        def profiler_callbacks(dask_worker):
            return sorted(k for k in dask_worker.periodic_callbacks if k.startswith("profile"))
        assert list(c1.run(profiler_callbacks).values()) == [[]]
        # and took those imports out of the collector's full collections (compute.freeze_startup_objects)
        assert list(c1.run(lambda: __import__("gc").get_freeze_count() > 0).values()) == [True]
    finally:
        compute.shutdown()
    with compute.scheduler_context("local", n_workers=1, quiet=True, worker_profile=True) as c2:
        assert list(c2.run(profiler_callbacks).values()) == [["profile", "profile-cycle"]]
    assert c1.status in ("closed", "closing")
    assert compute.active_client() is None


def _blocks_study():
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(5)
    sig = xr.DataArray(da.from_array(rng.random((3, 2, 6, 4, 5)).astype(np.float32), chunks=(1, 1, 6, 4, 5)),
                       dims=("animal", "day", "te", "y", "x"), coords={"animal": ["a", "b", "c"], "te": np.arange(6.0)})
    mask = xr.DataArray(rng.random((4, 5)) < 0.5, dims=("y", "x"))          # numpy-backed, broadcast over animal/day
    return sig, mask


def test_apply_blocks_matches_apply_ufunc_and_hands_over_views():
    import xarray as xr

    from studylib.compute import apply_blocks

    sig, mask = _blocks_study()
    seen = []

    def f(y, m):
        seen.append((y.flags.c_contiguous, np.moveaxis(y, -1, 0).flags.c_contiguous, m.shape))
        s = (y * m[..., None]).sum(-1)
        return s, (y > 0.5).mean(-1, keepdims=True) * np.ones((1,) * (y.ndim - 1) + (2,))

    got_sum, got_frac = apply_blocks(f, sig, mask, core_dims=[["te"], []], out_core=[(), (("k", 2),)],
                                     out_dtypes=[np.float64, np.float64])
    assert got_sum.dims == ("animal", "day", "y", "x") and got_frac.dims == ("animal", "day", "y", "x", "k")
    assert list(got_sum["animal"].values) == ["a", "b", "c"]
    ref_sum, ref_frac = xr.apply_ufunc(f, sig, mask, input_core_dims=[["te"], []], output_core_dims=[[], ["k"]],
                                       dask="parallelized", output_dtypes=[np.float64, np.float64],
                                       dask_gufunc_kwargs={"output_sizes": {"k": 2}})
    seen.clear()
    np.testing.assert_array_equal(got_sum.values, ref_sum.values)
    np.testing.assert_array_equal(got_frac.values, ref_frac.values)
    blocks = seen[:]
    # every call got the stored block as a view: fitted axis last is a transpose, not a C-contiguous copy
    assert blocks and all(not c and back for c, back, _ in blocks[:6])
    assert all(ms == (1, 1, 4, 5) for *_, ms in blocks[:6])


def test_apply_blocks_no_concatenate_copy_in_the_fit(monkeypatch):
    """The masked T2* fit reads each scan block in place: Dask's concatenate3 (a full copy) never runs."""
    import dask
    import dask.array.core as dac

    from studylib.fit.relaxometry import t2star

    sig, mask = _blocks_study()
    sig = sig.assign_coords(te=np.arange(1.0, 7.0) * 3).assign_attrs(units="a.u.")
    calls = []
    real = dac.concatenate3

    def spy(arrays):
        out = real(arrays)
        calls.append(out.shape)
        return out

    monkeypatch.setattr(dac, "concatenate3", spy)
    maps = t2star(sig * 100 + 10, mask=mask, method="loglinear")
    with dask.config.set(scheduler="sync"):
        r2 = maps["r2star"].values
    # only the final assembly of the (animal, day, y, x) map from its blocks; no echo-carrying block copied
    assert calls == [(3, 2, 4, 5)]
    eager = t2star((sig * 100 + 10).compute(), mask=mask, method="loglinear")["r2star"].values
    np.testing.assert_allclose(r2, eager, rtol=1e-12)   # one kernel call per block vs one for all voxels


def test_apply_blocks_refuses_a_core_dim_in_several_chunks():
    from studylib.compute import apply_blocks

    sig, mask = _blocks_study()
    with pytest.raises(ValueError, match="core dim 'te'"):
        apply_blocks(lambda y: (y.sum(-1),), sig.chunk({"te": 3}), core_dims=[["te"]], out_dtypes=[np.float64])


def test_paused_gc_pauses_nests_and_restores():
    """The collector is off inside, back on after (also after an error, and after a nested pause); a caller that
    had it off keeps it off; as a decorator it pauses each call."""
    import gc

    assert gc.isenabled()
    with compute.paused_gc():
        assert not gc.isenabled()
        with compute.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()           # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        with compute.paused_gc():
            1 / 0
    assert gc.isenabled()
    gc.disable()
    try:
        with compute.paused_gc():
            pass
        assert not gc.isenabled()           # it was off before: left off
    finally:
        gc.enable()
    seen = []

    @compute.paused_gc()
    def f():
        seen.append(gc.isenabled())

    f()
    f()
    assert seen == [False, False] and gc.isenabled()
