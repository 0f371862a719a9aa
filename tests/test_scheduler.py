"""Scheduler equivalence: the same lazy study fitted with threads, a process LocalCluster
(``scheduler="local"``), a cluster reached through ``$STUDYLIB_SCHEDULER`` and through a
``tcp://`` address gives bit-identical maps (T2* and DCE), and the distributed runs really
ran on the cluster.

Each LocalCluster starts worker processes (a few seconds each); two are started here.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import xarray as xr

from studylib import compute
from studylib.fit.dce import aif_from_roi, dce, signal_to_concentration
from studylib.fit.relaxometry import t2star
from studylib.synth.large import DCE, animal_table, lazy_study, t10_map  # DCE: the simulator's truth

SMALL = dict(n_animals=4, n_days=3, shape=(2, 24, 24), seed=5)


def _megre_work():
    ds = lazy_study(kind="MEGRE", **SMALL)
    maps = t2star(ds.signal, mask=ds.roi > 0)
    roi_mean = maps.r2star.where(ds.roi == 1).mean(["z", "y", "x"])
    return maps, roi_mean


def _dce_work():
    # each animal has its own AIF (studylib.synth.large.animal_aif): measured in its vessel (label 3), per session;
    # the baseline ends at 28 s, before the earliest plausible arrival (40 s +- 3 s)
    ds = lazy_study(n_animals=2, n_days=2, shape=(1, 20, 20), kind="DCE", seed=5)
    kw = dict(fa_deg=ds.attrs["FlipAngle"], tr_ms=ds.attrs["tr_ms"], r1_per_mM_s=DCE["r1_per_s_per_mM"],
              baseline=(1, 8))
    ct = signal_to_concentration(ds.signal, t10_ms=t10_map(ds), **kw)
    rows = []
    for i in range(ds.sizes["animal"]):
        row = []
        for j in range(ds.sizes["day"]):
            one = dict(animal=i, day=j)
            aif = aif_from_roi(ds.signal.isel(one), ds.roi.isel(one), label=3, t10_blood_ms=DCE["t10_ms"][3],
                               hematocrit=DCE["hematocrit"], **kw)
            row.append(dce(ct.isel(one), aif, model="extended_tofts", mask=ds.roi.isel(one) == 1))
        rows.append(xr.concat(row, "day", coords="minimal", compat="override"))
    maps = xr.concat(rows, "animal", coords="minimal", compat="override")
    return maps, maps.ktrans.where(ds.roi == 1).mean(["z", "y", "x"])


def _compute(objs):
    return compute.progress(list(objs))


def _assert_identical(a: xr.Dataset | xr.DataArray, b):
    assert type(a) is type(b)
    if isinstance(a, xr.Dataset):
        assert set(a.data_vars) == set(b.data_vars)
        for v in a.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)  # NaN == NaN, exact
    else:
        np.testing.assert_array_equal(a.values, b.values)


@pytest.fixture(scope="module")
def threaded():
    """Reference results with the default threaded scheduler."""
    with compute.scheduler_context("threads"):
        megre = _compute(_megre_work())
        dcer = _compute(_dce_work())
    return megre, dcer


def test_threaded_reference_recovers_the_truth(threaded):
    """The reference itself is right: tumour R2* and Ktrans ROI means match the simulator's truth."""
    (maps, r2s), (dmaps, kt) = threaded
    truth = animal_table(SMALL["n_animals"], SMALL["n_days"], kind="MEGRE", seed=SMALL["seed"])
    ref = truth.pivot(index="animal", columns="day", values="tumour_r2star_per_s")
    acq = truth.pivot(index="animal", columns="day", values="acquired").to_numpy(bool)
    got = r2s.values
    assert np.all(np.isnan(got[~acq]))  # humane-endpoint sessions stay NaN
    np.testing.assert_allclose(got[acq], ref.to_numpy()[acq], rtol=0.03)
    assert bool(maps.fit_ok.any()) and not bool(maps.fit_ok.where(~maps.acquired, False).any())
    dtruth = animal_table(2, 2, kind="DCE", seed=5).pivot(index="animal", columns="day",
                                                          values="tumour_ktrans_per_min")
    np.testing.assert_allclose(kt.values, dtruth.to_numpy(), rtol=0.08)


@pytest.mark.slow
def test_local_cluster_equals_threads_bit_for_bit(threaded, capsys):
    """``scheduler="local"`` (2 worker processes): T2* and DCE maps identical to the threaded ones."""
    with compute.scheduler_context("local", n_workers=2, threads_per_worker=1) as client:
        assert compute.describe()["n_workers"] == 2
        worker_pids = set(client.run(os.getpid).values())
        assert os.getpid() not in worker_pids and len(worker_pids) == 2  # really other processes
        # the workers get tune_allocator's malloc thresholds instead of distributed's MALLOC_TRIM_THRESHOLD_=65536
        # (which makes every scan-sized array a fresh mmap: 1.3-1.5x slower); the one-thread BLAS settings stay
        keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
        env = client.run(lambda: {k: os.environ.get(k) for k in keys})
        want = {"MALLOC_MMAP_THRESHOLD_": str(compute.MALLOC_MMAP_THRESHOLD_BYTES),
                "MALLOC_TRIM_THRESHOLD_": str(compute.MALLOC_TRIM_THRESHOLD_BYTES), "OMP_NUM_THREADS": "1"}
        assert all(e == want for e in env.values()), env
        megre = _compute(_megre_work())
        dcer = _compute(_dce_work())
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "dashboard: http" in capsys.readouterr().out
    assert any(p.startswith("large-signal") for p in prefixes)  # the chunks were synthesised on the workers
    for got, ref in zip(megre + dcer, threaded[0] + threaded[1]):
        _assert_identical(got, ref)
    assert compute.active_client() is None


@pytest.fixture
def external_cluster():
    """A LocalCluster started outside studylib, as dask-jobqueue/dask-kubernetes would."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow
def test_env_var_and_tcp_address_reach_an_existing_scheduler(threaded, external_cluster, monkeypatch, capsys):
    address = external_cluster.scheduler_address
    assert address.startswith("tcp://")
    # 1. $STUDYLIB_SCHEDULER with scheduler=None
    monkeypatch.setenv(compute.SCHEDULER_ENV, address)
    assert compute.resolve_scheduler(None) == address
    try:
        client = compute.get_client(None)
        assert client is not None and client.scheduler.address == address
        assert compute.active_client() is client and compute.describe()["address"] == address
        megre = _compute(_megre_work())
    finally:
        compute.shutdown()
    assert compute.active_client() is None
    monkeypatch.delenv(compute.SCHEDULER_ENV)
    # 2. an explicit tcp:// address, scoped
    with compute.scheduler_context(address) as client:
        assert client.scheduler.address == address
        dcer = _compute(_dce_work())
    assert f"{address}; dashboard: http" in capsys.readouterr().out
    ran = external_cluster.scheduler.task_prefixes
    assert any(p.startswith("large-signal") for p in ran) and any(p.startswith("large-roi") for p in ran)
    for got, ref in zip(megre + dcer, threaded[0] + threaded[1]):
        _assert_identical(got, ref)
    # connecting did not stop a cluster studylib does not own
    assert external_cluster.status.name == "running"
    assert dask.config.get("scheduler") in ("threads", None)


def test_lazy_study_is_lazy_and_one_task_per_scan():
    """16x nominal (tens of GB) exists as a graph only: one task per scan, nothing computed."""
    ds = lazy_study(scale=16)
    assert ds.signal.nbytes > 50e9 and ds.sizes["animal"] == 640
    g = ds.signal.data.__dask_graph__()
    assert len(g) == 640 * 6 == ds.signal.data.npartitions
    assert ds.roi.data.npartitions == 640 * 6
    # chunk (a, d) depends only on its indices: the same values whatever the scale
    small = lazy_study(n_animals=3, n_days=6)
    np.testing.assert_array_equal(ds.signal[2, 1, :, 10].values, small.signal[2, 1, :, 10].values)


@pytest.mark.parametrize("kwargs, what", [
    (dict(n_animals=0), "n_animals"), (dict(n_days=2.5), "n_days"), (dict(shape=(4, 8)), "shape"),
    (dict(kind="DWI"), "kind"), (dict(seed=-1), "seed"), (dict(scale=True), "scale"),
])
def test_lazy_study_bad_arguments(kwargs, what):
    from studylib.errors import StudyError

    with pytest.raises(StudyError, match=what):
        lazy_study(**kwargs)


_FAULTS = """
import resource, sys
import numpy as np
from studylib import compute
tuned = compute.tune_allocator() if sys.argv[1] == "tune" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(4_000_000); del a  # the first 32 MB are touched once either way
f0 = faults()
for _ in range(10):  # a scan and a map per task, freed before the next
    a = np.ones(2_000_000); b = np.ones(1_000_000); del a, b
print(tuned, faults() - f0)
"""


def _page_faults(mode: str, **env) -> tuple[str, int]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux")
                    or __import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt (Linux)")
def test_tune_allocator_reuses_freed_scans_instead_of_faulting_in_fresh_pages():
    """With distributed's worker environment (MALLOC_TRIM_THRESHOLD_=65536) every 16 MB array is a fresh mmap
    whose pages fault in one by one; after tune_allocator the freed blocks are reused (minor page faults counted
    by the kernel, in a fresh interpreter each)."""
    dist_env = {"MALLOC_TRIM_THRESHOLD_": "65536", compute.TUNE_MALLOC_ENV: "1"}
    _, plain = _page_faults("plain", **dist_env)
    tuned, after = _page_faults("tune", **dist_env)
    assert tuned == "True"
    assert plain > 2000, plain  # 10 x 24 MB re-faulted (4 kB pages, or 2 MB ones where numpy asks for them)
    assert after < plain / 10, (after, plain)
    off, _ = _page_faults("tune", **{compute.TUNE_MALLOC_ENV: "0"})
    assert off == "False"  # STUDYLIB_TUNE_MALLOC=0: left alone


_FREEZE = """
import gc, sys
import xarray
from studylib import compute
f = xarray.open_dataset  # a function object of an imported module: tracked by the collector
in_gen2 = lambda: any(o is f for o in gc.get_objects(generation=2))
before = in_gen2()
client = compute.get_client("threads")
print(before, gc.get_freeze_count() > 0, in_gen2(), compute.freeze_startup_objects())
"""


@pytest.mark.parametrize("setting, frozen", [("1", True), ("0", False)])
def test_choosing_the_scheduler_freezes_the_imported_objects_once(setting, frozen):
    """get_client takes the objects alive then (the imported modules' functions) out of the collector's full
    collections, once per process; STUDYLIB_TUNE_GC=0 leaves the collector alone (a fresh interpreter each)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FREEZE], capture_output=True, text=True, check=True,
                         env={**os.environ, compute.TUNE_GC_ENV: setting}).stdout.split()
    assert out == ["True", str(frozen), str(not frozen), "0"]
