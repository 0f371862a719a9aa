"""studylib.cache: content-addressed keys, exact invalidation, zarr v3/parquet/json round trips,
atomic writes (a process killed mid-write leaves nothing readable), bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

from studylib import cache as cm
from studylib.cache import Cache, CacheError, make_key, manifest_rows
from studylib.errors import StudyError


def _maps(n_animals=3, n_days=2, seed=0, lazy=True):
    rng = np.random.default_rng(seed)
    shape = (n_animals, n_days, 2, 4, 5)
    r2 = rng.uniform(10, 80, size=shape).astype("float32")
    data = da.from_array(r2, chunks=(n_animals, n_days, 2, 4, 5)) if lazy else r2
    ds = xr.Dataset(
        {"r2star": (("animal", "day", "z", "y", "x"), data, {"units": "1/s"}),
         "fit_ok": (("animal", "day", "z", "y", "x"), r2 > 20)},
        coords={"animal": np.array(["m01", "m<02>", "mäus&3"][:n_animals]), "day": [0, 7][:n_days],
                "group": ("animal", np.array(["control", "Amp B", "vehicle"][:n_animals]))},
        attrs={"study": "ampb_ferumoxytol", "voxel_size_mm": (0.1, 0.1, 0.5), "field_T": np.float64(9.4)})
    return ds


def _strip(obj):
    obj = obj.copy()
    obj.attrs = {k: v for k, v in obj.attrs.items() if k not in (cm.KEY_ATTR, cm.NAME_ATTR)}
    return obj


def _write_manifest(path: Path, rows: list[tuple]) -> Path:
    df = pd.DataFrame(rows, columns=["study", "animal", "group", "day", "kind", "path", "sha256"])
    df.to_csv(path, index=False)
    return path


ROWS = [
    ("ampb_ferumoxytol", "m01", "control", "0", "MEGRE", "raw/a/m01/day00/MEGRE.nii.gz", "a" * 64),
    ("ampb_ferumoxytol", "m02", "amp_b", "0", "MEGRE", "raw/a/m02/day00/MEGRE.nii.gz", "b" * 64),
    ("ampb_ferumoxytol", "m01", "control", "0", "DWI", "raw/a/m01/day00/DWI.nii.gz", "c" * 64),
    ("ampb_ferumoxytol", "m01", "control", "0", "roi", "raw/a/m01/day00/roi.nii.gz", "d" * 64),
    ("collagen_adc", "p01", "BK-12", "0", "DWI", "raw/c/p01/day00/DWI.nii.gz", "e" * 64),
]


# --------------------------------------------------------------------------------- round trips

def test_dataset_round_trip_is_zarr_v3_unconsolidated_one_chunk_per_scan(tmp_path):
    ds = _maps()
    c = Cache("ampb_ferumoxytol", tmp_path)
    out = c.get_or_compute("t2star_maps", lambda: ds, params={"method": "auto"})
    xr.testing.assert_identical(_strip(out).compute(), _strip(ds).compute().assign_attrs(
        voxel_size_mm=[0.1, 0.1, 0.5], field_T=9.4))
    assert out.r2star.chunks == ((1, 1, 1), (1, 1), (2,), (4,), (5,))  # one chunk per (animal, day) scan
    assert out.animal.dtype == object and out.group.dtype == object
    assert out.r2star.attrs["units"] == "1/s" and out.attrs[cm.KEY_ATTR] == c.key(
        "t2star_maps", params={"method": "auto"}, code=())  # the lambda uses no studylib code
    store = next((tmp_path / "ampb_ferumoxytol" / "t2star_maps").iterdir()) / "data.zarr"
    root_meta = json.loads((store / "zarr.json").read_text())
    assert root_meta["zarr_format"] == 3
    assert root_meta.get("consolidated_metadata") is None  # unconsolidated
    assert not (store / ".zmetadata").exists()


def test_dataarray_dataframe_series_json_round_trip(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    arr = _maps(lazy=False).r2star
    out = c.get_or_compute("r2", lambda: arr)
    assert isinstance(out, xr.DataArray) and out.name == "r2star"
    np.testing.assert_array_equal(out.values, arr.values)
    df = pd.DataFrame({"animal": ["m<1>", "m2"], "r2star_per_s": [31.5, np.nan], "day": [0, 7]})
    got = c.get_or_compute("table", lambda: df)
    pd.testing.assert_frame_equal(got, df, check_dtype=False)
    s = pd.Series([1.0, 2.0], name="ktrans_per_min")
    got_s = c.get_or_compute("series", lambda: s)
    assert got_s.name == "ktrans_per_min" and got_s.tolist() == [1.0, 2.0]
    doc = {"estimate": np.float64(-3.5), "ci": np.array([-5.0, -2.0]), "n": np.int64(12), "label": "Amp B"}
    assert c.get_or_compute("stats", lambda: doc) == {"estimate": -3.5, "ci": [-5.0, -2.0], "n": 12,
                                                       "label": "Amp B"}


# --------------------------------------------------------------------------------- hits and invalidation

def test_second_call_is_a_hit_and_does_not_compute(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return _maps(lazy=False)

    c1 = Cache("exp", tmp_path, verbose=False)
    a = c1.get_or_compute("maps", fn, params={"x": 1})
    c2 = Cache("exp", tmp_path, verbose=False)  # a new session (e.g. a rerun of the notebook)
    b = c2.get_or_compute("maps", fn, params={"x": 1})
    assert len(calls) == 1 and c1.misses == ["maps"] and c2.hits == ["maps"] and not c2.misses
    xr.testing.assert_identical(a.compute(), b.compute())


def test_changing_an_input_sha_or_a_parameter_invalidates_exactly_the_dependents(tmp_path):
    man = _write_manifest(tmp_path / "data_manifest.csv", ROWS)
    counts = {}

    def run_pipeline(method="auto", b_min=200):
        c = Cache("ampb_ferumoxytol", tmp_path / "derived", verbose=False)
        megre = manifest_rows(man, study="ampb_ferumoxytol", kinds=["MEGRE", "roi"])
        dwi = manifest_rows(man, study="ampb_ferumoxytol", kinds=["DWI", "roi"])

        def counted(name, value):
            def fn():
                counts[name] = counts.get(name, 0) + 1
                return value() if callable(value) else value
            return fn

        maps = c.get_or_compute("t2star_maps", counted("t2star_maps", lambda: _maps(lazy=False)),
                                inputs=[megre], params={"method": method})
        adc = c.get_or_compute("adc_maps", counted("adc_maps", lambda: _maps(seed=1, lazy=False)),
                               inputs=[dwi], params={"b_min": b_min})
        table = c.get_or_compute("roi_table", counted("roi_table", lambda: maps.r2star.mean(["z", "y", "x"])
                                                      .to_dataframe().reset_index()), inputs=[maps])
        c.get_or_compute("stats", counted("stats", lambda: {"mean": float(table.r2star.mean())}),
                         depends=["roi_table"])
        return c

    run_pipeline()
    assert counts == {"t2star_maps": 1, "adc_maps": 1, "roi_table": 1, "stats": 1}
    c = run_pipeline()
    assert counts == {"t2star_maps": 1, "adc_maps": 1, "roi_table": 1, "stats": 1}
    assert sorted(c.hits) == ["adc_maps", "roi_table", "stats", "t2star_maps"]

    # one MEGRE file changes: the T2* maps and everything downstream of them recompute, ADC does not
    rows = [list(r) for r in ROWS]
    rows[1][6] = "f" * 64
    _write_manifest(man, [tuple(r) for r in rows])
    c = run_pipeline()
    assert counts == {"t2star_maps": 2, "adc_maps": 1, "roi_table": 2, "stats": 2}
    assert c.hits == ["adc_maps"]

    # a row of another study changes: nothing recomputes
    rows[4][6] = "0" * 64
    _write_manifest(man, [tuple(r) for r in rows])
    run_pipeline()
    assert counts == {"t2star_maps": 2, "adc_maps": 1, "roi_table": 2, "stats": 2}

    # a parameter of the ADC fit changes: only the ADC maps recompute
    c = run_pipeline(b_min=400)
    assert counts == {"t2star_maps": 2, "adc_maps": 2, "roi_table": 2, "stats": 2}
    assert sorted(c.misses) == ["adc_maps"]

    # the shared roi row changes: both fits recompute
    rows[3][6] = "9" * 64
    _write_manifest(man, [tuple(r) for r in rows])
    run_pipeline(b_min=400)
    assert counts == {"t2star_maps": 3, "adc_maps": 3, "roi_table": 3, "stats": 3}


def test_key_covers_code_and_package_versions():
    base = make_key("m", params={"a": 1}, code="c1", versions={"numpy": "2.0"})
    assert make_key("m", params={"a": 1}, code="c1", versions={"numpy": "2.0"}) == base
    assert make_key("m", params={"a": 1}, code="c2", versions={"numpy": "2.0"}) != base
    assert make_key("m", params={"a": 1}, code="c1", versions={"numpy": "2.1"}) != base
    assert make_key("n", params={"a": 1}, code="c1", versions={"numpy": "2.0"}) != base
    assert len(cm.code_hash()) == 64 and cm.package_versions()["numpy"] == np.__version__


def test_manifest_rows_key_ignores_row_order_but_not_content(tmp_path):
    a = _write_manifest(tmp_path / "a.csv", ROWS)
    b = _write_manifest(tmp_path / "b.csv", list(reversed(ROWS)))
    ka = make_key("x", inputs=[manifest_rows(a, study="ampb_ferumoxytol")])
    assert ka == make_key("x", inputs=[manifest_rows(b, study="ampb_ferumoxytol")])
    changed = [list(r) for r in ROWS]
    changed[0][2] = "treated"  # a group relabelled changes the result, so it changes the key
    c = _write_manifest(tmp_path / "c.csv", [tuple(r) for r in changed])
    assert make_key("x", inputs=[manifest_rows(c, study="ampb_ferumoxytol")]) != ka


def test_file_inputs_are_content_addressed(tmp_path):
    f = tmp_path / "histology.csv"
    f.write_text("animal,collagen_fraction\nm1,0.2\n")
    k1 = make_key("t", inputs=f)
    moved = tmp_path / "moved.csv"
    moved.write_bytes(f.read_bytes())
    assert make_key("t", inputs=[moved]) == k1
    moved.write_text("animal,collagen_fraction\nm1,0.3\n")
    assert make_key("t", inputs=[moved]) != k1


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.booleans()),
                       max_size=5),
       st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.booleans()),
                       max_size=5))
def test_key_depends_exactly_on_the_canonical_params(p1, p2):
    k1 = make_key("e", params=p1, code="c", versions={})
    assert k1 == make_key("e", params=dict(reversed(list(p1.items()))), code="c", versions={})
    same = json.dumps(cm._canon(p1, "p"), sort_keys=True) == json.dumps(cm._canon(p2, "p"), sort_keys=True)
    assert (k1 == make_key("e", params=p2, code="c", versions={})) == same


def test_dataclass_params_and_numpy_inputs():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Spec:
        te_ms: tuple = (3.0, 6.0)
        model: str = "mono"

    k = make_key("f", params=Spec(), inputs=[np.arange(3.0)])
    assert k == make_key("f", params=Spec(), inputs=[np.arange(3.0)])
    assert k != make_key("f", params=Spec(model="bi"), inputs=[np.arange(3.0)])
    assert k != make_key("f", params=Spec(), inputs=[np.arange(3.0) + 1e-9])


# --------------------------------------------------------------------------------- atomicity

KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dask.array as da, numpy as np, xarray as xr
    from studylib.cache import Cache

    root, marker = sys.argv[1], Path(sys.argv[2])

    def slow(block):
        if block.size:  # not dask's meta probe
            marker.touch()
            time.sleep(0.4)
        return block

    arr = da.ones((24, 1, 4, 4), chunks=(1, 1, 4, 4)).map_blocks(slow, dtype=float, meta=np.array((), float))
    ds = xr.Dataset({"v": (("animal", "day", "y", "x"), arr)},
                    coords={"animal": [f"m{i:02d}" for i in range(24)], "day": [0]})
    Cache("exp", root, verbose=False).get_or_compute("maps", lambda: ds, params={"p": 1})
    print("finished")
""")


def test_process_killed_mid_write_leaves_no_readable_entry_and_rerun_completes(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "derived"), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.05)
        time.sleep(0.6)  # a few chunks are on disk now
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        out, _ = proc.communicate(timeout=30)
    assert b"finished" not in out
    parent = tmp_path / "derived" / "exp" / "maps"
    leftovers = [p for p in parent.iterdir()]
    assert leftovers and all(cm.TMP_TAG in p.name for p in leftovers)  # only the partial tmp folder
    assert any((p / "data.zarr").exists() for p in leftovers)  # it really was interrupted mid-write

    c = Cache("exp", tmp_path / "derived", verbose=False)
    key = c.key("maps", params={"p": 1}, code=())
    assert not c.has("maps", key) and c.entries() == []
    with pytest.raises(CacheError, match="no cached intermediate 'maps'"):
        c.load("maps")

    ds = xr.Dataset({"v": (("animal", "day", "y", "x"), np.full((24, 1, 4, 4), 1.0))},
                    coords={"animal": [f"m{i:02d}" for i in range(24)], "day": [0]})
    out = c.get_or_compute("maps", lambda: ds, params={"p": 1})  # the rerun completes
    assert c.misses == ["maps"] and float(out.v.sum()) == 24 * 16
    assert c.has("maps", key) and [e.name for e in c.entries()] == ["maps"]
    assert c.prune(older_than_s=0) == 1  # the abandoned tmp folder
    assert [p.name for p in parent.iterdir()] == [key]


def test_tmp_and_incomplete_folders_are_never_read(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    key = c.key("t", params={}, code=())
    parent = tmp_path / "exp" / "t"
    (parent / f"{key}{cm.TMP_TAG}dead").mkdir(parents=True)
    (parent / f"{key}{cm.TMP_TAG}dead" / "data.json").write_text('{"stale": true}')
    (parent / key).mkdir()  # a final-looking folder without the completion marker
    (parent / key / "data.json").write_text('{"stale": true}')
    assert not c.has("t", key)
    assert c.get_or_compute("t", lambda: {"fresh": True}) == {"fresh": True}
    assert c.misses == ["t"]


def test_damaged_entry_is_recomputed_not_fatal(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    c.get_or_compute("tab", lambda: pd.DataFrame({"a": [1, 2]}))
    key = c.key("tab", code=())
    (tmp_path / "exp" / "tab" / key / "data.parquet").write_bytes(b"not parquet")
    c2 = Cache("exp", tmp_path, verbose=False)
    out = c2.get_or_compute("tab", lambda: pd.DataFrame({"a": [1, 2]}))
    assert out["a"].tolist() == [1, 2] and c2.misses == ["tab"]


def test_concurrent_writer_of_the_same_key_is_harmless(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    c.get_or_compute("j", lambda: {"v": 1})
    key = c.key("j", code=())
    # a second process finishing the same entry later: its rename fails, its tmp is removed
    meta = c._write("j", key, {"v": 1}, "json", inputs=[], params=None, depends=(), description="",
                    t0=time.perf_counter())
    assert meta["key"] == key and c.load("j") == {"v": 1}
    assert [p.name for p in (tmp_path / "exp" / "j").iterdir()] == [key]


def test_disabled_cache_computes_every_time_and_writes_nothing(tmp_path):
    calls = []
    c = Cache("exp", tmp_path, enabled=False, verbose=False)
    for _ in range(2):
        c.get_or_compute("j", lambda: calls.append(1) or {"v": 1})
    assert len(calls) == 2 and not (tmp_path / "exp").exists()


def test_entries_index_and_prune_keep_latest(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    c.get_or_compute("tab", lambda: pd.DataFrame({"a": [1]}), params={"v": 1}, description="first")
    c.get_or_compute("tab", lambda: pd.DataFrame({"a": [2]}), params={"v": 2}, description="second")
    c.get_or_compute("doc", lambda: {"x": 1}, inputs=[np.arange(2)])
    ents = {e.name: e for e in c.entries()}
    assert set(ents) == {"tab", "doc"} and ents["tab"].params == {"v": 2} and ents["tab"].description == "second"
    assert c.load("tab")["a"].tolist() == [2]
    assert c.load("tab", key=c.key("tab", params={"v": 1}, code=()))["a"].tolist() == [1]
    assert c.prune() == 1  # the older 'tab'
    with pytest.raises(CacheError, match="no complete cache entry"):
        c.load("tab", key=c.key("tab", params={"v": 1}, code=()))


# --------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", f"x{cm.TMP_TAG}y", "a" * 200, 5])
def test_bad_entry_names(tmp_path, name):
    with pytest.raises(CacheError, match="must be 1-128"):
        Cache("exp", tmp_path).get_or_compute(name, lambda: {})


def test_bad_experiment_name(tmp_path):
    with pytest.raises(StudyError, match="experiment"):
        Cache("../../etc", tmp_path)


def test_unhashable_param_and_missing_file_input(tmp_path):
    c = Cache("exp", tmp_path)
    with pytest.raises(CacheError, match=r"params\['model'\]: cannot use a object"):
        c.get_or_compute("x", lambda: {}, params={"model": object()})
    with pytest.raises(CacheError, match="not an existing file"):
        c.get_or_compute("x", lambda: {}, inputs=[tmp_path / "nope.nii.gz"])


def test_lazy_xarray_input_without_fingerprint_is_refused(tmp_path):
    ds = _maps(lazy=True)
    ds.attrs = {}
    with pytest.raises(CacheError, match="no content fingerprint"):
        Cache("exp", tmp_path).key("x", inputs=[ds])
    ds.attrs["manifest_sha256"] = "0" * 64  # a loaded study names its manifest: accepted
    assert len(Cache("exp", tmp_path).key("x", inputs=[ds])) == 64


def test_wrong_result_type_for_kind(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    with pytest.raises(CacheError, match="cannot be cached as 'zarr'"):
        c.get_or_compute("x", lambda: {"a": 1}, kind="zarr")
    with pytest.raises(CacheError, match="not JSON-able"):
        c.get_or_compute("y", lambda: {"a": object()})
    with pytest.raises(CacheError, match="kind must be one of"):
        c.get_or_compute("z", lambda: {}, kind="hdf5")
    assert not any((tmp_path / "exp").rglob("_entry.json"))  # nothing was written


def test_manifest_rows_bad_input(tmp_path):
    with pytest.raises(CacheError, match="manifest not found"):
        manifest_rows(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("study,animal\nx,y\n")
    with pytest.raises(CacheError, match="no 'path' column"):
        manifest_rows(bad)
    man = _write_manifest(tmp_path / "m.csv", ROWS)
    with pytest.raises(CacheError, match="no manifest rows"):
        manifest_rows(man, study="lactate_cest")
    assert len(manifest_rows(man, study="ampb_ferumoxytol", kinds="MEGRE", animals=["m01"])) == 1


def test_load_missing_entry_lists_available(tmp_path):
    c = Cache("exp", tmp_path, verbose=False)
    c.get_or_compute("present", lambda: {"a": 1})
    with pytest.raises(CacheError, match=r"available: \['present'\]"):
        c.load("absent")


def test_depends_on_unknown_entry(tmp_path):
    with pytest.raises(CacheError, match="depends on 'maps', which has not been computed"):
        Cache("exp", tmp_path).get_or_compute("t", lambda: {}, depends=["maps"])


def test_map_key_depends_on_its_code_not_on_figures_or_docs(tmp_path, monkeypatch):
    """A map's cache key hashes the source of the modules that compute it and what they import
    (kernel, adapter, reader), so editing plots or the notebooks keeps the maps; editing the
    kernel refits them."""
    import shutil

    from studylib import _codehash

    root = tmp_path / "src"
    shutil.copytree(Path(_codehash.__file__).resolve().parent, root / "studylib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_codehash, "_ROOT", root)

    def key():
        _codehash._imports.cache_clear()
        _codehash.code_hash_of.cache_clear()
        return _codehash.code_hash_of("studylib.fit.relaxometry", "studylib.io.load")

    closure = _codehash.module_closure("studylib.fit.relaxometry", "studylib.io.load")
    assert {"studylib.models.relaxometry", "studylib.fit._adapter", "studylib.io.load"} <= set(closure)
    assert not {"studylib.plots", "studylib.workbook.report", "studylib.analysis.maps"} & set(closure)
    first = key()
    with open(root / "studylib" / "plots.py", "a") as f:
        f.write("\n# a figure tweak\n")
    with open(root / "studylib" / "workbook" / "report.py", "a") as f:
        f.write("\n# a report tweak\n")
    assert key() == first
    with open(root / "studylib" / "models" / "relaxometry.py", "a") as f:
        f.write("\n# a kernel change\n")
    assert key() != first
    # and the cache uses it: the same entry under an explicit code list is keyed by that code
    c = Cache("e", tmp_path / "derived", verbose=False)
    k1 = c.key("m", inputs=[1], params={}, code=("studylib.fit.relaxometry",))
    k2 = c.key("m", inputs=[1], params={}, code=("studylib.fit.diffusion",))
    assert k1 != k2


def test_default_code_is_what_the_compute_function_refers_to(tmp_path):
    """Without ``code=``, a studylib function is keyed by its own module (and its imports); a notebook's
    function by the studylib modules its code refers to, so a lambda over plain numpy depends on no
    studylib code and a figure edit never refits a notebook's map."""
    from studylib import _codehash
    from studylib.models.noise import add_rician_noise

    assert _codehash.modules_of(add_rician_noise) == ("studylib.models.noise",)
    ns = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import functools
        import numpy as np
        import studylib
        from studylib.fit import relaxometry
        from studylib.cache import Cache

        def helper(x):
            return relaxometry.t2star(x)

        uses_kernel = lambda: helper(np.ones(3))
        scale = 3.0
        plain = lambda: float(np.ones(3).sum() * scale)
        closure = (lambda c: (lambda: c.experiment))(Cache("x", "."))
        partial = functools.partial(relaxometry.t2star, np.ones(3))
        facade = lambda: studylib.read_manifest
        """), ns)
    assert _codehash.modules_of(ns["uses_kernel"]) == ("studylib.fit.relaxometry",)
    assert _codehash.modules_of(ns["plain"]) == ()
    assert _codehash.modules_of(ns["closure"]) == ("studylib.cache",)
    assert _codehash.modules_of(ns["partial"]) == ("studylib.fit.relaxometry",)
    assert _codehash.modules_of(ns["facade"]) == ("studylib",)  # the whole package
    assert "studylib.plots" in _codehash.module_closure("studylib")
    # a step in a higher layer follows what it imports, except figures, the runner and the CLI
    maps = set(_codehash.module_closure("studylib.analysis.maps"))
    assert {"studylib.analysis.maps", "studylib.fit.relaxometry", "studylib.models.relaxometry"} <= maps
    assert not any(m.startswith(("studylib.plots", "studylib.workbook", "studylib.cli")) for m in maps)

    c = Cache("e", tmp_path, verbose=False)
    assert c.key("m", inputs=[1], fn=ns["uses_kernel"]) == c.key("m", inputs=[1], code="studylib.fit.relaxometry")
    assert c.key("m", inputs=[1], fn=ns["plain"]) == c.key("m", inputs=[1], code=())
    assert c.key("m", inputs=[1], fn=ns["plain"]) != c.key("m", inputs=[1])  # no fn, no code: whole package
    assert c.get_or_compute("m", ns["plain"], inputs=[1]) == 9.0
    meta = json.loads(next((tmp_path / "e" / "m").glob("*/_entry.json")).read_text())
    assert meta["code_modules"] == [] and meta["code"] == _codehash.code_hash_of()
    with pytest.raises(CacheError, match="not a studylib module"):
        c.key("m", inputs=[1], code=("studylib.no_such_module",))
    with pytest.raises(CacheError, match="not a studylib module"):
        c.get_or_compute("m", ns["plain"], code="numpy")
