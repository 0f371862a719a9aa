"""`make reports` on the demo study: every notebook executed one after the other (``--jobs 1``) against
``--jobs N`` (notebooks in parallel, each in its own kernel), cold cache, in the same run.

Run: ``python benchmarks/reports.py [--pairs 2] [--jobs 2]`` (about 3 x 2.5 minutes per pair on 2 cores).
Writes ``benchmarks/results/reports.json`` and ``reports.md``.

Each configuration is the ``studylib run --preset demo --force`` command as ``make reports`` runs it,
in a fresh process, with its own empty cache folder (``--cache``) and reports folder, so every map is
fitted (what a fresh clone's ``make reports`` does).  Serial and parallel runs alternate (S P S P ...)
and the speed-up is the ratio of each pair's wall times, so a machine whose speed drifts (it is shared)
moves both.  The conclusions tables (``reports/<experiment>.json`` ``conclusions``) of every
parallel run are compared with the serial run's, byte for byte as JSON.

Before the timed pairs, one untimed warm-up run (``collagen_adc``) generates the demo study if it is missing and
compiles what a first run compiles: the issue's target is with the data present, and a first serial run that
also wrote the study (~40 s on 2 cores) made the speed-up of the run of 2026-12-04 (2.05x) look larger than it was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def one_run(jobs: int, work: Path, tag: str, notebooks: tuple[str, ...] = ()) -> dict:
    reports, cache = work / f"reports-{tag}", work / f"cache-{tag}"
    cmd = [str(Path(sys.executable).with_name("studylib")), "run", "--preset", "demo", "--force",
           "--reports", str(reports), "--cache", str(cache), "--jobs", str(jobs), *notebooks]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    recs = {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}
    out = {"jobs": jobs, "wall_s": round(wall, 2), "returncode": proc.returncode,
           "status": {n: r["status"] for n, r in sorted(recs.items())},
           "notebook_s": {n: r["run_s"] for n, r in sorted(recs.items())},
           "conclusions": {n: json.dumps(r.get("conclusions"), sort_keys=True) for n, r in sorted(recs.items())}}
    out["notebooks_sum_s"] = round(sum(out["notebook_s"].values()), 2)
    out["generated_data"] = "generating the" in proc.stderr
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-2000:]
    shutil.rmtree(cache, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="studylib-bench-reports-") as tmp:
        work = Path(tmp)
        warm = one_run(1, work, "warmup", ("collagen_adc",))
        print(f"warm-up (untimed): {warm['wall_s']:.1f} s, demo study generated: {warm['generated_data']}", flush=True)
        for i in range(args.pairs):
            s = one_run(1, work, f"serial{i}")
            p = one_run(args.jobs, work, f"parallel{i}")
            same = s["conclusions"] == p["conclusions"]
            pairs.append({"serial": s, "parallel": p, "speedup": round(s["wall_s"] / p["wall_s"], 3),
                          "conclusions_identical": same})
            print(f"pair {i}: serial {s['wall_s']:.1f} s, {args.jobs} jobs {p['wall_s']:.1f} s, "
                  f"x{s['wall_s'] / p['wall_s']:.2f}, conclusions identical: {same}", flush=True)
    ups = sorted(x["speedup"] for x in pairs)
    doc = {"command": "python benchmarks/reports.py " + " ".join(argv or sys.argv[1:]),
           "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": len(os.sched_getaffinity(0)),
           "python": platform.python_version(), "load_average_start": [round(x, 2) for x in load0],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "jobs": args.jobs,
           "warmup": {k: warm[k] for k in ("wall_s", "generated_data", "returncode")}, "pairs": pairs,
           "speedup_median": ups[len(ups) // 2] if len(ups) % 2 else round((ups[len(ups) // 2 - 1] + ups[len(ups) // 2]) / 2, 3),
           "conclusions_identical": all(x["conclusions_identical"] for x in pairs)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reports.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# `make reports` on the demo study: serial vs {args.jobs} notebooks at once", "",
             f"Command: `{doc['command']}` -- {doc['when_utc']} UTC, {doc['cpus']} CPUs, load average at start "
             f"{doc['load_average_start']} and end {doc['load_average_end']} (shared machine).", "",
             "Each run: `studylib run --preset demo --force --cache <empty folder>` (every map fitted), fresh "
             "process; serial and parallel alternate and each pair gives one ratio. Before them, one untimed "
             f"warm-up run ({warm['wall_s']:.1f} s; the demo study generated in it: {warm['generated_data']}).", "",
             "| pair | serial s | parallel s | speed-up | conclusions identical | notebooks' own s (serial / parallel) |",
             "|---:|---:|---:|---:|---|---|"]
    for i, x in enumerate(pairs):
        lines.append(f"| {i} | {x['serial']['wall_s']:.1f} | {x['parallel']['wall_s']:.1f} | {x['speedup']:.2f} | "
                     f"{x['conclusions_identical']} | {x['serial']['notebooks_sum_s']:.1f} / "
                     f"{x['parallel']['notebooks_sum_s']:.1f} |")
    lines += ["", f"Median speed-up **{doc['speedup_median']:.2f}x**; conclusions tables of all notebooks "
              f"byte-identical in every pair: **{doc['conclusions_identical']}**.", "",
              "Per-notebook run time (s) of the last pair, serial / parallel:", ""]
    last = pairs[-1]
    for n, t in last["serial"]["notebook_s"].items():
        lines.append(f"- {n}: {t:.1f} / {last['parallel']['notebook_s'].get(n, float('nan')):.1f}")
    (RESULTS / "reports.md").write_text("\n".join(lines) + "\n")
    print(f"reports: x{doc['speedup_median']:.2f} with {args.jobs} jobs, conclusions identical: "
          f"{doc['conclusions_identical']}")
    return 0 if doc["conclusions_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
