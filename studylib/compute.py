"""Dask in one place: the scheduler choice, the allocator settings of the processes that compute
(:func:`tune_allocator`), a block-wise apply without copies (:func:`apply_blocks`), one task per scan chain
(:func:`fused_task`) and the garbage collector paused while a study's graph is built (:func:`paused_gc`).

Three ways to run the same lazy computations:

``"threads"`` (the default)
    dask's threaded scheduler in this process; nothing to start, nothing to clean up.
``"local"``
    a :class:`distributed.LocalCluster` of worker *processes* (2 workers × 1 thread by
    default) on this machine; the dashboard link is printed.  A script that starts one
    needs the ``if __name__ == "__main__":`` guard (workers are spawned processes).
``"tcp://host:port"`` (or ``tls://``, ``ws://``, ``inproc://``)
    an existing scheduler, e.g. one started by dask-jobqueue on SLURM or by
    dask-kubernetes; the dashboard link is printed.

The choice comes from the ``scheduler`` argument, else the ``STUDYLIB_SCHEDULER``
environment variable, else ``"threads"``.  ``"sync"`` (single-threaded, for debugging)
is accepted too.

:func:`progress` computes a Dask-backed object with a progress display that works under
either scheduler: :class:`dask.diagnostics.ProgressBar` prints nothing under a
distributed client, so under a client :func:`distributed.progress` is used instead.

On a cluster (documented, not needed here): start a scheduler with the cluster's tool and
pass its address, e.g. on SLURM with dask-jobqueue::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, memory="32GB", walltime="02:00:00")
    cluster.scale(jobs=4)
    # then: studylib run --scheduler <cluster.scheduler_address>   (or STUDYLIB_SCHEDULER=...)

and on Kubernetes with dask-kubernetes (``KubeCluster(name="studylib", n_workers=4)``, then
its ``scheduler_address``).  Workers need the same studylib/environment and must see the data
and cache folders (a shared filesystem).

Examples
--------
>>> from studylib import compute
>>> compute.resolve_scheduler("threads")
'threads'
>>> compute.resolve_scheduler("tcp://10.0.0.5:8786")
'tcp://10.0.0.5:8786'

In a notebook (``fit`` and ``signal`` as in the workbook)::

    with compute.scheduler_context("threads") as client:
        maps = compute.progress(fit.t2star(signal))
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import re
import sys
from typing import Any, Iterator

import dask

from .errors import SchedulerError
from .recorder import RECORD_ENV

__all__ = [
    "SCHEDULER_ENV",
    "SchedulerError",
    "active_client",
    "apply_blocks",
    "describe",
    "fused_task",
    "get_client",
    "progress",
    "resolve_scheduler",
    "scheduler_context",
    "shutdown",
    "tune_allocator",
]

SCHEDULER_ENV = "STUDYLIB_SCHEDULER"

_THREADS = {"threads", "threaded", "threading", "default"}
_SYNC = {"sync", "synchronous", "single-threaded"}
_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|inproc|ucx)://\S+$")

#: glibc malloc: allocations below this many bytes come from the heap (a freed block is reused), above it from
#: mmap; and free memory at the top of a heap is returned to the system only beyond the trim threshold
MALLOC_MMAP_THRESHOLD_BYTES = 64 << 20
MALLOC_TRIM_THRESHOLD_BYTES = 256 << 20
#: ``STUDYLIB_TUNE_MALLOC=0`` leaves the allocator as it is (:func:`tune_allocator`)
TUNE_MALLOC_ENV = "STUDYLIB_TUNE_MALLOC"
_TUNED: list[bool] = []
_FROZEN: list[int] = []  # freeze_startup_objects: done once per process

# scheduler string -> (client, cluster-or-None) started by get_client(); closed by shutdown()
_STARTED: dict[str, tuple[Any, Any]] = {}


def resolve_scheduler(scheduler: str | None = None) -> str:
    """Return the canonical scheduler choice: ``"threads"``, ``"sync"``, ``"local"`` or an address.

    Parameters
    ----------
    scheduler : ``None`` (use ``$STUDYLIB_SCHEDULER``, else threads), ``"threads"``, ``"sync"``,
        ``"local"``, or a scheduler address such as ``"tcp://10.0.0.5:8786"``.

    Raises
    ------
    SchedulerError
        For anything else, naming where the value came from.
    """
    source = "scheduler"
    if scheduler is None:
        scheduler = os.environ.get(SCHEDULER_ENV) or "threads"
        source = f"${SCHEDULER_ENV}" if os.environ.get(SCHEDULER_ENV) else "scheduler"
    if not isinstance(scheduler, str):
        raise SchedulerError(f"{source}: expected 'threads', 'local' or an address like tcp://host:8786, "
                             f"got {scheduler!r}")
    s = scheduler.strip()
    low = s.lower()
    if low in _THREADS or low == "":
        return "threads"
    if low in _SYNC:
        return "sync"
    if low in {"local", "localcluster", "distributed"}:
        return "local"
    if _ADDRESS.match(s):
        return s
    if re.match(r"^[\w.-]+:\d+$", s):  # host:port without protocol
        return "tcp://" + s
    raise SchedulerError(f"{source}: unknown scheduler {scheduler!r}; use 'threads' (default), 'local' "
                         f"(a LocalCluster on this machine) or a scheduler address like tcp://host:8786")


def _tuning_off(env: str = TUNE_MALLOC_ENV) -> bool:
    """True when the environment variable ``env`` (a ``STUDYLIB_TUNE_*`` switch) is ``0``."""
    return os.environ.get(env, "1").strip() == "0"


def _allocator_env() -> dict[str, str]:
    """The environment that gives a new process the thresholds :func:`tune_allocator` sets (glibc reads it at start)."""
    if _tuning_off():
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD_BYTES),
            "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD_BYTES)}


def tune_allocator() -> bool:
    """Let glibc's malloc reuse scan-sized blocks in this process instead of mapping fresh pages for each.

    Every task of a study allocates arrays the size of a scan (the decompressed bytes, the float32 image, the
    fitted maps: 1-20 MB each) and frees them when the next scan starts.  glibc serves such blocks with
    ``mmap`` (above its mmap threshold, 128 kB until it adapts, and never adapting once any threshold is set
    explicitly, as distributed does for its workers) and hands them back with ``munmap``, so each new array
    arrives as untouched pages that the kernel faults in and zeroes one 4 kB page at a time.  With the mmap
    threshold at :data:`MALLOC_MMAP_THRESHOLD_BYTES` (64 MiB) and the trim threshold at
    :data:`MALLOC_TRIM_THRESHOLD_BYTES` (256 MiB) a freed scan stays in the heap and the next one reuses its
    pages.  Measured on the 1x end-to-end study (``benchmarks/end_to_end.py``), read -> noise -> fit -> ROI
    statistics one scan at a time: 66 -> 50 ms per scan, peak RSS unchanged (238 MB); the read-and-decompress
    floor alone is unchanged (5.4 s on one thread either way).  What it costs: up to 256 MiB of freed memory
    per heap stays with the process until it exits or the heap top grows past the threshold.

    Done once per process, by :func:`get_client` and :func:`scheduler_context` (the scheduler set up by
    ``sl.start`` in a notebook), and through the environment for the workers of a ``"local"`` cluster.
    Workers of an existing cluster (an address) are left alone: set ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` in their environment (``distributed.nanny.pre-spawn-environ``) to the same effect.
    ``STUDYLIB_TUNE_MALLOC=0`` turns it off.

    Returns
    -------
    bool
        True when the thresholds are set in this process (now or earlier); False when turned off, or not
        glibc (macOS, musl: nothing to do; their allocators behave differently).
    """
    if _TUNED:
        return _TUNED[0]
    if _tuning_off():
        return False
    import ctypes
    import platform

    ok = False
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(None)
            m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
            ok = bool(libc.mallopt(m_mmap_threshold, ctypes.c_int(MALLOC_MMAP_THRESHOLD_BYTES))) and bool(
                libc.mallopt(m_trim_threshold, ctypes.c_int(MALLOC_TRIM_THRESHOLD_BYTES)))
        except (OSError, AttributeError):
            ok = False
    _TUNED.append(ok)
    return ok


#: environment variable: ``0`` turns :func:`freeze_startup_objects` off
TUNE_GC_ENV = "STUDYLIB_TUNE_GC"


def freeze_startup_objects() -> int:
    """Take the objects alive now -- mostly the imported modules' functions, classes and constants -- out of the
    cyclic garbage collector's full collections (:func:`gc.freeze`), once per process.

    A study pass keeps ~10^5 objects alive while it runs (the manifest rows, headers, sidecars and graph that
    :func:`studylib.io.load.load_study` builds, the per-scan fused tasks).  In the first pass of a process they
    tip the collector into a full (generation-2) collection, which walks every tracked object under the GIL in
    the middle of the parallel pass: measured on the 1x end-to-end study, 88-115 ms inside a task of the
    threaded scheduler (both threads' Python stalls behind it) and 181 ms in a distributed client's event loop
    while its workers ran on the same cores.  A full collection does not walk frozen objects (~10^5 of them once
    numpy, xarray and dask are imported: a full collection over 150k fresh lists took 0.21 s of their building
    with the imports unfrozen, 0.10 s frozen), and in the measured pass none ran at all: threaded, to the tumour
    table, 5.55 -> 5.41 s (interleaved A/B, 4 rounds); the distributed pass did not change (1.75x vs 1.72x for 2
    workers vs 1).  Later passes of a process were never affected (a full collection raises the bar for the next).

    Done by :func:`get_client` and :func:`scheduler_context` (the scheduler set up by ``sl.start`` in a
    notebook), and in each worker of a ``"local"`` cluster once its imports are warm.  What it costs: a frozen
    object that later becomes unreachable inside a reference cycle is never freed; objects alive when the
    scheduler is chosen are, in a notebook, the imported modules, which live as long as the process.
    ``STUDYLIB_TUNE_GC=0`` turns it off.

    Returns
    -------
    int
        The number of objects frozen now (0 when done before in this process, or turned off).
    """
    if _FROZEN:
        return 0
    _FROZEN.append(1)
    if _tuning_off(TUNE_GC_ENV):
        return 0
    import gc

    before = gc.get_freeze_count()
    gc.freeze()
    return gc.get_freeze_count() - before


def active_client():
    """The distributed client computations currently go to, or ``None`` (local threads/sync)."""
    sched = dask.config.get("scheduler", None)
    if sched in ("threads", "threading", "sync", "synchronous", "single-threaded", "processes",
                 "multiprocessing"):
        return None
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def get_client(scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1,
               memory_limit: str | int | None = "auto", quiet: bool = False, timeout_s: float = 10.0,
               worker_profile: bool = False):
    """Set up the chosen scheduler for this process and return its client (``None`` for threads).

    ``"threads"`` / ``"sync"`` set ``dask.config`` and return ``None``.  ``"local"`` starts a
    :class:`distributed.LocalCluster` of ``n_workers`` processes (dashboard on a free port)
    and returns a :class:`distributed.Client` to it; an address connects to that scheduler.
    A client started here is reused by later calls with the same choice and closed by
    :func:`shutdown` (also registered at interpreter exit).  For a scoped version use
    :func:`scheduler_context`.

    Parameters
    ----------
    scheduler : see :func:`resolve_scheduler`.
    n_workers, threads_per_worker, memory_limit : LocalCluster settings (``"local"`` only).
    quiet : do not print the dashboard link.
    timeout_s : how long to try to reach a scheduler address.
    worker_profile : keep distributed's statistical profiler on in the workers of a ``"local"`` cluster
        (the dashboard's *Profile* page).  Off by default: every 10 ms each worker's event loop samples
        the stack of its running task and folds it into a call tree, under the worker's GIL and on the
        cores the tasks use -- measured on the 1x end-to-end study with 2 workers on 2 cores, the workers'
        event loops spent 0.36 -> 0.27 s of CPU each without it, and the pass ran ~0.2 s (~4 %) faster.
        A cluster reached by address keeps its own setting (``distributed.worker.profile.enabled``).

    Raises
    ------
    SchedulerError
        Unknown choice, or the scheduler address cannot be reached within ``timeout_s``.
    """
    choice = resolve_scheduler(scheduler)
    tune_allocator()
    freeze_startup_objects()
    if choice in ("threads", "sync"):
        dask.config.set(scheduler=choice)
        return None
    if choice in _STARTED:
        client = _STARTED[choice][0]
        if client.status == "running":
            dask.config.set(scheduler="dask.distributed")
            return client
        _STARTED.pop(choice)
    client, cluster = _start(choice, n_workers=n_workers, threads_per_worker=threads_per_worker,
                             memory_limit=memory_limit, quiet=quiet, timeout_s=timeout_s,
                             worker_profile=worker_profile)
    _STARTED[choice] = (client, cluster)
    return client


def _start(choice: str, *, n_workers: int, threads_per_worker: int, memory_limit, quiet: bool,
           timeout_s: float = 10.0, worker_profile: bool = False):
    from distributed import Client, LocalCluster

    cluster = None
    if choice == "local":
        if n_workers < 1 or threads_per_worker < 1:
            raise SchedulerError(f"n_workers and threads_per_worker must be >= 1, got {n_workers}, "
                                 f"{threads_per_worker}")
        # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in each worker's environment before it starts; that
        # explicit threshold switches off glibc's dynamic mmap threshold, so every scan-sized array is a fresh
        # mmap whose pages fault in zeroed (numpy and the NIfTI reader 1.5x slower in such a worker).  Workers we
        # start get tune_allocator's thresholds instead (none when STUDYLIB_TUNE_MALLOC=0).
        env = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        env.update({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in _allocator_env().items()})
        # the nanny hands its dask config to the worker it spawns (see get_client's worker_profile)
        env["distributed.worker.profile.enabled"] = bool(worker_profile)
        with dask.config.set(env):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                   processes=True, memory_limit=memory_limit, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=True)
        client.run(_warm_worker_imports)
    else:
        try:
            client = Client(choice, timeout=f"{float(timeout_s)}s", set_as_default=True)
        except (OSError, TimeoutError) as err:
            raise SchedulerError(f"scheduler {choice}: cannot connect ({err})") from None
    dask.config.set(scheduler="dask.distributed")
    if not quiet:
        link = getattr(client, "dashboard_link", None)
        print(f"dask distributed: {choice} -> {client.scheduler.address}; dashboard: {link}", flush=True)
    return client, cluster


def _warm_worker_imports() -> None:
    """Run in every worker of a local cluster as it starts: import what deserialising array tasks needs.

    A fresh worker otherwise imports ``dask.array`` (with scipy's fft, sparse and special: ~200 modules,
    0.2 s) inside its first task, while its event loop thread may be deserialising the next task, which needs
    the same modules: two threads importing one package with circular imports can meet CPython's import
    deadlock avoidance, and one of them then sees a partially initialised module ("cannot import name
    'notnull' from partially initialized module 'dask.array.routines'", seen with tasks arriving while the
    first ran; the worker died and its tasks were rerun).  Imported here once, before any task arrives, with
    nibabel and the NIfTI reader (another 0.2 s the first read would pay).
    """
    import dask.array  # noqa: F401
    import nibabel  # noqa: F401

    from .io.nifti import read_nifti  # noqa: F401  (the scan reader every study task starts with)

    freeze_startup_objects()  # the worker's modules, imported now, out of its full collections


def shutdown() -> None:
    """Close every client/cluster started by :func:`get_client` and go back to threads."""
    for choice in list(_STARTED):
        client, cluster = _STARTED.pop(choice)
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
    dask.config.set(scheduler="threads")


atexit.register(shutdown)


@contextlib.contextmanager
def scheduler_context(scheduler: str | None = None, **kwargs) -> Iterator[Any]:
    """Context manager form of :func:`get_client`: yields the client (``None`` for threads).

    On exit the previous dask configuration is restored, and a cluster/client started by
    this context is closed (one already started by :func:`get_client` is left running).
    """
    choice = resolve_scheduler(scheduler)
    tune_allocator()
    freeze_startup_objects()
    if choice in ("threads", "sync"):
        with dask.config.set(scheduler=choice):
            yield None
        return
    previous = dask.config.get("scheduler", None)
    client, cluster = _start(choice, n_workers=kwargs.get("n_workers", 2),
                             threads_per_worker=kwargs.get("threads_per_worker", 1),
                             memory_limit=kwargs.get("memory_limit", "auto"),
                             quiet=kwargs.get("quiet", False), timeout_s=kwargs.get("timeout_s", 10.0),
                             worker_profile=kwargs.get("worker_profile", False))
    try:
        with dask.config.set(scheduler="dask.distributed"), client.as_current():
            yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        # _start set the global config; put back what was there before
        dask.config.set(scheduler=previous)


def describe(scheduler: str | None = None) -> dict:
    """A small JSON-able description of the scheduler in use (for provenance)."""
    client = active_client()
    if client is None:
        return {"scheduler": dask.config.get("scheduler", None) or "threads",
                "threads": os.cpu_count()}
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        return {"scheduler": "distributed", "address": client.scheduler.address,
                "n_workers": len(workers),
                "threads": int(sum(w.get("nthreads", 0) for w in workers.values())),
                "dashboard": getattr(client, "dashboard_link", None)}
    except Exception:  # pragma: no cover - a client that went away
        return {"scheduler": "distributed", "address": str(getattr(client.scheduler, "address", ""))}


def progress(obj, *, minimum_s: float = 1.0, label: str | None = None):
    """Compute a Dask-backed object (or a list/tuple of them) with a progress display; return the result.

    Under the threaded/sync scheduler a :class:`dask.diagnostics.ProgressBar` is shown for
    computations longer than ``minimum_s``; under a distributed client the futures are
    followed with :func:`distributed.progress` (text bar, also inside notebooks).  Under
    ``studylib run`` (a report being made) no bar is drawn.  Objects
    that are not Dask collections (numpy-backed xarray, arrays, numbers) are returned as is.

    Parameters
    ----------
    obj : xarray object, dask array/dataframe/delayed, or a list/tuple of them.
    minimum_s : only show the threaded progress bar when the computation takes longer.
    label : printed before the bar (e.g. ``"fitting T2*"``).

    Returns
    -------
    The computed object (same container type for list/tuple input).
    """
    many = isinstance(obj, (list, tuple))
    items = list(obj) if many else [obj]
    lazy = [i for i, o in enumerate(items) if dask.is_dask_collection(o)]
    if not lazy:
        return obj
    todo = [items[i] for i in lazy]
    client = active_client()
    if label:
        print(label, flush=True)
    # under `studylib run` no bar is drawn: the kernel's stdout and stderr (file descriptors included) end up in
    # the notebook, and a report must not carry a text progress bar; the runner shows progress cell by cell
    quiet = bool(os.environ.get(RECORD_ENV))
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=minimum_s, dt=0.5) if not quiet else contextlib.nullcontext():
            done = dask.compute(*todo)
    else:
        from distributed import progress as dist_progress

        futures = client.compute(todo)
        if not quiet:
            dist_progress(futures, notebook=False)
        done = client.gather(futures)
    for i, r in zip(lazy, done):
        items[i] = r
    if many:
        return type(obj)(items)
    return items[0]


def _single_block(x):
    """The one block inside the nested lists ``blockwise(concatenate=False)`` hands over for contracted dims."""
    while isinstance(x, list):
        if len(x) != 1:
            raise ValueError(f"apply_blocks: a core dim spans {len(x)} chunks; it must be one chunk")
        x = x[0]
    return x


class _UnwrapBlocks:
    """``func(*blocks)`` with each block taken out of the nested lists of ``blockwise(concatenate=False)``.

    A module-level class rather than a closure: a distributed scheduler pickles every task it sends, and
    cloudpickle serialises a closure by value (its code and the modules it refers to, ~0.5 ms a task) where
    an instance of this class is a reference to it plus ``func`` (itself module-level, or such an instance).
    """

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func

    def __call__(self, *blocks):
        return self.func(*(_single_block(b) for b in blocks))


def apply_blocks(func, *args, core_dims, out_core=(), out_dtypes, name: str = "apply-blocks"):
    """Apply ``func`` to each block of Dask-backed DataArrays, like ``xr.apply_ufunc(dask="parallelized")``
    but handing ``func`` the blocks as they are stored instead of a copy.

    Dask's generalised-ufunc path (``blockwise(concatenate=True)``) concatenates the chunks of every core
    dim into a new array before the call, even when a core dim is one chunk: a full copy of each block
    (for a multi-echo scan with the fitted axis moved last, a strided transpose of the whole scan).  Here
    each core dim must be one chunk, the blocks are passed with ``concatenate=False`` and unwrapped, so
    ``func`` gets views: its loop dims first (in the order of the first argument's, length 1 where an
    argument lacks one), then its core dims (a transposed *view* of the stored block).

    Parameters
    ----------
    func : callable ``(*blocks) -> tuple of ndarrays``, one per output, each of shape
        ``loop block shape + out_core sizes``.
    *args : DataArrays; at least the first Dask-backed.  Dims other than their core dims must be among
        the first argument's loop dims (the others are broadcast); their chunks are aligned with it.
    core_dims : one list of dim names per argument.
    out_core : one tuple of ``(dim, size)`` pairs per output (empty: no core dims), or ``()`` for all.
    out_dtypes : one dtype per output.

    Returns
    -------
    tuple of Dask-backed DataArrays, dims = loop dims + that output's core dims, coordinates of the
    loop dims taken from the arguments.
    """
    from operator import getitem

    import dask.array as da
    import numpy as np
    import xarray as xr
    from dask.base import tokenize
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph

    nout = len(out_dtypes)
    out_core = list(out_core) if out_core else [()] * nout
    first = args[0]
    loop = [d for d in first.dims if d not in core_dims[0]]
    pairs = []
    for i, (a, core) in enumerate(zip(args, core_dims)):
        extra = [d for d in a.dims if d not in core and d not in loop]
        if extra:
            raise ValueError(f"apply_blocks: argument {i} has dims {extra} that are neither core nor loop dims")
        data = a.transpose(*[d for d in loop if d in a.dims], *core).data
        if not isinstance(data, da.Array):
            data = da.from_array(data, chunks=tuple(-1 if d in core else
                                                    first.data.chunks[first.get_axis_num(d)]
                                                    for d in [d for d in loop if d in a.dims] + list(core)))
        for d in core:
            if len(data.chunks[-len(core) + list(core).index(d)]) != 1:
                raise ValueError(f"apply_blocks: core dim {d!r} of argument {i} spans several chunks")
        data = data[tuple(slice(None) if d in a.dims else None for d in loop) + (slice(None),) * len(core)]
        pairs += [data, tuple(f"l{j}" for j in range(len(loop))) + tuple(f"c{i}_{d}" for d in core)]

    call = _UnwrapBlocks(func)
    token = tokenize(func, *args, core_dims, out_core, out_dtypes)
    metas = tuple(np.empty((0,) * (len(loop) + len(oc)), dtype=dt) for oc, dt in zip(out_core, out_dtypes))
    tmp = da.blockwise(call, tuple(f"l{j}" for j in range(len(loop))), *pairs, concatenate=False,
                       align_arrays=True, meta=metas, name=f"{name}-{token}")
    keys = list(flatten(tmp.__dask_keys__()))
    outs = []
    coords = {}
    for a in args:
        coords.update({k: c for k, c in a.coords.items() if set(c.dims) <= set(loop) and k not in coords})
    for i, (oc, dt) in enumerate(zip(out_core, out_dtypes)):
        leaf = f"{name}_{i}-{token}"
        zeros = (0,) * len(oc)
        dsk = {(leaf,) + k[1:] + zeros: (getitem, k, i) for k in keys}
        graph = HighLevelGraph.from_collections(leaf, dsk, dependencies=[tmp])
        arr = da.Array(graph, leaf, chunks=tmp.chunks + tuple((n,) for _, n in oc), meta=metas[i])
        outs.append(xr.DataArray(arr, dims=loop + [d for d, _ in oc], coords=coords))
    return tuple(outs)


def _run_in_order(tasks, drops, outkey, inkeys, *deps):
    """Run ``tasks`` (dask ``GraphNode`` objects, each after its dependencies) on ``deps`` (the values of ``inkeys``);
    after task ``i`` the values named in ``drops[i]`` are released.  Returns the value of ``outkey``."""
    cache = dict(zip(inkeys, deps))
    for task, drop in zip(tasks, drops):
        cache[task.key] = task(cache)
        for k in drop:
            del cache[k]
    return cache[outkey]


def _flat_nodes(node, into: dict, depth: int = 0) -> None:
    """``node`` into ``into`` (key -> ``(node, depth)``), a blockwise-fused subgraph task replaced by its inner tasks.

    Dask runs such a task (``_execute_subgraph``) by ordering its inner graph with ``dask.order`` at every
    call, in Python under the GIL; its inner tasks read their inputs by the keys of the task's own
    dependencies, so they can run in the enclosing chain directly (an ``Alias`` names their output with the
    task's key where the two differ).  Blockwise fusion also leaves outer aliases naming an inner output by
    its layer's key (pointing at the subgraph task): a node from deeper inside a subgraph replaces an alias
    of the same key, and a computing node replaces any alias.
    """
    from dask._task_spec import Alias, Task, TaskRef, _execute_subgraph

    if isinstance(node, Task) and node.func is _execute_subgraph and len(node.args) >= 3:
        inner, outkey, inkeys, *refs = node.args
        if isinstance(inner, dict) and len(refs) == len(inkeys) and all(isinstance(r, TaskRef) for r in refs) \
                and tuple(r.key for r in refs) == tuple(inkeys):
            for v in inner.values():
                _flat_nodes(v, into, depth + 1)
            if outkey != node.key:
                _put(into, Alias(node.key, outkey), depth)
            return
    _put(into, node, depth)


def _put(into: dict, node, depth: int) -> None:
    from dask._task_spec import Alias

    have = into.get(node.key)
    if have is None or (isinstance(have[0], Alias) and (not isinstance(node, Alias) or depth > have[1])):
        into[node.key] = (node, depth)


def _pickled_once_runner(fused):
    """``fused`` as a task whose body is bytes pickled once, here (run by :func:`_run_pickled`).

    Pickled as distributed pickles a task (:func:`distributed.protocol.pickle.dumps`): the standard library's
    C pickler, and cloudpickle only for what it cannot take by reference (a function of ``__main__``, a lambda)
    -- cloudpickle's Python hook on every object took 40 % longer for the scan tasks of a study.
    """
    from dask._task_spec import Task, TaskRef
    from distributed.protocol.pickle import dumps

    dep_keys = tuple(sorted(fused.dependencies, key=str))
    return Task(fused.key, _run_pickled, dumps(fused), dep_keys, *(TaskRef(k) for k in dep_keys))


def _run_pickled(blob: bytes, dep_keys: tuple, *deps):
    """Run a task pickled by :func:`fused_task` (``packed=True``) on the values of its dependencies."""
    import pickle

    return pickle.loads(blob)(dict(zip(dep_keys, deps)))


def fused_task(dsk: dict, members, out, *, packed: bool = False):
    """One dask task that runs the tasks ``members`` of graph ``dsk`` (all ancestors of ``out`` within them).

    Like :meth:`dask._task_spec.Task.fuse`, but the order is worked out once, here: the members (and the
    inner tasks of blockwise-fused subgraph tasks among them, :func:`_flat_nodes`) run depth-first from
    ``out``, each after its dependencies, and every intermediate value is released after its last use.
    ``Task.fuse`` instead runs ``dask.order`` on the subgraph, and on every nested subgraph, each time the
    task runs -- Python under the GIL, the largest GIL holder of a threaded study pass after the fits
    (measured with ``py-spy --gil`` on the end-to-end benchmark).  The same functions run on the same inputs,
    so the values are the same bits.

    ``packed``: the task's body is pickled once, here, into bytes (for a distributed scheduler, which would
    otherwise unpickle the graph and pickle each task again, field by field in Python, to send it to a worker:
    about a second of the scheduler's CPU per 250 scan tasks on the machine the workers share).
    """
    from dask._task_spec import Task, TaskRef

    placed: dict = {}
    for k in members:
        _flat_nodes(dsk[k], placed)
    nodes = {k: v[0] for k, v in placed.items()}
    order, seen, stack = [], set(), [(out, False)]
    while stack:  # depth-first post-order from the output: every task after its dependencies
        k, done = stack.pop()
        if done:
            order.append(k)
            continue
        if k in seen or k not in nodes:
            continue
        seen.add(k)
        stack.append((k, True))
        stack.extend((d, False) for d in sorted(nodes[k].dependencies, key=str, reverse=True)
                     if d in nodes and d not in seen)
    pos = {k: i for i, k in enumerate(order)}
    if out not in pos or any(pos.get(d, -1) >= i for i, k in enumerate(order) for d in nodes[k].dependencies
                             if d in nodes):
        # not a chain this can order (an alias cycle, an output missing): dask's own fusion, ordered per call
        task = Task.fuse(*(dsk[k] for k in members), key=out)
    else:
        last = {}
        for i, k in enumerate(order):
            for d in nodes[k].dependencies:
                last[d] = i
        drops = [[] for _ in order]
        for d, i in last.items():
            if d != out:
                drops[i].append(d)
        ext = tuple(sorted(last.keys() - pos.keys(), key=str))  # every dependency not computed here
        task = Task(out, _run_in_order, tuple(nodes[k] for k in order), tuple(tuple(x) for x in drops), out, ext,
                    *(TaskRef(k) for k in ext))
    return _pickled_once_runner(task) if packed else task


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside the block (reference counting still frees all else).

    For steps that build a study's bookkeeping -- :func:`studylib.io.load.load_study` (a NiftiInfo, sidecar and
    graph task per file) and the per-scan graph rewrite of :func:`studylib.roi` -- which allocate ~10^5 small
    objects that stay alive: the allocations trigger full collections that walk every live object of the process
    under the GIL, ~60 ms each once distributed, xarray and statsmodels are imported (measured: one in
    ``load_study`` and one in the rewrite, on the end-to-end benchmark).  Nothing built there forms cycles
    that become garbage in the block; the collector runs as usual afterwards.  Nested use is fine.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
