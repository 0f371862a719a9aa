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
# # Collagen and water diffusion in cervical cancer xenografts: ADC vs collagen I
#
# **Question.** Is the apparent diffusion coefficient (ADC) of a tumour lower where there is more
# collagen I-rich stroma, so that diffusion MRI could stand in for a stroma biopsy?
#
# **After** Hauge et al. (Rofstad lab), cervical carcinoma patient-derived xenografts: four PDX models
# (BK-12, ED-15, HL-16, LA-19); DW-MRI with b = 200, 400, 700, 1000 s/mm²; a significant inverse correlation
# between ADC and the fraction of collagen I-positive tissue.
#
# **Design of this study** (simulated): the four PDX models as groups, several tumours each, one DW-MRI
# session at 7 T (b = 0, 200, 400, 700, 1000 s/mm², trace-weighted); collagen I area fraction from histology.
#
# **Physics in brief.** In a DW spin-echo sequence a pair of diffusion gradients dephases moving water;
# the signal falls as S(b) = S0·exp(−b·ADC). Collagen fibres and a dense extracellular matrix hinder and
# restrict the random walk of water, so more collagen means a lower ADC. Below b ≈ 200 s/mm² blood moving in
# capillaries adds a fast "pseudo-diffusion" component (intravoxel incoherent motion, Le Bihan et al.,
# *Radiology* 1988;168:497, doi:10.1148/radiology.168.2.3393671), so ADC is fitted on b ≥ 200 only. Water in
# tissue is not a Gaussian diffuser (membranes make ln S bend upwards with b: diffusional kurtosis, Jensen et al.,
# *MRM* 2005;53:1432), so the ADC is an *apparent* coefficient that depends on the b-values fitted and lies below
# the diffusion coefficient D of a kurtosis model. Stroma matters clinically because collagen slows drug
# delivery, which is why tumour–stroma ratio is prognostic.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "collagen_adc"
preset = "demo"
cache_dir = None  # None: data/<preset>/derived
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
b_min = 200.0  # lowest b-value (s/mm²) used for ADC (excludes perfusion)
cluster = "model"  # the tumour model (PDX) of each tumour: the within-model correlation answers the paper's question
primary_endpoint = "within_model_r"  # the one confirmatory finding (exp.ENDPOINTS); the others are secondary
max_failed_difference = 0.05  # warn when the groups' failed-fit fractions differ by more than this (0-1)
smallest_effect = None  # smallest |r| of interest (primary); None: study.json's smallest_effect_of_interest
alpha = 0.05

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import collagen_adc as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data
# Every file of this study listed in the manifest must exist inside the manifest's folder and match its sha256.

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the diffusion-weighted scans (lazily)

# %%
ds = sl.load_study(manifest, study, "DWI")
design = sl.design_table(ds)
design

# %% [markdown]
# ## 3. Fit ADC maps (b ≥ `b_min`)

# %%
maps = sl.fit_adc_maps(ds, b_min=b_min, cache_dir=cache_dir, study=study)
maps

# %% [markdown]
# ## 4. Quality control
# ADC over the b = 0 image in the tumour for one representative tumour per PDX model; then the fit quality
# with failed voxels in red.

# %%
anat = sl.anatomy(ds)
fig = plots.representative_maps(maps["adc"], anat, ds["roi"], title="tumour ADC", cmap="viridis")

# %%
fig = plots.fit_quality_maps(maps[sl.quality_variable(maps)], maps["fit_ok"], anat, ds["roi"])

# %% [markdown]
# ## 5. Tumour table and histology

# %%
summary, sessions = sl.roi_tables(maps, ds, variables=["adc"], max_failed_difference=max_failed_difference)
histology = sl.load_histology(manifest, study)
animals = sl.animal_table(sessions, histology)
col = sl.histology_column(histology, ("collagen",))
display(sl.failed_fit_table(sessions, max_difference=None))  # noqa: F821 (IPython)
animals.groupby("group")[["adc", col]].agg(["mean", "std", "count"])

# %% [markdown]
# ## 6. ADC vs collagen I: within a model, pooled, and between models
# The four PDX models differ in their mean collagen and mean ADC, so a correlation pooled over all
# tumours is mostly the difference between models. The paper's question is whether ADC tracks collagen
# **within** a model, which the within-model (repeated-measures) correlation answers: ADC and collagen
# centred on their model means (Bakdash & Marusich 2017). Beside it the pooled correlation and that of the
# model means. Every part has a Fisher-z CI and p from the same normal approximation, so p < α exactly when
# the CI excludes 0. The OLS slope of ADC on the collagen I fraction (µm²/ms per unit fraction) with the model
# as a covariate, the common slope within a model, gives the size.

# %%
corr = sl.correlation_effect(animals, "adc", col, cluster=cluster, alpha=alpha)
slope = sl.regression_slope(animals, col, "adc", x_scale=0.01, covariates=[cluster], alpha=alpha)
print(sl.correlation_levels_text(corr, x="ADC", y="collagen I", cluster=cluster, alpha=alpha))
corr["table"]

# %% tags=["key-figure"]
pooled = corr["parts"]["pooled"]
fig = plots.correlation_scatter(animals, col, "adc", hue="group", xlabel="collagen I area (%)",
                                ylabel="tumour ADC (µm²/ms)", r=pooled["estimate"],
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

# %% [markdown]
# ## 7. Conclusions: the paper's finding, and the simulated truth
# The primary endpoint (`primary_endpoint`) is tested at α; the secondary findings carry Holm-adjusted
# p-values (`p_holm`) and are significant only after that adjustment. Truth: the simulated animals' true
# ADC and collagen, decomposed the same way. The paper's quantity is the ADC, so the true ADC is the apparent ADC
# of the simulated physics (kurtosis tissue + IVIM) over the fitted b-values -- the exact log-linear slope of the
# noise-free signal -- not the kurtosis model's D, which lies above it (printed below on simulated data).

# %%
truth = sl.load_truth(manifest, study)
truth_sessions = sl.load_truth_table(manifest, study, "sessions.csv")
true_parts = sl.analysis.true_correlation_parts(truth_sessions, "tumour_adc_b200_1000_um2_per_ms", "collagen_pct",
                                                cluster="model")
if truth_sessions is not None:  # simulated data: how far the ADC (the truth compared here) lies below D
    ratio = truth_sessions["tumour_adc_b200_1000_um2_per_ms"] / truth_sessions["tumour_d_um2_per_ms"]
    print(f"simulated truth: tumour ADC (b = 200-1000 s/mm², noise-free) = {ratio.mean():.3f} × the kurtosis "
          f"model's D (range {ratio.min():.3f}-{ratio.max():.3f}); the findings are compared with the ADC")
conclusions = exp.conclusions(corr, slope, truth, true_parts=true_parts, primary=primary_endpoint, alpha=alpha)
sl.record(conclusions, study=study, **power["numbers"])
print(sl.summary_lines(conclusions))
conclusions

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# ## Intermediate results kept for inspection
# The fitted maps are cached (above); the tables are stored beside them, content-addressed, so
# `studylib show collagen_adc` lists them and `studylib.workbook.load_intermediate("collagen_adc", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, upstream=maps,
               roi_summary=(summary, "tidy ROI statistics per animal and ROI"),
               animals=(animals, "ADC vs collagen I, one row per animal"),
               conclusions=(conclusions, "finding vs paper and truth"))
