"""studylib.experiments: the effect check, the tables, and every analysis end to end.

* unit tests of :func:`check_effect`, :func:`conclusions_table`, the table builders (hypothesis too);
* on the ``ci`` preset, each analysis produces the expected tables and conclusions columns;
* on the ``demo`` preset, each experiment's estimated effect has a 95 % CI that covers the simulated
  truth and its direction matches the paper's (issue 6, "Must show").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from studylib import experiments as ex
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
    pd.DataFrame(dict(study=["s1", "s2"], path=["raw/s1/m01/day00/MEGRE.nii.gz", "raw/s2/h.csv"])).to_csv(m, index=False)
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


# ------------------------------------------------------------------------------------ end to end

FIVE = ["ampb_ferumoxytol", "blz945_femri", "ferumoxytol_therapy", "collagen_adc", "ktrans_hypoxia"]

#: experiment -> (analysis function, keyword arguments): the same steps and defaults as the notebooks
ANALYSES = {
    "ampb_ferumoxytol": (ex.analyse_iron_study, dict(day_model="categorical", hist_keywords=("iba1",))),
    "blz945_femri": (ex.analyse_iron_study, dict(day_model="categorical", hist_keywords=("prussian", "iron"))),
    "ferumoxytol_therapy": (ex.analyse_ferumoxytol_therapy, {}),
    "collagen_adc": (ex.analyse_collagen_adc, {}),
    "ktrans_hypoxia": (ex.analyse_ktrans_hypoxia, {}),
}

SESSION_COLUMNS = {
    "ampb_ferumoxytol": {"animal", "group", "day", "r2star", "t2star", "volume_mm3"},
    "blz945_femri": {"animal", "group", "day", "model", "r2star", "t2star"},
    "ferumoxytol_therapy": {"animal", "group", "day", "r2star", "t2star", "volume_mm3", "log_volume"},
    "collagen_adc": {"animal", "group", "day", "adc"},
    "ktrans_hypoxia": {"animal", "group", "day", "ktrans", "ve", "vp", "t1"},
}


def _run(study, manifest, cache_dir):
    fn, params = ANALYSES[study]
    return fn(manifest, study, cache_dir=cache_dir, verify=False, **params)


def _notebook_defaults(study):
    """The analysis defaults the test uses are the notebook's parameters (no drift between them)."""
    import jupytext

    nb = jupytext.read(Path(ex.repo_root()) / "notebooks" / f"{study}.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    ns: dict = {}
    exec(cell.source, ns)  # noqa: S102 - the notebook's own parameters cell
    return ns


@pytest.mark.parametrize("study", FIVE)
def test_analysis_tables_on_ci(study, ci_study, tmp_path):
    """On the ci preset every analysis gives its per-session table and a full conclusions table."""
    res = _run(study, ci_study, tmp_path / "derived")
    assert SESSION_COLUMNS[study] <= set(res.sessions.columns), list(res.sessions.columns)
    assert res.sessions["animal"].nunique() >= 6
    c = res.conclusions
    assert list(c.columns) == ex.CONCLUSION_COLUMNS and len(c) >= 2
    assert c[["estimate", "ci_low", "ci_high", "p"]].notna().all().all()
    assert (c["ci_low"] <= c["estimate"]).all() and (c["estimate"] <= c["ci_high"]).all()
    assert c["truth"].notna().all(), "every finding must have a simulated truth to compare with"
    assert ex.headline(c).startswith(c["finding"].iloc[0])
    # the test's settings are the notebook's parameters
    params = _notebook_defaults(study)
    fn, kw = ANALYSES[study]
    if "day_model" in kw:
        assert params["day_model"] == kw["day_model"]
    assert params["study"] == study


def test_rerun_reads_cached_maps(ci_study, tmp_path):
    """A second run of an analysis reads its maps from the cache instead of refitting."""
    from studylib.cache import Cache

    first = _run("collagen_adc", ci_study, tmp_path / "derived")
    cache = Cache("collagen_adc", tmp_path / "derived")
    assert [e.name for e in cache.entries()] == ["adc_maps"]
    second = _run("collagen_adc", ci_study, tmp_path / "derived")
    pd.testing.assert_frame_equal(first.conclusions, second.conclusions)


@pytest.fixture(scope="session")
def demo_five(demo_manifest):
    """The demo study (see ``demo_manifest`` in conftest.py): the five experiments are in it."""
    return demo_manifest


@pytest.mark.slow
@pytest.mark.parametrize("study", FIVE)
def test_demo_effect_covers_truth_in_paper_direction(study, demo_five, tmp_path):
    """Issue 6: on the demo data every finding's 95 % CI covers the simulated truth, its direction is the
    paper's, and it is significant -- checked by the same function the notebook prints."""
    res = _run(study, demo_five, tmp_path / "derived")
    c = res.conclusions
    assert c["truth"].notna().all()
    assert c["direction_matches_paper"].all(), c[["finding", "estimate", "paper_direction"]]
    assert c["ci_covers_truth"].astype(bool).all(), c[["finding", "ci_low", "ci_high", "truth"]]
    assert ex.disagreements(c) == []


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
    with pytest.raises(ex.ExperimentError, match="must be a pandas DataFrame"):
        ex.keep_tables("toy", manifest, tmp_path / "derived", bad=[1, 2])
