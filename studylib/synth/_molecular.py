"""Molecular-imaging studies: ``fluorine19_pfc`` (19F perfluorocarbon) and ``lactate_cest`` (LATEST).

=================  ==============================================================  ===========================
study               design and true values (chosen to be plausible)                   source
=================  ==============================================================  ===========================
fluorine19_pfc      9.4 T; 19F bSSFP (63 deg, TR/TE 4.7/2.4 ms, 10 averages) + 1H T2w    Makela et al., MRM
                    (RARE TE 30 ms, TR 2.5 s) on the same grid, day 1 (24 h after     2018;80:1138 (DOI
                    i.v. PFC on day 0); lines 67NR / 168FARN / 4T1 (``group`` =        10.1002/mrm.27081)
                    ``model``); tumour 19F (mM of 19F nuclei) 15 / 55 / 120 x LN(0.3);
                    rim : core weights 1.2 : 0.9 (67NR), 2.5 : 0.4 (168FARN), 3 : 0.3
                    (4T1), rim = outer 20 % of the radius; no 19F elsewhere in the body;
                    reference tube (label 4) 400 mM 19F; 19F signal 0.08 per mM with
                    sigma 1 (tumour SNR ~ 1-18, tube ~ 32).  Lung metastases: Poisson
                    0.2 / 2 / 20 (x the animal's 19F relative to its line).
lactate_cest        9.4 T; CEST (B1 0.8 uT, 3 s) at 49 offsets -2..2 ppm (0.05 ppm steps  DeBrosse et al., Sci Rep
                    within +-0.9 ppm) + an unsaturated reference volume (index 0,       2016;6:19517 (DOI
                    listed as 300 ppm in ``ReferenceVolumes``); WASSR (B1 0.1 uT) at    10.1038/srep19517)
                    41 offsets -1..1 ppm + reference.  Lorentzian pools: water (0.85,
                    FWHM 0.9 ppm; WASSR 0.9, 0.25 ppm), MT (0.10 at -2 ppm, FWHM 25),
                    lactate at +0.4 ppm (FWHM 0.5): tumour 0.70 +- 0.08 % pre, + 0.35
                    +- 0.05 % post pyruvate; muscle 0.25 %, tissue 0.20 %.  B0 shift:
                    smooth per-animal field within +-0.3 ppm (+ N(0, 0.03) re-shim
                    offset post).  3 animals, day 0 = pre, day 1 = post infusion
                    (same imaging session, ~40 min apart; ``notes`` says which).
                    M0 1000 (tumour), sigma 4.  SEL-MQC MRS lactate ratio in histology.
=================  ==============================================================  ===========================
"""

from __future__ import annotations

import numpy as np

from ..models.cest import zspectrum
from ..models.fluorine import AVOGADRO, fluorine_signal
from ..models.relaxometry import monoexp_signal
from ._common import Context, Scan, Session, StudyPlan, group_means, make_animals, pearson, roi_mean
from ._phantom import Body, Tumour, label_map, lognormal_mean1, spatial_pattern

F19_LINES = ("67NR", "168FARN", "4T1")

F19 = dict(field_T=9.4, flip_deg=63.0, tr_s=0.0047, te_s=0.0024, averages=10, bandwidth_hz=50000.0,
           t2w_te_ms=30.0, t2w_tr_s=2.5, t2_tumour_ms=45.0, t2_muscle_ms=25.0, t2_tissue_ms=35.0,
           pd_tumour=1000.0, pd_muscle=750.0, pd_tissue=850.0, pd_tube=900.0, t2_tube_ms=200.0, t2w_sigma=25.0,
           f19_mM={"67NR": 15.0, "168FARN": 55.0, "4T1": 120.0}, f19_sd=0.3,
           rim_weights={"67NR": (1.2, 0.9), "168FARN": (2.5, 0.4), "4T1": (3.0, 0.3)}, rim_start=0.8, jitter=0.15,
           signal_per_mM=0.08, sigma=1.0, tube_mM=400.0,
           mets_lambda={"67NR": 0.2, "168FARN": 2.0, "4T1": 20.0},
           volume_mm3={"67NR": 110.0, "168FARN": 90.0, "4T1": 80.0}, volume_sd=0.3, volume_cap_mm3=180.0)

_CEST_OFFSETS = np.round(np.concatenate([np.arange(-2.0, -0.95, 0.2), np.arange(-0.9, 0.9001, 0.05),
                                         np.arange(1.0, 2.0001, 0.2)]), 4)
_WASSR_OFFSETS = np.round(np.arange(-1.0, 1.0001, 0.05), 4)

CEST = dict(field_T=9.4, offsets_ppm=_CEST_OFFSETS, wassr_offsets_ppm=_WASSR_OFFSETS, reference_offset_ppm=300.0,
            b1_uT=0.8, sat_time_s=3.0, wassr_b1_uT=0.1, wassr_sat_time_s=0.5, tr_s=5.0, te_s=0.004,
            water=(0.85, 0.0, 0.9), mt=(0.10, -2.0, 25.0), lactate_center_ppm=0.4, lactate_fwhm_ppm=0.5,
            wassr_water=(0.9, 0.0, 0.25), wassr_mt=(0.01, -2.0, 25.0),
            lactate_pre_pct=0.70, lactate_pre_sd=0.08, lactate_rise_pct=0.35, lactate_rise_sd=0.05,
            lactate_muscle_pct=0.25, lactate_tissue_pct=0.20, b0_max_ppm=0.3, reshim_sd_ppm=0.03,
            m0_tumour=1000.0, m0_muscle=850.0, m0_tissue=900.0, sigma=4.0,
            mrs_ratio=1.4, mrs_sd=0.08, volume_mm3=120.0, volume_sd=0.2)


# --------------------------------------------------------------------------------------------- 19F
def plan_fluorine(ctx: Context) -> StudyPlan:
    p = F19
    grid = ctx.grid(16.0)
    body = Body(tube=(-6.6, 6.2, 0.8, 0.8))
    animals = make_animals(ctx, [(m, m) for m in F19_LINES], [1])
    for a in animals:
        r = ctx.rng(1, a.index)
        rel = lognormal_mean1(r, p["f19_sd"])
        a.params.update(f19_mM=p["f19_mM"][a.model] * rel, f19_rel=rel,
                        volume=float(min(p["volume_mm3"][a.model] * lognormal_mean1(r, p["volume_sd"]),
                                         p["volume_cap_mm3"])),
                        mets=int(r.poisson(p["mets_lambda"][a.model] * rel)), cd68_noise=lognormal_mean1(r, 0.2))

    def sessions():
        for a in animals:
            d = 1
            tmask, rim = Tumour(2.2, 0.5, a.params["volume"], rim_start=p["rim_start"]).masks(grid)
            bm = body.masks(grid)
            lab = label_map(grid, bm, [(1, tmask)])
            rv = ctx.rng(3, a.index, d)
            w = spatial_pattern(tmask, rim, *p["rim_weights"][a.model], p["jitter"], rv)
            f19 = np.where(tmask, a.params["f19_mM"] * w, 0.0)
            f19 = np.where(lab == 4, p["tube_mM"], f19)
            s19 = fluorine_signal(f19, p["signal_per_mM"])
            pd = np.select([tmask, lab == 2, lab == 4, lab == 5], [p["pd_tumour"], p["pd_muscle"], p["pd_tube"], 0.0],
                           p["pd_tissue"])
            t2 = np.select([tmask, lab == 2, lab == 4], [p["t2_tumour_ms"], p["t2_muscle_ms"], p["t2_tube_ms"]],
                           p["t2_tissue_ms"])
            t2w = monoexp_signal([p["t2w_te_ms"]], pd, t2)[..., 0]
            vv = grid.voxel_volume_mm3
            atoms = float(f19[tmask].sum() * 1e-3 * vv * 1e-6 * AVOGADRO)  # mM * L -> mmol; *1e-3 -> mol
            sc19 = {"FlipAngle": p["flip_deg"], "RepetitionTime": p["tr_s"], "EchoTime": p["te_s"],
                    "MagneticFieldStrength": p["field_T"], "Nucleus": "19F", "PulseSequenceType": "bSSFP",
                    "NumberOfAverages": p["averages"], "PhaseCycles": 4, "PixelBandwidth_Hz": p["bandwidth_hz"],
                    "ReferenceTube_mM": p["tube_mM"], "MRAcquisitionType": "3D",
                    "ReferenceTubeNote": "label 4; concentration of 19F nuclei in mM",
                    "ContrastTiming": "24 h after i.v. perfluorocarbon", "GeneratedBy": "studylib.synth"}
            sc1 = {"EchoTime": p["t2w_te_ms"] / 1000.0, "RepetitionTime": p["t2w_tr_s"],
                   "MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "PulseSequenceType": "RARE",
                   "MRAcquisitionType": "2D", "GeneratedBy": "studylib.synth"}
            truth = dict(tumour_f19_mM=roi_mean(tmask, f19), tumour_rim_f19_mM=roi_mean(rim, f19),
                         tumour_core_f19_mM=roi_mean(tmask & ~rim, f19), tumour_f19_atoms=atoms,
                         tube_f19_mM=p["tube_mM"], signal_per_mM=p["signal_per_mM"],
                         tumour_volume_mm3=a.params["volume"], tumour_volume_roi_mm3=float(tmask.sum()) * vv,
                         noise_sigma_f19=p["sigma"], noise_sigma_t2w=p["t2w_sigma"])
            a.params["f19_atoms"] = atoms
            yield Session(a, d, [Scan("F19", s19, p["sigma"], sc19), Scan("T2w", t2w, p["t2w_sigma"], sc1)], lab,
                          {1: "tumour", 2: "muscle", 4: "reference_tube", 5: "background"}, truth,
                          {"f19_mM": f19, "rim": rim.astype(np.float32)})

    rows = [dict(animal=a.id, group=a.group, model=a.model, sex=a.sex, endpoint_day=1,
                 lung_metastases_count=a.params["mets"],
                 cd68_cells_per_mm2=2.0 * a.params["f19_mM"] * a.params["cd68_noise"]) for a in animals]
    cols = ["animal", "group", "model", "sex", "endpoint_day", "lung_metastases_count", "cd68_cells_per_mm2"]

    def summarise(st):
        hist = {h["animal"]: h for h in rows}
        ids = [r["animal"] for r in st]
        f = [r["tumour_f19_mM"] for r in st]
        return {"effects": {
            "tumour_f19_mM_line_means": {"sample": group_means(st, "tumour_f19_mM"), "population": p["f19_mM"],
                                         "direction": "67NR < 168FARN < 4T1"},
            "tumour_rim_over_core_f19": {"sample": {g: group_means(st, "tumour_rim_f19_mM")[g]
                                                    / group_means(st, "tumour_core_f19_mM")[g]
                                                    for g in group_means(st, "tumour_rim_f19_mM")},
                                         "direction": "rim > core in 168FARN and 4T1"}},
            "correlations": {
                "tumour_f19_mM_vs_lung_metastases_count": pearson(f, [hist[i]["lung_metastases_count"] for i in ids]),
                "tumour_f19_mM_vs_cd68_cells_per_mm2": pearson(f, [hist[i]["cd68_cells_per_mm2"] for i in ids])}}

    design = dict(p)
    design["days"] = [1]
    return StudyPlan("fluorine19_pfc", grid, animals, sessions, cols, rows, design, summarise)


# --------------------------------------------------------------------------------------------- CEST
def mtrasym_pct(offsets_ppm, z, at_ppm: float) -> np.ndarray:
    """``MTRasym(d) = 100 [Z(-d) - Z(+d)]`` by linear interpolation on the (sorted) offset axis (last)."""
    offsets_ppm = np.asarray(offsets_ppm, float)
    z = np.asarray(z, float)
    flat = z.reshape(-1, z.shape[-1])

    def interp(x):  # vectorised: the offsets are shared by all voxels
        i = int(np.clip(np.searchsorted(offsets_ppm, x) - 1, 0, offsets_ppm.size - 2))
        w = (x - offsets_ppm[i]) / (offsets_ppm[i + 1] - offsets_ppm[i])
        return flat[:, i] * (1 - w) + flat[:, i + 1] * w

    return (100.0 * (interp(-at_ppm) - interp(at_ppm))).reshape(z.shape[:-1])


def b0_field(grid, coeffs, max_ppm) -> np.ndarray:
    """Smooth B0 shift (ppm): linear + quadratic terms in x, y and a z gradient, scaled to ``max_ppm``."""
    z, y, x = grid.centres()
    hx, hy = grid.fov_x_mm / 2, grid.fov_y_mm / 2
    hz = max(grid.fov_z_mm / 2, 1e-9)
    u, v, w = x / hx, y / hy, z / hz
    c = coeffs
    f = c[0] * u + c[1] * v + c[2] * (u * u - v * v) + c[3] * u * v + c[4] * w + c[5]
    f = np.broadcast_to(f, grid.shape)
    return max_ppm * f / max(np.abs(f).max(), 1e-12)


def plan_cest(ctx: Context) -> StudyPlan:
    p = CEST
    grid = ctx.grid(16.0)
    body = Body()
    animals = make_animals(ctx, [("pyruvate", "lymphoma")], [0, 1], sex="F")
    for a in animals:
        r = ctx.rng(1, a.index)
        pre = p["lactate_pre_pct"] + p["lactate_pre_sd"] * r.standard_normal()
        a.params.update(lactate_pct={0: pre, 1: pre + p["lactate_rise_pct"] + p["lactate_rise_sd"] * r.standard_normal()},
                        b0_coeffs=r.normal(0, 1, 6), reshim=p["reshim_sd_ppm"] * r.standard_normal(),
                        volume=p["volume_mm3"] * lognormal_mean1(r, p["volume_sd"]),
                        mrs_ratio=p["mrs_ratio"] * lognormal_mean1(r, p["mrs_sd"]))
        a.notes = {0: "pre pyruvate infusion", 1: "post pyruvate infusion (~40 min)"}
    offs = np.asarray(p["offsets_ppm"])
    woffs = np.asarray(p["wassr_offsets_ppm"])

    def sessions():
        for a in animals:
            for d in a.days:
                tmask, rim = Tumour(2.2, 0.5, a.params["volume"]).masks(grid)
                lab = label_map(grid, body.masks(grid), [(1, tmask)])
                rv = ctx.rng(3, a.index, d)
                w = spatial_pattern(tmask, rim, 1.0, 1.0, 0.1, rv)
                lac = np.select([tmask, lab == 2], [a.params["lactate_pct"][d] * w, p["lactate_muscle_pct"]],
                                p["lactate_tissue_pct"]) / 100.0
                b0 = b0_field(grid, a.params["b0_coeffs"], p["b0_max_ppm"] - abs(a.params["reshim"]))
                b0 = b0 + (a.params["reshim"] if d == 1 else 0.0)
                m0 = np.select([tmask, lab == 2, lab == 5], [p["m0_tumour"], p["m0_muscle"], 0.0], p["m0_tissue"])
                shp = grid.shape + (3,)
                amps = np.stack([np.full(grid.shape, p["water"][0]), np.full(grid.shape, p["mt"][0]), lac], -1)
                cens = np.broadcast_to([p["water"][1], p["mt"][1], p["lactate_center_ppm"]], shp)
                fwhm = np.broadcast_to([p["water"][2], p["mt"][2], p["lactate_fwhm_ppm"]], shp)
                z = zspectrum(offs, amps, cens, fwhm, b0)
                z_true = zspectrum(offs, amps, cens, fwhm, 0.0)
                mtr = mtrasym_pct(offs, z_true, p["lactate_center_ppm"])
                cest = np.concatenate([m0[..., None], m0[..., None] * z], -1)
                wamps = np.stack([np.full(grid.shape, p["wassr_water"][0]), np.full(grid.shape, p["wassr_mt"][0])], -1)
                wz = zspectrum(woffs, wamps, np.broadcast_to([p["wassr_water"][1], p["wassr_mt"][1]], grid.shape + (2,)),
                               np.broadcast_to([p["wassr_water"][2], p["wassr_mt"][2]], grid.shape + (2,)), b0)
                wassr = np.concatenate([m0[..., None], m0[..., None] * wz], -1)
                common = {"MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "RepetitionTime": p["tr_s"],
                          "EchoTime": p["te_s"], "ReferenceVolumes": [0], "PulseSequenceType": "CEST-prepared RARE",
                          "MRAcquisitionType": "2D", "Session": a.notes[d], "GeneratedBy": "studylib.synth",
                          "ReferenceNote": "volume 0 is unsaturated (saturation offset listed as 300 ppm)"}
                csc = dict(common, SaturationOffsets_ppm=[p["reference_offset_ppm"]] + offs.tolist(),
                           SaturationB1_uT=p["b1_uT"], SaturationTime=p["sat_time_s"])
                wsc = dict(common, SaturationOffsets_ppm=[p["reference_offset_ppm"]] + woffs.tolist(),
                           SaturationB1_uT=p["wassr_b1_uT"], SaturationTime=p["wassr_sat_time_s"])
                truth = dict(tumour_lactate_pool_pct=roi_mean(tmask, 100 * lac),
                             tumour_mtrasym_0p4_pct=roi_mean(tmask, mtr), muscle_mtrasym_0p4_pct=roi_mean(lab == 2, mtr),
                             tumour_b0_shift_ppm=roi_mean(tmask, b0), b0_abs_max_ppm=float(np.abs(b0[lab != 5]).max()),
                             tumour_volume_mm3=a.params["volume"],
                             tumour_volume_roi_mm3=float(tmask.sum()) * grid.voxel_volume_mm3, noise_sigma=p["sigma"])
                yield Session(a, d, [Scan("CEST", cest, p["sigma"], csc), Scan("WASSR", wassr, p["sigma"], wsc)], lab,
                              {1: "tumour", 2: "muscle", 5: "background"}, truth,
                              {"b0_shift_ppm": b0, "lactate_pool": lac, "m0": m0, "mtrasym_0p4_pct": mtr})

    rows = [dict(animal=a.id, group=a.group, model=a.model, sex=a.sex, endpoint_day=1,
                 mrs_lactate_ratio_post_over_pre=a.params["mrs_ratio"]) for a in animals]
    cols = ["animal", "group", "model", "sex", "endpoint_day", "mrs_lactate_ratio_post_over_pre"]

    # MTRasym is linear in the lactate amplitude: its population rise is the rise of the pool's asymmetry
    lac_only = zspectrum(offs, [p["lactate_rise_pct"] / 100], [p["lactate_center_ppm"]], [p["lactate_fwhm_ppm"]])
    pop_mtrasym_rise = float(mtrasym_pct(offs, lac_only, p["lactate_center_ppm"]))

    def summarise(st):
        by = {(r["animal"], r["day"]): r for r in st}
        diffs = [by[(a.id, 1)]["tumour_mtrasym_0p4_pct"] - by[(a.id, 0)]["tumour_mtrasym_0p4_pct"]
                 for a in animals if (a.id, 0) in by and (a.id, 1) in by]
        return {"effects": {
            "tumour_mtrasym_0p4_pct_post_minus_pre": {
                "sample": float(np.mean(diffs)) if diffs else float("nan"),
                "per_animal": diffs, "population_lactate_pool_pct": p["lactate_rise_pct"],
                "population": pop_mtrasym_rise,
                "direction": "post > pre"},
            "tumour_mtrasym_0p4_pct_by_day": {"sample": group_means(st, "tumour_mtrasym_0p4_pct", by="day")}},
            "correlations": {}}

    design = dict(p)
    design["days"] = [0, 1]
    design["day_meaning"] = {"0": "pre pyruvate infusion", "1": "post pyruvate infusion, same session (~40 min)"}
    return StudyPlan("lactate_cest", grid, animals, sessions, cols, rows, design, summarise)
