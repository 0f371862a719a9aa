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
# # Perfusion and hypoxia in cervical cancer xenografts: DCE-MRI Ktrans vs hypoxic fraction
#
# **Question.** Hypoxia makes tumours resist radiation and chemotherapy, but measuring it needs a
# pimonidazole stain of excised tissue. Does the DCE-MRI transfer constant Ktrans, measured non-invasively,
# predict the hypoxic fraction?
#
# **After** Hauge et al., *J Transl Med* 2017;15:225: four cervical carcinoma PDX models (BK-12, ED-15,
# HL-16, LA-19); DCE-MRI analysed with the Tofts model and compared with microvessel density (MVD),
# interstitial fluid pressure (IFP) and the pimonidazole hypoxic fraction. Ktrans correlated strongly and
# inversely with the hypoxic fraction, and this was not explained by MVD or IFP.
#
# **Design of this study** (simulated): the four PDX models, several tumours each, one session at 7 T:
# a B1 map (relative flip angle, AFI), variable-flip-angle SPGR (2–20°) for the pre-contrast T1, then dynamic
# SPGR (15°, 4 s per frame, ~5 min) with an i.v. bolus of gadoterate; a vessel ROI in every animal gives that
# animal's arterial input function (AIF). Histology: pimonidazole hypoxic fraction, CD31 MVD and IFP.
# The simulated images come from physics the fit does not share (`studylib.synth.physics.perfusion`): a
# different AIF in every animal (amplitude, arrival, width, washout), the extended Tofts model convolved in
# continuous time, and SPGR signal under a smooth transmit (B1) field.
#
# **Physics in brief.** The gadolinium agent shortens T1 in proportion to its concentration,
# R1(t) = R1,0 + r1·C(t), and a spoiled gradient echo turns R1 into signal, so with the pre-contrast T1 map
# the signal curve becomes a concentration curve. The Tofts model (Tofts et al., *JMRI* 1999;10:223) treats
# the tissue as plasma plus extravascular extracellular space (EES): C_t(t) = v_p C_p(t) + Ktrans ∫ C_p(u)
# e^{−k_ep (t−u)} du, with k_ep = Ktrans / v_e. **Ktrans** (1/min) is the volume transfer constant from
# plasma into the EES: it mixes blood flow and capillary permeability–surface area, i.e. how well the tumour
# is supplied. Tumours that are poorly supplied with blood are poorly supplied with oxygen, hence the
# inverse relation with hypoxia; in patients a Ktrans threshold of about 0.13 min⁻¹ separated prognostic
# groups.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "ktrans_hypoxia"
preset = "demo"
cache_dir = None  # None: data/<preset>/derived
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
dce_model = "extended_tofts"  # "tofts", "extended_tofts" or "patlak"
aif_source = "animal"  # "animal": each animal's own vessel AIF (see section 3); "cohort": their mean
b1_map = True  # correct the flip angles with the study's B1map scans (when the manifest lists them)
population_aif = "mcgrath_rat"  # population AIF of the AIF comparison (section 7; a rat AIF: no mouse one in the library)
n_baseline = None  # pre-contrast frames; None: before the bolus arrival measured in the vessel ROI
r1_per_mM_s = None  # agent r1 (1/(s mM)); None: a measured value in the sidecars, else the Agent's tabulated r1 at the field
hematocrit = None  # None: a measured value in the sidecars, else the mouse default 0.45
hematocrit_range = [0.40, 0.50]  # haematocrits the sensitivity table spans (mouse strains differ; see section 7)
cluster = "model"  # the tumour model (PDX) of each tumour: the within-model correlation answers the paper's question
covariates = ["mvd_cd31_per_mm2", "ifp_mmHg"]  # alternatives Ktrans must explain hypoxia beyond (histology columns)
primary_endpoint = "within_model_r"  # the one confirmatory finding (exp.ENDPOINTS); the others are secondary
max_failed_difference = 0.05  # warn when the groups' failed-fit fractions differ by more than this (0-1)
smallest_effect = None  # smallest |r| of interest (primary); None: study.json's smallest_effect_of_interest
alpha = 0.05

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import ktrans_hypoxia as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data
# Every file of this study listed in the manifest must exist inside the manifest's folder and match its sha256.

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the variable-flip-angle and dynamic scans (lazily)

# %%
vfa = sl.load_study(manifest, study, "VFA")
dce = sl.load_study(manifest, study, "DCE")
b1 = exp.b1_scans(manifest, study) if b1_map else None
design = sl.design_table(dce)
design

# %% [markdown]
# ## 3. T1, concentration, AIF and tracer-kinetic maps
# VFA T1 (DESPOT1) in tumour, muscle and vessel with the measured flip angles (B1 map); SPGR signal → R1 →
# concentration with the agent's r1; the AIF from the vessel ROI (whole blood → plasma with the
# haematocrit); then the kinetic model fitted in every tumour and muscle voxel.
#
# **Which AIF.** The AIF differs between mice (injected dose per blood volume, cardiac output, injection
# timing), and Ktrans scales inversely with its amplitude: a cohort-mean AIF hands each animal's deviation
# to its Ktrans, which is what the study compares between animals. Each animal's own vessel ROI is noisier
# than the cohort mean, but that noise is small beside the differences between animals (section 7 refits
# with the animal's own, the cohort-mean and a population AIF), so the default is the animal's own AIF
# (`aif_source`). **B1.** At 7 T the transmit field is not uniform: a flip angle off by a factor b makes
# the VFA T1 about b² times the truth and Ktrans about 1/b², differently in each animal, so the B1 map is
# used for both the VFA and the dynamic flip angles.

# %%
print(exp.b1_text(exp.b1_table(b1)))
maps, aif = sl.fit_dce_maps(vfa, dce, model=dce_model, aif_source=aif_source, n_baseline=n_baseline,
                            r1_per_mM_s=r1_per_mM_s, hematocrit=hematocrit, b1=b1,
                            cache_dir=cache_dir, study=study)
maps

# %%
fig = plots.time_curves(aif, title=f"arterial input functions (plasma, used: {aif.attrs['used']})")
aifs = exp.aif_table(aif)
print(exp.aif_text(aifs))
aifs

# %% [markdown]
# ## 4. Quality control
# Ktrans over a pre-contrast frame, one representative tumour per PDX model; then the fit quality with
# failed voxels in red, and the T1 map.

# %% tags=["key-figure"]
anat = sl.anatomy(dce)
fig = plots.representative_maps(maps["ktrans"], anat, dce["roi"], title=f"tumour Ktrans ({dce_model})",
                                cmap="inferno")

# %%
fig = plots.fit_quality_maps(maps[sl.quality_variable(maps)], maps["fit_ok"], anat, dce["roi"])

# %%
fig = plots.representative_maps(maps["t1"], anat, dce["roi"], labels=(1, 2), title="pre-contrast T1",
                                cmap="viridis")

# %% [markdown]
# ## 5. Tumour table and histology

# %%
variables = [v for v in ("ktrans", "kep", "ve", "vp", "t1") if v in maps]
summary, sessions = sl.roi_tables(maps, dce, variables=variables, max_failed_difference=max_failed_difference)
histology = sl.load_histology(manifest, study)
animals = sl.animal_table(sessions, histology)
hyp = sl.histology_column(histology, ("hypoxic",))
display(sl.failed_fit_table(sessions, max_difference=None))  # noqa: F821 (IPython)
animals.groupby("group")[["ktrans", hyp]].agg(["mean", "std", "count"])

# %% [markdown]
# ## 6. Ktrans vs hypoxic fraction: within a model, pooled, between models; and beyond MVD and IFP
# The four PDX models differ in mean hypoxia and mean Ktrans, so a correlation pooled over all tumours is
# mostly the difference between models. Whether Ktrans tracks hypoxia **within** a model is answered by
# the within-model (repeated-measures) correlation (Bakdash & Marusich 2017); beside it the pooled
# correlation and that of the model means, each with a Fisher-z CI and p (p < α exactly when the CI
# excludes 0). "Not explained by MVD or IFP" is one multiple regression, hypoxic fraction ~ Ktrans + MVD +
# IFP + model: the partial correlation of Ktrans and hypoxia given both and the tumour model (so, like the
# primary, within a model), with the t test of the Ktrans coefficient. Without the model the same partial
# correlation pools the models' differences; it is shown as a descriptive row.

# %%
corr = sl.correlation_effect(animals, "ktrans", hyp, cluster=cluster, alpha=alpha)
slope = sl.regression_slope(animals, hyp, "ktrans", x_scale=0.01, covariates=[cluster], alpha=alpha)
beyond = sl.partial_regression_effect(animals, hyp, "ktrans", [*covariates, cluster], alpha=alpha)
beyond_pooled = sl.partial_regression_effect(animals, hyp, "ktrans", covariates, alpha=alpha)
print(sl.correlation_levels_text(corr, x="Ktrans", y="the hypoxic fraction", cluster=cluster, alpha=alpha))
print(exp.beyond_text(beyond, beyond_pooled, hist_col=hyp, cluster=cluster, alpha=alpha))
corr["table"]

# %%
pooled = corr["parts"]["pooled"]
fig = plots.correlation_scatter(animals, hyp, "ktrans", hue="group", xlabel="pimonidazole hypoxic fraction (%)",
                                ylabel="tumour Ktrans (1/min)", r=pooled["estimate"],
                                r_ci=(pooled["ci_low"], pooled["ci_high"]),
                                title=f"pooled r; within-{cluster} r = {corr['estimate']:.2f} "
                                      f"[{corr['ci_low']:.2f}, {corr['ci_high']:.2f}]")

# %% [markdown]
# ### Power of this design (ARRIVE item 2)
# The power of the primary correlation's own Fisher-z test, at its df, for a true r equal to the observed one:
# post hoc, a function of its p-value, not a justification of the sample size (which has to be made before the
# data); and, when the study declares one (`smallest_effect` or `study.json`'s `smallest_effect_of_interest`,
# an r), the power for the smallest effect of interest.

# %%
if smallest_effect is None:
    smallest_effect = sl.smallest_effect_of_interest(sl.study_info(manifest, study))
power = sl.analysis.primary_correlation_power(corr, primary_endpoint, smallest_effect=smallest_effect, alpha=alpha)
print(power["text"])

# %%
others = exp.other_correlations(animals, "ktrans", histology, exclude=(hyp,), cluster=cluster, alpha=alpha)
others

# %% [markdown]
# ## 7. What the data do not give: haematocrit, r1 and bolus arrival
# The sidecars carry acquisition parameters only (field, TR, flip angles, frame times, agent, dose). The bolus
# arrival is measured in the vessel ROI (printed above), r1 is the agent's tabulated value at the field and the
# haematocrit, which turns the whole-blood vessel curve into the plasma AIF (Cp = Cb / (1 − Hct)), is an
# assumption unless the lab measured it. r1 cancels from Ktrans, ve and vp (tissue and vessel concentrations
# share it); the haematocrit does not: Ktrans, ve and vp scale by (1 − h) / (1 − Hct assumed) for a true
# haematocrit h, exactly, while kep and every correlation are unchanged. The table shows this over
# `hematocrit_range`: from 0.40, the low end of the mouse range behind the default 0.45
# (`studylib.analysis.maps.DEFAULT_HEMATOCRIT`), to 0.50 (healthy FVB females 50.4 ± 2.2 %, Taconic's published
# haematology); strains differ, and a lab that measures its animals' haematocrit passes it as `hematocrit`.

# %% [markdown]
# **The AIF choice.** Each tumour's ROI-mean curve refitted with the animal's own AIF, the cohort mean of the
# measured AIFs and the population AIF `population_aif` (shifted to the animal's measured arrival): the
# correlation with hypoxia under each (the truth comparison is in section 8).

# %%
aif_choice = exp.aif_choice_table(dce, maps, aif, n_baseline=n_baseline, r1_per_mM_s=r1_per_mM_s, b1=b1,
                                  model=dce_model, population=population_aif)
exp.aif_choice_summary(aif_choice, histology, hyp)

# %%
hct_assumed = float(aif.attrs["hematocrit"])
hct_table = exp.hematocrit_sensitivity(animals, assumed=hct_assumed, hematocrits=hematocrit_range, slope=slope)
hct_source = ("given to the notebook" if hematocrit is not None else "measured, from the sidecars"
              if "Hematocrit" in dce.attrs else "the mouse default; no measured value in the sidecars")
print(exp.hematocrit_text(hct_table, source=hct_source))
hct_table

# %% [markdown]
# ## 8. Conclusions: the paper's finding, and the simulated truth
# The primary endpoint (`primary_endpoint`) is tested at α; the secondary findings carry Holm-adjusted
# p-values (`p_holm`). Truth: the simulated animals' true Ktrans, hypoxia, MVD and IFP, analysed the same way.

# %%
truth = sl.load_truth(manifest, study)
truth_sessions = sl.load_truth_table(manifest, study, "sessions.csv")
true_parts = sl.analysis.true_correlation_parts(truth_sessions, "tumour_ktrans_per_min", "hypoxic_pct", cluster="model",
                                                covariates=[*covariates, "model"], histology=histology)
true_parts["partial_pooled"] = sl.analysis.true_correlation_parts(
    truth_sessions, "tumour_ktrans_per_min", "hypoxic_pct", cluster="model", covariates=covariates,
    histology=histology)["partial"]
conclusions = exp.conclusions(corr, slope, truth, beyond=beyond, beyond_pooled=beyond_pooled, true_parts=true_parts,
                              hist_col=hyp, primary=primary_endpoint, alpha=alpha)
sl.record(conclusions, study=study, **power["numbers"])
print(sl.summary_lines(conclusions))
conclusions

# %% [markdown]
# The fitted Ktrans, ve and vp against the simulated truth: the bias measured over the tumours, beside the
# bias the haematocrit assumption alone predicts from the haematocrit the simulation used (truth only here;
# the correlations above do not depend on it, the slope carries it).

# %%
hct_simulated = truth.get("design", {}).get("hematocrit") if truth else None
recovery = exp.recovery_vs_truth(animals, sl.load_truth_table(manifest, study, "sessions.csv"),
                                 assumed_hematocrit=hct_assumed, simulated_hematocrit=hct_simulated, alpha=alpha)
print(exp.recovery_text(recovery, assumed=hct_assumed, simulated=hct_simulated))
recovery

# %% [markdown]
# The measured AIFs against the simulated ones (arrival, peak), and the tumour Ktrans of each AIF choice
# against the truth: median bias and the scatter (SD of log fitted / true) the choice adds.

# %%
aif_vs_truth = exp.aif_table(aif, truth)
print(exp.aif_text(aif_vs_truth, assumed_hematocrit=hct_assumed, simulated_hematocrit=hct_simulated))
truth_sessions = sl.load_truth_table(manifest, study, "sessions.csv")
exp.aif_choice_summary(aif_choice, histology, hyp, truth_sessions)

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# ## Intermediate results kept for inspection
# The fitted maps are cached (above); the tables are stored beside them, content-addressed, so
# `studylib show ktrans_hypoxia` lists them and `studylib.workbook.load_intermediate("ktrans_hypoxia", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, upstream=maps,
               roi_summary=(summary, "tidy ROI statistics per animal and ROI"),
               animals=(animals, "Ktrans vs hypoxic fraction, one row per animal"),
               hematocrit_sensitivity=(hct_table, "Ktrans, ve, vp and slope over the assumed haematocrit range"),
               conclusions=(conclusions, "finding vs paper and truth"))
