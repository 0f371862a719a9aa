"""Design-aware correlation (studylib.stats.correlation) and partial regression (issue 13).

Pooled vs within-cluster vs between-cluster correlation, partial correlation, CI/p agreement,
small-sample coverage, cross-checks against scipy and statsmodels, bad input.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_h
from scipy import stats as sps

import studylib as sl
from studylib import stats as st
from studylib.errors import StatsFitWarning, StatsInputError


def _excludes_zero(part) -> bool:
    return part.ci_low > 0 or part.ci_high < 0


def _orthonormal_within(rng, k, m):
    """Per cluster, two centred vectors of length m with zero sample correlation and unit sum of squares."""
    a = rng.normal(size=(k, m))
    b = rng.normal(size=(k, m))
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    b -= (a * b).sum(1, keepdims=True) / (a * a).sum(1, keepdims=True) * a
    return a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)


# ------------------------------------------------------------------------- Simpson's paradox
def test_simpson_pooled_strong_within_zero():
    """Four tumour models whose means lie on a line; inside each model x and y are exactly uncorrelated."""
    rng = np.random.default_rng(1)
    k, m = 4, 8
    a, b = _orthonormal_within(rng, k, m)
    centres = np.arange(k, dtype=float) * 3.0
    d = pd.DataFrame({"model": np.repeat([f"PDX{i}" for i in range(k)], m),
                      "adc": (centres[:, None] + 2.0 * a).ravel(),
                      "collagen": (centres[:, None] + [[0.8], [-1.0], [0.5], [-0.3]] + 2.0 * b).ravel()})
    res = st.correlation(d, "adc", "collagen", cluster="model")
    assert res.pooled.r > 0.8 and res.pooled.p < 1e-6 and res.pooled.ci_low > 0.6
    assert res.pooled.df == 30 and res.pooled.n == 32
    assert abs(res.within.r) < 1e-12  # built to be exactly 0
    assert res.within.p > 0.05 and res.within.ci_low < 0 < res.within.ci_high
    assert res.within.df == 32 - 4 - 1 and res.within.n == 32 and res.within.n_clusters == 4
    assert res.between.r > 0.9 and res.between.df == 2 and res.between.n == 4
    tab = res.table()
    assert list(tab.level) == ["pooled", "within", "between"]


def test_within_detects_true_within_r_06_that_pooling_hides():
    """Within-model r = 0.6 by construction (4 models x 8); model means run the other way."""
    rng = np.random.default_rng(2)
    k, m = 4, 8
    a, b = _orthonormal_within(rng, k, m)
    y_within = 0.6 * a + 0.8 * b  # sample correlation with a exactly 0.6 in every model
    centres = np.arange(k, dtype=float)
    d = pd.DataFrame({"model": np.repeat(np.arange(k), m), "ktrans": (centres[:, None] + 0.5 * a).ravel(),
                      "hypoxia": (-centres[:, None] + 0.5 * y_within).ravel()})
    res = st.correlation(d, "ktrans", "hypoxia", cluster="model")
    np.testing.assert_allclose(res.within.r, 0.6, atol=1e-12)
    assert res.within.p < 0.001 and res.within.ci_low > 0.25 and res.within.ci_low < 0.6 < res.within.ci_high
    assert res.pooled.r < 0  # pooling reverses the sign


def test_within_detects_random_within_r_06():
    """A random study with true within-model rho = 0.6, 4 clusters x 8, large cluster offsets."""
    rng = np.random.default_rng(3)
    k, m, rho = 4, 8, 0.6
    xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=k * m)
    off = np.repeat(rng.normal(scale=5, size=(k, 2)), m, axis=0)
    d = pd.DataFrame({"c": np.repeat(np.arange(k), m), "x": xy[:, 0] + off[:, 0], "y": xy[:, 1] + off[:, 1]})
    res = st.correlation(d, "x", "y", cluster="c")
    assert res.within.p < 0.05 and res.within.ci_low > 0 and res.within.ci_low < rho < res.within.ci_high
    # power over repeated studies: Fisher approx. P(z > 1.96 - atanh(.6) sqrt(26)) = 0.94
    hits = 0
    for _ in range(200):
        xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=k * m)
        off = np.repeat(rng.normal(scale=5, size=(k, 2)), m, axis=0)
        d = pd.DataFrame({"c": np.repeat(np.arange(k), m), "x": xy[:, 0] + off[:, 0], "y": xy[:, 1] + off[:, 1]})
        hits += st.correlation(d, "x", "y", cluster="c").within.p < 0.05
    assert 0.88 <= hits / 200 <= 0.99, hits


# ------------------------------------------------------------------------- coverage, n = 8
@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_fisher_ci_covers_truth_at_n8_and_agrees_with_p(rho):
    rng = np.random.default_rng(20240613 + int(rho * 10))
    n, reps = 8, 1000
    xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=(reps, n))
    hits = disagree = rejections = 0
    for i in range(reps):
        part = st.correlation(pd.DataFrame({"x": xy[i, :, 0], "y": xy[i, :, 1]}), "x", "y").pooled
        assert part.df == 6 and part.n == 8
        hits += part.ci_low <= rho <= part.ci_high
        rejections += part.p < 0.05
        disagree += (part.p < 0.05) != _excludes_zero(part)
    assert disagree == 0
    assert 0.94 <= hits / reps <= 0.96, hits / reps
    if rho == 0:
        assert 0.04 <= rejections / reps <= 0.06, rejections / reps


@pytest.mark.filterwarnings("ignore:.*between part not estimable")
def test_within_ci_coverage_small_clusters():
    """rmcorr with 3 clusters x 4 (df = 8): the within r behaves like a simple r on N - k + 1 = 10 pairs."""
    rng = np.random.default_rng(77)
    k, m, rho, reps = 3, 4, 0.5, 1000
    hits = disagree = 0
    cl = np.repeat(np.arange(k), m)
    for _ in range(reps):
        xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=k * m)
        off = np.repeat(rng.normal(scale=3, size=(k, 2)), m, axis=0)
        w = st.correlation(pd.DataFrame({"c": cl, "x": xy[:, 0] + off[:, 0], "y": xy[:, 1] + off[:, 1]}),
                           "x", "y", cluster="c").within
        hits += w.ci_low <= rho <= w.ci_high
        disagree += (w.p < 0.05) != _excludes_zero(w)
    assert disagree == 0
    assert 0.935 <= hits / reps <= 0.965, hits / reps


# ------------------------------------------------------------------------- invariant (hypothesis)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st_h.integers(0, 2 ** 31 - 1), n=st_h.integers(6, 40), k=st_h.integers(2, 6),
       method=st_h.sampled_from(["pearson", "spearman"]), ci=st_h.sampled_from([0.8, 0.9, 0.95, 0.99]),
       adjust=st_h.sampled_from([(), ("g",), ("z",), ("g", "z")]), slope=st_h.floats(-2, 2))
def test_p_below_alpha_exactly_when_ci_excludes_zero(seed, n, k, method, ci, adjust, slope):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, size=n)
    x = rng.normal(size=n) + c
    d = pd.DataFrame({"x": x, "y": slope * x + rng.normal(size=n), "c": c, "g": rng.choice(["a", "b"], size=n),
                      "z": rng.normal(size=n)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatsFitWarning)
        try:
            res = st.correlation(d, "x", "y", cluster="c", adjust=adjust, method=method, ci=ci)
        except StatsInputError:
            return  # too few rows left after adjusting (tested separately)
    for part in res.parts():
        if np.isfinite(part.p):
            assert (part.p < 1 - ci) == _excludes_zero(part), part
            assert part.ci_low <= part.r <= part.ci_high
            assert part.df == part.n - 2 - part.n_adjust
        else:
            assert part.note and np.isnan(part.ci_low)


# ------------------------------------------------------------------------- cross-checks
def test_pooled_matches_scipy_pearsonr_and_spearmanr():
    rng = np.random.default_rng(5)
    x = rng.normal(size=15)
    y = 0.4 * x + rng.normal(size=15)
    d = pd.DataFrame({"x": x, "y": y})
    p = st.correlation(d, "x", "y", ci=0.9).pooled
    ref = sps.pearsonr(x, y)
    ref_ci = ref.confidence_interval(confidence_level=0.9)  # scipy's Fisher-z interval
    np.testing.assert_allclose([p.r, p.ci_low, p.ci_high], [ref.statistic, ref_ci.low, ref_ci.high], rtol=1e-10)
    np.testing.assert_allclose(p.p, 2 * sps.norm.sf(abs(math.atanh(ref.statistic)) * math.sqrt(12)), rtol=1e-10)
    assert abs(p.p - ref.pvalue) < 0.02  # Fisher z vs exact t test: close, not equal
    s = st.correlation(d, "x", "y", method="spearman").pooled
    rs = sps.spearmanr(x, y).statistic
    np.testing.assert_allclose(s.r, rs, rtol=1e-12)
    np.testing.assert_allclose(s.se_z, math.sqrt((1 + rs ** 2 / 2) / 12), rtol=1e-12)


def test_within_matches_ancova_with_cluster_dummies_and_rm_correlation():
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(6)
    sizes = [3, 5, 4, 6, 2]
    c = np.repeat(np.arange(len(sizes)), sizes)
    off = rng.normal(scale=2, size=(len(sizes), 2))[c]
    x = rng.normal(size=c.size) + off[:, 0]
    y = 0.5 * x + rng.normal(size=c.size) + off[:, 1]
    d = pd.DataFrame({"animal": c.astype(str), "x": x, "y": y})
    w = st.correlation(d, "x", "y", cluster="animal").within
    fit = smf.ols("y ~ C(animal) + x", data=d).fit()
    aov = sm.stats.anova_lm(fit, typ=2)
    ss_x, ss_res = aov.loc["x", "sum_sq"], aov.loc["Residual", "sum_sq"]
    r_ancova = math.copysign(math.sqrt(ss_x / (ss_x + ss_res)), fit.params["x"])
    np.testing.assert_allclose(w.r, r_ancova, rtol=1e-10)
    assert w.df == fit.df_resid == c.size - len(sizes) - 1
    assert w.n == c.size and w.n_clusters == len(sizes)
    assert abs(w.p - fit.pvalues["x"]) < 0.02  # Fisher z vs the exact t test of the common slope
    rm = st.rm_correlation(d, "x", "y", "animal")
    np.testing.assert_allclose([w.r, w.ci_low, w.ci_high], [rm.r, rm.ci_low, rm.ci_high], rtol=1e-10)
    b = st.correlation(d, "x", "y", cluster="animal").between
    means = d.groupby("animal")[["x", "y"]].mean()
    np.testing.assert_allclose(b.r, sps.pearsonr(means.x, means.y).statistic, rtol=1e-10)
    assert b.df == len(sizes) - 2 and b.n == len(sizes)


@pytest.mark.filterwarnings("ignore:.*between part not estimable")
def test_partial_correlation_matches_ols_t_and_costs_df():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(8)
    n = 24
    g = np.repeat(["vehicle", "ampb", "high"], 8)
    mvd = rng.normal(size=n)
    x = mvd + (g == "ampb") * 2 + rng.normal(size=n)
    y = 0.5 * x - mvd + (g == "high") + rng.normal(size=n)
    d = pd.DataFrame({"x": x, "y": y, "group": g, "mvd": mvd})
    part = st.correlation(d, "x", "y", adjust=("group", "mvd")).pooled
    fit = smf.ols("y ~ x + C(group) + mvd", data=d).fit()
    t, dof = fit.tvalues["x"], fit.df_resid
    np.testing.assert_allclose(part.r, t / math.sqrt(t * t + dof), rtol=1e-10)
    assert part.df == dof == n - 2 - 3 and part.n_adjust == 3
    np.testing.assert_allclose(part.se_z, 1 / math.sqrt(dof - 1))
    # adjusting for a column constant within clusters costs nothing in the within part
    d["model"] = np.repeat(["A", "B", "C", "D"], 6)
    d["site"] = np.repeat(["s1", "s2"], 12)  # nested in model
    a = st.correlation(d, "x", "y", cluster="model")
    b = st.correlation(d, "x", "y", cluster="model", adjust="site")
    np.testing.assert_allclose(a.within.r, b.within.r, rtol=1e-10)
    assert a.within.df == b.within.df


def test_partial_regression_matches_statsmodels_and_exact_ci():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(9)
    n = 16
    mvd, ifp = rng.normal(size=n), rng.normal(size=n)
    ktrans = 0.5 * mvd + rng.normal(size=n)
    hyp = -0.6 * ktrans + 0.3 * mvd - 0.2 * ifp + 0.5 * rng.normal(size=n)
    d = pd.DataFrame({"hypoxia": hyp, "ktrans": ktrans, "mvd": mvd, "ifp": ifp})
    res = st.partial_regression(d, "hypoxia", "ktrans", ["mvd", "ifp"])
    fit = smf.ols("hypoxia ~ ktrans + mvd + ifp", data=d).fit()
    lo, hi = fit.conf_int(0.05).loc["ktrans"]
    np.testing.assert_allclose([res.coef, res.se, res.t, res.p, res.ci_low, res.ci_high],
                               [fit.params["ktrans"], fit.bse["ktrans"], fit.tvalues["ktrans"],
                                fit.pvalues["ktrans"], lo, hi], rtol=1e-8)
    assert res.df == fit.df_resid == n - 4
    reduced = smf.ols("hypoxia ~ mvd + ifp", data=d).fit()
    np.testing.assert_allclose([res.r2_full, res.r2_reduced], [fit.rsquared, reduced.rsquared], rtol=1e-10)
    np.testing.assert_allclose(res.delta_r2, res.partial_r ** 2 * (1 - res.r2_reduced), rtol=1e-10)
    np.testing.assert_allclose(res.partial_r, st.correlation(d, "ktrans", "hypoxia", adjust=("mvd", "ifp")).pooled.r)
    assert res.partial_r_ci_low < res.partial_r < res.partial_r_ci_high
    np.testing.assert_allclose(res.coefficients.set_index("term").loc["mvd", "coef"], fit.params["mvd"])
    # categorical covariates enter as dummies
    d["model"] = np.repeat(["A", "B"], 8)
    rc = st.partial_regression(d, "hypoxia", "ktrans", "model")
    fc = smf.ols("hypoxia ~ ktrans + C(model)", data=d).fit()
    np.testing.assert_allclose([rc.coef, rc.p], [fc.params["ktrans"], fc.pvalues["ktrans"]], rtol=1e-8)


def test_partial_regression_exact_ci_coverage_and_agreement():
    """Exact CI of the partial r (n = 9, one covariate): coverage ~95 %, never disagrees with the t test."""
    rng = np.random.default_rng(10)
    reps, n, rho_p = 300, 9, 0.5
    hits = disagree = 0
    for _ in range(reps):
        z = rng.normal(size=n)
        e = rng.multivariate_normal([0, 0], [[1, rho_p], [rho_p, 1]], size=n)
        d = pd.DataFrame({"x": z + e[:, 0], "y": 2 * z + e[:, 1], "z": z})
        r = st.partial_regression(d, "y", "x", "z")
        hits += r.partial_r_ci_low <= rho_p <= r.partial_r_ci_high
        excl = r.partial_r_ci_low > 0 or r.partial_r_ci_high < 0
        disagree += (r.p < 0.05) != excl
        disagree += (r.p < 0.05) != (r.ci_low > 0 or r.ci_high < 0)
    assert disagree == 0
    assert abs(hits / reps - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / reps), hits / reps


def test_fisher_interval_doc_numbers_and_facade():
    lo, hi, p, se = st.fisher_interval(0.5, 18)
    z = math.atanh(0.5)
    np.testing.assert_allclose([lo, hi, p, se], [math.tanh(z - 1.959963985 / math.sqrt(17)),
                                                 math.tanh(z + 1.959963985 / math.sqrt(17)),
                                                 2 * sps.norm.sf(z * math.sqrt(17)), 1 / math.sqrt(17)], rtol=1e-8)
    assert sl.correlation is st.correlation and sl.partial_regression is st.partial_regression


# ------------------------------------------------------------------------- bad input
def _toy(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": x + rng.normal(size=n), "c": np.arange(n) % 3,
                         "g": np.where(np.arange(n) % 2, "a", "b")})


def test_bad_input_missing_columns_and_types():
    d = _toy()
    with pytest.raises(StatsInputError, match=r"\['nope'\].*not in the data"):
        st.correlation(d, "x", "nope")
    with pytest.raises(StatsInputError, match="'absent'"):
        st.correlation(d, "x", "y", cluster="absent")
    with pytest.raises(StatsInputError, match="'mvd'"):
        st.correlation(d, "x", "y", adjust=["mvd"])
    with pytest.raises(StatsInputError, match="x column 'g' is not numeric"):
        st.correlation(d, "g", "y")
    with pytest.raises(StatsInputError, match="method"):
        st.correlation(d, "x", "y", method="kendall")
    with pytest.raises(StatsInputError, match="ci must be"):
        st.correlation(d, "x", "y", ci=95)
    with pytest.raises(StatsInputError, match="also in adjust"):
        st.correlation(d, "x", "y", cluster="c", adjust=["c"])
    with pytest.raises(StatsInputError, match="DataFrame"):
        st.correlation({"x": [1, 2]}, "x", "y")
    with pytest.raises(StatsInputError, match="constant"):
        st.correlation(d.assign(y=1.0), "x", "y")
    with pytest.raises(StatsInputError, match="missing_y"):
        st.partial_regression(d, "missing_y", "x", ["c"])
    with pytest.raises(StatsInputError, match="rank deficient"):
        st.partial_regression(d.assign(x2=2 * d.x), "y", "x", ["x2"])


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_too_few_pairs(n):
    with pytest.raises(StatsInputError, match=f"at least 4 complete rows.*got {n}"):
        st.correlation(_toy().iloc[:n], "x", "y")


@pytest.mark.filterwarnings("ignore:.*between part not estimable")
def test_non_finite_values():
    d = _toy(12)
    d.loc[[0, 5], "x"] = np.nan
    d.loc[7, "y"] = None
    res = st.correlation(d, "x", "y")
    assert res.n_dropped == 3 and res.pooled.n == 9
    np.testing.assert_allclose(res.pooled.r, sps.pearsonr(d.dropna().x, d.dropna().y).statistic)
    d.loc[3, "y"] = np.inf
    with pytest.raises(StatsInputError, match="y column 'y' has 1 infinite value.*rows \\[3\\]"):
        st.correlation(d, "x", "y")
    e = _toy(12)
    e.loc[2, "c"] = np.nan  # a row without a cluster is dropped everywhere
    assert st.correlation(e, "x", "y", cluster="c").n_dropped == 1
    with pytest.raises(StatsInputError, match="only 3 complete|at least 4 complete rows.*got 3.*9 dropped"):
        st.correlation(_toy(12).assign(x=[np.nan] * 9 + [1.0, 2.0, 3.0]), "x", "y")


def test_single_observation_cluster_is_left_out_of_within_only():
    rng = np.random.default_rng(12)
    c = np.repeat([0, 1, 2, 3], 6)
    x = rng.normal(size=24) + c
    d = pd.DataFrame({"c": c, "x": x, "y": 0.5 * x + rng.normal(size=24)})
    lonely = pd.DataFrame({"c": [9], "x": [10.0], "y": [-10.0]})
    base = st.correlation(d, "x", "y", cluster="c")
    res = st.correlation(pd.concat([d, lonely], ignore_index=True), "x", "y", cluster="c")
    # within: identical r, df, CI (a singleton's indicator would fit it exactly and spend its one df)
    assert (res.within.r, res.within.df, res.within.ci_low) == pytest.approx((base.within.r, base.within.df,
                                                                               base.within.ci_low), rel=1e-12)
    assert res.within.n == 24 and res.within.n_clusters == 4 and "single observation" in res.within.note
    assert "9" in res.within.note
    # pooled and between keep it
    assert res.pooled.n == 25 and res.between.n == 5 and res.between.n_clusters == 5
    assert res.between.r != pytest.approx(base.between.r)


def test_unestimable_parts_are_nan_with_a_reason_and_a_warning():
    d = _toy(12)
    d["solo"] = np.arange(12)  # every cluster a singleton
    with pytest.warns(StatsFitWarning, match="within part not estimable"):
        res = st.correlation(d, "x", "y", cluster="solo")
    assert np.isnan(res.within.r) and "single observation" in res.within.note
    assert np.isfinite(res.between.r) and res.between.n == 12  # means of singletons = the rows themselves
    with pytest.warns(StatsFitWarning, match="between part not estimable"):
        res = st.correlation(d, "x", "y", cluster="c")  # 3 clusters: df = 1
    assert np.isnan(res.between.p) and "df = 1" in res.between.note
    assert np.isfinite(res.within.r)
    flat = d.assign(x=np.repeat([1.0, 2.0, 3.0, 4.0], 3), c=np.repeat([0, 1, 2, 3], 3))  # x constant in clusters
    with pytest.warns(StatsFitWarning, match="no variation left"):
        res = st.correlation(flat, "x", "y", cluster="c")
    assert np.isnan(res.within.r) and np.isfinite(res.pooled.r)
