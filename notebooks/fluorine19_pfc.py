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
# # 19F perfluorocarbon imaging of tumour macrophages: 67NR < 168FARN < 4T1
#
# **Question.** Do mammary tumours of higher metastatic potential recruit more macrophages, and can 19F MRI
# of a perfluorocarbon (PFC) emulsion, which circulating monocytes/macrophages take up, count them
# without histology?
#
# **After** Makela et al., *MRM* 2018;80:1138 (doi:10.1002/mrm.27081): three mammary tumour lines of
# increasing metastatic potential — 67NR (non-metastatic), 168FARN, 4T1 (highly metastatic) — imaged at
# 9.4 T with 1H and 19F balanced SSFP 24 h after i.v. PFC (19F 0.5 × 0.5 × 1 mm, flip 63°, TR/TE 4.7/2.4 ms,
# 10 averages). 19F signal: very little in 67NR, moderate at the edge of 168FARN, highest at the periphery
# of 4T1; 4T1 mice also had 19F in lung metastases.
#
# **Design of this study** (simulated by `studylib.synth`): the three lines as groups, several mice each,
# one 19F + 1H (T2w) session on day 1 (24 h after PFC on day 0), a reference tube of known 19F
# concentration (ROI label 4) and a signal-free background region (label 5) in the field of view; lung
# metastasis counts and CD68 density from histology.  The animal is the unit of analysis.
#
# **Physics in brief.** Tissue has no 19F, so every 19F photon comes from the PFC and the signal is
# proportional to the number of 19F nuclei in a voxel times a relaxation weighting. A tube of known
# concentration converts signal to atoms, n_F = S / S_ref · [F]_ref · V_voxel · N_A (Srinivas et al., *Trends
# Immunol* 2010;31:223), exactly when tube and tissue PFC relax alike; in bSSFP the weighting depends on T1/T2,
# which differ between a tube and PFC taken up by macrophages, so without their measured T1/T2 (parameters
# below) the result is *reference-tube equivalent* 19F, and the report says so. 19F images
# are noisy: magnitude noise is Rician, so a voxel without 19F still reads ≈ 1.25 σ on average. Two
# consequences, both handled in `studylib.fit.fluorine_quantify`: (1) *detection* — a voxel is called
# 19F-positive only if M > k·σ, with σ from the background (Rayleigh statistics) and k chosen from the
# Rayleigh tail P(M > kσ) = exp(−k²/2) so that < 1 % of noise-only voxels pass (default 0.5 %, k = 3.26);
# (2) *bias* — amplitudes are corrected for the Rician noise floor before summing. Because diffuse low-SNR
# uptake (67NR) mostly stays below k·σ, tumour totals use every tumour voxel's corrected amplitude, and the
# detected fraction is reported beside them. Atoms per macrophage (~10¹² in vitro) converts atoms into an
# *apparent* macrophage number: a relative burden, not a count.

# %% tags=["parameters"]
manifest = None  # path of data_manifest.csv; None: the manifest of `preset`
study = "fluorine19_pfc"
preset = "demo"
cache_dir = None  # unused (the 19F quantification is cheap)
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
lines = ["67NR", "168FARN", "4T1"]  # hypothesised order of macrophage burden, lowest first
false_positive_rate = 0.005  # per-voxel false-positive rate of the 19F detection threshold in noise
# measured 19F T1/T2 (ms) of the reference tube and the tumour PFC: all four given -> bSSFP relaxation correction;
# None -> tumour 19F is reference-tube equivalent (no relaxation correction; there are no defaults to assume)
t1_ref_ms = None
t2_ref_ms = None
t1_tissue_ms = None
t2_tissue_ms = None
f_atoms_per_cell = 1e12  # 19F atoms per macrophage for the apparent macrophage number
rim_fraction = 0.2  # outer fraction of the tumour depth called "rim"
primary_endpoint = "tumour_19f_trend"  # the one confirmatory finding (exp.ENDPOINTS); the others are secondary
alpha = 0.05
n_perm = 20000
seed = 0

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import fluorine19_pfc as exp

manifest, client = sl.start(manifest, preset, scheduler)

# %% [markdown]
# ## 1. Verify the raw data
# Every file of this study listed in the manifest must exist inside the manifest's folder and match its sha256.

# %%
sl.require_verified(manifest, study)

# %% [markdown]
# ## 2. Load the 19F and 1H scans (lazily)

# %%
f19 = sl.load_study(manifest, study, "F19")
h1 = sl.load_study(manifest, study, "T2w")
design = sl.design_table(f19)
tube = (f19.attrs.get("ReferenceTube_mM") or
        f"{f19.attrs.get('ReferenceTubePFC_mM')} mM PFC x {f19.attrs.get('ReferenceTubeFluorinesPerMolecule')} 19F")
print(f"reference tube: {tube} (from the sidecars)")
design

# %% [markdown]
# ## 3. Quantify 19F: noise, detection threshold, atoms per voxel
# σ per scan from the background ROI, the reference tube's bias-free signal, and per voxel: SNR,
# detection (M > k·σ), Rician-corrected 19F concentration and atoms.

# %%
given = dict(t1_ref_ms=t1_ref_ms, t2_ref_ms=t2_ref_ms, t1_tissue_ms=t1_tissue_ms, t2_tissue_ms=t2_tissue_ms)
relaxation = given if all(v is not None for v in given.values()) else None
quant = sl.fluorine_quantify(f19, false_positive_rate=false_positive_rate, bssfp_relaxation=relaxation)
quant = sl.compute_with_progress(quant, label="19F quantification")
k = sl.detection_k(false_positive_rate)
print(f"detection threshold k = {k:.2f} sigma (noise-only false-positive rate {false_positive_rate:.1%})")
# the measured false-positive rate where there is certainly no 19F: the background ROI itself
qc = exp.quality_table(quant, f19["roi"])
qc

# %% [markdown]
# ## 4. Quality control: 19F over 1H
# One mouse per line (the median tumour 19F of its line), at the slice with the largest tumour: detected
# 19F (mM of 19F nuclei) in hot colours over the T2-weighted 1H image, tumour outlined in cyan.

# %%
animals = exp.fluorine_animal_table(quant, f19["roi"], rim_fraction=rim_fraction,
                                    voxel_size_mm=f19.attrs["voxel_size_mm"],
                                    histology=sl.load_histology(manifest, study),
                                    f_atoms_per_cell=f_atoms_per_cell)
rep = exp.representative_animals(animals, lines)
fig = plots.fluorine_overlay_grid(h1["signal"], quant, f19["roi"], animals_by_group=rep,
                               title="detected 19F over 1H T2w, 24 h after PFC")

# %%
fig = plots.snr_histograms(quant["snr"], f19["roi"],
                           {line: animals.loc[animals["model"] == line, "animal"].tolist() for line in lines},
                           threshold=k, xlabel="tumour voxel 19F SNR (M / sigma)")

# %% [markdown]
# ## 5. Tumour table
# Per mouse: 19F atoms in the tumour (all voxels, Rician-corrected) and in detected voxels only, mean
# tumour 19F (mM), rim and core 19F, detected fraction, apparent macrophages, lung metastases.

# %%
cols = ["animal", "model", "f19_atoms", "f19_atoms_detected", "f19_mM", "f19_mM_rim", "f19_mM_core",
        "rim_over_core", "detected_fraction", "apparent_macrophages", "tumour_volume_mm3",
        "lung_metastases_count"]
animals[[c for c in cols if c in animals.columns]]

# %%
animals.groupby("model")[["f19_mM", "f19_atoms", "rim_over_core", "detected_fraction",
                          "lung_metastases_count"]].agg(["mean", "std", "count"]).reindex(lines)

# %% tags=["key-figure"]
fig = plots.group_strips(animals, {"f19_mM": "tumour 19F (mM)", "rim_over_core": "19F rim / core",
                                   "lung_metastases_count": "lung metastases (count)"}, group="model", order=lines)

# %% [markdown]
# ## 6. Statistics
# **Ordered trend.** The paper's ordering is a hypothesis across three groups, so the primary test is
# Jonckheere–Terpstra for 67NR < 168FARN < 4T1 (two-sided permutation p-value; small groups). Its effect size
# comes from the same test: the shift that makes the trend vanish (4T1 − 67NR under a linear trend; the median
# pairwise slope, Hodges–Lehmann type) with the CI of every shift the test does not reject, so p < α exactly
# when that CI excludes 0. Kruskal–Wallis and Holm-adjusted pairwise Mann–Whitney tests are the unordered
# follow-up (printed, not findings). The 4T1 − 67NR difference of means is a separate row with the Welch CI
# *and* the Welch p — a JT p beside a Welch CI could say "significant" while the CI covers 0.
# **Metastases.** Lung metastasis counts: the 4T1 − 67NR Welch difference (its CI and p), the JT trend printed,
# and their correlation with tumour 19F.

# %%
jt = sl.stats.jonckheere_terpstra([animals.loc[animals["model"] == g, "f19_mM"] for g in lines], n_perm=n_perm, seed=seed)
trend = exp.ordered_shift([animals.loc[animals["model"] == g, "f19_mM"] for g in lines], n_perm=n_perm, seed=seed,
                          alpha=alpha)
omni, pairs = sl.stats.kruskal_pairwise(animals, "f19_mM", "model", lines)
diff = sl.group_difference(animals, "f19_mM", control=lines[0], treated=lines[-1], group_col="model", alpha=alpha)
jt_mets = sl.stats.jonckheere_terpstra([animals.loc[animals["model"] == g, "lung_metastases_count"] for g in lines],
                                       n_perm=n_perm, seed=seed)
print(f"tumour 19F: JT J = {jt['statistic']:.0f} (E = {jt['expected']:.0f}), one-sided p = {jt['p']:.2g}, two-sided "
      f"p = {trend['p']:.2g}; shift {lines[-1]} - {lines[0]} = {trend['estimate']:.3g} [{trend['ci_low']:.3g}, "
      f"{trend['ci_high']:.3g}] mM (inverted JT); Welch {diff['estimate']:.3g} [{diff['ci_low']:.3g}, "
      f"{diff['ci_high']:.3g}] mM, p = {diff['p']:.2g}; Kruskal-Wallis H = {omni['H']:.2f}, p = {omni['p']:.2g}")
print(f"lung metastases: JT J = {jt_mets['statistic']:.0f}, p = {jt_mets['p']:.2g}")
pairs

# %%
corr = sl.correlation_effect(animals, "f19_mM", "lung_metastases_count", alpha=alpha)
fig = plots.correlation_scatter(animals, "f19_mM", "lung_metastases_count", hue="model",
                                xlabel="tumour 19F (mM)", ylabel="lung metastases (count)",
                                r=corr["estimate"], r_ci=(corr["ci_low"], corr["ci_high"]))

# %% [markdown]
# ## 7. Conclusions: the paper's finding, and the simulated truth
# Row 1: the ordered trend of tumour 19F (JT p, the shift and CI from inverting it); row 2: tumour 19F
# 4T1 − 67NR (Welch CI and p); row 3: the same for lung metastases; row 4: tumour 19F vs lung metastases
# (Pearson r, Fisher-z CI and p). Each row's CI and p come from one method. The primary endpoint
# (`primary_endpoint`) is tested at α; the secondary findings carry Holm-adjusted p-values (`p_holm`).
# Truth: the simulated animals' true tumour 19F (line means; without a relaxation correction, the
# reference-tube-equivalent means the simulator's physics gives, printed below) and the true correlation.

# %%
truth = sl.load_truth(manifest, study)
mets = sl.group_difference(animals, "lung_metastases_count", control=lines[0], treated=lines[-1],
                           group_col="model", alpha=alpha)
conclusions = exp.conclusions(diff, trend, mets, corr, truth, lines=lines, primary=primary_endpoint, alpha=alpha,
                              tube_equivalent=relaxation is None)
print(exp.relaxation_text(truth, relaxation))
sl.record(conclusions, study=study, jt_p=jt["p"], kruskal_p=omni["p"])
print(sl.summary_lines(conclusions))
conclusions

# %%
fig = plots.effect_vs_truth(conclusions)

# %% [markdown]
# **Reading the table.** The paper's qualitative finding is an ordering, which the JT test checks directly;
# its shift and the Welch 4T1 − 67NR difference give its size in mM of 19F nuclei. The rim/core column shows where the 19F
# sits (the paper saw it at the tumour periphery for 168FARN and 4T1); it depends on the rim definition
# and on partial volume at this resolution, so it is descriptive only. The apparent macrophage number
# scales with the assumed atoms per cell (`f_atoms_per_cell`) and is a relative burden.

# %% [markdown]
# ## Intermediate results kept for inspection
# The tables are stored in the experiment's cache, content-addressed, so
# `studylib show fluorine19_pfc` lists them and `studylib.workbook.load_intermediate("fluorine19_pfc", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, animals=(animals, "19F content per animal and tumour line"),
               conclusions=(conclusions, "finding vs paper and truth"))
