"""The 19F PFC planner makes its images with the independent bSSFP physics (:mod:`studylib.synth.physics.ssfp`).

The Bloch-equation steady state is checked against the closed form on resonance and against stepping the same
Bloch map TR by TR off resonance (a check that does not use the matrix solve); the planner's imports are read
(it must not use the library's 19F signal or relaxation kernels); a noise-free ci study is quantified with the
library and the result compared with the physics truth, with and without the library's bSSFP correction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from studylib.errors import SynthError
from studylib.synth import generate
from studylib.synth._molecular import F19, F19_RELAXATION
from studylib.synth.physics import ssfp
from test_independent_physics import ROOT, _imports


def _closed_form(t1, t2, tr, a_deg):
    """Freeman-Hill / Scheffler & Lehnhardt 2003: on-resonance bSSFP just after the pulse, M0 = 1 (own copy)."""
    a = np.deg2rad(a_deg)
    e1, e2 = np.exp(-tr / t1), np.exp(-tr / t2)
    return np.sin(a) * (1 - e1) / (1 - (e1 - e2) * np.cos(a) - e1 * e2)


# --------------------------------------------------------------------------------------------- physics
def test_steady_state_matches_closed_form_on_resonance():
    t1 = np.array([[300.0], [1000.0], [1300.0], [3000.0]])
    t2 = np.array([[50.0], [400.0], [250.0], [2000.0]])
    for tr in (2.0, 4.7, 10.0):
        for a in (5.0, 30.0, 63.0, 90.0, 150.0):
            m = ssfp.bssfp_steady_state(t1, t2, tr, a)
            np.testing.assert_allclose(np.hypot(m[..., 0], m[..., 1]), _closed_form(t1, t2, tr, a), rtol=1e-10)
            assert np.allclose(m[..., 0], 0.0, atol=1e-12)  # on resonance the steady state lies in the y-z plane
            # the echo at TE = TR/2: times sqrt(E2)
            e = ssfp.bssfp_echo(t1, t2, tr, a)
            np.testing.assert_allclose(np.abs(e), _closed_form(t1, t2, tr, a) * np.exp(-tr / 2 / t2), rtol=1e-10)


def _stepped(t1, t2, tr, a_deg, df_hz, inc_deg, n_tr):
    """Magnetisation after the pulse, stepped through ``n_tr`` repetitions from equilibrium (no solve)."""
    a, e1, e2 = np.deg2rad(a_deg), np.exp(-tr / t1), np.exp(-tr / t2)
    m = np.array([0.0, 0.0, 1.0])
    th = 2 * np.pi * df_hz * tr * 1e-3 - np.deg2rad(inc_deg)
    for _ in range(n_tr):
        # pulse about x (frame of this pulse's RF phase), then relax + precess for TR
        m = np.array([m[0], np.cos(a) * m[1] + np.sin(a) * m[2], -np.sin(a) * m[1] + np.cos(a) * m[2]])
        keep = m.copy()
        mx, my = e2 * m[0], e2 * m[1]
        m = np.array([np.cos(th) * mx - np.sin(th) * my, np.sin(th) * mx + np.cos(th) * my, e1 * m[2] + 1 - e1])
    return keep


def test_off_resonance_steady_state_matches_stepping_the_bloch_map():
    t1, t2, tr, a = 1000.0, 400.0, 4.7, 63.0
    n_tr = int(30 * t1 / tr)  # exp(-30) of the transient left: far below the tolerance
    for df, inc in ((0.0, 180.0), (37.0, 180.0), (90.0, 180.0), (-60.0, 270.0), (20.0, 0.0)):
        ref = _stepped(t1, t2, tr, a, df, inc, n_tr)
        got = ssfp.bssfp_steady_state(t1, t2, tr, a, off_resonance_hz=df, rf_increment_deg=inc)
        np.testing.assert_allclose(got, ref, atol=1e-9)


def test_banding_profile():
    t1, t2, tr, a = 1000.0, 400.0, 4.7, 63.0
    df = np.linspace(-1000 / tr, 1000 / tr, 401)  # two bands
    s = np.abs(ssfp.bssfp_echo(t1, t2, tr, a, off_resonance_hz=df))
    np.testing.assert_allclose(s, s[::-1], rtol=1e-10)  # symmetric in df
    period = 200  # 1/TR spans 200 samples
    np.testing.assert_allclose(s[:-period], s[period:], rtol=1e-9, atol=1e-12)  # periodic in 1/TR
    null = np.abs(ssfp.bssfp_echo(t1, t2, tr, a, off_resonance_hz=500 / tr))  # df = 1/(2 TR): the dark band
    assert null < 0.05 * s[200]
    # RF phase cycling shifts the profile: 0-increment on resonance = alternating +-a at 1/(2 TR)
    np.testing.assert_allclose(np.abs(ssfp.bssfp_echo(t1, t2, tr, a, rf_increment_deg=0.0)), null, rtol=1e-10)


def test_phase_cycled_combinations():
    args = (1300.0, 250.0, 4.7, 63.0)
    df = np.linspace(-150, 150, 31)
    one = np.abs(ssfp.bssfp_echo(*args, off_resonance_hz=df))
    np.testing.assert_allclose(ssfp.phase_cycled_bssfp(*args, n_cycles=1, off_resonance_hz=df), one, rtol=1e-12)
    mean, rss, cplx = (ssfp.phase_cycled_bssfp(*args, n_cycles=4, combine=c, off_resonance_hz=df)
                       for c in ("mean", "rss", "complex"))
    assert np.all(rss >= mean - 1e-12) and np.all(mean >= cplx - 1e-12)  # power mean >= mean >= |mean|
    # 4 cycles flatten the banding: the mean's spread over df is a fraction of the single acquisition's
    assert np.ptp(mean) < 0.5 * np.ptp(one)
    np.testing.assert_allclose(mean, mean[::-1], rtol=1e-10)


def test_compound_lines_and_the_excited_band():
    assert ssfp.excited_fluorines(ssfp.PFCE, field_t=9.4, excitation_bandwidth_hz=2000.0) == 20
    two = ssfp.PFCCompound("toy", (ssfp.PFCLine(0.0, 3), ssfp.PFCLine(10.0, 14)))  # 10 ppm = 3.8 kHz at 9.4 T
    assert two.fluorines_per_molecule == 17
    assert ssfp.excited_fluorines(two, field_t=9.4, excitation_bandwidth_hz=2000.0) == 3
    assert ssfp.excited_fluorines(two, field_t=9.4, excitation_bandwidth_hz=10000.0) == 17
    kw = dict(t1_ms=1000.0, t2_ms=400.0, tr_ms=4.7, flip_deg=63.0, field_t=9.4)
    narrow = ssfp.pfc_bssfp_signal(np.array([1.0, 2.0]), two, excitation_bandwidth_hz=2000.0, **kw)
    one_line = ssfp.pfc_bssfp_signal(np.array([1.0, 2.0]), ssfp.PFCCompound("CF3", (ssfp.PFCLine(0.0, 3),)),
                                      excitation_bandwidth_hz=2000.0, **kw)
    np.testing.assert_allclose(narrow, one_line)  # the line outside the band adds nothing
    np.testing.assert_allclose(narrow[1], 2 * narrow[0])  # linear in concentration


@pytest.mark.parametrize("call, match", [
    (lambda: ssfp.bssfp_steady_state(-1.0, 100.0, 4.7, 30.0), "t1_ms"),
    (lambda: ssfp.bssfp_steady_state(1000.0, 100.0, 0.0, 30.0), "tr_ms"),
    (lambda: ssfp.bssfp_steady_state(1000.0, 100.0, 4.7, 200.0), "flip_deg"),
    (lambda: ssfp.bssfp_echo(1000.0, 100.0, 4.7, 30.0, te_ms=5.0), "te_ms"),
    (lambda: ssfp.phase_cycled_bssfp(1000.0, 100.0, 4.7, 30.0, n_cycles=0), "n_cycles"),
    (lambda: ssfp.phase_cycled_bssfp(1000.0, 100.0, 4.7, 30.0, combine="max"), "combine"),
    (lambda: ssfp.pfc_bssfp_signal(-1.0, ssfp.PFCE, t1_ms=1e3, t2_ms=1e2, tr_ms=4.7, flip_deg=30.0, field_t=9.4,
                                   excitation_bandwidth_hz=2e3), "pfc_mM"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(SynthError, match=match):
        call()


# --------------------------------------------------------------------------------------------- the planner
def test_planner_imports_no_fluorine_signal_kernel():
    found = _imports(ROOT / "studylib" / "synth" / "_molecular.py")
    assert "studylib.synth.physics.ssfp" in found
    # from the library's 19F model only the Avogadro constant (atoms in the truth); never its signal, relaxation
    # weighting or quantification, and nothing of studylib.fit
    bad = sorted(m for m in found if m.startswith("studylib.fit")
                 or (m.startswith("studylib.models.fluorine.") and m != "studylib.models.fluorine.AVOGADRO"))
    assert not bad, f"the 19F planner imports the fit's code: {bad}"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("f19_clean")
    generate("ci", out=out, studies=["fluorine19_pfc"], noise=False)
    return out


def test_sidecar_has_acquisition_only_and_truth_has_the_physics(clean):
    truth = json.loads((clean / "truth" / "fluorine19_pfc" / "truth.json").read_text())
    sc = json.loads(next((clean / "raw" / "fluorine19_pfc").glob("*/day01/F19.json")).read_text())
    assert sc["ReferenceTubePFC_mM"] * sc["ReferenceTubeFluorinesPerMolecule"] == 400.0
    assert sc["PhaseCycles"] == F19["phase_cycles"] and sc["ReceiveCoilChannels"] == 1
    banned = ("T1", "T2", "Relax", "Weight", "Gain", "tumour", "B0")
    assert not [k for k in sc if any(b.lower() in k.lower() for b in banned)], sorted(sc)
    assert truth["relaxation"]["t1_t2_ms"] == {k: list(v) for k, v in F19_RELAXATION.items()}
    import pandas as pd

    s = pd.read_csv(clean / "truth" / "fluorine19_pfc" / "sessions.csv")
    np.testing.assert_allclose(s["tumour_pfc_mM"] * 20, s["tumour_f19_mM"], rtol=1e-4)  # PFCE: 20 F per molecule


def _quantify(clean, **kw):
    import studylib as sl
    from studylib.fit.fluorine import fluorine_per_roi

    man = clean / "data_manifest.csv"
    f19 = sl.load_study(man, "fluorine19_pfc", "F19")
    q = sl.fluorine_quantify(f19, sigma=1e-6, **kw)  # no noise: the background would give sigma 0
    tot = fluorine_per_roi(q, f19["roi"], label=1).compute()  # noise-free: raw roi is the true label map
    return tot["fluorine_atoms_total_all"].values.ravel(), q.attrs


def test_library_quantification_against_the_physics(clean):
    """Noise-free, the library's reference-tube quantification reads the tumour 19F times the physics'
    tumour/tube bSSFP weighting (its assumption of equal weighting is the only error); its bSSFP correction
    (on-resonance, single acquisition) removes most of it, the rest being the 4 phase cycles and B0, which it
    does not model -- that residual is computed here from the physics itself, not taken from a run."""
    import pandas as pd

    s = pd.read_csv(clean / "truth" / "fluorine19_pfc" / "sessions.csv").sort_values("animal")
    atoms, _ = _quantify(clean)
    ratio = atoms / s["tumour_f19_atoms"].to_numpy()
    # no noise: the only difference is the weighting ratio (the Rician correction at SNR ~1e6 changes nothing)
    np.testing.assert_allclose(ratio, s["tumour_over_tube_weight"].to_numpy(), rtol=2e-3)
    assert ratio.max() < 0.8  # T2/T1 lower in tumour than tube: uncorrected quantification reads well below truth

    (t1t, t2t), (t1r, t2r) = F19_RELAXATION["tumour"], F19_RELAXATION["tube"]
    relax = dict(t1_ref_ms=t1r, t2_ref_ms=t2r, t1_tissue_ms=t1t, t2_tissue_ms=t2t)
    atoms_c, attrs = _quantify(clean, bssfp_relaxation=relax)
    ratio_c = atoms_c / s["tumour_f19_atoms"].to_numpy()
    np.testing.assert_allclose(ratio_c, ratio * attrs["relaxation_factor"], rtol=1e-9)
    # what remains is the physics' phase-cycled + off-resonance weighting over the library's on-resonance one
    p = F19
    kw = dict(tr_ms=p["tr_s"] * 1e3, flip_deg=p["flip_deg"], te_ms=p["te_s"] * 1e3)
    on = ssfp.phase_cycled_bssfp(t1t, t2t, n_cycles=1, **kw) / ssfp.phase_cycled_bssfp(t1r, t2r, n_cycles=1, **kw)
    np.testing.assert_allclose(attrs["relaxation_factor"], 1 / on, rtol=1e-9)  # library == physics on resonance
    np.testing.assert_allclose(ratio_c, s["tumour_over_tube_weight"].to_numpy() / on, rtol=2e-3)
    assert np.all(np.abs(ratio_c - 1) < np.abs(ratio - 1))  # the correction helps
    pc = ssfp.phase_cycled_bssfp(t1t, t2t, n_cycles=4, **kw) / ssfp.phase_cycled_bssfp(t1r, t2r, n_cycles=4, **kw)
    assert pc / on < 0.97  # 4 mean-combined cycles weight T2/T1 differently: a residual the library does not model
