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
# # Ferumoxytol as a therapy: tumour growth, T2* and macrophage polarisation
#
# **Question.** Does the iron-oxide nanoparticle ferumoxytol, given on its own, slow tumour growth by
# repolarising tumour-associated macrophages towards the pro-inflammatory M1 phenotype, and is its uptake
# visible as T2\* shortening?
#
# **After** Zanganeh et al., *Nat Nanotechnol* 2016;11:986 (doi:10.1038/nnano.2016.168): MMTV-PyMT cancer
# cells in both mammary fat pads of female FVB/N mice; ferumoxytol i.v. vs control; 7 T multi-gradient-echo
# T2\*. Ferumoxytol suppressed tumour growth, its uptake showed as T2\* shortening, and histology/flow
# cytometry found more CD80+ (M1) and fewer CD206+ (M2) macrophages.
#
# **Design of this study** (simulated): control vs ferumoxytol (10 mg Fe/kg after the day-0 scan), two
# tumours per animal (ROI label 1 = left, 6 = right), T2-weighted RARE for tumour volume and multi-gradient-echo
# for R2\* on days 0, 1, 7, 14 and 21; animals leave at the humane endpoint (tumour > 125 mm³). Histology per
# tumour: CD80 and CD206 as % of F4/80+ macrophages. Each animal's two tumours are averaged, so the animal
# is the unit of analysis.
#
# **Physics and biology in brief.** Ferumoxytol is taken up by macrophages; in the tumour the iron shortens
# T2\* (R2\* rises about linearly with iron concentration, and more than R2 does, because gradient echoes do
# not refocus the static dephasing around iron clusters — Daldrup-Link, *Radiology* 2017;284:616,
# doi:10.1148/radiol.2017162759). Uptake peaks 24–48 h after injection, when the blood pool has cleared and
# the remaining iron is in cells; it then clears over weeks. Zanganeh et al. proposed that iron-loaded
# macrophages switch towards M1 and release reactive oxygen species that kill tumour cells, slowing growth.
# Tumour growth is exponential early on, so log volume is analysed: its slope is the growth rate per day.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "ferumoxytol_therapy"
preset = "demo"
cache_dir = None  # None: data/<preset>/derived
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
t2star_method = "auto"  # T2* fit: "auto" (noise-floor aware), "loglinear", "nonlinear"
control = None  # control group label; None: inferred (the group called control/vehicle)
treated = None  # treated group label; None: the other group
r2_day = None  # day of the R2* comparison; None: day 1 (24 h after ferumoxytol) or the first later day
baseline = "ancova"  # R2* uptake adjusted for each animal's pre-contrast day-0 R2* (ANCOVA); None: no adjustment
primary_endpoint = "growth_rate"  # the one confirmatory finding (exp.ENDPOINTS); the others are secondary
max_failed_difference = 0.05  # warn when the groups' failed-fit fractions differ by more than this (0-1)
impute_failed = True  # sensitivity row of the R2* uptake: failed-fit voxels' R2* at the echo train's bound
power_n_sim = 300  # simulated studies of the fitted design for the primary's power (ARRIVE: sample size)
smallest_effect = None  # smallest effect of interest in the primary's units; None: study.json's, if any
seed = 0
alpha = 0.05

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import ferumoxytol_therapy as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data
# Every file of this study listed in the manifest must exist inside the manifest's folder and match its sha256.

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the T2-weighted and multi-gradient-echo scans (lazily)

# %%
t2w = sl.load_study(manifest, study, "T2w")
ds = sl.load_study(manifest, study, "MEGRE")
control, treated = sl.pick_groups(ds, control, treated)
design = sl.design_table(t2w)
design

# %% [markdown]
# ## 3. Tumour volumes and R2\* maps
# Volumes are ROI voxel counts × voxel volume on the T2-weighted grid; R2\* is fitted (noise-floor aware,
# noise SD from the background ROI) inside both tumours and the muscle.

# %%
volumes = sl.tumour_volumes(t2w, exp.TUMOUR_LABELS)
maps = sl.fit_relaxation_maps(ds, method=t2star_method, labels=(1, 2, 6), cache_dir=cache_dir, study=study)
maps

# %% [markdown]
# ## 4. Quality control
# R2\* over the T2-weighted image (both tumours shown), one representative animal per group and day; then
# the fit quality with failed voxels in red.

# %%
fig = plots.representative_maps(maps["r2star"], t2w["signal"], ds["roi"], labels=(1, 6),
                                title="tumour R2* over T2w")

# %%
fig = plots.fit_quality_maps(maps[sl.quality_variable(maps)], maps["fit_ok"], t2w["signal"], ds["roi"],
                             labels=(1, 6))

# %% [markdown]
# ## 5. Tumour tables
# One row per tumour and session, then the animal means (mean log volume, mean R2\*). Voxels whose R2\* fit
# failed are left out of the means; the most iron-laden fail first. As a sensitivity analysis of the R2\*
# uptake (the only R2\*-based finding; volumes come from the T2-weighted ROIs) the animal means of R2\* are built
# a second time with every failed voxel's R2\* set to the fastest decay the echo train resolves, 1000/TE_min.

# %%
summary, left = sl.roi_tables(maps, ds, variables=["r2star", "t2star"], labels=exp.TUMOUR_LABELS,
                              roi="tumour_left", max_failed_difference=max_failed_difference)
display(sl.failed_fit_table(left, max_difference=None, roi="tumour_left"))  # noqa: F821 (IPython)
tumours = sl.per_tumour_table(summary, volumes, variables=["r2star", "t2star"])
sessions = sl.animal_means(tumours, variables=["r2star", "t2star"])
sessions_imputed, r2star_bound = None, sl.echo_train_bound(ds, "r2star")
if impute_failed:  # sensitivity: failed voxels (the most iron-laden fail first) at the fastest resolvable decay
    summary_imputed, _ = sl.roi_tables(maps, ds, variables=["r2star"], labels=exp.TUMOUR_LABELS, roi="tumour_left",
                                       impute_failed={"r2star": r2star_bound})
    sessions_imputed = sl.animal_means(sl.per_tumour_table(summary_imputed, volumes, variables=["r2star"]),
                                       variables=["r2star"])
sessions

# %% tags=["key-figure"]
fig = plots.spaghetti(sessions, "volume_mm3", ylabel="mean tumour volume (mm³)", logy=True,
                      title="tumour growth (log scale)")

# %%
fig = plots.spaghetti(sessions, "r2star", ylabel="tumour R2* (1/s)", title="tumour R2* per animal")

# %% [markdown]
# ## 6. Growth: mixed model of log volume
# `log_volume ~ treated * day` with a random intercept and slope per animal (a random-intercept-only model
# would be far too liberal for growth data); `treated:day_c` is the difference of growth rates (1/day).
# exp(difference × days) is the treated/control volume ratio.

# %%
growth = sl.longitudinal_effect(sessions, "log_volume", control=control, treated=treated, slope=True)
print(sl.model_diagnostics(growth))
growth["model"].fixed

# %% [markdown]
# The same growth data as per-group growth rates, doubling times and the treated/control (T/C) volume ratio
# of geometric means on each imaging day (`studylib.stats.tumour_growth`, on the animals' mean volume).

# %%
growth_stats = sl.stats.tumour_growth(sessions, control=control)
display(growth_stats.rates)  # noqa: F821 (IPython)
growth_stats.tc

# %% [markdown]
# ## 7. Ferumoxytol uptake: tumour R2\* 24–48 h after injection
# Cell means per group and day with a random intercept per animal (uptake rises then clears, so no line
# is imposed); `treated` is the ferumoxytol − control difference on `r2_day`. The day-0 scan precedes the
# injection, so each animal's own pre-contrast R2\* enters as a covariate (ANCOVA on the day-0 value, which
# leaves the response): the native R2\* that differs between animals no longer hides the iron's ΔR2\*. The same
# model on the animal means with the failed voxels imputed is the sensitivity row.

# %%
r2_day = exp.uptake_day(sessions["day"].unique()) if r2_day is None else r2_day
r2 = sl.longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=r2_day,
                            day_model="categorical", baseline=baseline)
print(f"difference on day {r2_day}; adjustment: {r2['adjustment']}")
print(sl.model_diagnostics(r2))
r2_imputed = None
if sessions_imputed is not None:
    r2_imputed = sl.longitudinal_effect(sessions_imputed, "r2star", control=control, treated=treated, at_day=r2_day,
                                        day_model="categorical", baseline=baseline)
    print(exp.imputation_text(r2, r2_imputed, summary, value=r2star_bound))
r2["model"].fixed

# %% [markdown]
# ### Power of this design for the primary endpoint (ARRIVE item 2)
# The fitted model of the primary endpoint simulated on this study's own animals and sessions, refitted each
# time: the post-hoc power for the observed effect (a function of its p-value, not a justification of the sample
# size, which has to be made before the data) and, when the study declares one (`smallest_effect` or
# `study.json`'s `smallest_effect_of_interest`), the power for the smallest effect of interest. Only the
# mixed-model endpoints (growth rate, R2\* uptake) have a fitted design to simulate; a histology primary (a Welch
# t test) gets no power here.

# %%
power = {"numbers": {}, "text": f"No power simulation: the primary endpoint {primary_endpoint!r} is not a fitted "
                                "mixed model (exp.MODEL_UNITS)."}
if primary_endpoint in exp.MODEL_UNITS:
    if smallest_effect is None:
        smallest_effect = sl.smallest_effect_of_interest(sl.study_info(manifest, study))
    power = sl.effect_power({"growth_rate": growth, "r2star_uptake": r2}[primary_endpoint],
                            smallest_effect=smallest_effect, n_sim=power_n_sim, seed=seed,
                            units=exp.MODEL_UNITS[primary_endpoint], alpha=alpha)
print(power["text"])

# %% [markdown]
# ## 8. Macrophage polarisation (histology)
# CD80 (M1) and CD206 (M2) as % of F4/80+ macrophages, averaged over each animal's two tumours; Welch
# t-tests. Compared on a common day, the last endpoint day every group shares: an animal that reached a humane
# endpoint earlier was sampled at another time and is named and left out.

# %%
histology = exp.histology_on_common_day(sl.load_histology(manifest, study))
print(f"histology on day {histology.attrs['day']:g}; left out: {list(histology.attrs['left_out']) or 'none'}")
hist = histology.groupby(["animal", "group"], as_index=False)[["cd80_pct_of_f480", "cd206_pct_of_f480"]].mean()
cd80 = sl.group_difference(hist, "cd80_pct_of_f480", control=control, treated=treated, alpha=alpha)
cd206 = sl.group_difference(hist, "cd206_pct_of_f480", control=control, treated=treated, alpha=alpha)
hist

# %% [markdown]
# ## 9. Conclusions: the paper's findings, and the simulated truth
# The R2\* row with the failed voxels imputed is a sensitivity analysis of the R2\* uptake, not a finding of its
# own, and is not Holm-counted.

# %%
truth = sl.load_truth(manifest, study)
conclusions = exp.conclusions(growth, r2, cd80, cd206, truth, control=control, treated=treated,
                              primary=primary_endpoint, histology_day=histology.attrs, alpha=alpha,
                              imputed=r2_imputed, imputed_value=r2star_bound)
sl.record(conclusions, study=study, **power["numbers"])
print(sl.summary_lines(conclusions))
conclusions

# %% [markdown]
# ### What the drawn outlines alone do to the R2\* uptake (simulated truth only)
# The iron sits in the tumour rim, where an outline drawn a voxel off loses it and takes in iron-free tissue. The
# truth R2\* map averaged over the ROIs as drawn, against the same map over the true tumours, splits the
# estimate's distance from the truth into the outlines' part and the rest (fit, noise, partial volume).

# %%
uptake_row = conclusions.set_index("endpoint").loc["r2star_uptake"]
outline = sl.outline_contrast(ds, manifest, study, "r2star_per_s", regions=exp.TUMOUR_LABELS, day=r2_day,
                              control=control, treated=treated, estimate=float(uptake_row["estimate"]), units="1/s")
print(outline["text"])

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# ## Intermediate results kept for inspection
# The fitted maps are cached (above); the tables are stored beside them, content-addressed, so
# `studylib show ferumoxytol_therapy` lists them and `studylib.workbook.load_intermediate("ferumoxytol_therapy", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, upstream=maps,
               roi_summary=(summary, "tidy ROI statistics per animal, day, tumour and map"),
               tumours=(tumours, "per-tumour R2*/T2* and volume"),
               sessions=(sessions, "animal means per day"),
               growth_model_fixed=(growth["model"].fixed, "log-volume mixed model: fixed effects"),
               conclusions=(conclusions, "finding vs paper and truth"))
