"""Scaling of whole-study fits on Dask: throughput per scheduler, peak memory as the study grows,
tasks per chunk.

Run: ``python benchmarks/scaling.py [--quick]`` (full run about 5-10 minutes on 2 cores; ``--quick``
about a minute).  Writes ``benchmarks/results/scaling.json`` and ``scaling.md``.

The studies come from :func:`studylib.synth.large.lazy_study`: every scan (one Dask chunk) is
synthesised from the forward models when a task needs it, so the data never exist on disk or
as a whole in memory -- like a study read scan by scan from disk, with synthesis in place of
reading.  Measured:

1. **Throughput** (voxels/s) of a whole-study T2* fit (``fit.t2star``, every voxel) and a DCE fit
   (``fit.signal_to_concentration`` + ``fit.dce`` extended Tofts, every voxel in the body),
   reduced to per-animal x day tumour means, with the threaded scheduler and a local
   ``distributed`` cluster of 1 and 2 worker processes (1 thread each).  The synthesis alone is
   timed too, so the fit's own share can be read off (``fit_only`` = total - synthesis).
2. **Peak RSS** (psutil, sampling the whole process tree every 20 ms: this process plus any
   workers) of the chunked T2* fit reduced to per-animal ROI means, for the study at 1x, 4x
   and 16x (``scale`` multiplies the animals; the chunk size is fixed).  It must stay flat: a
   fit that materialised the study would grow with it.
3. **Tasks per chunk** of the graphs (before and after ``dask.optimize``).

BLAS is pinned to one thread per process.  The benchmark machine is shared (other jobs were
running, see ``load_average`` in the JSON), so absolute times are pessimistic; ratios and the
memory profile are the point.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dask  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _memory import TreeRSS  # noqa: E402  (benchmarks/, the script's own folder)
from studylib import compute  # noqa: E402
from studylib.fit.dce import dce, population_aif, signal_to_concentration  # noqa: E402
from studylib.fit.relaxometry import t2star  # noqa: E402
from studylib.synth.large import DCE, lazy_study, nominal_nbytes, t10_map  # noqa: E402 (DCE: truth)

OUT = ROOT / "benchmarks" / "results"

FULL = dict(
    megre=dict(n_animals=4, n_days=2, shape=(20, 128, 128)),
    dce=dict(n_animals=4, n_days=2, shape=(8, 96, 96)),
    rss=dict(n_animals=4, n_days=2, shape=(20, 128, 128)),
    scales=(1, 4, 16),
)
QUICK = dict(
    megre=dict(n_animals=2, n_days=1, shape=(10, 64, 64)),
    dce=dict(n_animals=2, n_days=1, shape=(4, 48, 48)),
    rss=dict(n_animals=1, n_days=1, shape=(10, 64, 64)),
    scales=(1, 4, 16),
)


# ------------------------------------------------------------------------------ workloads

def megre_work(spec, scale=1):
    ds = lazy_study(kind="MEGRE", scale=scale, **spec)
    maps = t2star(ds.signal)
    reduced = maps.r2star.where(maps.fit_ok & (ds.roi == 1)).mean(["z", "y", "x"])
    n_vox = int(np.prod([ds.sizes[d] for d in ("animal", "day", "z", "y", "x")]))
    return ds, reduced, n_vox


def dce_work(spec, scale=1):
    ds = lazy_study(kind="DCE", scale=scale, **spec)
    ct = signal_to_concentration(ds.signal, t10_ms=t10_map(ds), fa_deg=ds.attrs["FlipAngle"],
                                 tr_ms=ds.attrs["tr_ms"], r1_per_mM_s=DCE["r1_per_s_per_mM"],
                                 baseline=(1, 10))
    aif = population_aif(ct["t"], "mcgrath_rat", delay_s=DCE["bolus_arrival_s"],
                         hematocrit=DCE["hematocrit"])
    body = ds.roi != 5
    maps = dce(ct, aif, model="extended_tofts", mask=body)
    reduced = maps.ktrans.where(maps.fit_ok & (ds.roi == 1)).mean(["z", "y", "x"])
    n_vox = int(body.sum().compute())
    return ds, reduced, n_vox


def synth_only(ds):
    return ds.signal.mean([d for d in ds.signal.dims if d not in ("animal", "day")])


# ------------------------------------------------------------------------------ measuring

def timed(obj):
    t0 = time.perf_counter()
    c0 = time.process_time()
    (out,) = dask.compute(obj)  # on the client of the enclosing scheduler_context, if any
    return out, time.perf_counter() - t0, time.process_time() - c0


def tasks_per_chunk(obj, n_chunks):
    graph = obj.__dask_graph__()
    (opt,) = dask.optimize(obj)
    return {"tasks": len(graph), "tasks_optimized": len(opt.__dask_graph__()),
            "per_chunk": round(len(graph) / n_chunks, 2),
            "per_chunk_optimized": round(len(opt.__dask_graph__()) / n_chunks, 2)}


def throughput(kind, spec, schedulers):
    rows = []
    for sched, n_workers in schedulers:
        kw = dict(n_workers=n_workers, threads_per_worker=1, quiet=True) if sched == "local" else {}
        with compute.scheduler_context(sched, **kw):
            ds, reduced, n_vox = (megre_work if kind == "MEGRE" else dce_work)(spec)
            _, t_syn, _ = timed(synth_only(ds))
            out, t_all, cpu = timed(reduced)
        n_scans = int(ds.sizes["animal"] * ds.sizes["day"])
        label = "threads" if sched == "threads" else f"local, {n_workers} worker{'s' * (n_workers > 1)}"
        rows.append({"fit": kind, "scheduler": label, "workers": n_workers if sched == "local" else None,
                     "threads": os.cpu_count() if sched == "threads" else n_workers, "scans": n_scans,
                     "voxels_fitted": n_vox, "synthesis_s": round(t_syn, 2), "total_s": round(t_all, 2),
                     "voxels_per_s": round(n_vox / t_all), "fit_only_voxels_per_s":
                     round(n_vox / max(t_all - t_syn, 1e-9)) if t_all > t_syn else None,
                     "client_cpu_s": round(cpu, 2), "finite_tumour_means": int(np.isfinite(out.values).sum())})
        print(f"  {kind:5s} {label:20s} {n_vox / t_all / 1e3:8.1f} kvox/s  (synthesis {t_syn:.1f} s, "
              f"total {t_all:.1f} s)", flush=True)
    return rows


def rss_sweep(spec, scales):
    rows = []
    for s in scales:
        ds, reduced, n_vox = megre_work(spec, scale=s)
        n_scans = int(ds.sizes["animal"] * ds.sizes["day"])
        with compute.scheduler_context("threads"), TreeRSS() as mem:
            out, t_all, _ = timed(reduced)
        rows.append({"scale": s, "animals": int(ds.sizes["animal"]), "scans": n_scans, "voxels": n_vox,
                     "signal_GB": round(ds.signal.nbytes / 1e9, 2),
                     "maps_GB_if_materialised": round(n_vox * (8 * 5 + 1) / 1e9, 2),
                     "rss_start_MB": round(mem.start / 1e6), "rss_peak_MB": round(mem.peak / 1e6),
                     "rss_increase_MB": round((mem.peak - mem.start) / 1e6), "seconds": round(t_all, 1),
                     "finite_tumour_means": int(np.isfinite(out.values).sum())})
        print(f"  scale {s:2d}: {n_scans:4d} scans, signal {ds.signal.nbytes / 1e9:6.2f} GB, peak RSS "
              f"{mem.peak / 1e6:7.0f} MB (+{(mem.peak - mem.start) / 1e6:.0f} MB), {t_all:.1f} s", flush=True)
    return rows


def markdown(doc) -> str:
    L = [f"# Scaling benchmark ({'quick' if doc['quick'] else 'full'} run)", "",
         f"Command: `{doc['command']}` -- {doc['date']}, {doc['machine']['cpus']} CPUs, "
         f"{doc['machine']['memory_GB']} GB RAM, load average at start {doc['machine']['load_average_start']} "
         f"(shared machine: other jobs were running; absolute times are pessimistic).", "",
         "## Throughput of whole-study fits (reduced to per-animal tumour means)", "",
         "| fit | scheduler | scans | voxels fitted | synthesis s | total s | voxels/s | fit-only voxels/s |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["throughput"]:
        fo = f"{r['fit_only_voxels_per_s']:,}" if r["fit_only_voxels_per_s"] else "n/a"
        L.append(f"| {r['fit']} | {r['scheduler']} | {r['scans']} | {r['voxels_fitted']:,} | {r['synthesis_s']} | "
                 f"{r['total_s']} | {r['voxels_per_s']:,} | {fo} |")
    load = doc["machine"]["load_average_start"][0]
    if load > doc["machine"]["cpus"]:
        L += ["", f"Note: the load average was {load} on {doc['machine']['cpus']} CPUs (other engineers' jobs), so "
              "a second worker found no idle core: 1 vs 2 workers and threads vs processes differ here by "
              "contention and process overhead (task transfer, start-up), not by parallel speed-up.  "
              "The per-scan tasks are independent, so on idle cores they should scale with the core count (not measured here)."]
    L += ["", "## Peak memory as the study grows (T2* fit, threads, chunked, reduced to ROI means)", "",
          "| scale | animals | scans | signal GB | maps GB if materialised | peak RSS MB | RSS increase MB | s |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rss"]:
        L.append(f"| {r['scale']}x | {r['animals']} | {r['scans']} | {r['signal_GB']} | {r['maps_GB_if_materialised']}"
                 f" | {r['rss_peak_MB']} | {r['rss_increase_MB']} | {r['seconds']} |")
    L += ["", f"Peak RSS ratio 16x / 1x: **{doc['rss_ratio_16_over_1']}** (flat = 1).  "
          f"The nominal `lazy_study()` (40 animals x 6 days x 20x128x128 x 12 echoes) is "
          f"{doc['nominal_GB']['1x']} GB at 1x and {doc['nominal_GB']['16x']} GB at 16x; "
          "its chunks are the same size as here, so its memory profile is the same.", "",
          "## Tasks per chunk (one chunk = one scan)", "",
          "| graph | chunks | tasks | tasks/chunk | after optimize | per chunk |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in doc["tasks"].items():
        L.append(f"| {name} | {r['chunks']} | {r['tasks']} | {r['per_chunk']} | {r['tasks_optimized']} | "
                 f"{r['per_chunk_optimized']} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.time()
    doc = {"quick": bool(args.quick), "command": "python benchmarks/scaling.py" + (" --quick" if args.quick else ""),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "memory_GB": round(psutil.virtual_memory().total / 2**30, 1),
                       "load_average_start": [round(x, 2) for x in os.getloadavg()],
                       "python": platform.python_version(), "numpy": np.__version__, "dask": dask.__version__},
           "config": {k: (v if k == "scales" else {**v, "shape": list(v["shape"])}) for k, v in cfg.items()}}

    print("tasks per chunk", flush=True)
    ds, reduced, _ = megre_work(cfg["megre"])
    n = int(ds.sizes["animal"] * ds.sizes["day"])
    maps = t2star(ds.signal)
    dds, dred, _ = dce_work(cfg["dce"])
    nd = int(dds.sizes["animal"] * dds.sizes["day"])
    doc["tasks"] = {"synthesis (signal)": {"chunks": n, **tasks_per_chunk(ds.signal.data, n)},
                    "T2* maps (6 outputs)": {"chunks": n, **tasks_per_chunk(maps.to_array().data, n)},
                    "T2* -> tumour means": {"chunks": n, **tasks_per_chunk(reduced.data, n)},
                    "DCE -> tumour means": {"chunks": nd, **tasks_per_chunk(dred.data, nd)}}
    for k, v in doc["tasks"].items():
        print(f"  {k:22s} {v['per_chunk']:6.2f} tasks/chunk ({v['per_chunk_optimized']} optimized)")

    print("throughput", flush=True)
    scheds = [("threads", None), ("local", 1), ("local", 2)]
    doc["throughput"] = throughput("MEGRE", cfg["megre"], scheds) + throughput("DCE", cfg["dce"], scheds)

    print("peak RSS as the study grows", flush=True)
    doc["rss"] = rss_sweep(cfg["rss"], cfg["scales"])
    first, last = doc["rss"][0], doc["rss"][-1]
    doc["rss_ratio_16_over_1"] = round(last["rss_peak_MB"] / first["rss_peak_MB"], 2)
    doc["nominal_GB"] = {f"{s}x": round(nominal_nbytes(scale=s) / 1e9, 1) for s in (1, 4, 16)}
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["wall_s"] = round(time.time() - t0, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "scaling_quick" if args.quick else "scaling"
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(doc))
    print(f"wrote {out / name}.json and .md in {doc['wall_s']} s")
    return doc


if __name__ == "__main__":  # a process LocalCluster needs this guard
    main()
