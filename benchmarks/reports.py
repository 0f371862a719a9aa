"""`make reports` on the demo study: every notebook executed one after the other (``--jobs 1``) against
``--jobs N`` (notebooks in parallel, each in its own kernel), cold cache, in the same run.

Run: ``python benchmarks/reports.py [--pairs 2] [--jobs 2]`` (about 3 x 2.5 minutes per pair on 2 cores, and one serial run more).
Writes ``benchmarks/results/reports.json`` and ``reports.md``.

Each configuration is the ``studylib run --preset demo --force`` command as ``make reports`` runs it,
in a fresh process, with its own empty cache folder (``--cache``) and reports folder, so every map is
fitted (what a fresh clone's ``make reports`` does).  Serial and parallel runs alternate (S P S P ...)
and the speed-up is the ratio of each pair's wall times, so a machine whose speed drifts (it is shared)
moves both; one serial run more closes the series (S P S P ... S) and each parallel run is also compared with
the geometric mean of the serial runs just before and after it, which cancels a drift that is linear over the
three runs (this machine's speed moves by tens of per cent within an hour).  Each run's CPU seconds (the
command and every process it started: kernels, Chromium; ``RUSAGE_CHILDREN``) give the cores it kept busy, and
the serial run's cores give the ceiling of the speed-up on ``--jobs`` cores: ``jobs / serial cores`` (a serial
run already uses a second core now and then: Dask threads in a notebook, Chromium printing).  The conclusions tables (``reports/<experiment>.json`` ``conclusions``) of every
parallel run are compared with the serial run's, byte for byte as JSON.

With ``--control`` (the default), each pair is followed by a control: ``jobs`` whole serial runs side by side,
each in its own process with its own cache and reports (S P C S P C ... S).  They share nothing, so they show
what ``jobs`` cores give this very work when no scheduling is needed at all: their throughput against one serial
run (``jobs`` x the serial wall time / their wall time, against the serial runs on both sides) is the speed-up a
perfect scheduler of these notebooks could hope for on this machine at that moment, beside the CPU-second ceiling.

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ChildRun  # noqa: E402  (benchmarks/, the script's own folder)


def one_run(jobs: int, work: Path, tag: str, notebooks: tuple[str, ...] = (), side_by_side: int = 1) -> dict:
    """One ``studylib run`` (``side_by_side`` > 1: that many at once, each with its own reports and cache, timed
    until the last ends); per-notebook figures are the first run's."""
    tags = [tag] if side_by_side == 1 else [f"{tag}-{k}" for k in range(side_by_side)]
    reports = [work / f"reports-{t}" for t in tags]
    cmds = [[str(Path(sys.executable).with_name("studylib")), "run", "--preset", "demo", "--force",
             "--reports", str(r), "--cache", str(work / f"cache-{t}"), "--jobs", str(jobs), *notebooks]
            for t, r in zip(tags, reports)]
    with ChildRun() as m:
        procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in cmds]
        stderr = [pr.communicate()[1] for pr in procs]
    wall = m.wall_s
    recs = {p.stem: json.loads(p.read_text()) for p in reports[0].glob("*.json")}
    out = {"jobs": jobs, "side_by_side": side_by_side, "wall_s": round(wall, 2),
           "returncode": max(pr.returncode for pr in procs), "cpu_s": round(m.cpu_s, 1),
           "cores_busy": round(m.cpu_s / wall, 3),
           "other_cores_busy": None if m.other_cores_busy is None else round(m.other_cores_busy, 3),
           "status": {n: r["status"] for n, r in sorted(recs.items())},
           "notebook_s": {n: r["run_s"] for n, r in sorted(recs.items())},
           "conclusions": {n: json.dumps(r.get("conclusions"), sort_keys=True) for n, r in sorted(recs.items())}}
    out["notebooks_sum_s"] = round(sum(out["notebook_s"].values()), 2)
    out["generated_data"] = any("generating the" in e for e in stderr)
    if out["returncode"] != 0:
        out["stderr_tail"] = "\n".join(e[-2000:] for e in stderr)
    for t in tags:
        shutil.rmtree(work / f"cache-{t}", ignore_errors=True)
    return out


def _median(xs) -> float:
    return round(statistics.median(xs), 3)


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def write_summary(doc: dict) -> str:
    """Write ``reports.md`` from the run's document (``reports.json``) and return the one-line summary."""
    pairs, closing, warm, jobs = doc["pairs"], doc["closing_serial"], doc["warmup"], doc["jobs"]
    control = all("control" in x for x in pairs)
    serial_walls = [x["serial"]["wall_s"] for x in pairs] + [closing["wall_s"]]
    above_ceiling = sum(x["speedup_bracketed"] > doc["speedup_ceiling"] for x in pairs)
    lines = [f"# `make reports` on the demo study: serial vs {jobs} notebooks at once", "",
             f"Command: `{doc['command']}` -- {doc['when_utc']} UTC, {doc['cpus']} CPUs, load average at start "
             f"{doc['load_average_start']} and end {doc['load_average_end']} (shared machine).", "",
             "Each run: `studylib run --preset demo --force --cache <empty folder>` (every map fitted), fresh "
             "process; serial and parallel alternate and each pair gives one ratio. Before them, one untimed "
             f"warm-up run ({warm['wall_s']:.1f} s; the demo study generated in it: {warm['generated_data']}).", "",
             "The last column compares each parallel run with the serial runs on both sides of it (geometric mean; "
             f"a closing serial run of {closing['wall_s']:.1f} s follows the last pair). Cores = the run's CPU "
             "seconds (the command, its kernels and Chromium) / its wall time; others = what other jobs kept busy.", "",
             "| pair | serial s | parallel s | speed-up | cores serial / parallel | others | CPU s serial / parallel "
             "| conclusions identical | notebooks' own s (serial / parallel) | speed-up vs serial before+after |",
             "|---:|---:|---:|---:|---|---|---|---|---|---:|"]
    for i, x in enumerate(pairs):
        sx, px = x["serial"], x["parallel"]
        lines.append(f"| {i} | {sx['wall_s']:.1f} | {px['wall_s']:.1f} | {x['speedup']:.2f} | "
                     f"{sx['cores_busy']:.2f} / {px['cores_busy']:.2f} | {_f(sx['other_cores_busy'])} / "
                     f"{_f(px['other_cores_busy'])} | {sx['cpu_s']:.0f} / {px['cpu_s']:.0f} | "
                     f"{x['conclusions_identical']} | {sx['notebooks_sum_s']:.1f} / {px['notebooks_sum_s']:.1f} | "
                     f"{x['speedup_bracketed']:.2f} |")
    lines += ["", f"Median speed-up **{doc['speedup_median']:.2f}x** per pair, **{doc['speedup_bracketed_median']:.2f}x** "
              f"against the serial runs on both sides; conclusions tables of all notebooks byte-identical in every "
              f"run: **{doc['conclusions_identical']}**.", "",
              f"The serial run keeps {doc['serial_cores_busy_median']:.2f} cores busy (median), so {jobs} cores "
              f"can make it at most {jobs} / {doc['serial_cores_busy_median']:.2f} = "
              f"**{doc['speedup_ceiling']:.2f}x** faster with the same CPU seconds; the parallel run keeps "
              f"{doc['parallel_cores_busy_median']:.2f} busy."
              + (f" {above_ceiling} of {len(pairs)} bracketed "
                 "speed-ups exceed that ceiling: the machine's speed moved between the runs by more than the "
                 "bracketing cancels (serial runs "
                 f"{min(serial_walls):.1f}-{max(serial_walls):.1f} s), so the spread of the pairs is the uncertainty."
                 if above_ceiling else ""), ""]
    if control:
        walls = ", ".join(f"{x['control']['wall_s']:.1f}" for x in pairs)
        cores = ", ".join(f"{x['control']['cores_busy']:.2f}" for x in pairs)
        ups_c = ", ".join(f"{x['control_speedup_bracketed']:.2f}" for x in pairs)
        lines += [f"Control: {jobs} whole serial runs side by side, sharing nothing (no scheduling at all), "
                  f"after each pair: {walls} s, {cores} cores busy; their throughput against the serial runs on "
                  f"both sides {ups_c}x (median **{doc['control_speedup_bracketed_median']:.2f}x**): what "
                  f"{jobs} cores gave this work on this machine with perfect independence. `--jobs {jobs}` "
                  f"reached {doc['speedup_bracketed_median'] / doc['control_speedup_bracketed_median']:.0%} of it.",
                  ""]
    lines += ["Per-notebook run time (s) of the last pair, serial / parallel:", ""]
    last = pairs[-1]
    for n, t in last["serial"]["notebook_s"].items():
        lines.append(f"- {n}: {t:.1f} / {last['parallel']['notebook_s'].get(n, float('nan')):.1f}")
    (RESULTS / "reports.md").write_text("\n".join(lines) + "\n")
    return (f"reports: x{doc['speedup_median']:.2f} per pair, x{doc['speedup_bracketed_median']:.2f} against the serial "
          f"runs on both sides, with {jobs} jobs (ceiling x{doc['speedup_ceiling']:.2f}: serial run "
          f"{doc['serial_cores_busy_median']:.2f} cores"
          + (f"; {jobs} serial runs side by side x{doc['control_speedup_bracketed_median']:.2f}"
             if control else "") + f"); conclusions identical: {doc['conclusions_identical']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="after each pair, --jobs serial runs side by side (see the module docstring)")
    ap.add_argument("--summary-only", action="store_true",
                    help="rewrite reports.md from the saved reports.json (no runs)")
    args = ap.parse_args(argv)
    if args.summary_only:
        doc = json.loads((RESULTS / "reports.json").read_text())
        print(write_summary(doc))
        return 0 if doc["conclusions_identical"] else 1
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
            print(f"pair {i}: serial {s['wall_s']:.1f} s ({s['cores_busy']:.2f} cores), {args.jobs} jobs "
                  f"{p['wall_s']:.1f} s ({p['cores_busy']:.2f} cores), x{s['wall_s'] / p['wall_s']:.2f}, "
                  f"conclusions identical: {same}", flush=True)
            if args.control:
                c = one_run(1, work, f"control{i}", side_by_side=args.jobs)
                pairs[-1]["control"] = c
                pairs[-1]["conclusions_identical"] = same and c["conclusions"] == s["conclusions"]
                print(f"control {i}: {args.jobs} serial runs side by side {c['wall_s']:.1f} s "
                      f"({c['cores_busy']:.2f} cores)", flush=True)
        closing = one_run(1, work, f"serial{args.pairs}")
        print(f"closing serial run: {closing['wall_s']:.1f} s ({closing['cores_busy']:.2f} cores)", flush=True)
    for i, x in enumerate(pairs):  # the parallel run against the serial runs on both sides of it
        after = pairs[i + 1]["serial"] if i + 1 < len(pairs) else closing
        x["serial_after_s"] = after["wall_s"]
        x["speedup_bracketed"] = round((x["serial"]["wall_s"] * after["wall_s"]) ** 0.5 / x["parallel"]["wall_s"], 3)
        x["conclusions_identical"] = x["conclusions_identical"] and after["conclusions"] == x["parallel"]["conclusions"]
        if "control" in x:  # throughput of the side-by-side runs against the serial runs on both sides
            x["control_speedup_bracketed"] = round(args.jobs * (x["serial"]["wall_s"] * after["wall_s"]) ** 0.5
                                                   / x["control"]["wall_s"], 3)
    serial_cores = [x["serial"]["cores_busy"] for x in pairs] + [closing["cores_busy"]]
    ups = sorted(x["speedup"] for x in pairs)
    doc = {"command": "python benchmarks/reports.py " + " ".join(argv or sys.argv[1:]),
           "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": len(os.sched_getaffinity(0)),
           "python": platform.python_version(), "load_average_start": [round(x, 2) for x in load0],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "jobs": args.jobs,
           "warmup": {k: warm[k] for k in ("wall_s", "generated_data", "returncode")}, "pairs": pairs,
           "closing_serial": closing, "speedup_median": _median(ups),
           "speedup_bracketed_median": _median([x["speedup_bracketed"] for x in pairs]),
           "serial_cores_busy_median": _median(serial_cores),
           "parallel_cores_busy_median": _median([x["parallel"]["cores_busy"] for x in pairs]),
           "speedup_ceiling": round(args.jobs / _median(serial_cores), 3),
           "control_speedup_bracketed_median": (_median([x["control_speedup_bracketed"] for x in pairs])
                                                if args.control else None),
           "conclusions_identical": all(x["conclusions_identical"] for x in pairs)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reports.json").write_text(json.dumps(doc, indent=1))
    print(write_summary(doc))
    return 0 if doc["conclusions_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
