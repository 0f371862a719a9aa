"""What only one notebook needs, now in the library with its own tests: the 19F and CEST tables,
the tumour rim/core split, the conclusions builders of every experiment, and the figures the 19F
and CEST notebooks used to draw inline.

The notebooks that call these run end to end in tests/test_notebooks.py.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

matplotlib.use("Agg")

from studylib import plots  # noqa: E402
from studylib.analysis import CONCLUSION_COLUMNS, Estimate  # noqa: E402
from studylib.errors import StudyError  # noqa: E402
from studylib.experiments import (ampb_ferumoxytol, blz945_femri, collagen_adc, ferumoxytol_therapy,  # noqa: E402
                                  fluorine19_pfc, ktrans_hypoxia, lactate_cest)
from studylib.roi import tumour_rim_core  # noqa: E402


def _est(estimate, lo, hi, p=0.01, **details):
    return Estimate(estimate, lo, hi, p, "test", details=details)


# ------------------------------------------------------------------------------------ rim / core

def _sphere_roi(n=21, radius=8.0, shape_zyx=None):
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    lab = (np.sqrt(x ** 2 + y ** 2 + z ** 2) <= radius).astype("int16")
    return xr.DataArray(lab[None, None], dims=("animal", "day", "z", "y", "x"),
                        coords={"animal": ["m1"], "day": [0]})


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_rim_core_partition_the_tumour_and_rim_is_the_outer_shell(fraction):
    roi = _sphere_roi()
    rim, core = tumour_rim_core(roi, rim_fraction=fraction, voxel_size_mm=(0.1, 0.1, 0.1))
    tumour = (roi == 1).values
    assert not (rim.values & core.values).any() and ((rim.values | core.values) == tumour).all()
    # every boundary voxel (a tumour voxel with a non-tumour 6-neighbour) is rim
    t = tumour[0, 0]
    pad = np.pad(t, 1)
    inner = np.ones_like(t)
    for ax in range(3):
        for s in (1, -1):
            inner &= np.roll(pad, s, axis=ax)[1:-1, 1:-1, 1:-1]
    assert rim.values[0, 0][t & ~inner].all()
    # the rim is a shell: its voxels are farther from the centre than every core voxel, up to one voxel
    c = np.array(t.shape) // 2
    dist = np.sqrt(((np.argwhere(t) - c) ** 2).sum(axis=1))
    r_rim = dist[rim.values[0, 0][t]]
    r_core = dist[core.values[0, 0][t]]
    assert r_core.size and r_rim.min() >= r_core.max() - 1.5


def test_rim_grows_with_fraction_and_honours_anisotropic_voxels():
    roi = _sphere_roi()
    sizes = [int(tumour_rim_core(roi, rim_fraction=f, voxel_size_mm=(0.1, 0.1, 0.1))[0].sum())
             for f in (0.1, 0.3, 0.6)]
    assert sizes[0] < sizes[1] < sizes[2]
    # thick slices (z) make depth along z count more, so a different voxel set is rim
    iso = tumour_rim_core(roi, voxel_size_mm=(0.1, 0.1, 0.1))[0].values
    aniso = tumour_rim_core(roi, voxel_size_mm=(0.1, 0.1, 1.0))[0].values
    assert (iso != aniso).any()
    with pytest.raises(StudyError, match="rim_fraction"):
        tumour_rim_core(roi, rim_fraction=1.5)


# ------------------------------------------------------------------------------------ 19F

@pytest.fixture(scope="module")
def fluorine_ci(ci_study):
    import studylib as sl

    f19 = sl.load_study(ci_study, "fluorine19_pfc", "F19")
    quant = sl.fluorine_quantify(f19, false_positive_rate=0.005).compute()
    return f19, quant, sl.load_histology(ci_study, "fluorine19_pfc")


def test_fluorine_animal_table_is_consistent_with_the_voxels(fluorine_ci):
    f19, quant, hist = fluorine_ci
    t = fluorine19_pfc.fluorine_animal_table(quant, f19["roi"], voxel_size_mm=f19.attrs["voxel_size_mm"],
                                             histology=hist)
    assert t["animal"].is_unique and len(t) == int(f19["acquired"].sum())
    assert {"lung_metastases_count", "model"} <= set(t.columns)
    vol = float(quant.attrs["voxel_volume_mm3"])
    for _, r in t.iterrows():
        sel = dict(animal=r["animal"], day=r["day"])
        tum = (f19["roi"].sel(sel) == 1).values
        assert r["tumour_volume_mm3"] == pytest.approx(tum.sum() * vol)
        # the tumour mean is the voxel-count-weighted mean of rim and core
        rim, core = tumour_rim_core(f19["roi"].sel(animal=[r["animal"]], day=[r["day"]]),
                                    voxel_size_mm=f19.attrs["voxel_size_mm"])
        n_rim, n_core = int(rim.sum()), int(core.sum())
        parts = [(r["f19_mM_rim"], n_rim), (r["f19_mM_core"], n_core)]
        pooled = sum(m * n for m, n in parts if n) / (n_rim + n_core)  # a small tumour may have no core
        assert pooled == pytest.approx(r["f19_mM"], rel=1e-6)
        # and it is the mean voxel concentration of the (unthresholded) tumour voxels
        atoms = quant["fluorine_atoms_all"].sel(sel).values[tum]
        mM = atoms.sum() / (tum.sum() * vol * 1e-9 * 6.02214076e23)
        assert r["f19_mM"] == pytest.approx(mM, rel=1e-6)


def test_fluorine_quality_table_and_representatives(fluorine_ci):
    f19, quant, _ = fluorine_ci
    qc = fluorine19_pfc.quality_table(quant, f19["roi"])
    assert list(qc.columns) == ["noise_sigma", "reference_signal", "reference_SNR", "background_false_positive_rate"]
    np.testing.assert_allclose(qc["reference_SNR"], qc["reference_signal"] / qc["noise_sigma"])
    assert ((qc["background_false_positive_rate"] >= 0) & (qc["background_false_positive_rate"] < 0.05)).all()
    animals = pd.DataFrame({"animal": list("abcde"), "model": ["x", "x", "x", "y", "y"],
                            "f19_mM": [1.0, 5.0, 2.0, 10.0, 11.0]})
    assert fluorine19_pfc.representative_animals(animals, ["x", "y", "z"]) == {"x": "c", "y": "d"}


def test_fluorine_conclusions_rows_truth_and_no_truth():
    truth = {"effects": {"tumour_f19_mM_line_means": {"sample": {"67NR": 2.0, "4T1": 9.0}}},
             "correlations": {"tumour_f19_mM_vs_lung_metastases_count": 0.8}}
    lines = ["67NR", "168FARN", "4T1"]
    args = (_est(7.5, 5.0, 10.0), _est(6.0, 3.0, 9.0, p=0.001), _est(20.0, 10.0, 30.0), _est(0.7, 0.4, 0.9))
    c = fluorine19_pfc.conclusions(*args, truth, lines=lines)
    assert list(c.columns) == CONCLUSION_COLUMNS and len(c) == 4
    assert c["truth"].iloc[0] == 7.0 and c["ci_covers_truth"].iloc[0] and c["truth"].iloc[1] == 7.0
    assert math.isnan(c["truth"].iloc[2]) and c["ci_covers_truth"].iloc[2] is None
    assert c["truth"].iloc[3] == 0.8 and c["p"].iloc[0] == 0.001  # the ordered test's p with its own (inverted) CI
    bare = fluorine19_pfc.conclusions(*args, {}, lines=lines)  # real data: no truth anywhere
    assert bare["truth"].isna().all() and bare["ci_covers_truth"].isna().all()


# ------------------------------------------------------------------------------------ CEST

def _cest_maps():
    rng = np.random.default_rng(0)
    dims = ("animal", "day", "z", "y", "x")
    coords = {"animal": ["a", "b"], "day": [0, 1]}
    roi = np.zeros((2, 2, 1, 4, 4), "int16")
    roi[..., :2, :2] = 1
    roi[..., 3, 3] = 2
    v = rng.normal(size=roi.shape)
    return (xr.DataArray(v, dims=dims, coords=coords), xr.DataArray(roi, dims=dims, coords=coords))


def test_cest_session_table_roi_means():
    v, roi = _cest_maps()
    t = lactate_cest.cest_session_table({"m": v, "m2": 2 * v}, roi)
    assert set(t["roi"]) == {"tumour", "muscle"} and len(t) == 8
    r = t[(t.roi == "tumour") & (t.animal == "b") & (t.day == 1)].iloc[0]
    assert r["m"] == pytest.approx(v.sel(animal="b", day=1).values[0, :2, :2].mean())
    assert r["m2"] == pytest.approx(2 * r["m"]) and r["n_voxels"] == 4
    with pytest.raises(StudyError, match="must be a DataArray"):
        lactate_cest.cest_session_table({"m": v.values}, roi)


def test_roi_mean_spectra_drops_empty_voxels():
    off = np.linspace(-2, 2, 9)
    z = xr.DataArray(np.ones((1, 2, 1, 2, 2, 9)), dims=("animal", "day", "z", "y", "x", "offset"),
                     coords={"animal": ["a"], "day": [0, 1], "offset": off})
    z[0, 0, 0, 0, 0, :] = np.nan  # a voxel shifted fully out of range
    roi = xr.DataArray(np.ones((1, 2, 1, 2, 2), "int16"), dims=("animal", "day", "z", "y", "x"),
                       coords={"animal": ["a"], "day": [0, 1]})
    out = lactate_cest.roi_mean_spectra(z, roi)
    assert out["day 0"].shape == (3, 9) and out["day 1"].shape == (4, 9)


def test_tumour_pool_table_recovers_a_lactate_pool():
    """Noise-free three-pool Z-spectra (fraction of S0) with lactate 0.7 % and 1.4 %: the fit of the tumour
    mean recovers each amplitude (in % of S0)."""
    from studylib.models.cest import zspectrum

    off = np.round(np.arange(-1.6, 1.61, 0.1), 2)
    amps_pct = {"a": 0.7, "b": 1.4}
    spectra = [zspectrum(off, [0.8, a / 100.0, 0.1], [0.0, 0.4, -1.0], [1.0, 0.4, 20.0]) for a in amps_pct.values()]
    z = xr.DataArray(np.stack(spectra)[:, None, None, None, None, :] * np.ones((1, 1, 1, 2, 2, 1)),
                     dims=("animal", "day", "z", "y", "x", "offset"),
                     coords={"animal": list(amps_pct), "day": [0], "offset": off})
    roi = xr.DataArray(np.ones((2, 1, 1, 2, 2), "int16"), dims=("animal", "day", "z", "y", "x"),
                       coords={"animal": list(amps_pct), "day": [0]})
    t = lactate_cest.tumour_pool_table(z, roi)
    assert list(t.columns) == ["animal", "day", "lactate_pool_pct", "roi"] and (t["roi"] == "tumour").all()
    got = t.set_index("animal")["lactate_pool_pct"]
    for a, pct in amps_pct.items():
        assert got[a] == pytest.approx(pct, rel=0.1)


def test_lactate_truth_and_conclusions():
    ts = pd.DataFrame({"animal": ["a", "a", "b", "b"], "day": [0, 1, 0, 1],
                       "tumour_lactate_effect_0p4_pct": [0.7, 1.0, 0.6, 1.1]})
    assert lactate_cest.true_pool_change(ts, pre_day=0, post_day=1) == pytest.approx(0.4)
    assert math.isnan(lactate_cest.true_pool_change(None, pre_day=0, post_day=1))
    assert math.isnan(lactate_cest.true_pool_change(ts, pre_day=0, post_day=7))
    truth = {"effects": {"tumour_mtrasym_0p4_pct_post_minus_pre": {"sample": 0.27}}}
    c = lactate_cest.conclusions(_est(0.28, 0.26, 0.31), _est(2.9, -1.0, 6.0, p=0.2), truth)
    assert len(c) == 2 and (c["truth"] == 0.27).all() and c["ci_covers_truth"].iloc[0]
    c3 = lactate_cest.conclusions(_est(0.28, 0.26, 0.31), _est(2.9, -1.0, 6.0, p=0.2), truth,
                                  pool=_est(0.3, 0.1, 0.5), true_pool=0.4)
    assert len(c3) == 3 and c3.set_index("endpoint").loc["pool_change", "truth"] == 0.4
    # the analysis without B0 correction is a sensitivity row: last, outside the Holm family
    assert c3["endpoint"].iloc[-1] == "mtrasym_change_uncorrected" and c3["role"].iloc[-1] == "sensitivity"
    assert np.isnan(c3["p_holm"].iloc[-1])


# ------------------------------------------------------------------------------------ the other five

def test_iron_and_correlation_conclusions_read_their_truth_keys():
    truth = {"effects": {"tumour_r2star_per_s_ampb_minus_vehicle_last_day": {"population": 9.0, "day": 10},
                         "tumour_r2star_per_s_blz_minus_ctl_last_day": {"population": -12.0, "day": 7}},
             "correlations": {"endpoint_tumour_r2star_vs_iba1": 0.8, "endpoint_tumour_r2star_vs_iron": 0.7}}
    a = ampb_ferumoxytol.conclusions(_est(10.0, 5.0, 15.0, at_day=10.0), _est(0.8, 0.6, 0.9, n=14), truth,
                                     control="vehicle", treated="ampb", hist_col="iba1")
    assert a["truth"].tolist() == [9.0, 0.8] and a["ci_covers_truth"].all()
    a7 = ampb_ferumoxytol.conclusions(_est(10.0, 5.0, 15.0, at_day=7.0), _est(0.8, 0.6, 0.9, n=14), truth,
                                      control="vehicle", treated="ampb", hist_col="iba1")
    assert math.isnan(a7["truth"].iloc[0])  # the truth is for day 10, not another day
    b = blz945_femri.conclusions(_est(-10.0, -14.0, -6.0, at_day=7.0), _est(0.7, 0.5, 0.9, n=12), truth,
                                 control="ctl", treated="blz", hist_col="iron")
    assert b["truth"].tolist() == [-12.0, 0.7] and b["agrees_with_paper"].all()


def _pdx(within_slope=-0.6, seed=0, k=4, n=6):
    """Tumours of k PDX models: model means on an inverse line, y = within_slope * x + noise inside each."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(k):
        x = 2.0 * c + rng.normal(size=n)
        y = -2.0 * c + within_slope * (x - 2.0 * c) + 0.5 * rng.normal(size=n)
        rows += [dict(animal=f"m{c}{i}", model=f"M{c}", x=xi, y=yi, mvd=rng.normal(), ifp=rng.normal())
                 for i, (xi, yi) in enumerate(zip(x, y))]
    return pd.DataFrame(rows)


def test_collagen_ktrans_and_ferumoxytol_conclusions_without_truth_are_nan():
    from studylib.analysis import correlation_effect, partial_regression_effect

    d = _pdx()
    corr = correlation_effect(d, "x", "y", cluster="model")
    beyond = partial_regression_effect(d, "y", "x", ["mvd", "ifp"])
    c = collagen_adc.conclusions(corr, _est(-1.0, -1.5, -0.5), {})
    k = ktrans_hypoxia.conclusions(corr, _est(-1.0, -1.5, -0.5), {}, beyond=beyond)
    assert c["endpoint"].tolist() == ["within_model_r", "pooled_r", "between_model_r", "slope"]
    assert k["endpoint"].tolist() == ["within_model_r", "pooled_r", "between_model_r", "beyond_mvd_ifp", "slope"]
    for t, mod in ((c, collagen_adc), (k, ktrans_hypoxia)):
        assert set(t["endpoint"]) == set(mod.ENDPOINTS) and t["truth"].isna().all()
        assert t["role"].tolist() == ["primary"] + ["secondary"] * (len(t) - 1)
        assert t["finding"].iloc[0].endswith("within model") and "Fisher-z" in t["method"].iloc[0]
        assert t["estimate"].iloc[0] == pytest.approx(corr["parts"]["within"]["estimate"])
        assert t["estimate"].iloc[1] == pytest.approx(np.corrcoef(d["x"], d["y"])[0, 1])
        assert t["direction_matches_paper"].all() and t["p_holm"].iloc[1:].notna().all()
    assert k.set_index("endpoint").loc["beyond_mvd_ifp", "estimate"] == pytest.approx(beyond["estimate"])
    # the pooled r as the declared primary: first row, and the within one becomes secondary
    p = collagen_adc.conclusions(corr, _est(-1.0, -1.5, -0.5), {}, primary="pooled_r")
    assert p["endpoint"].iloc[0] == "pooled_r" and p["role"].iloc[1] == "secondary"
    # truth of each part from the simulated animals' true values
    tp = {"within": -0.6, "between": -0.99}
    t = collagen_adc.conclusions(corr, _est(-1.0, -1.5, -0.5), {}, true_parts=tp).set_index("endpoint")
    assert t.loc["within_model_r", "truth"] == -0.6 and t.loc["between_model_r", "truth"] == -0.99
    f = ferumoxytol_therapy.conclusions(_est(-0.03, -0.04, -0.02), _est(8.0, 4.0, 12.0, at_day=1.0),
                                        _est(5.0, 2.0, 8.0), _est(-5.0, -8.0, -2.0), {}, control="c", treated="f")
    assert len(f) == 4 and f["agrees_with_paper"].all() and f["endpoint"].tolist() == [
        k for k in ferumoxytol_therapy.ENDPOINTS if k not in ferumoxytol_therapy.SENSITIVITY]
    assert ferumoxytol_therapy.uptake_day([0, 1, 7]) == 1 and ferumoxytol_therapy.uptake_day([0, 3]) == 3
    with pytest.raises(StudyError, match="no imaging day after"):
        ferumoxytol_therapy.uptake_day([0])


def test_true_correlation_parts_from_the_truth_table():
    from studylib.analysis import true_correlation_parts

    d = _pdx(seed=5)
    tp = true_correlation_parts(d.drop(columns=["mvd", "ifp"]), "x", "y", cluster="model", covariates=("mvd", "ifp"),
                                histology=d[["animal", "mvd", "ifp"]])
    assert tp["pooled"] == pytest.approx(np.corrcoef(d["x"], d["y"])[0, 1]) and tp["within"] < 0
    assert set(tp) == {"pooled", "within", "between", "partial"}
    assert all(math.isnan(v) for v in true_correlation_parts(None, "x", "y", cluster="model").values())


def test_other_correlations_lists_every_other_numeric_endpoint():
    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    animals = pd.DataFrame({"animal": [f"m{i}" for i in range(12)], "ktrans": x, "mvd": x + rng.normal(size=12),
                            "ifp": rng.normal(size=12), "hyp": -x, "model": ["a", "b", "c", "d"] * 3})
    hist = animals[["animal", "mvd", "ifp", "hyp"]].assign(group="g")
    t = ktrans_hypoxia.other_correlations(animals, "ktrans", hist, exclude=("hyp",))
    assert list(t["endpoint"]) == ["mvd", "ifp"] and (t["n"] == 12).all() and (t["level"] == "pooled").all()
    assert t.set_index("endpoint").loc["mvd", "r"] == pytest.approx(np.corrcoef(x, animals["mvd"])[0, 1])
    assert ((t["p"] < 0.05) == ((t["ci_low"] > 0) | (t["ci_high"] < 0))).all()
    w = ktrans_hypoxia.other_correlations(animals, "ktrans", hist, exclude=("hyp",), cluster="model")
    assert w["level"].tolist() == ["pooled", "within", "between"] * 2


def test_lactate_reading_is_computed_from_the_numbers():
    per = pd.DataFrame({"pre": [1.0, 1.1, 0.9], "post": [1.3, 1.4, 1.2]})
    per["change"] = per["post"] - per["pre"]
    good = dict(_est(0.3, 0.2, 0.4, p=0.004), per_animal=per)
    raw = dict(_est(2.9, -10.0, 16.0, p=0.5), per_animal=per.assign(change=[5.0, -3.0, 6.7]))
    truth = {"effects": {"tumour_mtrasym_0p4_pct_post_minus_pre": {"sample": 0.27}}}
    c = lactate_cest.conclusions(_est(0.3, 0.2, 0.4, p=0.004), _est(2.9, -10.0, 16.0, p=0.5), truth)
    text = lactate_cest.reading(c, good, raw)
    assert "with B0 correction (primary): +0.3 %" in text and "3 of 3 animals rose" in text
    assert "agrees with the paper" in text and "covers the simulated change +0.27" in text
    assert "without B0 correction (sensitivity)" in text and "not significant" in text and "2 of 3" in text
    assert "130.0 times as wide" in text
    # the same code on a fall says so: nothing is written in advance
    c2 = lactate_cest.conclusions(_est(-0.3, -0.4, -0.2, p=0.004), _est(2.9, -10.0, 16.0, p=0.5), truth)
    assert "not in the paper's direction" in lactate_cest.reading(c2, {}, {})


# ------------------------------------------------------------------------------------ figures

def test_new_figures_draw_and_check_input():
    v, roi = _cest_maps()
    fig = plots.cest_map_grid(v, v, roi, animals=["a", "b"], days=[0, 1])
    assert len(fig.axes) == 4 + 1  # 2 x 2 maps and a colourbar
    with pytest.raises(StudyError, match="at least one animal"):
        plots.cest_map_grid(v, v, roi, animals=[], days=[0])
    fig = plots.snr_histograms(v, roi, {"g1": ["a"], "g2": ["b"]}, threshold=3.0)
    assert len(fig.axes[0].patches) == 2
    t = pd.DataFrame({"g": ["x", "x", "y"], "v": [1.0, 2.0, 3.0], "w": [0.0, 1.0, 2.0]})
    fig = plots.group_strips(t, {"v": "v (mM)", "w": "w"}, group="g", order=["x", "y"])
    assert len(fig.axes) == 2 and fig.axes[0].get_ylabel() == "v (mM)"
    with pytest.raises(StudyError, match="lacks"):
        plots.group_strips(t, {"nope": "n"}, group="g", order=["x"])
    fig = plots.paired_lines(pd.DataFrame({"pre": [1.0, 2.0], "post": [2.0, 3.0]}, index=["a", "b"]))
    assert len(fig.axes[0].lines) == 2
    quant = xr.Dataset({"fluorine_mM": v.where(v > 0, 0.0), "detected": v > 0})
    fig = plots.fluorine_overlay_grid(v, quant, roi, animals_by_group={"line": "a"})
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------------------------------------------ baseline, interaction, common day

def _blz_inter():
    per = {"99LN": _est(-9.0, -11.0, -7.0, p=1e-6, at_day=7.0), "TS1": _est(-15.0, -17.0, -13.0, p=1e-8, at_day=7.0)}
    return Estimate(-6.0, -9.0, -3.0, 2e-4, "interaction", details=dict(
        per_level=per, levels=("99LN", "TS1"), by="model", at_day=7.0, adjustment="ANCOVA on day 0 r2star",
        baseline_day=0.0, first_day_by_level={"99LN": 44.0, "TS1": 55.0}))


def test_blz945_rows_baseline_adjusted_primary_per_model_interaction_and_common_day():
    truth = {"effects": {"tumour_r2star_per_s_blz_minus_ctl_last_day": {"population": -12.0, "day": 7},
                         "tumour_r2star_per_s_blz_minus_ctl_last_day_TS1": {"population": -15.5, "day": 7},
                         "tumour_r2star_per_s_blz_minus_ctl_last_day_99LN": {"population": -9.5, "day": 7}},
             "correlations": {"endpoint_tumour_r2star_vs_iron": 0.7}}
    adj = _est(-12.2, -14.0, -10.0, p=1e-9, at_day=7.0, adjustment="ANCOVA on day 0 r2star", baseline_day=0.0)
    raw = _est(-10.5, -14.6, -6.4, p=1e-5, at_day=7.0, adjustment="none")
    corr = _est(0.8, 0.6, 0.9, p=1e-6, n=23)
    c = blz945_femri.conclusions(adj, corr, truth, control="ctl", treated="blz", hist_col="iron", unadjusted=raw,
                                 interaction=_blz_inter(),
                                 histology_day={"day": 7.0, "day_rule": "common", "left_out": ("m19",)})
    t = c.set_index("endpoint")
    assert c["endpoint"].tolist() == ["treatment_effect", "effect_99LN", "effect_TS1", "model_interaction",
                                      "histology_r", "treatment_effect_unadjusted"]  # sensitivity rows come last
    assert t.loc["treatment_effect_unadjusted", "role"] == "sensitivity" and c["role"].iloc[0] == "primary"
    assert set(blz945_femri.ENDPOINTS) - set(t.index) == {"histology_r_pooled", "treatment_effect_imputed"}
    assert "ANCOVA on day 0; adjusted for tumour model" in t.loc["treatment_effect", "finding"]
    assert "without baseline" in t.loc["treatment_effect_unadjusted", "finding"]
    assert t.loc["effect_TS1", "truth"] == -15.5 and t.loc["effect_99LN", "truth"] == -9.5
    assert t.loc["model_interaction", "truth"] == pytest.approx(-6.0)          # TS1 - 99LN of the true effects
    assert t.loc["model_interaction", "paper_direction"].startswith("decrease")  # TS1 starts higher: loses more
    assert "higher first-day R2*" in t.loc["model_interaction", "method"]
    assert t.loc["histology_r", "finding"].endswith("on day 7") and "m19" in t.loc["histology_r", "method"]
    assert c["agrees_with_paper"].all() and c["ci_covers_truth"].all()
    # the other model starting higher flips the expected sign of the interaction
    flip = dict(_blz_inter().details, first_day_by_level={"99LN": 60.0, "TS1": 40.0})
    f = blz945_femri.conclusions(adj, corr, truth, control="ctl", treated="blz", hist_col="iron",
                                 interaction=Estimate(-6.0, -9.0, -3.0, 2e-4, "i", details=flip)).set_index("endpoint")
    assert not f.loc["model_interaction", "direction_matches_paper"]
    with pytest.raises(StudyError, match="without baseline adjustment"):
        blz945_femri.conclusions(adj, corr, truth, control="ctl", treated="blz", hist_col="iron", unadjusted=adj)
    sessions = pd.DataFrame({"animal": [f"m{i}" for i in range(8)], "group": ["ctl", "blz"] * 4, "day": 0,
                             "model": ["TS1"] * 4 + ["99LN"] * 4, "r2star": [50.0, 56, 52, 58, 44, 45, 43, 44]})
    text = blz945_femri.baseline_text(sessions, adj, raw, control="ctl", treated="blz")
    assert text.startswith("On day 0, before blz acts, blz − ctl r2star differs by +3.50") and "TS1 +6.00" in text
    assert "-12.20" in text and "-10.50" in text and "by declaration" in text


def test_ampb_delta_text_is_computed_from_the_data():
    rng = np.random.default_rng(0)
    rows = [dict(animal=f"m{i}", group=("vehicle", "ampb")[i % 2], day=d, r2star_pre=40.0 + rng.normal(0, 2) + 0.5 * d)
            for i in range(10) for d in (0, 3, 7, 10)]
    s = pd.DataFrame(rows)
    s["delta_r2star"] = 8.0 + 4.0 * (s["group"] == "ampb") + rng.normal(0, 1, len(s))
    s["r2star"] = s["r2star_pre"] + s["delta_r2star"]
    eff = _est(4.0, 2.0, 6.0, at_day=10.0, adjustment="none")
    absolute = _est(9.0, 5.0, 13.0, at_day=10.0, adjustment="none")
    text = ampb_ferumoxytol.delta_text(s, eff, absolute, control="vehicle", treated="ampb")
    assert text.startswith("40 of 40 post-contrast sessions have their pre-contrast scan")
    assert "4.00 [2.00, 6.00]" in text and "9.00 [5.00, 13.00]" in text and "CI is 50% of the other" in text
    eff = _est(9.0, 5.0, 13.0, at_day=10.0, adjustment="none")
    t = ampb_ferumoxytol.conclusions(eff, _est(0.8, 0.5, 0.9, n=13), {}, control="vehicle", treated="ampb",
                                     hist_col="iba1", histology_day={"day": 10.0, "day_rule": "common",
                                                                     "left_out": ("m01",)})
    assert t["finding"].iloc[1].endswith("on day 10") and "left out, not imaged that day: m01" in t["method"].iloc[1]


def _two_groups(seed=0, n=5):
    """Animals of two groups whose means differ on x and y; inside each group y tracks x with slope 0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for g, shift in (("vehicle", 0.0), ("ampb", 3.0)):
        x = shift + rng.normal(size=n)
        rows += [dict(animal=f"{g}{i}", group=g, x=xi, y=2.0 * shift + 0.5 * (xi - shift) + 0.3 * rng.normal())
                 for i, xi in enumerate(x)]
    return pd.DataFrame(rows)


def test_ampb_within_group_headline_pooled_descriptive_and_imputed_sensitivity():
    from studylib.analysis import correlation_effect

    corr = correlation_effect(_two_groups(), "x", "y", cluster="group")
    truth = {"effects": {"tumour_delta_r2star_per_s_ampb_minus_vehicle_last_day": {"population": 9.0, "day": 10}},
             "correlations": {"endpoint_tumour_delta_r2star_vs_iba1": 0.95}}
    eff = _est(8.0, 3.0, 13.0, p=0.004, at_day=10.0, adjustment="none")
    imp = _est(9.5, -4.0, 23.0, p=0.5, at_day=10.0, adjustment="none")  # a large p: would move Holm if counted
    c = ampb_ferumoxytol.conclusions(eff, corr, truth, control="vehicle", treated="ampb", hist_col="iba1",
                                     variable="delta_r2star", absolute=_est(14.0, 4.0, 24.0, p=0.01, at_day=10.0),
                                     true_parts={"within": 0.8, "pooled": 0.97}, imputed=imp, imputed_value=400.0)
    t = c.set_index("endpoint")
    assert set(t.index) == set(ampb_ferumoxytol.ENDPOINTS)
    assert c["role"].tolist() == ["primary", "secondary", "secondary", "descriptive", "sensitivity"]
    assert t.loc["histology_r", "estimate"] == pytest.approx(corr["parts"]["within"]["estimate"])
    assert t.loc["histology_r", "truth"] == 0.8 and "within group" in t.loc["histology_r", "finding"]
    assert t.loc["histology_r_pooled", "estimate"] == pytest.approx(np.corrcoef(_two_groups()["x"],
                                                                                _two_groups()["y"])[0, 1])
    assert t.loc["histology_r_pooled", "truth"] == 0.97
    # the imputed row re-estimates the primary: its truth, outside the Holm family (2 secondary rows only)
    assert t.loc["treatment_effect_imputed", "truth"] == 9.0 and "400 1/s" in t.loc["treatment_effect_imputed",
                                                                                       "method"]
    assert t[["p_holm"]].loc[["treatment_effect", "histology_r_pooled", "treatment_effect_imputed"]].isna().all().all()
    from studylib.stats import holm
    sec = t.loc[["histology_r", "absolute_r2star"], "p"].to_numpy(dtype=float)
    assert t.loc[["histology_r", "absolute_r2star"], "p_holm"].tolist() == pytest.approx(list(holm(sec)))
    # without true parts the within r has no truth: never computed from the fit
    n = ampb_ferumoxytol.conclusions(eff, corr, truth, control="vehicle", treated="ampb", hist_col="iba1",
                                     variable="delta_r2star").set_index("endpoint")
    assert math.isnan(n.loc["histology_r", "truth"]) and n.loc["histology_r_pooled", "truth"] == 0.95
    with pytest.raises(StudyError, match="fit it like the primary"):
        ampb_ferumoxytol.conclusions(eff, corr, truth, control="vehicle", treated="ampb", hist_col="iba1",
                                     variable="delta_r2star", imputed=_est(9.5, 4.0, 15.0, at_day=7.0,
                                                                           adjustment="none"), imputed_value=400.0)
    with pytest.raises(StudyError, match="imputed_value"):
        ampb_ferumoxytol.conclusions(eff, corr, truth, control="vehicle", treated="ampb", hist_col="iba1",
                                     variable="delta_r2star", imputed=imp)


def test_ampb_imputation_text_and_true_post_sessions():
    delta = pd.DataFrame({"animal": ["a", "b", "c"], "group": ["vehicle", "ampb", "ampb"], "day": [10.0, 10.0, 7.0],
                          "pre_day": [9.0, 9.0, 6.0]})
    summary = pd.DataFrame({"animal": ["a", "b", "a", "b", "c"],
                            "group": ["vehicle", "ampb", "vehicle", "ampb", "ampb"],
                            "day": [10, 10, 9, 9, 7], "roi": "tumour", "variable": "r2star",
                            "n_excluded": [1, 4, 0, 1, 50], "n_voxels": [100, 40, 100, 50, 50]})
    text = ampb_ferumoxytol.imputation_text(_est(7.0, 1.0, 13.0, at_day=10.0), _est(8.5, 2.0, 15.0, at_day=10.0),
                                            delta, summary, value=400.0)
    assert "post-contrast scans of day 10 ampb 10.00 %; vehicle 1.00 %" in text
    assert "pre-contrast scans ampb 2.00 %; vehicle 0.00 %" in text and "(+1.50 1/s)" in text
    assert "changes nothing" not in text
    none = ampb_ferumoxytol.imputation_text(_est(7.0, 1.0, 13.0, at_day=10.0), _est(7.0, 1.0, 13.0, at_day=10.0),
                                            delta, summary.assign(n_excluded=0), value=400.0)
    assert none.endswith("No tumour voxel failed in any scan, so the imputation changes nothing.")
    ts = pd.DataFrame({"animal": ["a", "a", "b", "b"], "day": [9, 10, 9, 10], "contrast": ["pre", "post"] * 2,
                       "tumour_delta_r2star_per_s": [np.nan, 5.0, np.nan, 7.0]})
    post = ampb_ferumoxytol.true_post_sessions(ts, day=10.0)
    assert post["animal"].tolist() == ["a", "b"] and post["tumour_delta_r2star_per_s"].tolist() == [5.0, 7.0]


def test_ferumoxytol_imputed_r2star_row_is_a_sensitivity_row_of_the_uptake():
    args = (_est(-0.03, -0.04, -0.02, p=0.001), _est(8.0, 4.0, 12.0, p=0.002, at_day=1.0, adjustment="none"),
            _est(5.0, 2.0, 8.0, p=0.01), _est(-5.0, -8.0, -2.0, p=0.02))
    truth = {"effects": {"tumour_r2star_per_s_f_minus_c_day1": {"population": 9.0, "day": 1}}}
    f = ferumoxytol_therapy.conclusions(*args, truth, control="c", treated="f",
                                        imputed=_est(10.0, -5.0, 25.0, p=0.5, at_day=1.0, adjustment="none"),
                                        imputed_value=333.3)
    t = f.set_index("endpoint")
    assert f["endpoint"].tolist() == list(ferumoxytol_therapy.ENDPOINTS)
    assert t.loc["r2star_uptake_imputed", "role"] == "sensitivity"
    assert math.isnan(t.loc["r2star_uptake_imputed", "p_holm"])
    assert t.loc["r2star_uptake_imputed", "truth"] == t.loc["r2star_uptake", "truth"] == 9.0
    # Holm over the 3 secondary rows only (p 0.002, 0.01, 0.02); with the imputed p = 0.5 it would be 0.008, 0.03, 0.04
    assert t.loc[["r2star_uptake", "cd80", "cd206"], "p_holm"].tolist() == pytest.approx([0.006, 0.02, 0.02])
    # judged like the secondary row it re-estimates: Holm-adjusted in that row's place (p 0.03 -> 0.06 here)
    strict = ferumoxytol_therapy.conclusions(
        args[0], args[1], _est(5.0, 2.0, 8.0, p=0.02), _est(-5.0, -8.0, -2.0, p=0.02), truth, control="c",
        treated="f", imputed=_est(10.0, 1.0, 19.0, p=0.03, at_day=1.0, adjustment="none"),
        imputed_value=333.3).set_index("endpoint")
    assert not strict.loc["r2star_uptake_imputed", "significant"]
    assert "Holm-adjusted p 0.06" in strict.loc["r2star_uptake_imputed", "method"]
    assert not t.loc["r2star_uptake_imputed", "agrees_with_paper"] and t.loc["r2star_uptake", "agrees_with_paper"]
    with pytest.raises(StudyError, match="fit it like the R2"):
        ferumoxytol_therapy.conclusions(*args, truth, control="c", treated="f", imputed_value=333.3,
                                        imputed=_est(10.0, 5.0, 15.0, at_day=7.0, adjustment="none"))
    summary = pd.DataFrame({"animal": ["a", "a", "b", "b", "a"], "group": ["c", "c", "f", "f", "c"],
                            "day": [1, 1, 1, 1, 1], "roi": ["tumour_left", "tumour_right"] * 2 + ["muscle"],
                            "variable": "r2star", "n_excluded": [1, 3, 10, 0, 90], "n_voxels": [50, 50, 100, 100, 100]})
    text = ferumoxytol_therapy.imputation_text(args[1], _est(10.0, 5.0, 15.0, at_day=1.0), summary, value=333.3)
    assert text.startswith("Failed-fit voxels of both tumours (fraction per group): day 1 c 4.00 %; f 5.00 %.")
    assert "imputed at 333 1/s" in text and "(+2.00 1/s)" in text and "changes nothing" not in text


def test_correlation_levels_text_compares_the_pooled_r_with_the_whole_within_ci():
    from studylib.analysis import correlation_levels_text

    def part(r, lo, hi, p, n=5):
        return {"estimate": r, "ci_low": lo, "ci_high": hi, "p": p, "df": 2, "n": n, "n_clusters": 2}

    corr = {"parts": {"pooled": part(0.76, -0.37, 0.98, 0.16), "within": part(0.71, -0.79, 0.99, 0.38)}}
    text = correlation_levels_text(corr, x="R2*", y="iba1", cluster="group")
    assert "inside the within-group CI" in text and "weaker" not in text
    corr["parts"]["pooled"] = part(0.1, -0.5, 0.6, 0.8)
    corr["parts"]["within"] = part(0.7, 0.3, 0.9, 0.01)
    assert "weaker than any value" in correlation_levels_text(corr, x="R2*", y="iba1", cluster="group")


def test_ferumoxytol_histology_on_the_common_endpoint_day():
    from studylib.errors import DataWarning

    h = pd.DataFrame({"animal": ["m1", "m1", "m2", "m2", "m3", "m3", "m4", "m4"], "group": ["c"] * 4 + ["f"] * 4,
                      "endpoint_day": [21, 21, 14, 14, 21, 21, 21, 21], "cd80_pct_of_f480": np.arange(8.0)})
    with pytest.warns(DataWarning, match=r"another day than day 21.*m2 \(endpoint_day 14\)"):
        out = ferumoxytol_therapy.histology_on_common_day(h)
    assert sorted(out["animal"].unique()) == ["m1", "m3", "m4"] and out.attrs["left_out"] == ("m2",)
    f = ferumoxytol_therapy.conclusions(_est(-0.03, -0.04, -0.02), _est(8.0, 4.0, 12.0, at_day=1.0),
                                        _est(5.0, 2.0, 8.0), _est(-5.0, -8.0, -2.0), {}, control="c", treated="f",
                                        histology_day=out.attrs).set_index("endpoint")
    assert f.loc["cd80", "finding"].endswith(", day 21") and "left out, sampled on another day: m2" in \
        f.loc["cd206", "method"]


def test_fluorine_tube_equivalent_truth_is_the_simulated_weighting_times_the_true_19f():
    """Without a relaxation correction the 19F rows compare with the reference-tube-equivalent truth: each line's
    true mean times the simulator's tumour/tube bSSFP weighting (written by the simulator, not computed here)."""
    from studylib.experiments import fluorine19_pfc as f

    truth = {"effects": {"tumour_f19_mM_line_means": {"sample": {"67NR": 20.0, "168FARN": 50.0, "4T1": 120.0}}},
             "relaxation": {"tumour_over_tube_weight": {"sample": {"67NR": 0.5, "168FARN": 0.6, "4T1": 0.6}}}}
    lines = ["67NR", "168FARN", "4T1"]
    assert f.true_line_difference(truth, lines) == pytest.approx(100.0)
    assert f.true_line_difference(truth, lines, tube_equivalent=True) == pytest.approx(0.6 * 120 - 0.5 * 20)
    assert np.isnan(f.true_line_difference({"effects": truth["effects"]}, lines, tube_equivalent=True))
    assert "4T1 0.60" in f.relaxation_text(truth, None) and "reference-tube equivalent" in f.relaxation_text({}, None)
    spec = dict(t1_ref_ms=1000, t2_ref_ms=400, t1_tissue_ms=1300, t2_tissue_ms=250)
    assert "1300/250 ms" in f.relaxation_text(truth, spec)
