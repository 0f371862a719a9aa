"""Every OSIPI DCE test case in ../shared/reference/osipi_dce, at OSIPI's own tolerances.

Covered: standard Tofts (QIBA DRO, 25 cases, plus the 5-s-delayed variant with the delay
fitted), extended Tofts (Bosca-Jackson DRO, 15 + delayed), Patlak (9 + the 9 cases with a 5 s
arterial delay, fitted with ``delay=True``), VFA T1 (brain, QIBA, prostate; the relaxometry
kernel :func:`studylib.models.relaxometry.fit_vfa` that the workbook uses for T10 maps),
SPGR signal -> concentration (5), Parker and McGrath (preclinical) AIFs with and without
delays.  A case passes when ``|measured - ref| <= atol + rtol |ref|`` (numpy's allclose).

``test_error_table`` prints the per-parameter error table (run pytest with ``-s`` to see it;
it is also written to ``osipi_errors.csv`` in the test's tmp dir).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from studylib import fit as F
from studylib.models import dce as M
from studylib.models import relaxometry as RX

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "osipi_dce" / "test"
_arr = lambda s: np.fromstring(s, sep=" ")  # noqa: E731


def _read(rel, cols, **kw):
    path = REF / rel
    assert path.is_file(), f"OSIPI reference file missing: {path}"
    return pd.read_csv(path, converters={c: _arr for c in cols}, **kw)


def _fit_one(t, c, cp, model, method="auto", delay=False):
    ct = xr.DataArray(np.asarray(c, float)[None, :], dims=("voxel", "t"), coords={"t": t})
    aif = xr.DataArray(np.asarray(cp, float), dims=("t",), coords={"t": t})
    ds = F.dce(ct, aif, model, method, delay=delay, delay_range_s=(0.0, 10.0), delay_step_s=0.5)
    return {k: float(ds[k].values[0]) for k in ds.data_vars}


def _row(group, case, param, measured, ref, atol, rtol):
    err = measured - ref
    return dict(group=group, case=case, param=param, measured=measured, ref=ref, error=err,
                atol=atol, rtol=rtol, passed=bool(abs(err) <= atol + rtol * abs(ref)))


def _dce_rows():
    rows = []
    # --- standard Tofts (QIBA v11): Ktrans atol 0.005 + rtol 0.1, ve atol 0.05; delay atol 1 s
    df = _read("DCEmodels/data/dce_DRO_data_tofts.csv", ["t", "C", "ca", "ta"])
    for _, r in df.iterrows():
        assert np.allclose(r.ta, r.t)
        for method in ("linear", "nonlinear"):
            p = _fit_one(r.t, r.C, r.ca, "tofts", method)
            g = f"tofts_{method}"
            rows += [_row(g, r.label, "ktrans", p["ktrans"], r.Ktrans, 0.005, 0.1),
                     _row(g, r.label, "ve", p["ve"], r.ve, 0.05, 0.0)]
        shifted = np.concatenate([np.zeros(10), r.C[:-10]])  # 10 samples = 5 s later
        p = _fit_one(r.t, shifted, r.ca, "tofts", "nonlinear", delay=True)
        rows += [_row("tofts_delay", r.label, "ktrans", p["ktrans"], r.Ktrans, 0.005, 0.1),
                 _row("tofts_delay", r.label, "ve", p["ve"], r.ve, 0.05, 0.0),
                 _row("tofts_delay", r.label, "delay_s", p["delay_s"], r.t[10], 1.0, 0.0)]
    # --- extended Tofts (Bosca & Jackson): + vp atol 0.025
    df = _read("DCEmodels/data/dce_DRO_data_extended_tofts.csv", ["t", "C", "ca", "ta"])
    for _, r in df.iterrows():
        assert np.allclose(r.ta, r.t)
        for method in ("linear", "nonlinear"):
            p = _fit_one(r.t, r.C, r.ca, "extended_tofts", method)
            g = f"etofts_{method}"
            rows += [_row(g, r.label, "ktrans", p["ktrans"], r.Ktrans, 0.005, 0.1),
                     _row(g, r.label, "ve", p["ve"], r.ve, 0.05, 0.0),
                     _row(g, r.label, "vp", p["vp"], r.vp, 0.025, 0.0)]
        shifted = np.concatenate([np.zeros(5), r.C[:-5]])  # 5 samples = 5 s later
        p = _fit_one(r.t, shifted, r.ca, "extended_tofts", "nonlinear", delay=True)
        rows += [_row("etofts_delay", r.label, "ktrans", p["ktrans"], r.Ktrans, 0.005, 0.1),
                 _row("etofts_delay", r.label, "ve", p["ve"], r.ve, 0.05, 0.0),
                 _row("etofts_delay", r.label, "vp", p["vp"], r.vp, 0.025, 0.0),
                 _row("etofts_delay", r.label, "delay_s", p["delay_s"], r.t[5], 1.0, 0.0)]
    # --- Patlak (Thrippleton): PS atol 0.005 + rtol 0.1, vp atol 0.025, delay atol 1 s
    for fname, delay in (("patlak_sd_0.02_delay_0.csv", False), ("patlak_sd_0.02_delay_5.csv", True)):
        df = _read(f"DCEmodels/data/{fname}", ["t", "C_t", "cp_aif"])
        g = "patlak_delay" if delay else "patlak"
        for _, r in df.iterrows():
            p = _fit_one(r.t, r.C_t, r.cp_aif, "patlak", delay=delay)
            rows += [_row(g, r.label, "ps", p["ktrans"], r.ps, 0.005, 0.1),
                     _row(g, r.label, "vp", p["vp"], r.vp, 0.025, 0.0)]
            if delay:
                rows.append(_row(g, r.label, "delay_s", p["delay_s"], r.arterial_delay, 1.0, 0.0))
    return rows


def _t1_rows():
    rows = []
    # R1 atol 0.05 /s + rtol 0.05
    for fname, scale in (("t1_brain_data.csv", 1.0), ("t1_quiba_data.csv", 1000.0)):
        df = _read(f"T1_mapping/data/{fname}", ["FA", "TR", "s"])
        y = np.stack(df.s.to_numpy())
        for method in ("linear", "nonlinear"):
            for i, r in df.iterrows():
                o = RX.fit_vfa(y[i:i + 1], r.FA, tr_ms=float(r.TR[0]) * 1000.0, method=method)
                rows.append(_row(f"vfa_{fname[3:-9]}_{method}", r.label, "r1", 1000.0 / o["t1"][0],
                                 r.R1 * scale, 0.05, 0.05))
    df = _read("T1_mapping/data/t1_prostate_data.csv", ["FA", "TR", "s"])
    for _, r in df.iterrows():  # OSIPI tests the non-B1-corrected nonlinear T1 (TR in ms)
        o = RX.fit_vfa(r.s[None, :], r.FA, tr_ms=float(r.TR[0]), method="nonlinear")
        rows.append(_row("vfa_prostate_nonlinear", r.label, "r1", 1000.0 / o["t1"][0],
                         1000.0 / r[" T1 nonlinear"], 0.05, 0.05))
    return rows


def _si_rows():
    rows = []
    df = _read("SI_to_Conc/data/SI2Conc_data.csv", ["s", "conc"], encoding="utf-8-sig")
    for _, r in df.iterrows():
        n = r.s.size
        sig = xr.DataArray(r.s, dims=("t",), coords={"t": np.arange(n, dtype=float)})
        # baseline = frames 1 .. numbaselinepts-1: the reference skips the first frame
        c = F.signal_to_concentration(sig, t10_ms=r.T1base * 1000.0, fa_deg=r.FA, tr_ms=r.TR * 1000.0,
                                      r1_per_mM_s=r.r1, baseline=(1, int(r.numbaselinepts))).values
        worst = int(np.argmax(np.abs(c - r.conc) - 1e-5 * np.abs(r.conc)))
        rows.append(_row("si_to_conc", r.label, "conc_worst_frame", c[worst], r.conc[worst], 1e-5, 1e-5))
    return rows


def _aif_rows():
    rows = []
    files = (("ParkerAIF_ref.csv", M.parker_aif, 60.0, 1e-4, 0.01),
             ("ParkerAIF_ref_with_delay.csv", M.parker_aif, 60.0, 0.1, 0.1),
             ("preclinicalAIF_ref.csv", M.mcgrath_rat_aif, 1.0, 1e-4, 0.01),
             ("preclinicalAIF_ref_delay.csv", M.mcgrath_rat_aif, 1.0, 1e-4, 0.01))
    for fname, fn, to_s, atol, rtol in files:
        df = _read(f"PopulationAIF_DCE/data/{fname}", [])
        for label, g in df.groupby("label", sort=False):
            t = g.time.to_numpy() * to_s
            d = float(g.delay.iloc[0])
            cb = fn(t, delay_s=d)
            ref = g.Cb.to_numpy()
            worst = int(np.argmax(np.abs(cb - ref) - rtol * np.abs(ref)))
            rows.append(_row(fname[:-4], label, "Cb_worst_sample", cb[worst], ref[worst], atol, rtol))
    return rows


@pytest.fixture(scope="module")
def table():
    return pd.DataFrame(_dce_rows() + _t1_rows() + _si_rows() + _aif_rows())


def test_case_counts(table):
    """Every case of every file is in the table (nothing silently skipped)."""
    n = table.groupby("group").case.nunique().to_dict()
    assert n["tofts_linear"] == n["tofts_nonlinear"] == n["tofts_delay"] == 25
    assert n["etofts_linear"] == n["etofts_nonlinear"] == n["etofts_delay"] == 15
    assert n["patlak"] == n["patlak_delay"] == 9
    assert n["vfa_brain_linear"] == n["vfa_brain_nonlinear"] == 76
    assert n["vfa_quiba_linear"] == n["vfa_quiba_nonlinear"] == 45
    assert n["vfa_prostate_nonlinear"] == 50
    assert n["si_to_conc"] == 5
    assert n["ParkerAIF_ref"] == 11 and n["ParkerAIF_ref_with_delay"] == 9
    assert n["preclinicalAIF_ref"] == 10 and n["preclinicalAIF_ref_delay"] == 8


@pytest.mark.parametrize("group", [
    "tofts_linear", "tofts_nonlinear", "tofts_delay", "etofts_linear", "etofts_nonlinear", "etofts_delay",
    "patlak", "patlak_delay", "vfa_brain_linear", "vfa_brain_nonlinear", "vfa_quiba_linear",
    "vfa_quiba_nonlinear", "vfa_prostate_nonlinear", "si_to_conc", "ParkerAIF_ref", "ParkerAIF_ref_with_delay",
    "preclinicalAIF_ref", "preclinicalAIF_ref_delay"])
def test_all_cases_within_osipi_tolerance(table, group):
    sub = table[table.group == group]
    assert len(sub) > 0
    failed = sub[~sub.passed]
    assert failed.empty, f"{group}: {len(failed)} of {len(sub)} outside OSIPI tolerance:\n{failed.to_string()}"


def test_error_table(table, tmp_path, capsys):
    """Per-parameter error summary (max |error|, max |error| / tolerance, pass rate)."""
    tab = table.assign(abs_err=table.error.abs(), used=table.error.abs() / (table.atol + table.rtol * table.ref.abs()))
    summary = (tab.groupby(["group", "param"])
               .agg(cases=("case", "count"), mean_err=("error", "mean"), max_abs_err=("abs_err", "max"),
                    worst_tol_fraction=("used", "max"), pass_rate=("passed", "mean"))
               .reset_index())
    table.to_csv(tmp_path / "osipi_errors.csv", index=False)
    with capsys.disabled():
        print("\nOSIPI reference cases: error per parameter (tolerance fraction 1.0 = at OSIPI's limit)")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    assert (summary.pass_rate == 1.0).all()
    assert (summary.worst_tol_fraction <= 1.0).all()


def test_patlak_delayed_data_needs_the_delay_fit():
    """Without the delay fit the 5-s-delayed Patlak cases are out of tolerance: the delay fit is doing work."""
    df = _read("DCEmodels/data/patlak_sd_0.02_delay_5.csv", ["t", "C_t", "cp_aif"])
    r = df.iloc[8]  # vp 0.5, ps 0.15
    p0 = _fit_one(r.t, r.C_t, r.cp_aif, "patlak", delay=False)
    p1 = _fit_one(r.t, r.C_t, r.cp_aif, "patlak", delay=True)
    assert abs(p0["vp"] - r.vp) > 0.025
    assert abs(p1["vp"] - r.vp) <= 0.025 and abs(p1["delay_s"] - 5.0) <= 1.0
