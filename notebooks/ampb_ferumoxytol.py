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
# # Amphotericin B and macrophage iron in glioblastoma: ferumoxytol-enhanced R2*
#
# **Question.** Does amphotericin B (Amp B), which activates monocytes, macrophages and microglia, bring
# more iron-laden monocytes/macrophages into a mouse glioblastoma than vehicle does, and can ferumoxytol-
# enhanced T2\* MRI see it without histology?
#
# **After** Yang et al., *Neuro-Oncology* 2017;19:364: mouse glioblastoma, Amp B vs vehicle, as few as
# 7 days of treatment; 9.4 T Bruker multi-gradient-echo T2\* maps after i.v. ferumoxytol; tumours of Amp B
# mice showed more iron signal (shorter T2\*, higher R2\*), and immunohistochemistry found more macrophages
# and microglia co-localised with the iron.
#
# **Design of this study** (simulated by `studylib.synth`, see the table below for the exact numbers):
# two groups (vehicle, Amp B), several animals per group, multi-gradient-echo at 9.4 T on several days.
# Ferumoxytol is the imaging agent of both groups: each imaging day has a pre-contrast scan the day before,
# just before the i.v. injection, and the post-contrast scan 24 h after it. Histology (macrophage counts) at
# the end. The animal, not the voxel, is the unit of analysis. The primary endpoint is the iron signal of
# each session, ΔR2\* = R2\*(post) − R2\*(pre): it removes each animal's native R2\* and the iron left from
# earlier doses (tissue clears ferumoxytol over weeks), which a post-contrast R2\* alone still carries (a
# secondary row).
#
# **Physics in brief.** Ferumoxytol is an ultrasmall superparamagnetic iron oxide (USPIO, 20–30 nm,
# carboxymethyl-dextran coat). Each particle distorts the magnetic field around it; water diffusing
# through those gradients dephases. A spin echo refocuses the static part of that dephasing, a gradient
# echo does not, so R2\* = R2 + R2′ grows more per mM of iron than R2 does: T2\*-weighted gradient echo is
# the most sensitive way to see iron, more so at high field and long echo times (Daldrup-Link,
# *Radiology* 2017;284:616, doi:10.1148/radiol.2017162759). Ferumoxytol circulates for hours (blood
# half-life 10–14 h in patients), so early images show blood-pool iron; macrophages phagocytose the
# particles and carry them into the tumour, which is why tumour enhancement peaks 24–48 h after injection,
# when the blood pool has cleared and the iron left is cellular. The change is approximately linear in
# tissue iron: ΔR2\* ≈ r2\*·[Fe], with r2\* ≈ 57–60 s⁻¹ mM⁻¹ at 1.5–3 T.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "ampb_ferumoxytol"
preset = "demo"
cache_dir = None  # None: data/<preset>/derived (studylib.cache default)
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
t2star_method = "auto"  # T2* fit: "auto" (noise-floor aware), "loglinear", "nonlinear"
control = None  # control group label; None: from the data (the group called vehicle/control)
treated = None  # treated group label; None: the other group
effect_day = None  # day of the group comparison; None: the last imaging day
day_model = "categorical"  # "categorical": cell means per day; "linear": random intercept + slope per animal
primary_endpoint = "treatment_effect"  # the one confirmatory finding (exp.ENDPOINTS: ΔR2* effect); "histology_r", "absolute_r2star" are secondary
max_pair_gap_days = 2  # a pre-contrast scan pairs with the post-contrast scan at most this many days later
max_failed_difference = 0.05  # warn when the groups' failed-fit fractions differ by more than this (0-1)
impute_failed = True  # sensitivity row: the failed-fit voxels' R2* at the echo train's bound (1000/TE_min)
power_n_sim = 300  # simulated studies of the fitted design for its power (ARRIVE: sample size)
smallest_effect = None  # smallest ΔR2* effect of interest (1/s); None: study.json's smallest_effect_of_interest
seed = 0
alpha = 0.05

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import ampb_ferumoxytol as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data
# Every file of this study listed in the manifest must exist inside the manifest's folder and match its sha256.

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the multi-gradient-echo scans (lazily)
# One Dask chunk per scan; nothing is read until the fit runs. Pre- and post-contrast scans are both MEGRE,
# each on its own day; their sidecars say which is which (a post-contrast scan names its `Agent`).

# %%
ds = sl.load_study(manifest, study, "MEGRE")
control, treated = sl.pick_groups(ds, control, treated)
phases = exp.contrast_phases(manifest, study)
design = sl.design_table(ds)
display(phases.pivot_table(index="phase", columns="day", values="animal", aggfunc="count", fill_value=0))  # noqa: F821
design

# %% [markdown]
# ## 3. Fit T2\*/R2\* maps
# The default fit models the Rician noise floor (the noise SD comes from the background ROI), so short
# T2\* — exactly the iron-laden voxels — is not biased upward as a plain log-linear fit would be. It is a
# mono-exponential model: where iron-laden cells dephase water in the static regime, the earliest echoes see
# the slower, Gaussian start of the decay, and the fit reads R2\* somewhat low (the truth column below is the
# asymptotic R2\* = R2 + R2′ of that physics).

# %%
maps = sl.fit_relaxation_maps(ds, method=t2star_method, cache_dir=cache_dir, study=study)
maps

# %% [markdown]
# ## 4. Quality control
# R2\* over the first-echo image for one representative animal per group (rows) on every day (columns: each
# pre-contrast day is followed by its post-contrast day), shown inside the tumour; then the fit-quality map with
# failed voxels in red.

# %%
anat = sl.anatomy(ds)
fig = plots.representative_maps(maps["r2star"], anat, ds["roi"], title="tumour R2* (pre / post ferumoxytol)")

# %%
fig = plots.fit_quality_maps(maps[sl.quality_variable(maps)], maps["fit_ok"], anat, ds["roi"])

# %% [markdown]
# ## 5. Tumour table
# One row per animal and scan: mean tumour R2\* and T2\*, tumour volume, plus the muscle reference; then the
# post-contrast sessions, each with its pre-contrast R2\* and ΔR2\* = R2\*(post) − R2\*(pre). Voxels whose fit
# failed are left out of the means (their fraction per group and scan is the table below); the most iron-laden
# voxels, whose signal is gone by the later echoes, fail first. As a sensitivity analysis the same ΔR2\* table is
# built a second time with every failed voxel's R2\* set to the fastest decay the echo train resolves,
# 1000/TE_min, in the pre- and the post-contrast scans.

# %%
summary, scans = sl.roi_tables(maps, ds, variables=["r2star", "t2star"], max_failed_difference=max_failed_difference)
display(sl.failed_fit_table(scans, max_difference=None))  # noqa: F821 (IPython)
sessions = exp.delta_table(scans, phases, max_gap_days=max_pair_gap_days)
sessions_imputed, r2star_bound = None, sl.echo_train_bound(ds, "r2star")
if impute_failed:  # sensitivity: failed voxels (the most iron-laden fail first) at the fastest resolvable decay
    _, scans_imputed = sl.roi_tables(maps, ds, variables=["r2star"], impute_failed={"r2star": r2star_bound})
    sessions_imputed = exp.delta_table(scans_imputed, phases, max_gap_days=max_pair_gap_days)
sessions

# %% tags=["key-figure"]
fig = plots.spaghetti(sessions, "delta_r2star", ylabel="tumour ΔR2* = post − pre (1/s)",
                      title="tumour ΔR2* per animal (iron signal of each dose)")

# %%
fig = plots.spaghetti(scans, "r2star", ylabel="tumour R2* (1/s)", title="tumour R2*, pre- and post-contrast scans")

# %% [markdown]
# ## 6. Mixed-effects model
# Tumour ΔR2\* with a mean per group and day and a random intercept per animal (`day_model="categorical"`:
# no shape is imposed on the time course); the coefficient of `treated` is the Amp B − vehicle difference
# of mean tumour ΔR2\* on `effect_day`, tested with Satterthwaite degrees of freedom (small groups make
# z-tests too liberal). `day_model="linear"` fits `delta_r2star ~ treated * (day - effect_day)` with a random
# intercept and slope per animal instead. The same model of the post-contrast R2\* alone is the secondary
# contrast, and the ΔR2\* model refitted on the table with the failed voxels imputed is the sensitivity row. Any
# convergence or singular-fit diagnosis of the models is printed below the table.

# %%
effect = sl.longitudinal_effect(sessions, "delta_r2star", control=control, treated=treated, at_day=effect_day,
                                day_model=day_model)
absolute = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=effect_day,
                                  day_model=day_model)
print(f"difference on day {effect['at_day']:g}")
print(sl.model_diagnostics(effect))
print(sl.model_diagnostics(absolute))
imputed = None
if sessions_imputed is not None:
    imputed = sl.longitudinal_effect(sessions_imputed, "delta_r2star", control=control, treated=treated,
                                     at_day=effect_day, day_model=day_model)
    print(exp.imputation_text(effect, imputed, sessions, summary, value=r2star_bound))
effect["model"].fixed

# %% [markdown]
# ### What the pre-contrast scans change
# Computed from these data: how many sessions are paired, how much iron of earlier doses the pre-contrast
# scans already see, and the ΔR2\* contrast beside the post-contrast R2\* one.

# %%
print(exp.delta_text(sessions, effect, absolute, control=control, treated=treated, alpha=alpha))

# %% [markdown]
# ### Power of this design (ARRIVE item 2)
# The fitted ΔR2\* model simulated on this study's own animals and sessions, refitted each time: the post-hoc
# power for the observed effect (a function of its p-value, not a justification of the sample size, which has to
# be made before the data) and, when the study declares one (`smallest_effect` or `study.json`'s
# `smallest_effect_of_interest`), the power for the smallest effect of interest.

# %%
if smallest_effect is None:
    smallest_effect = sl.smallest_effect_of_interest(sl.study_info(manifest, study))
power = sl.effect_power(effect, smallest_effect=smallest_effect, n_sim=power_n_sim, seed=seed, units="1/s",
                        alpha=alpha)
print(power["text"])

# %% [markdown]
# ## 7. Imaging vs histology
# Per animal, tumour ΔR2\* against the macrophage count from immunohistochemistry on a common day: the last
# imaging day every group shares (animals that left before it are named and left out), so that no group is
# compared at an earlier time. Amp B is expected to raise both the macrophage count and ΔR2\*, so the r pooled
# over all animals mostly restates the treatment-group difference. The question "does ΔR2\* track the
# macrophages within a group?" is answered by the **within-group** correlation (repeated-measures / partial r
# with group indicators, Fisher-z CI and p with df = n − groups − 1; Bakdash & Marusich 2017); the pooled r is
# kept as a descriptive row. CI and p of each part come from the same Fisher-z approximation (p < α exactly when
# the CI excludes 0). With few animals per group the within-group CI is wide; with two groups the between-group
# part rests on two means and is not estimable (a warning says so).

# %%
histology = sl.load_histology(manifest, study)
animals = sl.animal_table(sessions, histology, day="common")
print(f"imaging vs histology on day {animals.attrs['day']:g}; left out: {list(animals.attrs['left_out']) or 'none'}")
hist_col = sl.histology_column(histology, ("iba1", "cd68", "macrophage"))
corr = sl.correlation_effect(animals, "delta_r2star", hist_col, cluster="group", alpha=alpha)
display(corr["table"])  # noqa: F821 (IPython)
truth_sessions = sl.load_truth_table(manifest, study, "sessions.csv")
true_parts = sl.analysis.true_correlation_parts(
    None if truth_sessions is None else exp.true_post_sessions(truth_sessions, day=animals.attrs["day"]),
    "tumour_delta_r2star_per_s", hist_col, cluster="group", histology=histology)
print(sl.correlation_levels_text(corr, x="tumour ΔR2*", y=hist_col, cluster="group", alpha=alpha))
pooled = corr["parts"]["pooled"]
fig = plots.correlation_scatter(animals, "delta_r2star", hist_col, hue="group", xlabel="tumour ΔR2* (1/s)",
                                r=pooled["estimate"], r_ci=(pooled["ci_low"], pooled["ci_high"]),
                                title=f"pooled r (descriptive); within-group r = {corr['estimate']:.2f}")

# %% [markdown]
# ## 8. Conclusions: the paper's finding, and the simulated truth
# Each row compares an estimate with the paper (same direction? significant?) and with the truth the
# simulator used (does the 95 % CI cover it?). The truth is that of the simulator's physics (static
# dephasing, R2\* = R2 + R2′), not of the mono-exponential fit; the truth of the within-group r is that of the
# simulated animals' true ΔR2\* and their histology. The sensitivity row (failed voxels imputed) and the pooled r
# (descriptive) are not findings of their own and are not Holm-counted.

# %%
truth = sl.load_truth(manifest, study)
conclusions = exp.conclusions(effect, corr, truth, control=control, treated=treated, hist_col=hist_col,
                              primary=primary_endpoint, histology_day=animals.attrs, alpha=alpha,
                              variable="delta_r2star", absolute=absolute, true_parts=true_parts,
                              imputed=imputed, imputed_value=r2star_bound)
sl.record(conclusions, study=study, **power["numbers"])
print(sl.summary_lines(conclusions))
conclusions

# %% [markdown]
# ### What the drawn outlines alone do to the ΔR2\* effect (simulated truth only)
# The truth R2\* maps' change from each animal's pre-contrast scan, averaged over the ROIs as drawn and over the
# true tumours: the outlines' part of the estimate's distance from the truth; the rest is fit, noise and partial
# volume.

# %%
row = conclusions.set_index("endpoint").loc["treatment_effect"]
pre_days = sessions.loc[sessions["day"] == effect["at_day"]].set_index("animal")["pre_day"].to_dict()
outline = sl.outline_contrast(ds, manifest, study, "r2star_per_s", regions=[1], day=effect["at_day"],
                              baseline_day=pre_days, control=control, treated=treated,
                              estimate=float(row["estimate"]), units="1/s")
print(outline["text"])

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# ## Intermediate results kept for inspection
# The fitted maps are cached (above); the tables are stored beside them, content-addressed, so
# `studylib show ampb_ferumoxytol` lists them and `studylib.workbook.load_intermediate("ampb_ferumoxytol", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, upstream=maps,
               roi_summary=(summary, "tidy ROI statistics per animal, day, ROI and map"),
               scans=(scans, "tumour means per animal and scan (pre- and post-contrast)"),
               sessions=(sessions, "post-contrast sessions with their pre-contrast R2* and ΔR2*"),
               animals=(animals, "imaging vs histology, one row per animal"),
               model_fixed=(effect["model"].fixed, "mixed model of ΔR2*: fixed effects with Satterthwaite df"),
               conclusions=(conclusions, "finding vs paper and truth"))
