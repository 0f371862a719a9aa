"""Issue 13 audit: conclusion text on rows without a p-value (a bootstrap CI), the Ktrans "beyond MVD and IFP"
partial correlation within a tumour model, and the ARRIVE power sentence saying how the power was computed.

Constructed data with a known answer; no notebook is executed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from studylib import analysis as an
from studylib.experiments import ktrans_hypoxia
from studylib.workbook import animals as wb_animals


def _ci_row(name, lo, hi, est):
    """A row judged by its CI alone (no p-value), like the acidoCEST bootstrap rows."""
    return an.check_effect(name, estimate=est, ci_low=lo, ci_high=hi, p=None, expected_sign=1)


# ------------------------------------------------------------------------------ rows without a p-value

def test_rows_without_p_say_why_they_are_not_significant_and_claim_no_holm_adjustment():
    t = an.conclusions_table({"a": _ci_row("a", 0.2, 0.8, 0.5), "b": _ci_row("b", 0.1, 0.9, 0.4),
                              "c": _ci_row("c", -0.2, 0.9, 0.3)}, primary="a")
    assert t["p"].isna().all() and t["p_holm"].isna().all()
    bad = an.disagreements(t)
    assert bad == ["c: not significant (its CI [-0.2, 0.9] includes 0; no p-value)"]
    text = an.summary_lines(t)
    assert "nan" not in text.lower()
    assert "Holm-adjusted" not in text and "no p-value to Holm-adjust" in text
    assert "Secondary findings: 1 of 2 agree" in text


def test_mixed_secondary_rows_name_how_many_were_holm_adjusted():
    rows = {"a": _ci_row("a", 0.2, 0.8, 0.5),
            "b": an.check_effect("b", estimate=1.0, ci_low=0.5, ci_high=1.5, p=0.001, expected_sign=1),
            "c": an.check_effect("c", estimate=1.0, ci_low=0.4, ci_high=1.6, p=0.004, expected_sign=1),
            "d": _ci_row("d", 0.1, 0.9, 0.4)}
    t = an.conclusions_table(rows, primary="a")
    np.testing.assert_allclose(t.set_index("endpoint").loc[["b", "c"], "p_holm"], [0.002, 0.004])
    text = an.summary_lines(t)
    assert "Holm-adjusted across the 2 secondary findings with a p-value; the 1 without one" in text
    assert "nan" not in text.lower()


def test_rows_with_p_keep_the_holm_sentence_and_the_p_in_the_issue():
    rows = {"a": an.check_effect("a", estimate=1.0, ci_low=0.5, ci_high=1.5, p=0.001, expected_sign=1),
            "b": an.check_effect("b", estimate=1.0, ci_low=-0.1, ci_high=2.1, p=0.06, expected_sign=1),
            "c": an.check_effect("c", estimate=1.0, ci_low=0.4, ci_high=1.6, p=0.01, expected_sign=1)}
    t = an.conclusions_table(rows, primary="a")
    assert "Holm-adjusted across the secondary findings" in an.summary_lines(t)
    assert an.disagreements(t) == ["b: not significant (p = 0.06, Holm-adjusted 0.06)"]


# ------------------------------------------------------------------------------ Ktrans beyond MVD and IFP

def _ktrans_study(seed=0, k=4, m=8):
    """k tumour models whose means put Ktrans and hypoxia on a strong inverse line, while inside a model
    hypoxia depends on MVD and IFP only (true within-model partial r of Ktrans = 0)."""
    rng = np.random.default_rng(seed)
    model = np.repeat([f"PDX{i}" for i in range(k)], m)
    centre = np.repeat(np.arange(k, dtype=float), m)
    ktrans = 0.25 - 0.04 * centre + rng.normal(0, 0.02, k * m)
    mvd = rng.normal(200, 40, k * m)
    ifp = rng.normal(15, 3, k * m)
    hyp = 20 + 15 * centre - 0.05 * (mvd - 200) + 0.8 * (ifp - 15) + rng.normal(0, 3, k * m)
    return pd.DataFrame({"animal": [f"m{i:02d}" for i in range(k * m)], "model": model, "ktrans": ktrans,
                         "hypoxic_fraction_pct": hyp, "mvd_cd31_per_mm2": mvd, "ifp_mmHg": ifp})


def test_beyond_mvd_ifp_is_within_model_and_the_pooled_partial_r_is_descriptive():
    d = _ktrans_study()
    covs = ["mvd_cd31_per_mm2", "ifp_mmHg"]
    within = an.partial_regression_effect(d, "hypoxic_fraction_pct", "ktrans", [*covs, "model"])
    pooled = an.partial_regression_effect(d, "hypoxic_fraction_pct", "ktrans", covs)
    # pooled over the models the partial r restates the model difference; within a model there is none
    assert pooled["estimate"] < -0.6 and pooled["p"] < 1e-4
    assert within["p"] > 0.05 and within["ci_low"] < 0 < within["ci_high"]
    assert within["df"] == len(d) - 1 - 1 - 2 - 3  # intercept, ktrans, MVD, IFP, 3 model indicators
    corr = an.correlation_effect(d, "ktrans", "hypoxic_fraction_pct", cluster="model")
    slope = an.regression_slope(d, "hypoxic_fraction_pct", "ktrans")
    t = ktrans_hypoxia.conclusions(corr, slope, {}, beyond=within, beyond_pooled=pooled,
                                   true_parts={"partial": 0.0, "partial_pooled": -0.9})
    rows = t.set_index("endpoint")
    assert rows.loc["beyond_mvd_ifp", "role"] == "secondary"
    assert "within model" in rows.loc["beyond_mvd_ifp", "finding"]
    assert rows.loc["beyond_mvd_ifp", "estimate"] == within["estimate"]
    assert rows.loc["beyond_mvd_ifp", "truth"] == 0.0
    assert rows.loc["beyond_mvd_ifp_pooled", "role"] == "descriptive"
    assert np.isnan(rows.loc["beyond_mvd_ifp_pooled", "p_holm"])
    assert rows.loc["beyond_mvd_ifp_pooled", "truth"] == -0.9
    assert "descriptive" in rows.loc["beyond_mvd_ifp_pooled", "method"]
    assert set(rows.index) == set(ktrans_hypoxia.ENDPOINTS) | set(ktrans_hypoxia.DESCRIPTIVE_ENDPOINTS)
    # without the pooled one there is no descriptive row; on real data every truth is NaN
    bare = ktrans_hypoxia.conclusions(corr, slope, {}, beyond=within).set_index("endpoint")
    assert "beyond_mvd_ifp_pooled" not in bare.index and bare["truth"].isna().all()


# ------------------------------------------------------------------------------ ARRIVE power sentence

def test_arrive_power_sentence_says_exact_or_simulated():
    base = {"power_observed": 0.8, "power_observed_effect": -2.0, "power_alpha": 0.05, "power_units": "1/s"}
    exact, _ = wb_animals._power_text({**base, "power_n_sim": 0, "power_method": "exact noncentral t (df 9)"}, {})
    sim, _ = wb_animals._power_text({**base, "power_n_sim": 300, "power_observed_ci_low": 0.75,
                                     "power_observed_ci_high": 0.84, "power_method": "300 simulated studies"}, {})
    assert "exact noncentral t" in exact and "not simulated" in exact and "simulated studies" not in exact
    assert "300 simulated studies" in sim and "simulated on the study's own design" in sim
    for text in (exact, sim):
        assert "not a prospective sample-size justification" in text


def test_beyond_text_is_computed_from_the_numbers():
    d = _ktrans_study()
    covs = ["mvd_cd31_per_mm2", "ifp_mmHg"]
    within = an.partial_regression_effect(d, "hypoxic_fraction_pct", "ktrans", [*covs, "model"])
    pooled = an.partial_regression_effect(d, "hypoxic_fraction_pct", "ktrans", covs)
    text = ktrans_hypoxia.beyond_text(within, pooled, hist_col="hypoxia")
    assert "no evidence (alpha = 0.05) that Ktrans explains hypoxia beyond mvd_cd31_per_mm2 and ifp_mmHg within a " \
           "model" in text
    assert f"partial r = {within['estimate']:.2f}" in text and f"partial r = {pooled['estimate']:.2f}" in text
    assert "descriptive, pooled over the models" in text
    # a within-model effect that is there is named as such
    d2 = d.copy()
    d2["hypoxic_fraction_pct"] += -400 * (d2["ktrans"] - d2.groupby("model")["ktrans"].transform("mean"))
    w2 = an.partial_regression_effect(d2, "hypoxic_fraction_pct", "ktrans", [*covs, "model"])
    assert w2["p"] < 0.05
    assert "Ktrans explains hypoxia beyond mvd_cd31_per_mm2 and ifp_mmHg within a model" in \
        ktrans_hypoxia.beyond_text(w2, None, hist_col="hypoxia")


# ------------------------------------------------------------------------------ power of a correlation endpoint

def test_fisher_power_is_alpha_at_zero_and_matches_a_simulation_of_the_fisher_test():
    from studylib import stats

    assert abs(stats.fisher_power(0.0, 10).power - 0.05) < 1e-12
    p = stats.fisher_power(0.6, 30)  # n = 32 pairs
    assert p.n_sim == 0 and p.ci_low == p.power == p.ci_high and "Fisher-z" in p.method
    # Monte Carlo of the very test correlation() reports, at rho = 0.6, n = 32
    rng = np.random.default_rng(11)
    xy = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=(2000, 32))
    hits = sum(stats.correlation(pd.DataFrame({"x": s[:, 0], "y": s[:, 1]}), "x", "y").pooled.p < 0.05 for s in xy)
    lo, hi = stats.wilson_interval(int(hits), 2000, 0.999)
    assert lo <= p.power <= hi, (p.power, hits / 2000)
    assert stats.fisher_power(-0.6, 30).power == p.power  # two-sided
    assert stats.fisher_power(0.3, 30).power < p.power < stats.fisher_power(0.6, 60).power


def test_effect_power_of_a_correlation_part_and_its_bad_input():
    import pytest

    from studylib.errors import StudyError

    d = _ktrans_study()
    corr = an.correlation_effect(d, "ktrans", "hypoxic_fraction_pct", cluster="model")
    part = an.correlation_part(corr, "within_model_r")
    assert part["level"] == "within" and an.correlation_part(corr, "slope") is None
    out = an.effect_power(part, smallest_effect=0.5)
    from studylib import stats

    assert out["observed"].power == stats.fisher_power(part["estimate"], part["df"]).power
    assert out["sesoi"].effect == np.copysign(0.5, part["estimate"])
    assert out["numbers"]["power_n_sim"] == 0 and "Fisher-z" in out["numbers"]["power_method"]
    assert "Post-hoc power" in out["text"] and "(exact)" not in out["text"]
    obs, sesoi = wb_animals._power_text(out["numbers"], {})
    assert "Fisher-z approximation" in obs and "not simulated" in obs and sesoi and "same method" in sesoi
    with pytest.raises(StudyError, match="an r in"):
        an.effect_power(part, smallest_effect=1.5)
    with pytest.raises(StudyError, match="correlation_effect result"):
        an.effect_power({"estimate": 1.0})
    # the notebooks' one call: the primary row's part, or a reason when the primary is no correlation part
    same = an.primary_correlation_power(corr, "within_model_r", smallest_effect=0.5)
    assert same["numbers"] == out["numbers"] and same["text"] == out["text"]
    none = an.primary_correlation_power(corr, "slope")
    assert none["numbers"] == {} and "'slope' is not an estimable correlation part" in none["text"]


# ------------------------------------------------------------------------------ the slope within a model

def test_regression_slope_with_the_model_is_the_common_within_model_slope():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(4)
    k, m = 4, 6
    model = np.repeat([f"M{i}" for i in range(k)], m)
    c = np.repeat(np.arange(k, dtype=float), m)
    x = 10 * c + rng.normal(0, 3, k * m)          # % units
    y = 5.0 * c - 0.5 * (x - 10 * c) / 100 + rng.normal(0, 0.005, k * m)  # within: -0.5 per unit fraction
    d = pd.DataFrame({"model": model, "x": x, "y": y})
    w = an.regression_slope(d, "x", "y", x_scale=0.01, covariates=["model"])
    ols = smf.ols("y ~ I(x / 100) + C(model)", d).fit()
    np.testing.assert_allclose(w["estimate"], ols.params["I(x / 100)"], rtol=1e-9)
    np.testing.assert_allclose([w["ci_low"], w["ci_high"]], ols.conf_int().loc["I(x / 100)"], rtol=1e-9)
    np.testing.assert_allclose(w["p"], ols.pvalues["I(x / 100)"], rtol=1e-6)
    assert w["df"] == k * m - 2 - (k - 1) and w["scope"] == " within model"
    assert w["ci_low"] < -0.5 < w["ci_high"]
    pooled = an.regression_slope(d, "x", "y", x_scale=0.01)
    assert pooled["estimate"] > 0 and pooled["scope"] == ""   # pooled, the model means make it positive
    corr = an.correlation_effect(d, "x", "y", cluster="model")
    t = ktrans_hypoxia.conclusions(corr, w, {}).set_index("endpoint")
    assert t.loc["slope", "finding"].endswith("per hypoxic fraction within model")
    assert "adjusted for model" in t.loc["slope", "method"]
