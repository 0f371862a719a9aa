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
# # acidoCEST in one B16F10 mouse: tumour extracellular pH from the iopamidol CEST ratio (real scanner data)
#
# **Question.** Can the published ratiometric acidoCEST method measure the extracellular pH (pHe) of a
# subcutaneous B16F10 melanoma on a real ParaVision study, pixel by pixel, and how much of the tumour
# carries a measurable pH?
#
# **Method after** Chen LQ, Howison CM, Jeffery JJ, Robey IF, Kuo PH, Pagel MD, *Magn Reson Med*
# 2014;72:1408–1417 ("Evaluations of extracellular pH within in vivo tumors using acidoCEST MRI") and
# Jones KM et al., *Mol Imaging Biol* 2017;19:617 (doi:10.1007/s11307-016-1029-7): iopamidol (Isovue) has
# two amide protons that exchange with water at 4.2 and 5.5 ppm; their exchange is base-catalysed with
# different rates, so the ratio of their two CEST effects changes with pH while the agent concentration
# cancels (Longo DL et al., *Magn Reson Med* 2011;65:202, the ratiometric iopamidol pH method).
#
# **The data are real** (not simulated): one mouse of the Pagel lab (ParaVision study
# `20220316_B16F10Eso_M1`, PV 6.0.1, 7.05 T), vendored under `data/real/bruker_pv601_mouse_cest` with its
# GPL-3.0 `LICENSE` and `SOURCE.txt`. Scan E3: RARE, one 1 mm slice at the CEST slice position, 0.3 mm
# pixels (anatomy); E4 / E5: cestFISP before / after an iopamidol injection (6 s block saturation,
# 3.5 µT, 41 offsets −10…+10 ppm, 0.25 ppm steps at 3–7 ppm, three M0 frames at −100 ppm; the offset list
# is repeated 4× (E4) and 6× (E5)); 64 × 64 pixels of 0.6 mm, one 2 mm slice. The study folder's name says
# "Eso"; no treatment is recorded in the files, so the group is just the tumour model.
#
# **One animal.** Everything below is within one tumour of one mouse: pixel counts, medians and bootstrap
# intervals over pixels describe this tumour and the measurement noise, not a population. No group
# comparison, no between-animal variance, no p-value about B16F10 tumours can come out of it. There is no
# simulated truth: the conclusions' truth column is empty.

# %% tags=["parameters"]
manifest = None  # None: the experiment's committed manifest (data/real/acidocest_b16/data_manifest.csv)
study = "acidocest_b16"
preset = "demo"  # unused: real data have their own manifest
cache_dir = None  # where the kept tables go (default: beside the manifest, derived/)
scheduler = None  # None/"threads", "local" or a dask scheduler address
reports_dir = None  # set by `studylib run`; unused here
saturation_b1_uT = 3.5  # the study's saturation power (PVM_MagTransPower); the calibration is interpolated to it
k_detect = 2.0  # agent detected when an amide effect is at least k standard errors (repetition noise)
b0_search_ppm = 1.5  # B0: water minimum searched within +-this
b0_median_px = 3  # B0: median filter of the map (pixels)
smooth_sensitivity_px = 1.0  # sensitivity analysis only: Gaussian smoothing within the tumour (pixels)
n_boot = 10000
primary_endpoint = "tumour_ph"  # the one confirmatory finding (exp.ENDPOINTS); the others are secondary
alpha = 0.05
seed = 0

# %%
import studylib as sl
from studylib import plots
from studylib.experiments import acidocest_b16 as exp

manifest, client = sl.start(exp.study_manifest() if manifest is None else manifest, preset, scheduler)

# %% [markdown]
# ## 1. From the ParaVision folder: import and verify
# `studylib import` lists every scan of the vendored folder (its dry run) and imports scans 3–5 into NIfTI +
# BIDS-keyed sidecars. (The vendored subset holds only these three scans; the upstream study also has E1, a
# tri-pilot localizer the importer refuses for its three slice packs, and E2, a 24-slice RARE.) The notebook
# imports them again on every run, into a scratch folder, and requires every file to be byte-identical
# (sha256) to the committed manifests (`data_manifest.csv` for the CEST scans, `anatomy/data_manifest.csv`
# for the RARE image: a manifest session holds one grid); files missing
# from the data folder (a fresh clone) are moved into place. So the analysis starts from the scanner's own
# files, and a change of the importer cannot change the data without failing here. The commands that made
# the committed manifests are in `data/real/acidocest_b16/README.md`.

# %%
exp.import_plan()

# %%
imported = exp.import_scans(manifest)
imported

# %%
sl.require_verified(manifest, study)
sl.require_verified(exp.anatomy_manifest(manifest))

# %% [markdown]
# ## 2. Load lazily
# Pre and post injection are two CEST scans of the same animal and day, so each is loaded from its own rows
# of the manifest (with the tumour ROI on the CEST grid). Each offset was acquired 4 (pre) or 6 (post)
# times: the repetitions are averaged, and their scatter gives each pixel's noise (standard error of the
# mean, pooled over the 41 offsets). The M0 is the mean of the −100 ppm frames.

# %%
pre_ds = sl.load_study(exp.scan_rows(manifest, exp.SCANS["pre"]), study, "CEST")
post_ds = sl.load_study(exp.scan_rows(manifest, exp.SCANS["post"]), study, "CEST")
anat_ds = sl.load_study(exp.anatomy_manifest(manifest), study, "T2w")
pre = sl.average_repetitions(pre_ds["signal"])
post = sl.average_repetitions(post_ds["signal"])
one = dict(animal=exp.ANIMAL, day=exp.DAY, z=0)
m0 = pre_ds["m0"].compute()  # small maps are computed once; the spectra stay lazy
roi = pre_ds["roi"].compute()
tumour = roi == 1
body = exp.body_mask(m0)
offsets = pre["offset"].values
print(f"pre: {pre.attrs['repetitions']} repetitions, post: {post.attrs['repetitions']}; {offsets.size} offsets "
      f"{offsets.min():.1f}...{offsets.max():.1f} ppm; B1 {pre_ds.attrs.get('SaturationB1_uT')} uT, "
      f"{pre_ds.attrs.get('SaturationTime')} s, {pre_ds.attrs['field_T']} T; tumour ROI {int(tumour.sum())} pixels")

# %% [markdown]
# ## 3. The tumour ROI
# The ROI was drawn on the RARE image by a fixed, reproducible rule (below); the label NIfTIs are committed
# (`roi_t2w` on the RARE grid, `roi_cest` on the CEST grid) and the notebook redraws them from the imported
# image and checks they are identical.

# %%
print(exp.ROI_RULE)
exp.check_roi(manifest)

# %%
t2w = anat_ds["signal"].sel(one)
fig = plots.map_over_anatomy(t2w, (anat_ds["roi"].sel(one) == 1).astype(float), mask=anat_ds["roi"].sel(one) == 1,
                             units="", label="tumour ROI", cmap="autumn", vmin=0, vmax=1, alpha=0.45,
                             title="RARE E3 (0.3 mm) with the tumour ROI")

# %%
fig = plots.map_over_anatomy(m0.sel(one), tumour.sel(one).astype(float), mask=tumour.sel(one), units="",
                             label="tumour ROI", cmap="autumn", vmin=0, vmax=1, alpha=0.45,
                             title="CEST M0 (0.6 mm) with the ROI on the CEST grid")

# %% [markdown]
# ## 4. B0 map
# No WASSR scan was acquired, so each pixel's water frequency is the minimum of its own (repetition-averaged)
# Z-spectrum, found on a cubic spline through the offsets (`sl.cest_b0_map(method="minimum")`), for the
# pre and the post scan separately. Near water the offsets are 0.5 ppm apart and the 3.5 µT line is broad,
# so a single pixel's minimum is noisy (pre − post differences of several tenths of a ppm): the map is
# median-filtered (3 × 3) inside the body, where B0 varies smoothly. The maximum-symmetry method on ±3 ppm
# is shown as a cross-check.

# %%
b0_pre = sl.cest_b0_map(pre["signal"], mask=body, method="minimum", search_ppm=b0_search_ppm).compute()
b0_post = sl.cest_b0_map(post["signal"], mask=body, method="minimum", search_ppm=b0_search_ppm).compute()
b0_pre_f = sl.median_filter_map(b0_pre["b0_ppm"], body, size=b0_median_px)
b0_post_f = sl.median_filter_map(b0_post["b0_ppm"], body, size=b0_median_px)
mscf = sl.cest_b0_map(pre["signal"].sel(offset=slice(-3.01, 3.01)), mask=body, method="mscf").compute()
hz_per_ppm = float(pre_ds.attrs["field_T"]) * 42.577478
b0_lo, b0_med, b0_hi = (float(v) for v in b0_pre_f.quantile([0.01, 0.5, 0.99]))
t_b0 = b0_pre_f.where(tumour)
print(f"B0 (pre, filtered) in the body: 1st-99th percentile {b0_lo:+.2f} ... {b0_hi:+.2f} ppm "
      f"({b0_lo * hz_per_ppm:+.0f} ... {b0_hi * hz_per_ppm:+.0f} Hz), median {b0_med:+.2f} ppm; "
      f"tumour {float(t_b0.min()):+.2f} ... {float(t_b0.max()):+.2f} ppm")
print(f"no water minimum within +-{b0_search_ppm} ppm (before filtering): "
      f"{int((~b0_pre['fit_ok'] & body).sum())} of {int(body.sum())} body pixels")
sd_raw = float((b0_pre["b0_ppm"] - b0_post["b0_ppm"]).where(tumour).std())
sd_filtered = float((b0_pre_f - b0_post_f).where(tumour).std())
vs_mscf = float(abs(b0_pre["b0_ppm"] - mscf["b0_ppm"]).where(tumour).median())
print(f"pre - post B0 in the tumour: SD {sd_raw:.2f} ppm raw, {sd_filtered:.2f} ppm filtered; minimum vs maximum "
      f"symmetry (+-3 ppm): median |difference| in the tumour {vs_mscf:.2f} ppm")

# %%
fig = plots.map_over_anatomy(m0.sel(one), b0_pre_f.sel(one), mask=body.sel(one), units="ppm",
                             label="B0 (water minimum, 3x3 median)", cmap="RdBu_r", vmin=-1.5, vmax=1.5,
                             title="B0 map, pre-injection scan")

# %% [markdown]
# ## 5. Tumour Z-spectra and MTR asymmetry, before and after iopamidol
# Each pixel's spectrum is shifted onto its B0-corrected offset axis (`sl.corrected_zspectrum`, NaN where
# the shift leaves the acquired range). The negative side was sampled sparsely (1 ppm steps beyond
# −2 ppm), so the asymmetry MTRasym(Δ) = Z(−Δ) − Z(+Δ) interpolates Z(−Δ) linearly; it mixes the agent with
# the tissue's own asymmetry (amide, NOE, MT), which is why the pH uses the pre/post difference instead.

# %%
z_pre = sl.corrected_zspectrum(pre["signal"], m0, b0_ppm=b0_pre_f).compute()
z_post = sl.corrected_zspectrum(post["signal"], post_ds["m0"], b0_ppm=b0_post_f).compute()
spectra = {"pre-injection": exp.roi_spectra(z_pre, roi) / 100.0,
           "post-injection": exp.roi_spectra(z_post, roi) / 100.0}
fig = plots.zspectra(offsets, spectra, highlight_ppm=4.2,
                     title=f"tumour, {int(tumour.sum())} pixels: B0-corrected Z-spectra (mean +- SD) and MTRasym")

# %% [markdown]
# ## 6. The iopamidol CEST effect at 4.2 and 5.5 ppm
# Effect = Z_pre − Z_post (% of M0), B0-corrected, averaged over ±0.25 ppm around each amide (3.95–4.45 and
# 5.25–5.75 ppm): positive where the agent saturates water. Its standard error per pixel comes from the
# repetition noise of both scans and the band's interpolation weights.

# %%
z_bands_pre = sl.corrected_zspectrum(pre["signal"], m0, b0_ppm=b0_pre_f, grid_ppm=exp.band_points())
z_bands_post = sl.corrected_zspectrum(post["signal"], post_ds["m0"], b0_ppm=b0_post_f, grid_ppm=exp.band_points())
effects = exp.band_effects(z_bands_pre, z_bands_post).compute()
se = exp.effect_se(offsets, pre["sem"], m0, post["sem"], post_ds["m0"])
se = {k: v.compute() for k, v in se.items()}
for key in ("42", "55"):
    fig = plots.map_over_anatomy(m0.sel(one), effects[f"effect_{key}"].sel(one), mask=body.sel(one), units="% of M0",
                                 cmap="RdBu_r", vmin=-8, vmax=8,
                                 title=f"iopamidol CEST effect at {key[0]}.{key[1]} ppm (pre - post)")

# %% [markdown]
# ## 7. The pH calibration (literature data, not this scanner)
# The ratio of the two effects is turned into pH with a calibration line pH = a + b · log10(E4.2 / E5.5).
# Its coefficients are fitted here to the Pagel lab's own published in-vitro iopamidol Z-spectra
# (`data/real/iopamidol_phantoms`: github JCardenasRdz/acidoCEST_Machine_Learning, MIT; 37 °C, 6 s
# saturation, ~50 mM, T1 0.86–3.4 s, electrode pH 6.26–7.31), with the same effect definition (band means;
# the reference is the phantom's fitted water line instead of a pre-injection scan). Phantoms were measured
# at 3 and 4 µT, bracketing the study's 3.5 µT; the two lines are interpolated to 3.5 µT, and a pixel's pH is
# given only inside the log-ratio span both calibrations cover (no extrapolation). It was **not measured on
# this scanner**, and tissue (T1, T2, MT, temperature) differs from phantoms: the absolute pH carries that
# systematic uncertainty in addition to the noise shown below.

# %%
phantoms = exp.phantom_effects()
cals = exp.calibrations(phantoms)
cal = exp.calibration_at(cals, saturation_b1_uT)
lr_lo, lr_hi = cal["log_ratio_range"]
print(f"calibration at {saturation_b1_uT} uT: pH = {cal['intercept']:.3f} + {cal['slope']:.3f} log10(E4.2/E5.5), "
      f"valid for log10 ratio {lr_lo:+.3f} ... {lr_hi:+.3f} (pH {cal['intercept'] + cal['slope'] * lr_lo:.2f} ... "
      f"{cal['intercept'] + cal['slope'] * lr_hi:.2f}); phantoms pH {cal['ph_range'][0]}-{cal['ph_range'][1]}")
cals

# %%
fig = plots.correlation_scatter(phantoms.assign(b1=phantoms["b1_uT"].map(lambda b: f"{b:g} uT")), "log_ratio", "pH",
                                hue="b1", xlabel="log10 (E 4.2 ppm / E 5.5 ppm)", ylabel="phantom pH (electrode)",
                                title="in-vitro iopamidol calibration (Pagel lab data, 37 C, 6 s)")

# %% [markdown]
# ## 8. Tumour pH, pixel by pixel
# A pixel carries a pH only when (i) B0 and both spectra are finite, (ii) the agent is detected: at least one
# amide effect is ≥ k = 2 standard errors, and (iii) both effects are positive and their log ratio lies in
# the calibrated span. The others are left out and counted by reason.

# %%
extra = {"b0_pre_ppm": b0_pre_f, "b0_post_ppm": b0_post_f}
pixels = exp.ph_pixels(effects, se, cal, roi, k=k_detect, extra=extra)
counts = exp.status_counts(pixels)
ok = pixels[pixels["status"] == 0]
median_ph = float(ok["ph"].median())
iqr = [float(ok["ph"].quantile(0.25)), float(ok["ph"].quantile(0.75))]
print(f"tumour pHe: median {median_ph:.2f}, IQR {iqr[0]:.2f}-{iqr[1]:.2f}, {len(ok)} of {len(pixels)} tumour pixels "
      f"({100 * len(ok) / len(pixels):.0f} %); excluded {len(pixels) - len(ok)}")
pooled = exp.pooled_ratio(pixels, cal)
print(f"pooled over the tumour: effects {pooled['effect_42']:.2f} % (4.2 ppm) and {pooled['effect_55']:.2f} % "
      f"(5.5 ppm), log10 ratio {pooled['log_ratio']:+.2f}: " + (f"pH {pooled['ph']:.2f}" if pooled["inside"] else
      f"outside the calibrated span (above pH {pooled['ph_at_span_end']:.2f}, or no measurable 5.5 ppm effect)"))
counts

# %% tags=["key-figure"]
ph = exp.ph_map(effects, se, cal, k=k_detect).compute()
fig = plots.map_over_anatomy(m0.sel(one), ph["ph"].sel(one), mask=(tumour & (ph["status"] == 0)).sel(one),
                             units="pH", label="pHe (acidoCEST)", cmap="viridis", vmin=6.2, vmax=7.4,
                             title=f"tumour pHe: {len(ok)} of {len(pixels)} pixels carry a pH")

# %%
fig = plots.map_over_anatomy(m0.sel(one), ph["status"].sel(one).astype(float), mask=tumour.sel(one), units="",
                             label="0 pH, 1 no B0, 2 agent too weak, 3 ratio outside calibration", cmap="tab10",
                             vmin=-0.5, vmax=9.5, title="why a tumour pixel has no pH")

# %%
pixels.round(3)

# %% [markdown]
# ## 9. How much do the choices matter?
# The same pixels with one choice changed at a time: the 3 or 4 µT calibration instead of the interpolated
# one; B0 without the median filter; k = 3; and Gaussian smoothing (σ = 1 pixel) inside the tumour before
# the effects, as the lab's analysis code smooths its images (more pixels pass, but neighbouring pixels are
# no longer independent, so it is not used for the estimate).

# %%
variants = {"primary": pixels}
for b1 in cals.index:
    variants[f"calibration at {b1:g} uT only"] = exp.ph_pixels(effects, se, exp.calibration_at(cals, b1),
                                                              roi, k=k_detect)
raw_b0 = exp.band_effects(
    sl.corrected_zspectrum(pre["signal"], m0, b0_ppm=b0_pre["b0_ppm"], grid_ppm=exp.band_points()),
    sl.corrected_zspectrum(post["signal"], post_ds["m0"], b0_ppm=b0_post["b0_ppm"], grid_ppm=exp.band_points()))
variants["B0 not median-filtered"] = exp.ph_pixels(raw_b0.compute(), se, cal, roi, k=k_detect)
variants["k = 3"] = exp.ph_pixels(effects, se, cal, roi, k=3.0)
s_pre, factor = exp.smooth_within(z_bands_pre.compute(), tumour, smooth_sensitivity_px)
s_post, _ = exp.smooth_within(z_bands_post.compute(), tumour, smooth_sensitivity_px)
se_s = {k: v * factor for k, v in se.items()}
variants[f"smoothed (sigma {smooth_sensitivity_px:g} px) in the tumour"] = exp.ph_pixels(
    exp.band_effects(s_pre, s_post), se_s, cal, roi, k=k_detect)
sensitivity = exp.sensitivity_table(variants)
sensitivity

# %% [markdown]
# ## 10. Conclusions
# Row 1: the tumour's median pHe minus 7.4 (the pH of normal extracellular fluid): negative = acidic, the
# direction acidoCEST studies report for tumours. Rows 2–3: the tumour-mean iopamidol effects (did the agent
# reach the tumour?). The intervals are 95 % percentile bootstraps over this tumour's pixels: within-animal
# uncertainty (pixel sampling and noise), not the variation between animals, and without the calibration's
# systematic error. The truth column is empty: real data have no simulated truth.

# %%
conclusions = exp.conclusions(pixels, n_boot=n_boot, seed=seed, primary=primary_endpoint, alpha=alpha)
sl.record(conclusions, study=study, data="real", n_animals=1, median_ph=round(median_ph, 3),
          iqr_ph_low=round(iqr[0], 3), iqr_ph_high=round(iqr[1], 3), n_ph_pixels=int(len(ok)),
          n_tumour_pixels=int(len(pixels)), n_too_weak=int(counts.loc["agent too weak", "pixels"]),
          n_out_of_range=int(counts.loc["ratio outside the calibrated range", "pixels"]),
          n_not_analysable=int(counts.loc["not analysable (no B0 or spectrum)", "pixels"]),
          b0_p01_ppm=round(b0_lo, 2), b0_p99_ppm=round(b0_hi, 2))
print(sl.summary_lines(conclusions))
conclusions

# %% [markdown]
# **Reading the result.** The iopamidol effect in this tumour is small — a few % of M0 at most, comparable to
# the per-pixel noise of a 6 s, 3.5 µT cestFISP with 4–6 repetitions — so most tumour pixels are left out as
# "agent too weak" and the pixels that carry a pH are few and scattered. Their median describes those pixels,
# not the whole tumour: pooled over all tumour pixels the 5.5 ppm effect is barely above zero, so the pooled
# ratio (printed in section 8) can fall outside the calibrated span, i.e. the tumour as a whole gives no pH
# inside the calibration. The interval of row 1 is the pixel-to-pixel (within-animal) uncertainty only; the
# calibration adds a systematic one (the sensitivity table: about a tenth of a pH unit between the 3 and 4 µT
# phantom lines alone, more for tissue vs phantoms). What one animal allows: a demonstration that the
# pipeline (ParaVision import, B0 correction, pre/post CEST effects, ratiometric pH) runs on real scanner data,
# and a description of this tumour on this day. It does not allow a statement about B16F10 tumours in
# general, a comparison between groups or an effect of any (unrecorded) treatment.

# %% [markdown]
# ## Intermediate results kept for inspection
# `studylib show acidocest_b16` lists them; `studylib.workbook.load_intermediate("acidocest_b16", name)` opens them.

# %%
sl.keep_tables(study, manifest, cache_dir, pixels=(pixels, "tumour pixels: effects, SE, log ratio, pH, status"),
               calibration=(phantoms, "in-vitro iopamidol phantoms: effects and log ratio"),
               sensitivity=(sensitivity, "median pH and pixel counts under alternative choices"),
               conclusions=(conclusions, "finding vs paper (no truth: real data)"))
