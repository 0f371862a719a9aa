"""Fault tolerance: nothing is lost or corrupted when a worker or a writer dies.

* a distributed worker process is SIGKILLed while a whole-study T2* fit is running: the
  scheduler re-runs its tasks elsewhere (the nanny restarts the worker) and the maps equal
  the threaded ones bit for bit -- also when the dying worker was writing a cache entry;
* a (forked) process writing cache entries through the cache API is SIGKILLed at random moments,
  several times: every entry folder that looks complete is complete and correct, the index
  stays valid JSON, partial writes are only ever ``.tmp-`` folders that no reader opens, and
  a rerun completes.  (Killing ``studylib run`` itself mid-write is covered by
  ``tests/test_workbook.py::test_run_killed_mid_cache_write_leaves_nothing_partial_and_rerun_completes``.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest

from studylib import cache as cm
from studylib import compute
from studylib.cache import Cache
from studylib.fit.relaxometry import t2star
from studylib.synth.large import lazy_study

# 16 scans of 4 x 64 x 64 x 12 echoes: synthesis + fit take long enough (about 1 s on 2 workers)
# for a worker to be killed while most tasks are still to run.
STUDY = dict(n_animals=8, n_days=2, shape=(4, 64, 64), seed=11)


def _r2star(**kw):
    ds = lazy_study(**{**STUDY, **kw})
    return ds, t2star(ds.signal).r2star


# ------------------------------------------------------------ a cache writer killed at random moments
# (first in this file: the writer is forked, before any cluster threads exist in this process)

WRITER_STUDY = dict(n_animals=4, n_days=2, shape=(4, 64, 64))


def _maps(i):
    ds = lazy_study(**WRITER_STUDY, seed=i)
    return t2star(ds.signal)[["r2star", "fit_ok"]]


def _summary(i):
    return {"seed": i, "animals": [str(a) for a in lazy_study(**WRITER_STUDY, seed=i).animal.values]}


def _writer(root: Path, n: int) -> None:
    """What the killed process does: write entries maps<i>/summary<i> through the cache API."""
    with dask.config.set(scheduler="sync"):  # no thread pool in the forked child
        c = Cache("faults", root, verbose=False)
        for i in range(n):
            c.get_or_compute(f"maps{i}", lambda: _maps(i), params={"seed": i})
            c.get_or_compute(f"summary{i}", lambda: _summary(i), params={"seed": i})


def _expected(name: str):
    i = int(name.lstrip("mapsumry"))
    if name.startswith("maps"):
        with dask.config.set(scheduler="threads"):
            return _maps(i).compute()
    return _summary(i)


def _assert_same(got, want):
    if isinstance(want, dict):
        assert got == want
    else:
        for v in want.data_vars:
            np.testing.assert_array_equal(got[v].values, want[v].values)


def _tmp_folders(root: Path, prefix: str = "") -> set:
    return {p for p in (root / "faults").glob(f"{prefix}*/*") if cm.TMP_TAG in p.name}


def _complete(root: Path) -> set:
    return {p for p in (root / "faults").glob("*/*") if (p / cm.MARKER).is_file()}


def _check_invariants(root: Path, expected: dict) -> int:
    """Every complete-looking entry is complete and correct; returns the number of tmp folders."""
    c = Cache("faults", root, verbose=False)
    exp_dir = root / "faults"
    if (exp_dir / cm.INDEX).exists():
        json.loads((exp_dir / cm.INDEX).read_text())  # the index is never half-written
    for e in c.entries():  # every indexed entry is complete
        assert (e.path / cm.MARKER).is_file()
    for parent in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        for folder in parent.iterdir():
            if cm.TMP_TAG in folder.name:
                continue
            assert (folder / cm.MARKER).is_file(), f"{folder}: a final folder without its completion marker"
            want = expected.setdefault(parent.name, _expected(parent.name))
            _assert_same(c.load(parent.name, folder.name), want)
    return len(_tmp_folders(root))


@pytest.mark.slow
def test_cache_writer_killed_at_random_moments_never_leaves_a_readable_partial_entry(tmp_path):
    root = tmp_path / "derived"
    (root / "faults").mkdir(parents=True)
    rng = np.random.default_rng(2024)
    expected: dict = {}
    interrupted = 0
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # the writer process
            code = 1
            try:
                _writer(root, 40)
                code = 0
            finally:
                os._exit(code)
        try:
            # let the writer complete one more entry, then wait until a maps entry is being written
            # (a new .tmp- folder) and kill it a random moment into that write
            deadline = time.monotonic() + 60
            n_complete = len(_complete(root))
            while len(_complete(root)) <= n_complete:
                assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the writer ended early"
                assert time.monotonic() < deadline, "the writer completes no entry"
                time.sleep(0.01)
            before = _tmp_folders(root)
            while not (_tmp_folders(root, "maps") - before):
                assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the writer ended before writing"
                assert time.monotonic() < deadline, "the writer never started a write"
                time.sleep(0.003)
            time.sleep(float(rng.uniform(0.0, 0.15)))
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        interrupted += len(_tmp_folders(root) - before) > 0
        _check_invariants(root, expected)
    assert interrupted >= 1  # at least one kill really left a partial write behind
    c = Cache("faults", root, verbose=False)
    with pytest.raises(cm.CacheError):
        c.load("maps39")  # never finished: no partial entry stands in for it
    # a rerun completes every entry; the complete ones are hits, not recomputed
    names = ["maps0", "summary0", "maps1", "summary1"]
    complete = {p.parent.name for p in _complete(root)}
    assert {"maps0", "summary0"} <= complete  # the killed writers did get work done
    for name in names:
        i = int(name.lstrip("mapsumry"))
        fn = (lambda i=i: _maps(i)) if name.startswith("maps") else (lambda i=i: _summary(i))
        _assert_same(c.get_or_compute(name, fn, params={"seed": i}), _expected(name))
    assert set(c.hits) == complete & set(names) and set(c.misses) == set(names) - complete
    n_tmp = len(_tmp_folders(root))
    assert n_tmp >= 1 and c.prune(older_than_s=0, keep="all") == n_tmp  # abandoned partial writes
    assert not _tmp_folders(root)


# ------------------------------------------------------------ a distributed worker killed mid-fit

@pytest.fixture(scope="module")
def reference():
    with dask.config.set(scheduler="threads"):
        return _r2star()[1].values


@pytest.fixture(scope="module")
def cluster_client():
    """A process LocalCluster (2 workers x 1 thread, with nannies that restart killed workers)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=50)
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _worker_pids(client, n=2, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = client.run(os.getpid)
        except Exception:  # a worker going away while we ask
            pids = {}
        if len(pids) >= n or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def _kill_busy_worker(client) -> int:
    """SIGKILL a worker that is executing tasks right now; return its pid."""
    pids = _worker_pids(client)
    busy = {}
    deadline = time.monotonic() + 30
    while not busy:
        busy = {w: k for w, k in client.processing().items() if k and w in pids}
        assert time.monotonic() < deadline, "no worker ever got a task"
        time.sleep(0.01)
    victim = sorted(busy)[0]
    os.kill(pids[victim], signal.SIGKILL)
    return pids[victim]


@pytest.mark.slow
def test_worker_killed_mid_fit_run_completes_identically(cluster_client, reference):
    client = cluster_client
    _, r2s = _r2star()
    blocks = r2s.data.to_delayed()  # one per scan, in the (animal, day, ...) block grid
    futures = client.compute(list(blocks.ravel()))
    deadline = time.monotonic() + 60
    while not any(f.done() for f in futures):  # the run is under way
        assert time.monotonic() < deadline, "no task finished"
        time.sleep(0.01)
    victim = _kill_busy_worker(client)
    done_at_kill = sum(f.done() for f in futures)
    assert done_at_kill < len(futures)  # really in the middle of the fit
    results = client.gather(futures)  # completes despite the dead worker
    for idx, res in zip(np.ndindex(blocks.shape), results):
        np.testing.assert_array_equal(res[0, 0], reference[idx[0], idx[1]])
    # the killed process is gone (or a zombie awaiting its nanny); the scheduler lost one worker
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_worker_killed_while_a_cache_entry_is_written(cluster_client, reference, tmp_path):
    """The cache write computes the fit on the cluster; killing a worker does not leave a bad entry."""
    client = cluster_client
    ds, r2s = _r2star()
    c = Cache("faults", tmp_path, verbose=False)
    name, params = "r2star_maps", {"study": STUDY}
    key = c.key(name, params=params, code=())  # the compute function below uses no studylib code
    with dask.config.set(scheduler="dask.distributed"), client.as_current():
        assert compute.active_client() is client
        import threading

        killer_done = []

        def killer():  # waits until the write is under way, then kills a busy worker
            deadline = time.monotonic() + 60
            parent = tmp_path / "faults" / name
            while not (parent.is_dir() and any(cm.TMP_TAG in p.name for p in parent.iterdir())):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            killer_done.append(_kill_busy_worker(client))

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        out = c.get_or_compute(name, lambda: r2s.to_dataset(name="r2star"), params=params)
        th.join(timeout=60)
    assert killer_done, "the worker was not killed during the write"
    np.testing.assert_array_equal(out.r2star.values, reference)
    assert c.has(name, key)
    assert [p.name for p in (tmp_path / "faults" / name).iterdir()] == [key]  # no partial folder left
    again = Cache("faults", tmp_path, verbose=False)
    np.testing.assert_array_equal(again.load(name).r2star.values, reference)
