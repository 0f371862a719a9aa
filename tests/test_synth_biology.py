"""Realistic biology of the synthetic studies (issue 14): bilateral tumours share an animal effect, the
imaging-histology correlations of the iron studies lie in the literature's range, and the ``large`` DCE
study gives each animal its own AIF from the independent physics."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from studylib.synth import large
from studylib.synth._common import PRESETS, Context
from studylib.synth._iron import AMPB, BLZ, FERU, _decay, plan_ampb, plan_blz945, plan_ferumoxytol_therapy
from studylib.synth._phantom import lognormal_mean1
from studylib.synth.physics import perfusion as perf

SIDES = ("left", "right")
#: imaging iron vs macrophage histology in the literature (shared science notes): r 0.55-0.71, n ~ 10
LITERATURE_R = (0.55, 0.71)


def _feru_plans(n_seeds=60):
    return [plan_ferumoxytol_therapy(Context(PRESETS["demo"], seed, "ferumoxytol_therapy")) for seed in range(n_seeds)]


def _side_z(plans):
    """Per parameter: (n_animals, 2) standard-normal scores of the left and right tumour (group mean removed)."""
    out = {k: [] for k in ("volume0", "growth", "iron_peak", "r2star0")}
    for plan in plans:
        for a in plan.animals:
            for k in out:
                v = np.array([a.params[s][k] for s in SIDES], dtype=float)
                if k == "volume0":
                    v = (np.log(v / FERU["volume0_mm3"]) + 0.5 * FERU["volume_sd"] ** 2) / FERU["volume_sd"]
                elif k == "iron_peak":
                    v = (np.log(v / FERU["iron_peak_uM"]) + 0.5 * FERU["iron_sd"] ** 2) / FERU["iron_sd"]
                elif k == "growth":
                    v = (v - FERU["growth_per_day"][a.group]) / FERU["growth_sd"]
                else:
                    v = (v - FERU["r2star0_tumour"]) / FERU["r2star0_sd"]
                out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def test_bilateral_tumours_share_an_animal_effect():
    """Left and right tumours of a mouse correlate with the design's intra-animal correlation (0.5), each
    parameter keeps its SD, so the mean of the two sides has (1 + icc) / 2 of one tumour's variance."""
    z = _side_z(_feru_plans())
    icc = FERU["bilateral_icc"]
    for k, v in z.items():
        n = v.shape[0]
        r = np.corrcoef(v[:, 0], v[:, 1])[0, 1]
        se = (1 - icc ** 2) / np.sqrt(n)  # ~0.026 for 840 animals
        assert abs(r - icc) < 4 * se, (k, r, n)
        assert abs(v.std() - 1.0) < 0.06, (k, v.std())  # the marginal SD is the design's
        ratio = v.mean(axis=1).var() / v.var()
        assert abs(ratio - (1 + icc) / 2) < 0.08, (k, ratio)  # not 0.5 as for independent sides


def test_bilateral_side_draws_keep_stream_1_order():
    """The side-specific parts still come from stream 1 in the former order: the 7th draw of each side (the
    tumour weight's noise) is the value the stream gives after the six parameters."""
    ctx = Context(PRESETS["ci"], 20240611, "ferumoxytol_therapy")
    plan = plan_ferumoxytol_therapy(ctx)
    for a in plan.animals:
        r = ctx.rng(1, a.index)
        for s in SIDES:
            r.standard_normal(6)
            assert a.params[s]["weight_noise"] == lognormal_mean1(r, 0.1)


def _within(x, y, g):
    x, y = np.array(x, float), np.array(y, float)
    for k in np.unique(g):
        m = g == k
        x[m] -= x[m].mean()
        y[m] -= y[m].mean()
    return float(np.corrcoef(x, y)[0, 1])


def test_ampb_dr2star_vs_iba1_population_r_in_literature_range():
    """Population r (many simulated studies pooled) of the endpoint tumour dR2* (its truth: the last dose's
    iron, k * iron_per_macrophage * M0 * (dose sum(d) - dose sum(d - 1))) and the Iba1 histology row of the
    planner: inside the reported 0.55-0.71 over all animals; lower within a group."""
    p = AMPB
    k = p["r2star_per_s_per_mM"] / 1000.0 * p["iron_uM_per_macrophage"]
    days = np.asarray(p["days"], float)
    last = days[-1]

    def rise(group, d):
        return 1.0 + p["macrophage_rise_by_day10"][group] * np.asarray(d, float) / 10.0

    def dose_sum(group, t):
        taken = days[days <= t]
        return float(np.sum(rise(group, taken) * _decay(t - taken)))

    x, y, g = [], [], []
    for seed in range(40):
        plan = plan_ampb(Context(PRESETS["demo"], seed, "ampb_ferumoxytol"))
        hist = {h["animal"]: h for h in plan.histology_rows}
        for a in plan.animals:
            if a.days[-1] != last:
                continue
            x.append(k * a.params["macrophage0"] * (dose_sum(a.group, last) - dose_sum(a.group, last - 1)))
            y.append(hist[a.id]["iba1_cells_per_mm2"])
            g.append(a.group)
    g = np.array(g)
    pooled = float(np.corrcoef(x, y)[0, 1])
    assert LITERATURE_R[0] <= pooled <= LITERATURE_R[1], pooled
    assert _within(x, y, g) < pooled


def test_blz945_r2star_vs_prussian_blue_population_r_in_literature_range():
    """Population r of the last-day tumour R2* truth (native R2* + kappa x TAM density) and the planner's
    Prussian-blue row: inside the reported range over all animals; lower within a group x model cell."""
    p = BLZ
    last = p["days"][-1]
    x, y, g = [], [], []
    for seed in range(40):
        plan = plan_blz945(Context(PRESETS["demo"], seed, "blz945_femri"))
        hist = {h["animal"]: h for h in plan.histology_rows}
        for a in plan.animals:
            if a.days[-1] != last:
                continue
            if a.group == "blz945":
                tam = a.params["tam0"] * (1 - p["blz_depletion"] * (1 - np.exp(-last / p["blz_tau_days"])))
            else:
                tam = a.params["tam0"] * (1 + p["control_rise_per_day"] * last)
            x.append(a.params["r2star0"] + p["kappa_per_s_per_tam"] * tam)
            y.append(hist[a.id]["prussian_blue_area_pct"])
            g.append(f"{a.group}/{a.model}")
    g = np.array(g)
    pooled = float(np.corrcoef(x, y)[0, 1])
    assert LITERATURE_R[0] <= pooled <= LITERATURE_R[1], pooled
    assert _within(x, y, g) < pooled


def test_large_dce_gives_each_animal_its_own_physics_aif():
    """``large`` DCE: the AIF is the independent physics' per-animal curve (not the fit side's rat AIF or
    its discretised Tofts kernel), the same for an animal whatever the study size, different between animals."""
    src = Path(large.__file__).read_text()
    names = {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"mcgrath_rat_aif", "mcgrath_mouse_aif", "extended_tofts_ct", "blood_to_plasma"}, names
    a0, a1 = large.animal_aif(0, seed=3), large.animal_aif(1, seed=3)
    assert a0 == large.animal_aif(0, seed=3) and a0 != a1
    assert isinstance(a0, perf.AifShape)
    peaks = [perf.plasma_aif(np.arange(0, 120, 0.5), large.animal_aif(i, seed=3)).max() for i in range(8)]
    assert np.std(peaks) / np.mean(peaks) > 0.05  # animal-level amplitude variation
    assert abs(np.mean([large.animal_aif(i, seed=3).arrival_s for i in range(8)]) - large.DCE["bolus_arrival_s"]) < 5


@pytest.mark.parametrize("kind", ["DCE"])
def test_large_dce_vessel_is_the_animals_blood_curve(kind):
    """The vessel's signal follows that animal's AIF: its enhancement peaks near the animal's own peak time."""
    shape = (1, 20, 20)
    for ia in range(2):
        sig, lab = large.scan_arrays(ia, 0, n_days=2, shape=shape, kind=kind, seed=3)
        t = np.arange(large.DCE["n_frames"]) * large.DCE["dt_s"]
        vessel = sig[:, lab == 3].mean(axis=1)
        aif = large.animal_aif(ia, seed=3)
        cp = perf.plasma_aif(t, aif)
        assert abs(t[int(np.argmax(vessel))] - t[int(np.argmax(cp))]) <= large.DCE["dt_s"]
