"""Molecular-imaging studies: ``fluorine19_pfc`` (19F perfluorocarbon) and ``lactate_cest`` (LATEST).

=================  ==============================================================  ===========================
study               design and true values (chosen to be plausible)                   source
=================  ==============================================================  ===========================
fluorine19_pfc      9.4 T; 19F bSSFP (63 deg, TR/TE 4.7/2.4 ms, 10 averages, 4 phase        Makela et al., MRM
                    cycles, mean magnitude) + 1H T2w (RARE TE 30 ms, TR 2.5 s) on the     2018;80:1138 (DOI
                    same grid, day 1 (24 h after i.v. PFC on day 0); lines 67NR /        10.1002/mrm.27081)
                    168FARN / 4T1 (``group`` = ``model``); tumour 19F (mM of 19F nuclei)
                    15 / 55 / 120 x LN(0.3) as PFCE (20 F, one line: PFC = 19F / 20);
                    rim : core weights 1.2 : 0.9 (67NR), 2.5 : 0.4 (168FARN), 3 : 0.3
                    (4T1), rim = outer 20 % of the radius; no 19F elsewhere in the body;
                    reference tube (label 4) 20 mM PFCE = 400 mM 19F.  Signal: Bloch
                    steady state (``physics.ssfp``), T1/T2 1300/250 ms (tumour),
                    1000/400 ms (tube) -- chosen; B0 within +-0.05 ppm per animal;
                    gain 0.55 per mM 19F, sigma 1, one receive channel (tumour SNR
                    ~1-12, tube ~55).  Lung metastases: Poisson 0.2 / 2 / 20 (x the
                    animal's 19F relative to its line).
lactate_cest        9.4 T; CEST (B1 0.8 uT, 3 s CW from equilibrium) at 49 offsets -2..2   DeBrosse et al., Sci Rep
                    ppm (0.05 ppm steps within +-0.9 ppm) + an unsaturated reference    2016;6:19517 (DOI
                    (index 0, 300 ppm); WASSR (B1 0.3 uT, 0.5 s) at 41 offsets -1..1    10.1038/srep19517)
                    ppm + reference.  Z from the Bloch-McConnell equations
                    (``physics.cest``): water, lactate -OH (+0.4 ppm, kb 500 /s) and a
                    semisolid pool per class (``CEST_TISSUES``), via lookup tables over
                    lactate (Chebyshev nodes) and the B0-shifted offset axis.  Lactate:
                    tumour 20 +- 2 mM pre, x (1.40 +- 0.05) post pyruvate (voxel
                    jitter LN(0.1)); muscle 4 mM, other tissue 2 mM.  B0 shift: smooth
                    per-animal field within +-0.3 ppm (+ N(0, 0.03) re-shim offset
                    post).  3 animals, day 0 = pre, day 1 = post infusion (same imaging
                    session, ~40 min apart; ``notes`` says which).  M0 1000 (tumour),
                    sigma 4.  SEL-MQC MRS lactate ratio (true post/pre x LN(0.05)) in
                    histology.  All pool parameters chosen, not from a paper.
=================  ==============================================================  ===========================
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..models.fluorine import AVOGADRO
from ..models.relaxometry import monoexp_signal
from ._common import Context, Scan, Session, StudyPlan, group_means, make_animals, pearson, roi_mean
from ._phantom import Body, Geometry, Tumour, label_map, lognormal_mean1, spatial_pattern
from .physics import cest as bm
from .physics import ssfp

F19_LINES = ("67NR", "168FARN", "4T1")

#: 19F T1, T2 (ms) of PFCE per environment, chosen (no measured value for these conditions was found in the
#: search corpus).  PFC 19F T1 shortens with dissolved O2, inversely linear in pO2 from ~1-4 s without O2 to
#: 0.3-0.5 s at high pO2 (Clark et al., Adv Exp Med Biol 1984;180:835): the air-equilibrated tube is given the
#: shorter T1, the tumour (lower pO2) a longer one; the tumour's PFC sits in macrophages (compartmentalised,
#: slower motion), given a shorter T2 than the free emulsion.  bSSFP weights ~T2/T1, so the tumour 19F is read
#: low against the tube unless relaxation is corrected for.
F19_RELAXATION = {"tumour": (1300.0, 250.0), "tube": (1000.0, 400.0)}

F19 = dict(field_T=9.4, flip_deg=63.0, tr_s=0.0047, te_s=0.0024, averages=10, bandwidth_hz=50000.0,
           phase_cycles=4, phase_cycle_combination="mean", excitation_bandwidth_hz=2000.0, b0_max_ppm=0.05,
           t2w_te_ms=30.0, t2w_tr_s=2.5, t2_tumour_ms=45.0, t2_muscle_ms=25.0, t2_tissue_ms=35.0,
           pd_tumour=1000.0, pd_muscle=750.0, pd_tissue=850.0, pd_tube=900.0, t2_tube_ms=200.0, t2w_sigma=25.0,
           f19_mM={"67NR": 15.0, "168FARN": 55.0, "4T1": 120.0}, f19_sd=0.3,
           rim_weights={"67NR": (1.2, 0.9), "168FARN": (2.5, 0.4), "4T1": (3.0, 0.3)}, rim_start=0.8, jitter=0.15,
           gain_per_mM=0.55, sigma=1.0, tube_pfc_mM=20.0,
           mets_lambda={"67NR": 0.2, "168FARN": 2.0, "4T1": 20.0},
           volume_mm3={"67NR": 110.0, "168FARN": 90.0, "4T1": 80.0}, volume_sd=0.3, volume_cap_mm3=180.0)

_CEST_OFFSETS = np.round(np.concatenate([np.arange(-2.0, -0.95, 0.2), np.arange(-0.9, 0.9001, 0.05),
                                         np.arange(1.0, 2.0001, 0.2)]), 4)
_WASSR_OFFSETS = np.round(np.arange(-1.0, 1.0001, 0.05), 4)

#: Bloch-McConnell pools per tissue class: overrides of :data:`studylib.synth.physics.cest.LACTATE_PRESET`
#: (lactate -OH +0.4 ppm, kb 500 /s; semisolid pool kc 30 /s, T2c 10 us at -2.5 ppm).  Chosen to be
#: plausible at 9.4 T, not taken from a paper.
CEST_TISSUES = {"tumour": dict(t1a_s=2.2, t2a_s=0.050, fc=0.08),
                "muscle": dict(t1a_s=1.9, t2a_s=0.030, fc=0.12),
                "tissue": dict(t1a_s=2.0, t2a_s=0.040, fc=0.10)}

CEST = dict(field_T=9.4, offsets_ppm=_CEST_OFFSETS, wassr_offsets_ppm=_WASSR_OFFSETS, reference_offset_ppm=300.0,
            b1_uT=0.8, sat_time_s=3.0, wassr_b1_uT=0.3, wassr_sat_time_s=0.5, tr_s=5.0, te_s=0.004,
            lactate_center_ppm=0.4, band_ppm=(0.2, 0.6), tissues=CEST_TISSUES,
            lactate_pre_mM=20.0, lactate_pre_sd_mM=2.0, lactate_rise=0.40, lactate_rise_sd=0.05,
            lactate_muscle_mM=4.0, lactate_tissue_mM=2.0, lactate_jitter=0.1, b0_max_ppm=0.3, reshim_sd_ppm=0.03,
            m0_tumour=1000.0, m0_muscle=850.0, m0_tissue=900.0, sigma=4.0,
            mrs_sd=0.05, volume_mm3=120.0, volume_sd=0.2, table_step_ppm=0.01, table_nodes=4)


# --------------------------------------------------------------------------------------------- 19F
def _f19_signal(pfc, classes, b0_ppm, p):
    """Noise-free 19F bSSFP magnitude per voxel from :func:`.physics.ssfp.pfc_bssfp_signal`: each class
    (``tumour``, ``tube``) with its own T1/T2 (:data:`F19_RELAXATION`), the voxel's B0 shift, the sidecar's
    TR, TE, flip angle, phase cycles and excitation band; times the receiver gain.  Only voxels holding PFC
    are computed (the rest is 0: tissue has no 19F)."""
    out = np.zeros(pfc.shape)
    for cls, m in classes.items():
        m = m & (pfc > 0)
        if m.any():
            t1, t2 = F19_RELAXATION[cls]
            out[m] = p["gain_per_mM"] * ssfp.pfc_bssfp_signal(
                pfc[m], ssfp.PFCE, t1_ms=t1, t2_ms=t2, tr_ms=p["tr_s"] * 1e3, flip_deg=p["flip_deg"],
                te_ms=p["te_s"] * 1e3, field_t=p["field_T"], excitation_bandwidth_hz=p["excitation_bandwidth_hz"],
                b0_ppm=b0_ppm[m], n_cycles=p["phase_cycles"], combine=p["phase_cycle_combination"])
    return out


def plan_fluorine(ctx: Context) -> StudyPlan:
    """Makela et al. 2018 with the 19F images from the Bloch-equation bSSFP steady state (:mod:`.physics.ssfp`).

    PFCE (20 equivalent fluorines, one line, transmitter on it) in the tumour and in the reference tube, each
    with its own T1/T2 (:data:`F19_RELAXATION`), 4 phase cycles combined as the mean magnitude, a smooth
    per-animal B0 shift (off-resonance: the banding profile).  Truth: PFC (mM of molecules) and 19F nuclei
    (mM) per voxel and ROI, the true T1/T2 and the noise-free relaxation weighting of tumour and tube.  The
    sidecar gives the acquisition (TR, TE, flip, phase cycles, excitation band) and the tube as made up
    (``ReferenceTubePFC_mM``, ``ReferenceTubeFluorinesPerMolecule``), never a relaxation time.
    """
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
                        mets=int(r.poisson(p["mets_lambda"][a.model] * rel)), cd68_noise=lognormal_mean1(r, 0.2),
                        b0_coeffs=ctx.rng(5, a.index).normal(0, 1, 6))
    n_f = ssfp.excited_fluorines(ssfp.PFCE, field_t=p["field_T"], excitation_bandwidth_hz=p["excitation_bandwidth_hz"])
    tube_pfc = p["tube_pfc_mM"]

    def sessions():
        for a in animals:
            d = 1
            tmask, rim = Tumour(2.2, 0.5, a.params["volume"], rim_start=p["rim_start"]).masks(grid)
            bm = body.masks(grid)
            lab = label_map(grid, bm, [(1, tmask)])
            rv = ctx.rng(3, a.index, d)
            w = spatial_pattern(tmask, rim, *p["rim_weights"][a.model], p["jitter"], rv)
            # truth in 19F nuclei (mM); PFCE molecules = 19F / 20 (every fluorine of PFCE is in the excited band)
            f19 = np.where(tmask, a.params["f19_mM"] * w, 0.0)
            f19 = np.where(lab == 4, tube_pfc * ssfp.PFCE.fluorines_per_molecule, f19)
            pfc = f19 / ssfp.PFCE.fluorines_per_molecule
            f19_excited = pfc * n_f
            b0 = b0_field(grid, a.params["b0_coeffs"], p["b0_max_ppm"])
            classes = {"tumour": tmask, "tube": lab == 4}
            s19 = _f19_signal(pfc, classes, b0, p)
            pd = np.select([tmask, lab == 2, lab == 4, lab == 5], [p["pd_tumour"], p["pd_muscle"], p["pd_tube"], 0.0],
                           p["pd_tissue"])
            t2 = np.select([tmask, lab == 2, lab == 4], [p["t2_tumour_ms"], p["t2_muscle_ms"], p["t2_tube_ms"]],
                           p["t2_tissue_ms"])
            t2w = monoexp_signal([p["t2w_te_ms"]], pd, t2)[..., 0]
            vv = grid.voxel_volume_mm3
            atoms = float(f19[tmask].sum() * 1e-3 * vv * 1e-6 * AVOGADRO)  # mM * L -> mmol; *1e-3 -> mol
            # relaxation + off-resonance weighting per mM of excited 19F (noise-free; the receiver gain divided out)
            with np.errstate(invalid="ignore", divide="ignore"):
                weight = np.where(f19_excited > 0, s19 / (p["gain_per_mM"] * f19_excited), np.nan)
            # ROI weighting as a reference-tube quantification of the ROI total sees it: signal sum / 19F sum
            w_t, w_ref = (float(s19[m].sum() / (p["gain_per_mM"] * f19_excited[m].sum())) for m in (tmask, lab == 4))
            sc19 = {"FlipAngle": p["flip_deg"], "RepetitionTime": p["tr_s"], "EchoTime": p["te_s"],
                    "MagneticFieldStrength": p["field_T"], "Nucleus": "19F", "PulseSequenceType": "bSSFP",
                    "NumberOfAverages": p["averages"], "PhaseCycles": p["phase_cycles"],
                    "PhaseCycleCombination": "mean of the magnitude images",
                    "PixelBandwidth_Hz": p["bandwidth_hz"], "ExcitationBandwidth_Hz": p["excitation_bandwidth_hz"],
                    "ReferenceTubePFC_mM": tube_pfc, "ReferenceTubeFluorinesPerMolecule": n_f,
                    "ReferenceTubeCompound": "PFCE (perfluoro-15-crown-5 ether) emulsion in agarose",
                    "MRAcquisitionType": "3D",
                    "ReferenceTubeNote": "label 4; PFC molecules (mM) and 19F per molecule in the excited band",
                    "ContrastTiming": "24 h after i.v. perfluorocarbon", "GeneratedBy": "studylib.synth"}
            sc1 = {"EchoTime": p["t2w_te_ms"] / 1000.0, "RepetitionTime": p["t2w_tr_s"],
                   "MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "PulseSequenceType": "RARE",
                   "MRAcquisitionType": "2D", "GeneratedBy": "studylib.synth"}
            truth = dict(tumour_f19_mM=roi_mean(tmask, f19), tumour_rim_f19_mM=roi_mean(rim, f19),
                         tumour_core_f19_mM=roi_mean(tmask & ~rim, f19), tumour_f19_atoms=atoms,
                         tumour_pfc_mM=roi_mean(tmask, pfc), tube_pfc_mM=tube_pfc, tube_f19_mM=tube_pfc * n_f,
                         tumour_bssfp_weight=w_t, tube_bssfp_weight=w_ref, tumour_over_tube_weight=w_t / w_ref,
                         tumour_b0_ppm=roi_mean(tmask, b0), tube_b0_ppm=roi_mean(lab == 4, b0),
                         receiver_gain_per_mM=p["gain_per_mM"],
                         tumour_volume_mm3=a.params["volume"], tumour_volume_roi_mm3=float(tmask.sum()) * vv,
                         noise_sigma_f19=p["sigma"], noise_sigma_t2w=p["t2w_sigma"])
            a.params["f19_atoms"] = atoms
            yield Session(a, d, [Scan("F19", s19, p["sigma"], sc19, receive_channels=1),
                                 Scan("T2w", t2w, p["t2w_sigma"], sc1)], lab,
                          {1: "tumour", 2: "muscle", 4: "reference_tube", 5: "background"}, truth,
                          {"f19_mM": f19, "pfc_mM": pfc, "b0_ppm": b0, "bssfp_weight": weight,
                           "rim": rim.astype(np.float32)},
                          labels_on=Geometry(body, ((1, Tumour(2.2, 0.5, a.params["volume"],
                                                               rim_start=p["rim_start"])),)))

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
            "relaxation": {
                "tumour_over_tube_weight": {"sample": group_means(st, "tumour_over_tube_weight"),
                                            "note": "noise-free bSSFP weighting (relaxation, B0, phase cycling) of "
                                                    "tumour over tube; reference-tube quantification without a "
                                                    "relaxation correction reads the tumour 19F times this"},
                "t1_t2_ms": {k: list(v) for k, v in F19_RELAXATION.items()}},
            "correlations": {
                "tumour_f19_mM_vs_lung_metastases_count": pearson(f, [hist[i]["lung_metastases_count"] for i in ids]),
                "tumour_f19_mM_vs_cd68_cells_per_mm2": pearson(f, [hist[i]["cd68_cells_per_mm2"] for i in ids])}}

    design = dict(p)
    design["days"] = [1]
    design["relaxation_ms"] = {k: list(v) for k, v in F19_RELAXATION.items()}
    design["physics"] = ("balanced SSFP steady state from the Bloch equations (studylib.synth.physics.ssfp), "
                         "PFCE one line, 4 phase cycles (mean magnitude), per-animal B0 shift")
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


def _cest_tables(p, tumour_max_mM):
    """Bloch-McConnell lookup tables per tissue class for the CEST and the WASSR scan (acquisition sidecars).

    Lactate from 0 (the lactate-free reference of the truth) to ``tumour_max_mM`` in the tumour, to the
    fixed concentration of muscle and other tissue.
    Offset grids cover every acquired offset minus the largest B0 shift (``b0_max_ppm``) with 0.05 ppm to
    spare -- away from the semisolid centre (-2.5 ppm), where its lineshape is floored (not smooth).
    """
    conc = {"tumour": (0.0, tumour_max_mM), "muscle": (0.0, p["lactate_muscle_mM"]),
            "tissue": (0.0, p["lactate_tissue_mM"])}
    out = {}
    for scan, offs, b1, tsat in (("CEST", p["offsets_ppm"], p["b1_uT"], p["sat_time_s"]),
                                 ("WASSR", p["wassr_offsets_ppm"], p["wassr_b1_uT"], p["wassr_sat_time_s"])):
        reach = float(np.max(np.abs(offs))) + p["b0_max_ppm"] + 0.05
        for cls, over in p["tissues"].items():
            tissue = replace(bm.LACTATE_PRESET, solute_ppm=p["lactate_center_ppm"], **over)
            out[scan, cls] = bm.zspectrum_table(
                tissue, concentration_mM=conc[cls], grid_ppm=(-reach, reach), step_ppm=p["table_step_ppm"],
                n_concentration=p["table_nodes"], reference_ppm=p["reference_offset_ppm"], b0_T=p["field_T"],
                b1_uT=b1, t_sat_s=tsat)
    return out


def _class_masks(tmask, lab):
    return {"tumour": tmask, "muscle": (lab == 2) & ~tmask, "tissue": (lab != 5) & (lab != 2) & ~tmask}


def _zimage(tables, scan, classes, offs, lac, b0):
    """Z (fraction of M0) per voxel, shape ``lac.shape + (n_offsets,)``, and the reference-scan Z: each tissue
    class from its table (vectorised over its voxels); background (no signal) 1."""
    z = np.ones(lac.shape + (len(offs),))
    ref = np.ones(lac.shape)
    for cls, m in classes.items():
        if m.any():
            z[m] = tables[scan, cls](offs, lac[m], b0[m])
            ref[m] = tables[scan, cls].reference_z(lac[m])
    return z, ref


def plan_cest(ctx: Context) -> StudyPlan:
    """LATEST pre/post pyruvate with Z-spectra from the Bloch-McConnell equations (:mod:`.physics.cest`).

    Water + lactate -OH + semisolid MT pools per tissue class (:data:`CEST_TISSUES`), continuous-wave
    saturation for the sidecar's ``SaturationTime`` from equilibrium at ``SaturationB1_uT``; CEST, its
    unsaturated reference (300 ppm) and WASSR from the same physics.  Per voxel only the lactate
    concentration and the B0 shift vary: a lookup table per class (:func:`.physics.cest.zspectrum_table`)
    is evaluated on the shifted offset axis.  Truth: lactate (mM), MTRasym(0.4 ppm) and the lactate effect
    ``Z(+0.4 ppm; no lactate) - Z(+0.4 ppm)`` of the noise-free, B0-free physics (% of the reference S0),
    and the MTRasym integral over ``band_ppm`` (%·ppm).  WASSR at 0.3 uT: at 0.1 uT the Bloch-McConnell water dip
    (FWHM < 0.05 ppm at 9.4 T) is narrower than the 0.05 ppm offset spacing and the B0 fit failed in about
    half the voxels; at 0.3 uT (FWHM ~0.2 ppm) it succeeds everywhere.
    """
    p = CEST
    grid = ctx.grid(16.0)
    body = Body()
    animals = make_animals(ctx, [("pyruvate", "lymphoma")], [0, 1], sex="F")
    for a in animals:
        r = ctx.rng(1, a.index)
        pre = p["lactate_pre_mM"] + p["lactate_pre_sd_mM"] * r.standard_normal()
        ratio = 1.0 + p["lactate_rise"] + p["lactate_rise_sd"] * r.standard_normal()
        a.params.update(lactate_mM={0: pre, 1: pre * ratio}, b0_coeffs=r.normal(0, 1, 6),
                        reshim=p["reshim_sd_ppm"] * r.standard_normal(),
                        volume=p["volume_mm3"] * lognormal_mean1(r, p["volume_sd"]),
                        mrs_ratio=ratio * lognormal_mean1(r, p["mrs_sd"]))
        a.notes = {0: "pre pyruvate infusion", 1: "post pyruvate infusion (~40 min)"}
    offs = np.asarray(p["offsets_ppm"])
    woffs = np.asarray(p["wassr_offsets_ppm"])
    delta = p["lactate_center_ppm"]
    # the tumour table spans twice the highest animal mean (the voxel pattern has mean 1, log-normal sd 0.1)
    tables = _cest_tables(p, 2.0 * max(max(a.params["lactate_mM"].values()) for a in animals))
    tum_cest = tables["CEST", "tumour"]

    band = np.linspace(*p["band_ppm"], 21)

    def physics_truth(table, lac):
        """MTRasym(delta) (%), its integral over ``band_ppm`` (%·ppm, trapezoid on 21 points) and the lactate
        effect at +delta (%), all of the reference S0, B0-free; shape of ``lac``."""
        z = table(np.concatenate([[-delta, delta], -band, band]), lac)
        z0 = table([delta], np.zeros_like(lac))[..., 0]
        ref = table.reference_z(lac)
        asym = 100 * (z[..., 2:2 + band.size] - z[..., 2 + band.size:]) / ref[..., None]
        return 100 * (z[..., 0] - z[..., 1]) / ref, np.trapezoid(asym, band, axis=-1), 100 * (z0 - z[..., 1]) / ref

    def sessions():
        for a in animals:
            for d in a.days:
                tmask, rim = Tumour(2.2, 0.5, a.params["volume"]).masks(grid)
                lab = label_map(grid, body.masks(grid), [(1, tmask)])
                rv = ctx.rng(3, a.index, d)
                w = spatial_pattern(tmask, rim, 1.0, 1.0, p["lactate_jitter"], rv)
                classes = _class_masks(tmask, lab)
                lac = np.select([tmask, lab == 2, lab != 5], [a.params["lactate_mM"][d] * w, p["lactate_muscle_mM"],
                                                             p["lactate_tissue_mM"]], 0.0)
                b0 = b0_field(grid, a.params["b0_coeffs"], p["b0_max_ppm"] - abs(a.params["reshim"]))
                b0 = b0 + (a.params["reshim"] if d == 1 else 0.0)
                m0 = np.select([tmask, lab == 2, lab == 5], [p["m0_tumour"], p["m0_muscle"], 0.0], p["m0_tissue"])
                z, zref = _zimage(tables, "CEST", classes, offs, lac, b0)
                wz, wref = _zimage(tables, "WASSR", classes, woffs, lac, b0)
                cest = m0[..., None] * np.concatenate([zref[..., None], z], -1)
                wassr = m0[..., None] * np.concatenate([wref[..., None], wz], -1)
                mtr, mtr_band, effect = np.zeros(grid.shape), np.zeros(grid.shape), np.zeros(grid.shape)
                for cls, m in classes.items():
                    if m.any():
                        mtr[m], mtr_band[m], effect[m] = physics_truth(tables["CEST", cls], lac[m])
                common = {"MagneticFieldStrength": p["field_T"], "Nucleus": "1H", "RepetitionTime": p["tr_s"],
                          "EchoTime": p["te_s"], "ReferenceVolumes": [0], "PulseSequenceType": "CEST-prepared RARE",
                          "MRAcquisitionType": "2D", "Session": a.notes[d], "GeneratedBy": "studylib.synth",
                          "ReferenceNote": "volume 0 is unsaturated (saturation offset listed as 300 ppm)"}
                csc = dict(common, SaturationOffsets_ppm=[p["reference_offset_ppm"]] + offs.tolist(),
                           SaturationB1_uT=p["b1_uT"], SaturationTime=p["sat_time_s"])
                wsc = dict(common, SaturationOffsets_ppm=[p["reference_offset_ppm"]] + woffs.tolist(),
                           SaturationB1_uT=p["wassr_b1_uT"], SaturationTime=p["wassr_sat_time_s"])
                muscle = lab == 2
                truth = dict(tumour_lactate_mM=roi_mean(tmask, lac), muscle_lactate_mM=roi_mean(muscle, lac),
                             tumour_mtrasym_0p4_pct=roi_mean(tmask, mtr), muscle_mtrasym_0p4_pct=roi_mean(muscle, mtr),
                             tumour_mtrasym_band_pct=roi_mean(tmask, mtr_band),
                             tumour_lactate_effect_0p4_pct=roi_mean(tmask, effect),
                             tumour_b0_shift_ppm=roi_mean(tmask, b0), b0_abs_max_ppm=float(np.abs(b0[lab != 5]).max()),
                             tumour_volume_mm3=a.params["volume"],
                             tumour_volume_roi_mm3=float(tmask.sum()) * grid.voxel_volume_mm3, noise_sigma=p["sigma"])
                yield Session(a, d, [Scan("CEST", cest, p["sigma"], csc), Scan("WASSR", wassr, p["sigma"], wsc)], lab,
                              {1: "tumour", 2: "muscle", 5: "background"}, truth,
                              {"b0_shift_ppm": b0, "lactate_mM": lac, "m0": m0, "mtrasym_0p4_pct": mtr,
                               "mtrasym_band_pct": mtr_band, "lactate_effect_0p4_pct": effect},
                              labels_on=Geometry(body, ((1, Tumour(2.2, 0.5, a.params["volume"])),)))

    rows = [dict(animal=a.id, group=a.group, model=a.model, sex=a.sex, endpoint_day=1,
                 mrs_lactate_ratio_post_over_pre=a.params["mrs_ratio"]) for a in animals]
    cols = ["animal", "group", "model", "sex", "endpoint_day", "mrs_lactate_ratio_post_over_pre"]

    # population values of the physics at the design's mean tumour lactate (B0-free, tumour tissue)
    pop_pre = p["lactate_pre_mM"]
    pop_post = pop_pre * (1 + p["lactate_rise"])
    pop_mtr, pop_band, pop_eff = physics_truth(tum_cest, np.array([pop_pre, pop_post]))
    lo, hi = 0.5 * pop_pre, 1.5 * pop_post  # the secant slope over the range the study covers
    cal_mtr, _, cal_eff = physics_truth(tum_cest, np.array([lo, hi]))

    def summarise(st):
        by = {(r["animal"], r["day"]): r for r in st}

        def change(key):
            return [by[(a.id, 1)][key] - by[(a.id, 0)][key] for a in animals if (a.id, 0) in by and (a.id, 1) in by]

        def effect(key, population, direction="post > pre"):
            diffs = change(key)
            return {"sample": float(np.mean(diffs)) if diffs else float("nan"), "per_animal": diffs,
                    "population": float(population), "direction": direction}

        return {"effects": {
            "tumour_mtrasym_0p4_pct_post_minus_pre": effect("tumour_mtrasym_0p4_pct", pop_mtr[1] - pop_mtr[0]),
            "tumour_mtrasym_band_pct_post_minus_pre": dict(effect("tumour_mtrasym_band_pct",
                                                                   pop_band[1] - pop_band[0]), band_ppm=p["band_ppm"]),
            "tumour_lactate_effect_0p4_pct_post_minus_pre": effect("tumour_lactate_effect_0p4_pct",
                                                                   pop_eff[1] - pop_eff[0]),
            "tumour_lactate_mM_post_minus_pre": effect("tumour_lactate_mM", pop_post - pop_pre),
            "tumour_mtrasym_0p4_pct_by_day": {"sample": group_means(st, "tumour_mtrasym_0p4_pct", by="day")}},
            "calibration": {
                "tumour_mtrasym_0p4_pct_per_mM": float((cal_mtr[1] - cal_mtr[0]) / (hi - lo)),
                "tumour_lactate_effect_0p4_pct_per_mM": float((cal_eff[1] - cal_eff[0]) / (hi - lo)),
                "tumour_mtrasym_0p4_pct_at_0_mM": float(physics_truth(tum_cest, np.zeros(1))[0][0]),
                "range_mM": [lo, hi],
                "note": "secant slopes of the B0-free Bloch-McConnell physics of tumour tissue over range_mM"},
            "correlations": {}}

    design = dict(p)
    design["days"] = [0, 1]
    design["day_meaning"] = {"0": "pre pyruvate infusion", "1": "post pyruvate infusion, same session (~40 min)"}
    design["physics"] = ("Bloch-McConnell (water, lactate -OH, semisolid MT), CW saturation from equilibrium; "
                         "studylib.synth.physics.cest lookup tables")
    return StudyPlan("lactate_cest", grid, animals, sessions, cols, rows, design, summarise)
