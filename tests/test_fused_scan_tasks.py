"""One Dask task per scan for load -> background noise SD -> T2* fit -> ROI statistics (issue 17).

The fused pass (:func:`studylib.roi._fuse_blocks`) and the two-pass background mean
(:func:`studylib.fit._adapter._abs_mean_chunk_finite`) must give the same bits as the unfused
graph and the six-pass mean; ``studylib run --jobs`` starts the longest notebooks first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

from studylib.fit import _adapter
from studylib.roi import FUSE_CONFIG, _fuse_blocks

TE_MS = [2.0, 5.0, 8.0, 11.0, 14.0, 17.0]
SHAPE_XYZ = (12, 10, 3)


def _write_study(root: Path, *, nan_in_background: bool = False) -> Path:
    """Four animals x two days (one session missing), MEGRE in int16 gzip NIfTI + ROI with background (5)."""
    from studylib.io.nifti import write_nifti
    from studylib.manifest import write_manifest

    rng = np.random.default_rng(7)
    aff = np.diag([0.2, 0.2, 0.5, 1.0])
    te = np.asarray(TE_MS)
    rows = []
    for ia, (a, g) in enumerate([("a1", "control"), ("a2", "control"), ("a3", "treated"), ("a4", "treated")]):
        for d in (0, 7):
            if (a, d) == ("a4", 7):
                continue  # left early: a missing session (NaN fill shared by the graph)
            folder = f"raw/fz/{a}/day{d:02d}"
            roi = np.zeros(SHAPE_XYZ)
            roi[2:7, 2:6, :] = 1
            roi[8:10, 6:9, :] = 2
            roi[:, 9, :] = 5
            roi[11, :, :] = 5
            r2s = np.where(roi == 1, 40.0 + 5 * ia + d, 25.0) + rng.normal(0, 2, SHAPE_XYZ)
            clean = np.where(roi[..., None] == 5, 0.0, 800.0 * np.exp(-te / 1000.0 * r2s[..., None]))
            sig = np.abs(clean + rng.normal(0, 15, clean.shape) + 1j * rng.normal(0, 15, clean.shape))
            write_nifti(root / folder / "MEGRE.nii.gz", sig, aff, dtype=np.int16, design_order=False,
                        sidecar={"EchoTime": (te / 1000).tolist(), "RepetitionTime": 0.1, "FlipAngle": 30,
                                 "MagneticFieldStrength": 9.4})
            write_nifti(root / folder / "roi.nii.gz", roi, aff, dtype=np.int16,
                        sidecar={"Labels": {"1": "tumour", "2": "muscle", "5": "background"}})
            for kind, name in (("MEGRE", "MEGRE"), ("roi", "roi")):
                for ext in (".nii.gz", ".json"):
                    rows.append(dict(study="fz", animal=a, group=g, day=d, kind=kind, path=f"{folder}/{name}{ext}",
                                     sex="F"))
    return write_manifest(pd.DataFrame(rows), root / "data_manifest.csv")


def _tables(manifest, *, fuse: bool, roi_with_scan: bool, background_nan: bool = False):
    import studylib as sl
    from studylib.analysis.tables import roi_tables
    from studylib.fit.relaxometry import t2star

    ds = sl.load_study(manifest, "fz", "MEGRE", roi_with_scan=roi_with_scan)
    bare = ds.reset_coords(drop=True)
    signal = bare["signal"]
    if background_nan:  # one corrupt background value in one scan: the general (six-pass) path of that chunk
        signal = signal.where(~((signal.animal == "a2") & (signal.day == 7) & (signal.te == 5.0)
                                & (signal.x == 0) & (signal.y == 9) & (signal.z == 1)))
    maps = t2star(signal, method="auto", background=bare["roi"] == 5, mask=bare["roi"].isin([1, 2]))
    maps = maps.assign_coords({c: ds.coords[c] for c in ("group", "sex", "acquired") if c in ds.coords})
    with dask.config.set({FUSE_CONFIG: fuse, "scheduler": "threads"}):
        return roi_tables(maps, ds, variables=["r2star", "t2star", "s0", "noise_sigma"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return _write_study(tmp_path_factory.mktemp("fused"))


@pytest.mark.parametrize("roi_with_scan", [True, False])
def test_fused_pass_gives_the_same_bits_as_the_task_graph(study, roi_with_scan):
    fused = _tables(study, fuse=True, roi_with_scan=roi_with_scan)
    plain = _tables(study, fuse=False, roi_with_scan=roi_with_scan)
    for a, b in zip(fused, plain):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    summary, sessions = fused
    assert len(sessions) == 7 and np.isfinite(sessions["r2star"]).all()
    # the noise SD the fit used is the background's Rayleigh estimate (15 per channel), not a fitted offset
    ns = summary[(summary["variable"] == "noise_sigma") & summary["acquired"]]["mean"]
    assert np.all(np.abs(ns - 15.0) < 2.0)


def test_nonfinite_background_value_takes_the_general_path_with_the_same_bits(study):
    fused = _tables(study, fuse=True, roi_with_scan=True, background_nan=True)
    plain = _tables(study, fuse=False, roi_with_scan=True, background_nan=True)
    for a, b in zip(fused, plain):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_one_task_per_scan(study):
    import studylib as sl
    from studylib import compute
    from studylib import roi as roimod
    from studylib.fit.relaxometry import t2star

    ds = sl.load_study(study, "fz", "MEGRE", roi_with_scan=True)
    # load_study hands out one graph layer per variable (not a read, an array and a stack layer per scan)
    assert all(len(ds[v].data.__dask_graph__().layers) == 1 for v in ("signal", "roi"))
    bare = ds.reset_coords(drop=True)
    maps = t2star(bare["signal"], background=bare["roi"] == 5, mask=bare["roi"].isin([1, 2]))
    captured = {}
    real = roimod._fuse_blocks

    def spy(arr, **kw):
        out = real(arr, **kw)
        captured["before"] = len(arr.__dask_optimize__(arr.__dask_graph__(), list(dask.core.flatten(
            arr.__dask_keys__()))))
        captured["after"] = len(out.__dask_graph__())
        captured["blocks"] = int(np.prod(out.numblocks))
        captured["runners"] = [t for t in dict(out.__dask_graph__()).values()
                               if getattr(t, "func", None) is compute._run_in_order]
        return out

    roimod._fuse_blocks = spy
    try:
        roimod.summarize(maps[["r2star", "fit_ok"]], bare["roi"], labels={1: "tumour"}, voxel_volume_mm3=0.02,
                         empty="ignore")
    finally:
        roimod._fuse_blocks = real
    n_scans = int(ds["acquired"].sum())
    assert captured["blocks"] == 8                      # 4 animals x 2 days, one block each
    assert captured["before"] > 10 * n_scans           # ~25 small tasks per scan unfused
    # one task per block, plus the few shared by the missing session's blocks (NaN fill, zero labels)
    assert captured["after"] <= captured["blocks"] + 4
    # each runs its chain in an order worked out once; the blockwise-fused subgraphs inside it are flattened
    # (dask.order sorted each at every call), except one whose inner keys are placeholders shared by every block
    from dask._task_spec import _execute_subgraph

    assert len(captured["runners"]) == captured["blocks"]
    for r in captured["runners"]:
        nested = [t for t in r.args[0] if getattr(t, "func", None) is _execute_subgraph]
        assert len(r.args[0]) > 10 and len(nested) <= 1, [t.key for t in nested]


def test_scans_per_task_setting_is_checked_and_applies_without_a_cluster():
    from studylib.roi import SCANS_PER_TASK_CONFIG, RoiError, _coarsen_scans, _scans_per_task

    assert _scans_per_task(1000, None) == 1            # threads: one scan per task
    with dask.config.set({SCANS_PER_TASK_CONFIG: 3}):
        assert _scans_per_task(5, None) == 3
    for bad in (0, -1, 1.5, "two", True):
        with dask.config.set({SCANS_PER_TASK_CONFIG: bad}), pytest.raises(RoiError, match="scans_per_task"):
            _scans_per_task(10, None)
    import xarray as xr

    one = xr.DataArray(np.zeros((3, 5, 2)), dims=("animal", "day", "stat")).chunk({"animal": 1, "day": 1})
    two, roots = _coarsen_scans(one, ["animal", "day"], 2)
    assert two.chunks == ((1, 1, 1), (2, 2, 1), (2,)) and roots == 4
    assert _coarsen_scans(one, ["animal", "day"], 1)[0] is one
    several = one.chunk({"day": 5})                    # blocks already hold several scans: left as they are
    assert _coarsen_scans(several, ["animal", "day"], 2) == (several, 2)
    single_day = one.isel(day=[0])                     # coarsened along the last id dim that has two scans
    assert _coarsen_scans(single_day, ["animal", "day"], 2)[0].chunks[0] == (2, 1)


def test_fusion_keeps_parallel_inputs_of_a_multi_scan_block_apart():
    import dask.array as da

    parts = [da.from_delayed(dask.delayed(np.full)((3,), float(i)), shape=(3,), dtype=float) for i in range(4)]
    x = da.stack(parts).rechunk((2, 3))                # each block holds two independent reads ...
    y = (x * 2).sum(axis=1)
    out = _fuse_blocks(y, max_roots=1)                 # ... more than allowed: left as they are
    assert len(out.__dask_graph__()) >= 4
    np.testing.assert_array_equal(out.compute(), y.compute())
    fused = _fuse_blocks(y, max_roots=2)
    assert len(fused.__dask_graph__()) == 2
    np.testing.assert_array_equal(fused.compute(), y.compute())
    assert _fuse_blocks(np.ones(3)) is not None        # numpy passes through


@pytest.mark.parametrize("by_value", ["lambda", "__main__ function"])
def test_packed_task_body_takes_lambdas_and_main_functions_by_value(tmp_path, by_value, monkeypatch):
    """A packed body is pickled by the standard pickler where it can and by cloudpickle where it cannot (a lambda; a
    function of ``__main__``, which a worker could not import by name): either way it runs to the same values."""
    import pickle
    import types

    import dask.array as da
    from dask._task_spec import convert_legacy_graph

    from studylib.compute import _run_pickled, fused_task

    main_like = types.FunctionType((lambda v: v * 3.0).__code__, {}, "triple")
    main_like.__module__ = "__main__"
    main_like.__qualname__ = "triple"
    monkeypatch.setattr(sys.modules["__main__"], "triple", main_like, raising=False)  # pickle takes it by name
    x = da.from_delayed(dask.delayed(np.arange)(6.0), shape=(6,), dtype=float)
    step = (lambda v: v * 3.0) if by_value == "lambda" else main_like  # each alone: pickle fails / names __main__
    y = x.map_blocks(np.add, 1.0).map_blocks(step).map_blocks(np.sqrt)
    dsk = convert_legacy_graph(dict(y.__dask_graph__()))
    out = y.__dask_keys__()[0]
    members = list(dsk)
    plain = fused_task(dsk, members, out)
    packed = fused_task(dsk, members, out, packed=True)
    assert packed.func is _run_pickled and isinstance(packed.args[0], bytes)
    np.testing.assert_array_equal(pickle.loads(packed.args[0])({}), plain({}))
    # another interpreter (a worker: its __main__ has no `triple`) runs the body to the same values
    blob = tmp_path / "body.pkl"
    blob.write_bytes(packed.args[0])
    code = ("import pickle, sys, numpy as np; body = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(np.asarray(body({})).tolist())")
    run = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(json.loads(run.stdout), np.sqrt((np.arange(6.0) + 1.0) * 3.0))


@pytest.mark.parametrize("dtype", [np.float32, None])   # None: how Dask's reduction calls the chunk function
@pytest.mark.parametrize("axis,keepdims", [((2, 3, 4, 5), True), ((3, 4, 5), False), (None, True), ((0, 2, 5), True)])
def test_two_pass_background_mean_matches_six_pass(axis, keepdims, dtype):
    rng = np.random.default_rng(3)
    x = (rng.rayleigh(12.0, (2, 1, 6, 4, 9, 11)) * rng.choice([-1, 1], (2, 1, 6, 4, 9, 11))).astype(np.float32)
    w = np.broadcast_to(rng.random((2, 1, 1, 4, 9, 11)) < 0.4, x.shape)

    def six_pass(x):
        a = np.abs(x)
        keep = np.isfinite(a) & w
        np.copyto(a, a.dtype.type(0), where=~keep)
        return {"n": np.sum(keep, axis=axis, dtype=dtype, keepdims=keepdims),
                "total": np.sum(a, axis=axis, dtype=dtype, keepdims=keepdims)}

    fast = _adapter._abs_mean_chunk_finite(x, w, axis, keepdims, dtype)
    assert fast is not None
    ref = six_pass(x)
    for k in ("n", "total"):
        assert fast[k].dtype == ref[k].dtype and fast[k].shape == ref[k].shape
        np.testing.assert_array_equal(fast[k], ref[k])
    x[1, 0, 2, 1, 1, 1] = np.inf                        # Inf (even outside the mask): the general path
    assert _adapter._abs_mean_chunk_finite(x, w, axis, keepdims, dtype) is None
    got = _adapter._abs_mean_chunk(x, weights=w, axis=axis, keepdims=keepdims, dtype=dtype)
    for k in ("n", "total"):
        np.testing.assert_array_equal(got[k], six_pass(x)[k])


def test_jobs_start_the_longest_recorded_notebook_first(tmp_path):
    from studylib.workbook.run import longest_first

    names = ["a", "b", "c", "d", "e"]
    assert longest_first(names, tmp_path) == names     # no records: the given order
    for n, s in {"a": 10.0, "b": 30.0, "d": 20.0}.items():
        (tmp_path / f"{n}.json").write_text(json.dumps({"run_s": s}))
    (tmp_path / "e.json").write_text("{not json")
    # c and e have no usable record: expected to take the median recorded (20 s); ties keep the given order
    assert longest_first(names, tmp_path) == ["b", "c", "d", "e", "a"]


def test_jobs_without_records_start_by_the_catalogued_typical_durations(tmp_path):
    from studylib.catalog import EXPERIMENTS
    from studylib.workbook.run import longest_first

    names = sorted(EXPERIMENTS) + ["lab_own"]             # a lab's own notebook has no catalogued duration
    order = longest_first(names, tmp_path / "fresh")
    typical = {n: EXPERIMENTS[n].typical_run_s for n in EXPERIMENTS}
    assert all(v > 0 for v in typical.values())
    median = sorted(typical.values())[len(typical) // 2]
    expected = sorted(names, key=lambda n: -typical.get(n, median))
    assert order == expected and order[0] == max(typical, key=typical.get)
    (tmp_path / "fresh").mkdir()                           # one recorded run there: the records decide, not the catalogue
    (tmp_path / "fresh" / "acidocest_b16.json").write_text(json.dumps({"run_s": 500.0}))
    assert longest_first(names, tmp_path / "fresh")[0] == "acidocest_b16"


def test_the_dask_background_mean_takes_the_two_pass_path(study, monkeypatch):
    import studylib as sl
    from studylib.fit.relaxometry import noise_sigma_from_background

    calls = []
    real = _adapter._abs_mean_chunk_finite

    def spy(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_adapter, "_abs_mean_chunk_finite", spy)
    full = sl.load_study(study, "fz", "MEGRE")
    ds = full.reset_coords(drop=True)
    sigma = noise_sigma_from_background(ds["signal"], ds["roi"] == 5)
    with dask.config.set(scheduler="sync"):
        vals = sigma.values
    # every acquired scan's chunk took the two-pass path; the missing session (all NaN) the general one
    assert len(calls) == full["acquired"].size and calls.count(False) == int((~full["acquired"]).sum()) == 1
    assert np.all(np.abs(vals[np.isfinite(vals)] - 15.0) < 2.0)


@pytest.mark.parametrize("dtype", [np.float32, None])
def test_matvec_background_sum_agrees_with_the_masked_sum(dtype):
    """A non-negative scan chunk with its mask constant over the echoes: one matrix-vector product, equal to
    the masked sum to float32 rounding; negative values, NaN or Inf leave it for the exact paths."""
    rng = np.random.default_rng(11)
    x = rng.rayleigh(15.0, (1, 1, 12, 6, 40, 40)).astype(np.float32)
    w = rng.random((1, 1, 1, 6, 40, 40)) < 0.45
    axis = (2, 3, 4, 5)
    assert _adapter._matvec_layout(x, w, axis) == (1, 12, 6 * 40 * 40)
    got = _adapter._abs_mean_chunk_finite(x, w, axis, True, dtype)
    ref = np.sum(np.abs(x) * w, axis=axis, dtype=np.float64, keepdims=True)
    np.testing.assert_allclose(got["total"].astype(np.float64), ref, rtol=2e-6)
    assert got["total"].dtype == np.float32 and int(got["n"].ravel()[0]) == int(w.sum()) * 12
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[0, 0, 3, 2, 5, 5] = bad
        assert _adapter._masked_sum_matvec(y, w, axis, True, np.dtype(np.float32)) is None
    y = x.copy()
    y[0, 0, 0, 0, 0, 0] = -1.0                       # a signed value: |x| is needed, the two-pass path sums it
    assert _adapter._masked_sum_matvec(y, w, axis, True, np.dtype(np.float32)) is None
    two = _adapter._abs_mean_chunk_finite(y, w, axis, True, dtype)
    np.testing.assert_array_equal(two["total"], np.sum(np.abs(y) * w, axis=axis, dtype=dtype, keepdims=True))
    # the mask varying along the echoes, or reduced axes that are not trailing: no matrix-vector layout
    assert _adapter._matvec_layout(x, np.broadcast_to(w, x.shape).copy(), axis) == (1, 1, 12 * 6 * 40 * 40)
    assert _adapter._matvec_layout(x, w, (2, 3)) is None


@pytest.mark.slow
@pytest.mark.parametrize("scans_per_task, tasks", [("auto", 8), (2, 4)])
def test_under_a_local_cluster_the_packed_scan_tasks_give_the_same_bits(study, scans_per_task, tasks):
    """With a distributed client each fused scan task travels as bytes pickled once (``_pickled_once``): the
    scheduler sees one opaque task per scan (per two scans when asked; "auto" asks for two only from 16 scans
    per worker thread, and this study has 8 blocks for 2), and the tables equal the threaded, unfused ones
    to the bit."""
    import studylib as sl
    from studylib import compute
    from studylib import roi as roimod
    from studylib.analysis.tables import roi_tables
    from studylib.fit.relaxometry import t2star

    plain = _tables(study, fuse=False, roi_with_scan=True)
    packed = []
    real = compute._pickled_once_runner
    with compute.scheduler_context("local", n_workers=2, threads_per_worker=1, quiet=True) as client, \
            dask.config.set({roimod.SCANS_PER_TASK_CONFIG: scans_per_task}):
        assert roimod._scans_per_task(32, client) == (2 if scans_per_task == "auto" else scans_per_task)
        assert roimod._scans_per_task(31, client) == (1 if scans_per_task == "auto" else scans_per_task)
        compute._pickled_once_runner = lambda t: packed.append(t.key) or real(t)
        try:
            ds = sl.load_study(study, "fz", "MEGRE", roi_with_scan=True)
            bare = ds.reset_coords(drop=True)
            maps = t2star(bare["signal"], method="auto", background=bare["roi"] == 5,
                          mask=bare["roi"].isin([1, 2]))
            maps = maps.assign_coords({c: ds.coords[c] for c in ("group", "sex", "acquired") if c in ds.coords})
            got = roi_tables(maps, ds, variables=["r2star", "t2star", "s0", "noise_sigma"])
        finally:
            compute._pickled_once_runner = real
        assert compute.active_client() is client
    # one packed task per (animal, day) block, the missing session's NaN block too; or per animal's two days
    assert len(packed) == tasks
    for a, b in zip(got, plain):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
