"""Iron studies: ``ampb_ferumoxytol``, ``blz945_femri``, ``ferumoxytol_therapy`` (multi-gradient-echo R2*).

Signal (independent physics, :mod:`studylib.synth.physics.dephasing`, never the fit's kernel): the
analytic static-dephasing signal of Yablonskiy & Haacke (MRM 1994;32:749) per voxel,
``S(TE) = S0 exp(-R2 TE) exp(-zeta f_s(dw_s TE))``
(:func:`~studylib.synth.physics.dephasing.gre_voxel_signal`), with Rician noise.  ``R2`` is the
tissue's native relaxation rate (the former mono-exponential ``R2*0``: native R2 plus native dephasing,
taken as mono-exponential); the iron -- ferumoxytol or endogenous macrophage iron -- is a volume fraction
``zeta`` of iron-laden cells (magnetised spheres) whose surface frequency is ``dw_s = gamma dchi B0 / 3``.

How ``zeta`` and ``dchi`` are chosen: the long-TE rate of the theory, ``R2' = 2 pi zeta dw_s / (3 sqrt 3)``,
is set to the iron's relaxivity-based increment the design always used (``r2* [Fe]`` with
``r2* = 55.7 /s/mM`` from :mod:`studylib.models.relaxivity`, or ``kappa M`` for endogenous iron), so the
design's R2* values are unchanged; the split of that R2' between ``zeta`` and ``dchi`` -- which the
mono-exponential R2* does not fix -- is a choice: every iron-laden cell has ``dw_s = 2 pi x 50 Hz =
314 rad/s`` (:data:`IRON_CELL_DW_RAD_S`) and ``zeta = R2' / (1.2092 dw_s)`` follows the iron voxel by voxel.
With it the Amp B mean macrophage density (150 /mm^2, iron increment 6.7 /s) gives ``zeta = 1.8 %``,
about the area fraction of 150 cells of 12 um diameter per mm^2 (1.7 %; a plausibility check, the cell
size is a choice).  Superparamagnetic iron oxide is saturated at these fields, so its magnetisation, not
its susceptibility, is the fixed property: ``dw_s`` is the same at both fields and ``dchi = 3 dw_s /
(gamma B0)`` is 0.375 ppm (SI) at 9.4 T and 0.503 ppm at 7 T; the crossover time between the Gaussian
and the exponential regime, ``1.51 / dw_s``, is 4.8 ms at 7 T and at 9.4 T.  Echoes at 2.5-9 ms are
therefore near the Gaussian start of the decay, and a mono-exponential fit reads R2* low (the bias is
measured by the notebooks' truth columns; see the report of issue 14).

The truth written (``truth.json``, ``sessions.csv``, ``maps/*.npz``) is the theory's asymptotic rate
``R2* = R2 + R2'`` (maps ``r2star_per_s``, ``r2prime_per_s``, ``zeta``), never a fitted value.

Iron and macrophages are rim-weighted (rim 1.5 : core 0.6, normalised so the ROI mean equals the
animal's value), with 8 % voxel jitter.

Amp B ferumoxytol is given 24 h before each imaging day (both groups: it is the imaging agent), and
each session is a pair of scans: a pre-contrast MEGRE on day ``d - 1`` just before the injection (no
``Agent`` in its sidecar) and the post-contrast MEGRE on day ``d``.  Tissue iron of earlier doses stays:
tumour iron is the sum over the doses taken up so far, each cleared with a half-life of
:data:`FERUMOXYTOL_TISSUE_HALF_LIFE_DAYS` = 14 d -- a choice, not a published tumour value (none was found
in the search corpus): 95 % of a dose is then gone after 8.6 weeks, inside the 6-12 weeks over which tissue
clears ferumoxytol iron (docs: shared science notes), and shorter than the months liver and spleen hold it
(Storey et al., Invest Radiol 2012;47:717, liver R2* raised for months after 5 mg Fe/kg; ferumoxytol
product information: detectable in liver, spleen and marrow up to 3 months, radiolabel data).
``ferumoxytol_therapy`` gives a single dose (its own ``iron_clear_days``).

Histology: the stains are drawn as the animal's truth (macrophage density, tumour iron) times a log-normal
factor of mean 1 per stain and animal (``histology_sd``: the section sampled against the whole-tumour MRI,
staining and counting).  The reported correlation of imaging iron with macrophage histology is r = 0.55-0.71
with n ~ 10 (shared science notes); ``histology_sd`` is chosen so that the simulator's population r over all
animals (both groups; what such papers report) is in the middle of it: Amp B endpoint dR2* vs Iba1 0.63
(``histology_sd`` 0.5; was 0.90 with 0.2), BLZ945 day-7 R2* vs Prussian blue 0.64 (0.55; was 0.86 with
0.25), by Monte Carlo of the design's biology.  The treatment moves imaging and histology together, so the r
*within* a group (cell) is lower: 0.42 (Amp B) and 0.32 (BLZ945) in the population, and a demo-sized study
(6-7 animals per group) often cannot show it.  ``ferumoxytol_therapy`` has no imaging-histology correlation:
its CD80/CD206 are group contrasts drawn independently of the tumour iron.

Bilateral tumours (``ferumoxytol_therapy``): each tumour's biological parameters (start volume, growth rate,
iron uptake, native R2*, CD80, CD206) are ``sqrt(icc) z_animal + sqrt(1 - icc) z_tumour`` on the normal
scale, so the two tumours of a mouse correlate with ``bilateral_icc`` = 0.5 (a chosen value: no bilateral
correlation was found in the search corpus) and each parameter keeps its SD; the mean of the two sides then
has variance (1 + icc) / 2 = 0.75 of a single tumour's, not 0.5 as for independent sides.  The notebook
averages each animal's two tumours (the animal is the unit of analysis), which is right for either.

=====================  ==========================================================  =========================
study                   design and true values (chosen to be plausible; see science.md)  source
=====================  ==========================================================  =========================
ampb_ferumoxytol        9.4 T MGE, TE 2.5 + 3k ms (12 echoes), TR 0.8 s, 30 deg;       Yang 2017 Neuro-Oncol
                        vehicle vs ampb, days 0/3/7/10 post-contrast, each with a       19:364 (DOI
                        pre-contrast scan on day d - 1 (ferumoxytol 10 mg Fe/kg right   10.1093/neuonc/now237)
                        after it, 24 h before each post scan); macrophages M0 = 150
                        /mm2 x LN(0.25), rising by 10 % (vehicle) or 150 % (Amp B) by
                        day 10; each dose adds 0.8 uM iron per macrophage/mm2 (on its
                        scan day), cleared with a 14-day half-life;
                        r2* = 55.7 /s/mM (studylib.models.relaxivity);
                        R2*0 tumour 38 +- 2.5 /s, brain 30, muscle 45 /s.  One vehicle
                        animal dies before day 10.  Histology: Iba1, CD68, Prussian blue.
blz945_femri            7 T MGE, TE 3..48 ms (16), TR 1.2 s, 60 deg; control vs blz945  Leftin 2019 Sci Rep
                        x TS1/99LN; days 0/3/7; TAMs M0 = 350 (TS1) / 220 (99LN) /mm2     9:857 (DOI
                        x LN(0.25); BLZ945: M = M0 (1 - 0.65 (1 - exp(-d / 2.5 d)));   10.1038/s41598-018-37408-7)
                        control +2 %/day; R2* = 32 +- 2.5 + 0.06 M /s; muscle 40 /s.
                        One control animal lost before day 7.  Histology: Prussian blue
                        area %, CD68.
ferumoxytol_therapy     7 T; T2w RARE (TE 33 ms, TR 2.5 s) + MGE TE 2.5 + 3k ms (10);   Zanganeh 2016 Nat
                        MMTV-PyMT bilateral tumours (ROI label 1 = left, 6 = right);     Nanotechnol 11:986
                        control vs ferumoxytol (10 mg Fe/kg i.v. after the day-0 scan);  (DOI 10.1038/nnano.2016.168)
                        days 0/1/7/14/21; V0 = 20 mm3 x LN(0.25), growth 0.060 /day
                        (control) vs 0.035 /day (ferumoxytol) +- 0.006; tumour iron
                        170 uM x LN(0.3) at day 1, then x exp(-(d-1)/10 d); r2* = 55.7
                        /s/mM (studylib.models.relaxivity); R2*0 40 +- 3 /s.  Tumours > 125 mm3 reach the humane
                        endpoint; the control animal with the largest day-21 tumour
                        leaves after day 14.  Histology per tumour: CD80 %, CD206 %.
=====================  ==========================================================  =========================
"""

from __future__ import annotations

import numpy as np

from ..errors import SynthError
from ..models.relaxivity import relaxivity
from ._common import (Animal, Context, Scan, Session, StudyPlan, drop_last_day, group_means, make_animals, pearson,
                      roi_mean)
from ._phantom import Body, Geometry, Tumour, label_map, lognormal_mean1, spatial_pattern
from .physics.dephasing import GAMMA_RAD_PER_S_PER_T, gre_voxel_signal, zeta_for_r2prime

FE_MG_PER_MMOL = 55.845

#: equatorial surface frequency of an iron-laden cell (rad/s), both fields: a choice (module notes)
IRON_CELL_DW_RAD_S = 2.0 * np.pi * 50.0

#: half-life (days) of ferumoxytol iron in tumour tissue after uptake: a choice (module notes)
FERUMOXYTOL_TISSUE_HALF_LIFE_DAYS = 14.0

#: ferumoxytol r2* (1/s/mM Fe) from studylib.models.relaxivity (3 T plasma value, field independent above 3 T)
R2STAR_9P4 = relaxivity("ferumoxytol", 9.4, kind="r2star").value_per_mM_s
R2STAR_7 = relaxivity("ferumoxytol", 7.0, kind="r2star").value_per_mM_s

AMPB = dict(field_T=9.4, te_ms=2.5 + 3.0 * np.arange(12), tr_s=0.8, flip_deg=30.0, days=[0, 3, 7, 10],
            dose_mgFe_per_kg=10.0, r2star_per_s_per_mM=R2STAR_9P4,
            r2star0_tumour=38.0, r2star0_sd=2.5, r2star_brain=30.0, r2star_muscle=45.0,
            s0_tumour=1000.0, s0_brain=900.0, s0_muscle=700.0, sigma=20.0,
            macrophage0_per_mm2=150.0, macrophage_sd=0.25, macrophage_rise_by_day10={"vehicle": 0.10, "ampb": 1.50},
            iron_uM_per_macrophage=0.8, volume0_mm3=15.0, volume_sd=0.25, growth_per_day=0.08,
            w_rim=1.5, w_core=0.6, jitter=0.08,
            # histology (Iba1, CD68, Prussian blue) = truth x LN(histology_sd) per stain and animal: one section
            # against the whole-tumour MRI.  Chosen so that the population r of endpoint tumour dR2* and Iba1 over
            # all animals is 0.63, the middle of the 0.55-0.71 (n ~ 10) reported for imaging iron vs macrophage
            # histology (shared science notes); within a group it is then 0.42 (module notes: histology)
            histology_sd=0.5)

BLZ = dict(field_T=7.0, te_ms=3.0 * np.arange(1, 17), tr_s=1.2, flip_deg=60.0, days=[0, 3, 7],
           tam0_per_mm2={"TS1": 350.0, "99LN": 220.0}, tam_sd=0.25, blz_depletion=0.65, blz_tau_days=2.5,
           control_rise_per_day=0.02, kappa_per_s_per_tam=0.06, r2star0_tumour=32.0, r2star0_sd=2.5,
           r2star_tissue=30.0, r2star_muscle=40.0, s0_tumour=1000.0, s0_tissue=900.0, s0_muscle=700.0, sigma=20.0,
           volume0_mm3=60.0, volume_sd=0.25, growth_per_day={"control": 0.06, "blz945": 0.04},
           w_rim=1.5, w_core=0.6, jitter=0.08,
           # histology (Prussian blue, CD68) = truth x LN(histology_sd): chosen so that the population r of day-7
           # tumour R2* and Prussian blue over all animals is 0.64, inside the reported 0.55-0.71 (within a
           # group x model cell 0.32; module notes: histology)
           histology_sd=0.55)

FERU = dict(field_T=7.0, te_ms=2.5 + 3.0 * np.arange(10), tr_s=0.8, flip_deg=30.0, days=[0, 1, 7, 14, 21],
            t2w_te_ms=33.0, t2w_tr_s=2.5, t2_tumour_ms=60.0, t2_tissue_ms=45.0, t2_muscle_ms=30.0,
            pd_tumour=1000.0, pd_tissue=800.0, pd_muscle=650.0, t2w_sigma=15.0,
            dose_mgFe_per_kg=10.0, r2star_per_s_per_mM=R2STAR_7, iron_peak_uM=170.0, iron_sd=0.30,
            iron_clear_days=10.0, r2star0_tumour=40.0, r2star0_sd=3.0, r2star_tissue=35.0, r2star_muscle=40.0,
            s0_tumour=1000.0, s0_tissue=850.0, s0_muscle=700.0, sigma=20.0,
            volume0_mm3=20.0, volume_sd=0.25, growth_per_day={"control": 0.060, "ferumoxytol": 0.035},
            growth_sd=0.006, volume_cap_mm3=125.0,
            # intra-animal correlation of each biological parameter of the two tumours (start volume, growth, iron
            # uptake, native R2*, CD80, CD206): a chosen value -- no bilateral-tumour correlation was found in the
            # search corpus; half of the variance is the animal's (host), half the tumour's own (inoculum, site)
            bilateral_icc=0.5,
            cd80_pct={"control": (12.0, 3.0), "ferumoxytol": (28.0, 5.0)},
            cd206_pct={"control": (45.0, 6.0), "ferumoxytol": (25.0, 5.0)},
            w_rim=1.5, w_core=0.6, jitter=0.08)


def _megre_sidecar(p, *, agent=None, timing=None) -> dict:
    sc = {"EchoTime": [t / 1000.0 for t in p["te_ms"]], "RepetitionTime": p["tr_s"], "FlipAngle": p["flip_deg"],
          "MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "PulseSequenceType": "multi-gradient-echo",
          "MRAcquisitionType": "2D", "GeneratedBy": "studylib.synth"}
    if agent:
        sc["Agent"] = agent
        sc["ContrastDose_mmol_per_kg"] = p["dose_mgFe_per_kg"] / FE_MG_PER_MMOL
        if timing:
            sc["ContrastTiming"] = timing
    return sc


def iron_cell_dchi_ppm(field_T: float) -> float:
    """Susceptibility difference (SI ppm) of an iron-laden cell at ``field_T``: ``3 dw_s / (gamma B0)``."""
    return 3.0 * IRON_CELL_DW_RAD_S / (GAMMA_RAD_PER_S_PER_T * float(field_T)) * 1e6


def _megre(p, s0, r2_native, r2prime, sidecar) -> tuple[Scan, dict]:
    """The MEGRE scan of the static-dephasing physics, and its truth maps.

    ``r2_native`` (1/s) is the tissue's own rate, ``r2prime`` (1/s) the iron's long-TE R2' per voxel; the
    iron-laden cells get ``zeta = R2' / (1.2092 dw_s)`` at :data:`IRON_CELL_DW_RAD_S`.  Returns the scan and
    ``{"r2star_per_s": R2 + R2', "r2prime_per_s": R2', "zeta": zeta}``.
    """
    dchi = iron_cell_dchi_ppm(p["field_T"])
    zeta = zeta_for_r2prime(r2prime, dchi, p["field_T"])
    data = gre_voxel_signal(p["te_ms"], s0=s0, r2_per_s=r2_native, zeta=zeta, dchi_ppm=dchi, b0_T=p["field_T"])
    return Scan("MEGRE", data, p["sigma"], sidecar), {"r2star_per_s": r2_native + r2prime, "r2prime_per_s": r2prime,
                                                      "zeta": zeta}


def _tissue_maps(lab, values: dict[int, float], default: float) -> np.ndarray:
    m = np.full(lab.shape, default, dtype=float)
    for k, v in values.items():
        m[lab == k] = v
    return m


# --------------------------------------------------------------------------------------------- ampb
def _decay(dt_days):
    """Fraction of a tissue iron dose left ``dt_days`` after its uptake (half-life
    :data:`FERUMOXYTOL_TISSUE_HALF_LIFE_DAYS`)."""
    return 0.5 ** (np.asarray(dt_days, dtype=float) / FERUMOXYTOL_TISSUE_HALF_LIFE_DAYS)


def plan_ampb(ctx: Context) -> StudyPlan:
    p = AMPB
    grid = ctx.grid(16.0)
    body = Body()
    days = ctx.days(p["days"])  # post-contrast days; each has its pre-contrast scan on day d - 1
    if any(b - a < 2 for a, b in zip(days, days[1:])):
        raise SynthError(f"ampb_ferumoxytol: post-contrast days {days} must be >= 2 days apart (a pre-contrast "
                         "scan on day d - 1 would fall on an earlier post-contrast day)")
    animals = make_animals(ctx, [("vehicle", None), ("ampb", None)], days, sex="mixed")
    for a in animals:
        r = ctx.rng(1, a.index)
        a.params.update(macrophage0=p["macrophage0_per_mm2"] * lognormal_mean1(r, p["macrophage_sd"]),
                        r2star0=p["r2star0_tumour"] + p["r2star0_sd"] * r.standard_normal(),
                        volume0=p["volume0_mm3"] * lognormal_mean1(r, p["volume_sd"]),
                        hist_noise=lognormal_mean1(r, p["histology_sd"], 3))
    drop_last_day(ctx, animals, [a for a in animals if a.group == "vehicle"], "neurological endpoint before last day")

    def rise(group: str, d) -> np.ndarray:
        return 1.0 + p["macrophage_rise_by_day10"][group] * np.asarray(d, dtype=float) / 10.0

    def macrophages(a: Animal, d: int) -> float:
        return a.params["macrophage0"] * float(rise(a.group, d))

    def dose_sum(group: str, t: float) -> float:
        """Sum over the doses taken up by time ``t`` (day) of ``rise(group, d_i) * decay(t - d_i)``: tumour iron
        per unit ``iron_uM_per_macrophage * macrophage0``.  Dose i is injected on day ``d_i - 1`` (after that
        day's pre-contrast scan) and taken up by the post-contrast scan on ``d_i``."""
        taken = np.asarray([d for d in days if d <= t], dtype=float)
        return float(np.sum(rise(group, taken) * _decay(t - taken)))

    def iron_uM(a: Animal, t: float) -> float:
        return p["iron_uM_per_macrophage"] * a.params["macrophage0"] * dose_sum(a.group, t)

    k_iron = p["r2star_per_s_per_mM"] / 1000.0  # 1/s per uM

    def session(a: Animal, d: int, post: bool):
        t = d if post else d - 1
        vol = a.params["volume0"] * np.exp(p["growth_per_day"] * t)
        tum = Tumour(2.2, 0.5, vol)
        bm = body.masks(grid)
        tmask, rim = tum.masks(grid)
        lab = label_map(grid, bm, [(1, tmask)])
        rv = ctx.rng(3, a.index, d, int(post))
        w_fe = spatial_pattern(tmask, rim, p["w_rim"], p["w_core"], p["jitter"], rv)
        w_0 = spatial_pattern(tmask, rim, 1.0, 1.0, 0.04, rv)
        fe = np.where(tmask, iron_uM(a, t) * w_fe, 0.0)
        r2n = _tissue_maps(lab, {2: p["r2star_muscle"]}, p["r2star_brain"])
        r2n = np.where(tmask, a.params["r2star0"] * w_0, r2n)
        s0 = _tissue_maps(lab, {1: p["s0_tumour"], 2: p["s0_muscle"], 5: 0.0}, p["s0_brain"])
        if post:
            sc = _megre_sidecar(p, agent="ferumoxytol", timing="24 h after i.v. ferumoxytol")
        else:
            sc = _megre_sidecar(p)
            sc["ContrastTiming"] = "pre-contrast, before i.v. ferumoxytol (earlier doses may remain in tissue)"
        scan, m = _megre(p, s0, r2n, k_iron * fe, sc)
        r2s = m["r2star_per_s"]
        truth = dict(contrast="post" if post else "pre", post_day=d,
                     tumour_r2star_per_s=roi_mean(tmask, r2s), tumour_t2star_ms=roi_mean(tmask, 1000 / r2s),
                     tumour_r2prime_per_s=roi_mean(tmask, m["r2prime_per_s"]), tumour_zeta=roi_mean(tmask, m["zeta"]),
                     tumour_iron_uM=roi_mean(tmask, fe), muscle_r2star_per_s=roi_mean(lab == 2, r2s),
                     macrophages_per_mm2=macrophages(a, t), tumour_volume_mm3=vol,
                     tumour_volume_roi_mm3=float(tmask.sum()) * grid.voxel_volume_mm3, noise_sigma=p["sigma"])
        return Session(a, t, [scan], lab, {1: "tumour", 2: "muscle", 5: "background"}, truth,
                       {"s0": s0, "iron_uM": fe, "r2_native_per_s": r2n, **m}, labels_on=Geometry(body, ((1, tum),)))

    def sessions():
        for a in animals:
            for d in a.days:
                pre = session(a, d, post=False)
                post = session(a, d, post=True)
                post.truth["tumour_delta_r2star_per_s"] = (post.truth["tumour_r2star_per_s"]
                                                           - pre.truth["tumour_r2star_per_s"])
                yield pre
                yield post

    rows = []
    for a in animals:
        d = a.days[-1]
        m = macrophages(a, d)
        hn = a.params["hist_noise"]
        rows.append(dict(animal=a.id, group=a.group, sex=a.sex, endpoint_day=d,
                         iba1_cells_per_mm2=m * hn[0], cd68_cells_per_mm2=0.6 * m * hn[1],
                         prussian_blue_area_pct=0.008 * iron_uM(a, d) * hn[2]))
    cols = ["animal", "group", "sex", "endpoint_day", "iba1_cells_per_mm2", "cd68_cells_per_mm2",
            "prussian_blue_area_pct"]
    last = days[-1]
    # population effects (macrophage0 has mean macrophage0_per_mm2, the iron and native patterns ROI mean 1)
    scale = k_iron * p["iron_uM_per_macrophage"] * p["macrophage0_per_mm2"]
    pop = scale * (dose_sum("ampb", last) - dose_sum("vehicle", last))
    pop_delta = scale * ((dose_sum("ampb", last) - dose_sum("ampb", last - 1))
                         - (dose_sum("vehicle", last) - dose_sum("vehicle", last - 1)))

    def summarise(st: list[dict]) -> dict:
        post = [r for r in st if r["contrast"] == "post"]
        gm_last = group_means(post, "tumour_r2star_per_s", where=lambda r: r["day"] == last)
        gd_last = group_means(post, "tumour_delta_r2star_per_s", where=lambda r: r["day"] == last)
        end = {r["animal"]: r for r in post if r["day"] == max(x["day"] for x in post if x["animal"] == r["animal"])}
        ids = sorted(end)
        hist = {h["animal"]: h for h in rows}

        def r_with(key, hcol):
            return pearson([end[i][key] for i in ids], [hist[i][hcol] for i in ids])
        return {
            "effects": {
                "tumour_delta_r2star_per_s_ampb_minus_vehicle_last_day": {
                    "day": last, "population": pop_delta,
                    "sample": gd_last.get("ampb", np.nan) - gd_last.get("vehicle", np.nan),
                    "direction": "ampb > vehicle",
                    "what": "post - pre-contrast tumour R2* (the last dose's iron), Amp B - vehicle"},
                "tumour_r2star_per_s_ampb_minus_vehicle_last_day": {
                    "day": last, "population": pop,
                    "sample": gm_last.get("ampb", np.nan) - gm_last.get("vehicle", np.nan),
                    "direction": "ampb > vehicle",
                    "what": "post-contrast tumour R2* (native + all doses' iron), Amp B - vehicle"},
                "tumour_r2star_group_means_by_day": {str(d): group_means(post, "tumour_r2star_per_s",
                                                                       where=lambda r, d=d: r["day"] == d)
                                                     for d in days},
                "tumour_delta_r2star_group_means_by_day": {str(d): group_means(post, "tumour_delta_r2star_per_s",
                                                                             where=lambda r, d=d: r["day"] == d)
                                                           for d in days},
            },
            "correlations": {
                "endpoint_tumour_iron_uM_vs_iba1_cells_per_mm2": r_with("tumour_iron_uM", "iba1_cells_per_mm2"),
                "endpoint_tumour_delta_r2star_vs_iba1_cells_per_mm2": r_with("tumour_delta_r2star_per_s",
                                                                             "iba1_cells_per_mm2"),
                "endpoint_tumour_delta_r2star_vs_cd68_cells_per_mm2": r_with("tumour_delta_r2star_per_s",
                                                                             "cd68_cells_per_mm2"),
                "endpoint_tumour_r2star_vs_iba1_cells_per_mm2": r_with("tumour_r2star_per_s", "iba1_cells_per_mm2"),
                "endpoint_tumour_r2star_vs_cd68_cells_per_mm2": r_with("tumour_r2star_per_s", "cd68_cells_per_mm2"),
            },
        }

    design = {k: v for k, v in p.items()}
    design["days"] = days
    design["precontrast_days"] = [d - 1 for d in days]
    design["iron_cell_dw_rad_per_s"] = IRON_CELL_DW_RAD_S
    design["iron_cell_dchi_ppm"] = iron_cell_dchi_ppm(p["field_T"])
    design["ferumoxytol_tissue_half_life_days"] = FERUMOXYTOL_TISSUE_HALF_LIFE_DAYS
    return StudyPlan("ampb_ferumoxytol", grid, animals, sessions, cols, rows, design, summarise)


# --------------------------------------------------------------------------------------------- blz945
def plan_blz945(ctx: Context) -> StudyPlan:
    p = BLZ
    grid = ctx.grid(16.0)
    body = Body()
    days = ctx.days(p["days"])
    animals = make_animals(ctx, [("control", "TS1"), ("blz945", "TS1"), ("control", "99LN"), ("blz945", "99LN")],
                           days)
    for a in animals:
        r = ctx.rng(1, a.index)
        a.params.update(tam0=p["tam0_per_mm2"][a.model] * lognormal_mean1(r, p["tam_sd"]),
                        r2star0=p["r2star0_tumour"] + p["r2star0_sd"] * r.standard_normal(),
                        volume0=p["volume0_mm3"] * lognormal_mean1(r, p["volume_sd"]),
                        hist_noise=lognormal_mean1(r, p["histology_sd"], 2))
    drop_last_day(ctx, animals, [a for a in animals if a.group == "control"], "scan failed (respiratory gating)")

    def tam(a: Animal, d: int) -> float:
        if a.group == "blz945":
            return a.params["tam0"] * (1.0 - p["blz_depletion"] * (1.0 - np.exp(-d / p["blz_tau_days"])))
        return a.params["tam0"] * (1.0 + p["control_rise_per_day"] * d)

    def sessions():
        for a in animals:
            for d in a.days:
                vol = a.params["volume0"] * np.exp(p["growth_per_day"][a.group] * d)
                tum = Tumour(2.2, 0.5, vol)
                bm = body.masks(grid)
                tmask, rim = tum.masks(grid)
                lab = label_map(grid, bm, [(1, tmask)])
                rv = ctx.rng(3, a.index, d)
                w_m = spatial_pattern(tmask, rim, p["w_rim"], p["w_core"], p["jitter"], rv)
                w_0 = spatial_pattern(tmask, rim, 1.0, 1.0, 0.04, rv)
                tam_map = np.where(tmask, tam(a, d) * w_m, 0.0)
                r2n = _tissue_maps(lab, {2: p["r2star_muscle"]}, p["r2star_tissue"])
                r2n = np.where(tmask, a.params["r2star0"] * w_0, r2n)
                s0 = _tissue_maps(lab, {1: p["s0_tumour"], 2: p["s0_muscle"], 5: 0.0}, p["s0_tissue"])
                scan, m = _megre(p, s0, r2n, p["kappa_per_s_per_tam"] * tam_map, _megre_sidecar(p))
                r2s = m["r2star_per_s"]
                truth = dict(tumour_r2star_per_s=roi_mean(tmask, r2s), tumour_t2star_ms=roi_mean(tmask, 1000 / r2s),
                             tumour_r2prime_per_s=roi_mean(tmask, m["r2prime_per_s"]),
                             tam_per_mm2=tam(a, d), muscle_r2star_per_s=roi_mean(lab == 2, r2s),
                             tumour_volume_mm3=vol, tumour_volume_roi_mm3=float(tmask.sum()) * grid.voxel_volume_mm3,
                             noise_sigma=p["sigma"])
                yield Session(a, d, [scan], lab, {1: "tumour", 2: "muscle", 5: "background"}, truth,
                              {"s0": s0, "tam_per_mm2": tam_map, "r2_native_per_s": r2n, **m},
                              labels_on=Geometry(body, ((1, tum),)))

    rows = []
    for a in animals:
        d = a.days[-1]
        m = tam(a, d)
        hn = a.params["hist_noise"]
        rows.append(dict(animal=a.id, group=a.group, model=a.model, sex=a.sex, endpoint_day=d,
                         prussian_blue_area_pct=0.005 * m * hn[0], cd68_cells_per_mm2=m * hn[1]))
    cols = ["animal", "group", "model", "sex", "endpoint_day", "prussian_blue_area_pct", "cd68_cells_per_mm2"]
    last = days[-1]

    def pop_effect(model):
        m0 = p["tam0_per_mm2"][model]
        blz = m0 * (1.0 - p["blz_depletion"] * (1.0 - np.exp(-last / p["blz_tau_days"])))
        ctl = m0 * (1.0 + p["control_rise_per_day"] * last)
        return p["kappa_per_s_per_tam"] * (blz - ctl)

    def summarise(st: list[dict]) -> dict:
        eff = {}
        for model in ("TS1", "99LN"):
            gm = group_means(st, "tumour_r2star_per_s", where=lambda r, m=model: r["day"] == last and r["model"] == m)
            eff[f"tumour_r2star_per_s_blz945_minus_control_last_day_{model}"] = {
                "day": last, "population": pop_effect(model),
                "sample": gm.get("blz945", np.nan) - gm.get("control", np.nan), "direction": "blz945 < control"}
        gm = group_means(st, "tumour_r2star_per_s", where=lambda r: r["day"] == last)
        eff["tumour_r2star_per_s_blz945_minus_control_last_day"] = {
            "day": last, "population": 0.5 * (pop_effect("TS1") + pop_effect("99LN")),
            "sample": gm.get("blz945", np.nan) - gm.get("control", np.nan), "direction": "blz945 < control"}
        end = {}
        for r in st:
            if r["animal"] not in end or r["day"] > end[r["animal"]]["day"]:
                end[r["animal"]] = r
        hist = {h["animal"]: h for h in rows}
        ids = sorted(end)
        return {"effects": eff, "correlations": {
            "endpoint_tumour_r2star_vs_prussian_blue_area_pct": pearson(
                [end[i]["tumour_r2star_per_s"] for i in ids], [hist[i]["prussian_blue_area_pct"] for i in ids]),
            "endpoint_tumour_r2star_vs_cd68_cells_per_mm2": pearson(
                [end[i]["tumour_r2star_per_s"] for i in ids], [hist[i]["cd68_cells_per_mm2"] for i in ids])}}

    design = dict(p)
    design["days"] = days
    design["iron_cell_dw_rad_per_s"] = IRON_CELL_DW_RAD_S
    design["iron_cell_dchi_ppm"] = iron_cell_dchi_ppm(p["field_T"])
    return StudyPlan("blz945_femri", grid, animals, sessions, cols, rows, design, summarise)


# --------------------------------------------------------------------------------------------- ferumoxytol therapy
#: rng stream of the animals' shared (host) effects of the bilateral tumours (streams 1-9 and 20 are in use)
BILATERAL_STREAM = 10

_BILATERAL_KEYS = ("volume0", "growth", "iron_peak", "r2star0", "cd80", "cd206")


def _bilateral_z(shared: dict, rng: np.random.Generator, icc: float):
    """Standard normal of one tumour's parameter: ``sqrt(icc) z_animal + sqrt(1 - icc) z_side``.

    ``shared`` holds the animal's ``z_animal`` per parameter; each call of the returned function draws the
    side's ``z_side`` from ``rng`` (one standard normal, in call order).  Two tumours of one animal then have
    correlation ``icc``; the marginal is N(0, 1), so every parameter keeps its SD.
    """
    if not 0.0 <= icc <= 1.0:
        raise SynthError(f"bilateral_icc must be in [0, 1], got {icc!r}")

    def z(key: str) -> float:
        return float(np.sqrt(icc) * shared[key] + np.sqrt(1.0 - icc) * rng.standard_normal())
    return z


def _lognormal_from_z(z: float, sd: float) -> float:
    """``exp(sd z - sd^2 / 2)``: the log-normal factor of mean 1 (:func:`lognormal_mean1`) of a standard normal."""
    return float(np.exp(sd * z - 0.5 * sd * sd))


def plan_ferumoxytol_therapy(ctx: Context) -> StudyPlan:
    p = FERU
    grid = ctx.grid(20.0)
    body = Body(rx=9.2, ry=6.5, muscle=(0.0, -4.3, 1.4, 1.0))
    days = ctx.days(p["days"])
    animals = make_animals(ctx, [("control", "MMTV-PyMT"), ("ferumoxytol", "MMTV-PyMT")], days)
    sides = ("left", "right")
    for a in animals:
        r = ctx.rng(1, a.index)
        # each biological parameter of a tumour = the animal's shared effect + the side's own (standard normals
        # mixed so the marginal SD is unchanged and the two sides correlate by bilateral_icc); the side parts
        # come from stream 1 in the former order, the animal's part from its own stream
        shared = dict(zip(_BILATERAL_KEYS, ctx.rng(BILATERAL_STREAM, a.index).standard_normal(len(_BILATERAL_KEYS))))
        for s in sides:
            z = _bilateral_z(shared, r, p["bilateral_icc"])
            a.params[s] = dict(volume0=p["volume0_mm3"] * _lognormal_from_z(z("volume0"), p["volume_sd"]),
                               growth=p["growth_per_day"][a.group] + p["growth_sd"] * z("growth"),
                               iron_peak=p["iron_peak_uM"] * _lognormal_from_z(z("iron_peak"), p["iron_sd"]),
                               r2star0=p["r2star0_tumour"] + p["r2star0_sd"] * z("r2star0"),
                               cd80=max(1.0, p["cd80_pct"][a.group][0] + p["cd80_pct"][a.group][1] * z("cd80")),
                               cd206=max(1.0, p["cd206_pct"][a.group][0] + p["cd206_pct"][a.group][1] * z("cd206")),
                               weight_noise=lognormal_mean1(r, 0.1))

    def volume(a, s, d):
        q = a.params[s]
        return q["volume0"] * np.exp(q["growth"] * d)

    # humane endpoint: no session once either tumour exceeds the cap
    for a in animals:
        keep = [d for d in a.days if max(volume(a, s, d) for s in sides) <= p["volume_cap_mm3"]]
        if len(keep) < len(a.days):
            a.params["left_study"] = "humane endpoint (tumour volume)"
        a.days = keep or a.days[:1]
    ctl_full = [a for a in animals if a.group == "control" and len(a.days) == len(days)]
    if ctl_full and len(days) > 1:
        big = max(ctl_full, key=lambda a: max(volume(a, s, days[-1]) for s in sides))
        big.days = big.days[:-1]
        big.params["left_study"] = "humane endpoint (tumour volume)"

    def iron(a, s, d):
        if a.group != "ferumoxytol" or d < 1:
            return 0.0
        return a.params[s]["iron_peak"] * np.exp(-(d - 1) / p["iron_clear_days"])

    centres = {"left": (-4.6, 0.5), "right": (4.6, 0.5)}
    label_of = {"left": 1, "right": 6}

    def sessions():
        for a in animals:
            for d in a.days:
                bm = body.masks(grid)
                rv = ctx.rng(3, a.index, d)
                tm = {}
                for s in sides:
                    tm[s] = Tumour(*centres[s], volume(a, s, d)).masks(grid)
                lab = label_map(grid, bm, [(label_of[s], tm[s][0]) for s in sides])
                r2n = _tissue_maps(lab, {2: p["r2star_muscle"]}, p["r2star_tissue"])
                fe = np.zeros(grid.shape)
                truth = {"noise_sigma_megre": p["sigma"], "noise_sigma_t2w": p["t2w_sigma"]}
                for s in sides:
                    m, rim = tm[s]
                    w_fe = spatial_pattern(m, rim, p["w_rim"], p["w_core"], p["jitter"], rv)
                    w_0 = spatial_pattern(m, rim, 1.0, 1.0, 0.04, rv)
                    fe = np.where(m, iron(a, s, d) * w_fe, fe)
                    r2n = np.where(m, a.params[s]["r2star0"] * w_0, r2n)
                r2prime = p["r2star_per_s_per_mM"] * fe / 1000.0
                r2s = r2n + r2prime
                for s in sides:
                    m = tm[s][0]
                    truth.update({f"{s}_tumour_volume_mm3": volume(a, s, d),
                                  f"{s}_tumour_volume_roi_mm3": float(m.sum()) * grid.voxel_volume_mm3,
                                  f"{s}_tumour_r2star_per_s": roi_mean(m, r2s),
                                  f"{s}_tumour_t2star_ms": roi_mean(m, 1000 / r2s),
                                  f"{s}_tumour_r2prime_per_s": roi_mean(m, r2prime),
                                  f"{s}_tumour_iron_uM": roi_mean(m, fe)})
                tum_any = (lab == 1) | (lab == 6)
                s0 = _tissue_maps(lab, {2: p["s0_muscle"], 5: 0.0}, p["s0_tissue"])
                s0 = np.where(tum_any, p["s0_tumour"], s0)
                pd = _tissue_maps(lab, {2: p["pd_muscle"], 5: 0.0}, p["pd_tissue"])
                pd = np.where(tum_any, p["pd_tumour"], pd)
                t2 = _tissue_maps(lab, {2: p["t2_muscle_ms"]}, p["t2_tissue_ms"])
                t2 = np.where(tum_any, p["t2_tumour_ms"], t2)
                t2w = pd * np.exp(-p["t2w_te_ms"] / t2)  # RARE at its effective TE: PD exp(-TE/T2) (volumes only)
                t2w_sc = {"EchoTime": p["t2w_te_ms"] / 1000.0, "RepetitionTime": p["t2w_tr_s"],
                          "MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "PulseSequenceType": "RARE",
                          "MRAcquisitionType": "2D", "GeneratedBy": "studylib.synth"}
                timing = ("before ferumoxytol" if d == 0 else f"{24 * d} h after ferumoxytol") \
                    if a.group == "ferumoxytol" else "no ferumoxytol (saline)"
                sc = _megre_sidecar(p)
                sc["ContrastTiming"] = timing
                if a.group == "ferumoxytol":
                    sc.update(Agent="ferumoxytol", ContrastDose_mmol_per_kg=p["dose_mgFe_per_kg"] / FE_MG_PER_MMOL)
                megre, maps = _megre(p, s0, r2n, r2prime, sc)
                scans = [Scan("T2w", t2w, p["t2w_sigma"], t2w_sc), megre]
                yield Session(a, d, scans, lab, {1: "tumour_left", 2: "muscle", 5: "background", 6: "tumour_right"},
                              truth, {"s0": s0, "iron_uM": fe, "t2w_pd": pd, "t2_ms": t2, "r2_native_per_s": r2n,
                                      **maps},
                              labels_on=Geometry(body, tuple((label_of[s], Tumour(*centres[s], volume(a, s, d)))
                                                             for s in sides)))

    rows = []
    for a in animals:
        d = a.days[-1]
        for s in sides:
            q = a.params[s]
            rows.append(dict(animal=a.id, group=a.group, model=a.model, sex=a.sex, region=s, endpoint_day=d,
                             tumour_weight_mg=1.05 * volume(a, s, d) * q["weight_noise"],
                             cd80_pct_of_f480=q["cd80"], cd206_pct_of_f480=q["cd206"]))
    cols = ["animal", "group", "model", "sex", "region", "endpoint_day", "tumour_weight_mg", "cd80_pct_of_f480",
            "cd206_pct_of_f480"]
    last = days[-1]
    g = p["growth_per_day"]

    def summarise(st: list[dict]) -> dict:
        def both(key):
            out = []
            for r in st:
                out += [dict(r, value=r[f"{s}_{key}"]) for s in sides]
            return out
        vol = both("tumour_volume_roi_mm3")
        r2 = both("tumour_r2star_per_s")
        gm_v = group_means(vol, "value", where=lambda r: r["day"] == last)
        day1 = 1 if 1 in days else days[min(1, len(days) - 1)]
        gm_r = group_means(r2, "value", where=lambda r: r["day"] == day1)
        cd80 = {gr: float(np.mean([h["cd80_pct_of_f480"] for h in rows if h["group"] == gr])) for gr in g}
        cd206 = {gr: float(np.mean([h["cd206_pct_of_f480"] for h in rows if h["group"] == gr])) for gr in g}
        return {"effects": {
            "log_volume_growth_per_day_ferumoxytol_minus_control": {
                "population": g["ferumoxytol"] - g["control"],
                "sample": float(np.mean([a.params[s]["growth"] for a in animals if a.group == "ferumoxytol" for s in sides])
                                - np.mean([a.params[s]["growth"] for a in animals if a.group == "control" for s in sides])),
                "direction": "ferumoxytol < control"},
            "tumour_volume_mm3_group_means_last_day": {"day": last, "sample": gm_v, "direction": "ferumoxytol < control"},
            "tumour_r2star_per_s_ferumoxytol_minus_control_day1": {
                "day": day1, "population": p["r2star_per_s_per_mM"] / 1000 * p["iron_peak_uM"]
                * np.exp(-(day1 - 1) / p["iron_clear_days"]) if day1 >= 1 else 0.0,
                "sample": gm_r.get("ferumoxytol", np.nan) - gm_r.get("control", np.nan),
                "direction": "ferumoxytol > control"},
            "cd80_pct_ferumoxytol_minus_control": {"population": p["cd80_pct"]["ferumoxytol"][0] - p["cd80_pct"]["control"][0],
                                                   "sample": cd80["ferumoxytol"] - cd80["control"], "direction": "up"},
            "cd206_pct_ferumoxytol_minus_control": {"population": p["cd206_pct"]["ferumoxytol"][0] - p["cd206_pct"]["control"][0],
                                                    "sample": cd206["ferumoxytol"] - cd206["control"], "direction": "down"},
        }, "correlations": {}}

    design = dict(p)
    design["days"] = days
    design["iron_cell_dw_rad_per_s"] = IRON_CELL_DW_RAD_S
    design["iron_cell_dchi_ppm"] = iron_cell_dchi_ppm(p["field_T"])
    design["roi_labels"] = {"1": "left tumour (x < 0, subject left in RAS)", "6": "right tumour"}
    return StudyPlan("ferumoxytol_therapy", grid, animals, sessions, cols, rows, design, summarise)
