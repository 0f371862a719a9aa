# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # BLZ945 and endogenous tumour iron: FeMRI R2* without a contrast agent
#
# **Question.** Tumour-associated macrophages (TAMs) store iron. If the CSF-1R inhibitor BLZ945 depletes
# TAMs, does the tumour's endogenous-iron R2\* fall, and does R2\* track the iron and macrophages that
# histology finds?
#
# **After** Leftin et al., *Sci Rep* 2019;9:857 ("FeMRI"): mammary tumour models TS1 and 99LN, BLZ945 vs
# control; 7 T 2D multi-gradient-echo relaxometry, TR 1.2 s, TE 3 ms × 16 echoes, flip 60°, in vivo
# 0.1 × 0.1 × 1 mm, respiratory gated. R2\* fell as BLZ945 depleted TAMs and correlated with histological
# iron (Prussian blue) and macrophage content (CD68).
#
# **Design of this study** (simulated): two tumour models (TS1, 99LN) × two groups (control, BLZ945), several
# animals per cell, MGE with 16 echoes (3–48 ms) at 7 T on several days of treatment, the first (day 0) before
# BLZ945 acts; Prussian blue and CD68 at the end. The treatment effect is adjusted for each animal's day-0 R2\*
# (ANCOVA: the groups can differ by chance before treatment) and for the tumour model; the two models get
# their own effects and a treatment × model interaction, because their TAM (and iron) content differs.
#
# **Physics in brief.** No contrast agent: the iron is the macrophages' own, stored as ferritin and
# haemosiderin. Clustered iron is a strong local field perturber, so it raises R2\* (static dephasing,
# R2\* = R2 + R2′) far more than R2 — gradient-echo relaxometry is the sensitive measurement, and a long
# echo train (16 echoes to 48 ms) samples the decay well for both short and long T2\* (Daldrup-Link,
# *Radiology* 2017;284:616, doi:10.1148/radiol.2017162759). The Rician noise floor matters here: late
# echoes of iron-rich voxels sit near the noise floor, and a plain log-linear fit reads them as slower decay
# (T2\* too long, R2\* too low), which would dilute exactly the effect we look for.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "blz945_femri"
preset = "demo"
cache_dir = None  # None: data/<preset>/derived
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
t2star_method = "auto"  # T2* fit: "auto" (noise-floor aware), "loglinear", "nonlinear"
control = None  # control group label; None: inferred (the group called control/vehicle)
treated = None  # treated group label; None: the other group
effect_day = None  # day of the group comparison; None: the last imaging day
day_model = "categorical"  # "linear": random intercept + slope per animal; "categorical": cell means per day
baseline = "ancova"  # "ancova": adjust for each animal's day-0 R2* (ANCOVA); None: no baseline adjustment
primary_endpoint = "treatment_effect"  # declared before the data: the baseline-adjusted effect (exp.ENDPOINTS)
max_failed_difference = 0.05  # warn when the groups' failed-fit fractions differ by more than this (0-1)
impute_failed = True  # sensitivity row: the failed-fit voxels' R2* at the echo train's bound (1000/TE_min)
power_n_sim = 300  # simulated studies of the fitted design for its power (ARRIVE: sample size)
smallest_effect = None  # smallest R2* effect of interest (1/s); None: study.json's smallest_effect_of_interest
seed = 0
alpha = 0.05

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import blz945_femri as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the multi-gradient-echo scans (lazily)

# %%
ds = sl.load_study(manifest, study, "MEGRE")
control, treated = sl.pick_groups(ds, control, treated)
design = sl.design_table(ds)
design

# %% [markdown]
# ## 3. Fit T2\*/R2\* maps (noise-floor aware, noise SD from the background ROI)

# %%
maps = sl.fit_relaxation_maps(ds, method=t2star_method, cache_dir=cache_dir, study=study)
maps

# %% [markdown]
# ## 4. Quality control
# Endogenous-iron R2\* in the tumour over the first echo, one representative animal per group and day;
# then the fit quality with failed voxels in red.

# %%
anat = sl.anatomy(ds)
fig = plots.representative_maps(maps["r2star"], anat, ds["roi"], title="tumour R2* (endogenous iron)")

# %%
fig = plots.fit_quality_maps(maps[sl.quality_variable(maps)], maps["fit_ok"], anat, ds["roi"])

# %% [markdown]
# ## 5. Tumour table

# %%
summary, sessions = sl.roi_tables(maps, ds, variables=["r2star", "t2star"],
                                  max_failed_difference=max_failed_difference)
display(sl.failed_fit_table(sessions, max_difference=None))  # noqa: F821 (IPython)
sessions_imputed, r2star_bound = None, sl.echo_train_bound(ds, "r2star")
if impute_failed:  # sensitivity: failed voxels (the most iron-laden fail first) at the fastest resolvable decay
    _, sessions_imputed = sl.roi_tables(maps, ds, variables=["r2star"], impute_failed={"r2star": r2star_bound})
sessions

# %% tags=["key-figure"]
fig = plots.spaghetti(sessions, "r2star", ylabel="tumour R2* (1/s)", title="tumour R2* per animal")

# %% [markdown]
# ## 6. Mixed-effects model, adjusted for the day-0 R2\*
# Tumour R2\* after day 0 with a mean per group and day (no straight line imposed: BLZ945 depletes TAMs
# within days and then levels off), each animal's day-0 R2\* as a covariate (ANCOVA; the day-0 scan is taken
# before BLZ945 acts and leaves the response), the tumour model as a covariate and a random intercept per
# animal; the `treated` coefficient is the BLZ945 − control difference of tumour R2\* on `effect_day` between
# animals of equal day-0 R2\*, with Satterthwaite degrees of freedom. The same contrast without the baseline is
# kept as a sensitivity analysis.

# %%
covariates = sl.model_covariates(sessions)
effect = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=effect_day,
                                day_model=day_model, covariates=covariates, baseline=baseline)
unadjusted = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=effect_day,
                                    day_model=day_model, covariates=covariates)
print(f"difference on day {effect['at_day']:g}; adjustment: {effect['adjustment']}")
print(sl.model_diagnostics(effect))
if effect["adjustment"] != "none":
    print(exp.baseline_text(sessions, effect, unadjusted, control=control, treated=treated, alpha=alpha))
imputed = None
if sessions_imputed is not None:
    imputed = sl.longitudinal_effect(sessions_imputed, "r2star", control=control, treated=treated, at_day=effect_day,
                                     day_model=day_model, covariates=covariates, baseline=baseline)
    print(exp.imputation_text(effect, imputed, sessions, value=r2star_bound))
effect["model"].fixed

# %% [markdown]
# ### Power of this design (ARRIVE item 2)
# The fitted model simulated on this study's own animals and sessions, refitted each time: the post-hoc power
# for the observed effect (a function of its p-value, not a justification of the sample size, which has to
# be made before the data) and, when the study declares one (`smallest_effect` or `study.json`'s
# `smallest_effect_of_interest`), the power for the smallest effect of interest.

# %%
if smallest_effect is None:
    smallest_effect = sl.smallest_effect_of_interest(sl.study_info(manifest, study))
power = sl.effect_power(effect, smallest_effect=smallest_effect, n_sim=power_n_sim, seed=seed, units="1/s",
                        alpha=alpha)
print(power["text"])

# %% [markdown]
# ### Treatment × tumour model
# One BLZ945 − control effect per tumour model (same model of time and baseline) and their difference, the
# interaction: the models start with different TAM iron, so a proportional depletion removes more R2\* in one.

# %%
interaction = None
if covariates:
    interaction = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=effect_day,
                                         day_model=day_model, baseline=baseline, by="model")
    print(interaction["method"])
    display(interaction["per_level_table"])  # noqa: F821 (IPython)

# %% [markdown]
# ## 7. Imaging vs histology
# Tumour R2\* against the Prussian-blue iron area on a common day: the last imaging day every group shares, so
# that no animal is compared at an earlier time; animals that left before it are named and left out.
# BLZ945 removes iron-laden TAMs and the two models start with different TAM content, so R2\* and iron both
# differ between the group × model cells by design: the r pooled over all animals mostly restates that
# difference. The question "does R2\* track iron within a group?" is answered by the **within-cell** correlation
# (repeated-measures / partial r with cell indicators, Fisher-z CI and p with df = n − cells − 1); the pooled r
# is kept as a descriptive row. CI and p of each part come from the same Fisher-z approximation (p < α exactly
# when the CI excludes 0); the t test of r, t = r √(df/(1 − r²)), tests the same null with the same df and is
# not printed beside it (a Pearson-r p from `scipy.stats.pearsonr` uses df = n − 2, right only for the pooled r).

# %%
histology = sl.load_histology(manifest, study)
animals = exp.histology_cells(sl.animal_table(sessions, histology, day="common"))
print(f"imaging vs histology on day {animals.attrs['day']:g}; left out: {list(animals.attrs['left_out']) or 'none'}")
hist_col = sl.histology_column(histology, ("prussian", "iron"))
corr = sl.correlation_effect(animals, "r2star", hist_col, cluster="cell", alpha=alpha)
display(corr["table"])  # noqa: F821 (IPython)
truth_sessions = sl.load_truth_table(manifest, study, "sessions.csv")
true_parts = sl.analysis.true_correlation_parts(
    None if truth_sessions is None else exp.histology_cells(
        truth_sessions[truth_sessions["day"].astype(float) == animals.attrs["day"]]),
    "tumour_r2star_per_s", hist_col, cluster="cell", histology=histology)
print(sl.correlation_levels_text(corr, x="tumour R2*", y=hist_col, cluster="cell", alpha=alpha))
pooled = corr["parts"]["pooled"]
fig = plots.correlation_scatter(animals, "r2star", hist_col, hue="cell", xlabel="tumour R2* (1/s)",
                                r=pooled["estimate"], r_ci=(pooled["ci_low"], pooled["ci_high"]),
                                title=f"pooled r (descriptive); within-cell r = {corr['estimate']:.2f}")

# %% [markdown]
# ## 8. Conclusions: the paper's finding, and the simulated truth

# %%
truth = sl.load_truth(manifest, study)
conclusions = exp.conclusions(effect, corr, truth, control=control, treated=treated, hist_col=hist_col,
                              primary=primary_endpoint, unadjusted=unadjusted, interaction=interaction,
                              histology_day=animals.attrs, alpha=alpha, imputed=imputed, imputed_value=r2star_bound,
                              true_parts=true_parts)
sl.record(conclusions, study=study, **power["numbers"])
print(sl.summary_lines(conclusions))
conclusions

# %% [markdown]
# ### What the drawn outlines alone do to the R2\* effect (simulated truth only)
# The truth R2\* map averaged over the ROIs as drawn and over the true tumours on the effect day: the outlines'
# part of the estimate's distance from the truth; the rest is fit, noise and partial volume.

# %%
row = conclusions.set_index("endpoint").loc["treatment_effect"]
outline = sl.outline_contrast(ds, manifest, study, "r2star_per_s", regions=[1], day=effect["at_day"],
                              control=control, treated=treated, estimate=float(row["estimate"]), units="1/s")
print(outline["text"])

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# ## Intermediate results kept for inspection
# The fitted maps are cached (above); the tables are stored beside them, content-addressed, so
# `studylib show blz945_femri` lists them and `studylib.workbook.load_intermediate("blz945_femri", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, upstream=maps,
               roi_summary=(summary, "tidy ROI statistics per animal, day, ROI and map"),
               sessions=(sessions, "tumour means per animal and day"),
               animals=(animals, "imaging vs histology, one row per animal"),
               model_fixed=(effect["model"].fixed, f"mixed model (adjustment: {effect['adjustment']}): fixed effects"),
               conclusions=(conclusions, "finding vs paper and truth"))
