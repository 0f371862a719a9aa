"""Issue 13, the rest: the failed-fit imputation sensitivity row, sensitivity/descriptive roles kept out of
Holm, the within-group imaging-vs-histology r with the pooled one descriptive, one method per row for the
19F ordered trend, and the power of the design for the ARRIVE "sample size" item.

Everything is checked on constructed data with a known answer.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from studylib import analysis as an
from studylib import stats
from studylib.errors import StudyError
from studylib.experiments import blz945_femri, fluorine19_pfc
from studylib.testing import synthetic_study


def _row(name, p, est=1.0, role=""):
    return an.check_effect(name, estimate=est, ci_low=est - 0.5, ci_high=est + 0.5, p=p, expected_sign=1, role=role)


# ------------------------------------------------------------------------------ roles: sensitivity, descriptive

def test_sensitivity_and_descriptive_rows_stay_out_of_holm_and_of_disagreements():
    rows = {"a": _row("a", 0.01), "sens": _row("sens", 0.2, est=-1.0, role="sensitivity"),
            "b": _row("b", 0.02), "desc": _row("desc", 0.03, role="descriptive"), "c": _row("c", 0.04)}
    t = an.conclusions_table(rows, primary="a")
    assert t["endpoint"].tolist() == ["a", "b", "c", "sens", "desc"]
    assert t["role"].tolist() == ["primary", "secondary", "secondary", "sensitivity", "descriptive"]
    np.testing.assert_allclose(t["p_holm"].iloc[1:3], stats.holm([0.02, 0.04]))  # the family is b, c only
    assert t["p_holm"].iloc[3:].isna().all() and t["p"].tolist()[3:] == [0.2, 0.03]
    assert not bool(t["significant"].iloc[3]) and bool(t["significant"].iloc[4])  # unadjusted verdicts
    # the sensitivity row is against the paper's direction and not significant: shown, not an issue
    assert an.disagreements(t) == []
    s = an.summary_lines(t)
    assert "Secondary findings: 2 of 2" in s and "Sensitivity (not Holm-counted" in s and "Descriptive" in s
    with pytest.raises(StudyError, match="sensitivity row"):
        an.conclusions_table(rows, primary="sens")
    with pytest.raises(StudyError, match="role must be"):
        _row("x", 0.1, role="primary")


# ------------------------------------------------------------------------------ failed-fit imputation

def _maps_with_failures(ds, failed: dict):
    """Maps of R2* = 50 1/s in every ROI voxel; ``failed`` {(animal index, day index): n tumour voxels} fail."""
    import xarray as xr

    roi = ds["roi"].load()
    r2 = xr.full_like(roi, 50.0, dtype=float).where(roi > 0)
    ok = roi > 0
    for (a, d), n in failed.items():
        tum = np.argwhere(roi.isel(animal=a, day=d).values == 1)[:n]
        for z, y, x in tum:
            ok[a, d, z, y, x] = False
            r2[a, d, z, y, x] = np.nan
    acq = ds["acquired"].values
    ok = ok & xr.DataArray(acq, dims=("animal", "day"), coords={"animal": ds["animal"], "day": ds["day"]})
    return xr.Dataset({"r2star": r2.where(ok), "t2star": (1000.0 / r2).where(ok), "fit_ok": ok},
                      coords=roi.coords)


def test_imputed_tumour_table_puts_failed_voxels_at_the_echo_train_bound():
    ds, _ = synthetic_study(chunks=False, te_ms=(3.0, 6.0, 12.0, 24.0))
    bound = an.echo_train_bound(ds, "r2star")
    assert bound == pytest.approx(1000.0 / 3.0) and an.echo_train_bound(ds, "t2star") == 3.0
    maps = _maps_with_failures(ds, {(1, 1): 6, (2, 0): 3})
    with pytest.warns(Warning):
        _, plain = an.roi_tables(maps, ds, variables=["r2star"], max_failed_difference=0.0)
    _, imp = an.roi_tables(maps, ds, variables=["r2star"], impute_failed={"r2star": bound})
    n_tum = int((ds["roi"].isel(animal=1, day=1).values == 1).sum())
    key = ["animal", "day"]
    m = plain.merge(imp, on=key, suffixes=("", "_imp"))
    a1 = m[(m["animal"] == str(ds["animal"].values[1])) & (m["day"] == ds["day"].values[1])].iloc[0]
    assert a1["r2star"] == pytest.approx(50.0)  # failed voxels left out: the mean of the fitted ones
    assert a1["r2star_imp"] == pytest.approx((50.0 * (n_tum - 6) + bound * 6) / n_tum)
    assert a1["fit_failed_fraction_imp"] == pytest.approx(6 / n_tum) == a1["fit_failed_fraction"]
    untouched = m[m["fit_failed_fraction"] == 0]
    np.testing.assert_allclose(untouched["r2star_imp"], 50.0)
    # the session that was not acquired is not imputed into existence
    assert len(imp) == len(plain) == int(ds["acquired"].sum())
    assert imp.attrs["imputed"] == {"r2star": bound}
    with pytest.raises(StudyError, match="impute_failed"):
        an.roi_tables(maps, ds, variables=["r2star"], impute_failed={"t2star": 3.0})


def test_blz945_conclusions_carry_the_imputed_and_unadjusted_rows_as_sensitivity():
    truth = {"effects": {"tumour_r2star_per_s_blz_minus_ctl_last_day": {"population": -12.0, "day": 7}},
             "correlations": {"endpoint_tumour_r2star_vs_iron": 0.9}}
    E = an.Estimate
    adj = E(-12.2, -14.0, -10.0, 1e-9, "m", details=dict(at_day=7.0, adjustment="ANCOVA on day 0 r2star",
                                                          baseline_day=0.0))
    imp = E(-20.0, -30.0, 1.0, 0.07, "m", details=dict(at_day=7.0, adjustment="ANCOVA on day 0 r2star"))
    raw = E(-10.5, -14.6, -6.4, 1e-5, "m", details=dict(at_day=7.0, adjustment="none"))
    within = E(0.6, 0.2, 0.85, 0.004, "pearson r, within cell, Fisher-z CI and p (df 20), n = 25 rows",
               details=dict(n=25, df=20, level="within"))
    pooled = E(0.95, 0.9, 0.98, 1e-12, "pearson r, pooled over all rows, Fisher-z CI and p (df 23), n = 25 rows",
               details=dict(n=25, df=23, level="pooled"))
    corr = E(0.6, 0.2, 0.85, 0.004, within.method, details=dict(level="within", cluster="cell", n=25,
                                                                  parts={"pooled": pooled, "within": within}))
    c = blz945_femri.conclusions(adj, corr, truth, control="ctl", treated="blz", hist_col="iron", unadjusted=raw,
                                 imputed=imp, imputed_value=333.3, true_parts={"within": 0.55, "pooled": 0.93})
    t = c.set_index("endpoint")
    assert t.loc["treatment_effect_imputed", "role"] == t.loc["treatment_effect_unadjusted", "role"] == "sensitivity"
    assert t.loc["histology_r", "role"] == "secondary" and t.loc["histology_r_pooled", "role"] == "descriptive"
    assert t.loc["histology_r", "estimate"] == 0.6 and t.loc["histology_r", "truth"] == 0.55
    assert "within cell" in t.loc["histology_r", "finding"] and "tracks iron within a cell" in t.loc["histology_r",
                                                                                                       "method"]
    assert t.loc["histology_r_pooled", "estimate"] == 0.95 and "restates" in t.loc["histology_r_pooled", "method"]
    assert "333" in t.loc["treatment_effect_imputed", "finding"] and "1000/TE_min" in t.loc["treatment_effect_imputed",
                                                                                           "method"]
    assert t["p_holm"].notna().sum() == 1  # only histology_r is a secondary finding here: Holm of one p is p
    assert an.disagreements(c) == []       # the imputed row is not significant and that is not an "issue"
    with pytest.raises(StudyError, match="imputed_value"):
        blz945_femri.conclusions(adj, corr, truth, control="ctl", treated="blz", hist_col="iron", imputed=imp)


@pytest.mark.filterwarnings("ignore:correlation.*between part not estimable")
def test_histology_r_is_the_within_group_r_when_the_design_makes_pooled_r_restate_the_group_difference():
    """Groups differ in both R2* and iron; within a group R2* does not track iron at all: the pooled r is
    large and significant, the within-group r (the headline) is not."""
    rng = np.random.default_rng(1)
    g = np.repeat(["ctl", "trt"], 10)
    shift = np.where(g == "trt", 3.0, 0.0)
    d = pd.DataFrame({"group": g, "r2star": shift + rng.normal(size=20), "iron": shift + rng.normal(size=20)})
    corr = an.correlation_effect(d, "r2star", "iron", cluster="group")
    eff = an.Estimate(1.0, 0.5, 1.5, 0.001, "m", details=dict(at_day=7.0))
    rows = an.treatment_rows("blz945_femri", eff, corr, {}, biomarker="R2*", variable="r2star", units="1/s",
                             control="ctl", treated="trt", hist_col="iron", effect_sign=1, corr_sign=1)
    assert rows["histology_r"]["estimate"] == pytest.approx(corr["parts"]["within"]["estimate"])
    assert rows["histology_r"]["p"] > 0.05 and rows["histology_r_pooled"]["p"] < 1e-3
    assert rows["histology_r_pooled"]["role"] == "descriptive"
    plain = an.treatment_rows("blz945_femri", eff, an.correlation_effect(d, "r2star", "iron"), {}, biomarker="R2*",
                              variable="r2star", units="1/s", control="ctl", treated="trt", hist_col="iron",
                              effect_sign=1, corr_sign=1)
    assert set(plain) == {"treatment_effect", "histology_r"} and "pooled over the groups" in plain["histology_r"][
        "method"]


def test_fisher_z_and_t_test_of_r_use_the_same_df_and_pearsonr_is_right_only_pooled():
    """The t test of r, t = r sqrt(df/(1 - r^2)), and the Fisher-z p test rho = 0 with the same df; scipy's
    pearsonr uses df = n - 2, which is the pooled part's df but not the within part's (n - k - 1)."""
    from scipy import stats as sps

    rng = np.random.default_rng(3)
    d = pd.DataFrame({"c": np.repeat(list("abcd"), 6), "x": rng.normal(size=24)})
    d["y"] = 0.5 * d["x"] + rng.normal(size=24)
    res = stats.correlation(d, "x", "y", cluster="c")
    r, df = res.pooled.r, res.pooled.df
    t_p = 2 * sps.t.sf(abs(r) * math.sqrt(df / (1 - r * r)), df)
    assert df == 22 and t_p == pytest.approx(sps.pearsonr(d["x"], d["y"]).pvalue, rel=1e-9)
    # the same null, not the same number: Fisher's normal approximation (p 0.0022) vs the exact t (p 0.0028)
    assert abs(math.log(res.pooled.p / t_p)) < 0.3
    assert res.within.df == 24 - 4 - 1


# ------------------------------------------------------------------------------ 19F: one method per row

def test_ordered_shift_p_and_ci_always_agree_and_cover_the_true_shift():
    rng = np.random.default_rng(7)
    disagree, cover, n = 0, 0, 120
    for i in range(n):
        true = [0.0, 0.5, 1.0][i % 3] * 2.0
        gs = [rng.normal(true * s, 1.0, size=5) for s in (0.0, 0.5, 1.0)]
        r = fluorine19_pfc.ordered_shift(gs, n_perm=999, seed=i)
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
        disagree += (r["p"] < 0.05) != (r["ci_low"] > 0 or r["ci_high"] < 0)
        cover += r["ci_low"] <= true <= r["ci_high"]
    assert disagree == 0
    assert 0.88 <= cover / n <= 1.0  # a 95 % interval from a discrete permutation null (conservative)


def test_ordered_shift_with_two_groups_is_the_hodges_lehmann_shift():
    a, b = np.array([1.0, 2.0, 4.0, 7.0]), np.array([3.0, 8.0, 9.0, 12.0, 15.0])
    r = fluorine19_pfc.ordered_shift([a, b], n_perm=2000)
    assert r["estimate"] == np.median((b[None, :] - a[:, None]).ravel())  # median of the pairwise differences
    assert r["statistic"] == sum(bb > aa for aa in a for bb in b)
    with pytest.raises(StudyError, match="n_perm"):
        fluorine19_pfc.ordered_shift([a, b], n_perm=5)


def test_fluorine_rows_take_ci_and_p_from_one_method():
    lines = ["67NR", "168FARN", "4T1"]
    truth = {"effects": {"tumour_f19_mM_line_means": {"sample": {"67NR": 2.0, "4T1": 9.0}}},
             "correlations": {"tumour_f19_mM_vs_lung_metastases_count": 0.8}}
    rng = np.random.default_rng(2)
    gs = [rng.normal(m, 2.0, size=4) for m in (2.0, 5.0, 9.0)]
    trend = fluorine19_pfc.ordered_shift(gs, n_perm=999)
    animals = pd.DataFrame({"model": np.repeat(lines, 4), "f19_mM": np.concatenate(gs),
                            "mets": rng.poisson(5, 12).astype(float)})
    diff = an.group_difference(animals, "f19_mM", control="67NR", treated="4T1", group_col="model")
    mets = an.group_difference(animals, "mets", control="67NR", treated="4T1", group_col="model")
    corr = an.correlation_effect(animals, "f19_mM", "mets")
    c = fluorine19_pfc.conclusions(diff, trend, mets, corr, truth, lines=lines).set_index("endpoint")
    assert list(c.index) == list(fluorine19_pfc.ENDPOINTS)
    for key, src in (("tumour_19f_trend", trend), ("tumour_19f_difference", diff), ("metastases_difference", mets)):
        assert c.loc[key, "p"] == pytest.approx(src["p"]) and c.loc[key, "ci_low"] == pytest.approx(src["ci_low"])
        raw_sig = c.loc[key, "p"] < 0.05
        assert raw_sig == (c.loc[key, "ci_low"] > 0 or c.loc[key, "ci_high"] < 0), key
    assert "Welch" in c.loc["tumour_19f_difference", "method"] and "Jonckheere" in c.loc["tumour_19f_trend", "method"]
    assert c.loc["tumour_19f_trend", "truth"] == 7.0 == c.loc["tumour_19f_difference", "truth"]
    with pytest.raises(StudyError, match="ordered_shift"):
        fluorine19_pfc.conclusions(diff, {"p": 0.01, "method": "JT"}, mets, corr, truth, lines=lines)


# ------------------------------------------------------------------------------ power of the design

def _mixed_data(effect, seed=0, n=8):
    rng = np.random.default_rng(seed)
    rows = []
    for g in ("ctl", "trt"):
        for a in range(n):
            u = rng.normal(0, 2.0)
            for day in (0, 3, 7):
                rows.append({"animal": f"{g}{a}", "group": g, "day": day,
                             "y": 50 + u + (effect * day / 7 if g == "trt" else 0) + rng.normal(0, 1.5)})
    return pd.DataFrame(rows)


def test_t_test_power_is_exact_and_alpha_at_zero():
    assert stats.t_test_power(0.0, 1.0, 10).power == pytest.approx(0.05)
    # large df: the z-test power, Phi(d - 1.96) + Phi(-d - 1.96)
    from scipy.stats import norm

    assert stats.t_test_power(2.8, 1.0, 1e6).power == pytest.approx(norm.cdf(2.8 - 1.96) + norm.cdf(-2.8 - 1.96),
                                                                     abs=1e-4)
    assert stats.t_test_power(-2.0, 1.0, 12).power == pytest.approx(stats.t_test_power(2.0, 1.0, 12).power)


def test_effect_power_of_a_fitted_mixed_model_is_seeded_and_has_alpha_at_zero_effect():
    d = _mixed_data(-3.0)
    eff = an.longitudinal_effect(d, "y", control="ctl", treated="trt", day_model="categorical")
    p1 = an.effect_power(eff, smallest_effect=0.001, n_sim=200, seed=4, units="1/s")
    p2 = an.effect_power(eff, smallest_effect=0.001, n_sim=200, seed=4, units="1/s")
    assert p1["observed"].power == p2["observed"].power and p1["observed"].n_sim == 200
    assert p1["observed"].effect == pytest.approx(eff.estimate)
    assert p1["sesoi"].effect == pytest.approx(math.copysign(0.001, eff.estimate))
    assert p1["sesoi"].ci_low <= 0.05 <= p1["sesoi"].ci_high + 0.03  # ~ type I error at a negligible effect
    big = an.effect_power(eff, smallest_effect=30.0, n_sim=100, seed=1)
    assert big["sesoi"].power > 0.95
    assert set(p1["numbers"]) <= set(an.POWER_KEYS) and "not a prospective" in p1["text"]
    assert "No smallest effect" in an.effect_power(eff, n_sim=50)["text"]


def test_effect_power_of_an_ancova_ols_fit_is_the_exact_noncentral_t():
    d = _mixed_data(-3.0, seed=2)
    d = d[d["day"].isin([0, 7])]
    eff = an.longitudinal_effect(d, "y", control="ctl", treated="trt", day_model="categorical", baseline="ancova")
    assert eff.ddf == "OLS t"
    pw = an.effect_power(eff)
    row = eff.model.fixed.loc[eff.term]
    assert pw["observed"].n_sim == 0
    assert pw["observed"].power == pytest.approx(stats.t_test_power(eff.estimate, row["se"], row["df"]).power)


def test_arrive_sample_size_item_shows_the_recorded_power_and_the_declared_smallest_effect(tmp_path):
    from studylib.workbook import animals as am

    flow = {"groups": ["ctl", "trt"], "days": [0, 7], "exclusions": [], "timeline": [],
            "table": [{"stage": "enrolled", "counts": {"ctl": 6, "trt": 6, "total": 12}},
                      {"stage": "analysed", "counts": {"ctl": 6, "trt": 6, "total": 12}}]}
    rows = pd.DataFrame({"animal": ["a"], "group": ["ctl"]})
    kw = dict(rows=rows, animals=None, flow=flow, findings=[], statistics=[], procedures=[], measures=[])
    bare = {e["label"]: e["value"] for e in am.arrive_items(info={}, **kw)[1]["entries"]}
    assert bare["power of the design for the observed effect (post hoc)"] is None  # "not reported" in red
    assert bare["power for the smallest effect of interest"] is None
    nums = {"power_observed": 0.62, "power_observed_ci_low": 0.56, "power_observed_ci_high": 0.67,
            "power_observed_effect": -8.0, "power_alpha": 0.05, "power_n_sim": 300, "power_units": "1/s",
            "power_sesoi": 0.31, "power_sesoi_ci_low": 0.26, "power_sesoi_ci_high": 0.36, "power_sesoi_effect": -5.0}
    assert set(nums) <= set(an.POWER_KEYS)
    f = tmp_path / "study.json"
    f.write_text(json.dumps({"smallest_effect_of_interest": "5 1/s: the smallest change a reader sees"}))
    info, _ = am.read_study_info(f, "s")
    assert am.smallest_effect_of_interest(info) == 5.0
    got = {e["label"]: e["value"] for e in am.arrive_items(info=info, numbers=nums, **kw)[1]["entries"]}
    obs = got["power of the design for the observed effect (post hoc)"]
    assert "post-hoc power 0.62" in obs and "300 simulated studies" in obs and "not a prospective" in obs
    assert got["how the sample size was decided"] is None  # never invented
    assert got["smallest effect of interest"].startswith("5 1/s") and "0.31" in got[
        "power for the smallest effect of interest"]
    f.write_text(json.dumps({"smallest_effect_of_interest": 4}))
    assert am.smallest_effect_of_interest(am.read_study_info(f, "s")[0]) == 4.0
    f.write_text(json.dumps({"smallest_effect_of_interest": "large"}))
    with pytest.raises(StudyError, match="smallest_effect_of_interest"):
        am.read_study_info(f, "s")
