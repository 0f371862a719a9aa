"""The real-data acidoCEST study: generic CEST helpers (repetition averaging, map median filter, band weights,
ratiometric pH and its calibration), the catalogue's real-data record and the runner's manifest choice,
the vendored data (import reproduces the committed manifests, the ROI rule reproduces the committed labels),
the in-vitro calibration, and the notebook end to end."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import studylib as sl
from studylib import workbook as wb
from studylib.catalog import EXPERIMENTS
from studylib.errors import ExperimentError, FitInputError, StudyError
from studylib.experiments import acidocest_b16 as exp
from studylib.models import cest as mc

SHARED = Path(__file__).resolve().parents[2] / "shared" / "real" / "bruker_pv601_mouse_cest"


# ------------------------------------------------------------------------------------ generic helpers

def test_average_repetitions_mean_sorted_offsets_and_pooled_sem():
    rng = np.random.default_rng(3)
    offs = np.tile([2.0, -1.0, 0.0, 1.0], 3)  # offset loop fastest, three repetitions, unsorted list
    truth = {2.0: 10.0, -1.0: 6.0, 0.0: 2.0, 1.0: 5.0}
    noise = rng.normal(0, 0.5, (12, 7))
    data = np.array([truth[o] for o in offs])[:, None] + noise
    sig = xr.DataArray(da.from_array(data, chunks=-1), dims=("offset", "x"), coords={"offset": offs},
                       attrs={"units": "a.u.", "field_T": 7.0})
    out = sl.average_repetitions(sig)
    assert out.attrs["repetitions"] == 3 and out["signal"].chunks is not None  # lazy
    got = out.compute()
    assert got["offset"].values.tolist() == [-1.0, 0.0, 1.0, 2.0]
    for o, v in truth.items():
        np.testing.assert_allclose(got["signal"].sel(offset=o).values, data[offs == o].mean(0))
    var = np.mean([data[offs == o].var(0, ddof=1) for o in truth], axis=0)
    np.testing.assert_allclose(got["sem"].values, np.sqrt(var / 3))
    assert got["signal"].attrs["field_T"] == 7.0


def test_average_repetitions_refuses_unequal_repetitions():
    sig = xr.DataArray(np.ones((3, 2)), dims=("offset", "x"), coords={"offset": [0.0, 0.0, 1.0]})
    with pytest.raises(FitInputError, match="equally often"):
        sl.average_repetitions(sig)
    with pytest.raises(FitInputError, match="'offset' dimension"):
        sl.average_repetitions(xr.DataArray(np.ones(3), dims=("t",)))


def test_median_filter_map_ignores_nan_and_pixels_outside_the_mask():
    a = np.full((5, 5), 1.0)
    a[2, 2] = 50.0  # a spike
    a[0, 0] = np.nan
    m = xr.DataArray(np.ones((5, 5), bool), dims=("y", "x"))
    m[4, 4] = False
    v = xr.DataArray(a, dims=("y", "x"), attrs={"units": "ppm", "long_name": "B0"})
    out = sl.median_filter_map(v, m, size=3)
    assert out.values[2, 2] == 1.0 and np.isnan(out.values[4, 4]) and out.values[0, 0] == 1.0
    assert out.attrs["units"] == "ppm" and "median filter" in out.attrs["long_name"]
    with pytest.raises(FitInputError, match="odd"):
        sl.median_filter_map(v, size=2)


def test_band_mean_weights_reproduce_the_band_mean_of_the_spline():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    z = 0.3 * x**2 - x + 2  # a quadratic: the cubic spline is exact
    w = mc.band_mean_weights(x, 0.5, 1.5, points=101)
    q = np.linspace(0.5, 1.5, 101)
    assert w.sum() == pytest.approx(1.0)
    assert z @ w == pytest.approx(np.mean(0.3 * q**2 - q + 2), rel=1e-10)
    with pytest.raises(FitInputError, match="inside the offsets"):
        mc.band_mean_weights(x, 3.5, 5.0)


def test_ratiometric_ph_statuses_and_line():
    a = np.array([3.0, 3.0, 0.2, 3.0, np.nan, 3.0])
    b = np.array([2.0, 3.0, 0.2, -0.5, 1.0, 0.1])
    ph, lr, st = mc.ratiometric_ph(a, b, intercept=6.7, slope=1.5, log_ratio_range=(-0.2, 0.4), se_a=0.5, se_b=0.5)
    assert st.tolist() == [0, 0, 2, 3, 1, 3]
    assert ph[0] == pytest.approx(6.7 + 1.5 * np.log10(1.5)) and ph[1] == pytest.approx(6.7)
    assert np.isnan(ph[2:]).all() and np.isnan(lr[3])
    _, _, st2 = mc.ratiometric_ph(a, b, intercept=6.7, slope=1.5, log_ratio_range=(-0.2, 0.4))
    assert st2[2] == 0  # without standard errors every finite pixel counts as detected
    with pytest.raises(FitInputError, match="lo < hi"):
        mc.ratiometric_ph(a, b, intercept=6.7, slope=1.5, log_ratio_range=(0.4, -0.2))


def test_fit_ratiometric_calibration_recovers_a_known_line():
    ph = np.linspace(6.2, 7.4, 13)
    lr = (ph - 6.6) / 1.4
    eb = np.full(ph.size, 10.0)
    c = mc.fit_ratiometric_calibration(ph, eb * 10**lr, eb)
    assert c["intercept"] == pytest.approx(6.6) and c["slope"] == pytest.approx(1.4) and c["r"] == pytest.approx(1.0)
    assert c["residual_sd"] < 1e-9 and c["n"] == 13 and c["ph_range"] == (6.2, 7.4)
    with pytest.raises(FitInputError, match="at least 3"):
        mc.fit_ratiometric_calibration([7.0, 6.5], [1.0, 1.0], [1.0, 1.0])


# ------------------------------------------------------------------------------------ catalogue and runner

def test_catalogue_has_one_real_experiment_and_synth_plans_only_the_synthetic_ones():
    from studylib.synth import STUDIES, STUDY_KINDS

    real = [e for e in EXPERIMENTS.values() if e.data == "real"]
    assert [e.name for e in real] == ["acidocest_b16"]
    e = real[0]
    assert e.manifest == "data/real/acidocest_b16/data_manifest.csv" and (wb.REPO_DIR / e.manifest).is_file()
    assert (wb.REPO_DIR / e.source / "LICENSE").is_file() and (wb.REPO_DIR / e.source / "SOURCE.txt").is_file()
    assert list(STUDIES) == [n for n, x in EXPERIMENTS.items() if x.data == "synthetic"] == list(STUDY_KINDS)
    with pytest.raises(StudyError, match="needs its manifest"):
        type(e)("x", "t", "b", "a", "c", "f", ("CEST",), data="real")
    with pytest.raises(StudyError, match="data must be one of"):
        type(e)("x", "t", "b", "a", "c", "f", ("CEST",), data="simulated")


def test_runner_gives_a_real_experiment_its_own_manifest(tmp_path):
    own = (wb.REPO_DIR / EXPERIMENTS["acidocest_b16"].manifest).resolve()
    assert wb.run_module._real_manifest("collagen_adc", None) is None
    assert wb.run_module._real_manifest("acidocest_b16", None) == own
    other = tmp_path / "m.csv"  # a synthetic study's manifest: not the real study's
    other.write_text("study,animal,group,day,kind,path,sha256\ncollagen_adc,a,g,0,DWI,x.nii.gz," + "0" * 64 + "\n")
    assert wb.run_module._real_manifest("acidocest_b16", other) == own
    mine = tmp_path / "mine.csv"  # a manifest that lists the study is used as given
    mine.write_text("study,animal,group,day,kind,path,sha256\nacidocest_b16,a,g,0,CEST,x.nii.gz," + "0" * 64 + "\n")
    assert wb.run_module._real_manifest("acidocest_b16", mine) == mine.resolve()
    with pytest.raises(wb.WorkbookError, match="not found"):
        wb.run_module._real_manifest("acidocest_b16", tmp_path / "missing.csv")
    assert "acidocest_b16" in wb.available()


# ------------------------------------------------------------------------------------ vendored data

def test_import_reproduces_the_committed_manifests_byte_for_byte():
    table = exp.import_scans()
    assert len(table) == 6 and table["identical"].all()
    assert set(table["file"]) == {"CEST_E4.nii.gz", "CEST_E4.json", "CEST_E5.nii.gz", "CEST_E5.json",
                                  "T2w_E3.nii.gz", "T2w_E3.json"}
    for m in (exp.study_manifest(), exp.anatomy_manifest()):
        assert sl.verify_manifest(m) == []
    plan = exp.import_plan()
    assert plan["scan"].tolist() == ["E3", "E4", "E5"] and plan["kind"].tolist() == ["T2w", "CEST", "CEST"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/real not available (fresh clone)")
def test_vendored_subset_imports_like_the_full_upstream_folder(tmp_path):
    from studylib.io.importer import import_scans
    from studylib.manifest import read_manifest

    full = import_scans(SHARED, out=tmp_path / "full", study=exp.STUDY, animal=exp.ANIMAL, group=exp.GROUP,
                        day=exp.DAY, scans="4,5")
    sub = import_scans(wb.REPO_DIR / EXPERIMENTS["acidocest_b16"].source, out=tmp_path / "sub", study=exp.STUDY,
                       animal=exp.ANIMAL, group=exp.GROUP, day=exp.DAY, scans="4,5")
    a, b = read_manifest(full.manifest), read_manifest(sub.manifest)
    assert a["sha256"].tolist() == b["sha256"].tolist()


def test_roi_rule_reproduces_the_committed_labels():
    exp.import_scans()
    t = exp.check_roi().set_index("file")
    assert t["identical_to_rule"].all()
    assert t.loc["roi_t2w.nii.gz", "pixels"] == 152 and t.loc["roi_cest.nii.gz", "pixels"] == 40
    side = json.loads((exp.study_manifest().parent / "raw/acidocest_b16/m1/day00/roi_cest.json").read_text())
    assert side["Labels"] == {"1": "tumour"} and side["Rule"] == exp.ROI_RULE


def test_roi_on_grid_by_area_coverage():
    fine = np.zeros((8, 8), bool)
    fine[2:6, 2:5] = True  # 4 x 3 fine pixels
    a_fine = np.diag([0.3, 0.3, 1.0, 1.0])
    a_coarse = np.diag([0.6, 0.6, 1.0, 1.0])
    a_coarse[:2, 3] = 0.15  # coarse pixel (i, j) covers fine pixels 2i, 2i+1
    mask, cov = exp.roi_on_grid(fine, a_fine, a_coarse, (4, 4))
    assert cov[1, 1] == 1.0 and cov[1, 2] == 0.5 and cov[0, 0] == 0.0
    assert mask.sum() == 4  # rows 1-2, columns 1-2 (the half-covered column 2 counts at >= 50 %)
    thin = np.full((12, 12), 1000.0)
    thin[5:7, :] = 100.0  # the seed on a 2-pixel line: its neighbourhood's median is the background
    with pytest.raises(ExperimentError, match="seed"):
        exp.draw_tumour_roi(thin, seed_xy=(6, 5))
    blob = np.full((30, 30), 10.0)
    blob[8:20, 10:22] = 300.0
    roi = exp.draw_tumour_roi(blob, seed_xy=(15, 14))
    assert roi[14, 15] and not (roi & (blob < 300)).any()  # the square, corners rounded by the opening
    assert 0.9 * 144 <= roi.sum() <= 144


# ------------------------------------------------------------------------------------ calibration

def test_in_vitro_calibration_from_the_pagel_lab_phantoms():
    ph = exp.phantom_effects()
    assert ph.groupby("b1_uT").size().to_dict() == {3.0: 23, 4.0: 23}
    assert (ph["effect_42"] > 0).all() and (ph["effect_55"] > 0).all()
    assert ph["pH"].between(6.26, 7.31).all() and (ph["temp_C"] == 37).all()
    cal = exp.calibrations(ph)
    assert (cal["r"] > 0.95).all() and (cal["slope"] > 1.0).all() and (cal["residual_sd"] < 0.12).all()
    mid = exp.calibration_at(cal, 3.5)
    assert mid["intercept"] == pytest.approx(cal["intercept"].mean())
    assert mid["slope"] == pytest.approx(cal["slope"].mean())
    lo, hi = mid["log_ratio_range"]
    assert lo == pytest.approx(cal["log_ratio_lo"].max()) and hi == pytest.approx(cal["log_ratio_hi"].min())
    with pytest.raises(ExperimentError, match="outside the calibrated powers"):
        exp.calibration_at(cal, 5.0)


def test_bootstrap_and_conclusions_of_a_pixel_table():
    rng = np.random.default_rng(0)
    px = pd.DataFrame({"ph": np.r_[rng.normal(6.9, 0.1, 10), [np.nan] * 5],
                       "status": [0] * 10 + [2] * 4 + [3],
                       "effect_42": rng.normal(2.0, 0.5, 15), "effect_55": rng.normal(1.5, 0.5, 15)})
    m, lo, hi = exp.bootstrap_median(px["ph"], n_boot=2000)
    assert lo <= m <= hi and m == pytest.approx(np.nanmedian(px["ph"]))
    c = exp.conclusions(px, n_boot=2000)
    assert list(c.columns) == sl.CONCLUSION_COLUMNS and len(c) == 3
    assert c["truth"].isna().all() and c.loc[0, "units"] == "pH"
    assert c.loc[0, "estimate"] == pytest.approx(m - exp.REFERENCE_PH) and bool(c.loc[0, "direction_matches_paper"])
    counts = exp.status_counts(px)
    assert counts["pixels"].tolist() == [10, 0, 4, 1]
    with pytest.raises(ExperimentError, match="at least 3"):
        exp.bootstrap_median([7.0, np.nan])


# ------------------------------------------------------------------------------------ the notebook

def test_notebook_runs_on_the_real_data_and_the_index_lists_it_as_real(tmp_path):
    rc = wb.run(["acidocest_b16"], reports=tmp_path / "reports", cache_dir=tmp_path / "derived", progress=False)
    rec = json.loads((tmp_path / "reports" / "acidocest_b16.json").read_text())
    assert rc == 0 and rec["status"] == "ok", rec.get("error")
    assert rec["data"] == "real" and rec["manifest"]["path"].endswith("data/real/acidocest_b16/data_manifest.csv")
    n = rec["numbers"]
    assert 6.2 <= n["median_ph"] <= 7.4 and n["n_ph_pixels"] >= 3 and n["n_tumour_pixels"] == 40
    assert n["n_ph_pixels"] + n["n_too_weak"] + n["n_out_of_range"] + n["n_not_analysable"] == 40
    c = pd.DataFrame(rec["conclusions"]["data"], columns=rec["conclusions"]["columns"])
    assert c["truth"].isna().all() and (c["ci_low"] <= c["estimate"]).all() and (c["estimate"] <= c["ci_high"]).all()
    assert rec["headline"].startswith(c["finding"].iloc[0])
    assert "real scanner data" in (tmp_path / "reports" / "index.html").read_text()
