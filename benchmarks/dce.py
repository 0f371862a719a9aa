"""DCE-MRI extended Tofts throughput and accuracy, side by side with peers, in one run.

Data: ``N`` voxels (default 100 000) of extended Tofts tissue curves, Ktrans 0.02-0.6 /min,
ve 0.05-0.5, vp 0-0.1, McGrath mouse AIF (haematocrit 0.45, bolus at 30 s), frames every 4 s
over 10 min (151 frames), Gaussian noise SD 0.01 mM.  The truth is simulated on a 0.25 s grid
with the analytic AIF and sampled at the frames; every method gets the AIF sampled at the
frames (the peers accept nothing else), so all share the same small AIF-undersampling bias.

Methods (all single-threaded BLAS; speed is voxels per CPU-second of the process, which is
robust on a shared machine):

* studylib nonlinear (``models.dce.dce_kernel``, variable projection, all N voxels)
* studylib linear (Murase), all N voxels
* studylib through the xarray/Dask adapter ``fit.dce`` (2 threads; wall-clock voxels/s too)
* studylib nonlinear with the AIF on the 0.25 s grid (accuracy reference, no undersampling)
* ``scipy.optimize.curve_fit`` per voxel (subsample, scaled)
* peers from PyPI in ``.venv-bench`` (Python 3.12: osipy needs >= 3.12): ``osipy.dce.fitting.fit_model``
  (its default Levenberg-Marquardt, concentration input) and ``dcmri.Tissue(kinetics='HF')``
  ``.train`` (its own NLLS fit of the signal; HF with fast water exchange is extended Tofts:
  PS = Ktrans, vi = ve, vb (1 - H) = vp), fed the SPGR signal computed from the *same* noisy
  concentrations, so the information content is identical.

Run: ``.venv/bin/python benchmarks/dce.py [--n 100000]``.  Results: benchmarks/results/dce.json
and dce.md.  A peer that is not installed or fails is recorded as such, with its error.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
H = 0.45
NOISE_MM = 0.01
DT_S = 4.0
SPGR = dict(R10=1 / 1.5, r1=4.0, TR=0.004, FA=15.0, S0=1000.0)  # for dcmri's signal input


def make_data(n, seed=2024):
    from studylib.models import dce as M

    rng = np.random.default_rng(seed)
    kt = rng.uniform(0.02, 0.6, n)
    ve = rng.uniform(0.05, 0.5, n)
    vp = rng.uniform(0.0, 0.1, n)
    tf = np.arange(0, 600 + 1e-9, 0.25)
    cbf = M.mcgrath_rat_aif(tf, delay_s=30.0)
    cpf = M.blood_to_plasma(cbf, H)
    step = int(round(DT_S / 0.25))
    idx = np.arange(0, tf.size, step)
    ct = np.empty((n, idx.size))
    for s in range(0, n, 20000):  # fine-grid forward model in blocks (memory)
        ct[s:s + 20000] = M.extended_tofts_ct(tf, cpf, kt[s:s + 20000], ve[s:s + 20000], vp[s:s + 20000])[:, idx]
    ct += rng.normal(0.0, NOISE_MM, ct.shape)
    return dict(t=tf[idx], cp=cpf[idx], cb=cbf[idx], tf=tf, cpf=cpf, ct=ct, kt=kt, ve=ve, vp=vp)


def errors(est, truth):
    est = np.asarray(est, float)
    ok = np.isfinite(est)
    rel = (est[ok] - truth[ok]) / truth[ok]
    return dict(n_fitted=int(ok.sum()), n=int(est.size), median_abs_rel_err=float(np.median(np.abs(rel))),
                median_rel_err=float(np.median(rel)), p90_abs_rel_err=float(np.percentile(np.abs(rel), 90)))


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def run_studylib(d):
    import xarray as xr

    from studylib import fit as F
    from studylib.models import dce as M

    res = []
    n = d["ct"].shape[0]
    for name, kw in (("studylib nonlinear (variable projection)", dict(method="nonlinear")),
                     ("studylib linear (Murase)", dict(method="linear"))):
        M.dce_kernel(d["ct"][:64], d["t"], cp=d["cp"], model="extended_tofts", **kw)  # warm-up
        out, cpu, wall = timed(lambda: M.dce_kernel(d["ct"], d["t"], cp=d["cp"], model="extended_tofts", **kw))
        res.append(dict(method=name, voxels=n, cpu_s=cpu, wall_s=wall, voxels_per_cpu_s=n / cpu,
                        voxels_per_wall_s=n / wall, **errors(out["ktrans"], d["kt"])))
    out, cpu, wall = timed(lambda: M.dce_kernel(d["ct"], d["t"], cp=d["cpf"], t_aif_s=d["tf"],
                                                model="extended_tofts", method="nonlinear"))
    res.append(dict(method="studylib nonlinear, AIF on the 0.25 s grid", voxels=n, cpu_s=cpu, wall_s=wall,
                    voxels_per_cpu_s=n / cpu, voxels_per_wall_s=n / wall, **errors(out["ktrans"], d["kt"])))
    ct = xr.DataArray(d["ct"], dims=("voxel", "t"), coords={"t": d["t"]}).chunk({"voxel": 25000})
    aif = xr.DataArray(d["cp"], dims=("t",), coords={"t": d["t"]})
    import dask

    with dask.config.set(scheduler="threads", num_workers=2):
        ds, cpu, wall = timed(lambda: F.dce(ct, aif, "extended_tofts").compute())
    res.append(dict(method="studylib fit.dce adapter, Dask 2 threads", voxels=n, cpu_s=cpu, wall_s=wall,
                    voxels_per_cpu_s=n / cpu, voxels_per_wall_s=n / wall, **errors(ds.ktrans.values, d["kt"])))
    return res


def run_curve_fit(d, n_sub):
    from scipy.optimize import curve_fit
    from scipy.signal import lfilter

    from studylib.models import dce as M

    t, cp = d["t"], d["cp"]
    dt = float(t[1] - t[0])

    def model(_t, k, ve, vp):
        # the same exact piecewise-linear convolution as studylib, as a C-speed IIR filter per voxel:
        # E_i = x E_{i-1} + w0 c_{i-1} + w1 c_i  (uniform frames)
        kep = k / ve / 60.0
        x, w0, w1 = (float(v) for v in M._seg_weights(dt, np.array(kep)))
        u = np.concatenate([[0.0], w0 * cp[:-1] + w1 * cp[1:]])
        return vp * cp + k / 60.0 * lfilter([1.0], [1.0, -x], u)

    est = np.full(n_sub, np.nan)

    def loop():
        for i in range(n_sub):
            try:
                p, _ = curve_fit(model, t, d["ct"][i], p0=(0.1, 0.2, 0.02))  # default: unbounded LM (MINPACK)
                est[i] = p[0]
            except (RuntimeError, ValueError):
                pass

    _, cpu, wall = timed(loop)
    return dict(method="scipy curve_fit loop (per voxel, MINPACK LM)", voxels=n_sub, cpu_s=cpu, wall_s=wall,
                voxels_per_cpu_s=n_sub / cpu, voxels_per_wall_s=n_sub / wall,
                **errors(est, d["kt"][:n_sub]))


PEER = r'''
import json, os, sys, time, traceback
import numpy as np
tool, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.load(path)
t, ct, cp, cb = d["t"], d["ct"][:n], d["cp"], d["cb"]
out = {"tool": tool}
try:
    if tool == "osipy":
        import osipy
        from osipy.dce.fitting import fit_model
        out["version"] = osipy.__version__
        c0, w0 = time.process_time(), time.perf_counter()
        r = fit_model("extended_tofts", ct.reshape(n, 1, 1, -1), cp, t)
        out["cpu_s"], out["wall_s"] = time.process_time() - c0, time.perf_counter() - w0
        out["ktrans"] = np.asarray(r.parameter_maps["Ktrans"].values, float).ravel().tolist()
    elif tool == "dcmri":
        import dcmri as dc
        from importlib.metadata import version
        out["version"] = version("dcmri")
        R10, r1, TR, FA, S0, H = (float(d[k]) for k in ("R10", "r1", "TR", "FA", "S0", "H"))
        a = np.deg2rad(FA)
        E = np.exp(-TR * (R10 + r1 * ct))
        sig = S0 * np.sin(a) * (1 - E) / (1 - np.cos(a) * E)
        n0 = int(np.sum(t < 30.0))
        est = []
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(n):
            ts = dc.Tissue(kinetics="HF", water_exchange="FF", sequence="SS", ca=cb, t=t, r1=r1, R10=R10,
                           TR=TR, FA=FA, n0=n0, H=H)
            ts.train(t, sig[i])
            est.append(60.0 * ts.params("PS"))
        out["cpu_s"], out["wall_s"] = time.process_time() - c0, time.perf_counter() - w0
        out["ktrans"] = est
except Exception as err:
    out["error"] = f"{type(err).__name__}: {err}"
    out["traceback"] = traceback.format_exc()[-2000:]
print("@@JSON@@" + json.dumps(out))
'''


def run_peer(tool, npz, n_sub, d):
    row = dict(method={"osipy": "osipy fit_model (LM)", "dcmri": "dcmri Tissue('HF').train (NLLS on signal)"}[tool],
               voxels=n_sub)
    if not BENCH_PY.exists():
        row["error"] = f"{BENCH_PY} not found: create it with python3.12 -m venv .venv-bench and pip install dcmri osipy"
        return row
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PEER)
    try:
        p = subprocess.run([str(BENCH_PY), f.name, tool, str(npz), str(n_sub)], capture_output=True, text=True,
                           env=env, timeout=3600)
    finally:
        os.unlink(f.name)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@JSON@@")]
    if not line:
        row["error"] = f"peer process failed (exit {p.returncode}): {p.stderr[-1500:]}"
        return row
    out = json.loads(line[-1][8:])
    if "error" in out:
        row["error"] = out["error"]
        row["version"] = out.get("version")
        return row
    row.update(version=out["version"], cpu_s=out["cpu_s"], wall_s=out["wall_s"],
               voxels_per_cpu_s=n_sub / out["cpu_s"], voxels_per_wall_s=n_sub / out["wall_s"],
               **errors(np.asarray(out["ktrans"]), d["kt"][:n_sub]))
    return row


def to_markdown(meta, rows):
    lines = [f"# DCE extended Tofts benchmark ({meta['date']})", "",
             f"{meta['n_voxels']} voxels, {meta['n_frames']} frames every {meta['dt_s']} s, noise SD {meta['noise_mM']} mM, "
             f"McGrath mouse AIF; single-threaded BLAS; machine: {meta['machine']} (shared; load average at start "
             f"{meta['load_avg']}). Speed = voxels per CPU-second of the process.", "",
             "| method | voxels fitted | voxels / CPU-s | voxels / wall-s | Ktrans median abs rel err | "
             "Ktrans median rel err (bias) | Ktrans p90 abs rel err |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | - | not run: {r['error'][:160]} | | | | |")
            continue
        lines.append(f"| {r['method']}{' ' + r['version'] if r.get('version') else ''} | {r['n_fitted']}/{r['n']} | "
                     f"{r['voxels_per_cpu_s']:,.0f} | {r['voxels_per_wall_s']:,.0f} | {100 * r['median_abs_rel_err']:.2f} % | "
                     f"{100 * r['median_rel_err']:+.2f} % | {100 * r['p90_abs_rel_err']:.2f} % |")
    ref = next((r for r in rows if r["method"].startswith("scipy") and "error" not in r), None)
    nl = rows[0]
    if ref:
        lines += ["", f"studylib nonlinear vs the curve_fit loop: {nl['voxels_per_cpu_s'] / ref['voxels_per_cpu_s']:,.0f}x "
                      "per CPU-second."]
    lines += ["", "Subsampled methods (curve_fit, peers) are fitted on the first voxels of the same data and their "
                  "errors are computed on those voxels."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-curve-fit", type=int, default=1000)
    ap.add_argument("--n-osipy", type=int, default=5000)
    ap.add_argument("--n-dcmri", type=int, default=200)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    d = make_data(args.n)
    rows = run_studylib(d)
    rows.append(run_curve_fit(d, min(args.n_curve_fit, args.n)))
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "dce_bench.npz"
        np.savez(npz, t=d["t"], ct=d["ct"][:max(args.n_osipy, args.n_dcmri)], cp=d["cp"], cb=d["cb"], H=H, **SPGR)
        rows.append(run_peer("osipy", npz, min(args.n_osipy, args.n), d))
        rows.append(run_peer("dcmri", npz, min(args.n_dcmri, args.n), d))
    import numpy
    import scipy

    meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), n_voxels=args.n, n_frames=int(d["t"].size),
                dt_s=DT_S, noise_mM=NOISE_MM, machine=f"{platform.machine()} {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, numpy {numpy.__version__}, scipy {scipy.__version__}",
                load_avg=" ".join(f"{v:.1f}" for v in os.getloadavg()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dce.json").write_text(json.dumps(dict(meta=meta, results=rows), indent=2))
    md = to_markdown(meta, rows)
    (args.out / "dce.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
