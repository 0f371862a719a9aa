"""studylib.analysis: the effect check, the conclusions table, the table builders, truth lookup,
the frozen Estimate and keeping tables in the cache.

The notebooks themselves (each the single copy of its recipe) run end to end in tests/test_notebooks.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from studylib import analysis as ex
from studylib.errors import StudyError


# ------------------------------------------------------------------------------------ check_effect

def test_check_effect_significant_direction_and_truth():
    c = ex.check_effect("ΔR2*", estimate=5.0, ci_low=2.0, ci_high=8.0, p=0.003, expected_sign=1, truth=6.0,
                        units="1/s", paper="Yang 2017")
    assert c["significant"] and c["direction_matches_paper"] and c["ci_covers_truth"] and c["agrees_with_paper"]
    assert list(c) == ex.CONCLUSION_COLUMNS


def test_check_effect_wrong_direction_truth_outside_and_no_truth():
    c = ex.check_effect("r", estimate=0.4, ci_low=0.1, ci_high=0.7, p=0.01, expected_sign=-1, truth=-0.6)
    assert c["significant"] and not c["direction_matches_paper"] and c["ci_covers_truth"] is False
    assert not c["agrees_with_paper"]
    c = ex.check_effect("r", estimate=-0.2, ci_low=-0.5, ci_high=0.1, expected_sign=-1)
    assert c["ci_covers_truth"] is None and not c["significant"] and math.isnan(c["truth"])


@pytest.mark.parametrize("kw, msg", [
    (dict(estimate=float("nan")), "estimate must be a finite"),
    (dict(ci_low=9.0), "is above ci_high"),
    (dict(estimate=20.0), "outside its CI"),
    (dict(expected_sign=0), "expected_sign"),
    (dict(p=1.5), "p must be"),
])
def test_check_effect_bad_input(kw, msg):
    args = dict(estimate=5.0, ci_low=2.0, ci_high=8.0, expected_sign=1, p=0.01)
    args.update(kw)
    with pytest.raises(StudyError, match=msg):
        ex.check_effect("x", **args)


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e3, 1e3), st.floats(0, 1e3), st.floats(0, 1e3), st.floats(-2e3, 2e3),
       st.sampled_from([1, -1]), st.floats(0, 1))
def test_check_effect_properties(est, lo_w, hi_w, truth, sign, p):
    """Coverage is exactly interval membership; agreement is direction AND significance; sign flips mirror."""
    lo, hi = est - lo_w, est + hi_w
    c = ex.check_effect("x", estimate=est, ci_low=lo, ci_high=hi, expected_sign=sign, p=p, truth=truth)
    assert c["ci_covers_truth"] == (lo <= truth <= hi)
    assert c["significant"] == (p < 0.05)
    assert c["agrees_with_paper"] == (c["significant"] and (np.sign(est) == sign))
    m = ex.check_effect("x", estimate=-est, ci_low=-hi, ci_high=-lo, expected_sign=-sign, p=p, truth=-truth)
    assert m["direction_matches_paper"] == c["direction_matches_paper"]
    assert m["ci_covers_truth"] == c["ci_covers_truth"]


def test_conclusions_table_and_headline():
    rows = [ex.check_effect("a", estimate=1.0, ci_low=0.5, ci_high=1.5, p=0.01, expected_sign=1, truth=1.2,
                            units="1/s"),
            ex.check_effect("b", estimate=-0.5, ci_low=-0.9, ci_high=-0.1, expected_sign=-1)]
    t = ex.conclusions_table(rows)
    assert list(t.columns) == ex.CONCLUSION_COLUMNS and len(t) == 2
    h = ex.headline(t)
    assert h.startswith("a: 1 1/s [0.5, 1.5], p = 0.01") and "agrees with paper" in h and "inside CI" in h
    with pytest.raises(StudyError, match="at least one"):
        ex.conclusions_table([])
    with pytest.raises(StudyError, match="lacks keys"):
        ex.conclusions_table([{"finding": "x"}])


# ------------------------------------------------------------------------------------ tables

def _summary(n_animals=4, days=(0, 7)):
    rows = []
    for a in range(n_animals):
        for d in days:
            for roi in ("tumour", "muscle"):
                for var, base in (("r2star", 30.0), ("t2star", 20.0)):
                    rows.append(dict(animal=f"m{a:02d}", group="ctl" if a % 2 else "trt", day=d, roi=roi,
                                     variable=var, n_voxels=10 + a, volume_mm3=0.4 * (10 + a),
                                     mean=base + a + d + (5 if roi == "tumour" else 0), median=base))
    return pd.DataFrame(rows)


def test_session_table_pivots_tumour_means():
    t = ex.session_table(_summary(), variables=["r2star"])
    assert list(t.columns) == ["animal", "group", "day", "r2star", "n_voxels", "volume_mm3"]
    assert len(t) == 8
    row = t[(t.animal == "m02") & (t.day == 7)].iloc[0]
    assert row["r2star"] == 30 + 2 + 7 + 5 and row["volume_mm3"] == pytest.approx(4.8)


def test_session_table_bad_input():
    with pytest.raises(StudyError, match="lacks columns"):
        ex.session_table(_summary().drop(columns="roi"))
    with pytest.raises(StudyError, match="no rows for roi 'vessel'"):
        ex.session_table(_summary(), roi="vessel")
    with pytest.raises(StudyError, match=r"no variable\(s\) \['adc'\]"):
        ex.session_table(_summary(), variables=["adc"])


def test_animal_table_last_session_and_histology_join():
    s = ex.session_table(_summary(), variables=["r2star"])
    s = s[~((s.animal == "m03") & (s.day == 7))]  # m03 left the study before day 7
    h = pd.DataFrame(dict(animal=["m00", "m01", "m02", "m03"], group=["trt", "ctl", "trt", "ctl"],
                          iba1_cells_per_mm2=[10.0, 20, 30, 40]))
    a = ex.animal_table(s, h)
    assert len(a) == 4 and set(a.columns) >= {"animal", "group", "day", "r2star", "iba1_cells_per_mm2"}
    assert a.set_index("animal").loc["m03", "day"] == 0 and a.set_index("animal").loc["m00", "day"] == 7
    with pytest.raises(StudyError, match="no session on day 3"):
        ex.animal_table(s, h, day=3)
    with pytest.raises(StudyError, match="lacks join column"):
        ex.animal_table(s, h.drop(columns="animal"))


def test_find_truth_and_errors(tmp_path):
    root = tmp_path / "d"
    (root / "truth" / "s1").mkdir(parents=True)
    (root / "truth" / "s1" / "truth.json").write_text(json.dumps({"effect": 1.5}))
    m = root / "data_manifest.csv"
    pd.DataFrame(dict(study=["s1", "s2"], animal=["m01", ""], group=["g", ""], day=["0", ""],
                      kind=["MEGRE", "histology"], path=["raw/s1/m01/day00/MEGRE.nii.gz", "raw/s2/h.csv"],
                      sha256=["0" * 64] * 2)).to_csv(m, index=False)
    assert ex.find_truth(m, "s1") == root / "truth" / "s1" / "truth.json"
    assert ex.load_truth(m, "s1") == {"effect": 1.5}
    with pytest.raises(StudyError, match="no simulated truth"):
        ex.find_truth(m, "s2")
    with pytest.raises(StudyError, match="no rows for study 'zz'"):
        ex.find_truth(m, "zz")
    with pytest.raises(StudyError, match="manifest not found"):
        ex.find_truth(tmp_path / "nope.csv", "s1")
    with pytest.raises(StudyError, match="no key 'a/b'"):
        ex.truth_value({"a": {"c": 1}}, "a", "b")


# ------------------------------------------------------------------------------------ Estimate

def test_estimate_is_frozen_and_reads_as_mapping_and_attributes():
    e = ex.Estimate(1.0, 0.5, 1.5, 0.01, "t-test", details={"df": 9.0, "at_day": 7.0})
    assert e["estimate"] == e.estimate == 1.0 and e["at_day"] == e.at_day == 7.0
    assert dict(e) == dict(estimate=1.0, ci_low=0.5, ci_high=1.5, p=0.01, method="t-test", df=9.0, at_day=7.0)
    assert e.get("nope") is None and "df" in e and len(e) == 7
    with pytest.raises(Exception):
        e.estimate = 2.0
    with pytest.raises(TypeError):
        e.details["df"] = 1.0
    with pytest.raises(AttributeError, match="has no 'nope'"):
        e.nope


def test_group_difference_and_regression_are_estimates():
    t = pd.DataFrame({"group": ["a"] * 4 + ["b"] * 4, "y": [1.0, 2, 3, 4, 3, 4, 5, 6.5]})
    d = ex.group_difference(t, "y", control="a", treated="b")
    assert isinstance(d, ex.Estimate) and d.ci_low < d.estimate < d.ci_high and d["n_animals"] == 8
    assert d.estimate == pytest.approx(t.y[4:].mean() - t.y[:4].mean())
    r = ex.regression_slope(t.assign(x=np.arange(8.0)), "x", "y")
    assert r.estimate == pytest.approx(np.polyfit(np.arange(8.0), t.y, 1)[0])
    with pytest.raises(StudyError, match="at least 2 animals"):
        ex.group_difference(t.iloc[:5], "y", control="a", treated="b")


def test_keep_tables_stores_inspectable_tables_and_never_a_stale_one(tmp_path):
    """Notebook tables (ROI tables, model fits, conclusions) become cache entries that
    ``load_intermediate``/``Cache.load`` reopen; a changed table gets a new entry, not the old one."""
    from studylib.cache import Cache

    manifest = tmp_path / "data_manifest.csv"  # only locates the cache when cache_dir is None
    fixed = pd.DataFrame({"estimate": [1.5, -0.25], "p": [0.01, 0.4]}, index=["Intercept", "group[T.b]"])
    mixed = pd.DataFrame({"finding": ["r", "d"], "truth": [0.5, "n/a"]})  # mixed-type column
    names = ex.keep_tables("toy", manifest, tmp_path / "derived", model_fixed=(fixed, "fixed effects"),
                           conclusions=mixed)
    assert names == ["model_fixed", "conclusions"]
    cache = Cache("toy", tmp_path / "derived")
    back = cache.load("model_fixed")
    assert list(back["index"]) == ["Intercept", "group[T.b]"]
    np.testing.assert_allclose(back["estimate"], fixed["estimate"])
    assert list(cache.load("conclusions")["truth"]) == ["0.5", "n/a"]
    first_key = cache.load("model_fixed").attrs["studylib_cache_key"]
    ex.keep_tables("toy", manifest, tmp_path / "derived", model_fixed=fixed.assign(estimate=[2.0, 0.0]))
    latest = cache.load("model_fixed")
    assert latest.attrs["studylib_cache_key"] != first_key
    np.testing.assert_allclose(latest["estimate"], [2.0, 0.0])
    with pytest.raises(StudyError, match="must be a pandas DataFrame"):
        ex.keep_tables("toy", manifest, tmp_path / "derived", bad=[1, 2])


@pytest.mark.parametrize("groups, control", [
    (["PBS", "drug"], "PBS"), (["Vehikel", "Wirkstoff"], "Vehikel"), (["Kontrolle", "BLZ945"], "Kontrolle"),
    (["saline", "ampb"], "saline"), (["mock", "virus"], "mock"),
])
def test_pick_groups_recognises_control_names(groups, control):
    import xarray as xr

    ds = xr.Dataset(coords={"animal": ["a", "b"], "group": ("animal", groups)})
    c, t = ex.pick_groups(ds)
    assert c == control and t == [g for g in groups if g != control][0]


def test_pick_groups_needs_help_when_no_name_says_control():
    import xarray as xr

    ds = xr.Dataset(coords={"animal": ["a", "b"], "group": ("animal", ["low", "high"])})
    with pytest.raises(StudyError, match="pass control="):
        ex.pick_groups(ds)
    assert ex.pick_groups(ds, control="low") == ("low", "high")


def test_baseline_frames_measured_from_the_vessel_roi_without_the_sidecar_key(ci_study):
    """Without the simulator's BolusArrivalTime_s the pre-contrast frames are measured in the data and agree
    with the true arrival to within one frame."""
    import studylib as sl

    dce = sl.load_study(ci_study, "ktrans_hypoxia", "DCE")
    true_n = ex.baseline_frames(dce)  # from the sidecar (the simulator's truth)
    bare = dce.copy()
    bare.attrs = {k: v for k, v in dce.attrs.items() if k != "BolusArrivalTime_s"}
    assert abs(ex.baseline_frames(bare) - true_n) <= 1
    assert ex.baseline_frames(bare, 3) == 3
    no_vessel = bare.assign(roi=bare["roi"].where(bare["roi"] != 3, 0))
    with pytest.raises(StudyError, match="pass n_baseline="):
        ex.baseline_frames(no_vessel)


def test_load_truth_on_real_data_is_empty_unless_required(tmp_path, capsys):
    m = tmp_path / "data_manifest.csv"
    pd.DataFrame(dict(study=["s1"], animal=["m01"], group=["g"], day=["0"], kind=["MEGRE"],
                      path=["raw/s1/m01/day00/MEGRE.nii.gz"], sha256=["0" * 64])).to_csv(m, index=False)
    assert ex.load_truth(m, "s1") == {} and "no simulated truth" in capsys.readouterr().out
    assert ex.load_truth_table(m, "s1", "sessions.csv") is None
    with pytest.raises(StudyError, match="no simulated truth"):
        ex.load_truth(m, "s1", required=True)
    with pytest.raises(StudyError, match="no rows for study"):
        ex.load_truth(m, "zz")


# ------------------------------------------------------------------------------------ design-aware correlation
def _clustered(within_slope, *, k=4, n=8, seed=0, spread=3.0):
    """k clusters whose means lie on a line of slope -1 (pooled r strong and negative); inside each
    cluster y = within_slope * x + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(k):
        mx = spread * c
        x = mx + rng.normal(size=n)
        y = -mx + within_slope * (x - mx) + rng.normal(size=n)
        rows += [dict(model=f"M{c}", x=xi, y=yi) for xi, yi in zip(x, y)]
    return pd.DataFrame(rows)


def test_correlation_effect_simpson_within_null_and_ci_agrees_with_p():
    d = _clustered(0.0, seed=1)
    c = ex.correlation_effect(d, "x", "y", cluster="model")
    assert c["level"] == "within" and set(c["parts"]) == {"pooled", "within", "between"}
    pooled, within = c["parts"]["pooled"], c["parts"]["within"]
    assert pooled["p"] < 0.05 and pooled["ci_high"] < 0            # the pooled r is all between-model
    assert within["p"] > 0.05 and within["ci_low"] < 0 < within["ci_high"]
    assert c["estimate"] == within["estimate"] and "Fisher-z" in c["method"] and "df" in c["method"]
    for e in c["parts"].values():                                    # one method: p < alpha iff CI excludes 0
        assert (e["p"] < 0.05) == (not e["ci_low"] <= 0 <= e["ci_high"])
    assert ex.correlation_effect(d, "x", "y")["level"] == "pooled"
    t = ex.correlation_levels_text(c, x="ADC", y="collagen", cluster="model")
    assert "no evidence" in t and "within-model" in t and "between-model" in t


def test_correlation_effect_detects_a_true_within_model_correlation():
    c = ex.correlation_effect(_clustered(0.8, n=10, seed=2), "x", "y", cluster="model")
    assert c["estimate"] > 0.4 and c["p"] < 0.05 and c["ci_low"] > 0 and c["df"] == 40 - 4 - 1
    assert "tracks" in ex.correlation_levels_text(c, x="x", y="y", cluster="model")
    with pytest.raises(StudyError, match="level"):
        ex.correlation_effect(_clustered(0.0), "x", "y", level="within")
    with pytest.raises(StudyError, match="lacks columns"):
        ex.correlation_effect(_clustered(0.0), "x", "nope")


def test_partial_regression_effect_is_one_t_test():
    rng = np.random.default_rng(4)
    n = 30
    m = rng.normal(size=n)
    k = rng.normal(size=n)
    d = pd.DataFrame({"mvd": m, "ifp": rng.normal(size=n), "ktrans": k, "hyp": -2 * k + m + 0.5 * rng.normal(size=n)})
    e = ex.partial_regression_effect(d, "hyp", "ktrans", ["mvd", "ifp"])
    assert e["estimate"] < -0.8 and e["p"] < 1e-6 and e["df"] == n - 4 and e["ci_high"] < 0
    assert e["coef"] == pytest.approx(np.linalg.lstsq(np.column_stack([np.ones(n), k, m, d["ifp"]]), d["hyp"],
                                                      rcond=None)[0][1])
    assert "given mvd, ifp" in e["method"]


# ------------------------------------------------------------------------------------ primary / secondary, Holm
def _row(name, p, est=1.0):
    return ex.check_effect(name, estimate=est, ci_low=est - 0.5, ci_high=est + 0.5, p=p, expected_sign=1)


def test_conclusions_table_marks_the_primary_and_holm_adjusts_the_secondary():
    rows = {"a": _row("a", 0.04), "b": _row("b", 0.01), "c": _row("c", 0.03), "d": _row("d", 0.002)}
    t = ex.conclusions_table(rows, primary="c")
    assert list(t["endpoint"]) == ["c", "a", "b", "d"] and list(t["role"]) == ["primary"] + ["secondary"] * 3
    assert math.isnan(t["p_holm"].iloc[0]) and bool(t["significant"].iloc[0])   # the primary: p at alpha
    from studylib.stats import holm

    np.testing.assert_allclose(t["p_holm"].iloc[1:], holm([0.04, 0.01, 0.002]))  # [0.04, 0.02, 0.006]
    assert t["p"].tolist() == [0.03, 0.04, 0.01, 0.002]                          # raw p kept
    assert t["significant"].tolist() == [True, True, True, True]
    t2 = ex.conclusions_table({"a": _row("a", 0.001), "b": _row("b", 0.03), "c": _row("c", 0.04)}, primary="a")
    assert t2["p_holm"].tolist()[1:] == pytest.approx([0.06, 0.06])
    assert t2["significant"].tolist() == [True, False, False] and not t2["agrees_with_paper"].iloc[1:].any()
    assert any("Holm-adjusted 0.06" in s for s in ex.disagreements(t2))
    assert ex.conclusions_table([_row("x", 0.5), _row("y", 0.01)])["role"].tolist() == ["primary", "secondary"]
    assert ex.conclusions_table([_row("x", 0.5), _row("y", 0.01)], primary="y")["finding"].tolist() == ["y", "x"]
    with pytest.raises(StudyError, match="names no finding.*endpoints are"):
        ex.conclusions_table(rows, primary="zz")
    s = ex.summary_lines(t2)
    assert s.startswith("Primary endpoint: a: 1") and "0 of 2 agree" in s and "not significant" in s


def test_experiment_endpoints_name_rows_and_the_primary_comes_first():
    from studylib.experiments import ampb_ferumoxytol

    est = ex.Estimate(10.0, 5.0, 15.0, 0.001, "m", details={"at_day": 7.0})
    corr = ex.Estimate(0.5, 0.1, 0.8, 0.02, "pearson r, Fisher-z CI and p (df 12), n = 14 rows", details={"n": 14})
    t = ampb_ferumoxytol.conclusions(est, corr, {}, control="v", treated="a", hist_col="iba1",
                                     primary="histology_r")
    assert t["endpoint"].tolist() == ["histology_r", "treatment_effect"] and t["role"].iloc[0] == "primary"
    # no absolute effect, no imputed effect and an unclustered r (no pooled descriptive row) given
    assert set(t["endpoint"]) == set(ampb_ferumoxytol.ENDPOINTS) - {"absolute_r2star", "histology_r_pooled",
                                                                    *ampb_ferumoxytol.SENSITIVITY}
    assert t["method"].iloc[0].startswith(corr.method) and t["method"].iloc[0].count("n = ") == 1  # n said once
    assert "each animal's last imaging day" in t["method"].iloc[0]   # the day of the comparison is said
    assert t["p_holm"].iloc[1] == pytest.approx(0.001)


# ------------------------------------------------------------------------------------ QC warnings
def _qc_summary(failed):
    """Tidy summary rows of a tumour ROI with ``failed[(animal, day)]`` voxels of 100 excluded."""
    rows = []
    for (a, g, d), n_ex in failed.items():
        for var in ("r2star", "t2star"):
            rows.append(dict(animal=a, group=g, day=d, roi="tumour", variable=var, n_voxels=100, volume_mm3=4.0,
                             n_excluded=n_ex, mean=30.0, median=30.0))
    return pd.DataFrame(rows)


def test_failed_fit_fraction_per_session_group_day_and_warning():
    from studylib.errors import DataWarning

    s = ex.session_table(_qc_summary({("m1", "ctl", 0): 2, ("m2", "ctl", 0): 4, ("m3", "trt", 0): 3,
                                      ("m4", "trt", 0): 5, ("m1", "ctl", 7): 1, ("m2", "ctl", 7): 3,
                                      ("m3", "trt", 7): 20, ("m4", "trt", 7): 30})).sort_values(["animal", "day"])
    assert s["fit_failed_fraction"].tolist() == [0.02, 0.01, 0.04, 0.03, 0.03, 0.2, 0.05, 0.3]
    with pytest.warns(DataWarning, match=r"25\.0 % of the voxels in group 'trt' but 2\.0 % in group 'ctl' on day 7"):
        t = ex.failed_fit_table(s, max_difference=0.05)
    row = t[(t.group == "trt") & (t.day == 7)].iloc[0]
    assert row["mean_failed_fraction"] == pytest.approx(0.25) and row["max_failed_fraction"] == 0.3
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex.failed_fit_table(s, max_difference=0.25)            # 23 points: below this threshold, no warning
        ex.failed_fit_table(s, max_difference=None)


def test_animal_table_warns_about_dropped_sessions_and_animals_without_histology():
    from studylib.errors import DataWarning

    s = pd.DataFrame({"animal": ["m1", "m1", "m2", "m3"], "group": "g", "day": [0, 7, 0, 0],
                      "r2star": [30.0, np.nan, 31.0, 32.0]})
    with pytest.warns(DataWarning, match="m1 day 7"):
        t = ex.animal_table(s)
    assert t.set_index("animal").loc["m1", "day"] == 0
    hist = pd.DataFrame({"animal": ["m1", "m2"], "iron": [1.0, 2.0]})
    with pytest.warns(DataWarning, match=r"no histology row.*m3 \(day 0\)"):
        t = ex.animal_table(s.dropna(), hist)
    assert sorted(t["animal"]) == ["m1", "m2"]


def test_nonfinite_background_values_warn_naming_the_scans():
    import xarray as xr

    from studylib.analysis import maps as mp
    from studylib.errors import DataWarning

    sig = xr.DataArray(np.ones((2, 1, 3, 4, 4)), dims=("animal", "day", "te", "y", "x"),
                       coords={"animal": ["m1", "m2"], "day": [7]})
    sig[1, 0, 0, 0, 0] = np.inf
    bg = xr.DataArray(np.zeros((4, 4), bool), dims=("y", "x"))
    bg[0, :] = True
    maps = mp._with_background_count(xr.Dataset({"r2star": sig.isel(te=0)}), sig, bg)
    assert maps.coords[mp.NONFINITE_BACKGROUND].values.tolist() == [[0], [1]]
    with pytest.warns(DataWarning, match=r"noise SD estimate .*m2 day 7: 1"):
        mp._warn_nonfinite_background(maps, "toy")


# ------------------------------------------------------------------------------------ baseline-adjusted effects
def _imbalanced_study(seed=0, n=8, effect=-6.0, days=(0, 3, 7), imbalance=True):
    """Two groups of ``n`` animals, R2*-like outcome with a persistent animal level: y_id = b_i + trend(d)
    + effect * d/7 [treated] + noise, b_i ~ N(50, 6^2).  With ``imbalance`` the treated group is the ``n``
    animals of highest baseline level (a chance imbalance made certain); the true day-7 effect is ``effect``.
    Built with numpy alone (not the library's synth)."""
    rng = np.random.default_rng(seed)
    b = rng.normal(50.0, 6.0, 2 * n)
    order = np.argsort(b) if imbalance else rng.permutation(2 * n)
    treated = np.zeros(2 * n, bool)
    treated[order[n:]] = True
    rows = []
    for i in range(2 * n):
        for d in days:
            y = b[i] + 0.2 * d + (effect * d / 7.0 if treated[i] else 0.0) + rng.normal(0.0, 1.5)
            rows.append(dict(animal=f"m{i:02d}", group="trt" if treated[i] else "ctl", day=d, y=y,
                             model="A" if i % 2 else "B"))
    return pd.DataFrame(rows)


def test_ancova_on_a_one_day_endpoint_is_statsmodels_ols():
    """Days 0 and 7 only: the ANCOVA is y7 ~ treated + y0 by OLS; estimate, CI and p equal statsmodels'."""
    import statsmodels.formula.api as smf

    s = _imbalanced_study(seed=1, days=(0, 7))
    e = ex.longitudinal_effect(s, "y", control="ctl", treated="trt", day_model="categorical", baseline="ancova")
    w = s.pivot(index="animal", columns="day", values="y").rename(columns={0: "y0", 7: "y7"})
    w["trt"] = s.groupby("animal")["group"].first().eq("trt").astype(float)
    ols = smf.ols("y7 ~ trt + y0", data=w).fit()
    lo, hi = ols.conf_int().loc["trt"]
    assert e.estimate == pytest.approx(ols.params["trt"], rel=1e-9)
    assert (e.ci_low, e.ci_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert e.p == pytest.approx(ols.pvalues["trt"], rel=1e-7) and e.df == ols.df_resid
    assert e.adjustment == "ANCOVA on day 0 y" and e.baseline_day == 0 and "ANCOVA" in e.method
    assert e.re_formula == "none" and "OLS" in e.method and e.n_animals == 16
    assert "16 observations, 16 animals; OLS t, 13" in ex.model_diagnostics(e)


def test_ancova_in_the_mixed_model_equals_ols_on_the_last_day():
    """Complete balanced days 0/3/7, every fixed effect per day: GLS with any within-animal covariance equals
    per-day OLS (identical regressors per day; Zellner 1962), so the mixed-model ANCOVA's day-7 effect is the
    statsmodels OLS of y7 ~ treated + y0, an independent computation."""
    import statsmodels.formula.api as smf

    s = _imbalanced_study(seed=2)
    e = ex.longitudinal_effect(s, "y", control="ctl", treated="trt", day_model="categorical", baseline="ancova")
    w = s.pivot(index="animal", columns="day", values="y").rename(columns={0: "y0", 3: "y3", 7: "y7"})
    w["trt"] = s.groupby("animal")["group"].first().eq("trt").astype(float)
    ols = smf.ols("y7 ~ trt + y0", data=w).fit()
    assert e.estimate == pytest.approx(ols.params["trt"], abs=1e-6)
    assert e.model.fixed.loc["baseline_c", "estimate"] == pytest.approx(ols.params["y0"], abs=1e-6)
    assert 0.7 < (e.ci_high - e.ci_low) / np.diff(ols.conf_int().loc["trt"])[0] < 1.3   # pooled vs day-7 variance
    assert "baseline day excluded from the response" in e.method and e.formula.count("baseline_c") == 2
    assert e.model.n_obs == 32 and e.n_animals == 16                  # days 3 and 7 of 16 animals: no day 0


def test_unadjusted_contrast_carries_a_baseline_imbalance_and_ancova_covers_the_truth():
    truth = -6.0
    s = _imbalanced_study(seed=3, effect=truth)
    d0 = s[s.day == 0].groupby("group")["y"].mean()
    assert d0["trt"] - d0["ctl"] > 8.0                                  # the treated group starts higher
    kw = dict(control="ctl", treated="trt", day_model="categorical")
    raw = ex.longitudinal_effect(s, "y", **kw)
    adj = ex.longitudinal_effect(s, "y", **kw, baseline="ancova")
    assert raw.adjustment == "none" and adj.adjustment.startswith("ANCOVA")
    assert raw.ci_low > truth and raw.estimate > 0                      # biased up by the imbalance: misses truth
    assert adj.ci_low <= truth <= adj.ci_high and adj.p < 0.05         # adjusted: covers the truth
    # over replicates: the raw contrast is off by ~ the imbalance, the ANCOVA is not
    raws, imbs, adjs = [], [], []
    for seed in range(10, 30):
        s = _imbalanced_study(seed=seed, effect=truth, days=(0, 7))
        w = s[s.day == 0].groupby("group")["y"].mean()
        imbs.append(w["trt"] - w["ctl"])
        raws.append(ex.group_difference(s[s.day == 7], "y", control="ctl", treated="trt").estimate - truth)
        adjs.append(ex.longitudinal_effect(s, "y", **kw, baseline="ancova").estimate - truth)
    assert np.mean(raws) > 5.0 and abs(np.mean(np.subtract(raws, imbs))) < 1.0   # raw error = the imbalance
    assert abs(np.mean(adjs)) < 3 * np.std(adjs) / np.sqrt(len(adjs)) + 0.3       # ANCOVA: no bias


def test_treatment_by_model_interaction_and_per_model_effects():
    rng = np.random.default_rng(4)
    rows = []
    for i in range(24):
        model, trt = ("A", "B")[i % 2], (i // 2) % 2 == 1
        b = rng.normal(40.0 if model == "A" else 55.0, 3.0)
        for d in (0, 3, 7):
            eff = {"A": -4.0, "B": -12.0}[model] * d / 7.0 if trt else 0.0
            rows.append(dict(animal=f"m{i}", group="trt" if trt else "ctl", model=model, day=d,
                             y=b + eff + rng.normal(0.0, 1.0)))
    s = pd.DataFrame(rows)
    e = ex.longitudinal_effect(s, "y", control="ctl", treated="trt", day_model="categorical", baseline="ancova",
                               by="model")
    per = e.per_level
    assert e.levels == ("A", "B") and set(per) == {"A", "B"}
    assert per["A"].ci_low <= -4.0 <= per["A"].ci_high and per["B"].ci_low <= -12.0 <= per["B"].ci_high
    assert e.estimate == pytest.approx(per["B"].estimate - per["A"].estimate)     # B minus A
    assert e.ci_low <= -8.0 <= e.ci_high and e.p < 0.01
    assert e.p == pytest.approx(e.interaction_F["p"], rel=1e-6)                     # t^2 = F for two levels
    assert e.first_day_by_level["B"] > e.first_day_by_level["A"] + 10
    assert list(e.per_level_table["model"]) == ["A", "B"] and "interaction" in e.method
    with pytest.raises(StudyError, match="by='model' needs"):
        ex.longitudinal_effect(s[s.model == "A"], "y", control="ctl", treated="trt", day_model="categorical",
                               by="model")


def test_ancova_names_animals_without_baseline_and_refuses_bad_input():
    from studylib.errors import DataWarning

    s = _imbalanced_study(seed=5)
    s = s[~((s.animal == "m03") & (s.day == 0))]
    with pytest.warns(DataWarning, match=r"no 'y' on the baseline day 0.*: m03"):
        e = ex.longitudinal_effect(s, "y", control="ctl", treated="trt", day_model="categorical",
                                   baseline="ancova")
    assert e.n_animals == 15 and e.no_baseline == ("m03",)
    s = _imbalanced_study(seed=5)
    with pytest.raises(StudyError, match="baseline must be"):
        ex.longitudinal_effect(s, "y", control="ctl", treated="trt", baseline="change")
    with pytest.raises(StudyError, match="baseline_day 1 is not an imaging day"):
        ex.longitudinal_effect(s, "y", control="ctl", treated="trt", baseline="ancova", baseline_day=1)
    with pytest.raises(StudyError, match="at_day 0 must come after the baseline day 0"):
        ex.longitudinal_effect(s, "y", control="ctl", treated="trt", baseline="ancova", at_day=0)
    lin = ex.longitudinal_effect(_imbalanced_study(seed=5), "y", control="ctl", treated="trt", baseline="ancova")
    assert lin.re_formula == "~1" and "baseline_c:day_c" in lin.formula     # 2 sessions: random slope unidentifiable


def test_animal_table_on_the_common_day_names_animals_that_left_early():
    from studylib.errors import DataWarning

    s = pd.DataFrame({"animal": ["a1", "a1", "a2", "a2", "b1", "b1", "b2"], "group": list("aaaabbb"),
                      "day": [0, 7, 0, 7, 0, 7, 0], "r2star": [1.0, 2, 3, 4, 5, 6, 7]})
    assert ex.common_day(s) == 7.0 and ex.common_day(s[s.day == 0]) == 0.0
    hist = pd.DataFrame({"animal": ["a1", "a2", "b1", "b2"], "endpoint_day": [7, 3, 7, 0], "iron": [1.0, 2, 3, 4]})
    with pytest.warns(DataWarning) as rec:
        t = ex.animal_table(s, hist, day="common")
    msgs = [str(w.message) for w in rec]
    assert any("no session on day 7, the last day every group is imaged" in m and "b2 (last imaged day 0)" in m
               for m in msgs)
    assert any("histology from another day: a2 (endpoint_day 3)" in m for m in msgs)
    assert sorted(t["animal"]) == ["a1", "a2", "b1"] and (t["day"] == 7).all()
    assert t.attrs == {"day": 7.0, "day_rule": "common", "left_out": ("b2",)}
    assert ex.animal_table(s).attrs["day_rule"] == "last"
    with pytest.raises(StudyError, match="no imaging day has every group"):
        ex.common_day(pd.DataFrame({"group": ["a", "b"], "day": [0, 7]}))
    with pytest.raises(StudyError, match="day must be None, 'common'"):
        ex.animal_table(s, day="last")
    suffix, method = ex.histology_day_text(t.attrs)
    assert suffix == " on day 7" and "last imaging day every group shares" in method and "b2" in method
    assert ex.histology_day_text(None)[0] == " at endpoint"


def test_auto_mixed_model_does_not_stop_on_a_boundary_the_battery_leaves():
    """The ANCOVA model above: lme4's profiled optimiser alone stops at a zero intercept variance (REML criterion
    127.568); the default must not keep that boundary point when the battery finds a lower criterion inside: it
    restarts from inside (lme4's restart_edge) and reaches the battery's optimum without running the battery."""
    from studylib import stats as st

    s = _imbalanced_study(seed=2)
    e = ex.longitudinal_effect(s, "y", control="ctl", treated="trt", day_model="categorical", baseline="ancova")
    m = e.model
    only = st.mixed_model(m.data, m.formula, m.groups, m.re_formula, optimizers=("profiled",), warn=False)
    full = st.mixed_model(m.data, m.formula, m.groups, m.re_formula, optimizers=st.DEFAULT_OPTIMIZERS, warn=False)
    assert only.boundary and only.criterion > full.criterion + 0.1          # the trap exists
    assert m.criterion == pytest.approx(full.criterion, abs=1e-6) and not m.boundary
    assert any("restart_edge" in w for w in m.warnings) and list(m.optimizers.optimizer) == ["profiled"] * 2
