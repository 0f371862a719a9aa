"""End to end from disk: gzipped NIfTI -> T2* maps -> tumour table -> mixed model, against the
read-and-decompress floor measured in the same run.

Run: ``python benchmarks/end_to_end.py [--quick]``.  Writes ``benchmarks/results/end_to_end.json``
and ``end_to_end.md`` (``--quick``: ``end_to_end_quick.*``); the last line printed is
``end_to_end: <ratio> x floor, <voxels/s> vox/s, peak RSS <MB> MB`` (whole pipeline, warm cache), followed
by the ratio of the issue's target (load + maps + tumour table, no mixed model) in brackets.

The study.  :func:`studylib.synth.large.scan_arrays` (the ``large`` preset's MEGRE scans: 20 x 128 x
128 voxels, 12 echoes, 9.4 T, Rician noise, a growing flank tumour whose R2* rises more under
treatment, one animal in four leaving early) is written to disk once as a lab would have it: one
int16 gzip NIfTI + JSON sidecar per scan and one ROI label map per scan
(:func:`studylib.io.nifti.write_nifti`) and a manifest (:func:`studylib.manifest.write_manifest`).
The full run writes 160 animals x 6 days (the 4x study, ~4 GB of int16); the 1x study (40 animals,
~1 GB) is its first 40 animals (animal k is the same at any scale), listed by its own manifest.
The files are kept (``--data``, default ``$STUDYLIB_BENCH_DATA`` or ``/tmp/studylib-bench``) and
reused when their spec matches.

What is timed, each configuration in its own fresh Python process (so peak RSS is that
configuration's; ``ru_maxrss`` of the process, and for distributed runs the peak of the sampled
RSS of the process tree, workers included):

* **floor**: read every file the pipeline reads (the MEGRE images and the ROI label maps) and
  decompress it to its int16 array with nibabel, nothing else, on 2 threads (one file per task,
  the pipeline's parallelism).  Two floors: nibabel's own gzip reader (the Python standard
  library's zlib), and the whole file decompressed with ISA-L (``isal``, when installed) and parsed by
  nibabel from memory -- the reader the pipeline uses when ``isal`` is there.  The ratio is quoted
  against the faster floor.
* **pipeline**: ``studylib.load_study`` (manifest, headers, sidecars: lazy; ``roi_with_scan=True``: each
  scan and its ROI read by one task, so a distributed worker never fetches a scan from another) -> ``fit.t2star`` (the
  workbook's ``fit_relaxation_maps`` recipe: noise SD per scan from the background ROI, every voxel
  of labels 1, 2, 6, 7) -> ``roi_tables`` (tidy summary + per-session tumour table; the maps are
  reduced per scan in the same Dask pass, never materialised) -> ``stats.mixed_model``
  (``r2star ~ group * day``, random intercept and slope per animal).  Time per stage, and inside
  the pass the task time per kind of task (Dask's profiler: read, noise SD, fit, ROI statistics).
  ``roi_tables`` runs each scan's read, noise SD, fit and reduction as one Dask task
  (:func:`studylib.roi._fuse_blocks`), which the profiler sees as one record; so after the timed run the
  same process repeats the pass with that fusion off, under the profiler (``--no-profile`` skips it): the
  task seconds per kind, the task counts and the fused vs unfused wall time come from that pass.
* **cold** and **warm** page cache: cold = every data file evicted from the page cache with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` right before the process starts (``/proc/sys/vm/drop_caches``
  is not writable in this container; ``fincore`` confirms the eviction where it is installed);
  warm = the same files read once just before.
* **distributed**: the same pipeline on ``studylib.compute.get_client("local")`` with 1 and 2 worker
  processes (1 thread each), warm cache.

Configurations alternate (floor, pipeline, floor, pipeline, ...) and repeat, so each ratio pairs
runs taken minutes apart at most; medians and the min-max range are reported.  The machine is
shared (2 cores; other engineers' tests run at the same time): absolute times are noisy, the
paired ratios less so.  BLAS is pinned to one thread per process.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _machine import ChildRun  # noqa: E402  (benchmarks/, the script's own folder)
from _memory import TreeRSS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# a child timing the "before" code imports studylib from the baseline copy instead of this tree
sys.path.insert(0, os.environ.get("STUDYLIB_E2E_PACKAGE_DIR") or str(ROOT))

OUT = ROOT / "benchmarks" / "results"
STUDY = "large_megre"
LABELS_FIT = (1, 2, 6, 7)          # fit_relaxation_maps' default labels
BACKGROUND = 5
SHAPE = (20, 128, 128)             # the large preset's matrix (z, y, x)

FULL = dict(n_animals=40, n_days=6, scales=(1, 4), repeats=3, dist_scale=1, dist_repeats=2)
PROFILE = True                     # --no-profile: no second (unfused, profiled) pass after each timed run
QUICK = dict(n_animals=8, n_days=3, scales=(1,), repeats=2, dist_scale=1, dist_repeats=1)


# ------------------------------------------------------------------------------ the study on disk

def _scan_files(ia: int, iday: int, root: Path, n_days: int, seed: int) -> list[dict]:
    """Synthesise one session and write MEGRE + sidecar, ROI + sidecar; return its manifest rows."""
    from studylib.conventions import ROI_LABELS
    from studylib.io.nifti import write_nifti
    from studylib.io.sidecar import sidecar_path
    from studylib.manifest import sha256_file
    from studylib.synth.large import MEGRE, _animal, _days, _grid, scan_arrays

    a = _animal(ia, n_days, "MEGRE", seed)
    if iday >= a["n_sessions"]:
        return []
    day = _days(n_days)[iday]
    sig, roi = scan_arrays(ia, iday, n_days=n_days, shape=SHAPE, kind="MEGRE", seed=seed)
    affine = _grid(SHAPE).affine()
    folder = root / "raw" / STUDY / a["id"] / f"day{day:02d}"
    p = MEGRE
    sc = {"EchoTime": [round(t / 1000.0, 9) for t in p["te_ms"]], "RepetitionTime": p["tr_ms"] / 1000.0,
          "FlipAngle": p["flip_deg"], "MagneticFieldStrength": p["field_T"], "Nucleus": "1H",
          "PulseSequenceType": "multi-gradient-echo", "MRAcquisitionType": "2D", "Agent": p["agent"],
          "GeneratedBy": "benchmarks/end_to_end.py (studylib.synth.large.scan_arrays)"}
    img = write_nifti(folder / "MEGRE.nii.gz", sig, affine, dtype=np.int16, sidecar=sc, design_order=True)
    labels = {str(k): ROI_LABELS[k] for k in (1, 2, 5)}
    lab = write_nifti(folder / "roi.nii.gz", roi, affine, dtype=np.int16, design_order=True,
                      sidecar={"Labels": labels, "GeneratedBy": "benchmarks/end_to_end.py"})
    rows = []
    for path, kind in ((img, "MEGRE"), (sidecar_path(img), "MEGRE"), (lab, "roi"), (sidecar_path(lab), "roi")):
        rows.append(dict(study=STUDY, animal=a["id"], group=a["group"], day=day, kind=kind,
                         path=Path(path).relative_to(root).as_posix(), sha256=sha256_file(path), sex=a["sex"],
                         model="", notes=""))
    return rows


def _scan_job(args):
    return _scan_files(*args)


def ensure_study(root: Path, *, n_animals: int, n_days: int, scales, seed: int = 0, jobs: int = 2) -> dict:
    """Write the largest scale once (reused when ``spec.json`` matches); one manifest per scale."""
    import pandas as pd

    top = max(scales)
    spec = {"generator": "studylib.synth.large.scan_arrays", "kind": "MEGRE", "n_animals": n_animals,
            "n_days": n_days, "shape": list(SHAPE), "seed": seed, "scale": top, "format": 2}
    done = root / "spec.json"
    have = json.loads(done.read_text()) if done.is_file() else None
    if have is not None and {**have, "scale": top} == spec and have["scale"] >= top:
        # a study written at this scale or a larger one: a smaller scale's manifest is the first animals' rows
        # of the largest one (never rewrite -- and so delete -- a larger study to run a smaller one)
        from studylib.manifest import read_manifest

        largest = root / f"manifest_{have['scale']}x.csv"
        if largest.is_file():
            missing = [s for s in scales if not (root / f"manifest_{s}x.csv").is_file()]
            if missing:
                _write_scale_manifests(read_manifest(largest), root, missing, n_animals)
            return {"written": False, "seconds": 0.0}
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    jobs_args = [(ia, iday, root, n_days, seed) for ia in range(n_animals * top) for iday in range(n_days)]
    t0 = time.perf_counter()
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            results = pool.map(_scan_job, jobs_args, chunksize=2)
    else:
        results = [_scan_job(a) for a in jobs_args]
    rows = [r for rs in results for r in rs]
    _write_scale_manifests(pd.DataFrame(rows), root, scales, n_animals)
    done.write_text(json.dumps(spec))
    return {"written": True, "seconds": round(time.perf_counter() - t0, 1)}


def _write_scale_manifests(df, root: Path, scales, n_animals: int) -> None:
    """``manifest_<s>x.csv`` for each scale ``s``: the rows of the first ``n_animals * s`` animals of ``df``."""
    from studylib.manifest import write_manifest

    for s in scales:
        keep = {f"L{ia + 1:04d}" for ia in range(n_animals * s)}
        write_manifest(df[df["animal"].isin(keep)].reset_index(drop=True), root / f"manifest_{s}x.csv")


def study_files(manifest: Path) -> list[Path]:
    """Every file the pipeline reads (images and sidecars of the MEGRE scans and their ROIs)."""
    import csv

    with open(manifest, newline="") as fh:
        return [manifest.parent / r["path"] for r in csv.DictReader(fh)]


def images(files) -> list[Path]:
    return [p for p in files if str(p).endswith(".nii.gz")]


# ------------------------------------------------------------------------------ page cache

def evict(files) -> None:
    """Drop the files' pages from the page cache (``posix_fadvise(DONTNEED)``, after ``fsync``)."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files) -> None:
    for p in files:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def resident_fraction(files) -> float | None:
    """Fraction of the files' bytes in the page cache (``fincore``), or None without fincore."""
    if shutil.which("fincore") is None:
        return None
    files = [str(p) for p in files]
    res = size = 0
    for i in range(0, len(files), 200):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *files[i:i + 200]],
                             capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            r, s = line.split()[:2]
            res += int(r)
            size += int(s)
    return round(res / size, 4) if size else None


# ------------------------------------------------------------------------------ measuring (child side)

def _read_nibabel(p) -> int:
    import nibabel as nib

    return int(np.asanyarray(nib.load(str(p)).dataobj.get_unscaled()).size)


def _read_isal(p) -> int:
    import nibabel as nib
    from isal import isal_zlib

    img = nib.Nifti1Image.from_bytes(isal_zlib.decompress(Path(p).read_bytes(), 31))
    return int(np.asanyarray(img.dataobj.get_unscaled()).size)


def run_floor(cfg) -> dict:
    """Read and decompress every image to its int16 array, nothing else, on ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from studylib import compute

    # the same malloc settings as the pipeline's process (get_client sets them there); measured: no change
    # to the floor itself (5.4 s on one thread either way), so the ratio does not flatter the pipeline
    getattr(compute, "tune_allocator", lambda: None)()
    files = images(study_files(Path(cfg["manifest"])))
    fn = _read_isal if cfg["mode"] == "floor-isal" else _read_nibabel
    fn(files[0])  # imports
    t0 = time.perf_counter()
    c0 = time.process_time()
    with ThreadPoolExecutor(cfg.get("threads", 2)) as ex:
        n = sum(ex.map(fn, files))
    return {"total_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "samples": n,
            "bytes_gz": sum(p.stat().st_size for p in files), "files": len(files)}


_TASK_KINDS = (("read-nifti", "read + decompress + scale"), ("background-mean", "noise SD (background mean)"),
               ("mean_chunk", "noise SD (background mean)"),
               ("mean_agg", "noise SD (background mean)"), ("roi-stats", "ROI statistics"), ("fit-", "T2* fit"),
               ("kern", "ROI statistics"), ("block", "T2* fit"))   # the last two: names before apply_blocks


def _task_kind(key) -> str:
    name = key[0] if isinstance(key, tuple) else str(key)
    for k, label in _TASK_KINDS:
        if k in name:
            return label
    return "other (stack, masks, graph glue)"


def run_pipeline(cfg) -> dict:
    """load_study -> fit.t2star -> roi_tables -> mixed_model, timed per stage."""
    import warnings

    import studylib as sl
    from studylib import compute
    from studylib.analysis.tables import roi_tables
    from studylib.fit.relaxometry import t2star
    from studylib.stats import mixed_model

    warnings.simplefilter("ignore")  # singular-fit notes of the mixed model: not what is timed
    # imported before the clock starts, as the floor's process imports its reader before timing (a notebook
    # kernel pays these once, not per study): nibabel alone takes ~0.2 s to import (pydicom with it)
    import dask.array  # noqa: F401
    import nibabel  # noqa: F401

    try:
        import isal.isal_zlib  # noqa: F401
    except ImportError:
        pass
    try:  # dask's first compute in a process imports distributed (0.28 s) to ask whether a client is active
        import distributed  # noqa: F401
    except ImportError:
        pass
    sched = cfg.get("scheduler", "threads")
    out: dict = {"scheduler": sched}
    t_c = time.perf_counter()
    client = compute.get_client(sched, n_workers=cfg.get("workers", 2), threads_per_worker=1, quiet=True)
    if client is not None:
        def _imports():  # what a running cluster has imported already (get_client's workers import dask.array,
            # nibabel and the NIfTI reader as they start; an older studylib's do not)
            import dask.array  # noqa: F401
            import nibabel  # noqa: F401

            import studylib.analysis.tables  # noqa: F401
            import studylib.fit.relaxometry  # noqa: F401
            import studylib.io.load  # noqa: F401
            import studylib.io.nifti  # noqa: F401
            import studylib.roi  # noqa: F401
            try:
                import isal.isal_zlib  # noqa: F401
            except ImportError:
                pass

        client.run(_imports)
        out["cluster_start_s"] = round(time.perf_counter() - t_c, 2)
    with TreeRSS(dt=0.05) as tree:
        t0 = time.perf_counter()
        c0 = time.process_time()
        import inspect

        # each scan read with its ROI by one task (no scan-sized transfers between distributed workers);
        # an older studylib (the --baseline run) has no such option
        pair = {"roi_with_scan": True} if "roi_with_scan" in inspect.signature(sl.load_study).parameters else {}
        ds = sl.load_study(cfg["manifest"], STUDY, "MEGRE", **pair)
        t1 = time.perf_counter()
        bare = ds.reset_coords(drop=True)
        # the fit mask as analysis.maps builds it (roi.label_mask; an older studylib, the --baseline run, has isin)
        from studylib import roi as roi_mod

        fit_mask = roi_mod.label_mask(bare["roi"], LABELS_FIT) if hasattr(roi_mod, "label_mask") else \
            bare["roi"].isin(list(LABELS_FIT))
        maps = t2star(bare["signal"], method="auto", background=bare["roi"] == BACKGROUND, mask=fit_mask)
        maps = maps.assign_coords({c: ds.coords[c] for c in ("group", "sex", "acquired") if c in ds.coords})
        if client is None:
            from dask.diagnostics import Profiler

            with Profiler() as prof:
                summary, sessions = roi_tables(maps, ds, variables=["r2star", "t2star"])
            out["tasks"] = len(prof.results)
        else:
            summary, sessions = roi_tables(maps, ds, variables=["r2star", "t2star"])
        t2 = time.perf_counter()
        res = mixed_model(sessions, "r2star ~ group * day", groups="animal")
        t3 = time.perf_counter()
        cpu = time.process_time() - c0
    import resource

    out["ru_maxrss_timed_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    if client is None and cfg.get("profile", True):
        # after the timed run: the same pass with one task per step (fusion off), for the task seconds per kind
        # (a fused scan task is one profiler record) and the fused vs unfused wall time in the same process
        import dask
        from dask.diagnostics import Profiler

        fuse_key = getattr(__import__("studylib.roi", fromlist=["FUSE_CONFIG"]), "FUSE_CONFIG", None)
        with dask.config.set({fuse_key: False} if fuse_key else {}), Profiler() as prof:
            t4 = time.perf_counter()
            summary_u, sessions_u = roi_tables(maps, ds, variables=["r2star", "t2star"])
            out["fit_table_unfused_s"] = time.perf_counter() - t4
        out["tasks_unfused"] = len(prof.results)
        out["unfused_identical"] = bool(summary_u.equals(summary) and sessions_u.equals(sessions))
        tasks: dict[str, float] = {}
        for tr in prof.results:
            k = _task_kind(tr.key)
            tasks[k] = tasks.get(k, 0.0) + (tr.end_time - tr.start_time)
        out["task_s"] = {k: round(v, 3) for k, v in sorted(tasks.items(), key=lambda kv: -kv[1])}
    n_scans = int(ds["acquired"].sum())
    nz, ny, nx = (ds.sizes[d] for d in ("z", "y", "x"))
    fx = res.fixed
    inter = [i for i in fx.index if ":" in str(i)]
    out.update({"scans": n_scans, "voxels": n_scans * nz * ny * nx, "samples": n_scans * nz * ny * nx * ds.sizes["te"],
                "voxels_fitted": int(summary.loc[summary["variable"] == "r2star", "n_voxels"].sum()),
                "load_s": t1 - t0, "fit_table_s": t2 - t1, "stats_s": t3 - t2, "total_s": t3 - t0,
                "cpu_s_client": cpu, "tree_peak_rss_MB": tree.peak / 1e6,
                "sessions": int(len(sessions)), "tumour_r2star_mean": float(np.nanmean(sessions["r2star"])),
                "group_x_day": {str(i): [round(float(fx.loc[i, "estimate"]), 4), round(float(fx.loc[i, "p"]), 4)]
                                for i in inter}})
    if client is not None:
        import resource

        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out["worker_peak_rss_MB"] = [round(v / 1e6) for v in peaks.values()]
        compute.shutdown()
    return out


def child_main(cfg: dict) -> None:
    import resource

    res = run_floor(cfg) if cfg["mode"].startswith("floor") else run_pipeline(cfg)
    # the timed part's peak (a pipeline run's profiling pass after it is not counted)
    res["ru_maxrss_MB"] = res.pop("ru_maxrss_timed_MB", None) or resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------------ orchestration (parent side)

def run_child(cfg: dict, timeout=3600) -> dict:
    """One configuration in a fresh process; also how much CPU everything else on the machine used meanwhile."""
    pkg = cfg.get("package_dir") or str(ROOT)
    env = dict(os.environ, STUDYLIB_E2E_PACKAGE_DIR=pkg,
               PYTHONPATH=os.pathsep.join([pkg] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    with ChildRun() as m:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {cfg} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_s"] = m.wall_s
    res["process_cpu_s"] = m.cpu_s  # the child and its workers
    if m.other_cores_busy is not None:
        # cores other people's jobs kept busy while this process ran: the noise of this measurement
        res["other_cores_busy"] = m.other_cores_busy
    return res


def _med(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _rng(xs):
    xs = [x for x in xs if x is not None]
    return [float(min(xs)), float(max(xs))] if xs else None


def measure_scale(root: Path, scale: int, repeats: int, log, baseline: str | None = None) -> dict:
    """Rounds of (floor-nibabel, floor-isal, pipeline[, baseline]) x (cold, warm), each in a fresh process."""
    manifest = root / f"manifest_{scale}x.csv"
    files = study_files(manifest)
    have_isal = _have_isal()
    modes = ["floor-nibabel"] + (["floor-isal"] if have_isal else []) + ["pipeline"] + (
        ["pipeline-baseline"] if baseline else [])
    runs = []
    for r in range(repeats):
        for cache in ("cold", "warm"):
            for mode in modes:
                if cache == "cold":
                    evict(files)
                    resident = resident_fraction(files)
                else:
                    warm(files)
                    resident = None
                cfg = {"mode": mode, "manifest": str(manifest), "threads": 2, "profile": PROFILE}
                if mode == "pipeline-baseline":
                    cfg["package_dir"] = baseline
                res = run_child(cfg)
                res.update(round=r, cache=cache, mode=mode, resident_before=resident)
                runs.append(res)
                log(f"  {scale}x round {r + 1} {cache:4s} {mode:17s} {res['total_s']:7.2f} s"
                    f"  (other jobs kept {res.get('other_cores_busy', float('nan')):.2f} cores busy)"
                    + (f"  (page cache before: {100 * resident:.1f} % resident)" if resident is not None else "")
                    + (f"  peak RSS {res['ru_maxrss_MB']:.0f} MB" if mode.startswith("pipeline") else ""))
    return {"scale": scale, "manifest": str(manifest), "files": len(files),
            "bytes_on_disk": sum(p.stat().st_size for p in files), "runs": runs}


def measure_distributed(root: Path, scale: int, repeats: int, log) -> dict:
    manifest = root / f"manifest_{scale}x.csv"
    files = study_files(manifest)
    runs = []
    for r in range(repeats):
        for workers in (1, 2):
            warm(files)
            res = run_child({"mode": "pipeline", "manifest": str(manifest), "scheduler": "local", "workers": workers})
            res.update(round=r, workers=workers)
            runs.append(res)
            log(f"  {scale}x round {r + 1} distributed {workers} worker(s) {res['total_s']:7.2f} s "
                f"(other jobs kept {res.get('other_cores_busy', float('nan')):.2f} cores busy; "
                f"cluster start {res.get('cluster_start_s', 0):.1f} s, process tree peak RSS "
                f"{res['tree_peak_rss_MB']:.0f} MB)")
        warm(files)
        res = run_child({"mode": "pipeline", "manifest": str(manifest), "scheduler": "threads"})
        res.update(round=r, workers=None)
        runs.append(res)
        log(f"  {scale}x round {r + 1} threads (2)            {res['total_s']:7.2f} s "
            f"(other jobs kept {res.get('other_cores_busy', float('nan')):.2f} cores busy)")
        # the ceiling two cores give this machine's reading and decompressing (no Dask, no fit): the floor
        # on 1 thread and on 2 threads, same files, warm cache
        for threads in (1, 2):
            warm(files)
            res = run_child({"mode": "floor-isal", "manifest": str(manifest), "threads": threads})
            res.update(round=r, workers=f"floor-{threads}")
            runs.append(res)
            log(f"  {scale}x round {r + 1} floor on {threads} thread(s)        {res['total_s']:7.2f} s")
    return {"scale": scale, "runs": runs}


def _have_isal() -> bool:
    try:
        import isal  # noqa: F401
    except ImportError:
        return False
    return True


def summarise_scale(m: dict) -> dict:
    """Per cache state: medians, and ratios pipeline / floor paired within a round."""
    out = {"scale": m["scale"], "files": m["files"], "GB_on_disk": round(m["bytes_on_disk"] / 1e9, 3)}
    runs = m["runs"]
    for cache in ("cold", "warm"):
        sel = [r for r in runs if r["cache"] == cache]
        pipe = [r for r in sel if r["mode"] == "pipeline"]
        if not pipe:
            continue
        c = {"pipeline_s": _med([r["total_s"] for r in pipe]), "pipeline_s_range": _rng([r["total_s"] for r in pipe]),
             "load_s": _med([r["load_s"] for r in pipe]), "fit_table_s": _med([r["fit_table_s"] for r in pipe]),
             "stats_s": _med([r["stats_s"] for r in pipe]),
             "voxels": pipe[0]["voxels"], "samples": pipe[0]["samples"], "scans": pipe[0]["scans"],
             "voxels_fitted": pipe[0]["voxels_fitted"],
             "voxels_per_s": _med([r["voxels"] / r["total_s"] for r in pipe]),
             "peak_rss_MB": max(r["ru_maxrss_MB"] for r in pipe),
             "peak_rss_MB_median": _med([r["ru_maxrss_MB"] for r in pipe])}
        kinds = sorted({k for r in pipe for k in r.get("task_s", {})})
        c["tasks"] = _med([r.get("tasks") for r in pipe])
        c["tasks_unfused"] = _med([r.get("tasks_unfused") for r in pipe])
        c["fit_table_unfused_s"] = _med([r.get("fit_table_unfused_s") for r in pipe])
        c["fused_speedup"] = _med([r["fit_table_unfused_s"] / r["fit_table_s"] for r in pipe
                                   if r.get("fit_table_unfused_s")])
        c["unfused_identical"] = all(r.get("unfused_identical", True) for r in pipe)
        c["task_s"] = {k: _med([r["task_s"].get(k, 0.0) for r in pipe]) for k in kinds}
        for fmode in ("floor-nibabel", "floor-isal"):
            fl = [r for r in sel if r["mode"] == fmode]
            if not fl:
                continue
            key = fmode.replace("floor-", "floor_")
            c[key + "_s"] = _med([r["total_s"] for r in fl])
            c[key + "_s_range"] = _rng([r["total_s"] for r in fl])
            c[key + "_peak_rss_MB"] = max(r["ru_maxrss_MB"] for r in fl)
            ratios = []
            for p in pipe:
                f = [r for r in fl if r["round"] == p["round"]]
                if f:
                    ratios.append(p["total_s"] / f[0]["total_s"])
            c["x_" + key] = _med(ratios)
            c["x_" + key + "_range"] = _rng(ratios)
            c["x_" + key + "_fit_table"] = _med([p["fit_table_s"] / [r for r in fl if r["round"] == p["round"]][0]
                                                 ["total_s"] for p in pipe])
            # the target: from disk to T2* maps + tumour table (load + fit + table, no mixed model)
            to_table = [(p["load_s"] + p["fit_table_s"]) / f[0]["total_s"] for p in pipe
                        for f in [[r for r in fl if r["round"] == p["round"]]] if f]
            c["x_" + key + "_to_table"] = _med(to_table)
            c["x_" + key + "_to_table_range"] = _rng(to_table)
        base = [r for r in sel if r["mode"] == "pipeline-baseline"]
        if base:
            c["baseline_s"] = _med([r["total_s"] for r in base])
            c["baseline_fit_table_s"] = _med([r["fit_table_s"] for r in base])
            c["baseline_peak_rss_MB"] = max(r["ru_maxrss_MB"] for r in base)
            c["baseline_task_s"] = {k: _med([r.get("task_s", {}).get(k, 0.0) for r in base])
                                    for k in sorted({k for r in base for k in r.get("task_s", {})})}
            sp = [b["total_s"] / p["total_s"] for b in base for p in pipe if p["round"] == b["round"]]
            c["speedup_vs_baseline"] = _med(sp)
            c["speedup_vs_baseline_range"] = _rng(sp)
            c["baseline_voxels_per_s"] = _med([r["voxels"] / r["total_s"] for r in base])
            fl = [r for r in sel if r["mode"] == "floor-isal"] or [r for r in sel if r["mode"] == "floor-nibabel"]
            c["baseline_x_floor"] = _med([b["total_s"] / f["total_s"] for b in base for f in fl
                                          if f["round"] == b["round"]])
        fastest = "floor_isal" if "floor_isal_s" in c else "floor_nibabel"
        c["floor"] = fastest
        c["x_floor"] = c["x_" + fastest]
        c["x_floor_to_table"] = c.get("x_" + fastest + "_to_table")
        fl = [r for r in sel if r["mode"] == fastest.replace("_", "-")]
        c["x_floor_cpu"] = _med([p["process_cpu_s"] / f["process_cpu_s"] for p in pipe for f in fl
                                 if f["round"] == p["round"]])
        c["pipeline_cpu_s"] = _med([p["process_cpu_s"] for p in pipe])
        c["other_cores_busy"] = _med([r.get("other_cores_busy") for r in sel])
        c["other_cores_busy_range"] = _rng([r.get("other_cores_busy") for r in sel])
        c["resident_before_cold"] = _rng([r.get("resident_before") for r in sel]) if cache == "cold" else None
        out[cache] = c
    return out


def summarise_distributed(d: dict) -> dict:
    runs = d["runs"]
    one = [r for r in runs if r["workers"] == 1]
    two = [r for r in runs if r["workers"] == 2]
    thr = [r for r in runs if r["workers"] is None]
    runs = [r for r in runs if not str(r["workers"]).startswith("floor")] + \
        [r for r in runs if str(r["workers"]).startswith("floor")]
    sp = [o["total_s"] / t["total_s"] for o in one for t in two if t["round"] == o["round"]]
    vs_thr = [t["total_s"] / h["total_s"] for t in two for h in thr if t["round"] == h["round"]]
    # the part the workers run (fit + ROI tables); load_study and the mixed model run in the client either way
    sp_ft = [o["fit_table_s"] / t["fit_table_s"] for o in one for t in two if t["round"] == o["round"]]
    f1 = [r for r in runs if r["workers"] == "floor-1"]
    f2 = [r for r in runs if r["workers"] == "floor-2"]
    sp_floor = [a["total_s"] / b["total_s"] for a in f1 for b in f2 if a["round"] == b["round"]]
    return {"scale": d["scale"], "one_worker_s": _med([r["total_s"] for r in one]),
            "speedup_fit_table_2_vs_1": _med(sp_ft), "speedup_fit_table_2_vs_1_range": _rng(sp_ft),
            "floor_1_thread_s": _med([r["total_s"] for r in f1]), "floor_2_threads_s": _med([r["total_s"] for r in f2]),
            "floor_speedup_2_vs_1": _med(sp_floor),
            "serial_client_s_two": _med([r["load_s"] + r["stats_s"] for r in two]),
            "two_workers_s": _med([r["total_s"] for r in two]), "threads_s": _med([r["total_s"] for r in thr]),
            "speedup_2_vs_1": _med(sp), "speedup_2_vs_1_range": _rng(sp),
            "two_workers_vs_threads": _med([1 / v for v in vs_thr]) if vs_thr else None,
            "cluster_start_s": _med([r.get("cluster_start_s") for r in one + two]),
            "other_cores_busy_one": _med([r.get("other_cores_busy") for r in one]),
            "other_cores_busy_two": _med([r.get("other_cores_busy") for r in two]),
            "cpu_s_one": _med([r.get("process_cpu_s") for r in one]),
            "cpu_s_two": _med([r.get("process_cpu_s") for r in two]),
            "tree_peak_rss_MB_two": max((r["tree_peak_rss_MB"] for r in two), default=None),
            "worker_peak_rss_MB_two": max((max(r.get("worker_peak_rss_MB", [0])) for r in two), default=None)}


# ------------------------------------------------------------------------------ report

def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def _others_text(doc: dict) -> str:
    """How busy other jobs kept the shared machine during the timed runs, from the measurements (not assumed)."""
    busy = [c.get("other_cores_busy") for s in doc["summary"] for c in (s.get("cold") or {}, s.get("warm") or {})]
    busy = [b for b in busy if b is not None]
    if not busy:
        return "other jobs' load not measured"
    return (f"other jobs kept {min(busy):.2f}-{max(busy):.2f} cores busy during the timed runs (median per row "
            f"below){'; a quiet machine' if max(busy) < 0.1 else ''}")


def markdown(doc: dict) -> str:
    q = doc["quick"]
    L = [f"# End-to-end benchmark from disk ({'quick' if q else 'full'} run)", "",
         f"Command: `{doc['command']}` -- {doc['date']}, {doc['cpus']} CPUs, {doc['ram_GB']} GB RAM, load average "
         f"at start {doc['load_average_start']} and end {doc['load_average_end']} ({_others_text(doc)}). "
         f"Python {doc['python']}, numpy {doc['versions']['numpy']}, nibabel "
         f"{doc['versions']['nibabel']}, dask {doc['versions']['dask']}, isal {doc['versions']['isal']}.", "",
         f"Study: the `large` preset's MEGRE scans ({doc['spec']['shape'][0]} x {doc['spec']['shape'][1]} x "
         f"{doc['spec']['shape'][2]} voxels, 12 echoes, int16 gzip NIfTI + sidecar + ROI per scan), "
         f"{doc['spec']['n_animals']} animals x {doc['spec']['n_days']} days at 1x (animals x scale at "
         f"larger scales; about one animal in four leaves early). Written once"
         + (f" in {doc['write']['seconds']:.0f} s" if doc["write"]["written"] else " (reused from an earlier run)")
         + f" to `{doc['data']}`.", "",
         "Pipeline = `load_study` -> `fit.t2star` (background-ROI noise SD, labels 1, 2, 6, 7) -> `roi_tables` "
         "(fit and ROI reduction in one Dask pass; maps never materialised) -> `mixed_model(r2star ~ group * day)`, "
         "threaded scheduler (2 threads). Floor = read + decompress every image to int16 and nothing else, "
         "2 threads: with nibabel's own gzip reader, and with ISA-L (`isal`) + nibabel from memory (the reader "
         "`read_nifti` now uses). `x floor` = pipeline / floor, paired within a round, median [min-max] over "
         "rounds; `to table` = (load + fit+table) / floor, the issue's target (from disk to T2* maps and tumour "
         "table, without the mixed model); each run is a fresh process; peak RSS = `ru_maxrss` of the pipeline "
         "process (max over rounds).",
         "", "## From disk to tumour table and mixed model", "",
         "| scale | cache | scans | voxels | floor nibabel s | floor isal s | pipeline s | load / fit+table / stats s "
         "| to table x floor (isal) | x floor (isal) | x floor (nibabel) | x floor in CPU s | voxels/s | peak RSS MB "
         "| cores busy with others |",
         "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in doc["summary"]:
        for cache in ("cold", "warm"):
            c = s.get(cache)
            if not c:
                continue
            L.append(f"| {s['scale']}x | {cache} | {c['scans']} | {c['voxels']:,} | {_f(c.get('floor_nibabel_s'))} | "
                     f"{_f(c.get('floor_isal_s'))} | {_f(c['pipeline_s'])} | {_f(c['load_s'])} / "
                     f"{_f(c['fit_table_s'])} / {_f(c['stats_s'])} | "
                     f"**{_f(c.get('x_floor_isal_to_table'))}** [{_f((c.get('x_floor_isal_to_table_range') or [None])[0])}-"
                     f"{_f((c.get('x_floor_isal_to_table_range') or [None, None])[1])}] | "
                     f"{_f(c.get('x_floor_isal'))} [{_f((c.get('x_floor_isal_range') or [None])[0])}-"
                     f"{_f((c.get('x_floor_isal_range') or [None, None])[1])}] | {_f(c.get('x_floor_nibabel'))} | "
                     f"{_f(c.get('x_floor_cpu'))} | {c['voxels_per_s']:,.0f} | {c['peak_rss_MB']:.0f} | "
                     f"{_f(c.get('other_cores_busy'))} [{_f((c.get('other_cores_busy_range') or [None])[0])}-"
                     f"{_f((c.get('other_cores_busy_range') or [None, None])[1])}] |")
    if any(s.get(c, {}).get("baseline_s") for s in doc["summary"] for c in ("cold", "warm")):
        L += ["", f"## Before and after this change (same run, same rounds): {doc['baseline']}", "",
              "| scale | cache | before s | after s | speed-up | before x floor | after x floor | before voxels/s "
              "| before peak RSS MB | after peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in doc["summary"]:
            for cache in ("cold", "warm"):
                c = s.get(cache)
                if c and c.get("baseline_s"):
                    L.append(f"| {s['scale']}x | {cache} | {_f(c['baseline_s'])} | {_f(c['pipeline_s'])} | "
                             f"**{_f(c['speedup_vs_baseline'])}** [{_f(c['speedup_vs_baseline_range'][0])}-"
                             f"{_f(c['speedup_vs_baseline_range'][1])}] | {_f(c['baseline_x_floor'])} | "
                             f"{_f(c['x_floor'])} | {c['baseline_voxels_per_s']:,.0f} | "
                             f"{c['baseline_peak_rss_MB']:.0f} | {c['peak_rss_MB']:.0f} |")
        L += ["", "Task seconds before -> after: " + "; ".join(
            f"{s['scale']}x {cache}: " + ", ".join(
                f"{k} {_f(s[cache]['baseline_task_s'].get(k))} -> {_f(s[cache]['task_s'].get(k))}"
                for k in doc["task_kinds"])
            for s in doc["summary"] for cache in ("warm",) if s.get(cache, {}).get("baseline_s")) + "."]
    cold = [s["cold"]["resident_before_cold"] for s in doc["summary"] if s.get("cold") and s["cold"].get(
        "resident_before_cold")]
    L += ["", "Cold = every file evicted with `posix_fadvise(POSIX_FADV_DONTNEED)` just before the process started "
          "(`/proc/sys/vm/drop_caches` is not writable here); "
          + (f"`fincore` found {100 * min(r[0] for r in cold):.1f}-{100 * max(r[1] for r in cold):.1f} % of the bytes "
             "still cached." if cold else "not verified (no `fincore`)."), "",
          "## One task per scan: fused vs unfused fit+table pass (same process, right after the timed run)", "",
          "| scale | cache | tasks fused | tasks unfused | fit+table fused s | unfused s | unfused / fused | "
          "tables identical |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for s in doc["summary"]:
        for cache in ("cold", "warm"):
            c = s.get(cache)
            if c and c.get("fit_table_unfused_s"):
                L.append(f"| {s['scale']}x | {cache} | {_f(c.get('tasks'), '{:.0f}')} | "
                         f"{_f(c.get('tasks_unfused'), '{:.0f}')} | {_f(c['fit_table_s'])} | "
                         f"{_f(c['fit_table_unfused_s'])} | {_f(c.get('fused_speedup'))} | {c.get('unfused_identical')} |")
    L += ["", "The unfused pass runs second (page cache warm), so its ratio favours it slightly.", "",
          "## Where the pass spends its time (task seconds of the unfused pass, both threads summed; Dask "
          "profiler, medians)", "",
          "| scale | cache | " + " | ".join(doc["task_kinds"]) + " | unfused fit+table wall s |",
          "|---|---|" + "---:|" * (len(doc["task_kinds"]) + 1)]
    for s in doc["summary"]:
        for cache in ("cold", "warm"):
            c = s.get(cache)
            if c:
                L.append(f"| {s['scale']}x | {cache} | " + " | ".join(_f(c["task_s"].get(k)) for k in doc["task_kinds"])
                         + f" | {_f(c.get('fit_table_unfused_s') or c['fit_table_s'])} |")
    if doc.get("distributed"):
        d = doc["distributed"]
        L += ["", f"## Distributed: local cluster of worker processes (1 thread each), {d['scale']}x study, warm cache",
              "", "| threads (2) s | 1 worker s | 2 workers s | 2 vs 1 | fit+table 2 vs 1 | load + stats in the client s "
              "| 2 workers / threads (speed) | cluster start s "
              "| process-tree peak RSS MB (2 workers) | cores busy with others (1 / 2 workers) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {_f(d['threads_s'])} | {_f(d['one_worker_s'])} | {_f(d['two_workers_s'])} | "
              f"**{_f(d['speedup_2_vs_1'])}** [{_f((d['speedup_2_vs_1_range'] or [None])[0])}-"
              f"{_f((d['speedup_2_vs_1_range'] or [None, None])[1])}] | {_f(d.get('speedup_fit_table_2_vs_1'))} | "
              f"{_f(d.get('serial_client_s_two'))} | {_f(d['two_workers_vs_threads'])} | "
              f"{_f(d['cluster_start_s'], '{:.1f}')} | {_f(d['tree_peak_rss_MB_two'], '{:.0f}')} | "
              f"{_f(d['other_cores_busy_one'])} / {_f(d['other_cores_busy_two'])} |",
              "", "Cluster start (and importing studylib on the workers) is not in the times.", "",
              f"The ceiling of this machine for the same files: reading and decompressing them (the floor, no Dask, "
              f"no fit) takes {_f(d.get('floor_1_thread_s'))} s on 1 thread and {_f(d.get('floor_2_threads_s'))} s on "
              f"2 (**{_f(d.get('floor_speedup_2_vs_1'))}x**), the most a second core gives the read itself here."]
    L += ["", "## Reading the numbers", "", doc["note"], ""]
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small study, under 3 minutes")
    ap.add_argument("--data", default=os.environ.get("STUDYLIB_BENCH_DATA", "/tmp/studylib-bench"),
                    help="where the study is written (kept and reused)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--scales", default=None, help="comma-separated, e.g. 1,4")
    ap.add_argument("--no-distributed", action="store_true")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the unfused, profiled pass after each timed pipeline run (task seconds per kind)")
    ap.add_argument("--baseline", default=None,
                    help="a folder holding an older 'studylib' package: its pipeline is timed beside this one "
                         "(first scale only)")
    ap.add_argument("--baseline-ref", default=None,
                    help="git ref whose studylib/ is the baseline (extracted with git archive)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(json.loads(a.child))
        return
    import dask
    import nibabel
    import psutil

    global PROFILE
    PROFILE = not a.no_profile
    cfg = dict(QUICK if a.quick else FULL)
    if a.scales:
        cfg["scales"] = tuple(int(s) for s in a.scales.split(","))
    if a.repeats:
        cfg["repeats"] = a.repeats
    data = Path(a.data) / ("quick" if a.quick else "full")
    t_start = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    load0 = [round(x, 2) for x in os.getloadavg()]
    log(f"writing/checking the study under {data} ...")
    write = ensure_study(data, n_animals=cfg["n_animals"], n_days=cfg["n_days"], scales=cfg["scales"])
    log(f"  {'written in %.0f s' % write['seconds'] if write['written'] else 'reused'}")
    baseline, baseline_desc = a.baseline, None
    if a.baseline_ref:
        import tempfile

        baseline = tempfile.mkdtemp(prefix="studylib-baseline-")
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline_ref, "studylib"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", baseline], input=arch, check=True)
        baseline_desc = f"before = studylib at git ref `{a.baseline_ref}`"
    elif baseline:
        baseline_desc = f"before = the studylib package in `{baseline}`"
    measured, summary = [], []
    for i, s in enumerate(cfg["scales"]):
        log(f"{s}x study: floor and pipeline, cold and warm page cache, {cfg['repeats']} rounds")
        m = measure_scale(data, s, cfg["repeats"], log, baseline=baseline if i == 0 else None)
        measured.append(m)
        summary.append(summarise_scale(m))
    dist = dist_raw = None
    if not a.no_distributed:
        log(f"distributed, {cfg['dist_scale']}x study: 1 vs 2 local workers, {cfg['dist_repeats']} rounds")
        dist_raw = measure_distributed(data, cfg["dist_scale"], cfg["dist_repeats"], log)
        dist = summarise_distributed(dist_raw)
    try:
        import isal

        isal_v = isal.__version__
    except ImportError:
        isal_v = None
    kinds = ["read + decompress + scale", "noise SD (background mean)", "T2* fit", "ROI statistics",
             "other (stack, masks, graph glue)"]
    cmd = "python benchmarks/end_to_end.py" + (" --quick" if a.quick else "")
    if a.scales:
        cmd += f" --scales {a.scales}"
    if a.repeats:
        cmd += f" --repeats {a.repeats}"
    if a.no_distributed:
        cmd += " --no-distributed"
    if a.no_profile:
        cmd += " --no-profile"
    if a.baseline_ref:
        cmd += f" --baseline-ref {a.baseline_ref}"
    elif a.baseline:
        cmd += " --baseline DIR"
    doc = {"quick": a.quick, "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "cpus": os.cpu_count(), "ram_GB": round(psutil.virtual_memory().total / 2**30, 1),
           "load_average_start": load0, "load_average_end": [round(x, 2) for x in os.getloadavg()],
           "python": platform.python_version(),
           "versions": {"numpy": np.__version__, "nibabel": nibabel.__version__, "dask": dask.__version__,
                        "isal": isal_v},
           "spec": {"n_animals": cfg["n_animals"], "n_days": cfg["n_days"], "shape": list(SHAPE),
                    "scales": list(cfg["scales"]), "repeats": cfg["repeats"]},
           "data": str(data), "write": write, "task_kinds": kinds, "baseline": baseline_desc, "summary": summary,
           "distributed": dist,
           "wall_s": round(time.perf_counter() - t_start, 1),
           "note": ("Each figure is the median over rounds; the bracket is the min-max of the per-round ratio. The "
                    "machine has 2 cores that other jobs may share (their load is measured per run, last column), "
                    "so single times can move by tens of per cent between rounds; ratios pair a pipeline run with "
                    "the floor run of the same round and cache state, minutes apart at most."),
           "raw": {"scales": measured, "distributed": dist_raw}}
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "end_to_end_quick" if a.quick else "end_to_end"
    (OUT / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (OUT / f"{stem}.md").write_text(markdown(doc))
    log(f"wrote {OUT / stem}.json and .md ({doc['wall_s']:.0f} s)")
    first = summary[0]
    for cache in ("cold", "warm"):
        c = first.get(cache)
        if c:
            log(f"{first['scale']}x {cache}: to tumour table {c['x_floor_to_table']:.2f} x floor, whole pipeline "
                f"{c['x_floor']:.2f} x floor ({c['floor']}; "
                f"x {c.get('x_floor_nibabel', 0):.2f} nibabel's reader), {c['voxels_per_s']:,.0f} vox/s, "
                f"peak RSS {c['peak_rss_MB']:.0f} MB")
    for s in summary[1:]:
        c = s.get("warm")
        log(f"{s['scale']}x warm: {c['x_floor']:.2f} x floor, {c['voxels_per_s']:,.0f} vox/s, peak RSS "
            f"{c['peak_rss_MB']:.0f} MB")
    if dist:
        log(f"distributed {dist['scale']}x: 2 workers vs 1 = {dist['speedup_2_vs_1']:.2f}x")
    c = first["warm"]
    print(f"end_to_end: {c['x_floor']:.2f} x floor, {c['voxels_per_s']:.0f} vox/s, peak RSS {c['peak_rss_MB']:.0f} MB "
          f"(to tumour table without the mixed model: {c['x_floor_to_table']:.2f} x floor)", flush=True)


if __name__ == "__main__":
    main()
